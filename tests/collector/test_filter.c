/*
 * test_filter.c — collector/filter.c (rule language, globs, paths, each rule kind, consistent
 * sampling, strip/hash in the encoded record, compile errors with their lines) and
 * collector/reload.c (the runtime swap: good and bad reloads, counters kept, readers racing a
 * reload under ASan).
 *
 * Events are built by the real decoder (proto_decode of JSON bodies) and checked through the
 * real encoder (proto_encode_event as JSON), so a strip/hash is asserted on the bytes that would
 * go to Kafka.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "config.h"
#include "filter.h"
#include "log.h"
#include "metrics.h"
#include "reload.h"

static char tmpdir[64];
static char yaml_path[128];

static int group_setup(void **state)
{
    (void)state;
    snprintf(tmpdir, sizeof tmpdir, "/tmp/sluice-test-filter-XXXXXX");
    if (mkdtemp(tmpdir) == NULL) return -1;
    snprintf(yaml_path, sizeof yaml_path, "%s/f.yaml", tmpdir);
    setenv("SLUICE_HASH_KEY", "0123456789abcdef-test-key", 1);
    setenv("SLUICE_OTHER_KEY", "fedcba9876543210-other-key", 1);
    setenv("SLUICE_SHORT_KEY", "too-short", 1);
    unsetenv("SLUICE_UNSET_KEY");
    log_set_level(LOG_OFF);
    return 0;
}

static int group_teardown(void **state)
{
    (void)state;
    unlink(yaml_path);
    rmdir(tmpdir);
    return 0;
}

static void write_yaml(const char *yaml)
{
    FILE *f = fopen(yaml_path, "w");
    assert_non_null(f);
    fputs(yaml, f);
    fclose(f);
}

/* Loads yaml (a whole config file) and returns its compiled filters (the test frees them). */
static int load_filters(const char *yaml, filter_set_t **out, char *err, size_t errlen)
{
    write_yaml(yaml);
    config_t c;
    config_init(&c);
    err[0] = '\0';
    int rc = config_load_file(&c, yaml_path, err, errlen);
    *out = c.filters;
    c.filters = NULL;
    config_free(&c);
    return rc;
}

static filter_set_t *must_load(const char *yaml)
{
    filter_set_t *fs = NULL;
    char err[512];
    int rc = load_filters(yaml, &fs, err, sizeof err);
    if (rc != 0) fprintf(stderr, "load failed: %s\n", err);
    assert_int_equal(rc, 0);
    return fs;
}

/* ---- globs ---- */

static bool gm(const char *pat, const char *s, bool icase)
{
    filter_glob_t *g = NULL;
    const char *why = NULL;
    assert_int_equal(filter_glob_new(pat, strlen(pat), icase, &g, &why), FILTER_OK);
    bool r = filter_glob_match(g, s, strlen(s));
    filter_glob_free(g);
    return r;
}

static void test_glob(void **state)
{
    (void)state;
    /* exact, and the fast kinds */
    assert_true(gm("Heartbeat", "Heartbeat", false));
    assert_false(gm("Heartbeat", "Heartbeats", false));
    assert_false(gm("Heartbeat", "heartbeat", false));
    assert_true(gm("debug.*", "debug.", false));
    assert_true(gm("debug.*", "debug.render", false));
    assert_false(gm("debug.*", "debu", false));
    assert_false(gm("debug.*", "xdebug.render", false));
    assert_true(gm("*@ourcompany.com", "ann@ourcompany.com", false));
    assert_false(gm("*@ourcompany.com", "ann@ourcompany.com.evil", false));
    assert_true(gm("*bot*", "Mozilla/5.0 (compatible; Googlebot/2.1)", false));
    assert_false(gm("*bot*", "Mozilla/5.0 (compatible; GoogleBot/2.1)", false));
    assert_true(gm("*bot*", "Mozilla/5.0 (compatible; GoogleBot/2.1)", true));
    assert_true(gm("*BOT*", "googlebot", true));
    assert_true(gm("*", "", false));
    assert_true(gm("*", "anything", false));
    assert_true(gm("**", "x", false));
    assert_true(gm("", "", false));
    assert_false(gm("", "x", false));
    /* general: ?, classes, escapes, backtracking */
    assert_true(gm("a?c", "abc", false));
    assert_false(gm("a?c", "ac", false));
    assert_true(gm("a?c",
                   "a\xc3\xa9"
                   "c",
                   false)); /* ? is one UTF-8 character */
    assert_true(gm("v[0-9].[0-9]", "v2.7", false));
    assert_false(gm("v[0-9].[0-9]", "vx.7", false));
    assert_true(gm("[!a-z]*", "9lives", false));
    assert_false(gm("[!a-z]*", "lives", false));
    assert_true(gm("[^a-z]x", "Zx", false));
    assert_true(gm("[]]", "]", false)); /* ']' first in a class is literal */
    assert_true(gm("[a-]", "-", false));
    assert_true(gm("a\\*b", "a*b", false));
    assert_false(gm("a\\*b", "axb", false));
    assert_true(gm("a*b*c", "aXbYbZc", false));
    assert_true(gm("*a*b", "xxaxxbxxab", false));
    assert_false(gm("*a*b", "xxaxxbxxa", false));
    assert_true(gm("[A-Z]*BOT", "xyzbot", true));
    assert_true(gm("*.?", "a.b", false));
    assert_false(gm("*.?", "a.", false));
    /* a pathological pattern stays linear-ish and correct */
    char s[4001];
    memset(s, 'a', 4000);
    s[4000] = '\0';
    assert_false(gm("*a*a*a*a*a*a*b", s, false));
    /* errors */
    filter_glob_t *g = NULL;
    const char *why = NULL;
    assert_int_equal(filter_glob_new("[abc", 4, false, &g, &why), FILTER_E_INVALID);
    assert_null(g);
    assert_string_equal(why, "unterminated '[' in pattern");
    assert_int_equal(filter_glob_new("ab\\", 3, false, &g, &why), FILTER_E_INVALID);
    assert_non_null(why);
}

