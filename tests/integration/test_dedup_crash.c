/*
 * test_dedup_crash.c — dedup survives kill -9 (SPEC §5, issue 12 item 2): batches are posted
 * under load, the collector is killed with SIGKILL right after a 200 (with more requests in
 * flight), restarted on the same --data-dir, and every batch that got a 200 is sent again: each
 * must come back all duplicates (accepted 0), and every acknowledged event is in Kafka. The
 * periodic snapshot is an hour away, so only the journal can remember them; the same run with
 * `dedup.journal: false` re-accepts them (the test can fail).
 */
#include "it_common.h"

#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define BATCHES       60
#define PER_BATCH     40
#define IN_FLIGHT     4
#define BASIC_WK_TEST "Authorization: Basic d2tfdGVzdDo=\r\n" /* "wk_test:" */

static const char *const KEYS[] = {"wk_test=test", "wk_web=web", NULL};

typedef struct crash_run {
    base_buf_t body[BATCHES + IN_FLIGHT];
    char ids[BATCHES + IN_FLIGHT][PER_BATCH][IT_ID_BYTES];
    bool acked[BATCHES + IN_FLIGHT];
    size_t n_acked, reaccepted, duplicates, missing_in_kafka;
} crash_run_t;

static void make_batches(crash_run_t *cr)
{
    for (int b = 0; b < BATCHES + IN_FLIGHT; b++) {
        json_t *events = json_array();
        for (int i = 0; i < PER_BATCH; i++) {
            sup_message_id(cr->ids[b][i], IT_ID_BYTES, "crash");
            json_array_append_new(events, sup_track(cr->ids[b][i], "crash-user", "Crash", i));
        }
        json_t *batch = sup_batch(events);
        assert_int_equal(sup_json_dump(batch, &cr->body[b]), 0);
        json_decref(batch);
    }
}

static long jint(const sup_http_resp_t *r, const char *key)
{
    const json_t *v = r->json != NULL ? json_object_get(r->json, key) : NULL;
    return json_is_integer(v) ? (long)json_integer_value(v) : -1;
}

/* Load, kill -9 just after the last 200 with IN_FLIGHT more requests on the wire, restart, re-send
 * every acknowledged batch. */
