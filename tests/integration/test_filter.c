/*
 * test_filter.c — edge filtering end to end (SPEC §5): drop/allow/sample counted in the answer's
 * "filtered" and in /metrics and absent from Kafka; strip/hash visible in the Kafka values; and
 * SIGHUP reload while load runs: a good config takes effect, a bad one is refused and logged and
 * the old rules stay, and no request fails meanwhile.
 */
#include "it_common.h"

#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define HASH_KEY "integration-test-hash-key-0123456789"

static long json_long(const json_t *j, const char *key)
{
    const json_t *v = json_object_get(j, key);
    assert_non_null(v);
    return (long)json_integer_value(v);
}

/* Posts body (JSON) and asserts 200 with the given accepted and filtered counts. */
static void post_expect(const sup_env_t *e, const char *body, long accepted, long filtered)
{
    sup_http_resp_t r;
    it_post(e, "/v1/batch", "application/json", NULL, body, strlen(body), &r);
    if (r.status != 200 || !r.json || json_long(r.json, "accepted") != accepted ||
        json_long(r.json, "filtered") != filtered)
        fprintf(stderr, "answer %ld: %s (want accepted %ld filtered %ld)\n", r.status,
                r.body.data ? r.body.data : "", accepted, filtered);
    assert_int_equal(r.status, 200);
    assert_int_equal(json_long(r.json, "accepted"), accepted);
    assert_int_equal(json_long(r.json, "filtered"), filtered);
    assert_int_equal(json_long(r.json, "rejected"), 0);
    sup_http_resp_free(&r);
}

/* GET /metrics into out (NUL-terminated). */
static void get_metrics(const sup_env_t *e, base_buf_t *out)
{
    sup_http_req_t get = {.method = "GET", .path = "/metrics"};
    sup_http_resp_t r;
    assert_int_equal(sup_http_once(e->coll.port, &get, &r), 0);
    assert_int_equal(r.status, 200);
    out->len = 0;
    assert_int_equal(sup_text_append(out, r.body.data, r.body.len), 0);
    sup_http_resp_free(&r);
}

/* "hmac-sha256:" + HMAC-SHA256(key, data) in hex, computed by the openssl command. */
static void openssl_hmac(const char *key, const char *data, char out[128])
{
    char cmd[512];
    snprintf(cmd, sizeof cmd, "printf %%s '%s' | openssl dgst -sha256 -hmac '%s' -r", data, key);
    FILE *p = popen(cmd, "r");
    assert_non_null(p);
    char line[256] = "";
    assert_non_null(fgets(line, sizeof line, p));
    assert_int_equal(pclose(p), 0);
    assert_true(strlen(line) > 64);
    snprintf(out, 128, "hmac-sha256:%.64s", line);
}

static void assert_metric(const base_buf_t *m, const char *line)
{
    if (!strstr(m->data, line))
        fprintf(stderr,
                "metrics lack \"%s\":\n"
                "%s\n",
                line, m->data);
    assert_non_null(strstr(m->data, line));
}

