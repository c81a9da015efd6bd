/*
 * bench_stream — sluice-stream's per-core figures without Kafka (a benchmark, not a ctest):
 *   1. events/s of the record path of one worker thread, as stream_worker.c's process_batch()
 *      runs it (stream_batch.h, batches of STREAM_BATCH_MAX): stream_batch_prepare (decode of a
 *      msgpack normalized event — type, event, ids, ISO timestamp, a properties map and a
 *      context map —, hashes, prefetches), then per event stream_ev_dedup on (source,
 *      messageId) (every 10th record is a retry of an earlier one: a duplicate, not counted)
 *      and stream_ev_count (pql_feed, SPEC §6 example rules), over accounts of a Zipf-like size
 *      mix; the dedup changelog is flushed every 20000 records (stream.max_batch's default)
 *      inside the timing;
 *   2. changelog bytes per account (pql_changes_flush: key + value);
 *   3. restore time per 100 k accounts: pql_account_import of those values into a fresh tracker
 *      (the CPU part of a restore; the fetch from Kafka comes on top).
 * Usage: bench_stream [EVENTS (default 2000000)] [ACCOUNTS (default 100000)] [RUNS (default 5)]
 *                     [DEDUP_MIB (default 8 = dedup.max_memory / stream.max_partitions defaults;
 *                      0 = no dedup, the figure before dedup existed)]
 * Prints each run and the median.
 */
#include <msgpack.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "base.h"
#include "config.h"
#include "pql.h"
#include "stream_batch.h"
#include "stream_dedup.h"
#include "stream_record.h"

static const char rules_yaml[] =
    "dev: true\n"
    "pql:\n"
    "  window: 7d\n"
    "  max_accounts: 2000000\n"
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

static void pk_str(msgpack_packer *pk, const char *s)
{
    size_t n = strlen(s);
    msgpack_pack_str(pk, n);
    msgpack_pack_str_body(pk, s, n);
}

typedef struct recs {
    char *data;
    size_t *off, *len;
    size_t n;
} recs_t;

static uint64_t rng = 88172645463325252ull;
static uint64_t next(void)
{
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return rng;
}

/* Account of event i: a Zipf-like mix (a few big accounts, a long tail). */
static size_t pick_account(size_t accounts)
{
    double u = (double)(next() % 1000000) / 1000000.0;
    size_t a = (size_t)((double)accounts * u * u * u);
    return a < accounts ? a : accounts - 1;
}

static void build(recs_t *r, size_t n, size_t accounts, int64_t t0)
{
    static const char *names[] = {"Doc Viewed", "Pricing Page Viewed", "Feature Used",
                                  "Terms Viewed", "Signed In"};
    msgpack_sbuffer sb;
    msgpack_sbuffer_init(&sb);
    msgpack_packer pk;
    msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
    r->off = malloc(n * sizeof *r->off);
    r->len = malloc(n * sizeof *r->len);
    for (size_t i = 0; i < n; i++) {
        size_t start = sb.size;
        size_t a = pick_account(accounts);
        char acct[32], user[48], mid[48], ts[BASE_ISO8601_LEN + 1];
        snprintf(acct, sizeof acct, "acct-%zu", a);
        snprintf(user, sizeof user, "user-%zu-%u", a, (unsigned)(next() % 12));
        if (i % 10 == 9)
            snprintf(mid, sizeof mid, "retry-%zu", i - 9); /* the messageId of record i - 9 */
        else if (i % 10 == 0)
            snprintf(mid, sizeof mid, "retry-%zu", i);
        else
            snprintf(mid, sizeof mid, "%016llx-%zu", (unsigned long long)next(), i);
        base_iso8601_format(t0 + (int64_t)(i % 86400000), ts);
        msgpack_pack_map(&pk, 10);
        pk_str(&pk, "type"), pk_str(&pk, "track");
        pk_str(&pk, "event"), pk_str(&pk, names[next() % 5]);
        pk_str(&pk, "userId"), pk_str(&pk, user);
        pk_str(&pk, "messageId"), pk_str(&pk, mid);
        pk_str(&pk, "properties");
        msgpack_pack_map(&pk, 3);
        pk_str(&pk, "plan"), pk_str(&pk, "pro");
        pk_str(&pk, "count"), msgpack_pack_int(&pk, (int)(next() % 100));
        pk_str(&pk, "path"), pk_str(&pk, "/docs/getting-started");
        pk_str(&pk, "context");
        msgpack_pack_map(&pk, 2);
        pk_str(&pk, "library");
        msgpack_pack_map(&pk, 2);
        pk_str(&pk, "name"), pk_str(&pk, "sluice-c");
        pk_str(&pk, "version"), pk_str(&pk, "0.1.0");
        pk_str(&pk, "groupId"), pk_str(&pk, acct);
        pk_str(&pk, "receivedAt"), pk_str(&pk, ts);
        pk_str(&pk, "timestamp"), pk_str(&pk, ts);
        pk_str(&pk, "source"), pk_str(&pk, "web");
        pk_str(&pk, "accountId"), pk_str(&pk, acct);
        r->off[i] = start;
        r->len[i] = sb.size - start;
    }
    r->data = sb.data; /* owned now */
    r->n = n;
}

