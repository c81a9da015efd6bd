/*
 * Unit tests for collector/pql_changelog.c (issue 14): one account's state as bytes and the
 * changes since the last flush, as sluice-stream writes them to its changelog topic. The core
 * promise: a tracker rebuilt from the changelog (values and tombstones replayed in order, as a
 * worker restores a partition) then signals exactly as the original would have — same signals,
 * same JSON, same live counters — including an account whose tier rises only after the cut on
 * state from before it, an account already signalled before the cut, a
 * sketch-mode account, an expired account and an evicted one.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "../../collector/pql_changelog.c"
#include "config.h"

#define HOUR_MS 3600000LL
#define DAY_MS_ (24 * HOUR_MS)
#define T0      1767225600000LL /* 2026-01-01T00:00:00Z */

static const char spec_yaml[] =
    "dev: true\n"
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

static void load_yaml(config_t *c, const char *text)
{
    char path[] = "/tmp/sluice_test_pqlcl_XXXXXX", err[512];
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    assert_int_equal(write(fd, text, strlen(text)), (ssize_t)strlen(text));
    close(fd);
    config_init(c);
    int rc = config_load_file(c, path, err, sizeof err);
    if (rc == 0) rc = config_validate(c, err, sizeof err);
    unlink(path);
    if (rc != 0) fail_msg("%s", err);
}

/* ---- signals, as a growing list of "account\tjson" lines ---- */

typedef struct sigs {
    char *text;
    size_t len, n;
} sigs_t;

static void sig_cb(void *ud, const char *account, size_t alen, const char *json, size_t jlen)
{
    sigs_t *s = ud;
    s->text = realloc(s->text, s->len + alen + jlen + 3);
    assert_non_null(s->text);
    memcpy(s->text + s->len, account, alen);
    s->text[s->len + alen] = '\t';
    memcpy(s->text + s->len + alen + 1, json, jlen);
    s->len += alen + jlen + 2;
    s->text[s->len - 1] = '\n';
    s->text[s->len] = '\0';
    s->n++;
}

/* ---- a changelog "topic": every emitted record in order ---- */

typedef struct rec {
    char id[256];
    size_t idlen;
    unsigned char *val; /* NULL: tombstone */
    size_t vlen;
} rec_t;

typedef struct topic {
    rec_t *r;
    size_t n, cap;
} topic_t;

static int emit_cb(void *ud, const char *account, size_t alen, const void *state, size_t slen)
{
    topic_t *t = ud;
    if (t->n == t->cap) {
        t->cap = t->cap ? t->cap * 2 : 64;
        t->r = realloc(t->r, t->cap * sizeof *t->r);
        assert_non_null(t->r);
    }
    rec_t *r = &t->r[t->n++];
    memcpy(r->id, account, alen);
    r->idlen = alen;
    r->val = NULL;
    r->vlen = slen;
    if (state != NULL) {
        r->val = malloc(slen);
        assert_non_null(r->val);
        memcpy(r->val, state, slen);
    }
    return 0;
}

static void topic_free(topic_t *t)
{
    for (size_t i = 0; i < t->n; i++)
        free(t->r[i].val);
    free(t->r);
    memset(t, 0, sizeof *t);
}

static void flush(pql_t *p, topic_t *t, pql_changes_stats_t *st)
{
    base_buf_t scratch;
    base_buf_init(&scratch, 64u << 20);
    assert_int_equal(pql_changes_flush(p, &scratch, emit_cb, t, st), PQL_OK);
    base_buf_free(&scratch);
}

/* Replays the topic into p as a restoring worker does: values imported, tombstones dropped. */
static void replay(pql_t *p, const topic_t *t)
{
    for (size_t i = 0; i < t->n; i++) {
        if (t->r[i].val == NULL)
            (void)pql_account_drop(p, t->r[i].id, t->r[i].idlen);
        else
            assert_int_equal(pql_account_import(p, t->r[i].val, t->r[i].vlen), PQL_OK);
    }
}

static int feed(pql_t *p, const char *acct, const char *user, const char *event, int64_t ts)
{
    pql_event_t ev = {
        acct, strlen(acct), user, strlen(user), event, event ? strlen(event) : 0, "web", 3, ts};
    return pql_feed(p, &ev, T0 + 30 * DAY_MS_);
}

