/*
 * Unit tests for the config module (collector/config.c, config_keys.c, config_doc.c). Fixtures live
 * in tests/collector/configs/ (ctest runs with tests/collector as the working directory); error
 * cases write small files to a temp dir so each case shows its YAML next to the line number it
 * expects.
 *
 * `collector_test_config --print-reference` prints the generated reference: that is how
 * collector/CONFIG.md is regenerated, and test_reference_up_to_date fails when they differ.
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

#include "config_internal.h"
#include "config_yaml.h"
#include "log.h"

static char tmpdir[64];
static char tmpfile_path[128];

static int group_setup(void **state)
{
    snprintf(tmpdir, sizeof tmpdir, "/tmp/sluice-test-config-XXXXXX");
    if (mkdtemp(tmpdir) == NULL) return -1;
    snprintf(tmpfile_path, sizeof tmpfile_path, "%s/t.yaml", tmpdir);
    setenv("SLUICE_TEST_ADMIN_TOKEN", "admin-secret", 1);
    setenv("SLUICE_TEST_KEY_WEB", "wk_from_env", 1);
    setenv("SLUICE_TEST_EMPTY", "", 1);
    unsetenv("SLUICE_TEST_UNSET_VAR");
    return 0;
}

static int group_teardown(void **state)
{
    unlink(tmpfile_path);
    rmdir(tmpdir);
    return 0;
}

static void write_tmp(const char *yaml)
{
    FILE *f = fopen(tmpfile_path, "w");
    assert_non_null(f);
    fputs(yaml, f);
    fclose(f);
}

/* Loads yaml over the defaults; returns the rc and leaves the message in err. */
static int load_yaml(config_t *c, const char *yaml, char *err, size_t errlen)
{
    write_tmp(yaml);
    config_init(c);
    err[0] = '\0';
    return config_load_file(c, tmpfile_path, err, errlen);
}

static void test_defaults(void **state)
{
    config_t c;
    config_init(&c);
    assert_string_equal(c.listen, "0.0.0.0:8080");
    assert_int_equal(c.threads, 2);
    assert_string_equal(c.data_dir, "./sluice-data");
    assert_null(c.admin_token);
    assert_null(c.write_keys);
    assert_int_equal(c.n_write_keys, 0);
    assert_false(c.dev);
    assert_int_equal(c.log_level, LOG_INFO);
    assert_int_equal(c.event_bytes, 32 * 1024);
    assert_int_equal(c.body_bytes, 512 * 1024);
    assert_int_equal(c.max_connections, 10000);
    assert_true(c.rate_per_key == 0);
    assert_int_equal(c.max_events, 10000);
    assert_int_equal(c.header_bytes, 16 * 1024);
    assert_int_equal(c.header_timeout_ms, 10000);
    assert_int_equal(c.idle_timeout_ms, 60000);
    assert_int_equal(c.max_depth, 16);
    assert_int_equal(c.max_users, 1000000);
    assert_null(c.brokers);
    assert_int_equal(c.kafka_format, 0); /* PROTO_FMT_MSGPACK */
    assert_string_equal(c.topic_events, "events");
    assert_string_equal(c.topic_rejected, "events_rejected");
    assert_string_equal(c.topic_pql, "pql_signals");
    assert_null(c.kafka_properties);
    assert_int_equal(c.n_kafka_properties, 0);
    assert_int_equal(c.delivery_timeout_ms, 5000);
    assert_int_equal(c.kafka_queue_bytes, 256ull * 1024 * 1024);
    assert_int_equal(c.shutdown_timeout_ms, 10000);
    assert_int_equal(c.dedup_window_ms, 3600000);
    assert_int_equal(c.dedup_max_memory, 256ull * 1024 * 1024);
    assert_int_equal(c.dedup_snapshot_interval_ms, 60000);
    config_free(&c);
    /* config_free leaves a config that can be freed again. */
    config_free(&c);

    /* Every table default parses and lies within its own bounds. */
    config_init(&c);
    size_t n_keys;
    const config_key_t *keys = config__keys(&n_keys);
    for (size_t i = 0; i < n_keys; i++) {
        config_why_t why;
        const config_key_t *k = &keys[i];
        if (k->def == NULL) continue;
        if (config__set_scalar(&c, k, k->def, false, &why) != CONFIG_OK)
            fail_msg("default of %s: %s", k->name, why.text);
    }
    config_free(&c);
}

