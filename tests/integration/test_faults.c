/*
 * test_faults.c — the durability promise under faults: Kafka down (503 + Retry-After within the
 * delivery timeout, then the client's retry is accepted and delivered exactly once) and graceful
 * shutdown (SIGTERM while requests are in flight: they complete, the process exits 0).
 */
#include "it_common.h"

#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define BASIC_WK_TEST "Authorization: Basic d2tfdGVzdDo=\r\n" /* "wk_test:" */

static long get_status(const sup_env_t *e, const char *path)
{
    sup_http_req_t get = {.method = "GET", .path = path, .timeout_ms = 5000};
    sup_http_resp_t r;
    sup_http_once(e->coll.port, &get, &r);
    long s = r.status;
    sup_http_resp_free(&r);
    return s;
}

/* Polls path until it answers want or timeout_ms passes; returns the last status. */
static long wait_status(const sup_env_t *e, const char *path, long want, int timeout_ms)
{
    int64_t deadline = base_mono_ms() + timeout_ms;
    long s;
    while ((s = get_status(e, path)) != want && base_mono_ms() < deadline)
        base_sleep_ms(100);
    return s;
}

static void test_broker_down_then_retry(void **state)
{
    /* Without the spool: with it, the outage request would get a 200 (test_spool.c). */
    sup_env_t *e = it_start(state, "kafka: {delivery_timeout: 2s}\nspool: {enabled: false}\n");
    it_ids_t ids = {0};
    it_post_good(e, "before", 5, &ids);

    json_t *events = json_array();
    it_ids_t retry_ids = {0};
    for (int i = 0; i < 10; i++) {
        char id[IT_ID_BYTES];
        sup_message_id(id, sizeof id, "down");
        json_array_append_new(events, sup_track(id, "down-user", "During Outage", i));
        it_ids_add(&retry_ids, id);
    }
    json_t *batch = sup_batch(events);
    base_buf_t body = {0};
    assert_int_equal(sup_json_dump(batch, &body), 0);
    json_decref(batch);

    assert_int_equal(sup_mock_cmd(&e->mock, "down 1", 5000), 0);
    int64_t t0 = base_mono_ms();
    sup_http_resp_t r;
    it_post(e, "/v1/batch", "application/json", NULL, body.data, body.len, &r);
    int64_t took = base_mono_ms() - t0;
    it_assert_error(&r, 503, NULL);
    char retry_after[32];
    assert_true(sup_http_header(&r, "Retry-After", retry_after, sizeof retry_after));
    assert_true(atoi(retry_after) >= 1);
    sup_http_resp_free(&r);
    /* Answered within the configured delivery timeout (2 s), plus scheduling slack. */
    fprintf(stderr, "503 after %lld ms\n", (long long)took);
    assert_true(took < 2000 + 2500);
    /* Readiness says so too, with a reason. */
    assert_int_equal(wait_status(e, "/readyz", 503, 8000), 503);

    assert_int_equal(sup_mock_cmd(&e->mock, "up 1", 5000), 0);
    /* The client retries the same batch (same messageIds) until it is accepted. */
    long status = 0;
    int attempts = 0;
    int64_t deadline = base_mono_ms() + 30000;
    while (base_mono_ms() < deadline) {
        attempts++;
        it_post(e, "/v1/batch", "application/json", NULL, body.data, body.len, &r);
        status = r.status;
        if (status == 200) {
            it_assert_ok(&r, 10, 0);
            sup_http_resp_free(&r);
            break;
        }
        it_assert_error(&r, 503, NULL);
        sup_http_resp_free(&r);
        base_sleep_ms(250);
    }
    fprintf(stderr, "retry accepted after %d attempt(s)\n", attempts);
    assert_int_equal(status, 200);
    assert_int_equal(wait_status(e, "/readyz", 200, 8000), 200);
    for (size_t i = 0; i < retry_ids.n; i++)
        it_ids_add(&ids, retry_ids.id[i]);
    it_assert_still_serving(e, &ids);
    /* Let any delivery still pending from the failed attempt land before counting. */
    base_sleep_ms(2500);
    it_assert_events_exactly(e, &ids, NULL);
    base_buf_free(&body);
}

/* SPEC §3 fail fast: once the collector knows every broker is down (and the spool is off),
 * a POST is answered 503 kafka_unavailable + Retry-After at once, not after
 * kafka.delivery_timeout (the spool's full case is the same branch: ingest.c cannot_take); after
 * the broker returns, the first 200 comes within ~1 s (reconnect.backoff.max.ms 500 plus the 250 ms
 * readiness probe). Prints both times. */
