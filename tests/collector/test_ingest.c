/*
 * test_ingest.c — the ingest path (collector/ingest.c) with the real modules it calls
 * (kafka_out, metrics, log, accounts) against librdkafka's mock cluster, created per test
 * (mock_cluster.h): what is produced (topics, keys, headers — read back with a consumer), the
 * answers (200 body, 400/401/413/429/503), that a request is answered 200 only when every
 * message was delivered (broker down: 503; queue full: 503), and the mailbox.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <zlib.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "base.h"
#include "ingest.h"
#include "log.h"
#include "metrics.h"
#include "pql.h"

/* Appends a string literal (as ingest.c does). */
#define buf_lit(out, lit) base_buf_append((out), (lit), sizeof(lit) - 1)

#include "mock_cluster.h"

#include <sys/stat.h>

static config_write_key_t keys[] = {{"wk_test_123", "test"}};

typedef struct fixture {
    mock_kafka_t mk;
    config_t cfg;
    kafka_out_t *ko;
    accounts_t *accounts;
    auth_t *auth;
    ingest_ctx_t ctx;
    ingest_scratch_t scratch;
    uv_loop_t loop;
    uv_async_t async;
    ingest_mailbox_t mb;
    spool_t *spool; /* test_spool_*: freed after the producer */
    dedup_t *dedup;
} fixture_t;

static void async_noop(uv_async_t *a)
{
    (void)a;
}

static int setup(void **state)
{
    fixture_t *f = calloc(1, sizeof *f);
    assert_int_equal(mock_kafka_start(&f->mk), 0);
    f->cfg.write_keys = keys;
    f->cfg.n_write_keys = 1;
    f->cfg.event_bytes = 32 * 1024;
    f->cfg.body_bytes = 64 * 1024;
    f->cfg.max_depth = 16;
    f->cfg.max_events = 1000;
    f->cfg.kafka_format = PROTO_FMT_JSON;
    f->cfg.rate_per_key = 0;
    /* Bounds how long a failed delivery (broker down) takes to be reported. */
    f->cfg.delivery_timeout_ms = 1500;
    mock_kafka_cfg(&f->mk, &f->cfg);
    metrics_reset();
    char err[256];
    assert_int_equal(kafka_out_new(&f->cfg, &f->ko, err, sizeof err), KAFKA_OK);
    f->accounts = accounts_new(64);
    assert_non_null(f->accounts);
    assert_int_equal(auth_new(&f->cfg, &f->auth), AUTH_OK);
    ingest_ctx_init(&f->ctx, &f->cfg, f->ko, f->auth, f->accounts);
    assert_int_equal(ingest_scratch_init(&f->scratch, &f->cfg), 0);
    uv_loop_init(&f->loop);
    uv_async_init(&f->loop, &f->async, async_noop);
    ingest_mailbox_init(&f->mb, &f->async);
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    fixture_t *f = *state;
    spool_stop(f->spool);
    kafka_out_free(f->ko);
    spool_free(f->spool);
    dedup_free(f->dedup);
    ingest_scratch_free(&f->scratch);
    auth_free(f->auth);
    accounts_free(f->accounts);
    uv_close((uv_handle_t *)&f->async, NULL);
    uv_run(&f->loop, UV_RUN_DEFAULT);
    uv_loop_close(&f->loop);
    mock_kafka_stop(&f->mk);
    metrics_reset();
    free(f);
    return 0;
}

/* Replaces the producer by one built from the current f->cfg. */
static void restart_kafka(fixture_t *f)
{
    kafka_out_free(f->ko);
    char err[256];
    assert_int_equal(kafka_out_new(&f->cfg, &f->ko, err, sizeof err), KAFKA_OK);
    f->ctx.ko = f->ko;
}