/* ---- events ---- */

typedef struct tbatch {
    proto_batch_t b;
    base_buf_t out;
} tbatch_t;

static void decode(tbatch_t *t, const char *json)
{
    memset(t, 0, sizeof *t);
    assert_int_equal(proto_decode(&t->b, json, strlen(json), PROTO_FMT_JSON, PROTO_T_NONE, NULL),
                     0);
    proto_norm_ctx_t c = {.received_at_ms = 1795000000000LL, .source = {"web", 3}};
    proto_normalize(&t->b, &c);
    base_buf_init(&t->out, 1 << 20);
}

static void tfree(tbatch_t *t)
{
    proto_batch_free(&t->b);
    base_buf_free(&t->out);
}

/* Applies fs to event i and returns whether it is kept. */
static bool keep(filter_set_t *fs, tbatch_t *t, size_t i)
{
    bool k = false;
    assert_int_equal(t->b.events[i].error, 0);
    assert_int_equal(filter_apply(fs, &t->b, &t->b.events[i], &k), FILTER_OK);
    return k;
}

/* The JSON record of event i, NUL-terminated (valid until the next call). */
static const char *record(tbatch_t *t, size_t i)
{
    base_buf_reset(&t->out);
    assert_int_equal(proto_encode_event(&t->b.events[i], PROTO_FMT_JSON, &t->out), 0);
    assert_int_equal(base_buf_append(&t->out, "", 1), 0);
    return t->out.data;
}

