/*
 * test_ingest.c — the happy paths end to end: batches in every body format, the single-call
 * endpoints, normalization (receivedAt, skew-corrected timestamp, source, accountId), rejected
 * events on events_rejected, the JSON output format, the three ways to authenticate, and the
 * operational endpoints (/healthz, /readyz, /metrics, CORS, 404/405).
 */
#include "it_common.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

/* The decoded value of the message carrying message_id (new ref); fails the case if absent. */
static json_t *value_of(const sup_kmsgs_t *m, const char *message_id, const sup_kmsg_t **msg)
{
    long at = sup_kmsgs_find(m, message_id);
    if (at < 0) fprintf(stderr, "messageId %s not on the topic\n", message_id);
    assert_true(at >= 0);
    if (msg) *msg = &m->msgs[at];
    json_t *v = sup_kmsg_value(&m->msgs[at]);
    assert_non_null(v);
    return v;
}

static int64_t iso_field(const json_t *v, const char *key)
{
    const char *s = json_string_value(json_object_get(v, key));
    if (!s) fprintf(stderr, "field %s missing\n", key);
    assert_non_null(s);
    int64_t ms = 0;
    if (sup_parse_iso8601(s, &ms) != 0) fprintf(stderr, "field %s not ISO-8601 ms Z: %s\n", key, s);
    assert_int_equal(sup_parse_iso8601(s, &ms), 0);
    return ms;
}

static void assert_str_field(const json_t *v, const char *key, const char *want)
{
    const char *s = json_string_value(json_object_get(v, key));
    if (!s || strcmp(s, want) != 0)
        fprintf(stderr, "field %s: want %s, got %s\n", key, want, s ? s : "(absent)");
    assert_non_null(s);
    assert_string_equal(s, want);
}

/* The headers every events message carries (SPEC §4). */
static void assert_event_headers(const sup_kmsg_t *m, const char *type, const char *message_id,
                                 const char *content_type_part)
{
    const char *schema = sup_kmsg_header(m, "sluice-schema");
    const char *ct = sup_kmsg_header(m, "content-type");
    const char *et = sup_kmsg_header(m, "event-type");
    const char *mid = sup_kmsg_header(m, "message-id");
    assert_non_null(schema);
    assert_string_equal(schema, "1");
    assert_non_null(ct);
    if (!strstr(ct, content_type_part))
        fprintf(stderr, "content-type header %s lacks %s\n", ct, content_type_part);
    assert_non_null(strstr(ct, content_type_part));
    assert_non_null(et);
    assert_string_equal(et, type);
    assert_non_null(mid);
    assert_string_equal(mid, message_id);
}

/*
 * A batch of n track events sent at sentAt = now, event i stamped (5000 + i) ms before sentAt,
 * every 4th with context.groupId "acct-<i%3>". Returns the batch; ids get the messageIds.
 */
static json_t *skewed_batch(size_t n, const char *prefix, it_ids_t *ids, int64_t sent_at)
{
    json_t *events = json_array();
    for (size_t i = 0; i < n; i++) {
        char id[IT_ID_BYTES], user[32], ts[32];
        sup_message_id(id, sizeof id, prefix);
        snprintf(user, sizeof user, "u%zu", i % 10);
        json_t *ev = sup_track(id, user, "Clicked", (int)i);
        base_iso8601_format(sent_at - 5000 - (int64_t)i, ts);
        json_object_set_new(ev, "timestamp", json_string(ts));
        if (i % 4 == 0) {
            char acct[32];
            snprintf(acct, sizeof acct, "acct-%zu", i % 3);
            json_object_set_new(ev, "context", json_pack("{s:s}", "groupId", acct));
        }
        json_array_append_new(events, ev);
        it_ids_add(ids, id);
    }
    char sent[32];
    base_iso8601_format(sent_at, sent);
    return json_pack("{s:o, s:s}", "batch", events, "sentAt", sent);
}

