/*
 * stream_task.c — one events partition's state in sluice-stream: built and restored from its
 * changelog partition on assignment, its changes written back at each commit (stream.h).
 */
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "log.h"
#include "stream.h"

static uint64_t now_ms_mono(void)
{
    return base_mono_ns() / 1000000u;
}

/* PQL's signal callback: the signal goes out in the worker's open transaction. */
static void signal_cb(void *ud, const char *account, size_t alen, const char *json, size_t jlen)
{
    stream_task_t *t = ud;
    stream_worker_t *w = t->w;
    if (stream_produce(w, w->cfg->topic_pql, RD_KAFKA_PARTITION_UA, account, alen, json, jlen,
                       NULL) != 0) {
        /* the transaction aborts (stream_produce marked it); the state is rebuilt from the
         * changelog, so the signal is raised again by the replay */
        return;
    }
    atomic_fetch_add_explicit(&w->st.signals, 1, memory_order_relaxed);
}

static stream_task_t *task_new(stream_worker_t *w, int32_t p)
{
    const config_t *cfg = w->cfg;
    stream_task_t *t = calloc(1, sizeof *t);
    if (t == NULL) return NULL;
    t->w = w;
    t->partition = p;
    t->next_offset = t->committed_offset = -1;
    pql_config_t pc = cfg->pql; /* shallow: pql_new copies what it keeps */
    uint64_t share =
        cfg->pql.max_accounts / (cfg->stream_max_partitions ? cfg->stream_max_partitions : 1);
    pc.max_accounts = share < 1024 ? 1024 : share;
    if (pql_new(&pc, signal_cb, t, &t->pql) != PQL_OK ||
        pql_changes_track(t->pql, cfg->stream_tombstone_bytes) != PQL_OK) {
        stream_task_free(t);
        return NULL;
    }
    if (cfg->dedup_window_ms > 0) {
        uint64_t mem = cfg->dedup_max_memory / cfg->stream_max_partitions;
        if (stream_dedup_new(cfg->dedup_window_ms, mem, &t->dedup) != 0) {
            stream_task_free(t);
            return NULL;
        }
    }
    return t;
}

void stream_task_free(stream_task_t *t)
{
    if (t == NULL) return;
    pql_free(t->pql);
    stream_dedup_free(t->dedup);
    free(t);
}

/* One changelog record into t. Returns false when it is not one we can apply (counted). */
static bool apply(stream_task_t *t, const rd_kafka_message_t *m)
{
    const unsigned char *k = m->key;
    if (k == NULL || m->key_len < 1) return false;
    switch (k[0]) {
    case STREAM_KIND_PQL:
        if (m->key_len < 2 || m->key_len > 256) return false;
        if (m->len == 0)
            (void)pql_account_drop(t->pql, (const char *)k + 1, m->key_len - 1);
        else if (pql_account_import(t->pql, m->payload, m->len) != PQL_OK)
            return false; /* other rules (restart with new pql rules) or corrupt: starts afresh */
        return true;
    case STREAM_KIND_DEDUP:
        if (t->dedup == NULL) return true; /* dedup off now: its old state is ignored */
        return stream_dedup_restore(t->dedup, m->key, m->key_len, m->payload, m->len) == 0;
    default:
        return false;
    }
}

