/*
 * dedup_journal.h — the dedup journal (SPEC §5: dedup survives kill -9): an append-only file of
 * the fingerprints dedup remembers, written and fsync'd by one background writer before the
 * request that delivered them is answered, replayed over the snapshot at start.
 *
 * Why the 200 waits for it. The durability promise is "200 only after Kafka acknowledged"; a
 * client that retries a batch whose 200 it did not see (timeout, crash) must then get only
 * duplicates. If the journal record could still be in memory when the 200 leaves, a kill -9 in
 * between forgets the events and the retry duplicates them. So a delivered request goes to the
 * journal (dedup_journal_submit, from Kafka's poll thread), the writer appends the records of
 * every request queued meanwhile in one write + one fsync (group commit), marks them remembered
 * in dedup (dedup_commit) and only then hands each request back (done_cb -> the loop's mailbox
 * -> 200). An event becomes "remembered" in memory exactly when it is durable, so a copy that
 * arrives during the fsync sees it PENDING (503 + Retry-After: 1, as for any copy in flight).
 *
 * Files: "<dir>/dedup.journal.<seq, 16 hex digits>". A segment is a 32-byte header (magic
 * "SLUDJRN1", version, record size, seq, CRC-32) then 24-byte records (u64 fingerprint, u64 wall
 * ms when remembered, u32 0, u32 CRC-32 of the first 20 bytes), host byte order. Replay reads
 * every segment in seq order and stops a segment at its first short or bad record: that tail is
 * torn (kill -9 or power loss mid-write) and is truncated away (logged: dedup_journal_torn_tail).
 *
 * Rotation. Before each snapshot the dedup worker calls dedup_journal_rotate(): the writer's
 * current segment is closed between two group commits and a new one opened, so every record in
 * the older segments is already remembered in memory when the snapshot starts; after the
 * snapshot is durable, dedup_journal_drop_before() deletes the older segments. A crash anywhere
 * in between replays them again, which is harmless (replay is idempotent).
 *
 * Bounds (dedup.journal_max_bytes, default 64 MiB): the queue of records waiting for the writer
 * holds at most that many bytes (a request that does not fit is answered without the journal:
 * counted in sluice_dedup_journal_dropped_total); when the segments on disk reach it a snapshot
 * is forced (sluice_dedup_journal_forced_snapshots_total), and from twice it on records are not
 * written (dropped, counted) until a snapshot truncates the journal. sluice_dedup_journal_bytes
 * shows the size on disk.
 *
 * Disk errors never fail a request: the events are in Kafka. A failed write or fsync is logged
 * once (dedup_journal_failed, with op and errno like the snapshot warnings), counted
 * (sluice_dedup_journal_errors_total), the segment is abandoned and a new one tried at most once
 * a second; the requests are answered as without a journal (dedup then survives a restart only
 * as of the last snapshot). Recovery is logged (dedup_journal_recovered).
 *
 * Threads: submit from any thread (lock-free push + a wake of the writer); rotate/drop_before
 * from the dedup worker; open/stop/free from main.
 */
#ifndef SLUICE_DEDUP_JOURNAL_H
#define SLUICE_DEDUP_JOURNAL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "base.h"
#include "dedup.h"

#define DEDUP_JOURNAL_REC 24
#define DEDUP_JOURNAL_HDR 32

typedef struct dedup_journal dedup_journal_t;

/* One request's fingerprints on their way to disk. Owned by the submitter; must stay valid
 * (with fps) until done_cb ran. done_cb runs on the writer thread (or in dedup_journal_stop /
 * dedup_journal_free) after fps were committed in dedup; durable is false when they could not be
 * written (disk error, over the cap, shutdown). */
typedef struct dedup_journal_req dedup_journal_req_t;
struct dedup_journal_req {
    base_snode_t node;
    const uint64_t *fps;
    size_t n;
    void (*done_cb)(dedup_journal_req_t *r, bool durable);
};

typedef struct dedup_journal_replay {
    uint64_t segments, records, restored; /* restored: live and not yet known */
    uint64_t torn_bytes;                  /* cut from torn tails */
    uint64_t bad_segments;                /* header unreadable: skipped (and deleted) */
} dedup_journal_replay_t;

/*
 * Replays every segment in dir into d (after dedup_snapshot_load), truncating torn tails, then
 * opens a new segment and starts the writer. max_bytes as dedup.journal_max_bytes. Returns 0 and
 * *out, DEDUP_E_NOMEM or DEDUP_E_THREAD. A directory or segment that cannot be read or written is
 * not a failure: it is logged and the journal runs without a file until it can open one (see
 * above). The journal keeps d; d must outlive it.
 */
int dedup_journal_open(dedup_t *d, const char *dir, uint64_t max_bytes,
                       dedup_journal_replay_t *replay, dedup_journal_t **out);

/* Replays one segment file into d; what dedup_journal_open does per segment (fuzz target,
 * tests). truncate: cut a torn tail from the file. Returns 0, DEDUP_E_NOENT, DEDUP_E_IO or
 * DEDUP_E_CORRUPT (bad header: nothing restored). */
int dedup_journal_replay_file(dedup_t *d, const char *path, bool truncate,
                              dedup_journal_replay_t *st);

/* Queues r. Returns 0 (done_cb will run), or DEDUP_E_FULL (queue at its cap, or the journal is
 * stopping): r is untouched and the caller commits in dedup itself. Lock-free; never blocks. */
int dedup_journal_submit(dedup_journal_t *j, dedup_journal_req_t *r);

/* Dedup worker, around a snapshot: rotate returns the seq of the new segment (every record
 * before it is committed in dedup); after the snapshot is durable, drop_before(seq) deletes the
 * older segments (each one over 4 MiB shrunk 4 MiB at a time, 5 ms apart, before its unlink, so
 * freeing its blocks does not hold up the writer's fdatasync: it may take ~80 ms per 64 MiB). */
uint64_t dedup_journal_rotate(dedup_journal_t *j);
void dedup_journal_drop_before(dedup_journal_t *j, uint64_t seq);

/* Bytes of all segments on disk. */
uint64_t dedup_journal_bytes(dedup_journal_t *j);

/* Stops the writer after writing everything queued (each done_cb runs); later submits are
 * refused. Blocks on disk: main only. Safe with NULL. */
void dedup_journal_stop(dedup_journal_t *j);
/* Runs done_cb (durable false, after dedup_commit) for anything submitted after stop, closes the
 * file and frees j. Safe with NULL. */
void dedup_journal_free(dedup_journal_t *j);

#endif
