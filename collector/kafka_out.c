/*
 * kafka_out.c — the Kafka producer (contract in kafka_out.h).
 *
 * Threads and what they touch:
 *  - any thread: kafka_out_produce(), kafka_group_seal(), kafka_out_ready(),
 *    kafka_out_queue_len(). They use thread-safe librdkafka calls, atomics, and the read side
 *    of ko->lock (produce: its own reader slots, kafka_reader_enter), never waited on except
 *    during the microseconds of a producer swap.
 *  - the poll thread (one per kafka_out_t): rd_kafka_poll() serves dr_cb and error_cb, so
 *    every delivery report, every health change and every done_cb (except a seal that finds
 *    the group already complete) happens here. While Kafka looks unhealthy it also probes
 *    the cluster with a bounded metadata request, so readiness recovers even when no
 *    traffic arrives to prove it (a load balancer that sees 503 sends none).
 *  - librdkafka's own threads: log_cb only (rate-limited, lock-free).
 *  - main: kafka_out_new(), kafka_out_flush(), kafka_out_free().
 *
 * Health model (what /readyz says): librdkafka reports broker trouble through error_cb:
 * __TRANSPORT for one broker connection, __ALL_BROKERS_DOWN when none is up, __FATAL when the
 * idempotent producer can no longer guarantee its promises. None of these has an "up again"
 * counterpart, so recovery is inferred from a successful delivery report or a successful
 * probe: a metadata answer in which every partition of the events topic has a leader.
 * A fatal error is permanent for an rd_kafka_t, so the poll thread replaces the producer
 * (kafka_recreate_delay_ms later): librdkafka 2.0.2 can raise one after an ordinary broker
 * outage (out-of-order sequence after a possibly-persisted timeout, librdkafka#4438), and a
 * collector that needs a restart after every Kafka blip would break the durability story.
 *
 * Idempotent producer and message timeouts (librdkafka 2.0.2; each point pinned by a test in
 * tests/collector/test_kafka_out.c against the mock cluster):
 *  - message.timeout.ms = delivery_timeout_ms bounds every message: its report arrives by
 *    then, as __MSG_TIMED_OUT at worst, so a request's group always completes in bounded time.
 *  - Timed out while queued (broker down, never sent): status NOT_PERSISTED. librdkafka drains
 *    the partition, bumps the epoch and skips the gap; no fatal error, the producer stays
 *    usable, and the client's retry after the 503 is written exactly once.
 *  - Timed out in flight (broker too slow to answer): status POSSIBLY_PERSISTED, and the mock
 *    broker did write them; the retry then writes them a second time. Delivery is therefore
 *    at-least-once across a 503, and the message-id header is what lets a consumer drop the
 *    copy. Still no fatal error: the producer keeps delivering.
 *  - Fatal errors remain possible (librdkafka#4438, fixed in 2.3.0: out-of-order sequence
 *    after a possibly-persisted failure); hence the producer replacement above.
 *
 * Embedded mode keeps messages in the mock cluster's memory, which librdkafka bounds per
 * partition (oldest message sets dropped beyond ~5 MiB or 100k sets), so it cannot grow
 * without limit; consumers that fall further behind than that lose the oldest data.
 *
 * Producer lanes (kafka.producers, issue 12 item 7). librdkafka 2.0.2 sends one ProduceRequest
 * per partition, and an idempotent producer keeps at most 5 requests in flight per broker
 * connection (max.in.flight.requests.per.connection <= 5). A partition is therefore served once
 * per (partitions led by the broker / 5) round trips: 64 partitions at a 500 ms RTT wait 6.4 s
 * for their turn, beyond the 5 s message timeout, so every request timed out (503) whatever the
 * event rate — measured: exactly 10 ProduceRequests/s, 0 answers 200 in 10 s. More in flight
 * needs more connections, so the collector runs N producers ("lanes"), each with its own
 * connection per broker: a keyed events or identities message goes to the lane owning its
 * partition (partition % N, the partition computed with the partitioner librdkafka is
 * configured with), so each partition is written by one producer (its idempotent sequence
 * stays valid) and a key's messages keep their order. The identities topic is routed too: it
 * carries one link per group event, and through lane 0 alone its partitions waited their turn
 * like the events' did (measured: 794 of 800 answers 503 at 64 partitions and a 500 ms RTT).
 * Its partitions are dealt from the last lane down (events from lane 0 up), so the two topics
 * share a producer only when their partitions outnumber the lanes (see kafka_route).
 * Both partition counts are read before kafka_out_new returns (bounded by
 * KAFKA_PARTS_TIMEOUT_MS), so the first requests are routed too. Rejected and PQL messages
 * (low volume), keyless messages, a non-keyed partitioner, and messages produced while a
 * topic's partition count is unknown go through lane 0 with librdkafka's own partitioning. Each
 * lane has 1/N of the queue caps and its own poll thread. "All brokers down" is tracked per lane
 * (Kafka counts as down while any lane is: a late success report of one producer must not hide the
 * outage another reported), cleared by that lane's next delivery or by lane 0's probe; "deliveries
 * failing" is shared; a fatal error replaces only the lane it hit (the collector reports "down"
 * until then).
 *
 * Queue accounting: librdkafka enforces queue.buffering.max.kbytes itself (produce answers
 * __QUEUE_FULL); the byte count kept here (key + value of every message not yet reported)
 * only feeds readiness (not ready at 90%) and the queue gauges.
 */
#include "kafka_out.h"

#include <inttypes.h>
#include <limits.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <librdkafka/rdkafka.h>
#include <librdkafka/rdkafka_mock.h>

#include "base.h"
#include "log.h"
#include "metrics.h"

#define KAFKA_NTOPICS KAFKA_TOPIC_COUNT
/* Embedded mode: partitions of each pre-created topic (events, rejected, pql, identities). */
static const int kafka_mock_partitions[KAFKA_NTOPICS] = {4, 1, 1, 1};
/* Producer defaults chosen with loadtest/bench.sh (figures in loadtest/README.md); every one can
 * be overridden through kafka.properties.
 *  - linger.ms 1: a request waits for its slowest message, so linger is a floor under every
 *    answer's latency. At 5 ms the benchmark was latency-bound (the collector's CPU half idle at
 *    ~215k events/s, p50 15 ms); at 1 ms batches still fill at high rates and throughput rose
 *    ~1.8x. At low rates 1 ms costs more CPU per event (smaller produce requests); 0 cost more
 *    than 1 at every rate measured.
 *  - compression.level 1: zstd's default level 3 made compression about 15% of the collector's
 *    CPU, all of it on the single broker thread; on the collector's real records level 1
 *    compresses to the same size for less CPU.
 *  - socket.nagle.disable: produce requests are written as soon as they are ready instead of
 *    waiting for the ACK of the previous segment (the benchmark's p99.9 tail). */
#define KAFKA_DEFAULT_LINGER_MS         "1"
#define KAFKA_DEFAULT_COMPRESSION_LEVEL "1"
/* Reconnect backoff (librdkafka's defaults are 100 ms doubling to 10 s): after an outage the
 * producer tries again within half a second, so the first 200 after the broker returns comes
 * within ~1 s instead of 2-10 s (issue 12). A down broker costs one refused connect per
 * 500 ms. */
#define KAFKA_DEFAULT_RECONNECT_BACKOFF_MS     "50"
#define KAFKA_DEFAULT_RECONNECT_BACKOFF_MAX_MS "500"
/* Message count cap. The byte cap (kafka_queue_bytes) is the real bound; this one only needs
 * to stay out of its way: 10 M messages is more than 256 MiB of the smallest events. */
