/*
 * bench_dedup.c — microbenchmark of the dedup structure on one thread (issue 5: lookup+insert
 * >= 20 M ops/s at 10 M entries). Not a ctest: run build-DIR/tests/collector/bench_dedup [N].
 *
 * Fills the table with N (default 10 M) remembered keys, then times, each over N operations:
 *   insert   dedup_reserve_batch of new keys (lookup + insert as PENDING), batches of 100, as
 *            ingest does per request; the table grows past 2 N during it
 *   dup      dedup_reserve_batch of keys already remembered (lookup only)
 *   mixed    half new, half remembered
 *   single   dedup_reserve_batch with one key per call (no prefetch overlap)
 *   commit   dedup_commit of the keys reserved by "insert"
 * and prints bytes per entry after the fill ("bench_dedup N steady" runs the steady phase only).
 * "worst" is the most CPU time one batch took in that phase: a table growth that rehashed a
 * whole shard inside one call showed up there as milliseconds.
 * Fingerprints are precomputed (hashing is timed separately as "xxh3").
 */
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "dedup.h"

/* Rates are per second of this thread's CPU time (CLOCK_THREAD_CPUTIME_ID): "on one core",
 * and not inflated by other processes sharing the machine (memory stalls still count). Run with
 * BENCH_WALL=1 for wall-clock rates. */
