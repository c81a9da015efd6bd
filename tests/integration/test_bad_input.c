/*
 * test_bad_input.c — issue 2's "bad input gets a clear answer and loses nothing else", one case
 * each. Every case: a good batch is accepted first, then the bad request gets the SPEC answer (or
 * a closed connection for broken HTTP), then a good batch on another connection is accepted, and
 * finally the events topic holds exactly the accepted events, once each.
 */
#include "it_common.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define BASIC_WK_TEST "Authorization: Basic d2tfdGVzdDo=\r\n" /* "wk_test:" */

typedef void (*bad_fn)(sup_env_t *e, it_ids_t *ids);

static void run_bad(void **state, const char *yaml, bad_fn bad)
{
    sup_env_t *e = it_start(state, yaml);
    it_ids_t ids = {0};
    it_post_good(e, "before", 5, &ids);
    bad(e, &ids);
    it_assert_still_serving(e, &ids);
    it_assert_events_exactly(e, &ids, NULL);
}

/* Sends raw bytes on a new connection and reads one answer (status, or -1 when none). */
static int raw_exchange(const sup_env_t *e, const void *p, size_t n, base_buf_t *answer,
                        int timeout_ms)
{
    int fd = sup_tcp_connect(e->coll.port, 5000);
    assert_true(fd >= 0);
    sup_tcp_send(fd, p, n, 5000);
    int status = sup_tcp_read_answer(fd, answer, timeout_ms);
    close(fd);
    return status;
}

/* The JSON body of a raw answer (after the head), parsed; new ref or NULL. */
static json_t *raw_body_json(const base_buf_t *answer)
{
    const char *b = answer->data ? strstr(answer->data, "\r\n\r\n") : NULL;
    return b ? json_loads(b + 4, 0, NULL) : NULL;
}

static void assert_raw_error(const base_buf_t *answer, int status, int want, const char *code)
{
    if (status != want)
        fprintf(stderr, "want %d, got %d: %s\n", want, status,
                answer->data ? answer->data : "(nothing)");
    assert_int_equal(status, want);
    json_t *j = raw_body_json(answer);
    assert_non_null(j);
    assert_true(json_is_false(json_object_get(j, "success")));
    if (code) assert_string_equal(json_string_value(json_object_get(j, "error")), code);
    json_decref(j);
}

/* A small valid JSON batch text (3 events) whose ids go to ids only if keep is true. */
static void small_batch_text(base_buf_t *out, it_ids_t *ids, bool keep)
{
    json_t *events = json_array();
    for (int i = 0; i < 3; i++) {
        char id[IT_ID_BYTES];
        sup_message_id(id, sizeof id, "small");
        json_array_append_new(events, sup_track(id, "small-user", "Small", i));
        if (keep) it_ids_add(ids, id);
    }
    json_t *b = sup_batch(events);
    assert_int_equal(sup_json_dump(b, out), 0);
    json_decref(b);
}

/* ---- unreadable bodies ---- */

static void bad_malformed_json(sup_env_t *e, it_ids_t *ids)
{
    (void)ids;
    static const char *const bodies[] = {"{\"batch\": [ {\"type\": \"track\" ,, ]}",
                                         "not json at all",
                                         "",
                                         "[1,2,3]",
                                         "{\"batch\": \"not an array\"}",
                                         "{\"batch\": []} trailing"};
    static const char *const codes[] = {"malformed_body", "malformed_body", NULL,
                                        "not_an_object",  "missing_batch",  NULL};
    for (size_t i = 0; i < sizeof bodies / sizeof bodies[0]; i++) {
        sup_http_resp_t r;
        it_post(e, "/v1/batch", "application/json", NULL, bodies[i], strlen(bodies[i]), &r);
        it_assert_error(&r, 400, codes[i]);
        sup_http_resp_free(&r);
    }
}

static void test_malformed_json(void **state)
{
    run_bad(state, NULL, bad_malformed_json);
}

static void bad_malformed_msgpack(sup_env_t *e, it_ids_t *ids)
{
    (void)ids;
    /* 0xc1 is never used; a map claiming 2^32-1 entries in 5 bytes must not allocate for them;
     * a str claiming 1 GiB; a fixarray (not a map). */
    static const char b1[] = {(char)0xc1};
    static const char b2[] = {(char)0xdf, (char)0xff, (char)0xff, (char)0xff, (char)0xff};
    static const char b3[] = {(char)0x81, (char)0xa5, 'b', 'a', 't', 'c', 'h',
                              (char)0xdb, 0x40,       0,   0,   0,   'x'};
    static const char b4[] = {(char)0x93, 1, 2, 3};
    const struct {
        const char *p;
        size_t n;
        const char *code;
    } cases[] = {{b1, sizeof b1, "malformed_body"},
                 {b2, sizeof b2, "malformed_body"},
                 {b3, sizeof b3, "malformed_body"},
                 {b4, sizeof b4, "not_an_object"}};
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        sup_http_resp_t r;
        it_post(e, "/v1/batch", "application/msgpack", NULL, cases[i].p, cases[i].n, &r);
        it_assert_error(&r, 400, cases[i].code);
        sup_http_resp_free(&r);
    }
}

static void test_malformed_msgpack(void **state)
{
    run_bad(state, NULL, bad_malformed_msgpack);
}

