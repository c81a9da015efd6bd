/*
 * dedup_journal.c — the dedup journal: group-committed appends, rotation, replay (contract and
 * file format in dedup_journal.h).
 *
 * Locks: seg_mu guards the open segment (fd, seq, its size and the "broken" state) and is held by
 * the writer for one whole group commit (write, fsync, dedup_commit) and by rotate; so a rotate
 * falls between two commits. It is taken by worker threads only (writer, dedup worker, main at
 * stop), never by a loop. The queue is the base layer's lock-free stack.
 */
#include "dedup_journal.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zlib.h>

#include "log.h"
#include "metrics.h"

#define JNL_MAGIC   "SLUDJRN1"
#define JNL_VERSION 1u
#define JNL_PREFIX  "dedup.journal."
/* Dropping a segment: its blocks are freed this many bytes at a time, this long apart. */
#define JNL_SHRINK_STEP     ((uint64_t)4 << 20)
#define JNL_SHRINK_PAUSE_MS 5
/* The writer wakes on every submit; the period only bounds a retry after a disk error. */
#define JNL_PERIOD_MS  1000
#define JNL_RETRY_MS   1000
#define JNL_STOP_MS    30000
#define JNL_MAX_SEGS   4096
#define JNL_SLOW_MS    500 /* a group commit this slow is logged */
#define JNL_PATH_BYTES 4096

struct dedup_journal {
    dedup_t *d;
    char *dir;
    uint64_t max_bytes;
    base_stack_t queue;
    _Atomic uint64_t queued_bytes;
    atomic_bool closed;
    base_worker_t *w;
    bool orphaned; /* a stop timed out: the writer thread still uses j, which is never freed */

    pthread_mutex_t seg_mu;
    int fd;             /* -1: no segment open (not yet, or abandoned after an error) */
    uint64_t seq;       /* of the open segment, or of the next one to open */
    uint64_t seg_bytes; /* of the open segment */
    uint64_t old_bytes; /* of the older segments still on disk */
    _Atomic uint64_t bytes_gauge;
    bool failing;        /* logged as failing; a success logs the recovery */
    int64_t next_try_ms; /* monotonic: no new segment before then after an error */
    bool forced;         /* a snapshot was forced since the last rotate */
    base_buf_t wbuf;     /* one group commit's records */
};

static uint32_t jnl_crc(const void *p, size_t n)
{
    return (uint32_t)crc32(0L, p, (uInt)n);
}

static void jnl_put32(uint8_t *p, uint32_t v)
{
    memcpy(p, &v, 4);
}

static void jnl_put64(uint8_t *p, uint64_t v)
{
    memcpy(p, &v, 8);
}

static uint32_t jnl_get32(const uint8_t *p)
{
    uint32_t v;
    memcpy(&v, p, 4);
    return v;
}

static uint64_t jnl_get64(const uint8_t *p)
{
    uint64_t v;
    memcpy(&v, p, 8);
    return v;
}

static void seg_path(const dedup_journal_t *j, uint64_t seq, char *out, size_t cap)
{
    snprintf(out, cap, "%s/" JNL_PREFIX "%016" PRIx64, j->dir, seq);
}

static void gauge_update(dedup_journal_t *j)
{
    atomic_store_explicit(&j->bytes_gauge, j->old_bytes + j->seg_bytes, memory_order_relaxed);
}

/* The one warning of a journal failure, with the snapshot warnings' fields. */
static void journal_failed(dedup_journal_t *j, const char *path, const char *op, int errnum)
{
    metrics_add(METRIC_DEDUP_JOURNAL_ERRORS, 1);
    if (j->failing) return;
    j->failing = true;
    LOG(LOG_WARN, "dedup_journal_failed", LS("path", path), LS("op", op),
        LS("errno", base_errno_name(errnum)), LS("error", strerror(errnum)),
        LS("effect", "requests are answered without the journal: dedup survives a crash only "
                     "as of the last snapshot; retried each second"));
}

/* Abandons the open segment after an error (its good prefix stays and is replayed). seg_mu. */
static void seg_abandon(dedup_journal_t *j)
{
    if (j->fd >= 0) {
        close(j->fd);
        j->fd = -1;
        j->old_bytes += j->seg_bytes;
        j->seg_bytes = 0;
        j->seq++;
    }
    j->next_try_ms = base_mono_ms() + JNL_RETRY_MS;
    gauge_update(j);
}

