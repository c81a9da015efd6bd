/*
 * identities.c — the identities topic consumer (contract in identities.h).
 *
 * Threads: identities_start/stop on main; identities_main (one thread) owns the consumer and
 * every thread-only field below; identities_ready, identities_stats and the gauges read atomics
 * from any thread. librdkafka's own threads call identities_log_cb only.
 *
 * Consumer mode: librdkafka 2.0.2's KafkaConsumer wants a group.id even for rd_kafka_assign();
 * it is only sent to the cluster by subscribe() or a commit, neither of which happens here
 * (enable.auto.commit false, offsets not stored), so every collector can use the same one
 * (librdkafka#593). The partitions are assigned by us from the topic's metadata; a partition
 * count that grows is noticed by the periodic metadata refresh and re-assigned, the existing
 * partitions from their current positions, the new ones from the beginning.
 */
#include "identities.h"

#include <inttypes.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <librdkafka/rdkafka.h>

#include "base.h"
#include "log.h"
#include "metrics.h"

#define IDENTITIES_STR_MAX 255
/* Poll timeout: the bound on how late the thread notices the stop flag. */
#define IDENTITIES_POLL_MS 100
/* Metadata of the topic: read until known every IDENTITIES_META_RETRY_MS, then re-read every
 * IDENTITIES_META_REFRESH_MS (partitions added later), each read bounded by
 * IDENTITIES_META_TIMEOUT_MS. */
#define IDENTITIES_META_RETRY_MS   500
#define IDENTITIES_META_REFRESH_MS 30000
#define IDENTITIES_META_TIMEOUT_MS 1000
/* Lag (sluice_identities_lag) recomputed this often. */
#define IDENTITIES_LAG_MS 1000
/* Consumer errors (topic missing, broker down): a new code is logged at once, a repeat at most
 * this often. */
#define IDENTITIES_ERRLOG_MS 30000
/* Partitions assigned at most (the topic's own count beyond it is logged and capped). */
#define IDENTITIES_MAX_PARTITIONS 4096
/* queued.min.messages: prefetch per partition in records (the byte bound is queue_bytes). */
#define IDENTITIES_QUEUED_MIN_MESSAGES "10000"
/* fetch.wait.max.ms: how long a broker may hold a fetch with nothing new. A real broker answers
 * as soon as a record arrives; librdkafka's mock cluster only at the end of the wait, which with
 * the default 500 ms was the whole propagation delay (~400 ms measured, test_identities.c). At
 * 100 ms an idle collector sends ~10 fetches/s per broker. */
#define IDENTITIES_FETCH_WAIT_MS "100"

struct identities {
    const config_t *cfg;
    accounts_t *accounts;
    rd_kafka_t *rk;
    rd_kafka_topic_t *rkt;
    char *topic;
    pthread_t thread;
    bool started;
    int64_t start_ms;

    atomic_bool stop;
    atomic_bool caught_up;
    atomic_int_fast64_t lag; /* -1 unknown */
    atomic_int partitions;
    atomic_uint_fast64_t applied, skipped;
    atomic_int_fast64_t catchup_ms; /* -1 while catching up */

    /* Thread only. */
    bool *eof; /* [partitions]: read to its end at least once */
    int n_eof;
    int64_t next_meta_ms, next_lag_ms;
    bool logged_bad[IDENTITIES_BAD_COUNT];
    bool logged_missing;
    int errlog_code;
    int64_t errlog_ms;
};

const char *identities_strerror(int err)
{
    switch (err) {
#define IDENTITIES_X_STR(name, val, msg)                                                           \
    case val:                                                                                      \
        return msg;
        IDENTITIES_ERRORS(IDENTITIES_X_STR)
#undef IDENTITIES_X_STR
    }
    return "unknown error";
}

