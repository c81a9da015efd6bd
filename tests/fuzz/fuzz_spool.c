/*
 * fuzz_spool.c — libFuzzer target for spool recovery (collector/spool.c): the input is the
 * content of a segment file after a crash. Checks spool.h's recovery contract on any bytes:
 *  - spool_scan() (on the input, and on a copy whose record CRCs are made right so the body
 *    checks behind them are reached too) never reads past the input, every record it reports lies
 * inside the good prefix with fields inside the record, and a record it accepts re-encodes to the
 * same bytes;
 *  - spool_open() on a data dir holding the input as its one segment cuts the file to exactly
 *    the good prefix (or removes it when nothing is usable) and reports exactly the good
 *    records as pending; nothing leaks (ASan).
 * Build: cmake -DSLUICE_FUZZ=ON with CC=clang (see tests/fuzz/CMakeLists.txt).
 */
#include "log.h"
#include "metrics.h"
#include "spool.h"

#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <zlib.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static char dir[128], seg[192];

typedef struct check {
    const uint8_t *base;
    size_t size;
    base_buf_t re;
} check_t;

static bool check_cb(void *ud, uint64_t offset, const spool_record_t *rec)
{
    check_t *c = ud;
    const char *lo = (const char *)c->base + offset, *hi = (const char *)c->base + c->size;
    if (rec->key_len > 0 && (rec->key < lo || rec->key + rec->key_len > hi)) abort();
    if (rec->value_len > 0 && (rec->value < lo || rec->value + rec->value_len > hi)) abort();
    if (rec->n_headers > SPOOL_MAX_HEADERS) abort();
    kafka_header_t h[SPOOL_MAX_HEADERS];
    char names[SPOOL_MAX_HEADERS][256];
    for (size_t i = 0; i < rec->n_headers; i++) {
        memcpy(names[i], rec->headers[i].name, rec->headers[i].name_len);
        names[i][rec->headers[i].name_len] = '\0';
        h[i] = (kafka_header_t){names[i], rec->headers[i].value, rec->headers[i].len};
    }
    /* Accepted means canonical: encoding the fields again gives the same bytes. */
    base_buf_reset(&c->re);
    if (spool_encode(&c->re, rec->topic, rec->key, rec->key_len, rec->value, rec->value_len, h,
                     rec->n_headers, rec->spooled_at_ms) != SPOOL_OK)
        abort();
    if (memcmp(c->re.data, c->base + offset, c->re.len) != 0) abort();
    return true;
}

/* The input with every record's CRC made right (lengths as they are), so the fuzzer also
 * reaches the body checks behind the CRC. Returns a malloc'd copy. */
static uint8_t *fix_crcs(const uint8_t *data, size_t size)
{
    uint8_t *c = malloc(size ? size : 1);
    if (c == NULL) abort();
    memcpy(c, data, size);
    for (size_t off = SPOOL_SEG_HEADER; off + SPOOL_RECORD_HEAD <= size;) {
        uint32_t len = (uint32_t)c[off] | (uint32_t)c[off + 1] << 8 | (uint32_t)c[off + 2] << 16 |
                       (uint32_t)c[off + 3] << 24;
        if (len > size - off - SPOOL_RECORD_HEAD) break;
        uint32_t crc = (uint32_t)crc32(0L, c + off + SPOOL_RECORD_HEAD, (uInt)len);
        for (int i = 0; i < 4; i++)
            c[off + 4 + (size_t)i] = (uint8_t)(crc >> (8 * i));
        off += SPOOL_RECORD_HEAD + len;
    }
    return c;
}

static void scan_checked(const uint8_t *data, size_t size, size_t *n, size_t *valid)
{
    check_t c = {data, size, {0}};
    base_buf_init(&c.re, SPOOL_RECORD_MAX + SPOOL_RECORD_HEAD);
    *n = spool_scan(data, size, valid, check_cb, &c);
    base_buf_free(&c.re);
    if (*valid > size || (*n > 0 && *valid < SPOOL_SEG_HEADER)) abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (dir[0] == '\0') {
        log_set_level(LOG_OFF);
        snprintf(dir, sizeof dir, "/tmp/sluice-fuzz-spool-%d", getpid());
        mkdir(dir, 0755);
        char sdir[160];
        snprintf(sdir, sizeof sdir, "%s/spool", dir);
        mkdir(sdir, 0755);
        snprintf(seg, sizeof seg, "%s/0000000000000001.seg", sdir);
    }
    size_t n = 0, valid = 0;
    uint8_t *fixed = fix_crcs(data, size);
    scan_checked(fixed, size, &n, &valid);
    free(fixed);
    scan_checked(data, size, &n, &valid);

    int fd = open(seg, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (fd < 0 || (size > 0 && write(fd, data, size) != (ssize_t)size)) abort();
    close(fd);
    spool_opts_t o = {.data_dir = dir, .max_bytes = 1u << 30, .segment_bytes = 1u << 20};
    spool_t *sp = NULL;
    char err[256];
    if (spool_open(&o, &sp, err, sizeof err) != SPOOL_OK) abort();
    spool_stats_t st;
    spool_stats(sp, &st);
    struct stat sb;
    bool exists = stat(seg, &sb) == 0;
    if (n == 0 ? exists : (!exists || (size_t)sb.st_size != valid)) abort();
    if (st.records != n || st.bytes != (n > 0 ? valid : 0)) abort();
    spool_free(sp);
    metrics_reset(); /* spool_open registered its gauges */
    unlink(seg);
    char cur[160];
    snprintf(cur, sizeof cur, "%s/spool/cursor", dir);
    unlink(cur);
    return 0;
}
