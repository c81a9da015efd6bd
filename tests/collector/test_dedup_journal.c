/*
 * test_dedup_journal.c — the dedup journal (dedup_journal.h): a submitted request is durable and
 * remembered before its done_cb; replay restores it into a fresh dedup; a torn tail (garbage or
 * a bad record) is cut and everything before it kept; rotation + drop_before truncate; the
 * queue and size caps hold (forced snapshot at the cap, records dropped from twice it).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <dirent.h>
#include <fcntl.h>

#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <xxhash.h>

#include "dedup_internal.h"
#include "dedup_journal.h"
#include "metrics.h"

typedef struct waiter {
    dedup_journal_req_t r;
    atomic_int done;
    bool durable;
} waiter_t;

static void done_cb(dedup_journal_req_t *r, bool durable)
{
    waiter_t *w = (waiter_t *)r;
    w->durable = durable;
    atomic_store(&w->done, 1);
}

static void wait_done(waiter_t *w)
{
    for (int i = 0; i < 500 && !atomic_load(&w->done); i++)
        usleep(10 * 1000);
    assert_true(atomic_load(&w->done));
}

static dedup_t *mk(void)
{
    dedup_opts_t o = {.window_ms = 3600000, .max_memory = 8 << 20};
    dedup_t *d = NULL;
    assert_int_equal(dedup_new(&o, &d), DEDUP_OK);
    return d;
}

static char *tmpdir(void)
{
    char *t = strdup("/tmp/sluice-journal-XXXXXX");
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

static int verdict(dedup_t *d, uint64_t fp)
{
    uint8_t v;
    dedup_reserve_batch(d, &fp, 1, &v);
    if (v == DEDUP_NEW) dedup_release(d, &fp, 1);
    return v;
}

static uint64_t fps[4000];

/* Reserves fps[0..n) (as ingest does), journals them, waits for the done_cb. */
static void journal_n(dedup_t *d, dedup_journal_t *j, size_t from, size_t n)
{
    uint8_t *v = malloc(n);
    dedup_reserve_batch(d, fps + from, n, v);
    waiter_t w = {.r = {.fps = fps + from, .n = n, .done_cb = done_cb}};
    assert_int_equal(dedup_journal_submit(j, &w.r), DEDUP_OK);
    wait_done(&w);
    assert_true(w.durable);
    free(v);
}

static void seg0(const char *dir, char *out, size_t cap)
{
    snprintf(out, cap, "%s/dedup.journal.%016x", dir, 0);
}

static void test_remembered_only_when_durable_and_replayed(void **state)
{
    (void)state;
    for (size_t i = 0; i < 4000; i++)
        fps[i] = XXH3_64bits(&i, sizeof i);
    char *dir = tmpdir();
    dedup_t *d = mk();
    dedup_journal_t *j = NULL;
    dedup_journal_replay_t rp;
    assert_int_equal(dedup_journal_open(d, dir, 1 << 20, &rp, &j), DEDUP_OK);
    assert_int_equal(rp.records, 0);
    journal_n(d, j, 0, 100);
    /* Committed by the writer: duplicates now, no ingest_finish needed. */
    assert_int_equal(verdict(d, fps[7]), DEDUP_DUPLICATE);
    assert_int_equal(dedup_journal_bytes(j), DEDUP_JOURNAL_HDR + 100 * DEDUP_JOURNAL_REC);
    dedup_journal_stop(j);
    dedup_journal_free(j);
    dedup_free(d);
    /* "kill -9": no snapshot. A fresh dedup replays the journal. */
    d = mk();
    assert_int_equal(dedup_journal_open(d, dir, 1 << 20, &rp, &j), DEDUP_OK);
    assert_int_equal(rp.segments, 1);
    assert_int_equal(rp.records, 100);
    assert_int_equal(rp.restored, 100);
    assert_int_equal(rp.torn_bytes, 0);
    assert_int_equal(verdict(d, fps[99]), DEDUP_DUPLICATE);
    assert_int_equal(verdict(d, fps[100]), DEDUP_NEW);
    dedup_journal_free(j);
    dedup_free(d);
    rmdir_all(dir);
}