static void test_spec_example_loads(void **state)
{
    (void)state;
    /* SPEC §5, verbatim. */
    filter_set_t *fs = must_load(
        "write_keys: [{key: wk_1}]\n"
        "filters:\n"
        "  - {name: no_bots,      drop: {user_agent: [\"*bot*\", \"*crawler*\", \"*spider*\"]}}\n"
        "  - {name: no_debug,     drop: {event: \"debug.*\"}}\n"
        "  - {name: internal,     drop: {property: {\"context.traits.email\": "
        "\"*@ourcompany.com\"}}}\n"
        "  - {name: heartbeats,   sample: {event: \"Heartbeat\", keep: 0.1}}\n"
        "  - {name: scrub_pii,    strip: [properties.email, traits.phone, context.ip]}\n"
        "  - {name: pseudonymize, hash: [traits.email], key_env: SLUICE_HASH_KEY}\n");
    assert_int_equal(filter_set_count(fs), 6);
    const char *names[] = {"no_bots",    "no_debug",  "internal",
                           "heartbeats", "scrub_pii", "pseudonymize"};
    filter_kind_t kinds[] = {FILTER_DROP,   FILTER_DROP,  FILTER_DROP,
                             FILTER_SAMPLE, FILTER_STRIP, FILTER_HASH};
    for (size_t i = 0; i < 6; i++) {
        assert_string_equal(filter_rule_name(fs, i), names[i]);
        assert_int_equal(filter_rule_kind(fs, i), kinds[i]);
    }

    tbatch_t t;
    decode(
        &t,
        "{\"context\":{\"userAgent\":\"Mozilla (compatible; bingbot)\"},\"batch\":["
        /* 0: a bot by the batch context */
        "{\"type\":\"track\",\"messageId\":\"m\",\"userId\":\"u1\",\"event\":\"Signed Up\"},"
        /* 1: own context overrides the batch's: a human */
        "{\"type\":\"track\",\"messageId\":\"m\",\"userId\":\"u1\",\"event\":\"Signed "
        "Up\",\"context\":{\"userAgent\":\"Firefox\",\"ip\":\"1.2.3.4\",\"traits\":{\"email\":\"a@"
        "b.com\"}},\"properties\":{\"email\":\"a@b.com\",\"plan\":\"pro\"}},"
        /* 2: debug event */
        "{\"type\":\"track\",\"messageId\":\"m\",\"userId\":\"u1\",\"event\":\"debug.render\","
        "\"context\":{\"userAgent\":\"Firefox\"}},"
        /* 3: internal user */
        "{\"type\":\"track\",\"messageId\":\"m\",\"userId\":\"u1\",\"event\":\"Signed "
        "Up\",\"context\":{\"userAgent\":\"Firefox\",\"traits\":{\"email\":\"bob@ourcompany.com\"}}"
        "},"
        /* 4: identify with traits */
        "{\"type\":\"identify\",\"messageId\":\"m4\",\"userId\":\"u1\",\"context\":{\"userAgent\":"
        "\"Firefox\"},\"traits\":{\"email\":\"c@d.com\",\"phone\":\"555\",\"name\":\"C\"}}]}");
    assert_false(keep(fs, &t, 0));
    assert_true(keep(fs, &t, 1));
    assert_false(keep(fs, &t, 2));
    assert_false(keep(fs, &t, 3));
    assert_true(keep(fs, &t, 4));
    const char *r1 = record(&t, 1);
    assert_null(strstr(r1, "\"ip\""));
    assert_null(strstr(r1, "\"email\":\"a@b.com\",\"plan\"")); /* properties.email gone */
    assert_non_null(strstr(r1, "\"properties\":{\"plan\":\"pro\"}"));
    assert_non_null(strstr(r1, "\"traits\":{\"email\":\"a@b.com\"}")); /* context.traits kept */
    const char *r4 = record(&t, 4);
    assert_null(strstr(r4, "555"));
    assert_null(strstr(r4, "c@d.com"));
    assert_non_null(strstr(r4, "\"email\":\"hmac-sha256:"));
    assert_non_null(strstr(r4, "\"name\":\"C\""));
    /* scrub_pii modified events 1 (properties.email, context.ip) and 4 (traits.phone) */
    assert_int_equal(filter_rule_count(fs, 0), 1);
    assert_int_equal(filter_rule_count(fs, 1), 1);
    assert_int_equal(filter_rule_count(fs, 2), 1);
    assert_int_equal(filter_rule_count(fs, 3), 0);
    assert_int_equal(filter_rule_count(fs, 4), 2);
    assert_int_equal(filter_rule_count(fs, 5), 1);

    base_buf_t m;
    base_buf_init(&m, 1 << 16);
    assert_int_equal(filter_set_render(fs, &m), 0);
    assert_int_equal(base_buf_append(&m, "", 1), 0);
    assert_non_null(strstr(m.data, "# TYPE sluice_filter_events_total counter\n"));
    assert_non_null(
        strstr(m.data, "sluice_filter_events_total{rule=\"no_bots\",action=\"drop\"} 1\n"));
    assert_non_null(
        strstr(m.data, "sluice_filter_events_total{rule=\"scrub_pii\",action=\"strip\"} 2\n"));
    assert_non_null(
        strstr(m.data, "sluice_filter_events_total{rule=\"heartbeats\",action=\"sample\"} 0\n"));
    base_buf_free(&m);
    tfree(&t);
    filter_set_free(fs);
}

static void test_match_conditions(void **state)
{
    (void)state;
    filter_set_t *fs = must_load(
        "filters:\n"
        "  - {name: free_pages, drop: {type: page, property: {properties.plan: [free, trial]}}}\n"
        "  - {name: numbers, drop: {property: {properties.n: \"4?\", properties.ok: \"true\"}}}\n"
        "  - {name: only_some, allow: {type: [track, page, identify]}}\n");
    tbatch_t t;
    decode(&t, "{\"batch\":[{\"type\":\"page\",\"messageId\":\"a\",\"userId\":\"u\",\"properties\":"
               "{\"plan\":\"free\"}},"
               "{\"type\":\"page\",\"messageId\":\"b\",\"userId\":\"u\",\"properties\":{\"plan\":"
               "\"pro\"}},"
               "{\"type\":\"track\",\"event\":\"x\",\"messageId\":\"c\",\"userId\":\"u\","
               "\"properties\":{\"plan\":\"free\"}},"
               "{\"type\":\"track\",\"messageId\":\"m\",\"userId\":\"u1\",\"event\":\"n\","
               "\"properties\":{\"n\":42,\"ok\":true}},"
               "{\"type\":\"track\",\"messageId\":\"m\",\"userId\":\"u1\",\"event\":\"n\","
               "\"properties\":{\"n\":42,\"ok\":false}},"
               "{\"type\":\"track\",\"messageId\":\"m\",\"userId\":\"u1\",\"event\":\"n\","
               "\"properties\":{\"n\":{\"deep\":42},\"ok\":true}},"
               "{\"type\":\"alias\",\"messageId\":\"d\",\"userId\":\"u\",\"previousId\":\"p\"},"
               "{\"type\":\"identify\",\"messageId\":\"e\",\"anonymousId\":\"a\"}]}");
    assert_false(keep(fs, &t, 0)); /* page + free */
    assert_true(keep(fs, &t, 1));  /* page + pro */
    assert_true(keep(fs, &t, 2));  /* free but a track */
    assert_false(keep(fs, &t, 3)); /* 42 matches "4?" and true matches "true" */
    assert_true(keep(fs, &t, 4));  /* ok is false */
    assert_true(keep(fs, &t, 5));  /* an object never matches */
    assert_false(keep(fs, &t, 6)); /* alias is not allowed */
    assert_true(keep(fs, &t, 7));
    assert_int_equal(filter_rule_count(fs, 0), 1);
    assert_int_equal(filter_rule_count(fs, 1), 1);
    assert_int_equal(filter_rule_count(fs, 2), 1);
    tfree(&t);
    filter_set_free(fs);
}

