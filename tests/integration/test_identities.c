/*
 * test_identities.c — the fleet's user -> account links (SPEC §10, collector/identities.h): two
 * real collectors against one mock cluster hosted out of process.
 *
 *  - identity_across_collectors: a user's group call goes to collector A, their track to B;
 *    once the link has propagated (B's sluice_identities_applied_total), B's event carries the
 *    same Kafka key and accountId as A's. The propagation delay is printed ("propagation_ms").
 *  - identity_repeated_link_produced_once: a link the topic already holds (read back) is not
 *    produced again; a changed one is, on either collector (sluice_identities_unchanged_total).
 *  - identity_acknowledged_link_not_produced_again: with identities.consume off, Kafka's ack
 *    marks the link, so a repeat is not produced again either.
 *  - identity_restart_catch_up: a collector started after the links were produced resolves them
 *    (it reads the topic from the beginning; /readyz waits for that).
 *  - identity_bad_records: malformed records on the topic are skipped, counted and logged once
 *    per kind; the good one beside them is applied.
 */
#include "it_common.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <librdkafka/rdkafka.h>

/* Loose bound on the propagation wait (typical: tens of ms, see the printed figure). */
#define PROPAGATION_DEADLINE_MS 10000

typedef struct fleet {
    char dir[256];
    sup_mock_t mock;
    sup_collector_t c[3];
} fleet_t;

static const char *const keys[] = {IT_KEY "=" IT_SOURCE, NULL};

static void fleet_start_with(fleet_t *f, int i, const char *yaml)
{
    char sub[300];
    snprintf(sub, sizeof sub, "%s/c%d", f->dir, i);
    assert_int_equal(mkdir(sub, 0700), 0);
    assert_int_equal(sup_collector_start(&f->c[i], getenv("SLUICE_COLLECTOR"), sub,
                                         f->mock.bootstrap, keys, yaml, 20000),
                     0);
}

static void fleet_start_one(fleet_t *f, int i)
{
    fleet_start_with(f, i, "identities: {ready_wait: 30s}\n");
}

static fleet_t *fleet_start(void)
{
    fleet_t *f = calloc(1, sizeof *f);
    assert_non_null(f);
    snprintf(f->dir, sizeof f->dir, "/tmp/sluice-it-ident-XXXXXX");
    assert_non_null(mkdtemp(f->dir));
    assert_int_equal(sup_mock_start(&f->mock, getenv("SLUICE_MOCK_KAFKA"), 1, 3, 10000), 0);
    return f;
}

static void fleet_stop(fleet_t *f)
{
    for (int i = 0; i < 3; i++) {
        if (f->c[i].pid == 0) continue;
        int st = sup_collector_stop(&f->c[i], 15000);
        if (st != 0) sup_collector_dump_log(&f->c[i], 4000);
        assert_int_equal(st, 0);
    }
    sup_mock_stop(&f->mock);
    if (getenv("SLUICE_KEEP_TMP") == NULL) {
        char cmd[300];
        snprintf(cmd, sizeof cmd, "rm -rf '%s'", f->dir);
        (void)system(cmd);
    }
    free(f);
}

static void post(const sup_collector_t *c, const char *json, sup_http_resp_t *r)
{
    const char *headers[] = {"Content-Type: application/json", NULL};
    sup_http_req_t req = {.path = "/v1/batch",
                          .headers = headers,
                          .body = json,
                          .body_len = strlen(json),
                          .user = IT_KEY};
    assert_int_equal(sup_http_once(c->port, &req, r), 0);
}

static void post_ok(const sup_collector_t *c, const char *json)
{
    sup_http_resp_t r = {0};
    post(c, json, &r);
    if (r.status != 200) fprintf(stderr, "post: %ld %s\n", r.status, r.body.data);
    assert_int_equal(r.status, 200);
    sup_http_resp_free(&r);
}

