/*
 * test_fleet.c — a whole fleet (SPEC §10, issue 14) with the real binaries on one out-of-process
 * mock cluster: two collectors with `pql.mode: stream` and identities on, two sluice-stream
 * workers with SPEC §6's example rules (events, changelog and events_deduped with 4 partitions).
 *
 *  - fleet_accounts_signalled_once: the harness's scripted PQL accounts (pql-hot/warm/watching-
 *    <run>) sent with `sluice-load --url A --url B` (4 connections, round-robin A,B,A,B; batches
 *    of 5 so the 45 scripted events span 9 batches on both collectors), verified by the harness
 *    itself (--verify --expect-pql: every event on `events` exactly once, each scripted account
 *    at its tier). Then pql_signals is read whole: every signalled account's signals form one
 *    linked chain (previousTier = the tier signalled before, null first, never the same tier
 *    twice in a row), so no signal is repeated; each scripted account's chain rises and ends at
 *    its scripted tier. Random accounts may be signalled too (the model's anonymous page views
 *    add users, so new_user_surge + Pricing can make watching): they are checked for the chain,
 *    not expected to be silent.
 *  - fleet_retry_on_other_collector_counted_once: one batch of 10 events POSTed to A and the same
 *    bytes re-sent to B (an SDK retry through the load balancer): both answer 200 accepted 10
 *    (collectors' dedup is per node), `events` holds 20 copies; with stream.events_deduped: true,
 *    events_deduped holds each messageId once, the owning worker's
 *    sluice_stream_duplicates_total went up by 10 (the other's did not move) and its
 *    /v1/accounts/{id} counts 10 events.
 *
 * The same user's key and accountId whichever collector took the event is
 * integration_identity_across_collectors (test_identities.c); not repeated here.
 *
 * Bounds: 60 s for a rebalance, the harness run or signals (loose: 2 shared cores under a
 * parallel ctest); a pass takes 5-20 s each (ASan, -j2).
 */
#include "it_common.h"

#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define ADMIN   "adm_fleet_1"
#define WAIT_MS 60000
#define RUN_ID  "fleet1"

/* SPEC §6's example rules (as loadtest/pql_run.sh), which the harness's script is made for. */
static const char stream_yaml[] =
    "admin_token: " ADMIN "\n"
    "stream: {commit_interval: 100ms, events_deduped: true}\n"
    "pql:\n"
    "  window: 7d\n"
    "  tiers: {hot: 80, warm: 50, watching: 30}\n"
    "  rules:\n"
    "    - {name: team_of_seven,   metric: active_users,    at_least: 7,     points: 40}\n"
    "    - {name: heavy_usage,     metric: events,          at_least: 10000, points: 20}\n"
    "    - {name: surge,           metric: events_velocity, recent: 24h, at_least: 3.0, "
    "min_recent: 200, points: 25}\n"
    "    - {name: new_user_surge,  metric: users_velocity,  recent: 24h, at_least: 2.0, "
    "min_recent: 3, points: 20}\n"
    "    - {name: regular_use,     metric: active_days,     at_least: 5,     points: 20}\n"
    "    - {name: pricing_interest, metric: event_seen, event: \"Pricing Page Viewed\", "
    "points: 10}\n"
    "    - {name: legal_review,    metric: event_seen, event: [\"Terms Viewed\", "
    "\"Privacy Policy Viewed\"], points: 15}\n";

/* The collectors: no in-process PQL (the workers do it), identities consumed and waited for. */
static const char collector_yaml[] = "pql: {mode: stream}\n"
                                     "identities: {ready_wait: 30s}\n";

typedef struct worker {
    pid_t pid;
    int port;
    char log[600];
} worker_t;

typedef struct fleet {
    char dir[256];
    sup_mock_t mock;
    sup_collector_t c[2];
    worker_t w[2];
} fleet_t;

static const char *const keys[] = {IT_KEY "=" IT_SOURCE, NULL};

