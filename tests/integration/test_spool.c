/*
 * test_spool.c — the spool under faults (SPEC §3 durability promise, §4 spool), with the real
 * collector over loopback and the mock cluster in its helper process:
 *  - spool_broker_down_20s: a steady load; the broker goes down for 20 s and comes back. Every
 *    request is retried until it gets a 200 (as an SDK does); afterwards every acknowledged event
 *    is on the events topic. /readyz stays 200 during the outage (the spool has room).
 *  - spool_kill9_restart: events spooled while the broker is down, the collector killed with
 *    SIGKILL mid-load and restarted on the same data dir: every acknowledged event reaches Kafka.
 *  - spool_torn_tail: the last segment is cut in the middle of its last record (what a crash
 *    during a group commit leaves); the restart truncates it, logs spool_truncated, and drains
 *    the rest: everything but that one record.
 *  - readyz_spool_full: Kafka down, spool.max_bytes 1 MiB filled: 503 kafka_unavailable +
 *    Retry-After at once, /readyz 503 with the reason and the spool's numbers; after recovery
 *    ready again and every acknowledged event delivered.
 * Duplicates: the read-back is deduplicated by the message-id header and the copies counted
 * and printed. Two sources are allowed by design: librdkafka's mock cluster appends a produce
 * retried after a lost connection twice (it checks idempotent sequence numbers only for
 * transactional producers), and a drain window delivered just before a kill -9 is re-sent after
 * the restart (spool.h: at most one window). A missing acknowledged event fails the case.
 */
#include "it_common.h"

#include <dirent.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define BATCH 10
/* Pause between a 200 and the next batch in the 20 s case: ~50 batches/s keeps the read-back
 * (every message of the topic) small enough for the test reader. */
#define PACE_MS 15

/* Every message id sent, and whether it was acknowledged (a 200 covering it). */
typedef struct load {
    char (*id)[IT_ID_BYTES];
    bool *acked;
    bool *retried; /* its batch was refused at least once before the 200 */
    size_t n, cap;
    size_t requests, ok, refused;
} load_t;

static void load_free(load_t *l)
{
    free(l->id);
    free(l->acked);
    free(l->retried);
    memset(l, 0, sizeof *l);
}

/* Builds a batch of BATCH new events (ids added to l, not yet acknowledged) into body. */
static size_t load_batch(load_t *l, const char *prefix, base_buf_t *body)
{
    if (l->n + BATCH > l->cap) {
        l->cap = l->cap ? l->cap * 2 : 4096;
        l->id = realloc(l->id, l->cap * sizeof *l->id);
        l->acked = realloc(l->acked, l->cap * sizeof *l->acked);
        l->retried = realloc(l->retried, l->cap * sizeof *l->retried);
        assert_non_null(l->id);
        assert_non_null(l->acked);
        assert_non_null(l->retried);
    }
    size_t first = l->n;
    json_t *events = json_array();
    for (int i = 0; i < BATCH; i++) {
        sup_message_id(l->id[l->n], IT_ID_BYTES, prefix);
        char user[32];
        snprintf(user, sizeof user, "user-%zu", l->n % 7); /* several events per key */
        json_array_append_new(events, sup_track(l->id[l->n], user, "Load", i));
        l->retried[l->n] = false;
        l->acked[l->n++] = false;
    }
    json_t *batch = sup_batch(events);
    body->len = 0;
    assert_int_equal(sup_json_dump(batch, body), 0);
    json_decref(batch);
    return first;
}

/* Sends one batch until it gets a 200 or deadline_ms passes (an SDK's retry). Returns the last
 * status (0: no answer). */