/* A scripted mix over [from, to) of event time: a team that grows to seven users, a heavy
 * account (sketch mode: > 64 users), pricing/legal viewers, a once-only account. */
static void script(pql_t *p, int from, int to)
{
    static const char *names[] = {"Pricing Page Viewed", "Terms Viewed", "Doc Viewed", NULL};
    for (int i = from; i < to; i++) {
        int64_t ts = T0 + (int64_t)i * (HOUR_MS / 4);
        char user[32], acct[32];
        snprintf(user, sizeof user, "team-u%d", i % 9);
        (void)feed(p, "team", user, names[i % 4], ts);
        snprintf(user, sizeof user, "big-u%d", i % 150);
        (void)feed(p, "big", user, i % 7 == 0 ? "Privacy Policy Viewed" : NULL, ts);
        snprintf(acct, sizeof acct, "small-%d", i % 40);
        snprintf(user, sizeof user, "s-u%d", i % 3);
        (void)feed(p, acct, user, names[i % 3], ts);
        /* one more user every 120 steps: its 7th arrives after the cut (team_of_seven) */
        snprintf(user, sizeof user, "g-u%d", i / 120);
        (void)feed(p, "grow", user, i % 50 == 0 ? "Pricing Page Viewed" : NULL, ts);
    }
}

static void assert_same_accounts(pql_t *a, pql_t *b, const char *const *ids, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        base_buf_t ja, jb;
        base_buf_init(&ja, 1 << 20);
        base_buf_init(&jb, 1 << 20);
        int ra = pql_account_json(a, ids[i], strlen(ids[i]), T0 + 30 * DAY_MS_, &ja);
        int rb = pql_account_json(b, ids[i], strlen(ids[i]), T0 + 30 * DAY_MS_, &jb);
        assert_int_equal(ra, rb);
        assert_int_equal(ja.len, jb.len);
        if (ja.len > 0) assert_memory_equal(ja.data, jb.data, ja.len);
        base_buf_free(&ja);
        base_buf_free(&jb);
    }
}

static void test_restored_tracker_signals_like_the_original(void **state)
{
    (void)state;
    config_t c;
    load_yaml(&c, spec_yaml);
    sigs_t sa = {0}, sb = {0};
    pql_t *a = NULL, *b = NULL;
    assert_int_equal(pql_new(&c.pql, sig_cb, &sa, &a), PQL_OK);
    assert_int_equal(pql_changes_track(a, 1 << 20), PQL_OK);
    topic_t t = {0};
    /* Three flushes before the cut (a worker flushes every commit interval). */
    script(a, 0, 200);
    flush(a, &t, NULL);
    script(a, 200, 420);
    (void)feed(a, "gone", "u", "Pricing Page Viewed", T0);
    flush(a, &t, NULL);
    /* "gone" expires (its only event is more than a window before the sweep's clock). */
    script(a, 420, 700);
    assert_true(pql_sweep(a, T0 + 700 * (HOUR_MS / 4)) >= 1);
    pql_changes_stats_t st;
    flush(a, &t, &st);
    assert_true(st.tombstones >= 1);
    assert_true(sa.n > 0); /* some tiers already signalled before the cut */
    size_t before = sa.n;

    assert_int_equal(pql_new(&c.pql, sig_cb, &sb, &b), PQL_OK);
    assert_int_equal(pql_changes_track(b, 1 << 20), PQL_OK);
    replay(b, &t);
    pql_stats_t st_a, st_b;
    pql_stats(a, &st_a);
    pql_stats(b, &st_b);
    assert_int_equal(st_a.accounts, st_b.accounts);
    /* (bytes differ: a restored account's arrays are allocated to size, not grown by doubling) */
    static const char *ids[] = {"team", "big", "small-0", "small-7", "small-39", "gone", "grow"};
    assert_same_accounts(a, b, ids, sizeof ids / sizeof ids[0]);
    /* Nothing restored is "changed": the restored tracker has nothing to write back. */
    topic_t t2 = {0};
    flush(b, &t2, NULL);
    assert_int_equal(t2.n, 0);

    /* After the cut both see the same events: the same signals, byte for byte, and no tier
     * signalled before the cut is signalled again by the restored tracker. */
    sa.len = 0;
    sa.n = 0;
    script(a, 700, 1400);
    script(b, 700, 1400);
    assert_true(sa.n > 0); /* the script signals after the cut too (a window later) */
    assert_int_equal(sa.n, sb.n);
    assert_int_equal(sa.len, sb.len);
    if (sa.len > 0) assert_memory_equal(sa.text, sb.text, sa.len);
    assert_same_accounts(a, b, ids, sizeof ids / sizeof ids[0]);
    assert_true(before > 0);

    topic_free(&t);
    topic_free(&t2);
    free(sa.text);
    free(sb.text);
    pql_free(a);
    pql_free(b);
    config_free(&c);
}

