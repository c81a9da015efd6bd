/* client.c — libuv/llhttp load sender; see client.h for the open-loop and ledger contracts (TLS
 * itself: tls_client.h). */
#include "client.h"

#include "base.h"
#include "lt_error.h"
#include "tls_client.h"

#include <errno.h>
#include <llhttp.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <uv.h>
#include <zlib.h>
#include <zstd.h>

#define TICK_MS          1
#define FLUSH_NS         100000000ULL /* worker -> mailbox histogram hand-off period */
#define RECONNECT_MIN_NS 50000000ULL
#define RECONNECT_MAX_NS 1000000000ULL
#define RESP_HEAD        256 /* bytes of a 200 body scanned for the accepted/... counts */
#define READ_BUF         65536
#define HDR_MAX          1024

static atomic_int g_stop;

void client_request_stop(void)
{
    atomic_store(&g_stop, 1);
}

typedef struct worker worker_t;

/* C_HANDSHAKE: TCP connected, TLS handshake under way (cfg.tls only; bounded by timeout_ms). */
typedef enum { C_CLOSED, C_CONNECTING, C_HANDSHAKE, C_IDLE, C_BUSY, C_CLOSING } conn_state_t;

typedef struct conn {
    uv_tcp_t tcp;
    uv_connect_t creq;
    uv_write_t wreq;
    worker_t *w;
    llhttp_t parser;
    conn_state_t state;
    bool in_idle;     /* on the worker's idle queue */
    bool close_after; /* the answer said Connection: close, or the parser failed */
    bool answered;    /* the current request got its answer (set inside parser callbacks) */
    int answer_status;
    uint64_t intended_ns, sent_ns, deadline_ns, next_connect_ns, backoff_ns;
    char hdr[HDR_MAX];
    size_t hdr_len;
    base_buf_t body;     /* the encoded request body; sized by compress_body */
    model_item_t *items; /* the events of the request in flight */
    size_t n_items;
    bool fixed_ready; /* --body: c->body holds the fixed body, encoded, for every request */
    char resp[RESP_HEAD + 1];
    size_t resp_len;
    SSL *ssl; /* cfg.tls: this connection's TLS, over two memory BIOs; freed when it closes */
    uint32_t target; /* index in cfg.targets, fixed for the run (client.h: round-robin) */
} conn_t;

struct worker {
    const client_config_t *cfg;
    uint32_t idx;
    pthread_t th;
    bool started;
    uv_loop_t loop;
    bool loop_ok;
    uv_timer_t tick;
    conn_t *conns;
    uint32_t n_conns;
    /* FIFO ring of idle conn indexes (n_conns slots: a conn is queued at most once, in_idle);
     * lazily cleaned (entries re-checked on pop). FIFO, not a stack: at a low open-loop rate a
     * stack handed every request to the connection that answered last, so one connection (and
     * with several --url, one target) took all the traffic. */
    uint32_t *idle;
    uint32_t idle_head, n_idle;
    model_stream_t *stream;
    ZSTD_CCtx *zc;
    z_stream zs;
    bool zs_ok;
    struct sockaddr_storage addr[CLIENT_MAX_URLS]; /* cfg.targets' addresses */
    const char *auth;                              /* base64 "key:"; shared, read-only */
    uint64_t start_ns, end_ns, last_flush_ns;
    double interval_ns; /* open loop: between due requests of this thread; 0 = closed loop */
    uint64_t issued;
    bool draining, finished;
    uint64_t drain_deadline_ns;
    llhttp_settings_t settings;
    char readbuf[READ_BUF];
    SSL_CTX *tls_ctx;             /* cfg.tls: one per worker; NULL for plain HTTP */
    bool tls_ip[CLIENT_MAX_URLS]; /* targets[i].tls_name is an IP address (IP SANs) */
    char *tls_plain;              /* READ_BUF bytes: SSL_read's output, fed to llhttp */
    char tls_error[256]; /* the first handshake failure; read by client_run after the join */

    /* Written by the worker, read by the collecting thread. */
    _Atomic uint64_t events_sent, requests_sent, responses, events_ok, events_not_ok, non_200;
    _Atomic uint64_t bytes_out, bytes_in, body_raw, conn_errors, accepted, duplicates, rejected;
    _Atomic uint64_t tls_ok, tls_failed;
    _Atomic uint64_t status[CLIENT_ST_SLOTS];
    atomic_int done;
    pthread_mutex_t mu; /* protects mail only; held for one hist_merge, never during I/O */
    hist_t mail;
    hist_t local; /* worker-only: answers since the last hand-off */
    hist_t total; /* worker-only until joined */

    /* Worker-only until joined: what each target was sent and answered. */
    client_url_result_t url[CLIENT_MAX_URLS];

    uint8_t *ledger;
    uint64_t ledger_len, ledger_cap, ledger_max;
    bool ledger_overflow;
    uint64_t backlog_at_end, in_flight_at_end;
};

static uint64_t add(_Atomic uint64_t *a, uint64_t v)
{
    return atomic_fetch_add_explicit(a, v, memory_order_relaxed) + v;
}

static uint64_t get(_Atomic uint64_t *a)
{
    return atomic_load_explicit(a, memory_order_relaxed);
}

/* A connection error that is not a request's (connect, handshake): the totals and c's target. */
static void conn_error(conn_t *c)
{
    add(&c->w->conn_errors, 1);
    c->w->url[c->target].conn_errors++;
}

/* ---- ledger ---- */

