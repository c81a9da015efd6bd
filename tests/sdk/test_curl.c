/*
 * test_curl.c — the default libcurl transport against a tiny scripted HTTP/1.1 server on
 * 127.0.0.1 (a thread of this test): headers sent (Basic auth, msgpack, zstd, no Expect),
 * keep-alive (one connection for several batches), Retry-After parsed from a real answer, an
 * error body reaching error_cb, and close() cancelling a request the server never answers.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <unistd.h>

#include "fake_transport.h" /* fake_now_ms */
#include "sluice.h"

#define MAX_REQ 32

typedef struct server {
    int lfd, port;
    pthread_t th;
    atomic_int stop;
    /* script: one answer per request ("" = never answer) */
    const char *answers[MAX_REQ];
    int n_answers;
    /* observed */
    pthread_mutex_t mu;
    int connections, requests;
    int64_t req_ms[MAX_REQ];
    char head[MAX_REQ][1024];
} server_t;

static void serve_conn(server_t *s, int fd)
{
    char buf[1 << 16];
    size_t have = 0;
    while (!atomic_load(&s->stop)) {
        struct pollfd p = {fd, POLLIN, 0};
        if (poll(&p, 1, 50) <= 0) continue;
        ssize_t r = read(fd, buf + have, sizeof buf - have);
        if (r <= 0) return;
        have += (size_t)r;
        for (;;) { /* every complete request in buf */
            char *end = memmem(buf, have, "\r\n\r\n", 4);
            if (!end) break;
            size_t hlen = (size_t)(end - buf) + 4;
            size_t clen = 0;
            char *cl = strcasestr(buf, "content-length:");
            if (cl && cl < end) clen = strtoul(cl + 15, NULL, 10);
            if (have < hlen + clen) break;
            pthread_mutex_lock(&s->mu);
            int i = s->requests < MAX_REQ ? s->requests : MAX_REQ - 1;
            s->requests++;
            s->req_ms[i] = fake_now_ms();
            size_t keep = hlen < sizeof s->head[i] - 1 ? hlen : sizeof s->head[i] - 1;
            memcpy(s->head[i], buf, keep);
            s->head[i][keep] = '\0';
            const char *ans =
                i < s->n_answers ? s->answers[i] : "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}";
            pthread_mutex_unlock(&s->mu);
            memmove(buf, buf + hlen + clen, have - hlen - clen);
            have -= hlen + clen;
            if (!*ans) { /* hang: hold the connection until the test stops us */
                while (!atomic_load(&s->stop))
                    usleep(10000);
                return;
            }
            if (write(fd, ans, strlen(ans)) < 0) return;
        }
    }
}

static void *server_main(void *arg)
{
    server_t *s = arg;
    while (!atomic_load(&s->stop)) {
        struct pollfd p = {s->lfd, POLLIN, 0};
        if (poll(&p, 1, 50) <= 0) continue;
        int fd = accept(s->lfd, NULL, NULL);
        if (fd < 0) continue;
        pthread_mutex_lock(&s->mu);
        s->connections++;
        pthread_mutex_unlock(&s->mu);
        serve_conn(s, fd);
        close(fd);
    }
    return NULL;
}

static void server_start(server_t *s)
{
    pthread_mutex_init(&s->mu, NULL);
    s->lfd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    assert_int_equal(bind(s->lfd, (struct sockaddr *)&a, sizeof a), 0);
    assert_int_equal(listen(s->lfd, 8), 0);
    socklen_t al = sizeof a;
    getsockname(s->lfd, (struct sockaddr *)&a, &al);
    s->port = ntohs(a.sin_port);
    pthread_create(&s->th, NULL, server_main, s);
}

static void server_stop(server_t *s)
{
    atomic_store(&s->stop, 1);
    pthread_join(s->th, NULL);
    close(s->lfd);
    pthread_mutex_destroy(&s->mu);
}

typedef struct errs {
    int n, status;
    char msg[256];
} errs_t;

static void on_error(void *ud, int err, int status, uint32_t n, const char *msg)
{
    (void)err;
    (void)n;
    errs_t *e = ud;
    e->n++;
    e->status = status;
    snprintf(e->msg, sizeof e->msg, "%s", msg);
}

