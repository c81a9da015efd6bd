/*
 * spool.h — the local spool (SPEC §4): when Kafka is unreachable or its queue is full, accepted
 * messages go to an append-only, CRC-checked segment log in data_dir/spool/, group-committed
 * with one fsync for many requests, and are re-produced to Kafka in order once it recovers.
 *
 * The contract:
 *  - Durable before acknowledged. spool_submit() hands a batch of encoded records (one request's
 *    messages) to the writer thread. The batch's kafka_group_t is told (kafka_group_report) only
 *    after the records are written and fdatasync'd: delivered = its record count on success,
 *    failed = its record count on a write or sync error (the request then answers 503 and its
 *    events are not remembered by dedup, as for a failed Kafka delivery).
 *  - Order. Records are written in submit order (one loop's submits keep their order; the
 *    writer takes everything submitted so far, oldest first) and drained in file order. Callers
 *    keep per-key order by sending every new message to the spool while spool_busy() is true.
 *  - At least once. The drain thread produces records to their topic with the exact key, value
 *    and headers they were spooled with, advances its cursor only past delivered records, and
 *    deletes a segment once every record of it is delivered. The cursor is saved after every
 *    window (data_dir/spool/cursor); a crash between a delivery and that save re-sends at most
 *    one window (SPOOL_WINDOW_RECORDS), which the message-id header lets a consumer drop.
 *  - Crash safety. spool_open() scans every segment; the first record whose length or CRC does
 *    not check (a torn tail after kill -9 or power loss) ends the segment: the file is truncated
 *    there, what was dropped is logged (spool_truncated) and counted, and everything before it
 *    is drained. A record that was fsync'd is never behind a torn one in the same segment.
 *    Committed records that cannot be read back later (the file removed, bytes that no longer
 *    check) are given up by the drain (spool_records_lost, counted), never retried for ever.
 *  - Bounded. max_bytes (spool.max_bytes) caps the bytes on disk plus those queued for the
 *    writer: spool_submit() answers SPOOL_E_FULL beyond it (the caller answers 503), and
 *    spool_has_room() says whether a request could still be taken (/readyz, fail fast).
 *
 * Segment file NNNNNNNNNNNNNNNN.seg (16 hex digits, increasing): a 16-byte header ("SLUICESP",
 * u32 version 1, u32 0), then records, all integers little-endian:
 *     u32 len, u32 crc32(body) (zlib), body[len]:
 *     i64 spooled_at_ms, u8 topic (kafka_topic_t), u8 n_headers, u16 0, u32 key_len,
 *     u32 value_len, key, value, then n_headers x {u8 name_len, u32 value_len, name, value}.
 *
 * Threads: spool_encode(), spool_submit(), spool_busy(), spool_has_room() and the gauges are safe
 * from any thread and never block (submit is a lock-free push plus a wake-up). The writer
 * thread alone writes, syncs and rotates segments; the drain thread alone reads, produces and
 * deletes drained segments; both update the shared segment table under one mutex held only for
 * bookkeeping (never across I/O). spool_open/spool_start/spool_stop/spool_free are main's.
 */
#ifndef SLUICE_SPOOL_H
#define SLUICE_SPOOL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "base.h"
#include "kafka_out.h"

#define SPOOL_ERRORS(X)                                                                            \
    X(OK, 0, "ok")                                                                                 \
    X(E_FULL, -1, "spool full (spool.max_bytes)")                                                  \
    X(E_IO, -2, "spool I/O error")                                                                 \
    X(E_NOMEM, -3, "out of memory")                                                                \
    X(E_TOO_LARGE, -4, "record larger than the spool batch allows")                                \
    X(E_CORRUPT, -5, "record does not check (length or CRC)")                                      \
    X(E_STOPPED, -6, "spool stopped")

typedef enum {
#define SPOOL_X_ENUM(name, val, msg) SPOOL_##name = val,
    SPOOL_ERRORS(SPOOL_X_ENUM)
#undef SPOOL_X_ENUM
} spool_err_t;
const char *spool_strerror(int err);

/* Segment header and per-record overhead (before key, value and headers). */
#define SPOOL_SEG_HEADER  16u
#define SPOOL_RECORD_HEAD 8u
#define SPOOL_BODY_FIXED  24u
#define SPOOL_RECORD_MAX  (256u << 20) /* body bytes; a longer length is corrupt */
#define SPOOL_MAX_HEADERS 8u
/* Drain window: records produced before waiting for their reports (and saving the cursor). */
#define SPOOL_WINDOW_RECORDS 1000u
#define SPOOL_WINDOW_BYTES   (4u << 20)

typedef struct spool spool_t;

typedef struct spool_opts {
    const char *data_dir;   /* segments live in data_dir/spool (created) */
    uint64_t max_bytes;     /* spool.max_bytes */
    uint64_t segment_bytes; /* spool.segment_bytes: a segment is closed once it reaches this */
    kafka_out_t *ko;        /* where the drain produces; must outlive the spool */
} spool_opts_t;

