/*
 * test_json.c — SPEC §2's per-event semantics of JSON bodies through the real collector: what a
 * real client sends that used to fail a whole batch (a cut emoji, a big integer, a duplicate key)
 * now costs at most that one event, and the records carry what the warehouse expects. Each case
 * posts raw JSON text (the bytes a client sends), reads the answer, then reads the records back
 * from the events / events_rejected topics.
 */
#include "it_common.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* The value of a metric line "name value" in /metrics (fails the case when absent). */
static double metric(const sup_env_t *e, const char *name)
{
    sup_http_req_t get = {.method = "GET", .path = "/metrics", .timeout_ms = 5000};
    sup_http_resp_t r;
    assert_int_equal(sup_http_once(e->coll.port, &get, &r), 0);
    assert_int_equal(r.status, 200);
    char pat[128];
    snprintf(pat, sizeof pat, "\n%s ", name);
    const char *p = strstr(r.body.data, pat);
    if (p == NULL) fprintf(stderr, "metric %s not found\n", name);
    assert_non_null(p);
    double v = atof(p + strlen(pat));
    sup_http_resp_free(&r);
    return v;
}

/* Posts JSON text to /v1/batch. */
static void post_text(const sup_env_t *e, const char *text, sup_http_resp_t *r)
{
    it_post(e, "/v1/batch", "application/json", NULL, text, strlen(text), r);
}

/* The decoded record with messageId id in msgs (fails when absent). New ref. */
static json_t *record(const sup_kmsgs_t *msgs, const char *id)
{
    long i = sup_kmsgs_find(msgs, id);
    if (i < 0) fprintf(stderr, "no record with messageId %s\n", id);
    assert_true(i >= 0);
    json_t *v = sup_kmsg_value(&msgs->msgs[i]);
    assert_non_null(v);
    return v;
}

#define TRACK(id, extra)                                                                           \
    "{\"type\":\"track\",\"messageId\":\"" id "\",\"userId\":\"json-user\",\"event\":\"E\"" extra  \
    "}"

/* A cut emoji ("\ud83d", what JavaScript's substring leaves) in one of 20 events: every event is
 * accepted, the string holds U+FFFD, and the repair is counted. */
static void test_json_lone_surrogate(void **state)
{
    sup_env_t *e = it_start(state, NULL);
    it_ids_t ids = {0};
    base_buf_t body = {0};
    assert_int_equal(sup_text_append(&body, "{\"batch\":[", 10), 0);
    for (int i = 0; i < 20; i++) {
        char ev[256];
        int n = snprintf(ev, sizeof ev,
                         "%s{\"type\":\"track\",\"messageId\":\"sur-%02d\",\"userId\":\"u\","
                         "\"event\":\"E\",\"properties\":{\"title\":\"%s\"}}",
                         i ? "," : "", i, i == 7 ? "party \\ud83d" : "plain");
        assert_int_equal(sup_text_append(&body, ev, (size_t)n), 0);
        char id[16];
        snprintf(id, sizeof id, "sur-%02d", i);
        it_ids_add(&ids, id);
    }
    assert_int_equal(sup_text_append(&body, "]}", 2), 0);
    double before = metric(e, "sluice_json_lone_surrogates_total");
    sup_http_resp_t r;
    it_post(e, "/v1/batch", "application/json", NULL, body.data, body.len, &r);
    it_assert_ok(&r, 20, 0);
    sup_http_resp_free(&r);
    base_buf_free(&body);
    assert_true(metric(e, "sluice_json_lone_surrogates_total") == before + 1);

    sup_kmsgs_t m;
    it_assert_events_exactly(e, &ids, &m);
    json_t *v = record(&m, "sur-07");
    assert_string_equal(
        json_string_value(json_object_get(json_object_get(v, "properties"), "title")),
        "party \xef\xbf\xbd");
    json_decref(v);
    sup_kmsgs_free(&m);
}

/* An integer beyond 64 bits is kept as a double; the batch and the event are fine. */
static void test_json_big_integer(void **state)
{
    sup_env_t *e = it_start(state, NULL);
    it_ids_t ids = {0};
    double before = metric(e, "sluice_json_big_integers_total");
    sup_http_resp_t r;
    post_text(e,
              "{\"batch\":[" TRACK("big-1",
                                   ",\"properties\":{\"n\":123456789012345678901234,"
                                   "\"max\":18446744073709551615}") "," TRACK("big-2", "") "]}",
              &r);
    it_assert_ok(&r, 2, 0);
    sup_http_resp_free(&r);
    it_ids_add(&ids, "big-1");
    it_ids_add(&ids, "big-2");
    assert_true(metric(e, "sluice_json_big_integers_total") == before + 1);
    sup_kmsgs_t m;
    it_assert_events_exactly(e, &ids, &m);
    json_t *v = record(&m, "big-1");
    json_t *p = json_object_get(v, "properties");
    assert_true(json_is_real(json_object_get(p, "n")));
    assert_true(json_real_value(json_object_get(p, "n")) == 123456789012345678901234.0);
    /* UINT64_MAX still fits 64 bits: an integer in the record (the unit tests check its value;
     * the test's msgpack decoder maps integers to jansson's int64). */
    assert_true(json_is_integer(json_object_get(p, "max")));
    json_decref(v);
    sup_kmsgs_free(&m);
}

/* A duplicate key inside one JSON event rejects that event alone (it used to be a 400 for the
 * whole batch): the others are accepted, the bad one is listed and on events_rejected. */
static void test_json_duplicate_key(void **state)
{
    sup_env_t *e = it_start(state, NULL);
    it_ids_t ids = {0};
    sup_http_resp_t r;
    post_text(e,
              "{\"batch\":[" TRACK("dup-1", "") "," TRACK(
                  "dup-2", ",\"properties\":{\"a\":1,\"a\":2}") "," TRACK("dup-3", "") "]}",
              &r);
    it_assert_ok(&r, 2, 1);
    it_assert_event_error(&r, 1, "dup-2", "duplicate_key");
    sup_http_resp_free(&r);
    it_ids_add(&ids, "dup-1");
    it_ids_add(&ids, "dup-3");
    it_assert_events_exactly(e, &ids, NULL);
    sup_kmsgs_t m;
    assert_int_equal(sup_consume(e->mock.bootstrap, "events_rejected", 1, 10000, &m), 0);
    assert_int_equal(m.n, 1);
    json_t *v = sup_kmsg_value(&m.msgs[0]);
    assert_non_null(v);
    assert_string_equal(json_string_value(json_object_get(v, "error")), "duplicate_key");
    json_decref(v);
    sup_kmsgs_free(&m);
}

int main(int argc, char **argv)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_teardown(test_json_lone_surrogate, it_teardown),
        cmocka_unit_test_teardown(test_json_big_integer, it_teardown),
        cmocka_unit_test_teardown(test_json_duplicate_key, it_teardown),
    };
    return it_run(argc, argv, "json", tests, sizeof tests / sizeof tests[0]);
}
