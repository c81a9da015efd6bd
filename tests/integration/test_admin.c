/*
 * test_admin.c — admin_listen (SPEC §3), with the real binary: when it is set, /metrics and the
 * admin views (GET /v1/accounts/{id}, /v1/pql/top) are served there only and the public port
 * answers 404 for them, as for any unknown path; the admin port serves nothing else (events,
 * settings: 404); /healthz and /readyz answer on both. A bad admin_listen is refused at start.
 */
#include "it_common.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define ADMIN "admin-token-0123456789"

static const char admin_yaml[] = "admin_listen: 127.0.0.1:0\n"
                                 "admin_token: " ADMIN "\n"
                                 "pql:\n"
                                 "  tiers: {hot: 80}\n"
                                 "  rules:\n"
                                 "    - {name: busy, metric: events, at_least: 1, points: 80}\n";

/* One request on a new connection to port; returns the status (0: no answer). body may be
 * NULL (GET). The answer is left in *r (release with sup_http_resp_free). */
static long req(int port, const char *method, const char *path, const char *auth, const char *body,
                sup_http_resp_t *r)
{
    const char *headers[3] = {NULL, NULL, NULL};
    char authz[128];
    size_t h = 0;
    if (auth != NULL) {
        snprintf(authz, sizeof authz, "Authorization: Bearer %s", auth);
        headers[h++] = authz;
    }
    if (body != NULL) headers[h++] = "Content-Type: application/json";
    sup_http_req_t q = {.method = method,
                        .path = path,
                        .headers = headers,
                        .body = body,
                        .body_len = body ? strlen(body) : 0,
                        .user = body != NULL && auth == NULL ? IT_KEY : NULL};
    sup_http_once(port, &q, r);
    return r->status;
}

static void expect(int port, const char *method, const char *path, const char *auth,
                   const char *body, long status, const char *in_body)
{
    sup_http_resp_t r;
    long got = req(port, method, path, auth, body, &r);
    bool ok = got == status && (in_body == NULL || (r.body.data && strstr(r.body.data, in_body)));
    if (!ok)
        fprintf(stderr, "%s %s on port %d: %ld %s (want %ld with \"%s\")\n", method, path, port,
                got, r.body.data ? r.body.data : "", status, in_body ? in_body : "");
    assert_true(ok);
    sup_http_resp_free(&r);
}

static void test_admin_listen_splits_routes(void **state)
{
    sup_env_t *e = it_start(state, admin_yaml);
    int pub = e->coll.port, adm = e->coll.admin_port;
    assert_true(adm > 0);
    assert_int_not_equal(pub, adm);

    /* an event, so PQL has an account to show */
    it_ids_t ids = {0};
    it_post_good(e, "adm", 1, &ids);

    /* public port: events and health, no /metrics, no admin views (404 "no such endpoint") */
    expect(pub, "GET", "/healthz", NULL, NULL, 200, "ok");
    expect(pub, "GET", "/readyz", NULL, NULL, 200, "\"ready\":true");
    expect(pub, "GET", "/metrics", NULL, NULL, 404, "no such endpoint");
    expect(pub, "GET", "/v1/pql/top?n=5", ADMIN, NULL, 404, "no such endpoint");
    expect(pub, "GET", "/v1/accounts/acct-1", ADMIN, NULL, 404, "no such endpoint");
    expect(pub, "GET", "/v1/projects/" IT_KEY "/settings", NULL, NULL, 200, NULL);

    /* admin port: /metrics, the admin views (token still required), health; nothing else */
    expect(adm, "GET", "/metrics", NULL, NULL, 200, "sluice_events_accepted_total");
    expect(adm, "GET", "/v1/pql/top?n=5", NULL, NULL, 401, "admin token");
    expect(adm, "GET", "/v1/pql/top?n=5", ADMIN, NULL, 200, NULL);
    expect(adm, "GET", "/healthz", NULL, NULL, 200, "ok");
    expect(adm, "GET", "/readyz", NULL, NULL, 200, "\"ready\":true");
    expect(adm, "POST", "/v1/batch", NULL,
           "{\"batch\":[{\"type\":\"track\",\"messageId\":\"adm-x\",\"userId\":\"u\",\"event\":"
           "\"e\"}]}",
           404, "no such endpoint");
    expect(adm, "GET", "/v1/projects/" IT_KEY "/settings", NULL, NULL, 404, "no such endpoint");

    /* the one event got through the public port, and only it */
    it_assert_events_exactly(e, &ids, NULL);
}

/* Without admin_listen, /metrics stays on the public port (the default is unchanged). */
static void test_admin_listen_unset_metrics_public(void **state)
{
    sup_env_t *e = it_start(state, NULL);
    assert_int_equal(e->coll.admin_port, 0);
    expect(e->coll.port, "GET", "/metrics", NULL, NULL, 200, "sluice_");
}

static void test_admin_listen_refused(void **state)
{
    (void)state;
    it_assert_refused(
        "admin_listen: nowhere:80\n", NULL,
        "admin_listen: \"nowhere:80\" is not IPV4:PORT, [IPV6]:PORT or localhost:PORT", NULL);
    /* the same address as listen */
    const char *args[] = {"--listen", "127.0.0.1:39123", NULL};
    it_assert_refused("admin_listen: 127.0.0.1:39123\n", args,
                      "admin_listen: \"127.0.0.1:39123\" is the listen address", NULL);
}

/* pql.mode: stream (SPEC §10): no in-process PQL at all (no snapshot written at shutdown, no PQL
 * metrics), and both admin views answer 404 pql_in_stream pointing at sluice-stream, while
 * events are still accepted. */
static void test_pql_mode_stream(void **state)
{
    sup_env_t *e = it_start(state, "admin_listen: 127.0.0.1:0\n"
                                   "admin_token: " ADMIN "\n"
                                   "pql:\n"
                                   "  mode: stream\n"
                                   "  tiers: {hot: 80}\n"
                                   "  rules:\n"
                                   "    - {name: busy, metric: events, at_least: 1, points: 80}\n");
    int adm = e->coll.admin_port;
    it_ids_t ids = {0};
    it_post_good(e, "pqlstream", 2, &ids);
    expect(adm, "GET", "/v1/pql/top?n=5", ADMIN, NULL, 404, "\"error\":\"pql_in_stream\"");
    expect(adm, "GET", "/v1/accounts/acct-1", ADMIN, NULL, 404, "sluice-stream");
    expect(adm, "GET", "/v1/pql/top?n=5", NULL, NULL, 401, "admin token");
    sup_http_resp_t r;
    assert_int_equal(req(adm, "GET", "/metrics", NULL, NULL, &r), 200);
    assert_null(strstr(r.body.data, "sluice_pql_accounts"));
    sup_http_resp_free(&r);
    assert_true(sup_collector_log_contains(&e->coll, "\"msg\":\"pql_off\""));
    it_assert_events_exactly(e, &ids, NULL);
}

int main(int argc, char **argv)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_teardown(test_admin_listen_splits_routes, it_teardown),
        cmocka_unit_test_teardown(test_admin_listen_unset_metrics_public, it_teardown),
        cmocka_unit_test(test_admin_listen_refused),
        cmocka_unit_test_teardown(test_pql_mode_stream, it_teardown),
    };
    return it_run(argc, argv, "admin", tests, sizeof tests / sizeof tests[0]);
}
