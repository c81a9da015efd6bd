/*
 * test_dedup.c — exact dedup through HTTP and Kafka (SPEC §3, §5): duplicates inside a batch,
 * across batches, connections and encodings are counted in the answer and reach Kafka once; the
 * key includes the source; a batch whose delivery failed is forgotten so its retry is delivered
 * (once); copies sent concurrently are delivered once; the state survives a restart (snapshot in
 * --data-dir); dedup.window 0 turns it off.
 */
#include "it_common.h"

#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define BASIC_WK_TEST "Authorization: Basic d2tfdGVzdDo=\r\n" /* "wk_test:" */

/* A JSON batch of the given message ids (track events). */
static void batch_of(const char *const *ids, size_t n, base_buf_t *out)
{
    json_t *events = json_array();
    for (size_t i = 0; i < n; i++)
        json_array_append_new(events, sup_track(ids[i], "dedup-user", "Dedup Event", (int)i));
    json_t *b = sup_batch(events);
    assert_int_equal(sup_json_dump(b, out), 0);
    json_decref(b);
}

static long jint(const sup_http_resp_t *r, const char *key)
{
    assert_non_null(r->json);
    const json_t *v = json_object_get(r->json, key);
    assert_true(json_is_integer(v));
    return (long)json_integer_value(v);
}

/* Asserts a 200 with these counts. */
static void assert_counts(const sup_http_resp_t *r, long accepted, long duplicates)
{
    if (r->status != 200 || jint(r, "accepted") != accepted || jint(r, "duplicates") != duplicates)
        fprintf(stderr, "want 200 accepted %ld duplicates %ld, got %ld: %s\n", accepted, duplicates,
                r->status, r->body.data ? r->body.data : "");
    assert_int_equal(r->status, 200);
    assert_int_equal(jint(r, "accepted"), accepted);
    assert_int_equal(jint(r, "duplicates"), duplicates);
    assert_int_equal(jint(r, "rejected"), 0);
}

static void post_ids(const sup_env_t *e, const char *const *ids, size_t n, sup_http_resp_t *r)
{
    base_buf_t body = {0};
    batch_of(ids, n, &body);
    it_post(e, "/v1/batch", "application/json", NULL, body.data, body.len, r);
    base_buf_free(&body);
}

/* The value of a metric line "name value" in /metrics, or -1 when absent. */
static double metric(const sup_env_t *e, const char *name)
{
    sup_http_req_t get = {.method = "GET", .path = "/metrics", .timeout_ms = 5000};
    sup_http_resp_t r;
    assert_int_equal(sup_http_once(e->coll.port, &get, &r), 0);
    assert_int_equal(r.status, 200);
    double v = -1;
    char pat[128];
    snprintf(pat, sizeof pat, "\n%s ", name);
    const char *p = strstr(r.body.data, pat);
    if (p != NULL) v = atof(p + strlen(pat));
    sup_http_resp_free(&r);
    return v;
}