static void test_torn_tail_is_cut_and_the_rest_kept(void **state)
{
    (void)state;
    char *dir = tmpdir();
    dedup_t *d = mk();
    dedup_journal_t *j = NULL;
    dedup_journal_replay_t rp;
    assert_int_equal(dedup_journal_open(d, dir, 1 << 20, &rp, &j), DEDUP_OK);
    journal_n(d, j, 0, 100);
    dedup_journal_free(j);
    dedup_free(d);
    char path[4300];
    seg0(dir, path, sizeof path);
    /* Half a record at the end (a write cut by kill -9). */
    FILE *f = fopen(path, "ab");
    assert_non_null(f);
    fwrite("0123456789", 1, 10, f);
    fclose(f);
    d = mk();
    rp = (dedup_journal_replay_t){0};
    assert_int_equal(dedup_journal_replay_file(d, path, true, &rp), DEDUP_OK);
    assert_int_equal(rp.records, 100);
    assert_int_equal(rp.torn_bytes, 10);
    struct stat sb;
    assert_int_equal(stat(path, &sb), 0);
    assert_int_equal(sb.st_size, DEDUP_JOURNAL_HDR + 100 * DEDUP_JOURNAL_REC);
    dedup_free(d);
    /* A bad record (a torn sector): kept up to it. */
    f = fopen(path, "r+b");
    assert_non_null(f);
    fseek(f, DEDUP_JOURNAL_HDR + 60 * DEDUP_JOURNAL_REC + 3, SEEK_SET);
    fputc(0xa5, f);
    fclose(f);
    d = mk();
    rp = (dedup_journal_replay_t){0};
    assert_int_equal(dedup_journal_replay_file(d, path, true, &rp), DEDUP_OK);
    assert_int_equal(rp.records, 60);
    assert_int_equal(rp.torn_bytes, 40 * DEDUP_JOURNAL_REC);
    assert_int_equal(verdict(d, fps[59]), DEDUP_DUPLICATE);
    assert_int_equal(verdict(d, fps[60]), DEDUP_NEW);
    dedup_free(d);
    /* A bad header: nothing. */
    f = fopen(path, "r+b");
    fputc('X', f);
    fclose(f);
    d = mk();
    assert_int_equal(dedup_journal_replay_file(d, path, false, &rp), DEDUP_E_CORRUPT);
    assert_int_equal(dedup_journal_replay_file(d, "/nonexistent/j", false, &rp), DEDUP_E_NOENT);
    dedup_free(d);
    rmdir_all(dir);
}

/* A snapshot rotates the journal and truncates it; kill -9 after it still remembers both the
 * snapshot's entries and those journaled after it. */
static void test_snapshot_rotates_and_truncates(void **state)
{
    (void)state;
    char *dir = tmpdir();
    dedup_t *d = mk();
    dedup_journal_t *j = NULL;
    dedup_journal_replay_t rp;
    assert_int_equal(dedup_journal_open(d, dir, 1 << 20, &rp, &j), DEDUP_OK);
    dedup_attach_journal(d, j);
    journal_n(d, j, 0, 200);
    assert_int_equal(dedup_worker_start(d, dir, 0), DEDUP_OK);
    base_ioerr_t e;
    assert_int_equal(dedup__snapshot_with_journal(d, &e), DEDUP_OK);
    char path[4300];
    seg0(dir, path, sizeof path);
    assert_int_equal(access(path, F_OK), -1); /* segment 0 dropped */
    assert_int_equal(dedup_journal_bytes(j), DEDUP_JOURNAL_HDR);
    journal_n(d, j, 200, 50);
    assert_int_equal(dedup_worker_stop(d, false), DEDUP_OK);
    dedup_journal_free(j);
    dedup_free(d);
    d = mk();
    assert_int_equal(dedup_snapshot_load(d, dir), DEDUP_OK);
    assert_int_equal(dedup_journal_open(d, dir, 1 << 20, &rp, &j), DEDUP_OK);
    assert_int_equal(rp.records, 50);
    assert_int_equal(verdict(d, fps[0]), DEDUP_DUPLICATE);
    assert_int_equal(verdict(d, fps[249]), DEDUP_DUPLICATE);
    assert_int_equal(verdict(d, fps[250]), DEDUP_NEW);
    dedup_journal_free(j);
    dedup_free(d);
    rmdir_all(dir);
}