static void ledger_note_new(worker_t *w, uint64_t seq, uint8_t kind)
{
    if (w->ledger_max == 0 || w->ledger_overflow) return;
    if (seq >= w->ledger_max) {
        w->ledger_overflow = true;
        return;
    }
    if (seq >= w->ledger_cap) {
        uint64_t cap = w->ledger_cap ? w->ledger_cap * 2 : 65536;
        while (cap <= seq)
            cap *= 2;
        if (cap > w->ledger_max) cap = w->ledger_max;
        uint8_t *p = realloc(w->ledger, cap);
        if (!p) {
            w->ledger_overflow = true;
            return;
        }
        memset(p + w->ledger_cap, 0, cap - w->ledger_cap);
        w->ledger = p;
        w->ledger_cap = cap;
    }
    w->ledger[seq] = kind & LEDGER_KIND_MASK;
    if (seq + 1 > w->ledger_len) w->ledger_len = seq + 1;
}

static void ledger_mark(worker_t *w, const conn_t *c, uint8_t bit)
{
    if (w->ledger_max == 0 || bit == 0) return;
    for (size_t i = 0; i < c->n_items; i++)
        if (c->items[i].seq < w->ledger_len) w->ledger[c->items[i].seq] |= bit;
}

/* ---- requests ---- */

static void conn_close(conn_t *c);
static void conn_connect(conn_t *c, uint64_t now);

static void record_latency(worker_t *w, uint64_t ns)
{
    uint64_t us = ns / 1000;
    hist_record(&w->local, us);
    hist_record(&w->total, us);
}

/* No definite answer: the events may or may not have been delivered. */
static void request_failed(conn_t *c, int slot, uint64_t now)
{
    worker_t *w = c->w;
    client_url_result_t *u = &w->url[c->target];
    add(&w->status[slot], 1);
    add(&w->non_200, 1);
    u->non_200++;
    add(&w->events_not_ok, c->n_items);
    if (slot == CLIENT_ST_TIMEOUT) {
        record_latency(w, now - c->intended_ns);
    } else {
        add(&w->conn_errors, 1);
        u->conn_errors++;
    }
    ledger_mark(w, c, LEDGER_UNSURE);
    c->n_items = 0;
}

static uint64_t scan_count(const char *s, const char *key)
{
    const char *p = strstr(s, key);
    if (!p) return 0;
    p += strlen(key);
    uint64_t v = 0;
    while (*p >= '0' && *p <= '9')
        v = v * 10 + (uint64_t)(*p++ - '0');
    return v;
}

static void request_answered(conn_t *c, int status, uint64_t now)
{
    worker_t *w = c->w;
    client_url_result_t *u = &w->url[c->target];
    record_latency(w, now - c->intended_ns);
    add(&w->responses, 1);
    u->responses++;
    if (status >= 100 && status < CLIENT_ST_SLOTS)
        add(&w->status[status], 1);
    else
        add(&w->status[CLIENT_ST_CONN_ERROR], 1);
    if (status == 200) {
        add(&w->events_ok, c->n_items);
        u->events_ok += c->n_items;
        ledger_mark(w, c, LEDGER_ACKED);
        c->resp[c->resp_len] = 0;
        add(&w->accepted, scan_count(c->resp, "\"accepted\":"));
        add(&w->duplicates, scan_count(c->resp, "\"duplicates\":"));
        add(&w->rejected, scan_count(c->resp, "\"rejected\":"));
    } else {
        add(&w->non_200, 1);
        u->non_200++;
        add(&w->events_not_ok, c->n_items);
        /* Other 4xx refuse the whole request: nothing was delivered. */
        bool definite = status >= 400 && status < 500 && status != 408 && status != 429;
        ledger_mark(w, c, definite ? 0 : LEDGER_UNSURE);
    }
    c->n_items = 0;
}