/* Checks the events topic against a skewed_batch(): keys, headers and normalized fields. */
static void assert_skewed_delivery(const sup_env_t *e, const it_ids_t *ids, int64_t t0, int64_t t1,
                                   const char *content_type_part)
{
    sup_kmsgs_t m;
    it_assert_events_exactly(e, ids, &m);
    for (size_t i = 0; i < ids->n; i++) {
        const sup_kmsg_t *msg;
        json_t *v = value_of(&m, ids->id[i], &msg);
        char user[32], acct[32];
        snprintf(user, sizeof user, "u%zu", i % 10);
        snprintf(acct, sizeof acct, "acct-%zu", i % 3);
        const char *want_key = i % 4 == 0 ? acct : user;
        assert_non_null(msg->key);
        assert_string_equal(msg->key, want_key);
        assert_event_headers(msg, "track", ids->id[i], content_type_part);
        assert_str_field(v, "messageId", ids->id[i]);
        assert_str_field(v, "userId", user);
        assert_str_field(v, "event", "Clicked");
        assert_str_field(v, "source", IT_SOURCE);
        if (i % 4 == 0)
            assert_str_field(v, "accountId", acct);
        else
            assert_null(json_object_get(v, "accountId"));
        assert_int_equal(json_integer_value(json_object_get(json_object_get(v, "properties"), "i")),
                         (json_int_t)i);
        int64_t received = iso_field(v, "receivedAt");
        int64_t ts = iso_field(v, "timestamp");
        assert_true(received >= t0 - 1000 && received <= t1 + 1000);
        /* timestamp = receivedAt - (sentAt - timestamp): the client's clock skew removed. */
        assert_int_equal(received - ts, 5000 + (int64_t)i);
        /* originalTimestamp is the client's clock as sent, sentAt the batch's (Segment's). */
        int64_t orig = iso_field(v, "originalTimestamp"), sent = iso_field(v, "sentAt");
        assert_int_equal(sent - orig, 5000 + (int64_t)i);
        json_decref(v);
    }
    sup_kmsgs_free(&m);
}

static void test_batch_msgpack_zstd(void **state)
{
    sup_env_t *e = it_start(state, NULL);
    it_ids_t ids = {0};
    int64_t t0 = base_wall_ms();
    /* The client's clock runs an hour behind: only the offsets within the batch matter. */
    json_t *batch = skewed_batch(100, "mz", &ids, t0 - 3600 * 1000);
    base_buf_t mp = {0}, z = {0};
    assert_int_equal(sup_msgpack_encode(batch, &mp), 0);
    assert_int_equal(sup_zstd(mp.data, mp.len, &z), 0);
    sup_http_resp_t resp;
    it_post(e, "/v1/batch", "application/msgpack", "zstd", z.data, z.len, &resp);
    it_assert_ok(&resp, 100, 0);
    sup_http_resp_free(&resp);
    int64_t t1 = base_wall_ms();
    assert_skewed_delivery(e, &ids, t0, t1, "msgpack");
    json_decref(batch);
    base_buf_free(&mp);
    base_buf_free(&z);
}

static void test_batch_json_gzip(void **state)
{
    sup_env_t *e = it_start(state, NULL);
    it_ids_t ids = {0};
    int64_t t0 = base_wall_ms();
    json_t *batch = skewed_batch(40, "jg", &ids, t0 + 90 * 1000); /* clock 90 s ahead */
    base_buf_t txt = {0}, g = {0};
    assert_int_equal(sup_json_dump(batch, &txt), 0);
    assert_int_equal(sup_gzip(txt.data, txt.len, &g), 0);
    sup_http_resp_t resp;
    it_post(e, "/v1/batch", "application/json", "gzip", g.data, g.len, &resp);
    it_assert_ok(&resp, 40, 0);
    sup_http_resp_free(&resp);
    assert_skewed_delivery(e, &ids, t0, base_wall_ms(), "msgpack");
    json_decref(batch);
    base_buf_free(&txt);
    base_buf_free(&g);
}