static long load_send(const sup_env_t *e, sup_http_t *h, load_t *l, const char *prefix,
                      int64_t deadline_ms)
{
    base_buf_t body = {0};
    size_t first = load_batch(l, prefix, &body);
    const char *hdr[] = {"Content-Type: application/json", NULL};
    sup_http_req_t req = {.path = "/v1/batch",
                          .headers = hdr,
                          .body = body.data,
                          .body_len = body.len,
                          .user = IT_KEY,
                          .timeout_ms = 8000};
    long status = 0;
    bool refused = false;
    while (base_mono_ms() < deadline_ms) {
        sup_http_resp_t r;
        l->requests++;
        sup_http_do(h, &req, &r);
        status = r.status;
        sup_http_resp_free(&r);
        if (status == 200) break;
        l->refused++;
        refused = true;
        if (status == 0) break; /* the collector is gone (kill -9) */
        base_sleep_ms(50);
    }
    (void)e;
    if (status == 200) {
        l->ok++;
        for (size_t i = first; i < first + BATCH; i++) {
            l->acked[i] = true;
            l->retried[i] = refused;
        }
    }
    base_buf_free(&body);
    return status;
}

static int cmp_str(const void *a, const void *b)
{
    return strcmp(*(const char *const *)a, *(const char *const *)b);
}

/* Reads the events topic and checks every acknowledged id is there. Prints the figures; returns
 * the number of duplicated copies (*unexplained, may be NULL: those not of a retried batch).
 * missing_ok: acknowledged ids allowed to be missing. */
static size_t check_delivered(const sup_env_t *e, const load_t *l, const char *name,
                              size_t missing_ok, int64_t recover_ms, size_t *unexplained)
{
    size_t acked = 0;
    for (size_t i = 0; i < l->n; i++)
        acked += l->acked[i];
    sup_kmsgs_t m;
    assert_int_equal(sup_consume(e->mock.bootstrap, "events", acked - missing_ok, 20000, &m), 0);
    const char **got = calloc(m.n + 1, sizeof *got);
    assert_non_null(got);
    size_t ng = 0;
    for (size_t i = 0; i < m.n; i++) {
        const char *id = sup_kmsg_header(&m.msgs[i], "message-id");
        assert_non_null(id);
        got[ng++] = id;
    }
    qsort(got, ng, sizeof *got, cmp_str);
    size_t unique = 0, dups = 0;
    for (size_t i = 0; i < ng; i++) {
        if (i > 0 && strcmp(got[i], got[i - 1]) == 0)
            dups++;
        else
            unique++;
    }
    /* A copy of an event whose batch was refused (503) and retried is the documented
     * at-least-once across a 503 (kafka_out.c: a message timed out in flight may have been
     * written; the mock appends it). Any other copy is "unexplained". */
    size_t dups_retried = 0;
    for (size_t i = 0; i < l->n; i++) {
        const char *key = l->id[i];
        const char **hit = bsearch(&key, got, ng, sizeof *got, cmp_str);
        if (hit == NULL || !l->retried[i]) continue;
        while (hit > got && strcmp(hit[-1], key) == 0)
            hit--;
        for (const char **q = hit + 1; q < got + ng && strcmp(*q, key) == 0; q++)
            dups_retried++;
    }
    if (unexplained != NULL) *unexplained = dups - dups_retried;
    size_t missing = 0, extra_unacked = 0;
    for (size_t i = 0; i < l->n; i++) {
        const char *key = l->id[i];
        bool found = bsearch(&key, got, ng, sizeof *got, cmp_str) != NULL;
        if (l->acked[i] && !found) {
            if (missing < 5) fprintf(stderr, "%s: acknowledged %s not delivered\n", name, key);
            missing++;
        }
        if (!l->acked[i] && found) extra_unacked++;
    }
    fprintf(stderr,
            "%s: sent %zu events in %zu requests (%zu answered 200, %zu refused and retried); "
            "acknowledged %zu; delivered %zu unique (%zu messages, %zu duplicate copies, %zu of "
            "them of retried batches); missing %zu; delivered though not acknowledged %zu; "
            "spool drained %lld ms after recovery\n",
            name, l->n, l->requests, l->ok, l->refused, acked, unique, m.n, dups, dups_retried,
            missing, extra_unacked, (long long)recover_ms);
    assert_int_equal(missing, missing_ok);
    free(got);
    sup_kmsgs_free(&m);
    return dups;
}

