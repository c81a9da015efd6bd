/*
 * test_dedup.c — the dedup structure (collector/dedup.c): window expiry by an injected clock,
 * eviction order at the memory cap, bytes per entry, PENDING/commit/release and in-request
 * duplicates, concurrent reservations from 4 threads, incremental growth (bounded moves per
 * operation, exact answers while growing), snapshots (round trip, expiry at load,
 * corrupt, truncated, missing) and the worker's final snapshot.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <dirent.h>

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "dedup_internal.h"
#include "metrics.h"

typedef struct fake_clock {
    _Atomic uint64_t ms;
} fake_clock_t;

static uint64_t fake_now(void *ud)
{
    return atomic_load(&((fake_clock_t *)ud)->ms);
}

static dedup_t *mk(fake_clock_t *clk, uint64_t window_ms, uint64_t max_memory)
{
    dedup_opts_t o = {.window_ms = window_ms,
                      .max_memory = max_memory,
                      .clock = clk ? fake_now : NULL,
                      .clock_ud = clk};
    dedup_t *d = NULL;
    assert_int_equal(dedup_new(&o, &d), DEDUP_OK);
    assert_non_null(d);
    return d;
}

/* As when the worker runs (dedup_worker_start): growths move a bucket per operation and
 * dedup__sweep_all, the worker's round, moves the rest. Without it each growth moves at once. */
static dedup_t *mk_incremental(fake_clock_t *clk, uint64_t window_ms, uint64_t max_memory)
{
    dedup_t *d = mk(clk, window_ms, max_memory);
    atomic_store(&d->incremental, true);
    return d;
}

/* Distinct fingerprints for ("test", "id-<i>"). */
static uint64_t key(uint64_t i)
{
    char id[32];
    int n = snprintf(id, sizeof id, "id-%llu", (unsigned long long)i);
    return dedup_fp(dedup_seed("test", 4), id, (size_t)n);
}

static int reserve1(dedup_t *d, uint64_t fp)
{
    uint8_t v = 0xff;
    dedup_reserve_batch(d, &fp, 1, &v);
    return v;
}

/* Reserves and commits: the event was delivered. Returns the verdict. */
static int seen(dedup_t *d, uint64_t fp)
{
    int v = reserve1(d, fp);
    if (v == DEDUP_NEW) dedup_commit(d, &fp, 1);
    return v;
}

static void advance(dedup_t *d, fake_clock_t *clk, uint64_t ms, uint64_t step)
{
    for (uint64_t t = 0; t < ms; t += step) {
        atomic_fetch_add(&clk->ms, step);
        dedup_tick(d);
    }
}

static void test_invalid_and_strerror(void **state)
{
    (void)state;
    dedup_opts_t o = {.window_ms = 0, .max_memory = 1 << 20};
    dedup_t *d = (dedup_t *)1;
    assert_int_equal(dedup_new(&o, &d), DEDUP_E_INVALID);
    assert_null(d);
    assert_string_equal(dedup_strerror(DEDUP_E_CORRUPT), "snapshot corrupt or truncated");
    assert_string_equal(dedup_strerror(12345), "unknown error");
    /* Source is part of the key. */
    assert_true(dedup_fp(dedup_seed("web", 3), "m1", 2) != dedup_fp(dedup_seed("ios", 3), "m1", 2));
    assert_int_equal(dedup_fp(dedup_seed("web", 3), "m1", 2),
                     dedup_fp(dedup_seed("web", 3), "m1", 2));
}

static void test_window_expiry(void **state)
{
    (void)state;
    fake_clock_t clk = {1700000000000ull};
    dedup_t *d = mk(&clk, 32000, 1 << 20); /* generations of 1 s */
    assert_int_equal(seen(d, key(1)), DEDUP_NEW);
    advance(d, &clk, 10000, 1000);
    assert_int_equal(seen(d, key(2)), DEDUP_NEW);
    /* Exactly one window after the first insert: still remembered. */
    advance(d, &clk, 22000, 1000);
    assert_int_equal(seen(d, key(1)), DEDUP_DUPLICATE);
    assert_int_equal(seen(d, key(2)), DEDUP_DUPLICATE);
    dedup_stats_t st;
    dedup_stats(d, &st);
    assert_int_equal(st.entries, 2);
    assert_true(st.window_s >= 31.0 && st.window_s <= 32.0);
    /* Two generations later key 1 is gone, key 2 (10 s younger) is not. */
    advance(d, &clk, 2000, 1000);
    assert_int_equal(seen(d, key(1)), DEDUP_NEW);
    assert_int_equal(seen(d, key(2)), DEDUP_DUPLICATE);
    advance(d, &clk, 12000, 1000);
    assert_int_equal(seen(d, key(2)), DEDUP_NEW);
    dedup_stats(d, &st);
    assert_int_equal(st.evicted_by_cap, 0);
    dedup_free(d);
}

/* Tags repeat every 127 generations: an entry that died long ago (no sweep by a worker) must not
 * come back to life when its tag is reused. */
