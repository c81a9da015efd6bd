/*
 * kafka_out.h — the Kafka producer side of the collector (SPEC §4).
 *
 * kafka.producers idempotent librdkafka producers (acks=all, zstd, linger batching; each
 * partition of the events topic written by exactly one of them, kafka_out.c "Producer lanes")
 * shared by every loop thread; kafka.properties from the config are applied after our defaults.
 * A dedicated poll thread per producer serves delivery reports, so no event-loop thread ever
 * calls rd_kafka_poll/flush.
 * With no brokers configured, an in-process librdkafka mock cluster is started (embedded mode)
 * and its bootstrap address is reported by kafka_out_bootstrap().
 *
 * Delivery groups: a request produces its messages into one kafka_group_t and is told once,
 * through done_cb, when every message of the group has its delivery report. Thread rules:
 * kafka_out_produce() and kafka_group_seal() may be called from any thread; done_cb runs on the
 * poll thread or on the thread calling kafka_group_seal(), exactly once per sealed group, and
 * must not block (hand the group back to its loop with uv_async_send). The group memory belongs
 * to the caller and must stay valid until done_cb has run.
 */
#ifndef SLUICE_KAFKA_OUT_H
#define SLUICE_KAFKA_OUT_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "config.h"

/* Upper bound of kafka.producers. */
#define KAFKA_MAX_PRODUCERS 16

#define KAFKA_ERRORS(X)                                                                            \
    X(OK, 0, "ok")                                                                                 \
    X(E_QUEUE_FULL, -1, "producer queue full")                                                     \
    X(E_CONFIG, -2, "invalid Kafka configuration")                                                 \
    X(E_NOMEM, -3, "out of memory")                                                                \
    X(E_FATAL, -4, "producer in fatal state")                                                      \
    X(E_STOPPED, -5, "producer stopped")                                                           \
    X(E_PRODUCE, -6, "message refused by the producer (unknown topic, too large)")

typedef enum {
#define KAFKA_X_ENUM(name, val, msg) KAFKA_##name = val,
    KAFKA_ERRORS(KAFKA_X_ENUM)
#undef KAFKA_X_ENUM
} kafka_err_t;
const char *kafka_strerror(int err);

typedef enum {
    KAFKA_TOPIC_EVENTS = 0,
    KAFKA_TOPIC_REJECTED = 1,
    KAFKA_TOPIC_PQL = 2,
    KAFKA_TOPIC_IDENTITIES = 3 /* kafka.topics.identities: compacted user -> account links */
} kafka_topic_t;
/* Topics kafka_out produces to (kafka_topic_t values are 0 .. KAFKA_TOPIC_COUNT - 1; the spool
 * stores them as one byte). */
#define KAFKA_TOPIC_COUNT 4

typedef struct kafka_out kafka_out_t;
typedef struct kafka_group kafka_group_t;
typedef void (*kafka_group_done_cb)(kafka_group_t *g);

struct kafka_group {
    atomic_uint pending; /* reports outstanding, +1 until sealed */
    atomic_uint failed;  /* messages whose delivery failed */
    atomic_uint delivered;
    atomic_int first_err; /* rd_kafka_resp_err_t of the first failure, 0 if none */
    kafka_group_done_cb done_cb;
    void *ud;
    /* Kafka timestamp (CreateTime, ms since the epoch) of the group's messages: the moment of
     * kafka_group_init, read once per group instead of by librdkafka once per message. */
    int64_t ts_ms;
};

typedef struct kafka_header {
    const char *name;
    const void *value;
    size_t len;
} kafka_header_t;

/* Starts the producer (and the embedded mock cluster when cfg->brokers is empty) and its poll
 * thread. Returns 0 and *out, or a kafka_err_t with err filled (an invalid kafka.properties
 * entry gives KAFKA_E_CONFIG and librdkafka's message naming the property). cfg must outlive
 * ko. Registers the gauges kafka_queue_messages / kafka_queue_bytes (metrics.h), which read ko:
 * stop rendering /metrics before kafka_out_free(). */
int kafka_out_new(const config_t *cfg, kafka_out_t **out, char *err, size_t errlen);

/* Bootstrap servers the producer uses (the mock cluster's address in embedded mode). */
const char *kafka_out_bootstrap(const kafka_out_t *ko);
bool kafka_out_embedded(const kafka_out_t *ko);

void kafka_group_init(kafka_group_t *g, kafka_group_done_cb done_cb, void *ud);

/* Queues one message (key/value/headers are copied), timestamped g->ts_ms (g NULL: now). On
 * success the message counts in g and will be reported to it. On failure (queue full, fatal,
 * stopped) it does not count in g. g may be NULL: the message is still delivered and counted in the
 * metrics, nobody is told. Never blocks. KAFKA_E_QUEUE_FULL / E_FATAL / E_STOPPED / E_PRODUCE all
 * mean "cannot be made durable now" (503); E_NOMEM is out of memory. */
int kafka_out_produce(kafka_out_t *ko, kafka_topic_t topic, const void *key, size_t keylen,
                      const void *value, size_t vallen, const kafka_header_t *headers,
                      size_t nheaders, kafka_group_t *g);

/* No more messages will be added to g. done_cb runs once all reports are in (maybe right here). */
void kafka_group_seal(kafka_group_t *g);

/* For a sink other than Kafka that makes messages of g durable (the spool, spool.h): hold adds
 * one outstanding report to g (before g is sealed); report gives it back with the outcome of
 * `delivered` and `failed` messages (err: the first failure's code, 0 if none). Any thread;
 * report may run done_cb, with the same rules as a delivery report. */
void kafka_group_hold(kafka_group_t *g);
void kafka_group_report(kafka_group_t *g, unsigned delivered, unsigned failed, int err);

/* Readiness for /readyz: true when events can be made durable now; else why (a short reason).
 * Not ready: fatal producer error (permanent), all brokers down, the last delivery failed, or
 * the producer queue >= 90% full. Recovers on a successful delivery or a successful metadata
 * probe (the poll thread probes once a second while unhealthy). Never blocks. */
bool kafka_out_ready(kafka_out_t *ko, char *why, size_t whylen);
/* Known unreachable: librdkafka reported every broker down (__ALL_BROKERS_DOWN, cleared by a
 * successful delivery or probe), the producer is in a fatal state (until replaced), or it is
 * stopping. A produce now would only wait for message.timeout.ms: callers answer 503 at once
 * (fail fast) or spool. Narrower than !kafka_out_ready(): a slow broker or a full queue is not
 * "down". Never blocks. */
bool kafka_out_down(kafka_out_t *ko);
/* Messages waiting in the producer (rd_kafka_outq_len). */
int kafka_out_queue_len(kafka_out_t *ko);

/* Waits up to timeout_ms for every queued message to be reported. Returns messages left. Blocks:
 * call only from main at shutdown, never from a loop thread. */
int kafka_out_flush(kafka_out_t *ko, int timeout_ms);
/* Stops the poll thread, destroys the producer (and mock cluster). Safe with NULL. Messages
 * still queued are purged first: their groups get done_cb with failures (bounded wait, ~1 s),
 * so no caller waits forever. Blocks: main only, after the loops stopped producing. */
void kafka_out_free(kafka_out_t *ko);

#endif
