/*
 * hist.h — a small log-linear latency histogram (HDR-style) for sluice-load.
 *
 * Values are unsigned 64-bit integers (sluice-load records microseconds). Values below 256 are
 * counted exactly; above, each power of two is split into 128 equal sub-buckets, so a bucket's
 * width is at most 1/128 of its lower bound and hist_percentile() (which answers the bucket's
 * midpoint) is within 1/256 (< 0.4%) of the true value. Values above HIST_MAX_VALUE are counted
 * in the top bucket and flagged in `saturated`; the exact maximum is kept separately.
 *
 * Memory is fixed: a hist_t is one flat struct (about 36 KiB) with no heap allocation, so it can
 * live on the stack, in an array, or be copied with memcpy. Not thread-safe: each thread records
 * into its own and hist_merge() combines them.
 */
#ifndef SLUICE_LOADTEST_HIST_H
#define SLUICE_LOADTEST_HIST_H

#include <stdint.h>

#define HIST_SUB_BITS  7 /* 128 sub-buckets per power of two */
#define HIST_MAX_SHIFT 33
/* 256 exact buckets + HIST_MAX_SHIFT ranges of 128 sub-buckets. */
#define HIST_BUCKETS (256 + HIST_MAX_SHIFT * 128)
/* Largest value with its own bucket (~1.1e12: 12.7 days in microseconds). */
#define HIST_MAX_VALUE ((UINT64_C(256) << HIST_MAX_SHIFT) - 1)

typedef struct hist {
    uint64_t count;     /* values recorded */
    uint64_t min, max;  /* exact; min is UINT64_MAX while empty */
    uint64_t sum;       /* for the mean; saturates rather than wraps */
    uint64_t saturated; /* values above HIST_MAX_VALUE (clamped into the top bucket) */
    uint64_t buckets[HIST_BUCKETS];
} hist_t;

/* Empties h. Never fails. */
void hist_reset(hist_t *h);
/* Counts one value v. Never fails (values beyond the range are clamped and counted). */
void hist_record(hist_t *h, uint64_t v);
/* Counts value v n times. */
void hist_record_n(hist_t *h, uint64_t v, uint64_t n);
/* Adds every count of src into dst. */
void hist_merge(hist_t *dst, const hist_t *src);
/*
 * The value at quantile q (0..1, e.g. 0.99): the midpoint of the bucket holding the
 * ceil(q*count)-th value, clamped to [min, max]. 0 when h is empty. q >= 1 answers max.
 */
uint64_t hist_percentile(const hist_t *h, double q);
/* Arithmetic mean; 0 when empty. */
double hist_mean(const hist_t *h);

/* Bucket index of v and the [lo, hi] range of values a bucket index holds (for tests). */
int hist_bucket_of(uint64_t v);
void hist_bucket_range(int idx, uint64_t *lo, uint64_t *hi);

#endif
