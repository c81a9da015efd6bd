/*
 * stream_worker.c — sluice-stream's worker thread (stream.h): the consumer group on the events
 * topic, rebalances (assign: restore each partition from the changelog; revoke: commit, then
 * keep the state as standby until the new assignment arrives), the record loop and the
 * transaction that carries signals, changelog, events_deduped and the consumed offsets.
 *
 * Failures: a transaction that must abort (a produce or commit failed) is aborted and every owned
 * partition is rebuilt from the changelog and re-positioned at its marker's offset, so nothing
 * counted in the aborted transaction is counted twice. A fatal error (fenced by a newer
 * incarnation of the same transactional.id, or a failed restore) ends the worker with exit 1:
 * it then owns nothing that another worker cannot restore.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "log.h"
#include "metrics.h"
#include "stream.h"
#include "stream_batch.h"

#define POLL_MS          50
#define KAFKA_TIMEOUT_MS 30000
#define SWEEP_NS         (60ull * 1000000000ull)

static bool set(rd_kafka_conf_t *c, const char *k, const char *v, char *err, size_t errlen)
{
    if (rd_kafka_conf_set(c, k, v, err, errlen) == RD_KAFKA_CONF_OK) return true;
    return false;
}

static rd_kafka_conf_t *base_conf(const config_t *cfg, char *err, size_t errlen)
{
    rd_kafka_conf_t *c = rd_kafka_conf_new();
    if (!set(c, "bootstrap.servers", cfg->brokers, err, errlen) ||
        !set(c, "reconnect.backoff.ms", "50", err, errlen) ||
        !set(c, "reconnect.backoff.max.ms", "500", err, errlen)) {
        rd_kafka_conf_destroy(c);
        return NULL;
    }
    for (size_t i = 0; i < cfg->n_kafka_properties; i++)
        if (!set(c, cfg->kafka_properties[i].key, cfg->kafka_properties[i].value, err, errlen)) {
            rd_kafka_conf_destroy(c);
            return NULL;
        }
    return c;
}

static void log_cb(const rd_kafka_t *rk, int level, const char *fac, const char *buf)
{
    (void)rk;
    if (level <= 3) LOG(LOG_WARN, "kafka_log", LS("facility", fac), LS("message", buf));
}

/* ---- producing in the transaction ---- */

static int txn_begin(stream_worker_t *w)
{
    if (w->txn_open) return 0;
    rd_kafka_error_t *e = rd_kafka_begin_transaction(w->producer);
    if (e != NULL) {
        LOG(LOG_ERROR, "stream_txn_begin_failed", LS("reason", rd_kafka_error_string(e)));
        if (rd_kafka_error_is_fatal(e)) atomic_store(&w->fatal, true);
        rd_kafka_error_destroy(e);
        return -1;
    }
    w->txn_open = true;
    w->txn_start_ns = base_mono_ns();
    w->txn_records = 0;
    return 0;
}

static bool txn_failed; /* a produce failed in the open transaction: it must abort */

int stream_produce(stream_worker_t *w, const char *topic, int32_t partition, const void *key,
                   size_t klen, const void *val, size_t vlen, rd_kafka_headers_t *hdrs)
{
    if (!w->txn_open && txn_begin(w) != 0) {
        txn_failed = true;
        if (hdrs) rd_kafka_headers_destroy(hdrs);
        return -1;
    }
    /* A full queue: let librdkafka deliver (bounded by kafka.delivery_timeout), then give up. */
    uint64_t deadline = base_mono_ns() + (uint64_t)w->cfg->delivery_timeout_ms * 1000000u;
    for (;;) {
        rd_kafka_resp_err_t e =
            hdrs != NULL
                ? rd_kafka_producev(
                      w->producer, RD_KAFKA_V_TOPIC(topic), RD_KAFKA_V_PARTITION(partition),
                      RD_KAFKA_V_KEY((void *)key, klen), RD_KAFKA_V_VALUE((void *)val, vlen),
                      RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY), RD_KAFKA_V_HEADERS(hdrs),
                      RD_KAFKA_V_END)
                : rd_kafka_producev(
                      w->producer, RD_KAFKA_V_TOPIC(topic), RD_KAFKA_V_PARTITION(partition),
                      RD_KAFKA_V_KEY((void *)key, klen), RD_KAFKA_V_VALUE((void *)val, vlen),
                      RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY), RD_KAFKA_V_END);
        if (e == RD_KAFKA_RESP_ERR_NO_ERROR) return 0;
        if (e != RD_KAFKA_RESP_ERR__QUEUE_FULL || base_mono_ns() > deadline) {
            LOG(LOG_ERROR, "stream_produce_failed", LS("topic", topic),
                LS("reason", rd_kafka_err2str(e)));
            if (hdrs) rd_kafka_headers_destroy(hdrs);
            txn_failed = true;
            return -1;
        }
        rd_kafka_poll(w->producer, 10);
    }
}