static void test_expired_entries_do_not_resurrect(void **state)
{
    (void)state;
    fake_clock_t clk = {1700000000000ull};
    dedup_t *d = mk(&clk, 32000, 1 << 20);
    for (uint64_t i = 0; i < 1000; i++)
        assert_int_equal(seen(d, key(i)), DEDUP_NEW);
    for (int round = 0; round < 300; round++) {
        advance(d, &clk, 1000, 1000);
        /* Touches one key per step, in varying shards, as traffic would. */
        (void)seen(d, key(100000 + (uint64_t)round));
        for (uint64_t i = 0; i < 1000; i += 97)
            if (round > 40) assert_int_equal(reserve1(d, key(i)) == DEDUP_DUPLICATE, 0);
        for (uint64_t i = 0; i < 1000; i += 97)
            if (round > 40) dedup_release(d, (uint64_t[]){key(i)}, 1);
    }
    dedup_stats_t st;
    dedup_stats(d, &st);
    assert_true(st.entries <= 40);
    dedup_free(d);
}

static bool remembered(dedup_t *d, uint64_t fp);

/* The worker sweeps a shard in chunks with the lock released in between (DEDUP_SWEEP_CHUNK):
 * on shards several chunks large, one round still clears every expired entry and marks each
 * shard swept, and the live entries inserted after the expiry survive it. */
static void test_sweep_in_chunks_covers_big_shards(void **state)
{
    (void)state;
    fake_clock_t clk = {1700000000000ull};
    dedup_t *d = mk(&clk, 32000, 256ull << 20); /* 1 s generations */
    enum { N = 2500000, B = 10000 };
    static uint64_t fps[B];
    static uint8_t v[B];
    for (uint64_t at = 0; at < N; at += B) {
        for (uint64_t i = 0; i < B; i++)
            fps[i] = key(at + i);
        dedup_reserve_batch(d, fps, B, v);
        dedup_commit(d, fps, B);
    }
    dedup_stats_t st;
    for (int round = 0; round < 10000; round++) {
        dedup__sweep_all(d);
        dedup_stats(d, &st);
        if (st.growing == 0) break;
    }
    assert_int_equal(st.growing, 0);
    assert_true(atomic_load(&d->shards[0].nb) > DEDUP_SWEEP_CHUNK); /* two chunks or more */
    advance(d, &clk, 40000, 1000); /* every entry above expired; no loop sweep forced yet */
    for (uint64_t i = 0; i < 1000; i++)
        assert_int_equal(seen(d, key(N + i)), DEDUP_NEW);
    dedup__sweep_all(d);
    view_t vw;
    view_load(d, &vw);
    uint64_t live = 0;
    for (unsigned si = 0; si < DEDUP_SHARDS; si++) {
        shard_t *s = &d->shards[si];
        assert_null(s->ob);
        assert_int_equal(s->swept_floor, vw.floor);
        bucket_t *b = atomic_load(&s->b);
        for (uint32_t i = 0; i < atomic_load(&s->nb); i++)
            for (int k = 0; k < DEDUP_SLOTS; k++) {
                if (b[i].tag[k] == 0) continue;
                assert_true(tag_live(&vw, b[i].tag[k])); /* no expired entry left behind */
                live++;
            }
    }
    assert_int_equal(live, 1000);
    for (uint64_t i = 0; i < 1000; i++)
        assert_true(remembered(d, key(N + i)));
    dedup_free(d);
}

/* Dead (not live in view v) tags left in the shard's table. */
static uint64_t dead_tags(dedup_t *d, unsigned si)
{
    view_t v;
    view_load(d, &v);
    shard_t *s = &d->shards[si];
    bucket_t *b = atomic_load(&s->b);
    uint64_t n = 0;
    for (uint32_t i = 0; i < atomic_load(&s->nb); i++)
        for (int k = 0; k < DEDUP_SLOTS; k++)
            if (b[i].tag[k] != 0 && !tag_live(&v, b[i].tag[k])) n++;
    return n;
}

/* An eviction by the cap moves the floor but does not make the worker sweep (that swept the
 * whole table at once); the sweep comes DEDUP_SWEEP_FORCE / 2 generations after the last one,
 * long before a dead tag's value comes round again. */
static void test_eviction_alone_does_not_sweep(void **state)
{
    (void)state;
    fake_clock_t clk = {1700000000000ull};
    dedup_t *d = mk(&clk, 3600000, 1 << 20);
    const uint64_t per = 40000;
    for (uint64_t g = 0; g < 3; g++) {
        for (uint64_t i = 0; i < per; i++)
            assert_int_equal(seen(d, key(g * per + i)), DEDUP_NEW);
        advance(d, &clk, 112500, 112500);
    }
    dedup_stats_t st;
    dedup_stats(d, &st);
    assert_int_equal(st.evicted_by_cap, per);
    dedup__sweep_all(d);
    assert_true(dead_tags(d, 0) > 0); /* the evicted generation's entries are still there */
    advance(d, &clk, 112500 * (DEDUP_SWEEP_FORCE / 2), 112500);
    dedup__sweep_all(d);
    for (unsigned si = 0; si < DEDUP_SHARDS; si++)
        assert_int_equal(dead_tags(d, si), 0);
    dedup_stats(d, &st);
    assert_int_equal(st.entries, 2 * per); /* the live ones untouched */
    dedup_free(d);
}

