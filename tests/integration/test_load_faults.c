/*
 * test_load_faults.c — faults under a real load: sluice-load (the harness, SPEC §9) drives the
 * real collector over loopback against the mock cluster in its helper process, and verifies in
 * Kafka afterwards (--verify: every event of a 200 on the events topic exactly once, events of
 * other answers at most once).
 *  - slow_broker_64_partitions (issue 12 item 7): 64 partitions, 500 ms broker RTT, 20 k
 *    events/s (RUN_SERIAL). Before the producer lanes (kafka_out.c, kafka.producers) not one
 *    request got a 200: librdkafka sends one ProduceRequest per partition and keeps 5 in flight
 *    per connection, so each partition waited ~6.4 s for its turn, beyond the 5 s delivery
 *    timeout. Asserted (loose: results vary with the shared machine's load, see the note): the
 *    first 200 within 8 s, >= 25% of the answers 200, p99 < 10 s, no 3 s in a row without an
 *    answer, every 200'd event delivered. Idle machine: 100% 200s, first 200 in second 2, p99
 *    ~3.6 s (each request waits for its identities links too; answers come in 2-s waves). The
 *    links once went through lane 0 alone: 6 of 800 answers 200, first in second 12.
 *  - sigterm_mid_load: SIGTERM 2 s into a steady load: exit 0 within shutdown_timeout, every
 *    200'd event in Kafka exactly once.
 * Figures (sent, acknowledged, delivered, duplicated, p99, collector RSS) are printed.
 * Duplicates: the mock checks idempotent sequence numbers only for transactional producers, so a
 * produce retried after a timeout may be appended twice. A retry needs a failed or timed-out
 * request, which also fails its delivery (503); so a duplicated event is accepted only when some
 * answers were not 200 — with every answer a 200, any duplicate fails the case.
 */
#include "it_common.h"

#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* What one sluice-load run reported. */
typedef struct load_report {
    int rc;
    long sent, ok_events, responses, status_200, non_200;
    double p50, p99, max;
    double first_ok_s; /* series: end of the first second with a 200, -1 if none */
    int stalled_s; /* longest run of seconds while sending with no answer, after the first 200 */
    long delivered, missing, duplicated, unexpected, unsure, unsure_delivered;
    bool verify_ok;
} load_report_t;

static long jint(const json_t *o, const char *k)
{
    return (long)json_integer_value(json_object_get(o, k));
}

static double jnum(const json_t *o, const char *k)
{
    return json_number_value(json_object_get(o, k));
}

/* Parses sluice-load's JSON report at path into r (asserts it is readable). */
static void read_report(const char *path, double send_s, load_report_t *r)
{
    json_error_t jerr;
    json_t *j = json_load_file(path, 0, &jerr);
    if (j == NULL) fprintf(stderr, "%s: %s\n", path, jerr.text);
    assert_non_null(j);
    const json_t *tot = json_object_get(j, "totals");
    const json_t *lat = json_object_get(j, "latency_ms");
    const json_t *st = json_object_get(j, "status");
    const json_t *v = json_object_get(j, "verify");
    r->sent = jint(tot, "events_sent");
    r->ok_events = jint(tot, "events_ok");
    r->responses = jint(tot, "responses");
    r->status_200 = jint(st, "200");
    r->non_200 = r->responses - r->status_200;
    r->p50 = jnum(lat, "p50");
    r->p99 = jnum(lat, "p99");
    r->max = jnum(lat, "max");
    r->first_ok_s = -1;
    r->stalled_s = 0;
    int run = 0;
    size_t i;
    const json_t *sec;
    json_array_foreach(json_object_get(j, "series"), i, sec)
    {
        double t = jnum(sec, "t");
        if (r->first_ok_s < 0 && jint(sec, "events_ok") > 0) r->first_ok_s = t;
        /* A run, not a total: at a 500 ms RTT the answers come in waves (all in-flight requests
         * answered together every ~2 s, so every other second is empty) and that is no stall. */
        if (r->first_ok_s >= 0 && t < send_s && jint(sec, "responses") == 0) {
            if (++run > r->stalled_s) r->stalled_s = run;
        } else {
            run = 0;
        }
    }
    assert_true(json_is_object(v));
    r->verify_ok = json_is_true(json_object_get(v, "ok"));
    r->delivered = jint(v, "delivered");
    r->missing = jint(v, "missing");
    r->duplicated = jint(v, "duplicated");
    r->unexpected = jint(v, "unexpected");
    r->unsure = jint(v, "sent_unsure");
    r->unsure_delivered = jint(v, "unsure_delivered");
    json_decref(j);
}

