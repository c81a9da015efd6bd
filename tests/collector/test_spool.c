/*
 * test_spool.c — the spool (collector/spool.c): the record format (round trip, every way a
 * record can fail to check), recovery (a torn tail is cut, what was dropped is counted, the rest
 * is kept; a bad header removes the file; the saved cursor skips delivered records), and the
 * whole path against librdkafka's mock cluster (mock_cluster.h): batches spooled while the broker
 * is down are reported only after their fsync, then drained in order with their exact key, value
 * and headers once it is back, and the segment files are deleted.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <dirent.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <zlib.h>

#include "base.h"
#include "log.h"
#include "metrics.h"
#include "spool.h"
#include "spool_internal.h"

#include "mock_cluster.h"

static const kafka_header_t hdrs[2] = {{"message-id", "m-1", 3}, {"event-type", "track", 5}};

/* A fresh temp data dir (removed by rm_tree). */
static void tmp_dir(char *out, size_t n)
{
    snprintf(out, n, "/tmp/sluice-spool-test-XXXXXX");
    assert_non_null(mkdtemp(out));
}

static void rm_tree(const char *dir)
{
    char cmd[512];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    assert_int_equal(system(cmd), 0);
}

static size_t count_segments(const char *data_dir)
{
    char dir[512];
    snprintf(dir, sizeof dir, "%s/spool", data_dir);
    DIR *d = opendir(dir);
    if (d == NULL) return 0;
    size_t n = 0;
    for (struct dirent *de; (de = readdir(d)) != NULL;)
        n += strstr(de->d_name, ".seg") != NULL;
    closedir(d);
    return n;
}

/* A segment image: the header and n records "k<i>" / "value-<i>". */
static void segment_image(base_buf_t *b, int n)
{
    base_buf_init(b, 1 << 20);
    unsigned char h[SPOOL_SEG_HEADER] = {'S', 'L', 'U', 'I', 'C', 'E', 'S', 'P', 1, 0, 0, 0};
    assert_int_equal(base_buf_append(b, h, sizeof h), 0);
    for (int i = 0; i < n; i++) {
        char k[16], v[32];
        int kl = snprintf(k, sizeof k, "k%d", i), vl = snprintf(v, sizeof v, "value-%d", i);
        assert_int_equal(
            spool_encode(b, KAFKA_TOPIC_EVENTS, k, (size_t)kl, v, (size_t)vl, hdrs, 2, 1000 + i),
            SPOOL_OK);
    }
}

static void test_record_round_trip(void **state)
{
    (void)state;
    base_buf_t b;
    base_buf_init(&b, 4096);
    assert_int_equal(spool_encode(&b, KAFKA_TOPIC_REJECTED, "key", 3, "val", 3, hdrs, 2, 42), 0);
    spool_record_t r;
    assert_int_equal(spool_record_parse(b.data, b.len, &r), (long)b.len);
    assert_int_equal(r.spooled_at_ms, 42);
    assert_int_equal(r.topic, KAFKA_TOPIC_REJECTED);
    assert_memory_equal(r.key, "key", 3);
    assert_memory_equal(r.value, "val", 3);
    assert_int_equal(r.n_headers, 2);
    assert_int_equal(r.headers[0].name_len, 10);
    assert_memory_equal(r.headers[0].name, "message-id", 10);
    assert_memory_equal(r.headers[1].value, "track", 5);
    /* An empty key and value are fine too. */
    base_buf_reset(&b);
    assert_int_equal(spool_encode(&b, KAFKA_TOPIC_EVENTS, NULL, 0, NULL, 0, NULL, 0, 1), 0);
    assert_int_equal(spool_record_parse(b.data, b.len, &r), (long)b.len);
    assert_int_equal(r.key_len + r.value_len + r.n_headers, 0);
    /* The batch cap is honoured: nothing appended beyond it. */
    base_buf_t small;
    base_buf_init(&small, 40);
    assert_int_equal(
        spool_encode(&small, 0, "k", 1, "0123456789012345678901234567890", 31, NULL, 0, 1),
        SPOOL_E_TOO_LARGE);
    assert_int_equal(small.len, 0);
    base_buf_free(&small);
    base_buf_free(&b);
}