static void test_batch_json_plain_and_x_msgpack(void **state)
{
    sup_env_t *e = it_start(state, NULL);
    it_ids_t ids = {0};
    int64_t t0 = base_wall_ms();
    json_t *batch = skewed_batch(12, "jp", &ids, t0);
    sup_http_resp_t resp;
    it_post_json(e, "/v1/batch", batch, &resp);
    it_assert_ok(&resp, 12, 0);
    sup_http_resp_free(&resp);
    assert_skewed_delivery(e, &ids, t0, base_wall_ms(), "msgpack");
    json_decref(batch);

    /* application/x-msgpack and a charset parameter on JSON are accepted too. */
    json_t *b2 = skewed_batch(4, "xm", &ids, base_wall_ms());
    base_buf_t mp = {0}, txt = {0};
    assert_int_equal(sup_msgpack_encode(b2, &mp), 0);
    it_post(e, "/v1/batch", "application/x-msgpack", NULL, mp.data, mp.len, &resp);
    it_assert_ok(&resp, 4, 0);
    sup_http_resp_free(&resp);
    json_t *b3 = skewed_batch(3, "cs", &ids, base_wall_ms());
    assert_int_equal(sup_json_dump(b3, &txt), 0);
    it_post(e, "/v1/batch", "application/json; charset=utf-8", NULL, txt.data, txt.len, &resp);
    it_assert_ok(&resp, 3, 0);
    sup_http_resp_free(&resp);
    it_assert_events_exactly(e, &ids, NULL);
    json_decref(b2);
    json_decref(b3);
    base_buf_free(&mp);
    base_buf_free(&txt);
}

static void test_single_calls(void **state)
{
    sup_env_t *e = it_start(state, NULL);
    static const char *const types[] = {"track", "identify", "group", "page", "screen", "alias"};
    it_ids_t ids = {0};
    for (size_t t = 0; t < 6; t++) {
        char id[IT_ID_BYTES], path[32];
        sup_message_id(id, sizeof id, types[t]);
        it_ids_add(&ids, id);
        json_t *ev = json_pack("{s:s, s:s}", "messageId", id, "userId", "solo-user");
        if (t == 0) json_object_set_new(ev, "event", json_string("Single Track"));
        if (t == 1) json_object_set_new(ev, "traits", json_pack("{s:s}", "plan", "pro"));
        if (t == 2) json_object_set_new(ev, "groupId", json_string("acct-solo"));
        if (t == 3 || t == 4) json_object_set_new(ev, "name", json_string("Home"));
        if (t == 5) json_object_set_new(ev, "previousId", json_string("old-id"));
        snprintf(path, sizeof path, "/v1/%s", types[t]);
        sup_http_resp_t resp;
        it_post_json(e, path, ev, &resp);
        it_assert_ok(&resp, 1, 0);
        sup_http_resp_free(&resp);
        json_decref(ev);
    }
    /* A body whose type disagrees with the endpoint is rejected, not silently retyped. */
    json_t *bad = json_pack("{s:s, s:s, s:s, s:s}", "type", "identify", "messageId", "mismatch-1",
                            "userId", "solo-user", "event", "X");
    sup_http_resp_t resp;
    it_post_json(e, "/v1/track", bad, &resp);
    assert_int_equal(resp.status, 200);
    assert_int_equal(json_integer_value(json_object_get(resp.json, "rejected")), 1);
    it_assert_event_error(&resp, 0, "mismatch-1", "invalid_type");
    sup_http_resp_free(&resp);
    json_decref(bad);

    sup_kmsgs_t m;
    it_assert_events_exactly(e, &ids, &m);
    for (size_t t = 0; t < 6; t++) {
        const sup_kmsg_t *msg;
        json_t *v = value_of(&m, ids.id[t], &msg);
        assert_str_field(v, "type", types[t]);
        assert_event_headers(msg, types[t], ids.id[t], "msgpack");
        /* The group call names the account; every later call of that user learns it. */
        const char *want_key = t >= 2 ? "acct-solo" : "solo-user";
        assert_string_equal(msg->key, want_key);
        if (t >= 2) assert_str_field(v, "accountId", "acct-solo");
        json_decref(v);
    }
    sup_kmsgs_free(&m);
}

