/*
 * stream.h — sluice-stream (SPEC §10): a worker of a Kafka consumer group on the events topic
 * that owns, per assigned partition, the PQL counters (SPEC §6, the same sluice_pql engine as the
 * collector) and the exact dedup set of the events in it, checkpoints that state to a compacted
 * changelog topic and writes its outputs exactly once with Kafka transactions.
 *
 *   stream_task.c    one partition's state: restore from the changelog, the changes to write
 *   stream_worker.c  the consumer group, rebalances, the transaction loop, /metrics figures
 *   stream_record.c  one events record to the fields used (stream_record.h)
 *   stream_batch.c   the per-event path over a batch: decode, dedup, PQL with prefetches
 *                    (stream_batch.h; stream.poll_batch records at a time)
 *   stream_admin.c   the --admin-listen HTTP listener (its own libuv thread)
 *   stream_main.c    command line, config, signals
 *
 * Changelog (kafka.topics.changelog, partition p = the state of events partition p). Keys start
 * with one byte of kind:
 *   'p' + accountId   one PQL account's value (pql_account_export); empty value = tombstone;
 *   'd' + ...         dedup state (stream_dedup.h, when built with it);
 *   'o'               a commit marker: value = the next events offset of p (int64, little
 *                     endian) after everything before it in this partition.
 * Every transaction ends each touched changelog partition with its marker, and a restore applies
 * only what a marker closes: the state restored and the offset to resume from always belong to
 * the same commit, even where the broker does not filter aborted transactions (librdkafka 2.0.2's
 * mock cluster, see the note on issue 14). The group's committed offsets are written in the same
 * transaction (send_offsets_to_transaction, for lag tooling and KIP-447 zombie fencing); the
 * marker's offset wins when both exist.
 *
 * Threads: the worker thread (main) runs the consumer, the producer's transactions, every
 * pql_t/dedup write and the rebalance callbacks; the admin thread reads tasks under tasks_mu
 * (read lock) and the pql_t's shard locks. The worker takes tasks_mu for writing only to swap a
 * task in or out.
 */
#ifndef SLUICE_STREAM_H
#define SLUICE_STREAM_H

#include <librdkafka/rdkafka.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

#include "base.h"
#include "config.h"
#include "pql.h"
#include "stream_record.h"

#include "stream_dedup.h"

#define STREAM_MAX_PARTITIONS 4096 /* of the events topic (the table is indexed by partition) */
#define STREAM_KIND_PQL       'p'
#define STREAM_KIND_DEDUP     'd'
#define STREAM_KIND_MARK      'o'

struct stream_worker;

typedef struct stream_task {
    struct stream_worker *w;
    int32_t partition;
    pql_t *pql;
    stream_dedup_t *dedup;
    int64_t next_offset;      /* next events offset to process; -1: none seen, none restored */
    int64_t committed_offset; /* next_offset as of the last commit (marker written) */
    bool changed;             /* state changed since the last commit */
    _Atomic int64_t lag;      /* high watermark - next_offset, refreshed every second */
    uint64_t restore_ms, restore_records;
} stream_task_t;

typedef struct stream_stats {
    _Atomic uint64_t processed, duplicates, undecodable, not_counted, signals, commits, aborts;
    _Atomic uint64_t commit_us; /* time in committed txn_commit calls: changes, offsets, commit */
    _Atomic uint64_t restores, restore_ms_total, restore_ms_last, restore_records;
    _Atomic uint64_t restore_discarded, restore_bad, changelog_records, changelog_bytes;
    _Atomic uint64_t deduped_out, partitions_owned, rebalances, dedup_full;
    _Atomic uint64_t batches; /* record batches through the per-event path (stream_batch.h) */
} stream_stats_t;

typedef struct stream_worker {
    const config_t *cfg;
    rd_kafka_t *consumer; /* the group member on events */
    rd_kafka_t *producer; /* transactional */
    /* The producer's output topics (pql, changelog, events_deduped), opened and their metadata
     * read at start: the first signal of a process then does not wait for a metadata lookup. */
    rd_kafka_topic_t *out_topics[3];
    rd_kafka_t *restorer; /* reads changelog partitions (assign, read_committed, no commits) */
    bool json;            /* kafka.format: json */
    pthread_rwlock_t tasks_mu;
    stream_task_t *tasks[STREAM_MAX_PARTITIONS];   /* owned, by partition */
    stream_task_t *standby[STREAM_MAX_PARTITIONS]; /* revoked, kept for a re-assignment */
    bool txn_open;
    uint64_t txn_start_ns;
    uint32_t txn_records;
    uint64_t last_sweep_ns, last_lag_ns;
    stream_decoder_t dec;
    base_buf_t scratch; /* changelog flush copies (pql_changes_flush) */
    stream_stats_t st;
    atomic_bool fatal; /* a fatal Kafka error or a failed restore: exit 1 */
    volatile sig_atomic_t *stop;
} stream_worker_t;

/* Creates the clients (producer: init_transactions; consumer: subscribe). 0, or -1 with err. */
int stream_worker_init(stream_worker_t *w, const config_t *cfg, volatile sig_atomic_t *stop,
                       char *err, size_t errlen);
/* Runs until *stop (0: handed back cleanly) or a fatal error (1). */
int stream_worker_run(stream_worker_t *w);
/* Closes the consumer (partitions handed back: the revoke commits), frees everything. */
void stream_worker_free(stream_worker_t *w);
/* Registers the sluice_stream_* /metrics section. */
void stream_worker_register_metrics(stream_worker_t *w);

/* ---- stream_task.c ---- */
/* Builds partition p's task and restores it from the changelog (bounded by
 * stream.restore_timeout). Returns the task, or NULL (logged) on failure. Worker thread only. */
stream_task_t *stream_task_restore(stream_worker_t *w, int32_t p);
void stream_task_free(stream_task_t *t);
/* Produces t's changes since the last commit to the changelog, then its marker. 0 or -1 (a
 * produce failed: the transaction must abort). */
int stream_task_write_changes(stream_task_t *t);
/* Produces one message in the current transaction (bounded retry on a full queue). 0 or -1. */
int stream_produce(stream_worker_t *w, const char *topic, int32_t partition, const void *key,
                   size_t klen, const void *val, size_t vlen, rd_kafka_headers_t *hdrs);

/* ---- stream_admin.c ---- */
typedef struct stream_admin stream_admin_t;
/* Listens on addr (ADDR:PORT) on its own thread. 0, or -1 with err. *port_out: the bound port. */
int stream_admin_start(stream_worker_t *w, const char *addr, stream_admin_t **out, int *port_out,
                       char *err, size_t errlen);
void stream_admin_stop(stream_admin_t *a);

#endif