static void test_full_file(void **state)
{
    config_t c;
    char err[256] = "";
    config_init(&c);
    int rc = config_load_file(&c, "configs/full.yaml", err, sizeof err);
    if (rc != 0) fail_msg("%s", err);
    assert_string_equal(c.listen, "127.0.0.1:9090");
    assert_int_equal(c.threads, 4);
    assert_string_equal(c.data_dir, "/tmp/sluice-test-data");
    assert_string_equal(c.admin_token, "admin-secret");
    assert_int_equal(c.n_write_keys, 3);
    assert_string_equal(c.write_keys[0].key, "wk_from_env");
    assert_string_equal(c.write_keys[0].source, "web");
    assert_string_equal(c.write_keys[1].key, "wk_test_123");
    assert_string_equal(c.write_keys[1].source, "test");
    assert_string_equal(c.write_keys[2].key, "wk_plain");
    assert_string_equal(c.write_keys[2].source, "default");
    assert_false(c.dev);
    assert_int_equal(c.log_level, LOG_DEBUG);
    assert_int_equal(c.event_bytes, 16 * 1024);
    assert_int_equal(c.body_bytes, 1000000);
    assert_int_equal(c.max_connections, 500);
    assert_true(c.rate_per_key == 12.5);
    assert_int_equal(c.max_events, 2000);
    assert_int_equal(c.header_bytes, 8192);
    assert_int_equal(c.header_timeout_ms, 1500);
    assert_int_equal(c.idle_timeout_ms, 120000);
    assert_int_equal(c.max_depth, 8);
    assert_int_equal(c.max_users, 5000);
    assert_string_equal(c.brokers, "kafka1:9092,kafka2:9092");
    assert_int_equal(c.kafka_format, 1);
    assert_string_equal(c.topic_events, "ev");
    assert_string_equal(c.topic_rejected, "ev_rej");
    assert_string_equal(c.topic_pql, "ev_pql");
    assert_int_equal(c.n_kafka_properties, 3);
    assert_string_equal(c.kafka_properties[0].key, "security.protocol");
    assert_string_equal(c.kafka_properties[0].value, "SASL_SSL");
    assert_string_equal(c.kafka_properties[1].key, "linger.ms");
    assert_string_equal(c.kafka_properties[1].value, "20");
    assert_string_equal(c.kafka_properties[2].key, "enable.idempotence");
    assert_string_equal(c.kafka_properties[2].value, "true");
    assert_int_equal(c.delivery_timeout_ms, 3000);
    assert_int_equal(c.kafka_queue_bytes, 1ull << 30);
    assert_int_equal(c.shutdown_timeout_ms, 300000);
    assert_int_equal(c.dedup_window_ms, 2 * 3600000);
    assert_int_equal(c.dedup_max_memory, 64ull << 20);
    assert_int_equal(c.dedup_snapshot_interval_ms, 30000);
    assert_int_equal(config_validate(&c, err, sizeof err), 0);
    config_free(&c);
}

static void test_empty_and_minimal_files(void **state)
{
    config_t c;
    char err[256];
    config_init(&c);
    assert_int_equal(config_load_file(&c, "configs/empty.yaml", err, sizeof err), 0);
    assert_int_equal(c.threads, 2);
    assert_int_equal(config_load_file(&c, "configs/minimal.yaml", err, sizeof err), 0);
    assert_int_equal(c.n_write_keys, 1);
    assert_string_equal(c.write_keys[0].key, "wk_min");
    /* Loading again replaces the list instead of appending to it. */
    assert_int_equal(config_load_file(&c, "configs/minimal.yaml", err, sizeof err), 0);
    assert_int_equal(c.n_write_keys, 1);
    config_free(&c);

    config_init(&c);
    assert_int_equal(config_load_file(&c, "configs/no-such-file.yaml", err, sizeof err),
                     CONFIG_E_IO);
    assert_non_null(strstr(err, "configs/no-such-file.yaml: cannot open: "));
    config_free(&c);
}

/* One YAML text and the error it must produce ("t.yaml:" + want). */
typedef struct bad_case {
    const char *yaml;
    const char *want;
} bad_case_t;

