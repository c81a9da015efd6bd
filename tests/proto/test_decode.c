/* Unit tests for proto/decode.c: both formats, the envelope, request-level errors and hostile
 * bodies (huge counts, deep nesting, truncation at every offset, trailing data). */
#include "testutil.h"

#define GOOD_BATCH                                                                                 \
    "{\"writeKey\":\"wk_1\",\"sentAt\":\"2026-11-23T12:00:00Z\",\"context\":{\"ip\":\"1.2.3.4\"}," \
    "\"batch\":[" TU_EVENT(                                                                        \
        ",\"properties\":{\"plan\":\"pro\",\"seats\":7,\"ratio\":0.5,"                             \
        "\"tags\":[\"a\",null,true]}") ","                                                         \
                                       "{\"type\":\"identify\",\"messageId\":\"m2\","              \
                                       "\"anonymousId\":\"a2\",\"traits\":{}}]}"

static void test_good_batch(void **state)
{
    (void)state;
    TU_BOTH({
        tu_body_t t;
        assert_int_equal(tu_decode(&t, GOOD_BATCH, fmt, PROTO_T_NONE, NULL), PROTO_OK);
        assert_int_equal(t.b.n_events, 2);
        assert_memory_equal(t.b.write_key.ptr, "wk_1", 4);
        assert_int_equal(t.b.write_key.len, 4);
        assert_true(t.b.has_sent_at);
        assert_int_equal(t.b.sent_at_ms, 1795435200000LL);
        assert_non_null(t.b.context);
        assert_int_equal(t.b.context->type, MSGPACK_OBJECT_MAP);
        proto_event_t *e = &t.b.events[0];
        assert_int_equal(e->error, PROTO_OK);
        assert_int_equal(e->type, PROTO_T_TRACK);
        assert_memory_equal(e->message_id.ptr, "m1", 2);
        assert_memory_equal(e->user_id.ptr, "u1", 2);
        assert_null(e->anonymous_id.ptr);
        assert_memory_equal(e->event.ptr, "Signed Up", 9);
        assert_true(e->has_sent_at); /* inherited from the batch */
        assert_int_equal(e->sent_at_ms, 1795435200000LL);
        assert_false(e->has_timestamp);
        e = &t.b.events[1];
        assert_int_equal(e->error, PROTO_OK);
        assert_int_equal(e->type, PROTO_T_IDENTIFY);
        assert_memory_equal(e->anonymous_id.ptr, "a2", 2);
        tu_free(&t);
    });
}

static void test_number_mapping(void **state)
{
    (void)state;
    TU_BOTH({
        tu_body_t t;
        assert_int_equal(tu_decode(&t,
                                   "{\"batch\":[],\"n\":[1,-1,0,1.5,-2.25,9007199254740993,"
                                   "-9223372036854775808,18446744073709551615e0]}",
                                   fmt, PROTO_T_NONE, NULL),
                         PROTO_OK);
        const msgpack_object *n = NULL;
        for (uint32_t i = 0; i < t.b.root.via.map.size; i++)
            if (t.b.root.via.map.ptr[i].key.via.str.size == 1) n = &t.b.root.via.map.ptr[i].val;
        assert_non_null(n);
        const msgpack_object *a = n->via.array.ptr;
        assert_int_equal(a[0].type, MSGPACK_OBJECT_POSITIVE_INTEGER);
        assert_int_equal(a[0].via.u64, 1);
        assert_int_equal(a[1].type, MSGPACK_OBJECT_NEGATIVE_INTEGER);
        assert_int_equal(a[1].via.i64, -1);
        assert_int_equal(a[2].type, MSGPACK_OBJECT_POSITIVE_INTEGER);
        assert_int_equal(a[3].type, MSGPACK_OBJECT_FLOAT64);
        assert_true(a[3].via.f64 == 1.5);
        assert_true(a[4].via.f64 == -2.25);
        assert_int_equal(a[5].via.u64, 9007199254740993ULL);
        assert_int_equal(a[6].type, MSGPACK_OBJECT_NEGATIVE_INTEGER);
        assert_true(a[6].via.i64 == INT64_MIN);
        assert_int_equal(a[7].type, MSGPACK_OBJECT_FLOAT64);
        assert_int_equal(t.b.n_events, 0);
        tu_free(&t);
    });
}

/* Every msgpack integer width decodes to the msgpack-c convention (>= 0: POSITIVE_INTEGER). */
static void test_msgpack_int_widths(void **state)
{
    (void)state;
    tu_mp_t m;
    tu_mp_init(&m);
    msgpack_pack_map(&m.pk, 2);
    tu_mp_str(&m, "batch");
    msgpack_pack_array(&m.pk, 0);
    tu_mp_str(&m, "x");
    static const uint8_t ints[] = {
        0x9a,                                                 /* array of 10 */
        0xd0, 0x05,                                           /* int8 5 */
        0xd1, 0xff, 0xfe,                                     /* int16 -2 */
        0xd2, 0x00, 0x01, 0x00, 0x00,                         /* int32 65536 */
        0xd3, 0x80, 0,    0,    0,    0,    0,    0,    0,    /* int64 min */
        0xcc, 0xff,                                           /* uint8 255 */
        0xcd, 0xff, 0xff,                                     /* uint16 */
        0xce, 0xff, 0xff, 0xff, 0xff,                         /* uint32 */
        0xcf, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, /* uint64 max */
        0xca, 0x3f, 0xc0, 0x00, 0x00,                         /* float32 1.5 */
        0xe0,                                                 /* -32 */
    };
    tu_mp_raw(&m, ints, sizeof ints);
    proto_batch_t b;
    proto_limits_t lim = proto_limits_default();
    assert_int_equal(proto_decode(&b, m.sb.data, m.sb.size, PROTO_FMT_MSGPACK, PROTO_T_NONE, &lim),
                     PROTO_OK);
    const msgpack_object *a = b.root.via.map.ptr[1].val.via.array.ptr;
    assert_int_equal(a[0].type, MSGPACK_OBJECT_POSITIVE_INTEGER);
    assert_int_equal(a[0].via.u64, 5);
    assert_int_equal(a[1].type, MSGPACK_OBJECT_NEGATIVE_INTEGER);
    assert_int_equal(a[1].via.i64, -2);
    assert_int_equal(a[2].via.u64, 65536);
    assert_true(a[3].via.i64 == INT64_MIN);
    assert_int_equal(a[4].via.u64, 255);
    assert_int_equal(a[5].via.u64, 65535);
    assert_int_equal(a[6].via.u64, 4294967295ULL);
    assert_true(a[7].via.u64 == UINT64_MAX);
    assert_int_equal(a[8].type, MSGPACK_OBJECT_FLOAT32);
    assert_true(a[8].via.f64 == 1.5);
    assert_int_equal(a[9].via.i64, -32);
    proto_batch_free(&b);
    msgpack_sbuffer_destroy(&m.sb);
}

