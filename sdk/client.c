/*
 * client.c — the application-facing calls: config, event validation and encoding, the bounded
 * queue, flush, close, counters, and fork handling.
 *
 * Hot path (sluice_send): validate, generate the messageId from a per-thread PRNG, compute the
 * exact encoded size, one malloc, encode, then a few pointer updates under the client mutex. The
 * mutex is never held by anyone during I/O, so a send never waits for the network.
 */
#include "internal.h"

#include <errno.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <stddef.h>
#include <string.h>
#include <strings.h>
#include <sys/random.h>
#include <time.h>

#include <curl/curl.h>

/* ---- errors, version, global init ---- */

const char *sluice_strerror(int err)
{
    switch (err) {
#define SLUICE_X_MSG(name, val, msg)                                                               \
    case val:                                                                                      \
        return msg;
        SLUICE_ERRORS(SLUICE_X_MSG)
#undef SLUICE_X_MSG
    }
    return "unknown error";
}

const char *sluice_err_name(int err)
{
    switch (err) {
#define SLUICE_X_NAME(name, val, msg)                                                              \
    case val:                                                                                      \
        return "SLUICE_" #name;
        SLUICE_ERRORS(SLUICE_X_NAME)
#undef SLUICE_X_NAME
    }
    return "SLUICE_E_UNKNOWN";
}

const char *sluice_version(void)
{
    return SLUICE_VERSION_STRING;
}

int sluice_global_init(void)
{
    return curl_global_init(CURL_GLOBAL_DEFAULT) == CURLE_OK ? SLUICE_OK : SLUICE_E_NOMEM;
}

void sluice_global_cleanup(void)
{
    curl_global_cleanup();
}

/* ---- clocks, logging ---- */

void sdk_log(sluice_client *c, int level, const char *fmt, ...)
{
    if (!c->cfg.log_cb) return;
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    c->cfg.log_cb(c->cfg.cb_ud, level, msg);
}

void sdk_report(sluice_client *c, int err, int status, uint32_t n_events, const char *msg)
{
    sdk_log(c, SLUICE_LOG_ERROR, "%s (status %d, %u events): %s", sluice_err_name(err), status,
            n_events, msg ? msg : "");
    if (c->cfg.error_cb) c->cfg.error_cb(c->cfg.cb_ud, err, status, n_events, msg ? msg : "");
}

/* ---- config ---- */

int sluice_config_init(sluice_config *cfg, int version)
{
    if (!cfg) return SLUICE_E_INVAL;
    if (version < 1 || version > SLUICE_CONFIG_VERSION) return SLUICE_E_VERSION;
    memset(cfg, 0, sizeof *cfg);
    cfg->version = version;
    cfg->batch_size = 100;
    cfg->batch_bytes = 500 * 1024;
    cfg->flush_interval_ms = 1000;
    cfg->queue_max_events = 10000;
    cfg->queue_max_bytes = 16u * 1024 * 1024;
    cfg->queue_full_policy = SLUICE_QUEUE_FULL_REJECT;
    cfg->event_max_bytes = 32 * 1024;
    cfg->connect_timeout_ms = 5000;
    cfg->request_timeout_ms = 15000;
    cfg->retry_base_ms = 200;
    cfg->retry_max_ms = 30000;
    cfg->max_retries = 0;
    cfg->compress = 1;
    cfg->storage_max_bytes = 64u * 1024 * 1024;
    cfg->max_event_age_ms = 24ull * 3600 * 1000;
    return SLUICE_OK;
}

/* Sizes of older sluice_configs: a v1 / v2 caller's struct ends here. */
#define CONFIG_V1_SIZE offsetof(sluice_config, max_event_age_ms)
#define CONFIG_V2_SIZE offsetof(sluice_config, ca_file)

/*
 * SLUICE_E_URL unless url is "http://" or "https://" (any case) followed by a host, without
 * spaces or control characters. Anything else (ftp://, file://, "not a url") could never reach
 * a collector and would only retry until the events expire.
 */