#define KAFKA_QUEUE_MAX_MESSAGES 10000000u
/* Not ready once the producer queue is this full (percent), so /readyz turns 503 before
 * produce calls start failing with QUEUE_FULL. */
#define KAFKA_READY_QUEUE_PCT 90u
/* Poll interval: the upper bound on how late the poll thread notices the stop flag. */
#define KAFKA_POLL_MS 100
/* While unhealthy: one metadata probe per interval, each bounded by its own timeout. The
 * interval bounds how late "all brokers down" is cleared once they are back: with no traffic
 * getting through (fail-fast 503s, the spool taking events) the probe is what notices. */
#define KAFKA_PROBE_INTERVAL_MS 250
#define KAFKA_PROBE_TIMEOUT_MS  500
/* Lane 0 reads the events topic's partition count (routing to lanes, see above) at start, again
 * every KAFKA_PARTS_REFRESH_MS, and every KAFKA_PROBE_INTERVAL_MS while unknown; each read is
 * bounded by KAFKA_PARTS_TIMEOUT_MS (lane 0's reports wait meanwhile). */
#define KAFKA_PARTS_REFRESH_MS 30000
#define KAFKA_PARTS_TIMEOUT_MS 1000
/* error_cb: a new error code is logged at once, a repeat of the same code at most this often
 * (with the number of repeats suppressed meanwhile). */
#define KAFKA_ERRLOG_REPEAT_MS 30000
/* log_cb (librdkafka's own warnings, any thread): at most one line per interval. */
#define KAFKA_RDLOG_INTERVAL_MS 5000
#define KAFKA_REASON_MAX        256

/* After a fatal error, the producer is replaced by a new one this long after (a rate bound
 * for a fault that keeps recurring). Not const: tests shorten it. */
static int kafka_recreate_delay_ms = 5000;
/* Bound on serving the reports of a replaced producer's purged messages. */
#define KAFKA_DRAIN_MS 2000

/* One producer of the set (see "Producer lanes" above). rk/rkt/fatal_reason are replaced only
 * by the lane's own poll thread (after a fatal error), under the write side of ko->lock; every
 * other thread reads them under the read side. The poll thread reads them without the lock: it is
 * their only writer. */
typedef struct kafka_lane {
    kafka_out_t *ko;
    unsigned index;
    rd_kafka_t *rk;
    rd_kafka_topic_t *rkt[KAFKA_NTOPICS];
    atomic_int fatal; /* rd_kafka_resp_err_t underlying the fatal error, 0 if none */
    char fatal_reason[2 * KAFKA_REASON_MAX];
    /* __ALL_BROKERS_DOWN seen by this producer, no delivery or probe success since. Per lane:
     * a lane's late success report must not hide another lane's outage (each producer raises
     * __ALL_BROKERS_DOWN once per outage). Changed through kafka_lane_down() only. */
    atomic_bool down;

    pthread_t poll_thread;
    bool poll_started;

    /* This lane's poll thread only. */
    int64_t next_probe_ms;
    int64_t next_parts_ms; /* lane 0: next refresh of the events topic's partition count */
    int64_t recreate_at_ms;
    int errlog_code;
    int64_t errlog_last_ms;
    unsigned errlog_suppressed;
} kafka_lane_t;

/* One reader count of the produce path's lock (see kafka_reader_enter), a cache line each. */
typedef struct kafka_slot {
    _Alignas(64) atomic_uint n;
} kafka_slot_t;
#define KAFKA_READER_SLOTS 16

struct kafka_out {
    const config_t *cfg;
    /* The produce path's side of the lock above, without its shared cache line: a producing
     * thread counts itself in its own slot and backs off while a swap is announced; the swap
     * waits for every slot to empty, then takes the write side as before. With
     * pthread_rwlock_rdlock the two loop threads bounced the lock's line between their cores on
     * every message (2% of the collector's CPU, perf, fixed msgpack body). */
    kafka_slot_t readers[KAFKA_READER_SLOTS];
    atomic_uint swapping; /* swaps announced and not finished */
    /* Protects every lane's producer pointers and fatal_reason (see kafka_lane_t). Readers never
     * wait for each other; a writer holds it only for a pointer swap (writer-preferring, so a
     * steady stream of produce calls cannot starve it). */
    pthread_rwlock_t lock;
    bool lock_init;
    kafka_lane_t lane[KAFKA_MAX_PRODUCERS];
    unsigned n_lanes;

    /* Routing of keyed events and identities messages to lanes: the partitioner librdkafka is
     * configured with (NULL: not one we can compute, everything goes through lane 0) and each
     * routed topic's partition count (0 until known: lane 0, partition chosen by librdkafka;
     * other topics stay 0). */
    int32_t (*partitioner)(const rd_kafka_topic_t *, const void *, size_t, int32_t, void *, void *);
    atomic_int partitions[KAFKA_NTOPICS];

    /* Embedded mode: the mock cluster and the client handle that owns it (librdkafka needs an
     * rd_kafka_t for the cluster's bookkeeping; it sends nothing). */
    rd_kafka_t *mock_rk;
    rd_kafka_mock_cluster_t *mcluster;
    char *bootstrap; /* owned copy */

    atomic_bool stop_poll; /* set by kafka_out_free: the poll threads exit */
    atomic_bool stopping;  /* set by kafka_out_free: produce answers E_STOPPED */

    uint64_t queue_cap_bytes;          /* effective queue.buffering.max.kbytes * 1024, all lanes */
    uint64_t queue_cap_msgs;           /* effective queue.buffering.max.messages, all lanes */
    atomic_uint_fast64_t queued_bytes; /* key+value bytes of messages not yet reported */

    /* Health, shared by the lanes. */
    atomic_uint fatal_lanes;     /* lanes whose producer is in a fatal state */
    atomic_uint recreated;       /* producers replaced after a fatal error */
    atomic_uint lanes_down;      /* lanes with __ALL_BROKERS_DOWN seen and no success since */
    atomic_int delivery_failing; /* error of the last failed report, 0 after a success */

    /* log_cb limiter (any librdkafka thread). */
    atomic_int_fast64_t rdlog_last_ms;
    atomic_uint rdlog_suppressed;
};

static const char *const kafka_topic_names[KAFKA_NTOPICS] = {"events", "rejected", "pql",
                                                             "identities"};

const char *kafka_strerror(int err)
{
    switch (err) {
#define KAFKA_X_STR(name, val, msg)                                                                \
    case val:                                                                                      \
        return msg;
        KAFKA_ERRORS(KAFKA_X_STR)
#undef KAFKA_X_STR
    }
    return "unknown Kafka output error";
}

__attribute__((format(printf, 3, 4))) static void kafka_seterr(char *err, size_t errlen,
                                                               const char *fmt, ...)
{
    if (err == NULL || errlen == 0) return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
}

/* kafka.topics.identities; a config_t built by hand (unit tests) may leave it unset. */
static const char *kafka_identities_topic(const config_t *cfg)
{
    return cfg->topic_identities != NULL && cfg->topic_identities[0] ? cfg->topic_identities
                                                                     : "identities";
}

/* ---- delivery groups ------------------------------------------------------------------- */

void kafka_group_init(kafka_group_t *g, kafka_group_done_cb done_cb, void *ud)
{
    atomic_init(&g->pending, 1u);
    atomic_init(&g->failed, 0u);
    atomic_init(&g->delivered, 0u);
    atomic_init(&g->first_err, 0);
    g->done_cb = done_cb;
    g->ud = ud;
    g->ts_ms = base_wall_ms();
}