static void test_dedup_within_and_across_batches(void **state)
{
    sup_env_t *e = it_start(state, NULL);
    it_ids_t ids = {0};
    char a[IT_ID_BYTES], b[IT_ID_BYTES], c[IT_ID_BYTES];
    sup_message_id(a, sizeof a, "dd");
    sup_message_id(b, sizeof b, "dd");
    sup_message_id(c, sizeof c, "dd");
    it_ids_add(&ids, a);
    it_ids_add(&ids, b);
    it_ids_add(&ids, c);

    sup_http_resp_t r;
    /* Inside one batch: the later copies are duplicates, not errors. */
    const char *first[] = {a, a, b, a};
    post_ids(e, first, 4, &r);
    assert_counts(&r, 2, 2);
    assert_int_equal(json_array_size(json_object_get(r.json, "errors")), 0);
    sup_http_resp_free(&r);
    /* Across batches (each it_post is a new connection). */
    const char *second[] = {b, c, a};
    post_ids(e, second, 3, &r);
    assert_counts(&r, 1, 2);
    sup_http_resp_free(&r);
    /* The same events as msgpack + zstd on a keep-alive connection: all duplicates. */
    json_t *events = json_array();
    json_array_append_new(events, sup_track(a, "dedup-user", "Dedup Event", 0));
    json_array_append_new(events, sup_track(c, "dedup-user", "Dedup Event", 1));
    json_t *batch = sup_batch(events);
    base_buf_t mp = {0}, z = {0};
    assert_int_equal(sup_msgpack_encode(batch, &mp), 0);
    assert_int_equal(sup_zstd(mp.data, mp.len, &z), 0);
    json_decref(batch);
    sup_http_t *h = sup_http_new(e->coll.port);
    const char *hdrs[] = {"Content-Type: application/msgpack", "Content-Encoding: zstd", NULL};
    sup_http_req_t req = {
        .path = "/v1/batch", .headers = hdrs, .body = z.data, .body_len = z.len, .user = IT_KEY};
    for (int i = 0; i < 2; i++) {
        assert_int_equal(sup_http_do(h, &req, &r), 0);
        assert_counts(&r, 0, 2);
        sup_http_resp_free(&r);
    }
    sup_http_free(h);
    base_buf_free(&mp);
    base_buf_free(&z);
    /* A single-event call with a known id. */
    json_t *one = sup_track(b, "dedup-user", "Dedup Event", 9);
    it_post_json(e, "/v1/track", one, &r);
    json_decref(one);
    assert_counts(&r, 0, 1);
    sup_http_resp_free(&r);

    assert_true(metric(e, "sluice_events_duplicate_total") == 9);
    assert_true(metric(e, "sluice_dedup_entries") == 3);
    assert_true(metric(e, "sluice_dedup_bytes") > 0);
    assert_true(metric(e, "sluice_dedup_window_seconds") >= 0);
    assert_true(metric(e, "sluice_dedup_evictions_total") == 0);
    it_assert_events_exactly(e, &ids, NULL);
}

/* The key is (source, messageId): another source's event with the same id is not a duplicate. */
static void test_dedup_key_includes_source(void **state)
{
    sup_env_t *e = it_start(state, NULL);
    char a[IT_ID_BYTES];
    sup_message_id(a, sizeof a, "src");
    const char *ids[] = {a};
    base_buf_t body = {0};
    batch_of(ids, 1, &body);
    const char *hdrs[] = {"Content-Type: application/json", NULL};
    const char *users[] = {"wk_test", "wk_web", "wk_test", "wk_web"};
    const long want_accepted[] = {1, 1, 0, 0};
    for (int i = 0; i < 4; i++) {
        sup_http_req_t req = {.path = "/v1/batch",
                              .headers = hdrs,
                              .body = body.data,
                              .body_len = body.len,
                              .user = users[i]};
        sup_http_resp_t r;
        sup_http_once(e->coll.port, &req, &r);
        assert_counts(&r, want_accepted[i], 1 - want_accepted[i]);
        sup_http_resp_free(&r);
    }
    base_buf_free(&body);
    sup_kmsgs_t m;
    assert_int_equal(sup_consume(e->mock.bootstrap, "events", 2, 10000, &m), 0);
    assert_int_equal(m.n, 2);
    assert_int_equal(sup_kmsgs_count_id(&m, a), 2);
    sup_kmsgs_free(&m);
}

