/*
 * pql.h — PQL triggers (SPEC §6): per-account streaming counters over a sliding window, rule
 * scoring, tiers, and one pql_signals message when an account's tier rises.
 *
 * Counters. Time is cut into buckets (pql.bucket, default 1 h) of event time. Per account:
 *  - a sparse, sorted list of the buckets that saw events, each with one count per "count set"
 *    (set 0: every event; one more set per distinct event-name list used by an events,
 *    events_velocity or event_seen rule);
 *  - distinct users: exact (64-bit hash, first and last bucket) up to PQL_EXACT_USERS users, then
 *    HyperLogLog sketches (p = 13, standard error 1.04/sqrt(8192) = 1.15%) kept per UTC day, with
 *    their union over the window and, per users_velocity rule, over the days before its recent
 *    period, all maintained incrementally (register changes update the estimate in O(1));
 *  - the most active users: a space-saving top-PQL_TOP_USERS list (exact while the account has at
 *    most that many users; users told apart by their 64-bit hash, like the exact set);
 *  - the bucket each tier was last signalled in.
 * The window is [head - window + 1 bucket, head], head being the newest event bucket of the
 * account (or the wall-clock bucket once the account went idle: pql_sweep). An event older than
 * head - pql.late (or older than the window) is not counted (late events metric). Metrics:
 *  - active_users: distinct users in the window. Sketch mode counts whole UTC days (the window
 *    rounded out to day boundaries), error ~1.2% (1 sigma).
 *  - events: count in the window of the rule's set.
 *  - events_velocity: count in the recent period (the last `recent` of the window) divided by the
 *    mean count per period of the rest of the window, i.e. rest / ((window - recent) / recent).
 *    That mean is floored at 1 per period, so an account with no earlier history has velocity =
 *    its recent count (finite, and a burst from a brand-new account is a surge). The rule also
 *    needs recent count >= min_recent.
 *  - users_velocity: the same over first-seen users (users whose first event in the window falls
 *    in the period). Sketch mode: recent = |users of the window| - |users of the days before the
 *    recent period| at day granularity.
 *  - active_days: UTC days of the window with at least one event.
 *  - event_seen: one of the names occurred in the window.
 * Score = sum of the points of the rules that hold; tier = the highest whose threshold it reaches.
 * Everything is re-evaluated on each event for that account only (aggregates maintained
 * incrementally; only a new head bucket or a late event rescans that account's buckets).
 *
 * Signals. When the tier rises above the previous evaluation's, and that tier was not signalled
 * within the last window (event time), signal_cb gets the JSON
 * {"accountId","tier","previousTier","score","rules":[holding rules: name,value,threshold,points],
 *  "userIds":[<= 5 most active],"source","triggeredAt"} — captured under the shard lock, rendered
 * and passed to signal_cb after it is released, on the thread that fed the event (the feeder
 * thread in the collector). A tier that falls is not signalled.
 *
 * Threads and bounds. Accounts live in 256 shards, each behind its own mutex held only for one
 * account update or one bounded chunk of a worker walk (never during I/O). The collector's loop
 * threads take none of them: they hand records to the feeder thread (pql_submit, bounded by
 * pql.queue_bytes). At
 * pql.max_accounts (spread evenly over the shards) the least recently active account of the shard
 * is forgotten (evictions metric). Idle accounts expire after the window (pql_sweep).
 *
 * Snapshot: pql_snapshot_write() writes every account to a file atomically (tmp + fsync + rename)
 * with an xxh64 checksum and a fingerprint of the rules; pql_snapshot_load() restores it. Native
 * byte order: a snapshot is for the machine that wrote it.
 *
 * What is counted (the collector, ingest.c/main.c): every accepted event with an accountId (SPEC
 * §2 resolution: groupId, context.groupId, the learned user->account map), once Kafka acknowledged
 * its request — a request answered 503 is not counted, so its retry is not counted twice — by
 * the feeder thread, within milliseconds of the 200 (a read right after the 200 may not see it
 * yet). Events without an account are not counted (no rule metric is per user). Time: event time;
 * idle accounts are moved to the wall clock by pql_sweep, which the snapshot worker runs every
 * pql.snapshot_interval. The rules are read at start-up (a SIGHUP reload does not change them:
 * the counters' layout depends on them; config_diff reports the change as needing a restart).
 * Memory (bench_pql, SPEC example rules, 1 M accounts of a Zipf mix): ~320 B/account counted,
 * ~400 B/account of RSS; a sketch-mode account (> 64 users) holds ~80 KiB.
 */
