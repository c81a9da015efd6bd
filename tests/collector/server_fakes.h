/*
 * server_fakes.h — test doubles for the modules the server code calls but these unit tests do
 * not exercise: the Kafka producer, metrics, logs and the account map. Included by the server
 * unit tests (test_ingest.c, test_http_conn.c) next to the .c files under test, so those are
 * linked against these instead of the real modules.
 *
 * The fake producer records every message and completes a group at seal time; with
 * fake_kafka.fail_deliveries set, every message of the group is reported failed, and with
 * fake_kafka.refuse_after >= 0, produce calls beyond that many answer KAFKA_E_QUEUE_FULL.
 */
#ifndef SLUICE_TEST_SERVER_FAKES_H
#define SLUICE_TEST_SERVER_FAKES_H

#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "accounts.h"
#include "kafka_out.h"
#include "log.h"
#include "metrics.h"

#define FAKE_MAX_MSGS 4096

typedef struct fake_msg {
    int topic;
    char key[256];
    size_t keylen;
    char *value;
    size_t vallen;
    size_t nheaders;
    char hname[4][32];
    char hval[4][128];
    size_t hlen[4];
} fake_msg_t;

static struct {
    /* Scalars are atomic: tests flip them from a client thread while a loop thread reads. */
    fake_msg_t msgs[FAKE_MAX_MSGS];
    atomic_size_t n;
    atomic_int fail_deliveries;
    atomic_long refuse_after; /* -1: never */
    atomic_int ready;
    atomic_int defer; /* seal does not complete: fake_complete_deferred() does, later */
    kafka_group_t *deferred[64];
    atomic_size_t n_deferred;
} fake_kafka = {.refuse_after = -1, .ready = 1};

static _Atomic uint64_t fake_metrics[METRIC_COUNT_];
static _Atomic uint64_t fake_status[600];
static _Atomic uint64_t fake_rejected;

static void fake_reset(void)
{
    for (size_t i = 0; i < fake_kafka.n; i++)
        free(fake_kafka.msgs[i].value);
    fake_kafka.n = 0;
    fake_kafka.fail_deliveries = 0;
    fake_kafka.refuse_after = -1;
    fake_kafka.ready = 1;
    fake_kafka.defer = 0;
    fake_kafka.n_deferred = 0;
    for (size_t i = 0; i < METRIC_COUNT_; i++)
        atomic_store(&fake_metrics[i], 0);
    for (size_t i = 0; i < 600; i++)
        atomic_store(&fake_status[i], 0);
    fake_rejected = 0;
}

const char *kafka_strerror(int err)
{
    return err == 0 ? "ok" : "fake kafka error";
}

void kafka_group_init(kafka_group_t *g, kafka_group_done_cb done_cb, void *ud)
{
    atomic_init(&g->pending, 1u);
    atomic_init(&g->failed, 0u);
    atomic_init(&g->delivered, 0u);
    atomic_init(&g->first_err, 0);
    g->done_cb = done_cb;
    g->ud = ud;
}

int kafka_out_produce(kafka_out_t *ko, kafka_topic_t topic, const void *key, size_t keylen,
                      const void *value, size_t vallen, const kafka_header_t *headers,
                      size_t nheaders, kafka_group_t *g)
{
    (void)ko;
    if (fake_kafka.refuse_after >= 0 && (long)fake_kafka.n >= fake_kafka.refuse_after)
        return KAFKA_E_QUEUE_FULL;
    if (fake_kafka.n >= FAKE_MAX_MSGS) return KAFKA_E_QUEUE_FULL;
    fake_msg_t *m = &fake_kafka.msgs[atomic_load(&fake_kafka.n)];
    memset(m, 0, sizeof *m);
    m->topic = (int)topic;
    m->keylen = keylen < sizeof m->key ? keylen : sizeof m->key;
    if (key != NULL) memcpy(m->key, key, m->keylen);
    m->value = malloc(vallen + 1);
    memcpy(m->value, value, vallen);
    m->value[vallen] = '\0';
    m->vallen = vallen;
    m->nheaders = nheaders < 4 ? nheaders : 4;
    for (size_t i = 0; i < m->nheaders; i++) {
        strncpy(m->hname[i], headers[i].name, sizeof m->hname[i] - 1);
        m->hlen[i] =
            headers[i].len < sizeof m->hval[i] - 1 ? headers[i].len : sizeof m->hval[i] - 1;
        memcpy(m->hval[i], headers[i].value, m->hlen[i]);
    }
    atomic_fetch_add(&fake_kafka.n, 1); /* publishes *m */
    atomic_fetch_add(&g->pending, 1u);
    /* Reported at once: the delivery outcome is decided by fail_deliveries. */
    if (fake_kafka.fail_deliveries) {
        atomic_fetch_add(&g->failed, 1u);
        int zero = 0;
        atomic_compare_exchange_strong(&g->first_err, &zero, -192);
    } else {
        atomic_fetch_add(&g->delivered, 1u);
    }
    atomic_fetch_sub(&g->pending, 1u);
    return KAFKA_OK;
}

