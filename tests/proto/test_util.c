/* Unit tests for proto/util.c: error tables, types, limits, base layer functions as proto uses
 * them. */
#include "testutil.h"

static void test_err_tables(void **state)
{
    (void)state;
    assert_true(PROTO_ERR_COUNT > 30);
    for (int i = 0; i < PROTO_ERR_COUNT; i++) {
        int err = proto_err_at(i);
        assert_int_equal(proto_err_index(err), i); /* values are unique */
        assert_non_null(proto_err_code(err));
        assert_true(strlen(proto_err_message(err)) > 0);
    }
    assert_string_equal(proto_err_code(PROTO_OK), "ok");
    assert_string_equal(proto_err_code(PROTO_E_MISSING_TYPE), "missing_type");
    assert_string_equal(proto_err_code(PROTO_E_BAD_UTF8), "invalid_utf8");
    assert_string_equal(proto_err_code(-999), "unknown");
    assert_string_equal(proto_err_message(-999), "unknown error");
    assert_int_equal(proto_err_index(-999), -1);
    assert_int_equal(PROTO_E_BAD_EVENT_SENT_AT, -40); /* append-only: values are contract */
    assert_true(proto_err_is_event_level(PROTO_E_BAD_UTF8));
    assert_true(proto_err_is_event_level(PROTO_E_EVENT_NOT_A_MAP));
    assert_false(proto_err_is_event_level(PROTO_E_BAD_BATCH_CONTEXT));
    assert_false(proto_err_is_event_level(PROTO_E_MALFORMED));
    assert_false(proto_err_is_event_level(PROTO_OK));
}

static void test_types(void **state)
{
    (void)state;
    const char *names[] = {"track", "identify", "group", "page", "screen", "alias"};
    for (int i = 0; i < 6; i++) {
        proto_type_t t = proto_type_parse(names[i], strlen(names[i]));
        assert_int_equal(t, PROTO_T_TRACK + i);
        assert_string_equal(proto_type_name(t), names[i]);
    }
    assert_int_equal(proto_type_parse("Track", 5), PROTO_T_NONE);
    assert_int_equal(proto_type_parse("trac", 4), PROTO_T_NONE);
    assert_int_equal(proto_type_parse("tracks", 6), PROTO_T_NONE);
    assert_int_equal(proto_type_parse(NULL, 0), PROTO_T_NONE);
    assert_string_equal(proto_type_name(PROTO_T_NONE), "");
    assert_string_equal(proto_type_name((proto_type_t)99), "");
}

static void test_limits_default(void **state)
{
    (void)state;
    proto_limits_t l = proto_limits_default();
    assert_int_equal(l.event_bytes, 32 * 1024);
    assert_int_equal(l.body_bytes, 512 * 1024);
    assert_int_equal(l.max_depth, 16);
    assert_int_equal(l.max_events, 10000);
}

static void test_utf8(void **state)
{
    (void)state;
    struct {
        const char *s;
        bool ok;
    } cases[] = {
        {"", true},
        {"plain ascii text that is longer than eight bytes", true},
        {"caf\xc3\xa9", true},
        {"\xe2\x82\xac euro", true},
        {"\xf0\x9f\x98\x80 emoji", true},
        {"\xf4\x8f\xbf\xbf", true},         /* U+10FFFF */
        {"\xed\x9f\xbf", true},             /* U+D7FF, just below the surrogates */
        {"\xee\x80\x80", true},             /* U+E000, just above */
        {"\xc0\x80", false},                /* overlong NUL */
        {"\xc1\xbf", false},                /* overlong */
        {"\xe0\x80\xaf", false},            /* overlong '/' */
        {"\xe0\x9f\xbf", false},            /* overlong */
        {"\xf0\x80\x80\xaf", false},        /* overlong */
        {"\xf0\x8f\xbf\xbf", false},        /* overlong */
        {"\xed\xa0\x80", false},            /* U+D800 high surrogate */
        {"\xed\xbf\xbf", false},            /* U+DFFF low surrogate */
        {"\xf4\x90\x80\x80", false},        /* above U+10FFFF */
        {"\xf5\x80\x80\x80", false},        /* invalid lead */
        {"\xff", false},                    /* invalid byte */
        {"\x80", false},                    /* lone continuation */
        {"abc\xc3", false},                 /* truncated at end */
        {"\xe2\x82", false},                /* truncated */
        {"\xe2\x28\xa1", false},            /* bad continuation */
        {"12345678\xc3\xa9xyz\xc3", false}, /* bad after fast path */
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        if (base_utf8_valid(cases[i].s, strlen(cases[i].s)) != cases[i].ok)
            fail_msg("utf8 case %zu", i);
    }
    /* NUL is valid UTF-8 (length is explicit). */
    assert_true(base_utf8_valid("a\0b", 3));
}

