/*
 * dedup.c — exact dedup by 64-bit fingerprints in sharded bucketed tables with generation tags
 * (contract and structure in dedup.h).
 *
 * Generations: d->cur is the open generation, d->floor the oldest live one; both only grow and
 * cur - floor < DEDUP_MAX_LIVE. A slot's tag holds (gen % 127) + 1 (0 = empty) and the PENDING
 * bit; from (cur, floor) a tag is live when its distance to cur's tag is <= cur - floor. Tags
 * repeat every 127 generations, so every dead slot must be cleared before its tag comes round
 * again: the worker sweeps a shard when generations died, and any operation on a shard that was
 * not swept for DEDUP_SWEEP_FORCE generations sweeps it first (dead for at most
 * DEDUP_SWEEP_FORCE + DEDUP_MAX_LIVE < 127 generations, so never mistaken for live).
 *
 * Probing: fp's home bucket, then its alternate bucket, then linearly on from the alternate one.
 * An insert takes a free (empty or dead) slot of the emptier of the two; only when both are full
 * does it probe on, setting each passed bucket's ovf byte to the current generation's tag. A
 * lookup goes on past the alternate bucket only while that bucket's ovf tag is live, so dead
 * slots are free at once without tombstones.
 *
 * Growth is incremental (as Redis's dict.c rehashes): a shard allocates a table of 1.5x the
 * buckets and keeps the old one beside it. New entries go to the new table; every operation on
 * the shard first moves the live entries of the next DEDUP_MIGRATE_STEP old buckets (at most
 * DEDUP_MIGRATE_STEP * DEDUP_SLOTS entries), so no operation pays for a whole rehash (a worker
 * that moved a whole shard under one lock hold showed 300-670 ms latency spikes at each growth
 * in a 5-minute open-loop run). A lookup probes the new table, then the old one with its own
 * probing rules: a moved slot is simply empty there, and the old buckets keep their ovf bytes,
 * so chains through already-moved buckets stay intact. The old table is freed when its last
 * bucket is moved.
 * The worker grows shards ahead of the loops: once a shard passes 75% load it allocates and
 * faults in the next table outside the lock, swaps it in, and moves the whole old table in
 * chunks of DEDUP_WORKER_MIGRATE buckets, DEDUP_GROW_PAUSE_US apart, before it looks at the next
 * shard. So at most one worker growth is in flight, and the loops, which grow only at 90% (in
 * place: small tables filling faster than the worker's one-second rounds), seldom do. Without
 * a running worker (sluice-stream, tests, a snapshot load before the worker starts) a growth
 * moves its whole old table at once: nothing would stagger the shards' growths otherwise.
 *
 * The memory cap (dedup.max_memory) holds every table, old ones included: d->mem_used counts
 * them all and a growth that would pass the cap waits (the shard fills on to 95%, then evicts).
 * The tables themselves are capped at max_memory * 64 / 66 in all, so one growth of the largest
 * tables (old table 2/3 of the new) always fits. It used to be the tables only: the shards cross
 * 90% together, and during the last growth every old table lived beside its new one, 1.67x the
 * cap (dedup_bytes 484 MB at the 256 MiB default, collector VmHWM 681 MB: issue 11's memory
 * goal is 512 MiB for the whole process).
 *
 * Locks: shard.lock (spin, yields after a while) guards everything in its shard; gen_mu guards
 * changes of cur/floor/gen_start (readers use the atomics). Order: shard lock, then gen_mu.
 */
#include "dedup_internal.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdalign.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>
#include <xxhash.h>

#include "base.h"
#include "dedup_journal.h"
#include "log.h"
#include "metrics.h"

const char *dedup_strerror(int err)
{
    switch (err) {
#define DEDUP_X_STR(name, val, msg)                                                                \
    case val:                                                                                      \
        return msg;
        DEDUP_ERRORS(DEDUP_X_STR)
#undef DEDUP_X_STR
    default:
        return "unknown error";
    }
}

static uint64_t realtime_ms(void *ud)
{
    (void)ud;
    return (uint64_t)base_wall_ms();
}

/* The two candidate buckets of fp: from its low 32 bits, and from a multiplicative mix (the top
 * 6 bits chose the shard). */
static inline uint32_t home_of(uint64_t fp, uint32_t nb)
{
    return (uint32_t)(((fp & 0xffffffffu) * (uint64_t)nb) >> 32);
}

static inline uint32_t alt_of(uint64_t fp, uint32_t nb)
{
    return (uint32_t)((((fp * 0x9e3779b97f4a7c15ull) >> 32) * (uint64_t)nb) >> 32);
}

static size_t buckets_mapped(uint32_t nb)
{
    return ((size_t)nb * sizeof(bucket_t) + 4095) / 4096 * 4096;
}

/* What a table of nb buckets costs against the cap. */
static uint64_t table_bytes(uint32_t nb)
{
    size_t bytes = (size_t)nb * sizeof(bucket_t);
    return bytes < DEDUP_HUGE ? bytes : buckets_mapped(nb);
}

/* Counts bytes against the cap; false (nothing counted) when they would pass it. */
static bool table_reserve(dedup_t *d, uint64_t bytes)
{
    uint64_t used = atomic_load_explicit(&d->mem_used, memory_order_relaxed);
    do {
        if (used + bytes > d->mem_cap) return false;
    } while (!atomic_compare_exchange_weak_explicit(&d->mem_used, &used, used + bytes,
                                                    memory_order_relaxed, memory_order_relaxed));
    return true;
}

static void table_unreserve(dedup_t *d, uint64_t bytes)
{
    atomic_fetch_sub_explicit(&d->mem_used, bytes, memory_order_relaxed);
}

static bucket_t *buckets_map(uint32_t nb);

/* A zeroed table of nb buckets, counted against the cap; NULL when it would pass the cap (*capped
 * set) or memory is short. */
static bucket_t *buckets_alloc(dedup_t *d, uint32_t nb, bool *capped)
{
    *capped = false;
    if (!table_reserve(d, table_bytes(nb))) {
        *capped = true;
        return NULL;
    }
    bucket_t *b = buckets_map(nb);
    if (b == NULL) table_unreserve(d, table_bytes(nb));
    return b;
}