static int check_url(const char *url)
{
    size_t skip;
    if (!strncasecmp(url, "http://", 7))
        skip = 7;
    else if (!strncasecmp(url, "https://", 8))
        skip = 8;
    else
        return SLUICE_E_URL;
    const char *host = url + skip;
    if (!*host || *host == '/' || *host == ':' || *host == '?' || *host == '#') return SLUICE_E_URL;
    for (const unsigned char *p = (const unsigned char *)url; *p; p++)
        if (*p <= ' ' || *p == 0x7f) return SLUICE_E_URL;
    return SLUICE_OK;
}

static int config_check(const sluice_config *cfg)
{
    if (cfg->version < 1 || cfg->version > SLUICE_CONFIG_VERSION) return SLUICE_E_VERSION;
    if (!cfg->endpoint || !*cfg->endpoint || !cfg->write_key || !*cfg->write_key)
        return SLUICE_E_INVAL;
    if (strlen(cfg->endpoint) > 2048 || strlen(cfg->write_key) > 1024) return SLUICE_E_INVAL;
    int rc = check_url(cfg->endpoint);
    if (rc) return rc;
    if (cfg->batch_size < 1 || cfg->batch_size > 10000) return SLUICE_E_INVAL;
    if (cfg->batch_bytes < 1024 || cfg->batch_bytes > SDK_BODY_LIMIT - SDK_ENVELOPE_MAX)
        return SLUICE_E_INVAL;
    if (cfg->event_max_bytes < 256 || cfg->event_max_bytes > cfg->batch_bytes)
        return SLUICE_E_INVAL;
    if (cfg->queue_max_events < 1 || cfg->queue_max_bytes < cfg->event_max_bytes)
        return SLUICE_E_INVAL;
    if (cfg->queue_full_policy != SLUICE_QUEUE_FULL_REJECT &&
        cfg->queue_full_policy != SLUICE_QUEUE_FULL_DROP_OLDEST)
        return SLUICE_E_INVAL;
    if (cfg->flush_interval_ms < 1 || cfg->request_timeout_ms < 1 || cfg->connect_timeout_ms < 1)
        return SLUICE_E_INVAL;
    if (cfg->retry_base_ms > cfg->retry_max_ms) return SLUICE_E_INVAL;
    if (cfg->transport && !cfg->transport->send_cb) return SLUICE_E_INVAL;
    if (cfg->storage_dir && (!*cfg->storage_dir || strlen(cfg->storage_dir) > 3000))
        return SLUICE_E_INVAL;
    if (cfg->max_event_age_ms < 1000) return SLUICE_E_INVAL;
    if (cfg->write_ahead && !cfg->storage_dir) return SLUICE_E_INVAL;
    return sdk_context_check(cfg);
}

/* ---- fork handling ---- */

/*
 * Every live client is in this registry so the fork handlers can take each client's mutex before
 * fork() (so the child's copy of the queue is consistent) and give the child fresh locks. The
 * registry and the handler registration are the library's only global state.
 */
static pthread_mutex_t reg_mu = PTHREAD_MUTEX_INITIALIZER;
static sluice_client *reg_head;
static pthread_once_t atfork_once = PTHREAD_ONCE_INIT;
/* Bumped in every fork child so per-thread PRNGs reseed (parent and child never share ids). */
static atomic_uint fork_generation;

static void atfork_prepare(void)
{
    pthread_mutex_lock(&reg_mu);
    for (sluice_client *c = reg_head; c; c = c->reg_next)
        pthread_mutex_lock(&c->mu);
}

static void atfork_parent(void)
{
    for (sluice_client *c = reg_head; c; c = c->reg_next)
        pthread_mutex_unlock(&c->mu);
    pthread_mutex_unlock(&reg_mu);
}

static void init_sync(sluice_client *c)
{
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_mutex_init(&c->mu, NULL);
    pthread_cond_init(&c->wake, &ca);
    pthread_cond_init(&c->done, &ca);
    pthread_condattr_destroy(&ca);
}

