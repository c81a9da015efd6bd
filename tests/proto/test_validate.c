/* Unit tests for proto/validate.c: every event-level rule of SPEC §2, its boundaries, and the
 * structural walk (UTF-8, keys, bin/ext, depth 16 vs 17, duplicate keys, encoded size). */
#include "testutil.h"

static char *repeat(char c, size_t n)
{
    static char buf[4][1024];
    static int slot;
    char *p = buf[slot++ % 4];
    assert_true(n < sizeof buf[0]);
    memset(p, c, n);
    p[n] = '\0';
    return p;
}

#define EXPECT(json, code)                                                                         \
    TU_BOTH({                                                                                      \
        int got_ = tu_event_error((json), fmt);                                                    \
        if (got_ != (code))                                                                        \
            fail_msg("fmt %d: %s: got %d (%s) want %s", (int)fmt, (json), got_,                    \
                     proto_err_code(got_), proto_err_code(code));                                  \
    })

static void test_valid_types(void **state)
{
    (void)state;
    EXPECT(TU_EVENT(""), PROTO_OK);
    EXPECT("{\"type\":\"identify\",\"messageId\":\"m\",\"userId\":\"u\",\"traits\":{\"a\":1}}",
           PROTO_OK);
    EXPECT("{\"type\":\"group\",\"messageId\":\"m\",\"userId\":\"u\",\"groupId\":\"g\"}", PROTO_OK);
    EXPECT("{\"type\":\"page\",\"messageId\":\"m\",\"anonymousId\":\"a\",\"name\":\"Home\"}",
           PROTO_OK);
    EXPECT("{\"type\":\"screen\",\"messageId\":\"m\",\"anonymousId\":\"a\"}", PROTO_OK);
    EXPECT("{\"type\":\"alias\",\"messageId\":\"m\",\"userId\":\"u\",\"previousId\":\"p\"}",
           PROTO_OK);
    /* null counts as absent for optional fields (Segment SDKs send "userId": null). */
    EXPECT("{\"type\":\"page\",\"messageId\":\"m\",\"anonymousId\":\"a\",\"userId\":null,"
           "\"properties\":null,\"context\":null,\"timestamp\":null}",
           PROTO_OK);
}

static void test_event_not_a_map(void **state)
{
    (void)state;
    EXPECT("[1]", PROTO_E_EVENT_NOT_A_MAP);
    EXPECT("\"track\"", PROTO_E_EVENT_NOT_A_MAP);
    EXPECT("null", PROTO_E_EVENT_NOT_A_MAP);
}

static void test_type_rules(void **state)
{
    (void)state;
    EXPECT("{\"messageId\":\"m\",\"userId\":\"u\"}", PROTO_E_MISSING_TYPE);
    EXPECT("{\"type\":null,\"messageId\":\"m\",\"userId\":\"u\"}", PROTO_E_MISSING_TYPE);
    EXPECT("{\"type\":\"click\",\"messageId\":\"m\",\"userId\":\"u\"}", PROTO_E_BAD_TYPE);
    EXPECT("{\"type\":\"TRACK\",\"messageId\":\"m\",\"userId\":\"u\"}", PROTO_E_BAD_TYPE);
    EXPECT("{\"type\":1,\"messageId\":\"m\",\"userId\":\"u\"}", PROTO_E_BAD_TYPE);
}