static bucket_t *buckets_map(uint32_t nb)
{
    size_t bytes = (size_t)nb * sizeof(bucket_t);
    if (bytes < DEDUP_HUGE) {
        bucket_t *b = aligned_alloc(64, bytes);
        if (b != NULL) memset(b, 0, bytes);
        return b;
    }
    /* From 2 MiB on: straight from mmap (zero already), 2 MiB aligned, with transparent huge
     * pages asked for: every probe is a random access, and with 4 KiB pages nearly each would
     * also miss the TLB (~30% of the insert time measured by bench_dedup). Every page is faulted
     * in here, by whoever allocates (normally the worker), not by the first probes after a
     * growth: a fresh table gets nearly one fault per insert otherwise. */
    size_t len = buckets_mapped(nb);
    void *p =
        mmap(NULL, len + DEDUP_HUGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) return NULL;
    uintptr_t a = ((uintptr_t)p + DEDUP_HUGE - 1) & ~(uintptr_t)(DEDUP_HUGE - 1);
    size_t head = a - (uintptr_t)p;
    if (head > 0) munmap(p, head);
    if (DEDUP_HUGE - head > 0) munmap((char *)a + len, DEDUP_HUGE - head);
#ifdef MADV_HUGEPAGE
    (void)madvise((void *)a, bytes / DEDUP_HUGE * DEDUP_HUGE, MADV_HUGEPAGE);
#endif
    for (size_t off = 0; off < len; off += 4096)
        ((volatile char *)a)[off] = 0;
    return (bucket_t *)a;
}

static void buckets_free(dedup_t *d, bucket_t *b, uint32_t nb)
{
    if (b == NULL) return;
    table_unreserve(d, table_bytes(nb));
    if ((size_t)nb * sizeof(bucket_t) < DEDUP_HUGE)
        free(b);
    else
        munmap(b, buckets_mapped(nb));
}

/* ---- generations (gen_mu) ---- */

/* Opens generation cur+1 at time t; keeps cur - floor < DEDUP_MAX_LIVE. gen_mu held. */
static void gen_open_locked(dedup_t *d, uint64_t t)
{
    uint64_t cur = atomic_load_explicit(&d->cur, memory_order_relaxed);
    uint64_t floor = atomic_load_explicit(&d->floor, memory_order_relaxed);
    int idx = tag_of(cur + 1) - 1;
    atomic_store_explicit(&d->gen_start[idx], t, memory_order_relaxed);
    atomic_store_explicit(&d->gen_by_cap[idx], 0, memory_order_relaxed);
    atomic_store_explicit(&d->cur, cur + 1, memory_order_release);
    while (cur + 1 - floor >= DEDUP_MAX_LIVE) {
        /* Only short generations forced by the cap get here: count them as cap evictions. */
        atomic_store_explicit(&d->gen_by_cap[tag_of(floor) - 1], 1, memory_order_relaxed);
        floor++;
    }
    atomic_store_explicit(&d->floor, floor, memory_order_release);
}

void dedup_tick(dedup_t *d)
{
    uint64_t t = now_ms(d);
    pthread_mutex_lock(&d->gen_mu);
    uint64_t cur = atomic_load_explicit(&d->cur, memory_order_relaxed);
    uint64_t start = atomic_load_explicit(&d->gen_start[tag_of(cur) - 1], memory_order_relaxed);
    if (t >= start + d->gen_ms) gen_open_locked(d, t);
    cur = atomic_load_explicit(&d->cur, memory_order_relaxed);
    uint64_t floor = atomic_load_explicit(&d->floor, memory_order_relaxed);
    /* Generation g ends when g+1 starts; it dies once that is a window ago. */
    while (floor < cur) {
        uint64_t end =
            atomic_load_explicit(&d->gen_start[tag_of(floor + 1) - 1], memory_order_relaxed);
        if (end + d->window_ms > t) break;
        floor++;
    }
    atomic_store_explicit(&d->floor, floor, memory_order_release);
    pthread_mutex_unlock(&d->gen_mu);
}

/* At the cap: drops the oldest live generation unless someone already moved the floor past what
 * v saw. When the open generation is the oldest, a new one is opened first. Reloads v. */
static void gen_evict_oldest(dedup_t *d, view_t *v)
{
    pthread_mutex_lock(&d->gen_mu);
    uint64_t floor = atomic_load_explicit(&d->floor, memory_order_relaxed);
    if (floor == v->floor) {
        uint64_t cur = atomic_load_explicit(&d->cur, memory_order_relaxed);
        if (cur == floor) gen_open_locked(d, now_ms(d));
        floor = atomic_load_explicit(&d->floor, memory_order_relaxed);
        if (floor == v->floor) {
            atomic_store_explicit(&d->gen_by_cap[tag_of(floor) - 1], 1, memory_order_relaxed);
            atomic_store_explicit(&d->floor, floor + 1, memory_order_release);
        }
    }
    pthread_mutex_unlock(&d->gen_mu);
    view_load(d, v);
}

/* ---- shard internals (shard lock held) ---- */

static void table_sweep(bucket_t *b, uint32_t from, uint32_t nb, const view_t *v)
{
    for (uint32_t i = from; i < nb; i++) {
        for (int k = 0; k < DEDUP_SLOTS; k++)
            if (b[i].tag[k] != 0 && !tag_live(v, b[i].tag[k])) b[i].tag[k] = 0;
        if (b[i].ovf != 0 && !tag_live(v, b[i].ovf)) b[i].ovf = 0;
    }
}

/* Both tables while growing: the old one's unmoved buckets still hold entries. (Moved buckets
 * keep only ovf bytes, which die with their generations like any other.) */
static void shard_sweep(shard_t *s, const view_t *v)
{
    table_sweep(atomic_load_explicit(&s->b, memory_order_relaxed), 0,
                atomic_load_explicit(&s->nb, memory_order_relaxed), v);
    if (s->ob != NULL) table_sweep(s->ob, 0, s->onb, v);
    s->swept_gen = v->cur;
    s->swept_floor = v->floor;
}

/* Drops the counts of generations that died since the shard last looked; sweeps when overdue. */
void dedup__shard_prepare(dedup_t *d, shard_t *s, const view_t *v)
{
    if (s->seen_floor < v->floor) {
        uint64_t from = s->seen_floor;
        if (v->floor - from > DEDUP_TAGS) from = v->floor - DEDUP_TAGS;
        uint64_t by_cap = 0;
        for (uint64_t g = from; g < v->floor; g++) {
            int i = tag_of(g) - 1;
            uint32_t c = s->count[i];
            if (c == 0) continue;
            s->live -= c;
            s->pending -= s->pcount[i];
            s->pcount[i] = 0;
            if (atomic_load_explicit(&d->gen_by_cap[i], memory_order_relaxed)) by_cap += c;
            s->count[i] = 0;
        }
        s->seen_floor = v->floor;
        if (by_cap > 0) {
            atomic_fetch_add_explicit(&d->evicted, by_cap, memory_order_relaxed);
            metrics_add(METRIC_DEDUP_EVICTIONS, by_cap);
        }
    }
    if (v->cur - s->swept_gen >= DEDUP_SWEEP_FORCE) shard_sweep(s, v);
}

/* Finds a live slot holding fp in one table. Returns its tag byte, or NULL. */
static uint8_t *table_find(bucket_t *b, uint32_t nb, const view_t *v, uint64_t fp)
{
    bucket_t *b1 = &b[home_of(fp, nb)];
    for (int k = 0; k < DEDUP_SLOTS; k++)
        if (b1->fp[k] == fp && tag_live(v, b1->tag[k])) return &b1->tag[k];
    uint32_t i = alt_of(fp, nb);
    for (uint32_t n = 0; n < nb; n++) {
        bucket_t *bk = &b[i];
        for (int k = 0; k < DEDUP_SLOTS; k++)
            if (bk->fp[k] == fp && tag_live(v, bk->tag[k])) return &bk->tag[k];
        if (!tag_live(v, bk->ovf)) return NULL;
        if (++i == nb) i = 0;
    }
    return NULL;
}