static const bad_case_t bad_cases[] = {
    /* each type's parse errors, with the line of the value */
    {"threads: two\n", "t.yaml:1: threads: expected a non-negative integer"},
    {"threads: -1\n", "t.yaml:1: threads: expected a non-negative integer"},
    {"\nthreads: 0\n", "t.yaml:2: threads: 0 is out of range 1..64"},
    {"threads: 65\n", "t.yaml:1: threads: 65 is out of range 1..64"},
    {"threads: 99999999999999999999999\n", "t.yaml:1: threads: number too large"},
    {"threads:\n", "t.yaml:1: threads: needs a value"},
    {"threads: [1, 2]\n", "t.yaml:1: threads: expected a single value"},
    {"limits:\n  body_bytes: 12XB\n",
     "t.yaml:2: limits.body_bytes: expected a size such as 512KiB"},
    {"limits:\n  body_bytes: KiB\n", "t.yaml:2: limits.body_bytes: expected a size"},
    {"limits:\n  body_bytes: 2GiB\n",
     "t.yaml:2: limits.body_bytes: 2GiB is out of range 1KiB..1GiB"},
    {"limits:\n  event_bytes: 99999999999GiB\n", "t.yaml:2: limits.event_bytes: expected a size"},
    {"limits:\n\n  header_timeout: 10\n",
     "t.yaml:3: limits.header_timeout: expected a duration such as 10s"},
    {"limits: {idle_timeout: 5 minutes}\n", "t.yaml:1: limits.idle_timeout: expected a duration"},
    {"limits: {idle_timeout: 10ms}\n",
     "t.yaml:1: limits.idle_timeout: 10ms is out of range 100ms..1d"},
    {"dev: maybe\n", "t.yaml:1: dev: expected true or false"},
    {"kafka:\n  format: avro\n", "t.yaml:2: kafka.format: expected one of msgpack|json"},
    {"log_level: loud\n", "t.yaml:1: log_level: expected one of debug|info|warn/warning|error|off"},
    {"limits: {rate_per_key: fast}\n", "t.yaml:1: limits.rate_per_key: expected a number"},
    {"limits: {rate_per_key: -1}\n",
     "t.yaml:1: limits.rate_per_key: -1 is out of range 0..1000000000"},
    {"limits: {rate_per_key: .nan}\n", "t.yaml:1: limits.rate_per_key: expected a number"},
    {"listen: [a]\n", "t.yaml:1: listen: expected a single value"},
    /* structure */
    {"listen: 0.0.0.0:1\n\nlisten2: x\n", "t.yaml:3: listen2: unknown key"},
    {"kafka:\n  topics:\n    other: x\n", "t.yaml:3: kafka.topics.other: unknown key"},
    {"limits.body_bytes: 1KiB\n", "t.yaml:1: limits.body_bytes: unknown key"},
    {"limits: 5\n", "t.yaml:1: limits: expected a mapping"},
    {"threads: 2\nthreads: 3\n", "t.yaml:2: config: duplicate key \"threads\" (first at line 1)"},
    {"- a\n- b\n", "t.yaml:1: the top level must be a mapping"},
    {"listen: [unclosed\n", "t.yaml:2: YAML: "},
    {"threads: 2\n---\nthreads: 3\n", "t.yaml:3: only one YAML document is allowed"},
    /* filters (SPEC §5; the full grammar is in test_filter.c) */
    {"filters:\n  - {name: x, drop: {event: \"[y\"}}\n",
     "t.yaml:2: filters[1] (x): drop.event: \"[y\": unterminated '[' in pattern"},
    /* pql (SPEC §6; the full grammar is in test_pql.c) */
    {"threads: 2\npql:\n  rules:\n    - {name: a, metric: velocity, at_least: 1, points: 1}\n",
     "t.yaml:4: pql.rules a: metric must be one of active_users, events"},
    {"pql:\n  tiers: {hot: many}\n", "t.yaml:2: pql.tiers.hot: expected a score threshold"},
    {"spool: {max_bytes: 1KiB}\n",
     "t.yaml:1: spool.max_bytes: 1KiB is out of range 1MiB..16384GiB"},
    {"spool: {enabled: maybe}\n", "t.yaml:1: spool.enabled: expected true or false"},
    /* dedup (SPEC §5) */
    {"dedup: {window: 1 hour}\n", "t.yaml:1: dedup.window: expected a duration"},
    {"dedup: {window: 8d}\n", "t.yaml:1: dedup.window: 8d is out of range 0..7d"},
    {"dedup: {max_memory: 512KiB}\n",
     "t.yaml:1: dedup.max_memory: 512KiB is out of range 1MiB..64GiB"},
    {"dedup: {snapshot_interval: 10ms}\n",
     "t.yaml:1: dedup.snapshot_interval: 10ms is out of range 1s..1d"},
    {"dedup: {size: 5}\n", "t.yaml:1: dedup.size: unknown key"},
    /* write keys */
    {"write_keys:\n  - {key_env: SLUICE_TEST_UNSET_VAR, source: web}\n",
     "t.yaml:2: write_keys.key_env: environment variable SLUICE_TEST_UNSET_VAR is not set"},
    {"write_keys:\n  - {key_env: SLUICE_TEST_EMPTY}\n",
     "t.yaml:2: write_keys.key_env: environment variable SLUICE_TEST_EMPTY is empty"},
    {"write_keys:\n  - {key: a}\n  - {key: b}\n  - {key: a, source: x}\n",
     "t.yaml:4: write_keys: duplicate write key (same as line 2)"},
    {"write_keys:\n  - {key: a, key_env: SLUICE_TEST_KEY_WEB}\n",
     "t.yaml:2: write_keys: key and key_env are exclusive"},
    {"write_keys:\n  - {source: web}\n", "t.yaml:2: write_keys: entry needs key or key_env"},
    {"write_keys:\n  - {key: a, sauce: web}\n",
     "t.yaml:2: write_keys: unknown key \"sauce\" (expected key, key_env or source)"},
    {"write_keys:\n  - {key: a, source: \"we b\"}\n",
     "t.yaml:2: write_keys: source must be 1..64 of [A-Za-z0-9_.-]"},
    {"write_keys:\n  - {key: \"a b\"}\n", "t.yaml:2: write_keys: write key must be visible ASCII"},
    {"write_keys:\n  - {key: \"\"}\n", "t.yaml:2: write_keys: write key is empty"},
    {"write_keys:\n  - wk_1\n", "t.yaml:2: write_keys: expected {key: ..., source: ...}"},
    {"write_keys: {key: a}\n", "t.yaml:1: write_keys: expected a list"},
    /* env indirection and properties */
    {"admin_token_env: SLUICE_TEST_UNSET_VAR\n",
     "t.yaml:1: admin_token_env: environment variable SLUICE_TEST_UNSET_VAR is not set"},
    {"admin_token: x\nadmin_token_env: SLUICE_TEST_ADMIN_TOKEN\n",
     "t.yaml:2: admin_token_env: admin_token and admin_token_env are exclusive (other at line 1)"},
    {"kafka:\n  properties:\n    a: {b: c}\n",
     "t.yaml:3: kafka.properties.a: expected a string, number or boolean"},
    {"kafka:\n  properties: [a]\n",
     "t.yaml:2: kafka.properties: expected a map of librdkafka property: value"},
    {"kafka:\n  properties: {a: 1, a: 2}\n",
     "t.yaml:2: kafka.properties: duplicate key \"a\" (first at line 2)"},
};