static void test_flush_emits_exactly_the_changes(void **state)
{
    (void)state;
    config_t c;
    load_yaml(&c, "dev: true\npql:\n  tiers: {hot: 10}\n  max_accounts: 1024\n  rules:\n"
                  "    - {name: a, metric: events, at_least: 1000, points: 10}\n");
    pql_t *p = NULL;
    assert_int_equal(pql_new(&c.pql, NULL, NULL, &p), PQL_OK);
    base_buf_t scratch;
    base_buf_init(&scratch, 1 << 20);
    /* not tracking: refused */
    assert_int_equal(pql_changes_flush(p, &scratch, emit_cb, NULL, NULL), PQL_E_INVALID);
    assert_int_equal(pql_changes_track(p, 100), PQL_E_INVALID); /* bound too small */
    assert_int_equal(pql_changes_track(p, 1 << 20), PQL_OK);
    assert_int_equal(pql_changes_track(p, 1 << 20), PQL_E_INVALID); /* twice */
    topic_t t = {0};
    assert_int_equal(feed(p, "x", "u", NULL, T0), PQL_OK);
    assert_int_equal(feed(p, "y", "u", NULL, T0), PQL_OK);
    assert_int_equal(feed(p, "x", "v", NULL, T0 + 1), PQL_OK);
    flush(p, &t, NULL);
    assert_int_equal(t.n, 2);
    topic_free(&t);
    flush(p, &t, NULL);
    assert_int_equal(t.n, 0); /* nothing since */
    assert_int_equal(feed(p, "y", "w", NULL, T0 + 2), PQL_OK);
    flush(p, &t, NULL);
    assert_int_equal(t.n, 1);
    assert_memory_equal(t.r[0].id, "y", 1);
    assert_non_null(t.r[0].val);
    /* the value is what pql_account_export gives */
    base_buf_t v;
    base_buf_init(&v, 1 << 20);
    assert_int_equal(pql_account_export(p, "y", 1, &v), PQL_OK);
    assert_int_equal(v.len, t.r[0].vlen);
    assert_memory_equal(v.data, t.r[0].val, v.len);
    assert_int_equal(pql_account_export(p, "nope", 4, &v), PQL_E_NOTFOUND);
    base_buf_free(&v);
    topic_free(&t);

    /* Dropped, then fed again before the flush: no tombstone, its new value. */
    assert_int_equal(pql_account_drop(p, "x", 1), PQL_OK);
    assert_int_equal(pql_account_drop(p, "x", 1), PQL_E_NOTFOUND);
    assert_int_equal(feed(p, "x", "u", NULL, T0 + 3), PQL_OK);
    flush(p, &t, NULL);
    assert_int_equal(t.n, 1);
    assert_non_null(t.r[0].val);
    topic_free(&t);

    /* Evictions at max_accounts are tombstones (the changelog forgets them too). */
    for (int i = 0; i < 3000; i++) {
        char acct[32];
        snprintf(acct, sizeof acct, "acct-%d", i);
        assert_int_equal(feed(p, acct, "u", NULL, T0 + 10 + i), PQL_OK);
    }
    pql_stats_t st;
    pql_stats(p, &st);
    pql_changes_stats_t cs;
    flush(p, &t, &cs);
    assert_int_equal(cs.values, st.accounts);
    assert_int_equal(cs.tombstones, st.evictions);
    assert_int_equal(cs.values + cs.tombstones, t.n);
    assert_int_equal(pql_changes_lost(p), 0);
    /* Replayed into a fresh tracker: exactly the live accounts. */
    pql_t *q = NULL;
    assert_int_equal(pql_new(&c.pql, NULL, NULL, &q), PQL_OK);
    replay(q, &t);
    pql_stats_t sq;
    pql_stats(q, &sq);
    assert_int_equal(sq.accounts, st.accounts);
    pql_free(q);
    topic_free(&t);
    base_buf_free(&scratch);
    pql_free(p);
    config_free(&c);
}

