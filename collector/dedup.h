/*
 * dedup.h — exact deduplication of events by (source, messageId) within a time window under a
 * memory cap (SPEC §5), with the durability rule of SPEC §3: only delivered events are remembered.
 *
 * Structure. A key is reduced to a 64-bit XXH3 fingerprint (the messageId hashed with a seed
 * derived from the source). Fingerprints live in 64 shards (top 6 bits) of open-addressing tables
 * of 64-byte buckets: 7 fingerprints + 7 one-byte tags + 1 overflow byte, i.e. 9.14 bytes per
 * slot. A key may sit in either of two buckets (two-choice hashing: it goes to the emptier one,
 * so lookups touch two prefetched cache lines and overflow chains stay rare). Tables grow by
 * 1.5x at 90% load, so a remembered event costs 10.2..15.2 bytes at steady state (bench_dedup:
 * 14.4 at 10 M entries; 10.2 at the default cap's 26.4 M). A tag holds a 7-bit generation and a
 * PENDING bit. Time is cut into generations of window/32: an entry is live while its generation
 * is; a generation dies when its newest possible entry is older than the window (so an event is
 * remembered for at least the window), or — at the memory cap — the oldest live generation is
 * dropped early ("at the cap the oldest go first"); the effective window is then the age of the
 * oldest live generation. Dead slots are reused at once and swept in the background.
 *
 * Fingerprints: two different keys collide with probability 2^-64 per pair, so with N entries a
 * new event is wrongly called a duplicate with probability about N / 2^64 (README has the figure).
 *
 * Growth is incremental: a grown shard keeps its old table beside the new one, and each operation
 * moves the entries of one old bucket (at most 7) while the worker moves the rest in chunks, so
 * no insert pays for a whole rehash. The worker grows the shards ahead of the loops (at 75%
 * load), one at a time, so their old tables do not pile up: max_memory bounds all tables, old
 * ones included (a growth that would pass it waits, the shard filling on to 95%). Without a
 * running worker (sluice-stream's single thread, a snapshot load) a growth moves its whole old
 * table at once instead: nothing else would stagger the shards' growths.
 *
 * Threads: every function may be called from any thread. Each shard has its own short spin lock
 * (held for one probe plus at most 7 moves, or for one 4096-bucket chunk of a sweep, or one
 * 128-bucket chunk of the worker's growth moves); generation
 * changes take a separate mutex, never on the lookup path. No call blocks on I/O except the
 * snapshot functions and dedup_worker_stop, which belong to main or the worker thread.
 *
 * Request protocol (ingest): dedup_reserve_all() before producing marks every new fingerprint
 * PENDING; after the delivery group reports, dedup_commit() (all delivered) or dedup_release()
 * (anything failed: the events are forgotten so a retry goes through). A copy that meets a
 * PENDING entry of another request (DEDUP_BUSY) is not produced — that would deliver it twice —
 * and the request may answer 200 only once that entry is remembered, i.e. the other copy was
 * delivered: dedup_all_remembered() at the end of the request; if not (still in flight, or its
 * delivery failed and it was released), the answer is 503 + Retry-After, as a 200 could lose it.
 * Limits of what a request's delivery group tells: if only some of its messages failed, all of
 * its events are released, so the retry delivers the others a second time (at-least-once, as
 * without dedup). Requests still in flight when the process stops are not in the final snapshot.
 * An entry dropped at the cap while PENDING may let a concurrent copy through (the window is
 * then shorter than a delivery; sluice_dedup_window_seconds shows it).
 */
#ifndef SLUICE_DEDUP_H
#define SLUICE_DEDUP_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* X(NAME, value, "message"). Append-only. */
#define DEDUP_ERRORS(X)                                                                            \
    X(OK, 0, "ok")                                                                                 \
    X(E_NOMEM, -1, "out of memory")                                                                \
    X(E_INVALID, -2, "invalid argument")                                                           \
    X(E_IO, -3, "snapshot I/O error")                                                              \
    X(E_CORRUPT, -4, "snapshot corrupt or truncated")                                              \
    X(E_NOENT, -5, "no snapshot")                                                                  \
    X(E_THREAD, -6, "could not start the worker thread")                                           \
    X(E_TIMEOUT, -7, "the worker did not stop within its deadline")                                \
    X(E_FULL, -8, "journal queue full or journal stopping")

typedef enum {
#define DEDUP_X_ENUM(name, val, msg) DEDUP_##name = val,
    DEDUP_ERRORS(DEDUP_X_ENUM)
#undef DEDUP_X_ENUM
} dedup_err_t;

/* Message for a dedup_err_t; "unknown error" for other values. Never NULL. */
const char *dedup_strerror(int err);

/* Verdict per key of a reservation. */
enum {
    DEDUP_NEW = 0,       /* reserved (PENDING): produce it, then commit or release */
    DEDUP_DUPLICATE = 1, /* seen and delivered, or an earlier copy in the same request: skip */
    DEDUP_BUSY = 2,      /* a copy is PENDING for another request (dedup_reserve_batch only) */
};