/* Finds a live slot holding fp: the new table, then (while growing) the old one. */
static uint8_t *shard_find(shard_t *s, const view_t *v, uint64_t fp)
{
    uint8_t *t = table_find(atomic_load_explicit(&s->b, memory_order_relaxed),
                            atomic_load_explicit(&s->nb, memory_order_relaxed), v, fp);
    if (t == NULL && s->ob != NULL) t = table_find(s->ob, s->onb, v, fp);
    return t;
}

/* Puts fp in the first free (empty or dead) slot from its home bucket; marks the full buckets it
 * passes. The caller made room (live < slots), so a free slot exists. */
/* Free (empty or dead) slots of bk; *first gets the first one's index. */
static inline int bucket_free(const bucket_t *bk, const view_t *v, int *first)
{
    int n = 0;
    *first = -1;
    for (int k = DEDUP_SLOTS - 1; k >= 0; k--) {
        if (!tag_live(v, bk->tag[k])) {
            n++;
            *first = k;
        }
    }
    return n;
}

static void table_place(bucket_t *b, uint32_t nb, const view_t *v, uint64_t fp, uint8_t tag)
{
    /* Two choices: the emptier of the two candidate buckets, which keeps overflows rare up to
     * the 90% load limit; when both are full, linear probing from the second one. */
    bucket_t *b1 = &b[home_of(fp, nb)];
    uint32_t i = alt_of(fp, nb);
    int k1, k2;
    int f1 = bucket_free(b1, v, &k1), f2 = bucket_free(&b[i], v, &k2);
    if (f1 > 0 || f2 > 0) {
        bucket_t *bk = f1 >= f2 ? b1 : &b[i];
        int k = f1 >= f2 ? k1 : k2;
        bk->fp[k] = fp;
        bk->tag[k] = tag;
        return;
    }
    for (uint32_t n = 0; n < nb; n++) {
        bucket_t *bk = &b[i];
        for (int k = 0; k < DEDUP_SLOTS; k++) {
            if (!tag_live(v, bk->tag[k])) {
                bk->fp[k] = fp;
                bk->tag[k] = tag;
                return;
            }
        }
        bk->ovf = (uint8_t)v->ctag;
        if (++i == nb) i = 0;
    }
}

static void shard_place(shard_t *s, const view_t *v, uint64_t fp, uint8_t tag)
{
    table_place(atomic_load_explicit(&s->b, memory_order_relaxed),
                atomic_load_explicit(&s->nb, memory_order_relaxed), v, fp, tag);
    s->count[(tag & 0x7f) - 1]++;
    s->live++;
    if (tag & DEDUP_PENDING) {
        s->pcount[(tag & 0x7f) - 1]++;
        s->pending++;
    }
}

/* Moves the live entries of the next `buckets` old buckets into the new table (at most
 * buckets * DEDUP_SLOTS of them); frees the old table after its last bucket. Their new places
 * are prefetched first, so the cache misses overlap. Returns the number moved. */
static uint32_t shard_migrate(dedup_t *d, shard_t *s, const view_t *v, uint32_t buckets)
{
    if (s->ob == NULL) return 0;
    bucket_t *nbk = atomic_load_explicit(&s->b, memory_order_relaxed);
    uint32_t nnb = atomic_load_explicit(&s->nb, memory_order_relaxed);
    uint32_t moved = 0;
    while (buckets > 0 && s->mig < s->onb) {
        uint32_t end = s->onb - s->mig < DEDUP_MIGRATE_STEP ? s->onb : s->mig + DEDUP_MIGRATE_STEP;
        uint64_t fp[DEDUP_MIGRATE_STEP * DEDUP_SLOTS];
        uint8_t tag[DEDUP_MIGRATE_STEP * DEDUP_SLOTS];
        unsigned n = 0;
        for (; s->mig < end && buckets > 0; s->mig++, buckets--) {
            bucket_t *ob = &s->ob[s->mig];
            for (int k = 0; k < DEDUP_SLOTS; k++) {
                if (tag_live(v, ob->tag[k])) {
                    fp[n] = ob->fp[k];
                    tag[n] = ob->tag[k];
                    __builtin_prefetch(&nbk[home_of(fp[n], nnb)], 1);
                    __builtin_prefetch(&nbk[alt_of(fp[n], nnb)], 1);
                    n++;
                }
                ob->tag[k] = 0; /* ovf stays: later old buckets' chains pass through here */
            }
        }
        for (unsigned j = 0; j < n; j++)
            table_place(nbk, nnb, v, fp[j], tag[j]);
        moved += n;
    }
    s->moved += moved;
    if (s->mig == s->onb) {
        buckets_free(d, s->ob, s->onb);
        s->ob = NULL;
        s->onb = s->mig = 0;
    }
    return moved;
}

/* What every lookup or insert does first: shard_prepare, then one bounded step of a growth in
 * progress. */
static void shard_enter(dedup_t *d, shard_t *s, const view_t *v)
{
    dedup__shard_prepare(d, s, v);
    if (s->ob != NULL) {
        uint32_t m = shard_migrate(d, s, v, DEDUP_MIGRATE_STEP);
        if (m > s->step_max) s->step_max = m;
    }
}

/* The bucket count after nb: 1.5x, capped. */
static uint32_t grown_nb(const shard_t *s, uint32_t nb)
{
    uint64_t want = (uint64_t)nb + nb / 2;
    return want > s->max_nb ? s->max_nb : (uint32_t)want;
}

/* Swaps in nbk (nnb buckets, the shard's next size) as the new table; entries move later. The
 * shard lock is held and no growth is in progress. */
static void shard_grow_into(shard_t *s, bucket_t *nbk, uint32_t nnb)
{
    uint32_t nb = atomic_load_explicit(&s->nb, memory_order_relaxed);
    s->ob = atomic_load_explicit(&s->b, memory_order_relaxed);
    s->onb = nb;
    s->mig = 0;
    atomic_store_explicit(&s->b, nbk, memory_order_relaxed);
    atomic_store_explicit(&s->nb, nnb, memory_order_relaxed);
}

enum { GROW_OK = 0, GROW_AT_MAX = -1, GROW_WAIT = -2 };

/* Starts growing into 1.5x the buckets (capped at max_nb): entries move later, a few per
 * operation (all at once without a worker). Returns GROW_OK; GROW_AT_MAX when the table has its
 * largest size or memory is short; GROW_WAIT when the previous growth is still moving or the new
 * table would pass the memory cap (other shards' growths hold the headroom). */
