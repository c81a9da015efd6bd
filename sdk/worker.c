/*
 * worker.c — the client's background thread. It alone forms batches, encodes the envelope,
 * compresses, calls the transport, retries and touches storage_dir, so none of that ever runs on
 * an application thread. It holds the client mutex only to take events off the queue and to
 * wait; never while encoding, compressing, sending or writing files.
 *
 * Delivery of one batch (deliver()):
 *   2xx                      -> sent
 *   413                      -> split in half, each half delivered on its own (one event: refused)
 *   408, 429, 5xx, network   -> retried, at most max_retries times, after a full-jitter
 *                               exponential backoff: uniform in [0, min(retry_max, base * 2^k)];
 *                               a Retry-After is a minimum and pauses the whole sender
 *   other status             -> refused: counted failed, reported through error_cb
 * A batch whose retries ran out, or that is still held when close() hits its deadline, is written
 * to storage_dir when set (else counted failed and reported). Retries resend the same bytes'
 * events: messageIds never change, so the collector's dedup makes retries idempotent.
 */
#include "internal.h"

#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

/* A Retry-After above this is treated as this (a misbehaving server cannot stall us for days). */
#define RETRY_AFTER_MAX_MS (10 * 60 * 1000)

typedef enum { DELIVER_DONE = 0, DELIVER_UNSENT = 1 } deliver_t;

void sdk_nodes_free(sdk_node_t *n)
{
    while (n) {
        sdk_node_t *next = n->next;
        free(n);
        n = next;
    }
}

static void abs_ts(struct timespec *ts, int64_t mono_ms)
{
    ts->tv_sec = mono_ms / 1000;
    ts->tv_nsec = (mono_ms % 1000) * 1000000;
}

/* Waits (interruptibly by abort) until the sender's pause is over. False when aborted. */
static bool wait_pause(sluice_client *c)
{
    pthread_mutex_lock(&c->mu);
    for (;;) {
        if (atomic_load(&c->abort)) break;
        int64_t now = base_mono_ms();
        if (now >= c->pause_until_ms) break;
        struct timespec ts;
        abs_ts(&ts, c->pause_until_ms);
        pthread_cond_timedwait(&c->wake, &c->mu, &ts);
    }
    pthread_mutex_unlock(&c->mu);
    return !atomic_load(&c->abort);
}

static uint64_t jitter_rand(sluice_client *c)
{
    /* splitmix64: the worker's own generator, seeded at client creation. */
    uint64_t z = (c->rng += 0x9e3779b97f4a7c15u);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9u;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebu;
    return z ^ (z >> 31);
}

/* Backoff before retry number `attempt` (1-based), full jitter. */
static int64_t backoff_ms(sluice_client *c, uint32_t attempt)
{
    uint64_t cap = c->cfg.retry_base_ms;
    for (uint32_t i = 1; i < attempt && cap < c->cfg.retry_max_ms; i++)
        cap *= 2;
    if (cap > c->cfg.retry_max_ms) cap = c->cfg.retry_max_ms;
    return (int64_t)(jitter_rand(c) % (cap + 1));
}

/* Builds the request body for nodes[0..n) into c->body (and c->zbuf when compressing). */
static int build_body(sluice_client *c, sdk_node_t *const *nodes, uint32_t n, sluice_request *req)
{
    writer_buf_reset(&c->body);
    int rc = writer_batch_begin(&c->body, n, base_wall_ms(), NULL, c->ctx_enc, c->ctx_len);
    for (uint32_t i = 0; i < n && !rc; i++)
        rc = writer_raw(&c->body, nodes[i]->data, nodes[i]->len);
    if (rc) return SLUICE_E_TOO_LARGE;
    req->body = c->body.data;
    req->body_len = c->body.len;
    req->content_encoding = NULL;
    if (c->cfg.compress) {
        size_t z = ZSTD_compressCCtx(c->zctx, c->zbuf, c->zcap, c->body.data, c->body.len, 3);
        if (!ZSTD_isError(z)) {
            req->body = c->zbuf;
            req->body_len = z;
            req->content_encoding = "zstd";
        }
    }
    return SLUICE_OK;
}

/* Disposes of a queue batch that could not be delivered: storage when set, else lost. */
static void give_up(sluice_client *c, sdk_node_t *const *nodes, uint32_t n, int err, int status,
                    const char *why)
{
    bool closing = atomic_load(&c->abort);
    pthread_mutex_lock(&c->mu);
    closing = closing || c->stopping;
    pthread_mutex_unlock(&c->mu);
    if (closing) atomic_fetch_add(&c->close_unsent, n);
    if (c->storage_dir) {
        int rc = sdk_storage_write(c, nodes, n);
        if (rc == SLUICE_OK) {
            atomic_fetch_add(&c->n_stored, n);
            /* Offline: do not retry the file just written before a full backoff period. */
            c->storage_retry_ms = base_mono_ms() + c->cfg.retry_max_ms;
            sdk_log(c, SLUICE_LOG_WARN, "%u events stored for later delivery (%s)", n, why);
            return;
        }
        atomic_fetch_add(&c->n_dropped, n);
        sdk_report(c, rc, status, n,
                   rc == SLUICE_E_TOO_LARGE ? "storage_dir is full" : "cannot write storage_dir");
        return;
    }
    atomic_fetch_add(&c->n_failed, n);
    sdk_report(c, err, status, n, why);
}