static void test_record_corrupt(void **state)
{
    (void)state;
    base_buf_t b;
    base_buf_init(&b, 4096);
    assert_int_equal(spool_encode(&b, 0, "key", 3, "value", 5, hdrs, 2, 7), 0);
    spool_record_t r;
    /* Torn: any prefix is "incomplete", never a record. */
    for (size_t n = 0; n < b.len; n++)
        assert_int_equal(spool_record_parse(b.data, n, &r), 0);
    /* Any flipped bit in the body fails the CRC. */
    for (size_t i = SPOOL_RECORD_HEAD; i < b.len; i++) {
        b.data[i] ^= 0x10;
        assert_int_equal(spool_record_parse(b.data, b.len, &r), SPOOL_E_CORRUPT);
        b.data[i] ^= 0x10;
    }
    /* A length below the fixed part or beyond the cap is corrupt at once. */
    unsigned char bad[8] = {4, 0, 0, 0, 0, 0, 0, 0};
    assert_int_equal(spool_record_parse(bad, sizeof bad, &r), SPOOL_E_CORRUPT);
    unsigned char huge[8] = {0xff, 0xff, 0xff, 0x7f, 0, 0, 0, 0};
    assert_int_equal(spool_record_parse(huge, sizeof huge, &r), SPOOL_E_CORRUPT);
    base_buf_free(&b);
}

static void test_scan(void **state)
{
    (void)state;
    base_buf_t b;
    segment_image(&b, 5);
    size_t valid = 0;
    assert_int_equal(spool_scan(b.data, b.len, &valid, NULL, NULL), 5);
    assert_int_equal(valid, b.len);
    /* Torn in the middle of record 5: four kept. */
    size_t torn = b.len - 3;
    assert_int_equal(spool_scan(b.data, torn, &valid, NULL, NULL), 4);
    assert_true(valid < torn);
    /* A bad header: nothing usable. */
    b.data[0] = 'X';
    assert_int_equal(spool_scan(b.data, b.len, &valid, NULL, NULL), 0);
    assert_int_equal(valid, 0);
    base_buf_free(&b);
}

static void write_file(const char *path, const void *p, size_t n)
{
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    assert_true(fd >= 0);
    assert_int_equal(base_write_all(fd, p, n), 0);
    close(fd);
}

static off_t file_size(const char *path)
{
    struct stat st;
    return stat(path, &st) == 0 ? st.st_size : -1;
}

/* kill -9 in the middle of a group commit: the last record is half written. Recovery keeps
 * the whole ones, cuts the file to them and counts the dropped bytes; a segment whose header is
 * bad is removed. No Kafka needed: the spool is only opened, not started. */
static void test_recover_torn_tail(void **state)
{
    (void)state;
    metrics_reset();
    char data[256], dir[300], seg1[400], seg2[400];
    tmp_dir(data, sizeof data);
    snprintf(dir, sizeof dir, "%s/spool", data);
    assert_int_equal(mkdir(dir, 0755), 0);
    snprintf(seg1, sizeof seg1, "%s/%016x.seg", dir, 1);
    snprintf(seg2, sizeof seg2, "%s/%016x.seg", dir, 2);
    base_buf_t b;
    segment_image(&b, 10);
    size_t cut = b.len - 7;
    write_file(seg1, b.data, cut);
    write_file(seg2, "garbage", 7);

    spool_opts_t o = {.data_dir = data, .max_bytes = 1 << 20, .segment_bytes = 1 << 16};
    spool_t *sp = NULL;
    char err[256];
    assert_int_equal(spool_open(&o, &sp, err, sizeof err), SPOOL_OK);
    spool_stats_t st;
    spool_stats(sp, &st);
    assert_int_equal(st.records, 9);
    size_t valid = 0;
    assert_int_equal(spool_scan(b.data, cut, &valid, NULL, NULL), 9);
    assert_int_equal(file_size(seg1), (off_t)valid);
    assert_int_equal(file_size(seg2), -1);
    assert_int_equal(st.bytes, valid);
    assert_int_equal(metrics_get(METRIC_SPOOL_TRUNCATED_BYTES), (cut - valid) + 7);
    assert_true(spool_busy(sp));
    spool_free(sp);
    base_buf_free(&b);
    rm_tree(data);
}

/* ---- the whole path against the mock cluster ------------------------------------------ */

typedef struct waiter {
    kafka_group_t g;
    atomic_bool done;
} waiter_t;

static void waiter_done_cb(kafka_group_t *g)
{
    atomic_store(&((waiter_t *)g->ud)->done, true);
}

static bool wait_for(atomic_bool *flag, int ms)
{
    for (int64_t dl = base_mono_ms() + ms; !atomic_load(flag) && base_mono_ms() < dl;)
        base_sleep_ms(5);
    return atomic_load(flag);
}

