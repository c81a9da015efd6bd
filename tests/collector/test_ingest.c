/*
 * test_ingest.c — the ingest path (collector/ingest.c) against a fake Kafka producer: what is
 * produced (topics, keys, headers), the answers (200 body, 400/401/413/429/503), that a request
 * is answered 200 only when every message was delivered, and the mailbox.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "server_fakes.h"

#include "auth.c"
#include "body.c"
#include "ingest.c"

static config_write_key_t keys[] = {{"wk_test_123", "test"}};

typedef struct fixture {
    config_t cfg;
    auth_t *auth;
    ingest_ctx_t ctx;
    ingest_scratch_t scratch;
    uv_loop_t loop;
    uv_async_t async;
    ingest_mailbox_t mb;
} fixture_t;

static void async_noop(uv_async_t *a)
{
    (void)a;
}

static int setup(void **state)
{
    fixture_t *f = calloc(1, sizeof *f);
    f->cfg.write_keys = keys;
    f->cfg.n_write_keys = 1;
    f->cfg.event_bytes = 32 * 1024;
    f->cfg.body_bytes = 64 * 1024;
    f->cfg.max_depth = 16;
    f->cfg.max_events = 1000;
    f->cfg.kafka_format = PROTO_FMT_JSON;
    f->cfg.rate_per_key = 0;
    fake_reset();
    assert_int_equal(auth_new(&f->cfg, &f->auth), AUTH_OK);
    ingest_ctx_init(&f->ctx, &f->cfg, NULL, f->auth, (accounts_t *)&fake_accounts);
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
    ingest_scratch_free(&f->scratch);
    auth_free(f->auth);
    uv_close((uv_handle_t *)&f->async, NULL);
    uv_run(&f->loop, UV_RUN_DEFAULT);
    uv_loop_close(&f->loop);
    fake_reset();
    free(f);
    return 0;
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
        proto_buf_t b = {out, 0, outcap, outcap};
        ingest_error_json(&b, err.code, err.message);
        out[b.len < outcap ? b.len : outcap - 1] = '\0';
        if (retry_after) *retry_after = err.retry_after;
        return err.status;
    }
    assert_non_null(req);
    /* The fake producer reports at seal: the request is already in the mailbox. */
    ingest_req_t *got = ingest_mailbox_take(&f->mb);
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

static const char *hdr(const fake_msg_t *m, const char *name)
{
    static char v[128];
    for (size_t i = 0; i < m->nheaders; i++)
        if (strcmp(m->hname[i], name) == 0) {
            memcpy(v, m->hval[i], m->hlen[i]);
            v[m->hlen[i]] = '\0';
            return v;
        }
    return NULL;
}

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
    assert_int_equal(fake_kafka.n, 3);
    /* In batch order: event, rejected, event. */
    const fake_msg_t *m = &fake_kafka.msgs[0];
    assert_int_equal(m->topic, KAFKA_TOPIC_EVENTS);
    assert_int_equal(m->keylen, 2);
    assert_memory_equal(m->key, "u1", 2);
    assert_string_equal(hdr(m, "sluice-schema"), "1");
    assert_string_equal(hdr(m, "content-type"), "application/json");
    assert_string_equal(hdr(m, "event-type"), "track");
    assert_string_equal(hdr(m, "message-id"), "m1");
    assert_non_null(strstr(m->value, "\"source\":\"test\""));
    assert_non_null(strstr(m->value, "\"receivedAt\""));
    m = &fake_kafka.msgs[1];
    assert_int_equal(m->topic, KAFKA_TOPIC_REJECTED);
    assert_int_equal(m->keylen, 0);
    assert_non_null(strstr(m->value, "\"error\":\"missing_user\""));
    assert_non_null(strstr(m->value, "\"source\":\"test\""));
    m = &fake_kafka.msgs[2];
    assert_int_equal(m->topic, KAFKA_TOPIC_EVENTS);
    assert_memory_equal(m->key, "a1", 2);
    assert_string_equal(hdr(m, "event-type"), "identify");
    assert_int_equal(fake_metrics[METRIC_EVENTS_RECEIVED], 3);
    assert_int_equal(fake_metrics[METRIC_EVENTS_ACCEPTED], 2);
    assert_int_equal(fake_rejected, 1);
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
    assert_int_equal(fake_kafka.n, 2);
    /* Both keyed by the account: the group by its groupId, the track by the learned account. */
    assert_int_equal(fake_kafka.msgs[0].keylen, 4);
    assert_memory_equal(fake_kafka.msgs[0].key, "acme", 4);
    assert_int_equal(fake_kafka.msgs[1].keylen, 4);
    assert_memory_equal(fake_kafka.msgs[1].key, "acme", 4);
}