static int cmp_d(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static double median(double *v, int n)
{
    qsort(v, (size_t)n, sizeof *v, cmp_d);
    return v[n / 2];
}

typedef struct sink {
    base_buf_t keys, vals;
    size_t *koff, *klen, *voff, *vlen;
    size_t n, cap;
} sink_t;

static int emit(void *ud, const char *account, size_t alen, const void *state, size_t slen)
{
    sink_t *s = ud;
    if (s->n == s->cap) {
        s->cap = s->cap ? s->cap * 2 : 1024;
        s->voff = realloc(s->voff, s->cap * sizeof *s->voff);
        s->vlen = realloc(s->vlen, s->cap * sizeof *s->vlen);
    }
    (void)account;
    s->voff[s->n] = s->vals.len;
    s->vlen[s->n] = slen;
    if (state != NULL && base_buf_append(&s->vals, state, slen) != 0) return -1;
    s->keys.len += 1 + alen; /* bytes only: the key is 'p' + accountId */
    s->n++;
    return 0;
}

static int count_bytes(void *ud, const void *key, size_t klen, const void *val, size_t vlen)
{
    (void)key, (void)val;
    *(uint64_t *)ud += klen + vlen;
    return 0;
}

/* The timed part: the records in batches of STREAM_BATCH_MAX, each through the worker's
 * process() calls (stream_batch.h): stream_batch_prepare, then per event stream_ev_dedup and
 * stream_ev_count; the dedup changelog is flushed before record i when i % 20000 == 19999.
 * Separate (and not inlined) so that callgrind can count it alone
 * (--toggle-collect=feed_all). */
static __attribute__((noinline)) int feed_all(const recs_t *r, stream_decoder_t *d,
                                              stream_dedup_t *dd, pql_t *p, int64_t t0, size_t *bad,
                                              size_t *dups, uint64_t *cl_bytes)
{
    stream_ev_t evs[STREAM_BATCH_MAX];
    for (size_t b0 = 0; b0 < r->n; b0 += STREAM_BATCH_MAX) {
        size_t n = r->n - b0 < STREAM_BATCH_MAX ? r->n - b0 : STREAM_BATCH_MAX;
        for (size_t j = 0; j < n; j++)
            evs[j] = (stream_ev_t){.val = r->data + r->off[b0 + j],
                                   .len = r->len[b0 + j],
                                   .dedup = dd,
                                   .pql = p,
                                   .fallback_ts = t0};
        (void)stream_batch_prepare(d, false, evs, n);
        for (size_t j = 0; j < n; j++) {
            size_t i = b0 + j;
            stream_ev_t *e = &evs[j];
            if (e->rc != 0) {
                (*bad)++;
                continue;
            }
            if (dd != NULL && i % 20000 == 19999 &&
                stream_dedup_changelog(dd, count_bytes, cl_bytes) != 0)
                return -1;
            int64_t now = t0 + (int64_t)(i / 1000); /* 1 M events/s */
            if (stream_ev_dedup(dd, e, now) == 0) {
                (*dups)++;
                continue;
            }
            (void)stream_ev_count(p, e, t0);
        }
    }
    return 0;
}

int main(int argc, char **argv)
{
    size_t n = argc > 1 ? strtoull(argv[1], NULL, 10) : 2000000;
    size_t accounts = argc > 2 ? strtoull(argv[2], NULL, 10) : 100000;
    int runs = argc > 3 ? atoi(argv[3]) : 5;
    uint64_t dedup_mib = argc > 4 ? strtoull(argv[4], NULL, 10) : 8;
    if (runs < 1 || runs > 99 || n == 0 || accounts == 0) return 2;
    char path[] = "/tmp/bench_stream_XXXXXX", err[512];
    int fd = mkstemp(path);
    if (fd < 0 || write(fd, rules_yaml, sizeof rules_yaml - 1) != (ssize_t)(sizeof rules_yaml - 1))
        return 1;
    close(fd);
    config_t c;
    config_init(&c);
    if (config_load_file(&c, path, err, sizeof err) != 0) {
        fprintf(stderr, "%s\n", err);
        return 1;
    }
    unlink(path);
    int64_t t0 = base_wall_ms() - 3600000;
    recs_t r;
    build(&r, n, accounts, t0);
    double rate[99], restore[99], bpa = 0;
    for (int k = 0; k < runs; k++) {
        pql_t *p = NULL;
        if (pql_new(&c.pql, NULL, NULL, &p) != PQL_OK || pql_changes_track(p, 64u << 20) != 0)
            return 1;
        stream_dedup_t *dd = NULL;
        if (dedup_mib > 0 && stream_dedup_new(c.dedup_window_ms, dedup_mib << 20, &dd) != 0)
            return 1;
        stream_decoder_t d;
        stream_decoder_init(&d);
        size_t bad = 0, dups = 0;
        uint64_t cl_bytes = 0;
        uint64_t s0 = base_mono_ns();
        if (feed_all(&r, &d, dd, p, t0, &bad, &dups, &cl_bytes) != 0) return 1;
        double secs = (double)(base_mono_ns() - s0) / 1e9;
        rate[k] = (double)r.n / secs;
        stream_decoder_free(&d);
        stream_dedup_free(dd);
        /* changelog of everything fed, then a restore of it */
        sink_t s = {0};
        base_buf_init(&s.keys, 0);
        base_buf_init(&s.vals, (size_t)4 << 30);
        base_buf_t scratch;
        base_buf_init(&scratch, (size_t)1 << 30);
        if (pql_changes_flush(p, &scratch, emit, &s, NULL) != PQL_OK) return 1;
        pql_stats_t st;
        pql_stats(p, &st);
        bpa = (double)(s.keys.len + s.vals.len) / (double)st.accounts;
        pql_t *q = NULL;
        if (pql_new(&c.pql, NULL, NULL, &q) != PQL_OK) return 1;
        uint64_t r0 = base_mono_ns();
        for (size_t i = 0; i < s.n; i++)
            if (pql_account_import(q, s.vals.data + s.voff[i], s.vlen[i]) != PQL_OK) return 1;
        double rsecs = (double)(base_mono_ns() - r0) / 1e9;
        restore[k] = rsecs * 100000.0 / (double)s.n;
        printf("run %d: %.0f events/s (decode + %spql_feed, %zu undecodable, %zu duplicates, "
               "dedup changelog %llu B), %llu accounts, changelog %.0f B/account, restore %.1f ms "
               "per 100k accounts\n",
               k + 1, rate[k], dedup_mib > 0 ? "dedup + " : "", bad, dups,
               (unsigned long long)cl_bytes, (unsigned long long)st.accounts, bpa,
               restore[k] * 1000.0);
        pql_free(q);
        pql_free(p);
        base_buf_free(&scratch);
        base_buf_free(&s.vals);
        free(s.voff);
        free(s.vlen);
    }
    printf("median: %.0f events/s per core, %.1f ms restore per 100k accounts, %.0f changelog "
           "bytes/account (last run)\n",
           median(rate, runs), median(restore, runs) * 1000.0, bpa);
    free(r.data);
    free(r.off);
    free(r.len);
    config_free(&c);
    return 0;
}