/* Runs one request to its reply. Returns the status; body copied to out (NUL-terminated). */
static int run(fixture_t *f, const char *body, size_t len, proto_type_t kind, body_encoding_t enc,
               const char *header_key, char *out, size_t outcap, int *retry_after)
{
    ingest_input_t in = {.kind = kind,
                         .fmt = PROTO_FMT_JSON,
                         .enc = enc,
                         .body = body,
                         .len = len,
                         .start_ns = uv_hrtime()};
    if (header_key != NULL) {
        in.header_key = true;
        assert_int_equal(
            auth_lookup(f->auth, header_key, strlen(header_key), &in.source, &in.key_index),
            AUTH_OK);
    }
    ingest_req_t *req = NULL;
    ingest_error_t err;
    out[0] = '\0';
    if (ingest_start(&f->ctx, &f->scratch, &f->mb, &in, &req, &err) != 0) {
        assert_null(req);
        base_buf_t b;
        base_buf_init_fixed(&b, out, outcap);
        ingest_error_json(&b, err.code, err.message);
        out[b.len < outcap ? b.len : outcap - 1] = '\0';
        if (retry_after) *retry_after = err.retry_after;
        return err.status;
    }
    assert_non_null(req);
    /* Kafka's poll thread pushes the request once every delivery report is in (bounded by
     * delivery_timeout_ms; the wait here is longer). */
    ingest_req_t *got = NULL;
    for (int64_t deadline = base_mono_ms() + MOCK_WAIT_MS;
         got == NULL && base_mono_ms() < deadline;)
        if ((got = ingest_mailbox_take(&f->mb)) == NULL) base_sleep_ms(2);
    assert_ptr_equal(got, req);
    assert_null(ingest_req_next(got));
    assert_int_equal(atomic_load(&f->ctx.in_flight), 1);
    ingest_reply_t rep;
    ingest_finish(req, &rep);
    assert_int_equal(atomic_load(&f->ctx.in_flight), 0);
    int status = rep.status;
    if (status == 200) {
        assert_true(rep.body_len < outcap);
        memcpy(out, rep.body, rep.body_len);
        out[rep.body_len] = '\0';
    } else {
        snprintf(out, outcap, "%s", rep.code);
    }
    if (retry_after) *retry_after = rep.retry_after;
    ingest_req_free(req);
    return status;
}

#define BODY2                                                                                      \
    "{\"writeKey\":\"wk_test_123\",\"batch\":["                                                    \
    "{\"type\":\"track\",\"messageId\":\"m1\",\"userId\":\"u1\",\"event\":\"Signed Up\"},"         \
    "{\"type\":\"track\",\"messageId\":\"m2\",\"event\":\"No User\"},"                             \
    "{\"type\":\"identify\",\"messageId\":\"m3\",\"anonymousId\":\"a1\"}]}"

static void test_batch_produced(void **state)
{
    fixture_t *f = *state;
    char out[2048];
    int st =
        run(f, BODY2, strlen(BODY2), PROTO_T_NONE, BODY_ENC_IDENTITY, NULL, out, sizeof out, NULL);
    assert_int_equal(st, 200);
    assert_string_equal(out, "{\"success\":true,\"accepted\":2,\"duplicates\":0,\"rejected\":1,"
                             "\"filtered\":0,\"errors\":[{\"index\":1,\"messageId\":\"m2\","
                             "\"error\":\"missing_user\"}]}");
    /* Answered 200: every message is in Kafka. Two events, one rejected, nothing else. */
    assert_int_equal(mock_topic_count(&f->mk, f->mk.events), 2);
    assert_int_equal(mock_topic_count(&f->mk, f->mk.rejected), 1);
    sup_kmsgs_t evs, rejs;
    assert_int_equal(mock_consume(&f->mk, f->mk.events, 2, &evs), 0);
    assert_int_equal(evs.n, 2);
    assert_int_equal(mock_consume(&f->mk, f->mk.rejected, 1, &rejs), 0);
    assert_int_equal(rejs.n, 1);
    const sup_kmsg_t *ev = evs.msgs, *rej = rejs.msgs;
    /* In batch order: event, rejected, event (produce timestamps across the two topics). */
    assert_true(ev[0].ts_ms <= rej[0].ts_ms && rej[0].ts_ms <= ev[1].ts_ms);
    const sup_kmsg_t *m = &ev[0];
    assert_int_equal(m->key_len, 2);
    assert_memory_equal(m->key, "u1", 2);
    assert_string_equal(sup_kmsg_header(m, "sluice-schema"), "1");
    assert_string_equal(sup_kmsg_header(m, "content-type"), "application/json");
    assert_string_equal(sup_kmsg_header(m, "event-type"), "track");
    assert_string_equal(sup_kmsg_header(m, "message-id"), "m1");
    assert_non_null(strstr(m->value, "\"source\":\"test\""));
    assert_non_null(strstr(m->value, "\"receivedAt\""));
    m = &rej[0];
    assert_int_equal(m->key_len, 0);
    assert_non_null(strstr(m->value, "\"error\":\"missing_user\""));
    assert_non_null(strstr(m->value, "\"source\":\"test\""));
    m = &ev[1];
    assert_memory_equal(m->key, "a1", 2);
    assert_string_equal(sup_kmsg_header(m, "event-type"), "identify");
    assert_int_equal(metrics_get(METRIC_EVENTS_RECEIVED), 3);
    assert_int_equal(metrics_get(METRIC_EVENTS_ACCEPTED), 2);
    assert_int_equal(metrics_get(METRIC_EVENTS_REJECTED), 1);
    assert_int_equal(metrics_rejected_get(PROTO_E_MISSING_USER), 1);
    assert_int_equal(metrics_get(METRIC_KAFKA_DELIVERED), 3);
    sup_kmsgs_free(&evs);
    sup_kmsgs_free(&rejs);
}

