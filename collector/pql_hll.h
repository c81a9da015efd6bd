/*
 * pql_hll.h — HyperLogLog (p = PQL_HLL_P) with an incrementally maintained estimate: the
 * distinct-user counter behind PQL's sketch mode (Redis keeps its hyperloglog.c apart the same
 * way). No allocation, no locking: a pql_hll_t is plain memory its owner protects.
 *
 * The estimate's harmonic sum is kept as a fixed-point integer (registers saturate at
 * PQL_RHO_MAX so it fits 64 bits), so pql_hll_set() is O(1) and pql_hll_estimate() needs no
 * pass over the registers. Standard error about 1.04 / sqrt(2^p) (1.15% at p = 13), with the
 * linear-counting correction for small counts.
 */
#ifndef SLUICE_PQL_HLL_H
#define SLUICE_PQL_HLL_H

#include <stdint.h>

#include "pql.h" /* PQL_HLL_P */

#define PQL_HLL_M   (1u << PQL_HLL_P)
#define PQL_RHO_MAX 50 /* registers saturate here so the fixed-point sum fits 64 bits */

typedef struct pql_hll {
    uint64_t sum;   /* sum of 2^(PQL_RHO_MAX - reg[j]) */
    uint32_t zeros; /* registers still 0 */
    uint8_t reg[PQL_HLL_M];
} pql_hll_t;

/* Empties h (every register 0). */
void pql_hll_clear(pql_hll_t *h);

/* Raises register j to rho if it is lower (j < PQL_HLL_M, 1 <= rho <= PQL_RHO_MAX). */
static inline void pql_hll_set(pql_hll_t *h, uint32_t j, uint8_t rho)
{
    uint8_t old = h->reg[j];
    if (rho <= old) return;
    h->sum -= 1ull << (PQL_RHO_MAX - old);
    h->sum += 1ull << (PQL_RHO_MAX - rho);
    if (old == 0) h->zeros--;
    h->reg[j] = rho;
}

/* Splits a 64-bit hash into the register index j (top p bits) and rho (leading zeros of the
 * rest, plus one, saturated at PQL_RHO_MAX). */
static inline void pql_hll_hash_split(uint64_t x, uint32_t *j, uint8_t *rho)
{
    *j = (uint32_t)(x >> (64 - PQL_HLL_P));
    uint64_t w = x << PQL_HLL_P;
    int r = w == 0 ? 64 - PQL_HLL_P + 1 : __builtin_clzll(w) + 1;
    if (r > PQL_RHO_MAX) r = PQL_RHO_MAX;
    *rho = (uint8_t)r;
}

/* dst becomes the union of dst and src (register-wise maximum). */
void pql_hll_merge(pql_hll_t *dst, const pql_hll_t *src);

/* The estimated number of distinct hashes added. */
double pql_hll_estimate(const pql_hll_t *h);

#endif
