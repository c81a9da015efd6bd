/*
 * test_routes.c — the route table (collector/routes.c): which target matches which entry
 * (exact paths, analytics-next's short paths, the prefix and segment routes, trailing slash,
 * query and fragment), the admin_listen port split, unknown paths (the transport's 404 "no such
 * endpoint"), the methods each route answers (the transport's 405 and its Allow), and the
 * parameters handlers read. Only routes.c is included; the handlers come from the core library.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "routes.c"

static const route_t *on(const char *target, http_port_t port)
{
    return routes_match(target, strlen(target), port);
}

static const route_t *any(const char *target)
{
    return on(target, HTTP_PORT_ALL);
}

static void test_routes_match_paths(void **state)
{
    (void)state;
    static const struct {
        const char *target;
        proto_type_t kind;
    } ingest[] = {
        {"/v1/batch", PROTO_T_NONE},        {"/v1/batch/", PROTO_T_NONE},
        {"/v1/batch?x=1", PROTO_T_NONE},    {"/v1/track", PROTO_T_TRACK},
        {"/v1/identify", PROTO_T_IDENTIFY}, {"/v1/group", PROTO_T_GROUP},
        {"/v1/page", PROTO_T_PAGE},         {"/v1/screen", PROTO_T_SCREEN},
        {"/v1/alias", PROTO_T_ALIAS},       {"/v1/b", PROTO_T_NONE},
        {"/v1/t", PROTO_T_TRACK},           {"/v1/i", PROTO_T_IDENTIFY},
        {"/v1/g", PROTO_T_GROUP},           {"/v1/p", PROTO_T_PAGE},
        {"/v1/s/", PROTO_T_SCREEN},         {"/v1/a?x", PROTO_T_ALIAS},
        {"/v1/t#frag", PROTO_T_TRACK},
    };
    for (size_t i = 0; i < sizeof ingest / sizeof ingest[0]; i++) {
        const route_t *r = any(ingest[i].target);
        assert_non_null(r);
        assert_true(r->flags & ROUTE_F_INGEST);
        assert_true(r->flags & ROUTE_F_CORS);
        assert_int_equal(r->kind, ingest[i].kind);
        assert_ptr_equal(r->handler, http_conn_ingest);
    }
    assert_ptr_equal(any("/healthz")->handler, ops_healthz_cb);
    assert_ptr_equal(any("/readyz")->handler, ops_readyz_cb);
    assert_ptr_equal(any("/metrics")->handler, ops_metrics_cb);
    assert_ptr_equal(any("/metrics/")->handler, ops_metrics_cb);
    assert_ptr_equal(any("/v1/accounts/acme")->handler, admin_account_cb);
    assert_ptr_equal(any("/v1/accounts/a/b")->handler, admin_account_cb);
    assert_ptr_equal(any("/v1/pql/top?n=5")->handler, admin_pql_top_cb);
    const route_t *s = any("/v1/projects/wk/settings");
    assert_ptr_equal(s->handler, settings_document_cb);
    assert_true(s->flags & ROUTE_F_CORS);
    assert_false(s->flags & ROUTE_F_INGEST);
    assert_ptr_equal(any("/v1/projects/wk/settings?x=1"), s);
    assert_false(any("/healthz")->flags & ROUTE_F_CORS);
}

/* Nothing else matches: the transport answers these 404 not_found "no such endpoint". */
static void test_routes_unknown_path_is_no_such_endpoint(void **state)
{
    (void)state;
    static const char *const none[] = {
        "/v1/x",
        "/v1/batc",
        "/v1/batchx",
        "/",
        "",
        "/v1/accounts/",
        "/v1/accounts",
        "/v1/pql/top/x",
        "/v1/pql",
        "/healthz/x",
        "/v1/projects//settings",
        "/v1/projects/a/b/settings",
        "/v1/projects/wk/setting",
        "/v1/projects/settings",
        "/V1/BATCH",
        "//v1/batch",
    };
    for (size_t i = 0; i < sizeof none / sizeof none[0]; i++) {
        assert_null(any(none[i]));
        assert_null(on(none[i], HTTP_PORT_PUBLIC));
        assert_null(on(none[i], HTTP_PORT_ADMIN));
    }
}

/* admin_listen (SPEC §3): /metrics and the admin views on the admin port only, events and the
 * settings document on the public port only, health on both; a listener without admin_listen
 * serves everything. */