/* Drops one reference; the last one (the seal or the last report) calls done_cb. The counters
 * are updated before the reference is dropped, so done_cb sees final values. */
static void kafka_group_release(kafka_group_t *g)
{
    if (atomic_fetch_sub(&g->pending, 1u) == 1u && g->done_cb != NULL) g->done_cb(g);
}

void kafka_group_seal(kafka_group_t *g)
{
    kafka_group_release(g);
}

void kafka_group_hold(kafka_group_t *g)
{
    atomic_fetch_add(&g->pending, 1u);
}

void kafka_group_report(kafka_group_t *g, unsigned delivered, unsigned failed, int err)
{
    if (failed > 0) {
        int zero = 0;
        atomic_compare_exchange_strong(&g->first_err, &zero, err != 0 ? err : -1);
        atomic_fetch_add(&g->failed, failed);
    }
    atomic_fetch_add(&g->delivered, delivered);
    kafka_group_release(g);
}

/* ---- librdkafka callbacks -------------------------------------------------------------- */

/* Any thread: marks lane down or up, keeping ko->lanes_down the count of lanes down. */
static void kafka_lane_down(kafka_lane_t *lane, bool down)
{
    if (atomic_exchange(&lane->down, down) == down) return;
    if (down)
        atomic_fetch_add(&lane->ko->lanes_down, 1u);
    else
        atomic_fetch_sub(&lane->ko->lanes_down, 1u);
}

/* A lane's poll thread (or kafka_out_free's thread after the poll threads are gone). Reports of
 * a replaced producer count for their groups and metrics, not for health. */
static void kafka_dr_cb(rd_kafka_t *rk, const rd_kafka_message_t *m, void *opaque)
{
    kafka_lane_t *lane = opaque;
    kafka_out_t *ko = lane->ko;
    kafka_group_t *g = m->_private;
    bool current = rk == lane->rk;

    atomic_fetch_sub(&ko->queued_bytes, (uint_fast64_t)m->len + m->key_len);
    if (m->err == RD_KAFKA_RESP_ERR_NO_ERROR) {
        metrics_add(METRIC_KAFKA_DELIVERED, 1);
        if (current) {
            atomic_store(&ko->delivery_failing, 0);
            kafka_lane_down(lane, false);
        }
        if (g != NULL) atomic_fetch_add(&g->delivered, 1u);
    } else {
        metrics_add(METRIC_KAFKA_ERRORS, 1);
        /* A purge at shutdown says nothing about Kafka's health. */
        if (current && m->err != RD_KAFKA_RESP_ERR__PURGE_QUEUE &&
            m->err != RD_KAFKA_RESP_ERR__PURGE_INFLIGHT)
            atomic_store(&ko->delivery_failing, (int)m->err);
        if (g != NULL) {
            int zero = 0;
            atomic_compare_exchange_strong(&g->first_err, &zero, (int)m->err);
            atomic_fetch_add(&g->failed, 1u);
        }
    }
    if (g != NULL) kafka_group_release(g);
}

/* ---- the produce path's lock ------------------------------------------------------------ */

static atomic_uint kafka_slot_next;
static _Thread_local unsigned kafka_slot_mine = UINT_MAX;

/* Enters the produce path: lane->rk and lane->rkt stay as they are until kafka_reader_exit.
 * Waits only while a swap is announced (a pointer swap, after a fatal error). */
static kafka_slot_t *kafka_reader_enter(kafka_out_t *ko)
{
    if (kafka_slot_mine == UINT_MAX)
        kafka_slot_mine = atomic_fetch_add_explicit(&kafka_slot_next, 1u, memory_order_relaxed) %
                          KAFKA_READER_SLOTS;
    kafka_slot_t *s = &ko->readers[kafka_slot_mine];
    for (;;) {
        atomic_fetch_add(&s->n, 1u);
        if (atomic_load(&ko->swapping) == 0) return s;
        atomic_fetch_sub(&s->n, 1u);
        while (atomic_load(&ko->swapping) != 0)
            sched_yield();
    }
}

static void kafka_reader_exit(kafka_slot_t *s)
{
    atomic_fetch_sub_explicit(&s->n, 1u, memory_order_release);
}

/* A poll thread about to replace lane pointers: announces it, waits until no thread is in the
 * produce path, then takes the write side of ko->lock (the other readers' side). */
static void kafka_swap_begin(kafka_out_t *ko)
{
    atomic_fetch_add(&ko->swapping, 1u);
    for (unsigned i = 0; i < KAFKA_READER_SLOTS; i++)
        while (atomic_load(&ko->readers[i].n) != 0)
            sched_yield();
    pthread_rwlock_wrlock(&ko->lock);
}

static void kafka_swap_end(kafka_out_t *ko)
{
    pthread_rwlock_unlock(&ko->lock);
    atomic_fetch_sub(&ko->swapping, 1u);
}

/* A lane's poll thread. Logs a new error code at once, repeats of the same code at most once per
 * KAFKA_ERRLOG_REPEAT_MS: a broker that stays down must not write a line every second. */
static void kafka_error_cb(rd_kafka_t *rk, int err, const char *reason, void *opaque)
{
    kafka_lane_t *lane = opaque;
    kafka_out_t *ko = lane->ko;

    if (rk != lane->rk) return; /* a replaced producer being drained: its troubles are over */
    if (err == RD_KAFKA_RESP_ERR__FATAL) {
        char buf[KAFKA_REASON_MAX];
        rd_kafka_resp_err_t ferr = rd_kafka_fatal_error(rk, buf, sizeof buf);
        if (atomic_load(&lane->fatal) == 0) {
            pthread_rwlock_wrlock(&ko->lock);
            snprintf(lane->fatal_reason, sizeof lane->fatal_reason, "%s: %s",
                     rd_kafka_err2name(ferr), buf);
            pthread_rwlock_unlock(&ko->lock);
            atomic_store(&lane->fatal, ferr != 0 ? (int)ferr : err);
            atomic_fetch_add(&ko->fatal_lanes, 1u);
            lane->recreate_at_ms = base_mono_ms() + kafka_recreate_delay_ms;
        }
        LOG(LOG_ERROR, "kafka_fatal", LS("error", rd_kafka_err2name(ferr)), LS("reason", buf),
            LI("producer", lane->index), LI("recreate_in_ms", kafka_recreate_delay_ms));
        return;
    }
    if (err == RD_KAFKA_RESP_ERR__ALL_BROKERS_DOWN) kafka_lane_down(lane, true);

    int64_t now = base_mono_ms();
    if (err == lane->errlog_code && now - lane->errlog_last_ms < KAFKA_ERRLOG_REPEAT_MS) {
        lane->errlog_suppressed++;
        return;
    }
    LOG(LOG_WARN, "kafka_error", LS("error", rd_kafka_err2name((rd_kafka_resp_err_t)err)),
        LS("reason", reason), LI("producer", lane->index),
        LI("suppressed", lane->errlog_suppressed));
    lane->errlog_code = err;
    lane->errlog_last_ms = now;
    lane->errlog_suppressed = 0;
}

/* Any librdkafka thread. librdkafka's own lines (syslog levels) become JSON lines: warnings and
 * worse at most once per KAFKA_RDLOG_INTERVAL_MS (error_cb already reports broker trouble),
 * the rest at debug level. */