static void test_cap_evicts_oldest_first(void **state)
{
    (void)state;
    fake_clock_t clk = {1700000000000ull};
    /* 1 MiB: 256 buckets per shard, ~103k entries at 90%. */
    dedup_t *d = mk(&clk, 3600000, 1 << 20);
    const uint64_t per = 40000;
    for (uint64_t g = 0; g < 3; g++) {
        for (uint64_t i = 0; i < per; i++)
            assert_int_equal(seen(d, key(g * per + i)), DEDUP_NEW);
        advance(d, &clk, 112500, 112500); /* one generation (1 h / 32) */
    }
    dedup_stats_t st;
    dedup_stats(d, &st);
    assert_true(st.bytes <= (1 << 20) + sizeof(dedup_t));
    assert_int_equal(st.evicted_by_cap, per); /* all of the first generation, nothing else */
    assert_int_equal(st.entries, 2 * per);
    assert_true(st.window_s < 3 * 112.5 && st.window_s > 112.0);
    assert_int_equal(metrics_get(METRIC_DEDUP_EVICTIONS) >= per, 1);
    /* The newer generations are intact, the oldest is forgotten. */
    uint64_t fps[1000];
    uint8_t v[1000];
    for (uint64_t g = 1; g < 3; g++) {
        for (uint64_t i = 0; i < 1000; i++)
            fps[i] = key(g * per + i * 37);
        dedup_reserve_batch(d, fps, 1000, v);
        for (uint64_t i = 0; i < 1000; i++)
            assert_int_equal(v[i], DEDUP_DUPLICATE);
    }
    for (uint64_t i = 0; i < 1000; i++)
        fps[i] = key(i * 37);
    dedup_reserve_batch(d, fps, 1000, v);
    for (uint64_t i = 0; i < 1000; i++)
        assert_int_equal(v[i], DEDUP_NEW);
    dedup_release(d, fps, 1000);
    dedup_free(d);
}

/* Everything in one generation, more than fits: the cap still holds and new keys go in. */
static void test_cap_single_generation(void **state)
{
    (void)state;
    fake_clock_t clk = {1700000000000ull};
    dedup_t *d = mk(&clk, 3600000, 1 << 20);
    for (uint64_t i = 0; i < 300000; i++)
        assert_int_equal(seen(d, key(i)), DEDUP_NEW);
    dedup_stats_t st;
    dedup_stats(d, &st);
    assert_true(st.bytes <= (1 << 20) + sizeof(dedup_t));
    assert_true(st.entries > 0 && st.entries <= 300000);
    assert_int_equal(st.entries + st.evicted_by_cap, 300000);
    assert_int_equal(seen(d, key(299999)), DEDUP_DUPLICATE);
    dedup_free(d);
}

static void test_bytes_per_entry(void **state)
{
    (void)state;
    dedup_t *d = mk(NULL, 3600000, 256ull << 20);
    enum { N = 1000000, B = 1000 };
    static uint64_t fps[B];
    static uint8_t v[B];
    for (uint64_t i = 0; i < N; i += B) {
        for (uint64_t j = 0; j < B; j++)
            fps[j] = key(i + j);
        dedup_reserve_batch(d, fps, B, v);
        dedup_commit(d, fps, B);
        for (uint64_t j = 0; j < B; j++)
            assert_int_equal(v[j], DEDUP_NEW);
    }
    dedup_stats_t st;
    dedup_stats(d, &st);
    assert_int_equal(st.entries, N);
    assert_int_equal(st.pending, 0);
    double per = (double)st.bytes / (double)st.entries;
    print_message("dedup: %.2f bytes/entry at %d entries\n", per, N);
    assert_true(per <= 16.0);
    dedup_free(d);
}

static void test_pending_commit_release(void **state)
{
    (void)state;
    dedup_t *d = mk(NULL, 3600000, 1 << 20);
    uint64_t a = key(1), b = key(2), c = key(3), e = key(4);
    assert_int_equal(reserve1(d, a), DEDUP_NEW);
    assert_int_equal(reserve1(d, a), DEDUP_BUSY);
    dedup_stats_t st;
    dedup_stats(d, &st);
    assert_int_equal(st.pending, 1);

    /* A request holding a copy of the in-flight a: a is BUSY (not reserved), b and c are. The
     * request may answer 200 only once a is remembered. */
    dedup_scratch_t s = {0};
    uint64_t req[3] = {b, a, c};
    uint8_t v[3];
    assert_int_equal(dedup_reserve_all(d, &s, req, 3, v), DEDUP_OK);
    assert_int_equal(v[0], DEDUP_NEW);
    assert_int_equal(v[1], DEDUP_BUSY);
    assert_int_equal(v[2], DEDUP_NEW);
    assert_false(dedup_all_remembered(d, &a, 1));
    assert_int_equal(reserve1(d, b), DEDUP_BUSY);
    dedup_release(d, (uint64_t[]){b, c}, 2);
    assert_int_equal(reserve1(d, b), DEDUP_NEW);
    dedup_release(d, &b, 1);

    /* Delivery failed: forgotten, the retry goes through; the waiting copy sees it gone. */
    dedup_release(d, &a, 1);
    assert_false(dedup_all_remembered(d, &a, 1));
    assert_int_equal(reserve1(d, a), DEDUP_NEW);
    dedup_commit(d, &a, 1);
    assert_true(dedup_all_remembered(d, &a, 1));
    assert_false(dedup_all_remembered(d, (uint64_t[]){a, b}, 2));
    assert_int_equal(reserve1(d, a), DEDUP_DUPLICATE);
    /* Releasing a remembered entry does nothing. */
    dedup_release(d, &a, 1);
    assert_int_equal(reserve1(d, a), DEDUP_DUPLICATE);

    /* Duplicates inside one request: the later copies, the remembered one too. */
    uint64_t req2[5] = {c, c, a, e, c};
    uint8_t v2[5];
    assert_int_equal(dedup_reserve_all(d, &s, req2, 5, v2), DEDUP_OK);
    assert_int_equal(v2[0], DEDUP_NEW);
    assert_int_equal(v2[1], DEDUP_DUPLICATE);
    assert_int_equal(v2[2], DEDUP_DUPLICATE);
    assert_int_equal(v2[3], DEDUP_NEW);
    assert_int_equal(v2[4], DEDUP_DUPLICATE);
    dedup_commit(d, (uint64_t[]){c, e}, 2);
    dedup_stats(d, &st);
    assert_int_equal(st.pending, 0);
    assert_int_equal(st.entries, 3);
    /* The scratch is reused without clearing: a new request does not see the old one's keys. */
    uint64_t req3[2] = {key(10), key(11)};
    assert_int_equal(dedup_reserve_all(d, &s, req3, 2, v2), DEDUP_OK);
    assert_int_equal(v2[0], DEDUP_NEW);
    assert_int_equal(v2[1], DEDUP_NEW);
    dedup_scratch_free(&s);
    dedup_free(d);
}

