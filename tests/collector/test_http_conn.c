/*
 * test_http_conn.c — the HTTP layer (collector/http_conn.c, with http_parse.c): real
 * connections over 127.0.0.1 against one event loop with the real modules
 * behind it (ingest, kafka_out, metrics, log, accounts, the route table and its handlers, all
 * linked from the core library: only http_conn.c is included) and librdkafka's mock cluster
 * (mock_cluster.h): pipelining, keep-alive, limits (413 before the body, chunked 413, 431),
 * CORS, errors, broken HTTP, readiness with the broker down, a failed delivery, timeouts, the
 * connection cap, and clients that leave mid-body or while their request waits for Kafka (the
 * broker's answer held back with rd_kafka_mock_broker_set_rtt).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include "http_conn.c"

#include "accounts.h"
#include "kafka_out.h"

#include "mock_cluster.h"

/* ---- a real loop on 127.0.0.1 ---- */

static config_write_key_t keys[] = {{"wk_test_123", "test"}};

static struct {
    mock_kafka_t mk;
    config_t cfg;
    config_kv_t kprops[1];
    kafka_out_t *ko;
    accounts_t *accounts;
    auth_t *auth;
    ingest_ctx_t ictx;
    uv_loop_t loop;
    uv_tcp_t listener;
    uv_async_t mail, done, kill;
    uv_timer_t guard;
    http_loop_t hl;
    atomic_bool draining;
    atomic_uint n_conns;
    atomic_size_t body_mem;
    int port;
    bool timed_out;
} L;

static void on_conn(uv_stream_t *s, int status)
{
    if (status == 0) http_conn_accept(&L.hl, s, HTTP_PORT_ALL);
}

static void on_mail(uv_async_t *a)
{
    (void)a;
    http_loop_deliver(&L.hl);
}

static void on_kill(uv_async_t *a)
{
    (void)a;
    http_loop_close_all(&L.hl);
}

static void stop_all(void)
{
    http_loop_close_all(&L.hl);
    uv_close((uv_handle_t *)&L.listener, NULL);
    uv_close((uv_handle_t *)&L.mail, NULL);
    uv_close((uv_handle_t *)&L.done, NULL);
    uv_close((uv_handle_t *)&L.kill, NULL);
    uv_close((uv_handle_t *)&L.guard, NULL);
}

static void on_done(uv_async_t *a)
{
    (void)a;
    stop_all();
}

static void on_guard(uv_timer_t *t)
{
    (void)t;
    L.timed_out = true;
    stop_all();
}

static void loop_thread(void *arg)
{
    (void)arg;
    uv_run(&L.loop, UV_RUN_DEFAULT);
}

static uint32_t delivery_ms = 5000;
/* kafka.properties message.timeout.ms (NULL: delivery_ms, as in production). A longer one lets
 * a test see a delivery report that arrives after the HTTP delivery timeout answered. */
static const char *message_timeout = NULL;