/* ---- tasks ---- */

static void tasks_put(stream_worker_t *w, int32_t p, stream_task_t *t)
{
    pthread_rwlock_wrlock(&w->tasks_mu);
    w->tasks[p] = t;
    pthread_rwlock_unlock(&w->tasks_mu);
}

static void owned_count(stream_worker_t *w)
{
    uint64_t n = 0;
    for (int32_t p = 0; p < STREAM_MAX_PARTITIONS; p++)
        n += w->tasks[p] != NULL;
    atomic_store(&w->st.partitions_owned, n);
    if (n > w->cfg->stream_max_partitions)
        LOG(LOG_WARN, "stream_partitions_over_max", LI("owned", n),
            LI("stream.max_partitions", w->cfg->stream_max_partitions));
}

/* After an abort: every owned partition rebuilt from the changelog and re-positioned. */
static void rebuild_all(stream_worker_t *w)
{
    rd_kafka_topic_partition_list_t *l = rd_kafka_topic_partition_list_new(16);
    for (int32_t p = 0; p < STREAM_MAX_PARTITIONS; p++) {
        if (w->tasks[p] == NULL) continue;
        stream_task_t *old = w->tasks[p];
        tasks_put(w, p, NULL);
        stream_task_free(old);
        stream_task_t *t = stream_task_restore(w, p);
        if (t == NULL) {
            atomic_store(&w->fatal, true);
            continue;
        }
        tasks_put(w, p, t);
        rd_kafka_topic_partition_list_add(l, w->cfg->topic_events, p)->offset =
            t->next_offset >= 0 ? t->next_offset : RD_KAFKA_OFFSET_BEGINNING;
    }
    if (l->cnt > 0) {
        rd_kafka_error_t *e = rd_kafka_seek_partitions(w->consumer, l, KAFKA_TIMEOUT_MS);
        if (e != NULL) {
            LOG(LOG_ERROR, "stream_seek_failed", LS("reason", rd_kafka_error_string(e)));
            rd_kafka_error_destroy(e);
            atomic_store(&w->fatal, true);
        }
    }
    rd_kafka_topic_partition_list_destroy(l);
}

static uint32_t aborts_in_a_row;

static void txn_abort(stream_worker_t *w, const char *why)
{
    atomic_fetch_add_explicit(&w->st.aborts, 1, memory_order_relaxed);
    LOG(LOG_WARN, "stream_txn_aborted", LS("reason", why), LI("in_a_row", aborts_in_a_row + 1));
    if (++aborts_in_a_row >= w->cfg->stream_max_aborts) {
        LOG(LOG_ERROR, "stream_giving_up",
            LS("reason", "stream.max_aborts aborted transactions "
                         "in a row"));
        atomic_store(&w->fatal, true);
    }
    rd_kafka_error_t *e = rd_kafka_abort_transaction(w->producer, KAFKA_TIMEOUT_MS);
    if (e != NULL) {
        LOG(LOG_ERROR, "stream_txn_abort_failed", LS("reason", rd_kafka_error_string(e)));
        atomic_store(&w->fatal, true);
        rd_kafka_error_destroy(e);
    }
    w->txn_open = false;
    txn_failed = false;
}

/* Writes every owned partition's changes and markers, the consumed offsets, and commits.
 * 0: committed (or nothing open); -1: aborted and rebuilt, or fatal (w->fatal). */