static void test_request_errors(void **state)
{
    (void)state;
    TU_BOTH({
        tu_body_t t;
        assert_int_equal(tu_decode(&t, "[1,2]", fmt, PROTO_T_NONE, NULL), PROTO_E_NOT_A_MAP);
        tu_free(&t);
        assert_int_equal(tu_decode(&t, "\"str\"", fmt, PROTO_T_NONE, NULL), PROTO_E_NOT_A_MAP);
        tu_free(&t);
        assert_int_equal(tu_decode(&t, "[]", fmt, PROTO_T_TRACK, NULL), PROTO_E_NOT_A_MAP);
        tu_free(&t);
        assert_int_equal(tu_decode(&t, "{}", fmt, PROTO_T_NONE, NULL), PROTO_E_NO_BATCH);
        tu_free(&t);
        assert_int_equal(tu_decode(&t, "{\"batch\":{}}", fmt, PROTO_T_NONE, NULL),
                         PROTO_E_NO_BATCH);
        tu_free(&t);
        /* A bad sentAt or context of a readable batch rejects its events (test_envelope_*). */
        assert_int_equal(
            tu_decode(&t, "{\"batch\":[],\"sentAt\":\"yesterday\"}", fmt, PROTO_T_NONE, NULL),
            PROTO_OK);
        tu_free(&t);
        assert_int_equal(tu_decode(&t, "{\"batch\":[],\"sentAt\":null}", fmt, PROTO_T_NONE, NULL),
                         PROTO_OK);
        assert_false(t.b.has_sent_at);
        tu_free(&t);
        assert_int_equal(tu_decode(&t, "{\"batch\":[],\"writeKey\":\"\"}", fmt, PROTO_T_NONE, NULL),
                         PROTO_E_BAD_WRITE_KEY);
        tu_free(&t);
        assert_int_equal(tu_decode(&t, "{\"batch\":[],\"writeKey\":7}", fmt, PROTO_T_NONE, NULL),
                         PROTO_E_BAD_WRITE_KEY);
        tu_free(&t);
        /* Unknown envelope keys are ignored. */
        assert_int_equal(
            tu_decode(&t, "{\"batch\":[],\"extra\":{\"x\":1}}", fmt, PROTO_T_NONE, NULL), PROTO_OK);
        assert_int_equal(t.b.n_events, 0);
        assert_null(t.b.write_key.ptr);
        tu_free(&t);
    });
    /* The same envelope key twice is ambiguous, in both formats (msgpack built by hand: the test's
     * JSON-to-msgpack helper cannot express duplicates). */
    tu_body_t td;
    assert_int_equal(
        tu_decode(&td, "{\"batch\":[],\"batch\":[]}", PROTO_FMT_JSON, PROTO_T_NONE, NULL),
        PROTO_E_MALFORMED);
    tu_free(&td);
    static const uint8_t dup[] = {0x82, 0xa5, 'b', 'a', 't', 'c', 'h', 0x90,
                                  0xa5, 'b',  'a', 't', 'c', 'h', 0x90};
    proto_limits_t dl = proto_limits_default();
    assert_int_equal(
        proto_decode(&td.b, (const char *)dup, sizeof dup, PROTO_FMT_MSGPACK, PROTO_T_NONE, &dl),
        PROTO_E_MALFORMED);
    proto_batch_free(&td.b);
    /* Batch context deeper than max_depth. */
    char deep[512] = "{\"batch\":[],\"context\":";
    for (int i = 0; i < 16; i++)
        strcat(deep, "{\"a\":");
    strcat(deep, "1");
    for (int i = 0; i < 16; i++)
        strcat(deep, "}");
    strcat(deep, "}");
    TU_BOTH({
        tu_body_t t;
        assert_int_equal(tu_decode(&t, deep, fmt, PROTO_T_NONE, NULL), PROTO_OK);
        tu_free(&t);
        proto_limits_t lim = proto_limits_default();
        lim.max_depth = 15;
        assert_int_equal(tu_decode(&t, deep, fmt, PROTO_T_NONE, &lim), PROTO_OK);
        assert_null(t.b.context);
        tu_free(&t);
    });
}

#define EV(mid, extra)                                                                             \
    "{\"type\":\"track\",\"messageId\":\"" mid "\",\"userId\":\"u\",\"event\":\"E\"" extra "}"

/* SPEC §2: anything wrong with the envelope of a readable batch rejects its events one by one
 * (each listed with its reason), never the request. */