static void test_filter_drop_allow_sample(void **state)
{
    const char *yaml =
        "filters:\n"
        "  - {name: no_bots, drop: {user_agent: [\"*bot*\", \"*crawler*\"]}}\n"
        "  - {name: no_debug, drop: {event: \"debug.*\"}}\n"
        "  - {name: internal, drop: {property: {\"context.traits.email\": \"*@ourcompany.com\"}}}\n"
        "  - {name: web_only, allow: {type: [track, identify]}}\n"
        "  - {name: heartbeats, sample: {event: Heartbeat, keep: 0.5}}\n";
    sup_env_t *e = it_start(state, yaml);
    post_expect(
        e,
        "{\"batch\":[{\"type\":\"track\",\"messageId\":\"f-1\",\"userId\":\"u1\",\"event\":"
        "\"Signed Up\",\"context\":{\"userAgent\":\"Googlebot/2.1\"}},"
        "{\"type\":\"track\",\"messageId\":\"f-2\",\"userId\":\"u1\",\"event\":\"debug.trace\"},"
        "{\"type\":\"track\",\"messageId\":\"f-3\",\"userId\":\"u2\",\"event\":\"Signed "
        "Up\",\"context\":{\"traits\":{\"email\":\"ann@ourcompany.com\"}}},"
        "{\"type\":\"page\",\"messageId\":\"f-4\",\"userId\":\"u3\"},"
        "{\"type\":\"track\",\"messageId\":\"f-5\",\"userId\":\"u4\",\"event\":\"Signed "
        "Up\",\"context\":{\"userAgent\":\"Firefox\"}},"
        "{\"type\":\"identify\",\"messageId\":\"f-6\",\"userId\":\"u4\"}]}",
        2, 4);
    /* Sampling: 40 users x 3 heartbeats (in separate requests); a user is kept or dropped
     * whole; about half are kept. */
    long kept_total = 0, filtered_total = 0;
    for (int round = 0; round < 3; round++) {
        char body[8192];
        size_t off = (size_t)snprintf(body, sizeof body, "{\"batch\":[");
        for (int u = 0; u < 40; u++)
            off += (size_t)snprintf(body + off, sizeof body - off,
                                    "%s{\"type\":\"track\",\"messageId\":\"hb-%d-%d\",\"userId\":"
                                    "\"hb-user-%d\",\"event\":\"Heartbeat\"}",
                                    u ? "," : "", round, u, u);
        snprintf(body + off, sizeof body - off, "]}");
        sup_http_resp_t r;
        it_post(e, "/v1/batch", "application/json", NULL, body, strlen(body), &r);
        assert_int_equal(r.status, 200);
        kept_total += json_long(r.json, "accepted");
        filtered_total += json_long(r.json, "filtered");
        sup_http_resp_free(&r);
    }
    assert_int_equal(kept_total + filtered_total, 120);
    assert_int_equal(kept_total % 3, 0);
    assert_in_range(kept_total / 3, 8, 32); /* 20 expected; sd 3.2 */

    sup_kmsgs_t m;
    assert_int_equal(sup_consume(e->mock.bootstrap, "events", (size_t)(2 + kept_total), 10000, &m),
                     0);
    assert_int_equal(m.n, (size_t)(2 + kept_total));
    assert_int_equal(sup_kmsgs_count_id(&m, "f-5"), 1);
    assert_int_equal(sup_kmsgs_count_id(&m, "f-6"), 1);
    assert_int_equal(sup_kmsgs_count_id(&m, "f-1"), 0);
    assert_int_equal(sup_kmsgs_count_id(&m, "f-2"), 0);
    assert_int_equal(sup_kmsgs_count_id(&m, "f-3"), 0);
    assert_int_equal(sup_kmsgs_count_id(&m, "f-4"), 0);
    /* consistent per user: each user's three heartbeats are all there or all absent */
    for (int u = 0; u < 40; u++) {
        size_t seen = 0;
        for (int round = 0; round < 3; round++) {
            char id[32];
            snprintf(id, sizeof id, "hb-%d-%d", round, u);
            seen += sup_kmsgs_count_id(&m, id);
        }
        assert_true(seen == 0 || seen == 3);
    }
    sup_kmsgs_free(&m);

    base_buf_t met = {0};
    get_metrics(e, &met);
    assert_metric(&met, "sluice_filter_events_total{rule=\"no_bots\",action=\"drop\"} 1\n");
    assert_metric(&met, "sluice_filter_events_total{rule=\"no_debug\",action=\"drop\"} 1\n");
    assert_metric(&met, "sluice_filter_events_total{rule=\"internal\",action=\"drop\"} 1\n");
    assert_metric(&met, "sluice_filter_events_total{rule=\"web_only\",action=\"allow\"} 1\n");
    char line[128];
    snprintf(line, sizeof line,
             "sluice_filter_events_total{rule=\"heartbeats\",action=\"sample\"} %ld\n",
             filtered_total);
    assert_metric(&met, line);
    snprintf(line, sizeof line, "sluice_events_filtered_total %ld\n", 4 + filtered_total);
    assert_metric(&met, line);
    base_buf_free(&met);
}