/* One record as read back (the pointers point into the scanned bytes). */
typedef struct spool_record {
    int64_t spooled_at_ms;
    int topic; /* kafka_topic_t */
    const char *key, *value;
    size_t key_len, value_len;
    struct {
        const char *name; /* not NUL-terminated in the file: name_len bytes */
        size_t name_len;
        const void *value;
        size_t len;
    } headers[SPOOL_MAX_HEADERS];
    size_t n_headers;
} spool_record_t;

/* Appends one record to out (a request's batch buffer; its max bounds the batch). Returns 0,
 * SPOOL_E_TOO_LARGE (out's cap, or more than SPOOL_MAX_HEADERS headers) or SPOOL_E_NOMEM; on
 * failure out is unchanged. */
int spool_encode(base_buf_t *out, int topic, const void *key, size_t key_len, const void *value,
                 size_t value_len, const kafka_header_t *headers, size_t n_headers,
                 int64_t spooled_at_ms);

/*
 * Reads the record at p[0..n). Returns its total size (head + body) and fills *rec (pointing into
 * p), 0 when p holds only part of a record (a torn tail: fewer bytes than the length says), or
 * SPOOL_E_CORRUPT when the length is out of bounds, the CRC does not match, or the body's fields
 * do not add up to its length. Pure: the recovery scan and the fuzz target call it on any bytes.
 */
long spool_record_parse(const void *p, size_t n, spool_record_t *rec);

/*
 * Scans a whole segment image: the header, then records until the first that does not parse.
 * Returns the number of good records; *valid_len is the length of the good prefix (0 when the
 * header is bad, so the file holds nothing usable). cb (may be NULL) sees each good record with
 * its offset; returning false stops the scan there.
 */
typedef bool (*spool_scan_cb)(void *ud, uint64_t offset, const spool_record_t *rec);
size_t spool_scan(const void *p, size_t n, size_t *valid_len, spool_scan_cb cb, void *ud);

/*
 * Opens (creates) data_dir/spool and recovers it: scans every segment, truncates torn tails
 * (logged, counted in sluice_spool_truncated_bytes_total), loads the drain cursor and registers
 * the gauges. Nothing runs yet: spool_start() starts the writer and drain threads. Returns 0
 * and *out, or SPOOL_E_IO (the directory cannot be created or read; err says which path and
 * errno) or SPOOL_E_NOMEM. opts->ko must outlive the spool.
 */
int spool_open(const spool_opts_t *opts, spool_t **out, char *err, size_t errlen);
int spool_start(spool_t *sp);

/* A request's records on their way to the writer. Owned by the caller (embedded in the request);
 * records and g must stay valid until g is reported. */
typedef struct spool_batch {
    base_snode_t node;
    const base_buf_t *records; /* spool_encode()d records */
    uint32_t n_records;
    kafka_group_t *g;
} spool_batch_t;

/* Queues b for the writer and holds g (kafka_group_hold) until it is written and synced.
 * SPOOL_E_FULL beyond max_bytes, SPOOL_E_STOPPED after spool_stop: then g is untouched and the
 * caller answers 503. Any thread; never blocks. */
int spool_submit(spool_t *sp, spool_batch_t *b);

/* True while records are spooled and not yet delivered (or queued for the writer): new messages
 * must go to the spool too, behind them. */
bool spool_busy(const spool_t *sp);
/* True when the spool has room for a request: more than min(max_bytes / 8, 1 MiB) free (below
 * that most requests would not fit; /readyz and fail fast treat it as full). */
bool spool_has_room(const spool_t *sp);

typedef struct spool_stats {
    uint64_t bytes;      /* on disk (live segments) plus queued for the writer */
    uint64_t records;    /* spooled and not yet delivered */
    double oldest_age_s; /* 0 when nothing is spooled */
    uint64_t max_bytes; /* the cap (spool.max_bytes): at it, requests that need the spool get 503 */
} spool_stats_t;
void spool_stats(spool_t *sp, spool_stats_t *st);

/* Stops the drain thread: a window in flight waits at most ~1 s for its reports, and the
 * cursor stays after the last fully delivered window (the rest is drained after a restart).
 * Call it before the final Kafka flush, so the flush is not fed by the drain. Idempotent. */
void spool_stop_drain(spool_t *sp);
/* Stops the drain (if still running) and then the writer: batches still queued are written and
 * reported first. After it, spool_submit answers SPOOL_E_STOPPED. Main only, after the loops
 * stopped submitting. */
void spool_stop(spool_t *sp);
/* Frees sp. Only after kafka_out_free(): a report for a drain message may still arrive until
 * then. Safe with NULL. */
void spool_free(spool_t *sp);

#endif