/* Polls /metrics until sluice_spool_records is 0; returns ms waited, or -1 on timeout. */
static int64_t wait_spool_empty(const sup_env_t *e, int timeout_ms)
{
    int64_t t0 = base_mono_ms();
    while (base_mono_ms() - t0 < timeout_ms) {
        sup_http_req_t get = {.method = "GET", .path = "/metrics", .timeout_ms = 5000};
        sup_http_resp_t r;
        bool empty = sup_http_once(e->coll.port, &get, &r) == 0 && r.body.data != NULL &&
                     strstr(r.body.data, "\nsluice_spool_records 0\n") != NULL;
        sup_http_resp_free(&r);
        if (empty) return base_mono_ms() - t0;
        base_sleep_ms(50);
    }
    return -1;
}

/* sluice_spool_records from /metrics, or -1. */
static long spool_records(const sup_env_t *e)
{
    sup_http_req_t get = {.method = "GET", .path = "/metrics", .timeout_ms = 5000};
    sup_http_resp_t r;
    long n = -1;
    if (sup_http_once(e->coll.port, &get, &r) == 0 && r.body.data != NULL) {
        const char *p = strstr(r.body.data, "\nsluice_spool_records ");
        if (p != NULL) n = strtol(p + strlen("\nsluice_spool_records "), NULL, 10);
    }
    sup_http_resp_free(&r);
    return n;
}

static void test_spool_broker_down_20s(void **state)
{
    sup_env_t *e = it_start(state, "kafka: {delivery_timeout: 2s}\n");
    sup_http_t *h = sup_http_new(e->coll.port);
    load_t l = {0};
    int64_t t0 = base_mono_ms();
    while (base_mono_ms() - t0 < 2000) {
        assert_int_equal(load_send(e, h, &l, "pre", base_mono_ms() + 10000), 200);
        base_sleep_ms(PACE_MS);
    }
    assert_int_equal(sup_mock_cmd(&e->mock, "down 1", 5000), 0);
    int64_t t_down = base_mono_ms();
    bool ready_checked = false;
    while (base_mono_ms() - t_down < 20000) {
        assert_int_equal(load_send(e, h, &l, "down", base_mono_ms() + 10000), 200);
        base_sleep_ms(PACE_MS);
        if (!ready_checked && base_mono_ms() - t_down > 3000) {
            /* Kafka down, the spool has room: ready, and the body says so. */
            sup_http_req_t get = {.method = "GET", .path = "/readyz", .timeout_ms = 5000};
            sup_http_resp_t r;
            assert_int_equal(sup_http_once(e->coll.port, &get, &r), 0);
            fprintf(stderr, "readyz during the outage: %ld %s\n", r.status, r.body.data);
            assert_int_equal(r.status, 200);
            assert_non_null(strstr(r.body.data, "\"kafka\":\"all kafka brokers down\""));
            assert_non_null(strstr(r.body.data, "\"spool\":{\"bytes\":"));
            sup_http_resp_free(&r);
            ready_checked = true;
        }
    }
    assert_int_equal(sup_mock_cmd(&e->mock, "up 1", 5000), 0);
    /* Recovery: how long until the whole backlog is in Kafka. */
    int64_t drained = wait_spool_empty(e, 30000);
    fprintf(stderr, "broker_down_20s: spool empty %lld ms after the broker came back\n",
            (long long)drained);
    assert_true(drained >= 0);
    int64_t t_post = base_mono_ms();
    while (base_mono_ms() - t_post < 2000) {
        assert_int_equal(load_send(e, h, &l, "post", base_mono_ms() + 10000), 200);
        base_sleep_ms(PACE_MS);
    }
    assert_true(wait_spool_empty(e, 30000) >= 0);
    sup_http_free(h);
    size_t unexplained = 0;
    (void)check_delivered(e, &l, "broker_down_20s", 0, drained, &unexplained);
    /* Exactly once, but for the documented copies of batches retried after a 503. */
    assert_int_equal(unexplained, 0);
    load_free(&l);
}

