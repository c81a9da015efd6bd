/*
 * test_server.c — the loop threads (collector/server.c) with the real modules behind them
 * (config, http_conn, ingest, kafka_out, metrics, log, accounts) and librdkafka's mock cluster
 * (mock_cluster.h): two loops share one port picked by the kernel (port 0 + SO_REUSEPORT), both
 * serve, and the graceful drain closes idle connections at once, lets a request that is still
 * receiving its body finish (answered 200 with Connection: close, the event read back from
 * Kafka), refuses new connections, and then stops. Then main's shutdown order with a request
 * still waiting for Kafka: server_stop, kafka_out_free (whose purge reports push into the
 * stopped loops' mailboxes), server_free.
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

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <uv.h>

#include "http_conn.h"
#include "log.h"
#include "metrics.h"
#include "server.h"
#include "server_internal.h"

#include "mock_cluster.h"

static config_write_key_t keys[] = {{"wk_test_123", "test"}};

static int connect_port(int port)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (connect(fd, (struct sockaddr *)&sa, sizeof sa) != 0) {
        close(fd);
        return -1;
    }
    return fd;
}

/* Reads until the peer closes or `want` appears, at most ms. Returns bytes read. */
static size_t read_until(int fd, char *buf, size_t cap, const char *want, int ms, bool *eof)
{
    size_t len = 0;
    *eof = false;
    uint64_t deadline = uv_hrtime() + (uint64_t)ms * 1000000ull;
    while (uv_hrtime() < deadline && len < cap - 1) {
        buf[len] = '\0';
        if (want != NULL && strstr(buf, want) != NULL) break;
        struct pollfd pfd = {fd, POLLIN, 0};
        if (poll(&pfd, 1, 50) <= 0) continue;
        ssize_t r = recv(fd, buf + len, cap - 1 - len, 0);
        if (r <= 0) {
            *eof = true;
            break;
        }
        len += (size_t)r;
    }
    buf[len] = '\0';
    return len;
}

static void test_threads_and_drain(void **state)
{
    (void)state;
    mock_kafka_t mk;
    assert_int_equal(mock_kafka_start(&mk), 0);
    metrics_reset();
    config_t cfg;
    memset(&cfg, 0, sizeof cfg);
    cfg.listen = "127.0.0.1:0";
    cfg.threads = 2;
    cfg.write_keys = keys;
    cfg.n_write_keys = 1;
    cfg.event_bytes = 32 * 1024;
    cfg.body_bytes = 64 * 1024;
    cfg.max_depth = 16;
    cfg.max_events = 1000;
    cfg.header_bytes = 8192;
    cfg.header_timeout_ms = 5000;
    cfg.idle_timeout_ms = 5000;
    cfg.request_timeout_ms = 8000;
    cfg.body_memory = 16 * 1024 * 1024;
    cfg.delivery_timeout_ms = 5000;
    cfg.max_connections = 100;
    mock_kafka_cfg(&mk, &cfg);
    char err[256];
    kafka_out_t *ko = NULL;
    assert_int_equal(kafka_out_new(&cfg, &ko, err, sizeof err), KAFKA_OK);
    accounts_t *accounts = accounts_new(64);
    assert_non_null(accounts);
    auth_t *auth;
    assert_int_equal(auth_new(&cfg, &auth), AUTH_OK);
    ingest_ctx_t ictx;
    ingest_ctx_init(&ictx, &cfg, ko, auth, accounts);
    server_t *srv = NULL;
    assert_int_equal(server_new(&cfg, &ictx, &srv, err, sizeof err), 0);
    int port = server_port(srv);
    assert_true(port > 0);
    assert_string_equal(server_host(srv), "127.0.0.1");
    assert_int_equal(server_start(srv, err, sizeof err), 0);

    /* Many connections: the kernel spreads them over both loops; every one is served. */
    char buf[4096];
    bool eof;
    int fds[16];
    for (int i = 0; i < 16; i++) {
        fds[i] = connect_port(port);
        assert_true(fds[i] >= 0);
        const char req[] = "GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n";
        assert_int_equal(send(fds[i], req, sizeof req - 1, MSG_NOSIGNAL), (ssize_t)sizeof req - 1);
    }
    for (int i = 0; i < 16; i++) {
        read_until(fds[i], buf, sizeof buf, "{\"status\":\"ok\"}", 3000, &eof);
        assert_non_null(strstr(buf, "HTTP/1.1 200 OK"));
    }
    assert_int_equal(server__n_conns(srv), 16);

    /* One client is mid-body when the drain starts. */
    int slow = connect_port(port);
    const char body[] =
        "{\"batch\":[{\"type\":\"track\",\"messageId\":\"d1\",\"userId\":\"u\",\"event\":\"e\"}]}";
    char head[256];
    int hn = snprintf(head, sizeof head,
                      "POST /v1/batch HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer wk_test_123\r\n"
                      "Content-Length: %zu\r\n\r\n",
                      sizeof body - 1);
    assert_int_equal(send(slow, head, (size_t)hn, MSG_NOSIGNAL), hn);
    assert_int_equal(send(slow, body, 10, MSG_NOSIGNAL), 10);
    usleep(100000);

    server_drain_begin(srv);
    /* Idle keep-alive connections are closed. */
    for (int i = 0; i < 16; i++) {
        read_until(fds[i], buf, sizeof buf, NULL, 2000, &eof);
        assert_true(eof);
        close(fds[i]);
    }
    /* Not drained yet: the slow request is in progress. */
    assert_false(server_wait_drained(srv, 100));
    /* The listeners are closed: new connections are refused. */
    int late = connect_port(port);
    assert_int_equal(late, -1);
    /* The slow client finishes its body and gets its 200, then the connection closes. */
    assert_int_equal(send(slow, body + 10, sizeof body - 1 - 10, MSG_NOSIGNAL),
                     (ssize_t)(sizeof body - 1 - 10));
    read_until(slow, buf, sizeof buf, NULL, 3000, &eof);
    assert_non_null(strstr(buf, "HTTP/1.1 200 OK"));
    assert_non_null(strstr(buf, "\"accepted\":1"));
    assert_non_null(strstr(buf, "Connection: close"));
    assert_true(eof);
    close(slow);
    assert_true(server_wait_drained(srv, 3000));
    assert_int_equal(kafka_out_flush(ko, 1000), 0);

    server_stop(srv);
    kafka_out_free(ko);
    server_free(srv);
    auth_free(auth);
    accounts_free(accounts);
    /* The one accepted event is in Kafka. */
    assert_int_equal(mock_topic_count(&mk, mk.events), 1);
    sup_kmsgs_t evs;
    assert_int_equal(mock_consume(&mk, mk.events, 1, &evs), 0);
    assert_int_equal(evs.n, 1);
    assert_string_equal(sup_kmsg_header(&evs.msgs[0], "message-id"), "d1");
    sup_kmsgs_free(&evs);
    mock_kafka_stop(&mk);
    metrics_reset();
}

