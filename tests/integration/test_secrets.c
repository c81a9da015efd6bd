/*
 * test_secrets.c — secrets hygiene (issue 15), with the real binary: a config file holding a
 * write key or the admin token in clear that others may read is warned about (and not when it is
 * 0600 or the keys come from the environment); a key given on the command line is warned about;
 * write keys and the admin token never appear in the log (debug level), in /metrics or in
 * events_rejected — the raw copy of a rejected single-event call drops the writeKey it carried.
 */
#include "it_common.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#define SECRET_KEY   "wk_secret_0123456789abcdef"
#define SECRET_ADMIN "admin_secret_0123456789abcdef"

static bool log_has(const sup_env_t *e, const char *s)
{
    return sup_collector_log_contains(&e->coll, s);
}

/* Inline secrets in a file others may read: warned, with the path, mode and line. */
static void test_secrets_readable_config_warned(void **state)
{
    mode_t old = umask(022); /* the file is written 0644 */
    sup_env_t *e = it_start(state, "threads: 1\n"
                                   "admin_token: " SECRET_ADMIN "\n");
    umask(old);
    assert_true(log_has(e, "\"msg\":\"config_file_readable_by_others\""));
    assert_true(log_has(e, "\"mode\":\"0644\""));
    assert_true(log_has(e, "\"line\":2"));
    assert_false(log_has(e, SECRET_ADMIN));
}

/* The same file at 0600: no warning. */
static void test_secrets_private_config_quiet(void **state)
{
    mode_t old = umask(077); /* the file is written 0600 */
    sup_env_t *e = it_start(state, "write_keys: [{key: " SECRET_KEY ", source: web}]\n");
    umask(old);
    assert_false(log_has(e, "config_file_readable_by_others"));
    assert_false(log_has(e, SECRET_KEY));
}

/* Keys only from the environment, none on the command line: no warning of either kind, even
 * with the file readable by others. */
static void test_secrets_env_keys_quiet(void **state)
{
    setenv("SLUICE_IT_KEY", SECRET_KEY, 1);
    static const char *const none[] = {NULL};
    sup_env_opts_t o = {.config_yaml = "write_keys: [{key_env: SLUICE_IT_KEY, source: web}]\n",
                        .keys = none};
    mode_t old = umask(022);
    sup_env_t *e = it_start_opts(state, &o);
    umask(old);
    assert_false(log_has(e, "config_file_readable_by_others"));
    assert_false(log_has(e, "secret_on_command_line"));
}

/* --write-key on the command line: warned, naming the flag, never the key. Then the key is used
 * every way a client can send it, and it shows up in no log line, metric or rejected record. */
static void test_secrets_cli_key_warned_never_leaked(void **state)
{
    static const char *const keys[] = {SECRET_KEY "=test", NULL};
    sup_env_opts_t o = {.config_yaml = "admin_token_env: SLUICE_IT_ADMIN\n"
                                       "pql:\n"
                                       "  tiers: {hot: 80}\n"
                                       "  rules: [{name: busy, metric: events, at_least: 1, "
                                       "points: 80}]\n",
                        .keys = keys};
    setenv("SLUICE_IT_ADMIN", SECRET_ADMIN, 1);
    sup_env_t *e = it_start_opts(state, &o);
    assert_true(log_has(e, "\"msg\":\"secret_on_command_line\",\"flag\":\"--write-key\""));
    int port = e->coll.port;

    /* a single-event call with the key in its body, rejected (no event name) */
    static const char track[] = "{\"writeKey\":\"" SECRET_KEY "\",\"userId\":\"u\","
                                "\"messageId\":\"sec-rej-1\"}";
    const char *hdr[] = {"Content-Type: application/json", NULL};
    sup_http_req_t q = {
        .path = "/v1/track", .headers = hdr, .body = track, .body_len = sizeof track - 1};
    sup_http_resp_t r;
    sup_http_once(port, &q, &r);
    assert_int_equal(r.status, 200);
    sup_http_resp_free(&r);
    /* accepted through Basic auth and through the body */
    static const char ok[] = "{\"writeKey\":\"" SECRET_KEY "\",\"userId\":\"u\","
                             "\"messageId\":\"sec-ok-1\",\"event\":\"E\"}";
    q.body = ok;
    q.body_len = sizeof ok - 1;
    sup_http_once(port, &q, &r);
    it_assert_ok(&r, 1, 0);
    sup_http_resp_free(&r);
    q.user = SECRET_KEY;
    sup_http_once(port, &q, &r);
    sup_http_resp_free(&r);
    /* an unknown key close to the real one, and the admin token on the admin view */
    q.user = SECRET_KEY "x";
    sup_http_once(port, &q, &r);
    assert_int_equal(r.status, 401);
    sup_http_resp_free(&r);
    char authz[128];
    snprintf(authz, sizeof authz, "Authorization: Bearer %s", SECRET_ADMIN);
    const char *ah[] = {authz, NULL};
    sup_http_req_t top = {.method = "GET", .path = "/v1/pql/top?n=3", .headers = ah};
    sup_http_once(port, &top, &r);
    assert_int_equal(r.status, 200);
    sup_http_resp_free(&r);
    sup_http_req_t st = {.method = "GET", .path = "/v1/projects/" SECRET_KEY "/settings"};
    sup_http_once(port, &st, &r);
    sup_http_resp_free(&r);

    /* events_rejected: the raw event without its writeKey */
    sup_kmsgs_t m;
    assert_int_equal(sup_consume(e->mock.bootstrap, "events_rejected", 1, 10000, &m), 0);
    assert_int_equal(m.n, 1);
    assert_null(memmem(m.msgs[0].value, m.msgs[0].value_len, SECRET_KEY, strlen(SECRET_KEY)));
    json_t *v = sup_kmsg_value(&m.msgs[0]);
    json_t *raw = json_object_get(v, "raw");
    assert_string_equal(json_string_value(json_object_get(raw, "messageId")), "sec-rej-1");
    assert_null(json_object_get(raw, "writeKey"));
    json_decref(v);
    sup_kmsgs_free(&m);
    assert_int_equal(sup_consume(e->mock.bootstrap, "events", 1, 10000, &m), 0);
    for (size_t i = 0; i < m.n; i++)
        assert_null(memmem(m.msgs[i].value, m.msgs[i].value_len, SECRET_KEY, strlen(SECRET_KEY)));
    sup_kmsgs_free(&m);

    /* /metrics and the debug log: neither secret, whole */
    sup_http_req_t mq = {.method = "GET", .path = "/metrics"};
    sup_http_once(port, &mq, &r);
    assert_int_equal(r.status, 200);
    assert_null(strstr(r.body.data, SECRET_KEY));
    assert_null(strstr(r.body.data, SECRET_ADMIN));
    sup_http_resp_free(&r);
    assert_false(log_has(e, SECRET_KEY));
    assert_false(log_has(e, SECRET_ADMIN));
}

int main(int argc, char **argv)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_teardown(test_secrets_readable_config_warned, it_teardown),
        cmocka_unit_test_teardown(test_secrets_private_config_quiet, it_teardown),
        cmocka_unit_test_teardown(test_secrets_env_keys_quiet, it_teardown),
        cmocka_unit_test_teardown(test_secrets_cli_key_warned_never_leaked, it_teardown),
    };
    return it_run(argc, argv, "secrets", tests, sizeof tests / sizeof tests[0]);
}