static void test_spool_kill9_restart(void **state)
{
    sup_env_t *e = it_start(state, "kafka: {delivery_timeout: 2s}\n");
    sup_http_t *h = sup_http_new(e->coll.port);
    load_t l = {0};
    for (int i = 0; i < 20; i++)
        assert_int_equal(load_send(e, h, &l, "pre", base_mono_ms() + 10000), 200);
    assert_int_equal(sup_mock_cmd(&e->mock, "down 1", 5000), 0);
    /* Load while down until 30 batches went to the spool, then one more request whose answer
     * nobody waits for, and SIGKILL while it is being handled. */
    size_t ok_before = l.ok;
    for (int64_t dl = base_mono_ms() + 20000; l.ok < ok_before + 30 && base_mono_ms() < dl;)
        assert_int_equal(load_send(e, h, &l, "down", base_mono_ms() + 10000), 200);
    assert_true(l.ok >= ok_before + 30);
    base_buf_t body = {0};
    (void)load_batch(&l, "killed", &body);
    int fd = sup_tcp_connect(e->coll.port, 2000);
    assert_true(fd >= 0);
    char head[256];
    int hn = snprintf(head, sizeof head,
                      "POST /v1/batch HTTP/1.1\r\nHost: x\r\nAuthorization: Basic d2tfdGVzdDo=\r\n"
                      "Content-Type: application/json\r\nContent-Length: %zu\r\n\r\n",
                      body.len);
    assert_int_equal(sup_tcp_send(fd, head, (size_t)hn, 2000), 0);
    assert_int_equal(sup_tcp_send(fd, body.data, body.len, 2000), 0);
    sup_collector_signal(&e->coll, SIGKILL);
    close(fd);
    base_buf_free(&body);
    assert_int_equal(sup_collector_wait(&e->coll, 5000), 128 + SIGKILL);
    sup_http_free(h);
    static const char *const keys[] = {"wk_test=test", "wk_web=web", NULL};
    const char *path = getenv("SLUICE_COLLECTOR");
    assert_non_null(path);
    assert_int_equal(sup_collector_start(&e->coll, path, e->dir, e->mock.bootstrap, keys,
                                         "kafka: {delivery_timeout: 2s}\n", 30000),
                     0);
    assert_true(sup_collector_log_contains(&e->coll, "spool_recovered"));
    long spooled = spool_records(e);
    fprintf(stderr, "kill9_restart: %ld records in the spool after the restart\n", spooled);
    assert_true(spooled >= 300);
    assert_int_equal(sup_mock_cmd(&e->mock, "up 1", 5000), 0);
    int64_t t_up = base_mono_ms();
    int64_t drained = wait_spool_empty(e, 30000);
    assert_true(drained >= 0);
    (void)check_delivered(e, &l, "kill9_restart", 0, base_mono_ms() - t_up, NULL);
    load_free(&l);
}

/* The newest segment file of DIR/data/spool (path into out). */
static void newest_segment(const sup_env_t *e, char *out, size_t outlen)
{
    char dir[512];
    snprintf(dir, sizeof dir, "%s/data/spool", e->dir);
    DIR *d = opendir(dir);
    assert_non_null(d);
    char best[64] = "";
    for (struct dirent *de; (de = readdir(d)) != NULL;)
        if (strstr(de->d_name, ".seg") != NULL && strcmp(de->d_name, best) > 0)
            snprintf(best, sizeof best, "%.63s", de->d_name);
    closedir(d);
    assert_true(best[0] != '\0');
    snprintf(out, outlen, "%s/%s", dir, best);
}