/* The id fields of the only event of {"batch":[EVENT]}; asserts it is valid. */
static void expect_ids(const char *json, const char *mid, bool generated, const char *uid,
                       const char *aid, unsigned rewrite)
{
    TU_BOTH({
        tu_body_t t;
        assert_int_equal(tu_decode(&t, tu_fmt("{\"batch\":[%s]}", json), fmt, PROTO_T_NONE, NULL),
                         PROTO_OK);
        const proto_event_t *ev = &t.b.events[0];
        if (ev->error != PROTO_OK) fail_msg("%s: %s", json, proto_err_code(ev->error));
        assert_int_equal(ev->message_id_generated, generated);
        if (mid == NULL)
            assert_null(ev->message_id.ptr);
        else
            assert_true(ev->message_id.len == strlen(mid) &&
                        memcmp(ev->message_id.ptr, mid, ev->message_id.len) == 0);
        if (uid == NULL) {
            assert_null(ev->user_id.ptr);
        } else if (ev->user_id.len != strlen(uid) ||
                   memcmp(ev->user_id.ptr, uid, ev->user_id.len) != 0) {
            fail_msg("%s: userId '%.*s' want '%s'", json, (int)ev->user_id.len, ev->user_id.ptr,
                     uid);
        }
        if (aid == NULL)
            assert_null(ev->anonymous_id.ptr);
        else
            assert_true(ev->anonymous_id.len == strlen(aid) &&
                        memcmp(ev->anonymous_id.ptr, aid, ev->anonymous_id.len) == 0);
        assert_int_equal(ev->rewrite, rewrite);
        tu_free(&t);
    });
}

static void test_message_id(void **state)
{
    (void)state;
    /* Absent or null: valid, the collector generates one at normalization (SPEC §2). */
    EXPECT("{\"type\":\"screen\",\"userId\":\"u\"}", PROTO_OK);
    expect_ids("{\"type\":\"screen\",\"userId\":\"u\"}", NULL, true, "u", NULL, 0);
    expect_ids("{\"type\":\"screen\",\"userId\":\"u\",\"messageId\":null}", NULL, true, "u", NULL,
               0);
    expect_ids("{\"type\":\"screen\",\"userId\":\"u\",\"messageId\":\"m-1\"}", "m-1", false, "u",
               NULL, 0);
    EXPECT("{\"type\":\"screen\",\"messageId\":\"\",\"userId\":\"u\"}", PROTO_E_BAD_MESSAGE_ID);
    EXPECT("{\"type\":\"screen\",\"messageId\":5,\"userId\":\"u\"}", PROTO_E_BAD_MESSAGE_ID);
    EXPECT(tu_fmt("{\"type\":\"screen\",\"messageId\":\"%s\",\"userId\":\"u\"}", repeat('m', 100)),
           PROTO_OK);
    EXPECT(tu_fmt("{\"type\":\"screen\",\"messageId\":\"%s\",\"userId\":\"u\"}", repeat('m', 101)),
           PROTO_E_BAD_MESSAGE_ID);
}