static int shard_grow(dedup_t *d, shard_t *s, const view_t *v)
{
    uint32_t nb = atomic_load_explicit(&s->nb, memory_order_relaxed);
    if (nb >= s->max_nb) return GROW_AT_MAX;
    if (s->ob != NULL) return GROW_WAIT;
    uint32_t nnb = grown_nb(s, nb);
    bool capped;
    bucket_t *nbk = buckets_alloc(d, nnb, &capped);
    if (nbk == NULL) {
        if (!capped) return GROW_AT_MAX;
        atomic_fetch_add_explicit(&d->grow_waits, 1, memory_order_relaxed);
        return GROW_WAIT;
    }
    shard_grow_into(s, nbk, nnb);
    if (!atomic_load_explicit(&d->incremental, memory_order_relaxed))
        shard_migrate(d, s, v, s->onb);
    return GROW_OK;
}

/* Makes room for one more entry: grow, else drop the oldest generation. Bounded: every eviction
 * kills a generation, and after DEDUP_MAX_LIVE of them the shard is empty. */
static void shard_make_room(dedup_t *d, shard_t *s, view_t *v)
{
    for (int guard = 0; guard < 4 * DEDUP_MAX_LIVE + 64; guard++) {
        uint32_t nb = atomic_load_explicit(&s->nb, memory_order_relaxed);
        if (s->live + 1 <= DEDUP_LIMIT(nb)) return;
        int g = shard_grow(d, s, v);
        if (g == GROW_OK) continue;
        if (g == GROW_WAIT && s->live + 1 <= DEDUP_LIMIT_WAIT(nb)) return;
        gen_evict_oldest(d, v);
        dedup__shard_prepare(d, s, v);
    }
}

/* One pass over a bucket: returns fp's live slot or -1; counts its free slots into *nfree and
 * the first free one into *first. */
static inline int bucket_scan(const bucket_t *bk, const view_t *v, uint64_t fp, int *nfree,
                              int *first)
{
    *nfree = 0;
    *first = -1;
    for (int k = 0; k < DEDUP_SLOTS; k++) {
        if (tag_live(v, bk->tag[k])) {
            if (bk->fp[k] == fp) return k;
        } else if ((*nfree)++ == 0) {
            *first = k;
        }
    }
    return -1;
}

/* Looks fp up and, when absent, places it with tag open generation | pend (DEDUP_PENDING for a
 * reservation, 0 to remember at once); *gen gets the generation it went to. */
static int reserve_tagged(dedup_t *d, uint64_t fp, uint8_t pend, uint64_t *gen)
{
    shard_t *s = shard_of(d, fp);
    view_t v;
    shard_lock(s);
    view_load(d, &v);
    shard_enter(d, s, &v);
    /* The common case in one pass over the two candidate buckets (shard_find + table_place
     * would scan them twice); chains and growth (the old table) take the general path. */
    bucket_t *b = atomic_load_explicit(&s->b, memory_order_relaxed);
    uint32_t nb = atomic_load_explicit(&s->nb, memory_order_relaxed);
    bucket_t *b1 = &b[home_of(fp, nb)], *b2 = &b[alt_of(fp, nb)];
    int f1 = 0, f2 = 0, k1 = -1, k2 = -1;
    int hit = bucket_scan(b1, &v, fp, &f1, &k1);
    uint8_t *t = hit >= 0 ? &b1->tag[hit] : NULL;
    if (t == NULL) {
        hit = bucket_scan(b2, &v, fp, &f2, &k2);
        if (hit >= 0)
            t = &b2->tag[hit];
        else if (tag_live(&v, b2->ovf) || s->ob != NULL)
            t = shard_find(s, &v, fp);
    }
    int verdict;
    if (t != NULL) {
        verdict = (*t & DEDUP_PENDING) ? DEDUP_BUSY : DEDUP_DUPLICATE;
    } else {
        const uint8_t tag = (uint8_t)(v.ctag | pend);
        if ((f1 > 0 || f2 > 0) && s->live + 1 <= DEDUP_LIMIT(nb)) {
            bucket_t *bk = f1 >= f2 ? b1 : b2;
            int k = f1 >= f2 ? k1 : k2;
            bk->fp[k] = fp;
            bk->tag[k] = tag;
            s->count[v.ctag - 1]++;
            s->live++;
            if (pend) {
                s->pcount[v.ctag - 1]++;
                s->pending++;
            }
        } else {
            shard_make_room(d, s, &v);
            shard_place(s, &v, fp, (uint8_t)(v.ctag | pend));
        }
        verdict = DEDUP_NEW;
        *gen = v.cur;
    }
    shard_unlock(s);
    return verdict;
}

static int reserve_one(dedup_t *d, uint64_t fp)
{
    uint64_t gen;
    return reserve_tagged(d, fp, DEDUP_PENDING, &gen);
}

/* commit: a PENDING entry becomes remembered; else it is forgotten. */
static void resolve_one(dedup_t *d, uint64_t fp, bool commit)
{
    shard_t *s = shard_of(d, fp);
    view_t v;
    shard_lock(s);
    view_load(d, &v);
    shard_enter(d, s, &v);
    uint8_t *t = shard_find(s, &v, fp);
    if (t != NULL && (*t & DEDUP_PENDING)) {
        s->pending--;
        s->pcount[(*t & 0x7f) - 1]--;
        if (commit) {
            *t &= 0x7f;
        } else {
            s->count[(*t & 0x7f) - 1]--;
            s->live--;
            *t = 0;
        }
    } else if (t == NULL && commit) {
        /* Dropped at the cap while in flight: remember it from now. */
        shard_make_room(d, s, &v);
        shard_place(s, &v, fp, (uint8_t)v.ctag);
    }
    shard_unlock(s);
}

static inline void prefetch_fp(dedup_t *d, uint64_t fp)
{
    shard_t *s = shard_of(d, fp);
    bucket_t *b = atomic_load_explicit(&s->b, memory_order_relaxed);
    uint32_t nb = atomic_load_explicit(&s->nb, memory_order_relaxed);
    /* A hint only: a table swapped meanwhile costs a useless prefetch, never a fault. */
    __builtin_prefetch(&b[home_of(fp, nb)], 1);
    __builtin_prefetch(&b[alt_of(fp, nb)], 1);
}

/* ---- public API ---- */

void dedup_prefetch(dedup_t *d, uint64_t fp)
{
    prefetch_fp(d, fp);
}

