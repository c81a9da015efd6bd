/*
 * stream_batch.h — sluice-stream's per-event path over a batch of records: decode
 * (stream_record.h), dedup by (source, messageId) (stream_dedup.h) and PQL counting (pql.h),
 * with the memory each event will touch fetched ahead. The worker's process() and bench_stream
 * run exactly these functions.
 *
 * Two steps. stream_batch_prepare decodes every record of the batch, computes its dedup
 * fingerprint and its account and user hashes (each key hashed once), and issues the cache
 * prefetches for its dedup buckets and its PQL account in three passes (hash table slot, account
 * header, account state), so that the cache misses of the batch overlap instead of coming one
 * after the other. It changes no dedup or PQL state. Then, per event and in order, the caller
 * runs stream_ev_dedup and stream_ev_count (the worker produces events_deduped in between):
 * the same calls, with the same answers, effects and signals in the same order, as
 * stream_dedup_seen_first and pql_feed one record at a time (test_stream_batch compares both
 * on a random stream with retries).
 *
 * Bounds: at most STREAM_BATCH_MAX events per batch (the worker gathers stream.poll_batch
 * records, 1..32, default 32: small enough for the batch's records and prefetched lines to stay
 * in L1/L2; a larger n is cut to it). JSON records live in the decoder one at a time, so with
 * json only the first event of a batch is prepared (the worker then takes JSON one at a time).
 *
 * Threads: the prefetches read the dedup table and the PQL tracker without their locks
 * (pql_prefetch's contract): only the thread that alone modifies them (sluice-stream's worker).
 */
#ifndef SLUICE_STREAM_BATCH_H
#define SLUICE_STREAM_BATCH_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "pql.h"
#include "stream_dedup.h"
#include "stream_record.h"

#define STREAM_BATCH_MAX 32

typedef struct stream_ev {
    /* in: set by the caller before stream_batch_prepare */
    const void *val; /* the record's bytes, alive until its event is done */
    size_t len;
    stream_dedup_t *dedup; /* its partition's dedup (prefetch target); NULL: off or unknown */
    pql_t *pql;            /* its partition's tracker (prefetch target); NULL: unknown */
    int64_t fallback_ts;   /* event time when the record has no timestamp (the Kafka one) */
    /* out of stream_batch_prepare */
    int rc; /* stream_record_decode's answer; the rest is valid only when 0 */
    stream_rec_t rec;
    bool dedup_key; /* a messageId, not generated: dedup judges it (SPEC §5) */
    bool has_fp;    /* fp computed (dedup given) */
    uint64_t fp;
    uint64_t ah, uh; /* pql_hash of the account and of the user (userId, else anonymousId) */
} stream_ev_t;

/* Prepares evs[0..n) (n <= STREAM_BATCH_MAX; with json only evs[0]). Returns the number of
 * events prepared (n, or 1 with json and n > 0), whose rc then tells whether each decoded. */
size_t stream_batch_prepare(stream_decoder_t *dec, bool json, stream_ev_t *evs, size_t n);

/* The dedup verdict of a prepared, decoded event against d (NULL: no dedup), now_ms the wall
 * clock: 1 = first seen (now remembered) or not judged (no dedup, no messageId, or a generated
 * one), 0 = duplicate, STREAM_DEDUP_E_FULL = passed unremembered (stream_dedup_seen_first). */
int stream_ev_dedup(stream_dedup_t *d, stream_ev_t *e, int64_t now_ms);

/* Counts a prepared, decoded event in p as the worker does: accounts only (SPEC §6), the user
 * is userId else anonymousId, the event name only for type "track", the event time the
 * record's timestamp else fallback_ts. Returns STREAM_EV_NO_ACCOUNT (not counted, nothing to
 * count) or pql_feed's answer. */
#define STREAM_EV_NO_ACCOUNT 1
int stream_ev_count(pql_t *p, const stream_ev_t *e, int64_t now_ms);

#endif
