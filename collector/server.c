/*
 * server.c — loop threads, listening sockets and shutdown (see server.h for the contract).
 */
#include "server.h"

#include <errno.h>
#include <netdb.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <uv.h>

#include "http_conn.h"
#include "log.h"
#include "metrics.h"
#include "server_internal.h"

#define LISTEN_BACKLOG 1024

typedef struct server_loop {
    uv_loop_t loop;
    uv_tcp_t listener;
    uv_tcp_t admin_listener; /* loop 0 only, when admin_listen is set */
    uv_async_t async;        /* mailbox wake-ups and control (drain, stop) */
    http_loop_t http;
    uv_thread_t thread;
    server_t *srv;
    int fd;
    bool loop_ok, listener_ok, async_ok, http_ok, thread_ok, admin_ok;
    bool listener_closed, admin_closed;
    atomic_bool drain_ack;
    atomic_bool stop_req;
} server_loop_t;

struct server {
    const config_t *cfg;
    ingest_ctx_t *ingest;
    server_loop_t *loops;
    uint32_t n_loops;
    char host[256];
    int port;
    char admin_host[256]; /* admin_listen: "" when unset */
    int admin_port;
    int admin_fd; /* until loop 0's admin handle owns it */
    atomic_bool draining;
    atomic_uint n_conns;
    atomic_size_t body_mem; /* limits.body_memory: bytes of request bodies held, all loops */
};

static double gauge_connections(void *ud)
{
    server_t *s = ud;
    return (double)atomic_load_explicit(&s->n_conns, memory_order_relaxed);
}

static double gauge_body_memory(void *ud)
{
    server_t *s = ud;
    return (double)atomic_load_explicit(&s->body_mem, memory_order_relaxed);
}

static void on_connection(uv_stream_t *listener, int status)
{
    server_loop_t *sl = listener->data;
    if (status < 0) {
        LOG(LOG_DEBUG, "accept_error", LS("reason", uv_strerror(status)));
        return;
    }
    http_conn_accept(&sl->http, listener,
                     sl->srv->admin_host[0] != '\0' ? HTTP_PORT_PUBLIC : HTTP_PORT_ALL);
}

static void on_admin_connection(uv_stream_t *listener, int status)
{
    server_loop_t *sl = listener->data;
    if (status < 0) {
        LOG(LOG_DEBUG, "accept_error", LS("reason", uv_strerror(status)));
        return;
    }
    http_conn_accept(&sl->http, listener, HTTP_PORT_ADMIN);
}

static void close_listener(server_loop_t *sl)
{
    if (sl->listener_ok && !sl->listener_closed) {
        sl->listener_closed = true;
        uv_close((uv_handle_t *)&sl->listener, NULL);
    }
    if (sl->admin_ok && !sl->admin_closed) {
        sl->admin_closed = true;
        uv_close((uv_handle_t *)&sl->admin_listener, NULL);
    }
}

static void on_async(uv_async_t *a)
{
    server_loop_t *sl = a->data;
    server_t *s = sl->srv;
    http_loop_deliver(&sl->http);
    if (atomic_load(&s->draining) && !sl->http.drained) {
        close_listener(sl);
        http_loop_drain(&sl->http);
        atomic_store(&sl->drain_ack, true);
    }
    if (atomic_load(&sl->stop_req)) {
        close_listener(sl);
        http_loop_close_all(&sl->http);
        /* The async handle stays open: delivery reports may still push to the mailbox until
         * the producer is destroyed; server_free closes it afterwards. */
        uv_stop(&sl->loop);
    }
}

static void loop_thread(void *arg)
{
    server_loop_t *sl = arg;
    /* Signals belong to main's uv_signal handlers, never to a loop thread. */
    sigset_t all;
    sigfillset(&all);
    pthread_sigmask(SIG_BLOCK, &all, NULL);
    uv_run(&sl->loop, UV_RUN_DEFAULT);
}