static void test_account_id_sources(void **state)
{
    sup_env_t *e = it_start(state, NULL);
    it_ids_t ids = {0};
    /* 1: alice joins acct-A through a group call (its own request). */
    json_t *g = json_pack("{s:s, s:s, s:s}", "messageId", "acc-group", "userId", "alice", "groupId",
                          "acct-A");
    sup_http_resp_t resp;
    it_post_json(e, "/v1/group", g, &resp);
    it_assert_ok(&resp, 1, 0);
    sup_http_resp_free(&resp);
    json_decref(g);
    it_ids_add(&ids, "acc-group");

    /* 2: a later batch: learned account, context.groupId (wins over learned), none, anonymous,
     * and a group call in the same batch that the next event already sees. */
    json_t *events = json_pack(
        "[{s:s,s:s,s:s,s:s}, {s:s,s:s,s:s,s:s,s:{s:s}}, {s:s,s:s,s:s,s:s}, {s:s,s:s,s:s,s:s},"
        " {s:s,s:s,s:s,s:s}, {s:s,s:s,s:s,s:s}]",
        "type", "track", "messageId", "acc-learned", "userId", "alice", "event", "E", "type",
        "track", "messageId", "acc-context", "userId", "alice", "event", "E", "context", "groupId",
        "acct-B", "type", "track", "messageId", "acc-none", "userId", "carol", "event", "E", "type",
        "track", "messageId", "acc-anon", "anonymousId", "anon-1", "event", "E", "type", "group",
        "messageId", "acc-group2", "userId", "dave", "groupId", "acct-D", "type", "track",
        "messageId", "acc-same-batch", "userId", "dave", "event", "E");
    assert_non_null(events);
    json_t *batch = sup_batch(events);
    it_post_json(e, "/v1/batch", batch, &resp);
    it_assert_ok(&resp, 6, 0);
    sup_http_resp_free(&resp);
    json_decref(batch);
    static const char *const want[][3] = {
        /* messageId, key, accountId or NULL */
        {"acc-learned", "acct-A", "acct-A"}, {"acc-context", "acct-B", "acct-B"},
        {"acc-none", "carol", NULL},         {"acc-anon", "anon-1", NULL},
        {"acc-group2", "acct-D", "acct-D"},  {"acc-same-batch", "acct-D", "acct-D"},
    };
    for (size_t i = 0; i < 6; i++)
        it_ids_add(&ids, want[i][0]);
    sup_kmsgs_t m;
    it_assert_events_exactly(e, &ids, &m);
    for (size_t i = 0; i < 6; i++) {
        const sup_kmsg_t *msg;
        json_t *v = value_of(&m, want[i][0], &msg);
        if (strcmp(msg->key, want[i][1]) != 0)
            fprintf(stderr, "%s: want key %s, got %s\n", want[i][0], want[i][1], msg->key);
        assert_string_equal(msg->key, want[i][1]);
        if (want[i][2])
            assert_str_field(v, "accountId", want[i][2]);
        else
            assert_null(json_object_get(v, "accountId"));
        json_decref(v);
    }
    sup_kmsgs_free(&m);
}

