/*
 * Integration tests of sluice-stream (SPEC §10, issue 14) with the real binaries: one collector
 * and two stream workers on the mock cluster (events and the changelog with 4 partitions each),
 * scripted accounts that each rise to one tier (watching, warm or hot) exactly once:
 *   - two workers share the partitions; every account is signalled once at its tier and its
 *     counters are exact; an undecodable record on events is counted and skipped; every event
 *     is on events_deduped exactly once (all three scenarios);
 *   - kill -9 one worker between two phases: its partitions move to the other, which restores
 *     them from the changelog (restore logged with its time) and resumes at the committed
 *     offset: the accounts already signalled are not signalled again, the others are signalled
 *     once, and every account's event counter equals what was sent (nothing replayed twice);
 *   - SIGTERM one worker: it exits 0 after handing its partitions back; same checks;
 *   - bad config: no rules, no brokers, a changelog with too few partitions: clear refusals.
 *
 * The signals are read back with sup_consume (everything the topic holds, aborted records
 * included: the 2.0.2 mock cluster does not filter them anyway), so a duplicate from any source
 * fails the test. The kill happens between commits (after the workers processed and committed
 * phase 1): librdkafka 2.0.2's mock makes transactions protocol-only (no atomic commit, see
 * /work/notes/issue-14-stream.md), so a kill inside a commit could show a partial commit on the
 * mock that real Kafka would abort. Bounds: 60 s for a rebalance or for signals (loose: 2 shared
 * cores; the mock's rebalance after a kill waits for session.timeout.ms = 6 s).
 */
#include "it_common.h"

#include <librdkafka/rdkafka.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define ADMIN      "adm_stream_1"
#define N_ACCOUNTS 12
#define WAIT_MS    60000

static const char stream_yaml[] =
    "admin_token: " ADMIN "\n"
    "stream: {commit_interval: 100ms, events_deduped: true}\n"
    "pql:\n"
    "  window: 7d\n"
    "  tiers: {hot: 65, warm: 50, watching: 30}\n"
    "  rules:\n"
    "    - {name: team_of_seven,    metric: active_users, at_least: 7, points: 40}\n"
    "    - {name: pricing_interest, metric: event_seen, event: \"Pricing Page Viewed\", "
    "points: 10}\n"
    "    - {name: legal_review,     metric: event_seen, event: \"Terms Viewed\", points: 15}\n";

typedef struct worker {
    pid_t pid;
    int port;
    char log[600];
} worker_t;

typedef struct fleet {
    sup_env_t env;
    worker_t w[2];
    char collector_yaml[4096];
} fleet_t;

/* The collector counts PQL in-process too (until pql.mode: stream): its signals go to a topic of
 * their own, so pql_signals holds the workers' only. */
static void write_configs(fleet_t *f)
{
    snprintf(f->collector_yaml, sizeof f->collector_yaml,
             "%skafka: {topics: {pql: collector_pql_signals}}\n", stream_yaml);
}

static void write_stream_yaml(fleet_t *f)
{
    char path[512];
    snprintf(path, sizeof path, "%s/stream.yaml", f->env.dir);
    FILE *fp = fopen(path, "w");
    assert_non_null(fp);
    fputs(stream_yaml, fp);
    fclose(fp);
}

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