typedef struct fixture {
    mock_kafka_t mk;
    config_t cfg;
    kafka_out_t *ko;
    char data[256];
} fixture_t;

static int setup(void **state)
{
    fixture_t *f = calloc(1, sizeof *f);
    assert_non_null(f);
    assert_int_equal(mock_kafka_start(&f->mk), 0);
    f->cfg.delivery_timeout_ms = 1500;
    mock_kafka_cfg(&f->mk, &f->cfg);
    char err[256];
    assert_int_equal(kafka_out_new(&f->cfg, &f->ko, err, sizeof err), KAFKA_OK);
    tmp_dir(f->data, sizeof f->data);
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    fixture_t *f = *state;
    kafka_out_free(f->ko);
    mock_kafka_stop(&f->mk);
    rm_tree(f->data);
    metrics_reset();
    free(f);
    return 0;
}

static void test_spool_then_drain(void **state)
{
    fixture_t *f = *state;
    /* Connected first, as a running collector is. */
    assert_int_equal(kafka_out_produce(f->ko, KAFKA_TOPIC_PQL, "k", 1, "x", 1, NULL, 0, NULL), 0);
    assert_int_equal(kafka_out_flush(f->ko, MOCK_WAIT_MS), 0);
    assert_int_equal(rd_kafka_mock_broker_set_down(f->mk.mc, 1), 0);
    for (int64_t dl = base_mono_ms() + MOCK_WAIT_MS; !kafka_out_down(f->ko) && base_mono_ms() < dl;)
        base_sleep_ms(10);
    assert_true(kafka_out_down(f->ko));

    /* Small segments: the 3 batches of 20 records span several files. */
    spool_opts_t o = {
        .data_dir = f->data, .max_bytes = 1 << 20, .segment_bytes = 2048, .ko = f->ko};
    spool_t *sp = NULL;
    char err[256];
    assert_int_equal(spool_open(&o, &sp, err, sizeof err), SPOOL_OK);
    assert_false(spool_busy(sp));
    assert_int_equal(spool_start(sp), SPOOL_OK);
    enum { NB = 3, NR = 20 };
    waiter_t w[NB];
    base_buf_t recs[NB];
    spool_batch_t batch[NB];
    for (int j = 0; j < NB; j++) {
        base_buf_init(&recs[j], 1 << 16);
        for (int i = 0; i < NR; i++) {
            char v[32];
            int vl = snprintf(v, sizeof v, "v-%d-%02d", j, i);
            kafka_header_t h[1] = {{"message-id", v, (size_t)vl}};
            assert_int_equal(spool_encode(&recs[j], KAFKA_TOPIC_EVENTS, "same-key", 8, v,
                                          (size_t)vl, h, 1, base_wall_ms()),
                             0);
        }
        kafka_group_init(&w[j].g, waiter_done_cb, &w[j]);
        atomic_init(&w[j].done, false);
        batch[j] = (spool_batch_t){.records = &recs[j], .n_records = NR, .g = &w[j].g};
        assert_int_equal(spool_submit(sp, &batch[j]), SPOOL_OK);
        assert_true(spool_busy(sp));
        kafka_group_seal(&w[j].g);
        /* One group commit each: the segment rotates between them. */
        assert_true(wait_for(&w[j].done, MOCK_WAIT_MS));
    }
    for (int j = 0; j < NB; j++) {
        assert_int_equal(atomic_load(&w[j].g.delivered), NR);
        assert_int_equal(atomic_load(&w[j].g.failed), 0);
    }
    assert_int_equal(metrics_get(METRIC_SPOOL_APPENDED), NB * NR);
    assert_true(count_segments(f->data) >= 2);
    spool_stats_t st;
    spool_stats(sp, &st);
    assert_int_equal(st.records, NB * NR);
    assert_true(st.bytes > 0);
    /* Still down: nothing drained. */
    base_sleep_ms(300);
    assert_int_equal(metrics_get(METRIC_SPOOL_DRAINED), 0);

    assert_int_equal(rd_kafka_mock_broker_set_up(f->mk.mc, 1), 0);
    for (int64_t dl = base_mono_ms() + MOCK_WAIT_MS; spool_busy(sp) && base_mono_ms() < dl;)
        base_sleep_ms(20);
    assert_false(spool_busy(sp));
    assert_int_equal(metrics_get(METRIC_SPOOL_DRAINED), NB * NR);
    /* In spool order (one partition), exact values and headers, once each. */
    sup_kmsgs_t got;
    assert_int_equal(mock_consume(&f->mk, f->mk.events, NB * NR, &got), 0);
    size_t n = got.n;
    const sup_kmsg_t *msgs = got.msgs;
    assert_int_equal(n, NB * NR);
    for (int j = 0; j < NB; j++)
        for (int i = 0; i < NR; i++) {
            char v[32];
            snprintf(v, sizeof v, "v-%d-%02d", j, i);
            const sup_kmsg_t *m = &msgs[j * NR + i];
            assert_string_equal(m->value, v);
            assert_string_equal(m->key, "same-key");
            assert_string_equal(sup_kmsg_header(m, "message-id"), v);
        }
    sup_kmsgs_free(&got);
    /* Delivered segments are deleted (the active one by the writer's idle tick). */
    for (int64_t dl = base_mono_ms() + MOCK_WAIT_MS;
         count_segments(f->data) > 0 && base_mono_ms() < dl;)
        base_sleep_ms(20);
    assert_int_equal(count_segments(f->data), 0);
    spool_stats(sp, &st);
    assert_int_equal(st.bytes, 0);
    assert_true(st.oldest_age_s == 0);
    spool_stop(sp);
    assert_int_equal(spool_submit(sp, &batch[0]), SPOOL_E_STOPPED);
    spool_free(sp);
    for (int j = 0; j < NB; j++)
        base_buf_free(&recs[j]);
}

