/*
 * test_auth.c — write keys (collector/auth.c): Authorization header parsing (Basic, Bearer,
 * bad base64), constant-time comparison, lookups in strict and dev mode, the GCRA rate limit,
 * and key masking.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "auth.c"

static config_write_key_t test_keys[] = {
    {"wk_test_123", "test"},
    {"wk_test_124", "web"},
    {"short", "mobile"},
};

static config_t make_cfg(bool dev, double rate)
{
    config_t c;
    memset(&c, 0, sizeof c);
    c.write_keys = test_keys;
    c.n_write_keys = 3;
    c.dev = dev;
    c.rate_per_key = rate;
    return c;
}

static int parse(const char *hdr, char *out, size_t *len)
{
    return auth_parse_header(hdr, strlen(hdr), out, AUTH_KEY_MAX, len);
}

static void test_parse_header(void **state)
{
    (void)state;
    char key[AUTH_KEY_MAX];
    size_t n;
    /* "wk_test_123:" */
    assert_int_equal(parse("Basic d2tfdGVzdF8xMjM6", key, &n), AUTH_OK);
    assert_int_equal(n, 11);
    assert_memory_equal(key, "wk_test_123", 11);
    /* "wk_test_123:secret", scheme in another case, padding kept. */
    assert_int_equal(parse("basic d2tfdGVzdF8xMjM6c2VjcmV0", key, &n), AUTH_OK);
    assert_int_equal(n, 11);
    /* "ab" (no colon at all: the whole decoded text is the user). */
    assert_int_equal(parse("Basic YWI=", key, &n), AUTH_OK);
    assert_int_equal(n, 2);
    assert_memory_equal(key, "ab", 2);
    assert_int_equal(parse("Bearer wk_test_123", key, &n), AUTH_OK);
    assert_int_equal(n, 11);
    assert_int_equal(parse("  BEARER   tok  ", key, &n), AUTH_OK);
    assert_int_equal(n, 3);
    assert_memory_equal(key, "tok", 3);
    /* Failures. */
    assert_int_equal(parse("Basic ###", key, &n), AUTH_E_MALFORMED);
    assert_int_equal(parse("Basic YWJj$", key, &n), AUTH_E_MALFORMED);
    assert_int_equal(parse("Basic Y", key, &n), AUTH_E_MALFORMED);      /* 1 char mod 4 */
    assert_int_equal(parse("Basic OnBhc3M=", key, &n), AUTH_E_MISSING); /* ":pass" */
    assert_int_equal(parse("Bearer", key, &n), AUTH_E_MISSING);
    assert_int_equal(parse("Digest abc", key, &n), AUTH_E_MALFORMED);
    assert_int_equal(parse("", key, &n), AUTH_E_MALFORMED);
    char longhdr[AUTH_KEY_MAX + 20] = "Bearer ";
    memset(longhdr + 7, 'k', AUTH_KEY_MAX + 1);
    longhdr[7 + AUTH_KEY_MAX + 1] = '\0';
    assert_int_equal(parse(longhdr, key, &n), AUTH_E_MALFORMED);
}

static void test_ct_equal(void **state)
{
    (void)state;
    assert_true(auth_ct_equal("abc", 3, "abc", 3));
    assert_false(auth_ct_equal("abd", 3, "abc", 3));
    assert_false(auth_ct_equal("ab", 2, "abc", 3));
    assert_false(auth_ct_equal("abcd", 4, "abc", 3));
    /* A prefix repeated to the key's length must not match (the modulo indexing). */
    assert_false(auth_ct_equal("a", 1, "aaa", 3));
    assert_false(auth_ct_equal("", 0, "abc", 3));
    assert_true(auth_ct_equal("", 0, "", 0));
}

static void test_lookup(void **state)
{
    (void)state;
    config_t c = make_cfg(false, 0);
    auth_t *a;
    assert_int_equal(auth_new(&c, &a), AUTH_OK);
    const char *src = NULL;
    int idx = -1;
    assert_int_equal(auth_lookup(a, "wk_test_124", 11, &src, &idx), AUTH_OK);
    assert_string_equal(src, "web");
    assert_int_equal(idx, 1);
    assert_int_equal(auth_lookup(a, "wk_test_123", 11, &src, &idx), AUTH_OK);
    assert_string_equal(src, "test");
    assert_int_equal(idx, 0);
    assert_int_equal(auth_lookup(a, "short", 5, &src, &idx), AUTH_OK);
    assert_string_equal(src, "mobile");
    assert_int_equal(auth_lookup(a, "wk_test_12", 10, &src, &idx), AUTH_E_UNKNOWN);
    assert_int_equal(auth_lookup(a, "wk_test_1234", 12, &src, &idx), AUTH_E_UNKNOWN);
    assert_int_equal(auth_lookup(a, "", 0, &src, &idx), AUTH_E_MISSING);
    assert_int_equal(auth_lookup(a, NULL, 0, &src, &idx), AUTH_E_MISSING);
    auth_free(a);

    /* Dev: known keys keep their source, anything else is "dev". */
    c = make_cfg(true, 0);
    assert_int_equal(auth_new(&c, &a), AUTH_OK);
    assert_int_equal(auth_lookup(a, "wk_test_123", 11, &src, &idx), AUTH_OK);
    assert_string_equal(src, "test");
    assert_int_equal(auth_lookup(a, "whatever", 8, &src, &idx), AUTH_OK);
    assert_string_equal(src, "dev");
    assert_int_equal(idx, 3);
    assert_int_equal(auth_lookup(a, NULL, 0, &src, &idx), AUTH_OK);
    assert_string_equal(src, "dev");
    auth_free(a);
    auth_free(NULL);
}