/* Wall-clock milliseconds since the epoch (generations are stamped with it, so they survive a
 * restart). Tests inject their own. */
typedef uint64_t (*dedup_clock_fn)(void *ud);

typedef struct dedup_opts {
    uint64_t window_ms; /* > 0 */
    /* Bytes of all tables, the old ones of growths in progress included; at least 66 KiB is
     * used whatever is asked. */
    uint64_t max_memory;
    dedup_clock_fn clock;
    void *clock_ud; /* NULL clock: CLOCK_REALTIME */
} dedup_opts_t;

typedef struct dedup dedup_t;

/* Creates an empty structure. Returns 0 and *out (free with dedup_free), DEDUP_E_INVALID or
 * DEDUP_E_NOMEM. */
int dedup_new(const dedup_opts_t *opts, dedup_t **out);
/* Stops the worker if running (without a snapshot) and frees everything. Safe with NULL. */
void dedup_free(dedup_t *d);

/* Fingerprint of (source, messageId): dedup_fp(dedup_seed(source), id). */
uint64_t dedup_seed(const char *source, size_t len);
uint64_t dedup_fp(uint64_t seed, const char *id, size_t len);

/* A hint: fetches the two candidate buckets of fp into the cache ahead of an insert or lookup.
 * No lock, no effect on any answer (any thread). */
void dedup_prefetch(dedup_t *d, uint64_t fp);

/* Low level, one verdict per key: verdict[i] = DEDUP_NEW (now PENDING), DEDUP_DUPLICATE (live and
 * delivered) or DEDUP_BUSY (PENDING). Keys repeated inside fps: the later copies see the first
 * one's PENDING entry (BUSY). Never fails: at the cap the oldest generation is dropped. */
void dedup_reserve_batch(dedup_t *d, const uint64_t *fps, size_t n, uint8_t *verdict);

/* Scratch for dedup_reserve_all: a set for in-request duplicates. One per thread. */
typedef struct dedup_scratch {
    uint64_t *set;
    uint32_t *stamp; /* a slot of set is used when its stamp equals epoch: no clearing */
    uint32_t cap;    /* power of two, 0 when unallocated */
    uint32_t epoch;
} dedup_scratch_t;
void dedup_scratch_free(dedup_scratch_t *s);

/*
 * Reserves a request's keys. fps[0..n) are the fingerprints of its valid events in order.
 * Later copies of a fingerprint inside fps get DEDUP_DUPLICATE, the others the verdict of
 * dedup_reserve_batch (DEDUP_NEW: reserved; DEDUP_DUPLICATE; DEDUP_BUSY: PENDING for another
 * request). Returns 0, or DEDUP_E_NOMEM when scratch could not grow (nothing reserved).
 * On 0 the caller must later dedup_commit or dedup_release exactly the DEDUP_NEW keys, and
 * answer 200 only if dedup_all_remembered() holds for the DEDUP_BUSY ones.
 */
int dedup_reserve_all(dedup_t *d, dedup_scratch_t *s, const uint64_t *fps, size_t n,
                      uint8_t *verdict);
/* True when every fps[i] is remembered (delivered and committed), not PENDING nor absent. */
bool dedup_all_remembered(dedup_t *d, const uint64_t *fps, size_t n);

/* Delivered: PENDING entries become remembered (an entry lost meanwhile is inserted again). */
void dedup_commit(dedup_t *d, const uint64_t *fps, size_t n);
/* Not delivered: PENDING entries are forgotten (a remembered one is left alone). */
void dedup_release(dedup_t *d, const uint64_t *fps, size_t n);

/* Advances generations by the clock: opens a new one every window/32, drops those older than
 * the window. The worker calls it every second; tests call it after moving their clock. */
void dedup_tick(dedup_t *d);

typedef struct dedup_stats {
    uint64_t entries;        /* live entries (remembered + pending) */
    uint64_t pending;        /* of which PENDING */
    uint64_t bytes;          /* tables and bookkeeping */
    uint64_t table_slots;    /* slots allocated */
    double window_s;         /* effective window: age of the oldest live generation, <= window */
    uint64_t evicted_by_cap; /* entries dropped early at the memory cap, since creation */
    uint32_t generations;    /* live generations */
    uint32_t growing;        /* shards moving entries into a grown table */
    uint64_t grow_moved;     /* entries moved by table growth, since creation */
    uint32_t grow_step_max;  /* most entries one lookup/insert moved (<= 7) */
    uint64_t grow_waits;     /* growths refused because they would pass max_memory */
} dedup_stats_t;
/* Consistent per shard, not across shards. Takes each shard lock briefly. */
void dedup_stats(dedup_t *d, dedup_stats_t *st);

/* Registers the gauges sluice_dedup_entries, _pending, _bytes, _growth_waits_total,
 * _window_seconds with
 * metrics.h. d must outlive /metrics rendering. Returns 0 or -1 (registry full). */