static void test_spool_torn_tail(void **state)
{
    sup_env_t *e = it_start(state, "kafka: {delivery_timeout: 2s}\n");
    sup_http_t *h = sup_http_new(e->coll.port);
    load_t l = {0};
    for (int i = 0; i < 5; i++)
        assert_int_equal(load_send(e, h, &l, "pre", base_mono_ms() + 10000), 200);
    assert_int_equal(sup_mock_cmd(&e->mock, "down 1", 5000), 0);
    for (int i = 0; i < 30; i++)
        assert_int_equal(load_send(e, h, &l, "down", base_mono_ms() + 10000), 200);
    sup_http_free(h);
    /* Stopped cleanly (the spool stays), then the last record is cut as a crash would. */
    assert_int_equal(sup_collector_stop(&e->coll, 15000), 0);
    char seg[600];
    newest_segment(e, seg, sizeof seg);
    struct stat st;
    assert_int_equal(stat(seg, &st), 0);
    assert_int_equal(truncate(seg, st.st_size - 5), 0);
    static const char *const keys[] = {"wk_test=test", "wk_web=web", NULL};
    const char *path = getenv("SLUICE_COLLECTOR");
    assert_non_null(path);
    assert_int_equal(sup_collector_start(&e->coll, path, e->dir, e->mock.bootstrap, keys,
                                         "kafka: {delivery_timeout: 2s}\n", 30000),
                     0);
    assert_true(sup_collector_log_contains(&e->coll, "\"spool_truncated\""));
    assert_int_equal(sup_mock_cmd(&e->mock, "up 1", 5000), 0);
    int64_t t_up = base_mono_ms();
    assert_true(wait_spool_empty(e, 30000) >= 0);
    /* The torn record is the last event of the last batch: that one alone is missing. */
    l.acked[l.n - 1] = false;
    size_t unexplained = 0;
    (void)check_delivered(e, &l, "torn_tail", 0, base_mono_ms() - t_up, &unexplained);
    assert_int_equal(unexplained, 0);
    sup_kmsgs_t m;
    assert_int_equal(sup_consume(e->mock.bootstrap, "events", 0, 5000, &m), 0);
    assert_int_equal(sup_kmsgs_count_id(&m, l.id[l.n - 1]), 0);
    sup_kmsgs_free(&m);
    load_free(&l);
}

/* GET /readyz: status and body. */
static long readyz(const sup_env_t *e, base_buf_t *body)
{
    sup_http_req_t get = {.method = "GET", .path = "/readyz", .timeout_ms = 5000};
    sup_http_resp_t r;
    sup_http_once(e->coll.port, &get, &r);
    long status = r.status;
    body->len = 0;
    if (r.body.data != NULL) assert_int_equal(sup_text_append(body, r.body.data, r.body.len), 0);
    sup_http_resp_free(&r);
    return status;
}

/* One attempt with a new batch of BATCH events; the answer in *r (free it); on 200 its events
 * count as acknowledged. */
static long send_once(sup_http_t *h, load_t *l, const char *prefix, sup_http_resp_t *r)
{
    base_buf_t body = {0};
    size_t first = load_batch(l, prefix, &body);
    const char *hdr[] = {"Content-Type: application/json", NULL};
    sup_http_req_t req = {.path = "/v1/batch",
                          .headers = hdr,
                          .body = body.data,
                          .body_len = body.len,
                          .user = IT_KEY,
                          .timeout_ms = 8000};
    l->requests++;
    sup_http_do(h, &req, r);
    if (r->status == 200) {
        l->ok++;
        for (size_t i = first; i < first + BATCH; i++)
            l->acked[i] = true;
    } else {
        l->refused++;
    }
    base_buf_free(&body);
    return r->status;
}

/* SPEC §3/§4: Kafka down and the spool at spool.max_bytes (1 MiB here). Requests are spooled (200)
 * until the cap, then answered at once 503 kafka_unavailable + Retry-After (spool_full when Kafka
 * is up but the spool still full); /readyz says 503 not ready, why, and the spool's numbers
 * (bytes, max_bytes, records, oldest age). When the broker returns the spool drains, /readyz is
 * 200 again and every acknowledged event is on the topic. */