static void kafka_log_cb(const rd_kafka_t *rk, int level, const char *fac, const char *buf)
{
    kafka_lane_t *lane = rd_kafka_opaque(rk);
    kafka_out_t *ko = lane != NULL ? lane->ko : NULL;

    if (level > 4 || ko == NULL) {
        LOG(LOG_DEBUG, "librdkafka", LS("client", rd_kafka_name(rk)), LS("fac", fac),
            LS("detail", buf));
        return;
    }
    int64_t now = base_mono_ms();
    int_fast64_t last = atomic_load(&ko->rdlog_last_ms);
    if (now - last < KAFKA_RDLOG_INTERVAL_MS ||
        !atomic_compare_exchange_strong(&ko->rdlog_last_ms, &last, now)) {
        atomic_fetch_add(&ko->rdlog_suppressed, 1u);
        return;
    }
    LOG(level <= 3 ? LOG_ERROR : LOG_WARN, "librdkafka", LS("client", rd_kafka_name(rk)),
        LS("fac", fac), LS("detail", buf),
        LI("suppressed", atomic_exchange(&ko->rdlog_suppressed, 0u)));
}

/* ---- health probe and partition count (poll threads) ----------------------------------- */

static bool kafka_unhealthy(kafka_out_t *ko)
{
    return atomic_load(&ko->lanes_down) != 0 || atomic_load(&ko->delivery_failing) != 0;
}

/* Metadata of one topic from lane's producer, bounded by timeout_ms. Returns the partition
 * count (0 when unknown) and sets *all_led when every partition has a leader. */
static int kafka_topic_metadata(kafka_lane_t *lane, kafka_topic_t topic, int timeout_ms,
                                bool *all_led)
{
    const struct rd_kafka_metadata *md = NULL;
    *all_led = false;
    if (rd_kafka_metadata(lane->rk, 0, lane->rkt[topic], &md, timeout_ms) !=
        RD_KAFKA_RESP_ERR_NO_ERROR)
        return 0;
    int n = 0;
    if (md->topic_cnt == 1 && md->topics[0].err == RD_KAFKA_RESP_ERR_NO_ERROR) {
        n = md->topics[0].partition_cnt;
        bool ok = n > 0;
        for (int i = 0; ok && i < n; i++) {
            const rd_kafka_metadata_partition_t *p = &md->topics[0].partitions[i];
            ok = p->err == RD_KAFKA_RESP_ERR_NO_ERROR && p->leader >= 0;
        }
        *all_led = ok;
    }
    rd_kafka_metadata_destroy(md);
    return n > 0 ? n : 0;
}

/* Lane 0 (or the only lane): records a routed topic's partition count n. */
static void kafka_set_partitions(kafka_out_t *ko, kafka_topic_t topic, int n)
{
    if (n <= 0) return;
    int old = atomic_exchange(&ko->partitions[topic], n);
    if (old != n)
        LOG(LOG_INFO, "kafka_partitions", LS("topic", rd_kafka_topic_name(ko->lane[0].rkt[topic])),
            LI("partitions", n), LI("previous", old), LI("producers", ko->n_lanes));
}

/* The topics routed to lanes by partition: events, and identities when links are produced. */
static bool kafka_routed(const kafka_out_t *ko, kafka_topic_t topic)
{
    return topic == KAFKA_TOPIC_EVENTS ||
           (topic == KAFKA_TOPIC_IDENTITIES && ko->cfg->identities_produce);
}

static bool kafka_partitions_known(kafka_out_t *ko)
{
    for (int t = 0; t < KAFKA_NTOPICS; t++)
        if (kafka_routed(ko, (kafka_topic_t)t) && atomic_load(&ko->partitions[t]) <= 0)
            return false;
    return true;
}

/* Lane 0: reads the partition count of every routed topic, or (while some are unknown) of the
 * unknown ones only, within one budget of timeout_ms; then schedules the next read. */
static void kafka_read_partitions(kafka_out_t *ko, int timeout_ms)
{
    kafka_lane_t *lane = &ko->lane[0];
    bool refresh = kafka_partitions_known(ko);
    int64_t deadline = base_mono_ms() + timeout_ms;
    for (int t = 0; t < KAFKA_NTOPICS; t++) {
        if (!kafka_routed(ko, (kafka_topic_t)t)) continue;
        if (!refresh && atomic_load(&ko->partitions[t]) > 0) continue;
        int64_t left = deadline - base_mono_ms();
        if (left <= 0) break;
        bool led = false;
        kafka_set_partitions(ko, (kafka_topic_t)t,
                             kafka_topic_metadata(lane, (kafka_topic_t)t, (int)left, &led));
    }
    lane->next_parts_ms = base_mono_ms() + (kafka_partitions_known(ko) ? KAFKA_PARTS_REFRESH_MS
                                                                       : KAFKA_PROBE_INTERVAL_MS);
}

static int kafka_new_producer(kafka_lane_t *lane, rd_kafka_t **rkp, rd_kafka_topic_t **rkt,
                              char *err, size_t errlen);
static void kafka_destroy_producer(rd_kafka_t *rk, rd_kafka_topic_t **rkt);

/* The lane's poll thread, after a fatal error: a new producer takes over; the old one's queued
 * messages are purged (their groups complete with failures, so requests answer 503 and clients
 * retry) and it is destroyed. On failure the old one stays and the attempt is repeated later. */
static void kafka_recreate(kafka_lane_t *lane)
{
    kafka_out_t *ko = lane->ko;
    char err[512];
    rd_kafka_t *rk = NULL;
    rd_kafka_topic_t *rkt[KAFKA_NTOPICS] = {NULL};
    if (kafka_new_producer(lane, &rk, rkt, err, sizeof err) != KAFKA_OK) {
        LOG(LOG_ERROR, "kafka_recreate_failed", LS("reason", err), LI("producer", lane->index));
        lane->recreate_at_ms = base_mono_ms() + kafka_recreate_delay_ms;
        return;
    }
    rd_kafka_t *old = lane->rk;
    rd_kafka_topic_t *oldt[KAFKA_NTOPICS];
    kafka_swap_begin(ko);
    memcpy(oldt, lane->rkt, sizeof oldt);
    lane->rk = rk;
    memcpy(lane->rkt, rkt, sizeof rkt);
    lane->fatal_reason[0] = '\0';
    atomic_store(&lane->fatal, 0);
    kafka_swap_end(ko);
    atomic_fetch_sub(&ko->fatal_lanes, 1u);
    atomic_fetch_add(&ko->recreated, 1u);

    rd_kafka_purge(old, RD_KAFKA_PURGE_F_QUEUE | RD_KAFKA_PURGE_F_INFLIGHT);
    int64_t deadline = base_mono_ms() + KAFKA_DRAIN_MS;
    while (rd_kafka_outq_len(old) > 0 && base_mono_ms() < deadline)
        rd_kafka_poll(old, 10);
    /* Not expected (purged messages report at once), but if it happens those groups never
     * complete: say so loudly. */
    if (rd_kafka_outq_len(old) > 0)
        LOG(LOG_ERROR, "kafka_reports_lost", LI("messages", rd_kafka_outq_len(old)));
    kafka_destroy_producer(old, oldt);
    LOG(LOG_WARN, "kafka_producer_recreated", LS("client", rd_kafka_name(rk)),
        LI("producer", lane->index));
}

