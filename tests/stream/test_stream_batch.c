/*
 * test_stream_batch.c — sluice-stream's batched per-event path (collector/stream/stream_batch.c:
 * decode, hashes and prefetches first, then dedup and PQL per event in order) gives exactly
 * what the one-record-at-a-time path gives (stream_record_decode, stream_dedup_seen_first,
 * pql_feed, as process() did before batches): on a random stream of records with retries,
 * generated and missing messageIds, sources past the seed cache, anonymous and missing users,
 * missing accounts and timestamps, late events, undecodable records, accounts past
 * pql.max_accounts (evictions while prefetched), the dedup memory cap and its pending bound
 * (STREAM_DEDUP_E_FULL), the two paths get the same decode answers, dedup verdicts, pql_feed
 * answers and signals in the same order, the same statistics and the same changelog bytes; for
 * every batch size from 1 to STREAM_BATCH_MAX and for random ones. And a JSON batch prepares
 * only its first record (the decoder holds one JSON document).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <msgpack.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "config.h"
#include "dedup.h"
#include "stream_batch.c"

#define N_RECORDS 12000
#define T0_MS     1780000000000LL

static const char rules_yaml[] =
    "dev: true\n"
    "pql:\n"
    "  window: 1d\n"
    "  max_accounts: 1024\n"
    "  tiers: {hot: 60, warm: 40, watching: 20}\n"
    "  rules:\n"
    "    - {name: team,     metric: active_users, at_least: 3, points: 20}\n"
    "    - {name: heavy,    metric: events, at_least: 12, points: 20}\n"
    "    - {name: surge,    metric: events_velocity, recent: 2h, at_least: 2.0, min_recent: 4, "
    "points: 20}\n"
    "    - {name: newusers, metric: users_velocity, recent: 2h, at_least: 2.0, min_recent: 2, "
    "points: 10}\n"
    "    - {name: pricing,  metric: event_seen, event: \"Pricing Page Viewed\", points: 20}\n";

static uint64_t rng = 0x9e3779b97f4a7c15ull;
static uint64_t next(void)
{
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return rng;
}

static void pk_str(msgpack_packer *pk, const char *s)
{
    size_t n = strlen(s);
    msgpack_pack_str(pk, n);
    msgpack_pack_str_body(pk, s, n);
}

typedef struct recs {
    char *data;
    size_t off[N_RECORDS], len[N_RECORDS];
    int64_t kafka_ts[N_RECORDS];
} recs_t;

/* A random stream: every field may be missing, ~10% are retries of an earlier messageId. */
static void build(recs_t *r)
{
    static const char *names[] = {"Doc Viewed", "Pricing Page Viewed", "Feature Used"};
    static const char long_src[] = "a-source-name-longer-than-the-sixty-four-bytes-the-seed-"
                                   "cache-keeps-xxxxxxxx";
    msgpack_sbuffer sb;
    msgpack_sbuffer_init(&sb);
    msgpack_packer pk;
    msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
    for (size_t i = 0; i < N_RECORDS; i++) {
        size_t start = sb.size;
        r->kafka_ts[i] = T0_MS + (int64_t)i * 20000;
        if (next() % 100 == 0) { /* undecodable: not a map */
            msgpack_pack_array(&pk, 1);
            msgpack_pack_int(&pk, 1);
            r->off[i] = start;
            r->len[i] = sb.size - start;
            continue;
        }
        char acct[32], user[48], mid[48], ts[BASE_ISO8601_LEN + 1];
        snprintf(acct, sizeof acct, "acct-%u", (unsigned)(next() % 3000));
        snprintf(user, sizeof user, "user-%u", (unsigned)(next() % 20));
        if (i > 0 && next() % 10 == 0)
            snprintf(mid, sizeof mid, "m-%zu", i - 1 - (size_t)(next() % (i < 500 ? i : 500)));
        else
            snprintf(mid, sizeof mid, "m-%zu", i);
        /* event time: mostly now, sometimes hours or days behind (late) */
        int64_t et = r->kafka_ts[i] - (next() % 20 == 0 ? (int64_t)(next() % 3) * 86400000 : 0);
        base_iso8601_format(et, ts);
        bool has_acct = next() % 10 != 0, has_user = next() % 10 != 0, has_anon = next() % 2;
        bool has_mid = next() % 20 != 0, gen = next() % 20 == 0, has_ts = next() % 20 != 0;
        bool track = next() % 5 != 0;
        unsigned src = (unsigned)(next() % 8);
        size_t n = 2 + has_acct + has_user + has_anon + has_mid + gen + has_ts + (src != 0);
        msgpack_pack_map(&pk, n);
        pk_str(&pk, "type"), pk_str(&pk, track ? "track" : next() % 2 ? "identify" : "alias");
        pk_str(&pk, "event"), pk_str(&pk, names[next() % 3]);
        if (has_acct) pk_str(&pk, "accountId"), pk_str(&pk, acct);
        if (has_user) pk_str(&pk, "userId"), pk_str(&pk, user);
        if (has_anon) pk_str(&pk, "anonymousId"), pk_str(&pk, "anon-1");
        if (has_mid) pk_str(&pk, "messageId"), pk_str(&pk, mid);
        if (gen) pk_str(&pk, "messageIdGenerated"), msgpack_pack_true(&pk);
        if (has_ts) pk_str(&pk, "timestamp"), pk_str(&pk, ts);
        if (src != 0)
            pk_str(&pk, "source"), pk_str(&pk, src == 1 ? long_src : src < 5 ? "web" : "ios");
        r->off[i] = start;
        r->len[i] = sb.size - start;
    }
    r->data = sb.data;
}