static void bad_truncated_body(sup_env_t *e, it_ids_t *ids)
{
    base_buf_t txt = {0}, z = {0}, g = {0}, mp = {0};
    small_batch_text(&txt, ids, false);
    sup_http_resp_t r;
    it_post(e, "/v1/batch", "application/json", NULL, txt.data, txt.len / 2, &r);
    it_assert_error(&r, 400, "malformed_body");
    sup_http_resp_free(&r);

    json_t *j = json_loads(txt.data, 0, NULL);
    assert_int_equal(sup_msgpack_encode(j, &mp), 0);
    json_decref(j);
    it_post(e, "/v1/batch", "application/msgpack", NULL, mp.data, mp.len - 7, &r);
    it_assert_error(&r, 400, "malformed_body");
    sup_http_resp_free(&r);

    assert_int_equal(sup_zstd(txt.data, txt.len, &z), 0);
    it_post(e, "/v1/batch", "application/json", "zstd", z.data, z.len - 4, &r);
    it_assert_error(&r, 400, "malformed_body");
    sup_http_resp_free(&r);

    assert_int_equal(sup_gzip(txt.data, txt.len, &g), 0);
    it_post(e, "/v1/batch", "application/json", "gzip", g.data, g.len - 10, &r);
    it_assert_error(&r, 400, "malformed_body");
    sup_http_resp_free(&r);
    base_buf_free(&txt);
    base_buf_free(&z);
    base_buf_free(&g);
    base_buf_free(&mp);
}

static void test_truncated_body(void **state)
{
    run_bad(state, NULL, bad_truncated_body);
}

/* ---- a body unlike its label: 400 (any label but msgpack's means JSON) ---- */

static void bad_body_unlike_label(sup_env_t *e, it_ids_t *ids)
{
    json_t *events = json_array();
    char id[IT_ID_BYTES];
    sup_message_id(id, sizeof id, "unlike");
    json_array_append_new(events, sup_track(id, "small-user", "Small", 0));
    json_t *b = sup_batch(events);
    base_buf_t mp = {0}, txt = {0};
    assert_int_equal(sup_msgpack_encode(b, &mp), 0);
    assert_int_equal(sup_json_dump(b, &txt), 0);
    json_decref(b);
    static const char *const types[] = {"text/html", "application/json", "application/jsonx",
                                        "application/msgpackx", NULL};
    for (size_t i = 0; i < sizeof types / sizeof types[0]; i++) {
        sup_http_resp_t r;
        it_post(e, "/v1/batch", types[i], NULL, mp.data, mp.len, &r);
        it_assert_error(&r, 400, NULL);
        sup_http_resp_free(&r);
    }
    sup_http_resp_t r;
    it_post(e, "/v1/batch", "application/msgpack", NULL, txt.data, txt.len, &r);
    it_assert_error(&r, 400, NULL);
    sup_http_resp_free(&r);
    base_buf_free(&mp);
    base_buf_free(&txt);
    /* text/plain is JSON (what browsers' sendBeacon sends), as in Segment's API. */
    base_buf_t plain = {0};
    small_batch_text(&plain, ids, true);
    it_post(e, "/v1/batch", "text/plain;charset=UTF-8", NULL, plain.data, plain.len, &r);
    it_assert_ok(&r, 3, 0);
    sup_http_resp_free(&r);
    base_buf_free(&plain);
}

static void test_body_unlike_label(void **state)
{
    run_bad(state, NULL, bad_body_unlike_label);
}

/* ---- 415 ---- */

static void bad_wrong_encoding(sup_env_t *e, it_ids_t *ids)
{
    base_buf_t txt = {0};
    small_batch_text(&txt, ids, false);
    static const char *const encs[] = {"br", "deflate", "gzip, zstd", "compress"};
    for (size_t i = 0; i < sizeof encs / sizeof encs[0]; i++) {
        sup_http_resp_t r;
        it_post(e, "/v1/batch", "application/json", encs[i], txt.data, txt.len, &r);
        it_assert_error(&r, 415, "unsupported_media_type");
        sup_http_resp_free(&r);
    }
    base_buf_free(&txt);
}

static void test_wrong_encoding(void **state)
{
    run_bad(state, NULL, bad_wrong_encoding);
}

/* ---- 413 ---- */

static void post_bomb(sup_env_t *e, const char *enc, const base_buf_t *bomb)
{
    int64_t t0 = base_mono_ms();
    sup_http_resp_t r;
    it_post(e, "/v1/batch", "application/json", enc, bomb->data, bomb->len, &r);
    it_assert_error(&r, 413, "payload_too_large");
    sup_http_resp_free(&r);
    /* Decompression stops at the limit: the answer does not wait for 256 MiB of zeros. */
    assert_true(base_mono_ms() - t0 < 5000);
}

static void bad_zstd_bomb(sup_env_t *e, it_ids_t *ids)
{
    (void)ids;
    base_buf_t bomb = {0};
    assert_int_equal(sup_zstd_zeros((size_t)256 << 20, &bomb), 0);
    assert_true(bomb.len < 64 * 1024);
    post_bomb(e, "zstd", &bomb);
    base_buf_free(&bomb);
}

static void test_zstd_bomb(void **state)
{
    run_bad(state, NULL, bad_zstd_bomb);
}

static void bad_gzip_bomb(sup_env_t *e, it_ids_t *ids)
{
    (void)ids;
    base_buf_t bomb = {0};
    assert_int_equal(sup_gzip_zeros((size_t)100 << 20, &bomb), 0);
    assert_true(bomb.len < 256 * 1024);
    post_bomb(e, "gzip", &bomb);
    base_buf_free(&bomb);
}

static void test_gzip_bomb(void **state)
{
    run_bad(state, NULL, bad_gzip_bomb);
}

