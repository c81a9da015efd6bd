/* Unit tests for collector/log.c: stderr is captured by dup2'ing it onto a pipe. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <fcntl.h>
#include <pthread.h>
#include <jansson.h>
#include <regex.h>
#include <string.h>
#include <unistd.h>

#include "../../collector/log.c"

static int saved_stderr = -1;
static int pipe_rd = -1;

static void capture_begin(void)
{
    int p[2];
    assert_int_equal(pipe(p), 0);
    /* A pipe holds 64 KiB by default: enough for every test's output without a reader. */
    saved_stderr = dup(STDERR_FILENO);
    assert_true(saved_stderr >= 0);
    assert_int_equal(dup2(p[1], STDERR_FILENO), STDERR_FILENO);
    close(p[1]);
    pipe_rd = p[0];
}

/* Restores stderr and returns everything written since capture_begin (NUL-terminated). */
static size_t capture_end(char *out, size_t cap)
{
    assert_int_equal(dup2(saved_stderr, STDERR_FILENO), STDERR_FILENO);
    close(saved_stderr);
    size_t len = 0;
    for (int i = 0; i < 1000 && len + 1 < cap; i++) {
        ssize_t n = read(pipe_rd, out + len, cap - 1 - len);
        if (n <= 0) break;
        len += (size_t)n;
    }
    close(pipe_rd);
    out[len] = '\0';
    return len;
}

/* Parses one captured line as JSON (the line must be one object ending in '\n'). */
static json_t *parse_line(const char *buf, size_t len)
{
    assert_true(len > 0);
    assert_int_equal(buf[len - 1], '\n');
    assert_null(memchr(buf, '\n', len - 1));
    json_error_t e;
    json_t *j = json_loadb(buf, len, 0, &e);
    if (j == NULL) fail_msg("not JSON: %s (%s)", buf, e.text);
    return j;
}

static void test_basic_line(void **state)
{
    char buf[8192];
    log_set_level(LOG_INFO);
    capture_begin();
    LOG(LOG_WARN, "kafka_error", LS("reason", "broker down"), LI("code", -3));
    size_t n = capture_end(buf, sizeof buf);
    json_t *j = parse_line(buf, n);
    assert_string_equal(json_string_value(json_object_get(j, "level")), "warn");
    assert_string_equal(json_string_value(json_object_get(j, "msg")), "kafka_error");
    assert_string_equal(json_string_value(json_object_get(j, "reason")), "broker down");
    assert_int_equal(json_integer_value(json_object_get(j, "code")), -3);
    regex_t re;
    assert_int_equal(regcomp(&re,
                             "^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}\\.[0-9]{3}Z$",
                             REG_EXTENDED | REG_NOSUB),
                     0);
    assert_int_equal(regexec(&re, json_string_value(json_object_get(j, "ts")), 0, NULL, 0), 0);
    regfree(&re);
    /* Field order is the call's order: ts, level, msg, then fields. */
    assert_true(strncmp(buf, "{\"ts\":\"", 7) == 0);
    assert_non_null(strstr(buf, "\"msg\":\"kafka_error\",\"reason\":"));
    json_decref(j);
}

static void test_escaping(void **state)
{
    char buf[8192];
    capture_begin();
    LOG(LOG_ERROR, "q\"b\\s/\n",
        LS("ctl", "a\x01\x1f\t\r\x7f"
                  "z"),
        LS("null", NULL), LS("utf8", "caf\xc3\xa9 \xe2\x82\xac \xf0\x9f\x98\x80"),
        LS("bad", "x\xff\xc3(\xed\xa0\x80y"), LS("ke\"y", "v"));
    size_t n = capture_end(buf, sizeof buf);
    json_t *j = parse_line(buf, n);
    assert_string_equal(json_string_value(json_object_get(j, "msg")), "q\"b\\s/\n");
    assert_string_equal(json_string_value(json_object_get(j, "ctl")), "a\x01\x1f\t\r\x7f"
                                                                      "z");
    assert_true(json_is_null(json_object_get(j, "null")));
    assert_string_equal(json_string_value(json_object_get(j, "utf8")),
                        "caf\xc3\xa9 \xe2\x82\xac \xf0\x9f\x98\x80");
    /* 0xff, a lone lead byte and each byte of an encoded surrogate become U+FFFD. */
    assert_string_equal(json_string_value(json_object_get(j, "bad")),
                        "x\xef\xbf\xbd\xef\xbf\xbd(\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbdy");
    assert_string_equal(json_string_value(json_object_get(j, "ke\"y")), "v");
    assert_non_null(strstr(buf, "\\u0001"));
    assert_non_null(strstr(buf, "\\u001f"));
    json_decref(j);
}