static void worker_start(fleet_t *f, int i)
{
    worker_t *w = &f->w[i];
    char cfg[512];
    snprintf(cfg, sizeof cfg, "%s/stream.yaml", f->env.dir);
    char logp[sizeof w->log];
    snprintf(logp, sizeof logp, "%s/stream%d.log", f->env.dir, i);
    memcpy(w->log, logp, sizeof logp);
    unlink(w->log);
    char *argv[] = {
        getenv("SLUICE_STREAM"), "--brokers",   f->env.mock.bootstrap, "--config", cfg,
        "--admin-listen",        "127.0.0.1:0", "--log-level",         "info",     NULL};
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

static long get(int port, const char *path, json_t **json, base_buf_t *text)
{
    const char *hdrs[2] = {"Authorization: Bearer " ADMIN, NULL};
    sup_http_req_t req = {.method = "GET", .path = path, .headers = hdrs};
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

/* A counter or gauge of a worker's /metrics (-1: not reachable). */
static long long metric(const worker_t *w, const char *name)
{
    if (w->pid <= 0) return -1;
    base_buf_t t;
    if (get(w->port, "/metrics", NULL, &t) != 200) return -1;
    long long v = -1;
    char pat[160];
    snprintf(pat, sizeof pat, "\n%s ", name);
    const char *p = strstr(t.data, pat);
    if (p != NULL) v = atoll(p + strlen(pat));
    base_buf_free(&t);
    return v;
}

/* Waits until the live workers own all 4 partitions between them, each at least one when
 * both are live. */
static void wait_owned(fleet_t *f, int live)
{
    int64_t end = base_wall_ms() + WAIT_MS;
    for (;;) {
        long long a = f->w[0].pid > 0 ? metric(&f->w[0], "sluice_stream_partitions_owned") : 0;
        long long b = f->w[1].pid > 0 ? metric(&f->w[1], "sluice_stream_partitions_owned") : 0;
        if (a >= 0 && b >= 0 && a + b == 4 && (live < 2 || (a > 0 && b > 0))) return;
        if (base_wall_ms() > end) {
            dump(f->w[0].log);
            dump(f->w[1].log);
            fail_msg("partitions not shared out: %lld + %lld", a, b);
        }
        base_sleep_ms(200);
    }
}

static fleet_t *fleet_start(void **state)
{
    fleet_t *f = calloc(1, sizeof *f);
    assert_non_null(f);
    *state = f;
    write_configs(f);
    sup_env_opts_t o = {.config_yaml = f->collector_yaml, .partitions = 4};
    assert_int_equal(sup_env_start(&f->env, &o), 0);
    write_stream_yaml(f);
    assert_int_equal(sup_mock_cmd(&f->env.mock, "topic sluice_stream_changelog 4", 5000), 0);
    assert_int_equal(sup_mock_cmd(&f->env.mock, "topic events_deduped 4", 5000), 0);
    worker_start(f, 0);
    worker_start(f, 1);
    wait_owned(f, 2);
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
    int st = sup_env_stop(&f->env);
    free(f);
    *state = NULL;
    return st == 0 && !bad ? 0 : -1;
}

/* ---- the scripted accounts ---- */

/* Account i: kind i % 3 = watching (7 users), warm (Pricing, then 7 users), hot (Pricing and
 * Terms, then 7 users): one rise each, at the 7th user. Phase 1 sends, per account, its page
 * views and users 0..users1-1; phase 2 the rest. */
static const char *const tier_of[3] = {"watching", "warm", "hot"};

static void account_name(int i, char *out, size_t n)
{
    snprintf(out, n, "st-acct-%02d", i);
}

static json_t *track(const char *acct, const char *user, const char *event)
{
    char id[IT_ID_BYTES];
    sup_message_id(id, sizeof id, "st");
    return json_pack("{s:s,s:s,s:s,s:s,s:{s:s}}", "type", "track", "messageId", id, "userId", user,
                     "event", event, "context", "groupId", acct);
}

static long sent_events[N_ACCOUNTS];

static void send_phase(fleet_t *f, int from_user, int to_user, bool pages, int only_kind)
{
    json_t *ev = json_array();
    for (int i = 0; i < N_ACCOUNTS; i++) {
        if (only_kind >= 0 && i % 3 != only_kind) continue;
        char acct[32];
        account_name(i, acct, sizeof acct);
        if (pages && i % 3 >= 1) {
            json_array_append_new(ev, track(acct, "u0", "Pricing Page Viewed"));
            sent_events[i]++;
        }
        if (pages && i % 3 == 2) {
            json_array_append_new(ev, track(acct, "u0", "Terms Viewed"));
            sent_events[i]++;
        }
        for (int u = from_user; u < to_user; u++) {
            char user[16];
            snprintf(user, sizeof user, "u%d", u);
            json_array_append_new(ev, track(acct, user, "Doc Viewed"));
            sent_events[i]++;
        }
    }
    size_t n = json_array_size(ev);
    json_t *batch = sup_batch(ev);
    sup_http_resp_t resp;
    it_post_json(&f->env, "/v1/batch", batch, &resp);
    it_assert_ok(&resp, (long)n, 0);
    sup_http_resp_free(&resp);
    json_decref(batch);
}

static long total_sent(void)
{
    long t = 0;
    for (int i = 0; i < N_ACCOUNTS; i++)
        t += sent_events[i];
    return t;
}

/* Waits until the live workers have processed `want` events (since their start) and committed
 * them (two commit intervals of quiet after it). processed_base: the events a dead worker had
 * counted. */
static void wait_processed(fleet_t *f, long long want)
{
    int64_t end = base_wall_ms() + WAIT_MS;
    for (;;) {
        long long s = 0;
        for (int i = 0; i < 2; i++)
            if (f->w[i].pid > 0) {
                long long v = metric(&f->w[i], "sluice_stream_events_processed_total");
                if (v > 0) s += v;
            }
        if (s >= want) break;
        if (base_wall_ms() > end) fail_msg("processed %lld of %lld events", s, want);
        base_sleep_ms(100);
    }
    base_sleep_ms(1000); /* the commit interval is 100 ms: the batch is committed by then */
}

/* Reads pql_signals until `want` signals arrived (bounded) and checks exactly one per account
 * at its tier, none else. */
static void assert_signals(fleet_t *f, const bool *expected)
{
    size_t want = 0;
    for (int i = 0; i < N_ACCOUNTS; i++)
        want += expected[i];
    sup_kmsgs_t m;
    assert_int_equal(sup_consume(f->env.mock.bootstrap, "pql_signals", want, WAIT_MS, &m), 0);
    int seen[N_ACCOUNTS] = {0};
    for (size_t k = 0; k < m.n; k++) {
        json_t *j = sup_kmsg_value(&m.msgs[k]);
        assert_non_null(j);
        const char *acct = json_string_value(json_object_get(j, "accountId"));
        const char *tier = json_string_value(json_object_get(j, "tier"));
        assert_non_null(acct);
        int i = -1;
        if (sscanf(acct, "st-acct-%d", &i) != 1 || i < 0 || i >= N_ACCOUNTS)
            fail_msg("signal for an unknown account %s", acct);
        if (strcmp(tier, tier_of[i % 3]) != 0)
            fail_msg("%s signalled %s, want %s", acct, tier, tier_of[i % 3]);
        seen[i]++;
        json_decref(j);
    }
    for (int i = 0; i < N_ACCOUNTS; i++)
        if (seen[i] != (expected[i] ? 1 : 0)) {
            dump(f->w[0].log);
            dump(f->w[1].log);
            fail_msg("st-acct-%02d signalled %d times, want %d", i, seen[i], expected[i] ? 1 : 0);
        }
    assert_int_equal(m.n, want);
    sup_kmsgs_free(&m);
}

/* Every account's live event counter (asked of whichever worker owns it) equals what was sent:
 * nothing lost, nothing counted twice by a replay. */
static void assert_counters(fleet_t *f)
{
    for (int i = 0; i < N_ACCOUNTS; i++) {
        char path[64], acct[32];
        account_name(i, acct, sizeof acct);
        snprintf(path, sizeof path, "/v1/accounts/%s", acct);
        json_t *j = NULL;
        for (int k = 0; k < 2 && j == NULL; k++) {
            if (f->w[k].pid <= 0) continue;
            json_t *got = NULL;
            if (get(f->w[k].port, path, &got, NULL) == 200)
                j = got;
            else
                json_decref(got);
        }
        if (j == NULL) fail_msg("%s: no worker tracks it", acct);
        json_t *c = json_object_get(j, "counters");
        assert_int_equal(json_integer_value(json_object_get(c, "events")), sent_events[i]);
        json_decref(j);
    }
}

static int cmp_str(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

/* events_deduped (stream.events_deduped: true) holds every event sent exactly once. */
static void assert_deduped_exactly_once(fleet_t *f)
{
    long want = total_sent();
    sup_kmsgs_t m;
    assert_int_equal(
        sup_consume(f->env.mock.bootstrap, "events_deduped", (size_t)want, WAIT_MS, &m), 0);
    assert_int_equal(m.n, want);
    char **ids = calloc(m.n ? m.n : 1, sizeof *ids);
    assert_non_null(ids);
    for (size_t k = 0; k < m.n; k++) {
        json_t *j = sup_kmsg_value(&m.msgs[k]);
        assert_non_null(j);
        ids[k] = strdup(json_string_value(json_object_get(j, "messageId")));
        json_decref(j);
    }
    qsort(ids, m.n, sizeof *ids, cmp_str);
    for (size_t k = 1; k < m.n; k++)
        if (strcmp(ids[k - 1], ids[k]) == 0) fail_msg("events_deduped: %s twice", ids[k]);
    for (size_t k = 0; k < m.n; k++)
        free(ids[k]);
    free(ids);
    sup_kmsgs_free(&m);
}

static void run_phases(fleet_t *f, int victim, int sig)
{
    memset(sent_events, 0, sizeof sent_events);
    bool expected[N_ACCOUNTS];
    /* Phase 1: watching accounts complete (signalled), the others at 4 users of 7. */
    send_phase(f, 0, 7, false, 0);
    send_phase(f, 0, 4, true, 1);
    send_phase(f, 0, 4, true, 2);
    wait_processed(f, total_sent());
    for (int i = 0; i < N_ACCOUNTS; i++)
        expected[i] = i % 3 == 0;
    assert_signals(f, expected);
    if (victim >= 0) {
        worker_t *v = &f->w[victim];
        kill(v->pid, sig);
        int st = sup_child_wait(v->pid, 30000);
        if (sig == SIGKILL)
            assert_int_equal(st, 128 + SIGKILL);
        else {
            if (st != 0) dump(v->log);
            assert_int_equal(st, 0);
            assert_true(file_contains(v->log, "stream_revoked", NULL, 0));
            assert_true(file_contains(v->log, "stream_stopped", NULL, 0));
        }
        v->pid = 0;
        wait_owned(f, 1);
        /* the survivor restored the victim's partitions from the changelog */
        worker_t *s = &f->w[1 - victim];
        assert_true(metric(s, "sluice_stream_restore_records_total") > 0);
        char line[4096];
        assert_true(file_contains(s->log, "\"resume_offset\":", line, sizeof line));
        fprintf(stderr, "restore after %s: %s", sig == SIGKILL ? "kill -9" : "SIGTERM", line);
    }
    /* Phase 2: users 4..6 of the warm and hot accounts: each rises once. */
    send_phase(f, 4, 7, false, 1);
    send_phase(f, 4, 7, false, 2);
    for (int i = 0; i < N_ACCOUNTS; i++)
        expected[i] = true;
    assert_signals(f, expected);
    assert_counters(f);
    assert_deduped_exactly_once(f);
}

static void test_stream_two_workers_signal_each_account_once(void **state)
{
    fleet_t *f = fleet_start(state);
    /* an undecodable record on events: counted, skipped, nothing else disturbed */
    char err[512];
    rd_kafka_conf_t *c = rd_kafka_conf_new();
    assert_int_equal(
        rd_kafka_conf_set(c, "bootstrap.servers", f->env.mock.bootstrap, err, sizeof err),
        RD_KAFKA_CONF_OK);
    rd_kafka_t *p = rd_kafka_new(RD_KAFKA_PRODUCER, c, err, sizeof err);
    assert_non_null(p);
    assert_int_equal(rd_kafka_producev(p, RD_KAFKA_V_TOPIC("events"), RD_KAFKA_V_PARTITION(1),
                                       RD_KAFKA_V_VALUE("\xc1garbage", 8),
                                       RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY), RD_KAFKA_V_END),
                     0);
    assert_int_equal(rd_kafka_flush(p, 10000), 0);
    rd_kafka_destroy(p);
    run_phases(f, -1, 0);
    long long bad = 0;
    for (int i = 0; i < 2; i++)
        bad += metric(&f->w[i], "sluice_stream_records_undecodable_total");
    assert_int_equal(bad, 1);
}

static void test_stream_kill9_worker_restored_from_changelog(void **state)
{
    fleet_t *f = fleet_start(state);
    run_phases(f, 0, SIGKILL);
}

static void test_stream_sigterm_hands_partitions_back(void **state)
{
    fleet_t *f = fleet_start(state);
    run_phases(f, 1, SIGTERM);
}

/* Bad configurations: a clear line and a non-zero exit, before touching any partition. */
static void test_stream_refuses_bad_config(void **state)
{
    fleet_t *f = calloc(1, sizeof *f);
    assert_non_null(f);
    *state = f;
    write_configs(f);
    sup_env_opts_t o = {.config_yaml = f->collector_yaml, .partitions = 4};
    assert_int_equal(sup_env_start(&f->env, &o), 0);
    write_stream_yaml(f);
    char cfg[512], norules[512], log[600];
    snprintf(cfg, sizeof cfg, "%s/stream.yaml", f->env.dir);
    snprintf(norules, sizeof norules, "%s/norules.yaml", f->env.dir);
    FILE *nf = fopen(norules, "w");
    assert_non_null(nf);
    fputs("stream: {group_id: g}\n", nf);
    fclose(nf);
    snprintf(log, sizeof log, "%s/bad.log", f->env.dir);
    struct {
        const char *config, *brokers, *want;
        int status;
    } cases[] = {
        {norules, f->env.mock.bootstrap, "pql.rules", 2},
        {cfg, NULL, "--brokers: required", 2},
        /* no changelog topic yet */
        {cfg, f->env.mock.bootstrap, "kafka.topics.changelog", 1},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        unlink(log);
        char *argv[8];
        int a = 0;
        argv[a++] = getenv("SLUICE_STREAM");
        argv[a++] = "--config";
        argv[a++] = (char *)cases[i].config;
        if (cases[i].brokers != NULL) {
            argv[a++] = "--brokers";
            argv[a++] = (char *)cases[i].brokers;
        }
        argv[a] = NULL;
        pid_t pid = sup_child_start(argv, log);
        assert_true(pid > 0);
        int st = sup_child_wait(pid, 30000);
        if (st != cases[i].status || !file_contains(log, cases[i].want, NULL, 0)) {
            dump(log);
            fail_msg("case %zu: status %d (want %d), want \"%s\" in the output", i, st,
                     cases[i].status, cases[i].want);
        }
    }
}

int main(int argc, char **argv)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_teardown(test_stream_two_workers_signal_each_account_once, fleet_teardown),
        cmocka_unit_test_teardown(test_stream_kill9_worker_restored_from_changelog, fleet_teardown),
        cmocka_unit_test_teardown(test_stream_sigterm_hands_partitions_back, fleet_teardown),
        cmocka_unit_test_teardown(test_stream_refuses_bad_config, fleet_teardown),
    };
    return it_run(argc, argv, "stream", tests, sizeof tests / sizeof tests[0]);
}