static void test_dedup_retry_after_delivery_failure(void **state)
{
    /* Spool off: the first attempt must fail (with the spool it would be a 200). */
    sup_env_t *e = it_start(state, "kafka: {delivery_timeout: 2s}\nspool: {enabled: false}\n");
    it_ids_t ids = {0};
    const char *idp[8];
    char idbuf[8][IT_ID_BYTES];
    for (int i = 0; i < 8; i++) {
        sup_message_id(idbuf[i], sizeof idbuf[i], "retry");
        idp[i] = idbuf[i];
        it_ids_add(&ids, idbuf[i]);
    }
    base_buf_t body = {0};
    batch_of(idp, 8, &body);

    assert_int_equal(sup_mock_cmd(&e->mock, "down 1", 5000), 0);
    sup_http_resp_t r;
    it_post(e, "/v1/batch", "application/json", NULL, body.data, body.len, &r);
    it_assert_error(&r, 503, NULL);
    sup_http_resp_free(&r);
    /* Stay down past the message timeout, so the first attempt's delivery really failed. */
    base_sleep_ms(3000);
    assert_int_equal(sup_mock_cmd(&e->mock, "up 1", 5000), 0);

    long status = 0;
    int attempts = 0;
    int64_t deadline = base_mono_ms() + 30000;
    while (base_mono_ms() < deadline) {
        attempts++;
        it_post(e, "/v1/batch", "application/json", NULL, body.data, body.len, &r);
        status = r.status;
        if (status == 200) {
            /* The failed attempt was forgotten: the retry is accepted, not a duplicate. */
            assert_counts(&r, 8, 0);
            sup_http_resp_free(&r);
            break;
        }
        it_assert_error(&r, 503, NULL);
        sup_http_resp_free(&r);
        base_sleep_ms(250);
    }
    fprintf(stderr, "retry accepted after %d attempt(s)\n", attempts);
    assert_int_equal(status, 200);
    /* Now it is remembered. */
    it_post(e, "/v1/batch", "application/json", NULL, body.data, body.len, &r);
    assert_counts(&r, 0, 8);
    sup_http_resp_free(&r);
    base_buf_free(&body);
    base_sleep_ms(2500); /* anything still pending from the failed attempt lands before counting */
    it_assert_events_exactly(e, &ids, NULL);
}

/* Reads one answer from fd; returns its status and fills accepted/duplicates (-1 when absent). */
static int read_answer(int fd, long *accepted, long *duplicates, int *retry_after)
{
    base_buf_t ans = {0};
    int status = sup_tcp_read_answer(fd, &ans, 15000);
    *accepted = *duplicates = -1;
    *retry_after = 0;
    if (ans.data != NULL) {
        const char *ra = strstr(ans.data, "Retry-After: ");
        if (ra != NULL) *retry_after = atoi(ra + 13);
        const char *b = strstr(ans.data, "\r\n\r\n");
        json_t *j = b ? json_loads(b + 4, 0, NULL) : NULL;
        if (j != NULL && status == 200) {
            *accepted = (long)json_integer_value(json_object_get(j, "accepted"));
            *duplicates = (long)json_integer_value(json_object_get(j, "duplicates"));
        }
        json_decref(j);
    }
    base_buf_free(&ans);
    return status;
}

/* Copies of a batch while the first is still being delivered (Kafka acks slowed to 800 ms): a
 * request made only of such copies is answered 503 + Retry-After: 1 at once (a 200 could lose
 * them if that delivery failed); a request mixing new events and such copies produces only its
 * new events and answers 200 when the copies are delivered by then (else 503, and its retry is
 * all duplicates). Every event reaches Kafka once. */
