/*
 * test_surface.c — the HTTP surface real clients use unchanged (SPEC §3): the short paths of
 * @segment/analytics-next (/v1/b, /v1/t, ...), the settings document it loads from its cdnURL
 * (GET /v1/projects/{writeKey}/settings, apiHost from the Host header or public_url), CORS on
 * all of those (preflight and answers), and lenient Content-Types (msgpack only when labelled
 * so; JSON whatever else the label says, gzip labelled application/x-www-form-urlencoded as
 * @rudderstack/rudder-sdk-node sends it). Every case reads the events topic back.
 */
#include "it_common.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

/* One event of type t for the single-call endpoints, with the fields that type requires. */
static json_t *single_event(const char *type, const char *message_id)
{
    json_t *ev = json_pack("{s:s, s:s}", "messageId", message_id, "userId", "short-user");
    if (strcmp(type, "track") == 0) json_object_set_new(ev, "event", json_string("Short Track"));
    if (strcmp(type, "identify") == 0)
        json_object_set_new(ev, "traits", json_pack("{s:s}", "plan", "pro"));
    if (strcmp(type, "group") == 0) json_object_set_new(ev, "groupId", json_string("acct-short"));
    if (strcmp(type, "page") == 0 || strcmp(type, "screen") == 0)
        json_object_set_new(ev, "name", json_string("Home"));
    if (strcmp(type, "alias") == 0) json_object_set_new(ev, "previousId", json_string("old-id"));
    return ev;
}

static void assert_acao(const sup_http_resp_t *resp)
{
    char v[64];
    if (!sup_http_header(resp, "Access-Control-Allow-Origin", v, sizeof v))
        fprintf(stderr, "no Access-Control-Allow-Origin in:\n%s\n", resp->headers.data);
    assert_true(sup_http_header(resp, "Access-Control-Allow-Origin", v, sizeof v));
    assert_string_equal(v, "*");
}

/* /v1/t, /v1/i, /v1/g, /v1/p, /v1/s, /v1/a take one event of their type, /v1/b a batch; each
 * event lands once with that type, and a body whose type disagrees with the path is rejected. */
static void test_short_paths(void **state)
{
    sup_env_t *e = it_start(state, NULL);
    static const char *const types[] = {"track", "identify", "group", "page", "screen", "alias"};
    it_ids_t ids = {0};
    for (size_t t = 0; t < 6; t++) {
        char id[IT_ID_BYTES], path[16];
        sup_message_id(id, sizeof id, types[t]);
        it_ids_add(&ids, id);
        json_t *ev = single_event(types[t], id);
        snprintf(path, sizeof path, "/v1/%c", types[t][0]);
        sup_http_resp_t resp;
        it_post_json(e, path, ev, &resp);
        it_assert_ok(&resp, 1, 0);
        assert_acao(&resp);
        sup_http_resp_free(&resp);
        json_decref(ev);
    }
    json_t *events = json_array();
    for (int i = 0; i < 3; i++) {
        char id[IT_ID_BYTES];
        sup_message_id(id, sizeof id, "short-batch");
        it_ids_add(&ids, id);
        json_array_append_new(events, sup_track(id, "short-user", "Batched", i));
    }
    json_t *batch = sup_batch(events);
    sup_http_resp_t resp;
    it_post_json(e, "/v1/b", batch, &resp);
    it_assert_ok(&resp, 3, 0);
    sup_http_resp_free(&resp);
    json_decref(batch);

    json_t *bad = json_pack("{s:s, s:s, s:s, s:s}", "type", "identify", "messageId", "short-mis",
                            "userId", "short-user", "event", "X");
    it_post_json(e, "/v1/t", bad, &resp);
    assert_int_equal(resp.status, 200);
    it_assert_event_error(&resp, 0, "short-mis", "invalid_type");
    sup_http_resp_free(&resp);
    json_decref(bad);

    sup_kmsgs_t m;
    it_assert_events_exactly(e, &ids, &m);
    for (size_t i = 0; i < ids.n; i++) {
        const sup_kmsg_t *msg = &m.msgs[sup_kmsgs_find(&m, ids.id[i])];
        const char *want = i < 6 ? types[i] : "track";
        json_t *v = sup_kmsg_value(msg);
        assert_non_null(v);
        assert_string_equal(json_string_value(json_object_get(v, "type")), want);
        assert_string_equal(sup_kmsg_header(msg, "event-type"), want);
        assert_string_equal(json_string_value(json_object_get(v, "userId")), "short-user");
        json_decref(v);
    }
    sup_kmsgs_free(&m);
}