/* The value of "name value" in c's /metrics, or -1. */
static double metric(const sup_collector_t *c, const char *name)
{
    sup_http_req_t get = {.method = "GET", .path = "/metrics", .timeout_ms = 5000};
    sup_http_resp_t r = {0};
    double v = -1;
    if (sup_http_once(c->port, &get, &r) == 0 && r.status == 200 && r.body.data != NULL) {
        size_t n = strlen(name);
        for (const char *p = r.body.data; (p = strstr(p, name)) != NULL; p += n)
            if ((p == r.body.data || p[-1] == '\n') && p[n] == ' ') {
                v = strtod(p + n + 1, NULL);
                break;
            }
    }
    sup_http_resp_free(&r);
    return v;
}

/* Waits (bounded) for c's /readyz to answer 200; returns the ms it took. */
static int64_t wait_ready(const sup_collector_t *c, int timeout_ms)
{
    int64_t t0 = base_mono_ms();
    for (;;) {
        sup_http_req_t get = {.method = "GET", .path = "/readyz", .timeout_ms = 2000};
        sup_http_resp_t r = {0};
        int rc = sup_http_once(c->port, &get, &r);
        long st = r.status;
        sup_http_resp_free(&r);
        if (rc == 0 && st == 200) return base_mono_ms() - t0;
        assert_true(base_mono_ms() - t0 < timeout_ms);
        base_sleep_ms(20);
    }
}

/* Waits (bounded) until metric reaches at least want; returns the ms it took. */
static int64_t wait_metric(const sup_collector_t *c, const char *name, double want, int timeout_ms)
{
    int64_t t0 = base_mono_ms();
    while (metric(c, name) < want) {
        if (base_mono_ms() - t0 >= timeout_ms) {
            fprintf(stderr, "%s stayed below %g\n", name, want);
            sup_collector_dump_log(c, 4000);
            fail();
        }
        base_sleep_ms(5);
    }
    return base_mono_ms() - t0;
}

/* Asserts the events topic holds message id with key and accountId equal to account; "!USER":
 * keyed by USER, no accountId. */
static void assert_keyed(const fleet_t *f, const char *id, size_t min_count, const char *account)
{
    sup_kmsgs_t m = {0};
    assert_int_equal(sup_consume(f->mock.bootstrap, "events", min_count, 10000, &m), 0);
    long i = sup_kmsgs_find(&m, id);
    if (i < 0) fprintf(stderr, "%s not on the events topic (%zu messages)\n", id, m.n);
    assert_true(i >= 0);
    assert_non_null(m.msgs[i].key);
    json_t *v = sup_kmsg_value(&m.msgs[i]);
    assert_non_null(v);
    const char *acc = json_string_value(json_object_get(v, "accountId"));
    if (account[0] == '!') { /* "!USER": no account, keyed by userId */
        assert_string_equal(m.msgs[i].key, account + 1);
        assert_null(acc);
    } else {
        assert_string_equal(m.msgs[i].key, account);
        assert_non_null(acc);
        assert_string_equal(acc, account);
    }
    json_decref(v);
    sup_kmsgs_free(&m);
}

static const char group_a[] =
    "{\"batch\":[{\"type\":\"group\",\"messageId\":\"ident-g1\",\"userId\":\"ident-user\","
    "\"groupId\":\"acct-ident\"}]}";

