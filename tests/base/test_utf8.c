/* test_utf8.c — base_utf8_valid / base_utf8_seq_len against Unicode Table 3-7. */
#include "base.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <string.h>

#include <cmocka.h>

#define V(s) base_utf8_valid((s), sizeof(s) - 1)

static void accepts_well_formed(void **state)
{
    (void)state;
    assert_true(base_utf8_valid(NULL, 0));
    assert_true(V("plain ascii, longer than eight bytes"));
    assert_true(V("caf\xc3\xa9"));
    assert_true(V("\xe2\x82\xac euro"));
    assert_true(V("\xf0\x9f\x98\x80"));
    assert_true(V("\xf4\x8f\xbf\xbf")); /* U+10FFFF */
    assert_true(V("\xed\x9f\xbf"));     /* U+D7FF, just below the surrogates */
}

static void rejects_ill_formed(void **state)
{
    (void)state;
    assert_false(V("\xc0\xaf"));         /* overlong '/' */
    assert_false(V("\xc1\xbf"));         /* overlong */
    assert_false(V("\xe0\x80\xaf"));     /* overlong 3-byte */
    assert_false(V("\xf0\x80\x80\xaf")); /* overlong 4-byte */
    assert_false(V("\xed\xa0\x80"));     /* surrogate U+D800 */
    assert_false(V("\xf4\x90\x80\x80")); /* above U+10FFFF */
    assert_false(V("\xf5\x80\x80\x80")); /* F5 never starts */
    assert_false(V("\x80"));             /* lone continuation */
    assert_false(V("abc\xc3"));          /* truncated */
    assert_false(V("12345678\xe2\x82")); /* truncated after the fast path */
    assert_false(V("\xe2\x28\xa1"));     /* bad continuation */
}

/* The word-at-a-time ASCII check (issue 11) reads short strings and tails as overlapping loads:
 * one bad byte, or one good 2-byte sequence, at every position of every length 0..40 must be
 * seen, and bytes past len never looked at. */
static void every_length_and_position(void **state)
{
    (void)state;
    char buf[48];
    for (size_t len = 0; len <= 40; len++) {
        memset(buf, 'a', sizeof buf);
        buf[len] = (char)0xFF; /* just past the end: must not matter */
        assert_true(base_utf8_valid(buf, len));
        for (size_t at = 0; at < len; at++) {
            memset(buf, 'a', sizeof buf);
            buf[at] = (char)0xFF;
            assert_false(base_utf8_valid(buf, len));
            buf[at] = (char)0x80; /* a lone continuation byte */
            assert_false(base_utf8_valid(buf, len));
            if (at + 1 < len) {
                buf[at] = (char)0xC3; /* U+00E9 */
                buf[at + 1] = (char)0xA9;
                assert_true(base_utf8_valid(buf, len));
            }
        }
    }
}

static void seq_len_of_each_shape(void **state)
{
    (void)state;
    assert_int_equal(base_utf8_seq_len("a", 1), 1);
    assert_int_equal(base_utf8_seq_len("\xc3\xa9", 2), 2);
    assert_int_equal(base_utf8_seq_len("\xe2\x82\xac", 3), 3);
    assert_int_equal(base_utf8_seq_len("\xf0\x9f\x98\x80", 4), 4);
    assert_int_equal(base_utf8_seq_len("\xf0\x9f\x98", 3), 0);
    assert_int_equal(base_utf8_seq_len("\xff", 1), 0);
    assert_int_equal(base_utf8_seq_len("", 0), 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(accepts_well_formed),
        cmocka_unit_test(rejects_ill_formed),
        cmocka_unit_test(seq_len_of_each_shape),
        cmocka_unit_test(every_length_and_position),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