identities_bad_t identities_check(const void *key, size_t klen, const void *val, size_t vlen)
{
    if (key == NULL || klen == 0) return IDENTITIES_BAD_KEY_EMPTY;
    if (klen > IDENTITIES_STR_MAX) return IDENTITIES_BAD_KEY_LONG;
    if (!base_utf8_valid(key, klen)) return IDENTITIES_BAD_KEY_UTF8;
    if (val == NULL) return IDENTITIES_OK_RECORD; /* tombstone */
    if (vlen == 0) return IDENTITIES_BAD_VALUE_EMPTY;
    if (vlen > IDENTITIES_STR_MAX) return IDENTITIES_BAD_VALUE_LONG;
    if (!base_utf8_valid(val, vlen)) return IDENTITIES_BAD_VALUE_UTF8;
    return IDENTITIES_OK_RECORD;
}

const char *identities_bad_name(identities_bad_t why)
{
    static const char *const names[IDENTITIES_BAD_COUNT] = {
        "ok",          "key_empty",      "key_too_long",  "key_not_utf8",
        "value_empty", "value_too_long", "value_not_utf8"};
    return (unsigned)why < IDENTITIES_BAD_COUNT ? names[why] : "unknown";
}

/* ---- the consumer thread ----------------------------------------------------------------- */

/* One record: applied to the map, or skipped (counted; the first of its kind logged). */
static void identities_apply(identities_t *id, const rd_kafka_message_t *m)
{
    identities_bad_t bad = identities_check(m->key, m->key_len, m->payload, m->len);
    if (bad != IDENTITIES_OK_RECORD) {
        atomic_fetch_add(&id->skipped, 1u);
        metrics_add(METRIC_IDENTITIES_SKIPPED, 1);
        if (!id->logged_bad[bad]) {
            id->logged_bad[bad] = true;
            LOG(LOG_WARN, "identities_record_skipped", LS("reason", identities_bad_name(bad)),
                LS("topic", id->topic), LI("partition", m->partition), LI("offset", m->offset),
                LI("key_bytes", m->key_len), LI("value_bytes", m->len),
                LS("effect", "record ignored; later records of this kind are only counted "
                             "(sluice_identities_skipped_total)"));
        }
        return;
    }
    if (m->payload == NULL) {
        if (accounts_forget(id->accounts, m->key, m->key_len))
            metrics_add(METRIC_IDENTITIES_FORGOTTEN, 1);
    } else if (accounts_learn_linked(id->accounts, m->key, m->key_len, m->payload, m->len) !=
               ACCOUNTS_OK) {
        /* Valid by identities_check, so only memory can be short: this link is not known here
         * until the user's next group call. */
        LOG(LOG_WARN, "identities_apply_failed", LS("reason", "out of memory"));
        return;
    }
    atomic_fetch_add(&id->applied, 1u);
    metrics_add(METRIC_IDENTITIES_APPLIED, 1);
}

static void identities_errlog(identities_t *id, rd_kafka_resp_err_t err, const char *detail)
{
    int64_t now = base_mono_ms();
    if ((int)err == id->errlog_code && now - id->errlog_ms < IDENTITIES_ERRLOG_MS) return;
    id->errlog_code = (int)err;
    id->errlog_ms = now;
    LOG(LOG_WARN, "identities_consumer_error", LS("topic", id->topic),
        LS("error", rd_kafka_err2name(err)), LS("detail", detail));
}