static void test_envelope_rejects_events(void **state)
{
    (void)state;
    static const char *bad_sent_at[] = {"\"yesterday\"", "1.5", "[]", "\"2150-01-01T00:00:00Z\""};
    static const char *bad_ctx[] = {"[]", "1", "\"x\""};
    TU_BOTH({
        for (size_t i = 0; i < sizeof bad_sent_at / sizeof *bad_sent_at; i++) {
            tu_body_t t;
            const char *body =
                tu_fmt("{\"batch\":[" EV("a", "") "," EV(
                           "b", ",\"sentAt\":\"2026-11-23T12:00:00Z\"") "],"
                                                                        "\"sentAt\":%s}",
                       bad_sent_at[i]);
            assert_int_equal(tu_decode(&t, body, fmt, PROTO_T_NONE, NULL), PROTO_OK);
            assert_int_equal(t.b.n_events, 2);
            assert_int_equal(t.b.events[0].error, PROTO_E_BAD_EVENT_SENT_AT);
            assert_int_equal(t.b.events[0].message_id.len, 1); /* still echoed */
            assert_int_equal(t.b.events[1].error, PROTO_OK);   /* has its own sentAt */
            assert_false(t.b.has_sent_at);
            tu_free(&t);
        }
        for (size_t i = 0; i < 3; i++) {
            tu_body_t t;
            const char *body =
                tu_fmt("{\"batch\":[" EV("a", "") "," EV("b", ",\"context\":{}") "],"
                                                                                 "\"context\":%s}",
                       bad_ctx[i]);
            assert_int_equal(tu_decode(&t, body, fmt, PROTO_T_NONE, NULL), PROTO_OK);
            assert_int_equal(t.b.events[0].error, PROTO_E_BAD_CONTEXT);
            assert_int_equal(t.b.events[1].error, PROTO_E_BAD_CONTEXT);
            tu_free(&t);
            body = tu_fmt("{\"batch\":[" EV("a", "") "],\"integrations\":%s}", bad_ctx[i]);
            assert_int_equal(tu_decode(&t, body, fmt, PROTO_T_NONE, NULL), PROTO_OK);
            assert_int_equal(t.b.events[0].error, PROTO_E_BAD_INTEGRATIONS);
            tu_free(&t);
        }
        /* The rule order holds: an earlier broken rule is the event's reason. */
        tu_body_t t;
        assert_int_equal(tu_decode(&t,
                                   "{\"batch\":[{\"type\":\"track\",\"userId\":\"u\"}],"
                                   "\"sentAt\":\"x\"}",
                                   fmt, PROTO_T_NONE, NULL),
                         PROTO_OK);
        assert_int_equal(t.b.events[0].error, PROTO_E_MISSING_EVENT);
        tu_free(&t);
    });
}

/* The value under key of map obj (a string key), or NULL. */
static const msgpack_object *get(const msgpack_object *obj, const char *key)
{
    assert_int_equal(obj->type, MSGPACK_OBJECT_MAP);
    for (uint32_t i = 0; i < obj->via.map.size; i++) {
        const msgpack_object *k = &obj->via.map.ptr[i].key;
        if (k->type == MSGPACK_OBJECT_STR && k->via.str.size == strlen(key) &&
            memcmp(k->via.str.ptr, key, k->via.str.size) == 0)
            return &obj->via.map.ptr[i].val;
    }
    return NULL;
}

static void expect_str(const msgpack_object *o, const char *want)
{
    assert_non_null(o);
    assert_int_equal(o->type, MSGPACK_OBJECT_STR);
    assert_int_equal(o->via.str.size, strlen(want));
    assert_memory_equal(o->via.str.ptr, want, strlen(want));
}

/* SPEC §2: batch-level context and integrations apply to every event, merged key by key, the
 * event's own keys winning; a rejected event keeps its raw form. */
static void test_batch_merge(void **state)
{
    (void)state;
    /* Big maps too (the merge uses a hash set beyond a few keys). */
    char big_ev[4096] = "", big_batch[4096] = "";
    for (int i = 0; i < 40; i++) {
        char kv[32];
        snprintf(kv, sizeof kv, "%s\"k%d\":\"e%d\"", i ? "," : "", i, i);
        strcat(big_ev, kv);
        snprintf(kv, sizeof kv, "%s\"k%d\":\"b%d\"", i ? "," : "", i + 20, i + 20);
        strcat(big_batch, kv);
    }
    TU_BOTH({
        tu_body_t t;
        const char *body = "{\"batch\":[" EV(
            "own",
            ",\"context\":{\"ip\":\"1.2.3.4\",\"locale\":\"de\"},"
            "\"integrations\":{\"A\":false}") "," EV("none",
                                                     "") "," EV("null",
                                                                ",\"context\":null") ","
                                                                                     "{\"type\":"
                                                                                     "\"track\","
                                                                                     "\"messageId\""
                                                                                     ":\"bad\"}],"
                                                                                     "\"context\":{"
                                                                                     "\"locale\":"
                                                                                     "\"en\","
                                                                                     "\"library\":{"
                                                                                     "\"name\":"
                                                                                     "\"x\"},"
                                                                                     "\"groupId\":"
                                                                                     "\"acct-9\"},"
                                                                                     "\"integration"
                                                                                     "s\":{\"A\":"
                                                                                     "true,\"B\":"
                                                                                     "true}}";
        assert_int_equal(tu_decode(&t, body, fmt, PROTO_T_NONE, NULL), PROTO_OK);
        assert_int_equal(t.b.n_events, 4);
        const msgpack_object *c = get(t.b.events[0].obj, "context");
        assert_int_equal(c->via.map.size, 4);
        expect_str(get(c, "ip"), "1.2.3.4");
        expect_str(get(c, "locale"), "de"); /* the event's own key wins */
        assert_non_null(get(c, "library"));
        expect_str(get(c, "groupId"), "acct-9");
        const msgpack_object *in = get(t.b.events[0].obj, "integrations");
        assert_int_equal(in->via.map.size, 2);
        assert_false(get(in, "A")->via.boolean);
        assert_true(get(in, "B")->via.boolean);
        /* the batch context's groupId is the account hint of each event */
        assert_int_equal(t.b.events[0].context_group_id.len, 6);
        for (int i = 1; i <= 2; i++) {
            c = get(t.b.events[i].obj, "context");
            assert_non_null(c);
            assert_int_equal(c->via.map.size, 3);
            expect_str(get(c, "locale"), "en");
            assert_int_equal(get(t.b.events[i].obj, "integrations")->via.map.size, 2);
        }
        assert_int_not_equal(t.b.events[3].error, PROTO_OK);
        assert_null(get(t.b.events[3].obj, "context")); /* raw: as received */
        tu_free(&t);

        body = tu_fmt("{\"batch\":[" EV("m", ",\"context\":{%s}") "],\"context\":{%s}}", big_ev,
                      big_batch);
        assert_int_equal(tu_decode(&t, body, fmt, PROTO_T_NONE, NULL), PROTO_OK);
        assert_int_equal(t.b.events[0].error, PROTO_OK);
        c = get(t.b.events[0].obj, "context");
        assert_int_equal(c->via.map.size, 60); /* k0..k39 own, k40..k59 from the batch */
        expect_str(get(c, "k20"), "e20");
        expect_str(get(c, "k59"), "b59");
        tu_free(&t);
    });
}