static void test_tombstones_beyond_the_bound_are_counted(void **state)
{
    (void)state;
    config_t c;
    load_yaml(&c, "dev: true\npql:\n  tiers: {hot: 10}\n  rules:\n"
                  "    - {name: a, metric: events, at_least: 1000, points: 10}\n");
    pql_t *p = NULL;
    assert_int_equal(pql_new(&c.pql, NULL, NULL, &p), PQL_OK);
    assert_int_equal(pql_changes_track(p, 256 * 256), PQL_OK); /* 256 bytes per shard */
    for (int i = 0; i < 20000; i++) {
        char acct[32];
        snprintf(acct, sizeof acct, "account-number-%d", i);
        assert_int_equal(feed(p, acct, "u", NULL, T0), PQL_OK);
    }
    topic_t t = {0};
    flush(p, &t, NULL);
    topic_free(&t);
    size_t expired = pql_sweep(p, T0 + 30 * DAY_MS_);
    assert_int_equal(expired, 20000);
    pql_changes_stats_t cs;
    flush(p, &t, &cs);
    assert_true(pql_changes_lost(p) > 0);
    assert_int_equal(cs.tombstones + pql_changes_lost(p), 20000);
    topic_free(&t);
    pql_free(p);
    config_free(&c);
}

static void test_import_refuses_bad_values(void **state)
{
    (void)state;
    config_t c, c2;
    load_yaml(&c, spec_yaml);
    load_yaml(&c2, "dev: true\npql:\n  tiers: {hot: 10}\n  rules:\n"
                   "    - {name: a, metric: events, at_least: 1000, points: 10}\n");
    pql_t *p = NULL, *other = NULL;
    assert_int_equal(pql_new(&c.pql, NULL, NULL, &p), PQL_OK);
    assert_int_equal(pql_new(&c2.pql, NULL, NULL, &other), PQL_OK);
    script(p, 0, 300);
    base_buf_t v;
    base_buf_init(&v, 1 << 20);
    assert_int_equal(pql_account_export(p, "big", 3, &v), PQL_OK);
    /* other rules: mismatch, nothing tracked */
    assert_int_equal(pql_account_import(other, v.data, v.len), PQL_E_MISMATCH);
    /* every truncation is refused and leaves no account behind */
    pql_t *q = NULL;
    assert_int_equal(pql_new(&c.pql, NULL, NULL, &q), PQL_OK);
    for (size_t cut = 0; cut < v.len; cut += 1 + cut / 8) {
        int rc = pql_account_import(q, v.data, cut);
        assert_int_equal(rc, PQL_E_CORRUPT);
        pql_stats_t st;
        pql_stats(q, &st);
        assert_int_equal(st.accounts, 0);
    }
    /* trailing garbage */
    char *longer = malloc(v.len + 3);
    memcpy(longer, v.data, v.len);
    memcpy(longer + v.len, "xyz", 3);
    assert_int_equal(pql_account_import(q, longer, v.len + 3), PQL_E_CORRUPT);
    pql_stats_t st;
    pql_stats(q, &st);
    assert_int_equal(st.accounts, 0);
    free(longer);
    /* bad version */
    v.data[2] = 9;
    assert_int_equal(pql_account_import(q, v.data, v.len), PQL_E_CORRUPT);
    v.data[2] = 1;
    /* the good value, twice: replaced, not refused */
    assert_int_equal(pql_account_import(q, v.data, v.len), PQL_OK);
    assert_int_equal(pql_account_import(q, v.data, v.len), PQL_OK);
    pql_stats(q, &st);
    assert_int_equal(st.accounts, 1);
    base_buf_free(&v);
    pql_free(q);
    pql_free(p);
    pql_free(other);
    config_free(&c);
    config_free(&c2);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_restored_tracker_signals_like_the_original),
        cmocka_unit_test(test_flush_emits_exactly_the_changes),
        cmocka_unit_test(test_tombstones_beyond_the_bound_are_counted),
        cmocka_unit_test(test_import_refuses_bad_values),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