/* A dropped segment larger than a few MiB is freed in steps (a pause after each), then unlinked:
 * the file is gone, and the pauses happened (a lower bound on the time, never flaky). */
static void test_large_segment_dropped_in_steps(void **state)
{
    (void)state;
    char *dir = tmpdir();
    dedup_t *d = mk();
    dedup_journal_t *j = NULL;
    dedup_journal_replay_t rp;
    assert_int_equal(dedup_journal_open(d, dir, 1 << 20, &rp, &j), DEDUP_OK);
    uint64_t seq = dedup_journal_rotate(j); /* segment 0 closed, seq now open */
    assert_true(seq >= 1);
    char path[4300];
    seg0(dir, path, sizeof path);
    int fd = open(path, O_WRONLY | O_CREAT, 0640);
    assert_true(fd >= 0);
    assert_int_equal(ftruncate(fd, 12 << 20), 0); /* 12 MiB: two 4 MiB steps before the unlink */
    close(fd);
    int64_t t0 = base_mono_ms();
    dedup_journal_drop_before(j, seq);
    assert_true(base_mono_ms() - t0 >= 10);
    assert_int_equal(access(path, F_OK), -1);
    dedup_journal_free(j);
    dedup_free(d);
    rmdir_all(dir);
}

/* dedup.journal_max_bytes: queue cap, forced snapshot at the cap, dropped from twice it. */
static void test_caps(void **state)
{
    (void)state;
    char *dir = tmpdir();
    dedup_t *d = mk();
    dedup_journal_t *j = NULL;
    dedup_journal_replay_t rp;
    const uint64_t cap = 64 * 1024; /* 2730 records */
    assert_int_equal(dedup_journal_open(d, dir, cap, &rp, &j), DEDUP_OK);
    waiter_t big = {.r = {.fps = fps, .n = 3000, .done_cb = done_cb}};
    uint64_t dropped0 = metrics_get(METRIC_DEDUP_JOURNAL_DROPPED);
    assert_int_equal(dedup_journal_submit(j, &big.r), DEDUP_E_FULL);
    assert_int_equal(metrics_get(METRIC_DEDUP_JOURNAL_DROPPED) - dropped0, 3000);
    uint64_t forced0 = metrics_get(METRIC_DEDUP_JOURNAL_FORCED_SNAPSHOTS);
    journal_n(d, j, 0, 2000);
    assert_false(atomic_load(&d->w_snap_soon));
    journal_n(d, j, 2000, 1000); /* past the cap: a snapshot is asked for, once */
    assert_true(atomic_load(&d->w_snap_soon));
    assert_int_equal(metrics_get(METRIC_DEDUP_JOURNAL_FORCED_SNAPSHOTS) - forced0, 1);
    /* Up to twice the cap still written; beyond it dropped (answered all the same). */
    uint64_t before = metrics_get(METRIC_DEDUP_JOURNAL_DROPPED);
    journal_n(d, j, 0, 2000);
    waiter_t w = {.r = {.fps = fps + 3000, .n = 1000, .done_cb = done_cb}};
    assert_int_equal(dedup_journal_submit(j, &w.r), DEDUP_OK);
    wait_done(&w);
    assert_false(w.durable);
    assert_int_equal(metrics_get(METRIC_DEDUP_JOURNAL_DROPPED) - before, 1000);
    assert_true(dedup_journal_bytes(j) <= 2 * cap);
    /* Still remembered in memory. */
    assert_int_equal(verdict(d, fps[3999]), DEDUP_DUPLICATE);
    /* After stop, submits are refused. */
    dedup_journal_stop(j);
    assert_int_equal(dedup_journal_submit(j, &w.r), DEDUP_E_FULL);
    dedup_journal_free(j);
    dedup_free(d);
    rmdir_all(dir);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_remembered_only_when_durable_and_replayed),
        cmocka_unit_test(test_torn_tail_is_cut_and_the_rest_kept),
        cmocka_unit_test(test_snapshot_rotates_and_truncates),
        cmocka_unit_test(test_large_segment_dropped_in_steps),
        cmocka_unit_test(test_caps),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
