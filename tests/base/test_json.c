/* test_json.c — the JSON string writer: escapes, bad UTF-8 -> \ufffd, the cap. */
#include "base.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <string.h>

#include <cmocka.h>

static void expect(int (*fn)(base_buf_t *, const char *, size_t), const char *in, size_t n,
                   const char *want)
{
    base_buf_t b;
    base_buf_init(&b, 1024);
    assert_int_equal(fn(&b, in, n), BASE_OK);
    assert_int_equal(b.len, strlen(want));
    assert_memory_equal(b.data, want, b.len);
    base_buf_free(&b);
}

static void escapes_quotes_backslashes_and_controls(void **state)
{
    (void)state;
    expect(base_json_str, "a\"b\\c\n\r\t\b\f\x01", 11, "\"a\\\"b\\\\c\\n\\r\\t\\b\\f\\u0001\"");
    expect(base_json_str, NULL, 0, "\"\"");
    expect(base_json_str, "x\0y", 3, "\"x\\u0000y\"");
}

static void keeps_valid_utf8_and_replaces_bad_bytes(void **state)
{
    (void)state;
    expect(base_json_str, "caf\xc3\xa9", 5, "\"caf\xc3\xa9\"");
    expect(base_json_str, "\xff", 1, "\"\\ufffd\"");
    expect(base_json_str, "a\xc3", 2, "\"a\\ufffd\"");
    expect(base_json_str, "\xed\xa0\x80", 3, "\"\\ufffd\\ufffd\\ufffd\"");
    /* The trusted variant copies high bytes as they are. */
    expect(base_json_str_utf8, "caf\xc3\xa9\n", 6, "\"caf\xc3\xa9\\n\"");
}

static void at_the_cap_is_too_large(void **state)
{
    (void)state;
    base_buf_t b;
    base_buf_init(&b, 4);
    assert_int_equal(base_json_str(&b, "abcd", 4), BASE_E_TOO_LARGE);
    base_buf_free(&b);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(escapes_quotes_backslashes_and_controls),
        cmocka_unit_test(keeps_valid_utf8_and_replaces_bad_bytes),
        cmocka_unit_test(at_the_cap_is_too_large),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