static void bad_content_length_over_limit(sup_env_t *e, it_ids_t *ids)
{
    (void)ids;
    static const long lengths[] = {104857600L, 512L * 1024 + 1};
    for (size_t i = 0; i < 2; i++) {
        char head[512];
        int n = snprintf(head, sizeof head,
                         "POST /v1/batch HTTP/1.1\r\nHost: 127.0.0.1\r\n" BASIC_WK_TEST
                         "Content-Type: application/json\r\nContent-Length: %ld\r\n\r\n",
                         lengths[i]);
        /* Only the head is sent: the 413 must come without the body. */
        base_buf_t answer = {0};
        int64_t t0 = base_mono_ms();
        int status = raw_exchange(e, head, (size_t)n, &answer, 5000);
        assert_raw_error(&answer, status, 413, "payload_too_large");
        assert_true(base_mono_ms() - t0 < 4000);
        base_buf_free(&answer);
    }
}

static void test_content_length_over_limit(void **state)
{
    run_bad(state, NULL, bad_content_length_over_limit);
}

static void bad_chunked_over_limit(sup_env_t *e, it_ids_t *ids)
{
    (void)ids;
    int fd = sup_tcp_connect(e->coll.port, 5000);
    assert_true(fd >= 0);
    static const char head[] = "POST /v1/batch HTTP/1.1\r\nHost: 127.0.0.1\r\n" BASIC_WK_TEST
                               "Content-Type: application/json\r\n"
                               "Transfer-Encoding: chunked\r\n\r\n";
    assert_int_equal(sup_tcp_send(fd, head, sizeof head - 1, 5000), 0);
    static char chunk[8192 + 16];
    int hn = snprintf(chunk, sizeof chunk, "2000\r\n");
    memset(chunk + hn, ' ', 8192);
    memcpy(chunk + hn + 8192, "\r\n", 2);
    /* 1 MiB of chunks, or until the server stops reading. */
    for (int i = 0; i < 128; i++)
        if (sup_tcp_send(fd, chunk, (size_t)hn + 8194, 2000) != 0) break;
    base_buf_t answer = {0};
    int status = sup_tcp_read_answer(fd, &answer, 5000);
    close(fd);
    assert_raw_error(&answer, status, 413, "payload_too_large");
    base_buf_free(&answer);
}

static void test_chunked_over_limit(void **state)
{
    run_bad(state, NULL, bad_chunked_over_limit);
}

/* ---- invalid events inside a readable batch ---- */

/* Posts events (stolen) as a JSON batch; asserts accepted/rejected; returns the answer. */
static void post_events(sup_env_t *e, json_t *events, long accepted, long rejected,
                        sup_http_resp_t *r)
{
    json_t *b = sup_batch(events);
    it_post_json(e, "/v1/batch", b, r);
    it_assert_ok(r, accepted, rejected);
    json_decref(b);
}

static void bad_oversized_event(sup_env_t *e, it_ids_t *ids)
{
    size_t big = 40 * 1024;
    char *blob = malloc(big + 1);
    assert_non_null(blob);
    memset(blob, 'x', big);
    blob[big] = '\0';
    json_t *huge = sup_track("big-1", "big-user", "Big", 1);
    json_object_set_new(json_object_get(huge, "properties"), "blob", json_string(blob));
    json_t *events = json_pack("[o,o,o]", sup_track("big-ok-0", "big-user", "Small", 0), huge,
                               sup_track("big-ok-2", "big-user", "Small", 2));
    sup_http_resp_t r;
    post_events(e, events, 2, 1, &r);
    it_assert_event_error(&r, 1, "big-1", "event_too_large");
    sup_http_resp_free(&r);
    it_ids_add(ids, "big-ok-0");
    it_ids_add(ids, "big-ok-2");
    free(blob);
}

static void test_oversized_event(void **state)
{
    run_bad(state, NULL, bad_oversized_event);
}

/* properties holding `levels` nested maps in all (properties itself is level 1). */
static json_t *nested_event(const char *id, int levels)
{
    json_t *inner = json_object();
    for (int i = 1; i < levels; i++)
        inner = json_pack("{s:o}", "n", inner);
    json_t *ev = sup_track(id, "deep-user", "Deep", 0);
    json_object_set_new(ev, "properties", inner);
    return ev;
}

static void bad_deep_nesting(sup_env_t *e, it_ids_t *ids)
{
    json_t *events = json_pack("[o,o]", nested_event("deep-16", 16), nested_event("deep-17", 17));
    sup_http_resp_t r;
    post_events(e, events, 1, 1, &r);
    it_assert_event_error(&r, 1, "deep-17", "too_deep");
    sup_http_resp_free(&r);
    it_ids_add(ids, "deep-16");

    /* 100k nested arrays: refused (as a body or as an event), never a stack overflow. */
    size_t depth = 100000;
    base_buf_t body = {0};
    const char *pre = "{\"batch\":[{\"type\":\"track\",\"messageId\":\"deep-x\",\"userId\":\"u\","
                      "\"event\":\"E\",\"properties\":{\"a\":";
    assert_int_equal(sup_text_append(&body, pre, strlen(pre)), 0);
    for (size_t i = 0; i < depth; i++)
        assert_int_equal(sup_text_append(&body, "[", 1), 0);
    for (size_t i = 0; i < depth; i++)
        assert_int_equal(sup_text_append(&body, "]", 1), 0);
    assert_int_equal(sup_text_append(&body, "}}]}", 4), 0);
    it_post(e, "/v1/batch", "application/json", NULL, body.data, body.len, &r);
    if (r.status == 400) {
        it_assert_error(&r, 400, "too_deep");
    } else {
        it_assert_ok(&r, 0, 1);
        it_assert_event_error(&r, 0, "deep-x", "too_deep");
    }
    sup_http_resp_free(&r);
    base_buf_free(&body);
}

