/*
 * client.h — the sending side of sluice-load: libuv worker threads, each one event loop driving
 * many keep-alive HTTP/1.1 connections to the collector, responses parsed with llhttp.
 *
 * Open loop (rate > 0): request k of a thread is DUE at start + k/rate_per_thread. A due request
 * goes out on the first idle connection; when none is idle it waits, and its latency is still
 * measured from the time it was due (coordinated omission corrected: a slow collector shows up
 * as latency, not as a quietly lower send rate). Requests still waiting when the duration ends
 * are counted in backlog_at_end. Closed loop (rate == 0, "--rate max"): every connection sends
 * its next request as soon as the previous answer arrives; latency is measured from the send.
 *
 * Loop threads never block: the host must be a numeric IPv4/IPv6 address (the caller resolves
 * names before client_run), batches are built and compressed on the loop thread (CPU only), and
 * statistics leave the thread through atomics plus a per-thread mailbox whose mutex is held only
 * to merge one histogram, never during I/O.
 *
 * HTTPS (cfg.tls): each worker has one SSL_CTX (TLS 1.2+, peer verification always on, the CA
 * file read by client_run before the loops start) and each connection one SSL over two memory
 * BIOs: ciphertext read from the socket is fed in, the handshake is driven from the connect and
 * read callbacks, SSL_read's plaintext goes to the same llhttp parser, and a request is
 * SSL_write'n and its ciphertext sent with uv_write. A handshake that fails (or does not finish
 * within timeout_ms) closes the connection, counts in tls_handshake_failures and conn_errors, and
 * the connection reconnects with the usual backoff. The plain-HTTP path is unchanged.
 *
 * Verification ledger (cfg.ledger_max > 0): one byte per generated event, per thread, indexed by
 * the event's seq: the low 6 bits are its model_kind_t, LEDGER_ACKED is set when a request that
 * carried it was answered 200, LEDGER_UNSURE when one got no definite answer (5xx, 429, timeout,
 * connection error: it may or may not have been delivered). A request refused with another 4xx
 * delivered nothing, so it sets neither bit.
 */
#ifndef SLUICE_LOADTEST_CLIENT_H
#define SLUICE_LOADTEST_CLIENT_H

#include "hist.h"
#include "model.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define CLIENT_MAX_THREADS     64
#define CLIENT_MAX_CONNECTIONS 65536
#define CLIENT_MAX_SECONDS     86400
#define CLIENT_RESP_MAX        65536 /* response bytes kept for the accepted/rejected counts */
#define CLIENT_MAX_URLS        16    /* collectors one run sends to (--url repeated) */

#define LEDGER_KIND_MASK 0x3f
#define LEDGER_UNSURE    0x40
#define LEDGER_ACKED     0x80

/* Status slots: HTTP codes 100..599 at their own index; these two for no answer at all. */
#define CLIENT_ST_CONN_ERROR 0
#define CLIENT_ST_TIMEOUT    1
#define CLIENT_ST_SLOTS      600

typedef enum {
    CLIENT_COMPRESS_NONE = 0,
    CLIENT_COMPRESS_ZSTD,
    CLIENT_COMPRESS_GZIP
} client_compress_t;

/* One collector to send to (one --url). */
typedef struct client_target {
    char host[64]; /* numeric address */
    int port;
    char host_header[300]; /* Host: header value as the user wrote it */
    char path[256];        /* "/v1/batch" */
    /* https: the URL's host (no brackets), checked against the certificate (an IP address
     * against its IP SANs, a name against its DNS names, and sent as SNI). */
    char tls_name[300];
} client_target_t;

/* What one target was sent and answered (client_result_t.urls[i] is targets[i]'s). */
typedef struct client_url_result {
    uint32_t connections; /* connections opened to it (fixed for the run) */
    uint64_t requests_sent, events_sent;
    uint64_t responses, events_ok; /* answers of any status; events in 200 answers */
    uint64_t non_200;              /* answers other than 200 plus timeouts and conn errors */
    uint64_t conn_errors;
} client_url_result_t;

