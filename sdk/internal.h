/*
 * internal.h — libsluice's private structures, shared by the SDK's modules:
 *   client.c    the public calls: config, event validation/encoding, the queue, flush, close, fork
 *   props.c     the property builder
 *   worker.c    the background thread: batching, compression, retries, 413 splitting
 *   storage.c   storage_dir: atomic batch files, loading, corruption handling
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
    uint64_t seq; /* position in the client's queue order (for flush) */
    uint32_t len;
    char data[];
} sdk_node_t;

/* Upper bound on a batch's envelope (sentAt, context, array header) beyond its events. */
#define SDK_ENVELOPE_MAX 512
/* The SPEC's request body limit; batch_bytes + SDK_ENVELOPE_MAX must stay below it. */
#define SDK_BODY_LIMIT (512u * 1024u)

struct sluice_client {
    sluice_config cfg; /* copy; its strings point at the owned copies below */
    char *endpoint, *write_key, *storage_dir, *url;
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
    bool stopping;        /* close(): drain the queue, then exit */
    bool worker_running;  /* a worker thread exists (false in a fresh fork child) */
    bool worker_exited;   /* the worker returned from its loop */
    pthread_t thread;

    /* Set by close() at its deadline; read by the worker without the lock. */
    atomic_bool abort;
    /* Events the worker could not deliver while stopping (stored or lost). */
    atomic_uint_fast64_t close_unsent;

    atomic_uint_fast64_t n_queued, n_sent, n_dropped, n_retried, n_failed, n_stored;

    /* Worker-only state (touched by the worker thread alone; reused across fork). */
    int64_t pause_until_ms; /* monotonic: nothing is sent before it (backoff, Retry-After) */
    uint64_t rng;           /* backoff jitter PRNG */
    ZSTD_CCtx *zctx;
    writer_buf_t body; /* uncompressed batch body */
    void *zbuf;        /* compressed body */
    size_t zcap;
    char ctx_enc[96]; /* batch-level context {library:{name,version}}, encoded */
    size_t ctx_len;
    uint64_t storage_bytes; /* bytes of batch files in storage_dir */
    bool storage_scanned;
    uint32_t storage_files;   /* files waiting to be sent */
    int64_t storage_retry_ms; /* monotonic: earliest next attempt at a stored file */
    uint32_t file_seq;

    struct sluice_client *reg_next, *reg_prev; /* registry for fork handling (client.c) */
};

/* Monotonic and wall clocks in ms. */

/* Logging and error reporting through the configured callbacks (no-ops when unset). */
void sdk_log(sluice_client *c, int level, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
void sdk_report(sluice_client *c, int err, int status, uint32_t n_events, const char *msg);

/* props.c: the encoded map of p (valid while p is unchanged) and its sticky error. */
const void *sdk_props_data(const sluice_props *p, size_t *len, int *err);

/* worker.c */
/* Thread entry point; arg is the client. Blocks every signal itself as well (the creator has
 * already blocked them before pthread_create, so no signal can land in between). */
void *sdk_worker_main(void *arg);
/* Frees a linked list of nodes. */
void sdk_nodes_free(sdk_node_t *n);

/* storage.c — every function runs on the worker thread only and never calls back into mu. */
/* Counts batch files and their bytes (once per worker start). Returns 0 or SLUICE_E_STORAGE. */
int sdk_storage_scan(sluice_client *c);
/* Writes nodes[0..n) as one batch file atomically (tmp + fsync + rename + fsync dir).
 * 0; SLUICE_E_TOO_LARGE when storage_max_bytes would be exceeded; SLUICE_E_STORAGE. */
int sdk_storage_write(sluice_client *c, sdk_node_t *const *nodes, uint32_t n);
/* Loads the oldest batch file: *nodes (malloc'd array, caller frees it and the nodes), *n, and
 * its name in path (for sdk_storage_remove). Corrupt files are renamed *.corrupt and reported
 * (SLUICE_E_CORRUPT through error_cb), then the next one is tried. Returns 1 when a batch was
 * loaded, 0 when none is left, negative on error. */
int sdk_storage_load_oldest(sluice_client *c, sdk_node_t ***nodes, uint32_t *n, char *path,
                            size_t path_size);
/* Deletes a delivered (or refused) batch file. */
void sdk_storage_remove(sluice_client *c, const char *path);

/* transport_curl.c: fills *tp with the libcurl transport. 0 or SLUICE_E_NOMEM. */
int sdk_curl_transport_new(sluice_transport *tp);

#endif