int dedup_new(const dedup_opts_t *opts, dedup_t **out)
{
    *out = NULL;
    if (opts == NULL || opts->window_ms == 0) return DEDUP_E_INVALID;
    dedup_t *d = aligned_alloc(64, sizeof *d);
    if (d == NULL) return DEDUP_E_NOMEM;
    memset(d, 0, sizeof *d);
    d->window_ms = opts->window_ms;
    d->gen_ms = opts->window_ms / DEDUP_GENS > 0 ? opts->window_ms / DEDUP_GENS : 1;
    d->clock = opts->clock != NULL ? opts->clock : realtime_ms;
    d->clock_ud = opts->clock != NULL ? opts->clock_ud : NULL;
    /* The largest tables take 64 / (64 + DEDUP_GROW_HEADROOM) of the cap (mapped ones in whole
     * pages). */
    uint64_t per_shard = opts->max_memory / (DEDUP_SHARDS + DEDUP_GROW_HEADROOM) / sizeof(bucket_t);
    if (per_shard * sizeof(bucket_t) >= DEDUP_HUGE) per_shard = per_shard / 64 * 64;
    if (per_shard < DEDUP_MIN_NB) per_shard = DEDUP_MIN_NB;
    if (per_shard > UINT32_MAX / 2) per_shard = UINT32_MAX / 2;
    d->mem_cap = opts->max_memory;
    uint64_t least = (DEDUP_SHARDS + DEDUP_GROW_HEADROOM) * table_bytes(DEDUP_MIN_NB);
    if (d->mem_cap < least) d->mem_cap = least;
    pthread_mutex_init(&d->gen_mu, NULL);
    atomic_store(&d->gen_start[tag_of(0) - 1], now_ms(d));
    for (unsigned i = 0; i < DEDUP_SHARDS; i++) {
        shard_t *s = &d->shards[i];
        s->max_nb = (uint32_t)per_shard;
        bool capped;
        bucket_t *b = buckets_alloc(d, DEDUP_MIN_NB, &capped);
        if (b == NULL) {
            dedup_free(d);
            return DEDUP_E_NOMEM;
        }
        atomic_store(&s->b, b);
        atomic_store(&s->nb, DEDUP_MIN_NB);
    }
    *out = d;
    return DEDUP_OK;
}

void dedup_free(dedup_t *d)
{
    if (d == NULL) return;
    (void)dedup_worker_stop(d, false);
    if (d->w_orphaned) return; /* the process is exiting; the worker may still read d */
    for (unsigned i = 0; i < DEDUP_SHARDS; i++) {
        shard_t *s = &d->shards[i];
        buckets_free(d, atomic_load(&s->b), atomic_load(&s->nb));
        buckets_free(d, s->ob, s->onb);
    }
    pthread_mutex_destroy(&d->gen_mu);
    free(d->w_dir);
    free(d);
}

uint64_t dedup_seed(const char *source, size_t len)
{
    return XXH3_64bits(source, len);
}

uint64_t dedup_fp(uint64_t seed, const char *id, size_t len)
{
    return XXH3_64bits_withSeed(id, len, seed);
}

void dedup_reserve_batch(dedup_t *d, const uint64_t *fps, size_t n, uint8_t *verdict)
{
    for (size_t i = 0; i < n && i < DEDUP_PREFETCH; i++)
        prefetch_fp(d, fps[i]);
    for (size_t i = 0; i < n; i++) {
        if (i + DEDUP_PREFETCH < n) prefetch_fp(d, fps[i + DEDUP_PREFETCH]);
        verdict[i] = (uint8_t)reserve_one(d, fps[i]);
    }
}

void dedup_scratch_free(dedup_scratch_t *s)
{
    free(s->set);
    free(s->stamp);
    memset(s, 0, sizeof *s);
}

/* A set of capacity >= 2n whose slots are valid only when stamped with the current epoch, so
 * that it needs no clearing between requests. */
static int scratch_prepare(dedup_scratch_t *s, size_t n)
{
    uint64_t want = 64;
    while (want < 2 * (uint64_t)n)
        want <<= 1;
    if (want > (1u << 30)) return DEDUP_E_NOMEM;
    if (s->cap < want) {
        uint64_t *set = malloc(want * sizeof *set);
        uint32_t *stamp = calloc(want, sizeof *stamp);
        if (set == NULL || stamp == NULL) {
            free(set);
            free(stamp);
            return DEDUP_E_NOMEM;
        }
        free(s->set);
        free(s->stamp);
        s->set = set;
        s->stamp = stamp;
        s->cap = (uint32_t)want;
        s->epoch = 0;
    }
    if (++s->epoch == 0) {
        memset(s->stamp, 0, (size_t)s->cap * sizeof *s->stamp);
        s->epoch = 1;
    }
    return DEDUP_OK;
}

/* Adds fp; returns true when it was already there. */
static bool scratch_seen(dedup_scratch_t *s, uint64_t fp)
{
    uint32_t mask = s->cap - 1;
    for (uint32_t i = (uint32_t)(fp ^ (fp >> 32)) & mask;; i = (i + 1) & mask) {
        if (s->stamp[i] != s->epoch) {
            s->stamp[i] = s->epoch;
            s->set[i] = fp;
            return false;
        }
        if (s->set[i] == fp) return true;
    }
}

int dedup_reserve_all(dedup_t *d, dedup_scratch_t *s, const uint64_t *fps, size_t n,
                      uint8_t *verdict)
{
    if (n == 0) return DEDUP_OK;
    if (scratch_prepare(s, n) != DEDUP_OK) return DEDUP_E_NOMEM;
    for (size_t i = 0; i < n; i++)
        verdict[i] = scratch_seen(s, fps[i]) ? DEDUP_DUPLICATE : DEDUP_NEW;
    for (size_t i = 0; i < n && i < DEDUP_PREFETCH; i++)
        prefetch_fp(d, fps[i]);
    for (size_t i = 0; i < n; i++) {
        if (i + DEDUP_PREFETCH < n) prefetch_fp(d, fps[i + DEDUP_PREFETCH]);
        if (verdict[i] == DEDUP_DUPLICATE) continue;
        verdict[i] = (uint8_t)reserve_one(d, fps[i]);
    }
    return DEDUP_OK;
}

bool dedup_all_remembered(dedup_t *d, const uint64_t *fps, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        shard_t *s = shard_of(d, fps[i]);
        view_t v;
        shard_lock(s);
        view_load(d, &v);
        shard_enter(d, s, &v);
        uint8_t *t = shard_find(s, &v, fps[i]);
        bool ok = t != NULL && !(*t & DEDUP_PENDING);
        shard_unlock(s);
        if (!ok) return false;
    }
    return true;
}

void dedup_commit(dedup_t *d, const uint64_t *fps, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        if (i + DEDUP_PREFETCH < n) prefetch_fp(d, fps[i + DEDUP_PREFETCH]);
        resolve_one(d, fps[i], true);
    }
}

void dedup_release(dedup_t *d, const uint64_t *fps, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        if (i + DEDUP_PREFETCH < n) prefetch_fp(d, fps[i + DEDUP_PREFETCH]);
        resolve_one(d, fps[i], false);
    }
}