static double now_s(void)
{
    static int wall = -1;
    if (wall < 0) wall = getenv("BENCH_WALL") != NULL;
    struct timespec ts;
    clock_gettime(wall ? CLOCK_MONOTONIC : CLOCK_THREAD_CPUTIME_ID, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static uint64_t mix(uint64_t x)
{
    x ^= x >> 33;
    x *= 0xff51afd7ed558ccdull;
    x ^= x >> 33;
    x *= 0xc4ceb9fe1a85ec53ull;
    x ^= x >> 33;
    return x;
}

#define BATCH 100

static double worst_s; /* the slowest batch of the last run() */

static double run(dedup_t *d, const uint64_t *fps, size_t n, size_t batch, uint8_t *v,
                  uint64_t *news)
{
    double t0 = now_s(), tb = t0;
    worst_s = 0;
    for (size_t i = 0; i < n; i += batch) {
        size_t m = n - i < batch ? n - i : batch;
        dedup_reserve_batch(d, fps + i, m, v);
        for (size_t j = 0; j < m; j++)
            *news += v[j] == DEDUP_NEW;
        double te = now_s();
        if (te - tb > worst_s) worst_s = te - tb;
        tb = te;
    }
    return now_s() - t0;
}

static _Atomic uint64_t fake_ms = 1700000000000ull;

static uint64_t fake_now(void *ud)
{
    (void)ud;
    return atomic_load(&fake_ms);
}

/* Steady state: a window of 32 generations (fake clock, 1 s each) holding about n entries; n new
 * keys arrive n/32 per generation while the oldest generations expire, so the tables keep their
 * size (no growth) and dead slots are reused: the figure a collector sees after its first window.
 */
static void steady(size_t n, uint64_t *keys)
{
    dedup_opts_t o = {.window_ms = 32000, .max_memory = 1024ull << 20, .clock = fake_now};
    dedup_t *d = NULL;
    if (dedup_new(&o, &d) != DEDUP_OK) exit(1);
    uint8_t v[BATCH];
    size_t per = n / 32;
    uint64_t news = 0;
    for (size_t g = 0; g < 32; g++) {
        for (size_t i = 0; i < per; i++)
            keys[i] = mix(g * per + i + 0xabcdefull);
        run(d, keys, per, BATCH, v, &news);
        dedup_commit(d, keys, per);
        atomic_fetch_add(&fake_ms, 1000);
        dedup_tick(d);
    }
    dedup_stats_t st;
    dedup_stats(d, &st);
    printf("steady    before: %llu entries, %.2f bytes/entry\n", (unsigned long long)st.entries,
           (double)st.bytes / (double)st.entries);
    double t_res = 0, t_com = 0;
    news = 0;
    for (size_t g = 32; g < 64; g++) {
        for (size_t i = 0; i < per; i++)
            keys[i] = mix(g * per + i + 0xabcdefull);
        t_res += run(d, keys, per, BATCH, v, &news);
        double t0 = now_s();
        dedup_commit(d, keys, per);
        t_com += now_s() - t0;
        atomic_fetch_add(&fake_ms, 1000);
        dedup_tick(d);
    }
    dedup_stats(d, &st);
    printf("steady    insert %.2f M ops/s (new %llu of %zu), commit %.2f M ops/s; after: %llu "
           "entries, %.2f bytes/entry\n",
           (double)(32 * per) / t_res / 1e6, (unsigned long long)news, 32 * per,
           (double)(32 * per) / t_com / 1e6, (unsigned long long)st.entries,
           (double)st.bytes / (double)st.entries);
    dedup_free(d);
}

int main(int argc, char **argv)
{
    size_t n = argc > 1 ? (size_t)strtoull(argv[1], NULL, 10) : 10000000;
    if (n < 1000) n = 1000;
    if (argc > 2 && strcmp(argv[2], "steady") == 0) {
        uint64_t *keys = malloc(n * sizeof *keys);
        if (keys == NULL) return 1;
        steady(n, keys);
        free(keys);
        return 0;
    }
    dedup_opts_t o = {.window_ms = 3600000, .max_memory = 1024ull << 20};
    dedup_t *d = NULL;
    if (dedup_new(&o, &d) != DEDUP_OK) return 1;
    uint64_t *a = malloc(n * sizeof *a), *b = malloc(n * sizeof *b), *m = malloc(n * sizeof *m);
    uint8_t v[BATCH];
    if (a == NULL || b == NULL || m == NULL) return 1;

    uint64_t seed = dedup_seed("web", 3);
    double t0 = now_s();
    for (size_t i = 0; i < n; i++) {
        char id[40];
        int len = snprintf(id, sizeof id, "%016llx-4a1b-9c2d-%012llx", (unsigned long long)mix(i),
                           (unsigned long long)i);
        a[i] = dedup_fp(seed, id, (size_t)len);
    }
    double t_hash = now_s() - t0;
    for (size_t i = 0; i < n; i++)
        b[i] = mix(i + 0x9e3779b97f4a7c15ull * 7) ^ 0x5555;

    uint64_t news = 0;
    double t_fill = run(d, a, n, BATCH, v, &news);
    dedup_commit(d, a, n);
    dedup_stats_t st;
    dedup_stats(d, &st);
    printf("fill      %zu keys: %.2f M ops/s (new %llu, worst batch %.0f us); %.2f bytes/entry at "
           "%llu entries (%.1f MiB, load %.2f)\n",
           n, (double)n / t_fill / 1e6, (unsigned long long)news, worst_s * 1e6,
           (double)st.bytes / (double)st.entries, (unsigned long long)st.entries,
           (double)st.bytes / 1048576.0, (double)st.entries / (double)st.table_slots);
    printf("xxh3      %.2f M keys/s (36-byte messageIds)\n", (double)n / t_hash / 1e6);

    news = 0;
    double t = run(d, b, n, BATCH, v, &news);
    printf("insert    %.2f M ops/s at %zu..%zu entries (new %llu, worst batch %.0f us)\n",
           (double)n / t / 1e6, n, 2 * n, (unsigned long long)news, worst_s * 1e6);
    t0 = now_s();
    dedup_commit(d, b, n);
    printf("commit    %.2f M ops/s\n", (double)n / (now_s() - t0) / 1e6);

    news = 0;
    t = run(d, a, n, BATCH, v, &news);
    printf("dup       %.2f M ops/s (new %llu, expected 0)\n", (double)n / t / 1e6,
           (unsigned long long)news);

    for (size_t i = 0; i < n; i++)
        m[i] = (i & 1) ? a[(i * 7919) % n] : mix(i + 0x1234567ull) ^ 0xabcdef;
    news = 0;
    t = run(d, m, n, BATCH, v, &news);
    printf("mixed     %.2f M ops/s (new %llu)\n", (double)n / t / 1e6, (unsigned long long)news);

    for (size_t i = 0; i < n; i++)
        m[i] = mix(i + 0x77777777ull) ^ 0x1111;
    news = 0;
    t = run(d, m, n, 1, v, &news);
    printf("single    %.2f M ops/s, one key per call (new %llu)\n", (double)n / t / 1e6,
           (unsigned long long)news);

    steady(n, m);
    dedup_stats(d, &st);
    printf("end       %.2f bytes/entry at %llu entries (%.1f MiB)\n",
           (double)st.bytes / (double)st.entries, (unsigned long long)st.entries,
           (double)st.bytes / 1048576.0);
    free(a);
    free(b);
    free(m);
    dedup_free(d);
    return 0;
}
