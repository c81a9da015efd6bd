/* Unit tests for collector/metrics.c: values, histogram buckets and the exposition format. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <pthread.h>
#include <regex.h>
#include <stdlib.h>
#include <string.h>

#include "../../collector/metrics.c"

static char *render(void)
{
    base_buf_t b;
    base_buf_init(&b, 1 << 20);
    assert_int_equal(metrics_render(&b), 0);
    char *s = malloc(b.len + 1);
    assert_non_null(s);
    memcpy(s, b.data, b.len);
    s[b.len] = '\0';
    base_buf_free(&b);
    return s;
}

/* The value of the sample line that starts with `series ` exactly, or -1. */
static double sample(const char *text, const char *series)
{
    size_t n = strlen(series);
    for (const char *p = text; p && *p; p = strchr(p, '\n'), p = p ? p + 1 : NULL) {
        if (strncmp(p, series, n) == 0 && p[n] == ' ') return strtod(p + n + 1, NULL);
    }
    return -1;
}

static int setup(void **state)
{
    metrics_reset();
    return 0;
}

static void test_counters(void **state)
{
    metrics_add(METRIC_HTTP_REQUESTS, 3);
    metrics_add(METRIC_HTTP_REQUESTS, 2);
    metrics_add(METRIC_BYTES_IN, 1000);
    metrics_add(METRIC_COUNT_, 1); /* out of range: ignored */
    assert_int_equal(metrics_get(METRIC_HTTP_REQUESTS), 5);
    assert_int_equal(metrics_get(METRIC_BYTES_IN), 1000);
    assert_int_equal(metrics_get(METRIC_EVENTS_ACCEPTED), 0);
    char *s = render();
    assert_true(sample(s, "sluice_http_requests_total") == 5);
    assert_true(sample(s, "sluice_http_body_bytes_total") == 1000);
    assert_true(sample(s, "sluice_events_accepted_total") == 0);
    assert_non_null(strstr(s, "# HELP sluice_http_requests_total HTTP requests parsed\n"
                              "# TYPE sluice_http_requests_total counter\n"
                              "sluice_http_requests_total 5\n"));
    free(s);
    metrics_reset();
    assert_int_equal(metrics_get(METRIC_HTTP_REQUESTS), 0);
}

static void test_status_and_reasons(void **state)
{
    metrics_http_status(200);
    metrics_http_status(200);
    metrics_http_status(429);
    metrics_http_status(99);  /* ignored */
    metrics_http_status(600); /* ignored */
    assert_int_equal(metrics_http_status_get(200), 2);
    assert_int_equal(metrics_http_status_get(429), 1);
    assert_int_equal(metrics_http_status_get(404), 0);
    assert_int_equal(metrics_http_status_get(600), 0);

    metrics_rejected(PROTO_E_MISSING_TYPE);
    metrics_rejected(PROTO_E_MISSING_TYPE);
    metrics_rejected(PROTO_E_EVENT_TOO_DEEP);
    metrics_rejected(PROTO_E_TOO_DEEP);
    metrics_rejected(12345); /* unknown: counted in the total only */
    assert_int_equal(metrics_rejected_get(PROTO_E_MISSING_TYPE), 2);
    assert_int_equal(metrics_rejected_get(PROTO_E_BAD_UTF8), 0);
    assert_int_equal(metrics_get(METRIC_EVENTS_REJECTED), 5);

    char *s = render();
    assert_true(sample(s, "sluice_http_responses_total{code=\"200\"}") == 2);
    assert_true(sample(s, "sluice_http_responses_total{code=\"429\"}") == 1);
    assert_null(strstr(s, "code=\"404\""));
    assert_true(sample(s, "sluice_events_rejected_by_reason_total{reason=\"missing_type\"}") == 2);
    assert_true(sample(s, "sluice_events_rejected_by_reason_total{reason=\"invalid_utf8\"}") == 0);
    /* Two error values share the code "too_deep": one series holding both. */
    assert_true(sample(s, "sluice_events_rejected_by_reason_total{reason=\"too_deep\"}") == 2);
    const char *first = strstr(s, "reason=\"too_deep\"");
    assert_null(strstr(first + 1, "reason=\"too_deep\""));
    assert_null(strstr(s, "reason=\"ok\""));
    assert_true(sample(s, "sluice_events_rejected_total") == 5);
    free(s);
}

