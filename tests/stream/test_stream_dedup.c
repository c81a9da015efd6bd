/*
 * test_stream_dedup.c — sluice-stream's per-partition dedup (collector/stream/stream_dedup.c):
 * first/duplicate, sources kept apart, window expiry and the tombstones it writes, the memory
 * cap, the changelog round trip (flush into an in-memory log, compacted or not, restore into a
 * fresh store: same answers), refusal of torn and garbage records, the record size bound, the
 * pending bound and a failing emit.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "stream_dedup.c"

#define HOUR 3600000ull

static uint64_t clk_ms;
static uint64_t test_clock(void *ud)
{
    (void)ud;
    return clk_ms;
}

/* An in-memory changelog partition: records in log order. */
typedef struct rec {
    unsigned char *key, *val;
    size_t klen, vlen;
} rec_t;
typedef struct log {
    rec_t *r;
    size_t n, cap;
    size_t max_vlen;
    int fail_after; /* emit fails once this many more records went in (-1: never) */
} log_t;

static int log_emit(void *ud, const void *key, size_t klen, const void *val, size_t vlen)
{
    log_t *l = ud;
    if (l->fail_after == 0) return -1;
    if (l->fail_after > 0) l->fail_after--;
    if (l->n == l->cap) {
        l->cap = l->cap ? l->cap * 2 : 64;
        l->r = realloc(l->r, l->cap * sizeof *l->r);
        assert_non_null(l->r);
    }
    rec_t *r = &l->r[l->n++];
    r->klen = klen;
    r->vlen = vlen;
    r->key = malloc(klen);
    r->val = malloc(vlen ? vlen : 1);
    memcpy(r->key, key, klen);
    if (vlen) memcpy(r->val, val, vlen);
    if (vlen > l->max_vlen) l->max_vlen = vlen;
    return 0;
}

static void log_free(log_t *l)
{
    for (size_t i = 0; i < l->n; i++) {
        free(l->r[i].key);
        free(l->r[i].val);
    }
    free(l->r);
    memset(l, 0, sizeof *l);
}

/* Kafka compaction: the last record per key survives, in its place; tombstones kept or not. */
static void log_compact(log_t *l, bool drop_tombstones)
{
    size_t w = 0;
    for (size_t i = 0; i < l->n; i++) {
        bool later = false;
        for (size_t j = i + 1; j < l->n && !later; j++)
            later = l->r[j].klen == l->r[i].klen && !memcmp(l->r[j].key, l->r[i].key, l->r[i].klen);
        if (later || (drop_tombstones && l->r[i].vlen == 0)) {
            free(l->r[i].key);
            free(l->r[i].val);
            continue;
        }
        l->r[w++] = l->r[i];
    }
    l->n = w;
}

static size_t log_tombstones(const log_t *l)
{
    size_t n = 0;
    for (size_t i = 0; i < l->n; i++)
        n += l->r[i].vlen == 0;
    return n;
}

static stream_dedup_t *mk(uint64_t window, uint64_t max_bytes, uint64_t max_pending,
                          uint64_t max_record)
{
    stream_dedup_opts_t o = {.window_ms = window,
                             .max_bytes = max_bytes,
                             .max_pending = max_pending,
                             .max_record_bytes = max_record,
                             .clock = test_clock};
    stream_dedup_t *d = NULL;
    assert_int_equal(stream_dedup_new_opts(&o, &d), STREAM_DEDUP_OK);
    return d;
}

static int seen(stream_dedup_t *d, const char *src, unsigned i)
{
    char mid[32];
    int n = snprintf(mid, sizeof mid, "msg-%u", i);
    return stream_dedup_seen_first(d, src, strlen(src), mid, (size_t)n, (int64_t)clk_ms);
}

static void restore_all(stream_dedup_t *d, const log_t *l)
{
    for (size_t i = 0; i < l->n; i++)
        assert_int_equal(
            stream_dedup_restore(d, l->r[i].key, l->r[i].klen, l->r[i].val, l->r[i].vlen), 0);
}

static void test_first_then_duplicate(void **state)
{
    (void)state;
    clk_ms = 1000 * HOUR;
    stream_dedup_t *d = mk(HOUR, 1 << 20, 0, 0);
    assert_int_equal(seen(d, "web", 1), 1);
    assert_int_equal(seen(d, "web", 1), 0);
    assert_int_equal(seen(d, "web", 2), 1);
    stream_dedup_stats_t st;
    stream_dedup_stats(d, &st);
    assert_int_equal(st.entries, 2);
    assert_int_equal(st.pending, 2);
    stream_dedup_free(d);
    assert_string_equal(stream_dedup_strerror(STREAM_DEDUP_E_CORRUPT),
                        "changelog record corrupt or truncated");
    assert_string_equal(stream_dedup_strerror(12345), "unknown error");
    assert_int_equal(stream_dedup_new(0, 1 << 20, &d), STREAM_DEDUP_E_INVALID);
    assert_null(d);
}