static size_t base64(const unsigned char *in, size_t n, char *out)
{
    static const char tbl[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    size_t o = 0;
    for (size_t i = 0; i < n; i += 3) {
        uint32_t v = (uint32_t)in[i] << 16;
        if (i + 1 < n) v |= (uint32_t)in[i + 1] << 8;
        if (i + 2 < n) v |= in[i + 2];
        out[o++] = tbl[(v >> 18) & 63];
        out[o++] = tbl[(v >> 12) & 63];
        out[o++] = i + 1 < n ? tbl[(v >> 6) & 63] : '=';
        out[o++] = i + 2 < n ? tbl[v & 63] : '=';
    }
    out[o] = 0;
    return o;
}

/* Compresses src into c->body. Returns 0 or LT_E_NOMEM / LT_E_IO. */
static int compress_body(worker_t *w, conn_t *c, const char *src, size_t len)
{
    size_t bound = len + 64;
    if (w->cfg->compress == CLIENT_COMPRESS_ZSTD)
        bound = ZSTD_compressBound(len);
    else if (w->cfg->compress == CLIENT_COMPRESS_GZIP)
        bound = deflateBound(&w->zs, (uLong)len) + 32;
    if (base_buf_grow_to(&c->body, bound) != BASE_OK) return LT_E_NOMEM;
    switch (w->cfg->compress) {
    case CLIENT_COMPRESS_NONE:
        memcpy(c->body.data, src, len);
        c->body.len = len;
        return 0;
    case CLIENT_COMPRESS_ZSTD: {
        size_t r = ZSTD_compressCCtx(w->zc, c->body.data, c->body.cap, src, len, w->cfg->level);
        if (ZSTD_isError(r)) return LT_E_IO;
        c->body.len = r;
        return 0;
    }
    case CLIENT_COMPRESS_GZIP:
        if (deflateReset(&w->zs) != Z_OK) return LT_E_IO;
        w->zs.next_in = (Bytef *)(uintptr_t)src;
        w->zs.avail_in = (uInt)len;
        w->zs.next_out = (Bytef *)c->body.data;
        w->zs.avail_out = (uInt)c->body.cap;
        if (deflate(&w->zs, Z_FINISH) != Z_STREAM_END) return LT_E_IO;
        c->body.len = c->body.cap - w->zs.avail_out;
        return 0;
    }
    return LT_E_INVAL;
}

/* ---- TLS (cfg.tls): tls_client.h's memory BIOs, driven by the loop's callbacks ---- */

/* One flight of ciphertext on its way to the socket; freed by its write callback. */
typedef struct tls_chunk {
    uv_write_t req;
    conn_t *c;
    char data[];
} tls_chunk_t;

int client_tls_check(const client_config_t *cfg, char *err, size_t errlen)
{
    SSL_CTX *ctx = tls_client_ctx_new(cfg->ca_file, err, errlen);
    if (ctx == NULL) return LT_E_INVAL;
    SSL_CTX_free(ctx);
    return 0;
}

static void on_tls_write(uv_write_t *req, int status)
{
    tls_chunk_t *k = req->data;
    conn_t *c = k->c;
    free(k);
    if (status < 0 && (c->state == C_BUSY || c->state == C_HANDSHAKE)) {
        if (c->state == C_BUSY)
            request_failed(c, CLIENT_ST_CONN_ERROR, uv_hrtime());
        else
            conn_error(c);
        conn_close(c);
    }
}

/* Sends the ciphertext OpenSSL left in the write BIO. 0, or -1 (the caller closes). */
static int tls_flush(conn_t *c)
{
    size_t n = tls_client_pending(c->ssl);
    if (n == 0) return 0;
    tls_chunk_t *k = malloc(sizeof(*k) + n);
    if (k == NULL) return -1;
    if (tls_client_take(c->ssl, k->data, n) != 0) {
        free(k);
        return -1;
    }
    k->c = c;
    k->req.data = k;
    uv_buf_t b = uv_buf_init(k->data, (unsigned)n);
    if (uv_write(&k->req, (uv_stream_t *)&c->tcp, &b, 1, on_tls_write) < 0) {
        free(k);
        return -1;
    }
    return 0;
}

static void reconnect_backoff(conn_t *c)
{
    c->backoff_ns = c->backoff_ns ? c->backoff_ns * 2 : RECONNECT_MIN_NS;
    if (c->backoff_ns > RECONNECT_MAX_NS) c->backoff_ns = RECONNECT_MAX_NS;
}

/* The handshake failed (why == NULL: OpenSSL's error queue and the verify result say why):
 * counted, the first reason kept for the report, the alert sent (best effort), closed. */
static void tls_failed(conn_t *c, const char *why)
{
    worker_t *w = c->w;
    add(&w->tls_failed, 1);
    conn_error(c);
    if (w->tls_error[0] == 0) tls_client_describe(c->ssl, why, w->tls_error, sizeof(w->tls_error));
    tls_client_forget_errors();
    reconnect_backoff(c);
    (void)tls_flush(c); /* the alert, if OpenSSL made one */
    conn_close(c);
}

/* Advances the handshake. false when the connection was closed; else it is still C_HANDSHAKE
 * (waiting for the server) or became C_IDLE. */
static bool tls_handshake(conn_t *c)
{
    int r = tls_client_handshake(c->ssl);
    if (r < 0) {
        tls_failed(c, NULL);
        return false;
    }
    if (tls_flush(c) != 0) {
        tls_failed(c, "cannot send the handshake");
        return false;
    }
    if (r == 1) {
        add(&c->w->tls_ok, 1);
        c->backoff_ns = 0;
        c->state = C_IDLE;
    }
    return true;
}

/* TCP is up: a fresh SSL on two memory BIOs, the ClientHello sent. false when closed. */
static bool tls_start(conn_t *c, uint64_t now)
{
    worker_t *w = c->w;
    int rc = tls_client_session_new(w->tls_ctx, w->cfg->targets[c->target].tls_name,
                                    w->tls_ip[c->target], &c->ssl);
    if (rc == TLS_CLIENT_E_NOMEM) {
        conn_error(c);
        conn_close(c);
        return false;
    }
    if (rc != TLS_CLIENT_OK) {
        tls_failed(c, "cannot set the name to verify");
        return false;
    }
    c->state = C_HANDSHAKE;
    c->deadline_ns = now + (uint64_t)w->cfg->timeout_ms * 1000000ULL;
    return tls_handshake(c);
}

static void on_write(uv_write_t *req, int status)
{
    conn_t *c = req->data;
    if (status < 0 && c->state == C_BUSY) {
        request_failed(c, CLIENT_ST_CONN_ERROR, uv_hrtime());
        conn_close(c);
    }
}

/* Sends the next batch on idle connection c, due at intended_ns. */
static int conn_send(conn_t *c, uint64_t intended_ns, uint64_t now)
{
    worker_t *w = c->w;
    const client_config_t *cfg = w->cfg;
    const char *raw;
    size_t raw_len, n;
    const model_item_t *items;
    int rc;
    if (cfg->fixed_body != NULL) { /* --body: the same bytes every time, encoded once */
        if (!c->fixed_ready) {
            if ((rc = compress_body(w, c, cfg->fixed_body, cfg->fixed_len)) != 0) return rc;
            c->fixed_ready = true;
        }
        raw_len = cfg->fixed_len;
        n = cfg->fixed_events;
    } else {
        rc = model_stream_next(w->stream, base_wall_ms(), &raw, &raw_len, &items, &n);
        if (rc != 0) return rc;
        if ((rc = compress_body(w, c, raw, raw_len)) != 0) return rc;
        for (size_t i = 0; i < n; i++)
            if (!items[i].dup) ledger_note_new(w, items[i].seq, items[i].kind);
        memcpy(c->items, items, n * sizeof(*items));
    }
    c->n_items = n;
    const char *ctype = model_config(cfg->model)->format == ENC_JSON ? "json" : "msgpack";
    const char *cenc = cfg->compress == CLIENT_COMPRESS_ZSTD   ? "Content-Encoding: zstd\r\n"
                       : cfg->compress == CLIENT_COMPRESS_GZIP ? "Content-Encoding: gzip\r\n"
                                                               : "";
    int hl = snprintf(c->hdr, sizeof(c->hdr),
                      "POST %s HTTP/1.1\r\nHost: %s\r\nAuthorization: Basic %s\r\n"
                      "Content-Type: application/%s\r\n%sContent-Length: %zu\r\n"
                      "User-Agent: sluice-load/" SLUICE_VERSION "\r\n\r\n",
                      cfg->targets[c->target].path, cfg->targets[c->target].host_header, w->auth,
                      ctype, cenc, c->body.len);
    if (hl < 0 || (size_t)hl >= sizeof(c->hdr)) return LT_E_TOO_LARGE;
    c->hdr_len = (size_t)hl;
    uv_buf_t bufs[2] = {uv_buf_init(c->hdr, (unsigned)c->hdr_len),
                        uv_buf_init(c->body.data, (unsigned)c->body.len)};
    c->state = C_BUSY;
    c->answered = false;
    c->resp_len = 0;
    c->intended_ns = intended_ns;
    c->sent_ns = now;
    c->deadline_ns = now + (uint64_t)cfg->timeout_ms * 1000000ULL;
    c->wreq.data = c;
    add(&w->requests_sent, 1);
    add(&w->events_sent, n);
    w->url[c->target].requests_sent++;
    w->url[c->target].events_sent += n;
    add(&w->bytes_out, c->hdr_len + c->body.len);
    add(&w->body_raw, raw_len);
    if (c->ssl != NULL) { /* two records (head, body), one write of their ciphertext */
        if (tls_client_write(c->ssl, c->hdr, c->hdr_len) != 0 || c->body.len == 0 ||
            tls_client_write(c->ssl, c->body.data, c->body.len) != 0 || tls_flush(c) != 0) {
            tls_client_forget_errors();
            request_failed(c, CLIENT_ST_CONN_ERROR, now);
            conn_close(c);
        }
        return 0;
    }
    rc = uv_write(&c->wreq, (uv_stream_t *)&c->tcp, bufs, 2, on_write);
    if (rc < 0) {
        request_failed(c, CLIENT_ST_CONN_ERROR, now);
        conn_close(c);
    }
    return 0;
}

static conn_t *pop_idle(worker_t *w)
{
    while (w->n_idle > 0) {
        conn_t *c = &w->conns[w->idle[w->idle_head]];
        w->idle_head = w->idle_head + 1 == w->n_conns ? 0 : w->idle_head + 1;
        w->n_idle--;
        c->in_idle = false;
        if (c->state == C_IDLE) return c;
    }
    return NULL;
}

static void push_idle(conn_t *c)
{
    worker_t *w = c->w;
    if (c->in_idle || c->state != C_IDLE) return;
    c->in_idle = true;
    uint32_t tail = w->idle_head + w->n_idle;
    w->idle[tail >= w->n_conns ? tail - w->n_conns : tail] = (uint32_t)(c - w->conns);
    w->n_idle++;
}

/* ---- llhttp callbacks ---- */

static int on_message_begin(llhttp_t *p)
{
    conn_t *c = p->data;
    c->resp_len = 0;
    return 0;
}

static int on_body(llhttp_t *p, const char *at, size_t len)
{
    conn_t *c = p->data;
    size_t room = RESP_HEAD - c->resp_len;
    if (len > room) len = room;
    memcpy(c->resp + c->resp_len, at, len);
    c->resp_len += len;
    return 0;
}

static int on_message_complete(llhttp_t *p)
{
    conn_t *c = p->data;
    c->answered = true;
    c->answer_status = llhttp_get_status_code(p);
    if (!llhttp_should_keep_alive(p)) c->close_after = true;
    return 0;
}

/* ---- connections ---- */

static void alloc_cb(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
    conn_t *c = h->data;
    *buf = uv_buf_init(c->w->readbuf, sizeof(c->w->readbuf));
}

static void maybe_send_closed_loop(conn_t *c, uint64_t now);

/* After response bytes went through llhttp (e its result; eof: the stream ended with them). */
static void after_parse(conn_t *c, llhttp_errno_t e, bool eof, uint64_t now)
{
    if (c->answered) {
        c->answered = false;
        if (c->state == C_BUSY) {
            request_answered(c, c->answer_status, now);
            c->state = C_IDLE;
        }
    }
    if (e != HPE_OK || eof) {
        if (c->state == C_BUSY) request_failed(c, CLIENT_ST_CONN_ERROR, now);
        conn_close(c);
        return;
    }
    if (c->close_after) {
        conn_close(c);
        return;
    }
    if (c->state == C_IDLE) maybe_send_closed_loop(c, now);
}

/* Ciphertext from the socket: into the read BIO, the handshake advanced, then every plaintext
 * byte SSL_read gives to llhttp. A close_notify or TLS error ends the connection after what was
 * decrypted before it has been parsed. */
static void tls_on_read(conn_t *c, const char *p, size_t n, uint64_t now)
{
    worker_t *w = c->w;
    if (!tls_client_feed(c->ssl, p, n)) {
        if (c->state == C_HANDSHAKE) {
            tls_failed(c, "out of memory");
            return;
        }
        after_parse(c, HPE_OK, true, now);
        return;
    }
    if (c->state == C_HANDSHAKE && (!tls_handshake(c) || c->state == C_HANDSHAKE)) return;
    llhttp_errno_t e = HPE_OK;
    bool eof = false;
    for (;;) {
        size_t r = tls_client_read(c->ssl, w->tls_plain, READ_BUF, &eof);
        if (r == 0) break;
        if (e == HPE_OK) e = llhttp_execute(&c->parser, w->tls_plain, r);
    }
    tls_client_forget_errors();
    if (tls_flush(c) != 0) eof = true;
    after_parse(c, e, eof, now);
}

static void on_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf)
{
    conn_t *c = s->data;
    worker_t *w = c->w;
    if (nread == 0) return;
    uint64_t now = uv_hrtime();
    if (nread < 0) {
        if (c->state == C_HANDSHAKE) {
            tls_failed(c, "the server closed the connection during the TLS handshake");
            return;
        }
        if (c->state == C_BUSY) request_failed(c, CLIENT_ST_CONN_ERROR, now);
        conn_close(c);
        return;
    }
    add(&w->bytes_in, (uint64_t)nread);
    if (c->ssl != NULL) {
        tls_on_read(c, buf->base, (size_t)nread, now);
        return;
    }
    after_parse(c, llhttp_execute(&c->parser, buf->base, (size_t)nread), false, now);
}