static void test_group_learns_account(void **state)
{
    fixture_t *f = *state;
    static const char body[] =
        "{\"batch\":[{\"type\":\"group\",\"messageId\":\"g1\",\"userId\":\"u7\",\"groupId\":"
        "\"acme\"},"
        "{\"type\":\"track\",\"messageId\":\"t1\",\"userId\":\"u7\",\"event\":\"x\"}]}";
    char out[1024];
    assert_int_equal(run(f, body, sizeof body - 1, PROTO_T_NONE, BODY_ENC_IDENTITY, "wk_test_123",
                         out, sizeof out, NULL),
                     200);
    assert_int_equal(mock_topic_count(&f->mk, f->mk.events), 2);
    sup_kmsgs_t evs;
    assert_int_equal(mock_consume(&f->mk, f->mk.events, 2, &evs), 0);
    assert_int_equal(evs.n, 2);
    const sup_kmsg_t *ev = evs.msgs;
    /* Both keyed by the account: the group by its groupId, the track by the learned account. */
    assert_int_equal(ev[0].key_len, 4);
    assert_memory_equal(ev[0].key, "acme", 4);
    assert_int_equal(ev[1].key_len, 4);
    assert_memory_equal(ev[1].key, "acme", 4);
    sup_kmsgs_free(&evs);
    /* The real account map remembers it. */
    char acct[256];
    size_t alen = 0;
    assert_true(accounts_lookup(f->accounts, "u7", 2, acct, sizeof acct, &alen));
    assert_int_equal(alen, 4);
    assert_memory_equal(acct, "acme", 4);
}

static void test_single_call(void **state)
{
    fixture_t *f = *state;
    static const char body[] = "{\"messageId\":\"s1\",\"userId\":\"u\",\"event\":\"Clicked\"}";
    char out[1024];
    assert_int_equal(run(f, body, sizeof body - 1, PROTO_T_TRACK, BODY_ENC_IDENTITY, "wk_test_123",
                         out, sizeof out, NULL),
                     200);
    assert_int_equal(mock_topic_count(&f->mk, f->mk.events), 1);
    sup_kmsgs_t evs;
    assert_int_equal(mock_consume(&f->mk, f->mk.events, 1, &evs), 0);
    assert_int_equal(evs.n, 1);
    assert_string_equal(sup_kmsg_header(&evs.msgs[0], "event-type"), "track");
    sup_kmsgs_free(&evs);
}

/* Nothing was produced: the producer holds nothing and the cluster got nothing. */
static void assert_nothing_produced(fixture_t *f)
{
    assert_int_equal(kafka_out_queue_len(f->ko), 0);
    assert_int_equal(mock_topic_count(&f->mk, f->mk.events), 0);
    assert_int_equal(mock_topic_count(&f->mk, f->mk.rejected), 0);
}

static void test_auth_failures(void **state)
{
    fixture_t *f = *state;
    static const char nokey[] =
        "{\"batch\":[{\"type\":\"track\",\"messageId\":\"m\",\"userId\":\"u\",\"event\":\"e\"}]}";
    static const char badkey[] = "{\"writeKey\":\"nope\",\"batch\":[]}";
    char out[1024];
    assert_int_equal(run(f, nokey, sizeof nokey - 1, PROTO_T_NONE, BODY_ENC_IDENTITY, NULL, out,
                         sizeof out, NULL),
                     401);
    assert_non_null(strstr(out, "\"error\":\"unauthorized\""));
    assert_int_equal(run(f, badkey, sizeof badkey - 1, PROTO_T_NONE, BODY_ENC_IDENTITY, NULL, out,
                         sizeof out, NULL),
                     401);
    assert_nothing_produced(f);
    assert_int_equal(metrics_get(METRIC_AUTH_FAILURES), 2);
}