static int txn_commit(stream_worker_t *w, bool rebuild_on_abort)
{
    if (!w->txn_open) return 0;
    uint64_t t0 = base_mono_ns();
    rd_kafka_topic_partition_list_t *offs = rd_kafka_topic_partition_list_new(16);
    for (int32_t p = 0; p < STREAM_MAX_PARTITIONS && !txn_failed; p++) {
        stream_task_t *t = w->tasks[p];
        if (t == NULL) continue;
        if (stream_task_write_changes(t) != 0) txn_failed = true;
        if (t->next_offset >= 0 && t->next_offset != t->committed_offset)
            rd_kafka_topic_partition_list_add(offs, w->cfg->topic_events, p)->offset =
                t->next_offset;
    }
    const char *why = txn_failed ? "a produce failed" : NULL;
    rd_kafka_error_t *e = NULL;
    if (why == NULL && offs->cnt > 0) {
        rd_kafka_consumer_group_metadata_t *gm = rd_kafka_consumer_group_metadata(w->consumer);
        e = rd_kafka_send_offsets_to_transaction(w->producer, offs, gm, KAFKA_TIMEOUT_MS);
        rd_kafka_consumer_group_metadata_destroy(gm);
    }
    for (int attempt = 0; why == NULL && e == NULL && attempt < 3; attempt++) {
        e = rd_kafka_commit_transaction(w->producer, KAFKA_TIMEOUT_MS);
        if (e == NULL || !rd_kafka_error_is_retriable(e)) break;
        rd_kafka_error_destroy(e);
        e = NULL;
        if (attempt == 2) why = "commit kept timing out";
    }
    rd_kafka_topic_partition_list_destroy(offs);
    if (why == NULL && e == NULL) {
        w->txn_open = false;
        aborts_in_a_row = 0;
        atomic_fetch_add_explicit(&w->st.commits, 1, memory_order_relaxed);
        atomic_fetch_add_explicit(&w->st.commit_us, (base_mono_ns() - t0) / 1000u,
                                  memory_order_relaxed);
        for (int32_t p = 0; p < STREAM_MAX_PARTITIONS; p++) {
            stream_task_t *t = w->tasks[p];
            if (t == NULL) continue;
            t->committed_offset = t->next_offset;
            t->changed = false;
        }
        return 0;
    }
    if (e != NULL && rd_kafka_error_is_fatal(e)) {
        LOG(LOG_ERROR, "stream_txn_fatal", LS("reason", rd_kafka_error_string(e)));
        rd_kafka_error_destroy(e);
        atomic_store(&w->fatal, true);
        w->txn_open = false;
        return -1;
    }
    char reason[256];
    snprintf(reason, sizeof reason, "%s", e != NULL ? rd_kafka_error_string(e) : why);
    if (e != NULL) rd_kafka_error_destroy(e);
    txn_abort(w, reason);
    if (rebuild_on_abort) rebuild_all(w);
    return -1;
}

/* ---- rebalance ---- */

static void on_assign(stream_worker_t *w, rd_kafka_topic_partition_list_t *parts)
{
    atomic_fetch_add_explicit(&w->st.rebalances, 1, memory_order_relaxed);
    for (int i = 0; i < parts->cnt; i++) {
        int32_t p = parts->elems[i].partition;
        if (p < 0 || p >= STREAM_MAX_PARTITIONS) {
            LOG(LOG_ERROR, "stream_partition_out_of_range", LI("partition", p));
            atomic_store(&w->fatal, true);
            continue;
        }
        stream_task_t *t = w->standby[p];
        w->standby[p] = NULL;
        if (t == NULL) t = stream_task_restore(w, p);
        if (t == NULL) {
            atomic_store(&w->fatal, true);
            continue;
        }
        tasks_put(w, p, t);
        parts->elems[i].offset = t->next_offset >= 0 ? t->next_offset : RD_KAFKA_OFFSET_STORED;
    }
    /* Standby states not handed back: another worker owns them now. */
    for (int32_t p = 0; p < STREAM_MAX_PARTITIONS; p++) {
        stream_task_free(w->standby[p]);
        w->standby[p] = NULL;
    }
    owned_count(w);
    LOG(LOG_INFO, "stream_assigned", LI("partitions", parts->cnt),
        LI("owned", atomic_load(&w->st.partitions_owned)));
    rd_kafka_resp_err_t e = rd_kafka_assign(w->consumer, parts);
    if (e != RD_KAFKA_RESP_ERR_NO_ERROR) {
        LOG(LOG_ERROR, "stream_assign_failed", LS("reason", rd_kafka_err2str(e)));
        atomic_store(&w->fatal, true);
    }
}

static void on_revoke(stream_worker_t *w, bool lost)
{
    atomic_fetch_add_explicit(&w->st.rebalances, 1, memory_order_relaxed);
    if (lost) {
        /* another worker may own them already: nothing of ours may be committed for them */
        if (w->txn_open) txn_abort(w, "partitions lost");
    } else {
        (void)txn_commit(w, false);
    }
    bool committed = !w->txn_open && !atomic_load(&w->fatal);
    for (int32_t p = 0; p < STREAM_MAX_PARTITIONS; p++) {
        stream_task_t *t = w->tasks[p];
        if (t == NULL) continue;
        tasks_put(w, p, NULL);
        /* Kept only when it is exactly what the changelog holds. */
        if (!lost && committed && t->committed_offset == t->next_offset && !t->changed)
            w->standby[p] = t;
        else
            stream_task_free(t);
    }
    owned_count(w);
    LOG(LOG_INFO, "stream_revoked", LS("lost", lost ? "true" : "false"));
    (void)rd_kafka_assign(w->consumer, NULL);
}

