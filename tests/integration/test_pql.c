/*
 * Integration tests of PQL triggers (SPEC §6) through the real collector: events posted over
 * HTTP make an account cross warm and then hot under SPEC §6's example rules; each signal is on
 * pql_signals with the right fields and users, raised within 1 s of the POST that caused it;
 * GET /v1/accounts/{id} and /v1/pql/top answer with the admin token only; counters survive a
 * restart.
 *
 * Timing: the 1 s bound is checked without racing a consumer: the signal's triggeredAt (the
 * collector's wall clock when it raised the signal, same machine) must lie between the start of
 * the POST and 1 s after its 200, and the message must be on the topic when we look 1 s after the
 * 200 (the consumer then gets several seconds to fetch what is already there).
 */
#include "it_common.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define ADMIN "adm_secret_1"

static const char pql_yaml[] =
    "admin_token: " ADMIN "\n"
    "pql:\n"
    "  window: 7d\n"
    "  tiers: {hot: 80, warm: 50, watching: 30}\n"
    "  rules:\n"
    "    - {name: team_of_seven,   metric: active_users,    at_least: 7,     points: 40}\n"
    "    - {name: heavy_usage,     metric: events,          at_least: 10000, points: 20}\n"
    "    - {name: surge,           metric: events_velocity, recent: 24h, at_least: 3.0, "
    "min_recent: 200, points: 25}\n"
    "    - {name: new_user_surge,  metric: users_velocity,  recent: 24h, at_least: 2.0, "
    "min_recent: 3, points: 20}\n"
    "    - {name: regular_use,     metric: active_days,     at_least: 5,     points: 20}\n"
    "    - {name: pricing_interest, metric: event_seen, event: \"Pricing Page Viewed\", points: "
    "10}\n"
    "    - {name: legal_review,    metric: event_seen, event: [\"Terms Viewed\", \"Privacy Policy "
    "Viewed\"], points: 15}\n";

static json_t *track(const char *acct, const char *user, const char *event)
{
    char id[IT_ID_BYTES];
    sup_message_id(id, sizeof id, "pql");
    return json_pack("{s:s,s:s,s:s,s:s,s:{s:s}}", "type", "track", "messageId", id, "userId", user,
                     "event", event, "context", "groupId", acct);
}

/* Posts events (stolen) as one batch; asserts 200. Returns the wall time of the 200 and sets
 * *start to the time before the POST. */
static int64_t post_events(const sup_env_t *e, json_t *events, int64_t *start)
{
    size_t n = json_array_size(events);
    json_t *batch = sup_batch(events);
    sup_http_resp_t resp;
    *start = base_wall_ms();
    it_post_json(e, "/v1/batch", batch, &resp);
    int64_t done = base_wall_ms();
    it_assert_ok(&resp, (long)n, 0);
    sup_http_resp_free(&resp);
    json_decref(batch);
    return done;
}

/* Waits until 1 s after the 200, then reads pql_signals and returns the n-th (0-based) message
 * (new ref); fails if it is not there. */
static json_t *signal_after(const sup_env_t *e, int64_t answered, size_t index)
{
    int64_t wait = answered + 1000 - base_wall_ms();
    if (wait > 0) base_sleep_ms((int)wait);
    sup_kmsgs_t m = {0};
    /* The deadline only bounds the consumer's own start-up: the message is already there. */
    assert_int_equal(sup_consume(e->mock.bootstrap, "pql_signals", index + 1, 5000, &m), 0);
    if (m.n <= index) {
        fprintf(stderr, "pql_signals holds %zu messages, want > %zu\n", m.n, index);
        sup_collector_dump_log(&e->coll, 4000);
    }
    assert_true(m.n > index);
    json_t *v = sup_kmsg_value(&m.msgs[index]);
    assert_non_null(v);
    assert_non_null(m.msgs[index].key);
    assert_string_equal(m.msgs[index].key, json_string_value(json_object_get(v, "accountId")));
    sup_kmsgs_free(&m);
    return v;
}

static void assert_within_1s(const json_t *sig, int64_t start, int64_t answered)
{
    int64_t at = 0;
    const char *s = json_string_value(json_object_get(sig, "triggeredAt"));
    assert_non_null(s);
    assert_int_equal(sup_parse_iso8601(s, &at), 0);
    if (at < start - 5 || at > answered + 1000)
        fprintf(stderr, "triggeredAt %lld outside [%lld, %lld]\n", (long long)at, (long long)start,
                (long long)answered + 1000);
    assert_true(at >= start - 5); /* ms rounding */
    assert_true(at <= answered + 1000);
}