static void on_close(uv_handle_t *h)
{
    conn_t *c = h->data;
    c->state = C_CLOSED;
    SSL_free(c->ssl); /* pending writes were cancelled before this callback */
    c->ssl = NULL;
    c->next_connect_ns = uv_hrtime() + c->backoff_ns;
}

static void conn_close(conn_t *c)
{
    if (c->state == C_CLOSED || c->state == C_CLOSING) return;
    c->state = C_CLOSING;
    /* finish() may have closed the handle already (uv_walk): closing twice aborts. */
    if (!uv_is_closing((uv_handle_t *)&c->tcp)) uv_close((uv_handle_t *)&c->tcp, on_close);
}

static void on_connect(uv_connect_t *req, int status)
{
    conn_t *c = req->data;
    worker_t *w = c->w;
    if (c->state != C_CONNECTING) return;
    if (status < 0) {
        conn_error(c);
        reconnect_backoff(c);
        conn_close(c);
        return;
    }
    llhttp_init(&c->parser, HTTP_RESPONSE, &w->settings);
    c->parser.data = c;
    c->close_after = false;
    c->answered = false;
    if (uv_read_start((uv_stream_t *)&c->tcp, alloc_cb, on_read) < 0) {
        conn_close(c);
        return;
    }
    uint64_t now = uv_hrtime();
    if (w->tls_ctx != NULL) { /* the backoff is reset when the handshake succeeds */
        if (tls_start(c, now) && c->state == C_IDLE) maybe_send_closed_loop(c, now);
        return;
    }
    c->backoff_ns = 0;
    c->state = C_IDLE;
    maybe_send_closed_loop(c, now);
}

