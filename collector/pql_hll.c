/* pql_hll.c — HyperLogLog for PQL's sketch mode (contract in pql_hll.h). */
#include "pql_hll.h"

#include <math.h>
#include <string.h>

void pql_hll_clear(pql_hll_t *h)
{
    memset(h->reg, 0, sizeof h->reg);
    h->zeros = PQL_HLL_M;
    h->sum = (uint64_t)PQL_HLL_M << PQL_RHO_MAX;
}

void pql_hll_merge(pql_hll_t *dst, const pql_hll_t *src)
{
    for (uint32_t j = 0; j < PQL_HLL_M; j++)
        pql_hll_set(dst, j, src->reg[j]);
}

double pql_hll_estimate(const pql_hll_t *h)
{
    const double m = PQL_HLL_M;
    const double alpha = 0.7213 / (1.0 + 1.079 / m);
    double harm = (double)h->sum / (double)(1ull << PQL_RHO_MAX);
    double e = alpha * m * m / harm;
    if (e <= 2.5 * m && h->zeros > 0) e = m * log(m / (double)h->zeros);
    return e;
}