static void test_bad_files(void **state)
{
    for (size_t i = 0; i < sizeof bad_cases / sizeof bad_cases[0]; i++) {
        config_t c;
        char err[512];
        int rc = load_yaml(&c, bad_cases[i].yaml, err, sizeof err);
        if (rc >= 0) fail_msg("case %zu loaded but should fail with: %s", i, bad_cases[i].want);
        char want[512];
        snprintf(want, sizeof want, "%s/%s", tmpdir, bad_cases[i].want);
        if (strncmp(err, want, strlen(want)) != 0)
            fail_msg("case %zu:\n  got:  %s\n  want: %s...", i, err, want);
        /* Errors never show a write key. */
        assert_null(strstr(err, "wk_from_env"));
        config_free(&c);
    }
}

/* The spool section (SPEC §7), once "not supported", loads (configs/spool.yaml). */
static void test_spool_fixture(void **state)
{
    config_t c;
    char err[256];
    config_init(&c);
    assert_true(c.spool_enabled);
    assert_int_equal(c.spool_max_bytes, 1ull << 30);
    assert_int_equal(c.spool_segment_bytes, 64ull << 20);
    assert_int_equal(config_load_file(&c, "configs/spool.yaml", err, sizeof err), CONFIG_OK);
    assert_false(c.spool_enabled);
    assert_int_equal(c.spool_max_bytes, 2ull << 30);
    assert_int_equal(c.spool_segment_bytes, 1ull << 20);
    config_free(&c);
}

static int from_args(config_t *c, config_action_t *act, char *err, size_t errlen, ...)
{
    char *argv[32] = {"sluice-collector"};
    int argc = 1;
    va_list ap;
    va_start(ap, errlen);
    for (char *a; (a = va_arg(ap, char *)) != NULL && argc < 31;)
        argv[argc++] = a;
    va_end(ap);
    err[0] = '\0';
    *act = (config_action_t)-1;
    return config_from_args(c, argc, argv, act, err, errlen);
}

