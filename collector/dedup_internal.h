/*
 * dedup_internal.h — what the files of the dedup module share and nobody else may touch: the
 * table's layout (struct dedup, shards, buckets), the generation view and the few shard
 * functions that more than one file calls (dedup__ prefix). The contract is dedup.h; the design
 * (generations, probing, incremental growth, locks) is described at the top of dedup.c.
 *
 *   dedup.c           generations, shard internals, the public API, restoring entries, the
 *                     worker (ticks, sweeps, growths, periodic snapshots)
 *   dedup_snapshot.c  the snapshot file format: dedup_snapshot_write, dedup_snapshot_load
 *   dedup_journal.c   the journal between snapshots (dedup_journal.h)
 */
#ifndef SLUICE_DEDUP_INTERNAL_H
#define SLUICE_DEDUP_INTERNAL_H

#include <pthread.h>
#include <sched.h>
#include <stdalign.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>

#include "base.h"
#include "dedup.h"

#define DEDUP_SHARD_BITS  6
#define DEDUP_SHARDS      (1u << DEDUP_SHARD_BITS)
#define DEDUP_SLOTS       7
#define DEDUP_TAGS        127 /* generation tags 1..127 */
#define DEDUP_PENDING     0x80u
#define DEDUP_GENS        32 /* generations per window */
#define DEDUP_MAX_LIVE    (DEDUP_GENS + 3)
#define DEDUP_SWEEP_FORCE 48
#define DEDUP_MIN_NB      16 /* buckets per shard at creation (1 KiB) */
#define DEDUP_PREFETCH    16
/* Old buckets moved by each operation on a growing shard, and by the worker per lock hold (then
 * a pause of DEDUP_GROW_PAUSE_US: one shard of the default cap, ~42 k old buckets, moves in
 * ~70 ms, all 64 of the last growth in ~5 s). The holds are short on purpose: every request
 * touches every shard, and a worker preempted while it holds one (two cores, loops, broker
 * threads and the harness all runnable) stalls them all; with 1024-bucket holds (~0.5 ms) the
 * seconds of the worker's growths had one-second windows of 20-78 ms p99. */
#define DEDUP_MIGRATE_STEP   1
#define DEDUP_WORKER_MIGRATE 128
#define DEDUP_GROW_PAUSE_US  100
/* Buckets the worker sweeps per lock hold (256 KiB). A whole shard under one hold, 4 MiB at the
 * default cap, made every loop and the journal writer wait for it: at the first eviction by the
 * cap (100 k events/s, 26 M entries) all 64 shards were swept back to back, a one-second window
 * with p99 116-118 ms. */
#define DEDUP_SWEEP_CHUNK    4096u
#define DEDUP_SWEEP_PAUSE_MS 1
#define DEDUP_HUGE           (2u << 20)
/* Grow (or evict) when live entries would pass 90% of the slots. */
#define DEDUP_LIMIT(nb) ((uint64_t)(nb)*DEDUP_SLOTS * 9 / 10)
/* A shard whose growth must wait (the memory cap's headroom is taken by other shards' growths,
 * or its own previous growth is still moving) fills on up to 95% before it evicts. */
#define DEDUP_LIMIT_WAIT(nb) ((uint64_t)(nb)*DEDUP_SLOTS * 95 / 100)
/* The worker grows a shard once live entries pass 75% of the slots, one shard at a time, and
 * moves its old table before it grows the next: the loops (at 90%) rarely grow at all. */
#define DEDUP_GROW_AT(nb) ((uint64_t)(nb)*DEDUP_SLOTS * 3 / 4)
/* dedup.max_memory bounds every table, the old ones of growths in progress included: the
 * shards' largest tables together get max_memory * 64 / (64 + DEDUP_GROW_HEADROOM), and the
 * rest is room for the old tables of growths in progress (at most 2/3 of a shard each). */
#define DEDUP_GROW_HEADROOM 2

#define SNAP_NAME "dedup.snapshot"
/* The worker ticks every second; a stop waits this long for a snapshot in progress. */
#define DEDUP_WORKER_PERIOD_MS 1000
#define DEDUP_WORKER_STOP_MS   60000

typedef struct bucket {
    uint64_t fp[DEDUP_SLOTS];
    uint8_t tag[DEDUP_SLOTS];
    uint8_t ovf;
} bucket_t;
_Static_assert(sizeof(bucket_t) == 64, "a bucket is one cache line");

typedef struct shard {
    alignas(64) atomic_int lock;
    _Atomic(bucket_t *) b; /* atomic only so that prefetch hints may read it unlocked */
    _Atomic uint32_t nb;
    uint32_t max_nb;
    /* While growing: the previous table, its bucket count and the next bucket to move. */
    bucket_t *ob;
    uint32_t onb, mig;
    uint32_t step_max; /* most entries one operation moved (the growth bound, for tests) */
    uint64_t moved;    /* entries moved by growth, in all */
    uint64_t live, pending;
    uint64_t seen_floor; /* counts of generations below it were dropped */
    uint64_t swept_gen;  /* cur at the last sweep */
    uint64_t swept_floor;
    uint32_t count[DEDUP_TAGS];  /* live entries per generation tag - 1 */
    uint32_t pcount[DEDUP_TAGS]; /* of which PENDING */
} shard_t;