/* What one path produced, in order. */
typedef struct out {
    base_buf_t log; /* per record: decode rc, dedup verdict, pql rc; signals; changelog */
    size_t dups, full, late, signals, evictions, evicted; /* what the stream hit */
} out_t;

static void put(out_t *o, const char *tag, const void *p, size_t n)
{
    assert_int_equal(base_buf_append(&o->log, tag, strlen(tag)), BASE_OK);
    if (n > 0) assert_int_equal(base_buf_append(&o->log, p, n), BASE_OK);
}

static void put_int(out_t *o, const char *tag, int64_t v)
{
    put(o, tag, &v, sizeof v);
}

static void on_signal(void *ud, const char *account, size_t alen, const char *json, size_t jlen)
{
    out_t *o = ud;
    o->signals++;
    put(o, "S", account, alen);
    put(o, "J", json, jlen);
}

static int on_changelog(void *ud, const void *key, size_t klen, const void *val, size_t vlen)
{
    out_t *o = ud;
    put(o, "K", key, klen);
    put(o, "V", val, vlen);
    return 0;
}

static uint64_t clk_ms;
static uint64_t test_clock(void *ud)
{
    (void)ud;
    return clk_ms;
}

typedef struct run {
    config_t cfg;
    pql_t *pql;
    stream_dedup_t *dd;
    stream_decoder_t dec;
    out_t out;
} run_t;

static void run_open(run_t *r)
{
    char path[] = "/tmp/test_stream_batch_XXXXXX", err[512];
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    assert_int_equal(write(fd, rules_yaml, sizeof rules_yaml - 1),
                     (ssize_t)(sizeof rules_yaml - 1));
    close(fd);
    config_init(&r->cfg);
    assert_int_equal(config_load_file(&r->cfg, path, err, sizeof err), 0);
    unlink(path);
    base_buf_init(&r->out.log, (size_t)1 << 30);
    assert_int_equal(pql_new(&r->cfg.pql, on_signal, &r->out, &r->pql), PQL_OK);
    /* the smallest tables (the cap evicts) and a small pending bound (E_FULL between flushes);
     * created at the stream's start time (generations never go back) */
    clk_ms = (uint64_t)T0_MS;
    stream_dedup_opts_t o = {.window_ms = 10 * 86400000ull, /* the whole stream: the cap evicts */
                             .max_bytes = 64 * 1024,
                             .max_pending = 300,
                             .clock = test_clock};
    assert_int_equal(stream_dedup_new_opts(&o, &r->dd), 0);
    stream_decoder_init(&r->dec);
}