static bool retryable(int rc, int status)
{
    return rc != SLUICE_OK || status == 408 || status == 429 || status >= 500 || status < 200;
}

/*
 * Delivers nodes[0..n) (see the file comment). Does not free the nodes. from_file: the batch
 * came from storage_dir, so an undeliverable batch is left in its file instead of given up.
 */
static deliver_t deliver(sluice_client *c, sdk_node_t *const *nodes, uint32_t n, bool from_file)
{
    for (uint32_t attempt = 0;; attempt++) {
        if (!wait_pause(c)) {
            if (!from_file) give_up(c, nodes, n, SLUICE_E_CANCELLED, 0, "closed before delivery");
            return DELIVER_UNSENT;
        }
        sluice_request req = {.url = c->url,
                              .write_key = c->write_key,
                              .content_type = "application/msgpack",
                              .n_events = n,
                              .connect_timeout_ms = c->cfg.connect_timeout_ms,
                              .timeout_ms = c->cfg.request_timeout_ms};
        int rc = build_body(c, nodes, n, &req);
        sluice_response resp;
        memset(&resp, 0, sizeof resp);
        resp.retry_after_ms = -1;
        if (rc == SLUICE_OK) {
            rc = c->tp.send_cb(c->tp.ud, &req, &resp);
        } else {
            resp.status = 413; /* larger than one body (stored under a bigger batch_bytes) */
        }
        if (atomic_load(&c->abort)) {
            if (!from_file) give_up(c, nodes, n, SLUICE_E_CANCELLED, 0, "cancelled at close");
            return DELIVER_UNSENT;
        }
        int status = rc == SLUICE_OK ? resp.status : 0;
        if (rc == SLUICE_OK && status >= 200 && status < 300) {
            atomic_fetch_add(&c->n_sent, n);
            return DELIVER_DONE;
        }
        if (status == 413 && n > 1) {
            uint32_t h = n / 2;
            sdk_log(c, SLUICE_LOG_WARN, "413 for %u events: splitting", n);
            deliver_t a = deliver(c, nodes, h, from_file);
            deliver_t b = deliver(c, nodes + h, n - h, from_file);
            return a == DELIVER_UNSENT || b == DELIVER_UNSENT ? DELIVER_UNSENT : DELIVER_DONE;
        }
        if (!retryable(rc, status)) {
            atomic_fetch_add(&c->n_failed, n);
            sdk_report(c, SLUICE_E_HTTP, status, n,
                       resp.message[0] ? resp.message : "batch refused by the collector");
            return DELIVER_DONE;
        }
        /* Retryable: pause the whole sender (a Retry-After is a floor), then try again. */
        int64_t delay = backoff_ms(c, attempt + 1);
        int64_t ra = resp.retry_after_ms;
        if (ra > RETRY_AFTER_MAX_MS) ra = RETRY_AFTER_MAX_MS;
        if (ra > delay) delay = ra;
        pthread_mutex_lock(&c->mu);
        c->pause_until_ms = base_mono_ms() + delay;
        pthread_mutex_unlock(&c->mu);
        resp.message[sizeof resp.message - 1] = '\0';
        if (attempt >= c->cfg.max_retries) {
            if (!from_file) {
                int err = rc != SLUICE_OK ? rc : SLUICE_E_HTTP;
                give_up(c, nodes, n, err, status,
                        resp.message[0] ? resp.message : "retries exhausted");
            }
            return DELIVER_UNSENT;
        }
        atomic_fetch_add(&c->n_retried, 1);
        sdk_log(c, SLUICE_LOG_INFO, "retry %u for %u events in %lld ms (status %d, %s)",
                attempt + 1, n, (long long)delay, status, sluice_err_name(rc));
    }
}

/* Sends the oldest stored batch file. Called without mu. */
static void send_stored(sluice_client *c)
{
    sdk_node_t **nodes = NULL;
    uint32_t n = 0;
    char path[4096];
    int rc = sdk_storage_load_oldest(c, &nodes, &n, path, sizeof path);
    if (rc <= 0) {
        pthread_mutex_lock(&c->mu);
        if (rc == 0)
            c->storage_files = 0;
        else
            c->storage_retry_ms = base_mono_ms() + c->cfg.retry_max_ms;
        pthread_mutex_unlock(&c->mu);
        return;
    }
    deliver_t d = deliver(c, nodes, n, true);
    if (d == DELIVER_DONE) {
        sdk_storage_remove(c, path);
    } else {
        pthread_mutex_lock(&c->mu);
        c->storage_retry_ms = base_mono_ms() + c->cfg.retry_max_ms;
        pthread_mutex_unlock(&c->mu);
    }
    for (uint32_t i = 0; i < n; i++)
        free(nodes[i]);
    free(nodes);
}