#ifndef SLUICE_PQL_H
#define SLUICE_PQL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "pql_config.h"
#include "proto.h"

#define PQL_ERRORS(X)                                                                              \
    X(OK, 0, "ok")                                                                                 \
    X(E_NOMEM, -1, "out of memory")                                                                \
    X(E_INVALID, -2, "invalid argument")                                                           \
    X(E_IO, -3, "snapshot I/O error")                                                              \
    X(E_CORRUPT, -4, "snapshot corrupt or truncated")                                              \
    X(E_MISMATCH, -5, "snapshot written under other pql settings")                                 \
    X(E_NOTFOUND, -6, "no such account")                                                           \
    X(E_LATE, -7, "event older than the late allowance")                                           \
    X(E_FULL, -8, "PQL queue full (pql.queue_bytes)")                                              \
    X(E_TOO_LARGE, -9, "larger than its limit")                                                    \
    X(E_THREAD, -10, "could not start a thread")                                                   \
    X(E_TIMEOUT, -11, "a worker did not stop within its deadline")

typedef enum {
#define PQL_X_ENUM(name, val, msg) PQL_##name = val,
    PQL_ERRORS(PQL_X_ENUM)
#undef PQL_X_ENUM
} pql_err_t;
const char *pql_strerror(int err);

#define PQL_EXACT_USERS 64 /* exact distinct-user set up to this many users, sketches beyond */
#define PQL_TOP_USERS   8  /* tracked most-active users; signals name up to 5 */
#define PQL_HLL_P       13

typedef struct pql pql_t;

/* account/json are valid only during the call. Must not call back into pql. */
typedef void (*pql_signal_cb)(void *ud, const char *account, size_t alen, const char *json,
                              size_t jlen);

/* Builds the tracker for cfg (copied what it needs: cfg may go away afterwards). cfg->n_rules
 * must be > 0. Returns PQL_OK and *out, or PQL_E_NOMEM / PQL_E_INVALID. Free with pql_free(). */
int pql_new(const pql_config_t *cfg, pql_signal_cb cb, void *ud, pql_t **out);
void pql_free(pql_t *p);

typedef struct pql_event {
    const char *account; /* accountId; the event is ignored when absent */
    size_t account_len;  /* 1..255 */
    const char *user;    /* userId, else anonymousId */
    size_t user_len;     /* 1..255 */
    const char *event;   /* track event name, NULL for other types */
    size_t event_len;
    const char *source; /* the write key's source, for the signal */
    size_t source_len;
    int64_t ts_ms; /* event time (the normalized timestamp), epoch ms */
} pql_event_t;

/* Counts one delivered event and re-evaluates its account; may call signal_cb. now_ms is the
 * wall clock (for triggeredAt). Returns PQL_OK, PQL_E_LATE (not counted), PQL_E_INVALID (no
 * account or user, ids too long) or PQL_E_NOMEM (not counted). Thread-safe. */
int pql_feed(pql_t *p, const pql_event_t *ev, int64_t now_ms);

/* pql_feed with the hashes of ev's account and user given (ah = pql_hash(account), uh =
 * pql_hash(user)), for a caller that computed them already for pql_prefetch: the same answer
 * and effects as pql_feed(p, ev, now_ms), which is pql_feed_hashed with those hashes. */
uint64_t pql_hash(const char *id, size_t len);
int pql_feed_hashed(pql_t *p, const pql_event_t *ev, uint64_t ah, uint64_t uh, int64_t now_ms);

/* Prefetch hints for the account of hash ah (pql_hash of its id) ahead of pql_feed_hashed, in
 * three steps, each issued a while after the previous one for the same account (a step reads
 * what the previous one fetched): PQL_PREFETCH_SLOT its hash table slot, PQL_PREFETCH_ACCOUNT its
 * header, id and aggregates, PQL_PREFETCH_STATE its newest bucket, users, top users and LRU
 * neighbours. Changes nothing and has no effect on any answer; an unknown account stops at the
 * step that finds nothing. It reads the tracker without its locks, so it is only for a tracker
 * that no other thread modifies meanwhile (sluice-stream: a partition's tracker is fed, swept
 * and restored by its worker thread alone; other threads only read it under the locks), never
 * for the collector's (its snapshot worker sweeps while the feeder feeds). */
enum { PQL_PREFETCH_SLOT = 0, PQL_PREFETCH_ACCOUNT = 1, PQL_PREFETCH_STATE = 2 };
void pql_prefetch(pql_t *p, uint64_t ah, int step);

