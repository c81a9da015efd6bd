/*
 * test_client.c — libsluice's behaviour through its public API, with the fault-injecting fake
 * transport: event fields, validation, batching, retries and backoff bounds, Retry-After, 400
 * dropped with a callback, 413 split, both queue-full policies, close() flushing within its
 * timeout and cancelling a hung request, storage (offline -> new client -> delivered; corrupt
 * files), concurrent callers, fork, signals. Every wait is bounded.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <dirent.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "fake_transport.h"

/* ---- helpers ---- */

typedef struct cb_log {
    pthread_mutex_t mu;
    int n;
    int err[32], status[32];
    uint32_t events[32];
} cb_log_t;

static void on_error(void *ud, int err, int status, uint32_t n_events, const char *msg)
{
    (void)msg;
    cb_log_t *l = ud;
    pthread_mutex_lock(&l->mu);
    if (l->n < 32) {
        l->err[l->n] = err;
        l->status[l->n] = status;
        l->events[l->n] = n_events;
    }
    l->n++;
    pthread_mutex_unlock(&l->mu);
}

typedef struct env {
    fake_t fake;
    sluice_transport tp;
    sluice_config cfg;
    cb_log_t cb;
    sluice_client *c;
    char dir[64];
} env_t;

static env_t *env_new(void)
{
    env_t *e = calloc(1, sizeof *e);
    fake_init(&e->fake);
    e->tp = fake_transport(&e->fake);
    pthread_mutex_init(&e->cb.mu, NULL);
    sluice_config_init(&e->cfg, SLUICE_CONFIG_VERSION);
    e->cfg.endpoint = "http://127.0.0.1:9/";
    e->cfg.write_key = "wk_test";
    e->cfg.transport = &e->tp;
    e->cfg.flush_interval_ms = 10000; /* tests flush explicitly unless they test the timer */
    e->cfg.retry_base_ms = 5;
    e->cfg.retry_max_ms = 20;
    e->cfg.error_cb = on_error;
    e->cfg.cb_ud = &e->cb;
    return e;
}

static void env_start(env_t *e)
{
    assert_int_equal(sluice_client_new(&e->c, &e->cfg), SLUICE_OK);
    assert_non_null(e->c);
}

static void env_free(env_t *e)
{
    if (e->c) sluice_client_close(e->c, 2000);
    fake_free(&e->fake);
    pthread_mutex_destroy(&e->cb.mu);
    free(e);
}

static void make_dir(char *out, size_t size)
{
    snprintf(out, size, "/tmp/sluice-sdk-XXXXXX");
    assert_non_null(mkdtemp(out));
}

static void remove_dir(const char *dir)
{
    DIR *d = opendir(dir);
    if (!d) return;
    struct dirent *de;
    char p[512];
    while ((de = readdir(d)))
        if (de->d_name[0] != '.') {
            snprintf(p, sizeof p, "%s/%s", dir, de->d_name);
            unlink(p);
        }
    closedir(d);
    rmdir(dir);
}

static int count_suffix(const char *dir, const char *suffix)
{
    DIR *d = opendir(dir);
    if (!d) return -1;
    int n = 0;
    struct dirent *de;
    while ((de = readdir(d))) {
        size_t l = strlen(de->d_name), s = strlen(suffix);
        n += l > s && !strcmp(de->d_name + l - s, suffix);
    }
    closedir(d);
    return n;
}

static void send_id(sluice_client *c, const char *id)
{
    sluice_event ev = {.type = "track", .user_id = "u", .event = "E", .message_id = id};
    assert_int_equal(sluice_send(c, &ev), SLUICE_OK);
}