/* main's shutdown with a request still waiting for Kafka (the broker holds its answer back):
 * the drain times out, server_stop stops the loops, then kafka_out_free purges the message and
 * its done_cb pushes the request into the mailbox of a loop that no longer runs (its async
 * handle is still open), and server_free frees it. ASan/LSan check that nothing is touched
 * after free and nothing leaks; the client never gets a 200. */
static void test_kafka_free_after_server_stop(void **state)
{
    (void)state;
    mock_kafka_t mk;
    assert_int_equal(mock_kafka_start(&mk), 0);
    metrics_reset();
    config_t cfg;
    memset(&cfg, 0, sizeof cfg);
    cfg.listen = "127.0.0.1:0";
    cfg.threads = 1;
    cfg.write_keys = keys;
    cfg.n_write_keys = 1;
    cfg.event_bytes = 32 * 1024;
    cfg.body_bytes = 64 * 1024;
    cfg.max_depth = 16;
    cfg.max_events = 1000;
    cfg.header_bytes = 8192;
    cfg.header_timeout_ms = 5000;
    cfg.idle_timeout_ms = 5000;
    cfg.request_timeout_ms = 8000;
    cfg.body_memory = 16 * 1024 * 1024;
    cfg.delivery_timeout_ms = 10000;
    cfg.max_connections = 100;
    mock_kafka_cfg(&mk, &cfg);
    char err[256];
    kafka_out_t *ko = NULL;
    assert_int_equal(kafka_out_new(&cfg, &ko, err, sizeof err), KAFKA_OK);
    /* Connected, producer id acquired: the held-back answer delays only the request. */
    assert_int_equal(kafka_out_produce(ko, KAFKA_TOPIC_PQL, "k", 1, "warm", 4, NULL, 0, NULL),
                     KAFKA_OK);
    assert_int_equal(kafka_out_flush(ko, MOCK_WAIT_MS), 0);
    auth_t *auth;
    assert_int_equal(auth_new(&cfg, &auth), AUTH_OK);
    ingest_ctx_t ictx;
    ingest_ctx_init(&ictx, &cfg, ko, auth, NULL);
    server_t *srv = NULL;
    assert_int_equal(server_new(&cfg, &ictx, &srv, err, sizeof err), 0);
    assert_int_equal(server_start(srv, err, sizeof err), 0);

    assert_int_equal(rd_kafka_mock_broker_set_rtt(mk.mc, 1, 5000), 0);
    int fd = connect_port(server_port(srv));
    assert_true(fd >= 0);
    const char body[] =
        "{\"batch\":[{\"type\":\"track\",\"messageId\":\"s1\",\"userId\":\"u\",\"event\":\"e\"}]}";
    char req[512];
    int rn = snprintf(req, sizeof req,
                      "POST /v1/batch HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer wk_test_123\r\n"
                      "Content-Length: %zu\r\n\r\n%s",
                      sizeof body - 1, body);
    assert_int_equal(send(fd, req, (size_t)rn, MSG_NOSIGNAL), rn);
    for (int i = 0; i < 300 && atomic_load(&ictx.in_flight) == 0; i++)
        usleep(10000);
    assert_int_equal(atomic_load(&ictx.in_flight), 1);

    /* As main does, with short budgets: the request is still waiting for Kafka. */
    server_drain_begin(srv);
    assert_false(server_wait_drained(srv, 200));
    assert_true(kafka_out_flush(ko, 100) > 0);
    server_stop(srv);
    assert_false(server__mailbox_pending(srv, 0));
    kafka_out_free(ko); /* the purge report reaches done_cb: a push into a stopped loop */
    assert_true(server__mailbox_pending(srv, 0));
    assert_true(metrics_get(METRIC_KAFKA_ERRORS) >= 1);
    server_free(srv); /* frees the request that never came back */

    char buf[4096];
    bool eof;
    read_until(fd, buf, sizeof buf, NULL, 2000, &eof);
    assert_true(eof);
    assert_null(strstr(buf, "HTTP/1.1 200"));
    close(fd);
    auth_free(auth);
    mock_kafka_stop(&mk);
    metrics_reset();
}