static void test_deep_nesting(void **state)
{
    run_bad(state, NULL, bad_deep_nesting);
}

static void bad_invalid_utf8(sup_env_t *e, it_ids_t *ids)
{
    /* msgpack carries the bytes as they are: the event is rejected, the batch is not. */
    json_t *bad_name = sup_track("utf8-name", "utf-user", "x", 0);
    json_object_set_new(bad_name, "event", json_stringn_nocheck("bad\xff\xfe", 5));
    json_t *bad_prop = sup_track("utf8-prop", "utf-user", "ok", 0);
    json_object_set_new(json_object_get(bad_prop, "properties"), "s",
                        json_stringn_nocheck("\xed\xa0\x80", 3)); /* a surrogate */
    json_t *good = sup_track("utf8-ok", "utf-user", "héllo wörld ✓", 0);
    json_t *b = sup_batch(json_pack("[o,o,o]", bad_name, bad_prop, good));
    base_buf_t mp = {0};
    assert_int_equal(sup_msgpack_encode(b, &mp), 0);
    sup_http_resp_t r;
    it_post(e, "/v1/batch", "application/msgpack", NULL, mp.data, mp.len, &r);
    it_assert_ok(&r, 1, 2);
    it_assert_event_error(&r, 0, "utf8-name", "invalid_utf8");
    it_assert_event_error(&r, 1, "utf8-prop", "invalid_utf8");
    sup_http_resp_free(&r);
    it_ids_add(ids, "utf8-ok");
    json_decref(b);
    base_buf_free(&mp);

    /* The same bytes inside JSON text: the body (400) or the event may be refused. */
    static const char body[] = "{\"batch\":[{\"type\":\"track\",\"messageId\":\"utf8-json\","
                               "\"userId\":\"u\",\"event\":\"bad\xff\"}]}";
    it_post(e, "/v1/batch", "application/json", NULL, body, sizeof body - 1, &r);
    if (r.status == 400) {
        it_assert_error(&r, 400, NULL);
    } else {
        it_assert_ok(&r, 0, 1);
        it_assert_event_error(&r, 0, "utf8-json", "invalid_utf8");
    }
    sup_http_resp_free(&r);
}

static void test_invalid_utf8(void **state)
{
    run_bad(state, NULL, bad_invalid_utf8);
}

static void bad_missing_fields(sup_env_t *e, it_ids_t *ids)
{
    char long_id[102], long_uid[257];
    memset(long_id, 'm', 101);
    long_id[101] = '\0';
    memset(long_uid, 'u', 256);
    long_uid[256] = '\0';
    /* SPEC §2: no messageId (one is generated), userId "" beside an anonymousId and numeric ids
     * are valid now; their cases are in tests/compat/cases and test_surface.c. */
    json_t *events = json_pack(
        "[{s:s,s:s,s:s}, {s:i,s:s,s:s,s:s}, {s:s,s:i,s:s,s:s}, {s:s,s:s,s:s,s:s}, "
        "{s:s,s:s,s:s,s:s},"
        " {s:s,s:s,s:s}, {s:s,s:s,s:s,s:s}, {s:s,s:s,s:s,s:s}, {s:s,s:s,s:s}, {s:s,s:s,s:s,s:s},"
        " {s:s,s:s,s:s}, {s:s,s:s,s:s,s:s,s:s}, {s:s,s:s,s:s,s:[i]}, {s:s,s:s,s:s,s:i}, s,"
        " {s:s,s:s,s:s,s:s}]",
        /* 0 */ "messageId", "mf-0", "userId", "u", "event", "E",
        /* 1 */ "type", 42, "messageId", "mf-1", "userId", "u", "event", "E",
        /* 2 */ "type", "track", "messageId", 7, "userId", "u", "event", "E",
        /* 3 */ "type", "track", "messageId", "", "userId", "u", "event", "E",
        /* 4 */ "type", "track", "messageId", long_id, "userId", "u", "event", "E",
        /* 5 */ "type", "track", "messageId", "mf-5", "event", "E",
        /* 6 */ "type", "track", "messageId", "mf-6", "userId", long_uid, "event", "E",
        /* 7 */ "type", "track", "messageId", "mf-7", "anonymousId", long_uid, "event", "E",
        /* 8 */ "type", "track", "messageId", "mf-8", "userId", "u",
        /* 9 */ "type", "track", "messageId", "mf-9", "userId", "u", "event", "",
        /* 10 */ "type", "group", "messageId", "mf-10", "userId", "u",
        /* 11 */ "type", "track", "messageId", "mf-11", "userId", "u", "event", "E", "properties",
        "a string",
        /* 12 */ "type", "identify", "messageId", "mf-12", "userId", "u", "traits", 1,
        /* 13 */ "type", "page", "messageId", "mf-13", "userId", "u", "context", 5,
        /* 14 */ "just a string",
        /* 15 */ "type", "track", "messageId", "mf-ok", "userId", "u", "event", "E");
    assert_non_null(events);
    static const char *const want[] = {
        "missing_type",       "invalid_type",    "invalid_message_id", "invalid_message_id",
        "invalid_message_id", "missing_user",    "invalid_user_id",    "invalid_anonymous_id",
        "missing_event",      "invalid_event",   "missing_group_id",   "invalid_properties",
        "invalid_traits",     "invalid_context", "event_not_an_object"};
    static const char *const want_id[] = {"mf-0",  "mf-1",  NULL,    NULL,    NULL,
                                          "mf-5",  "mf-6",  "mf-7",  "mf-8",  "mf-9",
                                          "mf-10", "mf-11", "mf-12", "mf-13", NULL};
    json_t *copy = json_deep_copy(events);
    sup_http_resp_t r;
    post_events(e, events, 1, 15, &r);
    for (long i = 0; i < 15; i++)
        it_assert_event_error(&r, i, want_id[i], want[i]);
    sup_http_resp_free(&r);
    it_ids_add(ids, "mf-ok");

    /* Each rejected event is on events_rejected with its reason and the event as received. */
    sup_kmsgs_t m;
    assert_int_equal(sup_consume(e->mock.bootstrap, "events_rejected", 15, 10000, &m), 0);
    assert_int_equal(m.n, 15);
    size_t matched = 0;
    for (size_t k = 0; k < m.n; k++) {
        json_t *v = sup_kmsg_value(&m.msgs[k]);
        assert_non_null(v);
        const json_t *raw = json_object_get(v, "raw");
        for (size_t i = 0; i < 15; i++) {
            if (json_equal(raw, json_array_get(copy, i))) {
                assert_string_equal(json_string_value(json_object_get(v, "error")), want[i]);
                matched++;
                break;
            }
        }
        json_decref(v);
    }
    assert_int_equal(matched, 15);
    sup_kmsgs_free(&m);
    json_decref(copy);
}