/* Reads the topic's partition count and (re)assigns when it is new or has grown. */
static void identities_refresh(identities_t *id)
{
    const struct rd_kafka_metadata *md = NULL;
    int have = atomic_load(&id->partitions);
    rd_kafka_resp_err_t e = rd_kafka_metadata(id->rk, 0, id->rkt, &md, IDENTITIES_META_TIMEOUT_MS);
    int n = 0;
    if (e == RD_KAFKA_RESP_ERR_NO_ERROR) {
        if (md->topic_cnt == 1 && md->topics[0].err == RD_KAFKA_RESP_ERR_NO_ERROR)
            n = md->topics[0].partition_cnt;
        else if (md->topic_cnt == 1)
            e = md->topics[0].err;
        rd_kafka_metadata_destroy(md);
    }
    int64_t now = base_mono_ms();
    if (n <= 0) {
        id->next_meta_ms = now + (have > 0 ? IDENTITIES_META_REFRESH_MS : IDENTITIES_META_RETRY_MS);
        if (have == 0 && !id->logged_missing) {
            id->logged_missing = true;
            LOG(LOG_WARN, "identities_topic_unavailable", LS("topic", id->topic),
                LS("error", rd_kafka_err2name(e)),
                LS("effect", "links of other collectors are not known here until it can be read; "
                             "retrying"));
        }
        return;
    }
    id->next_meta_ms = now + IDENTITIES_META_REFRESH_MS;
    if (n > IDENTITIES_MAX_PARTITIONS) n = IDENTITIES_MAX_PARTITIONS;
    if (n <= have) return;

    bool *eof = realloc(id->eof, (size_t)n * sizeof *eof);
    rd_kafka_topic_partition_list_t *list = rd_kafka_topic_partition_list_new(n);
    if (eof == NULL || list == NULL) {
        if (eof != NULL) id->eof = eof;
        if (list != NULL) rd_kafka_topic_partition_list_destroy(list);
        LOG(LOG_WARN, "identities_assign_failed", LS("reason", "out of memory"));
        return;
    }
    id->eof = eof;
    for (int p = 0; p < n; p++)
        rd_kafka_topic_partition_list_add(list, id->topic, p)->offset = RD_KAFKA_OFFSET_BEGINNING;
    if (have > 0) /* the partitions already read go on from where they are */
        (void)rd_kafka_position(id->rk, list);
    for (int p = 0; p < n; p++) {
        if (list->elems[p].offset < 0) list->elems[p].offset = RD_KAFKA_OFFSET_BEGINNING;
        if (p >= have) eof[p] = false;
    }
    e = rd_kafka_assign(id->rk, list);
    rd_kafka_topic_partition_list_destroy(list);
    if (e != RD_KAFKA_RESP_ERR_NO_ERROR) {
        identities_errlog(id, e, "assign failed");
        id->next_meta_ms = now + IDENTITIES_META_RETRY_MS;
        return;
    }
    atomic_store(&id->partitions, n);
    LOG(LOG_INFO, "identities_assigned", LS("topic", id->topic), LI("partitions", n),
        LI("previous", have));
}

/* Sum over the assigned partitions of (end offset - position), from librdkafka's cached
 * watermarks (updated by every fetch answer): no request, so it costs nothing to run often. */
static void identities_lag_update(identities_t *id)
{
    int n = atomic_load(&id->partitions);
    if (n == 0) return;
    rd_kafka_topic_partition_list_t *list = rd_kafka_topic_partition_list_new(n);
    if (list == NULL) return;
    for (int p = 0; p < n; p++)
        rd_kafka_topic_partition_list_add(list, id->topic, p);
    int64_t lag = 0;
    if (rd_kafka_position(id->rk, list) == RD_KAFKA_RESP_ERR_NO_ERROR) {
        for (int p = 0; p < n && lag >= 0; p++) {
            int64_t lo = -1, hi = -1;
            (void)rd_kafka_get_watermark_offsets(id->rk, id->topic, p, &lo, &hi);
            int64_t pos = list->elems[p].offset >= 0 ? list->elems[p].offset : lo;
            if (hi < 0 || pos < 0)
                lag = id->eof[p] ? lag : -1; /* unknown until the first fetch answer */
            else if (hi > pos)
                lag += hi - pos;
        }
    } else {
        lag = -1;
    }
    rd_kafka_topic_partition_list_destroy(list);
    atomic_store(&id->lag, lag);
}