enum { CONC_THREADS = 4, CONC_KEYS = 20000 };

typedef struct conc {
    dedup_t *d;
    int seed;
    _Atomic int *wins;
    _Atomic int *go;
} conc_t;

static void *conc_main(void *arg)
{
    conc_t *c = arg;
    uint64_t fps[100];
    uint8_t v[100];
    while (!atomic_load(c->go)) {
    }
    /* Each thread walks the ids in its own order, in batches of 100. */
    for (int base = 0; base < CONC_KEYS; base += 100) {
        int start = (base + c->seed * 5000) % CONC_KEYS;
        for (int j = 0; j < 100; j++)
            fps[j] = key((uint64_t)(start + j));
        dedup_reserve_batch(c->d, fps, 100, v);
        for (int j = 0; j < 100; j++) {
            if (v[j] == DEDUP_NEW) {
                atomic_fetch_add(&c->wins[start + j], 1);
                if (j % 2 == 0) dedup_commit(c->d, &fps[j], 1);
            }
        }
    }
    return NULL;
}

static void test_concurrent_reserve_one_winner(void **state)
{
    (void)state;
    dedup_t *d = mk(NULL, 3600000, 64 << 20);
    static _Atomic int wins[CONC_KEYS];
    _Atomic int go = 0;
    pthread_t th[CONC_THREADS];
    conc_t c[CONC_THREADS];
    for (int i = 0; i < CONC_THREADS; i++) {
        c[i] = (conc_t){d, i, wins, &go};
        assert_int_equal(pthread_create(&th[i], NULL, conc_main, &c[i]), 0);
    }
    atomic_store(&go, 1);
    for (int i = 0; i < CONC_THREADS; i++)
        pthread_join(th[i], NULL);
    for (int i = 0; i < CONC_KEYS; i++)
        assert_int_equal(atomic_load(&wins[i]), 1);
    dedup_stats_t st;
    dedup_stats(d, &st);
    assert_int_equal(st.entries, CONC_KEYS);
    assert_int_equal(st.pending, CONC_KEYS / 2);
    dedup_free(d);
}

static char *tmpdir(void)
{
    char *t = strdup("/tmp/sluice-dedup-XXXXXX");
    assert_non_null(mkdtemp(t));
    return t;
}

static void rmdir_all(char *dir)
{
    DIR *dh = opendir(dir);
    if (dh != NULL) {
        struct dirent *e;
        while ((e = readdir(dh)) != NULL) {
            if (e->d_name[0] == '.') continue;
            char p[4200];
            snprintf(p, sizeof p, "%s/%s", dir, e->d_name);
            unlink(p);
        }
        closedir(dh);
    }
    rmdir(dir);
    free(dir);
}

static void fill(dedup_t *d, uint64_t from, uint64_t n)
{
    for (uint64_t i = from; i < from + n; i++)
        assert_int_equal(seen(d, key(i)), DEDUP_NEW);
}

static bool remembered(dedup_t *d, uint64_t fp)
{
    return dedup_all_remembered(d, &fp, 1);
}

/* Growth is incremental: while shards move their entries into grown tables, no single lookup or
 * insert moves more than one old bucket's worth (counted, not timed), and every answer stays
 * exact: each key inserted so far is remembered, none of the keys not inserted is. */