static void rebalance_cb(rd_kafka_t *rk, rd_kafka_resp_err_t err,
                         rd_kafka_topic_partition_list_t *parts, void *opaque)
{
    stream_worker_t *w = opaque;
    if (err == RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS)
        on_assign(w, parts);
    else if (err == RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS)
        on_revoke(w, rd_kafka_assignment_lost(rk));
    else {
        LOG(LOG_ERROR, "stream_rebalance_error", LS("reason", rd_kafka_err2str(err)));
        (void)rd_kafka_assign(rk, NULL);
    }
}

/* ---- records ---- */

static void undecodable(stream_worker_t *w, const rd_kafka_message_t *m, const char *why)
{
    uint64_t n = atomic_fetch_add_explicit(&w->st.undecodable, 1, memory_order_relaxed);
    if (n < 10 || n % 10000 == 0)
        LOG(LOG_WARN, "stream_record_undecodable", LI("partition", m->partition),
            LI("offset", m->offset), LS("reason", why), LI("count", n + 1));
}

/* One record, in order (its decode, hashes and prefetches done by stream_batch_prepare). */
static void process(stream_worker_t *w, rd_kafka_message_t *m, stream_ev_t *e)
{
    int32_t p = m->partition;
    stream_task_t *t = p >= 0 && p < STREAM_MAX_PARTITIONS ? w->tasks[p] : NULL;
    if (t == NULL) return; /* not ours (any more): a rebalance is on its way */
    if (t->next_offset >= 0 && m->offset < t->next_offset) return; /* before our state */
    if (txn_begin(w) != 0) {
        txn_failed = true;
        return;
    }
    t->next_offset = m->offset + 1;
    t->changed = true;
    w->txn_records++;
    atomic_fetch_add_explicit(&w->st.processed, 1, memory_order_relaxed);
    if (e->rc != 0) {
        undecodable(w, m, e->rc == STREAM_REC_E_NOMEM ? "out of memory" : "not a normalized event");
        return;
    }
    int64_t now = base_wall_ms();
    int first = stream_ev_dedup(t->dedup, e, now);
    if (first == 0) {
        atomic_fetch_add_explicit(&w->st.duplicates, 1, memory_order_relaxed);
        return;
    }
    if (first < 0) {
        /* STREAM_DEDUP_E_FULL: its pending changelog is full, so this event is passed on
         * unremembered (a retry of it could pass too: counted) and the transaction commits
         * right after this record, which empties the pending buffer. */
        atomic_fetch_add_explicit(&w->st.dedup_full, 1, memory_order_relaxed);
        w->txn_records = w->cfg->stream_max_batch;
    }
    if (w->cfg->stream_events_deduped) {
        rd_kafka_headers_t *h = NULL, *hc = NULL;
        if (rd_kafka_message_headers(m, &h) == RD_KAFKA_RESP_ERR_NO_ERROR)
            hc = rd_kafka_headers_copy(h);
        if (stream_produce(w, w->cfg->topic_events_deduped, p, m->key, m->key_len, m->payload,
                           m->len, hc) == 0)
            atomic_fetch_add_explicit(&w->st.deduped_out, 1, memory_order_relaxed);
    }
    int prc = stream_ev_count(t->pql, e, now);
    if (prc != PQL_OK && prc != STREAM_EV_NO_ACCOUNT)
        atomic_fetch_add_explicit(&w->st.not_counted, 1, memory_order_relaxed);
}

/* What follows every record: a failed transaction aborts (and every partition is rebuilt), a
 * full or old one commits. false when the state was rebuilt (or the worker must stop): the
 * records still held are then dropped, as the rebuild seeked back to before them. */
static bool after_record(stream_worker_t *w)
{
    if (txn_failed && w->txn_open) {
        txn_abort(w, "a produce failed");
        rebuild_all(w);
        return false;
    }
    if (w->txn_open &&
        (base_mono_ns() - w->txn_start_ns >=
             (uint64_t)w->cfg->stream_commit_interval_ms * 1000000u ||
         w->txn_records >= w->cfg->stream_max_batch) &&
        txn_commit(w, true) != 0)
        return false;
    return !atomic_load(&w->fatal);
}

/* Up to stream.poll_batch records (one with kafka.format: json): the first waits up to POLL_MS,
 * the others only take what the consumer already has. Rebalance callbacks may run in these
 * polls: a record held for a partition revoked meanwhile is dropped by process() (its new owner
 * resumes at the offset the revoke committed, which is before it). */
