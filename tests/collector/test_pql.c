/*
 * Unit tests for collector/pql.c (SPEC §6): the pql: config grammar (the SPEC example verbatim),
 * every metric against a brute-force reference over a recorded event list (late events and
 * bucket rotation included), HyperLogLog error over many seeds, scoring and tiers,
 * once-per-window signalling, the LRU cap, expiry, records, and the snapshot (round trip,
 * corruption, other rules).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <pthread.h>
#include <time.h>
#include <unistd.h>

#include <xxhash.h>

#include "config.h"
#include "metrics.h"
#include "pql_internal.h"

#define HOUR_MS 3600000LL
/* A fixed epoch-aligned start (2026-01-01T00:00:00Z). */
#define T0 1767225600000LL

static const char spec_yaml[] =
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
    "    - {name: pricing_interest, metric: event_seen, event: \"Pricing Page Viewed\", points: "
    "10}\n"
    "    - {name: legal_review,    metric: event_seen, event: [\"Terms Viewed\", \"Privacy Policy "
    "Viewed\"], points: 15}\n";

static int load_yaml(config_t *c, const char *text, char *err, size_t errlen)
{
    char path[] = "/tmp/sluice_test_pql_XXXXXX";
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    assert_int_equal(write(fd, text, strlen(text)), (ssize_t)strlen(text));
    close(fd);
    config_init(c);
    int rc = config_load_file(c, path, err, errlen);
    if (rc == 0) rc = config_validate(c, err, errlen);
    unlink(path);
    return rc;
}

/* ---- signal capture ---- */

typedef struct sig_log {
    int n;
    char json[16][2048];
} sig_log_t;

static void capture_cb(void *ud, const char *account, size_t alen, const char *json, size_t jlen)
{
    sig_log_t *s = ud;
    (void)account;
    (void)alen;
    if (s->n < 16 && jlen < sizeof s->json[0]) {
        memcpy(s->json[s->n], json, jlen);
        s->json[s->n][jlen] = '\0';
    }
    s->n++;
}

static int feed(pql_t *p, const char *acct, const char *user, const char *event, int64_t ts)
{
    pql_event_t ev = {
        acct, strlen(acct), user, strlen(user), event, event ? strlen(event) : 0, "web", 3, ts};
    return pql_feed(p, &ev, T0);
}

static pql_acct_t *find(pql_t *p, const char *id)
{
    uint64_t h = XXH3_64bits(id, strlen(id));
    return pql__acct_find(pql__shard_of(p, h), h, id, strlen(id));
}

/* ---- fixtures: SPEC §6's example rules (spec_yaml, dev) and a pql_t over them ---- */

typedef struct pql_fx {
    config_t c;
    sig_log_t sl; /* the signals, with spec_setup_capture */
    pql_t *p;
} pql_fx_t;

static int fx_setup(void **state, bool capture)
{
    pql_fx_t *fx = calloc(1, sizeof *fx);
    assert_non_null(fx);
    char err[512], yaml[4096];
    snprintf(yaml, sizeof yaml, "dev: true\n%s", spec_yaml);
    if (load_yaml(&fx->c, yaml, err, sizeof err) != 0) fail_msg("%s", err);
    assert_int_equal(
        pql_new(&fx->c.pql, capture ? capture_cb : NULL, capture ? &fx->sl : NULL, &fx->p), PQL_OK);
    *state = fx;
    return 0;
}

/* No signal callback: for tests that feed from several threads (capture_cb is single-threaded). */
static int spec_setup(void **state)
{
    return fx_setup(state, false);
}

/* Signals captured into fx->sl. */
static int spec_setup_capture(void **state)
{
    return fx_setup(state, true);
}

static int spec_teardown(void **state)
{
    pql_fx_t *fx = *state;
    pql_free(fx->p);
    config_free(&fx->c);
    free(fx);
    return 0;
}

/* ---- config ---- */

static void test_spec_example_loads_verbatim(void **state)
{
    (void)state;
    config_t c;
    char err[512] = "";
    int rc = load_yaml(&c,
                       "dev: true\n" /* validate needs a key or dev */
                       "pql:\n"
                       "  window: 7d\n"
                       "  tiers: {hot: 80, warm: 50, watching: 30}\n",
                       err, sizeof err);
    assert_int_equal(rc, 0); /* tiers without rules: PQL stays off */
    assert_int_equal(c.pql.n_rules, 0);
    config_free(&c);
    rc = load_yaml(&c,
                   "dev: true\npql:\n  rules:\n    - {name: a, metric: events, at_least: 1, "
                   "points: 1}\n",
                   err, sizeof err);
    assert_int_equal(rc, CONFIG_E_INVALID);
    assert_string_equal(err, "pql.tiers: required when pql.rules is set");
    config_free(&c);
    char full[4096];
    snprintf(full, sizeof full, "dev: true\n%s", spec_yaml);
    rc = load_yaml(&c, full, err, sizeof err);
    if (rc != 0) fail_msg("%s", err);
    const pql_config_t *q = &c.pql;
    assert_int_equal(q->window_ms, 7 * 86400000u);
    assert_int_equal(q->bucket_ms, 3600000u);
    assert_int_equal(q->n_tiers, 3);
    assert_string_equal(q->tiers[0].name, "hot");
    assert_int_equal(q->tiers[0].threshold, 80);
    assert_string_equal(q->tiers[2].name, "watching");
    assert_int_equal(q->n_rules, 7);
    assert_int_equal(q->rules[2].metric, PQL_METRIC_EVENTS_VELOCITY);
    assert_int_equal(q->rules[2].recent_ms, 86400000u);
    assert_true(q->rules[2].min_recent == 200);
    assert_true(q->rules[2].at_least == 3.0);
    assert_int_equal(q->rules[6].n_events, 2);
    assert_string_equal(q->rules[6].events[1], "Privacy Policy Viewed");
    assert_int_equal(q->rules[5].n_events, 1);
    assert_int_equal(q->rules[5].points, 10);
    config_free(&c);
}