static void test_sources_are_separate(void **state)
{
    (void)state;
    clk_ms = 1000 * HOUR;
    stream_dedup_t *d = mk(HOUR, 1 << 20, 0, 0);
    assert_int_equal(seen(d, "web", 7), 1);
    assert_int_equal(seen(d, "ios", 7), 1);
    assert_int_equal(seen(d, "", 7), 1);
    assert_int_equal(seen(d, "ios", 7), 0);
    assert_int_equal(seen(d, "", 7), 0);
    stream_dedup_free(d);
}

static void test_window_expiry_writes_tombstones(void **state)
{
    (void)state;
    clk_ms = 1000 * HOUR;
    stream_dedup_t *d = mk(HOUR, 1 << 20, 0, 0);
    log_t l = {.fail_after = -1};
    for (unsigned i = 0; i < 100; i++)
        assert_int_equal(seen(d, "web", i), 1);
    assert_int_equal(stream_dedup_changelog(d, log_emit, &l), 0);
    assert_int_equal(l.n, 1);
    assert_int_equal(l.r[0].vlen, STREAM_DEDUP_HDR_LEN + 100 * 8);
    /* Still remembered just before the window ends... */
    clk_ms += HOUR - 1;
    assert_int_equal(seen(d, "web", 5), 0);
    /* ...gone once a window passed since the end of its generation. */
    clk_ms += HOUR / 32 + 1;
    assert_int_equal(seen(d, "web", 5), 1);
    assert_int_equal(stream_dedup_changelog(d, log_emit, &l), 0);
    /* The new record for msg-5, then one tombstone for the dead generation's record. */
    assert_int_equal(l.n, 3);
    assert_int_equal(l.r[1].vlen, STREAM_DEDUP_HDR_LEN + 8);
    assert_int_equal(l.r[2].vlen, 0);
    assert_memory_equal(l.r[2].key, l.r[0].key, STREAM_DEDUP_KEY_LEN);
    stream_dedup_stats_t st;
    stream_dedup_stats(d, &st);
    assert_int_equal(st.tombstones, 1);
    assert_int_equal(st.records, 2);
    assert_int_equal(st.generations, 1);
    /* Compacted without tombstones, the log restores only msg-5. */
    log_compact(&l, true);
    assert_int_equal(l.n, 1);
    stream_dedup_t *r = mk(HOUR, 1 << 20, 0, 0);
    restore_all(r, &l);
    assert_int_equal(seen(r, "web", 5), 0);
    assert_int_equal(seen(r, "web", 6), 1);
    stream_dedup_free(r);
    stream_dedup_free(d);
    log_free(&l);
}

static void test_cap_drops_oldest_and_tombstones_them(void **state)
{
    (void)state;
    clk_ms = 1000 * HOUR;
    /* The engine's floor: 64 shards x 16 buckets x 7 slots, 90% of them usable. */
    stream_dedup_t *d = mk(HOUR, 64 << 10, 0, 0);
    log_t l = {.fail_after = -1};
    unsigned per_gen = 2000, gens = 8;
    for (unsigned g = 0; g < gens; g++) {
        for (unsigned i = 0; i < per_gen; i++)
            assert_int_equal(seen(d, "web", g * per_gen + i), 1);
        assert_int_equal(stream_dedup_changelog(d, log_emit, &l), 0);
        clk_ms += HOUR / 32;
    }
    stream_dedup_stats_t st;
    stream_dedup_stats(d, &st);
    assert_true(st.evicted_by_cap > 0);
    assert_true(st.entries <= 64 * 16 * 7);
    assert_true(st.tombstones > 0);
    assert_true(st.window_s < 3600);
    /* The newest generation is whole; the oldest is gone. */
    for (unsigned i = (gens - 1) * per_gen; i < gens * per_gen; i++)
        assert_int_equal(seen(d, "web", i), 0);
    assert_int_equal(seen(d, "web", 0), 1);
    /* A store restored from that log has the same newest generation and no more than it can
     * hold. */
    stream_dedup_t *r = mk(HOUR, 64 << 10, 0, 0);
    restore_all(r, &l);
    for (unsigned i = (gens - 1) * per_gen; i < gens * per_gen; i++)
        assert_int_equal(seen(r, "web", i), 0);
    assert_int_equal(seen(r, "web", 1), 1);
    stream_dedup_free(r);
    stream_dedup_free(d);
    log_free(&l);
}

