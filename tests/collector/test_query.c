/*
 * test_query.c — percent-decoding and query parameters (collector/query.c): escapes, %00 and
 * truncated escapes refused, output bounds, the query slice of a target, parameters (last one
 * counts, empty pairs, names without '=', '+' as space), and a bad escape anywhere refusing the
 * whole query string.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "query.c"

static int unesc(const char *s, char *out, size_t cap, size_t *n)
{
    return query_unescape(s, strlen(s), out, cap, n);
}

static void test_query_unescape(void **state)
{
    (void)state;
    char out[16];
    size_t n = 99;
    assert_int_equal(unesc("acme", out, sizeof out, &n), QUERY_OK);
    assert_int_equal(n, 4);
    assert_memory_equal(out, "acme", 4);
    assert_int_equal(unesc("a%20b%2Fc%2f", out, sizeof out, &n), QUERY_OK);
    assert_int_equal(n, 6);
    assert_memory_equal(out, "a b/c/", 6);
    assert_int_equal(unesc("a+b", out, sizeof out, &n), QUERY_OK); /* a path keeps '+' */
    assert_memory_equal(out, "a+b", 3);
    assert_int_equal(unesc("%e2%80%a6", out, sizeof out, &n), QUERY_OK);
    assert_int_equal(n, 3);
    assert_int_equal(unesc("", out, sizeof out, &n), QUERY_OK);
    assert_int_equal(n, 0);
}

static void test_query_unescape_malformed(void **state)
{
    (void)state;
    char out[16];
    size_t n = 99;
    static const char *const bad[] = {"%",   "%4",  "a%4",   "%zz", "%g1",
                                      "%1g", "%00", "a%00b", "%%41"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        n = 99;
        assert_int_equal(unesc(bad[i], out, sizeof out, &n), QUERY_E_MALFORMED);
        assert_int_equal(n, 0);
    }
    /* Bounded by the caller's buffer: 4 bytes fit in 4, not in 3. */
    assert_int_equal(unesc("ab%41d", out, 4, &n), QUERY_OK);
    assert_int_equal(unesc("ab%41d", out, 3, &n), QUERY_E_TOO_LONG);
    assert_int_equal(n, 0);
    assert_string_equal(query_strerror(QUERY_E_MALFORMED), "malformed percent-encoding");
    assert_string_equal(query_strerror(42), "unknown error");
}

static void test_query_of_target(void **state)
{
    (void)state;
    size_t n;
    const char *t = "/v1/pql/top?n=5&x=1#frag";
    const char *q = query_of(t, strlen(t), &n);
    assert_int_equal(n, 7);
    assert_memory_equal(q, "n=5&x=1", 7);
    q = query_of("/healthz", 8, &n);
    assert_int_equal(n, 0);
    q = query_of("/a?", 3, &n);
    assert_int_equal(n, 0);
    q = query_of("/a?b?c", 6, &n);
    assert_int_equal(n, 3);
    assert_memory_equal(q, "b?c", 3);
}

static int get(const char *q, const char *name, char *out, size_t cap, size_t *n)
{
    return query_get(q, strlen(q), name, out, cap, n);
}

static void test_query_get(void **state)
{
    (void)state;
    char out[16];
    size_t n;
    assert_int_equal(get("n=5", "n", out, sizeof out, &n), QUERY_OK);
    assert_int_equal(n, 1);
    assert_memory_equal(out, "5", 1);
    assert_int_equal(get("a=1&n=%31%30&b", "n", out, sizeof out, &n), QUERY_OK);
    assert_memory_equal(out, "10", 2);
    assert_int_equal(get("n=1&n=7", "n", out, sizeof out, &n), QUERY_OK); /* the last counts */
    assert_memory_equal(out, "7", 1);
    assert_int_equal(get("&&n=a+b&&", "n", out, sizeof out, &n), QUERY_OK); /* form: '+' */
    assert_int_equal(n, 3);
    assert_memory_equal(out, "a b", 3);
    assert_int_equal(get("n", "n", out, sizeof out, &n), QUERY_OK); /* no '=': empty value */
    assert_int_equal(n, 0);
    assert_int_equal(get("n=", "n", out, sizeof out, &n), QUERY_OK);
    assert_int_equal(n, 0);
    assert_int_equal(get("nn=1&N=2&xn=3", "n", out, sizeof out, &n), QUERY_E_ABSENT);
    assert_int_equal(n, 0);
    assert_int_equal(get("", "n", out, sizeof out, &n), QUERY_E_ABSENT);
    assert_int_equal(get("n=12345", "n", out, 4, &n), QUERY_E_TOO_LONG);
    assert_int_equal(n, 0);
}

/* A bad escape anywhere, in a name or in another parameter's value, refuses the query string:
 * the handler answers 400 rather than guessing. */
static void test_query_get_malformed_anywhere(void **state)
{
    (void)state;
    char out[16];
    size_t n;
    assert_int_equal(get("n=%zz", "n", out, sizeof out, &n), QUERY_E_MALFORMED);
    assert_int_equal(get("n=5&x=%", "n", out, sizeof out, &n), QUERY_E_MALFORMED);
    assert_int_equal(get("%=1&n=5", "n", out, sizeof out, &n), QUERY_E_MALFORMED);
    assert_int_equal(get("n=%00", "n", out, sizeof out, &n), QUERY_E_MALFORMED);
    assert_int_equal(get("x=%4", "n", out, sizeof out, &n), QUERY_E_MALFORMED);
    assert_int_equal(n, 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_query_unescape),
        cmocka_unit_test(test_query_unescape_malformed),
        cmocka_unit_test(test_query_of_target),
        cmocka_unit_test(test_query_get),
        cmocka_unit_test(test_query_get_malformed_anywhere),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
