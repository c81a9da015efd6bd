/*
 * spool.c — the local spool (contract in spool.h).
 *
 * Threads and what they own:
 *  - any thread (the loops): spool_encode (pure), spool_submit (lock-free push onto `queue`,
 *    atomics, a wake-up), spool_busy / spool_has_room / spool_stats (atomics only).
 *  - the writer (a base_worker): takes every queued batch, appends them to the active segment,
 *    fdatasyncs once for all of them (group commit), publishes the new committed size in the
 *    segment table and reports each batch's group. It alone creates segments and writes.
 *  - the drain (a base_worker): reads committed records from the cursor, produces a window of
 *    them, waits for their reports, retries the failed ones, advances and saves the cursor and
 *    deletes fully delivered segments. It alone reads segments and moves the cursor.
 *  - `mu` protects the segment table (segs, nsegs, cursor, next_seq); it is held for
 *    bookkeeping only, never across I/O, and never taken by a loop thread.
 *
 * Accounting: `used` = bytes of live segments + bytes queued for the writer (the cap);
 * `pending` = records submitted and not yet delivered (spool_busy). A failed write gives both
 * back; a drained segment's deletion gives its bytes back; a delivered window its records.
 */
#include "spool.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <zlib.h>

#include "log.h"
#include "metrics.h"
#include "spool_internal.h"

static const char spool_magic[8] = {'S', 'L', 'U', 'I', 'C', 'E', 'S', 'P'};
#define SPOOL_VERSION 1u
/* Worker periods: how late the writer notices a drained active segment, how late the drain
 * notices Kafka is back. */
#define SPOOL_WRITER_PERIOD_MS 100
#define SPOOL_DRAIN_PERIOD_MS  100
/* Pause between attempts while a window's failed records wait for Kafka. */
#define SPOOL_RETRY_MS 200
/* At stop, how long the drain waits for a window's outstanding reports. */
#define SPOOL_STOP_WAIT_MS 1000

const char *spool_strerror(int err)
{
    switch (err) {
#define SPOOL_X_STR(name, val, msg)                                                                \
    case val:                                                                                      \
        return msg;
        SPOOL_ERRORS(SPOOL_X_STR)
#undef SPOOL_X_STR
    }
    return "unknown spool error";
}

/* ---- record format --------------------------------------------------------------------- */

static void put_u32(unsigned char *p, uint32_t v)
{
    for (int i = 0; i < 4; i++)
        p[i] = (unsigned char)(v >> (8 * i));
}