/* Runs sluice-load against e at rate events/s for duration_s over conns connections, with
 * --verify; waits for it (bounded) and reads its report. Skips the case without the harness.
 * hook (may be NULL) runs hook_ms after the start if the harness is still running (mid-load,
 * or while it drains or verifies). */
static void run_load(sup_env_t *e, const char *rate, int duration_s, int conns, int hook_ms,
                     void (*hook)(sup_env_t *), load_report_t *r)
{
    const char *load = getenv("SLUICE_LOAD");
    if (load == NULL) {
        fprintf(stderr, "SKIP: SLUICE_LOAD not set\n");
        skip();
    }
    char url[64], dur[16], nconn[16], report[300], log[300];
    snprintf(url, sizeof url, "http://127.0.0.1:%d", e->coll.port);
    snprintf(dur, sizeof dur, "%d", duration_s);
    snprintf(nconn, sizeof nconn, "%d", conns);
    snprintf(report, sizeof report, "%s/load.json", e->dir);
    snprintf(log, sizeof log, "%s/load.log", e->dir);
    char *argv[] = {(char *)load, "--url", url, "--write-key", IT_KEY, "--rate", (char *)rate,
                    "--duration", dur, "--connections", nconn, "--quiet", "--no-pql-script",
                    "--report", report, "--verify", (char *)e->mock.bootstrap, "--verify-timeout",
                    "40",
                    /* The topics are this case's own; recording where they end first would
                     * cost one slow round trip per partition. */
                    "--verify-from-beginning", NULL};
    int64_t t0 = base_mono_ms();
    pid_t pid = sup_child_start(argv, log);
    assert_true(pid > 0);
    if (hook != NULL) {
        r->rc = sup_child_wait_quiet(pid, hook_ms);
        if (r->rc == -1) hook(e);
    }
    if (hook == NULL || r->rc == -1)
        r->rc = sup_child_wait(pid, (duration_s + 60) * 1000 - (int)(base_mono_ms() - t0));
    FILE *f = fopen(log, "r");
    if (f != NULL) {
        char line[1024];
        while (fgets(line, sizeof line, f) != NULL)
            if (line[0] != '%') fputs(line, stderr); /* librdkafka's own lines are noise here */
        fclose(f);
    }
    assert_true(r->rc == 0 || r->rc == 1); /* 1: verification mismatch, judged by the case */
    read_report(report, duration_s, r);
}

static void print_report(const char *name, const load_report_t *r, long rss_kb)
{
    fprintf(stderr,
            "%s: sent %ld events in %ld requests; acknowledged %ld (%ld answers 200, %ld other); "
            "delivered %ld, missing %ld, duplicated %ld, unexpected %ld; unsure %ld (%ld of them "
            "delivered); latency p50 %.0f ms, p99 %.0f ms, max %.0f ms; first 200 in second %.0f; "
            "longest %d s without an answer; collector RSS %ld KiB\n",
            name, r->sent, r->responses, r->ok_events, r->status_200, r->non_200, r->delivered,
            r->missing, r->duplicated, r->unexpected, r->unsure, r->unsure_delivered, r->p50,
            r->p99, r->max, r->first_ok_s, r->stalled_s, rss_kb);
}