static void test_single_call(void **state)
{
    fixture_t *f = *state;
    static const char body[] = "{\"messageId\":\"s1\",\"userId\":\"u\",\"event\":\"Clicked\"}";
    char out[1024];
    assert_int_equal(run(f, body, sizeof body - 1, PROTO_T_TRACK, BODY_ENC_IDENTITY, "wk_test_123",
                         out, sizeof out, NULL),
                     200);
    assert_int_equal(fake_kafka.n, 1);
    assert_string_equal(hdr(&fake_kafka.msgs[0], "event-type"), "track");
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
    assert_int_equal(fake_kafka.n, 0);
    assert_int_equal(fake_metrics[METRIC_AUTH_FAILURES], 2);
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
    assert_int_equal(fake_metrics[METRIC_DECOMPRESS_LIMIT], 1);
    free(plain);
    free(packed);
    assert_int_equal(fake_kafka.n, 0);
}

static void test_delivery_failure_is_503(void **state)
{
    fixture_t *f = *state;
    char out[1024];
    int ra = 0;
    fake_kafka.fail_deliveries = 1;
    assert_int_equal(
        run(f, BODY2, strlen(BODY2), PROTO_T_NONE, BODY_ENC_IDENTITY, NULL, out, sizeof out, &ra),
        503);
    assert_string_equal(out, "unavailable");
    assert_true(ra > 0);
    assert_int_equal(fake_metrics[METRIC_EVENTS_ACCEPTED], 0);
    /* Retried after recovery: accepted. */
    fake_kafka.fail_deliveries = 0;
    assert_int_equal(
        run(f, BODY2, strlen(BODY2), PROTO_T_NONE, BODY_ENC_IDENTITY, NULL, out, sizeof out, &ra),
        200);
}

static void test_queue_full_is_503(void **state)
{
    fixture_t *f = *state;
    char out[1024];
    int ra = 0;
    fake_kafka.refuse_after = 1; /* the first message goes in, the second is refused */
    assert_int_equal(
        run(f, BODY2, strlen(BODY2), PROTO_T_NONE, BODY_ENC_IDENTITY, NULL, out, sizeof out, &ra),
        503);
    assert_int_equal(fake_kafka.n, 1);
    assert_string_equal(out, "unavailable");
    assert_true(ra > 0);
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
    proto_buf_t b;
    proto_buf_init(&b, 1 << 20);
    assert_int_equal(buf_lit(&b, "{\"writeKey\":\"wk_test_123\",\"batch\":["), 0);
    for (int i = 0; i < 150; i++) {
        char ev[96];
        int n = snprintf(ev, sizeof ev, "%s{\"type\":\"track\",\"messageId\":\"bad%d\"}",
                         i ? "," : "", i);
        assert_int_equal(proto_buf_append(&b, ev, (size_t)n), 0);
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
    proto_buf_free(&b);
}

static void test_json_str(void **state)
{
    (void)state;
    char mem[128];
    proto_buf_t b = {mem, 0, sizeof mem, sizeof mem};
    assert_int_equal(ingest_json_str(&b, "a\"b\\c\n\x01", 7), 0);
    assert_int_equal(ingest_json_str(&b, "\xff", 1), 0);
    assert_int_equal(ingest_json_str(&b, NULL, 0), 0);
    assert_int_equal(ingest_json_str(&b, "\xc3\xa9", 2), 0);
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
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_batch_produced, setup, teardown),
        cmocka_unit_test_setup_teardown(test_group_learns_account, setup, teardown),
        cmocka_unit_test_setup_teardown(test_single_call, setup, teardown),
        cmocka_unit_test_setup_teardown(test_auth_failures, setup, teardown),
        cmocka_unit_test_setup_teardown(test_unreadable_bodies, setup, teardown),
        cmocka_unit_test_setup_teardown(test_delivery_failure_is_503, setup, teardown),
        cmocka_unit_test_setup_teardown(test_queue_full_is_503, setup, teardown),
        cmocka_unit_test_setup_teardown(test_rate_limited, setup, teardown),
        cmocka_unit_test_setup_teardown(test_errors_truncated, setup, teardown),
        cmocka_unit_test_setup_teardown(test_json_str, setup, teardown),
        cmocka_unit_test_setup_teardown(test_mailbox_threads, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
