/*
 * fuzz_dedup_snapshot.c — libFuzzer target for the dedup snapshot loader (collector/
 * dedup_snapshot.c): the input is the content of "<data_dir>/dedup.snapshot". Checks dedup.h's
 * load contract on any bytes:
 *  - dedup_snapshot_load() returns 0 or DEDUP_E_CORRUPT (never crashes, reads past the file or
 *    leaks), and on DEDUP_E_CORRUPT leaves the table empty;
 *  - a copy whose XXH3-64 trailer is made right (so the fuzzer reaches the header and record
 *    checks behind the checksum) obeys the same;
 *  - whatever loaded writes back and loads again into a fresh table with the same entry count.
 * The clock is fixed, so a seed's generations stay live forever.
 * Seeds: SLUICE_FUZZ_WRITE_SEEDS=DIR fuzz_dedup_snapshot writes snapshots made by
 * dedup_snapshot_write() into DIR (tests/fuzz/corpus/dedup_snapshot holds them) and exits.
 * Build: cmake -DSLUICE_FUZZ=ON with CC=clang (see tests/fuzz/CMakeLists.txt).
 */
#include "dedup.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <xxhash.h>

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define NOW_MS 1800000000000ull /* 2027-01-15, fixed */

static char dir[128], dir2[128], path[192];

static uint64_t fixed_clock(void *ud)
{
    return *(const uint64_t *)ud;
}

static uint64_t now_ms = NOW_MS;

static dedup_t *fresh(void)
{
    dedup_opts_t o = {.window_ms = 24ull * 3600 * 1000,
                      .max_memory = 1u << 20,
                      .clock = fixed_clock,
                      .clock_ud = &now_ms};
    dedup_t *d = NULL;
    if (dedup_new(&o, &d) != 0) abort();
    return d;
}

static void put_file(const char *p, const uint8_t *data, size_t size)
{
    FILE *f = fopen(p, "wb");
    if (f == NULL) abort();
    if (size > 0 && fwrite(data, 1, size, f) != size) abort();
    fclose(f);
}

/* Seeds: an empty table, a few entries, entries across generations, one pending (not written). */
static void write_seeds(const char *out)
{
    static const size_t counts[] = {0, 1, 50, 1000};
    for (size_t k = 0; k < sizeof counts / sizeof counts[0]; k++) {
        now_ms = NOW_MS - 3 * 3600 * 1000;
        dedup_t *d = fresh();
        uint64_t seed = dedup_seed("src", 3);
        for (size_t i = 0; i < counts[k]; i++) {
            char id[32];
            int n = snprintf(id, sizeof id, "m-%zu", i);
            uint64_t fp = dedup_fp(seed, id, (size_t)n);
            uint8_t v;
            dedup_reserve_batch(d, &fp, 1, &v);
            if (i % 7 != 6) dedup_commit(d, &fp, 1); /* every 7th stays PENDING */
            if (i % 100 == 99) {
                now_ms += 3600 * 1000; /* new generations */
                dedup_tick(d);
            }
        }
        char sub[256];
        snprintf(sub, sizeof sub, "%s/s%zu", out, k);
        if (dedup_snapshot_write(d, sub, NULL) != 0) abort();
        char from[300], to[300];
        snprintf(from, sizeof from, "%s/dedup.snapshot", sub);
        snprintf(to, sizeof to, "%s/seed-%zu-entries", out, counts[k]);
        if (rename(from, to) != 0 || rmdir(sub) != 0) abort();
        dedup_free(d);
    }
    now_ms = NOW_MS;
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    const char *out = getenv("SLUICE_FUZZ_WRITE_SEEDS");
    if (out != NULL) {
        write_seeds(out);
        exit(0);
    }
    snprintf(dir, sizeof dir, "/tmp/sluice-fuzz-dedup-%d", (int)getpid());
    snprintf(dir2, sizeof dir2, "%s/again", dir);
    snprintf(path, sizeof path, "%s/dedup.snapshot", dir);
    return 0;
}

/* A broken contract: say which, then abort (the fuzzer keeps the input). */
#define FAIL(...)                                                                                  \
    do {                                                                                           \
        fprintf(stderr, "contract broken: " __VA_ARGS__);                                          \
        fputc('\n', stderr);                                                                       \
        abort();                                                                                   \
    } while (0)

static void load_checked(const uint8_t *data, size_t size)
{
    put_file(path, data, size);
    dedup_t *d = fresh();
    int rc = dedup_snapshot_load(d, dir);
    dedup_stats_t st;
    dedup_stats(d, &st);
    if (rc != 0) {
        if (rc != DEDUP_E_CORRUPT) FAIL("load returned %d", rc); /* the file is readable */
        if (st.entries != 0) FAIL("corrupt, yet %llu entries kept", (unsigned long long)st.entries);
        dedup_free(d);
        return;
    }
    if (st.pending != 0) FAIL("%llu PENDING entries loaded", (unsigned long long)st.pending);
    /* Round trip: what loaded writes and loads again with the same entry count. */
    if (dedup_snapshot_write(d, dir2, NULL) != 0) FAIL("write back failed");
    dedup_t *d2 = fresh();
    int rc2 = dedup_snapshot_load(d2, dir2);
    if (rc2 != 0) FAIL("reload of the written snapshot returned %d", rc2);
    dedup_stats_t st2;
    dedup_stats(d2, &st2);
    if (st2.entries != st.entries)
        FAIL("round trip: %llu entries, reloaded %llu", (unsigned long long)st.entries,
             (unsigned long long)st2.entries);
    dedup_free(d2);
    dedup_free(d);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    (void)mkdir(dir, 0700); /* once; EEXIST afterwards */
    load_checked(data, size);
    if (size >= 8) {
        uint8_t *c = malloc(size);
        if (c == NULL) abort();
        memcpy(c, data, size);
        uint64_t sum = XXH3_64bits(c, size - 8);
        memcpy(c + size - 8, &sum, 8);
        load_checked(c, size);
        free(c);
    }
    return 0;
}