static int bind_socket(const struct sockaddr *sa, socklen_t salen, int *fd_out, char *err,
                       size_t errlen)
{
    int fd = socket(sa->sa_family, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    if (fd < 0) {
        snprintf(err, errlen, "socket: %s", strerror(errno));
        return SERVER_E_SOCKET;
    }
    int one = 1;
    if (setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one) != 0 ||
        setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof one) != 0) {
        snprintf(err, errlen, "setsockopt: %s", strerror(errno));
        close(fd);
        return SERVER_E_SOCKET;
    }
    if (bind(fd, sa, salen) != 0) {
        snprintf(err, errlen, "bind: %s", strerror(errno));
        close(fd);
        return SERVER_E_SOCKET;
    }
    *fd_out = fd;
    return SERVER_OK;
}

/* Start-up only (main thread, before serving): the address is numeric (config_addr_parse), so
 * this never waits on DNS. what names the key in errors. */
static int resolve(const char *what, const char *host, int port, struct sockaddr_storage *ss,
                   socklen_t *sslen, char *err, size_t errlen)
{
    struct addrinfo hints, *ai = NULL;
    memset(&hints, 0, sizeof hints);
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_flags = AI_PASSIVE | AI_NUMERICSERV;
    char portstr[16];
    snprintf(portstr, sizeof portstr, "%d", port);
    int gai = getaddrinfo(host[0] != '\0' ? host : NULL, portstr, &hints, &ai);
    if (gai != 0 || ai == NULL) {
        snprintf(err, errlen, "%s: %s: %s", what, host, gai_strerror(gai));
        return SERVER_E_ADDRESS;
    }
    *sslen = (socklen_t)ai->ai_addrlen;
    memcpy(ss, ai->ai_addr, ai->ai_addrlen);
    freeaddrinfo(ai);
    return SERVER_OK;
}

/* The port a bound socket got (port 0: the kernel's pick), or -1 with err filled. */
static int bound_port(int fd, char *err, size_t errlen)
{
    struct sockaddr_storage ss;
    socklen_t l = sizeof ss;
    if (getsockname(fd, (struct sockaddr *)&ss, &l) != 0) {
        snprintf(err, errlen, "getsockname: %s", strerror(errno));
        return -1;
    }
    return ss.ss_family == AF_INET6 ? ntohs(((struct sockaddr_in6 *)&ss)->sin6_port)
                                    : ntohs(((struct sockaddr_in *)&ss)->sin_port);
}

const char *server_strerror(int err)
{
    switch (err) {
#define SERVER_X_STR(name, val, msg)                                                               \
    case val:                                                                                      \
        return msg;
        SERVER_ERRORS(SERVER_X_STR)
#undef SERVER_X_STR
    default:
        return "unknown error";
    }
}