static bool file_contains(const char *path, const char *needle, char *line, size_t linelen)
{
    FILE *f = fopen(path, "r");
    if (f == NULL) return false;
    char buf[4096];
    bool found = false; /* line: the last match */
    while (fgets(buf, sizeof buf, f) != NULL)
        if (strstr(buf, needle) != NULL) {
            found = true;
            if (line != NULL) snprintf(line, linelen, "%s", buf);
        }
    fclose(f);
    return found;
}

static void dump(const char *path)
{
    char cmd[700];
    snprintf(cmd, sizeof cmd, "tail -c 4000 %s >&2", path);
    if (system(cmd) != 0) fprintf(stderr, "(no log %s)\n", path);
}

static void dump_all(const fleet_t *f)
{
    for (int i = 0; i < 2; i++) {
        if (f->w[i].log[0]) dump(f->w[i].log);
        if (f->c[i].pid > 0) sup_collector_dump_log(&f->c[i], 3000);
    }
}

static long get(int port, const char *path, json_t **json, base_buf_t *text)
{
    const char *hdrs[2] = {"Authorization: Bearer " ADMIN, NULL};
    sup_http_req_t req = {.method = "GET", .path = path, .headers = hdrs, .timeout_ms = 5000};
    sup_http_resp_t resp;
    if (sup_http_once(port, &req, &resp) != 0) {
        sup_http_resp_free(&resp);
        return 0;
    }
    long st = resp.status;
    if (json != NULL) *json = resp.json ? json_incref(resp.json) : NULL;
    if (text != NULL) {
        base_buf_init(text, 1 << 20);
        (void)base_buf_append(text, resp.body.data, resp.body.len + 1);
    }
    sup_http_resp_free(&resp);
    return st;
}

/* A counter or gauge of /metrics at port (-1: not reachable or not there). */
static long long metric_at(int port, const char *name)
{
    base_buf_t t;
    if (get(port, "/metrics", NULL, &t) != 200) return -1;
    long long v = -1;
    char pat[160];
    snprintf(pat, sizeof pat, "\n%s ", name);
    const char *p = strstr(t.data, pat);
    if (p != NULL) v = atoll(p + strlen(pat));
    base_buf_free(&t);
    return v;
}

static long long metric(const worker_t *w, const char *name)
{
    return w->pid > 0 ? metric_at(w->port, name) : -1;
}

static void worker_start(fleet_t *f, int i)
{
    worker_t *w = &f->w[i];
    char cfg[512];
    snprintf(cfg, sizeof cfg, "%s/stream.yaml", f->dir);
    char logp[sizeof w->log]; /* f->dir is inside *f too: no snprintf into f from f */
    snprintf(logp, sizeof logp, "%s/stream%d.log", f->dir, i);
    memcpy(w->log, logp, sizeof logp);
    char *argv[] = {getenv("SLUICE_STREAM"), "--brokers",   f->mock.bootstrap, "--config", cfg,
                    "--admin-listen",        "127.0.0.1:0", "--log-level",     "info",     NULL};
    w->pid = sup_child_start(argv, w->log);
    assert_true(w->pid > 0);
    char line[4096];
    int64_t end = base_wall_ms() + 20000;
    while (!file_contains(w->log, "stream_admin_listening", line, sizeof line)) {
        if (base_wall_ms() > end) {
            dump(w->log);
            fail_msg("stream worker %d did not start", i);
        }
        base_sleep_ms(50);
    }
    const char *p = strstr(line, "\"port\":");
    assert_non_null(p);
    w->port = atoi(p + 7);
}

/* Waits until the two workers own the 4 partitions between them, at least one each. */
static void wait_owned(fleet_t *f)
{
    int64_t end = base_wall_ms() + WAIT_MS;
    for (;;) {
        long long a = metric(&f->w[0], "sluice_stream_partitions_owned");
        long long b = metric(&f->w[1], "sluice_stream_partitions_owned");
        if (a > 0 && b > 0 && a + b == 4) return;
        if (base_wall_ms() > end) {
            dump_all(f);
            fail_msg("partitions not shared out: %lld + %lld", a, b);
        }
        base_sleep_ms(200);
    }
}