static void test_identity_across_collectors(void **state)
{
    (void)state;
    fleet_t *f = fleet_start();
    fleet_start_one(f, 0);
    fleet_start_one(f, 1);
    wait_ready(&f->c[0], 20000);
    wait_ready(&f->c[1], 20000);
    /* Before the link: B keys the user's event by userId and leaves accountId out. */
    post_ok(&f->c[1], "{\"batch\":[{\"type\":\"track\",\"messageId\":\"ident-t0\",\"userId\":"
                      "\"ident-user\",\"event\":\"Before\"}]}");
    assert_keyed(f, "ident-t0", 1, "!ident-user");
    double applied0 = metric(&f->c[1], "sluice_identities_applied_total");
    int64_t t0 = base_mono_ms();
    post_ok(&f->c[0], group_a);
    int64_t ack_ms = base_mono_ms() - t0;
    int64_t prop = wait_metric(&f->c[1], "sluice_identities_applied_total", applied0 + 1,
                               PROPAGATION_DEADLINE_MS);
    printf("propagation_ms %lld (group call 200 after %lld ms, then applied on B)\n",
           (long long)(prop + ack_ms), (long long)ack_ms);
    post_ok(&f->c[1], "{\"batch\":[{\"type\":\"track\",\"messageId\":\"ident-t1\",\"userId\":"
                      "\"ident-user\",\"event\":\"After\"}]}");
    assert_keyed(f, "ident-g1", 3, "acct-ident");
    assert_keyed(f, "ident-t1", 3, "acct-ident");
    /* A's own map learned at once, B's from the topic: the same key either way. */
    post_ok(&f->c[0], "{\"batch\":[{\"type\":\"track\",\"messageId\":\"ident-t2\",\"userId\":"
                      "\"ident-user\",\"event\":\"OnA\"}]}");
    assert_keyed(f, "ident-t2", 4, "acct-ident");
    /* The link itself: key userId, value the account. */
    sup_kmsgs_t m = {0};
    assert_int_equal(sup_consume(f->mock.bootstrap, "identities", 1, 10000, &m), 0);
    assert_int_equal(m.n, 1);
    assert_string_equal(m.msgs[0].key, "ident-user");
    assert_int_equal(m.msgs[0].value_len, strlen("acct-ident"));
    assert_memory_equal(m.msgs[0].value, "acct-ident", m.msgs[0].value_len);
    sup_kmsgs_free(&m);
    fleet_stop(f);
}

/* A link the topic already holds is not produced again (sluice_identities_unchanged_total): a
 * user's repeated group call costs one events message, not two. Only a link read back from the
 * topic counts as held: the first call produces, a changed account produces, and another
 * collector's change (read back by A) makes A's next call with that account a repeat. */
static const char *group_call(char *buf, size_t cap, const char *id, const char *acct)
{
    snprintf(buf, cap,
             "{\"batch\":[{\"type\":\"group\",\"messageId\":\"%s\",\"userId\":\"rep-user\","
             "\"groupId\":\"%s\"}]}",
             id, acct);
    return buf;
}

/* The identities topic holds exactly x, y, x for rep-user, in that order. */
static void assert_rep_user_links(const fleet_t *f)
{
    sup_kmsgs_t m = {0};
    assert_int_equal(sup_consume(f->mock.bootstrap, "identities", 3, 10000, &m), 0);
    assert_int_equal(m.n, 3);
    const char *want[] = {"acct-x", "acct-y", "acct-x"};
    for (size_t i = 0; i < 3; i++) {
        assert_string_equal(m.msgs[i].key, "rep-user");
        assert_int_equal(m.msgs[i].value_len, strlen(want[i]));
        assert_memory_equal(m.msgs[i].value, want[i], m.msgs[i].value_len);
    }
    sup_kmsgs_free(&m);
}