int server_new(const config_t *cfg, ingest_ctx_t *ingest, server_t **out, char *err, size_t errlen)
{
    *out = NULL;
    server_t *s = calloc(1, sizeof *s);
    if (s == NULL) {
        snprintf(err, errlen, "out of memory");
        return SERVER_E_NOMEM;
    }
    s->cfg = cfg;
    s->ingest = ingest;
    atomic_init(&s->draining, false);
    atomic_init(&s->n_conns, 0);
    atomic_init(&s->body_mem, 0);
    s->n_loops = cfg->threads > 0 ? cfg->threads : 1;
    s->loops = calloc(s->n_loops, sizeof *s->loops);
    if (s->loops == NULL) {
        free(s);
        snprintf(err, errlen, "out of memory");
        return SERVER_E_NOMEM;
    }
    for (uint32_t i = 0; i < s->n_loops; i++)
        s->loops[i].fd = -1;
    s->admin_fd = -1;

    int rc = SERVER_E_ADDRESS;
    int port = 0;
    if (config_listen_addr(cfg, s->host, sizeof s->host, &port) != 0) {
        snprintf(err, errlen, "listen: cannot parse \"%s\"", cfg->listen ? cfg->listen : "");
        goto fail;
    }
    struct sockaddr_storage ss;
    socklen_t sslen;
    if ((rc = resolve("listen", s->host, port, &ss, &sslen, err, errlen)) != SERVER_OK) goto fail;
    if (cfg->admin_listen != NULL) {
        int aport = 0;
        struct sockaddr_storage as;
        socklen_t aslen;
        if (config_addr_parse(cfg->admin_listen, s->admin_host, sizeof s->admin_host, &aport) !=
            0) {
            snprintf(err, errlen, "admin_listen: cannot parse \"%s\"", cfg->admin_listen);
            rc = SERVER_E_ADDRESS;
            goto fail;
        }
        if ((rc = resolve("admin_listen", s->admin_host, aport, &as, &aslen, err, errlen)) != 0 ||
            (rc = bind_socket((struct sockaddr *)&as, aslen, &s->admin_fd, err, errlen)) != 0 ||
            (s->admin_port = bound_port(s->admin_fd, err, errlen)) < 0) {
            if (rc == SERVER_OK) rc = SERVER_E_SOCKET; /* getsockname */
            /* err names the step; say which listener */
            char e2[256];
            snprintf(e2, sizeof e2, "admin_listen %s: %s", cfg->admin_listen, err);
            snprintf(err, errlen, "%s", e2);
            goto fail;
        }
    }

    for (uint32_t i = 0; i < s->n_loops; i++) {
        if ((rc = bind_socket((struct sockaddr *)&ss, sslen, &s->loops[i].fd, err, errlen)) != 0)
            goto fail;
        if (i == 0) {
            /* Port 0: the kernel picked one; every other loop binds the same. */
            socklen_t l = sizeof ss;
            if (getsockname(s->loops[0].fd, (struct sockaddr *)&ss, &l) != 0) {
                snprintf(err, errlen, "getsockname: %s", strerror(errno));
                rc = SERVER_E_SOCKET;
                goto fail;
            }
            sslen = l;
            s->port = ss.ss_family == AF_INET6 ? ntohs(((struct sockaddr_in6 *)&ss)->sin6_port)
                                               : ntohs(((struct sockaddr_in *)&ss)->sin_port);
        }
    }

    for (uint32_t i = 0; i < s->n_loops; i++) {
        server_loop_t *sl = &s->loops[i];
        sl->srv = s;
        atomic_init(&sl->drain_ack, false);
        atomic_init(&sl->stop_req, false);
        if (uv_loop_init(&sl->loop) != 0) {
            snprintf(err, errlen, "uv_loop_init failed");
            rc = SERVER_E_LOOP;
            goto fail;
        }
        sl->loop_ok = true;
        uv_async_init(&sl->loop, &sl->async, on_async);
        sl->async.data = sl;
        sl->async_ok = true;
        if (http_loop_init(&sl->http, &sl->loop, cfg, ingest, &sl->async, &s->draining, &s->n_conns,
                           &s->body_mem) != 0) {
            sl->http_ok = true;
            snprintf(err, errlen, "out of memory");
            rc = SERVER_E_NOMEM;
            goto fail;
        }
        sl->http_ok = true;
        uv_tcp_init(&sl->loop, &sl->listener);
        sl->listener.data = sl;
        sl->listener_ok = true;
        int urc = uv_tcp_open(&sl->listener, sl->fd);
        if (urc != 0) {
            snprintf(err, errlen, "uv_tcp_open: %s", uv_strerror(urc));
            rc = SERVER_E_LOOP;
            goto fail;
        }
        sl->fd = -1; /* now owned by the handle */
        if (i == 0 && s->admin_fd >= 0) {
            uv_tcp_init(&sl->loop, &sl->admin_listener);
            sl->admin_listener.data = sl;
            sl->admin_ok = true;
            urc = uv_tcp_open(&sl->admin_listener, s->admin_fd);
            if (urc != 0) {
                snprintf(err, errlen, "admin_listen: uv_tcp_open: %s", uv_strerror(urc));
                rc = SERVER_E_LOOP;
                goto fail;
            }
            s->admin_fd = -1;
        }
    }
    metrics_gauge_register("http_connections", "open HTTP connections", gauge_connections, s);
    metrics_gauge_register("http_body_memory_bytes",
                           "request bodies held in memory, decompression buffers included "
                           "(limits.body_memory)",
                           gauge_body_memory, s);
    *out = s;
    return SERVER_OK;
fail:
    server_free(s);
    return rc;
}

const char *server_host(const server_t *s)
{
    return s->host;
}

int server_port(const server_t *s)
{
    return s->port;
}