static void test_cli_overrides_file(void **state)
{
    config_t c;
    config_action_t act;
    char err[256];
    int rc = from_args(&c, &act, err, sizeof err, "--threads", "8", "--config", "configs/full.yaml",
                       "--listen=[::1]:0", "--brokers", "", "--data-dir", "/d", "--admin-token",
                       "tok", "--log-level", "warn", "--dev", NULL);
    if (rc != 0) fail_msg("%s", err);
    assert_int_equal(act, CONFIG_RUN);
    assert_int_equal(c.threads, 8);
    assert_string_equal(c.listen, "[::1]:0");
    assert_string_equal(c.brokers, "");
    assert_string_equal(c.data_dir, "/d");
    assert_string_equal(c.admin_token, "tok");
    assert_int_equal(c.log_level, LOG_WARN);
    assert_true(c.dev);
    /* Not overridden: from the file. */
    assert_int_equal(c.max_events, 2000);
    assert_int_equal(c.n_write_keys, 3);
    config_free(&c);

    /* --write-key replaces the file's keys; split at the last '=' before a source name. */
    rc = from_args(&c, &act, err, sizeof err, "--config", "configs/full.yaml", "--write-key", "k1",
                   "--write-key", "k2=web", "--write-key=a=b=mobile", "--write-key",
                   "base64ish==", "--write-key", "k5=not a source", NULL);
    assert_int_equal(rc, CONFIG_E_INVALID); /* "k5=not a source" is a key with spaces */
    assert_string_equal(err, "--write-key: write key must be visible ASCII characters without "
                             "':' or spaces");
    config_free(&c);
    rc = from_args(&c, &act, err, sizeof err, "--config", "configs/full.yaml", "--write-key", "k1",
                   "--write-key", "k2=web", "--write-key=a=b=mobile", "--write-key",
                   "base64ish==", NULL);
    if (rc != 0) fail_msg("%s", err);
    assert_int_equal(c.n_write_keys, 4);
    assert_string_equal(c.write_keys[0].key, "k1");
    assert_string_equal(c.write_keys[0].source, "default");
    assert_string_equal(c.write_keys[1].key, "k2");
    assert_string_equal(c.write_keys[1].source, "web");
    assert_string_equal(c.write_keys[2].key, "a=b");
    assert_string_equal(c.write_keys[2].source, "mobile");
    assert_string_equal(c.write_keys[3].key, "base64ish==");
    assert_string_equal(c.write_keys[3].source, "default");
    config_free(&c);
}

/* The config (flag and YAML) and log_level_parse() agree on every spelling: "warning" is
 * "warn" everywhere, and what one refuses the other refuses. */
static void test_log_level_spellings(void **state)
{
    static const char *const names[] = {"debug", "info", "warn", "warning",      "error",
                                        "off",   "loud", "WARN", "warn/warning", "warnin"};
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) {
        int want = log_level_parse(names[i]);
        config_t c;
        config_action_t act;
        char err[256], yaml[64];
        int rc = from_args(&c, &act, err, sizeof err, "--log-level", names[i], "--dev", NULL);
        if (want < 0) {
            if (rc == 0) fail_msg("--log-level %s accepted, log_level_parse refuses it", names[i]);
        } else {
            if (rc != 0) fail_msg("--log-level %s: %s", names[i], err);
            assert_int_equal(c.log_level, want);
        }
        config_free(&c);
        snprintf(yaml, sizeof yaml, "log_level: %s\n", names[i]);
        rc = load_yaml(&c, yaml, err, sizeof err);
        if (want < 0) {
            if (rc >= 0) fail_msg("log_level: %s accepted, log_level_parse refuses it", names[i]);
        } else {
            if (rc < 0) fail_msg("log_level: %s: %s", names[i], err);
            assert_int_equal(c.log_level, want);
        }
        config_free(&c);
    }
    assert_int_equal(log_level_parse("warning"), LOG_WARN);
    assert_int_equal(log_level_parse("warn"), LOG_WARN);
}