static void test_unreadable_bodies(void **state)
{
    fixture_t *f = *state;
    char out[1024];
    assert_int_equal(run(f, "{\"batch\":[", 10, PROTO_T_NONE, BODY_ENC_IDENTITY, "wk_test_123", out,
                         sizeof out, NULL),
                     400);
    assert_non_null(strstr(out, "\"error\":\"malformed_body\""));
    assert_int_equal(
        run(f, "hello", 5, PROTO_T_NONE, BODY_ENC_GZIP, "wk_test_123", out, sizeof out, NULL), 400);
    /* A gzip bomb: 1 MiB of spaces (valid JSON whitespace) over the 64 KiB cap. */
    size_t n = 1 << 20;
    char *plain = malloc(n);
    memset(plain, ' ', n);
    char *packed = malloc(n);
    z_stream zs;
    memset(&zs, 0, sizeof zs);
    deflateInit2(&zs, 9, Z_DEFLATED, 16 + MAX_WBITS, 8, Z_DEFAULT_STRATEGY);
    zs.next_in = (unsigned char *)plain;
    zs.avail_in = (uInt)n;
    zs.next_out = (unsigned char *)packed;
    zs.avail_out = (uInt)n;
    assert_int_equal(deflate(&zs, Z_FINISH), Z_STREAM_END);
    size_t plen = n - zs.avail_out;
    deflateEnd(&zs);
    assert_int_equal(
        run(f, packed, plen, PROTO_T_NONE, BODY_ENC_GZIP, "wk_test_123", out, sizeof out, NULL),
        413);
    assert_non_null(strstr(out, "payload_too_large"));
    assert_int_equal(metrics_get(METRIC_DECOMPRESS_LIMIT), 1);
    free(plain);
    free(packed);
    assert_nothing_produced(f);
}

/* The broker is down: every delivery fails (message timeout), the request is 503 and nothing
 * counts as accepted; once the broker is back, the client's retry is accepted. */
static void test_delivery_failure_is_503(void **state)
{
    fixture_t *f = *state;
    char out[1024], why[256];
    int ra = 0;
    /* Connected and holding a producer id first, as a running collector is. */
    assert_int_equal(kafka_out_produce(f->ko, KAFKA_TOPIC_PQL, "k", 1, "warm", 4, NULL, 0, NULL),
                     KAFKA_OK);
    assert_int_equal(kafka_out_flush(f->ko, MOCK_WAIT_MS), 0);
    assert_int_equal(rd_kafka_mock_broker_set_down(f->mk.mc, 1), 0);
    assert_int_equal(
        run(f, BODY2, strlen(BODY2), PROTO_T_NONE, BODY_ENC_IDENTITY, NULL, out, sizeof out, &ra),
        503);
    /* Either the request was produced before librdkafka noticed (every delivery fails at the
     * message timeout) or after (__ALL_BROKERS_DOWN seen: refused at once, nothing produced). */
    if (strstr(out, "\"kafka_unavailable\"") != NULL) {
        assert_int_equal(metrics_get(METRIC_KAFKA_FAIL_FAST), 1);
        assert_int_equal(metrics_get(METRIC_KAFKA_ERRORS), 0);
    } else {
        assert_string_equal(out, "unavailable");
        assert_int_equal(metrics_get(METRIC_KAFKA_ERRORS), 3);
    }
    assert_true(ra > 0);
    assert_int_equal(metrics_get(METRIC_EVENTS_ACCEPTED), 0);
    /* Retried after recovery: accepted, and delivered once (the failed attempt left nothing). */
    assert_int_equal(rd_kafka_mock_broker_set_up(f->mk.mc, 1), 0);
    bool ready = false;
    for (int64_t deadline = base_mono_ms() + MOCK_WAIT_MS; !ready && base_mono_ms() < deadline;)
        if (!(ready = kafka_out_ready(f->ko, why, sizeof why))) base_sleep_ms(20);
    assert_true(ready);
    assert_int_equal(
        run(f, BODY2, strlen(BODY2), PROTO_T_NONE, BODY_ENC_IDENTITY, NULL, out, sizeof out, &ra),
        200);
    assert_int_equal(metrics_get(METRIC_EVENTS_ACCEPTED), 2);
    assert_int_equal(mock_topic_count(&f->mk, f->mk.events), 2);
    assert_int_equal(mock_topic_count(&f->mk, f->mk.rejected), 1);
}

/* All brokers known down (SPEC §3 fail fast): refused with 503 kafka_unavailable at once,
 * without waiting for kafka.delivery_timeout, nothing produced, nothing remembered. */
