/*
 * stream_admin.c — sluice-stream's --admin-listen listener: GET /metrics, /healthz and the SPEC §6
 * admin views over the partitions this worker owns (/v1/accounts/{id}, /v1/pql/top?n=N, with the
 * admin token as Bearer when admin_token is set; unset: they answer 404). One libuv loop on its
 * own thread; one request per connection (Connection: close). Bounds: request head 16 KiB
 * (431 beyond), stream.admin_connections open connections (503 beyond), 10 s to send the request
 * (closed beyond). The PQL reads (a walk for top) run on libuv's threadpool, never on the loop.
 */
#include <jansson.h>
#include <stdlib.h>
#include <string.h>
#include <uv.h>

#include "log.h"
#include "metrics.h"
#include "stream.h"

#define HEAD_MAX       16384
#define REQ_TIMEOUT_MS 10000

struct stream_admin {
    stream_worker_t *w;
    uv_loop_t loop;
    uv_tcp_t server;
    uv_async_t stop;
    uv_thread_t thread;
    uint32_t n_conns;
};

typedef struct conn {
    uv_tcp_t tcp;
    uv_timer_t timer;
    struct stream_admin *a;
    char head[HEAD_MAX];
    size_t len;
    bool done;   /* request read: no more reads */
    int closing; /* handles closed so far (2: free) */
    bool shut;   /* conn_close called */
    uv_work_t work;
    char target[1024];
    char *auth;
    int status;
    base_buf_t out;
    const char *ctype;
} conn_t;

static void conn_closed_cb(uv_handle_t *h)
{
    conn_t *c = h->data;
    if (++c->closing < 2) return;
    c->a->n_conns--;
    base_buf_free(&c->out);
    free(c->auth);
    free(c);
}

static void conn_close(conn_t *c)
{
    if (c->shut) return;
    c->shut = true;
    uv_timer_stop(&c->timer);
    uv_close((uv_handle_t *)&c->timer, conn_closed_cb);
    uv_close((uv_handle_t *)&c->tcp, conn_closed_cb);
}

static void write_cb(uv_write_t *req, int status)
{
    (void)status;
    conn_t *c = req->data;
    free(req);
    conn_close(c);
}

static const char *reason(int st)
{
    switch (st) {
    case 200:
        return "OK";
    case 400:
        return "Bad Request";
    case 401:
        return "Unauthorized";
    case 404:
        return "Not Found";
    case 405:
        return "Method Not Allowed";
    case 431:
        return "Request Header Fields Too Large";
    case 503:
        return "Service Unavailable";
    default:
        return "Internal Server Error";
    }
}

static void respond(conn_t *c, int status, const char *ctype, const char *body, size_t len)
{
    char hdr[256];
    int hn = snprintf(hdr, sizeof hdr,
                      "HTTP/1.1 %d %s\r\nContent-Type: %s\r\nContent-Length: %zu\r\n"
                      "Connection: close\r\n\r\n",
                      status, reason(status), ctype, len);
    base_buf_t msg;
    base_buf_init(&msg, (size_t)hn + len + 1);
    if (base_buf_append(&msg, hdr, (size_t)hn) != 0 || base_buf_append(&msg, body, len) != 0) {
        base_buf_free(&msg);
        conn_close(c);
        return;
    }
    base_buf_free(&c->out);
    c->out = msg;
    uv_write_t *req = malloc(sizeof *req);
    if (req == NULL) {
        conn_close(c);
        return;
    }
    req->data = c;
    uv_buf_t b = uv_buf_init(c->out.data, (unsigned)c->out.len);
    if (uv_write(req, (uv_stream_t *)&c->tcp, &b, 1, write_cb) != 0) {
        free(req);
        conn_close(c);
    }
}

static void respond_error(conn_t *c, int status, const char *code, const char *msg)
{
    char body[512];
    int n = snprintf(body, sizeof body, "{\"error\":\"%s\",\"message\":\"%s\"}", code, msg);
    respond(c, status, "application/json", body, (size_t)n);
}