static void test_user_ids(void **state)
{
    (void)state;
    EXPECT("{\"type\":\"screen\",\"messageId\":\"m\"}", PROTO_E_MISSING_USER);
    EXPECT("{\"type\":\"screen\",\"messageId\":\"m\",\"userId\":null,\"anonymousId\":null}",
           PROTO_E_MISSING_USER);
    /* "" counts as absent (the official SDKs send userId:"" with an anonymousId). */
    EXPECT("{\"type\":\"screen\",\"messageId\":\"m\",\"userId\":\"\"}", PROTO_E_MISSING_USER);
    EXPECT("{\"type\":\"screen\",\"messageId\":\"m\",\"userId\":\"\",\"anonymousId\":\"\"}",
           PROTO_E_MISSING_USER);
    expect_ids("{\"type\":\"screen\",\"messageId\":\"m\",\"userId\":\"\",\"anonymousId\":\"a-1\"}",
               "m", false, NULL, "a-1", PROTO_RW_USER_ID);
    expect_ids("{\"type\":\"screen\",\"messageId\":\"m\",\"userId\":\"u\",\"anonymousId\":\"\"}",
               "m", false, "u", NULL, PROTO_RW_ANONYMOUS_ID);
    /* A number is its decimal text. */
    expect_ids("{\"type\":\"screen\",\"messageId\":\"m\",\"userId\":42}", "m", false, "42", NULL,
               PROTO_RW_USER_ID);
    expect_ids("{\"type\":\"screen\",\"messageId\":\"m\",\"userId\":-7,\"anonymousId\":0}", "m",
               false, "-7", "0", PROTO_RW_USER_ID | PROTO_RW_ANONYMOUS_ID);
    expect_ids("{\"type\":\"screen\",\"messageId\":\"m\",\"userId\":9223372036854775807}", "m",
               false, "9223372036854775807", NULL, PROTO_RW_USER_ID);
    expect_ids("{\"type\":\"screen\",\"messageId\":\"m\",\"userId\":1.5}", "m", false, "1.5", NULL,
               PROTO_RW_USER_ID);
    expect_ids("{\"type\":\"screen\",\"messageId\":\"m\",\"userId\":0.1}", "m", false, "0.1", NULL,
               PROTO_RW_USER_ID);
    EXPECT("{\"type\":\"screen\",\"messageId\":\"m\",\"userId\":true}", PROTO_E_BAD_USER_ID);
    EXPECT("{\"type\":\"screen\",\"messageId\":\"m\",\"userId\":{}}", PROTO_E_BAD_USER_ID);
    EXPECT("{\"type\":\"screen\",\"messageId\":\"m\",\"anonymousId\":[1]}",
           PROTO_E_BAD_ANONYMOUS_ID);
    EXPECT(tu_fmt("{\"type\":\"screen\",\"messageId\":\"m\",\"userId\":\"%s\"}", repeat('u', 255)),
           PROTO_OK);
    EXPECT(tu_fmt("{\"type\":\"screen\",\"messageId\":\"m\",\"userId\":\"%s\"}", repeat('u', 256)),
           PROTO_E_BAD_USER_ID);
    EXPECT("{\"type\":\"screen\",\"messageId\":\"m\",\"anonymousId\":\"\"}", PROTO_E_MISSING_USER);
    EXPECT(
        tu_fmt("{\"type\":\"screen\",\"messageId\":\"m\",\"userId\":\"u\",\"anonymousId\":\"%s\"}",
               repeat('a', 256)),
        PROTO_E_BAD_ANONYMOUS_ID);
    EXPECT(tu_fmt("{\"type\":\"screen\",\"messageId\":\"m\",\"anonymousId\":\"%s\"}",
                  repeat('a', 255)),
           PROTO_OK);
}

static void test_track_event(void **state)
{
    (void)state;
    EXPECT("{\"type\":\"track\",\"messageId\":\"m\",\"userId\":\"u\"}", PROTO_E_MISSING_EVENT);
    EXPECT("{\"type\":\"track\",\"messageId\":\"m\",\"userId\":\"u\",\"event\":\"\"}",
           PROTO_E_BAD_EVENT);
    EXPECT("{\"type\":\"track\",\"messageId\":\"m\",\"userId\":\"u\",\"event\":{}}",
           PROTO_E_BAD_EVENT);
    EXPECT(tu_fmt("{\"type\":\"track\",\"messageId\":\"m\",\"userId\":\"u\",\"event\":\"%s\"}",
                  repeat('e', 200)),
           PROTO_OK);
    EXPECT(tu_fmt("{\"type\":\"track\",\"messageId\":\"m\",\"userId\":\"u\",\"event\":\"%s\"}",
                  repeat('e', 201)),
           PROTO_E_BAD_EVENT);
    /* event is only required for track */
    EXPECT("{\"type\":\"page\",\"messageId\":\"m\",\"userId\":\"u\",\"event\":\"\"}", PROTO_OK);
}

