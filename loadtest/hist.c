/* hist.c — log-linear histogram; see hist.h for the error bound and the layout. */
#include "hist.h"

#include <string.h>

void hist_reset(hist_t *h)
{
    memset(h, 0, sizeof(*h));
    h->min = UINT64_MAX;
}

static int msb64(uint64_t v)
{
    return 63 - __builtin_clzll(v);
}

int hist_bucket_of(uint64_t v)
{
    if (v > HIST_MAX_VALUE) v = HIST_MAX_VALUE;
    if (v < 256) return (int)v;
    /* shift >= 1 so that v >> shift lands in [128, 256). */
    int shift = msb64(v) - HIST_SUB_BITS;
    uint64_t sub = v >> shift;
    return 256 + (shift - 1) * 128 + (int)(sub - 128);
}

void hist_bucket_range(int idx, uint64_t *lo, uint64_t *hi)
{
    if (idx < 256) {
        *lo = *hi = (uint64_t)idx;
        return;
    }
    int shift = (idx - 256) / 128 + 1;
    uint64_t sub = (uint64_t)((idx - 256) % 128) + 128;
    *lo = sub << shift;
    *hi = ((sub + 1) << shift) - 1;
}

void hist_record_n(hist_t *h, uint64_t v, uint64_t n)
{
    if (n == 0) return;
    if (v > HIST_MAX_VALUE) h->saturated += n;
    h->buckets[hist_bucket_of(v)] += n;
    h->count += n;
    if (v < h->min) h->min = v;
    if (v > h->max) h->max = v;
    uint64_t add = v * n;
    if ((n != 0 && add / n != v) || h->sum + add < h->sum)
        h->sum = UINT64_MAX;
    else
        h->sum += add;
}

void hist_record(hist_t *h, uint64_t v)
{
    hist_record_n(h, v, 1);
}

void hist_merge(hist_t *dst, const hist_t *src)
{
    if (src->count == 0) return;
    for (int i = 0; i < HIST_BUCKETS; i++)
        dst->buckets[i] += src->buckets[i];
    dst->count += src->count;
    dst->saturated += src->saturated;
    if (src->min < dst->min) dst->min = src->min;
    if (src->max > dst->max) dst->max = src->max;
    dst->sum = (dst->sum + src->sum < dst->sum) ? UINT64_MAX : dst->sum + src->sum;
}

uint64_t hist_percentile(const hist_t *h, double q)
{
    if (h->count == 0) return 0;
    if (q >= 1.0) return h->max;
    if (q < 0) q = 0;
    uint64_t rank = (uint64_t)(q * (double)h->count + 0.999999);
    if (rank == 0) rank = 1;
    uint64_t seen = 0;
    for (int i = 0; i < HIST_BUCKETS; i++) {
        seen += h->buckets[i];
        if (seen >= rank) {
            uint64_t lo, hi;
            hist_bucket_range(i, &lo, &hi);
            uint64_t mid = lo + (hi - lo) / 2;
            if (mid < h->min) mid = h->min;
            if (mid > h->max) mid = h->max;
            return mid;
        }
    }
    return h->max;
}

double hist_mean(const hist_t *h)
{
    return h->count ? (double)h->sum / (double)h->count : 0.0;
}
