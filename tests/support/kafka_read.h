/*
 * kafka_read.h — the tests' one Kafka read-back consumer: reads what a topic holds, all
 * partitions from the beginning, and copies it out of librdkafka. Two users:
 *   - the integration tests: support.h's sup_consume (its own consumer of the sluice-mock-kafka
 *     helper's cluster, made and destroyed per call);
 *   - the collector's unit tests: mock_cluster.h's mock_consume (the program's one consumer of
 *     the in-process cluster, which is kept: destroying a handle can take a second).
 *
 * Reads with librdkafka's simple consumer (rd_kafka_consume_start per partition): no consumer
 * group, nothing committed, so one handle reads any number of topics, one after the other.
 * Every wait is bounded by the caller's timeout. Not thread-safe for one handle.
 */
#ifndef SLUICE_TEST_KAFKA_READ_H
#define SLUICE_TEST_KAFKA_READ_H

#include <stddef.h>
#include <stdint.h>

#include <librdkafka/rdkafka.h>

/* Most messages one read copies: a topic holding more is an error. */
#define SUP_KMSGS_MAX 100000

typedef struct sup_kheader {
    char *name;
    char *value; /* NUL-terminated copy */
    size_t len;
} sup_kheader_t;

typedef struct sup_kmsg {
    int32_t partition;
    int64_t offset;
    int64_t ts_ms; /* message timestamp (the producer's CreateTime); -1 when it has none */
    char *key;     /* NUL-terminated copy, NULL when the message has no key */
    size_t key_len;
    char *value; /* NUL-terminated copy */
    size_t value_len;
    sup_kheader_t *headers;
    size_t n_headers;
} sup_kmsg_t;

/* Messages read back, partition by partition, in offset order within each. Free with
 * sup_kmsgs_free. */
typedef struct sup_kmsgs {
    sup_kmsg_t *msgs;
    size_t n;
} sup_kmsgs_t;

/*
 * Reads every message of topic through consumer rk (the caller's, which it keeps). First waits
 * until the topic's high watermarks add up to at least min_count (or timeout_ms passes), then
 * reads up to the watermarks seen at that moment, so the result is exactly what the topic held:
 * extra or duplicate messages are visible to the caller. Returns 0 (out->n may be below min_count
 * when the deadline passed first) or -1 when the topic could not be read (reason on stderr); out
 * is always initialised and must be freed.
 */
int sup_kafka_read(rd_kafka_t *rk, const char *topic, size_t min_count, int timeout_ms,
                   sup_kmsgs_t *out);
/* Frees what a read copied and empties m; safe on an emptied m. */
void sup_kmsgs_free(sup_kmsgs_t *m);
/* Header value (NUL-terminated) or NULL. */
const char *sup_kmsg_header(const sup_kmsg_t *m, const char *name);

#endif