/*
 * In the child only this thread exists. The worker thread is gone (its in-flight batch is
 * abandoned: the parent owns its delivery), condition variables may record waiters that no
 * longer exist, so every lock and condition is re-initialized rather than unlocked.
 */
static void atfork_child(void)
{
    atomic_fetch_add(&fork_generation, 1);
    for (sluice_client *c = reg_head; c; c = c->reg_next) {
        sdk_node_t *q = c->head;
        init_sync(c);
        c->head = c->tail = NULL;
        c->q_events = 0;
        c->q_bytes = 0;
        c->flush_upto = 0;
        c->inflight_lo = UINT64_MAX;
        c->inflight_n = 0;
        atomic_store(&c->life_queued, 0);
        atomic_store(&c->life_delivered, 0);
        c->stopping = false;
        c->worker_running = false;
        c->worker_exited = false;
        c->pause_until_ms = 0;
        c->storage_scanned = false;
        atomic_store(&c->abort, false);
        /* glibc's malloc is usable in the child once fork() returns. */
        sdk_nodes_free(q);
    }
    pthread_mutex_init(&reg_mu, NULL);
}

static void register_atfork(void)
{
    pthread_atfork(atfork_prepare, atfork_parent, atfork_child);
}

static void reg_add(sluice_client *c)
{
    pthread_once(&atfork_once, register_atfork);
    pthread_mutex_lock(&reg_mu);
    c->reg_prev = NULL;
    c->reg_next = reg_head;
    if (reg_head) reg_head->reg_prev = c;
    reg_head = c;
    pthread_mutex_unlock(&reg_mu);
}

static void reg_remove(sluice_client *c)
{
    pthread_mutex_lock(&reg_mu);
    if (c->reg_prev)
        c->reg_prev->reg_next = c->reg_next;
    else
        reg_head = c->reg_next;
    if (c->reg_next) c->reg_next->reg_prev = c->reg_prev;
    pthread_mutex_unlock(&reg_mu);
}

/* ---- message ids ---- */

/* xoshiro256** per thread, seeded from getrandom() and reseeded after fork. */
static _Thread_local struct {
    uint64_t s[4];
    unsigned gen;
    bool seeded;
} tl_rng;

static uint64_t rotl(uint64_t x, int k)
{
    return (x << k) | (x >> (64 - k));
}

static uint64_t rng_next(void)
{
    uint64_t *s = tl_rng.s;
    uint64_t r = rotl(s[1] * 5, 7) * 9, t = s[1] << 17;
    s[2] ^= s[0];
    s[3] ^= s[1];
    s[1] ^= s[2];
    s[0] ^= s[3];
    s[2] ^= t;
    s[3] = rotl(s[3], 45);
    return r;
}

static void rng_seed(void)
{
    unsigned gen = atomic_load_explicit(&fork_generation, memory_order_relaxed);
    if (tl_rng.seeded && tl_rng.gen == gen) return;
    uint64_t seed[4] = {0};
    ssize_t got = getrandom(seed, sizeof seed, 0);
    if (got != (ssize_t)sizeof seed) {
        /* No entropy syscall (very old kernel or seccomp): time and address mix; ids stay unique
         * per thread because the state is never shared. */
        seed[0] = base_mono_ns() ^ ((uint64_t)base_wall_ms() << 20);
        seed[1] = (uint64_t)(uintptr_t)&tl_rng;
        seed[2] = (uint64_t)getpid() << 32 | gen;
        seed[3] = 0x9e3779b97f4a7c15u;
    }
    memcpy(tl_rng.s, seed, sizeof seed);
    tl_rng.gen = gen;
    tl_rng.seeded = true;
    for (int i = 0; i < 8; i++)
        (void)rng_next();
}

void sdk_uuid(char out[SDK_UUID_LEN + 1])
{
    rng_seed();
    uint64_t hi = rng_next();
    writer_uuid_v4(hi, rng_next(), out);
}

/* ---- client lifecycle ---- */

static char *dup_or_null(const char *s)
{
    return s ? strdup(s) : NULL;
}