static void test_rejected_events_topic(void **state)
{
    sup_env_t *e = it_start(state, NULL);
    json_t *events = json_pack(
        "[{s:s,s:s,s:s,s:s}, {s:s,s:s,s:s}, {s:s,s:s,s:s,s:s}, {s:s,s:s,s:s}, {s:s,s:s,s:s,s:s}]",
        "type", "track", "messageId", "rj-ok-0", "userId", "ann", "event", "E",
        /* 1: no type */
        "messageId", "rj-notype", "userId", "ann", "event", "E", "type", "track", "messageId",
        "rj-ok-2", "userId", "ann", "event", "E",
        /* 3: track without event */
        "type", "track", "messageId", "rj-noevent", "userId", "bob",
        /* 4: unknown type */
        "type", "purchase", "messageId", "rj-badtype", "anonymousId", "anon-9", "event", "E");
    json_t *batch = sup_batch(json_incref(events));
    sup_http_resp_t resp;
    it_post_json(e, "/v1/batch", batch, &resp);
    it_assert_ok(&resp, 2, 3);
    it_assert_event_error(&resp, 1, "rj-notype", "missing_type");
    it_assert_event_error(&resp, 3, "rj-noevent", "missing_event");
    it_assert_event_error(&resp, 4, "rj-badtype", "invalid_type");
    sup_http_resp_free(&resp);

    it_ids_t ids = {0};
    it_ids_add(&ids, "rj-ok-0");
    it_ids_add(&ids, "rj-ok-2");
    it_assert_events_exactly(e, &ids, NULL);

    sup_kmsgs_t m;
    assert_int_equal(sup_consume(e->mock.bootstrap, "events_rejected", 3, 10000, &m), 0);
    assert_int_equal(m.n, 3);
    static const struct {
        size_t index;
        const char *id, *code, *key;
    } want[] = {{1, "rj-notype", "missing_type", "ann"},
                {3, "rj-noevent", "missing_event", "bob"},
                {4, "rj-badtype", "invalid_type", "anon-9"}};
    for (size_t i = 0; i < 3; i++) {
        const sup_kmsg_t *msg;
        json_t *v = value_of(&m, want[i].id, &msg);
        /* Rejected records are JSON, whatever the events format. */
        assert_true(msg->value[0] == '{');
        assert_str_field(v, "error", want[i].code);
        assert_str_field(v, "source", IT_SOURCE);
        const char *text = json_string_value(json_object_get(v, "message"));
        assert_non_null(text);
        assert_true(text[0] != '\0');
        iso_field(v, "receivedAt");
        /* raw is the event exactly as received. */
        assert_true(json_equal(json_object_get(v, "raw"), json_array_get(events, want[i].index)));
        assert_non_null(msg->key);
        assert_string_equal(msg->key, want[i].key);
        json_decref(v);
    }
    sup_kmsgs_free(&m);
    json_decref(batch);
    json_decref(events);
}

static void test_output_json_format(void **state)
{
    sup_env_t *e = it_start(state, "kafka: {format: json}\n");
    it_ids_t ids = {0};
    int64_t t0 = base_wall_ms();
    json_t *batch = skewed_batch(8, "fj", &ids, t0);
    base_buf_t mp = {0};
    assert_int_equal(sup_msgpack_encode(batch, &mp), 0);
    sup_http_resp_t resp;
    it_post(e, "/v1/batch", "application/msgpack", NULL, mp.data, mp.len, &resp);
    it_assert_ok(&resp, 8, 0);
    sup_http_resp_free(&resp);
    assert_skewed_delivery(e, &ids, t0, base_wall_ms(), "json");
    sup_kmsgs_t m;
    assert_int_equal(sup_consume(e->mock.bootstrap, "events", 8, 10000, &m), 0);
    for (size_t i = 0; i < m.n; i++) {
        json_error_t jerr;
        json_t *v = json_loadb(m.msgs[i].value, m.msgs[i].value_len, 0, &jerr);
        if (!v) fprintf(stderr, "value is not JSON: %s\n", jerr.text);
        assert_non_null(v);
        json_decref(v);
    }
    sup_kmsgs_free(&m);
    json_decref(batch);
    base_buf_free(&mp);
}