static void test_group_id(void **state)
{
    (void)state;
    EXPECT("{\"type\":\"group\",\"messageId\":\"m\",\"userId\":\"u\"}", PROTO_E_MISSING_GROUP_ID);
    EXPECT("{\"type\":\"group\",\"messageId\":\"m\",\"userId\":\"u\",\"groupId\":\"\"}",
           PROTO_E_BAD_GROUP_ID);
    EXPECT("{\"type\":\"group\",\"messageId\":\"m\",\"userId\":\"u\",\"groupId\":null}",
           PROTO_E_MISSING_GROUP_ID);
    EXPECT("{\"type\":\"group\",\"messageId\":\"m\",\"userId\":\"u\",\"groupId\":true}",
           PROTO_E_BAD_GROUP_ID);
    TU_BOTH({ /* a numeric groupId is its decimal text, like the user ids */
              tu_body_t t;
              assert_int_equal(tu_decode(&t,
                                         "{\"batch\":[{\"type\":\"group\",\"messageId\":\"m\","
                                         "\"userId\":\"u\",\"groupId\":7}]}",
                                         fmt, PROTO_T_NONE, NULL),
                               PROTO_OK);
              assert_int_equal(t.b.events[0].error, PROTO_OK);
              assert_int_equal(t.b.events[0].group_id.len, 1);
              assert_memory_equal(t.b.events[0].group_id.ptr, "7", 1);
              assert_int_equal(t.b.events[0].rewrite, PROTO_RW_GROUP_ID);
              tu_free(&t);
    });
    EXPECT(tu_fmt("{\"type\":\"group\",\"messageId\":\"m\",\"userId\":\"u\",\"groupId\":\"%s\"}",
                  repeat('g', 256)),
           PROTO_E_BAD_GROUP_ID);
}

static void test_timestamps(void **state)
{
    (void)state;
    EXPECT(TU_EVENT(",\"timestamp\":\"2026-11-23T12:00:00.123+01:00\""), PROTO_OK);
    EXPECT(TU_EVENT(",\"timestamp\":1795435200000"), PROTO_OK);
    EXPECT(TU_EVENT(",\"timestamp\":\"soon\""), PROTO_E_BAD_TIMESTAMP);
    EXPECT(TU_EVENT(",\"timestamp\":\"1999-12-31T23:59:59Z\""), PROTO_E_BAD_TIMESTAMP);
    EXPECT(TU_EVENT(",\"timestamp\":\"2100-01-01T00:00:00Z\""), PROTO_E_BAD_TIMESTAMP);
    EXPECT(TU_EVENT(",\"timestamp\":946684799999"), PROTO_E_BAD_TIMESTAMP);
    EXPECT(TU_EVENT(",\"timestamp\":1795435200"), PROTO_E_BAD_TIMESTAMP); /* seconds, not ms */
    EXPECT(TU_EVENT(",\"timestamp\":-5"), PROTO_E_BAD_TIMESTAMP);
    EXPECT(TU_EVENT(",\"timestamp\":1795435200000.5"), PROTO_E_BAD_TIMESTAMP);
    EXPECT(TU_EVENT(",\"timestamp\":true"), PROTO_E_BAD_TIMESTAMP);
    EXPECT(TU_EVENT(",\"sentAt\":\"2026-11-23T12:00:00Z\""), PROTO_OK);
    EXPECT(TU_EVENT(",\"sentAt\":[]"), PROTO_E_BAD_EVENT_SENT_AT);
    EXPECT(TU_EVENT(",\"sentAt\":\"2150-01-01T00:00:00Z\""), PROTO_E_BAD_EVENT_SENT_AT);
    /* RudderStack: the client time as originalTimestamp and no timestamp. */
    EXPECT(TU_EVENT(",\"originalTimestamp\":\"soon\""), PROTO_E_BAD_TIMESTAMP);
    EXPECT(TU_EVENT(",\"timestamp\":null,\"originalTimestamp\":[]"), PROTO_E_BAD_TIMESTAMP);
    /* With a timestamp, the received originalTimestamp plays no part (the record sets its own). */
    EXPECT(TU_EVENT(",\"timestamp\":1795435200000,\"originalTimestamp\":\"soon\""), PROTO_OK);
    TU_BOTH({
        tu_body_t t;
        assert_int_equal(
            tu_decode(
                &t, "{\"batch\":[" TU_EVENT(",\"originalTimestamp\":\"2026-11-23T12:00:00Z\"") "]}",
                fmt, PROTO_T_NONE, NULL),
            PROTO_OK);
        assert_int_equal(t.b.events[0].error, PROTO_OK);
        assert_true(t.b.events[0].has_timestamp);
        assert_int_equal(t.b.events[0].timestamp_ms, 1795435200000LL);
        tu_free(&t);
    });
}