static void test_identity_repeated_link_produced_once(void **state)
{
    (void)state;
    fleet_t *f = fleet_start();
    fleet_start_one(f, 0);
    fleet_start_one(f, 1);
    sup_collector_t *a = &f->c[0], *b = &f->c[1];
    wait_ready(a, 20000);
    wait_ready(b, 20000);
    char body[256];
    post_ok(a, group_call(body, sizeof body, "rep-g1", "acct-x"));
    assert_true(metric(a, "sluice_identities_produced_total") == 1);
    wait_metric(a, "sluice_identities_applied_total", 1, PROPAGATION_DEADLINE_MS); /* read back */
    post_ok(a, group_call(body, sizeof body, "rep-g2", "acct-x"));
    assert_true(metric(a, "sluice_identities_produced_total") == 1);
    assert_true(metric(a, "sluice_identities_unchanged_total") == 1);
    post_ok(a, group_call(body, sizeof body, "rep-g3", "acct-y")); /* changed */
    assert_true(metric(a, "sluice_identities_produced_total") == 2);
    /* B has read both links (its map: acct-y, read back): acct-x again is a change there. */
    wait_metric(b, "sluice_identities_applied_total", 2, PROPAGATION_DEADLINE_MS);
    post_ok(b, group_call(body, sizeof body, "rep-g4", "acct-x"));
    assert_true(metric(b, "sluice_identities_produced_total") == 1);
    /* Once A has read B's link back, acct-x is what the topic holds last: a repeat on A. */
    wait_metric(a, "sluice_identities_applied_total", 3, PROPAGATION_DEADLINE_MS);
    post_ok(a, group_call(body, sizeof body, "rep-g5", "acct-x"));
    assert_true(metric(a, "sluice_identities_produced_total") == 2);
    assert_true(metric(a, "sluice_identities_unchanged_total") == 2);
    /* The topic: x, y, x for the user, the latest what both collectors resolve. */
    assert_rep_user_links(f);
    /* Every group event itself went to the events topic. */
    assert_keyed(f, "rep-g2", 5, "acct-x");
    assert_keyed(f, "rep-g5", 5, "acct-x");
    fleet_stop(f);
}

/* identities.consume off (nothing read back): a link Kafka acknowledged is marked by that ack,
 * so repeating it produces nothing; a change is produced, and only the latest is marked. */
static void test_identity_acknowledged_link_not_produced_again(void **state)
{
    (void)state;
    fleet_t *f = fleet_start();
    fleet_start_with(f, 0, "identities: {consume: false}\n");
    sup_collector_t *a = &f->c[0];
    wait_ready(a, 20000);
    char body[256];
    post_ok(a, group_call(body, sizeof body, "ack-g1", "acct-x"));
    post_ok(a, group_call(body, sizeof body, "ack-g2", "acct-x"));
    assert_true(metric(a, "sluice_identities_produced_total") == 1);
    assert_true(metric(a, "sluice_identities_unchanged_total") == 1);
    post_ok(a, group_call(body, sizeof body, "ack-g3", "acct-y")); /* changed */
    post_ok(a, group_call(body, sizeof body, "ack-g4", "acct-y"));
    post_ok(a, group_call(body, sizeof body, "ack-g5", "acct-x")); /* changed back */
    assert_true(metric(a, "sluice_identities_produced_total") == 3);
    assert_true(metric(a, "sluice_identities_unchanged_total") == 2);
    assert_true(metric(a, "sluice_identities_applied_total") == 0);
    assert_rep_user_links(f);
    fleet_stop(f);
}

static void test_identity_restart_catch_up(void **state)
{
    (void)state;
    fleet_t *f = fleet_start();
    fleet_start_one(f, 0);
    wait_ready(&f->c[0], 20000);
    post_ok(&f->c[0], group_a);
    /* Started after the link was produced: it reads the topic from the beginning, and /readyz
     * says 200 only once it has. */
    fleet_start_one(f, 1);
    int64_t ms = wait_ready(&f->c[1], 20000);
    printf("ready_after_start_ms %lld\n", (long long)ms);
    assert_true(metric(&f->c[1], "sluice_identities_caught_up") == 1);
    assert_true(metric(&f->c[1], "sluice_identities_applied_total") >= 1);
    assert_true(sup_collector_log_contains(&f->c[1], "\"msg\":\"identities_caught_up\""));
    post_ok(&f->c[1], "{\"batch\":[{\"type\":\"track\",\"messageId\":\"ident-r1\",\"userId\":"
                      "\"ident-user\",\"event\":\"AfterRestart\"}]}");
    assert_keyed(f, "ident-r1", 2, "acct-ident");
    fleet_stop(f);
}

/* Produces one record to the identities topic (value NULL: no value). */
static void produce_raw(rd_kafka_t *rk, const char *key, size_t klen, const char *val, size_t vlen)
{
    assert_int_equal(rd_kafka_producev(rk, RD_KAFKA_V_TOPIC("identities"),
                                       RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY),
                                       RD_KAFKA_V_KEY(key, klen),
                                       RD_KAFKA_V_VALUE((void *)val, vlen), RD_KAFKA_V_END),
                     RD_KAFKA_RESP_ERR_NO_ERROR);
}