static void test_filter_strip_hash_in_kafka(void **state)
{
    setenv("SLUICE_HASH_KEY", HASH_KEY, 1);
    const char *yaml =
        "filters:\n"
        "  - {name: scrub_pii, strip: [properties.email, traits.phone, context.ip]}\n"
        "  - {name: pseudonymize, hash: [traits.email, context.traits.email], key_env: "
        "SLUICE_HASH_KEY}\n";
    sup_env_t *e = it_start(state, yaml);
    post_expect(e,
                "{\"context\":{\"ip\":\"10.0.0.1\",\"locale\":\"de\"},\"batch\":[{\"type\":"
                "\"identify\",\"messageId\":\"s-1\",\"userId\":\"u1\",\"traits\":{\"email\":\"ann@"
                "example.com\",\"phone\":\"+1555\",\"name\":\"Ann\"}},"
                "{\"type\":\"track\",\"messageId\":\"s-2\",\"userId\":\"u1\",\"event\":\"Bought\","
                "\"properties\":{\"email\":\"ann@example.com\",\"sku\":\"X1\"},\"context\":{\"ip\":"
                "\"10.9.9.9\",\"traits\":{\"email\":\"ann@example.com\"}}}]}",
                2, 0);
    sup_kmsgs_t m;
    assert_int_equal(sup_consume(e->mock.bootstrap, "events", 2, 10000, &m), 0);
    assert_int_equal(m.n, 2);
    json_t *v1 = sup_kmsg_value(&m.msgs[sup_kmsgs_find(&m, "s-1")]);
    json_t *v2 = sup_kmsg_value(&m.msgs[sup_kmsgs_find(&m, "s-2")]);
    assert_non_null(v1);
    assert_non_null(v2);
    for (size_t i = 0; i < m.n; i++) {
        /* nothing scrubbed survives anywhere in the raw values */
        assert_null(memmem(m.msgs[i].value, m.msgs[i].value_len, "ann@example.com", 15));
        assert_null(memmem(m.msgs[i].value, m.msgs[i].value_len, "+1555", 5));
        assert_null(memmem(m.msgs[i].value, m.msgs[i].value_len, "10.0.0.1", 8));
        assert_null(memmem(m.msgs[i].value, m.msgs[i].value_len, "10.9.9.9", 8));
    }
    json_t *traits = json_object_get(v1, "traits");
    assert_null(json_object_get(traits, "phone"));
    assert_string_equal(json_string_value(json_object_get(traits, "name")), "Ann");
    const char *h1 = json_string_value(json_object_get(traits, "email"));
    assert_non_null(h1);
    /* HMAC-SHA256 under the key, as `openssl dgst -sha256 -hmac KEY` computes it */
    char want[128];
    openssl_hmac(HASH_KEY, "ann@example.com", want);
    assert_string_equal(h1, want);
    /* the batch context came with its ip stripped; locale kept */
    json_t *ctx1 = json_object_get(v1, "context");
    assert_null(json_object_get(ctx1, "ip"));
    assert_string_equal(json_string_value(json_object_get(ctx1, "locale")), "de");
    /* the same email hashes to the same value in another place of another event */
    json_t *ctx2 = json_object_get(v2, "context");
    const char *h2 = json_string_value(json_object_get(json_object_get(ctx2, "traits"), "email"));
    assert_non_null(h2);
    assert_string_equal(h1, h2);
    json_t *props = json_object_get(v2, "properties");
    assert_null(json_object_get(props, "email"));
    assert_string_equal(json_string_value(json_object_get(props, "sku")), "X1");
    json_decref(v1);
    json_decref(v2);
    sup_kmsgs_free(&m);

    base_buf_t met = {0};
    get_metrics(e, &met);
    assert_metric(&met, "sluice_filter_events_total{rule=\"scrub_pii\",action=\"strip\"} 2\n");
    assert_metric(&met, "sluice_filter_events_total{rule=\"pseudonymize\",action=\"hash\"} 2\n");
    base_buf_free(&met);
}