static void test_readyz_spool_full(void **state)
{
    sup_env_t *e = it_start(state, "kafka: {delivery_timeout: 2s}\nspool: {max_bytes: 1MiB}\n");
    sup_http_t *h = sup_http_new(e->coll.port);
    load_t l = {0};
    base_buf_t body = {0};
    for (int i = 0; i < 5; i++)
        assert_int_equal(load_send(e, h, &l, "pre", base_mono_ms() + 10000), 200);
    assert_int_equal(readyz(e, &body), 200);
    assert_int_equal(sup_mock_cmd(&e->mock, "down 1", 5000), 0);
    /* Fill the spool, one attempt per batch, until the first refusal (bounded). */
    size_t spooled = 0;
    sup_http_resp_t r;
    int64_t took = 0;
    for (int64_t dl = base_mono_ms() + 30000; base_mono_ms() < dl && spooled < 5000;) {
        int64_t t0 = base_mono_ms();
        long status = send_once(h, &l, "fill", &r);
        took = base_mono_ms() - t0;
        const char *code = json_string_value(json_object_get(r.json, "error"));
        /* Produced just before librdkafka noticed the outage: waits for the delivery timeout
         * and gets 503 unavailable; the next ones are spooled. */
        bool raced = status == 503 && code != NULL && strcmp(code, "unavailable") == 0;
        if (status != 200 && !raced) break;
        sup_http_resp_free(&r);
        if (status == 200) spooled++;
    }
    fprintf(stderr, "readyz_spool_full: %zu batches spooled, then %ld %s in %lld ms\n", spooled,
            r.status, r.body.data ? r.body.data : "", (long long)took);
    /* kafka_unavailable while the collector knows Kafka down; spool_full when it takes it for
     * up (seen: the outage flag does not stay set through the whole fill, see the note). */
    it_assert_error(&r, 503, NULL);
    const char *code = json_string_value(json_object_get(r.json, "error"));
    assert_true(strcmp(code, "kafka_unavailable") == 0 || strcmp(code, "spool_full") == 0);
    char retry_after[32];
    assert_true(sup_http_header(&r, "Retry-After", retry_after, sizeof retry_after));
    assert_true(atoi(retry_after) >= 1);
    assert_true(took < 1000);
    sup_http_resp_free(&r);

    long rs = readyz(e, &body);
    fprintf(stderr, "readyz_spool_full: /readyz %ld %s\n", rs, body.data);
    assert_int_equal(rs, 503);
    json_t *j = json_loads(body.data, 0, NULL);
    assert_non_null(j);
    assert_true(json_is_false(json_object_get(j, "ready")));
    assert_non_null(strstr(json_string_value(json_object_get(j, "reason")), "spool full"));
    assert_non_null(json_string_value(json_object_get(j, "kafka")));
    const json_t *sp = json_object_get(j, "spool");
    json_int_t bytes = json_integer_value(json_object_get(sp, "bytes"));
    json_int_t max = json_integer_value(json_object_get(sp, "max_bytes"));
    assert_int_equal(max, 1024 * 1024);
    assert_true(bytes <= max && bytes * 8 >= max * 7 - 64 * 1024); /* within the reserve */
    assert_true(json_integer_value(json_object_get(sp, "records")) >=
                (json_int_t)(spooled * BATCH));
    assert_true(json_real_value(json_object_get(sp, "oldest_age_seconds")) > 0);
    json_decref(j);

    assert_int_equal(sup_mock_cmd(&e->mock, "up 1", 5000), 0);
    int64_t t_up = base_mono_ms();
    /* While the spool drains it may still be full: spool_full (or kafka_unavailable until the
     * collector has noticed the broker), each with Retry-After; never a wait. */
    int64_t drained = wait_spool_empty(e, 30000);
    assert_true(drained >= 0);
    for (int64_t dl = base_mono_ms() + 5000; readyz(e, &body) != 200 && base_mono_ms() < dl;)
        base_sleep_ms(50);
    fprintf(stderr, "readyz_spool_full: spool drained %lld ms after up, /readyz %s\n",
            (long long)drained, body.data);
    assert_non_null(strstr(body.data, "\"ready\":true"));
    assert_int_equal(load_send(e, h, &l, "post", base_mono_ms() + 10000), 200);
    /* The refused batch is not acknowledged (check_delivered expects only acknowledged ids). */
    sup_http_free(h);
    (void)check_delivered(e, &l, "readyz_spool_full", 0, base_mono_ms() - t_up, NULL);
    base_buf_free(&body);
    load_free(&l);
}

int main(int argc, char **argv)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_teardown(test_spool_broker_down_20s, it_teardown),
        cmocka_unit_test_teardown(test_spool_kill9_restart, it_teardown),
        cmocka_unit_test_teardown(test_spool_torn_tail, it_teardown),
        cmocka_unit_test_teardown(test_readyz_spool_full, it_teardown),
    };
    return it_run(argc, argv, "spool", tests, sizeof tests / sizeof tests[0]);
}