void dedup_stats(dedup_t *d, dedup_stats_t *st)
{
    memset(st, 0, sizeof *st);
    st->bytes = sizeof *d;
    for (unsigned i = 0; i < DEDUP_SHARDS; i++) {
        shard_t *s = &d->shards[i];
        view_t v;
        shard_lock(s);
        view_load(d, &v);
        dedup__shard_prepare(d, s, &v);
        st->entries += s->live;
        st->pending += s->pending;
        uint64_t nb = atomic_load_explicit(&s->nb, memory_order_relaxed) + (uint64_t)s->onb;
        st->bytes += table_bytes(atomic_load_explicit(&s->nb, memory_order_relaxed));
        if (s->ob != NULL) st->bytes += table_bytes(s->onb);
        st->table_slots += nb * DEDUP_SLOTS;
        if (s->ob != NULL) st->growing++;
        st->grow_moved += s->moved;
        if (s->step_max > st->grow_step_max) st->grow_step_max = s->step_max;
        shard_unlock(s);
    }
    view_t v;
    view_load(d, &v);
    uint64_t t = now_ms(d);
    uint64_t start = atomic_load_explicit(&d->gen_start[tag_of(v.floor) - 1], memory_order_relaxed);
    uint64_t age = t > start ? t - start : 0;
    if (age > d->window_ms) age = d->window_ms;
    st->window_s = (double)(age / 1000); /* whole seconds: a gauge, not a stopwatch */
    st->evicted_by_cap = atomic_load_explicit(&d->evicted, memory_order_relaxed);
    st->grow_waits = atomic_load_explicit(&d->grow_waits, memory_order_relaxed);
    st->generations = (uint32_t)(v.span + 1);
}

static double gauge_entries(void *ud)
{
    dedup_stats_t st;
    dedup_stats(ud, &st);
    return (double)st.entries;
}

static double gauge_bytes(void *ud)
{
    dedup_stats_t st;
    dedup_stats(ud, &st);
    return (double)st.bytes;
}

static double gauge_window(void *ud)
{
    dedup_stats_t st;
    dedup_stats(ud, &st);
    return st.window_s;
}

static double gauge_grow_waits(void *ud)
{
    return (double)atomic_load_explicit(&((dedup_t *)ud)->grow_waits, memory_order_relaxed);
}

static double gauge_pending(void *ud)
{
    dedup_stats_t st;
    dedup_stats(ud, &st);
    return (double)st.pending;
}

int dedup_register_metrics(dedup_t *d)
{
    if (metrics_gauge_register("dedup_entries", "events remembered by dedup (incl. pending)",
                               gauge_entries, d) != 0 ||
        metrics_gauge_register("dedup_pending", "dedup entries of events still being delivered",
                               gauge_pending, d) != 0 ||
        metrics_gauge_register("dedup_bytes",
                               "memory of the dedup tables, old ones of growths in progress "
                               "included (capped by dedup.max_memory)",
                               gauge_bytes, d) != 0 ||
        metrics_gauge_register("dedup_growth_waits_total",
                               "table growths refused because they would pass dedup.max_memory "
                               "(the shard fills on to 95%, then evicts)",
                               gauge_grow_waits, d) != 0 ||
        metrics_gauge_register("dedup_window_seconds",
                               "effective dedup window: age of the oldest remembered generation "
                               "(shorter than dedup.window when the memory cap evicts)",
                               gauge_window, d) != 0)
        return -1;
    return 0;
}

/* ---- restoring entries (snapshot load, journal replay) ---- */

/* See dedup_internal.h. */
void dedup__load_insert(dedup_t *d, uint64_t fp, uint8_t tag)
{
    shard_t *s = shard_of(d, fp);
    view_t v;
    shard_lock(s);
    view_load(d, &v);
    shard_enter(d, s, &v);
    if (shard_find(s, &v, fp) == NULL) {
        shard_make_room(d, s, &v);
        /* No request runs: a growth moves at once, so old tables never pile up against the cap
         * (the load grows every shard together). */
        shard_migrate(d, s, &v, s->onb);
        /* The cap may have dropped this entry's generation meanwhile. */
        if (tag_live(&v, tag)) shard_place(s, &v, fp, tag);
    }
    shard_unlock(s);
}

bool dedup_restore(dedup_t *d, uint64_t fp, uint64_t t_ms)
{
    uint64_t now = now_ms(d);
    if (t_ms + d->window_ms <= now) return false; /* its window is over */
    view_t v;
    view_load(d, &v);
    /* The newest live generation that had started by t_ms (the oldest live one for older
     * records): the entry then lives at least its window from t_ms. */
    uint64_t g = v.cur;
    while (g > v.floor &&
           atomic_load_explicit(&d->gen_start[tag_of(g) - 1], memory_order_relaxed) > t_ms)
        g--;
    shard_t *s = shard_of(d, fp);
    shard_lock(s);
    view_load(d, &v);
    shard_enter(d, s, &v);
    bool added = false;
    if (shard_find(s, &v, fp) == NULL) {
        shard_make_room(d, s, &v);
        int tag = tag_of(g);
        if (tag_live(&v, (unsigned)tag)) {
            shard_place(s, &v, fp, (uint8_t)tag);
            added = true;
        }
    }
    shard_unlock(s);
    return added;
}

/* ---- worker ---- */

/* Moves the rest of the shard's growth in progress, DEDUP_WORKER_MIGRATE buckets per lock hold
 * and DEDUP_GROW_PAUSE_US apart, until its old table is freed. */
static void worker_finish_growth(dedup_t *d, shard_t *s)
{
    for (;;) {
        shard_lock(s);
        view_t v;
        view_load(d, &v);
        dedup__shard_prepare(d, s, &v);
        shard_migrate(d, s, &v, DEDUP_WORKER_MIGRATE);
        bool done = s->ob == NULL;
        shard_unlock(s);
        if (done) return;
        base_sleep_us(DEDUP_GROW_PAUSE_US);
    }
}

/* Grows the shard once it passed DEDUP_GROW_AT, the next table allocated and faulted in outside
 * the lock, then moves its old table; or finishes a growth a loop started. One shard at a time,
 * so at most one old table of the worker's lives beside its new one. */
static void worker_grow(dedup_t *d, shard_t *s)
{
    shard_lock(s);
    uint32_t nb = atomic_load_explicit(&s->nb, memory_order_relaxed);
    uint32_t nnb = grown_nb(s, nb);
    bool moving = s->ob != NULL;
    bool want = !moving && nnb > nb && s->live >= DEDUP_GROW_AT(nb);
    shard_unlock(s);
    if (moving) {
        worker_finish_growth(d, s);
        return;
    }
    if (!want) return;
    bool capped;
    bucket_t *b = buckets_alloc(d, nnb, &capped);
    if (b == NULL) {
        if (capped) atomic_fetch_add_explicit(&d->grow_waits, 1, memory_order_relaxed);
        return;
    }
    shard_lock(s);
    bool still = s->ob == NULL && atomic_load_explicit(&s->nb, memory_order_relaxed) == nb;
    if (still) shard_grow_into(s, b, nnb);
    shard_unlock(s);
    if (!still) buckets_free(d, b, nnb); /* a loop grew it meanwhile */
    worker_finish_growth(d, s);
}

