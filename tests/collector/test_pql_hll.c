/* test_pql_hll.c — PQL's HyperLogLog: error bounds over many seeds, merge, small counts. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <math.h>
#include <stdio.h>
#include <xxhash.h>

#include "../../collector/pql_hll.c"

static void test_hll_error_bounds_over_seeds(void **state)
{
    (void)state;
    static pql_hll_t h;
    const uint32_t sizes[] = {100, 1000, 10000, 100000};
    for (size_t si = 0; si < 4; si++) {
        double sum_abs = 0, worst = 0;
        const int seeds = 30;
        for (int seed = 0; seed < seeds; seed++) {
            pql_hll_clear(&h);
            for (uint32_t i = 0; i < sizes[si]; i++) {
                char id[48];
                int n = snprintf(id, sizeof id, "user-%d-%u", seed, i);
                uint32_t j;
                uint8_t rho;
                pql_hll_hash_split(XXH3_64bits(id, (size_t)n), &j, &rho);
                pql_hll_set(&h, j, rho);
            }
            double err = fabs(pql_hll_estimate(&h) - sizes[si]) / sizes[si];
            sum_abs += err;
            if (err > worst) worst = err;
        }
        print_message("hll n=%u: mean |error| %.2f%%, worst %.2f%% over %d seeds\n", sizes[si],
                      100 * sum_abs / seeds, 100 * worst, seeds);
        /* p = 13: sigma 1.15%; mean |error| ~0.8 sigma. */
        if (sum_abs / seeds > 0.02 || worst > 0.045)
            fail_msg("n=%u: mean |err| %.4f, worst %.4f", sizes[si], sum_abs / seeds, worst);
    }
}

static void add_range(pql_hll_t *h, const char *prefix, uint32_t from, uint32_t to)
{
    for (uint32_t i = from; i < to; i++) {
        char id[48];
        int n = snprintf(id, sizeof id, "%s-%u", prefix, i);
        uint32_t j;
        uint8_t rho;
        pql_hll_hash_split(XXH3_64bits(id, (size_t)n), &j, &rho);
        pql_hll_set(h, j, rho);
    }
}

static void test_hll_merge_is_the_union(void **state)
{
    (void)state;
    static pql_hll_t a, b, both;
    pql_hll_clear(&a);
    pql_hll_clear(&b);
    pql_hll_clear(&both);
    add_range(&a, "u", 0, 6000);
    add_range(&b, "u", 4000, 10000); /* 2000 shared */
    add_range(&both, "u", 0, 10000);
    pql_hll_merge(&a, &b);
    assert_memory_equal(a.reg, both.reg, sizeof a.reg);
    assert_true(a.sum == both.sum && a.zeros == both.zeros);
    assert_true(fabs(pql_hll_estimate(&a) - 10000) / 10000 < 0.05);
}

static void test_hll_empty_and_small_counts(void **state)
{
    (void)state;
    static pql_hll_t h;
    pql_hll_clear(&h);
    assert_true(pql_hll_estimate(&h) < 0.5);
    add_range(&h, "x", 0, 10);
    assert_true(fabs(pql_hll_estimate(&h) - 10) < 1.0);
    add_range(&h, "x", 0, 10); /* the same users again change nothing */
    assert_true(fabs(pql_hll_estimate(&h) - 10) < 1.0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_hll_error_bounds_over_seeds),
        cmocka_unit_test(test_hll_merge_is_the_union),
        cmocka_unit_test(test_hll_empty_and_small_counts),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
