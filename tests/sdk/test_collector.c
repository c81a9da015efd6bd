/*
 * test_collector.c — libsluice against the REAL sluice-collector (started by the test over
 * loopback, producing to librdkafka's mock cluster hosted by tests/support's helper), through the
 * default libcurl transport: every event sent arrives in the `events` topic exactly once with the
 * right fields; a collector that is down at first is retried until it comes up (no loss, no
 * duplicates thanks to the kept messageIds).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "sluice.h"
#include "support.h"

#define N_TRACK 120

static const char *jstr(json_t *obj, const char *key)
{
    json_t *v = json_object_get(obj, key);
    return json_is_string(v) ? json_string_value(v) : NULL;
}

static void test_events_arrive_exactly_once(void **state)
{
    (void)state;
    sup_env_t env;
    assert_int_equal(sup_env_start(&env, NULL), 0);

    char endpoint[64];
    snprintf(endpoint, sizeof endpoint, "http://127.0.0.1:%d", env.coll.port);
    sluice_config cfg;
    sluice_config_init(&cfg, SLUICE_CONFIG_VERSION);
    cfg.endpoint = endpoint;
    cfg.write_key = "wk_test";
    cfg.batch_size = 50; /* several requests over one kept-alive connection */
    cfg.retry_base_ms = 50;
    cfg.retry_max_ms = 500;
    sluice_client *c;
    assert_int_equal(sluice_client_new(&c, &cfg), SLUICE_OK);

    sluice_props *p = sluice_props_new();
    char id[64];
    for (int i = 0; i < N_TRACK; i++) {
        sluice_props_clear(p);
        sluice_props_set_str(p, "plan", "pro");
        sluice_props_set_int(p, "i", i);
        sluice_props_begin_map(p, "nested");
        sluice_props_set_bool(p, "ok", 1);
        sluice_props_end(p);
        snprintf(id, sizeof id, "sdk-it-%d", i);
        sluice_event ev = {.type = "track",
                           .user_id = "sdk-user-1",
                           .event = "Report Viewed",
                           .message_id = id,
                           .properties = p};
        assert_int_equal(sluice_send(c, &ev), SLUICE_OK);
    }
    sluice_props_clear(p);
    sluice_props_set_str(p, "email", "a@example.com");
    sluice_event idf = {
        .type = "identify", .user_id = "sdk-user-1", .message_id = "sdk-it-identify", .traits = p};
    assert_int_equal(sluice_send(c, &idf), SLUICE_OK);
    sluice_event grp = {.type = "group",
                        .user_id = "sdk-user-1",
                        .group_id = "acct-sdk",
                        .message_id = "sdk-it-group"};
    assert_int_equal(sluice_send(c, &grp), SLUICE_OK);
    sluice_props_free(p);
    assert_int_equal(sluice_track(c, "sdk-user-2", "Generated Id", NULL), SLUICE_OK);

    assert_int_equal(sluice_flush(c, 20000), SLUICE_OK);
    sluice_stats st;
    sluice_client_stats(c, &st);
    assert_int_equal(st.sent, N_TRACK + 3);
    assert_int_equal(st.failed, 0);
    assert_int_equal(sluice_client_close(c, 10000), 0);

    sup_kmsgs_t msgs = {0};
    assert_int_equal(sup_consume(env.mock.bootstrap, "events", N_TRACK + 3, 20000, &msgs), 0);
    assert_int_equal(msgs.n, N_TRACK + 3);
    for (int i = 0; i < N_TRACK; i++) {
        snprintf(id, sizeof id, "sdk-it-%d", i);
        if (sup_kmsgs_count_id(&msgs, id) != 1)
            fail_msg("%s arrived %zu times", id, sup_kmsgs_count_id(&msgs, id));
    }
    assert_int_equal(sup_kmsgs_count_id(&msgs, "sdk-it-identify"), 1);
    assert_int_equal(sup_kmsgs_count_id(&msgs, "sdk-it-group"), 1);

    long k = sup_kmsgs_find(&msgs, "sdk-it-7");
    assert_true(k >= 0);
    json_t *v = sup_kmsg_value(&msgs.msgs[k]);
    assert_non_null(v);
    assert_string_equal(jstr(v, "type"), "track");
    assert_string_equal(jstr(v, "userId"), "sdk-user-1");
    assert_string_equal(jstr(v, "event"), "Report Viewed");
    assert_string_equal(jstr(v, "source"), "test");
    assert_non_null(jstr(v, "receivedAt"));
    json_t *props = json_object_get(v, "properties");
    assert_string_equal(jstr(props, "plan"), "pro");
    assert_int_equal(json_integer_value(json_object_get(props, "i")), 7);
    assert_true(json_is_true(json_object_get(json_object_get(props, "nested"), "ok")));
    /* the batch-level context (library) was merged into the event */
    json_t *lib = json_object_get(json_object_get(v, "context"), "library");
    assert_string_equal(jstr(lib, "name"), "sluice-c");
    json_decref(v);
    const char *hdr = sup_kmsg_header(&msgs.msgs[k], "message-id");
    assert_non_null(hdr);
    assert_string_equal(hdr, "sdk-it-7");

    k = sup_kmsgs_find(&msgs, "sdk-it-identify");
    v = sup_kmsg_value(&msgs.msgs[k]);
    assert_string_equal(jstr(json_object_get(v, "traits"), "email"), "a@example.com");
    json_decref(v);
    sup_kmsgs_free(&msgs);
    assert_int_equal(sup_env_stop(&env), 0);
}