static void conn_connect(conn_t *c, uint64_t now)
{
    worker_t *w = c->w;
    if (uv_tcp_init(&w->loop, &c->tcp) < 0) return;
    c->tcp.data = c;
    c->creq.data = c;
    c->state = C_CONNECTING;
    uv_tcp_nodelay(&c->tcp, 1);
    if (uv_tcp_connect(&c->creq, &c->tcp, (const struct sockaddr *)&w->addr[c->target],
                       on_connect) < 0) {
        conn_error(c);
        c->backoff_ns = RECONNECT_MAX_NS;
        conn_close(c);
    }
}

/* Closed loop: an idle connection sends at once. Open loop: it waits for the tick. */
static void maybe_send_closed_loop(conn_t *c, uint64_t now)
{
    worker_t *w = c->w;
    if (w->interval_ns == 0 && !w->draining) {
        if (conn_send(c, now, now) != 0) {
            w->draining = true; /* the model cannot produce a batch: stop sending */
            w->drain_deadline_ns = now;
        }
        return;
    }
    push_idle(c);
}

/* ---- the tick: schedule, timeouts, reconnects, hand-off, end of run ---- */

static void flush_local(worker_t *w)
{
    pthread_mutex_lock(&w->mu);
    hist_merge(&w->mail, &w->local);
    pthread_mutex_unlock(&w->mu);
    hist_reset(&w->local);
}

static void close_all_cb(uv_handle_t *h, void *arg)
{
    if (!uv_is_closing(h)) uv_close(h, NULL);
}

/* Ends the worker's run: every connection becomes C_CLOSING before uv_walk closes the handles,
 * so the callbacks that still run for them (a connect or write cancelled by the close) see a
 * closing connection and leave it alone (issue 12 item 8: a reconnect in flight at the end of
 * the run used to be closed a second time). */
static void finish(worker_t *w, uint64_t now)
{
    for (uint32_t i = 0; i < w->n_conns; i++) {
        conn_t *c = &w->conns[i];
        if (c->state == C_BUSY) {
            w->in_flight_at_end++;
            ledger_mark(w, c, LEDGER_UNSURE);
            add(&w->events_not_ok, c->n_items);
            c->n_items = 0;
        }
        if (c->state != C_CLOSED) c->state = C_CLOSING;
    }
    flush_local(w);
    w->finished = true;
    uv_walk(&w->loop, close_all_cb, NULL);
}