/* ---- the reads, on the threadpool ---- */

static int score_cmp(const void *x, const void *y)
{
    json_t *a = *(json_t *const *)x, *b = *(json_t *const *)y;
    json_int_t sa = json_integer_value(json_object_get(a, "score"));
    json_int_t sb = json_integer_value(json_object_get(b, "score"));
    return sa < sb ? 1 : sa > sb ? -1 : 0;
}

static void work_cb(uv_work_t *wk)
{
    conn_t *c = wk->data;
    stream_worker_t *w = c->a->w;
    base_buf_init(&c->out, 64u << 20);
    c->ctype = "application/json";
    const char *t = c->target;
    if (strcmp(t, "/metrics") == 0) {
        c->ctype = "text/plain; version=0.0.4";
        c->status = metrics_render(&c->out) == 0 ? 200 : 500;
        return;
    }
    if (strcmp(t, "/healthz") == 0) {
        bool bad = atomic_load(&w->fatal);
        c->status = bad ? 503 : 200;
        (void)base_buf_printf(&c->out, "{\"status\":\"%s\",\"partitions\":%llu}",
                              bad ? "failing" : "ok",
                              (unsigned long long)atomic_load(&w->st.partitions_owned));
        return;
    }
    c->status = 404;
    if (strncmp(t, "/v1/accounts/", 13) == 0 && t[13] != '\0' && strchr(t + 13, '/') == NULL) {
        const char *id = t + 13;
        size_t idlen = strcspn(id, "?");
        pthread_rwlock_rdlock(&w->tasks_mu);
        int rc = PQL_E_NOTFOUND;
        for (int32_t p = 0; p < STREAM_MAX_PARTITIONS && rc == PQL_E_NOTFOUND; p++)
            if (w->tasks[p] != NULL)
                rc = pql_account_json(w->tasks[p]->pql, id, idlen, base_wall_ms(), &c->out);
        pthread_rwlock_unlock(&w->tasks_mu);
        c->status = rc == PQL_OK ? 200 : rc == PQL_E_NOTFOUND ? 404 : 500;
        if (rc == PQL_E_NOTFOUND)
            (void)BASE_BUF_LIT(&c->out, "{\"error\":\"not_found\",\"message\":\"account not "
                                        "tracked by this worker's partitions\"}");
        return;
    }
    if (strncmp(t, "/v1/pql/top", 11) == 0 && (t[11] == '\0' || t[11] == '?')) {
        long n = 10;
        const char *q = strstr(t, "n=");
        if (q != NULL) n = strtol(q + 2, NULL, 10);
        if (n < 1 || n > PQL_TOP_MAX) {
            c->status = 400;
            (void)BASE_BUF_LIT(&c->out, "{\"error\":\"bad_request\",\"message\":\"n: 1..1000\"}");
            return;
        }
        json_t *all = json_array();
        pthread_rwlock_rdlock(&w->tasks_mu);
        for (int32_t p = 0; p < STREAM_MAX_PARTITIONS; p++) {
            if (w->tasks[p] == NULL) continue;
            base_buf_t one;
            base_buf_init(&one, 64u << 20);
            if (pql_top_json(w->tasks[p]->pql, (size_t)n, &one) == PQL_OK) {
                json_t *j = json_loadb(one.data, one.len, 0, NULL);
                json_t *arr = json_object_get(j, "accounts");
                size_t i;
                json_t *v;
                json_array_foreach(arr, i, v) json_array_append(all, v);
                json_decref(j);
            }
            base_buf_free(&one);
        }
        pthread_rwlock_unlock(&w->tasks_mu);
        size_t cnt = json_array_size(all);
        json_t **v = calloc(cnt ? cnt : 1, sizeof *v);
        for (size_t i = 0; v != NULL && i < cnt; i++)
            v[i] = json_array_get(all, i);
        if (v != NULL) qsort(v, cnt, sizeof *v, score_cmp);
        json_t *top = json_array();
        for (size_t i = 0; v != NULL && i < cnt && i < (size_t)n; i++)
            json_array_append(top, v[i]);
        free(v);
        json_t *res = json_pack("{s:o}", "accounts", top);
        char *s = json_dumps(res, JSON_COMPACT);
        json_decref(res);
        json_decref(all);
        if (s != NULL) {
            (void)base_buf_append_str(&c->out, s);
            c->status = 200;
        } else
            c->status = 500;
        free(s);
    }
}