static void test_missing_required_fields(void **state)
{
    run_bad(state, NULL, bad_missing_fields);
}

static void bad_absurd_timestamps(sup_env_t *e, it_ids_t *ids)
{
    json_t *events = json_array();
    static const char *const bad_ts[] = {"yesterday", "2026-13-45T99:00:00Z", "", "12:00"};
    for (size_t i = 0; i < 4; i++) {
        char id[32];
        snprintf(id, sizeof id, "ts-bad-%zu", i);
        json_t *ev = sup_track(id, "ts-user", "T", 0);
        json_object_set_new(ev, "timestamp", json_string(bad_ts[i]));
        json_array_append_new(events, ev);
    }
    json_t *ev = sup_track("ts-bad-bool", "ts-user", "T", 0);
    json_object_set_new(ev, "timestamp", json_true());
    json_array_append_new(events, ev);
    ev = sup_track("ts-bad-sent", "ts-user", "T", 0);
    json_object_set_new(ev, "sentAt", json_string("soon"));
    json_array_append_new(events, ev);
    ev = sup_track("ts-ok-int", "ts-user", "T", 0);
    json_object_set_new(ev, "timestamp", json_integer(base_wall_ms() - 1000));
    json_array_append_new(events, ev);
    sup_http_resp_t r;
    post_events(e, events, 1, 6, &r);
    for (long i = 0; i < 5; i++)
        it_assert_event_error(&r, i, NULL, "invalid_timestamp");
    it_assert_event_error(&r, 5, "ts-bad-sent", "invalid_sent_at");
    sup_http_resp_free(&r);
    it_ids_add(ids, "ts-ok-int");

    /* A batch-level sentAt that is not a time rejects the events that inherit it, one by one
     * (SPEC §2); an event with its own sentAt goes through. */
    json_t *own = sup_track("ts-batch-own", "ts-user", "T", 0);
    json_object_set_new(own, "sentAt", json_string("2026-11-23T12:00:00Z"));
    json_t *b = sup_batch(json_pack("[o,o]", sup_track("ts-batch", "ts-user", "T", 0), own));
    json_object_set_new(b, "sentAt", json_string("garbage"));
    it_post_json(e, "/v1/batch", b, &r);
    it_assert_ok(&r, 1, 1);
    it_assert_event_error(&r, 0, "ts-batch", "invalid_sent_at");
    sup_http_resp_free(&r);
    json_decref(b);
    it_ids_add(ids, "ts-batch-own");
}

static void test_absurd_timestamps(void **state)
{
    run_bad(state, NULL, bad_absurd_timestamps);
}

static void bad_future_clamped(sup_env_t *e, it_ids_t *ids)
{
    int64_t now = base_wall_ms();
    char far[32], near[32];
    base_iso8601_format(now + 48LL * 3600 * 1000, far);
    base_iso8601_format(now + 3600 * 1000, near);
    json_t *a = sup_track("fut-48h", "fut-user", "F", 0);
    json_object_set_new(a, "timestamp", json_string(far));
    json_t *b = sup_track("fut-1h", "fut-user", "F", 1);
    json_object_set_new(b, "timestamp", json_string(near));
    /* No sentAt anywhere: no skew correction, only the clamp. */
    json_t *batch = json_pack("{s:[o,o]}", "batch", a, b);
    sup_http_resp_t r;
    it_post_json(e, "/v1/batch", batch, &r);
    it_assert_ok(&r, 2, 0);
    sup_http_resp_free(&r);
    json_decref(batch);
    it_ids_add(ids, "fut-48h");
    it_ids_add(ids, "fut-1h");

    sup_kmsgs_t m;
    assert_int_equal(sup_consume(e->mock.bootstrap, "events", 7, 10000, &m), 0);
    long i48 = sup_kmsgs_find(&m, "fut-48h"), i1 = sup_kmsgs_find(&m, "fut-1h");
    assert_true(i48 >= 0 && i1 >= 0);
    json_t *v48 = sup_kmsg_value(&m.msgs[i48]), *v1 = sup_kmsg_value(&m.msgs[i1]);
    int64_t recv = 0, ts = 0, orig = 0;
    assert_int_equal(
        sup_parse_iso8601(json_string_value(json_object_get(v48, "receivedAt")), &recv), 0);
    assert_int_equal(sup_parse_iso8601(json_string_value(json_object_get(v48, "timestamp")), &ts),
                     0);
    assert_int_equal(ts, recv); /* clamped to receivedAt */
    const json_t *o = json_object_get(v48, "originalTimestamp");
    assert_non_null(o);
    if (json_is_integer(o))
        orig = json_integer_value(o);
    else
        assert_int_equal(sup_parse_iso8601(json_string_value(o), &orig), 0);
    int64_t want_orig = 0;
    sup_parse_iso8601(far, &want_orig);
    assert_int_equal(orig, want_orig);
    /* One hour ahead is within the 24 h allowance: kept as sent (and originalTimestamp, the
     * client's time as sent, is the same). */
    assert_string_equal(json_string_value(json_object_get(v1, "timestamp")), near);
    assert_string_equal(json_string_value(json_object_get(v1, "originalTimestamp")), near);
    json_decref(v48);
    json_decref(v1);
    sup_kmsgs_free(&m);
}