static void test_object_fields(void **state)
{
    (void)state;
    EXPECT(TU_EVENT(",\"properties\":[]"), PROTO_E_BAD_PROPERTIES);
    EXPECT(TU_EVENT(",\"properties\":\"x\""), PROTO_E_BAD_PROPERTIES);
    EXPECT(TU_EVENT(",\"traits\":1"), PROTO_E_BAD_TRAITS);
    EXPECT(TU_EVENT(",\"context\":true"), PROTO_E_BAD_CONTEXT);
    EXPECT(TU_EVENT(",\"properties\":{},\"traits\":{},\"context\":{}"), PROTO_OK);
    EXPECT(TU_EVENT(",\"integrations\":{\"All\":false}"), PROTO_OK);
    EXPECT(TU_EVENT(",\"integrations\":null"), PROTO_OK);
    EXPECT(TU_EVENT(",\"integrations\":true"), PROTO_E_BAD_INTEGRATIONS);
    EXPECT(TU_EVENT(",\"context\":1,\"integrations\":1"), PROTO_E_BAD_CONTEXT);
}

/* Builds properties nested `levels` maps deep, counting properties itself as level 1. */
static char *nested(int levels)
{
    static char buf[2048];
    strcpy(buf, "{\"type\":\"track\",\"messageId\":\"m\",\"userId\":\"u\",\"event\":\"e\","
                "\"properties\":");
    for (int i = 1; i < levels; i++)
        strcat(buf, "{\"k\":");
    strcat(buf, "{\"leaf\":1}");
    for (int i = 1; i < levels; i++)
        strcat(buf, "}");
    strcat(buf, "}");
    return buf;
}

static void test_depth(void **state)
{
    (void)state;
    EXPECT(nested(16), PROTO_OK);
    EXPECT(nested(17), PROTO_E_EVENT_TOO_DEEP);
    EXPECT(nested(25), PROTO_E_EVENT_TOO_DEEP); /* still decodable: only this event fails */
    /* Arrays count as levels too. */
    char buf[1024] = "{\"type\":\"track\",\"messageId\":\"m\",\"userId\":\"u\",\"event\":\"e\","
                     "\"properties\":{\"a\":";
    for (int i = 0; i < 15; i++)
        strcat(buf, "[");
    for (int i = 0; i < 15; i++)
        strcat(buf, "]");
    strcat(buf, "}}");
    EXPECT(buf, PROTO_OK);
    char *p = strstr(buf, "[");
    memmove(p + 1, p, strlen(p) + 1);
    p = strrchr(buf, ']');
    memmove(p + 1, p, strlen(p) + 1);
    EXPECT(buf, PROTO_E_EVENT_TOO_DEEP);
    /* A configured max_depth is honoured. */
    proto_limits_t lim = proto_limits_default();
    lim.max_depth = 2;
    tu_body_t t;
    assert_int_equal(
        tu_decode(&t, tu_fmt("{\"batch\":[%s]}", nested(2)), PROTO_FMT_JSON, PROTO_T_NONE, &lim),
        PROTO_OK);
    assert_int_equal(t.b.events[0].error, PROTO_OK);
    tu_free(&t);
    assert_int_equal(
        tu_decode(&t, tu_fmt("{\"batch\":[%s]}", nested(3)), PROTO_FMT_JSON, PROTO_T_NONE, &lim),
        PROTO_OK);
    assert_int_equal(t.b.events[0].error, PROTO_E_EVENT_TOO_DEEP);
    tu_free(&t);
}