/* Flushes over several generations, then restores into fresh stores from the raw log and from
 * its compacted form: every remembered key is a duplicate there, no other is. */
static void test_changelog_round_trip(void **state)
{
    (void)state;
    clk_ms = 1000 * HOUR + 12345;
    stream_dedup_t *d = mk(HOUR, 8 << 20, 0, 0);
    log_t l = {.fail_after = -1};
    unsigned n = 0;
    for (unsigned step = 0; step < 40; step++) { /* 40 x 1/16 window: some generations die */
        for (unsigned i = 0; i < 500; i++, n++)
            assert_int_equal(seen(d, step % 2 ? "web" : "ios", n), 1);
        assert_int_equal(seen(d, step % 2 ? "web" : "ios", n - 1), 0);
        assert_int_equal(stream_dedup_changelog(d, log_emit, &l), 0);
        clk_ms += HOUR / 16;
    }
    assert_int_equal(stream_dedup_changelog(d, log_emit, &l), 0); /* d at the clock too */
    assert_true(log_tombstones(&l) > 0);
    for (int pass = 0; pass < 3; pass++) {
        if (pass == 1) log_compact(&l, false);
        if (pass == 2) log_compact(&l, true);
        stream_dedup_t *r = mk(HOUR, 8 << 20, 0, 0);
        restore_all(r, &l);
        stream_dedup_stats_t st;
        stream_dedup_stats(r, &st);
        assert_int_equal(st.restore_errors, 0);
        for (unsigned i = 0; i < n; i++) {
            const char *src = (i / 500) % 2 ? "web" : "ios";
            char mid[32];
            int ml = snprintf(mid, sizeof mid, "msg-%u", i);
            uint64_t fp = dedup_fp(dedup_seed(src, strlen(src)), mid, (size_t)ml);
            bool a = dedup_all_remembered(d->dd, &fp, 1);
            bool b = dedup_all_remembered(r->dd, &fp, 1);
            assert_int_equal(a, b);
        }
        stream_dedup_stats_t sd;
        stream_dedup_stats(d, &sd);
        assert_int_equal(st.entries, sd.entries);
        stream_dedup_free(r);
    }
    /* The restored store continues the numbering: its records never reuse a key of the log's
     * live records. */
    stream_dedup_t *r = mk(HOUR, 8 << 20, 0, 0);
    restore_all(r, &l);
    size_t before = l.n;
    for (unsigned i = 0; i < 10; i++)
        assert_int_equal(seen(r, "new", i), 1);
    assert_int_equal(stream_dedup_changelog(r, log_emit, &l), 0);
    assert_true(l.n > before);
    for (size_t i = before; i < l.n; i++)
        for (size_t j = 0; j < before; j++)
            if (l.r[i].vlen > 0) assert_true(memcmp(l.r[i].key, l.r[j].key, l.r[i].klen) != 0);
    stream_dedup_free(r);
    stream_dedup_free(d);
    log_free(&l);
}

/* A restore that ran after the records' generations died: skipped, and the next flush writes
 * their tombstones (the crashed writer never did). A tombstone kills its generation and older
 * ones. */
static void test_restore_expired_then_tombstoned(void **state)
{
    (void)state;
    clk_ms = 1000 * HOUR;
    stream_dedup_t *d = mk(HOUR, 1 << 20, 0, 0);
    log_t l = {.fail_after = -1};
    for (unsigned i = 0; i < 10; i++)
        assert_int_equal(seen(d, "web", i), 1);
    assert_int_equal(stream_dedup_changelog(d, log_emit, &l), 0);
    stream_dedup_free(d);
    clk_ms += 2 * HOUR;
    stream_dedup_t *r = mk(HOUR, 1 << 20, 0, 0);
    restore_all(r, &l);
    stream_dedup_stats_t st;
    stream_dedup_stats(r, &st);
    assert_int_equal(st.restore_skipped, 1);
    assert_int_equal(st.entries, 0);
    assert_int_equal(seen(r, "web", 1), 1);
    log_t l2 = {.fail_after = -1};
    assert_int_equal(stream_dedup_changelog(r, log_emit, &l2), 0);
    assert_int_equal(log_tombstones(&l2), 1);
    stream_dedup_free(r);
    log_free(&l2);

    /* Same log plus a tombstone, restored in time: nothing remembered. */
    clk_ms -= 2 * HOUR;
    unsigned char k[STREAM_DEDUP_KEY_LEN];
    memcpy(k, l.r[0].key, sizeof k);
    log_emit(&l, k, sizeof k, NULL, 0);
    r = mk(HOUR, 1 << 20, 0, 0);
    restore_all(r, &l);
    assert_int_equal(seen(r, "web", 1), 1);
    stream_dedup_free(r);
    log_free(&l);
}