static void test_routes_port_split(void **state)
{
    (void)state;
    static const char *const targets[] = {
        "/v1/batch", "/v1/t",          "/healthz",    "/readyz",
        "/metrics",  "/v1/accounts/a", "/v1/pql/top", "/v1/projects/wk/settings"};
    for (size_t i = 0; i < sizeof targets / sizeof targets[0]; i++) {
        const route_t *r = any(targets[i]);
        assert_non_null(r);
        bool health = r->cls == ROUTE_ANY;
        bool admin = r->cls == ROUTE_ADMIN;
        assert_int_equal(on(targets[i], HTTP_PORT_PUBLIC) != NULL, health || !admin);
        assert_int_equal(on(targets[i], HTTP_PORT_ADMIN) != NULL, health || admin);
    }
    assert_int_equal(any("/healthz")->cls, ROUTE_ANY);
    assert_int_equal(any("/readyz")->cls, ROUTE_ANY);
    assert_int_equal(any("/metrics")->cls, ROUTE_ADMIN);
    assert_int_equal(any("/v1/accounts/a")->cls, ROUTE_ADMIN);
    assert_int_equal(any("/v1/pql/top")->cls, ROUTE_ADMIN);
    assert_int_equal(any("/v1/batch")->cls, ROUTE_PUBLIC);
    assert_int_equal(any("/v1/projects/k/settings")->cls, ROUTE_PUBLIC);
    /* Every entry of the table has a handler, an Allow line and a 405 message. */
    size_t n;
    const route_t *t = routes_table(&n);
    assert_true(n >= 20);
    for (size_t i = 0; i < n; i++) {
        assert_non_null(t[i].handler);
        assert_non_null(t[i].allow);
        assert_non_null(t[i].wrong_method);
    }
}

/* The methods as today: events POST only ("use POST", Allow: POST, OPTIONS); everything else
 * GET and HEAD ("use GET"), Allow: GET, HEAD, or GET, HEAD, OPTIONS on the settings document.
 * OPTIONS on a CORS route is the transport's preflight, on any other route a 405. */
static void test_routes_method_not_allowed(void **state)
{
    (void)state;
    const route_t *b = any("/v1/batch");
    assert_true(route_allows(b, HTTP_POST));
    assert_false(route_allows(b, HTTP_GET));
    assert_false(route_allows(b, HTTP_HEAD));
    assert_false(route_allows(b, HTTP_PUT));
    assert_false(route_allows(b, HTTP_OPTIONS));
    assert_string_equal(b->allow, "POST, OPTIONS");
    assert_string_equal(b->wrong_method, "use POST");
    const route_t *h = any("/healthz");
    assert_true(route_allows(h, HTTP_GET));
    assert_true(route_allows(h, HTTP_HEAD));
    assert_false(route_allows(h, HTTP_POST));
    assert_false(route_allows(h, HTTP_OPTIONS));
    assert_false(route_allows(h, HTTP_DELETE));
    assert_string_equal(h->allow, "GET, HEAD");
    assert_string_equal(h->wrong_method, "use GET");
    const route_t *s = any("/v1/projects/k/settings");
    assert_true(route_allows(s, HTTP_GET));
    assert_false(route_allows(s, HTTP_POST));
    assert_string_equal(s->allow, "GET, HEAD, OPTIONS");
    assert_string_equal(any("/v1/pql/top")->allow, "GET, HEAD");
}

static void test_routes_params(void **state)
{
    (void)state;
    const char *p;
    size_t n;
    const route_t *a = any("/v1/accounts/ac%20me/?x");
    static const char t1[] = "/v1/accounts/ac%20me/?x";
    assert_true(route_param(a, t1, sizeof t1 - 1, &p, &n));
    assert_int_equal(n, 7);
    assert_memory_equal(p, "ac%20me", 7);
    static const char t2[] = "/v1/projects/wk_1/settings/";
    const route_t *s = any(t2);
    assert_true(route_param(s, t2, sizeof t2 - 1, &p, &n));
    assert_int_equal(n, 4);
    assert_memory_equal(p, "wk_1", 4);
    /* An exact route has no parameter; a target the route does not match gives none either. */
    static const char t3[] = "/healthz";
    assert_false(route_param(any(t3), t3, sizeof t3 - 1, &p, &n));
    assert_int_equal(n, 0);
    assert_false(route_param(s, t3, sizeof t3 - 1, &p, &n));
    assert_int_equal(n, 0);
    assert_int_equal(route_path_len("/v1/batch/?a", 12), 9);
    assert_int_equal(route_path_len("/", 1), 1);
    assert_int_equal(route_path_len("/?a", 3), 1);
    assert_int_equal(route_path_len("", 0), 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_routes_match_paths),
        cmocka_unit_test(test_routes_unknown_path_is_no_such_endpoint),
        cmocka_unit_test(test_routes_port_split),
        cmocka_unit_test(test_routes_method_not_allowed),
        cmocka_unit_test(test_routes_params),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