static void test_malformed(void **state)
{
    (void)state;
    proto_limits_t lim = proto_limits_default();
    proto_batch_t b;
    /* Invalid UTF-8 bytes make the text not JSON (RFC 8259 8.1); a lone surrogate escape does
     * not (test_json_lone_surrogates). */
    const char *json_bad[] = {"{",   "{\"batch\":[}",          "{\"batch\":[\"\xc3\"]}",
                              "nul", "{\"batch\":[1e999999]}", "{\"batch\":[\"\\ud83x\"]}",
                              ""};
    for (size_t i = 0; i < sizeof json_bad / sizeof json_bad[0]; i++) {
        int rc =
            proto_decode(&b, json_bad[i], strlen(json_bad[i]), PROTO_FMT_JSON, PROTO_T_NONE, &lim);
        if (rc != PROTO_E_MALFORMED) fail_msg("json case %zu: %d", i, rc);
        assert_int_equal(b.n_events, 0);
        proto_batch_free(&b);
    }
    static const uint8_t mp_bad[][4] = {
        {0xc1},                   /* never used */
        {0x81, 0xa5, 'b', 'a'},   /* str runs past the end */
        {0xdb, 0xff, 0xff, 0xff}, /* str32 header past the end */
        {0x82, 0xc0, 0xc0},       /* map of 2 with 1 entry */
    };
    static const size_t mp_len[] = {1, 4, 4, 3};
    for (size_t i = 0; i < 4; i++) {
        int rc = proto_decode(&b, (const char *)mp_bad[i], mp_len[i], PROTO_FMT_MSGPACK,
                              PROTO_T_NONE, &lim);
        if (rc != PROTO_E_MALFORMED) fail_msg("msgpack case %zu: %d", i, rc);
        proto_batch_free(&b);
    }
    assert_int_equal(proto_decode(&b, "", 0, PROTO_FMT_MSGPACK, PROTO_T_NONE, &lim),
                     PROTO_E_MALFORMED);
    proto_batch_free(&b);
    /* lim NULL: the SPEC defaults. */
    assert_int_equal(proto_decode(&b, "{\"batch\":[]}", 12, PROTO_FMT_JSON, PROTO_T_NONE, NULL),
                     PROTO_OK);
    proto_batch_free(&b);
    proto_batch_free(&b); /* idempotent */
}

/* A 5-byte array32 header claiming 2^32-1 elements must fail without allocating for them; ASan
 * would report a huge allocation, and the allocator would fail, long before anything else. */
static void test_huge_counts(void **state)
{
    (void)state;
    proto_limits_t lim = proto_limits_default();
    proto_batch_t b;
    static const uint8_t arr32[] = {0x81, 0xa5, 'b',  'a',  't',  'c',
                                    'h',  0xdd, 0xff, 0xff, 0xff, 0xff};
    assert_int_equal(
        proto_decode(&b, (const char *)arr32, sizeof arr32, PROTO_FMT_MSGPACK, PROTO_T_NONE, &lim),
        PROTO_E_MALFORMED);
    proto_batch_free(&b);
    static const uint8_t map32[] = {0xdf, 0xff, 0xff, 0xff, 0xff, 0xc0, 0xc0};
    assert_int_equal(
        proto_decode(&b, (const char *)map32, sizeof map32, PROTO_FMT_MSGPACK, PROTO_T_NONE, &lim),
        PROTO_E_MALFORMED);
    proto_batch_free(&b);
    /* A map16 claiming 3 entries in 5 bytes left: entries need 2 bytes each. */
    static const uint8_t map16[] = {0xde, 0x00, 0x03, 0xc0, 0xc0, 0xc0, 0xc0, 0xc0};
    assert_int_equal(
        proto_decode(&b, (const char *)map16, sizeof map16, PROTO_FMT_MSGPACK, PROTO_T_NONE, &lim),
        PROTO_E_MALFORMED);
    proto_batch_free(&b);
    static const uint8_t bin32[] = {0x91, 0xc6, 0xff, 0xff, 0xff, 0xff, 0x00};
    assert_int_equal(
        proto_decode(&b, (const char *)bin32, sizeof bin32, PROTO_FMT_MSGPACK, PROTO_T_NONE, &lim),
        PROTO_E_MALFORMED);
    proto_batch_free(&b);
}

static void test_too_many_events(void **state)
{
    (void)state;
    proto_limits_t lim = proto_limits_default();
    lim.max_events = 2;
    TU_BOTH({
        tu_body_t t;
        assert_int_equal(tu_decode(&t, "{\"batch\":[{},{}]}", fmt, PROTO_T_NONE, &lim), PROTO_OK);
        assert_int_equal(t.b.n_events, 2);
        assert_int_equal(t.b.events[0].error, PROTO_E_MISSING_TYPE);
        tu_free(&t);
        assert_int_equal(tu_decode(&t, "{\"batch\":[{},{},{}]}", fmt, PROTO_T_NONE, &lim),
                         PROTO_E_TOO_MANY_EVENTS);
        assert_int_equal(t.b.n_events, 0);
        tu_free(&t);
        /* Only the envelope's batch array is bounded by max_events. */
        assert_int_equal(
            tu_decode(&t, "{\"batch\":[],\"other\":[1,2,3,4]}", fmt, PROTO_T_NONE, &lim), PROTO_OK);
        tu_free(&t);
    });
    /* msgpack: refused at the array header, before the events are read (they are garbage). */
    static const uint8_t hdr[] = {0x81, 0xa5, 'b', 'a', 't', 'c', 'h', 0x93, 0xc1, 0xc1, 0xc1};
    proto_batch_t b;
    assert_int_equal(
        proto_decode(&b, (const char *)hdr, sizeof hdr, PROTO_FMT_MSGPACK, PROTO_T_NONE, &lim),
        PROTO_E_TOO_MANY_EVENTS);
    proto_batch_free(&b);
}