static void test_sampling_consistent(void **state)
{
    (void)state;
    /* Same user, same decision; the rate holds over 100k users (binomial: sd = 95 at 0.1). */
    size_t kept = 0;
    char id[32];
    for (int i = 0; i < 100000; i++) {
        int n = snprintf(id, sizeof id, "user-%d", i);
        double u = filter_sample_value(id, (size_t)n);
        assert_true(u >= 0 && u < 1);
        assert_true(u == filter_sample_value(id, (size_t)n));
        kept += u < 0.1;
    }
    assert_in_range(kept, 10000 - 600, 10000 + 600);

    /* Through the rule: only the selected events are sampled; the decision follows the user. */
    filter_set_t *fs = must_load("filters:\n"
                                 "  - {name: hb, sample: {event: Heartbeat, keep: 0.3}}\n");
    size_t kept_hb = 0;
    for (int u = 0; u < 200; u++) {
        char body[512];
        snprintf(
            body, sizeof body,
            "{\"batch\":[{\"type\":\"track\",\"event\":\"Heartbeat\",\"messageId\":\"a\","
            "\"userId\":\"u%d\"},"
            "{\"type\":\"track\",\"event\":\"Heartbeat\",\"messageId\":\"b\",\"userId\":\"u%d\"},"
            "{\"type\":\"track\",\"event\":\"Other\",\"messageId\":\"c\",\"userId\":\"u%d\"},"
            "{\"type\":\"track\",\"event\":\"Heartbeat\",\"messageId\":\"d\",\"anonymousId\":\"u%"
            "d\"}]}",
            u, u, u, u);
        tbatch_t t;
        decode(&t, body);
        bool k0 = keep(fs, &t, 0);
        assert_true(k0 == keep(fs, &t, 1)); /* same user, same decision */
        assert_true(keep(fs, &t, 2));       /* not selected by the rule */
        assert_true(k0 == keep(fs, &t, 3)); /* anonymousId hashes the same way */
        char uid[16];
        int n = snprintf(uid, sizeof uid, "u%d", u);
        assert_true(k0 == (filter_sample_value(uid, (size_t)n) < 0.3));
        kept_hb += k0;
        tfree(&t);
    }
    assert_in_range(kept_hb, 30, 90); /* 60 expected; sd 6.5 */
    filter_set_free(fs);

    /* keep 0 drops all selected events, keep 1 keeps all */
    fs = must_load("filters:\n"
                   "  - {name: none, sample: {keep: 0}}\n");
    tbatch_t t;
    decode(
        &t,
        "{\"batch\":[{\"type\":\"track\",\"messageId\":\"m\",\"userId\":\"u1\",\"event\":\"x\"}]}");
    assert_false(keep(fs, &t, 0));
    filter_set_free(fs);
    fs = must_load("filters:\n"
                   "  - {name: all, sample: {keep: 1}}\n");
    assert_true(keep(fs, &t, 0));
    filter_set_free(fs);
    tfree(&t);
}

static void test_strip(void **state)
{
    (void)state;
    filter_set_t *fs = must_load(
        "filters:\n"
        "  - {name: s, strip: [properties.email, context.ip, traits.a.b, context.x.y]}\n");
    tbatch_t t;
    /* Batch context with ip: the event without its own context gets the stripped copy; the
     * event with its own context keeps the batch context out of it. */
    decode(&t, "{\"context\":{\"ip\":\"9.9.9.9\",\"locale\":\"en\"},\"batch\":[{\"type\":\"track\","
               "\"messageId\":\"m\",\"userId\":\"u1\",\"event\":\"e\",\"properties\":{\"email\":"
               "\"a@b\",\"email2\":\"keep\"}},"
               "{\"type\":\"track\",\"messageId\":\"m\",\"userId\":\"u1\",\"event\":\"e\","
               "\"context\":{\"ip\":\"1.1.1.1\",\"app\":\"z\"}},"
               "{\"type\":\"identify\",\"messageId\":\"m\",\"userId\":\"u\",\"traits\":{\"a\":{"
               "\"b\":1,\"c\":2},\"b\":3}},"
               "{\"type\":\"track\",\"messageId\":\"m\",\"userId\":\"u1\",\"event\":\"e\","
               "\"properties\":{\"other\":1}}]}");
    const char *before = record(&t, 3);
    char *copy = strdup(before);
    for (size_t i = 0; i < 4; i++)
        assert_true(keep(fs, &t, i));
    const char *r0 = record(&t, 0);
    assert_null(strstr(r0, "a@b"));
    assert_non_null(strstr(r0, "\"email2\":\"keep\""));
    assert_null(strstr(r0, "9.9.9.9"));
    assert_non_null(strstr(r0, "\"locale\":\"en\""));
    const char *r1 = record(&t, 1);
    assert_null(strstr(r1, "1.1.1.1"));
    assert_non_null(strstr(r1, "\"locale\":\"en\"")); /* own context merged with the batch's */
    assert_non_null(strstr(r1, "\"app\":\"z\""));
    const char *r2 = record(&t, 2);
    assert_non_null(strstr(r2, "\"traits\":{\"a\":{\"c\":2},\"b\":3}"));
    /* Event 3 had nothing to strip but the batch context's ip: its record changed only there. */
    const char *r3 = record(&t, 3);
    assert_null(strstr(r3, "9.9.9.9"));
    assert_non_null(strstr(copy, "9.9.9.9"));
    assert_int_equal(filter_rule_count(fs, 0), 4);
    free(copy);
    tfree(&t);
    filter_set_free(fs);
}