static void test_event_size(void **state)
{
    (void)state;
    /* The limit is the minimal msgpack encoding of the event: find it, then test at +-1. */
    const char *ev = TU_EVENT(",\"properties\":{\"s\":\"0123456789012345678901234567890123456789\","
                              "\"n\":[1,-1,300,-300,70000,5000000000,1.5,null,true]}");
    msgpack_sbuffer sb;
    tu_json_to_mp(ev, &sb);
    /* The helper packs -1/1 etc. minimally (msgpack_pack_int64 picks the smallest form) and
     * doubles as float64, so the sbuffer size is the minimal encoding size. */
    size_t exact = sb.size;
    msgpack_sbuffer_destroy(&sb);
    proto_limits_t lim = proto_limits_default();
    TU_BOTH({
        tu_body_t t;
        lim.event_bytes = exact;
        assert_int_equal(tu_decode(&t, tu_fmt("{\"batch\":[%s]}", ev), fmt, PROTO_T_NONE, &lim),
                         PROTO_OK);
        assert_int_equal(t.b.events[0].error, PROTO_OK);
        tu_free(&t);
        lim.event_bytes = exact - 1;
        assert_int_equal(tu_decode(&t, tu_fmt("{\"batch\":[%s]}", ev), fmt, PROTO_T_NONE, &lim),
                         PROTO_OK);
        assert_int_equal(t.b.events[0].error, PROTO_E_EVENT_TOO_LARGE);
        tu_free(&t);
    });
    /* The SPEC default: a 40 KiB string property is too large, the batch still readable. */
    char *big = malloc(41 * 1024 + 200);
    strcpy(big, "{\"batch\":[" TU_EVENT("") ",{\"type\":\"track\",\"messageId\":\"m\",\"userId\":"
                                            "\"u\",\"event\":\"e\",\"properties\":{\"blob\":\"");
    size_t n = strlen(big);
    memset(big + n, 'x', 40 * 1024);
    strcpy(big + n + 40 * 1024, "\"}}]}");
    TU_BOTH({
        tu_body_t t;
        assert_int_equal(tu_decode(&t, big, fmt, PROTO_T_NONE, NULL), PROTO_OK);
        assert_int_equal(t.b.events[0].error, PROTO_OK);
        assert_int_equal(t.b.events[1].error, PROTO_E_EVENT_TOO_LARGE);
        tu_free(&t);
    });
    free(big);
}

/* Invalid UTF-8 can only arrive in msgpack (jansson refuses it as malformed JSON). */
static void test_bad_utf8(void **state)
{
    (void)state;
    const char *bad[] = {"\xc0\xaf", "\xed\xa0\x80", "\xf4\x90\x80\x80", "ok\xff", "\xe2\x82"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        tu_mp_t m;
        /* as a nested property value */
        tu_mp_event_start(&m, 1);
        tu_mp_str(&m, "properties");
        msgpack_pack_map(&m.pk, 1);
        tu_mp_str(&m, "list");
        msgpack_pack_array(&m.pk, 1);
        tu_mp_str(&m, bad[i]);
        assert_int_equal(tu_mp_event_error(&m), PROTO_E_BAD_UTF8);
        /* as a key */
        tu_mp_event_start(&m, 1);
        tu_mp_str(&m, bad[i]);
        msgpack_pack_int(&m.pk, 1);
        assert_int_equal(tu_mp_event_error(&m), PROTO_E_BAD_UTF8);
    }
    tu_mp_t m;
    tu_mp_event_start(&m, 1);
    tu_mp_str(&m, "traits");
    msgpack_pack_map(&m.pk, 1);
    tu_mp_str(&m, "name");
    tu_mp_str(&m, "Zo\xc3\xab \xf0\x9f\x98\x80");
    assert_int_equal(tu_mp_event_error(&m), PROTO_OK);
}

