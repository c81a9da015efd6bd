/* Unit tests of loadtest/hist.c: bucket layout, the ≤1% error bound, merge, edge values. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>

#include <cmocka.h>

#include "hist.h"

static hist_t h, h2;

static void test_empty(void **state)
{
    hist_reset(&h);
    assert_int_equal(h.count, 0);
    assert_int_equal(hist_percentile(&h, 0.5), 0);
    assert_true(hist_mean(&h) == 0.0);
}

static void test_exact_small_values(void **state)
{
    hist_reset(&h);
    for (uint64_t v = 1; v <= 100; v++)
        hist_record(&h, v);
    assert_int_equal(hist_percentile(&h, 0.5), 50);
    assert_int_equal(hist_percentile(&h, 0.99), 99);
    assert_int_equal(hist_percentile(&h, 1.0), 100);
    assert_int_equal(h.min, 1);
    assert_int_equal(h.max, 100);
    assert_true(hist_mean(&h) > 50.49 && hist_mean(&h) < 50.51);
}

/* Every bucket's range is contiguous with the next and its width is <= 1/128 of its start. */
static void test_bucket_layout(void **state)
{
    uint64_t prev_hi = 0;
    for (int i = 0; i < HIST_BUCKETS; i++) {
        uint64_t lo, hi;
        hist_bucket_range(i, &lo, &hi);
        if (i > 0) assert_int_equal(lo, prev_hi + 1);
        assert_true(hi >= lo);
        if (lo >= 256) assert_true((hi - lo + 1) * 128 <= lo);
        assert_int_equal(hist_bucket_of(lo), i);
        assert_int_equal(hist_bucket_of(hi), i);
        prev_hi = hi;
    }
    assert_int_equal(prev_hi, HIST_MAX_VALUE);
}

/* Random values over 9 decades: each percentile within 1% of the exact order statistic. */
static int cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

static void test_relative_error(void **state)
{
    enum { N = 20000 };
    static uint64_t vals[N];
    uint64_t x = 12345;
    hist_reset(&h);
    for (int i = 0; i < N; i++) {
        x ^= x << 13, x ^= x >> 7, x ^= x << 17;
        uint64_t decade = x % 9, v = 1 + (x >> 8) % 1000;
        for (uint64_t d = 0; d < decade; d++)
            v *= 10;
        vals[i] = v;
        hist_record(&h, v);
    }
    qsort(vals, N, sizeof(vals[0]), cmp_u64);
    const double qs[] = {0.01, 0.1, 0.5, 0.9, 0.99, 0.999};
    for (size_t i = 0; i < sizeof(qs) / sizeof(qs[0]); i++) {
        uint64_t rank = (uint64_t)(qs[i] * N + 0.999999);
        double exact = (double)vals[rank - 1];
        double got = (double)hist_percentile(&h, qs[i]);
        double err = (got - exact) / exact;
        assert_true(err < 0.01 && err > -0.01);
    }
    assert_int_equal(hist_percentile(&h, 1.0), vals[N - 1]);
}

static void test_merge_and_saturation(void **state)
{
    hist_reset(&h);
    hist_reset(&h2);
    hist_record_n(&h, 1000, 99);
    hist_record(&h2, 5000000);
    hist_record(&h2, UINT64_MAX);
    hist_merge(&h, &h2);
    assert_int_equal(h.count, 101);
    assert_int_equal(h.saturated, 1);
    assert_int_equal(h.max, UINT64_MAX);
    assert_int_equal(h.min, 1000);
    uint64_t p50 = hist_percentile(&h, 0.5);
    assert_true(p50 >= 990 && p50 <= 1010);
    uint64_t p995 = hist_percentile(&h, 0.99); /* rank 100 of 101 */
    assert_true(p995 >= 4950000 && p995 <= 5050000);
    assert_int_equal(h.sum, UINT64_MAX); /* saturates, never wraps */
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_empty),
        cmocka_unit_test(test_exact_small_values),
        cmocka_unit_test(test_bucket_layout),
        cmocka_unit_test(test_relative_error),
        cmocka_unit_test(test_merge_and_saturation),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