/* Runs scenario against a server loop on another thread (bounded: 20 s). */
static void run_loop(void (*scenario)(void), uint32_t header_timeout_ms, uint32_t max_conns)
{
    memset(&L, 0, sizeof L);
    assert_int_equal(mock_kafka_start(&L.mk), 0);
    L.cfg.write_keys = keys;
    L.cfg.n_write_keys = 1;
    L.cfg.event_bytes = 32 * 1024;
    L.cfg.body_bytes = 8 * 1024;
    L.cfg.max_depth = 16;
    L.cfg.max_events = 1000;
    L.cfg.header_bytes = 1024;
    L.cfg.header_timeout_ms = header_timeout_ms;
    L.cfg.idle_timeout_ms = 5000;
    L.cfg.request_timeout_ms = 8000;
    L.cfg.body_memory = 1024 * 1024;
    L.cfg.max_connections = max_conns;
    L.cfg.delivery_timeout_ms = delivery_ms;
    L.cfg.kafka_format = PROTO_FMT_MSGPACK;
    mock_kafka_cfg(&L.mk, &L.cfg);
    if (message_timeout != NULL) {
        L.kprops[0] = (config_kv_t){"message.timeout.ms", (char *)message_timeout};
        L.cfg.kafka_properties = L.kprops;
        L.cfg.n_kafka_properties = 1;
    }
    metrics_reset();
    char err[256];
    assert_int_equal(kafka_out_new(&L.cfg, &L.ko, err, sizeof err), KAFKA_OK);
    L.accounts = accounts_new(64);
    assert_non_null(L.accounts);
    assert_int_equal(auth_new(&L.cfg, &L.auth), AUTH_OK);
    ingest_ctx_init(&L.ictx, &L.cfg, L.ko, L.auth, L.accounts);
    atomic_init(&L.draining, false);
    atomic_init(&L.n_conns, 0);
    atomic_init(&L.body_mem, 0);
    uv_loop_init(&L.loop);
    uv_async_init(&L.loop, &L.mail, on_mail);
    uv_async_init(&L.loop, &L.done, on_done);
    uv_async_init(&L.loop, &L.kill, on_kill);
    uv_timer_init(&L.loop, &L.guard);
    uv_timer_start(&L.guard, on_guard, 20000, 0);
    assert_int_equal(http_loop_init(&L.hl, &L.loop, &L.cfg, &L.ictx, &L.mail, &L.draining,
                                    &L.n_conns, &L.body_mem),
                     0);
    uv_tcp_init(&L.loop, &L.listener);
    struct sockaddr_in sa;
    uv_ip4_addr("127.0.0.1", 0, &sa);
    assert_int_equal(uv_tcp_bind(&L.listener, (struct sockaddr *)&sa, 0), 0);
    int len = sizeof sa;
    uv_tcp_getsockname(&L.listener, (struct sockaddr *)&sa, &len);
    L.port = ntohs(sa.sin_port);
    assert_int_equal(uv_listen((uv_stream_t *)&L.listener, 64, on_conn), 0);
    /* The server loop runs on its own thread; the scenario (the client, with the assertions)
     * runs on cmocka's thread, so a failed assertion is reported normally. */
    uv_thread_t th;
    uv_thread_create(&th, loop_thread, NULL);
    scenario();
    uv_async_send(&L.done);
    uv_thread_join(&th);
    assert_int_equal(uv_loop_close(&L.loop), 0);
    /* Every request came back and was freed by its loop. */
    assert_null(L.hl.reqs);
    assert_int_equal(atomic_load(&L.ictx.in_flight), 0);
    assert_int_equal(atomic_load(&L.n_conns), 0);
    kafka_out_free(L.ko);
    http_loop_free(&L.hl);
    auth_free(L.auth);
    accounts_free(L.accounts);
    mock_kafka_stop(&L.mk);
    metrics_reset();
    assert_false(L.timed_out);
}

static int cli_connect(void)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)L.port)};
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    assert_int_equal(connect(fd, (struct sockaddr *)&sa, sizeof sa), 0);
    return fd;
}

static void cli_send(int fd, const char *s, size_t n)
{
    while (n > 0) {
        ssize_t w = send(fd, s, n, MSG_NOSIGNAL);
        if (w <= 0) return; /* the server may have closed already: what it answered counts */
        s += w;
        n -= (size_t)w;
    }
}

/* Reads until `responses` complete answers (by Content-Length) arrived, EOF, or 3 s. Returns
 * bytes read into buf (NUL-terminated); *eof set when the server closed. */
static size_t cli_read(int fd, char *buf, size_t cap, int responses, bool *eof)
{
    size_t len = 0;
    *eof = false;
    uint64_t deadline = uv_hrtime() + 3000000000ull;
    for (;;) {
        /* Count complete answers. */
        int done = 0;
        const char *p = buf;
        buf[len] = '\0';
        while (p < buf + len) {
            const char *he = strstr(p, "\r\n\r\n");
            if (he == NULL) break;
            const char *cl = strstr(p, "Content-Length: ");
            size_t body = 0;
            if (cl != NULL && cl < he)
                body = strtoul(cl + 16, NULL, 10);
            else if (strncmp(p, "HTTP/1.1 204 ", 13) != 0)
                break; /* only a 204 comes without Content-Length */
            if ((size_t)(buf + len - (he + 4)) < body) break;
            p = he + 4 + body;
            done++;
        }
        if (done >= responses || uv_hrtime() > deadline) return len;
        struct pollfd pfd = {fd, POLLIN, 0};
        if (poll(&pfd, 1, 100) <= 0) continue;
        ssize_t r = recv(fd, buf + len, cap - 1 - len, 0);
        if (r <= 0) {
            *eof = true;
            buf[len] = '\0';
            return len;
        }
        len += (size_t)r;
    }
}