static void identities_eof(identities_t *id, int32_t p)
{
    int n = atomic_load(&id->partitions);
    if (p < 0 || p >= n || id->eof[p]) return;
    id->eof[p] = true;
    if (++id->n_eof < n || atomic_load(&id->caught_up)) return;
    int64_t ms = base_mono_ms() - id->start_ms;
    atomic_store(&id->catchup_ms, ms);
    atomic_store(&id->lag, 0);
    atomic_store(&id->caught_up, true);
    LOG(LOG_INFO, "identities_caught_up", LS("topic", id->topic), LI("partitions", n), LI("ms", ms),
        LI("applied", atomic_load(&id->applied)), LI("skipped", atomic_load(&id->skipped)),
        LI("users", accounts_count(id->accounts)));
}

static void *identities_main(void *arg)
{
    identities_t *id = arg;
    while (!atomic_load(&id->stop)) {
        int64_t now = base_mono_ms();
        if (now >= id->next_meta_ms) identities_refresh(id);
        if (atomic_load(&id->partitions) == 0) {
            /* Nothing assigned yet: serve callbacks, wait for the next metadata attempt. */
            rd_kafka_message_t *m = rd_kafka_consumer_poll(id->rk, IDENTITIES_POLL_MS);
            if (m != NULL) rd_kafka_message_destroy(m);
            continue;
        }
        /* A burst of records between checks of the clock and the stop flag. */
        for (int i = 0; i < 1024; i++) {
            rd_kafka_message_t *m = rd_kafka_consumer_poll(id->rk, i == 0 ? IDENTITIES_POLL_MS : 0);
            if (m == NULL) break;
            if (m->err == RD_KAFKA_RESP_ERR__PARTITION_EOF)
                identities_eof(id, m->partition);
            else if (m->err != RD_KAFKA_RESP_ERR_NO_ERROR)
                identities_errlog(id, m->err, rd_kafka_message_errstr(m));
            else
                identities_apply(id, m);
            rd_kafka_message_destroy(m);
        }
        now = base_mono_ms();
        if (now >= id->next_lag_ms) {
            id->next_lag_ms = now + IDENTITIES_LAG_MS;
            identities_lag_update(id);
        }
    }
    return NULL;
}

/* ---- callbacks and gauges ---------------------------------------------------------------- */

/* Any librdkafka thread. Its warnings about producer-only kafka.properties (shared with the
 * producer, CONFWARN) are expected here and go to the debug level, as does everything below
 * warning; the rest become warn lines, at most one per IDENTITIES_RDLOG_MS (error_cb already
 * reports broker trouble). */
#define IDENTITIES_RDLOG_MS 5000
static atomic_int_fast64_t identities_rdlog_last = INT64_MIN / 2;

static void identities_log_cb(const rd_kafka_t *rk, int level, const char *fac, const char *buf)
{
    int64_t now = base_mono_ms();
    int_fast64_t last = atomic_load(&identities_rdlog_last);
    if (level > 4 || strcmp(fac, "CONFWARN") == 0 || now - last < IDENTITIES_RDLOG_MS ||
        !atomic_compare_exchange_strong(&identities_rdlog_last, &last, now)) {
        LOG(LOG_DEBUG, "librdkafka", LS("client", rd_kafka_name(rk)), LS("fac", fac),
            LS("detail", buf));
        return;
    }
    LOG(LOG_WARN, "librdkafka", LS("client", rd_kafka_name(rk)), LS("fac", fac), LS("detail", buf));
}

/* The consumer thread (consumer_poll serves the main queue, rd_kafka_poll_set_consumer). */
static void identities_error_cb(rd_kafka_t *rk, int err, const char *reason, void *opaque)
{
    (void)rk;
    identities_errlog(opaque, (rd_kafka_resp_err_t)err, reason);
}

static double gauge_lag(void *ud)
{
    return (double)atomic_load(&((identities_t *)ud)->lag);
}

static double gauge_caught_up(void *ud)
{
    return atomic_load(&((identities_t *)ud)->caught_up) ? 1.0 : 0.0;
}

static double gauge_partitions(void *ud)
{
    return (double)atomic_load(&((identities_t *)ud)->partitions);
}