static void test_restore_refuses_torn_and_garbage(void **state)
{
    (void)state;
    clk_ms = 1000 * HOUR;
    stream_dedup_t *d = mk(HOUR, 1 << 20, 0, 0);
    log_t l = {.fail_after = -1};
    for (unsigned i = 0; i < 10; i++)
        assert_int_equal(seen(d, "web", i), 1);
    assert_int_equal(stream_dedup_changelog(d, log_emit, &l), 0);
    stream_dedup_free(d);
    rec_t *g = &l.r[0];
    stream_dedup_t *r = mk(HOUR, 1 << 20, 0, 0);
    /* torn value */
    assert_int_equal(stream_dedup_restore(r, g->key, g->klen, g->val, g->vlen - 3),
                     STREAM_DEDUP_E_CORRUPT);
    assert_int_equal(stream_dedup_restore(r, g->key, g->klen, g->val, 5), STREAM_DEDUP_E_CORRUPT);
    /* one flipped bit in a fingerprint, in the header, in the key */
    g->val[STREAM_DEDUP_HDR_LEN + 3] ^= 1;
    assert_int_equal(stream_dedup_restore(r, g->key, g->klen, g->val, g->vlen),
                     STREAM_DEDUP_E_CORRUPT);
    g->val[STREAM_DEDUP_HDR_LEN + 3] ^= 1;
    g->val[2] = 9;
    assert_int_equal(stream_dedup_restore(r, g->key, g->klen, g->val, g->vlen),
                     STREAM_DEDUP_E_CORRUPT);
    g->val[2] = 1;
    g->key[20] ^= 1;
    assert_int_equal(stream_dedup_restore(r, g->key, g->klen, g->val, g->vlen),
                     STREAM_DEDUP_E_CORRUPT);
    g->key[20] ^= 1;
    /* bad keys: length, kind, gen_ms 0, seq beyond the bound */
    assert_int_equal(stream_dedup_restore(r, g->key, g->klen - 1, g->val, g->vlen),
                     STREAM_DEDUP_E_CORRUPT);
    assert_int_equal(stream_dedup_restore(r, "p", 1, g->val, g->vlen), STREAM_DEDUP_E_CORRUPT);
    assert_int_equal(stream_dedup_restore(r, NULL, 0, NULL, 0), STREAM_DEDUP_E_CORRUPT);
    unsigned char k[STREAM_DEDUP_KEY_LEN] = {'d'};
    assert_int_equal(stream_dedup_restore(r, k, sizeof k, NULL, 0), STREAM_DEDUP_E_CORRUPT);
    make_key(k, r->gen_ms, 1, SD_MAX_SEQ);
    assert_int_equal(stream_dedup_restore(r, k, sizeof k, NULL, 0), STREAM_DEDUP_E_CORRUPT);
    make_key(k, r->gen_ms, clk_ms / r->gen_ms + 33, 0); /* a window ahead of the clock */
    assert_int_equal(stream_dedup_restore(r, k, sizeof k, NULL, 0), STREAM_DEDUP_E_CORRUPT);
    stream_dedup_stats_t st;
    stream_dedup_stats(r, &st);
    assert_int_equal(st.restore_errors, 11);
    assert_int_equal(st.entries, 0);
    assert_int_equal(st.generations, 0);
    /* Still usable, and the intact record restores. */
    assert_int_equal(stream_dedup_restore(r, g->key, g->klen, g->val, g->vlen), 0);
    assert_int_equal(seen(r, "web", 3), 0);
    assert_int_equal(seen(r, "web", 30), 1);
    stream_dedup_free(r);
    log_free(&l);
}

static void test_records_stay_within_max_size(void **state)
{
    (void)state;
    clk_ms = 1000 * HOUR;
    size_t max = STREAM_DEDUP_HDR_LEN + 8 * 10;
    stream_dedup_t *d = mk(HOUR, 1 << 20, 0, max);
    log_t l = {.fail_after = -1};
    for (unsigned i = 0; i < 95; i++)
        assert_int_equal(seen(d, "web", i), 1);
    assert_int_equal(stream_dedup_changelog(d, log_emit, &l), 0);
    assert_int_equal(l.n, 10);
    assert_true(l.max_vlen <= max);
    for (size_t i = 0; i < l.n; i++)
        assert_true(l.r[i].klen + l.r[i].vlen <= max + STREAM_DEDUP_KEY_LEN);
    stream_dedup_t *r = mk(HOUR, 1 << 20, 0, max);
    restore_all(r, &l);
    for (unsigned i = 0; i < 95; i++)
        assert_int_equal(seen(r, "web", i), 0);
    stream_dedup_free(r);
    stream_dedup_free(d);
    log_free(&l);
    stream_dedup_opts_t o = {.window_ms = HOUR, .max_record_bytes = STREAM_DEDUP_MIN_RECORD - 1};
    assert_int_equal(stream_dedup_new_opts(&o, &d), STREAM_DEDUP_E_INVALID);
}