static void client_free(sluice_client *c)
{
    if (c->tp.destroy_cb) c->tp.destroy_cb(c->tp.ud);
    sdk_nodes_free(c->head);
    ZSTD_freeCCtx(c->zctx);
    base_buf_free(&c->body);
    free(c->zbuf);
    free(c->endpoint);
    free(c->write_key);
    free(c->storage_dir);
    free(c->url);
    for (size_t i = 0; i < sizeof c->ctx_strs / sizeof c->ctx_strs[0]; i++)
        free(c->ctx_strs[i]);
    pthread_mutex_destroy(&c->mu);
    pthread_cond_destroy(&c->wake);
    pthread_cond_destroy(&c->done);
    free(c);
}

/* Starts the worker with every signal blocked (inherited by the new thread, so no signal can be
 * delivered to it even before it runs). Called with mu held. */
static int start_worker(sluice_client *c)
{
    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &old);
    c->worker_exited = false;
    int rc = pthread_create(&c->thread, NULL, sdk_worker_main, c);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    if (rc) return SLUICE_E_THREAD;
    c->worker_running = true;
    return SLUICE_OK;
}

/* Copies the (complete) config and every string it points at. SLUICE_E_NOMEM. */
static int copy_config(sluice_client *c, const sluice_config *cfg)
{
    c->cfg = *cfg;
    c->endpoint = strdup(cfg->endpoint);
    c->write_key = strdup(cfg->write_key);
    c->storage_dir = dup_or_null(cfg->storage_dir);
    c->cfg.endpoint = c->endpoint;
    c->cfg.write_key = c->write_key;
    c->cfg.storage_dir = c->storage_dir;
    c->cfg.transport = NULL;
    if (!c->endpoint || !c->write_key || (cfg->storage_dir && !c->storage_dir))
        return SLUICE_E_NOMEM;
    const char **strs[6] = {&c->cfg.library_name, &c->cfg.library_version, &c->cfg.app_name,
                            &c->cfg.app_version,  &c->cfg.locale,          &c->cfg.timezone};
    for (size_t i = 0; i < 6; i++) {
        if (!*strs[i]) continue;
        if (!(c->ctx_strs[i] = strdup(*strs[i]))) return SLUICE_E_NOMEM;
        *strs[i] = c->ctx_strs[i];
    }
    return SLUICE_OK;
}