static void test_future_timestamp_clamped(void **state)
{
    run_bad(state, NULL, bad_future_clamped);
}

/* ---- broken HTTP and broken clients ---- */

static void bad_malformed_http(sup_env_t *e, it_ids_t *ids)
{
    (void)ids;
    static const char *const garbage[] = {
        "GARBAGE \x01\x02 NOT HTTP\r\n\r\n",
        "POST /v1/batch HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n",
        "POST /v1/batch HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n",
        "GET /healthz HTTP/9.9\r\n\r\n",
        "POST /v1/batch HTTP/1.1\r\nBad Header Without Colon\r\n\r\n"};
    for (size_t i = 0; i < sizeof garbage / sizeof garbage[0]; i++) {
        int fd = sup_tcp_connect(e->coll.port, 5000);
        assert_true(fd >= 0);
        sup_tcp_send(fd, garbage[i], strlen(garbage[i]), 2000);
        base_buf_t answer = {0};
        int closed = sup_tcp_read_until_close(fd, &answer, 65536, 5000);
        close(fd);
        /* Either a 400 answer then close, or just a close: never a hang, never a 2xx. */
        if (!closed) fprintf(stderr, "garbage %zu: connection left open\n", i);
        assert_true(closed);
        if (answer.len > 0) {
            int status = -1;
            sscanf(answer.data, "HTTP/1.%*d %d", &status);
            if (status != 400 && status != 505)
                fprintf(stderr, "garbage %zu answered: %s\n", i, answer.data);
            assert_true(status == 400 || status == 505);
        }
        base_buf_free(&answer);
    }
    /* Headers beyond the header-size bound: 431 or 400, or a close. */
    base_buf_t big = {0};
    const char *start = "GET /healthz HTTP/1.1\r\nHost: x\r\n";
    assert_int_equal(sup_text_append(&big, start, strlen(start)), 0);
    for (int i = 0; i < 2000; i++)
        assert_int_equal(
            sup_text_append(&big, "X-Padding: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n", 44), 0);
    assert_int_equal(sup_text_append(&big, "\r\n", 2), 0);
    int fd = sup_tcp_connect(e->coll.port, 5000);
    assert_true(fd >= 0);
    sup_tcp_send(fd, big.data, big.len, 2000);
    base_buf_t answer = {0};
    assert_true(sup_tcp_read_until_close(fd, &answer, 65536, 5000));
    close(fd);
    if (answer.len > 0) {
        int status = -1;
        sscanf(answer.data, "HTTP/1.%*d %d", &status);
        assert_true(status == 431 || status == 400 || status == 413);
    }
    base_buf_free(&answer);
    base_buf_free(&big);
}

static void test_malformed_http(void **state)
{
    run_bad(state, NULL, bad_malformed_http);
}

static uint64_t metric(const sup_env_t *e, const char *name)
{
    sup_http_req_t get = {.method = "GET", .path = "/metrics"};
    sup_http_resp_t r;
    assert_int_equal(sup_http_once(e->coll.port, &get, &r), 0);
    uint64_t v = 0;
    const char *p = r.body.data;
    size_t nl = strlen(name);
    bool found = false;
    while (p && *p) {
        if (strncmp(p, name, nl) == 0 && p[nl] == ' ') {
            v = strtoull(p + nl + 1, NULL, 10);
            found = true;
            break;
        }
        p = strchr(p, '\n');
        if (p) p++;
    }
    if (!found) fprintf(stderr, "metric %s missing\n", name);
    assert_true(found);
    sup_http_resp_free(&r);
    return v;
}

static void bad_disconnect_mid_body(sup_env_t *e, it_ids_t *ids)
{
    base_buf_t txt = {0};
    small_batch_text(&txt, ids, false);
    for (int round = 0; round < 3; round++) {
        int fd = sup_tcp_connect(e->coll.port, 5000);
        assert_true(fd >= 0);
        char head[512];
        int n = snprintf(head, sizeof head,
                         "POST /v1/batch HTTP/1.1\r\nHost: x\r\n" BASIC_WK_TEST
                         "Content-Type: application/json\r\nContent-Length: %zu\r\n\r\n",
                         txt.len);
        assert_int_equal(sup_tcp_send(fd, head, (size_t)n, 2000), 0);
        assert_int_equal(sup_tcp_send(fd, txt.data, txt.len / 2, 2000), 0);
        base_sleep_ms(50);
        close(fd);
    }
    base_buf_free(&txt);
    /* The half-sent events must not appear; the abort is counted. */
    int64_t deadline = base_mono_ms() + 3000;
    while (metric(e, "sluice_client_aborts_total") < 3 && base_mono_ms() < deadline)
        base_sleep_ms(50);
    assert_true(metric(e, "sluice_client_aborts_total") >= 3);
}