static void test_kafka_down_fails_fast(void **state)
{
    fixture_t *f = *state;
    char out[1024];
    int ra = 0;
    assert_int_equal(kafka_out_produce(f->ko, KAFKA_TOPIC_PQL, "k", 1, "warm", 4, NULL, 0, NULL),
                     KAFKA_OK);
    assert_int_equal(kafka_out_flush(f->ko, MOCK_WAIT_MS), 0);
    assert_int_equal(rd_kafka_mock_broker_set_down(f->mk.mc, 1), 0);
    for (int64_t deadline = base_mono_ms() + MOCK_WAIT_MS;
         !kafka_out_down(f->ko) && base_mono_ms() < deadline;)
        base_sleep_ms(10);
    assert_true(kafka_out_down(f->ko));
    int64_t t0 = base_mono_ms();
    assert_int_equal(
        run(f, BODY2, strlen(BODY2), PROTO_T_NONE, BODY_ENC_IDENTITY, NULL, out, sizeof out, &ra),
        503);
    assert_true(base_mono_ms() - t0 < 1000);
    assert_non_null(strstr(out, "\"error\":\"kafka_unavailable\""));
    assert_true(ra > 0);
    assert_int_equal(metrics_get(METRIC_KAFKA_FAIL_FAST), 1);
    assert_int_equal(metrics_get(METRIC_KAFKA_ERRORS), 0);
    assert_int_equal(metrics_get(METRIC_EVENTS_ACCEPTED), 0);
    assert_int_equal(rd_kafka_mock_broker_set_up(f->mk.mc, 1), 0);
    for (int64_t deadline = base_mono_ms() + MOCK_WAIT_MS;
         kafka_out_down(f->ko) && base_mono_ms() < deadline;)
        base_sleep_ms(10);
    assert_false(kafka_out_down(f->ko));
    assert_int_equal(
        run(f, BODY2, strlen(BODY2), PROTO_T_NONE, BODY_ENC_IDENTITY, NULL, out, sizeof out, &ra),
        200);
    assert_int_equal(mock_topic_count(&f->mk, f->mk.events), 2);
}

#define BODY3                                                                                      \
    "{\"writeKey\":\"wk_test_123\",\"batch\":["                                                    \
    "{\"type\":\"track\",\"messageId\":\"m4\",\"userId\":\"u1\",\"event\":\"Second\"},"            \
    "{\"type\":\"track\",\"messageId\":\"m5\",\"userId\":\"u2\",\"event\":\"Third\"}]}"

/* Kafka down with the spool on (SPEC §3-§4): a request is answered 200 once its messages are
 * fsync'd to the spool; dedup remembers spooled events as delivered ones; a request whose spool
 * write fails gets 503 and is forgotten by dedup, so its retry goes through; once the broker is
 * back the spool drains every message, once. */