static int count(const char *hay, const char *needle)
{
    int n = 0;
    for (const char *p = strstr(hay, needle); p != NULL; p = strstr(p + 1, needle))
        n++;
    return n;
}

static char rbuf[65536];
static char sbuf[65536];

#define EV(id) "{\"type\":\"track\",\"messageId\":\"" id "\",\"userId\":\"u\",\"event\":\"e\"}"

static size_t post(char *out, size_t cap, const char *path, const char *extra, const char *body)
{
    return (size_t)snprintf(out, cap,
                            "POST %s HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer wk_test_123\r\n"
                            "%sContent-Length: %zu\r\n\r\n%s",
                            path, extra, strlen(body), body);
}

static void scenario_pipelining(void)
{
    int fd = cli_connect();
    size_t n = 0;
    n += post(sbuf + n, sizeof sbuf - n, "/v1/batch", "", "{\"batch\":[" EV("a") "]}");
    n += post(sbuf + n, sizeof sbuf - n, "/v1/batch", "", "{\"batch\":[" EV("b") "," EV("c") "]}");
    n += post(sbuf + n, sizeof sbuf - n, "/v1/batch", "",
              "{\"batch\":[" EV("d") "," EV("e") "," EV("f") "]}");
    n += (size_t)snprintf(sbuf + n, sizeof sbuf - n, "GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n");
    cli_send(fd, sbuf, n);
    bool eof;
    cli_read(fd, rbuf, sizeof rbuf, 4, &eof);
    assert_false(eof);
    assert_int_equal(count(rbuf, "HTTP/1.1 200 OK"), 4);
    /* In order. */
    const char *a1 = strstr(rbuf, "\"accepted\":1"), *a2 = strstr(rbuf, "\"accepted\":2"),
               *a3 = strstr(rbuf, "\"accepted\":3"), *h = strstr(rbuf, "{\"status\":\"ok\"}");
    assert_non_null(a1);
    assert_non_null(a2);
    assert_non_null(a3);
    assert_non_null(h);
    assert_true(a1 < a2 && a2 < a3 && a3 < h);
    assert_int_equal(count(rbuf, "Access-Control-Allow-Origin: *"), 3);
    assert_int_equal(count(rbuf, "Connection: keep-alive"), 4);
    /* The same connection keeps serving, byte by byte too. */
    n = post(sbuf, sizeof sbuf, "/v1/track", "",
             "{\"messageId\":\"s\",\"userId\":\"u\",\"event\":\"e\"}");
    for (size_t i = 0; i < n; i++)
        cli_send(fd, sbuf + i, 1);
    cli_read(fd, rbuf, sizeof rbuf, 1, &eof);
    assert_non_null(strstr(rbuf, "HTTP/1.1 200 OK"));
    assert_non_null(strstr(rbuf, "\"accepted\":1"));
    close(fd);
}

static void test_pipelining(void **state)
{
    (void)state;
    run_loop(scenario_pipelining, 2000, 100);
}

/* One request per connection; returns the answer in rbuf and whether the server closed. */
static bool one(const char *req, size_t len)
{
    int fd = cli_connect();
    cli_send(fd, req, len);
    bool eof;
    cli_read(fd, rbuf, sizeof rbuf, 1, &eof);
    if (!eof) {
        /* Give a closing server a moment to show it. */
        struct pollfd pfd = {fd, POLLIN, 0};
        if (poll(&pfd, 1, 50) > 0) {
            char x;
            eof = recv(fd, &x, 1, 0) <= 0;
        }
    }
    close(fd);
    return eof;
}

/* GET /readyz until the answer starts with want (bounded: MOCK_WAIT_MS). */
static bool readyz_until(const char *want)
{
    static const char req[] = "GET /readyz HTTP/1.1\r\nHost: x\r\n\r\n";
    for (int64_t deadline = base_mono_ms() + MOCK_WAIT_MS; base_mono_ms() < deadline;) {
        one(req, sizeof req - 1);
        if (strncmp(rbuf, want, strlen(want)) == 0) return true;
        base_sleep_ms(50);
    }
    return false;
}

