/*
 * internal.h — libsluice's private structures, shared by the SDK's modules:
 *   client.c    the public calls: config, event validation/encoding, the queue, flush, close, fork
 *   context.c   the default context (library, app, os, locale, timezone) sent with every batch
 *   props.c     the property builder
 *   reply.c     reading the collector's 2xx answer: per-event rejections
 *   worker.c    the background thread: batching, compression, retries by age, 413 splitting
 *   storage.c   storage_dir: atomic locked batch files, loading, corruption handling, the
 *               persisted anonymousId and opt-out
 *   transport_curl.c  the default libcurl transport
 * Nothing here is exported from the shared library (-fvisibility=hidden); names carry sdk_.
 */
#ifndef SLUICE_SDK_INTERNAL_H
#define SLUICE_SDK_INTERNAL_H

#include "base.h"
#include "sluice.h"
#include "writer.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <zstd.h>

/* One encoded event in the queue or in a batch: a single allocation, owned by whoever holds it
 * (the queue while linked, then the worker), freed with free(). */
typedef struct sdk_node {
    struct sdk_node *next;
    uint64_t seq;    /* position in the client's queue order (for flush) */
    int64_t born_ms; /* wall clock when the event was accepted (for max_event_age_ms) */
    uint32_t len;
    char data[];
} sdk_node_t;

/* Longest default-context string (sluice_config.app_name ...). */
#define SDK_CTX_STR_MAX 128
/* Upper bound on a batch's envelope (sentAt, default context, array header) beyond its events:
 * six context strings of at most SDK_CTX_STR_MAX bytes, the os strings, keys and headers. */
#define SDK_ENVELOPE_MAX 2048
/* Length of a UUID v4 string. */
#define SDK_UUID_LEN 36
/* The SPEC's request body limit; batch_bytes + SDK_ENVELOPE_MAX must stay below it. */
#define SDK_BODY_LIMIT (512u * 1024u)

struct sluice_client {
    sluice_config cfg; /* copy; its strings point at the owned copies below */
    char *endpoint, *write_key, *storage_dir, *url;
    char *ctx_strs[6]; /* owned copies of library_name ... timezone */
    char anon_id[SDK_UUID_LEN + 1];
    char inst[9]; /* random tag in this client's batch file names (close() accounting) */
    atomic_bool opted_out;
    sluice_transport tp;

    /*
     * mu protects everything down to `worker_*`. It is held only for O(batch) pointer work,
     * never during I/O, encoding or compression. wake: the worker waits on it for events, a
     * flush request or close. done: flush() and close() wait on it for progress.
     */
    pthread_mutex_t mu;
    pthread_cond_t wake, done;
    sdk_node_t *head, *tail;
    uint32_t q_events;
    uint64_t q_bytes;
    uint64_t next_seq;    /* seq of the next queued event */
    uint64_t flush_upto;  /* worker sends partial batches while head->seq < flush_upto */
    uint64_t inflight_lo; /* lowest unresolved seq held by the worker; UINT64_MAX if none */
    uint32_t inflight_n;  /* events held by the worker (stats.in_flight) */
    bool stopping;        /* close(): drain the queue, then exit */
    bool worker_running;  /* a worker thread exists (false in a fresh fork child) */
    bool worker_exited;   /* the worker returned from its loop */
    pthread_t thread;

    /* Set by close() at its deadline; read by the worker without the lock. */
    atomic_bool abort;

    atomic_uint_fast64_t n_queued, n_sent, n_dropped, n_retried, n_failed, n_stored;
    atomic_uint_fast64_t n_rejected, n_expired;
    /* Over this client's life (reset in a fork child): events accepted, and those of them that
     * were delivered (from memory, or from a batch file this client wrote). close() returns the
     * difference. */
    atomic_uint_fast64_t life_queued, life_delivered;

    /* Worker-only state (touched by the worker thread alone; reused across fork). */
    int64_t pause_until_ms; /* monotonic: nothing is sent before it (backoff, Retry-After) */
    uint32_t fail_streak;   /* consecutive retryable failures of the sender (backoff exponent) */
    uint64_t rng;           /* backoff jitter PRNG */
    ZSTD_CCtx *zctx;
    base_buf_t body; /* uncompressed batch body */
    void *zbuf;      /* compressed body */
    size_t zcap;
    char ctx_enc[SDK_ENVELOPE_MAX - 64]; /* batch-level default context, encoded (context.c) */
    size_t ctx_len;
    uint64_t storage_bytes; /* bytes of batch files in storage_dir */
    bool storage_scanned;
    uint32_t storage_files;   /* files waiting to be sent */
    int64_t storage_retry_ms; /* monotonic: earliest next attempt at a stored file */
    uint32_t file_seq;