/* GETs the settings document of key with extra headers; asserts 200 + CORS, returns its JSON. */
static json_t *get_settings(const sup_env_t *e, const char *key, const char *const *headers)
{
    char path[128];
    snprintf(path, sizeof path, "/v1/projects/%s/settings", key);
    sup_http_req_t req = {.method = "GET", .path = path, .headers = headers};
    sup_http_resp_t resp;
    assert_int_equal(sup_http_once(e->coll.port, &req, &resp), 0);
    if (resp.status != 200) fprintf(stderr, "settings: %ld %s\n", resp.status, resp.body.data);
    assert_int_equal(resp.status, 200);
    assert_acao(&resp);
    char ct[64];
    assert_true(sup_http_header(&resp, "Content-Type", ct, sizeof ct));
    assert_string_equal(ct, "application/json");
    assert_non_null(resp.json);
    json_t *j = json_incref(resp.json);
    sup_http_resp_free(&resp);
    return j;
}

/* The Segment.io destination of a settings document. */
static const json_t *segmentio(const json_t *doc)
{
    const json_t *s = json_object_get(json_object_get(doc, "integrations"), "Segment.io");
    assert_true(json_is_object(s));
    return s;
}

static void assert_str(const json_t *o, const char *key, const char *want)
{
    const char *got = json_string_value(json_object_get(o, key));
    if (!got || strcmp(got, want) != 0)
        fprintf(stderr, "%s: want %s, got %s\n", key, want, got ? got : "(absent)");
    assert_non_null(got);
    assert_string_equal(got, want);
}

/*
 * The settings document names this collector as the SDK's apiHost (the Host the browser used,
 * plus /v1, over http), carries the write key as apiKey, turns Segment's remote metrics off and
 * names no other destination; unknown keys are 401, other methods 405, and the route answers
 * CORS preflights.
 */
static void test_settings_document(void **state)
{
    sup_env_t *e = it_start(state, NULL);
    char want_host[64];
    snprintf(want_host, sizeof want_host, "127.0.0.1:%d/v1", e->coll.port);
    json_t *doc = get_settings(e, IT_KEY, NULL);
    const json_t *s = segmentio(doc);
    assert_str(s, "apiKey", IT_KEY);
    assert_str(s, "apiHost", want_host);
    assert_str(s, "protocol", "http");
    assert_int_equal(json_object_size(json_object_get(doc, "integrations")), 1);
    assert_true(json_is_integer(json_object_get(json_object_get(doc, "metrics"), "sampleRate")));
    assert_int_equal(
        json_integer_value(json_object_get(json_object_get(doc, "metrics"), "sampleRate")), 0);
    assert_int_equal(json_array_size(json_object_get(doc, "remotePlugins")), 0);
    json_decref(doc);

    /* The Host header the page's browser used decides (a name, a port, an IPv6 literal). */
    const char *named[] = {"Host: collect.example.com:8080", NULL};
    doc = get_settings(e, "wk_web", named);
    assert_str(segmentio(doc), "apiHost", "collect.example.com:8080/v1");
    assert_str(segmentio(doc), "apiKey", "wk_web");
    json_decref(doc);
    const char *v6[] = {"Host: [::1]:9000", NULL};
    doc = get_settings(e, IT_KEY, v6);
    assert_str(segmentio(doc), "apiHost", "[::1]:9000/v1");
    json_decref(doc);

    /* A percent-encoded key is decoded. */
    doc = get_settings(e, "wk%5Ftest", NULL);
    assert_str(segmentio(doc), "apiKey", IT_KEY);
    json_decref(doc);

    sup_http_resp_t resp;
    sup_http_req_t req = {.method = "GET", .path = "/v1/projects/wk_nobody/settings"};
    sup_http_once(e->coll.port, &req, &resp);
    it_assert_error(&resp, 401, "unauthorized");
    assert_acao(&resp);
    sup_http_resp_free(&resp);
    /* A Host that would not survive in a URL is refused rather than echoed. */
    const char *evil[] = {"Host: a\"b", NULL};
    req =
        (sup_http_req_t){.method = "GET", .path = "/v1/projects/wk_test/settings", .headers = evil};
    sup_http_once(e->coll.port, &req, &resp);
    it_assert_error(&resp, 400, "bad_request");
    sup_http_resp_free(&resp);
    req = (sup_http_req_t){
        .method = "POST", .path = "/v1/projects/wk_test/settings", .body = "{}", .body_len = 2};
    sup_http_once(e->coll.port, &req, &resp);
    it_assert_error(&resp, 405, "method_not_allowed");
    char v[128];
    assert_true(sup_http_header(&resp, "Allow", v, sizeof v));
    assert_string_equal(v, "GET, HEAD, OPTIONS");
    sup_http_resp_free(&resp);
    const char *pre[] = {"Origin: http://127.0.0.1:1", "Access-Control-Request-Method: GET", NULL};
    req = (sup_http_req_t){
        .method = "OPTIONS", .path = "/v1/projects/wk_test/settings", .headers = pre};
    assert_int_equal(sup_http_once(e->coll.port, &req, &resp), 0);
    assert_int_equal(resp.status, 204);
    assert_acao(&resp);
    assert_true(sup_http_header(&resp, "Access-Control-Allow-Methods", v, sizeof v));
    assert_non_null(strstr(v, "GET"));
    sup_http_resp_free(&resp);

    /* And what the document points at works: the SDK's POST to {apiHost}/t. */
    it_ids_t ids = {0};
    char id[IT_ID_BYTES];
    sup_message_id(id, sizeof id, "settings");
    it_ids_add(&ids, id);
    json_t *ev = single_event("track", id);
    it_post_json(e, "/v1/t", ev, &resp);
    it_assert_ok(&resp, 1, 0);
    sup_http_resp_free(&resp);
    json_decref(ev);
    it_assert_events_exactly(e, &ids, NULL);
}