struct dedup {
    shard_t shards[DEDUP_SHARDS];
    /* Bytes of every table (current and old ones) against the cap, dedup.max_memory: a growth
     * that would pass it waits (table_reserve). */
    uint64_t mem_cap;
    _Atomic uint64_t mem_used;
    _Atomic uint64_t grow_waits; /* growths refused for the cap's sake (they wait, up to 95%) */
    /* A worker runs (dedup_worker_start): growths move a bucket per operation and the worker
     * moves the rest. Without one, each growth moves its whole old table at once. */
    atomic_bool incremental;
    pthread_mutex_t gen_mu;
    _Atomic uint64_t cur, floor;
    _Atomic uint64_t gen_start[DEDUP_TAGS]; /* ms, by tag - 1 */
    _Atomic uint8_t gen_by_cap[DEDUP_TAGS]; /* the generation was dropped at the cap */
    _Atomic uint64_t evicted;
    uint64_t window_ms, gen_ms;
    dedup_clock_fn clock;
    void *clock_ud;
    /* worker */
    base_worker_t *worker; /* NULL when not running */
    bool w_orphaned;       /* a stop timed out: the worker still uses d, which is never freed */
    char *w_dir;
    uint64_t w_interval_ms, w_last_snap_ms; /* w_last_snap_ms: the worker's own */
    atomic_bool w_snap_soon;                /* dedup_snapshot_soon: snapshot at the next tick */
    struct dedup_journal *journal;          /* rotated around each snapshot; may be NULL */
    /* dedup_gen_advance (caller-numbered generations): the next shard to sweep, and cur when
     * the last sweep round ran. */
    unsigned g_sweep_next;
    uint64_t g_swept_cur;
};

typedef struct view {
    uint64_t cur, floor, span;
    int ctag;
} view_t;

static inline uint64_t now_ms(const dedup_t *d)
{
    return d->clock(d->clock_ud);
}
static inline int tag_of(uint64_t gen)
{
    return (int)(gen % DEDUP_TAGS) + 1;
}

static inline void view_load(dedup_t *d, view_t *v)
{
    /* floor first: cur is stored before floor, so cur >= floor holds for what we read. */
    v->floor = atomic_load_explicit(&d->floor, memory_order_acquire);
    v->cur = atomic_load_explicit(&d->cur, memory_order_acquire);
    v->span = v->cur - v->floor;
    v->ctag = tag_of(v->cur);
}

static inline bool tag_live(const view_t *v, unsigned tag)
{
    int t = (int)(tag & 0x7fu);
    if (t == 0) return false;
    int dist = v->ctag - t;
    if (dist < 0) dist += DEDUP_TAGS;
    return (uint64_t)dist <= v->span;
}

static inline uint64_t tag_gen(const view_t *v, unsigned tag)
{
    int dist = v->ctag - (int)(tag & 0x7fu);
    if (dist < 0) dist += DEDUP_TAGS;
    return v->cur - (uint64_t)dist;
}

static inline shard_t *shard_of(dedup_t *d, uint64_t fp)
{
    return &d->shards[fp >> (64 - DEDUP_SHARD_BITS)];
}

static inline void cpu_relax(void)
{
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#endif
}

static inline void shard_lock(shard_t *s)
{
    for (unsigned spins = 0;; spins++) {
        if (!atomic_exchange_explicit(&s->lock, 1, memory_order_acquire)) return;
        while (atomic_load_explicit(&s->lock, memory_order_relaxed)) {
            /* Held for a rehash or sweep: stop burning the core. */
            if (++spins > 256)
                sched_yield();
            else
                cpu_relax();
        }
    }
}

static inline void shard_unlock(shard_t *s)
{
    atomic_store_explicit(&s->lock, 0, memory_order_release);
}

static inline int path_join(char *out, size_t cap, const char *dir, const char *name)
{
    int n = snprintf(out, cap, "%s/%s", dir, name);
    return n > 0 && (size_t)n < cap ? 0 : -1;
}

/* Drops the counts of generations that died since shard s last looked and sweeps it when
 * overdue; the shard lock is held. */
void dedup__shard_prepare(dedup_t *d, shard_t *s, const view_t *v);

/* Inserts a remembered entry (fingerprint fp, generation tag) while a snapshot loads: d is
 * private to the loader, no request runs. */
void dedup__load_insert(dedup_t *d, uint64_t fp, uint8_t tag);

/* Test hooks (tests/collector/test_dedup*.c link the module instead of #including dedup.c).
 * Each calls the static function of dedup.c it is named after; nothing else calls them. */
/* The bucket count a shard of nb buckets grows to (1.5x, capped at s->max_nb). */
uint32_t dedup__grown_nb(const shard_t *s, uint32_t nb);
/* One worker sweep round: sweeps due shards, grows those past DEDUP_GROW_AT and moves every
 * growth in progress to its end. Takes each shard's lock; the caller holds none. */
void dedup__sweep_all(dedup_t *d);
/* Rotates the journal (when d has one), writes the snapshot into d->w_dir and drops the journal
 * segments it covers once it is durable. Returns DEDUP_OK or the snapshot's error, with *e set. */
int dedup__snapshot_with_journal(dedup_t *d, base_ioerr_t *e);

#endif