static void test_dedup_concurrent_copies(void **state)
{
    sup_env_t *e = it_start(state, NULL);
    it_ids_t ids = {0};
    const char *idp[5];
    char idbuf[5][IT_ID_BYTES], fresh[IT_ID_BYTES];
    for (int i = 0; i < 5; i++) {
        sup_message_id(idbuf[i], sizeof idbuf[i], "conc");
        idp[i] = idbuf[i];
        it_ids_add(&ids, idbuf[i]);
    }
    sup_message_id(fresh, sizeof fresh, "conc-new");
    it_ids_add(&ids, fresh);
    base_buf_t body = {0}, mixed = {0};
    batch_of(idp, 5, &body);
    const char *mix_ids[] = {fresh, idp[0], idp[3]};
    batch_of(mix_ids, 3, &mixed);
    assert_int_equal(sup_mock_cmd(&e->mock, "rtt 1 800", 5000), 0);
    enum { N = 5 }; /* 0: the first; 1..3: copies; 4: mixed */
    int fds[N];
    for (int i = 0; i < N; i++) {
        fds[i] = sup_tcp_connect(e->coll.port, 5000);
        assert_true(fds[i] >= 0);
    }
    for (int i = 0; i < N; i++) {
        const base_buf_t *b = i == 4 ? &mixed : &body;
        char head[512];
        int hn = snprintf(head, sizeof head,
                          "POST /v1/batch HTTP/1.1\r\nHost: x\r\n" BASIC_WK_TEST
                          "Content-Type: application/json\r\nContent-Length: %zu\r\n\r\n",
                          b->len);
        assert_int_equal(sup_tcp_send(fds[i], head, (size_t)hn, 2000), 0);
        assert_int_equal(sup_tcp_send(fds[i], b->data, b->len, 2000), 0);
        if (i == 0) base_sleep_ms(200); /* the first is reserved and waiting for its acks */
    }
    long acc, dup;
    int ra;
    assert_int_equal(read_answer(fds[0], &acc, &dup, &ra), 200);
    assert_int_equal(acc, 5);
    assert_int_equal(dup, 0);
    for (int i = 1; i <= 3; i++) {
        assert_int_equal(read_answer(fds[i], &acc, &dup, &ra), 503);
        assert_int_equal(ra, 1);
    }
    int st = read_answer(fds[4], &acc, &dup, &ra);
    fprintf(stderr, "mixed batch answered %d (accepted %ld, duplicates %ld)\n", st, acc, dup);
    if (st == 200) {
        assert_int_equal(acc, 1);
        assert_int_equal(dup, 2);
    } else {
        assert_int_equal(st, 503);
        assert_int_equal(ra, 1);
    }
    for (int i = 0; i < N; i++)
        close(fds[i]);
    assert_true(metric(e, "sluice_dedup_in_flight_total") >= 3);
    assert_int_equal(sup_mock_cmd(&e->mock, "rtt 1 0", 5000), 0);
    /* The clients' retries: all duplicates now (the mixed one's new event was delivered and
     * remembered even when its answer was 503). */
    sup_http_resp_t r;
    for (int i = 1; i <= 3; i++) {
        it_post(e, "/v1/batch", "application/json", NULL, body.data, body.len, &r);
        assert_counts(&r, 0, 5);
        sup_http_resp_free(&r);
    }
    it_post(e, "/v1/batch", "application/json", NULL, mixed.data, mixed.len, &r);
    assert_counts(&r, 0, 3);
    sup_http_resp_free(&r);
    base_buf_free(&body);
    base_buf_free(&mixed);
    it_assert_events_exactly(e, &ids, NULL);
}