static double gauge_catchup_seconds(void *ud)
{
    int64_t ms = atomic_load(&((identities_t *)ud)->catchup_ms);
    return ms < 0 ? -1.0 : (double)ms / 1000.0;
}

/* ---- start, ready, stop ------------------------------------------------------------------ */

static int identities_conf(identities_t *id, rd_kafka_conf_t *conf, const char *bootstrap,
                           char *err, size_t errlen)
{
    const config_t *cfg = id->cfg;
    char kbytes[24];
    uint64_t kb = cfg->identities_queue_bytes / 1024;
    snprintf(kbytes, sizeof kbytes, "%" PRIu64, kb > 0 ? kb : 1);
    const char *defaults[][2] = {
        {"client.id", "sluice-collector-identities"},
        {"bootstrap.servers", bootstrap},
        {"group.id", "sluice-collector-identities"}, /* never used: see the head comment */
        {"enable.auto.commit", "false"},
        {"enable.auto.offset.store", "false"},
        {"enable.partition.eof", "true"},
        {"auto.offset.reset", "earliest"},
        {"queued.max.messages.kbytes", kbytes},
        {"queued.min.messages", IDENTITIES_QUEUED_MIN_MESSAGES},
        {"fetch.wait.max.ms", IDENTITIES_FETCH_WAIT_MS},
        {"reconnect.backoff.ms", "50"},
        {"reconnect.backoff.max.ms", "500"},
    };
    char errstr[512];
    for (size_t i = 0; i < sizeof defaults / sizeof defaults[0]; i++)
        if (rd_kafka_conf_set(conf, defaults[i][0], defaults[i][1], errstr, sizeof errstr) !=
            RD_KAFKA_CONF_OK) {
            snprintf(err, errlen, "identities consumer: %s", errstr);
            return IDENTITIES_E_CONFIG;
        }
    /* kafka.properties (TLS, SASL, ...) apply to this client too, after ours. */
    for (size_t i = 0; i < cfg->n_kafka_properties; i++) {
        const config_kv_t *kv = &cfg->kafka_properties[i];
        if (kv->key == NULL || kv->value == NULL ||
            rd_kafka_conf_set(conf, kv->key, kv->value, errstr, sizeof errstr) !=
                RD_KAFKA_CONF_OK) {
            snprintf(err, errlen, "kafka.properties: %s: %s (identities consumer)",
                     kv->key ? kv->key : "(null)",
                     kv->key && kv->value ? errstr : "missing key or value");
            return IDENTITIES_E_CONFIG;
        }
    }
    rd_kafka_conf_set_log_cb(conf, identities_log_cb);
    rd_kafka_conf_set_error_cb(conf, identities_error_cb);
    rd_kafka_conf_set_opaque(conf, id);
    return IDENTITIES_OK;
}

