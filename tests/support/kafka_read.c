/* kafka_read.c — the tests' one Kafka read-back consumer (contract in kafka_read.h). */
#include "kafka_read.h"

#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "base.h"

/* Reading may run this long past the caller's deadline: the watermarks were seen, the messages
 * are there, only fetching them is left. */
#define READ_GRACE_MS 5000

static void fail(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void fail(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fputs("kafka_read: ", stderr);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
}

static int remaining_ms(int64_t deadline)
{
    int64_t r = deadline - base_mono_ms();
    return r < 0 ? 0 : (int)r;
}

static int partition_count(rd_kafka_t *rk, rd_kafka_topic_t *rkt, int64_t deadline)
{
    int n = -1;
    while (n <= 0 && base_mono_ms() < deadline) {
        const struct rd_kafka_metadata *md = NULL;
        int wait = remaining_ms(deadline) > 2000 ? 2000 : remaining_ms(deadline) + 1;
        if (rd_kafka_metadata(rk, 0, rkt, &md, wait) == RD_KAFKA_RESP_ERR_NO_ERROR && md) {
            if (md->topic_cnt == 1 && md->topics[0].err == RD_KAFKA_RESP_ERR_NO_ERROR)
                n = md->topics[0].partition_cnt;
            rd_kafka_metadata_destroy(md);
        }
        if (n <= 0) base_sleep_ms(50);
    }
    return n;
}

static char *dup_bytes(const void *p, size_t n)
{
    char *d = malloc(n + 1);
    if (!d) return NULL;
    if (n) memcpy(d, p, n);
    d[n] = '\0';
    return d;
}

static int store_msg(sup_kmsgs_t *out, size_t cap, const rd_kafka_message_t *m)
{
    if (out->n >= cap) return -1;
    sup_kmsg_t *k = &out->msgs[out->n];
    memset(k, 0, sizeof *k);
    k->partition = m->partition;
    k->offset = m->offset;
    rd_kafka_timestamp_type_t tstype;
    k->ts_ms = rd_kafka_message_timestamp(m, &tstype);
    if (m->key) {
        k->key = dup_bytes(m->key, m->key_len);
        k->key_len = m->key_len;
    }
    k->value = dup_bytes(m->payload ? m->payload : "", m->len);
    k->value_len = m->len;
    rd_kafka_headers_t *hdrs = NULL;
    if (rd_kafka_message_headers(m, &hdrs) == RD_KAFKA_RESP_ERR_NO_ERROR && hdrs) {
        size_t n = rd_kafka_header_cnt(hdrs);
        k->headers = calloc(n ? n : 1, sizeof *k->headers);
        for (size_t i = 0; k->headers && i < n; i++) {
            const char *name;
            const void *val;
            size_t len;
            if (rd_kafka_header_get_all(hdrs, i, &name, &val, &len) != 0) break;
            k->headers[i].name = dup_bytes(name, strlen(name));
            k->headers[i].value = dup_bytes(val ? val : "", val ? len : 0);
            k->headers[i].len = val ? len : 0;
            k->n_headers = i + 1;
        }
    }
    out->n++;
    return 0;
}

/* Reads partition p of rkt from offset lo up to (not including) hi into out. 0 or -1. */
static int read_partition(rd_kafka_topic_t *rkt, int32_t p, int64_t lo, int64_t hi,
                          int64_t deadline, sup_kmsgs_t *out, size_t cap)
{
    const char *topic = rd_kafka_topic_name(rkt);
    if (rd_kafka_consume_start(rkt, p, lo) != 0) {
        fail("topic %s [%d]: consume_start: %s", topic, (int)p,
             rd_kafka_err2str(rd_kafka_last_error()));
        return -1;
    }
    int rc = 0;
    int64_t next = lo;
    while (next < hi) {
        if (base_mono_ms() >= deadline) {
            fail("topic %s [%d]: read to offset %lld of %lld before the deadline", topic, (int)p,
                 (long long)next, (long long)hi);
            rc = -1;
            break;
        }
        rd_kafka_message_t *m = rd_kafka_consume(rkt, p, 100);
        if (!m) continue;
        if (m->err == RD_KAFKA_RESP_ERR_NO_ERROR) {
            if (m->offset >= next && m->offset < hi) {
                if (store_msg(out, cap, m) != 0) {
                    rd_kafka_message_destroy(m);
                    rc = -1;
                    break;
                }
                next = m->offset + 1;
            }
        } else if (m->err != RD_KAFKA_RESP_ERR__PARTITION_EOF) {
            fail("topic %s [%d]: consume error: %s", topic, (int)p, rd_kafka_message_errstr(m));
        }
        rd_kafka_message_destroy(m);
    }
    rd_kafka_consume_stop(rkt, p);
    return rc;
}

int sup_kafka_read(rd_kafka_t *rk, const char *topic, size_t min_count, int timeout_ms,
                   sup_kmsgs_t *out)
{
    memset(out, 0, sizeof *out);
    int64_t deadline = base_mono_ms() + timeout_ms;
    rd_kafka_topic_t *rkt = rd_kafka_topic_new(rk, topic, NULL);
    if (!rkt) {
        fail("topic %s: %s", topic, rd_kafka_err2str(rd_kafka_last_error()));
        return -1;
    }
    int rc = -1;
    int64_t *lo = NULL, *hi = NULL;
    int np = partition_count(rk, rkt, deadline);
    if (np <= 0) {
        fail("topic %s: no partitions seen", topic);
        goto out;
    }
    lo = calloc((size_t)np, sizeof *lo);
    hi = calloc((size_t)np, sizeof *hi);
    if (!lo || !hi) goto out;

    /* Wait for the topic to hold at least min_count messages, then read exactly what it holds. */
    int64_t total = 0;
    for (;;) {
        total = 0;
        bool ok = true;
        for (int p = 0; p < np; p++) {
            if (rd_kafka_query_watermark_offsets(rk, topic, p, &lo[p], &hi[p], 2000) !=
                RD_KAFKA_RESP_ERR_NO_ERROR) {
                ok = false;
                break;
            }
            total += hi[p] - lo[p];
        }
        if (ok && total >= (int64_t)min_count) break;
        if (base_mono_ms() >= deadline) {
            if (!ok) {
                fail("topic %s: watermarks unavailable", topic);
                goto out;
            }
            break;
        }
        base_sleep_ms(50);
    }
    if (total > SUP_KMSGS_MAX) {
        fail("topic %s holds %lld messages, more than the test reader's cap", topic,
             (long long)total);
        goto out;
    }
    out->msgs = calloc(total ? (size_t)total : 1, sizeof *out->msgs);
    if (!out->msgs) goto out;
    rc = 0;
    for (int p = 0; p < np && rc == 0; p++)
        if (hi[p] > lo[p])
            rc = read_partition(rkt, p, lo[p], hi[p], deadline + READ_GRACE_MS, out, (size_t)total);
out:
    free(lo);
    free(hi);
    rd_kafka_topic_destroy(rkt);
    return rc;
}

void sup_kmsgs_free(sup_kmsgs_t *m)
{
    for (size_t i = 0; i < m->n; i++) {
        sup_kmsg_t *k = &m->msgs[i];
        free(k->key);
        free(k->value);
        for (size_t h = 0; h < k->n_headers; h++) {
            free(k->headers[h].name);
            free(k->headers[h].value);
        }
        free(k->headers);
    }
    free(m->msgs);
    memset(m, 0, sizeof *m);
}

const char *sup_kmsg_header(const sup_kmsg_t *m, const char *name)
{
    for (size_t i = 0; i < m->n_headers; i++)
        if (m->headers[i].name && strcmp(m->headers[i].name, name) == 0) return m->headers[i].value;
    return NULL;
}