/* ---- SIGHUP under load ---- */

typedef struct loader {
    int port, id;
    atomic_int *stop;
    long requests, failures, filtered, accepted;
} loader_t;

/* Posts batches of three events (debug.*, test.*, ok) on one keep-alive connection until told
 * to stop (bounded by 600 requests). Every answer must be 200. */
static void *load_thread(void *arg)
{
    loader_t *l = arg;
    sup_http_t *h = sup_http_new(l->port);
    if (h == NULL) return NULL;
    const char *headers[] = {"Content-Type: application/json", NULL};
    for (int i = 0; i < 600 && !atomic_load(l->stop); i++) {
        char body[1024];
        snprintf(
            body, sizeof body,
            "{\"batch\":[{\"type\":\"track\",\"messageId\":\"L%d-%d-a\",\"userId\":\"u\",\"event\":"
            "\"debug.x\"},"
            "{\"type\":\"track\",\"messageId\":\"L%d-%d-b\",\"userId\":\"u\",\"event\":\"test.x\"},"
            "{\"type\":\"track\",\"messageId\":\"L%d-%d-c\",\"userId\":\"u\",\"event\":\"ok\"}]}",
            l->id, i, l->id, i, l->id, i);
        sup_http_req_t req = {.path = "/v1/batch",
                              .headers = headers,
                              .body = body,
                              .body_len = strlen(body),
                              .user = IT_KEY};
        sup_http_resp_t r;
        sup_http_do(h, &req, &r);
        l->requests++;
        if (r.status != 200 || r.json == NULL) {
            l->failures++;
        } else {
            l->filtered += (long)json_integer_value(json_object_get(r.json, "filtered"));
            l->accepted += (long)json_integer_value(json_object_get(r.json, "accepted"));
        }
        sup_http_resp_free(&r);
        base_sleep_ms(5);
    }
    sup_http_free(h);
    return NULL;
}

static void write_config(const sup_env_t *e, const char *yaml)
{
    char path[512];
    snprintf(path, sizeof path, "%s/sluice.yaml", e->dir);
    char tmp[520];
    snprintf(tmp, sizeof tmp, "%s.tmp", path);
    FILE *f = fopen(tmp, "w");
    assert_non_null(f);
    fputs(yaml, f);
    assert_int_equal(fclose(f), 0);
    assert_int_equal(rename(tmp, path), 0); /* the collector never reads half a file */
}

static void wait_log(const sup_env_t *e, const char *needle, int timeout_ms)
{
    int64_t until = base_mono_ms() + timeout_ms;
    while (!sup_collector_log_contains(&e->coll, needle) && base_mono_ms() < until)
        base_sleep_ms(20);
    if (!sup_collector_log_contains(&e->coll, needle)) sup_collector_dump_log(&e->coll, 4000);
    assert_true(sup_collector_log_contains(&e->coll, needle));
}