static void *kafka_poll_main(void *arg)
{
    kafka_lane_t *lane = arg;
    kafka_out_t *ko = lane->ko;
    while (!atomic_load(&ko->stop_poll)) {
        rd_kafka_poll(lane->rk, KAFKA_POLL_MS);
        if (atomic_load(&lane->fatal) != 0) {
            if (base_mono_ms() >= lane->recreate_at_ms) kafka_recreate(lane);
            continue;
        }
        int64_t now = base_mono_ms();
        bool probe = lane->index == 0 && kafka_unhealthy(ko) && now >= lane->next_probe_ms;
        bool parts = lane->index == 0 && ko->n_lanes > 1 && now >= lane->next_parts_ms;
        if (!probe && !parts) continue;
        /* Lane 0 alone probes (health is shared) and keeps the partition counts current. */
        bool led = false;
        if (probe)
            kafka_set_partitions(
                ko, KAFKA_TOPIC_EVENTS,
                kafka_topic_metadata(lane, KAFKA_TOPIC_EVENTS, KAFKA_PROBE_TIMEOUT_MS, &led));
        if (parts)
            kafka_read_partitions(ko, probe ? KAFKA_PROBE_TIMEOUT_MS : KAFKA_PARTS_TIMEOUT_MS);
        now = base_mono_ms();
        if (probe) {
            lane->next_probe_ms = now + KAFKA_PROBE_INTERVAL_MS;
            if (led) {
                for (unsigned i = 0; i < ko->n_lanes; i++)
                    kafka_lane_down(&ko->lane[i], false);
                atomic_store(&ko->delivery_failing, 0);
                LOG(LOG_INFO, "kafka_reachable", LS("bootstrap", ko->bootstrap));
            }
        }
    }
    return NULL;
}

/* ---- gauges ---------------------------------------------------------------------------- */

static int kafka_outq_len_locked(kafka_out_t *ko)
{
    int n = 0;
    pthread_rwlock_rdlock(&ko->lock);
    for (unsigned i = 0; i < ko->n_lanes; i++)
        if (ko->lane[i].rk != NULL) n += rd_kafka_outq_len(ko->lane[i].rk);
    pthread_rwlock_unlock(&ko->lock);
    return n;
}

static double kafka_gauge_messages(void *ud)
{
    return (double)kafka_outq_len_locked(ud);
}

static double kafka_gauge_bytes(void *ud)
{
    return (double)atomic_load(&((kafka_out_t *)ud)->queued_bytes);
}

static double kafka_gauge_producers(void *ud)
{
    return (double)((kafka_out_t *)ud)->n_lanes;
}

/* ---- set-up ---------------------------------------------------------------------------- */

static int kafka_conf_set(rd_kafka_conf_t *conf, const char *k, const char *v, char *err,
                          size_t errlen)
{
    char errstr[512];
    if (rd_kafka_conf_set(conf, k, v, errstr, sizeof errstr) != RD_KAFKA_CONF_OK) {
        kafka_seterr(err, errlen, "kafka: %s", errstr);
        return KAFKA_E_CONFIG;
    }
    return KAFKA_OK;
}

/* Embedded mode: a one-broker mock cluster with the three topics pre-created. */
static int kafka_start_mock(kafka_out_t *ko, char *err, size_t errlen)
{
    char errstr[512];
    rd_kafka_conf_t *conf = rd_kafka_conf_new();
    if (conf == NULL) return KAFKA_E_NOMEM;
    if (kafka_conf_set(conf, "client.id", "sluice-mock-owner", err, errlen) != 0) {
        rd_kafka_conf_destroy(conf);
        return KAFKA_E_CONFIG;
    }
    rd_kafka_conf_set_log_cb(conf, kafka_log_cb);
    ko->mock_rk = rd_kafka_new(RD_KAFKA_PRODUCER, conf, errstr, sizeof errstr);
    if (ko->mock_rk == NULL) {
        rd_kafka_conf_destroy(conf);
        kafka_seterr(err, errlen, "kafka: mock cluster owner: %s", errstr);
        return KAFKA_E_CONFIG;
    }
    ko->mcluster = rd_kafka_mock_cluster_new(ko->mock_rk, 1);
    if (ko->mcluster == NULL) {
        kafka_seterr(err, errlen, "kafka: cannot start the embedded mock cluster");
        return KAFKA_E_CONFIG;
    }
    const char *names[KAFKA_NTOPICS] = {ko->cfg->topic_events, ko->cfg->topic_rejected,
                                        ko->cfg->topic_pql, kafka_identities_topic(ko->cfg)};
    for (int i = 0; i < KAFKA_NTOPICS; i++) {
        rd_kafka_resp_err_t e =
            rd_kafka_mock_topic_create(ko->mcluster, names[i], kafka_mock_partitions[i], 1);
        /* Two roles may share one topic name: the second create finds it. */
        if (e != RD_KAFKA_RESP_ERR_NO_ERROR && e != RD_KAFKA_RESP_ERR_TOPIC_ALREADY_EXISTS) {
            kafka_seterr(err, errlen, "kafka: mock topic %s: %s", names[i], rd_kafka_err2str(e));
            return KAFKA_E_CONFIG;
        }
    }
    ko->bootstrap = strdup(rd_kafka_mock_cluster_bootstraps(ko->mcluster));
    if (ko->bootstrap == NULL) return KAFKA_E_NOMEM;
    /* main prints the address and the memory-only warning (SPEC §4); this is the trace. */
    LOG(LOG_INFO, "kafka_mock_started", LS("bootstrap", ko->bootstrap));
    return KAFKA_OK;
}

/* The partitioner a name in librdkafka's `partitioner` property stands for, when it is a
 * deterministic function of the key that librdkafka exports; else NULL (random partitioners:
 * no order to keep, librdkafka picks). */
static int32_t (*kafka_partitioner_named(const char *name))(const rd_kafka_topic_t *, const void *,
                                                            size_t, int32_t, void *, void *)
{
    static const struct {
        const char *name;
        int32_t (*fn)(const rd_kafka_topic_t *, const void *, size_t, int32_t, void *, void *);
    } known[] = {
        {"consistent", rd_kafka_msg_partitioner_consistent},
        {"consistent_random", rd_kafka_msg_partitioner_consistent_random},
        {"murmur2", rd_kafka_msg_partitioner_murmur2},
        {"murmur2_random", rd_kafka_msg_partitioner_murmur2_random},
        {"fnv1a", rd_kafka_msg_partitioner_fnv1a},
        {"fnv1a_random", rd_kafka_msg_partitioner_fnv1a_random},
    };
    for (size_t i = 0; i < sizeof known / sizeof known[0]; i++)
        if (strcmp(name, known[i].name) == 0) return known[i].fn;
    return NULL;
}

/* Our defaults, then bootstrap.servers, then every kafka.properties entry (which may override
 * any of ours). Each lane gets 1/n_lanes of the queue caps and its own client.id suffix. */
