/*
 * stream_dedup.h — sluice-stream's exact dedup of one events partition by (source, messageId)
 * within a window under a memory cap (SPEC §5, §10), with its state on the compacted changelog
 * topic so that a partition that moves to another worker (crash, scale-up, hand-back) is
 * restored exactly.
 *
 * Structure. The collector's dedup engine (dedup.h: 64-bit XXH3 fingerprints of (source,
 * messageId) in sharded two-choice tables, generations of window/32, memory cap) driven with
 * caller-numbered generations (dedup.h "caller-numbered generations"): generation G covers wall
 * time [G*gen_ms, (G+1)*gen_ms) with gen_ms = window/32, so every worker numbers them alike and
 * a restored fingerprint goes back into the generation it was remembered in. A generation dies
 * once its end is a window ago (an event is remembered at least the window) or, at the memory
 * cap, early (oldest first; stats.window_s is then shorter than the window). Reserve and commit
 * are one step (the stream's transaction covers delivery): stream_dedup_seen_first remembers at
 * once and queues the fingerprint for the next changelog flush.
 *
 * Bounds (each with its defined answer):
 * - memory of the tables: max_bytes (sluice-stream passes dedup.max_memory /
 *   stream.max_partitions; at least 64 KiB plus ~70 KiB of fixed state is used whatever is
 *   asked); 10.2..15.2 bytes per remembered event. At the cap the oldest generation is dropped
 *   (stats.evicted_by_cap) and its changelog records get tombstones.
 * - pending fingerprints (remembered since the last flush): max_pending (default 1 Mi = 8 MiB,
 *   grown on demand, 8 bytes each; sluice-stream flushes every stream.max_batch records, far
 *   below). When full, stream_dedup_seen_first answers STREAM_DEDUP_E_FULL without remembering
 *   the event (the caller treats it as new: at-least-once, counted in stats.pending_full).
 * - changelog record size: max_record_bytes (default 1 MiB, well under message.max.bytes):
 *   a flush cuts a generation's pending fingerprints into records of at most that size.
 * - generations known to the changelog (those with records not yet tombstoned):
 *   STREAM_DEDUP_MAX_GENS; a restore record beyond it is refused (STREAM_DEDUP_E_LIMIT, counted).
 *
 * Changelog format (partition p of kafka.topics.changelog holds events partition p; all
 * integers big-endian in keys, little-endian in values):
 *   key   = 'd' | gen_ms u64 | generation u64 | seq u32                      (21 bytes)
 *   value = "SD" | version 1 | 0 | count u32 | xxh3-64(key || fingerprints) u64 | count x fp u64
 *           (16 + 8 * count bytes), or empty = tombstone: that generation is dead.
 * One flush writes, for each generation with pending fingerprints, records seq = n, n+1, ...
 * (n = records that generation already has), then one tombstone per record of every generation
 * that died since the last flush, so compaction reclaims them. gen_ms is in the key so that a
 * worker started with another dedup.window neither overwrites nor misreads older records (it maps
 * their generations onto its own by end time, and tombstones them under their own keys).
 * Bytes per remembered event on the changelog: 8 + (21 + 16 + Kafka's ~20 per record) / count,
 * i.e. ~8.0 at sluice-stream's batch sizes (stated with figures in notes/issue-14-sdedup.md).
 * Restore = every record of the partition in log order through stream_dedup_restore: records of
 * live generations insert their fingerprints into that generation; a tombstone kills its
 * generation and every older one (generations die oldest first); records of dead generations
 * are skipped but remembered so the next flush tombstones them.
 *
 * Threads: a stream_dedup_t belongs to one thread at a time (sluice-stream's loop); different
 * instances are independent. No call blocks or does I/O. stream_dedup_register_metrics' process
 * totals are atomics, read by /metrics from any thread.
 */
#ifndef SLUICE_STREAM_DEDUP_H
#define SLUICE_STREAM_DEDUP_H

#include <stddef.h>
#include <stdint.h>

/* X(NAME, value, "message"). Append-only. */
#define STREAM_DEDUP_ERRORS(X)                                                                     \
    X(OK, 0, "ok")                                                                                 \
    X(E_NOMEM, -1, "out of memory")                                                                \
    X(E_INVALID, -2, "invalid argument")                                                           \
    X(E_CORRUPT, -3, "changelog record corrupt or truncated")                                      \
    X(E_FULL, -4, "pending changelog buffer full: flush first")                                    \
    X(E_LIMIT, -5, "too many generations in the changelog")                                        \
    X(E_EMIT, -6, "the emit callback failed")

typedef enum {
#define STREAM_DEDUP_X_ENUM(name, val, msg) STREAM_DEDUP_##name = val,
    STREAM_DEDUP_ERRORS(STREAM_DEDUP_X_ENUM)
#undef STREAM_DEDUP_X_ENUM
} stream_dedup_err_t;

/* Message for a stream_dedup_err_t; "unknown error" for other values. Never NULL. */
const char *stream_dedup_strerror(int err);

#define STREAM_DEDUP_KEY_LEN         21
#define STREAM_DEDUP_HDR_LEN         16
#define STREAM_DEDUP_MAX_GENS        1024
#define STREAM_DEDUP_DEF_MAX_PENDING (1u << 20)
#define STREAM_DEDUP_DEF_MAX_RECORD  (1u << 20)
#define STREAM_DEDUP_MIN_RECORD      (STREAM_DEDUP_HDR_LEN + 8)

