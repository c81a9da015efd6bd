/* mock_cluster.c — the one mock-Kafka helper (contract in mock_cluster.h). */
#include "mock_cluster.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "base.h"

/* ---- layer 1 --------------------------------------------------------------------------------- */

static void quiet_log_cb(const rd_kafka_t *rk, int level, const char *fac, const char *buf)
{
    (void)rk;
    (void)level;
    (void)fac;
    (void)buf;
}

int mock_cluster_start(mock_cluster_t *c, int brokers, bool quiet, char *err, size_t errlen)
{
    memset(c, 0, sizeof *c);
    char errstr[512];
    rd_kafka_conf_t *conf = rd_kafka_conf_new();
    if (quiet) {
        rd_kafka_conf_set_log_cb(conf, quiet_log_cb);
    } else if (rd_kafka_conf_set(conf, "log_level", "3", errstr, sizeof errstr) !=
               RD_KAFKA_CONF_OK) {
        snprintf(err, errlen, "conf: %s", errstr);
        rd_kafka_conf_destroy(conf);
        return -1;
    }
    c->owner = rd_kafka_new(RD_KAFKA_PRODUCER, conf, errstr, sizeof errstr);
    if (c->owner == NULL) {
        snprintf(err, errlen, "rd_kafka_new: %s", errstr);
        rd_kafka_conf_destroy(conf);
        return -1;
    }
    c->mc = rd_kafka_mock_cluster_new(c->owner, brokers);
    if (c->mc == NULL) {
        snprintf(err, errlen, "rd_kafka_mock_cluster_new failed");
        rd_kafka_destroy(c->owner);
        c->owner = NULL;
        return -1;
    }
    snprintf(c->bootstrap, sizeof c->bootstrap, "%s", rd_kafka_mock_cluster_bootstraps(c->mc));
    return 0;
}

int mock_cluster_topic(mock_cluster_t *c, const char *topic, int partitions, int replication,
                       char *err, size_t errlen)
{
    rd_kafka_resp_err_t e = rd_kafka_mock_topic_create(c->mc, topic, partitions, replication);
    if (e == RD_KAFKA_RESP_ERR_NO_ERROR) return 0;
    snprintf(err, errlen, "topic %s: %s", topic, rd_kafka_err2str(e));
    return -1;
}

int mock_parse_int(const char *s, int lo, int hi, int *out)
{
    char *end;
    long v = strtol(s, &end, 10);
    if (end == s || *end != '\0' || v < lo || v > hi) return -1;
    *out = (int)v;
    return 0;
}

int mock_cluster_command(mock_cluster_t *c, char *line, char *ans, size_t anslen)
{
    char *save = NULL;
    char *verb = strtok_r(line, " \t\r\n", &save);
    char *a1 = strtok_r(NULL, " \t\r\n", &save);
    char *a2 = strtok_r(NULL, " \t\r\n", &save);
    if (verb == NULL) {
        snprintf(ans, anslen, "error: empty command");
        return 0;
    }
    if (strcmp(verb, "quit") == 0) {
        snprintf(ans, anslen, "ok");
        return 1;
    }
    int id = 0, ms = 0;
    if (strcmp(verb, "topic") == 0) {
        /* "topic NAME PARTITIONS": a topic of its own partition count (the mock has no
         * compaction: a changelog topic is an ordinary one) */
        int parts = 0;
        char e[256];
        if (a1 == NULL || a2 == NULL || mock_parse_int(a2, 1, 256, &parts) != 0) {
            snprintf(ans, anslen, "error: topic NAME PARTITIONS");
            return 0;
        }
        if (mock_cluster_topic(c, a1, parts, 1, e, sizeof e) != 0)
            snprintf(ans, anslen, "error: %s", e);
        else
            snprintf(ans, anslen, "ok");
        return 0;
    }
    if (a1 == NULL || mock_parse_int(a1, -1, 1000, &id) != 0) {
        snprintf(ans, anslen, "error: broker id expected");
        return 0;
    }
    rd_kafka_resp_err_t err;
    if (strcmp(verb, "down") == 0) {
        err = rd_kafka_mock_broker_set_down(c->mc, id);
    } else if (strcmp(verb, "up") == 0) {
        err = rd_kafka_mock_broker_set_up(c->mc, id);
    } else if (strcmp(verb, "rtt") == 0) {
        if (a2 == NULL || mock_parse_int(a2, 0, 600000, &ms) != 0) {
            snprintf(ans, anslen, "error: rtt ID MS");
            return 0;
        }
        err = rd_kafka_mock_broker_set_rtt(c->mc, id, ms);
    } else {
        snprintf(ans, anslen, "error: unknown command %s", verb);
        return 0;
    }
    if (err)
        snprintf(ans, anslen, "error: %s", rd_kafka_err2str(err));
    else
        snprintf(ans, anslen, "ok");
    return 0;
}