/* With public_url set, the document names it whatever Host the request carried. */
static void test_settings_public_url(void **state)
{
    sup_env_t *e = it_start(state, "public_url: https://collect.example.com/edge/\n");
    const char *host[] = {"Host: 127.0.0.1", NULL};
    json_t *doc = get_settings(e, IT_KEY, host);
    assert_str(segmentio(doc), "apiHost", "collect.example.com/edge/v1");
    assert_str(segmentio(doc), "protocol", "https");
    json_decref(doc);
    it_ids_t ids = {0};
    it_assert_still_serving(e, &ids);
    it_assert_events_exactly(e, &ids, NULL);
}

/*
 * CORS as the browser SDK meets it: a preflight asking for Authorization and X-Retry-Count
 * (analytics-next's retries) is granted those headers on every short path; answers, errors
 * included, carry Access-Control-Allow-Origin.
 */
static void test_cors_short_paths(void **state)
{
    sup_env_t *e = it_start(state, NULL);
    static const char *const paths[] = {"/v1/b", "/v1/t", "/v1/i", "/v1/g",
                                        "/v1/p", "/v1/s", "/v1/a"};
    const char *pre[] = {"Origin: http://127.0.0.1:1", "Access-Control-Request-Method: POST",
                         "Access-Control-Request-Headers: authorization,content-type,x-retry-count",
                         NULL};
    for (size_t i = 0; i < sizeof paths / sizeof paths[0]; i++) {
        sup_http_req_t req = {.method = "OPTIONS", .path = paths[i], .headers = pre};
        sup_http_resp_t resp;
        assert_int_equal(sup_http_once(e->coll.port, &req, &resp), 0);
        assert_int_equal(resp.status, 204);
        assert_acao(&resp);
        char v[256];
        assert_true(sup_http_header(&resp, "Access-Control-Allow-Methods", v, sizeof v));
        assert_string_equal(v, "POST, OPTIONS");
        assert_true(sup_http_header(&resp, "Access-Control-Allow-Headers", v, sizeof v));
        assert_string_equal(v, "authorization,content-type,x-retry-count");
        sup_http_resp_free(&resp);
    }
    /* A request-headers value that is not a plain list gets sluice's own list instead. */
    const char *odd[] = {"Origin: http://127.0.0.1:1", "Access-Control-Request-Method: POST",
                         "Access-Control-Request-Headers: x\"y", NULL};
    sup_http_req_t req = {.method = "OPTIONS", .path = "/v1/t", .headers = odd};
    sup_http_resp_t resp;
    assert_int_equal(sup_http_once(e->coll.port, &req, &resp), 0);
    assert_int_equal(resp.status, 204);
    char v[256];
    assert_true(sup_http_header(&resp, "Access-Control-Allow-Headers", v, sizeof v));
    assert_non_null(strcasestr(v, "authorization"));
    assert_non_null(strcasestr(v, "x-retry-count"));
    assert_null(strchr(v, '"'));
    sup_http_resp_free(&resp);

    /* An error answer (unknown key) is readable cross-origin too. */
    const char *hdrs[] = {"Origin: http://127.0.0.1:1", "Content-Type: text/plain", NULL};
    req = (sup_http_req_t){
        .path = "/v1/t", .headers = hdrs, .body = "{}", .body_len = 2, .user = "wk_nobody"};
    sup_http_once(e->coll.port, &req, &resp);
    it_assert_error(&resp, 401, "unauthorized");
    assert_acao(&resp);
    sup_http_resp_free(&resp);
    it_ids_t ids = {0};
    it_assert_still_serving(e, &ids);
    it_assert_events_exactly(e, &ids, NULL);
}