/* Posts one track event with the given auth; returns the HTTP status; adds the id when 200. */
static long post_with_auth(const sup_env_t *e, const char *user, const char *bearer,
                           const char *body_key, const char *id, it_ids_t *ids)
{
    json_t *batch = sup_batch(json_pack("[o]", sup_track(id, "auth-user", "Auth", 0)));
    if (body_key) json_object_set_new(batch, "writeKey", json_string(body_key));
    base_buf_t body = {0};
    assert_int_equal(sup_json_dump(batch, &body), 0);
    char auth[128];
    const char *headers[3] = {"Content-Type: application/json", NULL, NULL};
    if (bearer) {
        snprintf(auth, sizeof auth, "Authorization: Bearer %s", bearer);
        headers[1] = auth;
    }
    sup_http_req_t req = {.path = "/v1/batch",
                          .headers = headers,
                          .body = body.data,
                          .body_len = body.len,
                          .user = user};
    sup_http_resp_t resp;
    sup_http_once(e->coll.port, &req, &resp);
    long status = resp.status;
    if (status == 200) {
        it_assert_ok(&resp, 1, 0);
        it_ids_add(ids, id);
    } else {
        it_assert_error(&resp, status, NULL);
    }
    sup_http_resp_free(&resp);
    base_buf_free(&body);
    json_decref(batch);
    return status;
}

static void test_auth_modes(void **state)
{
    sup_env_t *e = it_start(state, NULL);
    it_ids_t ids = {0};
    assert_int_equal(post_with_auth(e, "wk_test", NULL, NULL, "auth-basic", &ids), 200);
    assert_int_equal(post_with_auth(e, NULL, "wk_web", NULL, "auth-bearer", &ids), 200);
    assert_int_equal(post_with_auth(e, NULL, NULL, "wk_web", "auth-body", &ids), 200);
    /* Unknown or missing keys: 401, nothing produced. */
    assert_int_equal(post_with_auth(e, "wk_unknown_0123456789", NULL, NULL, "auth-x1", &ids), 401);
    assert_int_equal(post_with_auth(e, NULL, "wk_unknown_0123456789", NULL, "auth-x2", &ids), 401);
    assert_int_equal(post_with_auth(e, NULL, NULL, "wk_unknown_0123456789", "auth-x3", &ids), 401);
    assert_int_equal(post_with_auth(e, NULL, NULL, NULL, "auth-x4", &ids), 401);
    /* A prefix of a real key is not that key. */
    assert_int_equal(post_with_auth(e, "wk_tes", NULL, NULL, "auth-x5", &ids), 401);

    sup_kmsgs_t m;
    it_assert_events_exactly(e, &ids, &m);
    static const char *const want_source[][2] = {
        {"auth-basic", "test"}, {"auth-bearer", "web"}, {"auth-body", "web"}};
    for (size_t i = 0; i < 3; i++) {
        json_t *v = value_of(&m, want_source[i][0], NULL);
        assert_str_field(v, "source", want_source[i][1]);
        json_decref(v);
    }
    sup_kmsgs_free(&m);
    /* Keys are never logged whole (debug level is on). */
    assert_false(sup_collector_log_contains(&e->coll, "wk_unknown_0123456789"));
}

static uint64_t metric_value(const char *text, const char *name)
{
    size_t nl = strlen(name);
    for (const char *p = text; p && *p;) {
        if (strncmp(p, name, nl) == 0 && p[nl] == ' ') return strtoull(p + nl + 1, NULL, 10);
        p = strchr(p, '\n');
        if (p) p++;
    }
    fprintf(stderr, "metric %s not found\n", name);
    fail();
    return 0;
}

