/* test_time.c — ISO-8601 format and parse (including dates before 1970) and the clocks. */
#include "base.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <string.h>

#include <cmocka.h>

static void fmt(int64_t ms, const char *want)
{
    char out[BASE_ISO8601_LEN + 1];
    assert_int_equal(base_iso8601_format(ms, out), BASE_ISO8601_LEN);
    assert_string_equal(out, want);
}

static int64_t parse(const char *s)
{
    int64_t ms = 12345;
    assert_true(base_iso8601_parse(s, strlen(s), &ms));
    return ms;
}

static void formats_epoch_and_later(void **state)
{
    (void)state;
    fmt(0, "1970-01-01T00:00:00.000Z");
    fmt(1764000000123, "2025-11-24T16:00:00.123Z");
    fmt(951782400000, "2000-02-29T00:00:00.000Z");
}

static void formats_before_1970(void **state)
{
    (void)state;
    fmt(-1, "1969-12-31T23:59:59.999Z");
    fmt(-1000, "1969-12-31T23:59:59.000Z");
    fmt(-86400000, "1969-12-31T00:00:00.000Z");
    fmt(-2208988800000, "1900-01-01T00:00:00.000Z");
    fmt(INT64_MIN, "0000-01-01T00:00:00.000Z");
    fmt(INT64_MAX, "9999-12-31T23:59:59.999Z");
}

static void parses_zones_and_fractions(void **state)
{
    (void)state;
    assert_int_equal(parse("1970-01-01T00:00:00Z"), 0);
    assert_int_equal(parse("1970-01-01T00:00:00"), 0);
    assert_int_equal(parse("1970-01-01 00:00:00.5z"), 500);
    assert_int_equal(parse("1970-01-01T00:00:00.123456789Z"), 123);
    assert_int_equal(parse("1970-01-01T01:00:00+01:00"), 0);
    assert_int_equal(parse("1969-12-31T23:00:00-0100"), 0);
    assert_int_equal(parse("1969-12-31T23:59:59.999Z"), -1);
    assert_int_equal(parse("1900-01-01T00:00:00.000Z"), -2208988800000);
    assert_int_equal(parse("2016-12-31T23:59:60Z"), parse("2017-01-01T00:00:00Z"));
}

static void rejects_bad_shapes(void **state)
{
    (void)state;
    static const char *const bad[] = {
        "",
        "2025-11-24",
        "2025-13-01T00:00:00Z",
        "2025-02-29T00:00:00Z",
        "2025-11-24T24:00:00Z",
        "2025-11-24X00:00:00Z",
        "2025-11-24T00:00:00.Z",
        "2025-11-24T00:00:00+1:00",
        "2025-11-24T00:00:00Zjunk",
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        int64_t ms = 7;
        assert_false(base_iso8601_parse(bad[i], strlen(bad[i]), &ms));
        assert_int_equal(ms, 7);
    }
    int64_t ms = 7;
    assert_false(base_iso8601_parse(NULL, 0, &ms));
}

static void round_trips(void **state)
{
    (void)state;
    const int64_t vals[] = {0, -1, 1, -62135596800000, 1764000000123, 253402300799999};
    for (size_t i = 0; i < sizeof vals / sizeof vals[0]; i++) {
        char out[BASE_ISO8601_LEN + 1];
        base_iso8601_format(vals[i], out);
        assert_int_equal(parse(out), vals[i]);
    }
}

/* The per-thread cache of formatted seconds (issue 11): more distinct seconds than it holds,
 * interleaved and revisited, and neighbours a millisecond apart across second, day and year
 * boundaries, each checked against the expected text and a parse round trip. */
static void format_cache_never_serves_a_stale_second(void **state)
{
    (void)state;
    const int64_t base[] = {1764000000123, -1, 951782400000, 0, 1735689599999, -2208988800000};
    for (int round = 0; round < 3; round++) {
        for (size_t i = 0; i < sizeof base / sizeof base[0]; i++) {
            for (int64_t d = -1; d <= 1; d++) {
                char out[BASE_ISO8601_LEN + 1];
                base_iso8601_format(base[i] + d, out);
                assert_int_equal(parse(out), base[i] + d);
            }
        }
    }
    fmt(1735689599999, "2024-12-31T23:59:59.999Z");
    fmt(1735689600000, "2025-01-01T00:00:00.000Z");
    fmt(1735689599000, "2024-12-31T23:59:59.000Z");
    fmt(-1, "1969-12-31T23:59:59.999Z");
    fmt(0, "1970-01-01T00:00:00.000Z");
    fmt(-1000, "1969-12-31T23:59:59.000Z");
    fmt(-999, "1969-12-31T23:59:59.001Z");
}