static void assert_users(const json_t *sig, const char *const *want, size_t n)
{
    json_t *u = json_object_get(sig, "userIds");
    assert_true(json_is_array(u));
    assert_int_equal(json_array_size(u), n);
    for (size_t i = 0; i < n; i++)
        assert_string_equal(json_string_value(json_array_get(u, i)), want[i]);
}

static long admin_get(const sup_env_t *e, const char *path, const char *auth, json_t **json)
{
    const char *hdrs[2] = {auth, NULL};
    sup_http_req_t get = {.method = "GET", .path = path, .headers = auth ? hdrs : NULL};
    sup_http_resp_t resp;
    assert_int_equal(sup_http_once(e->coll.port, &get, &resp), 0);
    long st = resp.status;
    if (json != NULL) *json = resp.json ? json_incref(resp.json) : NULL;
    sup_http_resp_free(&resp);
    return st;
}

static void test_pql_warm_then_hot_signals(void **state)
{
    sup_env_t *e = it_start(state, pql_yaml);
    const char *acct = "acct-it-1";
    /* Warm: 7 users, user i with i+1 events (team_of_seven 40 + new_user_surge 20 = 60) — the
     * rise happens at u6's first event, then Pricing (10) keeps it warm at 70. */
    json_t *ev = json_array();
    for (int u = 0; u < 7; u++) {
        char user[8];
        snprintf(user, sizeof user, "u%d", u);
        for (int k = 0; k <= u; k++)
            json_array_append_new(ev, track(acct, user, "Dashboard Viewed"));
    }
    json_array_append_new(ev, track(acct, "u0", "Pricing Page Viewed"));
    int64_t start = 0;
    int64_t answered = post_events(e, ev, &start);
    json_t *warm = signal_after(e, answered, 0);
    assert_string_equal(json_string_value(json_object_get(warm, "accountId")), acct);
    assert_string_equal(json_string_value(json_object_get(warm, "tier")), "warm");
    assert_true(json_is_null(json_object_get(warm, "previousTier")));
    assert_int_equal(json_integer_value(json_object_get(warm, "score")), 60);
    assert_string_equal(json_string_value(json_object_get(warm, "source")), IT_SOURCE);
    const char *warm_users[] = {"u5", "u4", "u3", "u2", "u1"};
    assert_users(warm, warm_users, 5);
    json_t *rules = json_object_get(warm, "rules");
    assert_int_equal(json_array_size(rules), 2);
    assert_within_1s(warm, start, answered);
    json_decref(warm);

    /* Hot: Terms Viewed (legal_review 15) -> 85. */
    ev = json_array();
    json_array_append_new(ev, track(acct, "u6", "Terms Viewed"));
    answered = post_events(e, ev, &start);
    json_t *hot = signal_after(e, answered, 1);
    assert_string_equal(json_string_value(json_object_get(hot, "tier")), "hot");
    assert_string_equal(json_string_value(json_object_get(hot, "previousTier")), "warm");
    assert_int_equal(json_integer_value(json_object_get(hot, "score")), 85);
    const char *hot_users[] = {"u6", "u5", "u4", "u3", "u2"};
    assert_users(hot, hot_users, 5);
    assert_within_1s(hot, start, answered);
    json_decref(hot);

    /* More of the same: no further signal (a tier is signalled once per window). */
    ev = json_array();
    json_array_append_new(ev, track(acct, "u1", "Privacy Policy Viewed"));
    answered = post_events(e, ev, &start);
    base_sleep_ms(1000);
    sup_kmsgs_t m = {0};
    assert_int_equal(sup_consume(e->mock.bootstrap, "pql_signals", 3, 1500, &m), 0);
    assert_int_equal(m.n, 2);
    sup_kmsgs_free(&m);

    /* Admin endpoints. */
    char path[128];
    snprintf(path, sizeof path, "/v1/accounts/%s", acct);
    assert_int_equal(admin_get(e, path, NULL, NULL), 401);
    assert_int_equal(admin_get(e, path, "Authorization: Bearer wrong", NULL), 401);
    json_t *j = NULL;
    assert_int_equal(admin_get(e, path, "Authorization: Bearer " ADMIN, &j), 200);
    assert_non_null(j);
    assert_string_equal(json_string_value(json_object_get(j, "tier")), "hot");
    assert_int_equal(json_integer_value(json_object_get(j, "score")), 85);
    json_t *counters = json_object_get(j, "counters");
    assert_int_equal(json_integer_value(json_object_get(counters, "activeUsers")), 7);
    assert_int_equal(json_integer_value(json_object_get(counters, "events")), 31);
    json_decref(j);
    assert_int_equal(admin_get(e, "/v1/accounts/nobody", "Authorization: Bearer " ADMIN, NULL),
                     404);
    assert_int_equal(admin_get(e, "/v1/pql/top?n=5", NULL, NULL), 401);
    assert_int_equal(admin_get(e, "/v1/pql/top?n=0", "Authorization: Bearer " ADMIN, NULL), 400);
    assert_int_equal(admin_get(e, "/v1/pql/top?n=5", "Authorization: Bearer " ADMIN, &j), 200);
    json_t *accts = json_object_get(j, "accounts");
    assert_true(json_array_size(accts) >= 1);
    assert_string_equal(json_string_value(json_object_get(json_array_get(accts, 0), "accountId")),
                        acct);
    json_decref(j);
    /* The reads run on libuv's threadpool: clients that leave before their answer (a request
     * then a close, several at once) leave the collector serving, and the next read answers. */
    for (int i = 0; i < 8; i++) {
        int fd = sup_tcp_connect(e->coll.port, 2000);
        assert_true(fd >= 0);
        static const char rq[] = "GET /v1/pql/top?n=1000 HTTP/1.1\r\nHost: x\r\n"
                                 "Authorization: Bearer " ADMIN "\r\n\r\n";
        assert_int_equal(sup_tcp_send(fd, rq, sizeof rq - 1, 2000), 0);
        close(fd);
    }
    assert_int_equal(admin_get(e, "/v1/pql/top?n=1000", "Authorization: Bearer " ADMIN, &j), 200);
    assert_int_equal(json_array_size(json_object_get(j, "accounts")), 1);
    json_decref(j);

    /* /metrics */
    sup_http_req_t get = {.method = "GET", .path = "/metrics"};
    sup_http_resp_t resp;
    assert_int_equal(sup_http_once(e->coll.port, &get, &resp), 0);
    assert_non_null(strstr(resp.body.data, "sluice_pql_accounts 1"));
    assert_non_null(strstr(resp.body.data, "sluice_pql_queue_dropped_events_total 0"));
    assert_non_null(strstr(resp.body.data, "sluice_pql_queue_bytes 0"));
    assert_non_null(strstr(resp.body.data, "sluice_pql_signals_hot_total 1"));
    assert_non_null(strstr(resp.body.data, "sluice_pql_signals_warm_total 1"));
    assert_non_null(strstr(resp.body.data, "sluice_pql_bytes "));
    sup_http_resp_free(&resp);
}