int sluice_client_new(sluice_client **out, const sluice_config *cfg)
{
    if (!out) return SLUICE_E_INVAL;
    *out = NULL;
    if (!cfg) return SLUICE_E_INVAL;
    if (cfg->version < 1 || cfg->version > SLUICE_CONFIG_VERSION) return SLUICE_E_VERSION;
    /* Only the fields a config of cfg->version has are read; the others keep their defaults. */
    sluice_config full;
    sluice_config_init(&full, SLUICE_CONFIG_VERSION);
    memcpy(&full, cfg,
           cfg->version == 1   ? CONFIG_V1_SIZE
           : cfg->version == 2 ? CONFIG_V2_SIZE
                               : sizeof full);
    cfg = &full;
    int rc = config_check(cfg);
    if (rc) {
        if (cfg->transport && cfg->transport->destroy_cb && rc != SLUICE_E_VERSION)
            cfg->transport->destroy_cb(cfg->transport->ud);
        return rc;
    }
    sluice_client *c = calloc(1, sizeof *c);
    if (!c) {
        if (cfg->transport && cfg->transport->destroy_cb)
            cfg->transport->destroy_cb(cfg->transport->ud);
        return SLUICE_E_NOMEM;
    }
    if (cfg->transport) c->tp = *cfg->transport;
    init_sync(c);
    c->inflight_lo = UINT64_MAX;
    atomic_init(&c->abort, false);
    rc = copy_config(c, cfg);
    if (rc) goto fail;
    rc = SLUICE_E_NOMEM;
    size_t elen = strlen(cfg->endpoint);
    while (elen && cfg->endpoint[elen - 1] == '/')
        elen--;
    c->url = malloc(elen + sizeof "/v1/batch");
    if (!c->url) goto fail;
    memcpy(c->url, cfg->endpoint, elen);
    memcpy(c->url + elen, "/v1/batch", sizeof "/v1/batch");
    char tag[SDK_UUID_LEN + 1];
    sdk_uuid(tag);
    memcpy(c->inst, tag, 8);
    c->inst[8] = '\0';
    atomic_init(&c->opted_out, c->cfg.opt_out != 0);
    if (c->storage_dir) {
        /* Disk I/O on the creating thread, once: an unusable directory is a config error. */
        if ((rc = sdk_storage_open(c))) goto fail;
    } else {
        sdk_uuid(c->anon_id);
    }
    rc = SLUICE_E_NOMEM;
    if (!cfg->transport && sdk_curl_transport_new(&c->tp, cfg->ca_file)) goto fail;
    c->zctx = ZSTD_createCCtx();
    base_buf_init(&c->body, c->cfg.batch_bytes + SDK_ENVELOPE_MAX);
    c->zcap = ZSTD_compressBound(c->cfg.batch_bytes + SDK_ENVELOPE_MAX);
    c->zbuf = malloc(c->zcap);
    if (!c->zctx || !c->zbuf || base_buf_reserve(&c->body, c->body.max)) goto fail;
    if (sdk_context_encode(c)) goto fail;
    if (getrandom(&c->rng, sizeof c->rng, 0) != (ssize_t)sizeof c->rng)
        c->rng = (uint64_t)base_wall_ms() * 0x9e3779b97f4a7c15u | 1;
    reg_add(c);
    pthread_mutex_lock(&c->mu);
    rc = start_worker(c);
    pthread_mutex_unlock(&c->mu);
    if (rc) {
        reg_remove(c);
        goto fail;
    }
    *out = c;
    return SLUICE_OK;
fail:
    client_free(c);
    return rc;
}

/* True when every event queued before `target` was resolved. Called with mu held. */
static bool flushed(const sluice_client *c, uint64_t target)
{
    return (!c->head || c->head->seq >= target) && c->inflight_lo >= target;
}

int sluice_flush(sluice_client *c, uint32_t timeout_ms)
{
    if (!c) return SLUICE_E_INVAL;
    struct timespec ts = base_deadline(CLOCK_MONOTONIC, timeout_ms);
    int rc = SLUICE_OK;
    pthread_mutex_lock(&c->mu);
    uint64_t target = c->next_seq;
    if (c->flush_upto < target) c->flush_upto = target;
    pthread_cond_signal(&c->wake);
    while (!flushed(c, target)) {
        if (!c->worker_running || c->worker_exited ||
            pthread_cond_timedwait(&c->done, &c->mu, &ts) == ETIMEDOUT) {
            rc = flushed(c, target) ? SLUICE_OK : SLUICE_E_TIMEOUT;
            break;
        }
    }
    pthread_mutex_unlock(&c->mu);
    return rc;
}

int sluice_client_close(sluice_client *c, uint32_t timeout_ms)
{
    if (!c) return SLUICE_E_INVAL;
    struct timespec ts = base_deadline(CLOCK_MONOTONIC, timeout_ms);
    reg_remove(c);
    pthread_mutex_lock(&c->mu);
    c->stopping = true;
    pthread_cond_signal(&c->wake);
    bool running = c->worker_running;
    while (running && !c->worker_exited) {
        if (pthread_cond_timedwait(&c->done, &c->mu, &ts) == ETIMEDOUT) break;
    }
    bool exited = c->worker_exited;
    pthread_mutex_unlock(&c->mu);
    if (running && !exited) {
        /* Deadline: the worker stores (or gives up) what it holds as soon as it sees abort. */
        atomic_store(&c->abort, true);
        if (c->tp.cancel_cb) c->tp.cancel_cb(c->tp.ud);
        pthread_mutex_lock(&c->mu);
        pthread_cond_signal(&c->wake);
        pthread_mutex_unlock(&c->mu);
    }
    if (running) pthread_join(c->thread, NULL);
    /* Everything accepted and not delivered, over the client's life (the worker has exited, so
     * nothing moves any more). */
    uint64_t queued = atomic_load(&c->life_queued), delivered = atomic_load(&c->life_delivered);
    uint64_t unsent = queued > delivered ? queued - delivered : 0;
    client_free(c);
    return unsent > INT32_MAX ? INT32_MAX : (int)unsent;
}

