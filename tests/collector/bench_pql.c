/*
 * bench_pql — microbenchmark of collector/pql.c (not a test: speed figures come from here).
 *
 *   bench_pql [events_millions=10] [accounts=1000000] [streams=3: 1 = 100k accounts, 2 = 1k]
 *
 * 1. Counter updates: pql_feed() on one thread over a pre-generated stream (Zipf-sized accounts,
 *    users per account, SPEC §6's example rules, event names from a small vocabulary, event time
 *    advancing over 7 days so buckets rotate). Prints events/s.
 * 2. Memory: `accounts` accounts with a realistic mix (account of rank r has max(1, 200/r^1.1)
 *    users, each with 1..8 events over a few days); prints pql's own byte count per account and the
 *    process RSS growth per account (malloc overhead included).
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "config.h"
#include "pql.h"

#define T0 1767225600000LL

/* CPU time of this thread: the machine is shared, wall time would measure the neighbours. */
static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static long rss_kib(void)
{
    FILE *f = fopen("/proc/self/statm", "r");
    long pages = 0, res = 0;
    if (f == NULL) return 0;
    if (fscanf(f, "%ld %ld", &pages, &res) != 2) res = 0;
    fclose(f);
    return res * 4;
}

static uint64_t rng = 88172645463325252ull;
static uint64_t xorshift(void)
{
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return rng;
}

static void spec_config(pql_config_t *q)
{
    static pql_config_tier_t tiers[] = {{"hot", 80}, {"warm", 50}, {"watching", 30}};
    static char *pricing[] = {"Pricing Page Viewed"};
    static char *legal[] = {"Terms Viewed", "Privacy Policy Viewed"};
    static pql_config_rule_t rules[] = {
        {"team_of_seven", PQL_METRIC_ACTIVE_USERS, 7, 40, 86400000, 0, NULL, 0},
        {"heavy_usage", PQL_METRIC_EVENTS, 10000, 20, 86400000, 0, NULL, 0},
        {"surge", PQL_METRIC_EVENTS_VELOCITY, 3.0, 25, 86400000, 200, NULL, 0},
        {"new_user_surge", PQL_METRIC_USERS_VELOCITY, 2.0, 20, 86400000, 3, NULL, 0},
        {"regular_use", PQL_METRIC_ACTIVE_DAYS, 5, 20, 86400000, 0, NULL, 0},
        {"pricing_interest", PQL_METRIC_EVENT_SEEN, 1, 10, 86400000, 0, pricing, 1},
        {"legal_review", PQL_METRIC_EVENT_SEEN, 1, 15, 86400000, 0, legal, 2},
    };
    memset(q, 0, sizeof *q);
    q->window_ms = 7 * 86400000u;
    q->bucket_ms = 3600000u;
    q->late_ms = 7 * 86400000u;
    q->snapshot_interval_ms = 300000;
    q->max_accounts = 2000000;
    q->tiers = tiers;
    q->n_tiers = 3;
    q->rules = rules;
    q->n_rules = 7;
}

static const char *const vocab[] = {"Dashboard Viewed", "Report Created",      "Project Created",
                                    "Search Performed", "Pricing Page Viewed", "Terms Viewed",
                                    "Invite Sent",      "Settings Updated"};

static void nop_cb(void *ud, const char *a, size_t al, const char *j, size_t jl)
{
    (void)a;
    (void)al;
    (void)j;
    (void)jl;
    (*(long *)ud)++;
}