static void test_growth_bounded_and_exact(void **state)
{
    (void)state;
    dedup_t *d = mk_incremental(NULL, 3600000, 256ull << 20);
    enum { N = 400000 };
    uint64_t growing_seen = 0, checks = 0;
    uint64_t lcg = 12345;
    for (uint64_t i = 0; i < N; i++) {
        assert_int_equal(seen(d, key(i)), DEDUP_NEW);
        /* An earlier key (anywhere in 0..i), the key just inserted, and one never inserted. */
        lcg = lcg * 6364136223846793005ull + 1442695040888963407ull;
        uint64_t j = (lcg >> 11) % (i + 1);
        assert_true(remembered(d, key(j)));
        assert_true(remembered(d, key(i)));
        assert_false(remembered(d, key(N + i)));
        checks++;
        if (i % 1000 == 0) {
            dedup_stats_t st;
            dedup_stats(d, &st);
            growing_seen += st.growing;
            assert_true(st.grow_step_max <= DEDUP_MIGRATE_STEP * DEDUP_SLOTS);
        }
    }
    dedup_stats_t st;
    dedup_stats(d, &st);
    print_message("growth: %llu entries moved, at most %u per operation, %llu shard-samples "
                  "growing\n",
                  (unsigned long long)st.grow_moved, st.grow_step_max,
                  (unsigned long long)growing_seen);
    assert_true(growing_seen > 0);      /* lookups above ran while tables were growing */
    assert_true(st.grow_moved > N / 2); /* entries did move */
    assert_true(st.grow_step_max > 0 && st.grow_step_max <= DEDUP_MIGRATE_STEP * DEDUP_SLOTS);
    assert_int_equal(st.entries, N);
    /* The worker's rounds finish every growth in progress, one bounded chunk per shard each. */
    for (int round = 0; round < 1000; round++) {
        dedup__sweep_all(d);
        dedup_stats(d, &st);
        if (st.growing == 0) break;
    }
    assert_int_equal(st.growing, 0);
    assert_int_equal(st.entries, N);
    for (uint64_t i = 0; i < N; i++)
        assert_true(remembered(d, key(i)));
    for (uint64_t i = N; i < N + 10000; i++)
        assert_int_equal(reserve1(d, key(i)), DEDUP_NEW);
    dedup_free(d);
}

/* PENDING entries reserved before a growth are found in the old table or the new one, and
 * commit/release act on them wherever they are. */
static void test_growth_keeps_pending(void **state)
{
    (void)state;
    dedup_t *d = mk_incremental(NULL, 3600000, 256ull << 20);
    enum { P = 2000, N = 300000 };
    static uint64_t fps[P];
    static uint8_t v[P];
    for (uint64_t i = 0; i < P; i++)
        fps[i] = key(1000000 + i);
    dedup_reserve_batch(d, fps, P, v);
    for (uint64_t i = 0; i < P; i++)
        assert_int_equal(v[i], DEDUP_NEW);
    fill(d, 0, N); /* grows every shard several times */
    dedup_reserve_batch(d, fps, P, v);
    for (uint64_t i = 0; i < P; i++)
        assert_int_equal(v[i], DEDUP_BUSY);
    dedup_commit(d, fps, P / 2);
    dedup_release(d, fps + P / 2, P - P / 2);
    for (uint64_t i = 0; i < P; i++)
        assert_int_equal(remembered(d, fps[i]), i < P / 2);
    dedup_stats_t st;
    dedup_stats(d, &st);
    assert_int_equal(st.entries, N + P / 2);
    assert_int_equal(st.pending, 0);
    dedup_free(d);
}

/* The worker grows a shard once it passes 75% load, before any loop would (90%), and moves its
 * whole old table in the same round; every entry stays remembered. */
static void test_worker_grows_ahead(void **state)
{
    (void)state;
    dedup_t *d = mk_incremental(NULL, 3600000, 256ull << 20);
    shard_t *s0 = &d->shards[0];
    uint64_t i = 0;
    /* Past 75% of shard 0's current table, below its 90% */
    for (int round = 0; round < 3; round++) {
        uint32_t nb = atomic_load(&s0->nb);
        while (s0->live < DEDUP_GROW_AT(nb) + 1) {
            assert_int_equal(seen(d, key(i++)), DEDUP_NEW);
            dedup__sweep_all(d); /* the worker grows the others as they pass 75% too */
        }
        if (atomic_load(&s0->nb) != nb) continue; /* the last round's sweep already grew it */
        assert_true(s0->live < DEDUP_LIMIT(nb));
        dedup__sweep_all(d);
        assert_int_equal(atomic_load(&s0->nb), dedup__grown_nb(s0, nb));
        for (unsigned si = 0; si < DEDUP_SHARDS; si++)
            assert_null(d->shards[si].ob); /* every growth moved in its round */
    }
    assert_true(atomic_load(&s0->nb) > DEDUP_MIN_NB);
    for (uint64_t j = 0; j < i; j++)
        assert_true(remembered(d, key(j)));
    dedup_stats_t st;
    dedup_stats(d, &st);
    assert_int_equal(st.grow_waits, 0);
    assert_int_equal(st.evicted_by_cap, 0);
    dedup_free(d);
}

/* dedup.max_memory holds every table, the old ones of growths in progress included. With the
 * worker's rounds in between (as in the collector), a fill far past the cap stays within it at
 * every step; the tables reach their largest size before anything is evicted, and the cap then
 * evicts as before. (With only the tables counted, the last growth held 1.67x the cap.) */