/* "hmac-sha256:" + hex of HMAC-SHA256(key, data) as the openssl command computes it (the check
 * is independent of our code path: another process, the key given as -hmac text). */
static void openssl_hmac(const char *key, const char *data, char out[FILTER_HASH_LEN + 1])
{
    char in[128], cmd[512];
    snprintf(in, sizeof in, "%s/hmac-in", tmpdir);
    FILE *f = fopen(in, "w");
    assert_non_null(f);
    fputs(data, f);
    fclose(f);
    snprintf(cmd, sizeof cmd, "openssl dgst -sha256 -hmac '%s' -r '%s'", key, in);
    FILE *p = popen(cmd, "r");
    assert_non_null(p);
    char line[256] = "";
    assert_non_null(fgets(line, sizeof line, p));
    assert_int_equal(pclose(p), 0);
    unlink(in);
    assert_true(strlen(line) > 64);
    memcpy(out, FILTER_HASH_PREFIX, FILTER_HASH_PREFIX_LEN);
    memcpy(out + FILTER_HASH_PREFIX_LEN, line, 64); /* "-r": "HEX *FILE" */
    out[FILTER_HASH_LEN] = '\0';
}

static void hmac_of(const char *key, size_t klen, const void *data, size_t len,
                    char out[FILTER_HASH_LEN + 1])
{
    filter_hmac_t *h = NULL;
    assert_int_equal(filter_hmac_new(key, klen, &h), FILTER_OK);
    assert_int_equal(filter_hmac(h, data, len, out), FILTER_OK);
    out[FILTER_HASH_LEN] = '\0';
    filter_hmac_free(h);
}

static void test_hash(void **state)
{
    (void)state;
    /* RFC 4231 test cases 2 and 6 (case 6: a 131-byte key, longer than the SHA-256 block). */
    char a[FILTER_HASH_LEN + 1], b[FILTER_HASH_LEN + 1], c[FILTER_HASH_LEN + 1];
    hmac_of("Jefe", 4, "what do ya want for nothing?", 28, a);
    assert_string_equal(a, "hmac-sha256:"
                           "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843");
    char k6[131];
    memset(k6, 0xaa, sizeof k6);
    hmac_of(k6, sizeof k6, "Test Using Larger Than Block-Size Key - Hash Key First", 54, a);
    assert_string_equal(a, "hmac-sha256:"
                           "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54");

    /* the keys of the rules below, against `openssl dgst -sha256 -hmac` */
    hmac_of("0123456789abcdef-test-key", 25, "a@b.com", 7, a);
    openssl_hmac("0123456789abcdef-test-key", "a@b.com", b);
    assert_string_equal(a, b);
    hmac_of("0123456789abcdef-test-key", 25, "a@b.com", 7, b); /* deterministic */
    assert_string_equal(a, b);
    hmac_of("fedcba9876543210-other-key", 26, "a@b.com", 7, c);
    assert_string_not_equal(a, c);
    openssl_hmac("fedcba9876543210-other-key", "a@b.com", b);
    assert_string_equal(c, b);
    hmac_of("0123456789abcdef-test-key", 25, "a@b.co", 6, c);
    assert_string_not_equal(a, c);
    assert_int_equal(strlen(a), FILTER_HASH_LEN);
    assert_memory_equal(a, "hmac-sha256:", 12);
    for (int i = FILTER_HASH_PREFIX_LEN; i < FILTER_HASH_LEN; i++)
        assert_non_null(strchr("0123456789abcdef", a[i]));

    /* the rule: in the record, numbers by their text, null untouched, objects hashed */
    filter_set_t *fs = must_load("filters:\n"
                                 "  - {name: h, hash: [traits.email, traits.n, traits.z, traits.o, "
                                 "context.traits.email], key_env: SLUICE_HASH_KEY}\n");
    tbatch_t t;
    decode(&t, "{\"batch\":[{\"type\":\"identify\",\"messageId\":\"m\",\"userId\":\"u\",\"traits\":"
               "{\"email\":\"a@b.com\",\"n\":12,\"z\":null,\"o\":{\"k\":1}},\"context\":{"
               "\"traits\":{\"email\":\"a@b.com\"}}}]}");
    assert_true(keep(fs, &t, 0));
    const char *r = record(&t, 0);
    char want[160];
    snprintf(want, sizeof want, "\"email\":\"%.*s\"", FILTER_HASH_LEN, a);
    assert_non_null(strstr(r, want)); /* same key, same value: same output (joins still work) */
    assert_non_null(strstr(strstr(r, want) + 1, want)); /* both places */
    openssl_hmac("0123456789abcdef-test-key", "12", c);
    snprintf(want, sizeof want, "\"n\":\"%.*s\"", FILTER_HASH_LEN, c);
    assert_non_null(strstr(r, want));
    assert_non_null(strstr(r, "\"z\":null"));
    assert_non_null(strstr(r, "\"o\":\"hmac-sha256:"));
    assert_null(strstr(r, "a@b.com"));
    tfree(&t);
    filter_set_free(fs);

    /* another key gives another output through the rule too */
    fs = must_load("filters:\n"
                   "  - {name: h, hash: [traits.email], key_env: SLUICE_OTHER_KEY}\n");
    decode(&t, "{\"batch\":[{\"type\":\"identify\",\"messageId\":\"m\",\"userId\":\"u\",\"traits\":"
               "{\"email\":\"a@b.com\"}}]}");
    assert_true(keep(fs, &t, 0));
    r = record(&t, 0);
    assert_null(strstr(r, a));
    assert_non_null(strstr(r, "\"email\":\"hmac-sha256:"));
    tfree(&t);
    filter_set_free(fs);
}