int main(int argc, char **argv)
{
    long millions = argc > 1 ? atol(argv[1]) : 10;
    long n_accounts = argc > 2 ? atol(argv[2]) : 1000000;
    long streams = argc > 3 ? atol(argv[3]) : 3;
    if (millions < 1 || n_accounts < 1) return 2;
    pql_config_t q;
    spec_config(&q);

    /* ---- 1. memory (first, so RSS growth is not hidden by freed heap) for n_accounts ---- */
    {
        pql_t *p = NULL;
        long signals = 0;
        if (pql_new(&q, nop_cb, &signals, &p) != PQL_OK) return 1;
        long rss0 = rss_kib();
        uint64_t events = 0;
        char acct[32], user[32];
        for (long r = 0; r < n_accounts; r++) {
            double uf = floor(200.0 / pow((double)(r + 1), 1.1));
            long users = uf < 1 ? 1 : (long)uf;
            int alen = snprintf(acct, sizeof acct, "acct-%08ld", r);
            for (long u = 0; u < users; u++) {
                int ulen = snprintf(user, sizeof user, "user-%08ld-%04ld", r, u);
                long k = 1 + (long)(xorshift() % 8);
                for (long e = 0; e < k; e++) {
                    const char *name = vocab[xorshift() % 8];
                    pql_event_t ev = {acct,
                                      (size_t)alen,
                                      user,
                                      (size_t)ulen,
                                      name,
                                      strlen(name),
                                      "web",
                                      3,
                                      T0 + (int64_t)(xorshift() % (3 * 86400000ull))};
                    (void)pql_feed(p, &ev, T0);
                    events++;
                }
            }
        }
        long rss1 = rss_kib();
        pql_stats_t st;
        pql_stats(p, &st);
        printf("memory: %llu accounts, %llu events: pql bytes %.1f MiB = %.0f B/account; RSS "
               "growth %.1f MiB = %.0f B/account\n",
               (unsigned long long)st.accounts, (unsigned long long)events,
               (double)st.bytes / 1048576.0, (double)st.bytes / (double)st.accounts,
               (double)(rss1 - rss0) / 1024.0,
               (double)(rss1 - rss0) * 1024.0 / (double)st.accounts);
        double t0 = now_s();
        pql_snapshot_write(p, "/tmp/bench_pql.snapshot", NULL);
        printf("snapshot of %llu accounts written in %.2f s\n", (unsigned long long)st.accounts,
               now_s() - t0);
        remove("/tmp/bench_pql.snapshot");
        pql_free(p);
    }
    /* ---- 2. counter updates: 100k accounts (memory-latency bound), then 1k (cache-resident) */
    for (int pass = 0; pass < 2; pass++) {
        if (!(streams >> pass & 1)) continue;
        const size_t accts = pass == 0 ? 100000 : 1000, n = (size_t)millions * 1000000;
        char(*acct_ids)[32] = malloc(accts * sizeof *acct_ids);
        uint32_t *users_of = malloc(accts * sizeof *users_of);
        double *cdf = malloc(accts * sizeof *cdf);
        pql_event_t *ev = malloc(n * sizeof *ev);
        char(*user_ids)[24] = malloc(4096 * sizeof *user_ids);
        if (!acct_ids || !users_of || !cdf || !ev || !user_ids) return 1;
        double tot = 0;
        for (size_t r = 0; r < accts; r++) {
            snprintf(acct_ids[r], sizeof acct_ids[r], "acct-%zu", r);
            double u = floor(200.0 / pow((double)(r + 1), 1.1));
            users_of[r] = u < 1 ? 1 : (uint32_t)u;
            tot += users_of[r];
            cdf[r] = tot;
        }
        for (int u = 0; u < 4096; u++)
            snprintf(user_ids[u], sizeof user_ids[u], "user-%08d", u);
        for (size_t i = 0; i < n; i++) {
            double x = (double)(xorshift() % 1000000007ull) / 1000000007.0 * tot;
            size_t lo = 0, hi = accts - 1;
            while (lo < hi) {
                size_t mid = (lo + hi) / 2;
                if (cdf[mid] < x)
                    lo = mid + 1;
                else
                    hi = mid;
            }
            uint32_t u = (uint32_t)(xorshift() % users_of[lo]);
            const char *name = vocab[xorshift() % 8];
            ev[i] = (pql_event_t){acct_ids[lo],
                                  strlen(acct_ids[lo]),
                                  user_ids[(u * 7 + lo) % 4096],
                                  13,
                                  name,
                                  strlen(name),
                                  "web",
                                  3,
                                  T0 + (int64_t)((double)i / (double)n * 7 * 86400000.0)};
        }
        long signals = 0;
        pql_t *p = NULL;
        if (pql_new(&q, nop_cb, &signals, &p) != PQL_OK) return 1;
        double t0 = now_s();
        for (size_t i = 0; i < n; i++)
            (void)pql_feed(p, &ev[i], T0);
        double dt = now_s() - t0;
        pql_stats_t st;
        pql_stats(p, &st);
        printf("counter updates: %zu events over %llu accounts in %.3f s = %.2f M events/s "
               "(%.1f ns/event, CPU time of one thread, %ld signals)\n",
               n, (unsigned long long)st.accounts, dt, (double)n / dt / 1e6, dt * 1e9 / (double)n,
               signals);
        pql_free(p);
        free(ev);
        free(acct_ids);
        free(users_of);
        free(cdf);
        free(user_ids);
    }

    return 0;
}