/* Wall-clock milliseconds (restore and flush judge expiry by it). NULL: CLOCK_REALTIME. */
typedef uint64_t (*stream_dedup_clock_fn)(void *ud);

typedef struct stream_dedup_opts {
    uint64_t window_ms;        /* > 0 */
    uint64_t max_bytes;        /* memory cap of the tables */
    uint64_t max_pending;      /* 0: STREAM_DEDUP_DEF_MAX_PENDING */
    uint64_t max_record_bytes; /* 0: STREAM_DEDUP_DEF_MAX_RECORD; else >= STREAM_DEDUP_MIN_RECORD */
    stream_dedup_clock_fn clock;
    void *clock_ud;
} stream_dedup_opts_t;

typedef struct stream_dedup stream_dedup_t;

/* An empty store with the defaults and the wall clock. Returns 0 and *out (free with
 * stream_dedup_free), STREAM_DEDUP_E_INVALID (window_ms 0) or STREAM_DEDUP_E_NOMEM. */
int stream_dedup_new(uint64_t window_ms, uint64_t max_bytes, stream_dedup_t **out);
/* The same with every option (tests inject their clock and small bounds). */
int stream_dedup_new_opts(const stream_dedup_opts_t *opts, stream_dedup_t **out);
/* Frees everything, pending fingerprints included. Safe with NULL. */
void stream_dedup_free(stream_dedup_t *d);

/* 1 = first time seen (now remembered, pending changelog), 0 = duplicate (live in the window),
 * <0 error: STREAM_DEDUP_E_FULL (pending buffer full or could not grow: not remembered, flush
 * first). now_ms is the caller's wall clock; generations never go back when it does. Events
 * with a generated messageId are the caller's to skip (SPEC §5: they are never duplicates). */
int stream_dedup_seen_first(stream_dedup_t *d, const char *src, size_t slen, const char *mid,
                            size_t mlen, int64_t now_ms);

/* The same in two steps, for a caller that prefetches (sluice-stream's batches):
 * stream_dedup_fp is the key's fingerprint (the engine's dedup_fp(dedup_seed(src), mid); d keeps
 * the last source's seed), stream_dedup_prefetch a hint that fetches its buckets (no effect on
 * any answer), stream_dedup_seen_first_fp the answer of stream_dedup_seen_first for that key.
 * stream_dedup_seen_first(d, src, slen, mid, mlen, now) is
 * stream_dedup_seen_first_fp(d, stream_dedup_fp(d, src, slen, mid, mlen), now). */
uint64_t stream_dedup_fp(stream_dedup_t *d, const char *src, size_t slen, const char *mid,
                         size_t mlen);
void stream_dedup_prefetch(stream_dedup_t *d, uint64_t fp);
int stream_dedup_seen_first_fp(stream_dedup_t *d, uint64_t fp, int64_t now_ms);

/* Appends the changelog records for everything remembered since the last call (and the
 * tombstones of expired state); emit returns 0 or an error that aborts the flush.
 * emit's key and val are valid only during the call (copy them: rd_kafka_producev does).
 * Returns 0, STREAM_DEDUP_E_EMIT when emit failed or STREAM_DEDUP_E_NOMEM (the record buffer
 * could not grow): nothing is marked written, so the next call emits the same records again
 * (same keys, same values: harmless under compaction). */
typedef int (*stream_dedup_emit_fn)(void *ud, const void *key, size_t klen, const void *val,
                                    size_t vlen);
int stream_dedup_changelog(stream_dedup_t *d, stream_dedup_emit_fn emit, void *ud);

/* Restore: one changelog record whose key starts with 'd', in log order, before any
 * stream_dedup_seen_first. Returns 0 (applied, or skipped as expired), STREAM_DEDUP_E_CORRUPT
 * (bad key, header, length or checksum: nothing inserted), STREAM_DEDUP_E_LIMIT or
 * STREAM_DEDUP_E_NOMEM. Every failure is counted (stats.restore_errors); d stays usable. */
int stream_dedup_restore(stream_dedup_t *d, const void *key, size_t klen, const void *val,
                         size_t vlen);

typedef struct stream_dedup_stats {
    uint64_t entries;         /* remembered events */
    uint64_t bytes;           /* tables + pending buffer */
    double window_s;          /* effective window (shorter than the window at the cap) */
    uint64_t evicted_by_cap;  /* events dropped early at the memory cap */
    uint64_t pending;         /* fingerprints waiting for the next flush */
    uint64_t pending_full;    /* seen_first answers STREAM_DEDUP_E_FULL */
    uint64_t records;         /* changelog records written (not tombstones) */
    uint64_t tombstones;      /* tombstones written */
    uint64_t record_bytes;    /* key + value bytes of those records and tombstones */
    uint64_t restored;        /* fingerprints inserted by restore */
    uint64_t restore_skipped; /* restore records of dead generations */
    uint64_t restore_errors;  /* restore records refused */
    uint32_t generations;     /* generations with changelog records not yet tombstoned */
} stream_dedup_stats_t;
void stream_dedup_stats(stream_dedup_t *d, stream_dedup_stats_t *st);

/* Process totals over every instance (created, freed, restored ones included), as one /metrics
 * section of counters: sluice_stream_dedup_{duplicates,pending_full,changelog_records,
 * tombstones,changelog_bytes,restored,restore_errors}_total (the per-partition gauges —
 * entries, bytes, window, evicted_by_cap — come from stream_dedup_stats). Call once per process;
 * returns 0 or -1 (registry full). */
int stream_dedup_register_metrics(void);

#endif
