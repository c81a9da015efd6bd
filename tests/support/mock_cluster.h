/*
 * mock_cluster.h — the one mock-Kafka helper: librdkafka's mock cluster (a real Kafka protocol
 * peer), its fault levers and a consumer that reads messages back (through kafka_read.h). Two
 * users:
 *   - sluice-mock-kafka (mock_kafka.c): hosts a cluster in a process of its own and takes
 *     mock_cluster_command() lines on stdin, for the integration tests (support.h, sup_mock_*);
 *   - the collector's unit tests (test_ingest.c, test_http_conn.c, test_server.c, test_spool.c,
 *     test_kafka_out.c): a cluster in-process.
 *
 * Layer 1, mock_cluster_t: one cluster, its owner handle and its bootstrap list; the caller owns
 * it (mock_cluster_start ... mock_cluster_stop).
 *
 * Layer 2, mock_kafka_t (in-process unit tests): one cluster per test program (creating and
 * destroying one costs up to a second each in librdkafka 2.0.2), started by the first
 * mock_kafka_start(); every test gets its own three topics (events_N, rejected_N, pql_N; one
 * partition each, so a topic's order is produce order), so tests share no data.
 * mock_kafka_stop() undoes the broker faults a test left; mock_kafka_group_teardown (the cmocka
 * group teardown) destroys the cluster and checks that every librdkafka handle is gone. Faults
 * are injected with the mock's own levers on m->mc (rd_kafka_mock_broker_set_down/_up, _set_rtt,
 * rd_kafka_mock_push_request_errors).
 *
 * librdkafka's own log lines: discarded in-process (quiet), errors to stderr in the helper
 * process. Every wait is bounded (MOCK_WAIT_MS). Not thread-safe: call from the test's thread.
 */
#ifndef SLUICE_TEST_MOCK_CLUSTER_H
#define SLUICE_TEST_MOCK_CLUSTER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "base.h"

#include <librdkafka/rdkafka.h>
#include <librdkafka/rdkafka_mock.h>

#include "kafka_read.h"

#define MOCK_WAIT_MS 8000
/* Kafka protocol ApiKey of Produce, for rd_kafka_mock_push_request_errors. */
#define MOCK_API_PRODUCE 0

/* ---- layer 1: a cluster --------------------------------------------------------------------- */

typedef struct mock_cluster {
    rd_kafka_t *owner; /* the handle librdkafka needs to own the cluster; it sends nothing */
    rd_kafka_mock_cluster_t *mc;
    char bootstrap[256];
} mock_cluster_t;

/* Starts a cluster of brokers (1..16). quiet: librdkafka's log lines are discarded, else errors
 * go to stderr. Returns 0, or -1 with err filled (nothing is left running). */
int mock_cluster_start(mock_cluster_t *c, int brokers, bool quiet, char *err, size_t errlen);
/* Creates topic with partitions (replication min(brokers, replication)). 0, or -1 with err. */
int mock_cluster_topic(mock_cluster_t *c, const char *topic, int partitions, int replication,
                       char *err, size_t errlen);
/*
 * One fault command (the helper's stdin protocol, see mock_kafka.c): "down ID" (ID -1: all),
 * "up ID", "rtt ID MS", "topic NAME PARTITIONS" (creates a topic), "quit". Writes the answer ("ok"
 * or "error: why") into ans and returns 1 for quit, else 0. line is modified (tokenised).
 */
int mock_cluster_command(mock_cluster_t *c, char *line, char *ans, size_t anslen);
/* Parses a decimal int in [lo, hi] (the whole of s). 0, or -1 (*out untouched). */
int mock_parse_int(const char *s, int lo, int hi, int *out);
/* Destroys the cluster and its owner; safe on a zeroed or stopped c. */
void mock_cluster_stop(mock_cluster_t *c);

/* ---- layer 2: the test program's shared cluster ---------------------------------------------- */

typedef struct mock_kafka {
    rd_kafka_mock_cluster_t *mc; /* the program's cluster */
    const char *bootstrap;
    char events[32], rejected[32], pql[32]; /* this test's topics */
} mock_kafka_t;

/* Creates this test's topics (starting the program's cluster on first use). Returns 0 or -1. */
int mock_kafka_start(mock_kafka_t *m);
/* Undoes what a test may have left on the broker (down, slow). The topics stay. */
void mock_kafka_stop(mock_kafka_t *m);
/* cmocka group teardown: destroys the cluster and the consumer; fails if a librdkafka handle is
 * left (a producer or consumer some test did not destroy). */
int mock_kafka_group_teardown(void **state);

/* Messages the cluster holds for topic (its high watermark: the topic is fresh per test and the
 * producer idempotent, so this is exactly the number of messages written). -1 on error. */
int64_t mock_topic_count(const mock_kafka_t *m, const char *topic);
/* Reads what topic holds once it holds at least `want` messages (or MOCK_WAIT_MS passed), with
 * the program's consumer: sup_kafka_read (kafka_read.h), the reader the integration tests use
 * too. Returns 0 or -1; free out with sup_kmsgs_free. */
int mock_consume(const mock_kafka_t *m, const char *topic, size_t want, sup_kmsgs_t *out);

#ifdef SLUICE_CONFIG_H
/* The Kafka part of a collector config pointing at the cluster and this test's topics (for the
 * collector's unit tests, which include config.h first). */
static inline void mock_kafka_cfg(const mock_kafka_t *m, config_t *c)
{
    c->brokers = (char *)m->bootstrap;
    c->topic_events = (char *)m->events;
    c->topic_rejected = (char *)m->rejected;
    c->topic_pql = (char *)m->pql;
    if (c->delivery_timeout_ms == 0) c->delivery_timeout_ms = 5000;
    if (c->kafka_queue_bytes == 0) c->kafka_queue_bytes = 64u << 20;
}
#endif

#endif