static void test_too_large_and_deep(void **state)
{
    (void)state;
    proto_limits_t lim = proto_limits_default();
    lim.body_bytes = 10;
    proto_batch_t b;
    assert_int_equal(proto_decode(&b, "{\"batch\":[]}", 12, PROTO_FMT_JSON, PROTO_T_NONE, &lim),
                     PROTO_E_BODY_TOO_LARGE);
    proto_batch_free(&b);
    /* 200 nested arrays: beyond the decoder's cap (max_depth + 19) in both formats. */
    char *deep = malloc(512);
    strcpy(deep, "{\"batch\":[],\"x\":");
    for (int i = 0; i < 200; i++)
        strcat(deep, "[");
    for (int i = 0; i < 200; i++)
        strcat(deep, "]");
    strcat(deep, "}");
    TU_BOTH({
        tu_body_t t;
        assert_int_equal(tu_decode(&t, deep, fmt, PROTO_T_NONE, NULL), PROTO_E_TOO_DEEP);
        tu_free(&t);
    });
    free(deep);
    /* A msgpack body of 100k nested fixarrays: refused at the cap, no deep recursion. */
    size_t n = 100000;
    char *nest = malloc(n);
    memset(nest, 0x91, n - 1);
    nest[n - 1] = (char)0xc0;
    lim = proto_limits_default();
    assert_int_equal(proto_decode(&b, nest, n, PROTO_FMT_MSGPACK, PROTO_T_NONE, &lim),
                     PROTO_E_TOO_DEEP);
    proto_batch_free(&b);
    free(nest);
}

static void test_trailing_data(void **state)
{
    (void)state;
    proto_limits_t lim = proto_limits_default();
    proto_batch_t b;
    const char *ok_ws = "{\"batch\":[]} \n\t\r";
    assert_int_equal(proto_decode(&b, ok_ws, strlen(ok_ws), PROTO_FMT_JSON, PROTO_T_NONE, &lim),
                     PROTO_OK);
    proto_batch_free(&b);
    /* JSON: bytes after the root value make the text not JSON (simdjson reads the whole text). */
    const char *trail[] = {"{\"batch\":[]}x", "{\"batch\":[]}{}", "{\"batch\":[]} 1"};
    for (size_t i = 0; i < 3; i++) {
        assert_int_equal(
            proto_decode(&b, trail[i], strlen(trail[i]), PROTO_FMT_JSON, PROTO_T_NONE, &lim),
            PROTO_E_MALFORMED);
        proto_batch_free(&b);
    }
    static const uint8_t mp[] = {0x81, 0xa5, 'b', 'a', 't', 'c', 'h', 0x90, 0xc0};
    assert_int_equal(
        proto_decode(&b, (const char *)mp, sizeof mp - 1, PROTO_FMT_MSGPACK, PROTO_T_NONE, &lim),
        PROTO_OK);
    proto_batch_free(&b);
    assert_int_equal(
        proto_decode(&b, (const char *)mp, sizeof mp, PROTO_FMT_MSGPACK, PROTO_T_NONE, &lim),
        PROTO_E_TRAILING_DATA);
    assert_int_equal(b.n_events, 0);
    proto_batch_free(&b);
}

/* Every strict prefix of a valid body is refused (never a crash, a leak or an over-read: the
 * prefix is copied into an exact-size heap block so ASan sees any byte read past it). */
static void test_truncated_every_offset(void **state)
{
    (void)state;
    proto_limits_t lim = proto_limits_default();
    TU_BOTH({
        tu_body_t t;
        assert_int_equal(tu_decode(&t, GOOD_BATCH, fmt, PROTO_T_NONE, NULL), PROTO_OK);
        size_t n = t.sb.size;
        for (size_t cut = 0; cut < n; cut++) {
            char *p = malloc(cut ? cut : 1);
            memcpy(p, t.sb.data, cut);
            proto_batch_t b;
            int rc = proto_decode(&b, p, cut, fmt, PROTO_T_NONE, &lim);
            /* A JSON prefix ending inside trailing nothing is still broken JSON. */
            if (rc == PROTO_OK) fail_msg("format %d: prefix %zu of %zu decoded", (int)fmt, cut, n);
            assert_true(rc == PROTO_E_MALFORMED);
            assert_int_equal(b.n_events, 0);
            proto_batch_free(&b);
            free(p);
        }
        tu_free(&t);
    });
}

static void test_single_call(void **state)
{
    (void)state;
    TU_BOTH({
        tu_body_t t;
        const char *ev = "{\"messageId\":\"m1\",\"userId\":\"u1\",\"event\":\"E\","
                         "\"writeKey\":\"wk\",\"sentAt\":1795435200000,"
                         "\"context\":{\"groupId\":\"acme\"}}";
        assert_int_equal(tu_decode(&t, ev, fmt, PROTO_T_TRACK, NULL), PROTO_OK);
        assert_int_equal(t.b.n_events, 1);
        assert_int_equal(t.b.events[0].error, PROTO_OK);
        assert_int_equal(t.b.events[0].type, PROTO_T_TRACK); /* implied by the endpoint */
        assert_memory_equal(t.b.write_key.ptr, "wk", 2);
        assert_true(t.b.has_sent_at);
        assert_int_equal(t.b.sent_at_ms, 1795435200000LL);
        assert_true(t.b.events[0].has_sent_at);
        assert_non_null(t.b.context);
        assert_memory_equal(t.b.events[0].context_group_id.ptr, "acme", 4);
        tu_free(&t);

        /* Its type must agree with the endpoint. */
        assert_int_equal(tu_decode(&t, TU_EVENT(""), fmt, PROTO_T_IDENTIFY, NULL), PROTO_OK);
        assert_int_equal(t.b.events[0].error, PROTO_E_BAD_TYPE);
        tu_free(&t);
        assert_int_equal(tu_decode(&t, TU_EVENT(""), fmt, PROTO_T_TRACK, NULL), PROTO_OK);
        assert_int_equal(t.b.events[0].error, PROTO_OK);
        tu_free(&t);
        /* A bad sentAt in a single call is the event's fault. */
        assert_int_equal(tu_decode(&t, TU_EVENT(",\"sentAt\":\"x\""), fmt, PROTO_T_TRACK, NULL),
                         PROTO_OK);
        assert_int_equal(t.b.events[0].error, PROTO_E_BAD_EVENT_SENT_AT);
        tu_free(&t);
        assert_int_equal(tu_decode(&t, TU_EVENT(",\"writeKey\":\"\""), fmt, PROTO_T_TRACK, NULL),
                         PROTO_E_BAD_WRITE_KEY);
        tu_free(&t);
    });
}