static void after_work_cb(uv_work_t *wk, int status)
{
    conn_t *c = wk->data;
    if (status != 0) {
        respond_error(c, 503, "unavailable", "cancelled");
        return;
    }
    base_buf_t body = c->out;
    base_buf_init(&c->out, 0);
    respond(c, c->status, c->ctype, body.data ? body.data : "", body.len);
    base_buf_free(&body);
}

/* ---- request head ---- */

static bool token_ok(const stream_admin_t *a, const char *auth)
{
    const char *tok = a->w->cfg->admin_token;
    if (auth == NULL || strncmp(auth, "Bearer ", 7) != 0) return false;
    const char *got = auth + 7;
    size_t n = strlen(tok);
    if (strlen(got) != n) return false;
    unsigned char d = 0;
    for (size_t i = 0; i < n; i++)
        d |= (unsigned char)(got[i] ^ tok[i]);
    return d == 0;
}

static void handle(conn_t *c)
{
    c->done = true;
    uv_read_stop((uv_stream_t *)&c->tcp);
    char *eol = memchr(c->head, '\r', c->len);
    if (eol == NULL) return respond_error(c, 400, "bad_request", "no request line");
    *eol = '\0';
    char method[16], target[1024], ver[16];
    if (sscanf(c->head, "%15s %1023s %15s", method, target, ver) != 3 ||
        strncmp(ver, "HTTP/1.", 7) != 0)
        return respond_error(c, 400, "bad_request", "malformed request line");
    if (strcmp(method, "GET") != 0) return respond_error(c, 405, "method_not_allowed", "GET only");
    /* Authorization header */
    for (char *h = eol + 2; h < c->head + c->len;) {
        char *e = strstr(h, "\r\n");
        if (e == NULL || e == h) break;
        *e = '\0';
        if (strncasecmp(h, "authorization:", 14) == 0) {
            const char *v = h + 14;
            while (*v == ' ' || *v == '\t')
                v++;
            free(c->auth);
            c->auth = strdup(v);
        }
        h = e + 2;
    }
    snprintf(c->target, sizeof c->target, "%s", target);
    if (strncmp(target, "/v1/", 4) == 0) {
        const char *tok = c->a->w->cfg->admin_token;
        if (tok == NULL || tok[0] == '\0')
            return respond_error(c, 404, "not_found", "admin views disabled (no admin_token)");
        if (!token_ok(c->a, c->auth))
            return respond_error(c, 401, "unauthorized",
                                 "admin token required (Authorization: Bearer)");
    }
    c->work.data = c;
    if (uv_queue_work(&c->a->loop, &c->work, work_cb, after_work_cb) != 0)
        respond_error(c, 503, "unavailable", "threadpool");
}

static void alloc_cb(uv_handle_t *h, size_t sugg, uv_buf_t *b)
{
    (void)sugg;
    conn_t *c = h->data;
    *b = uv_buf_init(c->head + c->len, (unsigned)(HEAD_MAX - 1 - c->len));
}

static void read_cb(uv_stream_t *s, ssize_t n, const uv_buf_t *b)
{
    (void)b;
    conn_t *c = s->data;
    if (n < 0) return conn_close(c);
    c->len += (size_t)n;
    c->head[c->len] = '\0';
    if (strstr(c->head, "\r\n\r\n") != NULL) return handle(c);
    if (c->len >= HEAD_MAX - 1) {
        c->done = true;
        uv_read_stop(s);
        respond_error(c, 431, "header_too_large", "request head over 16 KiB");
    }
}