static void crash_and_resend(sup_env_t *e, const char *yaml, crash_run_t *cr)
{
    make_batches(cr);
    sup_http_t *h = sup_http_new(e->coll.port);
    const char *hdrs[] = {"Content-Type: application/json", NULL};
    int64_t t0 = base_mono_ms();
    for (int b = 0; b < BATCHES; b++) {
        sup_http_req_t req = {.path = "/v1/batch",
                              .headers = hdrs,
                              .body = cr->body[b].data,
                              .body_len = cr->body[b].len,
                              .user = IT_KEY};
        sup_http_resp_t r;
        sup_http_do(h, &req, &r);
        if (r.status == 200 && jint(&r, "accepted") == PER_BATCH) {
            cr->acked[b] = true;
            cr->n_acked++;
        }
        sup_http_resp_free(&r);
    }
    sup_http_free(h);
    /* More requests in flight, then SIGKILL at once. */
    int fds[IN_FLIGHT];
    for (int k = 0; k < IN_FLIGHT; k++) {
        const base_buf_t *b = &cr->body[BATCHES + k];
        fds[k] = sup_tcp_connect(e->coll.port, 2000);
        assert_true(fds[k] >= 0);
        char head[512];
        int hn = snprintf(head, sizeof head,
                          "POST /v1/batch HTTP/1.1\r\nHost: x\r\n" BASIC_WK_TEST
                          "Content-Type: application/json\r\nContent-Length: %zu\r\n\r\n",
                          b->len);
        (void)sup_tcp_send(fds[k], head, (size_t)hn, 2000);
        (void)sup_tcp_send(fds[k], b->data, b->len, 2000);
    }
    sup_collector_signal(&e->coll, SIGKILL);
    assert_int_equal(sup_collector_wait(&e->coll, 5000), 128 + SIGKILL);
    int64_t load_ms = base_mono_ms() - t0;
    for (int k = 0; k < IN_FLIGHT; k++) {
        base_buf_t ans = {0};
        int st = sup_tcp_read_answer(fds[k], &ans, 2000);
        if (st == 200) { /* answered before the kill: acknowledged too */
            cr->acked[BATCHES + k] = true;
            cr->n_acked++;
        }
        base_buf_free(&ans);
        close(fds[k]);
    }
    fprintf(stderr, "load: %d batches x %d events in %lld ms, %zu acknowledged, then kill -9\n",
            BATCHES, PER_BATCH, (long long)load_ms, cr->n_acked);
    assert_true(cr->n_acked >= BATCHES);

    assert_int_equal(sup_collector_start(&e->coll, getenv("SLUICE_COLLECTOR"), e->dir,
                                         e->mock.bootstrap, KEYS, yaml, 15000),
                     0);
    for (int b = 0; b < BATCHES + IN_FLIGHT; b++) {
        if (!cr->acked[b]) continue;
        sup_http_resp_t r;
        it_post(e, "/v1/batch", "application/json", NULL, cr->body[b].data, cr->body[b].len, &r);
        assert_int_equal(r.status, 200);
        cr->reaccepted += (size_t)jint(&r, "accepted");
        cr->duplicates += (size_t)jint(&r, "duplicates");
        sup_http_resp_free(&r);
    }
    /* Every acknowledged event reached Kafka (at least the first copy). */
    sup_kmsgs_t m;
    assert_int_equal(sup_consume(e->mock.bootstrap, "events", cr->n_acked * PER_BATCH, 15000, &m),
                     0);
    json_t *seen = json_object(); /* messageIds on the topic, each message decoded once */
    for (size_t k = 0; k < m.n; k++) {
        json_t *v = sup_kmsg_value(&m.msgs[k]);
        const char *id = json_string_value(json_object_get(v, "messageId"));
        if (id != NULL) json_object_set_new(seen, id, json_true());
        json_decref(v);
    }
    for (int b = 0; b < BATCHES + IN_FLIGHT; b++)
        for (int i = 0; cr->acked[b] && i < PER_BATCH; i++)
            if (json_object_get(seen, cr->ids[b][i]) == NULL) cr->missing_in_kafka++;
    json_decref(seen);
    sup_kmsgs_free(&m);
    fprintf(stderr,
            "re-sent %zu acknowledged batches: accepted %zu, duplicates %zu; %zu "
            "acknowledged events missing in Kafka\n",
            cr->n_acked, cr->reaccepted, cr->duplicates, cr->missing_in_kafka);
    for (int b = 0; b < BATCHES + IN_FLIGHT; b++)
        base_buf_free(&cr->body[b]);
}

static void test_dedup_survives_kill9(void **state)
{
    const char *yaml = "dedup: {window: 1h, snapshot_interval: 1h}\n";
    sup_env_t *e = it_start(state, yaml);
    crash_run_t *cr = calloc(1, sizeof *cr);
    assert_non_null(cr);
    crash_and_resend(e, yaml, cr);
    assert_true(sup_collector_log_contains(&e->coll, "dedup_journal_replayed"));
    assert_int_equal(cr->missing_in_kafka, 0);
    assert_int_equal(cr->reaccepted, 0);
    assert_int_equal(cr->duplicates, cr->n_acked * PER_BATCH);
    free(cr);
}

/* The control: without the journal the same run forgets (so the test above can fail). */
static void test_dedup_without_journal_forgets_on_kill9(void **state)
{
    const char *yaml = "dedup: {window: 1h, snapshot_interval: 1h, journal: false}\n";
    sup_env_t *e = it_start(state, yaml);
    crash_run_t *cr = calloc(1, sizeof *cr);
    assert_non_null(cr);
    crash_and_resend(e, yaml, cr);
    assert_int_equal(cr->missing_in_kafka, 0);
    assert_int_equal(cr->reaccepted, cr->n_acked * PER_BATCH);
    free(cr);
}

int main(int argc, char **argv)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_teardown(test_dedup_survives_kill9, it_teardown),
        cmocka_unit_test_teardown(test_dedup_without_journal_forgets_on_kill9, it_teardown),
    };
    return it_run(argc, argv, "dedup_crash", tests, sizeof tests / sizeof tests[0]);
}