/* A segment file removed behind the spool's back (an operator, a disk repair): its records are
 * given up, logged and counted, and the spool does not stay busy (which would send every new
 * request to the spool for ever); the next segment is still drained. */
static void test_lost_segment_is_skipped(void **state)
{
    fixture_t *f = *state;
    assert_int_equal(kafka_out_produce(f->ko, KAFKA_TOPIC_PQL, "k", 1, "x", 1, NULL, 0, NULL), 0);
    assert_int_equal(kafka_out_flush(f->ko, MOCK_WAIT_MS), 0);
    assert_int_equal(rd_kafka_mock_broker_set_down(f->mk.mc, 1), 0);
    for (int64_t dl = base_mono_ms() + MOCK_WAIT_MS; !kafka_out_down(f->ko) && base_mono_ms() < dl;)
        base_sleep_ms(10);
    spool_opts_t o = {.data_dir = f->data, .max_bytes = 1 << 20, .segment_bytes = 1, .ko = f->ko};
    spool_t *sp = NULL;
    char err[256];
    assert_int_equal(spool_open(&o, &sp, err, sizeof err), SPOOL_OK);
    assert_int_equal(spool_start(sp), SPOOL_OK);
    waiter_t w[2];
    base_buf_t recs[2];
    spool_batch_t batch[2];
    for (int j = 0; j < 2; j++) {
        base_buf_init(&recs[j], 1 << 16);
        for (int i = 0; i < 10; i++) {
            char v[16];
            int vl = snprintf(v, sizeof v, "b%d-%d", j, i);
            assert_int_equal(spool_encode(&recs[j], 0, "k", 1, v, (size_t)vl, NULL, 0, 1), 0);
        }
        kafka_group_init(&w[j].g, waiter_done_cb, &w[j]);
        atomic_init(&w[j].done, false);
        batch[j] = (spool_batch_t){.records = &recs[j], .n_records = 10, .g = &w[j].g};
        assert_int_equal(spool_submit(sp, &batch[j]), SPOOL_OK);
        kafka_group_seal(&w[j].g);
        assert_true(wait_for(&w[j].done, MOCK_WAIT_MS)); /* segment_bytes 1: a file each */
    }
    assert_int_equal(count_segments(f->data), 2);
    char seg[400];
    snprintf(seg, sizeof seg, "%s/spool/%016x.seg", f->data, 1);
    assert_int_equal(unlink(seg), 0);
    assert_int_equal(rd_kafka_mock_broker_set_up(f->mk.mc, 1), 0);
    for (int64_t dl = base_mono_ms() + MOCK_WAIT_MS; spool_busy(sp) && base_mono_ms() < dl;)
        base_sleep_ms(20);
    assert_false(spool_busy(sp));
    assert_int_equal(metrics_get(METRIC_SPOOL_DRAINED), 10);
    assert_true(metrics_get(METRIC_SPOOL_TRUNCATED_BYTES) > 0);
    sup_kmsgs_t got;
    assert_int_equal(mock_consume(&f->mk, f->mk.events, 10, &got), 0);
    size_t n = got.n;
    const sup_kmsg_t *msgs = got.msgs;
    assert_int_equal(n, 10);
    assert_string_equal(msgs[0].value, "b1-0");
    sup_kmsgs_free(&got);
    spool_free(sp);
    for (int j = 0; j < 2; j++)
        base_buf_free(&recs[j]);
}