/* Event records carried by a request from accept to delivery (ingest: the events are counted
 * only once Kafka acknowledged them, so a failed request's retry is not counted twice).
 * pql_record_append copies ev into buf (bounded by buf's max: returns PROTO_E_NOMEM when full,
 * and the event is then not counted). pql_feed_records feeds every record of buf[0..len). */
int pql_record_append(base_buf_t *buf, const pql_event_t *ev);
/* A record's size: PQL_RECORD_HEAD + the lengths of account, user, source and event (to reserve
 * a request's buffer at once). */
#define PQL_RECORD_HEAD 13
void pql_feed_records(pql_t *p, const char *buf, size_t len, int64_t now_ms);

/* The feeder thread: the collector's loop threads never take a shard lock (a worker walk may
 * hold one, another loop may be updating the same account); they hand a request's records to
 * this thread, which feeds them in submission order and emits the signals (signal_cb then runs
 * on it). pql_feeder_start: PQL_OK, or PQL_E_THREAD (no thread) / PQL_E_INVALID (running).
 * max_bytes (pql.queue_bytes) bounds the records waiting. pql_feeder_stop: feeds everything
 * submitted, joins; call it after the last pql_submit (safe when not started; pql_free calls
 * it). */
int pql_feeder_start(pql_t *p, uint64_t max_bytes);
void pql_feeder_stop(pql_t *p);
/* Hands rec's records to the feeder without waiting (lock-free push, a sem_post when the
 * feeder is idle). On PQL_OK rec's memory now belongs to PQL (rec is left empty, still to be
 * base_buf_free'd, which is then a no-op). PQL_E_FULL: max_bytes of records already wait;
 * PQL_E_NOMEM: no memory for the hand-over; both leave rec as it was, its events are not
 * counted (sluice_pql_queue_dropped_events_total). Without a started feeder the records are fed
 * on the calling thread (tests, tools). */
int pql_submit(pql_t *p, base_buf_t *rec, int64_t now_ms);

/* JSON of one account (live counters, score, tier, each rule's value and whether it holds,
 * top users) appended to out. PQL_E_NOTFOUND when not tracked; PQL_E_NOMEM when out is full. */
int pql_account_json(pql_t *p, const char *id, size_t len, int64_t now_ms, base_buf_t *out);
/* {"accounts":[...]} of the n (1..PQL_TOP_MAX) highest-scored accounts, best first. A worker
 * walk over every account (O(accounts); shard locks held a chunk at a time, see pql.c), which
 * waits for a running snapshot or sweep: never on a loop thread (admin.c runs it on libuv's
 * threadpool). */
#define PQL_TOP_MAX 1000
int pql_top_json(pql_t *p, size_t n, base_buf_t *out);

/* Advances idle accounts' windows to the wall-clock bucket of now_ms (their tiers may fall) and
 * forgets accounts with no event in the window. Returns the accounts expired. A worker walk
 * (shard locks held a chunk at a time); meant for a worker thread. */
size_t pql_sweep(pql_t *p, int64_t now_ms);

/* Writes every account to path (via path.tmp, fsync, rename, fsync of the directory): a worker
 * walk, serializing a chunk of accounts per shard-lock hold and writing without any lock. An
 * account fed meanwhile is written either before or after that event. Blocks on disk: never on
 * a loop thread. Returns PQL_OK or PQL_E_IO/E_NOMEM/E_TOO_LARGE (the tmp file is removed and the
 * old file stays); *err (may be NULL) names the failed step and errno (errnum 0 when the failure
 * was not an I/O error). */
int pql_snapshot_write(pql_t *p, const char *path, base_ioerr_t *err);
/* Loads path into an empty tracker. PQL_E_IO when it cannot be read (ENOENT included: check
 * existence first), PQL_E_CORRUPT (checksum, truncation), PQL_E_MISMATCH (other rules or window);
 * on any failure the tracker is left empty. */
int pql_snapshot_load(pql_t *p, const char *path);

/* The snapshot worker: the base layer's periodic worker (base_worker_*, signals blocked) that
 * every interval_ms sweeps idle accounts (pql_sweep) and writes the snapshot to path (logging
 * failures). pql_saver_stop() wakes and joins it (waiting at most 60 s for a snapshot in
 * progress), then writes the final snapshot (blocks on disk: main only, at shutdown, after the
 * loops stopped feeding). path is copied. Returns PQL_OK, PQL_E_NOMEM or PQL_E_THREAD (thread
 * not started). */