/* JSON strings are copied into the arena: the body may go away right after decoding. */
static void test_json_body_may_be_freed(void **state)
{
    (void)state;
    proto_limits_t lim = proto_limits_default();
    char *body = strdup("{\"batch\":[" TU_EVENT("") "],\"writeKey\":\"key\"}");
    proto_batch_t b;
    assert_int_equal(proto_decode(&b, body, strlen(body), PROTO_FMT_JSON, PROTO_T_NONE, &lim),
                     PROTO_OK);
    memset(body, 'X', strlen(body));
    free(body);
    assert_memory_equal(b.write_key.ptr, "key", 3);
    assert_memory_equal(b.events[0].message_id.ptr, "m1", 2);
    assert_memory_equal(b.events[0].event.ptr, "Signed Up", 9);
    proto_batch_free(&b);
}

/* jansson keeps object keys in insertion order; records must not reorder a client's fields. */
static void test_json_key_order(void **state)
{
    (void)state;
    tu_body_t t;
    assert_int_equal(
        tu_decode(&t, "{\"batch\":[],\"z\":1,\"a\":2,\"m\":3}", PROTO_FMT_JSON, PROTO_T_NONE, NULL),
        PROTO_OK);
    const msgpack_object_map *m = &t.b.root.via.map;
    assert_int_equal(m->size, 4);
    assert_memory_equal(m->ptr[1].key.via.str.ptr, "z", 1);
    assert_memory_equal(m->ptr[2].key.via.str.ptr, "a", 1);
    assert_memory_equal(m->ptr[3].key.via.str.ptr, "m", 1);
    tu_free(&t);
}

/* NUL inside strings is data, in both formats. */
/* The value of key k in map m (NULL if absent). */
static const msgpack_object *map_get(const msgpack_object *m, const char *k)
{
    for (uint32_t i = 0; i < m->via.map.size; i++) {
        const msgpack_object_str *ks = &m->via.map.ptr[i].key.via.str;
        if (ks->size == strlen(k) && memcmp(ks->ptr, k, ks->size) == 0)
            return &m->via.map.ptr[i].val;
    }
    return NULL;
}

static void assert_str(const msgpack_object *o, const char *want, size_t n)
{
    assert_non_null(o);
    assert_int_equal(o->type, MSGPACK_OBJECT_STR);
    assert_int_equal(o->via.str.size, n);
    assert_memory_equal(o->via.str.ptr, want, n);
}

/* SPEC §2: a lone surrogate escape (JavaScript cutting an emoji in half) becomes U+FFFD and is
 * counted; it never fails the batch, and the event with it is valid. */
static void test_json_lone_surrogates(void **state)
{
    (void)state;
    const char *body = "{\"batch\":[" TU_EVENT(",\"properties\":{"
                                               "\"cut\":\"ab\\ud83d\","
                                               "\"low\":\"\\udc00x\","
                                               "\"two\":\"\\ud83d\\ud83d\","
                                               "\"notlow\":\"\\ud83d\\u0041\","
                                               "\"pair\":\"\\ud83d\\ude00\","
                                               "\"escaped\":\"\\\\ud83d\"}") "," TU_EVENT("") "]}";
    tu_body_t t;
    assert_int_equal(tu_decode(&t, body, PROTO_FMT_JSON, PROTO_T_NONE, NULL), PROTO_OK);
    assert_int_equal(t.b.n_events, 2);
    assert_int_equal(t.b.events[0].error, PROTO_OK);
    assert_int_equal(t.b.events[1].error, PROTO_OK);
    assert_int_equal(t.b.json_surrogates, 5);
    const msgpack_object *p = map_get(t.b.events[0].obj, "properties");
    assert_non_null(p);
    assert_str(map_get(p, "cut"), "ab\xef\xbf\xbd", 5);
    assert_str(map_get(p, "low"), "\xef\xbf\xbdx", 4);
    assert_str(map_get(p, "two"), "\xef\xbf\xbd\xef\xbf\xbd", 6);
    assert_str(map_get(p, "notlow"),
               "\xef\xbf\xbd"
               "A",
               4);
    assert_str(map_get(p, "pair"), "\xf0\x9f\x98\x80", 4); /* a proper pair is untouched */
    assert_str(map_get(p, "escaped"), "\\ud83d", 6);       /* text, not an escape */
    tu_free(&t);
    /* A clean body counts nothing. */
    assert_int_equal(tu_decode(&t, GOOD_BATCH, PROTO_FMT_JSON, PROTO_T_NONE, NULL), PROTO_OK);
    assert_int_equal(t.b.json_surrogates, 0);
    assert_int_equal(t.b.json_big_ints, 0);
    tu_free(&t);
}

/* SPEC §2: an integer beyond 64 bits is kept as a double; the 64-bit extremes stay integers;
 * digits inside strings are text. */