static void test_bind_failure(void **state)
{
    (void)state;
    config_t cfg;
    memset(&cfg, 0, sizeof cfg);
    cfg.listen = "192.0.2.1:1"; /* TEST-NET-1: not an address of this machine */
    cfg.threads = 1;
    cfg.body_bytes = 1024;
    ingest_ctx_t ictx;
    memset(&ictx, 0, sizeof ictx);
    server_t *srv = (server_t *)&ictx; /* must be reset to NULL on failure */
    char err[256] = "";
    assert_int_equal(server_new(&cfg, &ictx, &srv, err, sizeof err), SERVER_E_SOCKET);
    assert_null(srv);
    assert_non_null(strstr(err, "bind"));
    assert_string_equal(server_strerror(SERVER_E_SOCKET),
                        "cannot open or bind the listening socket");
}

/* An address that does not parse is the operator's mistake (SERVER_E_ADDRESS), not a socket
 * failure, for the listener and for the admin listener alike. */
static void test_unparsable_address_is_an_address_error(void **state)
{
    (void)state;
    config_t cfg;
    memset(&cfg, 0, sizeof cfg);
    cfg.threads = 1;
    cfg.body_bytes = 1024;
    ingest_ctx_t ictx;
    memset(&ictx, 0, sizeof ictx);
    server_t *srv = (server_t *)&ictx;
    char err[256] = "";
    cfg.listen = "not an address";
    assert_int_equal(server_new(&cfg, &ictx, &srv, err, sizeof err), SERVER_E_ADDRESS);
    assert_null(srv);
    assert_non_null(strstr(err, "listen"));
    cfg.listen = "127.0.0.1:0";
    cfg.admin_listen = "nor this";
    srv = (server_t *)&ictx;
    assert_int_equal(server_new(&cfg, &ictx, &srv, err, sizeof err), SERVER_E_ADDRESS);
    assert_null(srv);
    assert_non_null(strstr(err, "admin_listen"));
    assert_string_equal(server_strerror(12345), "unknown error");
}

int main(void)
{
    log_set_level(LOG_WARN);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_threads_and_drain),
        cmocka_unit_test(test_kafka_free_after_server_stop),
        cmocka_unit_test(test_bind_failure),
        cmocka_unit_test(test_unparsable_address_is_an_address_error),
    };
    return cmocka_run_group_tests(tests, NULL, mock_kafka_group_teardown);
}