static void test_health_ready_metrics(void **state)
{
    sup_env_t *e = it_start(state, NULL);
    sup_http_resp_t resp;
    sup_http_req_t get = {.method = "GET", .path = "/healthz"};
    assert_int_equal(sup_http_once(e->coll.port, &get, &resp), 0);
    assert_int_equal(resp.status, 200);
    sup_http_resp_free(&resp);

    get.path = "/readyz";
    assert_int_equal(sup_http_once(e->coll.port, &get, &resp), 0);
    assert_int_equal(resp.status, 200);
    assert_non_null(resp.json); /* a JSON body saying why */
    sup_http_resp_free(&resp);

    it_ids_t ids = {0};
    it_post_good(e, "met", 7, &ids);
    json_t *batch = sup_batch(
        json_pack("[{s:s,s:s,s:s}]", "type", "track", "messageId", "met-bad", "userId", "x"));
    it_post_json(e, "/v1/batch", batch, &resp);
    it_assert_ok(&resp, 0, 1);
    sup_http_resp_free(&resp);
    json_decref(batch);
    it_ids_t none = {0};
    assert_int_equal(post_with_auth(e, "nobody-key", NULL, NULL, "met-unauth", &none), 401);
    /* A group call teaches the bounded user->account map, whose size is a gauge. */
    batch = sup_batch(json_pack("[{s:s,s:s,s:s,s:s}]", "type", "group", "messageId", "met-g",
                                "userId", "met-user", "groupId", "met-acct"));
    it_post_json(e, "/v1/batch", batch, &resp);
    it_assert_ok(&resp, 1, 0);
    sup_http_resp_free(&resp);
    json_decref(batch);

    get.path = "/metrics";
    assert_int_equal(sup_http_once(e->coll.port, &get, &resp), 0);
    assert_int_equal(resp.status, 200);
    char ct[128];
    assert_true(sup_http_header(&resp, "Content-Type", ct, sizeof ct));
    assert_non_null(strstr(ct, "text/plain"));
    const char *t = resp.body.data;
    assert_non_null(t);
    assert_true(metric_value(t, "sluice_events_accepted_total") >= 7);
    assert_true(metric_value(t, "sluice_events_received_total") >= 8);
    assert_true(metric_value(t, "sluice_events_rejected_total") >= 1);
    assert_true(
        metric_value(t, "sluice_events_rejected_by_reason_total{reason=\"missing_event\"}") >= 1);
    assert_true(metric_value(t, "sluice_http_responses_total{code=\"200\"}") >= 2);
    assert_true(metric_value(t, "sluice_http_responses_total{code=\"401\"}") >= 1);
    assert_true(metric_value(t, "sluice_auth_failures_total") >= 1);
    assert_true(metric_value(t, "sluice_kafka_delivered_total") >= 7);
    assert_true(metric_value(t, "sluice_user_accounts") >= 1);
    assert_true(metric_value(t, "sluice_user_accounts_evictions_total") == 0);
    assert_non_null(strstr(t, "sluice_request_duration_seconds_bucket"));
    assert_non_null(strstr(t, "# TYPE sluice_events_accepted_total counter"));
    sup_http_resp_free(&resp);
}

static void test_cors_preflight(void **state)
{
    sup_env_t *e = it_start(state, NULL);
    const char *headers[] = {"Origin: https://app.example.com",
                             "Access-Control-Request-Method: POST",
                             "Access-Control-Request-Headers: content-type, authorization", NULL};
    static const char *const paths[] = {"/v1/batch", "/v1/track", "/v1/alias"};
    for (size_t i = 0; i < 3; i++) {
        sup_http_req_t req = {.method = "OPTIONS", .path = paths[i], .headers = headers};
        sup_http_resp_t resp;
        assert_int_equal(sup_http_once(e->coll.port, &req, &resp), 0);
        assert_true(resp.status == 200 || resp.status == 204);
        char v[256];
        assert_true(sup_http_header(&resp, "Access-Control-Allow-Origin", v, sizeof v));
        assert_true(strcmp(v, "*") == 0 || strcmp(v, "https://app.example.com") == 0);
        assert_true(sup_http_header(&resp, "Access-Control-Allow-Methods", v, sizeof v));
        assert_non_null(strstr(v, "POST"));
        assert_true(sup_http_header(&resp, "Access-Control-Allow-Headers", v, sizeof v));
        assert_non_null(strcasestr(v, "authorization"));
        assert_non_null(strcasestr(v, "content-type"));
        sup_http_resp_free(&resp);
    }
}