/* Statistics both paths must agree on, then everything freed. */
static void run_close(run_t *r)
{
    pql_stats_t ps;
    pql_stats(r->pql, &ps);
    put_int(&r->out, "accounts", (int64_t)ps.accounts);
    put_int(&r->out, "evictions", (int64_t)ps.evictions);
    r->out.evictions = ps.evictions;
    put_int(&r->out, "late", (int64_t)ps.late);
    put_int(&r->out, "signals", (int64_t)ps.signals);
    stream_dedup_stats_t ds;
    stream_dedup_stats(r->dd, &ds);
    put_int(&r->out, "entries", (int64_t)ds.entries);
    put_int(&r->out, "evicted", (int64_t)ds.evicted_by_cap);
    r->out.evicted = ds.evicted_by_cap;
    put_int(&r->out, "full", (int64_t)ds.pending_full);
    pql_free(r->pql);
    stream_dedup_free(r->dd);
    stream_decoder_free(&r->dec);
    config_free(&r->cfg);
}

/* Before record i (both paths): the clock, and a changelog flush every 400 records. */
static void before(run_t *r, size_t i)
{
    clk_ms = (uint64_t)(T0_MS + (int64_t)i * 20000);
    if (i % 400 == 399) assert_int_equal(stream_dedup_changelog(r->dd, on_changelog, &r->out), 0);
}

/* The path before batches: process() one record at a time. */
static void one_by_one(const recs_t *rs, out_t *res)
{
    run_t r;
    run_open(&r);
    for (size_t i = 0; i < N_RECORDS; i++) {
        before(&r, i);
        int64_t now = (int64_t)clk_ms;
        stream_rec_t rec;
        int rc = stream_record_decode(&r.dec, rs->data + rs->off[i], rs->len[i], false, &rec);
        put_int(&r.out, "D", rc);
        if (rc != 0) continue;
        if (rec.message_id.p != NULL && !rec.message_id_generated) {
            const char *src = rec.source.p ? rec.source.p : "";
            int first = stream_dedup_seen_first(r.dd, src, rec.source.n, rec.message_id.p,
                                                rec.message_id.n, now);
            put_int(&r.out, "F", first);
            r.out.dups += first == 0;
            r.out.full += first == STREAM_DEDUP_E_FULL;
            if (first == 0) continue;
        }
        if (rec.account.p == NULL) continue;
        const stream_str_t *user = rec.user.p ? &rec.user : &rec.anon;
        bool track = rec.type.n == 5 && memcmp(rec.type.p, "track", 5) == 0;
        pql_event_t ev = {rec.account.p,
                          rec.account.n,
                          user->p,
                          user->n,
                          track ? rec.event.p : NULL,
                          track ? rec.event.n : 0,
                          rec.source.p,
                          rec.source.n,
                          rec.ts_ms >= 0 ? rec.ts_ms : rs->kafka_ts[i]};
        int prc = pql_feed(r.pql, &ev, now);
        r.out.late += prc == PQL_E_LATE;
        put_int(&r.out, "P", prc);
    }
    run_close(&r);
    *res = r.out;
}