/* At spool.max_bytes, submit refuses (the caller answers 503) and the group is untouched. */
static void test_spool_full(void **state)
{
    fixture_t *f = *state;
    spool_opts_t o = {
        .data_dir = f->data, .max_bytes = 1 << 20, .segment_bytes = 1 << 20, .ko = f->ko};
    o.max_bytes = 4096;
    spool_t *sp = NULL;
    char err[256];
    assert_int_equal(spool_open(&o, &sp, err, sizeof err), SPOOL_OK);
    assert_int_equal(spool_start(sp), SPOOL_OK);
    assert_true(spool_has_room(sp));
    base_buf_t recs;
    base_buf_init(&recs, 1 << 16);
    char big[5000];
    memset(big, 'x', sizeof big);
    assert_int_equal(spool_encode(&recs, 0, "k", 1, big, sizeof big, NULL, 0, 1), 0);
    waiter_t w;
    kafka_group_init(&w.g, waiter_done_cb, &w);
    atomic_init(&w.done, false);
    spool_batch_t b = {.records = &recs, .n_records = 1, .g = &w.g};
    assert_int_equal(spool_submit(sp, &b), SPOOL_E_FULL);
    assert_int_equal(metrics_get(METRIC_SPOOL_FULL), 1);
    assert_false(spool_busy(sp));
    kafka_group_seal(&w.g);
    assert_true(atomic_load(&w.done));
    assert_int_equal(atomic_load(&w.g.delivered) + atomic_load(&w.g.failed), 0);
    spool_free(sp);
    base_buf_free(&recs);
}

/* A restart after part of the spool was delivered: the saved cursor skips those records. */
static void test_cursor_survives_restart(void **state)
{
    fixture_t *f = *state;
    char dir[300], seg[400];
    snprintf(dir, sizeof dir, "%s/spool", f->data);
    assert_int_equal(mkdir(dir, 0755), 0);
    snprintf(seg, sizeof seg, "%s/%016x.seg", dir, 5);
    base_buf_t b;
    segment_image(&b, 6);
    write_file(seg, b.data, b.len);
    /* Cursor after the first two records. */
    size_t valid = 0;
    spool_record_t r;
    long r0 = spool_record_parse(b.data + SPOOL_SEG_HEADER, b.len - SPOOL_SEG_HEADER, &r);
    long r1 = spool_record_parse(b.data + SPOOL_SEG_HEADER + r0, b.len, &r);
    assert_true(r0 > 0 && r1 > 0);
    spool__cursor_save(dir, 5, SPOOL_SEG_HEADER + (uint64_t)r0 + (uint64_t)r1);
    (void)valid;

    spool_opts_t o = {
        .data_dir = f->data, .max_bytes = 1 << 20, .segment_bytes = 1 << 20, .ko = f->ko};
    spool_t *sp = NULL;
    char err[256];
    assert_int_equal(spool_open(&o, &sp, err, sizeof err), SPOOL_OK);
    spool_stats_t st;
    spool_stats(sp, &st);
    assert_int_equal(st.records, 4);
    assert_int_equal(spool_start(sp), SPOOL_OK);
    for (int64_t dl = base_mono_ms() + MOCK_WAIT_MS; spool_busy(sp) && base_mono_ms() < dl;)
        base_sleep_ms(20);
    assert_false(spool_busy(sp));
    sup_kmsgs_t got;
    assert_int_equal(mock_consume(&f->mk, f->mk.events, 4, &got), 0);
    size_t n = got.n;
    const sup_kmsg_t *msgs = got.msgs;
    assert_int_equal(n, 4);
    assert_string_equal(msgs[0].value, "value-2");
    assert_string_equal(msgs[3].value, "value-5");
    sup_kmsgs_free(&got);
    spool_free(sp);
    base_buf_free(&b);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_record_round_trip),
        cmocka_unit_test(test_record_corrupt),
        cmocka_unit_test(test_scan),
        cmocka_unit_test(test_recover_torn_tail),
        cmocka_unit_test_setup_teardown(test_spool_then_drain, setup, teardown),
        cmocka_unit_test_setup_teardown(test_lost_segment_is_skipped, setup, teardown),
        cmocka_unit_test_setup_teardown(test_spool_full, setup, teardown),
        cmocka_unit_test_setup_teardown(test_cursor_survives_restart, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, mock_kafka_group_teardown);
}