    struct sluice_client *reg_next, *reg_prev; /* registry for fork handling (client.c) */
};

/* A random UUID v4 (per-thread PRNG of client.c). */
void sdk_uuid(char out[SDK_UUID_LEN + 1]);

/* Logging and error reporting through the configured callbacks (no-ops when unset). */
void sdk_log(sluice_client *c, int level, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
void sdk_report(sluice_client *c, int err, int status, uint32_t n_events, const char *msg);

/* context.c: checks the default-context strings of cfg (0, SLUICE_E_INVAL, SLUICE_E_UTF8). */
int sdk_context_check(const sluice_config *cfg);
/* Encodes the batch-level context into c->ctx_enc from c->cfg (strings already copied). */
int sdk_context_encode(sluice_client *c);
/* An event's own context (an encoded map) with the default context's top-level keys it lacks
 * appended (the event's keys win), so the defaults reach it whatever the server merges. *out is
 * malloc'd (caller frees) or NULL when there is nothing to add (or ctx is not one map: sent as
 * it is). 0 or SLUICE_E_NOMEM. */
int sdk_context_merge(const sluice_client *c, const void *ctx, size_t len, char **out,
                      size_t *out_len);

/* reply.c: reads a 2xx answer's body. Reports each rejected event (E_REJECTED) and returns how
 * many of the batch's n events were rejected (0 when the body lists none or is absent). */
uint32_t sdk_reply_rejections(sluice_client *c, const char *body, size_t len, uint32_t n);

/* props.c: the encoded map of p (valid while p is unchanged) and its sticky error. */
const void *sdk_props_data(const sluice_props *p, size_t *len, int *err);

/* worker.c */
/* Thread entry point; arg is the client. Blocks every signal itself as well (the creator has
 * already blocked them before pthread_create, so no signal can land in between). */
void *sdk_worker_main(void *arg);
/* Frees a linked list of nodes. */
void sdk_nodes_free(sdk_node_t *n);

/*
 * storage.c. sdk_storage_open, _opt_out_* run on the calling thread (client creation, the
 * opt-out switch); the batch-file functions on the worker thread only. None takes mu.
 *
 * A loaded or freshly written batch file is held through an sdk_file_t: its path and an open
 * descriptor carrying an exclusive flock(), so no other client or process sends it meanwhile.
 */
typedef struct sdk_file {
    char path[4096];
    int fd;   /* -1 when not held */
    bool own; /* written by this client (its inst tag is in the name) */
} sdk_file_t;

/* Creates storage_dir (one level, 0700) if missing, checks that a file can be created in it,
 * and loads or creates c->anon_id and the persisted opt-out. 0 or SLUICE_E_STORAGE. */
int sdk_storage_open(sluice_client *c);
/* Persists the opt-out choice. 0 or SLUICE_E_STORAGE. */
int sdk_storage_set_opt_out(sluice_client *c, bool opted_out);
/* Counts batch files and their bytes (once per worker start). Returns 0 or SLUICE_E_STORAGE. */
int sdk_storage_scan(sluice_client *c);
/* Writes nodes[0..n) as one batch file atomically (tmp + fsync + rename + fsync dir). With
 * held != NULL the file stays locked and open in *held (release it with sdk_storage_release or
 * sdk_storage_remove). 0; SLUICE_E_TOO_LARGE when storage_max_bytes would be exceeded;
 * SLUICE_E_STORAGE; SLUICE_E_NOMEM. */
int sdk_storage_write(sluice_client *c, sdk_node_t *const *nodes, uint32_t n, sdk_file_t *held);
/* Loads the oldest batch file no one else holds: *nodes (malloc'd array, caller frees it and the
 * nodes), *n, and the locked file in *f. Corrupt files are renamed *.corrupt and reported
 * (SLUICE_E_CORRUPT through error_cb), then the next one is tried. Returns 1 when a batch was
 * loaded, 0 when none is left (*locked: files skipped because another holder has them), negative
 * on error. */
int sdk_storage_load_oldest(sluice_client *c, sdk_node_t ***nodes, uint32_t *n, sdk_file_t *f,
                            uint32_t *locked);
/* Deletes a delivered (or refused, or expired) batch file, then releases it. */
void sdk_storage_remove(sluice_client *c, sdk_file_t *f);
/* Releases a held file without deleting it (it will be sent later). */
void sdk_storage_release(sdk_file_t *f);

/* transport_curl.c: fills *tp with the libcurl transport; ca_file (may be NULL: the system
 * store) is copied and given to libcurl as CURLOPT_CAINFO. 0 or SLUICE_E_NOMEM. */
int sdk_curl_transport_new(sluice_transport *tp, const char *ca_file);

#endif