/* The README's mode: no brokers configured, the collector hosts librdkafka's mock cluster itself
 * and logs its bootstrap address ("msg":"embedded_kafka","bootstrap":"127.0.0.1:N"). */
static void test_embedded_kafka_mode(void **state)
{
    (void)state;
    const char *path = getenv("SLUICE_COLLECTOR");
    assert_non_null(path);
    char dir[64];
    snprintf(dir, sizeof dir, "/tmp/sluice-sdk-it-XXXXXX");
    assert_non_null(mkdtemp(dir));
    static const char *const keys[] = {"wk_dev=dev", NULL};
    sup_collector_t coll;
    assert_int_equal(sup_collector_start(&coll, path, dir, NULL, keys, NULL, 30000), 0);
    char bootstrap[128] = "";
    for (int i = 0; i < 100 && !bootstrap[0]; i++) { /* bounded: 10 s */
        FILE *f = fopen(coll.log_path, "r");
        char line[2048];
        while (f && fgets(line, sizeof line, f)) {
            const char *b = strstr(line, "\"bootstrap\":\"");
            if (strstr(line, "embedded_kafka") && b) {
                b += strlen("\"bootstrap\":\"");
                size_t n = strcspn(b, "\"");
                if (n < sizeof bootstrap) memcpy(bootstrap, b, n), bootstrap[n] = '\0';
            }
        }
        if (f) fclose(f);
        if (!bootstrap[0]) base_sleep_ms(100);
    }
    if (!bootstrap[0]) {
        sup_collector_dump_log(&coll, 4096);
        fail_msg("no embedded_kafka bootstrap line in the collector's log");
    }

    char endpoint[64];
    snprintf(endpoint, sizeof endpoint, "http://127.0.0.1:%d", coll.port);
    sluice_config cfg;
    sluice_config_init(&cfg, SLUICE_CONFIG_VERSION);
    cfg.endpoint = endpoint;
    cfg.write_key = "wk_dev";
    sluice_client *c;
    assert_int_equal(sluice_client_new(&c, &cfg), SLUICE_OK);
    char id[64];
    for (int i = 0; i < 20; i++) {
        snprintf(id, sizeof id, "sdk-dev-%d", i);
        sluice_event ev = {
            .type = "page", .anonymous_id = "anon-dev", .name = "Pricing", .message_id = id};
        assert_int_equal(sluice_send(c, &ev), SLUICE_OK);
    }
    assert_int_equal(sluice_client_close(c, 10000), 0);

    sup_kmsgs_t msgs = {0};
    assert_int_equal(sup_consume(bootstrap, "events", 20, 20000, &msgs), 0);
    assert_int_equal(msgs.n, 20);
    for (int i = 0; i < 20; i++) {
        snprintf(id, sizeof id, "sdk-dev-%d", i);
        assert_int_equal(sup_kmsgs_count_id(&msgs, id), 1);
    }
    json_t *v = sup_kmsg_value(&msgs.msgs[0]);
    assert_string_equal(jstr(v, "type"), "page");
    assert_string_equal(jstr(v, "name"), "Pricing");
    assert_string_equal(jstr(v, "anonymousId"), "anon-dev");
    assert_string_equal(jstr(v, "source"), "dev");
    json_decref(v);
    sup_kmsgs_free(&msgs);
    assert_int_equal(sup_collector_stop(&coll, 15000), 0);
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    assert_int_equal(system(cmd), 0);
}