static void test_memory_cap_holds_while_growing(void **state)
{
    (void)state;
    fake_clock_t clk = {1700000000000ull};
    const uint64_t cap = 16ull << 20;
    dedup_t *d = mk_incremental(&clk, 3600000, cap);
    uint64_t slots_max = 0;
    for (unsigned si = 0; si < DEDUP_SHARDS; si++)
        slots_max += (uint64_t)d->shards[si].max_nb * DEDUP_SLOTS;
    assert_true(slots_max * sizeof(bucket_t) / DEDUP_SLOTS <= cap);
    dedup_stats_t st;
    uint64_t first_evict_at = 0, most_bytes = 0;
    const uint64_t n = slots_max * 13 / 10;
    for (uint64_t i = 0; i < n; i++) {
        assert_int_equal(seen(d, key(i)), DEDUP_NEW);
        if (i % 2000 != 0) continue;
        dedup__sweep_all(d);
        dedup_stats(d, &st);
        assert_true(atomic_load(&d->mem_used) <= cap);
        assert_true(st.bytes <= cap + sizeof *d);
        if (st.bytes > most_bytes) most_bytes = st.bytes;
        if (st.evicted_by_cap > 0 && first_evict_at == 0) first_evict_at = i;
        if (i % 200000 == 0) advance(d, &clk, 112500, 112500); /* a generation per 200 k */
    }
    print_message("cap %llu: most bytes %llu, first eviction at %llu of %llu slots\n",
                  (unsigned long long)cap, (unsigned long long)most_bytes,
                  (unsigned long long)first_evict_at, (unsigned long long)slots_max);
    assert_true(first_evict_at > 0);                     /* the cap did evict */
    assert_true(first_evict_at >= slots_max * 85 / 100); /* only once the tables were full */
    for (unsigned si = 0; si < DEDUP_SHARDS; si++)
        assert_int_equal(atomic_load(&d->shards[si].nb), d->shards[si].max_nb);
    assert_true(most_bytes >= cap * 9 / 10); /* and the cap is used, not left idle */
    for (uint64_t i = n - 1000; i < n; i++)
        assert_true(remembered(d, key(i)));
    dedup_free(d);
}

/* Remembers key(i); every `every` keys also checks that the tables are within cap and reads the
 * stats into *st (returns true then). */
static bool seen_within_cap(dedup_t *d, uint64_t i, uint64_t cap, uint64_t every, dedup_stats_t *st)
{
    assert_int_equal(seen(d, key(i)), DEDUP_NEW);
    if (i % every != 0) return false;
    assert_true(atomic_load(&d->mem_used) <= cap);
    dedup_stats(d, st);
    return true;
}

/* Without the worker, the loops' growths of the largest tables all start together: the first
 * ones take the cap's headroom and the others wait, filling on past 90% (up to 95%) instead of
 * evicting; the cap is never passed. */
static void test_growth_waits_for_headroom(void **state)
{
    (void)state;
    const uint64_t cap = 16ull << 20;
    dedup_t *d = mk_incremental(NULL, 3600000, cap);
    dedup_stats_t st;
    bool waited_past_limit = false;
    for (uint64_t i = 0; i < 2000000 && !waited_past_limit; i++) {
        if (!seen_within_cap(d, i, cap, 1000, &st)) continue;
        if (st.grow_waits == 0 || st.evicted_by_cap > 0) continue;
        for (unsigned si = 0; si < DEDUP_SHARDS; si++) {
            shard_t *s = &d->shards[si];
            if (s->live > DEDUP_LIMIT(atomic_load(&s->nb))) waited_past_limit = true;
        }
    }
    assert_true(waited_past_limit);
    dedup_stats(d, &st);
    assert_true(st.grow_waits > 0);
    assert_int_equal(st.evicted_by_cap, 0);
    dedup_free(d);
}

/* Without a running worker (sluice-stream, a snapshot load) a growth moves its whole old table
 * at once, so no old table is ever left beside a new one and the cap is never passed; answers
 * stay exact. */
static void test_growth_without_worker_moves_at_once(void **state)
{
    (void)state;
    const uint64_t cap = 16ull << 20;
    dedup_t *d = mk(NULL, 3600000, cap);
    dedup_stats_t st;
    enum { N = 300000 };
    for (uint64_t i = 0; i < N; i++)
        if (seen_within_cap(d, i, cap, 997, &st)) assert_int_equal(st.growing, 0);
    dedup_stats(d, &st);
    assert_true(st.grow_moved > N / 2);
    assert_int_equal(st.entries, N);
    for (uint64_t i = 0; i < N; i++)
        assert_true(remembered(d, key(i)));
    dedup_free(d);
}

static void test_snapshot_round_trip(void **state)
{
    (void)state;
    char *dir = tmpdir();
    fake_clock_t clk = {1700000000000ull};
    dedup_t *d = mk(&clk, 32000, 8 << 20);
    fill(d, 0, 5000);
    advance(d, &clk, 5000, 1000);
    fill(d, 5000, 5000);
    for (uint64_t i = 20000; i < 20005; i++)
        assert_int_equal(reserve1(d, key(i)), DEDUP_NEW); /* pending: not in the snapshot */
    assert_int_equal(dedup_snapshot_write(d, dir, NULL), DEDUP_OK);
    dedup_free(d);

    atomic_fetch_add(&clk.ms, 20000); /* a restart 20 s later */
    dedup_t *d2 = mk(&clk, 32000, 8 << 20);
    assert_int_equal(dedup_snapshot_load(d2, dir), DEDUP_OK);
    dedup_stats_t st;
    dedup_stats(d2, &st);
    assert_int_equal(st.entries, 10000);
    assert_true(st.window_s >= 25.0);
    for (uint64_t i = 0; i < 10000; i += 7)
        assert_int_equal(reserve1(d2, key(i)), DEDUP_DUPLICATE);
    for (uint64_t i = 20000; i < 20005; i++)
        assert_int_equal(reserve1(d2, key(i)), DEDUP_NEW);
    /* The loaded generations keep their times: the first 5000 expire 5 s before the others. */
    advance(d2, &clk, 5000, 1000); /* 30 s after the first 5000 went in: still there */
    assert_int_equal(reserve1(d2, key(0)), DEDUP_DUPLICATE);
    advance(d2, &clk, 4000, 1000);
    assert_int_equal(reserve1(d2, key(1)), DEDUP_NEW);
    assert_int_equal(reserve1(d2, key(5001)), DEDUP_DUPLICATE);
    dedup_free(d2);

    /* Loaded after more than the window: nothing is kept, and it still succeeds. */
    atomic_fetch_add(&clk.ms, 60000);
    dedup_t *d3 = mk(&clk, 32000, 8 << 20);
    assert_int_equal(dedup_snapshot_load(d3, dir), DEDUP_OK);
    dedup_stats(d3, &st);
    assert_int_equal(st.entries, 0);
    assert_int_equal(reserve1(d3, key(5001)), DEDUP_NEW);
    dedup_free(d3);
    rmdir_all(dir);
}