static int kafka_build_conf(kafka_lane_t *lane, rd_kafka_conf_t *conf, char *err, size_t errlen)
{
    kafka_out_t *ko = lane->ko;
    const config_t *cfg = ko->cfg;
    char timeout[16], kbytes[24], maxmsgs[24], client_id[64];
    uint64_t kb = ko->queue_cap_bytes / 1024 / ko->n_lanes;
    snprintf(timeout, sizeof timeout, "%" PRIu32, cfg->delivery_timeout_ms);
    snprintf(kbytes, sizeof kbytes, "%" PRIu64, kb > 0 ? kb : 1);
    snprintf(maxmsgs, sizeof maxmsgs, "%" PRIu64, ko->queue_cap_msgs / ko->n_lanes);
    if (ko->n_lanes > 1)
        snprintf(client_id, sizeof client_id, "sluice-collector-p%u", lane->index);
    else
        snprintf(client_id, sizeof client_id, "sluice-collector");

    const char *defaults[][2] = {
        {"client.id", client_id},
        {"bootstrap.servers", ko->bootstrap},
        {"enable.idempotence", "true"},
        {"acks", "all"},
        {"compression.codec", "zstd"},
        {"linger.ms", KAFKA_DEFAULT_LINGER_MS},
        {"compression.level", KAFKA_DEFAULT_COMPRESSION_LEVEL},
        {"socket.nagle.disable", "true"},
        {"reconnect.backoff.ms", KAFKA_DEFAULT_RECONNECT_BACKOFF_MS},
        {"reconnect.backoff.max.ms", KAFKA_DEFAULT_RECONNECT_BACKOFF_MAX_MS},
        {"message.timeout.ms", timeout},
        {"queue.buffering.max.kbytes", kbytes},
        {"queue.buffering.max.messages", maxmsgs},
    };
    for (size_t i = 0; i < sizeof defaults / sizeof defaults[0]; i++)
        if (kafka_conf_set(conf, defaults[i][0], defaults[i][1], err, errlen) != 0)
            return KAFKA_E_CONFIG;

    for (size_t i = 0; i < cfg->n_kafka_properties; i++) {
        char errstr[512];
        const config_kv_t *kv = &cfg->kafka_properties[i];
        if (kv->key == NULL || kv->value == NULL ||
            rd_kafka_conf_set(conf, kv->key, kv->value, errstr, sizeof errstr) !=
                RD_KAFKA_CONF_OK) {
            kafka_seterr(err, errlen, "kafka.properties: %s: %s", kv->key ? kv->key : "(null)",
                         kv->key && kv->value ? errstr : "missing key or value");
            return KAFKA_E_CONFIG;
        }
    }
    rd_kafka_conf_set_dr_msg_cb(conf, kafka_dr_cb);
    rd_kafka_conf_set_error_cb(conf, kafka_error_cb);
    rd_kafka_conf_set_log_cb(conf, kafka_log_cb);
    rd_kafka_conf_set_opaque(conf, lane);
    return KAFKA_OK;
}

/* The value of property name in conf (global, else its default topic conf) into buf, or NULL. */
static const char *kafka_conf_value(rd_kafka_conf_t *conf, const char *name, char *buf, size_t len)
{
    size_t n = len;
    if (rd_kafka_conf_get(conf, name, buf, &n) == RD_KAFKA_CONF_OK) return buf;
    n = len;
    const rd_kafka_topic_conf_t *tconf = rd_kafka_conf_get_default_topic_conf(conf);
    if (tconf != NULL && rd_kafka_topic_conf_get(tconf, name, buf, &n) == RD_KAFKA_CONF_OK)
        return buf;
    return NULL;
}

/* A producer and its three topic handles for lane, into *rkp and rkt[]. On failure nothing is
 * left allocated and err says why. */
static int kafka_new_producer(kafka_lane_t *lane, rd_kafka_t **rkp, rd_kafka_topic_t **rkt,
                              char *err, size_t errlen)
{
    kafka_out_t *ko = lane->ko;
    rd_kafka_conf_t *conf = rd_kafka_conf_new();
    if (conf == NULL) return KAFKA_E_NOMEM;
    int rc = kafka_build_conf(lane, conf, err, errlen);
    if (rc != KAFKA_OK) {
        rd_kafka_conf_destroy(conf);
        return rc;
    }
    if (lane->index == 0 && lane->rk == NULL) {
        /* First producer: the caps readiness measures against are the effective ones (kafka.
         * properties may have overridden ours; each lane has the same), and the partitioner
         * the routing must agree with. */
        char v[64];
        if (kafka_conf_value(conf, "queue.buffering.max.kbytes", v, sizeof v) != NULL)
            ko->queue_cap_bytes = strtoull(v, NULL, 10) * 1024 * ko->n_lanes;
        if (kafka_conf_value(conf, "queue.buffering.max.messages", v, sizeof v) != NULL)
            ko->queue_cap_msgs = strtoull(v, NULL, 10) * ko->n_lanes;
        const char *p = kafka_conf_value(conf, "partitioner", v, sizeof v);
        ko->partitioner = kafka_partitioner_named(p != NULL ? p : "consistent_random");
        if (ko->partitioner == NULL && ko->n_lanes > 1)
            LOG(LOG_WARN, "kafka_producers_unused", LS("partitioner", p),
                LS("effect", "not a keyed partitioner: every message goes through producer 0"));
    }
    char errstr[512];
    rd_kafka_t *rk = rd_kafka_new(RD_KAFKA_PRODUCER, conf, errstr, sizeof errstr);
    if (rk == NULL) { /* conf is still ours only when rd_kafka_new fails */
        rd_kafka_conf_destroy(conf);
        kafka_seterr(err, errlen, "kafka: %s", errstr);
        return KAFKA_E_CONFIG;
    }
    const char *names[KAFKA_NTOPICS] = {ko->cfg->topic_events, ko->cfg->topic_rejected,
                                        ko->cfg->topic_pql, kafka_identities_topic(ko->cfg)};
    for (int i = 0; i < KAFKA_NTOPICS; i++) {
        rkt[i] = rd_kafka_topic_new(rk, names[i], NULL);
        if (rkt[i] == NULL) {
            kafka_seterr(err, errlen, "kafka: topic %s: %s", names[i],
                         rd_kafka_err2str(rd_kafka_last_error()));
            kafka_destroy_producer(rk, rkt);
            return KAFKA_E_CONFIG;
        }
    }
    *rkp = rk;
    return KAFKA_OK;
}

/* Destroys the topic handles (NULL entries skipped, all set to NULL) and the producer.
 * Blocks until librdkafka's threads are gone. */
static void kafka_destroy_producer(rd_kafka_t *rk, rd_kafka_topic_t **rkt)
{
    for (int i = 0; i < KAFKA_NTOPICS; i++) {
        if (rkt[i] != NULL) rd_kafka_topic_destroy(rkt[i]);
        rkt[i] = NULL;
    }
    rd_kafka_destroy(rk);
}

static int kafka_start_poll_thread(kafka_lane_t *lane)
{
    /* The thread inherits a mask with every signal blocked: signals are the loop's business. */
    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &old);
    int rc = pthread_create(&lane->poll_thread, NULL, kafka_poll_main, lane);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    if (rc != 0) return KAFKA_E_NOMEM;
    lane->poll_started = true;
    return KAFKA_OK;
}