static uint32_t get_u32(const unsigned char *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static void put_u64(unsigned char *p, uint64_t v)
{
    for (int i = 0; i < 8; i++)
        p[i] = (unsigned char)(v >> (8 * i));
}

static uint64_t get_u64(const unsigned char *p)
{
    return (uint64_t)get_u32(p) | (uint64_t)get_u32(p + 4) << 32;
}

int spool_encode(base_buf_t *out, int topic, const void *key, size_t key_len, const void *value,
                 size_t value_len, const kafka_header_t *headers, size_t n_headers,
                 int64_t spooled_at_ms)
{
    if (n_headers > SPOOL_MAX_HEADERS || key_len > UINT32_MAX || value_len > UINT32_MAX)
        return SPOOL_E_TOO_LARGE;
    uint64_t body = SPOOL_BODY_FIXED + (uint64_t)key_len + value_len;
    for (size_t i = 0; i < n_headers; i++) {
        size_t nl = strlen(headers[i].name);
        if (nl > UINT8_MAX || headers[i].len > UINT32_MAX) return SPOOL_E_TOO_LARGE;
        body += 5 + nl + headers[i].len;
    }
    if (body > SPOOL_RECORD_MAX) return SPOOL_E_TOO_LARGE;
    size_t total = SPOOL_RECORD_HEAD + (size_t)body;
    int rc = base_buf_reserve(out, total);
    if (rc != BASE_OK) return rc == BASE_E_TOO_LARGE ? SPOOL_E_TOO_LARGE : SPOOL_E_NOMEM;

    unsigned char *rec = (unsigned char *)out->data + out->len;
    unsigned char *p = rec + SPOOL_RECORD_HEAD;
    put_u64(p, (uint64_t)spooled_at_ms);
    p[8] = (unsigned char)topic;
    p[9] = (unsigned char)n_headers;
    p[10] = p[11] = 0;
    put_u32(p + 12, (uint32_t)key_len);
    put_u32(p + 16, (uint32_t)value_len);
    put_u32(p + 20, 0);
    p += SPOOL_BODY_FIXED;
    if (key_len > 0) memcpy(p, key, key_len);
    p += key_len;
    if (value_len > 0) memcpy(p, value, value_len);
    p += value_len;
    for (size_t i = 0; i < n_headers; i++) {
        size_t nl = strlen(headers[i].name);
        p[0] = (unsigned char)nl;
        put_u32(p + 1, (uint32_t)headers[i].len);
        memcpy(p + 5, headers[i].name, nl);
        if (headers[i].len > 0) memcpy(p + 5 + nl, headers[i].value, headers[i].len);
        p += 5 + nl + headers[i].len;
    }
    put_u32(rec, (uint32_t)body);
    put_u32(rec + 4, (uint32_t)crc32(0L, rec + SPOOL_RECORD_HEAD, (uInt)body));
    out->len += total;
    return SPOOL_OK;
}

long spool_record_parse(const void *data, size_t n, spool_record_t *rec)
{
    const unsigned char *p = data;
    if (n < SPOOL_RECORD_HEAD) return 0;
    uint32_t len = get_u32(p);
    if (len < SPOOL_BODY_FIXED || len > SPOOL_RECORD_MAX) return SPOOL_E_CORRUPT;
    if (n - SPOOL_RECORD_HEAD < len) return 0;
    const unsigned char *b = p + SPOOL_RECORD_HEAD;
    if ((uint32_t)crc32(0L, b, (uInt)len) != get_u32(p + 4)) return SPOOL_E_CORRUPT;

    memset(rec, 0, sizeof *rec);
    rec->spooled_at_ms = (int64_t)get_u64(b);
    rec->topic = b[8];
    rec->n_headers = b[9];
    uint64_t key_len = get_u32(b + 12), value_len = get_u32(b + 16);
    if (rec->topic >= KAFKA_TOPIC_COUNT || rec->n_headers > SPOOL_MAX_HEADERS || b[10] || b[11] ||
        get_u32(b + 20) != 0)
        return SPOOL_E_CORRUPT;
    uint64_t off = SPOOL_BODY_FIXED;
    if (key_len + value_len > len - off) return SPOOL_E_CORRUPT;
    rec->key = (const char *)b + off;
    rec->key_len = (size_t)key_len;
    off += key_len;
    rec->value = (const char *)b + off;
    rec->value_len = (size_t)value_len;
    off += value_len;
    for (size_t i = 0; i < rec->n_headers; i++) {
        if (len - off < 5) return SPOOL_E_CORRUPT;
        uint64_t nl = b[off], vl = get_u32(b + off + 1);
        if (nl == 0 || nl + vl > len - off - 5) return SPOOL_E_CORRUPT;
        if (memchr(b + off + 5, '\0', (size_t)nl) != NULL) return SPOOL_E_CORRUPT;
        rec->headers[i].name = (const char *)b + off + 5;
        rec->headers[i].name_len = (size_t)nl;
        rec->headers[i].value = b + off + 5 + nl;
        rec->headers[i].len = (size_t)vl;
        off += 5 + nl + vl;
    }
    if (off != len) return SPOOL_E_CORRUPT;
    return (long)(SPOOL_RECORD_HEAD + len);
}

size_t spool_scan(const void *data, size_t n, size_t *valid_len, spool_scan_cb cb, void *ud)
{
    const unsigned char *p = data;
    *valid_len = 0;
    if (n < SPOOL_SEG_HEADER || memcmp(p, spool_magic, sizeof spool_magic) != 0 ||
        get_u32(p + 8) != SPOOL_VERSION)
        return 0;
    size_t off = SPOOL_SEG_HEADER, count = 0;
    for (;;) {
        spool_record_t rec;
        long r = spool_record_parse(p + off, n - off, &rec);
        if (r <= 0) break;
        if (cb != NULL && !cb(ud, off, &rec)) break;
        off += (size_t)r;
        count++;
    }
    *valid_len = off;
    return count;
}

/* ---- state ----------------------------------------------------------------------------- */

typedef struct seg {
    uint64_t seq;
    uint64_t size;    /* committed (synced) bytes: the drain reads no further */
    uint64_t records; /* committed records */
    uint64_t done;    /* of them delivered (or dropped as unreadable) */
} seg_t;

/* One drained record in flight: its own group, so each report is known. */
typedef struct slot {
    kafka_group_t g;
    struct spool *sp;
    uint64_t off; /* offset of the record in the window buffer */
    uint32_t len;
    int state; /* 0 not produced/failed, 1 in flight, 2 delivered */
} slot_t;

struct spool {
    spool_opts_t o;
    char dir[4096];

    pthread_mutex_t mu; /* the segment table and the cursor */
    seg_t *segs;        /* oldest first; the writer's active segment is the last */
    size_t nsegs, capsegs;
    uint64_t cur_seq, cur_off; /* drain cursor: next record to deliver */
    uint64_t next_seq;

    atomic_uint_fast64_t used;
    atomic_uint_fast64_t pending;
    atomic_int_fast64_t oldest_ms; /* spooled_at of the oldest undelivered record, 0: none */
    atomic_bool stopped;           /* spool_stop: submit refuses */
    atomic_bool draining_stopped;  /* spool_stop_drain: the drain produces no more */
    base_stack_t queue;
    base_worker_t *writer, *drain;

    /* Writer only. */
    int wfd;
    uint64_t wseq, wsize;

    /* Drain only (slots also from the poll thread, under dmu). */
    int rfd;
    uint64_t rseq;
    base_buf_t window;
    slot_t slots[SPOOL_WINDOW_RECORDS];
    pthread_mutex_t dmu;
    pthread_cond_t dcv;
    unsigned outstanding; /* under dmu */
};

static void seg_path(const spool_t *sp, uint64_t seq, char *out, size_t outlen)
{
    snprintf(out, outlen, "%s/%016" PRIx64 ".seg", sp->dir, seq);
}

/* mu held. */
static int segs_push(spool_t *sp, uint64_t seq, uint64_t size)
{
    if (sp->nsegs == sp->capsegs) {
        size_t nc = sp->capsegs ? sp->capsegs * 2 : 16;
        seg_t *ns = realloc(sp->segs, nc * sizeof *ns);
        if (ns == NULL) return SPOOL_E_NOMEM;
        sp->segs = ns;
        sp->capsegs = nc;
    }
    sp->segs[sp->nsegs++] = (seg_t){seq, size, 0, 0};
    return SPOOL_OK;
}

/* mu held: drops segs[0] from the table (the caller unlinks the file). */
static void segs_shift(spool_t *sp)
{
    memmove(sp->segs, sp->segs + 1, (sp->nsegs - 1) * sizeof *sp->segs);
    sp->nsegs--;
}

static void sub_used(spool_t *sp, uint64_t n)
{
    atomic_fetch_sub(&sp->used, (uint_fast64_t)n);
}

/* ---- gauges ---------------------------------------------------------------------------- */

void spool_stats(spool_t *sp, spool_stats_t *st)
{
    st->bytes = atomic_load(&sp->used);
    st->records = atomic_load(&sp->pending);
    int64_t oldest = atomic_load(&sp->oldest_ms);
    int64_t now = base_wall_ms();
    st->oldest_age_s = st->records > 0 && oldest > 0 && now > oldest ? (now - oldest) / 1000.0 : 0;
    st->max_bytes = sp->o.max_bytes;
}

static double gauge_bytes(void *ud)
{
    return (double)atomic_load(&((spool_t *)ud)->used);
}

static double gauge_records(void *ud)
{
    return (double)atomic_load(&((spool_t *)ud)->pending);
}

static double gauge_oldest(void *ud)
{
    spool_stats_t st;
    spool_stats(ud, &st);
    return st.oldest_age_s;
}

bool spool_busy(const spool_t *sp)
{
    return atomic_load(&((spool_t *)sp)->pending) > 0;
}

/* Free bytes below which the spool counts as full for /readyz and fail fast: with less, most
 * requests would be refused by spool_submit anyway (measured: /readyz said ready with 2 KiB of
 * 1 MiB left while every request got 503). An eighth of the cap, at most SPOOL_ROOM_RESERVE. */
#define SPOOL_ROOM_RESERVE ((uint64_t)1 << 20)

bool spool_has_room(const spool_t *sp)
{
    uint64_t reserve = sp->o.max_bytes / 8;
    if (reserve > SPOOL_ROOM_RESERVE) reserve = SPOOL_ROOM_RESERVE;
    return !atomic_load(&((spool_t *)sp)->stopped) &&
           atomic_load(&((spool_t *)sp)->used) + reserve < sp->o.max_bytes;
}

/* ---- recovery -------------------------------------------------------------------------- */

typedef struct scan_first {
    uint64_t cursor_off; /* wanted cursor offset (0: none) */
    bool found;
    uint64_t before; /* records before the cursor */
    int64_t ts;      /* spooled_at of the record at the cursor (or the first one) */
    uint64_t idx;
} scan_first_t;

static bool scan_first_cb(void *ud, uint64_t offset, const spool_record_t *rec)
{
    scan_first_t *s = ud;
    if (s->idx == 0) s->ts = rec->spooled_at_ms;
    if (s->cursor_off != 0 && offset == s->cursor_off) {
        s->found = true;
        s->before = s->idx;
        s->ts = rec->spooled_at_ms;
    }
    s->idx++;
    return true;
}

/* Scans one segment file; truncates a torn or corrupt tail (or removes a file with nothing
 * usable). Returns the number of good records (0: the file is gone) and *size the good length;
 * fs (may be NULL) is filled for the cursor. -1 on an I/O error (logged). */
static long recover_segment(spool_t *sp, uint64_t seq, uint64_t *size, scan_first_t *fs)
{
    char path[4200];
    seg_path(sp, seq, path, sizeof path);
    int fd = open(path, O_RDWR | O_CLOEXEC);
    struct stat st;
    if (fd < 0 || fstat(fd, &st) != 0) {
        LOG(LOG_ERROR, "spool_segment_unreadable", LS("path", path), LS("error", strerror(errno)));
        if (fd >= 0) close(fd);
        return -1;
    }
    size_t n = (size_t)st.st_size, valid = 0, count = 0;
    if (n > 0) {
        void *m = mmap(NULL, n, PROT_READ, MAP_PRIVATE, fd, 0);
        if (m == MAP_FAILED) {
            LOG(LOG_ERROR, "spool_segment_unreadable", LS("path", path),
                LS("error", strerror(errno)));
            close(fd);
            return -1;
        }
        count = spool_scan(m, n, &valid, fs != NULL ? scan_first_cb : NULL, fs);
        munmap(m, n);
    }
    if (valid < n) {
        LOG(LOG_WARN, "spool_truncated", LS("path", path), LI("kept_records", count),
            LI("kept_bytes", valid), LI("dropped_bytes", n - valid),
            LS("reason", valid == 0 ? "bad segment header" : "torn or corrupt record"));
        metrics_add(METRIC_SPOOL_TRUNCATED_BYTES, n - valid);
        if (count > 0 && (ftruncate(fd, (off_t)valid) != 0 || fsync(fd) != 0))
            LOG(LOG_ERROR, "spool_truncate_failed", LS("path", path), LS("error", strerror(errno)));
    }
    close(fd);
    if (count == 0) {
        if (unlink(path) != 0)
            LOG(LOG_WARN, "spool_unlink_failed", LS("path", path), LS("error", strerror(errno)));
        return 0;
    }
    *size = valid;
    return (long)count;
}

static int cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

/* The saved cursor: u64 seq, u64 offset, u32 crc32 of the 16 bytes before. */
static bool cursor_load(const spool_t *sp, uint64_t *seq, uint64_t *off)
{
    char path[4200];
    snprintf(path, sizeof path, "%s/cursor", sp->dir);
    FILE *f = fopen(path, "rb");
    if (f == NULL) return false;
    unsigned char b[20];
    bool ok = fread(b, 1, sizeof b, f) == sizeof b && get_u32(b + 16) == (uint32_t)crc32(0L, b, 16);
    fclose(f);
    if (ok) {
        *seq = get_u64(b);
        *off = get_u64(b + 8);
    }
    return ok;
}

static void cursor_save(const spool_t *sp, uint64_t seq, uint64_t off)
{
    char path[4200];
    snprintf(path, sizeof path, "%s/cursor", sp->dir);
    unsigned char b[20];
    put_u64(b, seq);
    put_u64(b + 8, off);
    put_u32(b + 16, (uint32_t)crc32(0L, b, 16));
    base_ioerr_t ie = {0, NULL};
    if (base_file_replace(path, 0644, b, sizeof b, &ie) != BASE_OK)
        LOG(LOG_WARN, "spool_cursor_save_failed", LS("path", path), LS("op", ie.op),
            LS("error", strerror(ie.errnum)),
            LS("effect", "a restart re-sends the records since the last saved cursor"));
}

static int spool_recover(spool_t *sp, char *err, size_t errlen)
{
    DIR *d = opendir(sp->dir);
    if (d == NULL) {
        snprintf(err, errlen, "spool: cannot read %s: %s", sp->dir, strerror(errno));
        return SPOOL_E_IO;
    }
    uint64_t *seqs = NULL;
    size_t n = 0, cap = 0;
    struct dirent *de;
    while ((de = readdir(d)) != NULL) {
        const char *nm = de->d_name;
        if (strlen(nm) != 20 || strcmp(nm + 16, ".seg") != 0 ||
            strspn(nm, "0123456789abcdef") != 16)
            continue;
        if (n == cap) {
            cap = cap ? cap * 2 : 64;
            uint64_t *ns = realloc(seqs, cap * sizeof *ns);
            if (ns == NULL) {
                closedir(d);
                free(seqs);
                return SPOOL_E_NOMEM;
            }
            seqs = ns;
        }
        seqs[n++] = strtoull(nm, NULL, 16);
    }
    closedir(d);
    if (n > 1) qsort(seqs, n, sizeof *seqs, cmp_u64);

    uint64_t cseq = 0, coff = 0;
    bool have_cursor = cursor_load(sp, &cseq, &coff);
    uint64_t records = 0, bytes = 0;
    int64_t oldest = 0;
    int rc = SPOOL_OK;
    for (size_t i = 0; i < n && rc == SPOOL_OK; i++) {
        uint64_t size = 0;
        bool first = sp->nsegs == 0;
        scan_first_t fs = {.cursor_off = have_cursor && cseq == seqs[i] ? coff : 0};
        long cnt = recover_segment(sp, seqs[i], &size, first ? &fs : NULL);
        if (seqs[i] >= sp->next_seq) sp->next_seq = seqs[i] + 1;
        if (cnt <= 0) continue; /* removed, or unreadable: left alone, not drained */
        if (first && have_cursor && cseq == seqs[i] && coff == size) {
            /* Every record of it was delivered before the restart: nothing to drain. */
            char path[4200];
            seg_path(sp, seqs[i], path, sizeof path);
            if (unlink(path) != 0)
                LOG(LOG_WARN, "spool_unlink_failed", LS("path", path),
                    LS("error", strerror(errno)));
            continue;
        }
        if ((rc = segs_push(sp, seqs[i], size)) != SPOOL_OK) break;
        sp->segs[sp->nsegs - 1].records = (uint64_t)cnt;
        records += (uint64_t)cnt;
        bytes += size;
        if (first) {
            sp->cur_seq = seqs[i];
            sp->cur_off = SPOOL_SEG_HEADER;
            oldest = fs.ts;
            if (fs.found) { /* records before the saved cursor were delivered already */
                sp->cur_off = coff;
                sp->segs[0].done = fs.before;
                records -= fs.before;
            }
        }
    }
    free(seqs);
    if (sp->next_seq == 0) sp->next_seq = 1;
    atomic_store(&sp->used, bytes);
    atomic_store(&sp->pending, records);
    atomic_store(&sp->oldest_ms, records > 0 ? oldest : 0);
    LOG(LOG_INFO, "spool_recovered", LS("dir", sp->dir), LI("segments", sp->nsegs),
        LI("records", records), LI("bytes", bytes));
    return rc;
}

int spool_open(const spool_opts_t *opts, spool_t **out, char *err, size_t errlen)
{
    *out = NULL;
    spool_t *sp = calloc(1, sizeof *sp);
    if (sp == NULL) return SPOOL_E_NOMEM;
    sp->o = *opts;
    sp->wfd = -1;
    sp->rfd = -1;
    pthread_mutex_init(&sp->mu, NULL);
    pthread_mutex_init(&sp->dmu, NULL);
    pthread_cond_init(&sp->dcv, NULL);
    base_stack_init(&sp->queue);
    atomic_init(&sp->used, 0u);
    atomic_init(&sp->pending, 0u);
    atomic_init(&sp->oldest_ms, 0);
    atomic_init(&sp->stopped, false);
    atomic_init(&sp->draining_stopped, false);
    base_buf_init(&sp->window, SPOOL_WINDOW_BYTES + SPOOL_RECORD_HEAD + SPOOL_RECORD_MAX);
    int n = snprintf(sp->dir, sizeof sp->dir, "%s/spool", opts->data_dir);
    if (n < 0 || (size_t)n >= sizeof sp->dir) {
        snprintf(err, errlen, "spool: data_dir path too long");
        spool_free(sp);
        return SPOOL_E_IO;
    }
    if ((mkdir(opts->data_dir, 0755) != 0 && errno != EEXIST) ||
        (mkdir(sp->dir, 0755) != 0 && errno != EEXIST)) {
        snprintf(err, errlen, "spool: cannot create %s: %s", sp->dir, strerror(errno));
        spool_free(sp);
        return SPOOL_E_IO;
    }
    int rc = spool_recover(sp, err, errlen);
    if (rc != SPOOL_OK) {
        if (rc == SPOOL_E_NOMEM) snprintf(err, errlen, "spool: out of memory");
        spool_free(sp);
        return rc;
    }
    if (metrics_gauge_register("spool_bytes", "bytes in the spool (segments on disk + queued)",
                               gauge_bytes, sp) != 0 ||
        metrics_gauge_register("spool_records", "spooled records not yet delivered to Kafka",
                               gauge_records, sp) != 0 ||
        metrics_gauge_register("spool_oldest_age_seconds",
                               "age of the oldest spooled record not yet delivered", gauge_oldest,
                               sp) != 0)
        LOG(LOG_WARN, "spool_gauge", LS("reason", "gauge table full"));
    *out = sp;
    return SPOOL_OK;
}

/* ---- submit (any thread) --------------------------------------------------------------- */

int spool_submit(spool_t *sp, spool_batch_t *b)
{
    if (atomic_load(&sp->stopped)) return SPOOL_E_STOPPED;
    uint64_t len = b->records->len;
    uint64_t before = atomic_fetch_add(&sp->used, (uint_fast64_t)len);
    if (before + len > sp->o.max_bytes) {
        sub_used(sp, len);
        metrics_add(METRIC_SPOOL_FULL, 1);
        return SPOOL_E_FULL;
    }
    atomic_fetch_add(&sp->pending, (uint_fast64_t)b->n_records);
    kafka_group_hold(b->g);
    /* The writer is running: main stops the loops (the only submitters) before spool_stop. */
    if (base_stack_push(&sp->queue, &b->node)) base_worker_wake(sp->writer);
    return SPOOL_OK;
}

/* ---- writer thread --------------------------------------------------------------------- */

static spool_batch_t *batch_of(base_snode_t *n)
{
    return (spool_batch_t *)((char *)n - offsetof(spool_batch_t, node));
}

/* Starts a new active segment (the previous one, already synced, is closed). Returns 0 or -1
 * (errno logged). */
static int writer_new_segment(spool_t *sp)
{
    if (sp->wfd >= 0) close(sp->wfd);
    sp->wfd = -1;
    pthread_mutex_lock(&sp->mu);
    uint64_t seq = sp->next_seq++;
    pthread_mutex_unlock(&sp->mu);
    char path[4200];
    seg_path(sp, seq, path, sizeof path);
    int fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
    unsigned char h[SPOOL_SEG_HEADER];
    memcpy(h, spool_magic, sizeof spool_magic);
    put_u32(h + 8, SPOOL_VERSION);
    put_u32(h + 12, 0);
    if (fd < 0 || base_write_all(fd, h, sizeof h) != BASE_OK) {
        LOG(LOG_ERROR, "spool_write_failed", LS("path", path), LS("op", fd < 0 ? "open" : "write"),
            LS("error", strerror(errno)));
        if (fd >= 0) {
            close(fd);
            unlink(path);
        }
        return -1;
    }
    sp->wfd = fd;
    sp->wseq = seq;
    sp->wsize = SPOOL_SEG_HEADER;
    atomic_fetch_add(&sp->used, (uint_fast64_t)SPOOL_SEG_HEADER);
    pthread_mutex_lock(&sp->mu);
    int rc = segs_push(sp, seq, SPOOL_SEG_HEADER);
    if (rc == SPOOL_OK && sp->nsegs == 1) {
        sp->cur_seq = seq;
        sp->cur_off = SPOOL_SEG_HEADER;
    }
    pthread_mutex_unlock(&sp->mu);
    if (rc != SPOOL_OK) {
        close(fd);
        unlink(path);
        sp->wfd = -1;
        sub_used(sp, SPOOL_SEG_HEADER);
        return -1;
    }
    return 0;
}

/* Idle housekeeping: an active segment whose every record is delivered is removed (the next
 * batch starts a new one), so an idle spool holds no file. */
static void writer_retire_drained(spool_t *sp)
{
    if (sp->wfd < 0 || atomic_load(&sp->pending) != 0) return;
    pthread_mutex_lock(&sp->mu);
    bool drained = sp->nsegs == 1 && sp->segs[0].seq == sp->wseq && sp->cur_seq == sp->wseq &&
                   sp->cur_off >= sp->segs[0].size;
    if (drained) segs_shift(sp);
    pthread_mutex_unlock(&sp->mu);
    if (!drained) return;
    char path[4200];
    seg_path(sp, sp->wseq, path, sizeof path);
    close(sp->wfd);
    sp->wfd = -1;
    if (unlink(path) != 0)
        LOG(LOG_WARN, "spool_unlink_failed", LS("path", path), LS("error", strerror(errno)));
    sub_used(sp, sp->wsize);
}

static void writer_tick(void *ud)
{
    spool_t *sp = ud;
    base_snode_t *list = base_stack_take(&sp->queue);
    if (list == NULL) {
        writer_retire_drained(sp);
        return;
    }
    bool created = false;
    if (sp->wfd < 0 || sp->wsize >= sp->o.segment_bytes) created = writer_new_segment(sp) == 0;
    uint64_t start = sp->wsize, pos = start;
    int werr = sp->wfd < 0 ? EIO : 0;
    /* Write every batch; a failed one is cut off again (ftruncate) and reported failed. */
    for (base_snode_t *n = list; n != NULL && werr == 0; n = n->next) {
        spool_batch_t *b = batch_of(n);
        ssize_t w = pwrite(sp->wfd, b->records->data, b->records->len, (off_t)pos);
        if (w == (ssize_t)b->records->len) {
            pos += b->records->len;
            continue;
        }
        werr = w < 0 ? errno : ENOSPC;
    }
    if (werr == 0 && fdatasync(sp->wfd) != 0) werr = errno;
    if (werr == 0 && created && base_fsync_dir(sp->dir) != BASE_OK) werr = errno;
    if (werr != 0) {
        /* Nothing of this round counts: a batch is durable only once the sync succeeded. */
        LOG(LOG_ERROR, "spool_write_failed", LI("segment", sp->wseq), LS("error", strerror(werr)),
            LS("effect", "the requests of this group commit answer 503"));
        metrics_add(METRIC_SPOOL_WRITE_ERRORS, 1);
        if (sp->wfd >= 0 && ftruncate(sp->wfd, (off_t)start) != 0) {
            close(sp->wfd); /* a tail we cannot cut: recovery would; start a new segment */
            sp->wfd = -1;
        }
        pos = start;
    } else {
        uint64_t nrec = 0;
        for (base_snode_t *n = list; n != NULL; n = n->next)
            nrec += batch_of(n)->n_records;
        sp->wsize = pos;
        pthread_mutex_lock(&sp->mu);
        sp->segs[sp->nsegs - 1].size = pos;
        sp->segs[sp->nsegs - 1].records += nrec;
        pthread_mutex_unlock(&sp->mu);
    }
    int64_t first_ts = 0;
    for (base_snode_t *n = list, *next; n != NULL; n = next) {
        next = n->next; /* b belongs to its request again once reported */
        spool_batch_t *b = batch_of(n);
        uint32_t nr = b->n_records;
        if (werr == 0) {
            if (first_ts == 0 && b->records->len >= SPOOL_RECORD_HEAD + 8)
                first_ts = (int64_t)get_u64((const unsigned char *)b->records->data + 8);
            metrics_add(METRIC_SPOOL_APPENDED, nr);
            kafka_group_report(b->g, nr, 0, 0);
        } else {
            sub_used(sp, b->records->len);
            atomic_fetch_sub(&sp->pending, (uint_fast64_t)nr);
            kafka_group_report(b->g, 0, nr, -1);
        }
    }
    int_fast64_t zero = 0;
    if (first_ts != 0) atomic_compare_exchange_strong(&sp->oldest_ms, &zero, first_ts);
    if (werr == 0 && sp->drain != NULL) base_worker_wake(sp->drain);
}

/* ---- drain thread ---------------------------------------------------------------------- */

static void slot_done_cb(kafka_group_t *g)
{
    slot_t *s = g->ud;
    spool_t *sp = s->sp;
    pthread_mutex_lock(&sp->dmu);
    s->state = atomic_load(&g->failed) == 0 && atomic_load(&g->delivered) == 1 ? 2 : 0;
    if (--sp->outstanding == 0) pthread_cond_broadcast(&sp->dcv);
    pthread_mutex_unlock(&sp->dmu);
}

/* Reads records from the cursor up to limit into sp->window: at most SPOOL_WINDOW_RECORDS and
 * about SPOOL_WINDOW_BYTES (at least one record). Returns the count, -1 when the segment holds
 * something that does not parse (the caller logs it and skips the rest of the segment), or -2
 * when memory is short. */
static long drain_read(spool_t *sp, uint64_t off, uint64_t limit)
{
    base_buf_reset(&sp->window);
    long count = 0;
    while (off < limit && count < (long)SPOOL_WINDOW_RECORDS &&
           (count == 0 || sp->window.len < SPOOL_WINDOW_BYTES)) {
        unsigned char h[SPOOL_RECORD_HEAD];
        if (pread(sp->rfd, h, sizeof h, (off_t)off) != (ssize_t)sizeof h) return -1;
        uint64_t len = get_u32(h);
        if (len < SPOOL_BODY_FIXED || len > SPOOL_RECORD_MAX ||
            off + SPOOL_RECORD_HEAD + len > limit)
            return -1;
        size_t total = SPOOL_RECORD_HEAD + (size_t)len;
        if (base_buf_reserve(&sp->window, total) != BASE_OK) {
            if (count == 0) return -2; /* memory short: try again next tick */
            break;
        }
        char *dst = sp->window.data + sp->window.len;
        if (pread(sp->rfd, dst, total, (off_t)off) != (ssize_t)total) return -1;
        spool_record_t rec;
        if (spool_record_parse(dst, total, &rec) != (long)total) return -1;
        sp->slots[count].off = sp->window.len;
        sp->slots[count].len = (uint32_t)total;
        sp->slots[count].state = 0;
        sp->window.len += total;
        off += total;
        count++;
    }
    return count;
}

/* Produces slot i's record. Returns the kafka_err_t. */
static int drain_produce(spool_t *sp, slot_t *s)
{
    spool_record_t rec;
    (void)spool_record_parse(sp->window.data + s->off, s->len, &rec);
    char names[SPOOL_MAX_HEADERS][256];
    kafka_header_t hdr[SPOOL_MAX_HEADERS];
    for (size_t i = 0; i < rec.n_headers; i++) {
        size_t nl = rec.headers[i].name_len;
        memcpy(names[i], rec.headers[i].name, nl);
        names[i][nl] = '\0';
        hdr[i] = (kafka_header_t){names[i], rec.headers[i].value, rec.headers[i].len};
    }
    s->sp = sp;
    kafka_group_init(&s->g, slot_done_cb, s);
    pthread_mutex_lock(&sp->dmu);
    sp->outstanding++;
    s->state = 1;
    pthread_mutex_unlock(&sp->dmu);
    int rc = kafka_out_produce(sp->o.ko, (kafka_topic_t)rec.topic, rec.key, rec.key_len, rec.value,
                               rec.value_len, hdr, rec.n_headers, &s->g);
    if (rc != KAFKA_OK) {
        /* Refused synchronously: the group holds only its seal reference, which completes it
         * below with no delivery (state 0, retried). */
        s->g.done_cb = NULL;
        pthread_mutex_lock(&sp->dmu);
        sp->outstanding--;
        s->state = 0;
        pthread_mutex_unlock(&sp->dmu);
        kafka_group_seal(&s->g);
        return rc;
    }
    kafka_group_seal(&s->g);
    return KAFKA_OK;
}

/* Waits until every produced slot reported; false when stopping cut the wait short. */
static bool drain_wait(spool_t *sp)
{
    int64_t stop_deadline = 0;
    pthread_mutex_lock(&sp->dmu);
    while (sp->outstanding > 0) {
        if (atomic_load(&sp->draining_stopped)) {
            int64_t now = base_mono_ms();
            if (stop_deadline == 0) stop_deadline = now + SPOOL_STOP_WAIT_MS;
            if (now >= stop_deadline) break;
        }
        struct timespec dl = base_deadline(CLOCK_REALTIME, 50);
        pthread_cond_timedwait(&sp->dcv, &sp->dmu, &dl);
    }
    bool done = sp->outstanding == 0;
    pthread_mutex_unlock(&sp->dmu);
    return done;
}

/* Delivers the window of count records; returns true once every one is delivered, false when
 * stopping. Failed records are produced again (only those), in order, while Kafka is up. */
static bool drain_window(spool_t *sp, long count)
{
    for (;;) {
        bool all = true;
        for (long i = 0; i < count; i++) {
            if (sp->slots[i].state == 2) continue;
            all = false;
            if (kafka_out_down(sp->o.ko)) break;
            int rc = drain_produce(sp, &sp->slots[i]);
            if (rc == KAFKA_E_PRODUCE) {
                /* Refused for good (unknown topic, too large): retrying would hold the spool
                 * busy forever. Logged and counted, then passed over. */
                LOG(LOG_ERROR, "spool_record_refused", LI("index", i),
                    LS("error", kafka_strerror(rc)), LS("effect", "record dropped"));
                metrics_add(METRIC_SPOOL_TRUNCATED_BYTES, sp->slots[i].len);
                sp->slots[i].state = 2;
                continue;
            }
            if (rc != KAFKA_OK) break; /* queue full, fatal, stopped: wait, then retry */
        }
        if (all) return true;
        if (!drain_wait(sp)) return false;
        bool left = false;
        for (long i = 0; i < count; i++)
            left |= sp->slots[i].state != 2;
        if (!left) return true;
        if (atomic_load(&sp->draining_stopped)) return false;
        base_sleep_ms(SPOOL_RETRY_MS);
    }
}

/* Removes segs[0] (fully delivered, not the writer's active one) and moves the cursor to the
 * next segment. mu held on entry and exit. */
static void drain_drop_head(spool_t *sp)
{
    uint64_t seq = sp->segs[0].seq, size = sp->segs[0].size;
    segs_shift(sp);
    sp->cur_seq = sp->segs[0].seq;
    sp->cur_off = SPOOL_SEG_HEADER;
    pthread_mutex_unlock(&sp->mu);
    char path[4200];
    seg_path(sp, seq, path, sizeof path);
    if (sp->rfd >= 0 && sp->rseq == seq) {
        close(sp->rfd);
        sp->rfd = -1;
    }
    if (unlink(path) != 0)
        LOG(LOG_WARN, "spool_unlink_failed", LS("path", path), LS("error", strerror(errno)));
    sub_used(sp, size);
    LOG(LOG_DEBUG, "spool_segment_drained", LS("path", path));
    pthread_mutex_lock(&sp->mu);
}

/* The rest of segment seq cannot be read (gone, or bytes that do not check): its undelivered
 * records are given up, logged and counted, so the spool does not stay busy forever. */
static void drain_skip_rest(spool_t *sp, uint64_t seq, uint64_t off, uint64_t limit,
                            const char *why)
{
    pthread_mutex_lock(&sp->mu);
    uint64_t lost = 0;
    if (sp->nsegs > 0 && sp->segs[0].seq == seq && sp->cur_off == off) {
        lost = sp->segs[0].records - sp->segs[0].done;
        sp->segs[0].done = sp->segs[0].records;
        sp->cur_off = limit;
    }
    pthread_mutex_unlock(&sp->mu);
    atomic_fetch_sub(&sp->pending, (uint_fast64_t)lost);
    metrics_add(METRIC_SPOOL_TRUNCATED_BYTES, limit - off);
    LOG(LOG_ERROR, "spool_records_lost", LI("segment", seq), LI("offset", off), LI("records", lost),
        LI("bytes", limit - off), LS("reason", why));
}

static void drain_tick(void *ud)
{
    spool_t *sp = ud;
    while (!atomic_load(&sp->draining_stopped) && !kafka_out_down(sp->o.ko)) {
        pthread_mutex_lock(&sp->mu);
        /* A fully read segment that is not the writer's newest is done: remove it. */
        while (sp->nsegs > 1 && sp->cur_off >= sp->segs[0].size)
            drain_drop_head(sp);
        if (sp->nsegs == 0 || sp->cur_off >= sp->segs[0].size) {
            pthread_mutex_unlock(&sp->mu);
            return;
        }
        uint64_t seq = sp->segs[0].seq, off = sp->cur_off, limit = sp->segs[0].size;
        pthread_mutex_unlock(&sp->mu);

        if (sp->rfd < 0 || sp->rseq != seq) {
            if (sp->rfd >= 0) close(sp->rfd);
            char path[4200];
            seg_path(sp, seq, path, sizeof path);
            sp->rfd = open(path, O_RDONLY | O_CLOEXEC);
            sp->rseq = seq;
            if (sp->rfd < 0) {
                if (errno == ENOENT) { /* removed behind our back: nothing left to retry */
                    drain_skip_rest(sp, seq, off, limit, "segment file missing");
                    continue;
                }
                LOG(LOG_ERROR, "spool_segment_unreadable", LS("path", path),
                    LS("error", strerror(errno)));
                return; /* retried next tick */
            }
        }
        long count = drain_read(sp, off, limit);
        if (count == -2) return;
        if (count <= 0) {
            /* Committed bytes that do not read back: skip the rest of this segment. */
            drain_skip_rest(sp, seq, off, limit, "committed records do not check");
            continue;
        }
        if (!drain_window(sp, count)) return;
        uint64_t end = off + sp->window.len;
        pthread_mutex_lock(&sp->mu);
        sp->cur_off = end;
        sp->segs[0].done += (uint64_t)count;
        uint64_t next_limit = sp->segs[0].size;
        bool more = end < next_limit || sp->nsegs > 1;
        pthread_mutex_unlock(&sp->mu);
        atomic_fetch_sub(&sp->pending, (uint_fast64_t)count);
        metrics_add(METRIC_SPOOL_DRAINED, (uint64_t)count);
        cursor_save(sp, seq, end);
        /* The oldest undelivered record is now the next one (if it is in this segment). */
        int64_t next_ts = 0;
        unsigned char h[SPOOL_RECORD_HEAD + 8];
        if (end < next_limit && pread(sp->rfd, h, sizeof h, (off_t)end) == (ssize_t)sizeof h)
            next_ts = (int64_t)get_u64(h + SPOOL_RECORD_HEAD);
        atomic_store(&sp->oldest_ms, more ? (next_ts != 0 ? next_ts : base_wall_ms()) : 0);
    }
}

int spool_start(spool_t *sp)
{
    if (base_worker_start(&sp->writer, "spool-writer", SPOOL_WRITER_PERIOD_MS, writer_tick, sp) !=
        BASE_OK)
        return SPOOL_E_NOMEM;
    if (base_worker_start(&sp->drain, "spool-drain", SPOOL_DRAIN_PERIOD_MS, drain_tick, sp) !=
        BASE_OK)
        return SPOOL_E_NOMEM;
    return SPOOL_OK;
}

void spool_stop_drain(spool_t *sp)
{
    if (sp == NULL || sp->drain == NULL) return;
    atomic_store(&sp->draining_stopped, true);
    /* A window in flight waits at most SPOOL_STOP_WAIT_MS for its reports. */
    if (base_worker_stop(sp->drain, 5000) != BASE_OK) LOG(LOG_ERROR, "spool_drain_stop_timeout");
    sp->drain = NULL;
}

void spool_stop(spool_t *sp)
{
    if (sp == NULL) return;
    spool_stop_drain(sp);
    atomic_store(&sp->stopped, true);
    if (sp->writer != NULL) {
        /* A round in progress finishes; batches queued after the last round get one more. */
        if (base_worker_stop(sp->writer, 10000) != BASE_OK)
            LOG(LOG_ERROR, "spool_writer_stop_timeout");
        sp->writer = NULL;
        writer_tick(sp);
    }
}

void spool_free(spool_t *sp)
{
    if (sp == NULL) return;
    spool_stop(sp);
    if (sp->wfd >= 0) close(sp->wfd);
    if (sp->rfd >= 0) close(sp->rfd);
    base_buf_free(&sp->window);
    free(sp->segs);
    pthread_cond_destroy(&sp->dcv);
    pthread_mutex_destroy(&sp->dmu);
    pthread_mutex_destroy(&sp->mu);
    free(sp);
}

void spool__cursor_save(const char *dir, uint64_t seq, uint64_t off)
{
    spool_t *sp = calloc(1, sizeof *sp);
    if (sp == NULL) return;
    snprintf(sp->dir, sizeof sp->dir, "%s", dir);
    cursor_save(sp, seq, off);
    free(sp);
}
