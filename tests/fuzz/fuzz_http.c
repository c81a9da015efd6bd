/*
 * fuzz_http.c — libFuzzer target for the HTTP connection state machine: each input is sent as
 * raw bytes over a loopback TCP connection to the real event loop of the collector (http_conn.c
 * with llhttp in strict mode, routing, auth, body limits, decompression, ingest into the
 * embedded librdkafka mock cluster), in the same thread: the fuzzer drives the uv loop and the
 * client socket alternately, then half-closes and reads every answer until the collector
 * closes the connection.
 *
 * Checks: no sanitizer report; every answer starts with a status line; the collector always
 * closes the connection after the client's EOF (a connection still open 10 s after everything
 * was sent and answered is a hang: abort); no connection is left behind; the body-memory
 * account returns to the loop's own buffer once the connection is gone.
 * Small limits (body 16 KiB, headers 2 KiB, short timeouts) so the edges are reached quickly.
 * Build: cmake -DSLUICE_FUZZ=ON with CC=clang (see tests/fuzz/CMakeLists.txt).
 */
#include "accounts.h"
#include "auth.h"
#include "config.h"
#include "http_conn.h"
#include "ingest.h"
#include "kafka_out.h"
#include "log.h"

#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static struct {
    config_t cfg;
    config_write_key_t key;
    kafka_out_t *ko;
    auth_t *auth;
    accounts_t *accounts;
    ingest_ctx_t ictx;
    uv_loop_t loop;
    uv_tcp_t listener;
    uv_async_t mail;
    http_loop_t hl;
    atomic_bool draining;
    atomic_uint n_conns;
    atomic_size_t body_mem;
    int port;
    bool ready;
} F;

static void on_conn(uv_stream_t *s, int status)
{
    if (status == 0) http_conn_accept(&F.hl, s, HTTP_PORT_ALL);
}

static void on_mail(uv_async_t *a)
{
    http_loop_deliver(&F.hl);
}

static void setup(void)
{
    log_set_level(LOG_OFF);
    config_init(&F.cfg);
    F.key = (config_write_key_t){.key = "wk_fuzz", .source = "fuzz"};
    F.cfg.write_keys = &F.key;
    F.cfg.n_write_keys = 1;
    F.cfg.body_bytes = 16 * 1024;
    F.cfg.event_bytes = 4 * 1024;
    F.cfg.header_bytes = 2 * 1024;
    F.cfg.max_events = 64;
    F.cfg.header_timeout_ms = 300;
    F.cfg.idle_timeout_ms = 300;
    F.cfg.request_timeout_ms = 500;
    F.cfg.delivery_timeout_ms = 2000;
    F.cfg.body_memory = 1024 * 1024;
    F.cfg.max_connections = 16;
    char err[256];
    if (kafka_out_new(&F.cfg, &F.ko, err, sizeof err) != 0) abort();
    F.accounts = accounts_new(64);
    if (F.accounts == NULL || auth_new(&F.cfg, &F.auth) != AUTH_OK) abort();
    ingest_ctx_init(&F.ictx, &F.cfg, F.ko, F.auth, F.accounts);
    atomic_init(&F.draining, false);
    atomic_init(&F.n_conns, 0);
    atomic_init(&F.body_mem, 0);
    uv_loop_init(&F.loop);
    uv_async_init(&F.loop, &F.mail, on_mail);
    if (http_loop_init(&F.hl, &F.loop, &F.cfg, &F.ictx, &F.mail, &F.draining, &F.n_conns,
                       &F.body_mem) != 0)
        abort();
    uv_tcp_init(&F.loop, &F.listener);
    struct sockaddr_in sa;
    uv_ip4_addr("127.0.0.1", 0, &sa);
    if (uv_tcp_bind(&F.listener, (struct sockaddr *)&sa, 0) != 0) abort();
    int len = sizeof sa;
    uv_tcp_getsockname(&F.listener, (struct sockaddr *)&sa, &len);
    F.port = ntohs(sa.sin_port);
    if (uv_listen((uv_stream_t *)&F.listener, 64, on_conn) != 0) abort();
    F.ready = true;
}

static int client_connect(void)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) abort();
    struct sockaddr_in sa;
    memset(&sa, 0, sizeof sa);
    sa.sin_family = AF_INET;
    sa.sin_port = htons((uint16_t)F.port);
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (connect(fd, (struct sockaddr *)&sa, sizeof sa) != 0 && errno != EINPROGRESS) abort();
    return fd;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (!F.ready) setup();
    int fd = client_connect();
    size_t off = 0;
    bool shut = false, closed = false;
    static char answer[1 << 16];
    size_t alen = 0;
    uint64_t deadline = uv_hrtime() + 10ull * 1000000000ull;
    while (!closed) {
        uv_run(&F.loop, UV_RUN_NOWAIT);
        if (off < size) {
            ssize_t n = send(fd, data + off, size - off, MSG_DONTWAIT | MSG_NOSIGNAL);
            if (n > 0) off += (size_t)n;
            if (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK) off = size; /* reset */
        }
        if (off == size && !shut) {
            shutdown(fd, SHUT_WR);
            shut = true;
        }
        char buf[4096];
        ssize_t r = recv(fd, buf, sizeof buf, MSG_DONTWAIT);
        if (r > 0) {
            size_t k = (size_t)r < sizeof answer - alen ? (size_t)r : sizeof answer - alen;
            memcpy(answer + alen, buf, k);
            alen += k;
        } else if (r == 0 || (errno != EAGAIN && errno != EWOULDBLOCK)) {
            closed = true;
        } else {
            struct pollfd p = {fd, POLLIN, 0};
            poll(&p, 1, 1);
        }
        if (uv_hrtime() > deadline) {
            fprintf(stderr, "fuzz_http: connection still open 10 s after the input was sent\n");
            abort();
        }
    }
    close(fd);
    /* Whatever came back is HTTP answers. */
    if (alen > 0 && (alen < 12 || memcmp(answer, "HTTP/1.1 ", 9) != 0)) abort();
    /* The collector side closes too, and gives its body memory back: nothing is left behind. */
    while (F.hl.conns != NULL || atomic_load(&F.n_conns) != 0 ||
           atomic_load(&F.body_mem) != F.hl.scratch.plain_cap) {
        uv_run(&F.loop, UV_RUN_NOWAIT);
        if (uv_hrtime() > deadline) {
            fprintf(stderr, "fuzz_http: server connection or its body memory not released\n");
            abort();
        }
    }
    return 0;
}