static void test_histogram(void **state)
{
    metrics_latency_observe(0.0001); /* le 0.0005 */
    metrics_latency_observe(0.0005); /* le 0.0005: bounds are inclusive */
    metrics_latency_observe(0.003);  /* le 0.005 */
    metrics_latency_observe(0.2);    /* le 0.25 */
    metrics_latency_observe(30);     /* +Inf only */
    metrics_latency_observe(-1);     /* clock step: counted as 0 */
    char *s = render();
    const char *h = "sluice_request_duration_seconds_bucket";
    char series[128];
    struct {
        const char *le;
        double want;
    } want[] = {{"0.0005", 3}, {"0.001", 3}, {"0.0025", 3}, {"0.005", 4}, {"0.01", 4},
                {"0.025", 4},  {"0.05", 4},  {"0.1", 4},    {"0.25", 5},  {"0.5", 5},
                {"1", 5},      {"2.5", 5},   {"5", 5},      {"10", 5},    {"+Inf", 6}};
    for (size_t i = 0; i < sizeof want / sizeof want[0]; i++) {
        snprintf(series, sizeof series, "%s{le=\"%s\"}", h, want[i].le);
        double got = sample(s, series);
        if (got != want[i].want) fail_msg("%s = %g, want %g", series, got, want[i].want);
    }
    assert_true(sample(s, "sluice_request_duration_seconds_count") == 6);
    double sum = sample(s, "sluice_request_duration_seconds_sum");
    assert_true(sum > 30.2035 && sum < 30.2037);
    assert_non_null(strstr(s, "# TYPE sluice_request_duration_seconds histogram\n"));
    free(s);
}

static double gauge_fn(void *ud)
{
    return *(double *)ud;
}

static void test_gauges(void **state)
{
    static double depth = 42, nan_v, frac = 0.25;
    nan_v = NAN;
    assert_int_equal(
        metrics_gauge_register("kafka_queue_messages", "messages queued", gauge_fn, &depth), 0);
    assert_int_equal(metrics_gauge_register("odd", "a \\ and\nnewline", gauge_fn, &nan_v), 0);
    assert_int_equal(metrics_gauge_register("ratio", "r", gauge_fn, &frac), 0);
    assert_int_equal(metrics_gauge_register("bad name", "x", gauge_fn, &depth), -1);
    assert_int_equal(metrics_gauge_register("1x", "x", gauge_fn, &depth), -1);
    assert_int_equal(metrics_gauge_register("nofn", "x", NULL, NULL), -1);
    char *s = render();
    assert_non_null(strstr(s, "# HELP sluice_kafka_queue_messages messages queued\n"
                              "# TYPE sluice_kafka_queue_messages gauge\n"
                              "sluice_kafka_queue_messages 42\n"));
    assert_non_null(strstr(s, "# HELP sluice_odd a \\\\ and\\nnewline\n"));
    assert_non_null(strstr(s, "sluice_odd NaN\n"));
    assert_non_null(strstr(s, "sluice_ratio 0.25\n"));
    depth = 7;
    free(s);
    s = render();
    assert_non_null(strstr(s, "sluice_kafka_queue_messages 7\n"));
    free(s);

    for (int i = 3; i < METRICS_MAX_GAUGES; i++)
        assert_int_equal(metrics_gauge_register("g", "g", gauge_fn, &depth), 0);
    assert_int_equal(metrics_gauge_register("g", "g", gauge_fn, &depth), -1);
    metrics_reset();
    s = render();
    assert_null(strstr(s, "sluice_kafka_queue_messages"));
    free(s);
}

static void test_build_info(void **state)
{
    char *s = render();
    char want[128];
    snprintf(want, sizeof want, "sluice_build_info{version=\"%s\"} 1\n", SLUICE_VERSION);
    assert_non_null(strstr(s, want));
    assert_non_null(strstr(s, "# TYPE sluice_build_info gauge\n"));
    free(s);
}

/* Every line of the exposition is a HELP, a TYPE or a sample, each sample's family was declared
 * by a TYPE line before it, and no series appears twice. */