static void test_cli_actions(void **state)
{
    config_t c;
    config_action_t act;
    char err[256];
    assert_int_equal(
        from_args(&c, &act, err, sizeof err, "--write-key", "k", "--check-config", NULL), 0);
    assert_int_equal(act, CONFIG_CHECK);
    config_free(&c);
    /* --check-config validates fully: a config without keys fails. */
    assert_int_equal(from_args(&c, &act, err, sizeof err, "--check-config", NULL),
                     CONFIG_E_INVALID);
    assert_string_equal(err, "no write key configured (use --write-key or write_keys, or --dev)");
    config_free(&c);
    assert_int_equal(from_args(&c, &act, err, sizeof err, "--check-config", "--config",
                               "configs/bad_spool.yaml", NULL),
                     CONFIG_E_INVALID);
    assert_non_null(strstr(err, "bad_spool.yaml:2: spool.segment_bytes: 1KiB is out of range"));
    config_free(&c);
    /* --help and --version win over everything, even a broken config file. */
    assert_int_equal(from_args(&c, &act, err, sizeof err, "--config", "nope.yaml", "--help", NULL),
                     0);
    assert_int_equal(act, CONFIG_HELP);
    config_free(&c);
    assert_int_equal(from_args(&c, &act, err, sizeof err, "-h", NULL), 0);
    assert_int_equal(act, CONFIG_HELP);
    config_free(&c);
    assert_int_equal(from_args(&c, &act, err, sizeof err, "--version", NULL), 0);
    assert_int_equal(act, CONFIG_VERSION);
    config_free(&c);
    assert_int_equal(from_args(&c, &act, err, sizeof err, "--dev", NULL), 0);
    assert_int_equal(act, CONFIG_RUN);
    assert_true(c.dev);
    config_free(&c);
}