static void test_bad_keys_and_values(void **state)
{
    (void)state;
    tu_mp_t m;
    tu_mp_event_start(&m, 1);
    msgpack_pack_int(&m.pk, 7); /* integer key */
    tu_mp_str(&m, "v");
    assert_int_equal(tu_mp_event_error(&m), PROTO_E_BAD_KEY);

    tu_mp_event_start(&m, 1);
    tu_mp_str(&m, "properties");
    msgpack_pack_map(&m.pk, 1);
    msgpack_pack_nil(&m.pk); /* nil key, nested */
    tu_mp_str(&m, "v");
    assert_int_equal(tu_mp_event_error(&m), PROTO_E_BAD_KEY);

    tu_mp_event_start(&m, 1);
    tu_mp_str(&m, "properties");
    msgpack_pack_map(&m.pk, 1);
    tu_mp_str(&m, "b");
    msgpack_pack_bin_with_body(&m.pk, "\x01\x02", 2);
    assert_int_equal(tu_mp_event_error(&m), PROTO_E_BAD_VALUE);

    tu_mp_event_start(&m, 1);
    tu_mp_str(&m, "x");
    msgpack_pack_ext_with_body(&m.pk, "abcd", 4, 5); /* fixext4 */
    assert_int_equal(tu_mp_event_error(&m), PROTO_E_BAD_VALUE);

    tu_mp_event_start(&m, 1);
    tu_mp_str(&m, "x");
    msgpack_pack_ext_with_body(&m.pk, "abc", 3, -1); /* ext8 (the timestamp ext type) */
    assert_int_equal(tu_mp_event_error(&m), PROTO_E_BAD_VALUE);

    /* NaN and infinities are representable in msgpack and accepted (JSON output: null). */
    tu_mp_event_start(&m, 1);
    tu_mp_str(&m, "properties");
    msgpack_pack_map(&m.pk, 2);
    tu_mp_str(&m, "nan");
    msgpack_pack_double(&m.pk, 0.0 / 0.0);
    tu_mp_str(&m, "f32");
    msgpack_pack_float(&m.pk, 1.25f);
    assert_int_equal(tu_mp_event_error(&m), PROTO_OK);
}

static void test_duplicate_keys(void **state)
{
    (void)state;
    tu_mp_t m;
    tu_mp_event_start(&m, 1);
    tu_mp_str(&m, "userId"); /* a second userId at the top */
    tu_mp_str(&m, "u2");
    assert_int_equal(tu_mp_event_error(&m), PROTO_E_DUPLICATE_KEY);

    /* Nested maps, small (pairwise) and large (sorted), including > 256 keys (heap scratch). */
    const uint32_t sizes[] = {2, 16, 17, 300};
    for (size_t s = 0; s < 4; s++) {
        for (int with_dup = 0; with_dup < 2; with_dup++) {
            tu_mp_event_start(&m, 1);
            tu_mp_str(&m, "properties");
            msgpack_pack_map(&m.pk, sizes[s]);
            for (uint32_t i = 0; i < sizes[s]; i++) {
                char key[16];
                /* with_dup: the last key repeats the middle one */
                snprintf(key, sizeof key, "k%u",
                         (with_dup && i == sizes[s] - 1) ? sizes[s] / 2 - (sizes[s] == 2) : i);
                tu_mp_str(&m, key);
                msgpack_pack_int(&m.pk, (int)i);
            }
            int want = with_dup ? PROTO_E_DUPLICATE_KEY : PROTO_OK;
            int got = tu_mp_event_error(&m);
            if (got != want) fail_msg("size %u dup %d: got %d", sizes[s], with_dup, got);
        }
    }
    /* Keys that differ only in length are distinct. */
    tu_mp_event_start(&m, 1);
    tu_mp_str(&m, "properties");
    msgpack_pack_map(&m.pk, 2);
    tu_mp_str(&m, "ab");
    msgpack_pack_int(&m.pk, 1);
    msgpack_pack_str_with_body(&m.pk, "ab\0", 3);
    msgpack_pack_int(&m.pk, 2);
    assert_int_equal(tu_mp_event_error(&m), PROTO_OK);
}