typedef struct pql_saver pql_saver_t;
int pql_saver_start(pql_t *p, const char *path, uint32_t interval_ms, pql_saver_t **out);
/* Returns the final snapshot's result, or PQL_E_TIMEOUT when the worker did not stop in time
 * (it is left running; pql_free() then leaves the tracker allocated, as the process exits).
 * Safe with NULL (returns PQL_OK). Every failed snapshot, periodic or final, is logged by the
 * saver as one warning "pql_snapshot_failed" with the same fields as dedup's: path, when
 * ("periodic" | "final"), reason, op, errno (name), error (strerror); and counted in
 * sluice_pql_snapshot_errors_total. */
int pql_saver_stop(pql_saver_t *s);

/* ---- changelog (sluice-stream, SPEC section 10) ----
 * One account's state as bytes, to be written to a compacted topic keyed by account and read
 * back into another tracker (another worker, after a rebalance). The value is the snapshot's
 * account record behind an 11-byte header (magic, version, the rules' fingerprint): a value
 * written under other rules or window is refused (PQL_E_MISMATCH). Native byte order.
 *
 * pql_changes_track: from now on the tracker remembers which accounts changed (fed, or moved by
 * pql_sweep) and which were removed (expired by pql_sweep, evicted at pql.max_accounts, dropped)
 * since the last pql_changes_flush. Call once, right after pql_new, before any feed (the
 * collector never calls it; its cost is then nil). max_tombstone_bytes (>= 64 KiB) bounds the
 * removed ids kept between two flushes (1 + id bytes each, spread over the shards): beyond it a
 * tombstone is lost and counted (pql_changes_lost) — the changelog then keeps a stale account
 * that a restore loads and the next sweep expires again. PQL_OK or PQL_E_INVALID (called twice,
 * bound too small). */
int pql_changes_track(pql_t *p, uint64_t max_tombstone_bytes);
uint64_t pql_changes_lost(pql_t *p);

/* emit gets one change: state/slen the account's value (pql_account_export's bytes), or NULL/0
 * for a tombstone (the account is gone). account/state are valid only during the call; emit
 * must not call back into p. Returns 0 to go on, anything else stops the flush. */
typedef int (*pql_change_fn)(void *ud, const char *account, size_t alen, const void *state,
                             size_t slen);
typedef struct pql_changes_stats {
    uint64_t values, tombstones, bytes; /* bytes: ids + values handed to emit */
} pql_changes_stats_t;
/* Hands every change since the last flush to emit, shard by shard: a shard's changes are copied
 * into scratch under its lock (bounded by the accounts changed since the last flush; scratch's
 * max bounds it: PQL_E_TOO_LARGE) and emitted without any lock. Returns PQL_OK, PQL_E_INVALID
 * (not tracking), PQL_E_NOMEM / PQL_E_TOO_LARGE (scratch), or emit's non-zero value. After a
 * failure the changes already copied out are no longer pending: the caller must treat the
 * tracker's changelog as broken and rebuild it (sluice-stream aborts its transaction and
 * restores the partition from the changelog). st (may be NULL) counts what was emitted. */
int pql_changes_flush(pql_t *p, base_buf_t *scratch, pql_change_fn emit, void *ud,
                      pql_changes_stats_t *st);

/* Appends account id's value to out. PQL_E_NOTFOUND, PQL_E_NOMEM / PQL_E_TOO_LARGE (out full:
 * out is left as it was). Thread-safe (one shard lock, for the copy). */
int pql_account_export(pql_t *p, const char *id, size_t len, base_buf_t *out);
/* Loads one value (from pql_account_export or pql_changes_flush), replacing the account of the
 * same id if tracked. PQL_OK, PQL_E_CORRUPT (not a value of this version, malformed),
 * PQL_E_MISMATCH (written under other rules or window), PQL_E_NOMEM; on failure no account of
 * that id is left tracked. An imported account is not "changed" (it is what the changelog
 * holds); at pql.max_accounts the import evicts the least recently active account as a feed
 * would. Thread-safe. */
int pql_account_import(pql_t *p, const void *state, size_t len);
/* Forgets account id (a tombstone read back from the changelog: no tombstone is written back).
 * PQL_OK, PQL_E_NOTFOUND, PQL_E_INVALID. */
int pql_account_drop(pql_t *p, const char *id, size_t len);

typedef struct pql_stats {
    uint64_t accounts, bytes, evictions, expired, late, signals;
    uint64_t queue_bytes, queue_dropped;            /* pql_submit */
    uint64_t signals_by_tier[PQL_CONFIG_MAX_TIERS]; /* in the order of cfg->tiers */
} pql_stats_t;
void pql_stats(pql_t *p, pql_stats_t *st);

/* Registers the /metrics gauges (sluice_pql_*). p must outlive metrics rendering. */
void pql_register_metrics(pql_t *p);

#endif