int kafka_out_new(const config_t *cfg, kafka_out_t **out, char *err, size_t errlen)
{
    *out = NULL;
    if (cfg->topic_events == NULL || cfg->topic_rejected == NULL || cfg->topic_pql == NULL ||
        !cfg->topic_events[0] || !cfg->topic_rejected[0] || !cfg->topic_pql[0]) {
        kafka_seterr(err, errlen, "kafka: topic names must not be empty");
        return KAFKA_E_CONFIG;
    }
    if (cfg->delivery_timeout_ms == 0) {
        /* 0 would mean "never time out" to librdkafka: requests would wait forever. */
        kafka_seterr(err, errlen, "kafka: delivery_timeout_ms must be > 0");
        return KAFKA_E_CONFIG;
    }
    if (cfg->kafka_producers > KAFKA_MAX_PRODUCERS) {
        kafka_seterr(err, errlen, "kafka: producers must be 1..%d", KAFKA_MAX_PRODUCERS);
        return KAFKA_E_CONFIG;
    }
    kafka_out_t *ko = calloc(1, sizeof *ko);
    if (ko == NULL) {
        kafka_seterr(err, errlen, "kafka: out of memory");
        return KAFKA_E_NOMEM;
    }
    ko->cfg = cfg;
    ko->n_lanes = cfg->kafka_producers > 0 ? cfg->kafka_producers : 1;
    pthread_rwlockattr_t attr;
    pthread_rwlockattr_init(&attr);
    pthread_rwlockattr_setkind_np(&attr, PTHREAD_RWLOCK_PREFER_WRITER_NONRECURSIVE_NP);
    int lrc = pthread_rwlock_init(&ko->lock, &attr);
    pthread_rwlockattr_destroy(&attr);
    if (lrc != 0) {
        free(ko);
        kafka_seterr(err, errlen, "kafka: cannot create a lock");
        return KAFKA_E_NOMEM;
    }
    ko->lock_init = true;
    /* librdkafka counts the queue in KiB, 1 .. INT32_MAX. */
    uint64_t kb = cfg->kafka_queue_bytes / 1024;
    ko->queue_cap_bytes = (kb < 1 ? 1 : kb > INT32_MAX ? INT32_MAX : kb) * 1024;
    ko->queue_cap_msgs = KAFKA_QUEUE_MAX_MESSAGES;
    for (int t = 0; t < KAFKA_NTOPICS; t++)
        atomic_init(&ko->partitions[t], 0);
    atomic_init(&ko->recreated, 0u);
    atomic_init(&ko->stop_poll, false);
    atomic_init(&ko->stopping, false);
    atomic_init(&ko->queued_bytes, 0u);
    atomic_init(&ko->fatal_lanes, 0u);
    atomic_init(&ko->lanes_down, 0u);
    atomic_init(&ko->delivery_failing, 0);
    atomic_init(&ko->rdlog_last_ms, INT64_MIN / 2);
    atomic_init(&ko->rdlog_suppressed, 0u);
    for (unsigned i = 0; i < ko->n_lanes; i++) {
        kafka_lane_t *lane = &ko->lane[i];
        lane->ko = ko;
        lane->index = i;
        atomic_init(&lane->fatal, 0);
        atomic_init(&lane->down, false);
        lane->errlog_last_ms = INT64_MIN / 2;
    }

    int rc;
    if (cfg->brokers == NULL || cfg->brokers[0] == '\0') {
        rc = kafka_start_mock(ko, err, errlen);
    } else {
        ko->bootstrap = strdup(cfg->brokers);
        rc = ko->bootstrap != NULL ? KAFKA_OK : KAFKA_E_NOMEM;
    }
    if (rc != KAFKA_OK) goto fail;

    for (unsigned i = 0; i < ko->n_lanes; i++) {
        rc = kafka_new_producer(&ko->lane[i], &ko->lane[i].rk, ko->lane[i].rkt, err, errlen);
        if (rc != KAFKA_OK) goto fail;
    }
    if (ko->mcluster != NULL) {
        for (int t = 0; t < KAFKA_NTOPICS; t++)
            if (kafka_routed(ko, (kafka_topic_t)t))
                kafka_set_partitions(ko, (kafka_topic_t)t, kafka_mock_partitions[t]);
    } else if (ko->n_lanes > 1) {
        /* Before the first request: routed from the start (bounded; brokers down at start
         * cost this once, then lane 0 keeps trying every KAFKA_PROBE_INTERVAL_MS). */
        kafka_read_partitions(ko, KAFKA_PARTS_TIMEOUT_MS);
    }
    for (unsigned i = 0; i < ko->n_lanes; i++) {
        rc = kafka_start_poll_thread(&ko->lane[i]);
        if (rc != KAFKA_OK) {
            kafka_seterr(err, errlen, "kafka: cannot start the poll thread");
            goto fail;
        }
    }
    /* A full gauge table costs the metric, not the service. */
    if (metrics_gauge_register("kafka_queue_messages", "messages waiting in the Kafka producer",
                               kafka_gauge_messages, ko) != 0 ||
        metrics_gauge_register("kafka_queue_bytes", "key+value bytes waiting in the producer",
                               kafka_gauge_bytes, ko) != 0 ||
        metrics_gauge_register("kafka_producers",
                               "Kafka producers (kafka.producers), each with its own connections",
                               kafka_gauge_producers, ko) != 0)
        LOG(LOG_WARN, "kafka_gauge", LS("reason", "gauge table full"));
    *out = ko;
    return KAFKA_OK;

fail:
    kafka_out_free(ko);
    return rc;
}

const char *kafka_out_bootstrap(const kafka_out_t *ko)
{
    return ko->bootstrap;
}

bool kafka_out_embedded(const kafka_out_t *ko)
{
    return ko->mcluster != NULL;
}

/* ---- produce --------------------------------------------------------------------------- */

/* The lane (and explicit partition, or RD_KAFKA_PARTITION_UA) of one message. Keyed events and
 * identities go to the lane that owns their partition (events: partition % lanes; identities:
 * lanes - 1 - partition % lanes), computed with the
 * partitioner librdkafka would use, so a key's messages always share one producer and keep
 * their order; everything else goes through lane 0 with librdkafka's own partitioning. */
static kafka_lane_t *kafka_route(kafka_out_t *ko, kafka_topic_t topic, const void *key,
                                 size_t keylen, int32_t *partition)
{
    *partition = RD_KAFKA_PARTITION_UA;
    if (ko->n_lanes == 1 || !kafka_routed(ko, topic) || keylen == 0 || ko->partitioner == NULL)
        return &ko->lane[0];
    int n = atomic_load(&ko->partitions[topic]);
    if (n <= 0) return &ko->lane[0];
    /* The partitioners ignore rkt for a non-empty key (it serves the random fallback only). */
    int32_t p = ko->partitioner(NULL, key, keylen, n, NULL, NULL);
    if (p < 0 || p >= n) return &ko->lane[0];
    *partition = p;
    unsigned lane = (unsigned)p % ko->n_lanes;
    /* Identities from the top lane down, events from lane 0 up: a producer that also serves an
     * identities partition beside its events partition made every request it carries slow
     * (measured at 3 + 3 partitions and 16 lanes: p50 13-50 ms and p99 60-170 ms while the
     * links of new users flowed, against 2.7 / 4 ms on lanes of their own). The mapping
     * depends on the identities topic's own partition count only, so a user's links keep one
     * producer and their order. */
    if (topic == KAFKA_TOPIC_IDENTITIES) lane = ko->n_lanes - 1u - lane;
    return &ko->lane[lane];
}