/* Opens segment j->seq: header written and fsync'd, directory fsync'd. seg_mu. */
static int seg_open(dedup_journal_t *j)
{
    char path[JNL_PATH_BYTES];
    base_ioerr_t me;
    if (base_mkdir_p(j->dir, 0750, &me) != BASE_OK) {
        seg_path(j, j->seq, path, sizeof path);
        journal_failed(j, path, me.op, me.errnum);
        j->next_try_ms = base_mono_ms() + JNL_RETRY_MS;
        return -1;
    }
    seg_path(j, j->seq, path, sizeof path);
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_APPEND | O_CLOEXEC, 0640);
    if (fd < 0) {
        journal_failed(j, path, "open", errno);
        j->next_try_ms = base_mono_ms() + JNL_RETRY_MS;
        return -1;
    }
    uint8_t h[DEDUP_JOURNAL_HDR] = {0};
    memcpy(h, JNL_MAGIC, 8);
    jnl_put32(h + 8, JNL_VERSION);
    jnl_put32(h + 12, DEDUP_JOURNAL_REC);
    jnl_put64(h + 16, j->seq);
    jnl_put32(h + 28, jnl_crc(h, 28));
    const char *op = NULL;
    if (base_write_all(fd, h, sizeof h) != BASE_OK)
        op = "write";
    else if (fsync(fd) != 0)
        op = "fsync";
    else if (base_fsync_dir(j->dir) != BASE_OK)
        op = "fsync dir";
    if (op != NULL) {
        int e = errno;
        close(fd);
        unlink(path);
        journal_failed(j, path, op, e);
        j->next_try_ms = base_mono_ms() + JNL_RETRY_MS;
        return -1;
    }
    j->fd = fd;
    j->seg_bytes = sizeof h;
    gauge_update(j);
    return 0;
}

/* ---- replay ---- */

int dedup_journal_replay_file(dedup_t *d, const char *path, bool truncate,
                              dedup_journal_replay_t *st)
{
    int fd = open(path, truncate ? O_RDWR | O_CLOEXEC : O_RDONLY | O_CLOEXEC);
    if (fd < 0) return errno == ENOENT ? DEDUP_E_NOENT : DEDUP_E_IO;
    uint8_t h[DEDUP_JOURNAL_HDR];
    ssize_t n = read(fd, h, sizeof h);
    if (n != (ssize_t)sizeof h || memcmp(h, JNL_MAGIC, 8) != 0 || jnl_get32(h + 8) != JNL_VERSION ||
        jnl_get32(h + 12) != DEDUP_JOURNAL_REC || jnl_get32(h + 28) != jnl_crc(h, 28)) {
        close(fd);
        st->bad_segments++;
        return DEDUP_E_CORRUPT;
    }
    st->segments++;
    enum { CHUNK = 4096 };
    uint8_t buf[CHUNK * DEDUP_JOURNAL_REC];
    uint64_t good = sizeof h; /* offset after the last good record */
    size_t have = 0;
    bool torn = false;
    int rc = DEDUP_OK;
    for (;;) {
        ssize_t r = read(fd, buf + have, sizeof buf - have);
        if (r < 0) {
            if (errno == EINTR) continue;
            rc = DEDUP_E_IO;
            break;
        }
        have += (size_t)r;
        size_t i = 0;
        for (; i + DEDUP_JOURNAL_REC <= have; i += DEDUP_JOURNAL_REC) {
            const uint8_t *rec = buf + i;
            if (jnl_get32(rec + 16) != 0 || jnl_get32(rec + 20) != jnl_crc(rec, 20)) {
                torn = true;
                break;
            }
            st->records++;
            if (dedup_restore(d, jnl_get64(rec), jnl_get64(rec + 8))) st->restored++;
            good += DEDUP_JOURNAL_REC;
        }
        if (torn) break;
        memmove(buf, buf + i, have - i);
        have -= i;
        if (r == 0) {
            if (have > 0) torn = true; /* a short last record */
            break;
        }
    }
    if (rc == DEDUP_OK && torn) {
        struct stat sb;
        uint64_t size = fstat(fd, &sb) == 0 ? (uint64_t)sb.st_size : good;
        st->torn_bytes += size > good ? size - good : 0;
        if (truncate && ftruncate(fd, (off_t)good) == 0) (void)fsync(fd);
        LOG(LOG_WARN, "dedup_journal_torn_tail", LS("path", path), LI("kept_bytes", good),
            LI("cut_bytes", size > good ? size - good : 0),
            LS("effect", truncate ? "truncated: records before it are replayed"
                                  : "records before it are replayed"));
    }
    close(fd);
    return rc;
}