static void test_spool_when_kafka_down(void **state)
{
    fixture_t *f = *state;
    char out[1024], data[] = "/tmp/sluice-ingest-spool-XXXXXX", sdir[64];
    int ra = 0;
    assert_non_null(mkdtemp(data));
    snprintf(sdir, sizeof sdir, "%s/spool", data);
    /* segment_bytes 1: every group commit starts a new file, so removing the directory makes
     * the next one fail. */
    spool_opts_t o = {.data_dir = data, .max_bytes = 1 << 20, .segment_bytes = 1, .ko = f->ko};
    char err[256];
    assert_int_equal(spool_open(&o, &f->spool, err, sizeof err), SPOOL_OK);
    assert_int_equal(spool_start(f->spool), SPOOL_OK);
    f->ctx.spool = f->spool;
    dedup_opts_t dopts = {.window_ms = 3600000, .max_memory = 1 << 20};
    assert_int_equal(dedup_new(&dopts, &f->dedup), DEDUP_OK);
    f->ctx.dedup = f->dedup;

    assert_int_equal(kafka_out_produce(f->ko, KAFKA_TOPIC_PQL, "k", 1, "warm", 4, NULL, 0, NULL),
                     KAFKA_OK);
    assert_int_equal(kafka_out_flush(f->ko, MOCK_WAIT_MS), 0);
    assert_int_equal(rd_kafka_mock_broker_set_down(f->mk.mc, 1), 0);
    for (int64_t deadline = base_mono_ms() + MOCK_WAIT_MS;
         !kafka_out_down(f->ko) && base_mono_ms() < deadline;)
        base_sleep_ms(10);
    assert_true(kafka_out_down(f->ko));

    int64_t t0 = base_mono_ms();
    assert_int_equal(
        run(f, BODY2, strlen(BODY2), PROTO_T_NONE, BODY_ENC_IDENTITY, NULL, out, sizeof out, &ra),
        200);
    assert_true(base_mono_ms() - t0 < 1000);
    assert_non_null(strstr(out, "\"accepted\":2,\"duplicates\":0,\"rejected\":1"));
    assert_int_equal(metrics_get(METRIC_SPOOL_APPENDED), 3); /* 2 events + 1 rejected */
    assert_int_equal(metrics_get(METRIC_KAFKA_FAIL_FAST), 0);
    assert_true(spool_busy(f->spool));
    /* Remembered as seen, exactly as a delivered event. */
    assert_int_equal(
        run(f, BODY2, strlen(BODY2), PROTO_T_NONE, BODY_ENC_IDENTITY, NULL, out, sizeof out, &ra),
        200);
    assert_non_null(strstr(out, "\"accepted\":0,\"duplicates\":2"));

    /* The spool cannot write (its directory is gone for a moment): 503, and the events are not
     * remembered. */
    char away[80];
    snprintf(away, sizeof away, "%s.away", sdir);
    assert_int_equal(rename(sdir, away), 0);
    assert_int_equal(
        run(f, BODY3, strlen(BODY3), PROTO_T_NONE, BODY_ENC_IDENTITY, NULL, out, sizeof out, &ra),
        503);
    assert_string_equal(out, "unavailable");
    assert_true(ra > 0);
    assert_int_equal(metrics_get(METRIC_SPOOL_WRITE_ERRORS), 1);
    assert_int_equal(rename(away, sdir), 0);
    assert_int_equal(
        run(f, BODY3, strlen(BODY3), PROTO_T_NONE, BODY_ENC_IDENTITY, NULL, out, sizeof out, &ra),
        200);
    assert_non_null(strstr(out, "\"accepted\":2,\"duplicates\":0"));

    /* Back: everything spooled is delivered, once; the spool empties. */
    assert_int_equal(rd_kafka_mock_broker_set_up(f->mk.mc, 1), 0);
    for (int64_t deadline = base_mono_ms() + MOCK_WAIT_MS;
         spool_busy(f->spool) && base_mono_ms() < deadline;)
        base_sleep_ms(20);
    assert_false(spool_busy(f->spool));
    /* m1, m2, m4, m5 once; the rejected event of BODY2 twice (rejections are not deduped). */
    assert_int_equal(metrics_get(METRIC_SPOOL_DRAINED), 6);
    assert_int_equal(mock_topic_count(&f->mk, f->mk.events), 4);
    assert_int_equal(mock_topic_count(&f->mk, f->mk.rejected), 2);
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", data);
    assert_int_equal(system(cmd), 0);
}

/* Kafka down and the spool full (spool.max_bytes): fail fast, 503 kafka_unavailable at once,
 * counted in sluice_kafka_fail_fast_total; nothing spooled, nothing produced. */
static void test_spool_full_fails_fast(void **state)
{
    fixture_t *f = *state;
    char out[1024], data[] = "/tmp/sluice-ingest-spool-XXXXXX";
    int ra = 0;
    assert_non_null(mkdtemp(data));
    spool_opts_t o = {
        .data_dir = data, .max_bytes = 1 << 20, .segment_bytes = 1 << 20, .ko = f->ko};
    char err[256];
    assert_int_equal(spool_open(&o, &f->spool, err, sizeof err), SPOOL_OK);
    assert_int_equal(spool_start(f->spool), SPOOL_OK);
    f->ctx.spool = f->spool;
    assert_int_equal(kafka_out_produce(f->ko, KAFKA_TOPIC_PQL, "k", 1, "warm", 4, NULL, 0, NULL),
                     KAFKA_OK);
    assert_int_equal(kafka_out_flush(f->ko, MOCK_WAIT_MS), 0);
    assert_int_equal(rd_kafka_mock_broker_set_down(f->mk.mc, 1), 0);
    for (int64_t deadline = base_mono_ms() + MOCK_WAIT_MS;
         !kafka_out_down(f->ko) && base_mono_ms() < deadline;)
        base_sleep_ms(10);
    assert_int_equal(
        run(f, BODY3, strlen(BODY3), PROTO_T_NONE, BODY_ENC_IDENTITY, NULL, out, sizeof out, &ra),
        200);
    /* Reopened with its cap at exactly what it holds: full. */
    spool_stats_t st;
    spool_stats(f->spool, &st);
    spool_free(f->spool);
    o.max_bytes = st.bytes;
    assert_int_equal(spool_open(&o, &f->spool, err, sizeof err), SPOOL_OK);
    assert_int_equal(spool_start(f->spool), SPOOL_OK);
    f->ctx.spool = f->spool;
    assert_false(spool_has_room(f->spool));
    int64_t t0 = base_mono_ms();
    assert_int_equal(
        run(f, BODY2, strlen(BODY2), PROTO_T_NONE, BODY_ENC_IDENTITY, NULL, out, sizeof out, &ra),
        503);
    assert_true(base_mono_ms() - t0 < 1000);
    assert_non_null(strstr(out, "\"error\":\"kafka_unavailable\""));
    assert_true(ra > 0);
    assert_int_equal(metrics_get(METRIC_KAFKA_FAIL_FAST), 1);
    assert_int_equal(metrics_get(METRIC_SPOOL_APPENDED), 2);
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", data);
    assert_int_equal(system(cmd), 0);
}

