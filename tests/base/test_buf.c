/* test_buf.c — base_buf_t: the cap is a hard limit reported as TOO_LARGE, never as NOMEM. */
#include "base.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

static void append_grows_to_the_cap(void **state)
{
    (void)state;
    base_buf_t b;
    base_buf_init(&b, 1000);
    for (int i = 0; i < 100; i++)
        assert_int_equal(base_buf_append(&b, "0123456789", 10), BASE_OK);
    assert_int_equal(b.len, 1000);
    assert_true(b.cap <= 1000);
    assert_memory_equal(b.data + 990, "0123456789", 10);
    base_buf_free(&b);
    assert_null(b.data);
}

static void append_past_the_cap_is_too_large_and_leaves_the_buffer(void **state)
{
    (void)state;
    base_buf_t b;
    base_buf_init(&b, 8);
    assert_int_equal(BASE_BUF_LIT(&b, "abcdef"), BASE_OK);
    assert_int_equal(BASE_BUF_LIT(&b, "ghi"), BASE_E_TOO_LARGE);
    assert_int_equal(b.len, 6);
    assert_int_equal(base_buf_reserve(&b, 3), BASE_E_TOO_LARGE);
    assert_int_equal(BASE_BUF_LIT(&b, "gh"), BASE_OK);
    assert_memory_equal(b.data, "abcdefgh", 8);
    /* SIZE_MAX must not wrap around the check. */
    assert_int_equal(base_buf_append(&b, "x", SIZE_MAX), BASE_E_TOO_LARGE);
    base_buf_free(&b);
}

static void lowered_max_bounds_a_grown_buffer(void **state)
{
    (void)state;
    base_buf_t b;
    base_buf_init(&b, 4096);
    assert_int_equal(base_buf_reserve(&b, 4096), BASE_OK);
    b.max = 4;
    assert_int_equal(BASE_BUF_LIT(&b, "12345"), BASE_E_TOO_LARGE);
    assert_int_equal(b.len, 0);
    base_buf_free(&b);
}

static void grow_to_allocates_exactly_and_stays_within_max(void **state)
{
    (void)state;
    base_buf_t b;
    base_buf_init(&b, 100);
    assert_int_equal(base_buf_grow_to(&b, 101), BASE_E_TOO_LARGE);
    assert_null(b.data);
    assert_int_equal(base_buf_grow_to(&b, 37), BASE_OK);
    assert_int_equal(b.cap, 37);
    assert_int_equal(BASE_BUF_LIT(&b, "abc"), BASE_OK);
    /* Not larger than the allocation: nothing changes. */
    assert_int_equal(base_buf_grow_to(&b, 10), BASE_OK);
    assert_int_equal(b.cap, 37);
    assert_int_equal(base_buf_grow_to(&b, 100), BASE_OK);
    assert_int_equal(b.cap, 100);
    assert_memory_equal(b.data, "abc", 3);
    base_buf_free(&b);
}

static void zero_cap_refuses_everything_but_empty(void **state)
{
    (void)state;
    base_buf_t b;
    base_buf_init(&b, 0);
    assert_int_equal(base_buf_append(&b, "", 0), BASE_OK);
    assert_int_equal(BASE_BUF_LIT(&b, "a"), BASE_E_TOO_LARGE);
    base_buf_free(&b);
}

static void printf_short_and_long(void **state)
{
    (void)state;
    base_buf_t b;
    base_buf_init(&b, 4096);
    assert_int_equal(base_buf_printf(&b, "%d-%s", 42, "x"), BASE_OK);
    assert_int_equal(b.len, 4);
    assert_memory_equal(b.data, "42-x", 4);
    char big[1000];
    memset(big, 'z', sizeof big - 1);
    big[sizeof big - 1] = '\0';
    assert_int_equal(base_buf_printf(&b, "[%s]", big), BASE_OK);
    assert_int_equal(b.len, 4 + 1001);
    assert_int_equal(b.data[4], '[');
    assert_int_equal(b.data[b.len - 1], ']');
    base_buf_t small;
    base_buf_init(&small, 10);
    assert_int_equal(base_buf_printf(&small, "%s", big), BASE_E_TOO_LARGE);
    assert_int_equal(small.len, 0);
    base_buf_free(&small);
    base_buf_free(&b);
}

static void reset_keeps_and_detach_hands_over(void **state)
{
    (void)state;
    base_buf_t b;
    base_buf_init(&b, 64);
    assert_int_equal(base_buf_append_str(&b, "hello"), BASE_OK);
    char *keep = b.data;
    base_buf_reset(&b);
    assert_int_equal(b.len, 0);
    assert_ptr_equal(b.data, keep);
    assert_int_equal(base_buf_append_str(&b, "bye"), BASE_OK);
    size_t n = 0;
    char *d = base_buf_detach(&b, &n);
    assert_int_equal(n, 3);
    assert_memory_equal(d, "bye", 3);
    assert_null(b.data);
    assert_int_equal(b.max, 64);
    free(d);
}

static void fixed_buffer_writes_into_caller_memory_and_never_grows(void **state)
{
    (void)state;
    char mem[8];
    base_buf_t b;
    base_buf_init_fixed(&b, mem, sizeof mem);
    assert_int_equal(BASE_BUF_LIT(&b, "abcdef"), BASE_OK);
    assert_ptr_equal(b.data, mem);
    assert_int_equal(BASE_BUF_LIT(&b, "ghi"), BASE_E_TOO_LARGE); /* past the caller's memory */
    assert_int_equal(b.len, 6);
    b.max = 7; /* lowered: bounds one record */
    assert_int_equal(BASE_BUF_LIT(&b, "gh"), BASE_E_TOO_LARGE);
    b.max = sizeof mem; /* raised back up to cap */
    assert_int_equal(base_buf_printf(&b, "%s", "gh"), BASE_OK);
    assert_ptr_equal(b.data, mem);
    assert_memory_equal(mem, "abcdefgh", 8);
    base_buf_reset(&b);
    assert_int_equal(b.len, 0);
    assert_ptr_equal(b.data, mem);
}

static void strerror_names_each_kind(void **state)
{
    (void)state;
    assert_string_equal(base_strerror(BASE_OK), "ok");
    assert_string_equal(base_strerror(BASE_E_TOO_LARGE), "larger than the configured limit");
    assert_string_equal(base_strerror(BASE_E_NOMEM), "out of memory");
    assert_string_equal(base_strerror(-999), "unknown error");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(append_grows_to_the_cap),
        cmocka_unit_test(append_past_the_cap_is_too_large_and_leaves_the_buffer),
        cmocka_unit_test(lowered_max_bounds_a_grown_buffer),
        cmocka_unit_test(grow_to_allocates_exactly_and_stays_within_max),
        cmocka_unit_test(zero_cap_refuses_everything_but_empty),
        cmocka_unit_test(printf_short_and_long),
        cmocka_unit_test(reset_keeps_and_detach_hands_over),
        cmocka_unit_test(fixed_buffer_writes_into_caller_memory_and_never_grows),
        cmocka_unit_test(strerror_names_each_kind),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