static void on_tick(uv_timer_t *t)
{
    worker_t *w = t->data;
    uint64_t now = uv_hrtime();
    if (w->finished) return;
    uint32_t busy = 0;
    for (uint32_t i = 0; i < w->n_conns; i++) {
        conn_t *c = &w->conns[i];
        if (c->state == C_BUSY && now > c->deadline_ns) {
            request_failed(c, CLIENT_ST_TIMEOUT, now);
            conn_close(c);
        } else if (c->state == C_HANDSHAKE && now > c->deadline_ns) {
            tls_failed(c, "the TLS handshake did not finish within --timeout-ms");
        } else if (c->state == C_CLOSED && !w->draining && now >= c->next_connect_ns) {
            conn_connect(c, now);
        }
        busy += c->state == C_BUSY;
    }
    if (!w->draining && w->interval_ns > 0 && now >= w->start_ns) {
        /* requests due by now, counting only those scheduled before the end of the window */
        uint64_t lim = now < w->end_ns ? now : w->end_ns - 1;
        uint64_t due = (uint64_t)((double)(lim - w->start_ns) / w->interval_ns) + 1;
        while (w->issued < due) {
            conn_t *c = pop_idle(w);
            if (!c) break;
            uint64_t intended = w->start_ns + (uint64_t)((double)w->issued * w->interval_ns);
            w->issued++;
            if (conn_send(c, intended, now) != 0) {
                w->draining = true;
                w->drain_deadline_ns = now;
                break;
            }
            busy++;
        }
        if (now >= w->end_ns) w->backlog_at_end = due > w->issued ? due - w->issued : 0;
    }
    if (!w->draining && (now >= w->end_ns || atomic_load(&g_stop))) {
        w->draining = true;
        w->drain_deadline_ns = now + (uint64_t)w->cfg->timeout_ms * 1000000ULL;
    }
    if (now - w->last_flush_ns >= FLUSH_NS) {
        flush_local(w);
        w->last_flush_ns = now;
    }
    if (w->draining && (busy == 0 || now >= w->drain_deadline_ns)) finish(w, now);
}

static void *worker_main(void *arg)
{
    worker_t *w = arg;
    uint64_t now = uv_hrtime();
    while (now < w->start_ns) {
        uv_sleep(1); /* not yet a loop thread: aligns the threads' start */
        now = uv_hrtime();
    }
    for (uint32_t i = 0; i < w->n_conns; i++)
        conn_connect(&w->conns[i], now);
    uv_timer_start(&w->tick, on_tick, TICK_MS, TICK_MS);
    uv_run(&w->loop, UV_RUN_DEFAULT);
    atomic_store(&w->done, 1);
    return NULL;
}

static void worker_free(worker_t *w)
{
    if (w->loop_ok) {
        uv_walk(&w->loop, close_all_cb, NULL);
        uv_run(&w->loop, UV_RUN_DEFAULT);
        uv_loop_close(&w->loop);
    }
    if (w->conns) {
        for (uint32_t i = 0; i < w->n_conns; i++) {
            base_buf_free(&w->conns[i].body);
            free(w->conns[i].items);
            SSL_free(w->conns[i].ssl); /* closed by finish()'s uv_walk, without on_close */
        }
        free(w->conns);
    }
    SSL_CTX_free(w->tls_ctx);
    free(w->tls_plain);
    free(w->idle);
    model_stream_free(w->stream);
    ZSTD_freeCCtx(w->zc);
    if (w->zs_ok) deflateEnd(&w->zs);
    free(w->ledger);
    pthread_mutex_destroy(&w->mu);
}

/* first_conn: the run-wide number of the worker's first connection (targets round-robin). */
static int worker_init(worker_t *w, const client_config_t *cfg, uint32_t idx, uint32_t n_conns,
                       uint32_t first_conn, const struct sockaddr_storage *addr, const char *auth)
{
    w->cfg = cfg;
    w->idx = idx;
    memcpy(w->addr, addr, sizeof(w->addr));
    w->auth = auth;
    pthread_mutex_init(&w->mu, NULL);
    hist_reset(&w->mail);
    hist_reset(&w->local);
    hist_reset(&w->total);
    llhttp_settings_init(&w->settings);
    w->settings.on_message_begin = on_message_begin;
    w->settings.on_body = on_body;
    w->settings.on_message_complete = on_message_complete;
    if (uv_loop_init(&w->loop) < 0) return LT_E_IO;
    w->loop_ok = true;
    uv_timer_init(&w->loop, &w->tick);
    w->tick.data = w;
    if (model_stream_new(cfg->model, idx, &w->stream) != 0) return LT_E_NOMEM;
    w->n_conns = n_conns;
    w->conns = calloc(n_conns, sizeof(conn_t));
    w->idle = calloc(n_conns, sizeof(uint32_t));
    if (!w->conns || !w->idle) return LT_E_NOMEM;
    uint32_t batch = model_config(cfg->model)->batch;
    for (uint32_t i = 0; i < n_conns; i++) {
        w->conns[i].w = w;
        /* No cap of its own: a body is at most the compression bound of a raw body the model
         * (its batch size) or --body (the file, already in memory) produced. */
        base_buf_init(&w->conns[i].body, SIZE_MAX);
        w->conns[i].target = (first_conn + i) % cfg->n_targets;
        w->url[w->conns[i].target].connections++;
        w->conns[i].items = malloc(sizeof(model_item_t) * batch);
        if (!w->conns[i].items) return LT_E_NOMEM;
    }
    if (cfg->compress == CLIENT_COMPRESS_ZSTD && !(w->zc = ZSTD_createCCtx())) return LT_E_NOMEM;
    if (cfg->compress == CLIENT_COMPRESS_GZIP) {
        if (deflateInit2(&w->zs, cfg->level, Z_DEFLATED, 15 + 16, 8, Z_DEFAULT_STRATEGY) != Z_OK)
            return LT_E_NOMEM;
        w->zs_ok = true;
    }
    w->ledger_max = cfg->ledger_max / cfg->threads;
    if (cfg->tls) {
        unsigned char ip[16];
        for (uint32_t t = 0; t < cfg->n_targets; t++)
            w->tls_ip[t] = uv_inet_pton(AF_INET, cfg->targets[t].tls_name, ip) == 0 ||
                           uv_inet_pton(AF_INET6, cfg->targets[t].tls_name, ip) == 0;
        w->tls_plain = malloc(READ_BUF);
        if (w->tls_plain == NULL) return LT_E_NOMEM;
        char err[256];
        if ((w->tls_ctx = tls_client_ctx_new(cfg->ca_file, err, sizeof(err))) == NULL)
            return LT_E_INVAL;
    }
    return 0;
}

/* ---- the run ---- */