static size_t count_in_log(const sup_collector_t *c, const char *needle)
{
    FILE *fp = fopen(c->log_path, "r");
    if (fp == NULL) return 0;
    char line[8192];
    size_t n = 0;
    while (fgets(line, sizeof line, fp) != NULL)
        if (strstr(line, needle) != NULL) n++;
    fclose(fp);
    return n;
}

static void test_identity_bad_records(void **state)
{
    (void)state;
    fleet_t *f = fleet_start();
    char errstr[256];
    rd_kafka_conf_t *conf = rd_kafka_conf_new();
    assert_int_equal(
        rd_kafka_conf_set(conf, "bootstrap.servers", f->mock.bootstrap, errstr, sizeof errstr),
        RD_KAFKA_CONF_OK);
    rd_kafka_t *rk = rd_kafka_new(RD_KAFKA_PRODUCER, conf, errstr, sizeof errstr);
    assert_non_null(rk);
    char long_value[300];
    memset(long_value, 'v', sizeof long_value);
    produce_raw(rk, "", 0, "acct", 4);                             /* key_empty */
    produce_raw(rk, "", 0, "acct", 4);                             /* key_empty again */
    produce_raw(rk, "bad-long", 8, long_value, sizeof long_value); /* value_too_long */
    produce_raw(rk, "bad-\xff\xfe", 6, "acct", 4);                 /* key_not_utf8 */
    produce_raw(rk, "bad-utf8-val", 12, "acct-\xc3", 6);           /* value_not_utf8 */
    produce_raw(rk, "ident-user", 10, "acct-good", 9);             /* good */
    produce_raw(rk, "gone-user", 9, "acct-gone", 9);               /* good */
    produce_raw(rk, "gone-user", 9, NULL, 0);                      /* tombstone */
    assert_int_equal(rd_kafka_flush(rk, 10000), RD_KAFKA_RESP_ERR_NO_ERROR);
    rd_kafka_destroy(rk);

    fleet_start_one(f, 0);
    wait_ready(&f->c[0], 20000);
    assert_true(metric(&f->c[0], "sluice_identities_skipped_total") == 5);
    assert_true(metric(&f->c[0], "sluice_identities_applied_total") == 3);
    assert_true(metric(&f->c[0], "sluice_identities_forgotten_total") == 1);
    /* Logged once per kind: two empty keys, one line. */
    assert_int_equal(count_in_log(&f->c[0], "\"msg\":\"identities_record_skipped\""), 4);
    assert_int_equal(count_in_log(&f->c[0], "\"reason\":\"key_empty\""), 1);
    assert_int_equal(count_in_log(&f->c[0], "\"reason\":\"value_too_long\""), 1);
    /* The good record beside them resolves; the tombstoned user does not. */
    post_ok(&f->c[0], "{\"batch\":[{\"type\":\"track\",\"messageId\":\"ident-b1\",\"userId\":"
                      "\"ident-user\",\"event\":\"Good\"},{\"type\":\"track\",\"messageId\":"
                      "\"ident-b2\",\"userId\":\"gone-user\",\"event\":\"Gone\"}]}");
    assert_keyed(f, "ident-b1", 2, "acct-good");
    assert_keyed(f, "ident-b2", 2, "!gone-user");
    fleet_stop(f);
}

int main(int argc, char **argv)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_identity_across_collectors),
        cmocka_unit_test(test_identity_repeated_link_produced_once),
        cmocka_unit_test(test_identity_acknowledged_link_not_produced_again),
        cmocka_unit_test(test_identity_restart_catch_up),
        cmocka_unit_test(test_identity_bad_records),
    };
    return it_run(argc, argv, "identities", tests, sizeof tests / sizeof tests[0]);
}