/* Every event of a 200 delivered; copies only where the mock's re-append can explain them. */
static void assert_delivered(const load_report_t *r)
{
    assert_int_equal(r->missing, 0);
    assert_int_equal(r->unexpected, 0);
    if (r->non_200 == 0) assert_int_equal(r->duplicated, 0);
    if (!r->verify_ok) assert_true(r->duplicated > 0); /* the only mismatch tolerated */
}

/* The broker at full speed again, so the harness reads the topics back quickly. */
static void broker_fast(sup_env_t *e)
{
    assert_int_equal(sup_mock_cmd(&e->mock, "rtt 1 0", 5000), 0);
}

static void test_slow_broker_64_partitions(void **state)
{
    sup_env_opts_t o = {.partitions = 64};
    sup_env_t *e = it_start_opts(state, &o);
    /* The producers connected at full speed; from now on every broker answer takes 500 ms. */
    assert_int_equal(sup_mock_cmd(&e->mock, "rtt 1 500", 5000), 0);
    load_report_t r = {0};
    run_load(e, "20000", 8, 400, 8000 + 4000, broker_fast, &r);
    long rss = sup_proc_hwm_kb(e->coll.pid);
    print_report("slow_broker_64_partitions", &r, rss);
    /* Bounded and honest: 200s flow from the start (before the lanes: none at all, every answer
     * a 503 after 5 s), and answers come within the delivery timeout (5 s; p99 measured from the
     * intended send time, so it includes the harness's own backlog). Slack for a shared, loaded
     * CI machine: an idle one gives 100% 200s, first 200 in second 2, p99 ~3.6 s at 20 k/s; a
     * loaded one (a full parallel ctest beside other builds) gave the first 200 in second 7 and
     * p99 8.0 s (the 503s of the delivery timeout, behind the harness's own backlog). */
    assert_true(r.first_ok_s >= 0 && r.first_ok_s <= 8.0);
    assert_true(r.status_200 * 100 >= r.responses * 25);
    assert_true(r.p99 < 5000.0 + 5000.0);
    assert_true(r.stalled_s <= 2);
    assert_delivered(&r);
}

/* SIGTERM mid-load: what the hook saw. */
static int64_t sigterm_exit_ms;
static int sigterm_status;
static long sigterm_rss_kb;

static void sigterm_now(sup_env_t *e)
{
    sigterm_rss_kb = sup_proc_hwm_kb(e->coll.pid);
    int64_t t0 = base_mono_ms();
    sup_collector_signal(&e->coll, SIGTERM);
    sigterm_status = sup_collector_wait(&e->coll, 20000);
    sigterm_exit_ms = base_mono_ms() - t0;
}

/* SPEC §7: SIGTERM stops accepting, finishes in-flight requests, flushes Kafka, exits 0. Under a
 * steady load (10 k events/s, 32 connections) the collector gets SIGTERM 2 s in: it exits 0 within
 * shutdown_timeout (10 s), and every event that got a 200 is in Kafka exactly once (requests
 * refused or cut by the shutdown count as "no definite answer": at most once). */
static void test_sigterm_mid_load(void **state)
{
    sup_env_t *e = it_start(state, NULL);
    load_report_t r = {0};
    sigterm_exit_ms = -1;
    sigterm_status = -1;
    run_load(e, "10000", 5, 32, 2000, sigterm_now, &r);
    print_report("sigterm_mid_load", &r, sigterm_rss_kb);
    fprintf(stderr, "sigterm_mid_load: exit status %d, %lld ms after SIGTERM\n", sigterm_status,
            (long long)sigterm_exit_ms);
    assert_int_equal(sigterm_status, 0);
    assert_true(sigterm_exit_ms >= 0 && sigterm_exit_ms < 10000 + 2000);
    /* Mid-load: the hook runs only while the 5 s run is going (2 s in), after 200s. */
    assert_true(r.status_200 > 0);
    assert_delivered(&r);
}

int main(int argc, char **argv)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_teardown(test_slow_broker_64_partitions, it_teardown),
        cmocka_unit_test_teardown(test_sigterm_mid_load, it_teardown),
    };
    return it_run(argc, argv, "load_faults", tests, sizeof tests / sizeof tests[0]);
}