/* Waits (bounded) for a collector's /readyz 200 (identities caught up). */
static void wait_ready(const sup_collector_t *c)
{
    int64_t end = base_wall_ms() + WAIT_MS;
    for (;;) {
        sup_http_req_t req = {.method = "GET", .path = "/readyz", .timeout_ms = 2000};
        sup_http_resp_t r = {0};
        int rc = sup_http_once(c->port, &req, &r);
        long st = r.status;
        sup_http_resp_free(&r);
        if (rc == 0 && st == 200) return;
        if (base_wall_ms() > end) {
            sup_collector_dump_log(c, 4000);
            fail_msg("collector on port %d never ready", c->port);
        }
        base_sleep_ms(50);
    }
}

static fleet_t *fleet_start(void **state)
{
    fleet_t *f = calloc(1, sizeof *f);
    assert_non_null(f);
    *state = f;
    snprintf(f->dir, sizeof f->dir, "/tmp/sluice-it-fleet-XXXXXX");
    assert_non_null(mkdtemp(f->dir));
    assert_int_equal(sup_mock_start(&f->mock, getenv("SLUICE_MOCK_KAFKA"), 1, 4, 10000), 0);
    assert_int_equal(sup_mock_cmd(&f->mock, "topic sluice_stream_changelog 4", 5000), 0);
    assert_int_equal(sup_mock_cmd(&f->mock, "topic events_deduped 4", 5000), 0);
    for (int i = 0; i < 2; i++) {
        char sub[300];
        snprintf(sub, sizeof sub, "%s/c%d", f->dir, i);
        assert_int_equal(mkdir(sub, 0700), 0);
        assert_int_equal(sup_collector_start(&f->c[i], getenv("SLUICE_COLLECTOR"), sub,
                                             f->mock.bootstrap, keys, collector_yaml, 30000),
                         0);
    }
    char path[512];
    snprintf(path, sizeof path, "%s/stream.yaml", f->dir);
    FILE *fp = fopen(path, "w");
    assert_non_null(fp);
    fputs(stream_yaml, fp);
    fclose(fp);
    worker_start(f, 0);
    worker_start(f, 1);
    wait_ready(&f->c[0]);
    wait_ready(&f->c[1]);
    wait_owned(f);
    return f;
}

static int fleet_teardown(void **state)
{
    fleet_t *f = *state;
    if (f == NULL) return 0;
    int bad = 0;
    for (int i = 0; i < 2; i++) {
        if (f->w[i].pid <= 0) continue;
        kill(f->w[i].pid, SIGTERM);
        int st = sup_child_wait(f->w[i].pid, 30000);
        if (st != 0) {
            fprintf(stderr, "stream worker %d exit status %d after SIGTERM (want 0)\n", i, st);
            dump(f->w[i].log);
            bad = 1;
        }
    }
    for (int i = 0; i < 2; i++) {
        if (f->c[i].pid <= 0) continue;
        int st = sup_collector_stop(&f->c[i], 15000);
        if (st != 0) {
            fprintf(stderr, "collector %d exit status %d after SIGTERM (want 0)\n", i, st);
            sup_collector_dump_log(&f->c[i], 4000);
            bad = 1;
        }
    }
    sup_mock_stop(&f->mock);
    if (getenv("SLUICE_KEEP_TMP") == NULL) {
        char cmd[300];
        snprintf(cmd, sizeof cmd, "rm -rf '%s'", f->dir);
        if (system(cmd) != 0) fprintf(stderr, "could not remove %s\n", f->dir);
    }
    free(f);
    *state = NULL;
    return bad ? -1 : 0;
}

/* Waits until the workers have consumed `want` events records between them, then two commit
 * intervals and more so that what they produced for them is committed. */
