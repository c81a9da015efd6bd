/*
 * fake_transport.h — a fault-injecting sluice_transport for the SDK tests. It answers from a
 * script (status, Retry-After, network error, hang until cancelled), then with a default; it
 * can answer 413 to requests over a size; it decodes every body (zstd + msgpack, checking the
 * batch envelope) and records each request's time and size and every event of each 2xx answer
 * (messageId and a JSON rendering). Thread-safe (its own mutex); the test owns the fake
 * (destroy_cb is NULL) and frees it after closing the client.
 */
#ifndef SLUICE_TEST_FAKE_TRANSPORT_H
#define SLUICE_TEST_FAKE_TRANSPORT_H

#include <pthread.h>
#include <sluice.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define FAKE_MAX_STEPS       64
#define FAKE_MAX_REQS        4096
#define FAKE_MAX_ATTEMPT_IDS 256

typedef struct fake_step {
    int status;             /* HTTP status to answer (when rc == 0 and !hang) */
    int64_t retry_after_ms; /* -1: no Retry-After */
    int rc;                 /* nonzero: return this (e.g. SLUICE_E_NETWORK) without a status */
    bool hang; /* block until cancel_cb (-> SLUICE_E_CANCELLED) or fake_release (-> status);
                  bounded by 20 s */
} fake_step_t;

typedef struct fake_event {
    char id[101];
    char *json; /* the event as JSON (malloc'd) */
} fake_event_t;

typedef struct fake {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    fake_step_t script[FAKE_MAX_STEPS];
    int n_script, pos;
    fake_step_t dflt;    /* after the script: {200, -1, 0, false} unless changed */
    uint32_t max_events; /* > 0: requests with more events get 413 */
    int n_req;           /* requests seen */
    int64_t req_ms[FAKE_MAX_REQS];
    uint32_t req_events[FAKE_MAX_REQS];
    int req_status[FAKE_MAX_REQS]; /* 0 for network errors / hangs */
    fake_event_t *events;          /* events of 2xx answers, in order */
    size_t n_events, cap_events;
    int bad_bodies; /* bodies that did not decode as a well-formed batch */
    /* messageIds of EVERY request (any answer), first FAKE_MAX_ATTEMPT_IDS events */
    char attempt_id[FAKE_MAX_ATTEMPT_IDS][101];
    int attempt_req[FAKE_MAX_ATTEMPT_IDS];
    int n_attempt_ids;
    bool cancelled, hanging, released;
    int signals_unblocked; /* sends made on a thread with SIGINT/SIGTERM/SIGUSR1 unblocked */
    char last_content_type[64], last_encoding[32], last_key[64], last_url[256];
} fake_t;

void fake_init(fake_t *f);
void fake_free(fake_t *f);
sluice_transport fake_transport(fake_t *f);
/* Replaces the script (steps are answered in order, then dflt). */
void fake_script(fake_t *f, const fake_step_t *steps, int n);
/* Waits until at least n events were delivered (2xx) or timeout_ms passed; returns the count. */
size_t fake_wait_events(fake_t *f, size_t n, int timeout_ms);
/* Waits until at least n requests were seen; returns the count. */
int fake_wait_requests(fake_t *f, int n, int timeout_ms);
/* Ends the current (or next) hang step: it answers its status. */
void fake_release(fake_t *f);
/* Waits until a hang step is in progress. */
bool fake_wait_hanging(fake_t *f, int timeout_ms);
/* How many delivered events carry messageId id. */
size_t fake_count_id(fake_t *f, const char *id);
/* After fork(), in the child: gives the fake fresh locks (the parent's worker may have held them).
 */
void fake_after_fork_child(fake_t *f);

int64_t fake_now_ms(void);

#endif