static int cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

/* Segment seqs in dir, ascending; returns the count (at most cap). */
static size_t list_segments(const char *dir, uint64_t *seqs, size_t cap)
{
    DIR *dh = opendir(dir);
    if (dh == NULL) return 0;
    size_t n = 0;
    struct dirent *e;
    while ((e = readdir(dh)) != NULL && n < cap) {
        if (strncmp(e->d_name, JNL_PREFIX, sizeof JNL_PREFIX - 1) != 0) continue;
        const char *hex = e->d_name + sizeof JNL_PREFIX - 1;
        char *end = NULL;
        if (strlen(hex) != 16) continue;
        uint64_t v = strtoull(hex, &end, 16);
        if (end == NULL || *end != '\0') continue;
        seqs[n++] = v;
    }
    closedir(dh);
    qsort(seqs, n, sizeof *seqs, cmp_u64);
    return n;
}

/* ---- writer ---- */

/* One group commit: everything queued, one write, one fsync, then dedup_commit and done_cb. */
static void writer_tick(void *ud)
{
    dedup_journal_t *j = ud;
    base_snode_t *list = base_stack_take(&j->queue);
    if (list == NULL) return;
    uint64_t t = (uint64_t)base_wall_ms();
    int64_t t0 = base_mono_ms();
    pthread_mutex_lock(&j->seg_mu);
    base_buf_reset(&j->wbuf);
    uint64_t n_recs = 0;
    for (base_snode_t *s = list; s != NULL; s = s->next) {
        dedup_journal_req_t *r = (dedup_journal_req_t *)s;
        atomic_fetch_sub_explicit(&j->queued_bytes, (uint64_t)r->n * DEDUP_JOURNAL_REC,
                                  memory_order_relaxed);
        n_recs += r->n;
    }
    bool durable = false;
    uint64_t on_disk = j->old_bytes + j->seg_bytes;
    if (on_disk + n_recs * DEDUP_JOURNAL_REC > 2 * j->max_bytes) {
        metrics_add(METRIC_DEDUP_JOURNAL_DROPPED, n_recs); /* until a snapshot truncates it */
    } else if (j->fd < 0 && (base_mono_ms() < j->next_try_ms || seg_open(j) != 0)) {
        metrics_add(METRIC_DEDUP_JOURNAL_DROPPED, n_recs);
    } else if (base_buf_reserve(&j->wbuf, (size_t)(n_recs * DEDUP_JOURNAL_REC)) != BASE_OK) {
        metrics_add(METRIC_DEDUP_JOURNAL_DROPPED, n_recs);
    } else {
        uint8_t *p = (uint8_t *)j->wbuf.data;
        for (base_snode_t *s = list; s != NULL; s = s->next) {
            dedup_journal_req_t *r = (dedup_journal_req_t *)s;
            for (size_t i = 0; i < r->n; i++, p += DEDUP_JOURNAL_REC) {
                jnl_put64(p, r->fps[i]);
                jnl_put64(p + 8, t);
                jnl_put32(p + 16, 0);
                jnl_put32(p + 20, jnl_crc(p, 20));
            }
        }
        size_t len = (size_t)(n_recs * DEDUP_JOURNAL_REC);
        char path[JNL_PATH_BYTES];
        seg_path(j, j->seq, path, sizeof path);
        if (base_write_all(j->fd, j->wbuf.data, len) != BASE_OK) {
            journal_failed(j, path, "write", errno);
            seg_abandon(j);
        } else if (fdatasync(j->fd) != 0) {
            /* After a failed fsync the page cache state is unknown: never reuse the file. */
            journal_failed(j, path, "fsync", errno);
            j->seg_bytes += len;
            seg_abandon(j);
        } else {
            durable = true;
            int64_t ms = base_mono_ms() - t0;
            if (ms >= JNL_SLOW_MS)
                LOG(LOG_WARN, "dedup_journal_slow_commit", LS("path", path), LI("ms", ms),
                    LI("records", n_recs), LS("effect", "the answers of these requests waited"));
            j->seg_bytes += len;
            gauge_update(j);
            metrics_add(METRIC_DEDUP_JOURNAL_RECORDS, n_recs);
            if (j->failing) {
                j->failing = false;
                LOG(LOG_INFO, "dedup_journal_recovered", LS("path", path));
            }
        }
    }
    /* Remembered from now, under seg_mu: a rotate (and the snapshot after it) sees them. */
    for (base_snode_t *s = list; s != NULL; s = s->next) {
        dedup_journal_req_t *r = (dedup_journal_req_t *)s;
        dedup_commit(j->d, r->fps, r->n);
    }
    bool force = !j->forced && j->old_bytes + j->seg_bytes >= j->max_bytes;
    if (force) j->forced = true;
    pthread_mutex_unlock(&j->seg_mu);
    if (force) {
        metrics_add(METRIC_DEDUP_JOURNAL_FORCED_SNAPSHOTS, 1);
        dedup_snapshot_soon(j->d);
    }
    for (base_snode_t *s = list, *next; s != NULL; s = next) {
        next = s->next;
        dedup_journal_req_t *r = (dedup_journal_req_t *)s;
        r->done_cb(r, durable);
    }
}