static void test_not_found_and_wrong_method(void **state)
{
    sup_env_t *e = it_start(state, NULL);
    sup_http_resp_t resp;
    sup_http_req_t req = {.method = "GET", .path = "/v2/nothing"};
    sup_http_once(e->coll.port, &req, &resp);
    it_assert_error(&resp, 404, NULL);
    sup_http_resp_free(&resp);
    req.path = "/v1/batch";
    sup_http_once(e->coll.port, &req, &resp);
    it_assert_error(&resp, 405, NULL);
    sup_http_resp_free(&resp);
    req.method = "DELETE";
    req.path = "/v1/track";
    sup_http_once(e->coll.port, &req, &resp);
    it_assert_error(&resp, 405, NULL);
    sup_http_resp_free(&resp);
    it_ids_t ids = {0};
    it_assert_still_serving(e, &ids);
    it_assert_events_exactly(e, &ids, NULL);
}

static void test_rate_limit_429(void **state)
{
    sup_env_t *e = it_start(state, "limits: {rate_per_key: 10}\n");
    it_ids_t ids = {0};
    long limited = 0;
    for (int i = 0; i < 6 && !limited; i++) {
        json_t *events = json_array();
        it_ids_t these = {0};
        for (int k = 0; k < 10; k++) {
            char id[IT_ID_BYTES];
            sup_message_id(id, sizeof id, "rate");
            json_array_append_new(events, sup_track(id, "rate-user", "Fast", k));
            it_ids_add(&these, id);
        }
        json_t *batch = sup_batch(events);
        sup_http_resp_t r;
        it_post_json(e, "/v1/batch", batch, &r);
        json_decref(batch);
        if (r.status == 429) {
            it_assert_error(&r, 429, "rate_limited");
            char ra[32];
            assert_true(sup_http_header(&r, "Retry-After", ra, sizeof ra));
            assert_true(atoi(ra) >= 1);
            limited = 1;
        } else {
            it_assert_ok(&r, 10, 0);
            for (size_t k = 0; k < these.n; k++)
                it_ids_add(&ids, these.id[k]);
        }
        sup_http_resp_free(&r);
    }
    /* 10 events/s with a one-second burst: 60 events at once cannot all pass. */
    assert_true(limited);
    assert_true(ids.n >= 10);
    /* Another key has its own budget. */
    char id[IT_ID_BYTES];
    sup_message_id(id, sizeof id, "rate-web");
    json_t *batch = sup_batch(json_pack("[o]", sup_track(id, "rate-user", "Other Key", 0)));
    base_buf_t body = {0};
    assert_int_equal(sup_json_dump(batch, &body), 0);
    const char *hd[] = {"Content-Type: application/json", NULL};
    sup_http_req_t req = {.path = "/v1/batch",
                          .headers = hd,
                          .body = body.data,
                          .body_len = body.len,
                          .user = "wk_web"};
    sup_http_resp_t r;
    sup_http_once(e->coll.port, &req, &r);
    it_assert_ok(&r, 1, 0);
    it_ids_add(&ids, id);
    sup_http_resp_free(&r);
    base_buf_free(&body);
    json_decref(batch);
    it_assert_events_exactly(e, &ids, NULL);
}

int main(int argc, char **argv)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_teardown(test_batch_msgpack_zstd, it_teardown),
        cmocka_unit_test_teardown(test_batch_json_gzip, it_teardown),
        cmocka_unit_test_teardown(test_batch_json_plain_and_x_msgpack, it_teardown),
        cmocka_unit_test_teardown(test_single_calls, it_teardown),
        cmocka_unit_test_teardown(test_account_id_sources, it_teardown),
        cmocka_unit_test_teardown(test_rejected_events_topic, it_teardown),
        cmocka_unit_test_teardown(test_output_json_format, it_teardown),
        cmocka_unit_test_teardown(test_auth_modes, it_teardown),
        cmocka_unit_test_teardown(test_health_ready_metrics, it_teardown),
        cmocka_unit_test_teardown(test_cors_preflight, it_teardown),
        cmocka_unit_test_teardown(test_not_found_and_wrong_method, it_teardown),
        cmocka_unit_test_teardown(test_rate_limit_429, it_teardown),
    };
    return it_run(argc, argv, "ingest", tests, sizeof tests / sizeof tests[0]);
}