static void test_disconnect_mid_body(void **state)
{
    run_bad(state, NULL, bad_disconnect_mid_body);
}

static void bad_chunked_body(sup_env_t *e, it_ids_t *ids)
{
    /* 60 events in 1 KiB chunks, as JSON and as zstd-compressed msgpack. */
    json_t *events = json_array();
    for (int i = 0; i < 60; i++) {
        char id[IT_ID_BYTES];
        sup_message_id(id, sizeof id, "chunk");
        json_array_append_new(events, sup_track(id, "chunk-user", "Chunked", i));
        it_ids_add(ids, id);
    }
    json_t *b = sup_batch(events);
    base_buf_t txt = {0};
    assert_int_equal(sup_json_dump(b, &txt), 0);
    assert_true(txt.len > 3000);
    const char *h1[] = {"Content-Type: application/json", NULL};
    sup_http_req_t req = {.path = "/v1/batch",
                          .headers = h1,
                          .body = txt.data,
                          .body_len = txt.len,
                          .chunked = true,
                          .user = IT_KEY};
    sup_http_resp_t r;
    assert_int_equal(sup_http_once(e->coll.port, &req, &r), 0);
    it_assert_ok(&r, 60, 0);
    sup_http_resp_free(&r);

    json_t *b2 = sup_batch(json_pack("[o,o]", sup_track("chunk-z-0", "cz", "Z", 0),
                                     sup_track("chunk-z-1", "cz", "Z", 1)));
    base_buf_t mp = {0}, z = {0};
    assert_int_equal(sup_msgpack_encode(b2, &mp), 0);
    assert_int_equal(sup_zstd(mp.data, mp.len, &z), 0);
    const char *h2[] = {"Content-Type: application/msgpack", "Content-Encoding: zstd", NULL};
    sup_http_req_t req2 = {.path = "/v1/batch",
                           .headers = h2,
                           .body = z.data,
                           .body_len = z.len,
                           .chunked = true,
                           .user = IT_KEY};
    assert_int_equal(sup_http_once(e->coll.port, &req2, &r), 0);
    it_assert_ok(&r, 2, 0);
    sup_http_resp_free(&r);
    it_ids_add(ids, "chunk-z-0");
    it_ids_add(ids, "chunk-z-1");
    json_decref(b);
    json_decref(b2);
    base_buf_free(&txt);
    base_buf_free(&mp);
    base_buf_free(&z);
}

static void test_chunked_body(void **state)
{
    run_bad(state, NULL, bad_chunked_body);
}

static void bad_keep_alive(sup_env_t *e, it_ids_t *ids)
{
    sup_http_t *h = sup_http_new(e->coll.port);
    assert_non_null(h);
    for (int i = 0; i < 6; i++) {
        base_buf_t txt = {0};
        small_batch_text(&txt, ids, true);
        const char *hd[] = {"Content-Type: application/json", NULL};
        sup_http_req_t req = {.path = "/v1/batch",
                              .headers = hd,
                              .body = txt.data,
                              .body_len = txt.len,
                              .user = IT_KEY};
        /* Error answers keep the connection too. */
        if (i == 3) req.body_len = 5;
        sup_http_resp_t r;
        assert_int_equal(sup_http_do(h, &req, &r), 0);
        if (i == 3) {
            it_assert_error(&r, 400, "malformed_body");
            ids->n -= 3; /* that batch was cut: not accepted */
        } else {
            it_assert_ok(&r, 3, 0);
        }
        /* One connection for all requests. */
        assert_int_equal(r.num_connects, i == 0 ? 1 : 0);
        sup_http_resp_free(&r);
        base_buf_free(&txt);
    }
    sup_http_free(h);

    /* Two pipelined requests in one write get two answers, in order. */
    static const char two[] = "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"
                              "GET /nothing-here HTTP/1.1\r\nHost: x\r\n\r\n";
    int fd = sup_tcp_connect(e->coll.port, 5000);
    assert_true(fd >= 0);
    assert_int_equal(sup_tcp_send(fd, two, sizeof two - 1, 2000), 0);
    base_buf_t a1 = {0};
    assert_int_equal(sup_tcp_read_answer(fd, &a1, 5000), 200);
    /* The second answer may already be in a1 after the first one. */
    const char *second = strstr(a1.data + 5, "HTTP/1.1 ");
    base_buf_t a2 = {0};
    if (second)
        sup_text_append(&a2, second, strlen(second));
    else
        sup_tcp_read_answer(fd, &a2, 5000);
    int s2 = -1;
    if (a2.data) sscanf(a2.data, "HTTP/1.%*d %d", &s2);
    assert_int_equal(s2, 404);
    close(fd);
    base_buf_free(&a1);
    base_buf_free(&a2);
}

static void test_keep_alive(void **state)
{
    run_bad(state, NULL, bad_keep_alive);
}