/* The producer queue (kafka_queue_bytes, 1 KiB here) takes the first message, not the second:
 * 503, the first message is still delivered, and the refusal is counted once. */
static void test_queue_full_is_503(void **state)
{
    fixture_t *f = *state;
    f->cfg.kafka_queue_bytes = 1024;
    restart_kafka(f);
    char pad[601];
    memset(pad, 'x', sizeof pad - 1);
    pad[sizeof pad - 1] = '\0';
    char body[2048];
    int blen = snprintf(body, sizeof body,
                        "{\"writeKey\":\"wk_test_123\",\"batch\":["
                        "{\"type\":\"track\",\"messageId\":\"q1\",\"userId\":\"u1\",\"event\":"
                        "\"e\",\"properties\":{\"pad\":\"%s\"}},"
                        "{\"type\":\"track\",\"messageId\":\"q2\",\"event\":\"No User\","
                        "\"properties\":{\"pad\":\"%s\"}}]}",
                        pad, pad);
    assert_true(blen > 0 && (size_t)blen < sizeof body);
    char out[1024];
    int ra = 0;
    assert_int_equal(
        run(f, body, (size_t)blen, PROTO_T_NONE, BODY_ENC_IDENTITY, NULL, out, sizeof out, &ra),
        503);
    assert_int_equal(mock_topic_count(&f->mk, f->mk.events), 1);
    assert_int_equal(mock_topic_count(&f->mk, f->mk.rejected), 0);
    assert_string_equal(out, "unavailable");
    assert_true(ra > 0);
    assert_int_equal(metrics_get(METRIC_KAFKA_QUEUE_FULL), 1); /* counted by kafka_out only */
    assert_int_equal(metrics_get(METRIC_EVENTS_ACCEPTED), 0);
}

static void test_rate_limited(void **state)
{
    fixture_t *f = *state;
    f->cfg.rate_per_key = 2; /* burst 2 events */
    auth_free(f->auth);
    assert_int_equal(auth_new(&f->cfg, &f->auth), AUTH_OK);
    f->ctx.auth = f->auth;
    char out[1024];
    int ra = 0;
    assert_int_equal(
        run(f, BODY2, strlen(BODY2), PROTO_T_NONE, BODY_ENC_IDENTITY, NULL, out, sizeof out, &ra),
        200);
    assert_int_equal(
        run(f, BODY2, strlen(BODY2), PROTO_T_NONE, BODY_ENC_IDENTITY, NULL, out, sizeof out, &ra),
        429);
    assert_non_null(strstr(out, "rate_limited"));
    assert_true(ra >= 1);
}

static void test_errors_truncated(void **state)
{
    fixture_t *f = *state;
    /* 150 invalid events: the answer lists 100 and says it was truncated. */
    base_buf_t b;
    base_buf_init(&b, 1 << 20);
    assert_int_equal(buf_lit(&b, "{\"writeKey\":\"wk_test_123\",\"batch\":["), 0);
    for (int i = 0; i < 150; i++) {
        char ev[96];
        int n = snprintf(ev, sizeof ev, "%s{\"type\":\"track\",\"messageId\":\"bad%d\"}",
                         i ? "," : "", i);
        assert_int_equal(base_buf_append(&b, ev, (size_t)n), 0);
    }
    assert_int_equal(buf_lit(&b, "]}"), 0);
    char *out = malloc(64 * 1024);
    assert_int_equal(
        run(f, b.data, b.len, PROTO_T_NONE, BODY_ENC_IDENTITY, NULL, out, 64 * 1024, NULL), 200);
    assert_non_null(strstr(out, "\"rejected\":150"));
    assert_non_null(strstr(out, "\"errors_truncated\":true"));
    assert_non_null(strstr(out, "\"messageId\":\"bad99\""));
    assert_null(strstr(out, "\"messageId\":\"bad100\""));
    free(out);
    base_buf_free(&b);
}