int sluice_client_stats(sluice_client *c, sluice_stats *out)
{
    if (!c || !out) return SLUICE_E_INVAL;
    out->queued = atomic_load_explicit(&c->n_queued, memory_order_relaxed);
    out->sent = atomic_load_explicit(&c->n_sent, memory_order_relaxed);
    out->dropped = atomic_load_explicit(&c->n_dropped, memory_order_relaxed);
    out->retried = atomic_load_explicit(&c->n_retried, memory_order_relaxed);
    out->failed = atomic_load_explicit(&c->n_failed, memory_order_relaxed);
    out->stored = atomic_load_explicit(&c->n_stored, memory_order_relaxed);
    out->rejected = atomic_load_explicit(&c->n_rejected, memory_order_relaxed);
    out->expired = atomic_load_explicit(&c->n_expired, memory_order_relaxed);
    pthread_mutex_lock(&c->mu);
    out->queue_events = c->q_events;
    out->queue_bytes = c->q_bytes;
    out->in_flight = c->inflight_n;
    pthread_mutex_unlock(&c->mu);
    return SLUICE_OK;
}

/* ---- events ---- */

/* A required/optional string field: NULL allowed unless required, else 1..max bytes UTF-8. */
static int check_str(const char *s, size_t max, bool required)
{
    if (!s) return required ? SLUICE_E_INVAL : SLUICE_OK;
    size_t n = strlen(s);
    if (n == 0 || n > max) return SLUICE_E_INVAL;
    return base_utf8_valid(s, n) ? SLUICE_OK : SLUICE_E_UTF8;
}

static int props_blob(const sluice_props *p, const void **data, size_t *len)
{
    *data = NULL;
    *len = 0;
    if (!p) return SLUICE_OK;
    int err;
    *data = sdk_props_data(p, len, &err);
    return err;
}

/* Pushes n under mu, applying the full-queue policy. Nodes evicted by DROP_OLDEST are returned
 * through *evicted (freed by the caller after unlocking). */
static int enqueue_locked(sluice_client *c, sdk_node_t *n, sdk_node_t **evicted)
{
    const sluice_config *cfg = &c->cfg;
    bool full =
        c->q_events + 1 > cfg->queue_max_events || c->q_bytes + n->len > cfg->queue_max_bytes;
    if (full && cfg->queue_full_policy == SLUICE_QUEUE_FULL_REJECT) return SLUICE_E_QUEUE_FULL;
    sdk_node_t *ev_head = NULL, **ev_tail = &ev_head;
    uint64_t dropped = 0;
    while (c->head && (c->q_events + 1 > cfg->queue_max_events ||
                       c->q_bytes + n->len > cfg->queue_max_bytes)) {
        sdk_node_t *old = c->head;
        c->head = old->next;
        c->q_events--;
        c->q_bytes -= old->len;
        old->next = NULL;
        *ev_tail = old;
        ev_tail = &old->next;
        dropped++;
    }
    if (!c->head) c->tail = NULL;
    *evicted = ev_head;
    if (dropped) atomic_fetch_add_explicit(&c->n_dropped, dropped, memory_order_relaxed);
    n->born_ms = base_wall_ms();
    n->seq = c->next_seq++;
    n->next = NULL;
    if (c->tail)
        c->tail->next = n;
    else
        c->head = n;
    c->tail = n;
    c->q_events++;
    c->q_bytes += n->len;
    /* Wake the worker only when a full batch becomes available: signalling on every event would
     * cost a futex wake per call while the worker sleeps (or waits out a backoff). */
    if (c->q_events == cfg->batch_size ||
        (c->q_bytes >= cfg->batch_bytes && c->q_bytes - n->len < cfg->batch_bytes))
        pthread_cond_signal(&c->wake);
    return SLUICE_OK;
}