static void test_cli_errors(void **state)
{
    static const struct {
        const char *a1, *a2;
        const char *want;
    } cases[] = {
        {"--threads", "0", "--threads: 0 is out of range 1..64"},
        {"--threads", "x", "--threads: expected a non-negative integer"},
        {"--log-level", "loud", "--log-level: expected one of debug|info|warn/warning|error|off"},
        {"--bogus", NULL, "--bogus: unknown option (see --help)"},
        {"--listen", NULL, "--listen: needs a value ADDR:PORT"},
        {"--dev=1", NULL, "--dev: takes no value"},
        {"stray", NULL, "unexpected argument \"stray\""},
        {"--listen", "nope", "listen: \"nope\" is not IPV4:PORT, [IPV6]:PORT or localhost:PORT"},
        {"--config", "configs/missing.yaml", "configs/missing.yaml: cannot open: "},
        {"--write-key", "", "--write-key: write key is empty"},
        {"--write-key", "a:b", "--write-key: write key must be visible ASCII"},
        {"--public-url", "collect.example.com", "public_url: \"collect.example.com\" is not"},
        {"--public-url", "ftp://x", "public_url: \"ftp://x\" is not"},
        {"--public-url", "https://", "public_url: \"https://\" is not"},
        {"--public-url", "https:///p", "public_url: \"https:///p\" is not"},
        {"--public-url", "https://a.example/?q", "public_url: \"https://a.example/?q\" is not"},
        {"--public-url", "http://a\"b", "public_url: \"http://a\"b\" is not"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        config_t c;
        config_action_t act;
        char err[256];
        int rc = cases[i].a2
                     ? from_args(&c, &act, err, sizeof err, "--dev", cases[i].a1, cases[i].a2, NULL)
                     : from_args(&c, &act, err, sizeof err, "--dev", cases[i].a1, NULL);
        if (rc >= 0 || strncmp(err, cases[i].want, strlen(cases[i].want)) != 0)
            fail_msg("case %zu: rc %d, got \"%s\", want \"%s\"", i, rc, err, cases[i].want);
        config_free(&c);
    }
    config_t c;
    config_action_t act;
    char err[256];
    assert_true(from_args(&c, &act, err, sizeof err, "--config", "a", "--config", "b", NULL) < 0);
    assert_string_equal(err, "--config: given more than once");
    config_free(&c);
    /* A good public_url, with a port and a path prefix. */
    assert_int_equal(from_args(&c, &act, err, sizeof err, "--dev", "--public-url",
                               "https://collect.example.com:8443/sluice/", NULL),
                     0);
    assert_string_equal(c.public_url, "https://collect.example.com:8443/sluice/");
    config_free(&c);
}

static void test_validate(void **state)
{
    config_t c;
    char err[256];
    config_init(&c);
    assert_int_equal(config_validate(&c, err, sizeof err), CONFIG_E_INVALID);
    assert_string_equal(err, "no write key configured (use --write-key or write_keys, or --dev)");
    c.dev = true;
    assert_int_equal(config_validate(&c, err, sizeof err), 0);
    c.event_bytes = c.body_bytes + 1;
    assert_int_equal(config_validate(&c, err, sizeof err), CONFIG_E_INVALID);
    assert_non_null(strstr(err, "limits.event_bytes (524289) must not exceed limits.body_bytes"));
    c.event_bytes = c.body_bytes;
    assert_int_equal(config_validate(&c, err, sizeof err), 0);
    c.threads = 65;
    assert_int_equal(config_validate(&c, err, sizeof err), CONFIG_E_INVALID);
    assert_string_equal(err, "threads: 65 is out of range 1..64");
    c.threads = 2;
    free(c.topic_pql);
    c.topic_pql = strdup("events");
    assert_int_equal(config_validate(&c, err, sizeof err), CONFIG_E_INVALID);
    assert_string_equal(err, "kafka.topics.pql: same topic as kafka.topics.events");
    config_free(&c);

    /* Duplicate keys across --write-key flags. */
    config_action_t act;
    assert_int_equal(
        from_args(&c, &act, err, sizeof err, "--write-key", "k=a", "--write-key", "k=b", NULL),
        CONFIG_E_INVALID);
    assert_string_equal(err, "write key 2: duplicate of write key 1");
    config_free(&c);

    /* A too-small error buffer truncates, never overflows. */
    char tiny[8];
    config_init(&c);
    assert_int_equal(config_validate(&c, tiny, sizeof tiny), CONFIG_E_INVALID);
    assert_string_equal(tiny, "no writ");
    config_free(&c);
}

static void test_listen_addr(void **state)
{
    static const struct {
        const char *listen;
        const char *host;
        int port;
    } ok[] = {{"0.0.0.0:8080", "0.0.0.0", 8080},
              {"127.0.0.1:0", "127.0.0.1", 0},
              {"[::]:443", "::", 443},
              {"[::1]:65535", "::1", 65535},
              {"localhost:9000", "127.0.0.1", 9000}};
    static const char *const bad[] = {
        "",       "8080",    ":8080",           "1.2.3.4:", "1.2.3.4:65536", "1.2.3.4:-1",
        "::1:80", "[::1]80", "host.example:80", "1.2.3:80", "1.2.3.4:8x",    "[1.2.3.4]:80"};
    config_t c;
    config_init(&c);
    for (size_t i = 0; i < sizeof ok / sizeof ok[0]; i++) {
        free(c.listen);
        c.listen = strdup(ok[i].listen);
        char host[64];
        int port = -1;
        if (config_listen_addr(&c, host, sizeof host, &port) != 0)
            fail_msg("%s refused", ok[i].listen);
        assert_string_equal(host, ok[i].host);
        assert_int_equal(port, ok[i].port);
    }
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        free(c.listen);
        c.listen = strdup(bad[i]);
        char host[64];
        int port;
        if (config_listen_addr(&c, host, sizeof host, &port) == 0)
            fail_msg("\"%s\" accepted", bad[i]);
    }
    /* host buffer too small */
    free(c.listen);
    c.listen = strdup("127.0.0.1:80");
    char small[4];
    int port;
    assert_true(config_listen_addr(&c, small, sizeof small, &port) < 0);
    config_free(&c);
}

/* admin_listen: an address of its own, not the listen one (a wildcard overlaps any host). */
static void test_admin_listen_validate(void **state)
{
    (void)state;
    static const struct {
        const char *listen, *admin;
        bool ok;
    } cases[] = {
        {"0.0.0.0:8080", "127.0.0.1:9090", true},
        {"127.0.0.1:0", "127.0.0.1:0", true}, /* both picked by the kernel */
        {"10.0.0.1:8080", "127.0.0.1:8080", true},
        {"0.0.0.0:8080", "127.0.0.1:8080", false},
        {"127.0.0.1:8080", "127.0.0.1:8080", false},
        {"127.0.0.1:8080", "[::]:8080", false},
        {"127.0.0.1:8080", "admin:9090", false},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        config_t c;
        config_init(&c);
        c.dev = true;
        free(c.listen);
        c.listen = strdup(cases[i].listen);
        c.admin_listen = strdup(cases[i].admin);
        char err[256] = "";
        int rc = config_validate(&c, err, sizeof err);
        if ((rc == 0) != cases[i].ok || (!cases[i].ok && strncmp(err, "admin_listen: ", 14) != 0))
            fail_msg("case %zu: rc %d \"%s\"", i, rc, err);
        config_free(&c);
    }
}