static void wait_processed(fleet_t *f, long long want)
{
    int64_t end = base_wall_ms() + WAIT_MS;
    for (;;) {
        long long s = 0;
        for (int i = 0; i < 2; i++) {
            long long v = metric(&f->w[i], "sluice_stream_events_processed_total");
            if (v > 0) s += v;
        }
        if (s >= want) break;
        if (base_wall_ms() > end) {
            dump_all(f);
            fail_msg("the workers processed %lld of %lld events", s, want);
        }
        base_sleep_ms(100);
    }
    base_sleep_ms(1000); /* commit_interval is 100 ms */
}

/* ---- a: the scripted accounts, members spread over both collectors ---- */

static int tier_rank(const char *t)
{
    static const char *const order[] = {"watching", "warm", "hot"};
    for (int i = 0; i < 3; i++)
        if (t != NULL && strcmp(t, order[i]) == 0) return i;
    return -1;
}

static void test_fleet_accounts_signalled_once(void **state)
{
    fleet_t *f = fleet_start(state);
    const char *load = getenv("SLUICE_LOAD");
    if (load == NULL) fail_msg("SLUICE_LOAD not set (sluice-load not built)");
    char url_a[64], url_b[64], report[512], log[512];
    snprintf(url_a, sizeof url_a, "http://127.0.0.1:%d", f->c[0].port);
    snprintf(url_b, sizeof url_b, "http://127.0.0.1:%d", f->c[1].port);
    snprintf(report, sizeof report, "%s/load.json", f->dir);
    snprintf(log, sizeof log, "%s/load.log", f->dir);
    /* Closed loop: all 4 connections send at once and again on each answer, so the script's 9
     * batches alternate between the collectors. 1 s: the script's 9 batches even on a loaded
     * box (a 200 waits for Kafka's ack); at most a few thousand random events. */
    char *argv[] = {(char *)load,
                    "--url",
                    url_a,
                    "--url",
                    url_b,
                    "--write-key",
                    IT_KEY,
                    "--rate",
                    "max",
                    "--duration",
                    "1",
                    "--connections",
                    "4",
                    "--threads",
                    "1",
                    "--batch",
                    "5",
                    "--accounts",
                    "1000",
                    "--max-users",
                    "2",
                    "--run-id",
                    RUN_ID,
                    "--verify",
                    f->mock.bootstrap,
                    "--expect-pql",
                    "--verify-timeout",
                    "60",
                    "--verify-quiet-ms",
                    "2000",
                    "--quiet",
                    "--report",
                    report,
                    NULL};
    pid_t pid = sup_child_start(argv, log);
    assert_true(pid > 0);
    int st = sup_child_wait(pid, 90000);
    if (st != 0) {
        dump(log);
        dump_all(f);
        fail_msg("sluice-load exited %d (1 = verification failed)", st);
    }
    json_error_t jerr;
    json_t *rep = json_load_file(report, 0, &jerr);
    assert_non_null(rep);
    json_t *urls = json_object_get(rep, "urls");
    assert_int_equal(json_array_size(urls), 2);
    for (size_t i = 0; i < 2; i++) {
        json_t *u = json_array_get(urls, i);
        assert_string_equal(json_string_value(json_object_get(u, "url")), i ? url_b : url_a);
        assert_int_equal(json_integer_value(json_object_get(u, "connections")), 2);
        assert_true(json_integer_value(json_object_get(u, "events_ok")) > 0);
    }
    json_t *ver = json_object_get(rep, "verify");
    assert_true(json_is_true(json_object_get(ver, "ok")));
    assert_true(json_is_true(json_object_get(ver, "pql_ok")));
    json_int_t delivered = json_integer_value(json_object_get(ver, "delivered"));
    assert_true(delivered >= 45); /* at least the script */
    fprintf(stderr, "fleet run: %lld + %lld events on A + B, %lld delivered\n",
            (long long)json_integer_value(json_object_get(json_array_get(urls, 0), "events_ok")),
            (long long)json_integer_value(json_object_get(json_array_get(urls, 1), "events_ok")),
            (long long)delivered);
    json_decref(rep);

    /* Everything processed and committed, then every signal the topic holds. */
    wait_processed(f, delivered);
    sup_kmsgs_t m;
    assert_int_equal(sup_consume(f->mock.bootstrap, "pql_signals", 3, WAIT_MS, &m), 0);
    static const char *const tiers[3] = {"hot", "warm", "watching"};
    /* Every signalled account (scripted or not), in topic order: its signals form one linked
     * chain, previousTier = the tier signalled before (null first). A repeated signal (a replay,
     * a second signaller) breaks the link. The scripted ones must also rise at every step and
     * end at their tier. */
    enum { MAX_ACCTS = 4096 };
    typedef struct {
        char id[64];
        int last, count;
    } acct_t;
    acct_t *seen = calloc(MAX_ACCTS, sizeof *seen);
    assert_non_null(seen);
    size_t n_seen = 0;
    for (size_t k = 0; k < m.n; k++) {
        json_t *j = sup_kmsg_value(&m.msgs[k]);
        assert_non_null(j);
        const char *acct = json_string_value(json_object_get(j, "accountId"));
        const char *tier = json_string_value(json_object_get(j, "tier"));
        json_t *prev = json_object_get(j, "previousTier");
        assert_non_null(acct);
        int r = tier_rank(tier);
        if (r < 0) fail_msg("%s: unknown tier %s", acct, tier ? tier : "(none)");
        size_t a = 0;
        while (a < n_seen && strcmp(seen[a].id, acct) != 0)
            a++;
        if (a == n_seen) {
            assert_true(n_seen < MAX_ACCTS);
            snprintf(seen[a].id, sizeof seen[a].id, "%s", acct);
            seen[a].last = -1;
            n_seen++;
        }
        bool scripted = strncmp(acct, "pql-", 4) == 0;
        int pr = json_is_null(prev) ? -1 : tier_rank(json_string_value(prev));
        if (pr != seen[a].last || r == pr || (scripted && r < pr)) {
            dump_all(f);
            fail_msg("%s: signal %s (previousTier %s) after tier rank %d: repeated or out of "
                     "order",
                     acct, tier, json_is_null(prev) ? "null" : json_string_value(prev),
                     seen[a].last);
        }
        seen[a].last = r;
        seen[a].count++;
        json_decref(j);
    }
    int scripted_seen = 0;
    for (size_t a = 0; a < n_seen; a++)
        if (strncmp(seen[a].id, "pql-", 4) == 0) scripted_seen++;
    fprintf(stderr, "%zu signals: %zu accounts signalled, %d of them scripted\n", m.n, n_seen,
            scripted_seen);
    for (int i = 0; i < 3; i++) {
        char id[64];
        snprintf(id, sizeof id, "pql-%s-" RUN_ID, tiers[i]);
        int last = -1, count = 0;
        for (size_t a = 0; a < n_seen; a++)
            if (strcmp(seen[a].id, id) == 0) {
                last = seen[a].last;
                count = seen[a].count;
            }
        fprintf(stderr, "%s: %d signals\n", id, count);
        if (last != tier_rank(tiers[i]))
            fail_msg("%s ended at rank %d, want %s", id, last, tiers[i]);
    }
    /* no other scripted account (another run's, a misnamed one) */
    assert_int_equal(scripted_seen, 3);
    free(seen);
    sup_kmsgs_free(&m);
}