static void test_format_parses(void **state)
{
    static double g = 1.5;
    metrics_http_status(200);
    metrics_http_status(503);
    metrics_rejected(PROTO_E_BAD_TYPE);
    metrics_latency_observe(0.01);
    assert_int_equal(metrics_gauge_register("spool_bytes", "bytes in the spool", gauge_fn, &g), 0);
    char *s = render();
    regex_t help, type, smp;
    assert_int_equal(regcomp(&help, "^# HELP [a-zA-Z_:][a-zA-Z0-9_:]* .*$", REG_EXTENDED), 0);
    assert_int_equal(regcomp(&type, "^# TYPE ([a-zA-Z_:][a-zA-Z0-9_:]*) (counter|gauge|histogram)$",
                             REG_EXTENDED),
                     0);
    assert_int_equal(regcomp(&smp,
                             "^([a-zA-Z_:][a-zA-Z0-9_:]*)(\\{[a-zA-Z_][a-zA-Z0-9_]*=\"([^\"\\\\]|"
                             "\\\\.)*\"(,[a-zA-Z_][a-zA-Z0-9_]*=\"([^\"\\\\]|\\\\.)*\")*\\})? "
                             "(-?[0-9]+(\\.[0-9]+)?([eE][-+]?[0-9]+)?|NaN|[+-]Inf)$",
                             REG_EXTENDED),
                     0);
    char family[128] = "";
    char *seen[512];
    size_t nseen = 0, lines = 0;
    char *save = NULL;
    assert_int_equal(s[strlen(s) - 1], '\n');
    for (char *line = strtok_r(s, "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
        regmatch_t m[2];
        lines++;
        if (regexec(&help, line, 0, NULL, 0) == 0) continue;
        if (regexec(&type, line, 2, m, 0) == 0) {
            snprintf(family, sizeof family, "%.*s", (int)(m[1].rm_eo - m[1].rm_so),
                     line + m[1].rm_so);
            continue;
        }
        if (regexec(&smp, line, 2, m, 0) != 0) fail_msg("line does not parse: %s", line);
        size_t flen = strlen(family);
        if (flen == 0 || strncmp(line, family, flen) != 0)
            fail_msg("sample outside its family %s: %s", family, line);
        const char *rest = line + flen;
        if (*rest != ' ' && *rest != '{' && strncmp(rest, "_bucket", 7) != 0 &&
            strncmp(rest, "_sum", 4) != 0 && strncmp(rest, "_count", 6) != 0)
            fail_msg("sample name not in family %s: %s", family, line);
        size_t series_len = strcspn(line, " ");
        if (line[series_len - 1] == '}') series_len = (size_t)(strrchr(line, '}') - line + 1);
        for (size_t i = 0; i < nseen; i++)
            if (strlen(seen[i]) == series_len && strncmp(seen[i], line, series_len) == 0)
                fail_msg("series twice: %.*s", (int)series_len, line);
        assert_true(nseen < 512);
        seen[nseen] = strndup(line, series_len);
        nseen++;
    }
    assert_true(lines > 60);
    assert_true(nseen > 40);
    for (size_t i = 0; i < nseen; i++)
        free(seen[i]);
    regfree(&help);
    regfree(&type);
    regfree(&smp);
    free(s);
}

/* Render fails cleanly when the output buffer's cap is too small. */
static void test_render_cap(void **state)
{
    base_buf_t b;
    base_buf_init(&b, 100);
    assert_int_equal(metrics_render(&b), PROTO_E_NOMEM);
    base_buf_free(&b);
}

static void *bump(void *arg)
{
    for (int i = 0; i < 100000; i++) {
        metrics_add(METRIC_EVENTS_RECEIVED, 1);
        metrics_latency_observe(0.001);
    }
    return NULL;
}

static void test_concurrent(void **state)
{
    pthread_t t[4];
    for (int i = 0; i < 4; i++)
        assert_int_equal(pthread_create(&t[i], NULL, bump, NULL), 0);
    for (int i = 0; i < 4; i++)
        pthread_join(t[i], NULL);
    assert_int_equal(metrics_get(METRIC_EVENTS_RECEIVED), 400000);
    char *s = render();
    assert_true(sample(s, "sluice_request_duration_seconds_count") == 400000);
    assert_true(sample(s, "sluice_request_duration_seconds_bucket{le=\"0.001\"}") == 400000);
    free(s);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup(test_counters, setup),
        cmocka_unit_test_setup(test_status_and_reasons, setup),
        cmocka_unit_test_setup(test_histogram, setup),
        cmocka_unit_test_setup(test_gauges, setup),
        cmocka_unit_test_setup(test_build_info, setup),
        cmocka_unit_test_setup(test_format_parses, setup),
        cmocka_unit_test_setup(test_render_cap, setup),
        cmocka_unit_test_setup(test_concurrent, setup),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