static size_t poll_batch(stream_worker_t *w, rd_kafka_message_t **ms)
{
    size_t max = w->json ? 1 : w->cfg->stream_poll_batch, n = 0;
    if (max > STREAM_BATCH_MAX) max = STREAM_BATCH_MAX; /* the key's range: 1..32 */
    if (max == 0) max = 1;
    for (size_t polls = 0; polls < max; polls++) { /* an error message counts as a record */
        rd_kafka_message_t *m = rd_kafka_consumer_poll(w->consumer, polls == 0 ? POLL_MS : 0);
        if (m == NULL) break;
        if (m->err != RD_KAFKA_RESP_ERR_NO_ERROR) {
            if (m->err != RD_KAFKA_RESP_ERR__PARTITION_EOF)
                LOG(LOG_WARN, "stream_consume_error", LS("reason", rd_kafka_message_errstr(m)));
            rd_kafka_message_destroy(m);
            continue;
        }
        ms[n++] = m;
    }
    return n;
}

static void process_batch(stream_worker_t *w, rd_kafka_message_t **ms, size_t n)
{
    if (n == 0) return;
    atomic_fetch_add_explicit(&w->st.batches, 1, memory_order_relaxed);
    stream_ev_t evs[STREAM_BATCH_MAX];
    for (size_t i = 0; i < n; i++) {
        int32_t p = ms[i]->partition;
        stream_task_t *t = p >= 0 && p < STREAM_MAX_PARTITIONS ? w->tasks[p] : NULL;
        evs[i] = (stream_ev_t){.val = ms[i]->payload,
                               .len = ms[i]->len,
                               .dedup = t != NULL ? t->dedup : NULL,
                               .pql = t != NULL ? t->pql : NULL,
                               .fallback_ts = rd_kafka_message_timestamp(ms[i], NULL)};
    }
    (void)stream_batch_prepare(&w->dec, w->json, evs, n); /* n <= 1 with json */
    size_t i = 0;
    for (; i < n; i++) {
        process(w, ms[i], &evs[i]);
        rd_kafka_message_destroy(ms[i]);
        if (!after_record(w)) {
            i++;
            break;
        }
    }
    for (; i < n; i++)
        rd_kafka_message_destroy(ms[i]);
}

static void refresh_lag(stream_worker_t *w)
{
    for (int32_t p = 0; p < STREAM_MAX_PARTITIONS; p++) {
        stream_task_t *t = w->tasks[p];
        if (t == NULL) continue;
        int64_t lo = 0, hi = 0;
        if (rd_kafka_get_watermark_offsets(w->consumer, w->cfg->topic_events, p, &lo, &hi) !=
            RD_KAFKA_RESP_ERR_NO_ERROR)
            continue;
        int64_t pos = t->next_offset >= 0 ? t->next_offset : lo;
        atomic_store(&t->lag, hi > pos ? hi - pos : 0);
    }
}

int stream_worker_run(stream_worker_t *w)
{
    const config_t *cfg = w->cfg;
    uint64_t interval_ns = (uint64_t)cfg->stream_commit_interval_ms * 1000000u;
    while (!*w->stop && !atomic_load(&w->fatal)) {
        rd_kafka_message_t *ms[STREAM_BATCH_MAX];
        size_t n = poll_batch(w, ms);
        process_batch(w, ms, n);
        rd_kafka_poll(w->producer, 0);
        uint64_t now = base_mono_ns();
        if (txn_failed && w->txn_open) {
            txn_abort(w, "a produce failed");
            rebuild_all(w);
        } else if (w->txn_open && (now - w->txn_start_ns >= interval_ns ||
                                   w->txn_records >= cfg->stream_max_batch))
            (void)txn_commit(w, true);
        if (now - w->last_lag_ns >= 1000000000u) {
            refresh_lag(w);
            w->last_lag_ns = now;
        }
        if (now - w->last_sweep_ns >= SWEEP_NS) {
            /* idle accounts move to the wall clock and expire: changes for the next commit */
            for (int32_t p = 0; p < STREAM_MAX_PARTITIONS; p++)
                if (w->tasks[p] != NULL && pql_sweep(w->tasks[p]->pql, base_wall_ms()) > 0)
                    w->tasks[p]->changed = true;
            w->last_sweep_ns = now;
        }
    }
    if (atomic_load(&w->fatal)) return 1;
    /* SIGTERM: the open transaction commits, then the consumer leaves the group (revoke). */
    (void)txn_commit(w, false);
    return atomic_load(&w->fatal) ? 1 : 0;
}