static void collect(worker_t *ws, uint32_t n, hist_t *sec, client_result_t *tot)
{
    memset(tot->status, 0, sizeof(tot->status));
    tot->events_sent = tot->requests_sent = tot->responses = tot->events_ok = 0;
    tot->events_not_ok = tot->bytes_out = tot->bytes_in = tot->body_bytes_raw = 0;
    tot->conn_errors = tot->accepted = tot->duplicates = tot->rejected = 0;
    tot->tls_handshakes = tot->tls_handshake_failures = 0;
    for (uint32_t i = 0; i < n; i++) {
        worker_t *w = &ws[i];
        pthread_mutex_lock(&w->mu);
        hist_merge(sec, &w->mail);
        hist_reset(&w->mail);
        pthread_mutex_unlock(&w->mu);
        tot->events_sent += get(&w->events_sent);
        tot->requests_sent += get(&w->requests_sent);
        tot->responses += get(&w->responses);
        tot->events_ok += get(&w->events_ok);
        tot->events_not_ok += get(&w->events_not_ok);
        tot->bytes_out += get(&w->bytes_out);
        tot->bytes_in += get(&w->bytes_in);
        tot->body_bytes_raw += get(&w->body_raw);
        tot->conn_errors += get(&w->conn_errors);
        tot->accepted += get(&w->accepted);
        tot->duplicates += get(&w->duplicates);
        tot->rejected += get(&w->rejected);
        tot->tls_handshakes += get(&w->tls_ok);
        tot->tls_handshake_failures += get(&w->tls_failed);
        for (int s = 0; s < CLIENT_ST_SLOTS; s++)
            tot->status[s] += get(&w->status[s]);
    }
}

static uint64_t non200_of(const client_result_t *r)
{
    uint64_t n = 0;
    for (int s = 0; s < CLIENT_ST_SLOTS; s++)
        if (s != 200) n += r->status[s];
    return n;
}

static int parse_addr(const client_target_t *t, struct sockaddr_storage *ss)
{
    memset(ss, 0, sizeof(*ss));
    if (uv_ip4_addr(t->host, t->port, (struct sockaddr_in *)ss) == 0) return 0;
    if (uv_ip6_addr(t->host, t->port, (struct sockaddr_in6 *)ss) == 0) return 0;
    return LT_E_INVAL;
}

/* Every target's address (numeric, resolved by the caller); https: each names its host. */
static int parse_targets(const client_config_t *cfg, struct sockaddr_storage *addr)
{
    if (cfg->n_targets < 1 || cfg->n_targets > CLIENT_MAX_URLS) return LT_E_INVAL;
    for (uint32_t t = 0; t < cfg->n_targets; t++)
        if ((cfg->tls && !cfg->targets[t].tls_name[0]) || parse_addr(&cfg->targets[t], &addr[t]))
            return LT_E_INVAL;
    return 0;
}