int dedup_register_metrics(dedup_t *d);

/*
 * Snapshots. File "<dir>/dedup.snapshot": header (magic, version, window, generation start
 * times, entry count), remembered entries (PENDING ones are not: they were not delivered yet),
 * XXH3-64 checksum trailer. Written to "dedup.snapshot.tmp", fsync'd, renamed, directory
 * fsync'd; dir is created if missing (mkdir -p, mode 0750). Blocks on I/O: never call from a loop
 * thread. Returns 0, DEDUP_E_IO, DEDUP_E_NOMEM or DEDUP_E_INVALID (path too long); on failure
 * the tmp file is removed and an earlier snapshot is left intact, and *err (may be NULL) says
 * which step failed ("mkdir", "open", "write", "fsync", "rename", "fsync dir") with errno
 * (errnum 0 when the failure was not an I/O error).
 */
struct base_ioerr;
int dedup_snapshot_write(dedup_t *d, const char *dir, struct base_ioerr *err);
/* Loads dir's snapshot into d, which must be fresh (nothing reserved yet). Generations older
 * than the window are skipped. Returns 0, DEDUP_E_NOENT (no file), DEDUP_E_CORRUPT (bad magic,
 * version, size or checksum: d is left empty), DEDUP_E_IO or DEDUP_E_NOMEM. Reads the file twice
 * (checksum, then entries); about a second at the default cap. */
int dedup_snapshot_load(dedup_t *d, const char *dir);

/* Remembers fp as delivered at wall time t_ms (journal replay, after dedup_snapshot_load): in
 * the newest live generation started by t_ms, so it lives at least the window from t_ms.
 * Returns true when it was added (false: already known, or t_ms is more than a window ago). */
bool dedup_restore(dedup_t *d, uint64_t fp, uint64_t t_ms);

/* The journal (dedup_journal.h) the worker rotates before each snapshot and truncates after a
 * durable one; NULL detaches. Call before dedup_worker_start. */
struct dedup_journal;
void dedup_attach_journal(dedup_t *d, struct dedup_journal *j);
/* Asks the worker for a snapshot at once (the journal reached dedup.journal_max_bytes). Any
 * thread. */
void dedup_snapshot_soon(dedup_t *d);

/* Starts the worker thread: dedup_tick + background sweep every second, and a snapshot to dir
 * every interval_ms (0: only at dedup_worker_stop when final). dir is copied.
 * Runs on the base layer's worker (base_worker_*). Returns 0, DEDUP_E_NOMEM, DEDUP_E_INVALID
 * (already running) or DEDUP_E_THREAD (the thread could not start; nothing runs). */
int dedup_worker_start(dedup_t *d, const char *dir, uint64_t interval_ms);
/* Stops and joins the worker, waiting at most 60 s for a snapshot in progress. When final,
 * writes a last snapshot from the calling thread. Returns the snapshot's result (0 when not
 * final), or DEDUP_E_TIMEOUT when the worker did not stop in time: it is left running and
 * dedup_free() then leaves d allocated (the process is expected to exit).
 * Every failed snapshot, periodic (worker) or final (here), is logged by dedup itself as one
 * warning "dedup_snapshot_failed" with the same fields: path, when ("periodic" | "final"),
 * reason, op, errno (name, e.g. "ENOSPC"), error (strerror), and counted in
 * sluice_dedup_snapshot_errors_total. */
int dedup_worker_stop(dedup_t *d, bool final);

/*
 * Caller-numbered generations, for a dedup_t that one thread drives without the worker nor
 * dedup_tick (sluice-stream's collector/stream/stream_dedup.c, which numbers generation G as
 * wall time [G*gen_ms, (G+1)*gen_ms) so that every process agrees on it). Mixing these with
 * dedup_tick or the worker is undefined.
 */
/* window / 32 (at least 1): the length of a generation. */
uint64_t dedup_gen_ms(const dedup_t *d);
/* The open generation and the oldest live one. */
void dedup_gen_range(dedup_t *d, uint64_t *cur, uint64_t *floor);
/* Opens generation gen (started at start_ms) when it is newer than the open one, and drops every
 * generation below floor (clamped to the open one, and so that at most DEDUP_MAX_LIVE live).
 * Generations never go back. Sweeps 4 shards per generation opened (the worker's job); a jump
 * past every live generation clears the tables instead. */
void dedup_gen_advance(dedup_t *d, uint64_t gen, uint64_t floor, uint64_t start_ms);
/* Reserve and commit in one step: DEDUP_NEW (remembered now, in generation *gen: the open one)
 * or DEDUP_DUPLICATE. At the cap the oldest generation is dropped. */
int dedup_insert(dedup_t *d, uint64_t fp, uint64_t *gen);
/* Remembers fp in generation gen (restore) when gen is live and fp unknown. Returns true when
 * added. */
bool dedup_insert_gen(dedup_t *d, uint64_t fp, uint64_t gen);

#endif