static int cmp_str(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

/* Asserts that every delivered event has a distinct messageId; returns how many. */
static size_t assert_unique_ids(fake_t *f)
{
    char **ids = malloc(sizeof *ids * (f->n_events + 1));
    for (size_t i = 0; i < f->n_events; i++)
        ids[i] = f->events[i].id;
    qsort(ids, f->n_events, sizeof *ids, cmp_str);
    for (size_t i = 1; i < f->n_events; i++)
        if (!strcmp(ids[i - 1], ids[i])) fail_msg("duplicate messageId %s", ids[i]);
    free(ids);
    return f->n_events;
}

/* ---- tests ---- */

static void test_event_fields(void **state)
{
    (void)state;
    env_t *e = env_new();
    env_start(e);
    sluice_props *p = sluice_props_new();
    sluice_props_set_str(p, "plan", "pro");
    sluice_props_set_int(p, "seats", 7);
    assert_int_equal(sluice_track(e->c, "u1", "Signed Up", p), 0);
    assert_int_equal(sluice_identify(e->c, "u1", p), 0);
    assert_int_equal(sluice_group(e->c, "u1", "acct-1", NULL), 0);
    assert_int_equal(sluice_page(e->c, "u1", "Pricing", NULL), 0);
    assert_int_equal(sluice_screen(e->c, "u1", "Home", NULL), 0);
    assert_int_equal(sluice_alias(e->c, "u1", "anon-9"), 0);
    sluice_event ev = {.type = "track",
                       .anonymous_id = "anon-1",
                       .event = "Viewed",
                       .timestamp_ms = 1700000000000LL,
                       .message_id = "my-id-1",
                       .context = p};
    assert_int_equal(sluice_send(e->c, &ev), 0);
    sluice_props_free(p);
    assert_int_equal(sluice_flush(e->c, 3000), 0);
    fake_t *f = &e->fake;
    assert_int_equal(f->n_events, 7);
    assert_int_equal(f->bad_bodies, 0);
    assert_int_equal(f->signals_unblocked, 0); /* the worker blocks every signal */
    assert_string_equal(f->last_content_type, "application/msgpack");
    assert_string_equal(f->last_encoding, "zstd");
    assert_string_equal(f->last_key, "wk_test");
    assert_string_equal(f->last_url, "http://127.0.0.1:9/v1/batch");
    const char *want[] = {
        "\"type\":\"track\"",
        "\"userId\":\"u1\"",
        "\"event\":\"Signed Up\"",
        "\"properties\":{\"plan\":\"pro\",\"seats\":7}",
    };
    for (size_t i = 0; i < 4; i++)
        assert_non_null(strstr(f->events[0].json, want[i]));
    assert_non_null(strstr(f->events[1].json, "\"traits\":{\"plan\":\"pro\",\"seats\":7}"));
    assert_non_null(strstr(f->events[2].json, "\"groupId\":\"acct-1\""));
    assert_non_null(strstr(f->events[3].json, "\"type\":\"page\""));
    assert_non_null(strstr(f->events[3].json, "\"name\":\"Pricing\""));
    assert_non_null(strstr(f->events[4].json, "\"type\":\"screen\""));
    assert_non_null(strstr(f->events[5].json, "\"previousId\":\"anon-9\""));
    assert_non_null(strstr(f->events[6].json, "\"anonymousId\":\"anon-1\""));
    assert_non_null(strstr(f->events[6].json, "\"timestamp\":1700000000000"));
    assert_non_null(strstr(f->events[6].json, "\"context\":{\"plan\":\"pro\""));
    /* the default context's keys are merged into an event's own context */
    assert_non_null(strstr(f->events[6].json, "\"library\":{\"name\":\"sluice-c\""));
    assert_string_equal(f->events[6].id, "my-id-1");
    /* generated ids: UUID v4 */
    for (int i = 0; i < 6; i++) {
        const char *id = f->events[i].id;
        assert_int_equal(strlen(id), 36);
        assert_int_equal(id[14], '4');
        assert_non_null(strchr("89ab", id[19]));
    }
    assert_unique_ids(f);
    sluice_stats st;
    sluice_client_stats(e->c, &st);
    assert_int_equal(st.queued, 7);
    assert_int_equal(st.sent, 7);
    assert_int_equal(st.queue_events, 0);
    env_free(e);
}

static void test_validation(void **state)
{
    (void)state;
    env_t *e = env_new();
    e->cfg.event_max_bytes = 1024;
    env_start(e);
    char longs[300];
    memset(longs, 'e', sizeof longs - 1);
    longs[sizeof longs - 1] = '\0';
    assert_int_equal(sluice_track(e->c, "u", NULL, NULL), SLUICE_E_INVAL);
    assert_int_equal(sluice_track(e->c, "u", "", NULL), SLUICE_E_INVAL);
    assert_int_equal(sluice_track(e->c, "u", longs, NULL), SLUICE_E_INVAL); /* event > 200 */
    assert_int_equal(sluice_track(e->c, longs, "E", NULL), SLUICE_E_INVAL); /* userId > 255 */
    assert_int_equal(sluice_track(e->c, "\xc3(", "E", NULL), SLUICE_E_UTF8);
    assert_int_equal(sluice_group(e->c, "u", NULL, NULL), SLUICE_E_INVAL);
    assert_int_equal(sluice_alias(e->c, "u", NULL), SLUICE_E_INVAL);
    sluice_event ev = {.type = "bogus", .user_id = "u"};
    assert_int_equal(sluice_send(e->c, &ev), SLUICE_E_INVAL);
    assert_int_equal(sluice_alias(e->c, NULL, "prev"), SLUICE_E_INVAL); /* alias needs a user */
    sluice_props *p = sluice_props_new();
    for (int i = 0; i < 10; i++)
        sluice_props_set_str(p, "k", longs);
    assert_int_equal(sluice_track(e->c, "u", "E", p), SLUICE_E_TOO_LARGE);
    sluice_props_clear(p);
    sluice_props_set_str(p, "bad", "\xff");
    assert_int_equal(sluice_track(e->c, "u", "E", p), SLUICE_E_UTF8); /* sticky props error */
    sluice_props_clear(p);
    /* NaN / Inf: refused by the setter, sticky for the send call */
    assert_int_equal(sluice_props_set_double(p, "x", 0.0 / 0.0), SLUICE_E_NUMBER);
    assert_int_equal(sluice_props_set_int(p, "y", 1), SLUICE_E_NUMBER);
    assert_int_equal(sluice_track(e->c, "u", "E", p), SLUICE_E_NUMBER);
    sluice_props_clear(p);
    assert_int_equal(sluice_props_set_double(p, "x", 1.0 / 0.0), SLUICE_E_NUMBER);
    sluice_props_clear(p);
    assert_int_equal(sluice_props_set_double(p, "x", -1.0 / 0.0), SLUICE_E_NUMBER);
    sluice_props_clear(p);
    assert_int_equal(sluice_props_set_double(p, "x", 1e308), SLUICE_OK);
    sluice_props_free(p);
    sluice_stats st;
    sluice_client_stats(e->c, &st);
    assert_int_equal(st.queued, 0);
    assert_int_equal(st.dropped, 0);
    assert_int_equal(sluice_client_close(e->c, 1000), 0);
    e->c = NULL;
    assert_int_equal(e->fake.n_req, 0);
    env_free(e);
}

static void test_batch_limits_and_timer(void **state)
{
    (void)state;
    env_t *e = env_new();
    e->cfg.batch_size = 10;
    e->cfg.batch_bytes = 2048;
    e->cfg.event_max_bytes = 1024;
    env_start(e);
    for (int i = 0; i < 35; i++)
        assert_int_equal(sluice_track(e->c, "u", "E", NULL), 0);
    assert_int_equal(sluice_flush(e->c, 3000), 0);
    assert_int_equal(e->fake.n_events, 35);
    for (int i = 0; i < e->fake.n_req; i++)
        assert_true(e->fake.req_events[i] <= 10);
    assert_true(e->fake.n_req >= 4);
    /* byte limit: ~600-byte events, 2 KiB batches -> at most 3 per request */
    sluice_props *p = sluice_props_new();
    char v[500];
    memset(v, 'v', sizeof v - 1);
    v[sizeof v - 1] = '\0';
    sluice_props_set_str(p, "v", v);
    int before = e->fake.n_req;
    for (int i = 0; i < 9; i++)
        assert_int_equal(sluice_track(e->c, "u", "E", p), 0);
    sluice_props_free(p);
    assert_int_equal(sluice_flush(e->c, 3000), 0);
    for (int i = before; i < e->fake.n_req; i++)
        assert_true(e->fake.req_events[i] <= 3);
    assert_int_equal(e->fake.n_events, 44);
    sluice_client_close(e->c, 1000);
    e->c = NULL;
    env_free(e);

    /* a partial batch goes out after flush_interval_ms without any flush call */
    e = env_new();
    e->cfg.flush_interval_ms = 100;
    env_start(e);
    int64_t t0 = fake_now_ms();
    assert_int_equal(sluice_track(e->c, "u", "E", NULL), 0);
    assert_int_equal(fake_wait_events(&e->fake, 1, 3000), 1);
    assert_true(fake_now_ms() - t0 < 1500);
    env_free(e);
}

static void test_retry_backoff_bounds(void **state)
{
    (void)state;
    env_t *e = env_new();
    e->cfg.retry_base_ms = 40;
    e->cfg.retry_max_ms = 80;
    e->cfg.max_retries = 5;
    env_start(e);
    fake_step_t s[] = {{503, -1, 0, false},
                       {500, -1, 0, false},
                       {0, -1, SLUICE_E_NETWORK, false},
                       {408, -1, 0, false},
                       {200, -1, 0, false}};
    fake_script(&e->fake, s, 5);
    int64_t t0 = fake_now_ms();
    for (int i = 0; i < 5; i++)
        assert_int_equal(sluice_track(e->c, "u", "E", NULL), 0); /* generated ids */
    assert_int_equal(sluice_flush(e->c, 5000), 0);
    int64_t elapsed = fake_now_ms() - t0;
    fake_t *f = &e->fake;
    assert_int_equal(f->n_req, 5);
    assert_int_equal(f->n_events, 5); /* delivered once */
    /* every attempt carried the same messageIds, in the same order */
    assert_int_equal(f->n_attempt_ids, 5 * 5);
    for (int k = 0; k < 25; k++) {
        assert_int_equal(f->attempt_req[k], k / 5);
        assert_string_equal(f->attempt_id[k], f->events[k % 5].id);
    }
    assert_unique_ids(f);
    /* full jitter: the k-th pause is within [0, min(80, 40 * 2^(k-1))] (+ scheduling slack) */
    const int64_t cap[] = {40, 80, 80, 80};
    for (int k = 1; k < 5; k++) {
        int64_t gap = f->req_ms[k] - f->req_ms[k - 1];
        assert_true(gap >= 0);
        if (gap > cap[k - 1] + 250)
            fail_msg("gap %d = %lld ms > cap %lld", k, (long long)gap, (long long)cap[k - 1]);
    }
    assert_true(elapsed < 280 + 1200); /* caps sum to 280 ms; the rest is scheduling slack */
    sluice_stats st;
    sluice_client_stats(e->c, &st);
    assert_int_equal(st.retried, 4);
    assert_int_equal(st.sent, 5);
    assert_int_equal(st.failed, 0);
    assert_int_equal(e->cb.n, 0);
    env_free(e);

    /* retries exhausted without storage: failed, reported with the last status */
    e = env_new();
    e->cfg.max_retries = 2;
    e->fake.dflt = (fake_step_t){502, -1, 0, false};
    env_start(e);
    for (int i = 0; i < 4; i++)
        assert_int_equal(sluice_track(e->c, "u", "E", NULL), 0);
    assert_int_equal(sluice_flush(e->c, 3000), 0);
    assert_int_equal(e->fake.n_req, 3);
    sluice_client_stats(e->c, &st);
    assert_int_equal(st.failed, 4);
    assert_int_equal(st.retried, 2);
    assert_int_equal(e->cb.n, 1);
    assert_int_equal(e->cb.err[0], SLUICE_E_HTTP);
    assert_int_equal(e->cb.status[0], 502);
    assert_int_equal(e->cb.events[0], 4);
    env_free(e);
}

static void test_retry_after_honoured(void **state)
{
    (void)state;
    env_t *e = env_new();
    e->cfg.retry_base_ms = 1;
    e->cfg.retry_max_ms = 5;
    e->cfg.batch_size = 2;
    env_start(e);
    fake_step_t s[] = {{429, 400, 0, false}, {200, -1, 0, false}};
    fake_script(&e->fake, s, 2);
    send_id(e->c, "a1");
    send_id(e->c, "a2"); /* a full batch: sent at once, answered 429 Retry-After 400 ms */
    assert_int_equal(fake_wait_requests(&e->fake, 1, 2000), 1);
    send_id(e->c, "b1");
    send_id(e->c, "b2"); /* a second batch must wait for the pause too */
    assert_int_equal(sluice_flush(e->c, 5000), 0);
    fake_t *f = &e->fake;
    assert_int_equal(f->n_req, 3);
    int64_t gap = f->req_ms[1] - f->req_ms[0];
    if (gap < 390 || gap > 1500)
        fail_msg("Retry-After 400 ms but the retry came after %lld ms", (long long)gap);
    assert_true(f->req_ms[2] - f->req_ms[0] >= 390);
    assert_int_equal(fake_count_id(f, "a1"), 1);
    assert_int_equal(fake_count_id(f, "b2"), 1);
    env_free(e);
}

static void test_400_dropped_with_callback(void **state)
{
    (void)state;
    env_t *e = env_new();
    env_start(e);
    fake_step_t s[] = {{400, -1, 0, false}};
    fake_script(&e->fake, s, 1);
    for (int i = 0; i < 5; i++)
        assert_int_equal(sluice_track(e->c, "u", "E", NULL), 0);
    assert_int_equal(sluice_flush(e->c, 3000), 0);
    assert_int_equal(e->fake.n_req, 1); /* not retried */
    assert_int_equal(e->cb.n, 1);
    assert_int_equal(e->cb.err[0], SLUICE_E_HTTP);
    assert_int_equal(e->cb.status[0], 400);
    assert_int_equal(e->cb.events[0], 5);
    send_id(e->c, "after");
    assert_int_equal(sluice_flush(e->c, 3000), 0);
    assert_int_equal(fake_count_id(&e->fake, "after"), 1);
    sluice_stats st;
    sluice_client_stats(e->c, &st);
    assert_int_equal(st.failed, 5);
    assert_int_equal(st.sent, 1);
    assert_int_equal(st.retried, 0);
    env_free(e);
}

static void test_413_split(void **state)
{
    (void)state;
    env_t *e = env_new();
    e->cfg.batch_size = 10;
    env_start(e);
    e->fake.max_events = 3;
    char ids[10][8];
    for (int i = 0; i < 10; i++) {
        snprintf(ids[i], sizeof ids[i], "s%d", i);
        send_id(e->c, ids[i]);
    }
    assert_int_equal(sluice_flush(e->c, 3000), 0);
    fake_t *f = &e->fake;
    assert_int_equal(f->n_events, 10);
    for (int i = 0; i < 10; i++)
        assert_int_equal(fake_count_id(f, ids[i]), 1);
    assert_int_equal(f->req_events[0], 10);
    assert_int_equal(f->req_status[0], 413);
    assert_int_equal(f->req_events[1], 5); /* halves */
    int ok = 0;
    for (int i = 0; i < f->n_req; i++)
        if (f->req_status[i] == 200) {
            assert_true(f->req_events[i] <= 3);
            ok++;
        }
    assert_int_equal(ok, 4); /* 10 -> 5 + 5 -> (2 + 3) + (2 + 3) */
    assert_int_equal(e->cb.n, 0);
    /* one event still too large: refused and reported */
    f->max_events = 0;
    fake_step_t s[] = {{413, -1, 0, false}};
    fake_script(f, s, 1);
    send_id(e->c, "single");
    assert_int_equal(sluice_flush(e->c, 3000), 0);
    assert_int_equal(fake_count_id(f, "single"), 0);
    assert_int_equal(e->cb.n, 1);
    assert_int_equal(e->cb.status[0], 413);
    env_free(e);
}

static void test_queue_full_reject(void **state)
{
    (void)state;
    env_t *e = env_new();
    e->cfg.batch_size = 1;
    e->cfg.queue_max_events = 5;
    fake_step_t s[] = {{200, -1, 0, true}};
    env_start(e);
    fake_script(&e->fake, s, 1);
    send_id(e->c, "first");
    assert_true(fake_wait_hanging(&e->fake, 3000)); /* the worker holds "first" */
    for (int i = 0; i < 5; i++)
        assert_int_equal(sluice_track(e->c, "u", "E", NULL), 0);
    int64_t t0 = fake_now_ms();
    assert_int_equal(sluice_track(e->c, "u", "E", NULL), SLUICE_E_QUEUE_FULL);
    assert_true(fake_now_ms() - t0 < 100); /* never blocks */
    sluice_stats st;
    sluice_client_stats(e->c, &st);
    assert_int_equal(st.dropped, 1);
    assert_int_equal(st.queued, 6);
    assert_int_equal(st.queue_events, 5);
    fake_release(&e->fake);
    assert_int_equal(sluice_flush(e->c, 3000), 0);
    assert_int_equal(fake_count_id(&e->fake, "first"), 1);
    assert_int_equal(e->fake.n_events, 6);
    env_free(e);
}

static void test_queue_full_drop_oldest(void **state)
{
    (void)state;
    env_t *e = env_new();
    e->cfg.batch_size = 1;
    e->cfg.queue_max_events = 5;
    e->cfg.queue_full_policy = SLUICE_QUEUE_FULL_DROP_OLDEST;
    fake_step_t s[] = {{200, -1, 0, true}};
    env_start(e);
    fake_script(&e->fake, s, 1);
    send_id(e->c, "e0");
    assert_true(fake_wait_hanging(&e->fake, 3000));
    const char *ids[] = {"e1", "e2", "e3", "e4", "e5", "e6", "e7", "e8"};
    for (int i = 0; i < 8; i++)
        send_id(e->c, ids[i]); /* all accepted: the oldest make room */
    sluice_stats st;
    sluice_client_stats(e->c, &st);
    assert_int_equal(st.dropped, 3);
    assert_int_equal(st.queue_events, 5);
    fake_release(&e->fake);
    assert_int_equal(sluice_flush(e->c, 3000), 0);
    fake_t *f = &e->fake;
    assert_int_equal(f->n_events, 6);
    assert_int_equal(fake_count_id(f, "e0"), 1);
    for (int i = 0; i < 3; i++)
        assert_int_equal(fake_count_id(f, ids[i]), 0);
    for (int i = 3; i < 8; i++)
        assert_int_equal(fake_count_id(f, ids[i]), 1);
    env_free(e);
}

static void test_close_flushes_within_timeout(void **state)
{
    (void)state;
    env_t *e = env_new();
    env_start(e);
    for (int i = 0; i < 250; i++)
        assert_int_equal(sluice_track(e->c, "u", "E", NULL), 0);
    int64_t t0 = fake_now_ms();
    assert_int_equal(sluice_client_close(e->c, 3000), 0);
    e->c = NULL;
    assert_true(fake_now_ms() - t0 < 1000); /* does not wait for the 10 s flush interval */
    assert_int_equal(e->fake.n_events, 250);
    env_free(e);
}

static void test_close_cancels_hung_request(void **state)
{
    (void)state;
    env_t *e = env_new();
    fake_step_t s[] = {{200, -1, 0, true}};
    env_start(e);
    fake_script(&e->fake, s, 1);
    for (int i = 0; i < 3; i++)
        assert_int_equal(sluice_track(e->c, "u", "E", NULL), 0);
    assert_int_equal(sluice_flush(e->c, 50), SLUICE_E_TIMEOUT);
    assert_true(fake_wait_hanging(&e->fake, 3000));
    int64_t t0 = fake_now_ms();
    assert_int_equal(sluice_client_close(e->c, 300), 3); /* 3 events not delivered */
    e->c = NULL;
    int64_t took = fake_now_ms() - t0;
    if (took < 280 || took > 1500) fail_msg("close(300) took %lld ms", (long long)took);
    assert_true(e->fake.cancelled);
    assert_int_equal(e->fake.n_events, 0);
    env_free(e);
}

static void test_storage_offline_then_delivered(void **state)
{
    (void)state;
    env_t *e = env_new();
    make_dir(e->dir, sizeof e->dir);
    e->cfg.storage_dir = e->dir;
    e->cfg.max_retries = 1;
    e->fake.dflt = (fake_step_t){0, -1, SLUICE_E_NETWORK, false};
    env_start(e);
    char ids[20][8];
    for (int i = 0; i < 20; i++) {
        snprintf(ids[i], sizeof ids[i], "o%d", i);
        send_id(e->c, ids[i]);
    }
    assert_int_equal(sluice_client_close(e->c, 1000), 20); /* not delivered: stored */
    e->c = NULL;
    assert_int_equal(count_suffix(e->dir, ".slb"), 1);
    assert_int_equal(e->fake.n_events, 0);
    assert_int_equal(e->cb.n, 0); /* storing is not a loss */

    /* next start, collector reachable: the stored batch is sent first */
    env_t *e2 = env_new();
    e2->cfg.storage_dir = e->dir;
    env_start(e2);
    assert_int_equal(fake_wait_events(&e2->fake, 20, 5000), 20);
    send_id(e2->c, "new");
    assert_int_equal(sluice_flush(e2->c, 3000), 0);
    assert_int_equal(fake_count_id(&e2->fake, "new"), 1);
    for (int i = 0; i < 20; i++)
        assert_int_equal(fake_count_id(&e2->fake, ids[i]), 1);
    assert_string_equal(e2->fake.events[0].id, "o0");
    assert_int_equal(sluice_client_close(e2->c, 2000), 0);
    e2->c = NULL;
    assert_int_equal(count_suffix(e->dir, ".slb"), 0);
    remove_dir(e->dir);
    env_free(e2);
    env_free(e);
}

static void test_storage_corrupt_file_skipped(void **state)
{
    (void)state;
    env_t *e = env_new();
    make_dir(e->dir, sizeof e->dir);
    e->cfg.storage_dir = e->dir;
    e->cfg.max_retries = 0;
    e->fake.dflt = (fake_step_t){503, -1, 0, false};
    env_start(e);
    send_id(e->c, "good1");
    send_id(e->c, "good2");
    assert_int_equal(sluice_client_close(e->c, 1000), 2);
    e->c = NULL;
    /* the good file, a truncated copy and garbage, both named older so they are read first */
    DIR *d = opendir(e->dir);
    struct dirent *de;
    char good[512] = "";
    while ((de = readdir(d)))
        if (strstr(de->d_name, ".slb")) snprintf(good, sizeof good, "%s/%s", e->dir, de->d_name);
    closedir(d);
    assert_true(good[0]);
    FILE *g = fopen(good, "rb");
    char buf[4096];
    size_t n = fread(buf, 1, sizeof buf, g);
    fclose(g);
    char p1[512], p2[512];
    snprintf(p1, sizeof p1, "%s/0000000000001-1-000001.slb", e->dir);
    snprintf(p2, sizeof p2, "%s/0000000000002-1-000002.slb", e->dir);
    FILE *f1 = fopen(p1, "wb");
    fwrite(buf, 1, n - 5, f1); /* truncated */
    fclose(f1);
    FILE *f2 = fopen(p2, "wb");
    fwrite("SLB1 this is not a batch at all........", 1, 39, f2);
    fclose(f2);
    /* every single-byte change of a valid file is detected (header checks, then the CRC) */
    srand(7);
    for (int m = 0; m < 20; m++) {
        char mut[4096], pm[512];
        memcpy(mut, buf, n);
        mut[(size_t)rand() % n] ^= (char)(1 + rand() % 255);
        snprintf(pm, sizeof pm, "%s/00000000001%02d-1-000001.slb", e->dir, m);
        FILE *fm = fopen(pm, "wb");
        fwrite(mut, 1, n, fm);
        fclose(fm);
    }

    env_t *e2 = env_new();
    e2->cfg.storage_dir = e->dir;
    env_start(e2);
    assert_int_equal(fake_wait_events(&e2->fake, 2, 5000), 2);
    assert_int_equal(fake_count_id(&e2->fake, "good1"), 1);
    assert_int_equal(fake_count_id(&e2->fake, "good2"), 1);
    assert_int_equal(sluice_client_close(e2->c, 2000), 0);
    e2->c = NULL;
    assert_int_equal(e2->cb.n, 22);
    for (int i = 0; i < 22; i++)
        assert_int_equal(e2->cb.err[i], SLUICE_E_CORRUPT);
    assert_int_equal(count_suffix(e->dir, ".corrupt"), 22);
    assert_int_equal(e2->fake.n_events, 2); /* nothing from a corrupt file was sent */
    assert_int_equal(count_suffix(e->dir, ".slb"), 0);
    remove_dir(e->dir);
    env_free(e2);
    env_free(e);
}

static void test_storage_is_bounded(void **state)
{
    (void)state;
    env_t *e = env_new();
    make_dir(e->dir, sizeof e->dir);
    e->cfg.storage_dir = e->dir;
    e->cfg.storage_max_bytes = 700; /* room for one small batch file, not two */
    e->cfg.batch_size = 4;
    e->fake.dflt = (fake_step_t){0, -1, SLUICE_E_NETWORK, false};
    env_start(e);
    for (int i = 0; i < 8; i++)
        assert_int_equal(sluice_track(e->c, "u", "E", NULL), 0);
    /* the first batch goes to disk; the second does not fit and stays in memory, retried */
    assert_int_equal(sluice_flush(e->c, 1500), SLUICE_E_TIMEOUT);
    sluice_stats st;
    sluice_client_stats(e->c, &st);
    assert_int_equal(st.stored, 4);
    assert_int_equal(st.in_flight, 4);
    assert_int_equal(st.dropped, 0);
    assert_int_equal(st.failed, 0);
    assert_int_equal(count_suffix(e->dir, ".slb"), 1);
    /* the collector comes back: both batches are delivered, nothing was lost */
    pthread_mutex_lock(&e->fake.mu);
    e->fake.dflt = (fake_step_t){200, -1, 0, false};
    pthread_mutex_unlock(&e->fake.mu);
    assert_int_equal(fake_wait_events(&e->fake, 8, 5000), 8);
    assert_int_equal(sluice_client_close(e->c, 2000), 0);
    e->c = NULL;
    assert_int_equal(e->cb.n, 0);
    assert_int_equal(count_suffix(e->dir, ".slb"), 0);
    remove_dir(e->dir);
    env_free(e);
}

/* An event's own context of every value type: the merge keeps it whole, its keys win. */
static void test_context_merge(void **state)
{
    (void)state;
    env_t *e = env_new();
    e->cfg.app_name = "App";
    e->cfg.locale = "";
    e->cfg.timezone = "";
    env_start(e);
    sluice_props *p = sluice_props_new();
    sluice_props_begin_map(p, "library");
    sluice_props_set_str(p, "name", "mine");
    sluice_props_end(p);
    sluice_props_set_int(p, "neg", -70000);
    sluice_props_set_int(p, "big", 5000000000);
    sluice_props_set_int(p, "small", 7);
    sluice_props_set_double(p, "d", 2.5);
    sluice_props_set_bool(p, "b", 1);
    sluice_props_set_null(p, "z");
    char longs[300];
    memset(longs, 's', sizeof longs - 1);
    longs[sizeof longs - 1] = '\0';
    sluice_props_set_str(p, "long", longs);
    sluice_props_begin_array(p, "arr");
    sluice_props_set_int(p, NULL, 1);
    sluice_props_begin_map(p, NULL);
    sluice_props_set_str(p, "k", "v");
    sluice_props_end(p);
    sluice_props_end(p);
    assert_int_equal(sluice_track_ctx(e->c, "u", "E", NULL, p), 0);
    sluice_props_free(p);
    assert_int_equal(sluice_flush(e->c, 3000), 0);
    assert_int_equal(e->fake.bad_bodies, 0);
    assert_int_equal(e->fake.n_events, 1);
    const char *j = e->fake.events[0].json;
    assert_non_null(strstr(j, "\"library\":{\"name\":\"mine\"}")); /* the event's own wins */
    assert_null(strstr(j, "sluice-c"));
    assert_non_null(strstr(j, "\"app\":{\"name\":\"App\"}"));
    assert_non_null(strstr(j, "\"os\":{\"name\":"));
    assert_non_null(strstr(j, "\"arr\":[1,{\"k\":\"v\"}]"));
    assert_non_null(strstr(j, "\"big\":5000000000"));
    assert_non_null(strstr(j, "\"neg\":-70000"));
    assert_null(strstr(j, "\"locale\"")); /* "" = absent */
    env_free(e);
}

/* A long outage is outlasted: no retry count gives events up, only their age does. */
static void test_retries_governed_by_age(void **state)
{
    (void)state;
    env_t *e = env_new();
    e->cfg.retry_base_ms = 1;
    e->cfg.retry_max_ms = 4;
    fake_step_t s[FAKE_MAX_STEPS];
    for (int i = 0; i < FAKE_MAX_STEPS; i++)
        s[i] = (fake_step_t){i % 2 ? 503 : 0, -1, i % 2 ? 0 : SLUICE_E_NETWORK, false};
    fake_script(&e->fake, s, FAKE_MAX_STEPS); /* 64 failures, then 200 */
    env_start(e);
    for (int i = 0; i < 3; i++)
        assert_int_equal(sluice_track(e->c, "u", "E", NULL), 0);
    assert_int_equal(sluice_flush(e->c, 10000), 0);
    sluice_stats st;
    sluice_client_stats(e->c, &st);
    assert_int_equal(e->fake.n_req, FAKE_MAX_STEPS + 1);
    assert_int_equal(st.retried, FAKE_MAX_STEPS);
    assert_int_equal(st.sent, 3);
    assert_int_equal(st.failed, 0);
    assert_int_equal(sluice_client_close(e->c, 1000), 0);
    e->c = NULL;
    env_free(e);

    /* a collector that never comes back: given up once older than max_event_age_ms */
    e = env_new();
    e->cfg.max_event_age_ms = 1000;
    e->cfg.retry_max_ms = 50;
    e->fake.dflt = (fake_step_t){503, -1, 0, false};
    env_start(e);
    for (int i = 0; i < 3; i++)
        assert_int_equal(sluice_track(e->c, "u", "E", NULL), 0);
    int64_t t0 = fake_now_ms();
    assert_int_equal(sluice_flush(e->c, 8000), 0);
    assert_true(fake_now_ms() - t0 >= 900);
    sluice_client_stats(e->c, &st);
    assert_int_equal(st.expired, 3);
    assert_int_equal(st.failed, 3);
    assert_int_equal(st.in_flight, 0);
    assert_int_equal(e->cb.n, 1);
    assert_int_equal(e->cb.err[0], SLUICE_E_EXPIRED);
    assert_int_equal(e->cb.events[0], 3);
    assert_int_equal(sluice_client_close(e->c, 1000), 3);
    e->c = NULL;
    env_free(e);
}

/* close() counts what was not delivered over the client's whole life, not just at close. */
static void test_close_reports_lifetime_losses(void **state)
{
    (void)state;
    env_t *e = env_new();
    e->cfg.batch_size = 2;
    fake_step_t s[] = {{400, -1, 0, false}};
    fake_script(&e->fake, s, 1);
    env_start(e);
    for (int i = 0; i < 6; i++)
        assert_int_equal(sluice_track(e->c, "u", "E", NULL), 0);
    assert_int_equal(sluice_flush(e->c, 3000), 0);
    assert_int_equal(e->cb.n, 1);
    assert_int_equal(e->cb.events[0], 2);
    assert_int_equal(sluice_client_close(e->c, 2000), 2);
    e->c = NULL;
    env_free(e);
}

static void test_stats_in_flight(void **state)
{
    (void)state;
    env_t *e = env_new();
    fake_step_t s[] = {{200, -1, 0, true}};
    fake_script(&e->fake, s, 1);
    env_start(e);
    for (int i = 0; i < 5; i++)
        assert_int_equal(sluice_track(e->c, "u", "E", NULL), 0);
    assert_int_equal(sluice_flush(e->c, 0), SLUICE_E_TIMEOUT); /* kicks the worker */
    assert_true(fake_wait_hanging(&e->fake, 5000));
    sluice_stats st;
    sluice_client_stats(e->c, &st);
    assert_int_equal(st.in_flight, 5);
    assert_int_equal(st.queue_events, 0);
    fake_release(&e->fake);
    assert_int_equal(sluice_flush(e->c, 5000), 0);
    sluice_client_stats(e->c, &st);
    assert_int_equal(st.in_flight, 0);
    assert_int_equal(st.sent, 5);
    env_free(e);
}

static void test_config_checks(void **state)
{
    (void)state;
    env_t *e = env_new();
    sluice_client *c = NULL;
    static const char *const bad_urls[] = {
        "ftp://127.0.0.1:21", "file:///etc/passwd", "not a url",      "http://",   "https:///path",
        "http://host name",   "http://host\n",      "127.0.0.1:8080", "gopher://x"};
    for (size_t i = 0; i < sizeof bad_urls / sizeof bad_urls[0]; i++) {
        e->cfg.endpoint = bad_urls[i];
        if (sluice_client_new(&c, &e->cfg) != SLUICE_E_URL) fail_msg("accepted %s", bad_urls[i]);
        assert_null(c);
    }
    static const char *const good_urls[] = {"http://127.0.0.1:9", "HTTPS://collector.example",
                                            "https://[::1]:8443/"};
    for (size_t i = 0; i < sizeof good_urls / sizeof good_urls[0]; i++) {
        e->cfg.endpoint = good_urls[i];
        assert_int_equal(sluice_client_new(&c, &e->cfg), SLUICE_OK);
        assert_int_equal(sluice_client_close(c, 0), 0);
    }
    e->cfg.endpoint = "http://127.0.0.1:9";
    /* storage_dir that cannot be created or written: a path below a regular file */
    e->cfg.storage_dir = "/etc/hostname/sluice";
    assert_int_equal(sluice_client_new(&c, &e->cfg), SLUICE_E_STORAGE);
    assert_null(c);
    e->cfg.storage_dir = "/proc/sluice-cannot-write";
    assert_int_equal(sluice_client_new(&c, &e->cfg), SLUICE_E_STORAGE);
    e->cfg.storage_dir = NULL;
    e->cfg.write_ahead = 1; /* needs storage_dir */
    assert_int_equal(sluice_client_new(&c, &e->cfg), SLUICE_E_INVAL);
    e->cfg.write_ahead = 0;
    e->cfg.max_event_age_ms = 10;
    assert_int_equal(sluice_client_new(&c, &e->cfg), SLUICE_E_INVAL);
    e->cfg.max_event_age_ms = 1000;
    e->cfg.app_name = "\xff";
    assert_int_equal(sluice_client_new(&c, &e->cfg), SLUICE_E_UTF8);
    char longs[200];
    memset(longs, 'a', sizeof longs - 1);
    longs[sizeof longs - 1] = '\0';
    e->cfg.app_name = longs;
    assert_int_equal(sluice_client_new(&c, &e->cfg), SLUICE_E_INVAL);
    e->cfg.app_name = NULL;
    e->cfg.library_name = "";
    assert_int_equal(sluice_client_new(&c, &e->cfg), SLUICE_E_INVAL);
    /* every new code has a name and a message */
    for (int err = SLUICE_E_URL; err >= SLUICE_E_OPTED_OUT; err--) {
        assert_string_not_equal(sluice_err_name(err), "SLUICE_E_UNKNOWN");
        assert_string_not_equal(sluice_strerror(err), "unknown error");
    }
    env_free(e);
}

/* A version-1 config (the struct an application built against 0.1.0 passes) still works: the
 * fields it does not have keep their defaults. */
static void test_config_v1(void **state)
{
    (void)state;
    env_t *e = env_new();
    /* exactly the v1 size on the heap: ASan catches any read past it */
    e->cfg.version = 1;
    void *v1 = malloc(offsetof(sluice_config, max_event_age_ms));
    memcpy(v1, &e->cfg, offsetof(sluice_config, max_event_age_ms));
    assert_int_equal(sluice_client_new(&e->c, (const sluice_config *)v1), SLUICE_OK);
    free(v1);
    assert_int_equal(sluice_track(e->c, "u", "E", NULL), 0);
    assert_int_equal(sluice_flush(e->c, 3000), 0);
    assert_int_equal(e->fake.n_events, 1);
    env_free(e);
}

static void test_anonymous_id_and_opt_out(void **state)
{
    (void)state;
    env_t *e = env_new();
    make_dir(e->dir, sizeof e->dir);
    e->cfg.storage_dir = e->dir;
    env_start(e);
    const char *anon = sluice_anonymous_id(e->c);
    assert_non_null(anon);
    assert_int_equal(strlen(anon), 36);
    char saved[40];
    snprintf(saved, sizeof saved, "%s", anon);
    /* no user id: the persisted anonymousId; with a user id: no anonymousId is added */
    assert_int_equal(sluice_track(e->c, NULL, "Anon Event", NULL), 0);
    assert_int_equal(sluice_page(e->c, NULL, "Home", NULL), 0);
    assert_int_equal(sluice_track(e->c, "u", "Known", NULL), 0);
    assert_int_equal(sluice_flush(e->c, 3000), 0);
    char want[80];
    snprintf(want, sizeof want, "\"anonymousId\":\"%s\"", saved);
    assert_non_null(strstr(e->fake.events[0].json, want));
    assert_non_null(strstr(e->fake.events[1].json, want));
    assert_null(strstr(e->fake.events[2].json, "anonymousId"));
    /* opt-out: refused, persisted for the next client on this directory */
    assert_int_equal(sluice_opted_out(e->c), 0);
    assert_int_equal(sluice_set_opt_out(e->c, 1), 0);
    assert_int_equal(sluice_opted_out(e->c), 1);
    assert_int_equal(sluice_track(e->c, "u", "E", NULL), SLUICE_E_OPTED_OUT);
    sluice_stats st;
    sluice_client_stats(e->c, &st);
    assert_int_equal(st.queued, 3);
    assert_int_equal(sluice_client_close(e->c, 1000), 0);
    e->c = NULL;

    env_t *e2 = env_new();
    e2->cfg.storage_dir = e->dir;
    env_start(e2);
    assert_string_equal(sluice_anonymous_id(e2->c), saved); /* persisted */
    assert_int_equal(sluice_opted_out(e2->c), 1);
    assert_int_equal(sluice_identify(e2->c, "u", NULL), SLUICE_E_OPTED_OUT);
    assert_int_equal(sluice_set_opt_out(e2->c, 0), 0);
    assert_int_equal(sluice_identify(e2->c, "u", NULL), 0);
    assert_int_equal(sluice_client_close(e2->c, 2000), 0);
    e2->c = NULL;

    /* without storage_dir: a fresh id per client; cfg.opt_out starts opted out */
    env_t *e3 = env_new();
    e3->cfg.opt_out = 1;
    env_start(e3);
    assert_string_not_equal(sluice_anonymous_id(e3->c), saved);
    assert_int_equal(sluice_track(e3->c, NULL, "E", NULL), SLUICE_E_OPTED_OUT);
    remove_dir(e->dir);
    env_free(e3);
    env_free(e2);
    env_free(e);
}

/* write_ahead: every batch is on disk before its first attempt, and deleted once delivered. */
static void test_write_ahead(void **state)
{
    (void)state;
    env_t *e = env_new();
    make_dir(e->dir, sizeof e->dir);
    e->cfg.storage_dir = e->dir;
    e->cfg.write_ahead = 1;
    e->cfg.batch_size = 5;
    fake_step_t s[] = {{200, -1, 0, true}};
    fake_script(&e->fake, s, 1);
    env_start(e);
    for (int i = 0; i < 5; i++)
        assert_int_equal(sluice_track(e->c, "u", "E", NULL), 0);
    assert_true(fake_wait_hanging(&e->fake, 5000));
    assert_int_equal(count_suffix(e->dir, ".slb"), 1); /* written before the send */
    fake_release(&e->fake);
    assert_int_equal(sluice_flush(e->c, 5000), 0);
    assert_int_equal(e->fake.n_events, 5);
    assert_int_equal(count_suffix(e->dir, ".slb"), 0);
    sluice_stats st;
    sluice_client_stats(e->c, &st);
    assert_int_equal(st.stored, 5);
    assert_int_equal(st.sent, 5);
    assert_int_equal(sluice_client_close(e->c, 1000), 0);
    e->c = NULL;
    remove_dir(e->dir);
    env_free(e);
}

typedef struct caller {
    sluice_client *c;
    int id, n, errors;
} caller_t;

static void *caller_main(void *arg)
{
    caller_t *k = arg;
    sluice_props *p = sluice_props_new();
    char user[32];
    for (int i = 0; i < k->n; i++) {
        sluice_props_clear(p);
        sluice_props_set_int(p, "i", i);
        sluice_props_set_int(p, "thread", k->id);
        snprintf(user, sizeof user, "user-%d", k->id);
        if (sluice_track(k->c, user, "Concurrent", p)) k->errors++;
        if (i % 500 == 250) {
            sluice_stats st;
            sluice_client_stats(k->c, &st);
            if (k->id == 0) sluice_flush(k->c, 1000);
        }
    }
    sluice_props_free(p);
    return NULL;
}

static void test_concurrent_callers(void **state)
{
    (void)state;
    env_t *e = env_new();
    e->cfg.batch_size = 50;
    e->cfg.flush_interval_ms = 5;
    e->cfg.queue_max_events = 100000;
    env_start(e);
    pthread_t th[4];
    caller_t k[4];
    for (int i = 0; i < 4; i++) {
        k[i] = (caller_t){e->c, i, 2000, 0};
        pthread_create(&th[i], NULL, caller_main, &k[i]);
    }
    for (int i = 0; i < 4; i++) {
        pthread_join(th[i], NULL);
        assert_int_equal(k[i].errors, 0);
    }
    assert_int_equal(sluice_client_close(e->c, 10000), 0);
    e->c = NULL;
    assert_int_equal(e->fake.n_events, 8000);
    assert_int_equal(e->fake.bad_bodies, 0);
    assert_unique_ids(&e->fake);
    env_free(e);
}

typedef struct hammer {
    sluice_client *c;
    atomic_int stop, pause, paused;
    int errors;
} hammer_t;

static void *hammer_main(void *arg)
{
    hammer_t *h = arg;
    /* paced (<= ~100k/s) so the worker keeps up even under sanitizers */
    for (int i = 0; i < 300000 && !h->stop; i++) {
        while (h->pause && !h->stop) {
            h->paused = 1;
            usleep(1000);
        }
        h->paused = 0;
        if (sluice_track(h->c, "hammer", "H", NULL)) h->errors++;
        if (i % 200 == 199) usleep(2000);
    }
    return NULL;
}

static fake_t *g_fork_fake;

/*
 * ASan's allocator (GCC 12's libasan) is not locked across fork(): if another thread is inside
 * malloc at that moment, the child's first malloc deadlocks in the sanitizer itself. Under ASan
 * the test therefore quiesces the other threads (hammer paused, queue flushed) before forking;
 * the plain and TSan builds fork while the hammer thread and the worker are busy.
 */
#if defined(__SANITIZE_ADDRESS__)
#define FORK_QUIESCE 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define FORK_QUIESCE 1
#endif
#endif
#ifndef FORK_QUIESCE
#define FORK_QUIESCE 0
#endif
/* ThreadSanitizer cannot run a process that starts threads after a multi-threaded fork() (it
 * kills such a child), which is exactly what this test checks: it is skipped there and runs in
 * the plain and ASan builds. */
#if defined(__SANITIZE_THREAD__)
#define FORK_UNSUPPORTED 1
#elif defined(__has_feature)
#if __has_feature(thread_sanitizer)
#define FORK_UNSUPPORTED 1
#endif
#endif
#ifndef FORK_UNSUPPORTED
#define FORK_UNSUPPORTED 0
#endif

static void test_fork(void **state)
{
    (void)state;
    if (FORK_UNSUPPORTED) {
        skip();
        return;
    }
    env_t *e = env_new();
    e->cfg.batch_size = 10;
    e->cfg.flush_interval_ms = 5;
    e->cfg.queue_max_events = 1000000;
    env_start(e);
    g_fork_fake = &e->fake;
    hammer_t h = {e->c, 0, 0, 0, 0};
    pthread_t th;
    pthread_create(&th, NULL, hammer_main, &h); /* the client's lock is busy at fork time */
    usleep(20000);
    int pipefd[2];
    assert_int_equal(pipe(pipefd), 0);
    /* seeds this thread's id generator, whose state the children inherit */
    assert_int_equal(sluice_track(e->c, "main", "Seed", NULL), 0);
    for (int round = 0; round < 3; round++) {
        if (FORK_QUIESCE) {
            h.pause = 1;
            for (int i = 0; i < 2000 && !h.paused; i++)
                usleep(1000);
            assert_int_equal(sluice_flush(e->c, 5000), 0);
        }
        pid_t pid = fork();
        assert_true(pid >= 0);
        if (pid == 0) {
            /* child: fresh stopped client; its next call restarts the worker */
            fake_after_fork_child(g_fork_fake);
            size_t before = g_fork_fake->n_events;
            char id[64];
            snprintf(id, sizeof id, "child-%d", round);
            sluice_event ev = {.type = "track", .user_id = "c", .event = "Child", .message_id = id};
            int step = 0;
            char gen[37] = {0};
            if (sluice_send(e->c, &ev) == 0) step = 1;
            if (step == 1 && sluice_track(e->c, "c", "Child2", NULL) == 0) step = 2;
            if (step == 2 && sluice_flush(e->c, 3000) == 0) step = 3;
            if (step == 3 && fake_count_id(g_fork_fake, id) == 1) step = 4;
            /* only the child's own events: nothing inherited from the parent's queue */
            if (step == 4 && g_fork_fake->n_events == before + 2) step = 5;
            if (step == 5) memcpy(gen, g_fork_fake->events[before + 1].id, 36);
            if (write(pipefd[1], gen, 36) != 36) step = -1;
            if (step == 5 && sluice_client_close(e->c, 3000) == 0) step = 6;
            if (step != 6) {
                sluice_stats st;
                sluice_client_stats(e->c, &st);
                fprintf(stderr,
                        "fork child failed after step %d (queued %llu sent %llu queue %llu "
                        "requests %d)\n",
                        step, (unsigned long long)st.queued, (unsigned long long)st.sent,
                        (unsigned long long)st.queue_events, g_fork_fake->n_req);
            }
            _exit(step == 6 ? 0 : 1);
        }
        int status = -1;
        for (int i = 0; i < 1000; i++) { /* bounded: 10 s */
            if (waitpid(pid, &status, WNOHANG) == pid) break;
            usleep(10000);
            if (i == 999) {
                kill(pid, SIGKILL);
                waitpid(pid, &status, 0);
                fail_msg("fork child hung (deadlock?)");
            }
        }
        h.pause = 0;
        assert_true(WIFEXITED(status));
        assert_int_equal(WEXITSTATUS(status), 0);
        char child_id[37] = {0};
        assert_int_equal(read(pipefd[0], child_id, 36), 36);
        /* the parent's next generated id on this thread differs from the child's */
        assert_int_equal(sluice_identify(e->c, "parent", NULL), 0);
        assert_int_equal(sluice_flush(e->c, 5000), 0);
        assert_int_equal(fake_count_id(&e->fake, child_id), 0);
    }
    h.stop = 1;
    pthread_join(th, NULL);
    assert_int_equal(h.errors, 0);
    assert_int_equal(sluice_flush(e->c, 5000), 0);
    assert_unique_ids(&e->fake);
    sluice_stats st;
    sluice_client_stats(e->c, &st);
    assert_int_equal(st.sent, st.queued);
    close(pipefd[0]);
    close(pipefd[1]);
    env_free(e);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_event_fields),
        cmocka_unit_test(test_validation),
        cmocka_unit_test(test_batch_limits_and_timer),
        cmocka_unit_test(test_retry_backoff_bounds),
        cmocka_unit_test(test_retry_after_honoured),
        cmocka_unit_test(test_400_dropped_with_callback),
        cmocka_unit_test(test_413_split),
        cmocka_unit_test(test_queue_full_reject),
        cmocka_unit_test(test_queue_full_drop_oldest),
        cmocka_unit_test(test_close_flushes_within_timeout),
        cmocka_unit_test(test_close_cancels_hung_request),
        cmocka_unit_test(test_storage_offline_then_delivered),
        cmocka_unit_test(test_storage_corrupt_file_skipped),
        cmocka_unit_test(test_storage_is_bounded),
        cmocka_unit_test(test_context_merge),
        cmocka_unit_test(test_retries_governed_by_age),
        cmocka_unit_test(test_close_reports_lifetime_losses),
        cmocka_unit_test(test_stats_in_flight),
        cmocka_unit_test(test_config_checks),
        cmocka_unit_test(test_config_v1),
        cmocka_unit_test(test_anonymous_id_and_opt_out),
        cmocka_unit_test(test_write_ahead),
        cmocka_unit_test(test_concurrent_callers),
        cmocka_unit_test(test_fork),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