int client_run(const client_config_t *cfg, client_result_t *res, client_progress_cb cb, void *ud)
{
    memset(res, 0, sizeof(*res));
    hist_reset(&res->latency);
    struct sockaddr_storage addr[CLIENT_MAX_URLS];
    memset(addr, 0, sizeof(addr));
    if (!cfg->model || cfg->threads < 1 || cfg->threads > CLIENT_MAX_THREADS ||
        cfg->connections < cfg->threads || cfg->connections > CLIENT_MAX_CONNECTIONS ||
        !(cfg->duration_s > 0) || cfg->duration_s > CLIENT_MAX_SECONDS || cfg->rate < 0 ||
        cfg->timeout_ms < 1 || !cfg->write_key || strlen(cfg->write_key) > 512 ||
        parse_targets(cfg, addr) != 0)
        return LT_E_INVAL;
    uint32_t batch = model_config(cfg->model)->batch;
    double req_rate = cfg->rate / batch / cfg->threads; /* requests/s per thread */
    if (cfg->rate > 0 && req_rate * cfg->duration_s < 1)
        return LT_E_INVAL; /* not even one request per thread in the window */

    char userpass[520], auth[720];
    snprintf(userpass, sizeof(userpass), "%s:", cfg->write_key);
    base64((const unsigned char *)userpass, strlen(userpass), auth);

    size_t max_secs = (size_t)cfg->duration_s + cfg->timeout_ms / 1000 + 4;
    res->series = calloc(max_secs, sizeof(client_second_t));
    worker_t *ws = calloc(cfg->threads, sizeof(worker_t));
    hist_t *sec = malloc(sizeof(hist_t));
    if (!res->series || !ws || !sec) {
        free(ws);
        free(sec);
        return LT_E_NOMEM;
    }
    atomic_store(&g_stop, 0);
    int rc = 0;
    uint64_t start = uv_hrtime() + 50000000ULL;
    uint64_t end = start + (uint64_t)(cfg->duration_s * 1e9);
    uint32_t first_conn = 0;
    for (uint32_t i = 0; i < cfg->threads && rc == 0; i++) {
        uint32_t nc = cfg->connections / cfg->threads + (i < cfg->connections % cfg->threads);
        rc = worker_init(&ws[i], cfg, i, nc, first_conn, addr, auth);
        first_conn += nc;
        ws[i].start_ns = start;
        ws[i].end_ns = end;
        ws[i].last_flush_ns = start;
        ws[i].interval_ns = cfg->rate > 0 ? 1e9 / req_rate : 0;
    }
    /* Workers never handle signals: the caller's SIGINT handler runs on this thread. */
    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_BLOCK, &all, &old);
    for (uint32_t i = 0; i < cfg->threads && rc == 0; i++) {
        if (pthread_create(&ws[i].th, NULL, worker_main, &ws[i]) != 0) {
            rc = LT_E_IO;
            atomic_store(&g_stop, 1);
            break;
        }
        ws[i].started = true;
    }
    pthread_sigmask(SIG_SETMASK, &old, NULL);

    client_result_t prev, tot;
    memset(&prev, 0, sizeof(prev));
    memset(&tot, 0, sizeof(tot));
    uint64_t tick = start + 1000000000ULL;
    uint64_t last_answer_ns = start;
    uint64_t max_wait = end + (uint64_t)cfg->timeout_ms * 1000000ULL + 3000000000ULL;
    uint64_t stop_ns = end; /* when the sending window really closed (earlier if stopped) */
    for (;;) {
        if (atomic_load(&g_stop) && stop_ns == end) {
            uint64_t t = uv_hrtime();
            stop_ns = t < end ? t : end;
        }
        bool all_done = true;
        for (uint32_t i = 0; i < cfg->threads; i++)
            if (ws[i].started && !atomic_load(&ws[i].done)) all_done = false;
        uint64_t now = uv_hrtime();
        if (!all_done && now < tick && now < max_wait) {
            uint64_t nap = tick - now;
            if (nap > 20000000ULL) nap = 20000000ULL; /* notice the end of the run promptly */
            struct timespec ts = {0, (long)nap};
            nanosleep(&ts, NULL);
            continue;
        }
        hist_reset(sec);
        collect(ws, cfg->threads, sec, &tot);
        if (tot.responses + tot.status[CLIENT_ST_TIMEOUT] !=
            prev.responses + prev.status[CLIENT_ST_TIMEOUT])
            last_answer_ns = now;
        bool moved = tot.events_sent != prev.events_sent || tot.responses != prev.responses ||
                     non200_of(&tot) != non200_of(&prev);
        if (res->n_series < max_secs && (now >= tick || moved)) {
            client_second_t *s = &res->series[res->n_series++];
            s->t = (double)(now - start) / 1e9;
            s->events_sent = tot.events_sent - prev.events_sent;
            s->requests_sent = tot.requests_sent - prev.requests_sent;
            s->responses = tot.responses - prev.responses;
            s->events_ok = tot.events_ok - prev.events_ok;
            s->non_200 = non200_of(&tot) - non200_of(&prev);
            s->p50_us = hist_percentile(sec, 0.50);
            s->p90_us = hist_percentile(sec, 0.90);
            s->p99_us = hist_percentile(sec, 0.99);
            s->max_us = sec->max == 0 && sec->count == 0 ? 0 : sec->max;
            if (cb) cb(s, &tot, ud);
        }
        prev = tot;
        tick += 1000000000ULL;
        if (all_done || now >= max_wait) break;
    }
    if (uv_hrtime() >= max_wait) atomic_store(&g_stop, 1);
    for (uint32_t i = 0; i < cfg->threads; i++)
        if (ws[i].started) pthread_join(ws[i].th, NULL);

    hist_reset(sec);
    collect(ws, cfg->threads, sec, &tot);
    memcpy(res->status, tot.status, sizeof(res->status));
    res->events_sent = tot.events_sent;
    res->requests_sent = tot.requests_sent;
    res->responses = tot.responses;
    res->events_ok = tot.events_ok;
    res->events_not_ok = tot.events_not_ok;
    res->bytes_out = tot.bytes_out;
    res->bytes_in = tot.bytes_in;
    res->body_bytes_raw = tot.body_bytes_raw;
    res->conn_errors = tot.conn_errors;
    res->accepted = tot.accepted;
    res->duplicates = tot.duplicates;
    res->rejected = tot.rejected;
    res->tls_handshakes = tot.tls_handshakes;
    res->tls_handshake_failures = tot.tls_handshake_failures;
    double send_end = (double)((stop_ns > start ? stop_ns : start) - start) / 1e9;
    res->send_s = send_end;
    res->elapsed_s = (double)(last_answer_ns - start) / 1e9;
    if (res->elapsed_s < 0.001) res->elapsed_s = send_end;
    res->n_ledgers = cfg->ledger_max ? cfg->threads : 0;
    if (res->n_ledgers) {
        res->ledgers = calloc(cfg->threads, sizeof(uint8_t *));
        res->ledger_len = calloc(cfg->threads, sizeof(uint64_t));
        if (!res->ledgers || !res->ledger_len) {
            res->n_ledgers = 0;
            res->ledger_overflow = true;
        }
    }
    res->n_urls = cfg->n_targets;
    for (uint32_t i = 0; i < cfg->threads; i++) {
        worker_t *w = &ws[i];
        for (uint32_t t = 0; t < cfg->n_targets; t++) {
            client_url_result_t *d = &res->urls[t];
            const client_url_result_t *u = &w->url[t];
            d->connections += u->connections;
            d->requests_sent += u->requests_sent;
            d->events_sent += u->events_sent;
            d->responses += u->responses;
            d->events_ok += u->events_ok;
            d->non_200 += u->non_200;
            d->conn_errors += u->conn_errors;
        }
        hist_merge(&res->latency, &w->total);
        res->backlog_at_end += w->backlog_at_end;
        res->in_flight_at_end += w->in_flight_at_end;
        if (w->ledger_overflow) res->ledger_overflow = true;
        if (!res->tls_error[0] && w->tls_error[0])
            snprintf(res->tls_error, sizeof(res->tls_error), "%s", w->tls_error);
        if (res->n_ledgers) {
            res->ledgers[i] = w->ledger;
            res->ledger_len[i] = w->ledger_len;
            w->ledger = NULL;
        }
        worker_free(w);
    }
    free(ws);
    free(sec);
    return rc;
}

void client_result_free(client_result_t *res)
{
    free(res->series);
    for (uint32_t i = 0; i < res->n_ledgers; i++)
        free(res->ledgers[i]);
    free(res->ledgers);
    free(res->ledger_len);
    memset(res, 0, sizeof(*res));
}