static void timer_cb(uv_timer_t *t)
{
    conn_t *c = t->data;
    if (!c->done) conn_close(c);
}

static void accept_cb(uv_stream_t *srv, int status)
{
    stream_admin_t *a = srv->data;
    if (status != 0) return;
    conn_t *c = calloc(1, sizeof *c);
    if (c == NULL) return;
    c->a = a;
    base_buf_init(&c->out, 0);
    uv_tcp_init(&a->loop, &c->tcp);
    uv_timer_init(&a->loop, &c->timer);
    c->tcp.data = c->timer.data = c;
    a->n_conns++;
    if (uv_accept(srv, (uv_stream_t *)&c->tcp) != 0) return conn_close(c);
    if (a->n_conns > a->w->cfg->stream_admin_connections) {
        c->done = true;
        return respond_error(c, 503, "unavailable", "stream.admin_connections reached");
    }
    uv_timer_start(&c->timer, timer_cb, REQ_TIMEOUT_MS, 0);
    uv_read_start((uv_stream_t *)&c->tcp, alloc_cb, read_cb);
}

static void walk_close_cb(uv_handle_t *h, void *arg)
{
    (void)arg;
    if (!uv_is_closing(h)) uv_close(h, NULL);
}

static void stop_cb(uv_async_t *as)
{
    stream_admin_t *a = as->data;
    uv_walk(&a->loop, walk_close_cb, NULL);
}

static void thread_main(void *arg)
{
    stream_admin_t *a = arg;
    uv_run(&a->loop, UV_RUN_DEFAULT);
}

int stream_admin_start(stream_worker_t *w, const char *addr, stream_admin_t **out, int *port_out,
                       char *err, size_t errlen)
{
    char host[256];
    int port = 0;
    if (config_addr_parse(addr, host, sizeof host, &port) != CONFIG_OK) {
        snprintf(err, errlen, "--admin-listen %s: expected ADDR:PORT", addr);
        return -1;
    }
    stream_admin_t *a = calloc(1, sizeof *a);
    if (a == NULL) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    a->w = w;
    struct sockaddr_storage ss;
    if (uv_ip4_addr(host, port, (struct sockaddr_in *)&ss) != 0 &&
        uv_ip6_addr(host, port, (struct sockaddr_in6 *)&ss) != 0) {
        snprintf(err, errlen, "--admin-listen %s: not a numeric address", addr);
        free(a);
        return -1;
    }
    uv_loop_init(&a->loop);
    uv_tcp_init(&a->loop, &a->server);
    a->server.data = a;
    int rc = uv_tcp_bind(&a->server, (const struct sockaddr *)&ss, 0);
    if (rc == 0) rc = uv_listen((uv_stream_t *)&a->server, 128, accept_cb);
    if (rc != 0) {
        snprintf(err, errlen, "--admin-listen %s: %s", addr, uv_strerror(rc));
        uv_close((uv_handle_t *)&a->server, NULL);
        uv_run(&a->loop, UV_RUN_DEFAULT);
        uv_loop_close(&a->loop);
        free(a);
        return -1;
    }
    struct sockaddr_storage bound;
    int blen = sizeof bound;
    uv_tcp_getsockname(&a->server, (struct sockaddr *)&bound, &blen);
    *port_out = bound.ss_family == AF_INET6 ? ntohs(((struct sockaddr_in6 *)&bound)->sin6_port)
                                            : ntohs(((struct sockaddr_in *)&bound)->sin_port);
    uv_async_init(&a->loop, &a->stop, stop_cb);
    a->stop.data = a;
    if (uv_thread_create(&a->thread, thread_main, a) != 0) {
        snprintf(err, errlen, "admin thread: cannot start");
        free(a);
        return -1;
    }
    *out = a;
    return 0;
}

void stream_admin_stop(stream_admin_t *a)
{
    if (a == NULL) return;
    uv_async_send(&a->stop);
    uv_thread_join(&a->thread);
    uv_loop_close(&a->loop);
    free(a);
}
