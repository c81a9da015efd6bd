/*
 * identities.h — the fleet's shared user -> account links (SPEC §10): a consumer of the compacted
 * identities topic (kafka.topics.identities, key userId, value accountId) that applies every
 * record to the accounts map (accounts.h), so a user who joined an account through a `group` call
 * on any collector resolves on this one too. (The links are produced by ingest.c, in the group
 * call's own request.)
 *
 * One thread of its own (signals blocked) owns the librdkafka consumer: no consumer group (every
 * collector needs every link), all partitions assigned from the beginning (re-read every
 * IDENTITIES_META_REFRESH_MS, so partitions added later are assigned too), no offsets committed.
 * Nothing here runs on an event-loop thread; the loops only read the atomics behind
 * identities_ready() and the gauges.
 *
 * Order rule: records are applied in topic order per partition (a user's records share one
 * partition, so the last record of a user in the topic is the last one applied). The local
 * learning of ingest.c is applied at once, before the record it produced comes back through the
 * topic: until then the local link wins; after it, whatever the topic holds last for the user
 * (another collector's later group call, a tombstone) wins, on every collector alike.
 *
 * Records: key = userId (1..255 bytes of UTF-8), value = accountId (1..255 bytes of UTF-8), or no
 * value (a tombstone: the user is forgotten here, e.g. an erasure request). Anything else (empty
 * key, an id over 255 bytes, invalid UTF-8) is skipped and counted in
 * sluice_identities_skipped_total; the first record of each kind is logged
 * (identities_record_skipped, with partition and offset), the rest only counted.
 *
 * Catch-up: the first time every assigned partition has been read to its end (librdkafka's
 * partition EOF) the consumer is "caught up": logged once (identities_caught_up, with ms since
 * start and records applied), gauge sluice_identities_caught_up 1. identities_ready() is what
 * /readyz asks (identities.ready_wait).
 *
 * Bounds: the map's own (limits.max_users, LRU); librdkafka's prefetch queue
 * (identities.queue_bytes -> queued.max.messages.kbytes). Metrics: sluice_identities_applied_total,
 * sluice_identities_forgotten_total, sluice_identities_skipped_total (metrics.h) and the gauges
 * sluice_identities_lag (records between the consumer's position and the partitions' ends, summed;
 * refreshed every second), sluice_identities_caught_up, sluice_identities_partitions.
 */
#ifndef SLUICE_IDENTITIES_H
#define SLUICE_IDENTITIES_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "accounts.h"
#include "config.h"

#define IDENTITIES_ERRORS(X)                                                                       \
    X(OK, 0, "ok")                                                                                 \
    X(E_CONFIG, -1, "invalid identities consumer configuration")                                   \
    X(E_NOMEM, -2, "out of memory or no thread")

typedef enum {
#define IDENTITIES_X_ENUM(name, val, msg) IDENTITIES_##name = val,
    IDENTITIES_ERRORS(IDENTITIES_X_ENUM)
#undef IDENTITIES_X_ENUM
} identities_err_t;

/* Message for an identities_err_t; "unknown error" for other values. Never NULL. */
const char *identities_strerror(int err);

/* Why a record is skipped (index of sluice_identities_skipped_total's first-of-kind log line). */
typedef enum {
    IDENTITIES_OK_RECORD = 0,
    IDENTITIES_BAD_KEY_EMPTY,
    IDENTITIES_BAD_KEY_LONG,
    IDENTITIES_BAD_KEY_UTF8,
    IDENTITIES_BAD_VALUE_EMPTY, /* a value of 0 bytes (no value at all is a tombstone) */
    IDENTITIES_BAD_VALUE_LONG,
    IDENTITIES_BAD_VALUE_UTF8,
    IDENTITIES_BAD_COUNT
} identities_bad_t;

/* Checks one record (value NULL with vlen 0: a tombstone, which is valid). Pure; any thread. */
identities_bad_t identities_check(const void *key, size_t klen, const void *val, size_t vlen);
/* A short name for a reason ("key_empty", ...). Never NULL. */
const char *identities_bad_name(identities_bad_t why);

typedef struct identities identities_t;

typedef struct identities_stats {
    bool caught_up;
    int64_t lag;        /* -1 until known */
    int partitions;     /* assigned */
    uint64_t applied;   /* records applied (tombstones included) */
    uint64_t skipped;   /* malformed records */
    int64_t catchup_ms; /* start -> caught up; -1 while catching up */
} identities_stats_t;

/*
 * Starts the consumer thread reading cfg->topic_identities at bootstrap (the producer's: the
 * embedded mock cluster's address in embedded mode) with cfg->kafka_properties applied after
 * sluice's consumer defaults, into accounts (which must outlive it). cfg must outlive it too.
 * Returns IDENTITIES_OK and *out, or an error with err filled (an invalid kafka.properties entry
 * gives E_CONFIG naming it). Registers the gauges above (they read *out: stop rendering /metrics
 * before identities_stop).
 */
int identities_start(const config_t *cfg, const char *bootstrap, accounts_t *accounts,
                     identities_t **out, char *err, size_t errlen);

/* /readyz: true once caught up, or once identities.ready_wait has passed since the start (then
 * why is not set); else false and why says "identities catching up (lag N)". NULL: true. Never
 * blocks. */
bool identities_ready(identities_t *id, char *why, size_t whylen);

/* A consistent-enough copy of the counters (each read atomically). */
void identities_stats(identities_t *id, identities_stats_t *st);

/* Stops the thread (it notices within ~100 ms), closes the consumer and frees. Safe with NULL.
 * Blocks: main only. */
void identities_stop(identities_t *id);

#endif