static void test_json_str(void **state)
{
    (void)state;
    char mem[128];
    base_buf_t b;
    base_buf_init_fixed(&b, mem, sizeof mem);
    assert_int_equal(proto_json_str(&b, "a\"b\\c\n\x01", 7), 0);
    assert_int_equal(proto_json_str(&b, "\xff", 1), 0);
    assert_int_equal(proto_json_str(&b, NULL, 0), 0);
    assert_int_equal(proto_json_str(&b, "\xc3\xa9", 2), 0);
    assert_int_equal(b.len, strlen("\"a\\\"b\\\\c\\n\\u0001\"nullnull\"\xc3\xa9\""));
    assert_memory_equal(mem, "\"a\\\"b\\\\c\\n\\u0001\"nullnull\"\xc3\xa9\"", b.len);
}

/* Pushes from several threads; the consumer sees every request exactly once. */
#define PUSHERS    4
#define PER_PUSHER 500
static ingest_mailbox_t *mt_mb;
static ingest_req_t mt_reqs[PUSHERS][PER_PUSHER];

static void pusher(void *arg)
{
    ingest_req_t *mine = arg;
    for (int i = 0; i < PER_PUSHER; i++)
        ingest_mailbox_push(mt_mb, &mine[i]);
}

static void test_mailbox_threads(void **state)
{
    fixture_t *f = *state;
    mt_mb = &f->mb;
    memset(mt_reqs, 0, sizeof mt_reqs);
    uv_thread_t th[PUSHERS];
    for (int t = 0; t < PUSHERS; t++)
        uv_thread_create(&th[t], pusher, mt_reqs[t]);
    size_t seen = 0;
    int last_index[PUSHERS] = {-1, -1, -1, -1};
    uint64_t deadline = uv_hrtime() + 10ull * 1000000000ull;
    while (seen < PUSHERS * PER_PUSHER && uv_hrtime() < deadline) {
        for (ingest_req_t *r = ingest_mailbox_take(&f->mb); r != NULL; r = ingest_req_next(r)) {
            int t = (int)((r - &mt_reqs[0][0]) / PER_PUSHER);
            int i = (int)((r - &mt_reqs[0][0]) % PER_PUSHER);
            assert_true(t >= 0 && t < PUSHERS);
            /* Oldest first: each pusher's requests come out in its push order. */
            assert_true(i > last_index[t]);
            last_index[t] = i;
            seen++;
        }
    }
    for (int t = 0; t < PUSHERS; t++)
        uv_thread_join(&th[t]);
    for (ingest_req_t *r = ingest_mailbox_take(&f->mb); r != NULL; r = ingest_req_next(r))
        seen++;
    assert_int_equal(seen, PUSHERS * PER_PUSHER);
}

int main(void)
{
    log_set_level(LOG_WARN);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_batch_produced, setup, teardown),
        cmocka_unit_test_setup_teardown(test_group_learns_account, setup, teardown),
        cmocka_unit_test_setup_teardown(test_single_call, setup, teardown),
        cmocka_unit_test_setup_teardown(test_auth_failures, setup, teardown),
        cmocka_unit_test_setup_teardown(test_unreadable_bodies, setup, teardown),
        cmocka_unit_test_setup_teardown(test_delivery_failure_is_503, setup, teardown),
        cmocka_unit_test_setup_teardown(test_kafka_down_fails_fast, setup, teardown),
        cmocka_unit_test_setup_teardown(test_spool_when_kafka_down, setup, teardown),
        cmocka_unit_test_setup_teardown(test_spool_full_fails_fast, setup, teardown),
        cmocka_unit_test_setup_teardown(test_queue_full_is_503, setup, teardown),
        cmocka_unit_test_setup_teardown(test_rate_limited, setup, teardown),
        cmocka_unit_test_setup_teardown(test_errors_truncated, setup, teardown),
        cmocka_unit_test_setup_teardown(test_json_str, setup, teardown),
        cmocka_unit_test_setup_teardown(test_mailbox_threads, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, mock_kafka_group_teardown);
}