/*
 * Content-Type decides msgpack only: a JSON body is read as JSON under any other label
 * (text/plain from sendBeacon, x-www-form-urlencoded from RudderStack, none, or anything), gzip
 * included; a msgpack body labelled as anything else is unreadable JSON (400), and an unknown
 * Content-Encoding is still 415.
 */
static void test_content_type_labels(void **state)
{
    sup_env_t *e = it_start(state, NULL);
    static const char *const labels[] = {
        "text/plain;charset=UTF-8", "application/x-www-form-urlencoded",
        "application/xml",          "multipart/form-data; boundary=x",
        "application/msgpackx",     NULL};
    it_ids_t ids = {0};
    for (size_t i = 0; i <= sizeof labels / sizeof labels[0]; i++) {
        bool none = i == sizeof labels / sizeof labels[0];
        for (int gz = 0; gz < 2; gz++) {
            json_t *events = json_array();
            for (int k = 0; k < 2; k++) {
                char id[IT_ID_BYTES];
                sup_message_id(id, sizeof id, "label");
                it_ids_add(&ids, id);
                json_array_append_new(events, sup_track(id, "label-user", "Labelled", k));
            }
            json_t *batch = sup_batch(events);
            base_buf_t txt = {0}, g = {0};
            assert_int_equal(sup_json_dump(batch, &txt), 0);
            if (gz) assert_int_equal(sup_gzip(txt.data, txt.len, &g), 0);
            sup_http_resp_t resp;
            it_post(e, i % 2 ? "/v1/b" : "/v1/batch", none ? NULL : labels[i], gz ? "gzip" : NULL,
                    gz ? g.data : txt.data, gz ? g.len : txt.len, &resp);
            if (resp.status != 200)
                fprintf(stderr, "label %s gzip %d\n", none ? "(none)" : labels[i], gz);
            it_assert_ok(&resp, 2, 0);
            sup_http_resp_free(&resp);
            json_decref(batch);
            base_buf_free(&txt);
            base_buf_free(&g);
        }
    }
    /* msgpack, labelled as such, gzip'd; then the same bytes labelled JSON: 400. */
    char id[IT_ID_BYTES];
    sup_message_id(id, sizeof id, "label-mp");
    it_ids_add(&ids, id);
    json_t *batch = sup_batch(json_pack("[o]", sup_track(id, "label-user", "Packed", 0)));
    base_buf_t mp = {0}, g = {0};
    assert_int_equal(sup_msgpack_encode(batch, &mp), 0);
    assert_int_equal(sup_gzip(mp.data, mp.len, &g), 0);
    sup_http_resp_t resp;
    it_post(e, "/v1/b", "application/x-msgpack", "gzip", g.data, g.len, &resp);
    it_assert_ok(&resp, 1, 0);
    sup_http_resp_free(&resp);
    it_post(e, "/v1/b", "application/x-www-form-urlencoded", "gzip", g.data, g.len, &resp);
    it_assert_error(&resp, 400, NULL);
    sup_http_resp_free(&resp);
    it_post(e, "/v1/b", "application/x-www-form-urlencoded", "br", g.data, g.len, &resp);
    it_assert_error(&resp, 415, "unsupported_media_type");
    sup_http_resp_free(&resp);
    json_decref(batch);
    base_buf_free(&mp);
    base_buf_free(&g);
    it_assert_events_exactly(e, &ids, NULL);
}

int main(int argc, char **argv)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_teardown(test_short_paths, it_teardown),
        cmocka_unit_test_teardown(test_settings_document, it_teardown),
        cmocka_unit_test_teardown(test_settings_public_url, it_teardown),
        cmocka_unit_test_teardown(test_cors_short_paths, it_teardown),
        cmocka_unit_test_teardown(test_content_type_labels, it_teardown),
    };
    return it_run(argc, argv, "surface", tests, sizeof tests / sizeof tests[0]);
}