/* The batched path, batches of `size` records (0: random sizes 1..STREAM_BATCH_MAX). */
static void batched(const recs_t *rs, size_t size, out_t *res)
{
    run_t r;
    run_open(&r);
    stream_ev_t evs[STREAM_BATCH_MAX];
    for (size_t b0 = 0; b0 < N_RECORDS;) {
        size_t n = size ? size : 1 + (size_t)(next() % STREAM_BATCH_MAX);
        if (n > N_RECORDS - b0) n = N_RECORDS - b0;
        for (size_t j = 0; j < n; j++)
            evs[j] = (stream_ev_t){.val = rs->data + rs->off[b0 + j],
                                   .len = rs->len[b0 + j],
                                   .dedup = r.dd,
                                   .pql = r.pql,
                                   .fallback_ts = rs->kafka_ts[b0 + j]};
        assert_int_equal(stream_batch_prepare(&r.dec, false, evs, n), n);
        for (size_t j = 0; j < n; j++) {
            stream_ev_t *e = &evs[j];
            before(&r, b0 + j);
            int64_t now = (int64_t)clk_ms;
            put_int(&r.out, "D", e->rc);
            if (e->rc != 0) continue;
            if (e->has_fp) { /* the seed cache gives the engine's fingerprint */
                const stream_rec_t *rec = &e->rec;
                const char *src = rec->source.p ? rec->source.p : "";
                assert_true(e->fp == dedup_fp(dedup_seed(src, rec->source.n), rec->message_id.p,
                                              rec->message_id.n));
            }
            if (e->dedup_key) {
                int first = stream_ev_dedup(r.dd, e, now);
                put_int(&r.out, "F", first);
                if (first == 0) continue;
            }
            int prc = stream_ev_count(r.pql, e, now);
            if (prc != STREAM_EV_NO_ACCOUNT) put_int(&r.out, "P", prc);
        }
        b0 += n;
    }
    run_close(&r);
    *res = r.out;
}

static void test_batched_path_matches_one_by_one(void **state)
{
    (void)state;
    static recs_t rs;
    build(&rs);
    out_t ref;
    one_by_one(&rs, &ref);
    /* the stream hits every case it is meant to */
    assert_true(ref.dups > 100);
    assert_true(ref.full > 0);
    assert_true(ref.late > 10);
    assert_true(ref.signals > 10);
    assert_true(ref.evictions > 0);
    assert_true(ref.evicted > 0);
    for (size_t size = 0; size <= STREAM_BATCH_MAX; size++) {
        out_t got;
        batched(&rs, size, &got);
        if (got.log.len != ref.log.len || memcmp(got.log.data, ref.log.data, ref.log.len) != 0) {
            size_t k = 0;
            while (k < got.log.len && k < ref.log.len && got.log.data[k] == ref.log.data[k])
                k++;
            fprintf(stderr, "size %zu: first difference at %zu of %zu/%zu\n", size, k, ref.log.len,
                    got.log.len);
            size_t from = k > 80 ? k - 80 : 0;
            for (size_t q = from; q < k + 40; q++)
                fprintf(stderr, "%zu: %02x %c | %02x %c\n", q, (unsigned char)ref.log.data[q],
                        ref.log.data[q] > 32 && ref.log.data[q] < 127 ? ref.log.data[q] : '.',
                        (unsigned char)got.log.data[q],
                        got.log.data[q] > 32 && got.log.data[q] < 127 ? got.log.data[q] : '.');
        }
        assert_int_equal(got.log.len, ref.log.len);
        assert_memory_equal(got.log.data, ref.log.data, ref.log.len);
        base_buf_free(&got.log);
    }
    base_buf_free(&ref.log);
    free(rs.data);
}

static void test_json_batch_prepares_one(void **state)
{
    (void)state;
    static const char j1[] = "{\"type\":\"track\",\"accountId\":\"a\",\"userId\":\"u\"}";
    static const char j2[] = "{\"type\":\"identify\"}";
    stream_decoder_t d;
    stream_decoder_init(&d);
    stream_ev_t evs[2] = {{.val = j1, .len = sizeof j1 - 1}, {.val = j2, .len = sizeof j2 - 1}};
    assert_int_equal(stream_batch_prepare(&d, true, evs, 2), 1);
    assert_int_equal(evs[0].rc, 0);
    assert_int_equal(evs[0].rec.account.n, 1);
    assert_int_equal(evs[0].ah, pql_hash("a", 1));
    assert_int_equal(evs[0].uh, pql_hash("u", 1));
    assert_false(evs[0].dedup_key);
    stream_decoder_free(&d);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_batched_path_matches_one_by_one),
        cmocka_unit_test(test_json_batch_prepares_one),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