static void test_unreachable_collector_never_hangs(void **state)
{
    (void)state;
    /* Nothing listens on this port: connection refused, retried, then given up at close. */
    sluice_config cfg;
    sluice_config_init(&cfg, SLUICE_CONFIG_VERSION);
    cfg.endpoint = "http://127.0.0.1:9";
    cfg.write_key = "wk_test";
    cfg.retry_base_ms = 10;
    cfg.retry_max_ms = 50;
    cfg.connect_timeout_ms = 500;
    sluice_client *c;
    assert_int_equal(sluice_client_new(&c, &cfg), SLUICE_OK);
    for (int i = 0; i < 10; i++)
        assert_int_equal(sluice_track(c, "u", "E", NULL), SLUICE_OK);
    int64_t t0 = base_mono_ms();
    assert_int_equal(sluice_client_close(c, 700), 10);
    int64_t took = base_mono_ms() - t0;
    if (took > 2500) fail_msg("close(700) took %lld ms", (long long)took);
}

/* Log lines of the client, for the reason of a failed TLS connection. */
static char tls_log[4096];
static void log_to_buf(void *ud, int level, const char *msg)
{
    (void)ud;
    (void)level;
    size_t n = strlen(tls_log);
    snprintf(tls_log + n, sizeof tls_log - n, "%s\n", msg);
}

/* An https:// endpoint: with ca_file naming the collector's self-signed certificate every event
 * arrives; without it (the system store does not know that certificate) nothing is sent, the
 * batch is retried as a network error. */
static void test_https_with_ca_file(void **state)
{
    (void)state;
    char dir[] = "/tmp/sluice-sdk-tls-XXXXXX";
    assert_non_null(mkdtemp(dir));
    assert_int_equal(sup_tls_make_cert(dir, "c", "sluice-sdk-test"), 0);
    char yaml[512], ca[128];
    snprintf(yaml, sizeof yaml, "tls: {cert_file: %s/c.crt, key_file: %s/c.key}\n", dir, dir);
    snprintf(ca, sizeof ca, "%s/c.crt", dir);
    sup_env_t env;
    sup_env_opts_t o = {.config_yaml = yaml};
    assert_int_equal(sup_env_start(&env, &o), 0);
    char endpoint[64];
    snprintf(endpoint, sizeof endpoint, "https://127.0.0.1:%d", env.coll.port);

    sluice_config cfg;
    sluice_config_init(&cfg, SLUICE_CONFIG_VERSION);
    cfg.endpoint = endpoint;
    cfg.write_key = "wk_test";
    cfg.batch_size = 10;
    cfg.retry_base_ms = 20;
    cfg.retry_max_ms = 100;
    cfg.log_cb = log_to_buf;
    sluice_client *c;
    assert_int_equal(sluice_client_new(&c, &cfg), SLUICE_OK);
    assert_int_equal(sluice_track(c, "u-tls", "Untrusted", NULL), SLUICE_OK);
    (void)sluice_flush(c, 1000);
    sluice_stats st;
    sluice_client_stats(c, &st);
    assert_int_equal(st.sent, 0);
    assert_true(st.retried > 0);
    assert_int_equal(sluice_client_close(c, 200), 1);
    /* a network error (status 0), retried: the certificate was not trusted */
    if (!strstr(tls_log, "status 0, SLUICE_E_NETWORK")) fail_msg("log: %s", tls_log);

    cfg.ca_file = ca;
    cfg.log_cb = NULL;
    assert_int_equal(sluice_client_new(&c, &cfg), SLUICE_OK);
    char id[32];
    for (int i = 0; i < 25; i++) {
        snprintf(id, sizeof id, "sdk-tls-%d", i);
        sluice_event ev = {
            .type = "track", .user_id = "u-tls", .event = "Over TLS", .message_id = id};
        assert_int_equal(sluice_send(c, &ev), SLUICE_OK);
    }
    assert_int_equal(sluice_flush(c, 20000), SLUICE_OK);
    sluice_client_stats(c, &st);
    assert_int_equal(st.sent, 25);
    assert_int_equal(sluice_client_close(c, 10000), 0);
    sup_kmsgs_t msgs = {0};
    assert_int_equal(sup_consume(env.mock.bootstrap, "events", 25, 20000, &msgs), 0);
    assert_int_equal(msgs.n, 25);
    for (int i = 0; i < 25; i++) {
        snprintf(id, sizeof id, "sdk-tls-%d", i);
        assert_int_equal(sup_kmsgs_count_id(&msgs, id), 1);
    }
    sup_kmsgs_free(&msgs);
    assert_int_equal(sup_env_stop(&env), 0);
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    assert_int_equal(system(cmd), 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_events_arrive_exactly_once),
        cmocka_unit_test(test_embedded_kafka_mode),
        cmocka_unit_test(test_unreachable_collector_never_hangs),
        cmocka_unit_test(test_https_with_ca_file),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