static void test_iso8601_parse(void **state)
{
    (void)state;
    struct {
        const char *s;
        bool ok;
        int64_t ms;
    } cases[] = {
        {"2026-11-23T12:00:00.000Z", true, 1795435200000LL},
        {"2026-11-23T12:00:00Z", true, 1795435200000LL},
        {"2026-11-23T12:00:00", true, 1795435200000LL}, /* no zone: UTC */
        {"2026-11-23t12:00:00z", true, 1795435200000LL},
        {"2026-11-23 12:00:00Z", true, 1795435200000LL},
        {"2026-11-23T12:00:00.5Z", true, 1795435200500LL},
        {"2026-11-23T12:00:00.12Z", true, 1795435200120LL},
        {"2026-11-23T12:00:00.123456789Z", true, 1795435200123LL},
        {"2026-11-23T14:30:00+02:30", true, 1795435200000LL},
        {"2026-11-23T07:00:00-0500", true, 1795435200000LL},
        {"2026-11-23T12:00:00.250+00:00", true, 1795435200250LL},
        {"1970-01-01T00:00:00Z", true, 0},
        {"1969-12-31T23:59:59.999Z", true, -1},
        {"2000-02-29T00:00:00Z", true, 951782400000LL},  /* leap (div by 400) */
        {"2016-12-31T23:59:60Z", true, 1483228800000LL}, /* leap second rolls over */
        {"1900-02-29T00:00:00Z", false, 0},              /* not leap (div by 100) */
        {"2026-02-29T00:00:00Z", false, 0},
        {"2026-04-31T00:00:00Z", false, 0},
        {"2026-13-01T00:00:00Z", false, 0},
        {"2026-00-01T00:00:00Z", false, 0},
        {"2026-01-00T00:00:00Z", false, 0},
        {"2026-01-01T24:00:00Z", false, 0},
        {"2026-01-01T00:60:00Z", false, 0},
        {"2026-01-01T00:00:61Z", false, 0},
        {"2026-01-01", false, 0},
        {"2026-01-01T00:00Z", false, 0},
        {"2026-01-01T00:00:00.Z", false, 0},
        {"2026-01-01T00:00:00ZZ", false, 0},
        {"2026-01-01T00:00:00+1:00", false, 0},
        {"2026-01-01T00:00:00+24:00", false, 0},
        {"2026-01-01T00:00:00+01:60", false, 0},
        {"2026-01-01T00:00:00 ", false, 0},
        {"2026/01/01T00:00:00Z", false, 0},
        {"20a6-01-01T00:00:00Z", false, 0},
        {"hello", false, 0},
        {"", false, 0},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        int64_t ms = 42;
        bool ok = base_iso8601_parse(cases[i].s, strlen(cases[i].s), &ms);
        if (ok != cases[i].ok) fail_msg("iso case %zu (%s): ok=%d", i, cases[i].s, ok);
        if (ok && ms != cases[i].ms)
            fail_msg("iso case %zu (%s): %lld != %lld", i, cases[i].s, (long long)ms,
                     (long long)cases[i].ms);
    }
    assert_false(base_iso8601_parse(NULL, 0, &(int64_t){0}));
}