static void clocks_move_forward(void **state)
{
    (void)state;
    uint64_t a = base_mono_ns();
    uint64_t b = base_mono_ns();
    assert_true(b >= a);
    assert_true(base_wall_ms() > 1700000000000);
    struct timespec now, dl;
    clock_gettime(CLOCK_MONOTONIC, &now);
    dl = base_deadline(CLOCK_MONOTONIC, 1500);
    int64_t diff_ms =
        (int64_t)(dl.tv_sec - now.tv_sec) * 1000 + (dl.tv_nsec - now.tv_nsec) / 1000000;
    assert_true(diff_ms >= 1499 && diff_ms < 60000);
    assert_true(dl.tv_nsec >= 0 && dl.tv_nsec < 1000000000L);
}

/* base_iso8601_parse_cached answers exactly as base_iso8601_parse: random mutations of a few
 * timestamps (same minute, next minute, other zones, bad bytes at every position, truncations)
 * parsed in a random order through one cache, and a bad text after a good one of the same
 * minute. */
static void cached_parse_matches_parse(void **state)
{
    (void)state;
    static const char *const seeds[] = {
        "2026-12-04T19:09:20.123Z",  "2026-12-04T19:09:59.9Z",        "2026-12-04T19:10:00Z",
        "2026-12-04t19:09:01+01:00", "2026-12-04 19:09:30-0130",      "2024-02-29T23:59:60.5z",
        "1969-12-31T23:59:59.999Z",  "2026-12-04T19:09:20.123456789",
    };
    static const char alphabet[] = "0123456789:-.+TtZz x";
    base_iso8601_cache_t c = {0};
    uint64_t x = 88172645463325252ull;
    for (int iter = 0; iter < 200000; iter++) {
        x ^= x << 13, x ^= x >> 7, x ^= x << 17;
        char s[72];
        const char *seed = seeds[x % (sizeof seeds / sizeof seeds[0])];
        size_t len = strlen(seed);
        memcpy(s, seed, len + 1);
        switch ((x >> 8) % 4) {
        case 0: /* as is */
            break;
        case 1: /* one byte changed */
            s[(x >> 16) % len] = alphabet[(x >> 24) % (sizeof alphabet - 1)];
            break;
        case 2: /* truncated */
            len = (size_t)((x >> 16) % (len + 1));
            break;
        default: /* another second of the same minute */
            s[17] = (char)('0' + (x >> 16) % 7);
            s[18] = (char)('0' + (x >> 24) % 10);
            break;
        }
        int64_t a = 7, b = 7;
        bool ok = base_iso8601_parse(s, len, &a);
        assert_int_equal(base_iso8601_parse_cached(&c, s, len, &b), ok);
        assert_int_equal(a, b);
    }
    int64_t ms = 7;
    assert_true(base_iso8601_parse_cached(&c, "2026-12-04T19:09:20Z", 20, &ms));
    assert_false(base_iso8601_parse_cached(&c, "2026-12-04T19:09:2xZ", 20, &ms));
    assert_false(base_iso8601_parse_cached(&c, "2026-12-04T19:09", 16, &ms));
    assert_false(base_iso8601_parse_cached(&c, NULL, 0, &ms));
    assert_true(base_iso8601_parse_cached(&c, "2026-12-04T19:09:21Z", 20, &ms));
    assert_int_equal(ms, parse("2026-12-04T19:09:21Z"));
}

/* base_sleep_ms sleeps at least its time (a lower bound only: the machine is shared);
 * base_mono_ts is the instant of a base_mono_ms() value, a negative one clamped to 0. */
static void sleep_and_instant(void **state)
{
    (void)state;
    int64_t t0 = base_mono_ms();
    base_sleep_ms(30);
    assert_true(base_mono_ms() - t0 >= 30);
    base_sleep_ms(0);
    struct timespec ts = base_mono_ts(12345);
    assert_int_equal(ts.tv_sec, 12);
    assert_int_equal(ts.tv_nsec, 345000000L);
    ts = base_mono_ts(-5);
    assert_int_equal(ts.tv_sec, 0);
    assert_int_equal(ts.tv_nsec, 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(formats_epoch_and_later),
        cmocka_unit_test(formats_before_1970),
        cmocka_unit_test(parses_zones_and_fractions),
        cmocka_unit_test(rejects_bad_shapes),
        cmocka_unit_test(cached_parse_matches_parse),
        cmocka_unit_test(round_trips),
        cmocka_unit_test(format_cache_never_serves_a_stale_second),
        cmocka_unit_test(clocks_move_forward),
        cmocka_unit_test(sleep_and_instant),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