int identities_start(const config_t *cfg, const char *bootstrap, accounts_t *accounts,
                     identities_t **out, char *err, size_t errlen)
{
    *out = NULL;
    const char *topic = cfg->topic_identities != NULL && cfg->topic_identities[0]
                            ? cfg->topic_identities
                            : "identities";
    identities_t *id = calloc(1, sizeof *id);
    if (id == NULL || (id->topic = strdup(topic)) == NULL) {
        free(id);
        snprintf(err, errlen, "identities consumer: out of memory");
        return IDENTITIES_E_NOMEM;
    }
    id->cfg = cfg;
    id->accounts = accounts;
    id->start_ms = base_mono_ms();
    atomic_init(&id->stop, false);
    atomic_init(&id->caught_up, false);
    atomic_init(&id->lag, -1);
    atomic_init(&id->partitions, 0);
    atomic_init(&id->applied, 0u);
    atomic_init(&id->skipped, 0u);
    atomic_init(&id->catchup_ms, -1);
    id->errlog_ms = INT64_MIN / 2;

    rd_kafka_conf_t *conf = rd_kafka_conf_new();
    int rc = conf != NULL ? identities_conf(id, conf, bootstrap, err, errlen) : IDENTITIES_E_NOMEM;
    if (rc != IDENTITIES_OK) {
        if (conf != NULL) rd_kafka_conf_destroy(conf);
        identities_stop(id);
        return rc;
    }
    char errstr[512];
    id->rk = rd_kafka_new(RD_KAFKA_CONSUMER, conf, errstr, sizeof errstr);
    if (id->rk == NULL) {
        rd_kafka_conf_destroy(conf); /* still ours when rd_kafka_new fails */
        snprintf(err, errlen, "identities consumer: %s", errstr);
        identities_stop(id);
        return IDENTITIES_E_CONFIG;
    }
    rd_kafka_poll_set_consumer(id->rk);
    id->rkt = rd_kafka_topic_new(id->rk, topic, NULL);
    if (id->rkt == NULL) {
        snprintf(err, errlen, "identities consumer: topic %s: %s", topic,
                 rd_kafka_err2str(rd_kafka_last_error()));
        identities_stop(id);
        return IDENTITIES_E_CONFIG;
    }
    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &old);
    int prc = pthread_create(&id->thread, NULL, identities_main, id);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    if (prc != 0) {
        snprintf(err, errlen, "identities consumer: cannot start its thread");
        identities_stop(id);
        return IDENTITIES_E_NOMEM;
    }
    id->started = true;
    if (metrics_gauge_register("identities_lag",
                               "identities records not yet applied (end offset - position, all "
                               "partitions; -1 unknown)",
                               gauge_lag, id) != 0 ||
        metrics_gauge_register("identities_caught_up",
                               "1 once every identities partition was read to its end",
                               gauge_caught_up, id) != 0 ||
        metrics_gauge_register("identities_partitions", "identities partitions assigned",
                               gauge_partitions, id) != 0 ||
        metrics_gauge_register("identities_catchup_seconds",
                               "start to caught up of the identities consumer (-1 while catching "
                               "up)",
                               gauge_catchup_seconds, id) != 0)
        LOG(LOG_WARN, "identities_gauge", LS("reason", "gauge table full"));
    LOG(LOG_INFO, "identities_consumer_started", LS("topic", topic), LS("bootstrap", bootstrap),
        LI("queue_bytes", cfg->identities_queue_bytes),
        LI("ready_wait_ms", cfg->identities_ready_wait_ms));
    *out = id;
    return IDENTITIES_OK;
}

bool identities_ready(identities_t *id, char *why, size_t whylen)
{
    if (id == NULL || atomic_load(&id->caught_up)) return true;
    if (base_mono_ms() - id->start_ms >= (int64_t)id->cfg->identities_ready_wait_ms) return true;
    if (why != NULL && whylen > 0)
        snprintf(why, whylen, "identities catching up (lag %" PRIdFAST64 ")",
                 atomic_load(&id->lag));
    return false;
}

void identities_stats(identities_t *id, identities_stats_t *st)
{
    memset(st, 0, sizeof *st);
    st->lag = -1;
    st->catchup_ms = -1;
    if (id == NULL) return;
    st->caught_up = atomic_load(&id->caught_up);
    st->lag = atomic_load(&id->lag);
    st->partitions = atomic_load(&id->partitions);
    st->applied = atomic_load(&id->applied);
    st->skipped = atomic_load(&id->skipped);
    st->catchup_ms = atomic_load(&id->catchup_ms);
}

void identities_stop(identities_t *id)
{
    if (id == NULL) return;
    atomic_store(&id->stop, true);
    if (id->started) pthread_join(id->thread, NULL);
    if (id->rkt != NULL) rd_kafka_topic_destroy(id->rkt);
    if (id->rk != NULL) {
        /* Nothing to commit and no group joined: close only stops the fetchers. */
        (void)rd_kafka_consumer_close(id->rk);
        rd_kafka_destroy(id->rk);
    }
    free(id->eof);
    free(id->topic);
    free(id);
}