static void test_filter_sighup_reload_under_load(void **state)
{
    const char *rules_a = "filters:\n"
                          "  - {name: no_debug, drop: {event: \"debug.*\"}}\n";
    const char *rules_b = "threads: 4\n"
                          "filters:\n"
                          "  - {name: no_debug, drop: {event: \"debug.*\"}}\n"
                          "  - {name: no_test, drop: {event: \"test.*\"}}\n";
    const char *rules_bad = "filters:\n"
                            "  - {name: broken, drop: {event: \"[oops\"}}\n";
    sup_env_t *e = it_start(state, rules_a);

    atomic_int stop;
    atomic_init(&stop, 0);
    loader_t l[2] = {{.port = e->coll.port, .id = 0, .stop = &stop},
                     {.port = e->coll.port, .id = 1, .stop = &stop}};
    sup_http_free(sup_http_new(e->coll.port)); /* libcurl's global init, on this thread */
    pthread_t th[2];
    for (int i = 0; i < 2; i++)
        assert_int_equal(pthread_create(&th[i], NULL, load_thread, &l[i]), 0);

    base_sleep_ms(700);
    write_config(e, rules_b);
    sup_collector_signal(&e->coll, SIGHUP);
    wait_log(e, "\"config_reloaded\"", 5000);
    wait_log(e, "\"config_reload_restart_required\"", 2000); /* threads changed */
    base_sleep_ms(700);
    write_config(e, rules_bad);
    sup_collector_signal(&e->coll, SIGHUP);
    wait_log(e, "\"config_reload_failed\"", 5000);
    wait_log(e, "unterminated '[' in pattern", 1000);
    base_sleep_ms(700);
    atomic_store(&stop, 1);
    for (int i = 0; i < 2; i++)
        pthread_join(th[i], NULL);

    long requests = l[0].requests + l[1].requests;
    long failures = l[0].failures + l[1].failures;
    fprintf(stderr, "load during reloads: %ld requests, %ld failed, %ld filtered, %ld accepted\n",
            requests, failures, l[0].filtered + l[1].filtered, l[0].accepted + l[1].accepted);
    assert_true(requests >= 20);
    assert_int_equal(failures, 0);
    /* before the reload 1 of 3 was filtered, after it 2 of 3: both happened */
    long filtered = l[0].filtered + l[1].filtered;
    assert_true(filtered > requests && filtered < 2 * requests);

    /* Now (after the refused config) rules_b is still in force. */
    post_expect(e,
                "{\"batch\":[{\"type\":\"track\",\"messageId\":\"z-1\",\"userId\":\"u\",\"event\":"
                "\"debug.x\"},"
                "{\"type\":\"track\",\"messageId\":\"z-2\",\"userId\":\"u\",\"event\":\"test.x\"},"
                "{\"type\":\"track\",\"messageId\":\"z-3\",\"userId\":\"u\",\"event\":\"ok\"}]}",
                1, 2);
    base_buf_t met = {0};
    get_metrics(e, &met);
    assert_metric(&met, "sluice_config_reloads_total{result=\"ok\"} 1\n");
    assert_metric(&met, "sluice_config_reloads_total{result=\"failed\"} 1\n");
    /* no_debug counted every debug.x (one per request, all answered 200, plus z-1) across the
     * reloads: its counter survived the swap */
    char line[128];
    snprintf(line, sizeof line,
             "sluice_filter_events_total{rule=\"no_debug\",action=\"drop\"} %ld\n", requests + 1);
    assert_metric(&met, line);
    base_buf_free(&met);
}

/* A hash rule whose key is missing or shorter than 16 bytes: the collector refuses to start and
 * names the file, the line and the variable. */
static void test_filter_hash_key_refused(void **state)
{
    (void)state;
    unsetenv("SLUICE_IT_UNSET_KEY");
    setenv("SLUICE_IT_SHORT_KEY", "fifteen-bytes!!", 1);
    it_assert_refused(
        "filters:\n"
        "  - {name: scrub, strip: [context.ip]}\n"
        "  - {name: pseudonymize, hash: [traits.email], key_env: SLUICE_IT_UNSET_KEY}\n",
        NULL,
        "sluice.yaml:3: filters[2] (pseudonymize): key_env: environment variable "
        "SLUICE_IT_UNSET_KEY is not set",
        NULL);
    it_assert_refused(
        "filters:\n"
        "  - {name: pseudonymize, hash: [traits.email], key_env: SLUICE_IT_SHORT_KEY}\n",
        NULL,
        "sluice.yaml:2: filters[1] (pseudonymize): key_env: environment variable "
        "SLUICE_IT_SHORT_KEY must hold at least 16 bytes",
        NULL);
}

int main(int argc, char **argv)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_teardown(test_filter_drop_allow_sample, it_teardown),
        cmocka_unit_test_teardown(test_filter_strip_hash_in_kafka, it_teardown),
        cmocka_unit_test_teardown(test_filter_sighup_reload_under_load, it_teardown),
        cmocka_unit_test(test_filter_hash_key_refused),
    };
    return it_run(argc, argv, "filter", tests, sizeof tests / sizeof tests[0]);
}