void kafka_group_seal(kafka_group_t *g)
{
    size_t nd = atomic_load(&fake_kafka.n_deferred);
    if (fake_kafka.defer && nd < 64) {
        fake_kafka.deferred[nd] = g;
        atomic_store(&fake_kafka.n_deferred, nd + 1); /* publishes the slot */
        return;
    }
    if (atomic_fetch_sub(&g->pending, 1u) == 1u) g->done_cb(g);
}

/* Plays the Kafka poll thread: reports every deferred group (from whatever thread calls it). */
static inline void fake_complete_deferred(void)
{
    size_t nd = atomic_load(&fake_kafka.n_deferred);
    for (size_t i = 0; i < nd; i++) {
        kafka_group_t *g = fake_kafka.deferred[i];
        if (atomic_fetch_sub(&g->pending, 1u) == 1u) g->done_cb(g);
    }
    fake_kafka.n_deferred = 0;
}

bool kafka_out_ready(kafka_out_t *ko, char *why, size_t whylen)
{
    (void)ko;
    if (!fake_kafka.ready) snprintf(why, whylen, "all brokers down");
    return fake_kafka.ready != 0;
}

void metrics_add(metric_id_t id, uint64_t n)
{
    fake_metrics[id] += n;
}

void metrics_http_status(int code)
{
    if (code >= 0 && code < 600) fake_status[code]++;
}

void metrics_rejected(int proto_err)
{
    (void)proto_err;
    fake_rejected++;
    fake_metrics[METRIC_EVENTS_REJECTED]++;
}

void metrics_latency_observe(double seconds)
{
    (void)seconds;
}

int metrics_render(proto_buf_t *out)
{
    static const char text[] = "# fake metrics\nsluice_fake_total 1\n";
    return proto_buf_append(out, text, sizeof text - 1);
}

int metrics_gauge_register(const char *name, const char *help, metrics_gauge_fn fn, void *ud)
{
    (void)name;
    (void)help;
    (void)fn;
    (void)ud;
    return 0;
}

log_level_t log_get_level(void)
{
    return LOG_OFF;
}

void log_emit(log_level_t lvl, const char *msg, size_t nfields, const log_field_t *fields)
{
    (void)lvl;
    (void)msg;
    (void)nfields;
    (void)fields;
}

/* A one-entry account map is enough to see that lookup and learn are wired. */
static struct {
    char user[256], acct[256];
    size_t ulen, alen;
    int learned;
} fake_accounts;

bool accounts_lookup(accounts_t *a, const char *user, size_t ulen, char *out, size_t outcap,
                     size_t *outlen)
{
    (void)a;
    if (!fake_accounts.learned || ulen != fake_accounts.ulen ||
        memcmp(user, fake_accounts.user, ulen) != 0 || fake_accounts.alen > outcap)
        return false;
    memcpy(out, fake_accounts.acct, fake_accounts.alen);
    *outlen = fake_accounts.alen;
    return true;
}

int accounts_learn(accounts_t *a, const char *user, size_t ulen, const char *acct, size_t alen)
{
    (void)a;
    if (ulen == 0 || ulen > 255 || alen == 0 || alen > 255) return -1;
    memcpy(fake_accounts.user, user, ulen);
    fake_accounts.ulen = ulen;
    memcpy(fake_accounts.acct, acct, alen);
    fake_accounts.alen = alen;
    fake_accounts.learned = 1;
    return 0;
}

#endif
