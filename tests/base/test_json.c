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

/* The word-at-a-time scan (issue 11): each byte that needs a look ('"', '\\', a control byte,
 * 0x7f's neighbour 0x80 and a bad byte 0xff for any-bytes input, a valid 2-byte sequence) at every
 * position of strings of every length 0..40, for both writers, against the expected text. */
static void every_special_byte_at_every_position(void **state)
{
    (void)state;
    static const struct {
        const char *in;
        const char *any, *utf8; /* expected escape for base_json_str / base_json_str_utf8 */
    } sp[] = {
        {"\"", "\\\"", "\\\""},
        {"\\", "\\\\", "\\\\"},
        {"\n", "\\n", "\\n"},
        {"\x01", "\\u0001", "\\u0001"},
        {"\x1f", "\\u001f", "\\u001f"},
        {" ", " ", " "},
        {"\x7f", "\x7f", "\x7f"},
        {"\xff", "\\ufffd", "\xff"},
        {"\xc3\xa9", "\xc3\xa9", "\xc3\xa9"},
    };
    for (size_t k = 0; k < sizeof sp / sizeof sp[0]; k++) {
        size_t sl = strlen(sp[k].in);
        for (size_t len = sl; len <= 40; len++) {
            for (size_t at = 0; at + sl <= len; at++) {
                char in[48], want_any[128], want_utf8[128];
                memset(in, 'x', len);
                memcpy(in + at, sp[k].in, sl);
                for (int u = 0; u < 2; u++) {
                    char *w = u ? want_utf8 : want_any;
                    const char *e = u ? sp[k].utf8 : sp[k].any;
                    size_t o = 0;
                    w[o++] = '"';
                    memset(w + o, 'x', at);
                    o += at;
                    memcpy(w + o, e, strlen(e));
                    o += strlen(e);
                    memset(w + o, 'x', len - at - sl);
                    o += len - at - sl;
                    w[o++] = '"';
                    w[o] = '\0';
                    base_buf_t b;
                    base_buf_init(&b, 1024);
                    int rc = u ? base_json_str_utf8(&b, in, len) : base_json_str(&b, in, len);
                    assert_int_equal(rc, BASE_OK);
                    assert_int_equal(b.len, o);
                    assert_memory_equal(b.data, w, o);
                    base_buf_free(&b);
                }
            }
        }
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(escapes_quotes_backslashes_and_controls),
        cmocka_unit_test(keeps_valid_utf8_and_replaces_bad_bytes),
        cmocka_unit_test(at_the_cap_is_too_large),
        cmocka_unit_test(every_special_byte_at_every_position),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