static void test_iso8601_format(void **state)
{
    (void)state;
    char out[25];
    assert_int_equal(base_iso8601_format(1795435200123LL, out), 24);
    assert_string_equal(out, "2026-11-23T12:00:00.123Z");
    base_iso8601_format(0, out);
    assert_string_equal(out, "1970-01-01T00:00:00.000Z");
    base_iso8601_format(-1, out);
    assert_string_equal(out, "1969-12-31T23:59:59.999Z");
    base_iso8601_format(951782400000LL, out);
    assert_string_equal(out, "2000-02-29T00:00:00.000Z");
    base_iso8601_format(INT64_MAX, out); /* clamped, fixed shape */
    assert_string_equal(out, "9999-12-31T23:59:59.999Z");
    base_iso8601_format(INT64_MIN, out);
    assert_string_equal(out, "0000-01-01T00:00:00.000Z");
    /* Round trip over a spread of instants (a fixed LCG: deterministic). */
    uint64_t x = 12345;
    for (int i = 0; i < 20000; i++) {
        x = x * 6364136223846793005ULL + 1442695040888963407ULL;
        int64_t ms = (int64_t)(x >> 22) % 4102444800000LL;
        int64_t back = -1;
        base_iso8601_format(ms, out);
        assert_true(base_iso8601_parse(out, 24, &back));
        assert_int_equal(back, ms);
    }
}

static void test_time_values(void **state)
{
    (void)state;
    msgpack_object o;
    int64_t ms = 0;
    o.type = MSGPACK_OBJECT_POSITIVE_INTEGER;
    o.via.u64 = 1795435200000ULL;
    assert_true(proto_parse_time(&o, &ms));
    assert_int_equal(ms, 1795435200000LL);
    o.via.u64 = PROTO_TIME_MIN_MS;
    assert_true(proto_parse_time(&o, &ms));
    o.via.u64 = PROTO_TIME_MIN_MS - 1; /* 1999 */
    assert_false(proto_parse_time(&o, &ms));
    o.via.u64 = PROTO_TIME_MAX_MS; /* 2100 */
    assert_false(proto_parse_time(&o, &ms));
    o.via.u64 = UINT64_MAX;
    assert_false(proto_parse_time(&o, &ms));
    o.type = MSGPACK_OBJECT_FLOAT64;
    o.via.f64 = 1795435200000.0;
    assert_false(proto_parse_time(&o, &ms));
    o.type = MSGPACK_OBJECT_STR;
    o.via.str.ptr = "1999-12-31T23:59:59Z";
    o.via.str.size = 20;
    assert_false(proto_parse_time(&o, &ms));
    o.via.str.ptr = "2099-12-31T23:59:59Z";
    assert_true(proto_parse_time(&o, &ms));
}

static void test_event_key(void **state)
{
    (void)state;
    proto_event_t ev;
    memset(&ev, 0, sizeof ev);
    assert_null(proto_event_key(&ev).ptr);
    ev.anonymous_id = (proto_str_t){"anon", 4};
    assert_memory_equal(proto_event_key(&ev).ptr, "anon", 4);
    ev.user_id = (proto_str_t){"user", 4};
    assert_memory_equal(proto_event_key(&ev).ptr, "user", 4);
    ev.account_id = (proto_str_t){"acct", 4};
    assert_memory_equal(proto_event_key(&ev).ptr, "acct", 4);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_err_tables),     cmocka_unit_test(test_types),
        cmocka_unit_test(test_limits_default), cmocka_unit_test(test_utf8),
        cmocka_unit_test(test_iso8601_parse),  cmocka_unit_test(test_iso8601_format),
        cmocka_unit_test(test_time_values),    cmocka_unit_test(test_event_key),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