int stream_worker_init(stream_worker_t *w, const config_t *cfg, volatile sig_atomic_t *stop,
                       char *err, size_t errlen)
{
    memset(w, 0, sizeof *w);
    w->cfg = cfg;
    w->stop = stop;
    w->json = cfg->kafka_format == PROTO_FMT_JSON;
    pthread_rwlock_init(&w->tasks_mu, NULL);
    stream_decoder_init(&w->dec);
    base_buf_init(&w->scratch, 256u << 20);
    w->last_sweep_ns = w->last_lag_ns = base_mono_ns();

    /* producer: transactional */
    char tid[512], host[256] = "host", num[32];
    if (cfg->stream_transactional_id != NULL && cfg->stream_transactional_id[0] != '\0')
        snprintf(tid, sizeof tid, "%s", cfg->stream_transactional_id);
    else {
        (void)gethostname(host, sizeof host - 1);
        snprintf(tid, sizeof tid, "%s-%s-%ld", cfg->stream_group_id, host, (long)getpid());
    }
    rd_kafka_conf_t *pc = base_conf(cfg, err, errlen);
    if (pc == NULL) return -1;
    snprintf(num, sizeof num, "%u", cfg->stream_txn_timeout_ms);
    if (!set(pc, "transactional.id", tid, err, errlen) ||
        !set(pc, "transaction.timeout.ms", num, err, errlen) ||
        !set(pc, "linger.ms", "5", err, errlen)) {
        rd_kafka_conf_destroy(pc);
        return -1;
    }
    rd_kafka_conf_set_log_cb(pc, log_cb);
    w->producer = rd_kafka_new(RD_KAFKA_PRODUCER, pc, err, errlen);
    if (w->producer == NULL) {
        rd_kafka_conf_destroy(pc);
        return -1;
    }
    rd_kafka_error_t *e = rd_kafka_init_transactions(w->producer, KAFKA_TIMEOUT_MS);
    if (e != NULL) {
        snprintf(err, errlen, "init_transactions (%s): %s", tid, rd_kafka_error_string(e));
        rd_kafka_error_destroy(e);
        return -1;
    }

    /* restorer: reads changelog partitions by assignment */
    rd_kafka_conf_t *rc = base_conf(cfg, err, errlen);
    if (rc == NULL) return -1;
    char rgroup[512];
    snprintf(rgroup, sizeof rgroup, "%s-restore", cfg->stream_group_id);
    if (!set(rc, "group.id", rgroup, err, errlen) ||
        !set(rc, "enable.auto.commit", "false", err, errlen) ||
        !set(rc, "enable.partition.eof", "true", err, errlen) ||
        !set(rc, "isolation.level", "read_committed", err, errlen) ||
        !set(rc, "auto.offset.reset", "earliest", err, errlen) ||
        /* a restore reads to the end as fast as it can: no waiting for more per fetch */
        !set(rc, "fetch.wait.max.ms", "10", err, errlen) ||
        !set(rc, "fetch.error.backoff.ms", "10", err, errlen)) {
        rd_kafka_conf_destroy(rc);
        return -1;
    }
    rd_kafka_conf_set_log_cb(rc, log_cb);
    w->restorer = rd_kafka_new(RD_KAFKA_CONSUMER, rc, err, errlen);
    if (w->restorer == NULL) {
        rd_kafka_conf_destroy(rc);
        return -1;
    }
    rd_kafka_poll_set_consumer(w->restorer);

    /* the group member */
    rd_kafka_conf_t *cc = base_conf(cfg, err, errlen);
    if (cc == NULL) return -1;
    if (!set(cc, "group.id", cfg->stream_group_id, err, errlen) ||
        !set(cc, "enable.auto.commit", "false", err, errlen) ||
        !set(cc, "isolation.level", "read_committed", err, errlen) ||
        !set(cc, "auto.offset.reset", "earliest", err, errlen) ||
        !set(cc, "session.timeout.ms", "6000", err, errlen) ||
        !set(cc, "heartbeat.interval.ms", "500", err, errlen)) {
        rd_kafka_conf_destroy(cc);
        return -1;
    }
    rd_kafka_conf_set_log_cb(cc, log_cb);
    rd_kafka_conf_set_rebalance_cb(cc, rebalance_cb);
    rd_kafka_conf_set_opaque(cc, w);
    w->consumer = rd_kafka_new(RD_KAFKA_CONSUMER, cc, err, errlen);
    if (w->consumer == NULL) {
        rd_kafka_conf_destroy(cc);
        return -1;
    }
    rd_kafka_poll_set_consumer(w->consumer);

    /* The changelog must have a partition for every events partition. */
    const rd_kafka_metadata_t *md = NULL;
    rd_kafka_resp_err_t me = rd_kafka_metadata(w->consumer, 1, NULL, &md, KAFKA_TIMEOUT_MS);
    if (me != RD_KAFKA_RESP_ERR_NO_ERROR) {
        snprintf(err, errlen, "metadata from %s: %s", cfg->brokers, rd_kafka_err2str(me));
        return -1;
    }
    int n_events = -1, n_changelog = -1;
    for (int i = 0; i < md->topic_cnt; i++) {
        if (md->topics[i].err != RD_KAFKA_RESP_ERR_NO_ERROR) continue;
        if (strcmp(md->topics[i].topic, cfg->topic_events) == 0)
            n_events = md->topics[i].partition_cnt;
        if (strcmp(md->topics[i].topic, cfg->topic_changelog) == 0)
            n_changelog = md->topics[i].partition_cnt;
    }
    rd_kafka_metadata_destroy(md);
    if (n_events < 0) {
        snprintf(err, errlen, "kafka.topics.events: topic %s does not exist", cfg->topic_events);
        return -1;
    }
    if (n_events > STREAM_MAX_PARTITIONS) {
        snprintf(err, errlen, "kafka.topics.events: %d partitions, at most %d", n_events,
                 STREAM_MAX_PARTITIONS);
        return -1;
    }
    if (n_changelog < n_events) {
        snprintf(err, errlen,
                 "kafka.topics.changelog: topic %s has %d partitions, needs %d (those of %s); "
                 "create it compacted with that many",
                 cfg->topic_changelog, n_changelog < 0 ? 0 : n_changelog, n_events,
                 cfg->topic_events);
        return -1;
    }
    /* Output topics' metadata now: a producer learns a topic's partitions on its first
     * produce to it, and the transaction commit that follows waits for that lookup (measured
     * with bench_fleet_latency: the first signals of a worker came ~0.7 s late, and the worker
     * loop stalled in that commit meanwhile). */
    const char *outs[3] = {cfg->topic_pql, cfg->topic_changelog,
                           cfg->stream_events_deduped ? cfg->topic_events_deduped : NULL};
    for (int i = 0; i < 3; i++) {
        if (outs[i] == NULL) continue;
        w->out_topics[i] = rd_kafka_topic_new(w->producer, outs[i], NULL);
        const rd_kafka_metadata_t *omd = NULL;
        if (w->out_topics[i] != NULL &&
            rd_kafka_metadata(w->producer, 0, w->out_topics[i], &omd, KAFKA_TIMEOUT_MS) ==
                RD_KAFKA_RESP_ERR_NO_ERROR)
            rd_kafka_metadata_destroy(omd);
        else
            LOG(LOG_WARN, "stream_topic_metadata_failed", LS("topic", outs[i]));
    }

    rd_kafka_topic_partition_list_t *sub = rd_kafka_topic_partition_list_new(1);
    rd_kafka_topic_partition_list_add(sub, cfg->topic_events, RD_KAFKA_PARTITION_UA);
    me = rd_kafka_subscribe(w->consumer, sub);
    rd_kafka_topic_partition_list_destroy(sub);
    if (me != RD_KAFKA_RESP_ERR_NO_ERROR) {
        snprintf(err, errlen, "subscribe %s: %s", cfg->topic_events, rd_kafka_err2str(me));
        return -1;
    }
    LOG(LOG_INFO, "stream_started", LS("group_id", cfg->stream_group_id),
        LS("transactional_id", tid), LS("events", cfg->topic_events), LI("partitions", n_events),
        LS("changelog", cfg->topic_changelog));
    return 0;
}