/* The worker sweeps a shard once DEDUP_SWEEP_FORCE / 2 generations opened since its last sweep:
 * what a sweep must do is clear every dead tag before its value comes round again (tags repeat
 * every DEDUP_TAGS generations; the loops force a sweep at DEDUP_SWEEP_FORCE). A dead entry
 * meanwhile costs nothing: lookups and placement see it as free. It used to sweep also whenever
 * the floor moved; at the cap's first eviction that swept the whole table (256 MiB) at once, the
 * one one-second window above 50 ms left in the 5-minute runs (95-119 ms at t = 264 s in four
 * runs; none above 50 ms without it). swept_floor is kept for the record. */
static bool sweep_due(const shard_t *s, const view_t *v)
{
    return v->cur - s->swept_gen >= DEDUP_SWEEP_FORCE / 2;
}

/* The worker's sweep of one shard: DEDUP_SWEEP_CHUNK buckets per lock hold, each chunk against
 * the view of that moment (so an entry of a generation opened meanwhile is live, never cleared).
 * Both tables while growing, as shard_sweep. The shard counts as swept as of the view at the
 * start, and only once every bucket was visited with its tables unchanged; when a growth starts
 * or ends in between it starts over (a growth takes seconds, so that is rare), and after a few
 * tries sweeps whole under one hold as before. */
static void shard_sweep_chunked(dedup_t *d, shard_t *s)
{
    for (int attempt = 0; attempt < 3; attempt++) {
        shard_lock(s);
        view_t v0, v;
        view_load(d, &v0);
        dedup__shard_prepare(d, s, &v0);
        if (!sweep_due(s, &v0)) {
            shard_unlock(s);
            return;
        }
        bucket_t *b = atomic_load_explicit(&s->b, memory_order_relaxed), *ob = s->ob;
        uint32_t nb = atomic_load_explicit(&s->nb, memory_order_relaxed), onb = s->onb;
        uint64_t total = (uint64_t)nb + (ob != NULL ? onb : 0);
        uint64_t at = 0;
        v = v0;
        for (;;) {
            uint64_t end = at + DEDUP_SWEEP_CHUNK < total ? at + DEDUP_SWEEP_CHUNK : total;
            if (at < nb) table_sweep(b, (uint32_t)at, (uint32_t)(end < nb ? end : nb), &v);
            if (end > nb)
                table_sweep(ob, (uint32_t)(at > nb ? at - nb : 0), (uint32_t)(end - nb), &v);
            at = end;
            if (at == total) break;
            shard_unlock(s);
            base_sleep_ms(DEDUP_SWEEP_PAUSE_MS);
            shard_lock(s);
            if (atomic_load_explicit(&s->b, memory_order_relaxed) != b || s->ob != ob ||
                atomic_load_explicit(&s->nb, memory_order_relaxed) != nb || s->onb != onb)
                break;
            view_load(d, &v);
            dedup__shard_prepare(d, s, &v);
        }
        bool done = at == total;
        if (done) {
            s->swept_gen = v0.cur;
            s->swept_floor = v0.floor;
        }
        shard_unlock(s);
        if (done) return;
    }
    shard_lock(s);
    view_t v;
    view_load(d, &v);
    dedup__shard_prepare(d, s, &v);
    if (sweep_due(s, &v)) shard_sweep(s, &v);
    shard_unlock(s);
}

/* One worker round: sweeps the shards due for it, grows those past DEDUP_GROW_AT and finishes
 * every growth in progress. */
static void sweep_all(dedup_t *d)
{
    for (unsigned i = 0; i < DEDUP_SHARDS; i++) {
        shard_t *s = &d->shards[i];
        shard_sweep_chunked(d, s);
        worker_grow(d, s);
    }
}

uint32_t dedup__grown_nb(const shard_t *s, uint32_t nb)
{
    return grown_nb(s, nb);
}

void dedup__sweep_all(dedup_t *d)
{
    sweep_all(d);
}

/* The one warning of a failed snapshot, periodic or final (same fields): the file, the step and
 * errno by name and text, so a full disk (ENOSPC), a read-only one (EROFS) and a missing
 * directory (ENOENT, ENOTDIR) read differently. */
static void snapshot_failed(dedup_t *d, const char *when, int rc, const base_ioerr_t *e)
{
    metrics_add(METRIC_DEDUP_SNAPSHOT_ERRORS, 1);
    char path[4096];
    if (path_join(path, sizeof path, d->w_dir, SNAP_NAME) != 0) snprintf(path, sizeof path, "?");
    LOG(LOG_WARN, "dedup_snapshot_failed", LS("path", path), LS("when", when),
        LS("reason", dedup_strerror(rc)), LS("op", e->op),
        LS("errno", e->errnum != 0 ? base_errno_name(e->errnum) : NULL),
        LS("error", e->errnum != 0 ? strerror(e->errnum) : NULL),
        LS("effect", "dedup state since the last good snapshot is not on disk"));
}

/* A snapshot with the journal around it: rotate first (every record in the older segments is
 * then remembered in memory), drop those segments once the snapshot is durable. */
static int snapshot_with_journal(dedup_t *d, base_ioerr_t *e)
{
    uint64_t seq = d->journal != NULL ? dedup_journal_rotate(d->journal) : 0;
    int rc = dedup_snapshot_write(d, d->w_dir, e);
    if (rc == DEDUP_OK && d->journal != NULL) dedup_journal_drop_before(d->journal, seq);
    return rc;
}

int dedup__snapshot_with_journal(dedup_t *d, base_ioerr_t *e)
{
    return snapshot_with_journal(d, e);
}

/* One worker tick (every DEDUP_WORKER_PERIOD_MS, or at once after dedup_snapshot_soon):
 * generations, sweep, periodic snapshot. */
static void worker_tick(void *arg)
{
    dedup_t *d = arg;
    dedup_tick(d);
    sweep_all(d);
    bool soon = atomic_exchange(&d->w_snap_soon, false);
    if (soon || (d->w_interval_ms > 0 &&
                 (uint64_t)base_mono_ms() - d->w_last_snap_ms >= d->w_interval_ms)) {
        uint64_t t0 = (uint64_t)base_mono_ms();
        base_ioerr_t e;
        int rc = snapshot_with_journal(d, &e);
        d->w_last_snap_ms = (uint64_t)base_mono_ms();
        if (rc != DEDUP_OK)
            snapshot_failed(d, "periodic", rc, &e);
        else
            LOG(LOG_DEBUG, "dedup_snapshot", LI("ms", d->w_last_snap_ms - t0),
                LS("cause", soon ? "journal_max_bytes" : "interval"));
    }
}

void dedup_snapshot_soon(dedup_t *d)
{
    atomic_store(&d->w_snap_soon, true);
    if (d->worker != NULL) base_worker_wake(d->worker);
}