static void test_kafka_down_fails_fast(void **state)
{
    sup_env_t *e = it_start(state, "kafka: {delivery_timeout: 2s}\nspool: {enabled: false}\n");
    it_ids_t ids = {0};
    it_post_good(e, "before", 3, &ids);

    assert_int_equal(sup_mock_cmd(&e->mock, "down 1", 5000), 0);
    int64_t t_down = base_mono_ms();
    int64_t t_first = -1;
    int fast = 0;
    sup_http_resp_t r;
    /* Until the first fail-fast 503 (requests produced before librdkafka noticed wait for the
     * 2 s delivery timeout and get 503 unavailable), then ten more, each answered at once. */
    for (int64_t deadline = t_down + 10000; fast < 10 && base_mono_ms() < deadline;) {
        json_t *events = json_array();
        char id[IT_ID_BYTES];
        sup_message_id(id, sizeof id, "down");
        json_array_append_new(events, sup_track(id, "down-user", "During Outage", 0));
        json_t *batch = sup_batch(events);
        int64_t t0 = base_mono_ms();
        it_post_json(e, "/v1/batch", batch, &r);
        int64_t took = base_mono_ms() - t0;
        json_decref(batch);
        assert_int_equal(r.status, 503);
        const char *code = json_string_value(json_object_get(r.json, "error"));
        assert_non_null(code);
        char retry_after[32];
        assert_true(sup_http_header(&r, "Retry-After", retry_after, sizeof retry_after));
        assert_true(atoi(retry_after) >= 1);
        if (strcmp(code, "kafka_unavailable") == 0) {
            if (t_first < 0) t_first = base_mono_ms() - t_down;
            assert_true(took < 1000);
            fast++;
        } else {
            assert_string_equal(code, "unavailable");
        }
        sup_http_resp_free(&r);
    }
    fprintf(stderr, "first fail-fast 503 %lld ms after broker down\n", (long long)t_first);
    assert_int_equal(fast, 10);
    assert_true(t_first >= 0 && t_first < 3000);
    sup_http_req_t get = {.method = "GET", .path = "/metrics", .timeout_ms = 5000};
    assert_int_equal(sup_http_once(e->coll.port, &get, &r), 0);
    assert_non_null(strstr(r.body.data, "sluice_kafka_fail_fast_total "));
    assert_null(strstr(r.body.data, "sluice_kafka_fail_fast_total 0\n"));
    sup_http_resp_free(&r);

    assert_int_equal(sup_mock_cmd(&e->mock, "up 1", 5000), 0);
    int64_t t_up = base_mono_ms();
    long status = 0;
    for (int64_t deadline = t_up + 15000; status != 200 && base_mono_ms() < deadline;) {
        json_t *events = json_array();
        char id[IT_ID_BYTES];
        sup_message_id(id, sizeof id, "after");
        json_array_append_new(events, sup_track(id, "after-user", "After Outage", 0));
        json_t *batch = sup_batch(events);
        it_post_json(e, "/v1/batch", batch, &r);
        json_decref(batch);
        status = r.status;
        if (status == 200) it_ids_add(&ids, id);
        sup_http_resp_free(&r);
        if (status != 200) base_sleep_ms(20);
    }
    int64_t t_ok = base_mono_ms() - t_up;
    fprintf(stderr, "first 200 %lld ms after broker up\n", (long long)t_ok);
    assert_int_equal(status, 200);
    assert_true(t_ok < 3000);
    /* Nothing refused was written; what got a 200 is there once. */
    base_sleep_ms(2500);
    it_assert_events_exactly(e, &ids, NULL);
}

/* Sends a batch of 3 on a raw connection, split at `split` bytes of the body; returns fd. */
static int send_head_and_part(const sup_env_t *e, it_ids_t *ids, base_buf_t *body, size_t *split)
{
    json_t *events = json_array();
    for (int i = 0; i < 3; i++) {
        char id[IT_ID_BYTES];
        sup_message_id(id, sizeof id, "inflight");
        json_array_append_new(events, sup_track(id, "inflight-user", "In Flight", i));
        it_ids_add(ids, id);
    }
    json_t *batch = sup_batch(events);
    assert_int_equal(sup_json_dump(batch, body), 0);
    json_decref(batch);
    int fd = sup_tcp_connect(e->coll.port, 5000);
    assert_true(fd >= 0);
    char head[512];
    int n = snprintf(head, sizeof head,
                     "POST /v1/batch HTTP/1.1\r\nHost: x\r\n" BASIC_WK_TEST
                     "Content-Type: application/json\r\nContent-Length: %zu\r\n\r\n",
                     body->len);
    assert_int_equal(sup_tcp_send(fd, head, (size_t)n, 2000), 0);
    *split = body->len / 2;
    assert_int_equal(sup_tcp_send(fd, body->data, *split, 2000), 0);
    return fd;
}

