/*
 * mock_cluster.h — a real Kafka protocol peer for the collector's server unit tests
 * (test_ingest.c, test_http_conn.c, test_server.c): librdkafka's mock cluster in-process, one
 * broker, and a librdkafka consumer that reads messages back. Faults are injected with the
 * mock's own levers (rd_kafka_mock_broker_set_down/_up, _set_rtt,
 * rd_kafka_mock_push_request_errors).
 *
 * One cluster per test program (creating and destroying one costs up to a second each in
 * librdkafka 2.0.2), started by the first mock_kafka_start(); every test gets its own three
 * topics (events_N, rejected_N, pql_N; one partition each, so a topic's order is produce
 * order), so tests share no data. mock_kafka_stop() undoes the broker faults a test left;
 * mock_kafka_group_teardown (the cmocka group teardown) destroys the cluster and checks that
 * every librdkafka handle is gone.
 *
 * Include it after kafka_out.h (its librdkafka handles log through kafka_out_log_cb).
 * Every wait is bounded (MOCK_WAIT_MS).
 */
#ifndef SLUICE_TEST_MOCK_CLUSTER_H
#define SLUICE_TEST_MOCK_CLUSTER_H

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <librdkafka/rdkafka.h>
#include <librdkafka/rdkafka_mock.h>

#define MOCK_WAIT_MS     8000
#define MOCK_MAX_HEADERS 8
/* Kafka protocol ApiKey of Produce, for rd_kafka_mock_push_request_errors. */
#define MOCK_API_PRODUCE 0

typedef struct mock_kafka {
    rd_kafka_mock_cluster_t *mc; /* the program's cluster */
    const char *bootstrap;
    char events[32], rejected[32], pql[32]; /* this test's topics */
} mock_kafka_t;

/* The program's cluster, the handle librdkafka needs to own it (it sends nothing), and the
 * consumer that reads back (one per program too: destroying a handle can take a second). */
static rd_kafka_t *mock_owner_, *mock_consumer_;
static rd_kafka_mock_cluster_t *mock_mc_;
static char mock_bootstrap_[256];
static int mock_seq_;

/* A message read back, copied out of librdkafka (free with mock_msgs_free). */
typedef struct mock_msg {
    char *key; /* NUL-terminated copies; key NULL when the message had none */
    size_t keylen;
    char *value;
    size_t vallen;
    int64_t ts_ms; /* producer CreateTime */
    size_t nheaders;
    char *hname[MOCK_MAX_HEADERS];
    char *hval[MOCK_MAX_HEADERS];
} mock_msg_t;