/* Counters survive a restart: SIGTERM writes the snapshot, the next start loads it. */
static void test_pql_counters_survive_restart(void **state)
{
    sup_env_t *e = it_start(state, pql_yaml);
    json_t *ev = json_array();
    for (int u = 0; u < 3; u++) {
        char user[8];
        snprintf(user, sizeof user, "r%d", u);
        json_array_append_new(ev, track("acct-restart", user, "Pricing Page Viewed"));
    }
    int64_t start;
    (void)post_events(e, ev, &start);
    char path[512];
    snprintf(path, sizeof path, "%s/data/pql.snapshot", e->dir);
    assert_int_equal(sup_collector_stop(&e->coll, 15000), 0);
    FILE *f = fopen(path, "rb");
    assert_non_null(f);
    fclose(f);
    const char *keys[] = {IT_KEY "=" IT_SOURCE, NULL};
    assert_int_equal(sup_collector_start(&e->coll, getenv("SLUICE_COLLECTOR"), e->dir,
                                         e->mock.bootstrap, keys, pql_yaml, 15000),
                     0);
    assert_true(sup_collector_log_contains(&e->coll, "pql_snapshot_loaded"));
    json_t *j = NULL;
    assert_int_equal(admin_get(e, "/v1/accounts/acct-restart", "Authorization: Bearer " ADMIN, &j),
                     200);
    json_t *counters = json_object_get(j, "counters");
    assert_int_equal(json_integer_value(json_object_get(counters, "activeUsers")), 3);
    assert_int_equal(json_integer_value(json_object_get(j, "score")), 30);
    json_decref(j);
}

/* Without an admin token the admin endpoints do not exist. */
static void test_pql_admin_disabled_without_token(void **state)
{
    sup_env_t *e = it_start(state, pql_yaml + strlen("admin_token: " ADMIN "\n"));
    assert_int_equal(admin_get(e, "/v1/accounts/x", "Authorization: Bearer " ADMIN, NULL), 404);
    assert_int_equal(admin_get(e, "/v1/pql/top", NULL, NULL), 404);
}

int main(int argc, char **argv)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_teardown(test_pql_warm_then_hot_signals, it_teardown),
        cmocka_unit_test_teardown(test_pql_counters_survive_restart, it_teardown),
        cmocka_unit_test_teardown(test_pql_admin_disabled_without_token, it_teardown),
    };
    return it_run(argc, argv, "pql", tests, sizeof tests / sizeof tests[0]);
}