static void test_json_big_integers(void **state)
{
    (void)state;
    const char *body = "{\"batch\":[" TU_EVENT(",\"properties\":{"
                                               "\"big\":123456789012345678901234,"
                                               "\"neg\":-9223372036854775809,"
                                               "\"umax\":18446744073709551615,"
                                               "\"imin\":-9223372036854775808,"
                                               "\"over\":18446744073709551616,"
                                               "\"arr\":[100000000000000000000000,1],"
                                               "\"s\":\"123456789012345678901234\"}") "]}";
    tu_body_t t;
    assert_int_equal(tu_decode(&t, body, PROTO_FMT_JSON, PROTO_T_NONE, NULL), PROTO_OK);
    assert_int_equal(t.b.events[0].error, PROTO_OK);
    assert_int_equal(t.b.json_big_ints, 4);
    const msgpack_object *p = map_get(t.b.events[0].obj, "properties"), *v;
    assert_non_null(p);
    v = map_get(p, "big");
    assert_int_equal(v->type, MSGPACK_OBJECT_FLOAT64);
    assert_true(v->via.f64 == 123456789012345678901234.0);
    v = map_get(p, "neg");
    assert_int_equal(v->type, MSGPACK_OBJECT_FLOAT64);
    assert_true(v->via.f64 == -9223372036854775809.0);
    v = map_get(p, "umax");
    assert_int_equal(v->type, MSGPACK_OBJECT_POSITIVE_INTEGER);
    assert_true(v->via.u64 == UINT64_MAX);
    v = map_get(p, "imin");
    assert_int_equal(v->type, MSGPACK_OBJECT_NEGATIVE_INTEGER);
    assert_true(v->via.i64 == INT64_MIN);
    v = map_get(p, "over");
    assert_int_equal(v->type, MSGPACK_OBJECT_FLOAT64);
    assert_true(v->via.f64 == 18446744073709551616.0);
    v = map_get(p, "arr");
    assert_int_equal(v->via.array.ptr[0].type, MSGPACK_OBJECT_FLOAT64);
    assert_int_equal(v->via.array.ptr[1].type, MSGPACK_OBJECT_POSITIVE_INTEGER);
    assert_str(map_get(p, "s"), "123456789012345678901234", 24);
    tu_free(&t);
    /* Both repairs in one body; still broken JSON elsewhere stays broken. */
    assert_int_equal(tu_decode(&t, "{\"batch\":[],\"x\":[\"\\ud800\",99999999999999999999999]}",
                               PROTO_FMT_JSON, PROTO_T_NONE, NULL),
                     PROTO_OK);
    assert_int_equal(t.b.json_surrogates, 1);
    assert_int_equal(t.b.json_big_ints, 1);
    tu_free(&t);
    assert_int_equal(tu_decode(&t, "{\"batch\":[],\"x\":[\"\\ud800\",99999999999999999999999,]}",
                               PROTO_FMT_JSON, PROTO_T_NONE, NULL),
                     PROTO_E_MALFORMED);
    assert_int_equal(t.b.json_surrogates, 0);
    tu_free(&t);
}

/* SPEC §2: a duplicate key inside a JSON event rejects that event alone, as in msgpack. */
static void test_json_duplicate_key_one_event(void **state)
{
    (void)state;
    const char *body = "{\"batch\":[" TU_EVENT(",\"userId\":\"u2\"") "," TU_EVENT(
        ",\"properties\":{\"a\":1,\"a\":2}") "," TU_EVENT("") "]}";
    tu_body_t t;
    assert_int_equal(tu_decode(&t, body, PROTO_FMT_JSON, PROTO_T_NONE, NULL), PROTO_OK);
    assert_int_equal(t.b.n_events, 3);
    assert_int_equal(t.b.events[0].error, PROTO_E_DUPLICATE_KEY);
    assert_int_equal(t.b.events[1].error, PROTO_E_DUPLICATE_KEY);
    assert_int_equal(t.b.events[2].error, PROTO_OK);
    tu_free(&t);
}

static void test_nul_in_strings(void **state)
{
    (void)state;
    TU_BOTH({
        tu_body_t t;
        assert_int_equal(
            tu_decode(&t, "{\"batch\":[" TU_EVENT(",\"properties\":{\"k\":\"a\\u0000b\"}") "]}",
                      fmt, PROTO_T_NONE, NULL),
            PROTO_OK);
        assert_int_equal(t.b.events[0].error, PROTO_OK);
        tu_free(&t);
    });
}

/* ---- reusable arena (proto_decode_arena / proto_batch_recycle) ---- */

/* Decodes json (as fmt) with arena a into *t, keeping the body in t->sb. */
static int arena_decode(tu_body_t *t, proto_arena_t *a, const char *json, proto_format_t fmt)
{
    memset(t, 0, sizeof *t);
    if (fmt == PROTO_FMT_JSON) {
        msgpack_sbuffer_init(&t->sb);
        msgpack_sbuffer_write(&t->sb, json, strlen(json));
    } else {
        tu_json_to_mp(json, &t->sb);
    }
    proto_limits_t lim = proto_limits_default();
    t->rc = proto_decode_arena(&t->b, a, t->sb.data, t->sb.size, fmt, PROTO_T_NONE, &lim);
    return t->rc;
}

/* The second batch decodes into the first one's chunk, and sees only its own data. */
static void test_arena_reuses_chunk(void **state)
{
    (void)state;
    TU_BOTH({
        proto_arena_t a;
        proto_arena_init(&a);
        tu_body_t t;
        assert_int_equal(arena_decode(&t, &a, GOOD_BATCH, fmt), PROTO_OK);
        assert_int_equal(t.b.n_events, 2);
        const void *chunk = t.b.zone.chunk_list.head;
        proto_batch_recycle(&t.b, &a);
        assert_null(t.b.events); /* b is zeroed */
        assert_true(a.held);
        msgpack_sbuffer_destroy(&t.sb);

        assert_int_equal(
            arena_decode(&t, &a,
                         "{\"batch\":[{\"type\":\"page\",\"messageId\":\"p9\",\"anonymousId\":"
                         "\"x\",\"name\":\"Home\"}]}",
                         fmt),
            PROTO_OK);
        assert_ptr_equal(t.b.zone.chunk_list.head, chunk);
        assert_false(a.held); /* lent out */
        assert_int_equal(t.b.n_events, 1);
        assert_int_equal(t.b.events[0].error, PROTO_OK);
        assert_int_equal(t.b.events[0].type, PROTO_T_PAGE);
        assert_memory_equal(t.b.events[0].message_id.ptr, "p9", 2);
        assert_null(t.b.write_key.ptr); /* nothing left over from the first batch */
        assert_false(t.b.has_sent_at);
        assert_null(t.b.context);
        proto_batch_recycle(&t.b, &a);
        msgpack_sbuffer_destroy(&t.sb);
        proto_arena_free(&a);
        assert_false(a.held);
        proto_arena_free(&a); /* twice is safe */
    });
}