static void test_compile_errors(void **state)
{
    (void)state;
    static const struct {
        const char *yaml, *err;
    } cases[] = {
        {"filters: {a: 1}\n", "f.yaml:1: filters: expected a list of rules"},
        {"filters:\n"
         "  - {name: a, drop: {event: x}}\n"
         "  - {drop: {event: y}}\n",
         "f.yaml:3: filters[2]: needs a name"},
        {"filters:\n"
         "  - {name: a, drop: {event: x}}\n"
         "  - {name: a, drop: {event: y}}\n",
         "f.yaml:3: filters[2] (a): name \"a\" is used by filters[1]"},
        {"filters:\n"
         "  - {name: \"a b\", drop: {event: x}}\n",
         "f.yaml:2: filters[1]: name must be 1..64 of [A-Za-z0-9_.-]"},
        {"filters:\n"
         "  - {name: a}\n",
         "f.yaml:2: filters[1] (a): needs one of drop, allow, sample, strip, hash"},
        {"filters:\n"
         "  - {name: a, drop: {event: x}, allow: {event: y}}\n",
         "f.yaml:2: filters[1] (a): a rule has exactly one of drop"},
        {"filters:\n"
         "  - {name: a, block: {event: x}}\n",
         "f.yaml:2: filters[1] (a): unknown key \"block\""},
        {"filters:\n"
         "  - name: a\n"
         "    drop:\n"
         "      event: \"[x\"\n",
         "f.yaml:4: filters[1] (a): drop.event: \"[x\": unterminated '[' in pattern"},
        {"filters:\n"
         "  - {name: a, drop: {}}\n",
         "f.yaml:2: filters[1] (a): drop: needs at least one condition"},
        {"filters:\n"
         "  - {name: a, drop: {evnt: x}}\n",
         "f.yaml:2: filters[1] (a): drop: unknown condition \"evnt\""},
        {"filters:\n"
         "  - {name: a, drop: {type: click}}\n",
         "f.yaml:2: filters[1] (a): drop.type: \"click\" is not track"},
        {"filters:\n"
         "  - {name: a, drop: {event: []}}\n",
         "f.yaml:2: filters[1] (a): drop.event: the list is empty"},
        {"filters:\n"
         "  - {name: a, drop: {property: {\"a..b\": x}}}\n",
         "f.yaml:2: filters[1] (a): drop.property: \"a..b\": empty segment in path"},
        {"filters:\n"
         "  - {name: a, sample: {event: x}}\n",
         "f.yaml:2: filters[1] (a): sample: needs keep: FRACTION"},
        {"filters:\n"
         "  - {name: a, sample: {keep: 1.5}}\n",
         "f.yaml:2: filters[1] (a): sample.keep: expected a fraction from 0 to 1"},
        {"filters:\n"
         "  - {name: a, strip: [userId]}\n",
         "f.yaml:2: filters[1] (a): strip: \"userId\": paths must name a key inside properties"},
        {"filters:\n"
         "  - {name: a, strip: [properties]}\n",
         "f.yaml:2: filters[1] (a): strip: \"properties\": paths must name a key inside"},
        {"filters:\n"
         "  - {name: a, hash: [traits.email]}\n",
         "f.yaml:2: filters[1] (a): hash needs key_env"},
        {"filters:\n"
         "  - {name: a, hash: [traits.email], key_env: SLUICE_UNSET_KEY}\n",
         "f.yaml:2: filters[1] (a): key_env: environment variable SLUICE_UNSET_KEY is not set"},
        {"filters:\n"
         "  - {name: a, hash: [traits.email],\n"
         "     key_env: SLUICE_SHORT_KEY}\n",
         "f.yaml:3: filters[1] (a): key_env: environment variable SLUICE_SHORT_KEY must hold at "
         "least 16 bytes"},
        {"filters:\n"
         "  - {name: a, strip: [traits.x], key_env: SLUICE_HASH_KEY}\n",
         "f.yaml:2: filters[1] (a): key_env belongs to hash rules only"},
        {"filters:\n"
         "  - {name: a, drop: {event: x, event: y}}\n",
         "f.yaml:2: filters[1] (a): drop: duplicate key \"event\" (first at line 2)"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        filter_set_t *fs = NULL;
        char err[512];
        int rc = load_filters(cases[i].yaml, &fs, err, sizeof err);
        const char *base = strrchr(err, '/');
        base = base ? base + 1 : err;
        if (rc == 0 || strncmp(base, cases[i].err, strlen(cases[i].err)) != 0)
            fprintf(stderr, "case %zu: rc %d, got \"%s\", want \"%s\"\n", i, rc, base,
                    cases[i].err);
        assert_int_equal(rc, CONFIG_E_INVALID);
        assert_null(fs);
        assert_int_equal(strncmp(base, cases[i].err, strlen(cases[i].err)), 0);
    }
    /* an empty list is fine: no rules */
    filter_set_t *fs = must_load("filters: []\n");
    assert_int_equal(filter_set_count(fs), 0);
    filter_set_free(fs);
}

/* ---- reload ---- */

static const char *const rules_a = "write_keys: [{key: wk_1}]\n"
                                   "filters:\n"
                                   "  - {name: no_debug, drop: {event: \"debug.*\"}}\n";
static const char *const rules_b = "write_keys: [{key: wk_1}]\n"
                                   "threads: 3\n"
                                   "filters:\n"
                                   "  - {name: no_debug, drop: {event: \"debug.*\"}}\n"
                                   "  - {name: no_test, drop: {event: \"test.*\"}}\n";
static const char *const rules_bad = "write_keys: [{key: wk_1}]\n"
                                     "filters:\n"
                                     "  - {name: broken, drop: {event: \"[x\"}}\n";

static bool rt_keeps(reload_t *rl, const char *event_name)
{
    char body[256];
    snprintf(
        body, sizeof body,
        "{\"batch\":[{\"type\":\"track\",\"messageId\":\"m\",\"userId\":\"u1\",\"event\":\"%s\"}]}",
        event_name);
    tbatch_t t;
    decode(&t, body);
    reload_ticket_t tk;
    const runtime_t *rt = reload_enter(rl, &tk);
    bool k = false;
    assert_int_equal(filter_apply(rt->filters, &t.b, &t.b.events[0], &k), FILTER_OK);
    reload_exit(rl, tk);
    tfree(&t);
    return k;
}

static void test_reload(void **state)
{
    (void)state;
    write_yaml(rules_a);
    char *argv[] = {"sluice-collector", "--config", yaml_path, "--log-level", "off", NULL};
    int argc = 5;
    config_t cfg;
    config_action_t action;
    char err[512];
    assert_int_equal(config_from_args(&cfg, argc, argv, &action, err, sizeof err), 0);
    reload_t rl;
    assert_int_equal(reload_init(&rl, &cfg), 0);
    assert_null(cfg.filters); /* the runtime owns them now */
    assert_false(rt_keeps(&rl, "debug.x"));
    assert_true(rt_keeps(&rl, "test.x"));

    /* good: new rules, counters carried over, generation bumped */
    write_yaml(rules_b);
    assert_int_equal(reload_apply(&rl, &cfg, argc, argv), 0);
    reload_ticket_t tk;
    const runtime_t *rt = reload_enter(&rl, &tk);
    assert_int_equal(rt->generation, 2);
    assert_int_equal(filter_set_count(rt->filters), 2);
    assert_int_equal(filter_rule_count(rt->filters, 0), 1); /* no_debug's count survived */
    reload_exit(&rl, tk);
    assert_false(rt_keeps(&rl, "test.x"));

    /* bad: refused, old rules stay */
    write_yaml(rules_bad);
    assert_int_equal(reload_apply(&rl, &cfg, argc, argv), RELOAD_E_CONFIG);
    rt = reload_enter(&rl, &tk);
    assert_int_equal(rt->generation, 2);
    assert_int_equal(filter_set_count(rt->filters), 2);
    reload_exit(&rl, tk);
    assert_false(rt_keeps(&rl, "test.x"));
    /* a missing file too */
    unlink(yaml_path);
    assert_int_equal(reload_apply(&rl, &cfg, argc, argv), RELOAD_E_IO);
    assert_string_equal(reload_strerror(RELOAD_E_IO), "cannot read the configuration file");
    assert_false(rt_keeps(&rl, "debug.y"));

    base_buf_t m;
    base_buf_init(&m, 1 << 16);
    assert_int_equal(reload_render_metrics(&m, &rl), 0);
    assert_int_equal(base_buf_append(&m, "", 1), 0);
    assert_non_null(strstr(m.data, "sluice_config_reloads_total{result=\"ok\"} 1\n"));
    assert_non_null(strstr(m.data, "sluice_config_reloads_total{result=\"failed\"} 2\n"));
    assert_non_null(
        strstr(m.data, "sluice_filter_events_total{rule=\"no_debug\",action=\"drop\"} 2\n"));
    assert_non_null(
        strstr(m.data, "sluice_filter_events_total{rule=\"no_test\",action=\"drop\"} 2\n"));
    base_buf_free(&m);
    reload_free(&rl);
    config_free(&cfg);
}

static void diff_collect(const char *key, void *ud)
{
    char *out = ud;
    strcat(out, key);
    strcat(out, ";");
}

static void test_config_diff(void **state)
{
    (void)state;
    config_t a, b;
    config_init(&a);
    config_init(&b);
    char got[512] = "";
    config_diff(&a, &b, diff_collect, got);
    assert_string_equal(got, "");
    b.threads = 4;
    free(b.listen);
    b.listen = strdup("127.0.0.1:1");
    b.log_level = LOG_DEBUG;
    config_diff(&a, &b, diff_collect, got);
    assert_string_equal(got, "listen;threads;log_level;");
    config_free(&a);
    config_free(&b);
}

/* Readers racing reloads: under ASan a reader touching a freed runtime fails the test. */
typedef struct race {
    reload_t *rl;
    atomic_int stop;
    atomic_long reads;
} race_t;

static void *reader_thread(void *arg)
{
    race_t *r = arg;
    tbatch_t t;
    decode(&t, "{\"batch\":[{\"type\":\"track\",\"messageId\":\"m\",\"userId\":\"u1\",\"event\":"
               "\"debug.x\"}]}");
    while (!atomic_load(&r->stop)) {
        reload_ticket_t tk;
        const runtime_t *rt = reload_enter(r->rl, &tk);
        bool k = true;
        assert_int_equal(filter_apply(rt->filters, &t.b, &t.b.events[0], &k), FILTER_OK);
        assert_false(k); /* both versions drop debug.* */
        reload_exit(r->rl, tk);
        atomic_fetch_add(&r->reads, 1);
    }
    tfree(&t);
    return NULL;
}

static void test_reload_races_readers(void **state)
{
    (void)state;
    write_yaml(rules_a);
    char *argv[] = {"sluice-collector", "--config", yaml_path, "--log-level", "off", NULL};
    config_t cfg;
    config_action_t action;
    char err[512];
    assert_int_equal(config_from_args(&cfg, 5, argv, &action, err, sizeof err), 0);
    reload_t rl;
    assert_int_equal(reload_init(&rl, &cfg), 0);
    race_t r = {.rl = &rl};
    atomic_init(&r.stop, 0);
    atomic_init(&r.reads, 0);
    pthread_t th[3];
    for (int i = 0; i < 3; i++)
        assert_int_equal(pthread_create(&th[i], NULL, reader_thread, &r), 0);
    /* The readers must be running before the reloads race them (on a loaded machine 40 reloads
     * can otherwise finish before a reader thread is first scheduled). Bounded: 10 s. */
    for (int w = 0; w < 10000 && atomic_load(&r.reads) == 0; w++) {
        struct timespec d = {0, 1000 * 1000};
        nanosleep(&d, NULL);
    }
    for (int i = 0; i < 40; i++) {
        write_yaml(i % 2 ? rules_a : rules_b);
        assert_int_equal(reload_apply(&rl, &cfg, 5, argv), 0);
    }
    atomic_store(&r.stop, 1);
    for (int i = 0; i < 3; i++)
        pthread_join(th[i], NULL);
    assert_true(atomic_load(&r.reads) > 0);
    reload_ticket_t tk;
    const runtime_t *rt = reload_enter(&rl, &tk);
    assert_int_equal(rt->generation, 41);
    /* every drop of every version was carried into the current counters */
    assert_int_equal((long)filter_rule_count(rt->filters, 0), atomic_load(&r.reads));
    reload_exit(&rl, tk);
    reload_free(&rl);
    config_free(&cfg);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_glob),
        cmocka_unit_test(test_spec_example_loads),
        cmocka_unit_test(test_match_conditions),
        cmocka_unit_test(test_sampling_consistent),
        cmocka_unit_test(test_strip),
        cmocka_unit_test(test_hash),
        cmocka_unit_test(test_compile_errors),
        cmocka_unit_test(test_reload),
        cmocka_unit_test(test_config_diff),
        cmocka_unit_test(test_reload_races_readers),
    };
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