stream_task_t *stream_task_restore(stream_worker_t *w, int32_t p)
{
    const config_t *cfg = w->cfg;
    uint64_t t0 = now_ms_mono();
    stream_task_t *t = task_new(w, p);
    if (t == NULL) {
        LOG(LOG_ERROR, "stream_restore_failed", LI("partition", p), LS("reason", "out of memory"));
        return NULL;
    }
    int64_t lo = 0, hi = 0;
    rd_kafka_resp_err_t e = rd_kafka_query_watermark_offsets(
        w->restorer, cfg->topic_changelog, p, &lo, &hi, (int)(cfg->stream_restore_timeout_ms / 2));
    if (e != RD_KAFKA_RESP_ERR_NO_ERROR) {
        LOG(LOG_ERROR, "stream_restore_failed", LI("partition", p),
            LS("topic", cfg->topic_changelog), LS("reason", rd_kafka_err2str(e)));
        stream_task_free(t);
        return NULL;
    }
    /* Records since the last marker wait here: applied when the next marker closes them,
     * dropped at the end (an incomplete commit). Bounded by what one commit writes. */
    size_t cap = (size_t)cfg->stream_max_batch * 3u + 1024u, n_pend = 0;
    rd_kafka_message_t **pend = calloc(cap, sizeof *pend);
    uint64_t records = 0, bad = 0;
    int64_t resume = -1;
    bool ok = pend != NULL;
    if (ok && hi > lo) {
        rd_kafka_topic_partition_list_t *l = rd_kafka_topic_partition_list_new(1);
        rd_kafka_topic_partition_list_add(l, cfg->topic_changelog, p)->offset =
            RD_KAFKA_OFFSET_BEGINNING;
        e = rd_kafka_assign(w->restorer, l);
        rd_kafka_topic_partition_list_destroy(l);
        if (e != RD_KAFKA_RESP_ERR_NO_ERROR) ok = false;
        uint64_t deadline = t0 + cfg->stream_restore_timeout_ms;
        while (ok) {
            if (now_ms_mono() > deadline) {
                LOG(LOG_ERROR, "stream_restore_failed", LI("partition", p),
                    LS("reason", "stream.restore_timeout"), LI("records", records));
                ok = false;
                break;
            }
            if (*w->stop) {
                ok = false;
                break;
            }
            rd_kafka_message_t *m = rd_kafka_consumer_poll(w->restorer, 100);
            if (m == NULL) continue;
            if (m->err == RD_KAFKA_RESP_ERR__PARTITION_EOF) {
                rd_kafka_message_destroy(m);
                break; /* the end (read_committed: the last stable offset) */
            }
            if (m->err != RD_KAFKA_RESP_ERR_NO_ERROR) {
                LOG(LOG_WARN, "stream_restore_error", LI("partition", p),
                    LS("reason", rd_kafka_err2str(m->err)));
                rd_kafka_message_destroy(m);
                continue;
            }
            records++;
            const unsigned char *k = m->key;
            if (k != NULL && m->key_len == 1 && k[0] == STREAM_KIND_MARK) {
                for (size_t i = 0; i < n_pend; i++) {
                    if (!apply(t, pend[i])) bad++;
                    rd_kafka_message_destroy(pend[i]);
                }
                n_pend = 0;
                if (m->len == 8) memcpy(&resume, m->payload, 8);
                rd_kafka_message_destroy(m);
                continue;
            }
            if (n_pend == cap) {
                /* more than one commit writes: not ours; apply the oldest as it stands */
                if (!apply(t, pend[0])) bad++;
                rd_kafka_message_destroy(pend[0]);
                memmove(pend, pend + 1, (cap - 1) * sizeof *pend);
                n_pend--;
            }
            pend[n_pend++] = m;
        }
        (void)rd_kafka_assign(w->restorer, NULL);
    }
    for (size_t i = 0; i < n_pend; i++)
        rd_kafka_message_destroy(pend[i]);
    free(pend);
    if (!ok) {
        stream_task_free(t);
        return NULL;
    }
    t->next_offset = t->committed_offset = resume;
    t->restore_ms = now_ms_mono() - t0;
    t->restore_records = records;
    atomic_fetch_add_explicit(&w->st.restores, 1, memory_order_relaxed);
    atomic_fetch_add_explicit(&w->st.restore_ms_total, t->restore_ms, memory_order_relaxed);
    atomic_store_explicit(&w->st.restore_ms_last, t->restore_ms, memory_order_relaxed);
    atomic_fetch_add_explicit(&w->st.restore_records, records, memory_order_relaxed);
    atomic_fetch_add_explicit(&w->st.restore_discarded, n_pend, memory_order_relaxed);
    atomic_fetch_add_explicit(&w->st.restore_bad, bad, memory_order_relaxed);
    pql_stats_t ps;
    pql_stats(t->pql, &ps);
    LOG(LOG_INFO, "stream_partition_restored", LI("partition", p), LI("records", records),
        LI("accounts", ps.accounts), LI("resume_offset", resume), LI("discarded", n_pend),
        LI("bad", bad), LI("ms", t->restore_ms));
    return t;
}

typedef struct emit_ctx {
    stream_task_t *t;
    char key[257];
} emit_ctx_t;

static int emit_pql(void *ud, const char *account, size_t alen, const void *state, size_t slen)
{
    emit_ctx_t *c = ud;
    stream_worker_t *w = c->t->w;
    c->key[0] = STREAM_KIND_PQL;
    memcpy(c->key + 1, account, alen);
    atomic_fetch_add_explicit(&w->st.changelog_records, 1, memory_order_relaxed);
    atomic_fetch_add_explicit(&w->st.changelog_bytes, 1 + alen + slen, memory_order_relaxed);
    return stream_produce(w, w->cfg->topic_changelog, c->t->partition, c->key, alen + 1, state,
                          slen, NULL);
}

static int emit_dedup(void *ud, const void *key, size_t klen, const void *val, size_t vlen)
{
    emit_ctx_t *c = ud;
    stream_worker_t *w = c->t->w;
    atomic_fetch_add_explicit(&w->st.changelog_records, 1, memory_order_relaxed);
    atomic_fetch_add_explicit(&w->st.changelog_bytes, klen + vlen, memory_order_relaxed);
    return stream_produce(w, w->cfg->topic_changelog, c->t->partition, key, klen, val, vlen, NULL);
}

int stream_task_write_changes(stream_task_t *t)
{
    stream_worker_t *w = t->w;
    if (!t->changed && t->next_offset == t->committed_offset) return 0;
    emit_ctx_t c = {.t = t};
    int rc = pql_changes_flush(t->pql, &w->scratch, emit_pql, &c, NULL);
    if (rc != PQL_OK) return -1;
    if (t->dedup != NULL && stream_dedup_changelog(t->dedup, emit_dedup, &c) != 0) return -1;
    char mk = STREAM_KIND_MARK;
    int64_t off = t->next_offset;
    atomic_fetch_add_explicit(&w->st.changelog_records, 1, memory_order_relaxed);
    atomic_fetch_add_explicit(&w->st.changelog_bytes, 9, memory_order_relaxed);
    return stream_produce(w, w->cfg->topic_changelog, t->partition, &mk, 1, &off, 8, NULL);
}