void stream_worker_free(stream_worker_t *w)
{
    if (w->consumer != NULL) {
        rd_kafka_consumer_close(w->consumer); /* revoke: commit (nothing open) and hand back */
        rd_kafka_destroy(w->consumer);
    }
    for (int32_t p = 0; p < STREAM_MAX_PARTITIONS; p++) {
        stream_task_free(w->tasks[p]);
        stream_task_free(w->standby[p]);
        w->tasks[p] = w->standby[p] = NULL;
    }
    if (w->restorer != NULL) {
        rd_kafka_consumer_close(w->restorer);
        rd_kafka_destroy(w->restorer);
    }
    if (w->producer != NULL) {
        if (w->txn_open) {
            rd_kafka_error_t *e = rd_kafka_abort_transaction(w->producer, KAFKA_TIMEOUT_MS);
            if (e) rd_kafka_error_destroy(e);
        }
        rd_kafka_flush(w->producer, KAFKA_TIMEOUT_MS);
        for (int i = 0; i < 3; i++)
            if (w->out_topics[i] != NULL) rd_kafka_topic_destroy(w->out_topics[i]);
        rd_kafka_destroy(w->producer);
    }
    stream_decoder_free(&w->dec);
    base_buf_free(&w->scratch);
    pthread_rwlock_destroy(&w->tasks_mu);
}

/* ---- /metrics ---- */

#define C(name, help, field)                                                                       \
    {                                                                                              \
        name, help, offsetof(stream_stats_t, field), false                                         \
    }
#define G(name, help, field)                                                                       \
    {                                                                                              \
        name, help, offsetof(stream_stats_t, field), true                                          \
    }