/* Takes up to one batch off the queue head. Called with mu held. */
static uint32_t take_batch(sluice_client *c, sdk_node_t **batch)
{
    uint32_t n = 0;
    uint64_t bytes = 0;
    while (c->head && n < c->cfg.batch_size) {
        sdk_node_t *h = c->head;
        if (n > 0 && bytes + h->len > c->cfg.batch_bytes) break;
        bytes += h->len;
        c->head = h->next;
        h->next = NULL;
        batch[n++] = h;
    }
    if (!c->head) c->tail = NULL;
    c->q_events -= n;
    c->q_bytes -= bytes;
    return n;
}

/* Hands what is left in the queue at exit to give_up() in batch-sized pieces. Called without mu
 * on a list the worker already detached. */
static void drain_rest(sluice_client *c, sdk_node_t *rest, sdk_node_t **batch)
{
    while (rest) {
        uint32_t n = 0;
        uint64_t bytes = 0;
        while (rest && n < c->cfg.batch_size &&
               (n == 0 || bytes + rest->len <= c->cfg.batch_bytes)) {
            bytes += rest->len;
            batch[n++] = rest;
            rest = rest->next;
        }
        give_up(c, batch, n, SLUICE_E_CANCELLED, 0, "not sent before close");
        for (uint32_t i = 0; i < n; i++)
            free(batch[i]);
    }
}

void *sdk_worker_main(void *arg)
{
    sluice_client *c = arg;
    sigset_t all;
    sigfillset(&all);
    pthread_sigmask(SIG_BLOCK, &all, NULL);

    sdk_node_t **batch = malloc(sizeof *batch * c->cfg.batch_size);
    if (c->storage_dir && !c->storage_scanned) {
        if (sdk_storage_scan(c)) sdk_report(c, SLUICE_E_STORAGE, 0, 0, "cannot read storage_dir");
        c->storage_scanned = true;
    }
    const int64_t interval = c->cfg.flush_interval_ms;
    int64_t next_tick = base_mono_ms() + interval;

    pthread_mutex_lock(&c->mu);
    while (batch && !atomic_load(&c->abort)) {
        int64_t now = base_mono_ms();
        bool paused = now < c->pause_until_ms;
        if (c->storage_files && !paused && now >= c->storage_retry_ms) {
            pthread_mutex_unlock(&c->mu);
            send_stored(c);
            pthread_mutex_lock(&c->mu);
            continue;
        }
        bool ready = c->q_events >= c->cfg.batch_size || c->q_bytes >= c->cfg.batch_bytes ||
                     (c->head && (c->stopping || c->head->seq < c->flush_upto || now >= next_tick));
        if (ready && !paused) {
            uint32_t n = take_batch(c, batch);
            c->inflight_lo = batch[0]->seq;
            pthread_mutex_unlock(&c->mu);
            deliver(c, batch, n, false);
            for (uint32_t i = 0; i < n; i++)
                free(batch[i]);
            pthread_mutex_lock(&c->mu);
            c->inflight_lo = UINT64_MAX;
            pthread_cond_broadcast(&c->done);
            next_tick = base_mono_ms() + interval;
            continue;
        }
        if (!c->head && now >= next_tick) next_tick = now + interval;
        if (c->stopping && !c->head) break;
        int64_t until = next_tick;
        if (ready || (c->storage_files && c->pause_until_ms > now)) until = c->pause_until_ms;
        if (c->storage_files && !paused && c->storage_retry_ms < until) until = c->storage_retry_ms;
        struct timespec ts;
        abs_ts(&ts, until);
        pthread_cond_timedwait(&c->wake, &c->mu, &ts);
    }
    sdk_node_t *rest = c->head;
    c->head = c->tail = NULL;
    c->q_events = 0;
    c->q_bytes = 0;
    pthread_mutex_unlock(&c->mu);

    if (batch) {
        drain_rest(c, rest, batch);
    } else {
        sdk_report(c, SLUICE_E_NOMEM, 0, 0, "worker cannot allocate its batch array");
        for (sdk_node_t *r = rest; r; r = r->next)
            atomic_fetch_add(&c->close_unsent, 1);
        sdk_nodes_free(rest);
    }
    free(batch);

    pthread_mutex_lock(&c->mu);
    c->worker_exited = true;
    pthread_cond_broadcast(&c->done);
    pthread_mutex_unlock(&c->mu);
    return NULL;
}