static void bad_slowloris(sup_env_t *e, it_ids_t *ids)
{
    int fd = sup_tcp_connect(e->coll.port, 5000);
    assert_true(fd >= 0);
    static const char partial[] = "POST /v1/batch HTTP/1.1\r\nHost: x\r\nX-Slow: 1\r\n";
    int64_t t0 = base_mono_ms();
    assert_int_equal(sup_tcp_send(fd, partial, sizeof partial - 1, 2000), 0);
    /* While it dangles, other clients are served. */
    it_post_good(e, "during", 2, ids);
    /* Dribble a header byte every 200 ms: trickling does not extend the deadline. */
    bool closed = false;
    base_buf_t answer = {0};
    while (!closed && base_mono_ms() - t0 < 6000) {
        if (sup_tcp_send(fd, "X", 1, 500) != 0) {
            closed = true;
            break;
        }
        closed = sup_tcp_read_until_close(fd, &answer, 65536, 200) == 1;
    }
    int64_t took = base_mono_ms() - t0;
    close(fd);
    base_buf_free(&answer);
    if (!closed) fprintf(stderr, "slow connection still open after %lld ms\n", (long long)took);
    assert_true(closed);
    /* limits.header_timeout is 1 s here. */
    assert_true(took >= 800 && took < 4000);
    assert_true(metric(e, "sluice_connection_timeouts_total") >= 1);
}

static void test_slowloris(void **state)
{
    run_bad(state, "limits: {header_timeout: 1s}\n", bad_slowloris);
}

static void bad_idle_keep_alive(sup_env_t *e, it_ids_t *ids)
{
    (void)ids;
    int fd = sup_tcp_connect(e->coll.port, 5000);
    assert_true(fd >= 0);
    static const char get[] = "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n";
    assert_int_equal(sup_tcp_send(fd, get, sizeof get - 1, 2000), 0);
    base_buf_t answer = {0};
    assert_int_equal(sup_tcp_read_answer(fd, &answer, 5000), 200);
    base_buf_free(&answer);
    /* Idle after a complete exchange: closed after limits.idle_timeout (1 s here). */
    int64_t t0 = base_mono_ms();
    int closed = sup_tcp_read_until_close(fd, &answer, 65536, 5000);
    int64_t took = base_mono_ms() - t0;
    close(fd);
    base_buf_free(&answer);
    assert_true(closed);
    assert_true(took >= 700 && took < 4000);
}

static void test_idle_keep_alive_closed(void **state)
{
    run_bad(state, "limits: {idle_timeout: 1s}\n", bad_idle_keep_alive);
}

static void bad_connection_cap(sup_env_t *e, it_ids_t *ids)
{
    (void)ids;
    int held[3];
    for (int i = 0; i < 3; i++) {
        held[i] = sup_tcp_connect(e->coll.port, 5000);
        assert_true(held[i] >= 0);
    }
    base_sleep_ms(200); /* let the collector accept them */
    /* The cap (3) is reached: the next client is answered 503 and closed. */
    base_buf_t answer = {0};
    static const char get[] = "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n";
    int status = raw_exchange(e, get, sizeof get - 1, &answer, 5000);
    assert_raw_error(&answer, status, 503, NULL);
    base_buf_free(&answer);
    for (int i = 0; i < 3; i++)
        close(held[i]);
    /* Slots free again once the held connections are gone. */
    int64_t deadline = base_mono_ms() + 3000;
    do {
        base_sleep_ms(100);
        status = raw_exchange(e, get, sizeof get - 1, &answer, 5000);
        base_buf_free(&answer);
    } while (status != 200 && base_mono_ms() < deadline);
    assert_int_equal(status, 200);
}

static void test_connection_cap(void **state)
{
    run_bad(state, "limits: {max_connections: 3}\n", bad_connection_cap);
}

int main(int argc, char **argv)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_teardown(test_malformed_json, it_teardown),
        cmocka_unit_test_teardown(test_malformed_msgpack, it_teardown),
        cmocka_unit_test_teardown(test_truncated_body, it_teardown),
        cmocka_unit_test_teardown(test_body_unlike_label, it_teardown),
        cmocka_unit_test_teardown(test_wrong_encoding, it_teardown),
        cmocka_unit_test_teardown(test_zstd_bomb, it_teardown),
        cmocka_unit_test_teardown(test_gzip_bomb, it_teardown),
        cmocka_unit_test_teardown(test_content_length_over_limit, it_teardown),
        cmocka_unit_test_teardown(test_chunked_over_limit, it_teardown),
        cmocka_unit_test_teardown(test_oversized_event, it_teardown),
        cmocka_unit_test_teardown(test_deep_nesting, it_teardown),
        cmocka_unit_test_teardown(test_invalid_utf8, it_teardown),
        cmocka_unit_test_teardown(test_missing_required_fields, it_teardown),
        cmocka_unit_test_teardown(test_absurd_timestamps, it_teardown),
        cmocka_unit_test_teardown(test_future_timestamp_clamped, it_teardown),
        cmocka_unit_test_teardown(test_malformed_http, it_teardown),
        cmocka_unit_test_teardown(test_disconnect_mid_body, it_teardown),
        cmocka_unit_test_teardown(test_chunked_body, it_teardown),
        cmocka_unit_test_teardown(test_keep_alive, it_teardown),
        cmocka_unit_test_teardown(test_slowloris, it_teardown),
        cmocka_unit_test_teardown(test_idle_keep_alive_closed, it_teardown),
        cmocka_unit_test_teardown(test_connection_cap, it_teardown),
    };
    return it_run(argc, argv, "bad_input", tests, sizeof tests / sizeof tests[0]);
}