static const struct {
    const char *name, *help;
    size_t off;
    bool gauge;
} stream_metrics[] = {
    C("sluice_stream_events_processed_total", "events records consumed", processed),
    C("sluice_stream_duplicates_total", "events dropped as duplicates (source, messageId)",
      duplicates),
    C("sluice_stream_records_undecodable_total", "events records skipped: not a normalized event",
      undecodable),
    C("sluice_stream_pql_not_counted_total", "records PQL did not count (late, no user, memory)",
      not_counted),
    C("sluice_stream_signals_total", "pql_signals produced (in committed or aborted transactions)",
      signals),
    C("sluice_stream_txn_commits_total", "transactions committed", commits),
    C("sluice_stream_txn_commit_us_total",
      "time spent committing (changelog, offsets, commit round trips) in microseconds; / "
      "txn_commits_total = the mean commit time",
      commit_us),
    C("sluice_stream_txn_aborts_total", "transactions aborted (state rebuilt from the changelog)",
      aborts),
    C("sluice_stream_restores_total", "partitions restored from the changelog", restores),
    C("sluice_stream_restore_records_total", "changelog records read by restores", restore_records),
    C("sluice_stream_restore_discarded_total",
      "changelog records after the last marker, ignored by a restore", restore_discarded),
    C("sluice_stream_restore_bad_total", "changelog records a restore could not apply",
      restore_bad),
    C("sluice_stream_changelog_records_total", "changelog records produced", changelog_records),
    C("sluice_stream_changelog_bytes_total", "changelog key+value bytes produced", changelog_bytes),
    C("sluice_stream_events_deduped_total", "records written to events_deduped", deduped_out),
    C("sluice_stream_dedup_unremembered_total",
      "events passed on without being remembered (dedup pending buffer full)", dedup_full),
    C("sluice_stream_rebalances_total", "assign and revoke callbacks", rebalances),
    C("sluice_stream_batches_total",
      "record batches run through the per-event path (events processed / batches = the mean "
      "batch, at most stream.poll_batch)",
      batches),
    G("sluice_stream_partitions_owned", "events partitions this worker owns", partitions_owned),
    G("sluice_stream_restore_ms_last", "duration of the last partition restore (ms)",
      restore_ms_last),
    C("sluice_stream_restore_ms_total", "time spent restoring partitions (ms)", restore_ms_total),
};

static int render(base_buf_t *out, void *ud)
{
    stream_worker_t *w = ud;
    int rc = 0;
    for (size_t i = 0; i < sizeof stream_metrics / sizeof stream_metrics[0] && rc == 0; i++) {
        const _Atomic uint64_t *v =
            (const _Atomic uint64_t *)((const char *)&w->st + stream_metrics[i].off);
        rc = base_buf_printf(out, "# HELP %s %s\n# TYPE %s %s\n%s %llu\n", stream_metrics[i].name,
                             stream_metrics[i].help, stream_metrics[i].name,
                             stream_metrics[i].gauge ? "gauge" : "counter", stream_metrics[i].name,
                             (unsigned long long)atomic_load(v));
    }
    if (rc == 0)
        rc = base_buf_printf(out, "# HELP sluice_stream_partition_lag records of the partition not "
                                  "yet processed\n# TYPE sluice_stream_partition_lag gauge\n"
                                  "# HELP sluice_stream_partition_accounts PQL accounts of the "
                                  "partition\n# TYPE sluice_stream_partition_accounts gauge\n");
    pthread_rwlock_rdlock(&w->tasks_mu);
    uint64_t lag_total = 0;
    for (int32_t p = 0; p < STREAM_MAX_PARTITIONS && rc == 0; p++) {
        stream_task_t *t = w->tasks[p];
        if (t == NULL) continue;
        pql_stats_t ps;
        pql_stats(t->pql, &ps);
        int64_t lag = atomic_load(&t->lag);
        lag_total += (uint64_t)lag;
        rc = base_buf_printf(out,
                             "sluice_stream_partition_lag{partition=\"%d\"} %lld\n"
                             "sluice_stream_partition_accounts{partition=\"%d\"} %llu\n",
                             p, (long long)lag, p, (unsigned long long)ps.accounts);
    }
    pthread_rwlock_unlock(&w->tasks_mu);
    if (rc == 0)
        rc = base_buf_printf(out,
                             "# HELP sluice_stream_lag records of the owned partitions not yet "
                             "processed\n# TYPE sluice_stream_lag gauge\nsluice_stream_lag %llu\n",
                             (unsigned long long)lag_total);
    return rc;
}

void stream_worker_register_metrics(stream_worker_t *w)
{
    (void)metrics_section_register(render, w);
}