int sluice_send(sluice_client *c, const sluice_event *ev)
{
    if (!c || !ev || !ev->type) return SLUICE_E_INVAL;
    if (atomic_load_explicit(&c->opted_out, memory_order_relaxed)) return SLUICE_E_OPTED_OUT;
    const char *t = ev->type;
    bool track = !strcmp(t, "track"), group = !strcmp(t, "group"), alias = !strcmp(t, "alias");
    bool page = !strcmp(t, "page") || !strcmp(t, "screen");
    if (!track && !group && !alias && !page && strcmp(t, "identify")) return SLUICE_E_INVAL;
    const char *anon = ev->anonymous_id;
    if (!ev->user_id && !anon) anon = c->anon_id;
    int rc;
    if ((rc = check_str(ev->user_id, 255, false)) ||
        (rc = check_str(ev->anonymous_id, 255, false)) || (rc = check_str(ev->event, 200, track)) ||
        (rc = check_str(ev->name, 255, false)) || (rc = check_str(ev->group_id, 255, group)) ||
        (rc = check_str(ev->previous_id, 255, alias)) ||
        (rc = check_str(ev->message_id, 100, false)))
        return rc;

    writer_event_t we = {.type = t,
                         .user_id = ev->user_id,
                         .anonymous_id = anon,
                         .event = track ? ev->event : NULL,
                         .name = page ? ev->name : NULL,
                         .group_id = group ? ev->group_id : NULL,
                         .previous_id = alias ? ev->previous_id : NULL,
                         .has_timestamp = true,
                         .timestamp_ms = ev->timestamp_ms ? ev->timestamp_ms : base_wall_ms()};
    if ((rc = props_blob(ev->properties, &we.properties, &we.properties_len)) ||
        (rc = props_blob(ev->traits, &we.traits, &we.traits_len)) ||
        (rc = props_blob(ev->context, &we.context, &we.context_len)))
        return rc;
    /* An event with its own context gets the default context's keys it lacks (the batch-level
     * context, merged by the server, covers events without one). */
    char *merged = NULL;
    if (we.context &&
        (rc = sdk_context_merge(c, we.context, we.context_len, &merged, &we.context_len)))
        return rc;
    if (merged) we.context = merged;
    char id[WRITER_UUID_LEN + 1];
    if (ev->message_id) {
        we.message_id = ev->message_id;
    } else {
        sdk_uuid(id);
        we.message_id = id;
    }
    size_t size = writer_event_size(&we);
    sdk_node_t *n = size > c->cfg.event_max_bytes ? NULL : malloc(sizeof *n + size);
    if (!n) {
        free(merged);
        return size > c->cfg.event_max_bytes ? SLUICE_E_TOO_LARGE : SLUICE_E_NOMEM;
    }
    base_buf_t b;
    base_buf_init_fixed(&b, n->data, size);
    rc = writer_event(&b, &we);
    free(merged);
    if (rc || b.len != size) { /* writer_event_size() and writer_event() disagree: our bug */
        free(n);
        return SLUICE_E_NOMEM;
    }
    n->len = (uint32_t)size;

    sdk_node_t *evicted = NULL;
    pthread_mutex_lock(&c->mu);
    rc = enqueue_locked(c, n, &evicted);
    if (!rc) {
        atomic_fetch_add_explicit(&c->n_queued, 1, memory_order_relaxed);
        atomic_fetch_add_explicit(&c->life_queued, 1, memory_order_relaxed);
    }
    if (!rc && !c->worker_running && !c->stopping) {
        /* Fresh fork child: restart the worker lazily. A failure keeps the event queued (flush
         * and close report it) and is retried by the next call. */
        if (start_worker(c)) sdk_log(c, SLUICE_LOG_ERROR, "cannot restart the worker thread");
    }
    pthread_mutex_unlock(&c->mu);
    if (rc) {
        atomic_fetch_add_explicit(&c->n_dropped, 1, memory_order_relaxed);
        free(n);
        return rc;
    }
    sdk_nodes_free(evicted);
    return SLUICE_OK;
}