/* ---- b: a retry that went to the other collector ---- */

#define RETRY_N    10
#define RETRY_ACCT "acct-fleet-retry"

static void post_ok(const sup_collector_t *c, const char *body, long accepted)
{
    const char *headers[] = {"Content-Type: application/json", NULL};
    sup_http_req_t req = {
        .path = "/v1/batch", .headers = headers, .body = body, .body_len = strlen(body)};
    req.user = IT_KEY;
    sup_http_resp_t r = {0};
    assert_int_equal(sup_http_once(c->port, &req, &r), 0);
    it_assert_ok(&r, accepted, 0);
    sup_http_resp_free(&r);
}

static void test_fleet_retry_on_other_collector_counted_once(void **state)
{
    fleet_t *f = fleet_start(state);
    long long dup0[2];
    for (int i = 0; i < 2; i++) {
        dup0[i] = metric(&f->w[i], "sluice_stream_duplicates_total");
        assert_true(dup0[i] >= 0);
    }
    json_t *ev = json_array();
    for (int i = 0; i < RETRY_N; i++) {
        char id[32], user[32];
        snprintf(id, sizeof id, "fleet-retry-%02d", i);
        snprintf(user, sizeof user, "retry-user-%d", i % 3);
        json_array_append_new(ev, json_pack("{s:s,s:s,s:s,s:s,s:{s:s}}", "type", "track",
                                            "messageId", id, "userId", user, "event", "Doc Viewed",
                                            "context", "groupId", RETRY_ACCT));
    }
    json_t *batch = sup_batch(ev);
    char *body = json_dumps(batch, JSON_COMPACT);
    assert_non_null(body);
    json_decref(batch);
    /* The same bytes to A, then to B: B's own dedup has not seen them, so both accept. */
    post_ok(&f->c[0], body, RETRY_N);
    post_ok(&f->c[1], body, RETRY_N);
    free(body);
    sup_kmsgs_t m;
    assert_int_equal(sup_consume(f->mock.bootstrap, "events", 2 * RETRY_N, WAIT_MS, &m), 0);
    assert_int_equal(m.n, 2 * RETRY_N);
    sup_kmsgs_free(&m);
    wait_processed(f, 2 * RETRY_N);

    /* events_deduped: each messageId once */
    assert_int_equal(sup_consume(f->mock.bootstrap, "events_deduped", RETRY_N, WAIT_MS, &m), 0);
    int seen[RETRY_N] = {0};
    for (size_t k = 0; k < m.n; k++) {
        json_t *j = sup_kmsg_value(&m.msgs[k]);
        assert_non_null(j);
        const char *id = json_string_value(json_object_get(j, "messageId"));
        int i = -1;
        if (id == NULL || sscanf(id, "fleet-retry-%d", &i) != 1 || i < 0 || i >= RETRY_N)
            fail_msg("events_deduped: unexpected message %s", id ? id : "(no messageId)");
        seen[i]++;
        json_decref(j);
    }
    for (int i = 0; i < RETRY_N; i++)
        if (seen[i] != 1) {
            dump_all(f);
            fail_msg("events_deduped holds fleet-retry-%02d %d times", i, seen[i]);
        }
    assert_int_equal(m.n, RETRY_N);
    sup_kmsgs_free(&m);

    /* the owner (the one worker that knows the account) saw the 10 retries as duplicates */
    char path[64];
    snprintf(path, sizeof path, "/v1/accounts/%s", RETRY_ACCT);
    int owner = -1;
    json_t *acct = NULL;
    for (int i = 0; i < 2; i++) {
        json_t *j = NULL;
        if (get(f->w[i].port, path, &j, NULL) == 200) {
            if (owner >= 0) fail_msg("both workers track %s", RETRY_ACCT);
            owner = i;
            acct = j;
        } else {
            json_decref(j);
        }
    }
    if (owner < 0) fail_msg("no worker tracks %s", RETRY_ACCT);
    json_t *c = json_object_get(acct, "counters");
    assert_int_equal(json_integer_value(json_object_get(c, "events")), RETRY_N);
    json_decref(acct);
    long long d_owner = metric(&f->w[owner], "sluice_stream_duplicates_total") - dup0[owner];
    long long d_other =
        metric(&f->w[1 - owner], "sluice_stream_duplicates_total") - dup0[1 - owner];
    assert_int_equal(d_owner, RETRY_N);
    assert_int_equal(d_other, 0);
}

int main(int argc, char **argv)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_teardown(test_fleet_accounts_signalled_once, fleet_teardown),
        cmocka_unit_test_teardown(test_fleet_retry_on_other_collector_counted_once, fleet_teardown),
    };
    return it_run(argc, argv, "fleet", tests, sizeof tests / sizeof tests[0]);
}