const char *server_admin_host(const server_t *s)
{
    return s->admin_host;
}

int server_admin_port(const server_t *s)
{
    return s->admin_host[0] != '\0' ? s->admin_port : 0;
}

int server_start(server_t *s, char *err, size_t errlen)
{
    for (uint32_t i = 0; i < s->n_loops; i++) {
        server_loop_t *sl = &s->loops[i];
        int rc = uv_listen((uv_stream_t *)&sl->listener, LISTEN_BACKLOG, on_connection);
        if (rc != 0) {
            snprintf(err, errlen, "listen: %s", uv_strerror(rc));
            return SERVER_E_LISTEN;
        }
        if (sl->admin_ok) {
            rc = uv_listen((uv_stream_t *)&sl->admin_listener, LISTEN_BACKLOG, on_admin_connection);
            if (rc != 0) {
                snprintf(err, errlen, "admin_listen: %s", uv_strerror(rc));
                return SERVER_E_LISTEN;
            }
        }
    }
    for (uint32_t i = 0; i < s->n_loops; i++) {
        server_loop_t *sl = &s->loops[i];
        if (uv_thread_create(&sl->thread, loop_thread, sl) != 0) {
            snprintf(err, errlen, "cannot start loop thread");
            return SERVER_E_THREAD;
        }
        sl->thread_ok = true;
    }
    return SERVER_OK;
}

void server_drain_begin(server_t *s)
{
    atomic_store(&s->draining, true);
    for (uint32_t i = 0; i < s->n_loops; i++)
        if (s->loops[i].thread_ok) uv_async_send(&s->loops[i].async);
}

bool server_wait_drained(server_t *s, uint32_t timeout_ms)
{
    uint64_t deadline = uv_hrtime() + (uint64_t)timeout_ms * 1000000ull;
    for (;;) {
        bool acked = true;
        for (uint32_t i = 0; i < s->n_loops; i++)
            if (s->loops[i].thread_ok && !atomic_load(&s->loops[i].drain_ack)) acked = false;
        /* Idle connections closed at drain; the others close after their answer (draining
         * forces Connection: close), so no open connection means no request in progress,
         * including one still receiving its body. */
        if (acked && atomic_load(&s->ingest->in_flight) == 0 && atomic_load(&s->n_conns) == 0)
            return true;
        if (uv_hrtime() >= deadline) return false;
        base_sleep_ms(10);
    }
}

void server_stop(server_t *s)
{
    for (uint32_t i = 0; i < s->n_loops; i++) {
        server_loop_t *sl = &s->loops[i];
        if (!sl->thread_ok) continue;
        atomic_store(&sl->stop_req, true);
        uv_async_send(&sl->async);
    }
    for (uint32_t i = 0; i < s->n_loops; i++) {
        server_loop_t *sl = &s->loops[i];
        if (!sl->thread_ok) continue;
        uv_thread_join(&sl->thread);
        sl->thread_ok = false;
    }
}

void server_free(server_t *s)
{
    if (s == NULL) return;
    for (uint32_t i = 0; i < s->n_loops; i++) {
        server_loop_t *sl = &s->loops[i];
        if (sl->fd >= 0) close(sl->fd);
        if (i == 0 && s->admin_fd >= 0) close(s->admin_fd);
        if (!sl->loop_ok) continue;
        /* The thread is gone: main drives the loop to finish closing its handles. */
        if (sl->http_ok) http_loop_close_all(&sl->http);
        close_listener(sl);
        if (sl->async_ok) uv_close((uv_handle_t *)&sl->async, NULL);
        uv_run(&sl->loop, UV_RUN_DEFAULT);
        if (uv_loop_close(&sl->loop) != 0) LOG(LOG_WARN, "loop_close_busy", LI("loop", i));
        if (sl->http_ok) http_loop_free(&sl->http);
    }
    free(s->loops);
    free(s);
}

unsigned server__n_conns(server_t *s)
{
    return atomic_load(&s->n_conns);
}

bool server__mailbox_pending(server_t *s, uint32_t loop)
{
    return atomic_load(&s->loops[loop].http.mailbox.stack.head) != NULL;
}