void dedup_attach_journal(dedup_t *d, struct dedup_journal *j)
{
    d->journal = j;
}

int dedup_worker_start(dedup_t *d, const char *dir, uint64_t interval_ms)
{
    if (d->worker != NULL || d->w_orphaned) return DEDUP_E_INVALID;
    char *copy = strdup(dir);
    if (copy == NULL) return DEDUP_E_NOMEM;
    free(d->w_dir);
    d->w_dir = copy;
    d->w_interval_ms = interval_ms;
    d->w_last_snap_ms = (uint64_t)base_mono_ms();
    atomic_store(&d->incremental, true);
    int rc = base_worker_start(&d->worker, "sluice-dedup", DEDUP_WORKER_PERIOD_MS, worker_tick, d);
    if (rc != BASE_OK) atomic_store(&d->incremental, false);
    if (rc == BASE_E_NOMEM) return DEDUP_E_NOMEM;
    return rc == BASE_OK ? DEDUP_OK : DEDUP_E_THREAD;
}

int dedup_worker_stop(dedup_t *d, bool final)
{
    if (d->worker != NULL) {
        int rc = base_worker_stop(d->worker, DEDUP_WORKER_STOP_MS);
        d->worker = NULL;
        if (rc == BASE_OK) atomic_store(&d->incremental, false);
        if (rc != BASE_OK) {
            d->w_orphaned = true;
            return DEDUP_E_TIMEOUT;
        }
    }
    if (d->w_orphaned) return DEDUP_E_TIMEOUT;
    if (!final || d->w_dir == NULL) return DEDUP_OK;
    base_ioerr_t e;
    int rc = snapshot_with_journal(d, &e);
    if (rc != DEDUP_OK) snapshot_failed(d, "final", rc, &e);
    return rc;
}

/* ---- caller-numbered generations (dedup.h; sluice-stream's stream_dedup) ---- */

/* Empties every shard: all its entries are dead (a jump of more than a window). */
static void gen_clear_all(dedup_t *d, const view_t *v)
{
    for (unsigned i = 0; i < DEDUP_SHARDS; i++) {
        shard_t *s = &d->shards[i];
        shard_lock(s);
        memset(atomic_load_explicit(&s->b, memory_order_relaxed), 0,
               (size_t)atomic_load_explicit(&s->nb, memory_order_relaxed) * sizeof(bucket_t));
        buckets_free(d, s->ob, s->onb);
        s->ob = NULL;
        s->onb = s->mig = 0;
        s->live = s->pending = 0;
        memset(s->count, 0, sizeof s->count);
        memset(s->pcount, 0, sizeof s->pcount);
        s->seen_floor = v->floor;
        s->swept_gen = v->cur;
        s->swept_floor = v->floor;
        shard_unlock(s);
    }
}

uint64_t dedup_gen_ms(const dedup_t *d)
{
    return d->gen_ms;
}

void dedup_gen_range(dedup_t *d, uint64_t *cur, uint64_t *floor)
{
    view_t v;
    view_load(d, &v);
    *cur = v.cur;
    *floor = v.floor;
}

void dedup_gen_advance(dedup_t *d, uint64_t gen, uint64_t floor, uint64_t start_ms)
{
    pthread_mutex_lock(&d->gen_mu);
    uint64_t cur = atomic_load_explicit(&d->cur, memory_order_relaxed);
    uint64_t old_floor = atomic_load_explicit(&d->floor, memory_order_relaxed);
    uint64_t ncur = gen > cur ? gen : cur;
    uint64_t nfloor = floor > old_floor ? floor : old_floor;
    if (nfloor > ncur) nfloor = ncur;
    if (ncur - nfloor >= DEDUP_MAX_LIVE) nfloor = ncur - (DEDUP_MAX_LIVE - 1);
    if (ncur == cur && nfloor == old_floor) {
        pthread_mutex_unlock(&d->gen_mu);
        return;
    }
    /* Start times of the generations opened (only the last DEDUP_TAGS can matter). */
    uint64_t from = ncur - cur > DEDUP_TAGS ? ncur - DEDUP_TAGS : cur;
    for (uint64_t g = from + 1; g <= ncur; g++) {
        uint64_t back = (ncur - g) * d->gen_ms;
        atomic_store_explicit(&d->gen_start[tag_of(g) - 1], start_ms > back ? start_ms - back : 0,
                              memory_order_relaxed);
        atomic_store_explicit(&d->gen_by_cap[tag_of(g) - 1], 0, memory_order_relaxed);
    }
    /* A jump past every live generation: all entries are dead, and their tags may alias the
     * new live range, so the tables are cleared rather than swept. */
    bool clear = ncur - cur >= DEDUP_MAX_LIVE || nfloor > cur;
    atomic_store_explicit(&d->cur, ncur, memory_order_release);
    atomic_store_explicit(&d->floor, nfloor, memory_order_release);
    pthread_mutex_unlock(&d->gen_mu);
    view_t v;
    view_load(d, &v);
    if (clear) {
        gen_clear_all(d, &v);
        d->g_swept_cur = v.cur;
        return;
    }
    /* No worker sweeps here: 4 shards per generation advanced, round robin, so every shard is
     * swept at least every 16 generations and a dead slot is never older than 16 +
     * DEDUP_MAX_LIVE generations when swept (its tag cannot alias a live one before 127). */
    uint64_t adv = v.cur - d->g_swept_cur;
    unsigned n = adv >= DEDUP_SHARDS / 4 ? DEDUP_SHARDS : (unsigned)adv * 4;
    if (n == 0 && nfloor > old_floor) n = 1; /* counts of the dead move with the next ops */
    for (unsigned k = 0; k < n; k++) {
        shard_t *s = &d->shards[d->g_sweep_next];
        d->g_sweep_next = (d->g_sweep_next + 1) % DEDUP_SHARDS;
        shard_lock(s);
        view_load(d, &v);
        dedup__shard_prepare(d, s, &v);
        shard_sweep(s, &v);
        shard_unlock(s);
    }
    d->g_swept_cur = v.cur;
}

int dedup_insert(dedup_t *d, uint64_t fp, uint64_t *gen)
{
    return reserve_tagged(d, fp, 0, gen) == DEDUP_NEW ? DEDUP_NEW : DEDUP_DUPLICATE;
}

bool dedup_insert_gen(dedup_t *d, uint64_t fp, uint64_t gen)
{
    shard_t *s = shard_of(d, fp);
    view_t v;
    shard_lock(s);
    view_load(d, &v);
    shard_enter(d, s, &v);
    bool added = false;
    if (gen >= v.floor && gen <= v.cur && shard_find(s, &v, fp) == NULL) {
        shard_make_room(d, s, &v);
        /* The cap may have dropped this generation meanwhile. */
        if (gen >= v.floor && gen <= v.cur) {
            shard_place(s, &v, fp, (uint8_t)tag_of(gen));
            added = true;
        }
    }
    shard_unlock(s);
    return added;
}