static void test_level_filter(void **state)
{
    char buf[8192];
    log_set_level(LOG_WARN);
    assert_int_equal(log_get_level(), LOG_WARN);
    capture_begin();
    LOG(LOG_DEBUG, "d");
    LOG(LOG_INFO, "i");
    log_emit(LOG_INFO, "direct", 0, NULL);
    LOG(LOG_WARN, "w");
    LOG(LOG_ERROR, "e");
    size_t n = capture_end(buf, sizeof buf);
    assert_null(strstr(buf, "\"msg\":\"d\""));
    assert_null(strstr(buf, "\"msg\":\"i\""));
    assert_null(strstr(buf, "direct"));
    assert_non_null(strstr(buf, "\"level\":\"warn\",\"msg\":\"w\""));
    assert_non_null(strstr(buf, "\"level\":\"error\",\"msg\":\"e\""));
    int lines = 0;
    for (size_t i = 0; i < n; i++)
        lines += buf[i] == '\n';
    assert_int_equal(lines, 2);

    log_set_level(LOG_OFF);
    capture_begin();
    LOG(LOG_ERROR, "e");
    n = capture_end(buf, sizeof buf);
    assert_int_equal(n, 0);
    log_set_level(LOG_INFO);
}

static void test_level_parse(void **state)
{
    assert_int_equal(log_level_parse("debug"), LOG_DEBUG);
    assert_int_equal(log_level_parse("info"), LOG_INFO);
    assert_int_equal(log_level_parse("warn"), LOG_WARN);
    assert_int_equal(log_level_parse("warning"), LOG_WARN);
    assert_int_equal(log_level_parse("error"), LOG_ERROR);
    assert_int_equal(log_level_parse("off"), LOG_OFF);
    assert_int_equal(log_level_parse("loud"), -1);
    assert_int_equal(log_level_parse(""), -1);
    assert_int_equal(log_level_parse(NULL), -1);
}

static void test_truncation(void **state)
{
    static char big[3000];
    char buf[16384];
    memset(big, 'a', sizeof big - 1);
    /* A 2-byte character straddles the value limit: it must be cut whole, not half. */
    big[LOG_VALUE_MAX - 1] = '\xc3';
    big[LOG_VALUE_MAX] = '\xa9';
    log_set_level(LOG_INFO);
    capture_begin();
    LOG(LOG_INFO, "long", LS("v1", big), LS("v2", big), LS("v3", big), LS("v4", big), LS("v5", big),
        LI("after", 7));
    size_t n = capture_end(buf, sizeof buf);
    assert_true(n <= LOG_LINE_MAX);
    json_t *j = parse_line(buf, n);
    const char *v1 = json_string_value(json_object_get(j, "v1"));
    assert_non_null(v1);
    /* LOG_VALUE_MAX - 1 'a's, the straddling character dropped, then the ellipsis. */
    assert_int_equal(strlen(v1), LOG_VALUE_MAX - 1 + 3);
    assert_memory_equal(v1 + LOG_VALUE_MAX - 1, "\xe2\x80\xa6", 3);
    /* Four 1 KiB values cannot all fit in 4 KiB: later fields are dropped and flagged. */
    assert_null(json_object_get(j, "v4"));
    assert_null(json_object_get(j, "after"));
    assert_true(json_is_true(json_object_get(j, "truncated")));
    json_decref(j);
}

static void *log_thread(void *arg)
{
    char val[600];
    memset(val, 'a' + (int)(intptr_t)arg, sizeof val - 1);
    val[sizeof val - 1] = '\0';
    for (int i = 0; i < 20; i++)
        LOG(LOG_INFO, "t", LS("v", val), LI("i", i));
    return NULL;
}

/* Lines from several threads arrive whole (one write(2) each, < PIPE_BUF). */
static void test_threads_no_interleave(void **state)
{
    static char buf[65536];
    log_set_level(LOG_INFO);
    capture_begin();
    pthread_t t[4];
    for (int i = 0; i < 4; i++)
        assert_int_equal(pthread_create(&t[i], NULL, log_thread, (void *)(intptr_t)i), 0);
    for (int i = 0; i < 4; i++)
        pthread_join(t[i], NULL);
    size_t n = capture_end(buf, sizeof buf);
    int lines = 0;
    for (char *p = buf; p < buf + n;) {
        char *nl = memchr(p, '\n', (size_t)(buf + n - p));
        assert_non_null(nl);
        json_t *j = parse_line(p, (size_t)(nl - p + 1));
        const char *v = json_string_value(json_object_get(j, "v"));
        assert_int_equal(strlen(v), 599);
        assert_int_equal(strspn(v, (char[]){v[0], 0}), 599);
        json_decref(j);
        lines++;
        p = nl + 1;
    }
    assert_int_equal(lines, 80);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_basic_line),   cmocka_unit_test(test_escaping),
        cmocka_unit_test(test_level_filter), cmocka_unit_test(test_level_parse),
        cmocka_unit_test(test_truncation),   cmocka_unit_test(test_threads_no_interleave),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