static inline void mock_sleep_ms(int ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

/* Creates this test's topics (starting the cluster on first use). Returns 0 or -1. */
static inline int mock_kafka_start(mock_kafka_t *m)
{
    memset(m, 0, sizeof *m);
    if (mock_mc_ == NULL) {
        char errstr[256];
        rd_kafka_conf_t *conf = rd_kafka_conf_new();
        rd_kafka_conf_set_log_cb(conf, kafka_out_log_cb); /* opaque NULL: debug-level lines only */
        mock_owner_ = rd_kafka_new(RD_KAFKA_PRODUCER, conf, errstr, sizeof errstr);
        if (mock_owner_ == NULL) {
            rd_kafka_conf_destroy(conf);
            return -1;
        }
        mock_mc_ = rd_kafka_mock_cluster_new(mock_owner_, 1);
        if (mock_mc_ == NULL) return -1;
        snprintf(mock_bootstrap_, sizeof mock_bootstrap_, "%s",
                 rd_kafka_mock_cluster_bootstraps(mock_mc_));
    }
    m->mc = mock_mc_;
    m->bootstrap = mock_bootstrap_;
    int n = ++mock_seq_;
    snprintf(m->events, sizeof m->events, "events_%d", n);
    snprintf(m->rejected, sizeof m->rejected, "rejected_%d", n);
    snprintf(m->pql, sizeof m->pql, "pql_%d", n);
    const char *const topics[] = {m->events, m->rejected, m->pql};
    for (size_t i = 0; i < 3; i++)
        if (rd_kafka_mock_topic_create(m->mc, topics[i], 1, 1) != RD_KAFKA_RESP_ERR_NO_ERROR)
            return -1;
    return 0;
}

/* Undoes what a test may have left on the broker (down, slow). The topics stay. */
static inline void mock_kafka_stop(mock_kafka_t *m)
{
    if (m->mc == NULL) return;
    rd_kafka_mock_broker_set_up(m->mc, 1);
    rd_kafka_mock_broker_set_rtt(m->mc, 1, 0);
    m->mc = NULL;
}

/* cmocka group teardown: destroys the cluster; fails if a librdkafka handle is left (a
 * producer or consumer some test did not destroy). */
static inline int mock_kafka_group_teardown(void **state)
{
    (void)state;
    if (mock_consumer_ != NULL) rd_kafka_destroy(mock_consumer_);
    mock_consumer_ = NULL;
    if (mock_mc_ != NULL) rd_kafka_mock_cluster_destroy(mock_mc_);
    if (mock_owner_ != NULL) rd_kafka_destroy(mock_owner_);
    mock_mc_ = NULL;
    mock_owner_ = NULL;
    return rd_kafka_wait_destroyed(5000) == 0 ? 0 : -1;
}

/* The Kafka part of a collector config pointing at the cluster and this test's topics. */
static inline void mock_kafka_cfg(mock_kafka_t *m, config_t *c)
{
    c->brokers = (char *)m->bootstrap;
    c->topic_events = m->events;
    c->topic_rejected = m->rejected;
    c->topic_pql = m->pql;
    if (c->delivery_timeout_ms == 0) c->delivery_timeout_ms = 5000;
    if (c->kafka_queue_bytes == 0) c->kafka_queue_bytes = 64u << 20;
}

/* The program's consumer (created on first use). */
static inline rd_kafka_t *mock_consumer(const mock_kafka_t *m)
{
    if (mock_consumer_ != NULL) return mock_consumer_;
    char errstr[256];
    rd_kafka_conf_t *conf = rd_kafka_conf_new();
    if (rd_kafka_conf_set(conf, "bootstrap.servers", m->bootstrap, errstr, sizeof errstr) !=
        RD_KAFKA_CONF_OK) {
        rd_kafka_conf_destroy(conf);
        return NULL;
    }
    rd_kafka_conf_set_log_cb(conf, kafka_out_log_cb);
    mock_consumer_ = rd_kafka_new(RD_KAFKA_CONSUMER, conf, errstr, sizeof errstr);
    if (mock_consumer_ == NULL) rd_kafka_conf_destroy(conf);
    return mock_consumer_;
}

/* Messages the cluster holds for topic (its high watermark: the topic is fresh per test and the
 * producer idempotent, so this is exactly the number of messages written). -1 on error. */
static inline int64_t mock_topic_count(const mock_kafka_t *m, const char *topic)
{
    rd_kafka_t *rk = mock_consumer(m);
    if (rk == NULL) return -1;
    int64_t lo = 0, hi = -1;
    if (rd_kafka_query_watermark_offsets(rk, topic, 0, &lo, &hi, MOCK_WAIT_MS) !=
        RD_KAFKA_RESP_ERR_NO_ERROR)
        hi = -1;
    return hi;
}

static inline char *mock_dup(const void *p, size_t n)
{
    char *s = malloc(n + 1);
    if (s == NULL) abort();
    if (n > 0) memcpy(s, p, n);
    s[n] = '\0';
    return s;
}

/* Reads topic from the beginning until `want` messages arrived or MOCK_WAIT_MS passed; copies
 * them, in partition order, into out[0..cap). Returns how many were read. */
static inline size_t mock_consume(const mock_kafka_t *m, const char *topic, size_t want,
                                  mock_msg_t *out, size_t cap)
{
    rd_kafka_t *rk = mock_consumer(m);
    if (rk == NULL) return 0;
    rd_kafka_topic_t *rkt = rd_kafka_topic_new(rk, topic, NULL);
    size_t got = 0;
    if (rkt != NULL && rd_kafka_consume_start(rkt, 0, RD_KAFKA_OFFSET_BEGINNING) == 0) {
        int64_t deadline = base_mono_ms() + MOCK_WAIT_MS;
        while (got < want && got < cap && base_mono_ms() < deadline) {
            rd_kafka_message_t *msg = rd_kafka_consume(rkt, 0, 50);
            if (msg == NULL) continue;
            if (msg->err != RD_KAFKA_RESP_ERR_NO_ERROR) {
                rd_kafka_message_destroy(msg);
                continue;
            }
            mock_msg_t *o = &out[got++];
            memset(o, 0, sizeof *o);
            o->key = msg->key != NULL ? mock_dup(msg->key, msg->key_len) : NULL;
            o->keylen = msg->key != NULL ? msg->key_len : 0;
            o->value = mock_dup(msg->payload, msg->len);
            o->vallen = msg->len;
            rd_kafka_timestamp_type_t tstype;
            o->ts_ms = rd_kafka_message_timestamp(msg, &tstype);
            rd_kafka_headers_t *hdrs = NULL;
            if (rd_kafka_message_headers(msg, &hdrs) == RD_KAFKA_RESP_ERR_NO_ERROR) {
                const char *name;
                const void *val;
                size_t vlen;
                for (size_t i = 0; o->nheaders < MOCK_MAX_HEADERS &&
                                   rd_kafka_header_get_all(hdrs, i, &name, &val, &vlen) ==
                                       RD_KAFKA_RESP_ERR_NO_ERROR;
                     i++) {
                    o->hname[o->nheaders] = mock_dup(name, strlen(name));
                    o->hval[o->nheaders] = mock_dup(val, vlen);
                    o->nheaders++;
                }
            }
            rd_kafka_message_destroy(msg);
        }
        rd_kafka_consume_stop(rkt, 0);
    }
    if (rkt != NULL) rd_kafka_topic_destroy(rkt);
    return got;
}

/* The value of header name (NUL-terminated), or NULL. */
static inline const char *mock_header(const mock_msg_t *msg, const char *name)
{
    for (size_t i = 0; i < msg->nheaders; i++)
        if (strcmp(msg->hname[i], name) == 0) return msg->hval[i];
    return NULL;
}

static inline void mock_msgs_free(mock_msg_t *msgs, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        free(msgs[i].key);
        free(msgs[i].value);
        for (size_t h = 0; h < msgs[i].nheaders; h++) {
            free(msgs[i].hname[h]);
            free(msgs[i].hval[h]);
        }
    }
}

#endif