int kafka_out_produce(kafka_out_t *ko, kafka_topic_t topic, const void *key, size_t keylen,
                      const void *value, size_t vallen, const kafka_header_t *headers,
                      size_t nheaders, kafka_group_t *g)
{
    if ((unsigned)topic >= KAFKA_NTOPICS) return KAFKA_E_CONFIG;
    if (atomic_load(&ko->stopping)) return KAFKA_E_STOPPED;
    int32_t partition;
    kafka_lane_t *lane = kafka_route(ko, topic, key, keylen, &partition);
    if (atomic_load(&lane->fatal) != 0) return KAFKA_E_FATAL;

    rd_kafka_headers_t *hdrs = NULL;
    if (nheaders > 0) {
        hdrs = rd_kafka_headers_new(nheaders);
        if (hdrs == NULL) return KAFKA_E_NOMEM;
        for (size_t i = 0; i < nheaders; i++) {
            if (rd_kafka_header_add(hdrs, headers[i].name, -1, headers[i].value,
                                    (ssize_t)headers[i].len) != RD_KAFKA_RESP_ERR_NO_ERROR) {
                rd_kafka_headers_destroy(hdrs);
                return KAFKA_E_NOMEM;
            }
        }
    }
    /* Counted before the call: the report may arrive (on the poll thread) before producev
     * returns, and must find the message already counted. */
    if (g != NULL) atomic_fetch_add(&g->pending, 1u);
    atomic_fetch_add(&ko->queued_bytes, (uint_fast64_t)vallen + keylen);

    int64_t ts = g != NULL ? g->ts_ms : 0; /* 0: librdkafka stamps it */
    kafka_slot_t *slot = kafka_reader_enter(ko);
    rd_kafka_resp_err_t e = rd_kafka_producev(
        lane->rk, RD_KAFKA_V_RKT(lane->rkt[topic]), RD_KAFKA_V_PARTITION(partition),
        RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY), RD_KAFKA_V_KEY(key, keylen),
        RD_KAFKA_V_VALUE((void *)(uintptr_t)value, vallen), RD_KAFKA_V_HEADERS(hdrs),
        RD_KAFKA_V_TIMESTAMP(ts), RD_KAFKA_V_OPAQUE(g), RD_KAFKA_V_END);
    kafka_reader_exit(slot);
    if (e == RD_KAFKA_RESP_ERR_NO_ERROR) return KAFKA_OK; /* hdrs now belong to the message */

    /* Failed synchronously: no report will come, so undo the counts. The group still holds its
     * seal reference, so this cannot complete it. */
    if (hdrs != NULL) rd_kafka_headers_destroy(hdrs);
    atomic_fetch_sub(&ko->queued_bytes, (uint_fast64_t)vallen + keylen);
    if (g != NULL) atomic_fetch_sub(&g->pending, 1u);
    switch (e) {
    case RD_KAFKA_RESP_ERR__QUEUE_FULL:
        metrics_add(METRIC_KAFKA_QUEUE_FULL, 1);
        return KAFKA_E_QUEUE_FULL;
    case RD_KAFKA_RESP_ERR__FATAL:
        return KAFKA_E_FATAL;
    default:
        /* Unknown topic, message too large, ...: the message cannot be made durable now. */
        LOG(LOG_WARN, "kafka_produce_refused", LS("topic", kafka_topic_names[topic]),
            LS("error", rd_kafka_err2name(e)));
        return KAFKA_E_PRODUCE;
    }
}

/* ---- readiness, flush, teardown -------------------------------------------------------- */

/* Writes the reason into why (when given); returns false so callers can `return`. */
__attribute__((format(printf, 3, 4))) static bool kafka_not_ready(char *why, size_t whylen,
                                                                  const char *fmt, ...)
{
    if (why != NULL && whylen > 0) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(why, whylen, fmt, ap);
        va_end(ap);
    }
    return false;
}

bool kafka_out_ready(kafka_out_t *ko, char *why, size_t whylen)
{
    int derr;
    if (atomic_load(&ko->fatal_lanes) != 0) {
        pthread_rwlock_rdlock(&ko->lock);
        const char *reason = "(recovering)";
        for (unsigned i = 0; i < ko->n_lanes; i++)
            if (atomic_load(&ko->lane[i].fatal) != 0 && ko->lane[i].fatal_reason[0])
                reason = ko->lane[i].fatal_reason;
        kafka_not_ready(why, whylen, "kafka producer fatal error: %s", reason);
        pthread_rwlock_unlock(&ko->lock);
        return false;
    }
    if (atomic_load(&ko->stopping)) return kafka_not_ready(why, whylen, "kafka producer stopped");
    if (atomic_load(&ko->lanes_down) != 0)
        return kafka_not_ready(why, whylen, "all kafka brokers down");
    if ((derr = atomic_load(&ko->delivery_failing)) != 0)
        return kafka_not_ready(why, whylen, "kafka deliveries failing: %s",
                               rd_kafka_err2str((rd_kafka_resp_err_t)derr));
    if (atomic_load(&ko->queued_bytes) * 100u >=
            (uint_fast64_t)ko->queue_cap_bytes * KAFKA_READY_QUEUE_PCT ||
        (uint64_t)kafka_outq_len_locked(ko) * 100u >= ko->queue_cap_msgs * KAFKA_READY_QUEUE_PCT)
        return kafka_not_ready(why, whylen, "kafka producer queue over %u%% full",
                               KAFKA_READY_QUEUE_PCT);
    if (why != NULL && whylen > 0) why[0] = '\0';
    return true;
}

bool kafka_out_down(kafka_out_t *ko)
{
    return atomic_load(&ko->fatal_lanes) != 0 || atomic_load(&ko->lanes_down) != 0 ||
           atomic_load(&ko->stopping);
}

int kafka_out_queue_len(kafka_out_t *ko)
{
    return kafka_outq_len_locked(ko);
}

int kafka_out_flush(kafka_out_t *ko, int timeout_ms)
{
    /* Waits for the poll threads to serve every report instead of calling rd_kafka_flush(),
     * which would poll here and run done_cb on this thread, outside the header's promise. */
    int64_t deadline = base_mono_ms() + (timeout_ms > 0 ? timeout_ms : 0);
    int left;
    while ((left = kafka_outq_len_locked(ko)) > 0 && base_mono_ms() < deadline) {
        struct timespec ts = {0, 5 * 1000 * 1000};
        nanosleep(&ts, NULL);
    }
    return left;
}

void kafka_out_free(kafka_out_t *ko)
{
    if (ko == NULL) return;
    atomic_store(&ko->stopping, true);
    bool any_poll = false;
    for (unsigned i = 0; i < ko->n_lanes; i++)
        any_poll |= ko->lane[i].poll_started;
    if (any_poll) {
        /* Fail whatever is still queued, so every group gets its done_cb (with
         * __PURGE_QUEUE / __PURGE_INFLIGHT) instead of waiting forever; the poll threads serve
         * those reports, within a bounded wait. */
        pthread_rwlock_rdlock(&ko->lock);
        for (unsigned i = 0; i < ko->n_lanes; i++)
            if (ko->lane[i].rk != NULL)
                rd_kafka_purge(ko->lane[i].rk, RD_KAFKA_PURGE_F_QUEUE | RD_KAFKA_PURGE_F_INFLIGHT);
        pthread_rwlock_unlock(&ko->lock);
        int64_t deadline = base_mono_ms() + KAFKA_DRAIN_MS;
        while (kafka_outq_len_locked(ko) > 0 && base_mono_ms() < deadline) {
            struct timespec ts = {0, 5 * 1000 * 1000};
            nanosleep(&ts, NULL);
        }
        atomic_store(&ko->stop_poll, true);
        for (unsigned i = 0; i < ko->n_lanes; i++)
            if (ko->lane[i].poll_started) pthread_join(ko->lane[i].poll_thread, NULL);
    }
    for (unsigned i = 0; i < ko->n_lanes; i++) {
        rd_kafka_t *rk = ko->lane[i].rk;
        if (rk == NULL) continue;
        /* Reports that missed the bounded wait run here, on the caller's thread. */
        rd_kafka_purge(rk, RD_KAFKA_PURGE_F_QUEUE | RD_KAFKA_PURGE_F_INFLIGHT);
        for (int k = 0; k < 100 && rd_kafka_outq_len(rk) > 0; k++)
            rd_kafka_poll(rk, 10);
        if (rd_kafka_outq_len(rk) > 0)
            LOG(LOG_ERROR, "kafka_reports_lost", LI("messages", rd_kafka_outq_len(rk)));
        kafka_destroy_producer(rk, ko->lane[i].rkt);
        ko->lane[i].rk = NULL;
    }
    if (ko->mcluster != NULL) rd_kafka_mock_cluster_destroy(ko->mcluster);
    if (ko->mock_rk != NULL) rd_kafka_destroy(ko->mock_rk);
    if (ko->lock_init) pthread_rwlock_destroy(&ko->lock);
    free(ko->bootstrap);
    free(ko);
}
