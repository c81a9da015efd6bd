/*
 * fuzz_stream_dedup_restore.c — libFuzzer target for sluice-stream's dedup restore
 * (collector/stream/stream_dedup.c): the input is a changelog partition as a list of records,
 * each [key length u8][value length u16 LE][key][value] (a value length of 0 is a tombstone).
 * Checks stream_dedup.h's restore contract on any bytes:
 *  - stream_dedup_restore() returns 0, STREAM_DEDUP_E_CORRUPT or STREAM_DEDUP_E_LIMIT, never
 *    crashes, reads out of bounds or leaks, and counts every refusal;
 *  - each record is also fed with its checksum made right (so the fuzzer reaches what lies
 *    behind it: generations, sequence numbers, tombstones) under the same contract;
 *  - afterwards the store flushes (every record within the size bound) and what it wrote
 *    restores into a fresh store without an error.
 * Seeds: SLUICE_FUZZ_WRITE_SEEDS=DIR fuzz_stream_dedup_restore writes logs made by
 * stream_dedup_changelog() into DIR (tests/fuzz/corpus/stream_dedup_restore) and exits.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "stream/stream_dedup.c"

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define NOW_MS  1800000000000ull /* 2027-01-15, fixed */
#define MAX_REC (STREAM_DEDUP_HDR_LEN + 8 * 64)

static uint64_t now_ms = NOW_MS;
static uint64_t fixed_clock(void *ud)
{
    return *(const uint64_t *)ud;
}

static stream_dedup_t *fresh(void)
{
    stream_dedup_opts_t o = {.window_ms = 3600000,
                             .max_bytes = 1u << 20,
                             .max_record_bytes = MAX_REC,
                             .clock = fixed_clock,
                             .clock_ud = &now_ms};
    stream_dedup_t *d = NULL;
    if (stream_dedup_new_opts(&o, &d) != 0) abort();
    return d;
}

typedef struct out {
    unsigned char *buf;
    size_t len, cap;
} out_t;

/* Appends a record in the input format. */
static int put(void *ud, const void *key, size_t klen, const void *val, size_t vlen)
{
    out_t *o = ud;
    if (klen > 255 || vlen > 65535 || vlen > MAX_REC) abort();
    size_t need = o->len + 3 + klen + vlen;
    if (need > o->cap) {
        o->cap = need * 2;
        o->buf = realloc(o->buf, o->cap);
        if (o->buf == NULL) abort();
    }
    unsigned char *p = o->buf + o->len;
    p[0] = (unsigned char)klen;
    p[1] = (unsigned char)vlen;
    p[2] = (unsigned char)(vlen >> 8);
    memcpy(p + 3, key, klen);
    if (vlen) memcpy(p + 3 + klen, val, vlen);
    o->len = need;
    return 0;
}

static void check_rc(int rc)
{
    if (rc != 0 && rc != STREAM_DEDUP_E_CORRUPT && rc != STREAM_DEDUP_E_LIMIT) abort();
}

/* Feeds every record of data to d; returns the refusals. */
static uint64_t feed(stream_dedup_t *d, const uint8_t *data, size_t size, bool fix, uint64_t *n)
{
    uint64_t bad = 0;
    size_t off = 0;
    unsigned char *tmp = malloc(65536);
    if (tmp == NULL) abort();
    while (off + 3 <= size) {
        size_t klen = data[off], vlen = data[off + 1] | (size_t)data[off + 2] << 8;
        off += 3;
        if (klen + vlen > size - off) break;
        const uint8_t *k = data + off, *v = data + off + klen;
        off += klen + vlen;
        memcpy(tmp, v, vlen);
        if (fix && klen == STREAM_DEDUP_KEY_LEN && vlen >= STREAM_DEDUP_HDR_LEN &&
            (vlen - STREAM_DEDUP_HDR_LEN) % 8 == 0) {
            put_le32(tmp + 4, (uint32_t)((vlen - STREAM_DEDUP_HDR_LEN) / 8));
            put_le64(tmp + 8,
                     rec_sum(k, tmp + STREAM_DEDUP_HDR_LEN, (vlen - STREAM_DEDUP_HDR_LEN) / 8));
        }
        int rc = stream_dedup_restore(d, k, klen, vlen ? tmp : NULL, vlen);
        check_rc(rc);
        bad += rc != 0;
        (*n)++;
    }
    free(tmp);
    return bad;
}

static void write_seeds(const char *dir)
{
    for (int s = 0; s < 3; s++) {
        now_ms = NOW_MS - 3600000ull * (s == 2);
        stream_dedup_t *d = fresh();
        out_t o = {0};
        char mid[32];
        for (int step = 0; step < 1 + s * 3; step++) {
            for (int i = 0; i < 20 + 60 * s; i++) {
                int n = snprintf(mid, sizeof mid, "m%d-%d", step, i);
                (void)stream_dedup_seen_first(d, "web", 3, mid, (size_t)n, (int64_t)now_ms);
            }
            if (stream_dedup_changelog(d, put, &o) != 0) abort();
            now_ms += 3600000 / 8;
        }
        char path[512];
        snprintf(path, sizeof path, "%s/seed-%d", dir, s);
        FILE *f = fopen(path, "wb");
        if (f == NULL || fwrite(o.buf, 1, o.len, f) != o.len) abort();
        fclose(f);
        free(o.buf);
        stream_dedup_free(d);
    }
    now_ms = NOW_MS;
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    const char *seeds = getenv("SLUICE_FUZZ_WRITE_SEEDS");
    if (seeds != NULL) {
        write_seeds(seeds);
        exit(0);
    }
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    for (int fix = 0; fix < 2; fix++) {
        stream_dedup_t *d = fresh();
        uint64_t n = 0, bad = feed(d, data, size, fix, &n);
        stream_dedup_stats_t st;
        stream_dedup_stats(d, &st);
        if (st.restore_errors != bad) abort();
        out_t o = {0};
        if (stream_dedup_changelog(d, put, &o) != 0) abort();
        stream_dedup_t *r = fresh();
        uint64_t m = 0;
        if (feed(r, o.buf, o.len, false, &m) != 0) abort();
        free(o.buf);
        stream_dedup_free(r);
        stream_dedup_free(d);
    }
    return 0;
}