/* The first broken rule wins, in the order documented in proto/README.md. */
static void test_rule_order(void **state)
{
    (void)state;
    EXPECT("{\"type\":\"nope\"}", PROTO_E_BAD_TYPE);
    EXPECT("{\"type\":\"track\"}", PROTO_E_MISSING_USER);
    EXPECT("{\"type\":\"track\",\"messageId\":5}", PROTO_E_BAD_MESSAGE_ID);
    EXPECT("{\"type\":\"track\",\"messageId\":\"m\"}", PROTO_E_MISSING_USER);
    EXPECT("{\"type\":\"track\",\"messageId\":\"m\",\"userId\":\"u\",\"timestamp\":\"x\"}",
           PROTO_E_MISSING_EVENT);
    EXPECT(TU_EVENT(",\"timestamp\":\"x\",\"properties\":1"), PROTO_E_BAD_TIMESTAMP);
    EXPECT(TU_EVENT(",\"properties\":1,\"traits\":1,\"context\":1"), PROTO_E_BAD_PROPERTIES);
    /* Structure first: a too-deep event with no type is too deep. */
    char *deep = nested(17);
    memcpy(deep + 2, "TYPE", 4);
    EXPECT(deep, PROTO_E_EVENT_TOO_DEEP);
}

/* An invalid event keeps only string fields that pass their own rule (safe to echo). */
static void test_invalid_event_fields(void **state)
{
    (void)state;
    tu_mp_t m;
    tu_mp_init(&m);
    msgpack_pack_map(&m.pk, 1);
    tu_mp_str(&m, "batch");
    msgpack_pack_array(&m.pk, 1);
    msgpack_pack_map(&m.pk, 4);
    tu_mp_str(&m, "type");
    tu_mp_str(&m, "track");
    tu_mp_str(&m, "messageId");
    tu_mp_str(&m, "m-ok");
    tu_mp_str(&m, "userId");
    tu_mp_str(&m, "bad\xff");
    tu_mp_str(&m, "anonymousId");
    tu_mp_str(&m, "anon");
    proto_batch_t b;
    proto_limits_t lim = proto_limits_default();
    assert_int_equal(proto_decode(&b, m.sb.data, m.sb.size, PROTO_FMT_MSGPACK, PROTO_T_NONE, &lim),
                     PROTO_OK);
    assert_int_equal(b.events[0].error, PROTO_E_BAD_UTF8);
    assert_memory_equal(b.events[0].message_id.ptr, "m-ok", 4);
    assert_null(b.events[0].user_id.ptr);
    assert_memory_equal(b.events[0].anonymous_id.ptr, "anon", 4);
    assert_memory_equal(proto_event_key(&b.events[0]).ptr, "anon", 4);
    proto_batch_free(&b);
    msgpack_sbuffer_destroy(&m.sb);
}

/* One invalid event does not affect its neighbours. */
static void test_mixed_batch(void **state)
{
    (void)state;
    TU_BOTH({
        tu_body_t t;
        assert_int_equal(
            tu_decode(
                &t,
                "{\"batch\":[" TU_EVENT("") ",{\"type\":\"track\",\"messageId\":\"m\"}," TU_EVENT(
                    ",\"x\":1") "]}",
                fmt, PROTO_T_NONE, NULL),
            PROTO_OK);
        assert_int_equal(t.b.n_events, 3);
        assert_int_equal(t.b.events[0].error, PROTO_OK);
        assert_int_equal(t.b.events[1].error, PROTO_E_MISSING_USER);
        assert_int_equal(t.b.events[2].error, PROTO_OK);
        tu_free(&t);
    });
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_valid_types),
        cmocka_unit_test(test_event_not_a_map),
        cmocka_unit_test(test_type_rules),
        cmocka_unit_test(test_message_id),
        cmocka_unit_test(test_user_ids),
        cmocka_unit_test(test_track_event),
        cmocka_unit_test(test_group_id),
        cmocka_unit_test(test_timestamps),
        cmocka_unit_test(test_object_fields),
        cmocka_unit_test(test_depth),
        cmocka_unit_test(test_event_size),
        cmocka_unit_test(test_bad_utf8),
        cmocka_unit_test(test_bad_keys_and_values),
        cmocka_unit_test(test_duplicate_keys),
        cmocka_unit_test(test_rule_order),
        cmocka_unit_test(test_invalid_event_fields),
        cmocka_unit_test(test_mixed_batch),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