static void scenario_errors(void)
{
    size_t n;
    /* 413 before the body: only the headers are sent, the answer comes anyway, then close. */
    n = (size_t)snprintf(sbuf, sizeof sbuf,
                         "POST /v1/batch HTTP/1.1\r\nHost: t\r\nContent-Length: 100000\r\n\r\n");
    assert_true(one(sbuf, n));
    assert_non_null(strstr(rbuf, "HTTP/1.1 413 "));
    assert_non_null(strstr(rbuf, "\"error\":\"payload_too_large\""));
    assert_non_null(strstr(rbuf, "Connection: close"));
    /* Chunked beyond the limit (8 KiB): 413 and close. */
    n = (size_t)snprintf(
        sbuf, sizeof sbuf,
        "POST /v1/batch HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n");
    for (int i = 0; i < 3; i++) {
        n += (size_t)snprintf(sbuf + n, sizeof sbuf - n, "1000\r\n");
        memset(sbuf + n, ' ', 0x1000);
        n += 0x1000;
        n += (size_t)snprintf(sbuf + n, sizeof sbuf - n, "\r\n");
    }
    assert_true(one(sbuf, n));
    assert_non_null(strstr(rbuf, "HTTP/1.1 413 "));
    /* Chunked within the limit: accepted. */
    n = (size_t)snprintf(
        sbuf, sizeof sbuf,
        "POST /v1/batch HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer wk_test_123\r\n"
        "Transfer-Encoding: chunked\r\n\r\n5\r\n{\"bat\r\n%zx\r\n%s\r\n0\r\n\r\n",
        strlen("ch\":[" EV("k") "]}"), "ch\":[" EV("k") "]}");
    assert_false(one(sbuf, n));
    assert_non_null(strstr(rbuf, "HTTP/1.1 200 OK"));
    /* Headers over header_bytes (1 KiB): 431 and close. */
    n = (size_t)snprintf(sbuf, sizeof sbuf, "GET /healthz HTTP/1.1\r\nHost: x\r\n");
    for (int i = 0; i < 40; i++)
        n += (size_t)snprintf(sbuf + n, sizeof sbuf - n, "X-Pad-%d: %040d\r\n", i, i);
    n += (size_t)snprintf(sbuf + n, sizeof sbuf - n, "\r\n");
    assert_true(one(sbuf, n));
    assert_non_null(strstr(rbuf, "HTTP/1.1 431 "));
    /* 404, 405 with Allow, 415 type and encoding, 401. Keep-alive stays. */
    n = (size_t)snprintf(sbuf, sizeof sbuf, "GET /nope HTTP/1.1\r\nHost: t\r\n\r\n");
    assert_false(one(sbuf, n));
    assert_non_null(strstr(rbuf, "HTTP/1.1 404 "));
    assert_non_null(strstr(rbuf, "{\"success\":false,\"error\":\"not_found\",\"message\":"));
    n = (size_t)snprintf(sbuf, sizeof sbuf, "GET /v1/batch HTTP/1.1\r\nHost: t\r\n\r\n");
    assert_false(one(sbuf, n));
    assert_non_null(strstr(rbuf, "HTTP/1.1 405 "));
    assert_non_null(strstr(rbuf, "Allow: POST, OPTIONS\r\n"));
    n = (size_t)snprintf(sbuf, sizeof sbuf,
                         "POST /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n");
    assert_false(one(sbuf, n));
    assert_non_null(strstr(rbuf, "Allow: GET, HEAD\r\n"));
    /* HEAD: headers only (the Content-Length of the GET answer, no body). */
    int hfd = cli_connect();
    const char *head_get =
        "HEAD /healthz HTTP/1.1\r\nHost: x\r\n\r\nGET /healthz HTTP/1.1\r\nHost: x\r\n\r\n";
    cli_send(hfd, head_get, strlen(head_get));
    usleep(200000);
    ssize_t hr = recv(hfd, rbuf, sizeof rbuf - 1, 0);
    assert_true(hr > 0);
    rbuf[hr] = '\0';
    assert_int_equal(count(rbuf, "HTTP/1.1 200 OK"), 2);
    assert_int_equal(count(rbuf, "Content-Length: 15\r\n"), 2);
    assert_int_equal(count(rbuf, "{\"status\":\"ok\"}"), 1);
    close(hfd);
    /* Any label but msgpack's is JSON: "{}" is read as JSON (no batch: 400), not refused. */
    n = post(sbuf, sizeof sbuf, "/v1/batch", "Content-Type: application/xml\r\n", "{}");
    assert_false(one(sbuf, n));
    assert_non_null(strstr(rbuf, "HTTP/1.1 400 "));
    n = post(sbuf, sizeof sbuf, "/v1/batch", "Content-Encoding: br\r\n", "{}");
    assert_false(one(sbuf, n));
    assert_non_null(strstr(rbuf, "HTTP/1.1 415 "));
    n = (size_t)snprintf(sbuf, sizeof sbuf,
                         "POST /v1/batch HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer wrong\r\n"
                         "Content-Length: 2\r\n\r\n{}");
    assert_false(one(sbuf, n));
    assert_non_null(strstr(rbuf, "HTTP/1.1 401 "));
    assert_non_null(strstr(rbuf, "\"error\":\"unauthorized\""));
    /* An unreadable body: 400 malformed_body. */
    n = post(sbuf, sizeof sbuf, "/v1/batch", "", "{\"batch\":[");
    assert_false(one(sbuf, n));
    assert_non_null(strstr(rbuf, "HTTP/1.1 400 "));
    assert_non_null(strstr(rbuf, "malformed_body"));
    /* Broken HTTP: 400 and close. */
    assert_true(one("NOT HTTP AT ALL\r\n\r\n", 19));
    assert_non_null(strstr(rbuf, "HTTP/1.1 400 "));
    assert_true(metrics_get(METRIC_HTTP_PARSE_ERRORS) >= 1);
    /* CORS preflight. */
    n = (size_t)snprintf(sbuf, sizeof sbuf,
                         "OPTIONS /v1/track HTTP/1.1\r\nHost: x\r\nOrigin: https://a.example\r\n"
                         "Access-Control-Request-Method: POST\r\n\r\n");
    assert_false(one(sbuf, n));
    assert_non_null(strstr(rbuf, "HTTP/1.1 204 "));
    assert_null(strstr(rbuf, "Content-Length"));
    assert_non_null(strstr(rbuf, "Access-Control-Allow-Methods: POST, OPTIONS\r\n"));
    assert_non_null(strstr(rbuf, "Access-Control-Allow-Headers: Authorization"));
    /* Health, readiness (ready and not), metrics. */
    n = (size_t)snprintf(sbuf, sizeof sbuf, "GET /readyz HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_false(one(sbuf, n));
    assert_non_null(strstr(rbuf, "HTTP/1.1 200 OK"));
    /* The broker goes down: librdkafka reports all brokers down, /readyz turns 503. */
    assert_int_equal(rd_kafka_mock_broker_set_down(L.mk.mc, 1), 0);
    assert_true(readyz_until("HTTP/1.1 503 "));
    assert_non_null(strstr(rbuf, "{\"ready\":false,\"reason\":\"all kafka brokers down\"}"));
    /* Back up: ready again without traffic (the producer probes the cluster). */
    assert_int_equal(rd_kafka_mock_broker_set_up(L.mk.mc, 1), 0);
    assert_true(readyz_until("HTTP/1.1 200 OK"));
    n = (size_t)snprintf(sbuf, sizeof sbuf, "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_false(one(sbuf, n));
    assert_non_null(strstr(rbuf, "Content-Type: text/plain; version=0.0.4\r\n"));
    assert_non_null(strstr(rbuf, "\nsluice_http_requests_total "));
    assert_non_null(strstr(rbuf, "\nsluice_kafka_queue_messages ")); /* the live producer's gauge */
    /* Expect: 100-continue gets its interim answer before the body is sent. */
    int fd = cli_connect();
    const char *body = "{\"batch\":[" EV("x") "]}";
    n = (size_t)snprintf(
        sbuf, sizeof sbuf,
        "POST /v1/batch HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer wk_test_123\r\n"
        "Expect: 100-continue\r\nContent-Length: %zu\r\n\r\n",
        strlen(body));
    cli_send(fd, sbuf, n);
    struct pollfd pfd = {fd, POLLIN, 0};
    assert_int_equal(poll(&pfd, 1, 2000), 1);
    ssize_t r = recv(fd, rbuf, 25, 0);
    assert_int_equal(r, 25);
    assert_memory_equal(rbuf, "HTTP/1.1 100 Continue\r\n\r\n", 25);
    cli_send(fd, body, strlen(body));
    bool eof;
    cli_read(fd, rbuf, sizeof rbuf, 1, &eof);
    assert_non_null(strstr(rbuf, "HTTP/1.1 200 OK"));
    close(fd);
    /* Expect: 100-continue with a refused request: the final answer at once, then close. */
    n = (size_t)snprintf(sbuf, sizeof sbuf,
                         "POST /v1/batch HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer nope\r\n"
                         "Expect: 100-continue\r\nContent-Length: 100\r\n\r\n");
    assert_true(one(sbuf, n));
    assert_non_null(strstr(rbuf, "HTTP/1.1 401 "));
    assert_null(strstr(rbuf, "100 Continue"));
    /* Delivery failed (the broker refuses the next Produce request with a permanent error):
     * 503 with Retry-After. */
    uint64_t errors = metrics_get(METRIC_KAFKA_ERRORS);
    rd_kafka_mock_push_request_errors(L.mk.mc, MOCK_API_PRODUCE, 1,
                                      RD_KAFKA_RESP_ERR_INVALID_RECORD);
    n = post(sbuf, sizeof sbuf, "/v1/batch", "", "{\"batch\":[" EV("f") "]}");
    assert_false(one(sbuf, n));
    assert_non_null(strstr(rbuf, "HTTP/1.1 503 "));
    assert_non_null(strstr(rbuf, "Retry-After: "));
    assert_int_equal(metrics_get(METRIC_KAFKA_ERRORS), errors + 1);
    /* The retry goes through. */
    assert_false(one(sbuf, n));
    assert_non_null(strstr(rbuf, "HTTP/1.1 200 OK"));
    /* HTTP/1.0 without keep-alive: answered, then closed. */
    assert_true(one("GET /healthz HTTP/1.0\r\n\r\n", 25));
    assert_non_null(strstr(rbuf, "Connection: close"));
}

static void test_errors(void **state)
{
    (void)state;
    run_loop(scenario_errors, 2000, 100);
}

static void scenario_timeouts_and_cap(void)
{
    /* Slowloris: a request whose headers never complete is closed after header_timeout. */
    int fd = cli_connect();
    cli_send(fd, "POST /v1/batch HTTP/1.1\r\nHost", 29);
    uint64_t t0 = uv_hrtime();
    bool eof;
    cli_read(fd, rbuf, sizeof rbuf, 1, &eof);
    uint64_t ms = (uv_hrtime() - t0) / 1000000;
    assert_true(eof);
    assert_true(ms >= 200 && ms < 2500);
    close(fd);
    /* A fresh connection that sends nothing is closed too. */
    fd = cli_connect();
    cli_read(fd, rbuf, sizeof rbuf, 1, &eof);
    assert_true(eof);
    close(fd);
    /* The cap (2): the third connection gets 503 too_many_connections and is closed. */
    int a = cli_connect(), b = cli_connect();
    usleep(100000);
    int c = cli_connect();
    cli_read(c, rbuf, sizeof rbuf, 1, &eof);
    assert_non_null(strstr(rbuf, "HTTP/1.1 503 "));
    assert_non_null(strstr(rbuf, "too_many_connections"));
    close(c);
    close(a);
    close(b);
    usleep(200000);
    /* Below the cap again. */
    assert_false(one("GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n", 34));
    assert_non_null(strstr(rbuf, "HTTP/1.1 200 OK"));
    /* A client that leaves mid-body. */
    fd = cli_connect();
    cli_send(fd, "POST /v1/batch HTTP/1.1\r\nHost: x\r\nContent-Length: 500\r\n\r\n{\"batch\":[",
             67);
    usleep(50000);
    close(fd);
    usleep(50000);
    assert_false(one("GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n", 34));
    assert_non_null(strstr(rbuf, "HTTP/1.1 200 OK"));
}

static void test_timeouts_and_cap(void **state)
{
    (void)state;
    run_loop(scenario_timeouts_and_cap, 300, 2);
}

/* Makes the producer connect and get its producer id, as a running collector has, so the
 * held-back answers below delay only the request under test. */
static void warm_kafka(void)
{
    assert_int_equal(kafka_out_produce(L.ko, KAFKA_TOPIC_PQL, "k", 1, "warm", 4, NULL, 0, NULL),
                     KAFKA_OK);
    assert_int_equal(kafka_out_flush(L.ko, MOCK_WAIT_MS), 0);
}

static void wait_in_flight(unsigned want)
{
    for (int i = 0; i < 500 && atomic_load(&L.ictx.in_flight) != want; i++)
        usleep(10000);
    assert_int_equal(atomic_load(&L.ictx.in_flight), want);
}

/* A request waits for Kafka (the broker holds its answer back 1.5 s); its connection goes
 * away (closed by the loop, as at shutdown) before the delivery report arrives. The report
 * then comes from Kafka's poll thread; the loop frees the request without an answer and
 * nothing is touched after free (ASan watches). */
static void scenario_leave_while_waiting(void)
{
    warm_kafka();
    assert_int_equal(rd_kafka_mock_broker_set_rtt(L.mk.mc, 1, 1500), 0);
    int fd = cli_connect();
    size_t n = post(sbuf, sizeof sbuf, "/v1/batch", "", "{\"batch\":[" EV("w") "]}");
    cli_send(fd, sbuf, n);
    for (int i = 0; i < 300 && atomic_load(&L.ictx.in_flight) == 0; i++)
        usleep(10000);
    assert_int_equal(atomic_load(&L.ictx.in_flight), 1);
    uv_async_send(&L.kill);
    for (int i = 0; i < 300 && atomic_load(&L.n_conns) != 0; i++)
        usleep(10000);
    assert_int_equal(atomic_load(&L.n_conns), 0);
    assert_true(metrics_get(METRIC_CLIENT_ABORTS) >= 1);
    assert_int_equal(atomic_load(&L.ictx.in_flight), 1); /* still waiting for its report */
    assert_int_equal(rd_kafka_mock_broker_set_rtt(L.mk.mc, 1, 0), 0);
    wait_in_flight(0); /* the report came, the loop freed the request */
    assert_int_equal(metrics_get(METRIC_KAFKA_DELIVERED), 2); /* warm-up + the request's */
    close(fd);
}

static void test_leave_while_waiting(void **state)
{
    (void)state;
    run_loop(scenario_leave_while_waiting, 2000, 100);
}

/* Kafka does not report within delivery_timeout (300 ms; the broker holds its answer 1.5 s
 * and message.timeout.ms is longer): the client gets 503 (Retry-After) at the deadline, the
 * connection stays usable, and the late report frees the detached request. */
static void scenario_delivery_timeout(void)
{
    warm_kafka();
    assert_int_equal(rd_kafka_mock_broker_set_rtt(L.mk.mc, 1, 1500), 0);
    int fd = cli_connect();
    size_t n = post(sbuf, sizeof sbuf, "/v1/batch", "", "{\"batch\":[" EV("t") "]}");
    uint64_t t0 = uv_hrtime();
    cli_send(fd, sbuf, n);
    bool eof;
    cli_read(fd, rbuf, sizeof rbuf, 1, &eof);
    uint64_t ms = (uv_hrtime() - t0) / 1000000;
    assert_false(eof);
    assert_non_null(strstr(rbuf, "HTTP/1.1 503 "));
    assert_non_null(strstr(rbuf, "Retry-After: "));
    assert_true(ms >= 250 && ms < 2500);
    assert_int_equal(atomic_load(&L.ictx.in_flight), 1);
    assert_int_equal(rd_kafka_mock_broker_set_rtt(L.mk.mc, 1, 0), 0);
    wait_in_flight(0); /* the late report */
    /* Same connection, next request: answered normally. */
    n = post(sbuf, sizeof sbuf, "/v1/batch", "", "{\"batch\":[" EV("u") "]}");
    cli_send(fd, sbuf, n);
    cli_read(fd, rbuf, sizeof rbuf, 1, &eof);
    assert_non_null(strstr(rbuf, "HTTP/1.1 200 OK"));
    close(fd);
}

static void test_delivery_timeout(void **state)
{
    (void)state;
    delivery_ms = 300;
    message_timeout = "5000";
    run_loop(scenario_delivery_timeout, 2000, 100);
    delivery_ms = 5000;
    message_timeout = NULL;
}

int main(void)
{
    log_set_level(LOG_WARN);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_pipelining),       cmocka_unit_test(test_errors),
        cmocka_unit_test(test_timeouts_and_cap), cmocka_unit_test(test_leave_while_waiting),
        cmocka_unit_test(test_delivery_timeout),
    };
    return cmocka_run_group_tests(tests, NULL, mock_kafka_group_teardown);
}