static void assert_raw_ok(const base_buf_t *answer, int status, long accepted)
{
    if (status != 200)
        fprintf(stderr, "in-flight answer: %s\n", answer->data ? answer->data : "(none)");
    assert_int_equal(status, 200);
    const char *b = strstr(answer->data, "\r\n\r\n");
    assert_non_null(b);
    json_t *j = json_loads(b + 4, 0, NULL);
    assert_non_null(j);
    assert_int_equal(json_integer_value(json_object_get(j, "accepted")), accepted);
    json_decref(j);
}

static void test_sigterm_mid_body(void **state)
{
    sup_env_t *e = it_start(state, NULL);
    it_ids_t ids = {0};
    it_post_good(e, "before", 3, &ids);
    base_buf_t body = {0};
    size_t split = 0;
    int fd = send_head_and_part(e, &ids, &body, &split);
    base_sleep_ms(300);
    sup_collector_signal(&e->coll, SIGTERM);
    base_sleep_ms(300);
    /* Draining: no new work is taken (refused, or answered 503). */
    long s = get_status(e, "/v1/batch");
    assert_true(s == 0 || s == 503);
    assert_int_equal(sup_tcp_send(fd, body.data + split, body.len - split, 2000), 0);
    base_buf_t answer = {0};
    int status = sup_tcp_read_answer(fd, &answer, 10000);
    close(fd);
    assert_raw_ok(&answer, status, 3);
    base_buf_free(&answer);
    base_buf_free(&body);
    assert_int_equal(sup_collector_wait(&e->coll, 15000), 0);
    it_assert_events_exactly(e, &ids, NULL);
}

static void test_sigterm_waiting_for_kafka(void **state)
{
    sup_env_t *e = it_start(state, NULL);
    it_ids_t ids = {0};
    it_post_good(e, "before", 3, &ids);
    /* Every broker answer now takes 1.5 s: the request below waits for its acks. */
    assert_int_equal(sup_mock_cmd(&e->mock, "rtt 1 1500", 5000), 0);
    base_buf_t body = {0};
    size_t split = 0;
    int fd = send_head_and_part(e, &ids, &body, &split);
    assert_int_equal(sup_tcp_send(fd, body.data + split, body.len - split, 2000), 0);
    int64_t t0 = base_mono_ms();
    base_sleep_ms(300);
    sup_collector_signal(&e->coll, SIGTERM);
    base_buf_t answer = {0};
    int status = sup_tcp_read_answer(fd, &answer, 15000);
    /* The answer waited for the slow acks, so SIGTERM really came while it was in flight. */
    assert_true(base_mono_ms() - t0 >= 1000);
    close(fd);
    assert_raw_ok(&answer, status, 3);
    base_buf_free(&answer);
    base_buf_free(&body);
    assert_int_equal(sup_collector_wait(&e->coll, 15000), 0);
    assert_int_equal(sup_mock_cmd(&e->mock, "rtt 1 0", 5000), 0);
    it_assert_events_exactly(e, &ids, NULL);
}

static void test_client_leaves_while_waiting_for_kafka(void **state)
{
    sup_env_t *e = it_start(state, NULL);
    it_ids_t ids = {0};
    it_post_good(e, "before", 3, &ids);
    /* Slow acks: each request below is still waiting for Kafka when its client goes away. */
    assert_int_equal(sup_mock_cmd(&e->mock, "rtt 1 700", 5000), 0);
    for (int i = 0; i < 4; i++) {
        base_buf_t body = {0};
        size_t split = 0;
        int fd = send_head_and_part(e, &ids, &body, &split);
        assert_int_equal(sup_tcp_send(fd, body.data + split, body.len - split, 2000), 0);
        base_sleep_ms(50);
        close(fd);
        base_buf_free(&body);
    }
    assert_int_equal(sup_mock_cmd(&e->mock, "rtt 1 0", 5000), 0);
    /* The collector survives its clients leaving (the requests finish detached), and the events
     * it had accepted are still delivered, once each. */
    it_assert_still_serving(e, &ids);
    base_sleep_ms(1500);
    it_assert_events_exactly(e, &ids, NULL);
}

int main(int argc, char **argv)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_teardown(test_broker_down_then_retry, it_teardown),
        cmocka_unit_test_teardown(test_kafka_down_fails_fast, it_teardown),
        cmocka_unit_test_teardown(test_sigterm_mid_body, it_teardown),
        cmocka_unit_test_teardown(test_sigterm_waiting_for_kafka, it_teardown),
        cmocka_unit_test_teardown(test_client_leaves_while_waiting_for_kafka, it_teardown),
    };
    return it_run(argc, argv, "faults", tests, sizeof tests / sizeof tests[0]);
}