static sluice_client *client_for(server_t *s, errs_t *errs, char *endpoint, size_t size)
{
    snprintf(endpoint, size, "http://127.0.0.1:%d", s->port);
    sluice_config cfg;
    sluice_config_init(&cfg, SLUICE_CONFIG_VERSION);
    cfg.endpoint = endpoint;
    cfg.write_key = "wk_test";
    cfg.flush_interval_ms = 10000;
    cfg.retry_base_ms = 5;
    cfg.retry_max_ms = 20;
    cfg.request_timeout_ms = 20000;
    cfg.error_cb = on_error;
    cfg.cb_ud = errs;
    sluice_client *c;
    assert_int_equal(sluice_client_new(&c, &cfg), SLUICE_OK);
    return c;
}

static void test_headers_and_keepalive(void **state)
{
    (void)state;
    server_t s = {0};
    server_start(&s);
    errs_t errs = {0};
    char ep[64];
    sluice_client *c = client_for(&s, &errs, ep, sizeof ep);
    for (int round = 0; round < 3; round++) {
        assert_int_equal(sluice_track(c, "u", "E", NULL), 0);
        assert_int_equal(sluice_flush(c, 5000), 0);
    }
    assert_int_equal(sluice_client_close(c, 3000), 0);
    server_stop(&s);
    assert_int_equal(s.requests, 3);
    assert_int_equal(s.connections, 1); /* keep-alive */
    const char *h = s.head[0];
    assert_non_null(strstr(h, "POST /v1/batch HTTP/1.1\r\n"));
    assert_non_null(strstr(h, "Authorization: Basic d2tfdGVzdDo=\r\n")); /* "wk_test:" */
    assert_non_null(strstr(h, "Content-Type: application/msgpack\r\n"));
    assert_non_null(strstr(h, "Content-Encoding: zstd\r\n"));
    assert_non_null(strstr(h, "User-Agent: sluice-c/"));
    assert_null(strcasestr(h, "Expect:"));
    assert_int_equal(errs.n, 0);
}

static void test_retry_after_and_error_body(void **state)
{
    (void)state;
    server_t s = {0};
    s.answers[0] =
        "HTTP/1.1 503 Service Unavailable\r\nRetry-After: 1\r\nContent-Length: 2\r\n\r\n{}";
    s.answers[1] = "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}";
    s.answers[2] =
        "HTTP/1.1 400 Bad Request\r\nContent-Length: 28\r\n\r\n{\"error\":\"malformed_body\"}  ";
    s.n_answers = 3;
    server_start(&s);
    errs_t errs = {0};
    char ep[64];
    sluice_client *c = client_for(&s, &errs, ep, sizeof ep);
    assert_int_equal(sluice_track(c, "u", "E", NULL), 0);
    assert_int_equal(sluice_flush(c, 5000), 0);
    pthread_mutex_lock(&s.mu);
    int64_t gap = s.req_ms[1] - s.req_ms[0];
    pthread_mutex_unlock(&s.mu);
    if (gap < 950 || gap > 2500)
        fail_msg("Retry-After: 1 but retried after %lld ms", (long long)gap);
    assert_int_equal(sluice_track(c, "u", "E", NULL), 0);
    assert_int_equal(sluice_flush(c, 5000), 0);
    assert_int_equal(errs.n, 1);
    assert_int_equal(errs.status, 400);
    assert_non_null(strstr(errs.msg, "malformed_body"));
    sluice_stats st;
    sluice_client_stats(c, &st);
    assert_int_equal(st.sent, 1);
    assert_int_equal(st.failed, 1);
    assert_int_equal(st.retried, 1);
    assert_int_equal(sluice_client_close(c, 3000), 1); /* the refused event was not delivered */
    server_stop(&s);
}

static void test_close_cancels_unanswered_request(void **state)
{
    (void)state;
    server_t s = {0};
    s.answers[0] = ""; /* never answered; the request timeout (20 s) is far away */
    s.n_answers = 1;
    server_start(&s);
    errs_t errs = {0};
    char ep[64];
    sluice_client *c = client_for(&s, &errs, ep, sizeof ep);
    for (int i = 0; i < 4; i++)
        assert_int_equal(sluice_track(c, "u", "E", NULL), 0);
    assert_int_equal(sluice_flush(c, 300), SLUICE_E_TIMEOUT);
    pthread_mutex_lock(&s.mu);
    int requests = s.requests;
    pthread_mutex_unlock(&s.mu);
    assert_int_equal(requests, 1);
    int64_t t0 = fake_now_ms();
    assert_int_equal(sluice_client_close(c, 400), 4);
    int64_t took = fake_now_ms() - t0;
    if (took < 380 || took > 2000) fail_msg("close(400) took %lld ms", (long long)took);
    server_stop(&s);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_headers_and_keepalive),
        cmocka_unit_test(test_retry_after_and_error_body),
        cmocka_unit_test(test_close_cancels_unanswered_request),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