static void test_pending_bound_lets_through_and_counts(void **state)
{
    (void)state;
    clk_ms = 1000 * HOUR;
    stream_dedup_t *d = mk(HOUR, 1 << 20, 10, 0);
    for (unsigned i = 0; i < 10; i++)
        assert_int_equal(seen(d, "web", i), 1);
    assert_int_equal(seen(d, "web", 10), STREAM_DEDUP_E_FULL);
    assert_int_equal(seen(d, "web", 3), 0); /* a duplicate is still one */
    stream_dedup_stats_t st;
    stream_dedup_stats(d, &st);
    assert_int_equal(st.pending_full, 1);
    log_t l = {.fail_after = -1};
    assert_int_equal(stream_dedup_changelog(d, log_emit, &l), 0);
    assert_int_equal(seen(d, "web", 10), 1);
    stream_dedup_free(d);
    log_free(&l);
}

static void test_failed_emit_writes_the_same_again(void **state)
{
    (void)state;
    clk_ms = 1000 * HOUR;
    stream_dedup_t *d = mk(HOUR, 1 << 20, 0, STREAM_DEDUP_HDR_LEN + 8 * 4);
    log_t l = {.fail_after = 1};
    for (unsigned i = 0; i < 8; i++)
        assert_int_equal(seen(d, "web", i), 1);
    assert_int_equal(stream_dedup_changelog(d, log_emit, &l), STREAM_DEDUP_E_EMIT);
    assert_int_equal(l.n, 1);
    l.fail_after = -1;
    assert_int_equal(stream_dedup_changelog(d, log_emit, &l), 0);
    assert_int_equal(l.n, 3);
    assert_memory_equal(l.r[0].key, l.r[1].key, STREAM_DEDUP_KEY_LEN);
    assert_memory_equal(l.r[0].val, l.r[1].val, l.r[0].vlen);
    stream_dedup_free(d);
    log_free(&l);
}

/* A worker with another dedup.window reads the old records under their gen_ms, keeps them at
 * least as long, and tombstones them under their own keys. */
static void test_restore_across_window_change(void **state)
{
    (void)state;
    clk_ms = 1000 * HOUR;
    stream_dedup_t *d = mk(HOUR, 1 << 20, 0, 0);
    log_t l = {.fail_after = -1};
    for (unsigned i = 0; i < 10; i++)
        assert_int_equal(seen(d, "web", i), 1);
    assert_int_equal(stream_dedup_changelog(d, log_emit, &l), 0);
    stream_dedup_free(d);
    stream_dedup_t *r = mk(2 * HOUR, 1 << 20, 0, 0);
    restore_all(r, &l);
    assert_int_equal(seen(r, "web", 4), 0);
    clk_ms += 3 * HOUR;
    log_t l2 = {.fail_after = -1};
    assert_int_equal(stream_dedup_changelog(r, log_emit, &l2), 0);
    assert_int_equal(l2.n, 1); /* only the old record's tombstone, under its own key */
    assert_int_equal(l2.r[0].vlen, 0);
    assert_memory_equal(l2.r[0].key, l.r[0].key, STREAM_DEDUP_KEY_LEN);
    stream_dedup_free(r);
    log_free(&l2);
    log_free(&l);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_first_then_duplicate),
        cmocka_unit_test(test_sources_are_separate),
        cmocka_unit_test(test_window_expiry_writes_tombstones),
        cmocka_unit_test(test_cap_drops_oldest_and_tombstones_them),
        cmocka_unit_test(test_changelog_round_trip),
        cmocka_unit_test(test_restore_expired_then_tombstoned),
        cmocka_unit_test(test_restore_refuses_torn_and_garbage),
        cmocka_unit_test(test_records_stay_within_max_size),
        cmocka_unit_test(test_pending_bound_lets_through_and_counts),
        cmocka_unit_test(test_failed_emit_writes_the_same_again),
        cmocka_unit_test(test_restore_across_window_change),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