static void write_file(const char *path, const void *p, size_t n)
{
    FILE *f = fopen(path, "wb");
    assert_non_null(f);
    assert_int_equal(fwrite(p, 1, n, f), n);
    fclose(f);
}

static uint8_t *read_file(const char *path, size_t *n)
{
    FILE *f = fopen(path, "rb");
    assert_non_null(f);
    fseek(f, 0, SEEK_END);
    *n = (size_t)ftell(f);
    fseek(f, 0, SEEK_SET);
    uint8_t *p = malloc(*n);
    assert_int_equal(fread(p, 1, *n, f), *n);
    fclose(f);
    return p;
}

static void expect_corrupt(const char *dir)
{
    dedup_t *d = mk(NULL, 3600000, 8 << 20);
    assert_int_equal(dedup_snapshot_load(d, dir), DEDUP_E_CORRUPT);
    dedup_stats_t st;
    dedup_stats(d, &st);
    assert_int_equal(st.entries, 0);
    /* Still fully usable. */
    assert_int_equal(seen(d, key(1)), DEDUP_NEW);
    assert_int_equal(seen(d, key(1)), DEDUP_DUPLICATE);
    dedup_free(d);
}

static void test_snapshot_corrupt_truncated_missing(void **state)
{
    (void)state;
    char *dir = tmpdir();
    dedup_t *d = mk(NULL, 3600000, 8 << 20);
    assert_int_equal(dedup_snapshot_load(d, dir), DEDUP_E_NOENT);
    fill(d, 0, 3000);
    assert_int_equal(dedup_snapshot_write(d, dir, NULL), DEDUP_OK);
    dedup_free(d);
    char path[4200];
    snprintf(path, sizeof path, "%s/dedup.snapshot", dir);
    size_t n;
    uint8_t *orig = read_file(path, &n);
    assert_int_equal(n, 24 + 8 + 3000 * 9 + 24);

    uint8_t *bad = malloc(n);
    /* One flipped bit in an entry, in the header, in the trailer. */
    size_t spots[] = {24 + 8 + 1234 * 9 + 3, 5, 13, n - 20, n - 1};
    for (size_t i = 0; i < sizeof spots / sizeof spots[0]; i++) {
        memcpy(bad, orig, n);
        bad[spots[i]] ^= 0x10;
        write_file(path, bad, n);
        expect_corrupt(dir);
    }
    /* Truncated at several points (a torn write), and extended. */
    size_t cuts[] = {0, 7, 24, 40, n / 2, n - 9, n - 1};
    for (size_t i = 0; i < sizeof cuts / sizeof cuts[0]; i++) {
        write_file(path, orig, cuts[i]);
        expect_corrupt(dir);
    }
    memcpy(bad, orig, n);
    write_file(path, bad, n);
    FILE *f = fopen(path, "ab");
    fputs("garbage", f);
    fclose(f);
    expect_corrupt(dir);
    /* A leftover tmp file from a crash is ignored; the intact snapshot loads. */
    write_file(path, orig, n);
    char tmp[4200];
    snprintf(tmp, sizeof tmp, "%s/dedup.snapshot.tmp", dir);
    write_file(tmp, "partial", 7);
    d = mk(NULL, 3600000, 8 << 20);
    assert_int_equal(dedup_snapshot_load(d, dir), DEDUP_OK);
    assert_int_equal(reserve1(d, key(2999)), DEDUP_DUPLICATE);
    dedup_free(d);
    free(bad);
    free(orig);
    rmdir_all(dir);
}

static void test_snapshot_unwritable_dir(void **state)
{
    (void)state;
    dedup_t *d = mk(NULL, 3600000, 1 << 20);
    fill(d, 0, 10);
    base_ioerr_t e;
    assert_int_equal(dedup_snapshot_write(d, "/proc/no/such/dir", &e), DEDUP_E_IO);
    assert_string_equal(e.op, "mkdir");
    assert_int_equal(e.errnum, ENOENT);
    dedup_free(d);
}

/* Regression (issue 12 item 9): a data dir under a regular file fails with ENOTDIR named, and a
 * failed write leaves the earlier snapshot whole (no tmp file, still loads). */