static double gauge_journal_bytes(void *ud)
{
    return (double)dedup_journal_bytes(ud);
}

int dedup_journal_open(dedup_t *d, const char *dir, uint64_t max_bytes,
                       dedup_journal_replay_t *replay, dedup_journal_t **out)
{
    *out = NULL;
    memset(replay, 0, sizeof *replay);
    dedup_journal_t *j = calloc(1, sizeof *j);
    if (j == NULL || (j->dir = strdup(dir)) == NULL) {
        free(j);
        return DEDUP_E_NOMEM;
    }
    j->d = d;
    j->max_bytes = max_bytes > 0 ? max_bytes : 64u << 20;
    j->fd = -1;
    base_stack_init(&j->queue);
    base_buf_init(&j->wbuf, (size_t)(j->max_bytes + DEDUP_JOURNAL_REC));
    pthread_mutex_init(&j->seg_mu, NULL);
    /* Replay in seq order; the new segment follows the last. */
    uint64_t *seqs = malloc(JNL_MAX_SEGS * sizeof *seqs);
    if (seqs == NULL) {
        dedup_journal_free(j);
        return DEDUP_E_NOMEM;
    }
    size_t n = list_segments(dir, seqs, JNL_MAX_SEGS);
    for (size_t i = 0; i < n; i++) {
        char path[JNL_PATH_BYTES];
        seg_path(j, seqs[i], path, sizeof path);
        int rc = dedup_journal_replay_file(d, path, true, replay);
        struct stat sb;
        if (rc == DEDUP_E_CORRUPT) {
            /* A header never completed (crash while creating it): nothing in it was durable. */
            LOG(LOG_WARN, "dedup_journal_bad_segment", LS("path", path),
                LS("effect", "ignored and removed"));
            unlink(path);
        } else if (rc == DEDUP_OK && stat(path, &sb) == 0) {
            j->old_bytes += (uint64_t)sb.st_size;
        } else if (rc != DEDUP_OK) {
            int e = errno;
            LOG(LOG_WARN, "dedup_journal_unreadable", LS("path", path),
                LS("errno", base_errno_name(e)), LS("error", strerror(e)));
        }
        j->seq = seqs[i] + 1;
    }
    free(seqs);
    pthread_mutex_lock(&j->seg_mu);
    (void)seg_open(j); /* failure: logged, retried by the writer */
    gauge_update(j);
    pthread_mutex_unlock(&j->seg_mu);
    (void)metrics_gauge_register("dedup_journal_bytes",
                                 "bytes of the dedup journal on disk (dedup.journal_max_bytes)",
                                 gauge_journal_bytes, j);
    int rc = base_worker_start(&j->w, "sluice-journal", JNL_PERIOD_MS, writer_tick, j);
    if (rc != BASE_OK) {
        dedup_journal_free(j);
        return rc == BASE_E_NOMEM ? DEDUP_E_NOMEM : DEDUP_E_THREAD;
    }
    *out = j;
    return DEDUP_OK;
}