/* A batch that outgrows the kept chunk makes the arena keep a bigger one, up to the cap, until
 * batches of that size fit in a single chunk again. */
static void test_arena_grows_to_fit(void **state)
{
    (void)state;
    char *body = malloc(200000);
    assert_non_null(body);
    size_t n = (size_t)sprintf(body, "{\"batch\":[");
    for (int i = 0; i < 300; i++)
        n += (size_t)sprintf(body + n,
                             "%s{\"type\":\"track\",\"messageId\":\"m%d\",\"userId\":\"u\","
                             "\"event\":\"E\",\"properties\":{\"a\":1,\"b\":2,\"c\":[1,2,3,4]}}",
                             i ? "," : "", i);
    sprintf(body + n, "]}");
    proto_arena_t a;
    proto_arena_init(&a);
    tu_body_t t;
    size_t kept = 0;
    int fits = 0;
    for (int round = 0; round < 12 && fits < 2; round++) {
        assert_int_equal(arena_decode(&t, &a, body, PROTO_FMT_MSGPACK), PROTO_OK);
        assert_int_equal(t.b.n_events, 300);
        assert_int_equal(t.b.events[299].error, PROTO_OK);
        size_t before = t.b.zone.chunk_size;
        bool one_chunk = t.b.zone.chunk_list.head == a.chunk0;
        proto_batch_recycle(&t.b, &a);
        msgpack_sbuffer_destroy(&t.sb);
        assert_true(a.held);
        assert_true(a.zone.chunk_size <= PROTO_ARENA_KEEP_MAX);
        if (one_chunk) {
            assert_int_equal(a.zone.chunk_size, before); /* kept as it was */
            fits++;
        } else {
            assert_true(a.zone.chunk_size > before || before == PROTO_ARENA_KEEP_MAX);
        }
        assert_true(a.zone.chunk_size >= kept); /* never shrinks */
        kept = a.zone.chunk_size;
    }
    assert_int_equal(fits, 2); /* converged: the batch now fits in the kept chunk */
    /* A small body afterwards reuses the big chunk rather than allocating a small one. */
    assert_int_equal(arena_decode(&t, &a, GOOD_BATCH, PROTO_FMT_JSON), PROTO_OK);
    assert_int_equal(t.b.zone.chunk_size, kept);
    proto_batch_recycle(&t.b, &a);
    msgpack_sbuffer_destroy(&t.sb);
    proto_arena_free(&a);
    free(body);
}

/* Failures, proto_batch_free on a lent batch, and batches that were not lent: nothing leaks or
 * is freed twice (the sanitizer build checks), and the arena keeps working. */
static void test_arena_failures_and_mixing(void **state)
{
    (void)state;
    proto_arena_t a;
    proto_arena_init(&a);
    tu_body_t t;
    /* Unreadable body: the batch holds the chunk with nothing in it; recycling keeps it. */
    assert_int_equal(arena_decode(&t, &a, "{\"batch\":[1,2", PROTO_FMT_JSON), PROTO_E_MALFORMED);
    assert_int_equal(t.b.n_events, 0);
    assert_null(t.b.events);
    proto_batch_recycle(&t.b, &a);
    msgpack_sbuffer_destroy(&t.sb);
    assert_true(a.held);
    /* Refused before any arena is needed: the kept chunk stays kept. */
    proto_limits_t small = proto_limits_default();
    small.body_bytes = 4;
    proto_batch_t b;
    assert_int_equal(
        proto_decode_arena(&b, &a, "{\"batch\":[]}", 12, PROTO_FMT_JSON, PROTO_T_NONE, &small),
        PROTO_E_BODY_TOO_LARGE);
    assert_true(a.held);
    proto_batch_recycle(&b, &a); /* zeroed batch: no-op */
    assert_true(a.held);
    /* A lent batch freed instead of recycled: the arena is empty, the next decode allocates. */
    assert_int_equal(arena_decode(&t, &a, GOOD_BATCH, PROTO_FMT_MSGPACK), PROTO_OK);
    proto_batch_free(&t.b);
    msgpack_sbuffer_destroy(&t.sb);
    assert_false(a.held);
    assert_int_equal(arena_decode(&t, &a, GOOD_BATCH, PROTO_FMT_MSGPACK), PROTO_OK);
    assert_int_equal(t.b.n_events, 2);
    /* A batch from plain proto_decode recycled while the arena holds nothing: kept. */
    tu_body_t plain;
    assert_int_equal(tu_decode(&plain, GOOD_BATCH, PROTO_FMT_JSON, PROTO_T_NONE, NULL), PROTO_OK);
    proto_batch_recycle(&plain.b, &a);
    msgpack_sbuffer_destroy(&plain.sb);
    assert_true(a.held);
    /* ... and the lent one, recycled now that the arena holds a chunk: freed, one is kept. */
    proto_batch_recycle(&t.b, &a);
    msgpack_sbuffer_destroy(&t.sb);
    assert_true(a.held);
    proto_arena_free(&a);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_good_batch),
        cmocka_unit_test(test_number_mapping),
        cmocka_unit_test(test_msgpack_int_widths),
        cmocka_unit_test(test_request_errors),
        cmocka_unit_test(test_envelope_rejects_events),
        cmocka_unit_test(test_batch_merge),
        cmocka_unit_test(test_malformed),
        cmocka_unit_test(test_huge_counts),
        cmocka_unit_test(test_too_many_events),
        cmocka_unit_test(test_too_large_and_deep),
        cmocka_unit_test(test_trailing_data),
        cmocka_unit_test(test_truncated_every_offset),
        cmocka_unit_test(test_single_call),
        cmocka_unit_test(test_json_body_may_be_freed),
        cmocka_unit_test(test_json_key_order),
        cmocka_unit_test(test_json_lone_surrogates),
        cmocka_unit_test(test_json_big_integers),
        cmocka_unit_test(test_json_duplicate_key_one_event),
        cmocka_unit_test(test_nul_in_strings),
        cmocka_unit_test(test_arena_reuses_chunk),
        cmocka_unit_test(test_arena_grows_to_fit),
        cmocka_unit_test(test_arena_failures_and_mixing),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