static char *capture(void (*fn)(FILE *))
{
    char *buf = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&buf, &len);
    assert_non_null(f);
    fn(f);
    fclose(f);
    return buf;
}

static void test_help_lists_everything(void **state)
{
    char *help = capture(config_print_help);
    /* The docs are word-wrapped: compare them with the help's whitespace runs collapsed. */
    char *flat = strdup(help);
    size_t o = 0;
    for (size_t i = 0; help[i]; i++) {
        bool ws = help[i] == ' ' || help[i] == '\n';
        if (ws && o > 0 && flat[o - 1] == ' ') continue;
        flat[o++] = ws ? ' ' : help[i];
    }
    flat[o] = '\0';
    char *line, *save = NULL;
    for (line = strtok_r(help, "\n", &save); line; line = strtok_r(NULL, "\n", &save))
        if (strlen(line) > 100) fail_msg("--help line longer than 100 columns: %s", line);
    free(help);
    help = capture(config_print_help);
    size_t n_keys, n_flags;
    const config_key_t *config_keys = config__keys(&n_keys);
    const config_flag_t *config_flags = config__flags(&n_flags);
    for (size_t i = 0; i < n_keys; i++) {
        char want[160];
        snprintf(want, sizeof want, "  %s ", config_keys[i].name);
        if (strstr(help, want) == NULL) fail_msg("--help lacks key %s", config_keys[i].name);
        if (strstr(flat, config_keys[i].doc) == NULL)
            fail_msg("--help lacks the doc of %s", config_keys[i].name);
    }
    for (size_t i = 0; i < n_flags; i++)
        if (strstr(help, config_flags[i].flag) == NULL)
            fail_msg("--help lacks flag %s", config_flags[i].flag);
    assert_non_null(strstr(help, "limits.body_bytes        size [1KiB..1GiB], default 512KiB"));
    free(help);
    free(flat);

    char *ref = capture(config_print_reference);
    for (size_t i = 0; i < n_keys; i++) {
        char want[160];
        snprintf(want, sizeof want, "| `%s` |", config_keys[i].name);
        if (strstr(ref, want) == NULL) fail_msg("reference lacks key %s", config_keys[i].name);
    }
    assert_non_null(strstr(ref, "| `threads` | integer | `2` | 1..64 | Event-loop threads. |"));
    free(ref);
}

/* collector/CONFIG.md must be exactly what config_print_reference() prints. */
static void test_reference_up_to_date(void **state)
{
    char *ref = capture(config_print_reference);
    FILE *f = fopen("../../collector/CONFIG.md", "rb");
    if (f == NULL)
        fail_msg("collector/CONFIG.md missing; regenerate it with "
                 "collector_test_config --print-reference > collector/CONFIG.md");
    static char file[65536];
    size_t n = fread(file, 1, sizeof file - 1, f);
    fclose(f);
    file[n] = '\0';
    if (strcmp(file, ref) != 0)
        fail_msg("collector/CONFIG.md is stale; regenerate it with "
                 "collector_test_config --print-reference > collector/CONFIG.md");
    free(ref);
}

static void test_strerror(void **state)
{
    assert_string_equal(config_strerror(CONFIG_OK), "ok");
    assert_string_equal(config_strerror(CONFIG_E_INVALID), "invalid configuration");
    assert_string_equal(config_strerror(CONFIG_E_NOMEM), "out of memory");
    assert_string_equal(config_strerror(-99), "unknown error");
}

int main(int argc, char **argv)
{
    if (argc == 2 && strcmp(argv[1], "--print-reference") == 0) {
        config_print_reference(stdout);
        return 0;
    }
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_defaults),
        cmocka_unit_test(test_full_file),
        cmocka_unit_test(test_empty_and_minimal_files),
        cmocka_unit_test(test_bad_files),
        cmocka_unit_test(test_spool_fixture),
        cmocka_unit_test(test_cli_overrides_file),
        cmocka_unit_test(test_log_level_spellings),
        cmocka_unit_test(test_cli_actions),
        cmocka_unit_test(test_cli_errors),
        cmocka_unit_test(test_validate),
        cmocka_unit_test(test_listen_addr),
        cmocka_unit_test(test_admin_listen_validate),
        cmocka_unit_test(test_help_lists_everything),
        cmocka_unit_test(test_reference_up_to_date),
        cmocka_unit_test(test_strerror),
    };
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
