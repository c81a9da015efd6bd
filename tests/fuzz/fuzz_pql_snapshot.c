/*
 * fuzz_pql_snapshot.c — libFuzzer target for the PQL snapshot loader (collector/pql_snapshot.c):
 * the input is the content of the PQL snapshot file. The tracker runs SPEC §6's example rules.
 * Checks pql.h's load contract on any bytes:
 *  - pql_snapshot_load() returns PQL_OK, PQL_E_CORRUPT or PQL_E_MISMATCH (never crashes, reads
 *    past the file or leaks), and on failure leaves the tracker empty;
 *  - a copy with the XXH64 trailer made right and the rules fingerprint set to this tracker's
 *    (so the fuzzer reaches the account records behind both checks) obeys the same;
 *  - whatever loaded writes back and loads again into a fresh tracker with the same account
 *    count.
 * Seeds: SLUICE_FUZZ_WRITE_SEEDS=DIR fuzz_pql_snapshot writes snapshots made by
 * pql_snapshot_write() into DIR (tests/fuzz/corpus/pql_snapshot holds them) and exits.
 * Build: cmake -DSLUICE_FUZZ=ON with CC=clang (see tests/fuzz/CMakeLists.txt).
 */
#include "config.h"
#include "pql.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <xxhash.h>

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static const char rules_yaml[] =
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

#define NOW_MS 1800000000000ll /* fixed */

static config_t cfg;
static char path[192], path2[192];
static uint64_t fingerprint; /* this tracker's rules fingerprint, read from a written snapshot */

static pql_t *fresh(void)
{
    pql_t *p = NULL;
    if (pql_new(&cfg.pql, NULL, NULL, &p) != PQL_OK) abort();
    return p;
}

static uint64_t accounts(pql_t *p)
{
    pql_stats_t st;
    pql_stats(p, &st);
    return st.accounts;
}

static void put_file(const char *p, const uint8_t *data, size_t size)
{
    FILE *f = fopen(p, "wb");
    if (f == NULL) abort();
    if (size > 0 && fwrite(data, 1, size, f) != size) abort();
    fclose(f);
}

static uint8_t *get_file(const char *p, size_t *size)
{
    FILE *f = fopen(p, "rb");
    if (f == NULL) abort();
    uint8_t *b = malloc(1 << 20);
    if (b == NULL) abort();
    *size = fread(b, 1, 1 << 20, f);
    fclose(f);
    return b;
}

static void feed(pql_t *p, int acct, int user, const char *event, int64_t ts)
{
    char a[32], u[32];
    int an = snprintf(a, sizeof a, "acct-%d", acct), un = snprintf(u, sizeof u, "user-%d", user);
    pql_event_t ev = {a, (size_t)an, u, (size_t)un, event, event ? strlen(event) : 0, "src", 3, ts};
    (void)pql_feed(p, &ev, NOW_MS);
}

static void write_seeds(const char *out)
{
    static const int n_accounts[] = {0, 1, 20};
    static const char *events[] = {"Pricing Page Viewed", "Terms Viewed", "Report Built", NULL};
    for (size_t k = 0; k < sizeof n_accounts / sizeof n_accounts[0]; k++) {
        pql_t *p = fresh();
        for (int a = 0; a < n_accounts[k]; a++)
            for (int i = 0; i < 40; i++)
                feed(p, a, i % (a + 2), events[i % 4], NOW_MS - (int64_t)(i % 9) * 86400000 / 2);
        char to[300];
        snprintf(to, sizeof to, "%s/seed-%d-accounts", out, n_accounts[k]);
        if (pql_snapshot_write(p, to, NULL) != PQL_OK) abort();
        pql_free(p);
    }
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    char tmp[] = "/tmp/sluice-fuzz-pql-cfg-XXXXXX", err[512];
    int fd = mkstemp(tmp);
    if (fd < 0 || write(fd, rules_yaml, strlen(rules_yaml)) != (ssize_t)strlen(rules_yaml)) abort();
    close(fd);
    config_init(&cfg);
    if (config_load_file(&cfg, tmp, err, sizeof err) != 0 ||
        config_validate(&cfg, err, sizeof err) != 0) {
        fprintf(stderr, "%s\n", err);
        abort();
    }
    unlink(tmp);
    const char *out = getenv("SLUICE_FUZZ_WRITE_SEEDS");
    if (out != NULL) {
        write_seeds(out);
        exit(0);
    }
    snprintf(path, sizeof path, "/tmp/sluice-fuzz-pql-%d.snapshot", (int)getpid());
    snprintf(path2, sizeof path2, "/tmp/sluice-fuzz-pql-%d.again", (int)getpid());
    pql_t *p = fresh();
    if (pql_snapshot_write(p, path, NULL) != PQL_OK) abort();
    size_t n;
    uint8_t *b = get_file(path, &n);
    if (n < 20) abort();
    memcpy(&fingerprint, b + 12, 8); /* magic 8, version 4, fingerprint 8 */
    free(b);
    pql_free(p);
    return 0;
}

/* A broken contract: say which, then abort (the fuzzer keeps the input). */
#define FAIL(...)                                                                                  \
    do {                                                                                           \
        fprintf(stderr, "contract broken: " __VA_ARGS__);                                          \
        fputc('\n', stderr);                                                                       \
        abort();                                                                                   \
    } while (0)

static void load_checked(const uint8_t *data, size_t size)
{
    put_file(path, data, size);
    pql_t *p = fresh();
    int rc = pql_snapshot_load(p, path);
    if (rc != PQL_OK) {
        if (rc != PQL_E_CORRUPT && rc != PQL_E_MISMATCH) FAIL("load returned %d", rc);
        if (accounts(p) != 0)
            FAIL("load failed (%d), yet %llu accounts kept", rc, (unsigned long long)accounts(p));
        pql_free(p);
        return;
    }
    uint64_t n = accounts(p);
    if (pql_snapshot_write(p, path2, NULL) != PQL_OK) FAIL("write back failed");
    pql_t *p2 = fresh();
    int rc2 = pql_snapshot_load(p2, path2);
    if (rc2 != PQL_OK || accounts(p2) != n)
        FAIL("round trip: %llu accounts, reload %d with %llu", (unsigned long long)n, rc2,
             (unsigned long long)accounts(p2));
    pql_free(p2);
    pql_free(p);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    load_checked(data, size);
    if (size >= 28) {
        uint8_t *c = malloc(size);
        if (c == NULL) abort();
        memcpy(c, data, size);
        memcpy(c + 12, &fingerprint, 8);
        uint64_t sum = XXH64(c, size - 8, 0);
        memcpy(c + size - 8, &sum, 8);
        load_checked(c, size);
        free(c);
    }
    return 0;
}