static void test_config_errors_name_the_line(void **state)
{
    (void)state;
    static const struct {
        const char *yaml, *want;
    } cases[] = {
        {"pql:\n  tiers: {hot: 80}\n  rules:\n    - {name: a, metric: events, points: 1}\n",
         "5: pql.rules a: at_least is required"},
        {"pql:\n  tiers: {hot: 80}\n  rules:\n    - {name: a, metric: events, at_least: 1}\n",
         "5: pql.rules a: points is required"},
        {"pql:\n  tiers: {hot: 80}\n  rules:\n    - {name: a, metric: active_users, at_least: 1, "
         "points: 1, event: x}\n",
         "5: pql.rules a: event is for events, events_velocity and event_seen"},
        {"pql:\n  tiers: {hot: 80}\n  rules:\n    - {name: a, metric: event_seen, points: 1}\n",
         "5: pql.rules a: event_seen needs event"},
        {"pql:\n  tiers: {hot: 80}\n  rules:\n    - {name: a, metric: events, at_least: 1, "
         "points: 1, colour: red}\n",
         "5: pql.rules: unknown key \"colour\""},
        {"pql:\n  tiers: {hot: 80}\n  rules:\n    - {name: a, metric: events, at_least: 1, "
         "points: 1}\n    - {name: a, metric: events, at_least: 2, points: 1}\n",
         "6: pql.rules: duplicate rule name \"a\""},
        {"pql:\n  tiers: {hot: 80, warm: 80}\n", "3: pql.tiers.warm: same threshold as tier hot"},
        {"pql:\n  tiers: {hot: 80}\n  rules:\n    - {name: a, metric: events_velocity, "
         "recent: soon, at_least: 1, points: 1}\n",
         "5: pql.rules a: recent: expected a duration"},
        {"pql:\n  window: 1h\n  bucket: 7m\n", "pql.bucket: must divide 1d"},
        {"pql:\n  tiers: {hot: 80}\n  rules:\n    - {name: a, metric: users_velocity, recent: 7d, "
         "at_least: 1, points: 1}\n",
         "pql.rules a: recent must be a multiple of pql.bucket and shorter than pql.window"},
        {"pql:\n  max_accounts: 1000\n", "pql.max_accounts: 1000 is out of range"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        config_t c;
        char err[512] = "", yaml[1024];
        snprintf(yaml, sizeof yaml, "dev: true\n%s", cases[i].yaml);
        int rc = load_yaml(&c, yaml, err, sizeof err);
        config_free(&c);
        if (rc == 0 || strstr(err, cases[i].want) == NULL)
            fail_msg("case %zu: rc %d, err \"%s\", want \"%s\"", i, rc, err, cases[i].want);
    }
}

static void diff_collect(const char *key, void *ud)
{
    char *out = ud;
    strncat(out, key, 255 - strlen(out));
    strncat(out, " ", 255 - strlen(out));
}

/* A SIGHUP reload reports changed PQL rules or tiers as needing a restart. */
static void test_config_diff_reports_pql_changes(void **state)
{
    (void)state;
    config_t a, b;
    char err[512], yaml[4096], keys[256] = "";
    snprintf(yaml, sizeof yaml, "dev: true\n%s", spec_yaml);
    if (load_yaml(&a, yaml, err, sizeof err) != 0) fail_msg("%s", err);
    if (load_yaml(&b, yaml, err, sizeof err) != 0) fail_msg("%s", err);
    config_diff(&a, &b, diff_collect, keys);
    assert_string_equal(keys, "");
    b.pql.rules[6].points = 16;
    b.pql.tiers[0].threshold = 81;
    config_diff(&a, &b, diff_collect, keys);
    assert_string_equal(keys, "pql.tiers pql.rules ");
    config_free(&a);
    config_free(&b);
}

/* ---- brute-force reference ---- */

typedef struct rec {
    int64_t ts;
    int user;
    int name; /* index into names[] */
} rec_t;

static const char *const names[] = {"A", "B", "C", "D"};

static const char ref_yaml[] = "dev: true\n"
                               "pql:\n"
                               "  window: 3d\n"
                               "  late: 2d\n"
                               "  tiers: {top: 1000}\n"
                               "  rules:\n"
                               "    - {name: users, metric: active_users, at_least: 1, points: 1}\n"
                               "    - {name: all, metric: events, at_least: 1, points: 1}\n"
                               "    - {name: ab, metric: events, event: [A, B], at_least: 1, "
                               "points: 1}\n"
                               "    - {name: ev_vel, metric: events_velocity, recent: 12h, "
                               "at_least: 1, points: 1}\n"
                               "    - {name: b_vel, metric: events_velocity, event: B, recent: "
                               "1d, at_least: 1, points: 1}\n"
                               "    - {name: us_vel, metric: users_velocity, recent: 1d, "
                               "at_least: 1, points: 1}\n"
                               "    - {name: days, metric: active_days, at_least: 1, points: 1}\n"
                               "    - {name: seen_c, metric: event_seen, event: C, points: 1}\n";

typedef struct ref_user {
    bool known;
    int64_t first, last; /* buckets */
} ref_user_t;

/* The value of rule r computed from scratch over the accepted events. */
static double ref_value(const pql_config_t *q, size_t r, const rec_t *acc, size_t n_acc,
                        int64_t head, const ref_user_t *users, int n_users)
{
    const int64_t W = q->window_ms / q->bucket_ms;
    const pql_config_rule_t *ru = &q->rules[r];
    int64_t ws = head - W + 1, R = ru->recent_ms / q->bucket_ms, rs = head - R + 1;
    double count = 0, recent = 0;
    bool days[64] = {false};
    bool seen_user[64] = {false};
    for (size_t i = 0; i < n_acc; i++) {
        int64_t b = acc[i].ts / q->bucket_ms;
        if (b < ws || b > head) continue;
        bool match = ru->n_events == 0;
        for (size_t k = 0; k < ru->n_events; k++)
            match |= strcmp(ru->events[k], names[acc[i].name]) == 0;
        days[(b * q->bucket_ms / 86400000LL) % 64] = true;
        seen_user[acc[i].user] = true;
        if (!match) continue;
        count++;
        if (b >= rs) recent++;
    }
    double periods = (double)(W - R) / (double)R;
    switch (ru->metric) {
    case PQL_METRIC_ACTIVE_USERS: {
        int n = 0;
        for (int u = 0; u < 64; u++)
            n += seen_user[u];
        return n;
    }
    case PQL_METRIC_EVENTS:
        return count;
    case PQL_METRIC_EVENT_SEEN:
        return count > 0;
    case PQL_METRIC_ACTIVE_DAYS: {
        int n = 0;
        for (int d = 0; d < 64; d++)
            n += days[d];
        return n;
    }
    case PQL_METRIC_EVENTS_VELOCITY: {
        double mean = (count - recent) / periods;
        return recent / (mean < 1 ? 1 : mean);
    }
    default: {
        double rec = 0, rest = 0;
        for (int u = 0; u < n_users; u++) {
            if (!users[u].known) continue;
            if (users[u].first >= rs)
                rec++;
            else if (users[u].first >= ws)
                rest++;
        }
        double mean = rest / periods;
        return rec / (mean < 1 ? 1 : mean);
    }
    }
}

static void test_metrics_match_brute_force(void **state)
{
    (void)state;
    config_t c;
    char err[512];
    if (load_yaml(&c, ref_yaml, err, sizeof err) != 0) fail_msg("%s", err);
    const pql_config_t *q = &c.pql;
    const int64_t W = q->window_ms / q->bucket_ms, L = q->late_ms / q->bucket_ms;
    for (unsigned seed = 1; seed <= 6; seed++) {
        pql_t *p = NULL;
        assert_int_equal(pql_new(q, NULL, NULL, &p), PQL_OK);
        srand(seed);
        enum { N = 1500, USERS = 24 };
        static rec_t acc[N];
        size_t n_acc = 0;
        ref_user_t users[USERS];
        memset(users, 0, sizeof users);
        int64_t head = -1, clock = T0;
        size_t late = 0;
        for (int i = 0; i < N; i++) {
            clock += rand() % (int)(20 * 60000); /* ~8 days over the run */
            int64_t ts = clock;
            if (rand() % 5 == 0) ts -= (int64_t)(rand() % 70) * HOUR_MS; /* late, maybe too late */
            rec_t e = {ts, rand() % (seed % 2 ? USERS : 6), rand() % 4};
            char user[16];
            snprintf(user, sizeof user, "u%d", e.user);
            int rc = feed(p, "acct", user, names[e.name], ts);
            int64_t b = ts / q->bucket_ms;
            bool accept = head < 0 || (b + L >= head && b >= head - W + 1);
            assert_int_equal(rc, accept ? PQL_OK : PQL_E_LATE);
            if (!accept) {
                late++;
                continue;
            }
            acc[n_acc++] = e;
            if (b > head) head = b;
            ref_user_t *u = &users[e.user];
            if (!u->known) *u = (ref_user_t){true, b, b};
            if (b < u->first) u->first = b;
            if (b > u->last) u->last = b;
            for (int k = 0; k < USERS; k++)
                if (users[k].known && users[k].last < head - W + 1) users[k].known = false;
            pql_acct_t *a = find(p, "acct");
            assert_non_null(a);
            assert_int_equal(a->head, head);
            for (size_t r = 0; r < q->n_rules; r++) {
                double want = ref_value(q, r, acc, n_acc, head, users, USERS);
                double got = pql__rule_value(p, a, &p->rules[r], NULL);
                if (fabs(want - got) > 1e-9)
                    fail_msg("seed %u event %d rule %s: got %f want %f", seed, i, q->rules[r].name,
                             got, want);
            }
        }
        assert_true(late > 0); /* the list did exercise the late path */
        pql_stats_t st;
        pql_stats(p, &st);
        assert_int_equal(st.late, late);
        pql_free(p);
    }
    config_free(&c);
}

/* Sketch mode: thousands of users, estimate within 3%; users leave with the window. */
static void test_sketch_mode_active_users(void **state)
{
    pql_fx_t *fx = *state; /* spec_setup: SPEC §6's rules, dev */
    pql_t *p = fx->p;
    const int n = 5000;
    for (int i = 0; i < n; i++) {
        char user[32];
        snprintf(user, sizeof user, "user-%d", i);
        assert_int_equal(feed(p, "big", user, "X", T0 + (int64_t)i * 10000), PQL_OK);
    }
    pql_acct_t *a = find(p, "big");
    assert_non_null(a->sk);
    double est = pql__users_active(p, a);
    if (fabs(est - n) / n > 0.03) fail_msg("estimate %.0f for %d", est, n);
    /* Day 2: 100 returning users. users_velocity (recent 24h) sees few new ones. */
    for (int i = 0; i < 100; i++) {
        char user[32];
        snprintf(user, sizeof user, "user-%d", i);
        assert_int_equal(feed(p, "big", user, "X", T0 + 2 * 86400000LL + i), PQL_OK);
    }
    double fresh = pql__users_new_recent(p, a, &p->rules[3]);
    assert_true(fresh < 0.03 * n);
    /* Ten days later everything earlier left the window. */
    assert_int_equal(feed(p, "big", "late-comer", "X", T0 + 10 * 86400000LL), PQL_OK);
    est = pql__users_active(p, a);
    assert_true(est >= 1 && est <= 2);
    pql_stats_t st;
    pql_stats(p, &st);
    assert_true(st.bytes > sizeof(pql_hll_t) * 8);
}

/* ---- scoring, tiers, signals ---- */

static const char *json_tier(const char *json)
{
    static char out[32];
    const char *t = strstr(json, "\"tier\":\"");
    if (t == NULL) return "";
    t += 8;
    size_t k = 0;
    while (t[k] != '"' && k < sizeof out - 1) {
        out[k] = t[k];
        k++;
    }
    out[k] = '\0';
    return out;
}

static void test_tiers_rise_once_per_window(void **state)
{
    pql_fx_t *fx = *state; /* spec_setup_capture: SPEC §6's rules, dev */
    pql_t *p = fx->p;
    /* "hot" account as sluice-load scripts it: activity on 5 days, 8 users, Pricing, Terms. */
    int64_t day0 = T0 + 10 * 86400000LL;
    for (int d = 4; d >= 1; d--)
        assert_int_equal(feed(p, "acme", "u0", "Report Created", day0 - d * 86400000LL), PQL_OK);
    /* 5 active days (20) only: below watching (30). */
    assert_int_equal(feed(p, "acme", "u0", "Dashboard Viewed", day0), PQL_OK);
    assert_int_equal(fx->sl.n, 0);
    assert_int_equal(feed(p, "acme", "u0", "Pricing Page Viewed", day0 + 1), PQL_OK);
    assert_int_equal(fx->sl.n, 1); /* 30: watching */
    assert_string_equal(json_tier(fx->sl.json[0]), "watching");
    assert_non_null(strstr(fx->sl.json[0], "\"previousTier\":null"));
    assert_non_null(strstr(fx->sl.json[0], "\"source\":\"web\""));
    assert_non_null(strstr(fx->sl.json[0], "\"userIds\":[\"u0\"]"));
    for (int u = 1; u < 8; u++) {
        char user[8];
        snprintf(user, sizeof user, "u%d", u);
        for (int k = 0; k <= u; k++) /* u7 most active, then u6 ... */
            assert_int_equal(feed(p, "acme", user, "Dashboard Viewed", day0 + 2 + u), PQL_OK);
    }
    /* 3 new users in the recent day vs none before: users_velocity 3 >= 2 (20) -> warm at 50;
     * 7 users: team_of_seven (40) -> 90: hot. */
    assert_int_equal(fx->sl.n, 3);
    assert_string_equal(json_tier(fx->sl.json[1]), "warm");
    assert_non_null(strstr(fx->sl.json[1], "\"previousTier\":\"watching\""));
    assert_string_equal(json_tier(fx->sl.json[2]), "hot");
    assert_non_null(strstr(fx->sl.json[2], "\"previousTier\":\"warm\""));
    assert_non_null(strstr(fx->sl.json[2], "\"name\":\"team_of_seven\""));
    assert_null(strstr(fx->sl.json[2], "\"name\":\"heavy_usage\"")); /* only holding rules */
    /* The most active users, best first, at most 5. */
    /* hot came with u6's first event: u0 and u5 have 6 events, u4 5, u3 4, u2 3, u1 2. */
    assert_non_null(strstr(fx->sl.json[2], "\"userIds\":[\""));
    assert_non_null(strstr(fx->sl.json[2], "\"u2\"]"));
    assert_non_null(strstr(fx->sl.json[2], "\"u0\""));
    assert_non_null(strstr(fx->sl.json[2], "\"u5\""));
    assert_null(strstr(fx->sl.json[2], "\"u1\""));
    assert_null(strstr(fx->sl.json[2], "\"u6\""));
    pql_acct_t *a = find(p, "acme");
    assert_int_equal(a->score, 20 + 10 + 20 + 40);
    /* More events: no new signal. */
    for (int i = 0; i < 50; i++)
        assert_int_equal(feed(p, "acme", "u1", "Terms Viewed", day0 + 3 * HOUR_MS), PQL_OK);
    assert_int_equal(fx->sl.n, 3);
    assert_int_equal(a->score, 20 + 10 + 20 + 40 + 15);
    /* The score falls (users_velocity lapses, days leave the window) and rises again within
     * the window: hot is not signalled twice. */
    int64_t later = day0 + 4 * 86400000LL + 12 * HOUR_MS;
    assert_int_equal(feed(p, "acme", "u1", "Dashboard Viewed", later), PQL_OK);
    assert_int_equal(a->score, 40 + 10 + 15); /* 4 active days, no new users lately */
    assert_int_equal(a->tier, 1);             /* warm */
    for (int u = 8; u < 12; u++) {
        char user[8];
        snprintf(user, sizeof user, "u%d", u);
        assert_int_equal(feed(p, "acme", user, "Dashboard Viewed", later + u), PQL_OK);
    }
    assert_int_equal(a->tier, 0); /* hot again, silently */
    assert_int_equal(fx->sl.n, 3);
    /* A window after the last hot signal, a new rise is signalled again. */
    int64_t much_later = day0 + 9 * 86400000LL;
    for (int u = 0; u < 10; u++) {
        char user[8];
        snprintf(user, sizeof user, "u%d", u);
        assert_int_equal(feed(p, "acme", user, "Pricing Page Viewed", much_later + u), PQL_OK);
    }
    assert_int_equal(feed(p, "acme", "u0", "Terms Viewed", much_later + 20), PQL_OK);
    assert_true(fx->sl.n >= 4);
    bool hot_again = false;
    for (int i = 3; i < fx->sl.n && i < 16; i++)
        hot_again |= strcmp(json_tier(fx->sl.json[i]), "hot") == 0;
    assert_true(hot_again);
    pql_stats_t st;
    pql_stats(p, &st);
    assert_int_equal(st.signals, (uint64_t)fx->sl.n);
    assert_int_equal(st.signals_by_tier[0] + st.signals_by_tier[1] + st.signals_by_tier[2],
                     (uint64_t)fx->sl.n);
}

static void test_max_accounts_evicts_least_recent(void **state)
{
    (void)state;
    config_t c;
    char err[512], yaml[4096];
    snprintf(yaml, sizeof yaml, "dev: true\n%s  max_accounts: 1024\n",
             "pql:\n  tiers: {hot: 10}\n  rules:\n"
             "    - {name: a, metric: events, at_least: 1000, points: 10}\n");
    if (load_yaml(&c, yaml, err, sizeof err) != 0) fail_msg("%s", err);
    pql_t *p = NULL;
    assert_int_equal(pql_new(&c.pql, NULL, NULL, &p), PQL_OK);
    for (int i = 0; i < 20000; i++) {
        char acct[32];
        snprintf(acct, sizeof acct, "acct-%d", i);
        assert_int_equal(feed(p, acct, "u", NULL, T0 + i), PQL_OK);
        /* acct-0 stays the most recently active. */
        assert_int_equal(feed(p, "acct-0", "u", NULL, T0 + i), PQL_OK);
    }
    pql_stats_t st;
    pql_stats(p, &st);
    assert_true(st.accounts <= 1024);
    assert_true(st.accounts > 900); /* every shard full */
    assert_int_equal(st.evictions, 20000 - st.accounts);
    assert_non_null(find(p, "acct-0"));
    assert_non_null(find(p, "acct-19999"));
    assert_null(find(p, "acct-1"));
    pql_free(p);
    config_free(&c);
}

static void test_sweep_expires_idle_accounts(void **state)
{
    pql_fx_t *fx = *state; /* spec_setup: SPEC §6's rules, dev */
    pql_t *p = fx->p;
    assert_int_equal(feed(p, "old", "u", "Pricing Page Viewed", T0), PQL_OK);
    assert_int_equal(feed(p, "new", "u", "Pricing Page Viewed", T0 + 6 * 86400000LL), PQL_OK);
    assert_int_equal(find(p, "old")->score, 10);
    assert_int_equal(pql_sweep(p, T0 + 7 * 86400000LL + 1), 1);
    assert_null(find(p, "old"));
    assert_non_null(find(p, "new"));
    assert_int_equal(pql_sweep(p, T0 + 20 * 86400000LL), 1);
    pql_stats_t st;
    pql_stats(p, &st);
    assert_int_equal(st.accounts, 0);
    assert_int_equal(st.bytes, 0);
}

static void test_records_round_trip(void **state)
{
    pql_fx_t *fx = *state; /* spec_setup: SPEC §6's rules, dev */
    pql_t *p = fx->p;
    base_buf_t buf;
    base_buf_init(&buf, 200);
    pql_event_t ev = {"acct", 4, "user-1", 6, "Pricing Page Viewed", 19, "web", 3, T0};
    assert_int_equal(pql_record_append(&buf, &ev), 0);
    pql_event_t noacct = {NULL, 0, "user-1", 6, NULL, 0, "web", 3, T0};
    assert_int_equal(pql_record_append(&buf, &noacct), 0); /* nothing to count: skipped */
    pql_event_t ev2 = {"acct", 4, "user-2", 6, NULL, 0, NULL, 0, T0 + 1};
    assert_int_equal(pql_record_append(&buf, &ev2), 0);
    while (pql_record_append(&buf, &ev2) == 0) { /* bounded by the buffer's max */
    }
    assert_true(buf.len <= 200);
    pql_feed_records(p, buf.data, buf.len, T0);
    pql_acct_t *a = find(p, "acct");
    assert_non_null(a);
    assert_int_equal(a->agg[p->agg_users], 2);
    assert_int_equal(a->score, 10);
    base_buf_free(&buf);
}

/* ---- snapshot ---- */

static char *account_json(pql_t *p, const char *id)
{
    base_buf_t out;
    base_buf_init(&out, 1 << 20);
    if (pql_account_json(p, id, strlen(id), T0, &out) != PQL_OK) {
        base_buf_free(&out);
        return NULL;
    }
    char *s = strndup(out.data, out.len);
    base_buf_free(&out);
    return s;
}

static void test_snapshot_round_trip_and_corruption(void **state)
{
    pql_fx_t *fx = *state; /* spec_setup_capture: SPEC §6's rules, dev */
    pql_t *p = fx->p;
    for (int i = 0; i < 300; i++) {
        char acct[16], user[16];
        snprintf(acct, sizeof acct, "a%d", i % 30);
        snprintf(user, sizeof user, "u%d", i % 11);
        feed(p, acct, user, i % 7 ? "Terms Viewed" : "Pricing Page Viewed",
             T0 + (int64_t)i * 20 * 60000);
    }
    for (int i = 0; i < 2000; i++) { /* one account in sketch mode */
        char user[16];
        snprintf(user, sizeof user, "u%d", i);
        feed(p, "big", user, "X", T0 + (int64_t)i * 60000);
    }
    char path[] = "/tmp/sluice_test_pql_snap_XXXXXX";
    int fd = mkstemp(path);
    close(fd);
    assert_int_equal(pql_snapshot_write(p, path, NULL), PQL_OK);
    pql_stats_t st0;
    pql_stats(p, &st0);

    pql_t *q = NULL;
    assert_int_equal(pql_new(&fx->c.pql, capture_cb, &fx->sl, &q), PQL_OK);
    assert_int_equal(pql_snapshot_load(q, path), PQL_OK);
    pql_stats_t st1;
    pql_stats(q, &st1);
    assert_int_equal(st1.accounts, st0.accounts);
    const char *ids[] = {"a0", "a7", "a29", "big"};
    for (int i = 0; i < 4; i++) {
        char *x = account_json(p, ids[i]), *y = account_json(q, ids[i]);
        assert_non_null(x);
        assert_non_null(y);
        assert_string_equal(x, y);
        free(x);
        free(y);
    }
    /* Restored signal memory: the same events do not signal again. */
    int before = fx->sl.n;
    feed(q, "a0", "u0", "Pricing Page Viewed", T0 + 300 * 20 * 60000LL);
    assert_int_equal(fx->sl.n, before);
    pql_free(q);

    /* One flipped byte: corrupt, tracker left empty. */
    FILE *f = fopen(path, "r+b");
    assert_non_null(f);
    fseek(f, 100, SEEK_SET);
    int ch = fgetc(f);
    fseek(f, 100, SEEK_SET);
    fputc(ch ^ 0x40, f);
    fclose(f);
    assert_int_equal(pql_new(&fx->c.pql, NULL, NULL, &q), PQL_OK);
    assert_int_equal(pql_snapshot_load(q, path), PQL_E_CORRUPT);
    pql_stats(q, &st1);
    assert_int_equal(st1.accounts, 0);
    /* Truncated. */
    assert_int_equal(pql_snapshot_write(p, path, NULL), PQL_OK);
    assert_int_equal(truncate(path, 50), 0);
    assert_int_equal(pql_snapshot_load(q, path), PQL_E_CORRUPT);
    assert_int_equal(pql_snapshot_load(q, "/nonexistent/pql.snapshot"), PQL_E_IO);
    pql_free(q);
    /* Regression (issue 12 item 9): a failed write names the step and errno. */
    base_ioerr_t ioe;
    assert_int_equal(pql_snapshot_write(p, "/nonexistent/pql.snapshot", &ioe), PQL_E_IO);
    assert_string_equal(ioe.op, "open");
    assert_int_equal(ioe.errnum, ENOENT);

    /* Written under other rules: refused. */
    assert_int_equal(pql_snapshot_write(p, path, NULL), PQL_OK);
    config_t c2;
    char err[512];
    if (load_yaml(&c2, ref_yaml, err, sizeof err) != 0) fail_msg("%s", err);
    assert_int_equal(pql_new(&c2.pql, NULL, NULL, &q), PQL_OK);
    assert_int_equal(pql_snapshot_load(q, path), PQL_E_MISMATCH);
    pql_free(q);
    config_free(&c2);

    unlink(path);
}

static void test_top_and_account_json(void **state)
{
    pql_fx_t *fx = *state; /* spec_setup: SPEC §6's rules, dev */
    pql_t *p = fx->p;
    feed(p, "low", "u", "X", T0);
    feed(p, "mid", "u", "Pricing Page Viewed", T0);
    feed(p, "high", "u", "Pricing Page Viewed", T0);
    feed(p, "high", "u", "Terms Viewed", T0);
    base_buf_t out;
    base_buf_init(&out, 1 << 20);
    assert_int_equal(pql_top_json(p, 2, &out), PQL_OK);
    char *s = strndup(out.data, out.len);
    char *h = strstr(s, "\"accountId\":\"high\""), *m = strstr(s, "\"accountId\":\"mid\"");
    assert_non_null(h);
    assert_non_null(m);
    assert_true(h < m);
    assert_null(strstr(s, "\"low\""));
    free(s);
    out.len = 0;
    assert_int_equal(pql_account_json(p, "nope", 4, T0, &out), PQL_E_NOTFOUND);
    assert_int_equal(pql_account_json(p, "high", 4, T0, &out), PQL_OK);
    s = strndup(out.data, out.len);
    assert_non_null(strstr(s, "\"score\":25"));
    assert_non_null(strstr(s, "\"holds\":true"));
    assert_non_null(strstr(s, "\"activeUsers\":1"));
    free(s);
    /* An answer past the buffer's cap is "too large", never "out of memory" (the admin route
     * answers 500 too_large rather than 503). */
    base_buf_t small;
    base_buf_init(&small, 16);
    assert_int_equal(pql_account_json(p, "high", 4, T0, &small), PQL_E_TOO_LARGE);
    assert_int_equal(pql_top_json(p, 3, &small), PQL_E_TOO_LARGE);
    base_buf_free(&small);
    base_buf_free(&out);
}

/* Two feeders on overlapping accounts (run under TSan by tests/run.sh) and the snapshot worker
 * running meanwhile: every event counted once, the final snapshot holds them all. */
typedef struct feeder {
    pql_t *p;
    int id;
    int64_t now;
} feeder_t;

static void *feeder_main(void *arg)
{
    feeder_t *f = arg;
    for (int i = 0; i < 20000; i++) {
        char acct[16], user[16];
        snprintf(acct, sizeof acct, "c%d", i % 50);
        snprintf(user, sizeof user, "t%d-u%d", f->id, i % 7);
        /* Wall-clock time: the worker's sweep moves idle accounts to now. */
        (void)feed(f->p, acct, user, i % 2 ? "Pricing Page Viewed" : "X", f->now + i % 1000);
    }
    return NULL;
}

static void test_concurrent_feeders_and_saver(void **state)
{
    pql_fx_t *fx = *state; /* spec_setup: SPEC §6's rules, dev */
    pql_t *p = fx->p;
    char path[] = "/tmp/sluice_test_pql_saver_XXXXXX";
    int fd = mkstemp(path);
    close(fd);
    unlink(path);
    pql_saver_t *sv = NULL;
    assert_int_equal(pql_saver_start(p, path, 5, &sv), PQL_OK);
    pthread_t th[2];
    int64_t now = (int64_t)time(NULL) * 1000 / HOUR_MS * HOUR_MS; /* start of this hour */
    feeder_t f[2] = {{p, 0, now}, {p, 1, now}};
    for (int i = 0; i < 2; i++)
        assert_int_equal(pthread_create(&th[i], NULL, feeder_main, &f[i]), 0);
    for (int i = 0; i < 2; i++)
        pthread_join(th[i], NULL);
    assert_int_equal(pql_saver_stop(sv), PQL_OK);
    uint64_t total = 0;
    for (int i = 0; i < 50; i++) {
        char acct[16];
        snprintf(acct, sizeof acct, "c%d", i);
        pql_acct_t *a = find(p, acct);
        assert_non_null(a);
        assert_int_equal(a->agg[p->agg_users], 14);
        total += a->agg[0];
    }
    assert_int_equal(total, 40000);
    pql_t *q = NULL;
    assert_int_equal(pql_new(&fx->c.pql, NULL, NULL, &q), PQL_OK);
    assert_int_equal(pql_snapshot_load(q, path), PQL_OK);
    assert_int_equal(find(q, "c7")->agg[0], 800);
    unlink(path);
    pql_free(q);
}

/* ---- worker walks hold each shard lock only briefly (regression: the snapshot and the sweep
 * held one shard lock for a whole shard, ~1.5 ms at 1 M accounts, stalling loop threads) ---- */

typedef struct walk_probe {
    pql_t *p;
    int calls, locked_seen;
    int fed;
} walk_probe_t;

/* Runs between two holds of a walk: no shard lock may be held (trylock on every shard), and
 * feeds that reorder the LRU (existing accounts to the front), create accounts and evict
 * (max_accounts) must be safe right there. */
static void walk_probe_hook(void *ud)
{
    walk_probe_t *w = ud;
    w->calls++;
    for (size_t s = 0; s < PQL_SHARDS; s++) {
        if (pthread_mutex_trylock(&w->p->shards[s].mu) != 0) {
            w->locked_seen++;
            continue;
        }
        pthread_mutex_unlock(&w->p->shards[s].mu);
    }
    if (w->calls % 3 == 0) {
        char acct[32];
        snprintf(acct, sizeof acct, "w%d", (w->calls * 7919) % 6000); /* existing: to the front */
        if (feed(w->p, acct, "mover", "X", T0 + HOUR_MS) == PQL_OK) w->fed++;
        snprintf(acct, sizeof acct, "new%d", w->calls); /* created during the walk */
        (void)feed(w->p, acct, "u", "X", T0 + HOUR_MS);
    }
}

static void test_walks_release_shard_locks_between_chunks(void **state)
{
    pql_fx_t *fx = *state; /* spec_setup: SPEC §6's rules, dev */
    pql_t *p = fx->p;
    const int n = 6000;
    for (int i = 0; i < n; i++) {
        char acct[32];
        snprintf(acct, sizeof acct, "w%d", i);
        assert_int_equal(feed(p, acct, "u1", "Pricing Page Viewed", T0), PQL_OK);
    }
    for (int i = 0; i < 3000; i++) /* one sketch-mode account (~80 KiB): alone in its hold */
    {
        char user[16];
        snprintf(user, sizeof user, "u%d", i);
        assert_int_equal(feed(p, "w0", user, "X", T0), PQL_OK);
    }
    walk_probe_t w = {p, 0, 0, 0};
    p->walk_hook = walk_probe_hook;
    p->walk_hook_ud = &w;
    char path[] = "/tmp/sluice_test_pql_walk_XXXXXX";
    int fd = mkstemp(path);
    close(fd);
    assert_int_equal(pql_snapshot_write(p, path, NULL), PQL_OK);
    /* ~23 accounts per shard, at most PQL_WALK_STEPS per hold: several holds per shard. */
    assert_true(atomic_load(&p->walk_holds) >= (uint64_t)n / PQL_WALK_STEPS);
    assert_true(atomic_load(&p->walk_max_steps) <= PQL_WALK_STEPS);
    assert_true(w.calls > 0);
    assert_int_equal(w.locked_seen, 0);
    assert_true(w.fed > 0);
    /* Every account present at the start written exactly once (a duplicate would fail the
     * load), the ones created during the walk not: the loaded tracker has exactly n. */
    pql_t *q = NULL;
    assert_int_equal(pql_new(&fx->c.pql, NULL, NULL, &q), PQL_OK);
    assert_int_equal(pql_snapshot_load(q, path), PQL_OK);
    pql_stats_t st;
    pql_stats(q, &st);
    assert_int_equal(st.accounts, (uint64_t)n);
    assert_non_null(find(q, "w0"));
    assert_null(find(q, "new3"));
    pql_free(q);

    /* The sweep too: it moves every account to a bucket 8 days on (all expire), while the hook
     * keeps reordering and creating; no lock held between holds, and the walk ends. */
    uint64_t holds0 = atomic_load(&p->walk_holds);
    atomic_store(&p->walk_max_steps, 0);
    w.calls = 0;
    size_t expired = pql_sweep(p, T0 + 8 * 24 * HOUR_MS);
    assert_true(expired >= (size_t)n);
    assert_true(atomic_load(&p->walk_holds) - holds0 >= (uint64_t)n / PQL_WALK_STEPS);
    assert_true(atomic_load(&p->walk_max_steps) <= PQL_WALK_STEPS);
    assert_int_equal(w.locked_seen, 0);
    /* top walks the same way; what remains are accounts the hook created or touched. */
    base_buf_t out;
    base_buf_init(&out, 1 << 20);
    assert_int_equal(pql_top_json(p, 3, &out), PQL_OK);
    assert_true(out.len > 0);
    base_buf_free(&out);
    unlink(path);
}

/* The feeder thread: records submitted from two threads are all counted once pql_feeder_stop
 * returns (signals emitted on the feeder); a full queue refuses and counts, and the records
 * stay with the caller. */
typedef struct submitter {
    pql_t *p;
    int id;
} submitter_t;

static void *submitter_main(void *arg)
{
    submitter_t *sb = arg;
    for (int r = 0; r < 200; r++) {
        base_buf_t buf;
        base_buf_init(&buf, 1 << 16);
        for (int i = 0; i < 50; i++) {
            char acct[16], user[16];
            snprintf(acct, sizeof acct, "s%d", i % 10);
            snprintf(user, sizeof user, "t%d-%d", sb->id, i % 8);
            pql_event_t ev = {acct, strlen(acct), user, strlen(user), "Terms Viewed",
                              12,   "web",        3,    T0 + r};
            assert_int_equal(pql_record_append(&buf, &ev), 0);
        }
        assert_int_equal(pql_submit(sb->p, &buf, T0), PQL_OK);
        assert_null(buf.data); /* handed over */
        base_buf_free(&buf);
    }
    return NULL;
}

static void test_feeder_thread_counts_everything_submitted(void **state)
{
    pql_fx_t *fx = *state; /* spec_setup_capture: SPEC §6's rules, dev */
    pql_t *p = fx->p;
    assert_int_equal(pql_feeder_start(p, 64ull << 20), PQL_OK);
    assert_int_equal(pql_feeder_start(p, 64ull << 20), PQL_E_INVALID);
    pthread_t th[2];
    submitter_t sb[2] = {{p, 0}, {p, 1}};
    for (int i = 0; i < 2; i++)
        assert_int_equal(pthread_create(&th[i], NULL, submitter_main, &sb[i]), 0);
    for (int i = 0; i < 2; i++)
        pthread_join(th[i], NULL);
    pql_feeder_stop(p);
    uint64_t total = 0;
    for (int i = 0; i < 10; i++) {
        char acct[16];
        snprintf(acct, sizeof acct, "s%d", i);
        pql_acct_t *a = find(p, acct);
        assert_non_null(a);
        total += a->agg[0];
        assert_int_equal(a->agg[p->agg_users], 8); /* 4 per submitter */
        /* team_of_seven, surge, new_user_surge (all in the recent period), legal_review */
        assert_int_equal(a->score, 40 + 25 + 20 + 15);
        assert_int_equal(a->tier, 0); /* hot */
    }
    assert_int_equal(total, 2 * 200 * 50);
    pql_stats_t st;
    pql_stats(p, &st);
    assert_true(fx->sl.n >= 10); /* every account rose at least once, on the feeder thread */
    assert_int_equal((uint64_t)fx->sl.n, st.signals);
    assert_int_equal(st.queue_bytes, 0);
    assert_int_equal(st.queue_dropped, 0);

    /* Full: a queue smaller than one request's records refuses it, counts its events. */
    assert_int_equal(pql_feeder_start(p, 16), PQL_OK);
    base_buf_t buf;
    base_buf_init(&buf, 4096);
    pql_event_t ev = {"full", 4, "u", 1, NULL, 0, "web", 3, T0};
    assert_int_equal(pql_record_append(&buf, &ev), 0);
    assert_int_equal(pql_record_append(&buf, &ev), 0);
    size_t len = buf.len;
    assert_int_equal(pql_submit(p, &buf, T0), PQL_E_FULL);
    assert_int_equal(buf.len, len); /* still the caller's */
    pql_stats(p, &st);
    assert_int_equal(st.queue_dropped, 2);
    assert_int_equal(st.queue_bytes, 0);
    base_buf_free(&buf);
    pql_feeder_stop(p);
    pql_feeder_stop(p); /* idempotent */
    assert_null(find(p, "full"));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_spec_example_loads_verbatim),
        cmocka_unit_test(test_config_errors_name_the_line),
        cmocka_unit_test(test_config_diff_reports_pql_changes),
        cmocka_unit_test(test_metrics_match_brute_force),
        cmocka_unit_test_setup_teardown(test_sketch_mode_active_users, spec_setup, spec_teardown),
        cmocka_unit_test_setup_teardown(test_tiers_rise_once_per_window, spec_setup_capture,
                                        spec_teardown),
        cmocka_unit_test(test_max_accounts_evicts_least_recent),
        cmocka_unit_test_setup_teardown(test_sweep_expires_idle_accounts, spec_setup,
                                        spec_teardown),
        cmocka_unit_test_setup_teardown(test_records_round_trip, spec_setup, spec_teardown),
        cmocka_unit_test_setup_teardown(test_snapshot_round_trip_and_corruption, spec_setup_capture,
                                        spec_teardown),
        cmocka_unit_test_setup_teardown(test_top_and_account_json, spec_setup, spec_teardown),
        cmocka_unit_test_setup_teardown(test_concurrent_feeders_and_saver, spec_setup,
                                        spec_teardown),
        cmocka_unit_test_setup_teardown(test_walks_release_shard_locks_between_chunks, spec_setup,
                                        spec_teardown),
        cmocka_unit_test_setup_teardown(test_feeder_thread_counts_everything_submitted,
                                        spec_setup_capture, spec_teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