static void test_dedup_survives_restart(void **state)
{
    sup_env_t *e = it_start(state, "dedup: {window: 1h, snapshot_interval: 1h}\n");
    it_ids_t ids = {0};
    const char *idp[20];
    char idbuf[20][IT_ID_BYTES];
    for (int i = 0; i < 20; i++) {
        sup_message_id(idbuf[i], sizeof idbuf[i], "restart");
        idp[i] = idbuf[i];
        it_ids_add(&ids, idbuf[i]);
    }
    sup_http_resp_t r;
    post_ids(e, idp, 20, &r);
    assert_counts(&r, 20, 0);
    sup_http_resp_free(&r);
    /* SIGTERM: the final snapshot is written (the periodic one is an hour away). */
    assert_int_equal(sup_collector_stop(&e->coll, 15000), 0);
    assert_true(sup_collector_log_contains(&e->coll, "dedup_snapshot_written"));
    const char *keys[] = {"wk_test=test", "wk_web=web", NULL};
    assert_int_equal(sup_collector_start(&e->coll, getenv("SLUICE_COLLECTOR"), e->dir,
                                         e->mock.bootstrap, keys,
                                         "dedup: {window: 1h, snapshot_interval: 1h}\n", 15000),
                     0);
    assert_true(sup_collector_log_contains(&e->coll, "dedup_snapshot_loaded"));
    assert_true(metric(e, "sluice_dedup_entries") == 20);
    /* Same ids after the restart, plus two new ones. */
    char n1[IT_ID_BYTES], n2[IT_ID_BYTES];
    sup_message_id(n1, sizeof n1, "restart-new");
    sup_message_id(n2, sizeof n2, "restart-new");
    it_ids_add(&ids, n1);
    it_ids_add(&ids, n2);
    const char *again[] = {idp[0], n1, idp[7], idp[19], n2};
    post_ids(e, again, 5, &r);
    assert_counts(&r, 2, 3);
    sup_http_resp_free(&r);
    it_assert_events_exactly(e, &ids, NULL);
}

/* A corrupt snapshot is logged and dedup starts empty; the collector serves normally. */
static void test_dedup_corrupt_snapshot_starts_empty(void **state)
{
    sup_env_t *e = it_start(state, NULL);
    it_ids_t ids = {0};
    it_post_good(e, "corrupt", 3, &ids);
    assert_int_equal(sup_collector_stop(&e->coll, 15000), 0);
    char path[600];
    snprintf(path, sizeof path, "%s/data/dedup.snapshot", e->dir);
    FILE *f = fopen(path, "r+b");
    assert_non_null(f);
    assert_int_equal(fseek(f, 30, SEEK_SET), 0);
    fputc(0x5a, f);
    fclose(f);
    const char *keys[] = {"wk_test=test", "wk_web=web", NULL};
    assert_int_equal(sup_collector_start(&e->coll, getenv("SLUICE_COLLECTOR"), e->dir,
                                         e->mock.bootstrap, keys, NULL, 15000),
                     0);
    assert_true(sup_collector_log_contains(&e->coll, "dedup_snapshot_ignored"));
    assert_true(metric(e, "sluice_dedup_entries") == 0);
    it_assert_still_serving(e, &ids);
}

/* dedup.window: 0 turns dedup off: copies are delivered as sent. */
static void test_dedup_disabled(void **state)
{
    sup_env_t *e = it_start(state, "dedup: {window: 0s}\n");
    char a[IT_ID_BYTES];
    sup_message_id(a, sizeof a, "off");
    const char *ids[] = {a, a};
    sup_http_resp_t r;
    post_ids(e, ids, 2, &r);
    assert_counts(&r, 2, 0);
    sup_http_resp_free(&r);
    assert_true(metric(e, "sluice_dedup_entries") == -1);
    sup_kmsgs_t m;
    assert_int_equal(sup_consume(e->mock.bootstrap, "events", 2, 10000, &m), 0);
    assert_int_equal(sup_kmsgs_count_id(&m, a), 2);
    sup_kmsgs_free(&m);
}

int main(int argc, char **argv)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_teardown(test_dedup_within_and_across_batches, it_teardown),
        cmocka_unit_test_teardown(test_dedup_key_includes_source, it_teardown),
        cmocka_unit_test_teardown(test_dedup_retry_after_delivery_failure, it_teardown),
        cmocka_unit_test_teardown(test_dedup_concurrent_copies, it_teardown),
        cmocka_unit_test_teardown(test_dedup_survives_restart, it_teardown),
        cmocka_unit_test_teardown(test_dedup_corrupt_snapshot_starts_empty, it_teardown),
        cmocka_unit_test_teardown(test_dedup_disabled, it_teardown),
    };
    return it_run(argc, argv, "dedup", tests, sizeof tests / sizeof tests[0]);
}