int dedup_journal_submit(dedup_journal_t *j, dedup_journal_req_t *r)
{
    if (atomic_load_explicit(&j->closed, memory_order_acquire)) return DEDUP_E_FULL;
    uint64_t b = (uint64_t)r->n * DEDUP_JOURNAL_REC;
    uint64_t q = atomic_fetch_add_explicit(&j->queued_bytes, b, memory_order_relaxed);
    if (q + b > j->max_bytes) {
        atomic_fetch_sub_explicit(&j->queued_bytes, b, memory_order_relaxed);
        metrics_add(METRIC_DEDUP_JOURNAL_DROPPED, r->n);
        return DEDUP_E_FULL;
    }
    if (base_stack_push(&j->queue, &r->node)) base_worker_wake(j->w);
    return DEDUP_OK;
}

uint64_t dedup_journal_rotate(dedup_journal_t *j)
{
    pthread_mutex_lock(&j->seg_mu);
    if (j->fd >= 0) {
        close(j->fd);
        j->fd = -1;
        j->old_bytes += j->seg_bytes;
        j->seg_bytes = 0;
        j->seq++;
        if (base_mono_ms() >= j->next_try_ms) (void)seg_open(j);
    }
    j->forced = false;
    uint64_t seq = j->seq;
    pthread_mutex_unlock(&j->seg_mu);
    return seq;
}

/* Frees a dropped segment's blocks a few MiB at a time, with a pause between, before its unlink.
 * Freeing a whole 64 MiB segment in one unlink took 38 ms on ext4 and held up the journal
 * thread's fdatasync, which every 200 waits for, for 22 ms; in steps each commit of the
 * filesystem's own journal stays small. Best effort: a step that fails leaves the rest to
 * the unlink. This runs on the dedup worker, never on a loop. */
static void shrink_gradually(const char *path, uint64_t size)
{
    if (size <= JNL_SHRINK_STEP) return;
    int fd = open(path, O_WRONLY | O_CLOEXEC);
    if (fd < 0) return;
    while (size > JNL_SHRINK_STEP) {
        size -= JNL_SHRINK_STEP;
        if (ftruncate(fd, (off_t)size) != 0) break;
        base_sleep_ms(JNL_SHRINK_PAUSE_MS);
    }
    close(fd);
}

void dedup_journal_drop_before(dedup_journal_t *j, uint64_t seq)
{
    uint64_t *seqs = malloc(JNL_MAX_SEGS * sizeof *seqs);
    if (seqs == NULL) return;
    size_t n = list_segments(j->dir, seqs, JNL_MAX_SEGS);
    uint64_t freed = 0;
    for (size_t i = 0; i < n && seqs[i] < seq; i++) {
        char path[JNL_PATH_BYTES];
        seg_path(j, seqs[i], path, sizeof path);
        struct stat sb;
        uint64_t sz = stat(path, &sb) == 0 ? (uint64_t)sb.st_size : 0;
        shrink_gradually(path, sz);
        if (unlink(path) == 0) freed += sz;
    }
    free(seqs);
    pthread_mutex_lock(&j->seg_mu);
    j->old_bytes = j->old_bytes > freed ? j->old_bytes - freed : 0;
    gauge_update(j);
    pthread_mutex_unlock(&j->seg_mu);
}

uint64_t dedup_journal_bytes(dedup_journal_t *j)
{
    return atomic_load_explicit(&j->bytes_gauge, memory_order_relaxed);
}

void dedup_journal_stop(dedup_journal_t *j)
{
    if (j == NULL || j->w == NULL || j->orphaned) return;
    atomic_store_explicit(&j->closed, true, memory_order_release);
    if (base_worker_stop(j->w, JNL_STOP_MS) != BASE_OK) {
        /* A group commit is stuck on the disk past the deadline: the thread keeps j. */
        j->w = NULL;
        j->orphaned = true;
        return;
    }
    j->w = NULL;
    writer_tick(j); /* what was queued before closed was set */
}

void dedup_journal_free(dedup_journal_t *j)
{
    if (j == NULL) return;
    if (j->w != NULL) dedup_journal_stop(j);
    if (j->orphaned) return; /* a stuck writer still uses j: the process is exiting */
    /* Stragglers that passed the closed check while stop ran. */
    for (base_snode_t *s = base_stack_take(&j->queue), *next; s != NULL; s = next) {
        next = s->next;
        dedup_journal_req_t *r = (dedup_journal_req_t *)s;
        dedup_commit(j->d, r->fps, r->n);
        r->done_cb(r, false);
    }
    if (j->fd >= 0) close(j->fd);
    pthread_mutex_destroy(&j->seg_mu);
    base_buf_free(&j->wbuf);
    free(j->dir);
    free(j);
}
