/*
 * worker.c — the client's background thread. It alone forms batches, encodes the envelope,
 * compresses, calls the transport, retries and touches storage_dir, so none of that ever runs on
 * an application thread. It holds the client mutex only to take events off the queue and to
 * wait; never while encoding, compressing, sending or writing files.
 *
 * One attempt at a batch (deliver()):
 *   2xx                      -> sent, minus the events its body lists as rejected (reply.c)
 *   413                      -> split in half, each half delivered on its own (one event: refused)
 *   408, 429, 5xx, network   -> retryable: the whole sender pauses for a full-jitter exponential
 *                               backoff, uniform in [0, min(retry_max, base * 2^k)], k counting
 *                               the sender's consecutive failures; a Retry-After is a minimum
 *   other status             -> refused: counted failed, reported through error_cb
 * What a retryable failure leads to depends on storage_dir (dispatch()):
 *   no storage_dir           -> the batch is kept in memory and retried until it is delivered,
 *                               refused, older than max_event_age_ms, or close() hits its deadline
 *                               (new events meanwhile fill the bounded queue: queue pressure)
 *   storage_dir              -> the batch goes to a file, sent (oldest first) once the pause is
 *                               over; while paused, every batch formed goes straight to disk
 *   storage_dir + write_ahead -> every batch is written (and fsync'd) before its first attempt,
 *                               and sent from that locked file
 * A batch is given up by age only: when its newest event is older than max_event_age_ms
 * (E_EXPIRED), or, if the application set one, after max_retries. Retries resend the same
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

/* Waits (interruptibly by abort) until the sender's pause is over. False when aborted. */
static bool wait_pause(sluice_client *c)
{
    pthread_mutex_lock(&c->mu);
    for (;;) {
        if (atomic_load(&c->abort)) break;
        int64_t now = base_mono_ms();
        if (now >= c->pause_until_ms) break;
        struct timespec ts;
        ts = base_mono_ts(c->pause_until_ms);
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

/* Backoff after the sender's k-th consecutive failure (1-based), full jitter. */
static int64_t backoff_ms(sluice_client *c, uint32_t k)
{
    uint64_t cap = c->cfg.retry_base_ms;
    for (uint32_t i = 1; i < k && cap < c->cfg.retry_max_ms; i++)
        cap *= 2;
    if (cap > c->cfg.retry_max_ms) cap = c->cfg.retry_max_ms;
    return (int64_t)(jitter_rand(c) % (cap + 1));
}

/* Builds the request body for nodes[0..n) into c->body (and c->zbuf when compressing). */
static int build_body(sluice_client *c, sdk_node_t *const *nodes, uint32_t n, sluice_request *req)
{
    base_buf_reset(&c->body);
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

static bool closing(sluice_client *c)
{
    return atomic_load(&c->abort);
}

/* True when every event of nodes[0..n) is older than max_event_age_ms. */
static bool expired(sluice_client *c, sdk_node_t *const *nodes, uint32_t n)
{
    int64_t newest = 0;
    for (uint32_t i = 0; i < n; i++)
        if (nodes[i]->born_ms > newest) newest = nodes[i]->born_ms;
    return base_wall_ms() - newest > (int64_t)c->cfg.max_event_age_ms;
}

static void count_expired(sluice_client *c, uint32_t n)
{
    atomic_fetch_add(&c->n_failed, n);
    atomic_fetch_add(&c->n_expired, n);
    sdk_report(c, SLUICE_E_EXPIRED, 0, n, "undelivered for longer than max_event_age_ms");
}

static deliver_t deliver(sluice_client *c, sdk_node_t *const *nodes, uint32_t n, bool once,
                         bool own);

/* Writes a batch to storage_dir. True when stored (held: kept locked in *held). */
static bool store(sluice_client *c, sdk_node_t *const *nodes, uint32_t n, sdk_file_t *held,
                  const char *why)
{
    int rc = sdk_storage_write(c, nodes, n, held);
    if (rc == SLUICE_OK) {
        atomic_fetch_add(&c->n_stored, n);
        sdk_log(c, SLUICE_LOG_DEBUG, "%u events stored (%s)", n, why);
        return true;
    }
    sdk_log(c, SLUICE_LOG_WARN, "%u events not stored (%s): %s; kept in memory", n,
            rc == SLUICE_E_TOO_LARGE ? "storage_max_bytes reached" : "cannot write storage_dir",
            why);
    return false;
}

/*
 * A memory batch whose attempt failed (or that close() interrupted): to storage_dir when set;
 * else, while the client runs, kept and retried in place (deliver, persistent); at close's
 * deadline, lost and reported.
 */
static void park(sluice_client *c, sdk_node_t *const *nodes, uint32_t n, int err, int status,
                 const char *why)
{
    if (c->storage_dir && store(c, nodes, n, NULL, why)) return;
    if (!closing(c)) {
        deliver(c, nodes, n, false, true);
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
 * Delivers nodes[0..n) (see the file comment). Does not free the nodes. once: a single attempt;
 * a retryable failure returns DELIVER_UNSENT with the sender paused (the caller stores the batch
 * or keeps its file). Otherwise (a memory batch without storage) it is retried until delivered,
 * refused, expired or aborted by close (then parked). own: the events were accepted by this
 * client (close() accounting).
 */
static deliver_t deliver(sluice_client *c, sdk_node_t *const *nodes, uint32_t n, bool once,
                         bool own)
{
    for (uint32_t attempt = 0;; attempt++) {
        if (!once && expired(c, nodes, n)) {
            count_expired(c, n);
            return DELIVER_DONE;
        }
        if (!wait_pause(c)) {
            if (!once) park(c, nodes, n, SLUICE_E_CANCELLED, 0, "closed before delivery");
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
        if (closing(c)) {
            if (!once) park(c, nodes, n, SLUICE_E_CANCELLED, 0, "cancelled at close");
            return DELIVER_UNSENT;
        }
        int status = rc == SLUICE_OK ? resp.status : 0;
        resp.message[sizeof resp.message - 1] = '\0';
        if (rc == SLUICE_OK && status >= 200 && status < 300) {
            c->fail_streak = 0;
            uint32_t rej = sdk_reply_rejections(c, resp.body, resp.body_len, n);
            atomic_fetch_add(&c->n_sent, n - rej);
            if (own) atomic_fetch_add(&c->life_delivered, n - rej);
            if (rej) {
                atomic_fetch_add(&c->n_failed, rej);
                atomic_fetch_add(&c->n_rejected, rej);
            }
            return DELIVER_DONE;
        }
        if (status == 413 && n > 1) {
            uint32_t h = n / 2;
            sdk_log(c, SLUICE_LOG_WARN, "413 for %u events: splitting", n);
            deliver_t a = deliver(c, nodes, h, once, own);
            deliver_t b = deliver(c, nodes + h, n - h, once, own);
            return a == DELIVER_UNSENT || b == DELIVER_UNSENT ? DELIVER_UNSENT : DELIVER_DONE;
        }
        if (!retryable(rc, status)) {
            c->fail_streak = 0;
            atomic_fetch_add(&c->n_failed, n);
            sdk_report(c, SLUICE_E_HTTP, status, n,
                       resp.message[0] ? resp.message : "batch refused by the collector");
            return DELIVER_DONE;
        }
        /* Retryable: pause the whole sender (a Retry-After is a floor), then try again. */
        if (c->fail_streak < 64) c->fail_streak++;
        int64_t delay = backoff_ms(c, c->fail_streak);
        int64_t ra = resp.retry_after_ms;
        if (ra > RETRY_AFTER_MAX_MS) ra = RETRY_AFTER_MAX_MS;
        if (ra > delay) delay = ra;
        pthread_mutex_lock(&c->mu);
        c->pause_until_ms = base_mono_ms() + delay;
        pthread_mutex_unlock(&c->mu);
        if (!once && c->cfg.max_retries && attempt >= c->cfg.max_retries) {
            int err = rc != SLUICE_OK ? rc : SLUICE_E_HTTP;
            atomic_fetch_add(&c->n_failed, n);
            sdk_report(c, err, status, n, resp.message[0] ? resp.message : "max_retries reached");
            return DELIVER_DONE;
        }
        atomic_fetch_add(&c->n_retried, 1);
        sdk_log(c, SLUICE_LOG_INFO, "%u events: attempt %u failed (status %d, %s); next in %lld ms",
                n, attempt + 1, status, sluice_err_name(rc), (long long)delay);
        if (once) return DELIVER_UNSENT;
    }
}

/* Sends the oldest stored batch file no one else holds. Called without mu. */
static void send_stored(sluice_client *c)
{
    sdk_node_t **nodes = NULL;
    uint32_t n = 0, locked = 0;
    sdk_file_t f;
    int rc = sdk_storage_load_oldest(c, &nodes, &n, &f, &locked);
    if (rc <= 0) {
        pthread_mutex_lock(&c->mu);
        if (rc == 0 && !locked)
            c->storage_files = 0;
        else /* files held by another client, or an error: look again later */
            c->storage_retry_ms = base_mono_ms() + c->cfg.retry_max_ms;
        pthread_mutex_unlock(&c->mu);
        return;
    }
    if (expired(c, nodes, n)) {
        count_expired(c, n);
        sdk_storage_remove(c, &f);
    } else if (deliver(c, nodes, n, true, f.own) == DELIVER_DONE) {
        sdk_storage_remove(c, &f);
    } else {
        sdk_storage_release(&f);
    }
    for (uint32_t i = 0; i < n; i++)
        free(nodes[i]);
    free(nodes);
}

/* A batch just taken off the queue (see the file comment). paused: the sender is pausing after
 * a failure, so (with storage_dir) the batch goes to disk without an attempt. */
static void dispatch(sluice_client *c, sdk_node_t *const *nodes, uint32_t n, bool paused)
{
    if (!c->storage_dir) {
        deliver(c, nodes, n, false, true);
        return;
    }
    if (c->cfg.write_ahead || paused) {
        sdk_file_t f;
        bool send_now = c->cfg.write_ahead && !paused;
        if (store(c, nodes, n, send_now ? &f : NULL, paused ? "sender paused" : "write-ahead")) {
            if (send_now) {
                if (deliver(c, nodes, n, true, true) == DELIVER_DONE)
                    sdk_storage_remove(c, &f);
                else
                    sdk_storage_release(&f);
            }
            return;
        }
        /* Storage full or failing: deliver from memory (retried until delivered or expired). */
        deliver(c, nodes, n, false, true);
        return;
    }
    if (deliver(c, nodes, n, true, true) == DELIVER_UNSENT)
        park(c, nodes, n, SLUICE_E_CANCELLED, 0, "not delivered before close");
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

/* Hands what is left in the queue at exit to park() in batch-sized pieces. Called without mu
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
        park(c, batch, n, SLUICE_E_CANCELLED, 0, "not sent before close");
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
        /* With storage_dir, batches formed while paused go to disk at once. */
        if (ready && (!paused || c->storage_dir)) {
            uint32_t n = take_batch(c, batch);
            c->inflight_lo = batch[0]->seq;
            c->inflight_n = n;
            pthread_mutex_unlock(&c->mu);
            dispatch(c, batch, n, paused);
            for (uint32_t i = 0; i < n; i++)
                free(batch[i]);
            pthread_mutex_lock(&c->mu);
            c->inflight_lo = UINT64_MAX;
            c->inflight_n = 0;
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
        ts = base_mono_ts(until);
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
            atomic_fetch_add(&c->n_failed, 1);
        sdk_nodes_free(rest);
    }
    free(batch);

    pthread_mutex_lock(&c->mu);
    c->worker_exited = true;
    pthread_cond_broadcast(&c->done);
    pthread_mutex_unlock(&c->mu);
    return NULL;
}