typedef struct client_config {
    /* Several collectors (a fleet): connection k, numbered across threads (thread 0's first,
     * then thread 1's, ...), goes to targets[k % n_targets] for the whole run, reconnects
     * included: round-robin per connection, as an L4 load balancer spreads keep-alive
     * connections. A thread with at least n_targets connections sends to every target, and its
     * batches (hence every user's events, the PQL script of thread 0 included) go to whichever
     * connection is free: they are spread over the targets. All targets use the same scheme. */
    client_target_t targets[CLIENT_MAX_URLS];
    uint32_t n_targets;    /* 1..CLIENT_MAX_URLS */
    const char *write_key; /* borrowed for the run */
    uint32_t threads;      /* 1..CLIENT_MAX_THREADS */
    uint32_t connections;  /* total, spread over threads, >= threads */
    double rate;           /* events/s over all threads; 0 = closed loop, flat out */
    double duration_s;
    client_compress_t compress;
    int level;            /* zstd or gzip level */
    uint32_t timeout_ms;  /* per request; also the drain deadline after the duration */
    uint64_t ledger_max;  /* events tracked for --verify over all threads; 0 = no ledger */
    const model_t *model; /* borrowed; read-only during the run */
    /* --body: every request sends these bytes (encoded per compress) instead of the model's
     * batches; fixed_events is the number of events in it (for the events/s figures). No
     * ledger: a fixed body cannot be verified. NULL: the model. Borrowed for the run. */
    const char *fixed_body;
    size_t fixed_len;
    uint32_t fixed_events;
    /* https:// URLs: TLS on every connection (each target's tls_name is checked).
     * ca_file: PEM file of trusted CAs (borrowed); NULL = the system's store. */
    bool tls;
    const char *ca_file;
} client_config_t;

/* One second of the run, as the progress line and the report's charts show it. */
typedef struct client_second {
    double t; /* seconds since start at the end of this interval */
    uint64_t events_sent, requests_sent;
    uint64_t responses, events_ok; /* answers in this second; events in 200 answers */
    uint64_t non_200;              /* answers other than 200 plus timeouts and errors */
    uint64_t p50_us, p90_us, p99_us, max_us;
} client_second_t;

typedef struct client_result {
    double elapsed_s; /* start to the last answer (or the drain deadline) */
    double send_s;    /* the sending window actually used (shorter if interrupted) */
    uint64_t events_sent, requests_sent, events_ok, events_not_ok;
    uint64_t responses;
    uint64_t bytes_out, bytes_in, body_bytes_raw;
    uint64_t backlog_at_end; /* open loop: requests due but never sent */
    uint64_t in_flight_at_end;
    uint64_t status[CLIENT_ST_SLOTS];
    uint64_t accepted, duplicates, rejected; /* sums of the 200 answers' counts */
    uint64_t conn_errors;
    uint64_t tls_handshakes, tls_handshake_failures; /* counted in conn_errors too */
    char tls_error[256]; /* the first handshake failure, as OpenSSL explained it; "" if none */
    client_url_result_t urls[CLIENT_MAX_URLS]; /* per target, n_targets of them */
    uint32_t n_urls;
    hist_t latency;          /* microseconds, answered requests (any status) */
    client_second_t *series; /* owned; n_series entries */
    size_t n_series;
    /* Ledger (when cfg.ledger_max > 0): ledgers[t][seq] for seq < ledger_len[t]. Owned. */
    uint32_t n_ledgers;
    uint8_t **ledgers;
    uint64_t *ledger_len;
    bool ledger_overflow; /* more events than ledger_max: verification impossible */
} client_result_t;

/* Called on the client_run() thread once a second; must not block long. */
typedef void (*client_progress_cb)(const client_second_t *sec, const client_result_t *sofar,
                                   void *ud);

/*
 * Runs the load: starts cfg->threads workers, reports each second through cb (may be NULL),
 * stops sending after cfg->duration_s or when client_request_stop() was called, waits up to
 * cfg->timeout_ms for answers in flight, and fills *res (free with client_result_free, also after
 * a failure). Returns 0; LT_E_INVAL for a bad config; LT_E_NOMEM; LT_E_IO when a thread or loop
 * could not start (then no worker is left running).
 */
int client_run(const client_config_t *cfg, client_result_t *res, client_progress_cb cb, void *ud);
/* Checks that an SSL_CTX for cfg can be made (CA file readable and holding certificates).
 * Returns 0, or LT_E_INVAL with a message in err. Not needed before client_run (which fails
 * with LT_E_INVAL then), but gives the caller the reason. */
int client_tls_check(const client_config_t *cfg, char *err, size_t errlen);
/* Async-signal-safe: asks a running client_run() to stop sending now and finish. */
void client_request_stop(void);
void client_result_free(client_result_t *res);

#endif