int sluice_track_ctx(sluice_client *c, const char *user_id, const char *event,
                     const sluice_props *properties, const sluice_props *context)
{
    sluice_event ev = {.type = "track",
                       .user_id = user_id,
                       .event = event,
                       .properties = properties,
                       .context = context};
    return sluice_send(c, &ev);
}

int sluice_identify_ctx(sluice_client *c, const char *user_id, const sluice_props *traits,
                        const sluice_props *context)
{
    sluice_event ev = {
        .type = "identify", .user_id = user_id, .traits = traits, .context = context};
    return sluice_send(c, &ev);
}

int sluice_group_ctx(sluice_client *c, const char *user_id, const char *group_id,
                     const sluice_props *traits, const sluice_props *context)
{
    sluice_event ev = {.type = "group",
                       .user_id = user_id,
                       .group_id = group_id,
                       .traits = traits,
                       .context = context};
    return sluice_send(c, &ev);
}

int sluice_page_ctx(sluice_client *c, const char *user_id, const char *name,
                    const sluice_props *properties, const sluice_props *context)
{
    sluice_event ev = {.type = "page",
                       .user_id = user_id,
                       .name = name,
                       .properties = properties,
                       .context = context};
    return sluice_send(c, &ev);
}

int sluice_screen_ctx(sluice_client *c, const char *user_id, const char *name,
                      const sluice_props *properties, const sluice_props *context)
{
    sluice_event ev = {.type = "screen",
                       .user_id = user_id,
                       .name = name,
                       .properties = properties,
                       .context = context};
    return sluice_send(c, &ev);
}

int sluice_alias_ctx(sluice_client *c, const char *user_id, const char *previous_id,
                     const sluice_props *context)
{
    /* alias links previous_id to a known user: an anonymous alias makes no sense. */
    sluice_event ev = {
        .type = "alias", .user_id = user_id, .previous_id = previous_id, .context = context};
    return user_id ? sluice_send(c, &ev) : SLUICE_E_INVAL;
}

int sluice_track(sluice_client *c, const char *user_id, const char *event,
                 const sluice_props *properties)
{
    return sluice_track_ctx(c, user_id, event, properties, NULL);
}

int sluice_identify(sluice_client *c, const char *user_id, const sluice_props *traits)
{
    return sluice_identify_ctx(c, user_id, traits, NULL);
}

int sluice_group(sluice_client *c, const char *user_id, const char *group_id,
                 const sluice_props *traits)
{
    return sluice_group_ctx(c, user_id, group_id, traits, NULL);
}

int sluice_page(sluice_client *c, const char *user_id, const char *name,
                const sluice_props *properties)
{
    return sluice_page_ctx(c, user_id, name, properties, NULL);
}

int sluice_screen(sluice_client *c, const char *user_id, const char *name,
                  const sluice_props *properties)
{
    return sluice_screen_ctx(c, user_id, name, properties, NULL);
}

int sluice_alias(sluice_client *c, const char *user_id, const char *previous_id)
{
    return sluice_alias_ctx(c, user_id, previous_id, NULL);
}

/* ---- anonymousId, opt-out ---- */

const char *sluice_anonymous_id(sluice_client *c)
{
    return c ? c->anon_id : NULL;
}

int sluice_set_opt_out(sluice_client *c, int opted_out)
{
    if (!c) return SLUICE_E_INVAL;
    atomic_store(&c->opted_out, opted_out != 0);
    return c->storage_dir ? sdk_storage_set_opt_out(c, opted_out != 0) : SLUICE_OK;
}

int sluice_opted_out(sluice_client *c)
{
    return c && atomic_load(&c->opted_out) ? 1 : 0;
}