void mock_cluster_stop(mock_cluster_t *c)
{
    if (c->mc != NULL) rd_kafka_mock_cluster_destroy(c->mc);
    if (c->owner != NULL) rd_kafka_destroy(c->owner);
    c->mc = NULL;
    c->owner = NULL;
}

/* ---- layer 2: one cluster and one consumer per test program ---------------------------------- */

static mock_cluster_t shared_;
static rd_kafka_t *consumer_; /* one per program too: destroying a handle can take a second */
static int seq_;

int mock_kafka_start(mock_kafka_t *m)
{
    memset(m, 0, sizeof *m);
    char err[512];
    if (shared_.mc == NULL && mock_cluster_start(&shared_, 1, true, err, sizeof err) != 0) {
        fprintf(stderr, "mock_kafka_start: %s\n", err);
        return -1;
    }
    m->mc = shared_.mc;
    m->bootstrap = shared_.bootstrap;
    int n = ++seq_;
    snprintf(m->events, sizeof m->events, "events_%d", n);
    snprintf(m->rejected, sizeof m->rejected, "rejected_%d", n);
    snprintf(m->pql, sizeof m->pql, "pql_%d", n);
    const char *const topics[] = {m->events, m->rejected, m->pql};
    for (size_t i = 0; i < 3; i++)
        if (mock_cluster_topic(&shared_, topics[i], 1, 1, err, sizeof err) != 0) {
            fprintf(stderr, "mock_kafka_start: %s\n", err);
            return -1;
        }
    return 0;
}

void mock_kafka_stop(mock_kafka_t *m)
{
    if (m->mc == NULL) return;
    rd_kafka_mock_broker_set_up(m->mc, 1);
    rd_kafka_mock_broker_set_rtt(m->mc, 1, 0);
    m->mc = NULL;
}

int mock_kafka_group_teardown(void **state)
{
    (void)state;
    if (consumer_ != NULL) rd_kafka_destroy(consumer_);
    consumer_ = NULL;
    mock_cluster_stop(&shared_);
    return rd_kafka_wait_destroyed(5000) == 0 ? 0 : -1;
}

static rd_kafka_t *consumer(const mock_kafka_t *m)
{
    if (consumer_ != NULL) return consumer_;
    char errstr[256];
    rd_kafka_conf_t *conf = rd_kafka_conf_new();
    if (rd_kafka_conf_set(conf, "bootstrap.servers", m->bootstrap, errstr, sizeof errstr) !=
        RD_KAFKA_CONF_OK) {
        rd_kafka_conf_destroy(conf);
        return NULL;
    }
    rd_kafka_conf_set_log_cb(conf, quiet_log_cb);
    consumer_ = rd_kafka_new(RD_KAFKA_CONSUMER, conf, errstr, sizeof errstr);
    if (consumer_ == NULL) rd_kafka_conf_destroy(conf);
    return consumer_;
}

int64_t mock_topic_count(const mock_kafka_t *m, const char *topic)
{
    rd_kafka_t *rk = consumer(m);
    if (rk == NULL) return -1;
    int64_t lo = 0, hi = -1;
    if (rd_kafka_query_watermark_offsets(rk, topic, 0, &lo, &hi, MOCK_WAIT_MS) !=
        RD_KAFKA_RESP_ERR_NO_ERROR)
        hi = -1;
    return hi;
}

int mock_consume(const mock_kafka_t *m, const char *topic, size_t want, sup_kmsgs_t *out)
{
    rd_kafka_t *rk = consumer(m);
    if (rk == NULL) {
        memset(out, 0, sizeof *out);
        return -1;
    }
    return sup_kafka_read(rk, topic, want, MOCK_WAIT_MS, out);
}