static void test_rate_limit(void **state)
{
    (void)state;
    const uint64_t S = 1000000000ull;
    config_t c = make_cfg(false, 100); /* 100 events/s, burst 1 s = 100 events */
    auth_t *a;
    assert_int_equal(auth_new(&c, &a), AUTH_OK);
    int ra = 0;
    uint64_t t = 1000 * S;
    /* The burst is admitted, the next event is not. */
    assert_int_equal(auth_rate_take(a, 0, 100, t, &ra), AUTH_OK);
    assert_int_equal(auth_rate_take(a, 0, 1, t, &ra), AUTH_E_RATE_LIMITED);
    assert_int_equal(ra, 1);
    /* Other keys have their own budget. */
    assert_int_equal(auth_rate_take(a, 1, 100, t, &ra), AUTH_OK);
    /* Half a second later, 50 events fit again, 51 don't. */
    assert_int_equal(auth_rate_take(a, 0, 51, t + S / 2, &ra), AUTH_E_RATE_LIMITED);
    assert_int_equal(auth_rate_take(a, 0, 50, t + S / 2, &ra), AUTH_OK);
    /* A batch bigger than the burst passes only on a full bucket, and leaves debt behind. */
    assert_int_equal(auth_rate_take(a, 2, 1000, t, &ra), AUTH_OK);
    assert_int_equal(auth_rate_take(a, 2, 1, t + 5 * S, &ra), AUTH_E_RATE_LIMITED);
    assert_true(ra >= 4 && ra <= 6);
    assert_int_equal(auth_rate_take(a, 2, 1, t + 10 * S, &ra), AUTH_OK);
    /* Long-run rate: 10 s of requests of 10 events every 50 ms (200/s offered) admit ~1000
     * (+ the burst). */
    int admitted = 0;
    uint64_t t2 = 5000 * S;
    for (int i = 0; i < 200; i++)
        if (auth_rate_take(a, 1, 10, t2 + (uint64_t)i * (S / 20), &ra) == AUTH_OK) admitted += 10;
    assert_true(admitted >= 1000 && admitted <= 1110);
    auth_free(a);

    /* Off: anything goes. */
    c = make_cfg(false, 0);
    assert_int_equal(auth_new(&c, &a), AUTH_OK);
    assert_int_equal(auth_rate_take(a, 0, 1000000, t, &ra), AUTH_OK);
    assert_int_equal(auth_rate_take(a, 0, 1000000, t, &ra), AUTH_OK);
    auth_free(a);
}

/* The admin token (auth_check_admin): Bearer only, the write keys' grammar, constant time. */
static void test_check_admin(void **state)
{
    (void)state;
#define ADM(v) auth_check_admin((v), strlen(v), "s3cret-admin", 12)
    assert_int_equal(ADM("Bearer s3cret-admin"), AUTH_OK);
    assert_int_equal(ADM("bearer s3cret-admin"), AUTH_OK);
    assert_int_equal(ADM("BEARER s3cret-admin"), AUTH_OK);
    assert_int_equal(auth_check_admin(NULL, 0, "s3cret-admin", 12), AUTH_E_MISSING);
    assert_int_equal(ADM("Bearer "), AUTH_E_MISSING);
    assert_int_equal(ADM("Bearer"), AUTH_E_MISSING);
    assert_int_equal(ADM("Bearer wrong"), AUTH_E_UNKNOWN);
    assert_int_equal(ADM("Bearer s3cret-admi"), AUTH_E_UNKNOWN);
    assert_int_equal(ADM("Bearer s3cret-adminx"), AUTH_E_UNKNOWN);
    assert_int_equal(ADM("Bearer S3CRET-ADMIN"), AUTH_E_UNKNOWN); /* the token is exact */
    /* Basic carries write keys, never the admin token. */
    assert_int_equal(ADM("Basic czNjcmV0LWFkbWluOg=="), AUTH_E_MALFORMED);
    assert_int_equal(ADM("s3cret-admin"), AUTH_E_MALFORMED);
    assert_int_equal(ADM("Bearer\ts3cret-admin"), AUTH_E_MALFORMED);
#undef ADM
}

static void test_mask(void **state)
{
    (void)state;
    char out[16];
    assert_string_equal(auth_mask("wk_test_123", 11, out, sizeof out), "wk_t\xe2\x80\xa6");
    assert_string_equal(auth_mask("ab", 2, out, sizeof out), "ab\xe2\x80\xa6");
    assert_string_equal(auth_mask("", 0, out, sizeof out), "\xe2\x80\xa6");
    char tiny[3];
    auth_mask("wk_test_123", 11, tiny, sizeof tiny);
    assert_true(strlen(tiny) < sizeof tiny);
    assert_string_equal(auth_strerror(AUTH_E_UNKNOWN), "unknown write key");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_parse_header), cmocka_unit_test(test_ct_equal),
        cmocka_unit_test(test_lookup),       cmocka_unit_test(test_rate_limit),
        cmocka_unit_test(test_mask),         cmocka_unit_test(test_check_admin),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