static void test_snapshot_error_names_errno_and_keeps_old(void **state)
{
    (void)state;
    char *dir = tmpdir();
    dedup_t *d = mk(NULL, 3600000, 1 << 20);
    fill(d, 0, 10);
    assert_int_equal(dedup_snapshot_write(d, dir, NULL), DEDUP_OK);
    char file[4200], under[4300], snap[4300];
    snprintf(file, sizeof file, "%s/plain", dir);
    FILE *f = fopen(file, "w");
    assert_non_null(f);
    fclose(f);
    snprintf(under, sizeof under, "%s/data", file);
    base_ioerr_t e;
    assert_int_equal(dedup_snapshot_write(d, under, &e), DEDUP_E_IO);
    assert_int_equal(e.errnum, ENOTDIR);
    /* The snapshot file itself replaced by a directory: rename fails (EISDIR), tmp removed. */
    char sub[4200];
    snprintf(sub, sizeof sub, "%s/d2", dir);
    assert_int_equal(mkdir(sub, 0755), 0);
    snprintf(snap, sizeof snap, "%s/dedup.snapshot", sub);
    assert_int_equal(mkdir(snap, 0755), 0);
    assert_int_equal(dedup_snapshot_write(d, sub, &e), DEDUP_E_IO);
    assert_string_equal(e.op, "rename");
    assert_int_equal(e.errnum, EISDIR);
    char tmp[4400];
    snprintf(tmp, sizeof tmp, "%s.tmp", snap);
    assert_int_equal(access(tmp, F_OK), -1);
    rmdir(snap);
    rmdir(sub);
    unlink(file);
    dedup_t *d2 = mk(NULL, 3600000, 1 << 20);
    assert_int_equal(dedup_snapshot_load(d2, dir), DEDUP_OK);
    assert_int_equal(reserve1(d2, key(3)), DEDUP_DUPLICATE);
    dedup_free(d2);
    dedup_free(d);
    rmdir_all(dir);
}

static void test_worker_final_snapshot(void **state)
{
    (void)state;
    char *dir = tmpdir();
    char sub[4200];
    snprintf(sub, sizeof sub, "%s/data", dir); /* created by the snapshot */
    dedup_t *d = mk(NULL, 3600000, 8 << 20);
    assert_int_equal(dedup_worker_start(d, sub, 1000), DEDUP_OK);
    assert_int_equal(dedup_worker_start(d, sub, 1000), DEDUP_E_INVALID);
    fill(d, 0, 2000);
    /* The periodic snapshot appears within ~2 s. */
    char path[4300];
    snprintf(path, sizeof path, "%s/dedup.snapshot", sub);
    struct stat stt;
    for (int i = 0; i < 40 && stat(path, &stt) != 0; i++)
        usleep(100 * 1000);
    assert_int_equal(stat(path, &stt), 0);
    fill(d, 2000, 1000);
    assert_int_equal(dedup_worker_stop(d, true), DEDUP_OK);
    dedup_free(d);
    d = mk(NULL, 3600000, 8 << 20);
    assert_int_equal(dedup_snapshot_load(d, sub), DEDUP_OK);
    dedup_stats_t st;
    dedup_stats(d, &st);
    assert_int_equal(st.entries, 3000);
    dedup_free(d);
    unlink(path);
    rmdir(sub);
    rmdir_all(dir);
}

static void test_metrics_gauges(void **state)
{
    (void)state;
    metrics_reset();
    dedup_t *d = mk(NULL, 3600000, 1 << 20);
    fill(d, 0, 42);
    assert_int_equal(dedup_register_metrics(d), 0);
    base_buf_t out;
    base_buf_init(&out, 1 << 20);
    assert_int_equal(metrics_render(&out), 0);
    assert_int_equal(base_buf_append(&out, "", 1), 0);
    assert_non_null(strstr(out.data, "sluice_dedup_entries 42"));
    assert_non_null(strstr(out.data, "sluice_dedup_bytes "));
    assert_non_null(strstr(out.data, "sluice_dedup_window_seconds "));
    assert_non_null(strstr(out.data, "sluice_dedup_evictions_total 0"));
    assert_non_null(strstr(out.data, "sluice_dedup_growth_waits_total 0"));
    base_buf_free(&out);
    metrics_reset();
    dedup_free(d);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_invalid_and_strerror),
        cmocka_unit_test(test_window_expiry),
        cmocka_unit_test(test_expired_entries_do_not_resurrect),
        cmocka_unit_test(test_sweep_in_chunks_covers_big_shards),
        cmocka_unit_test(test_eviction_alone_does_not_sweep),
        cmocka_unit_test(test_cap_evicts_oldest_first),
        cmocka_unit_test(test_cap_single_generation),
        cmocka_unit_test(test_bytes_per_entry),
        cmocka_unit_test(test_pending_commit_release),
        cmocka_unit_test(test_concurrent_reserve_one_winner),
        cmocka_unit_test(test_growth_bounded_and_exact),
        cmocka_unit_test(test_growth_keeps_pending),
        cmocka_unit_test(test_worker_grows_ahead),
        cmocka_unit_test(test_memory_cap_holds_while_growing),
        cmocka_unit_test(test_growth_waits_for_headroom),
        cmocka_unit_test(test_growth_without_worker_moves_at_once),
        cmocka_unit_test(test_snapshot_round_trip),
        cmocka_unit_test(test_snapshot_corrupt_truncated_missing),
        cmocka_unit_test(test_snapshot_unwritable_dir),
        cmocka_unit_test(test_snapshot_error_names_errno_and_keeps_old),
        cmocka_unit_test(test_worker_final_snapshot),
        cmocka_unit_test(test_metrics_gauges),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
