/*
 * http_conn.c — one HTTP/1.1 connection (see http_conn.h for the contract).
 *
 * Connection states:
 *   IDLE     between requests (idle timer armed; header timer on a fresh connection)
 *   HEADERS  a request started, headers not complete (header timer armed: slowloris)
 *   BODY     headers complete, reading the body (timer: the earlier of the request deadline
 *            and idle_timeout after the last read)
 *   BUSY     message complete: parser paused, reading stopped, answer being produced/written
 *            (timer: delivery_timeout while waiting for Kafka, request_timeout while writing)
 * Limits are checked while parsing: header bytes (431), Content-Length (413 before the body),
 * accumulated chunked body (413), body memory (503), duplicated or missing singleton headers
 * (400); each of those answers and closes the connection.
 *
 * TLS (tls set, listen only): the connection holds a tls_conn_t (tls.h). Socket bytes go into
 * its read BIO and come out as plaintext in the loop's tlsbuf, fed to llhttp exactly as plain
 * reads are; answers are encrypted in http__conn_write_raw and what OpenSSL wants to send
 * (handshake records, alerts) is flushed after every read. Decryption stops while a request is
 * BUSY, like reading does; what is left (ciphertext in the read BIO, at most one socket read,
 * charged to body_mem as pending bytes are) is decrypted by conn_next before it reads the socket
 * again, so pipelined requests inside one TLS record are not stranded. The handshake happens before
 * any request, so the fresh connection's header_timeout covers it.
 */
#include "http_conn.h"
#include "http_conn_internal.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "log.h"
#include "metrics.h"
#include "reload.h"

/* Lingering close after refusing a request mid-body: at most this long / this many bytes. */
#define LINGER_MS        1000
#define LINGER_MAX_BYTES (1024 * 1024)

static void conn_close(http_conn_t *c);
static void conn_linger(http_conn_t *c);
static void tls_pump(http_conn_t *c);
static void tls_flush(http_conn_t *c);
static void conn_next(http_conn_t *c);
static void conn_feed(http_conn_t *c, const char *data, size_t len, bool from_pending);

static const char *status_text(int status)
{
    switch (status) {
    case 100:
        return "Continue";
    case 200:
        return "OK";
    case 204:
        return "No Content";
    case 400:
        return "Bad Request";
    case 401:
        return "Unauthorized";
    case 404:
        return "Not Found";
    case 405:
        return "Method Not Allowed";
    case 408:
        return "Request Timeout";
    case 413:
        return "Payload Too Large";
    case 415:
        return "Unsupported Media Type";
    case 429:
        return "Too Many Requests";
    case 431:
        return "Request Header Fields Too Large";
    case 500:
        return "Internal Server Error";
    case 503:
        return "Service Unavailable";
    default:
        return "Unknown";
    }
}

/* ---- connection bookkeeping ---- */

static void timer_arm(http_conn_t *c, uint32_t ms);
static void conn_refuse(http_conn_t *c, int status, const char *code, const char *message);

static void timer_cb(uv_timer_t *t)
{
    http_conn_t *c = t->data;
    if (c->lingering) {
        conn_close(c);
        return;
    }
    if (c->req != NULL) {
        /* kafka.delivery_timeout passed without every report: the client hears 503 now (its
         * retry is safe); the request itself lives on, detached, until its group reports. */
        c->req->owner = NULL;
        c->req = NULL;
        LOG(LOG_DEBUG, "delivery_timeout", LI("ms", c->hl->cfg->delivery_timeout_ms));
        http_respond_retry(c, 503, "unavailable",
                           "events could not be made durable in time; retry later", 5);
        return;
    }
    if (c->state == CS_BUSY) {
        if (c->writes == 0) return; /* a deferred answer (http_conn_defer) */
        /* The client has not taken its answer within request_timeout (it does not read). */
        metrics_add(METRIC_WRITE_TIMEOUTS, 1);
        LOG(LOG_DEBUG, "write_timeout", LI("ms", c->hl->cfg->request_timeout_ms));
        conn_close(c);
        return;
    }
    if (c->state == CS_BODY) {
        /* The body is not complete by the request deadline, or stalled for idle_timeout. */
        metrics_add(METRIC_REQUEST_TIMEOUTS, 1);
        LOG(LOG_DEBUG, "request_timeout", LI("ms", c->hl->cfg->request_timeout_ms));
        conn_refuse(c, 408, "request_timeout",
                    "the request body did not arrive in time (limits.request_timeout)");
        return;
    }
    metrics_add(METRIC_CONN_TIMEOUTS, 1);
    if (c->tls != NULL && !c->tls_counted) {
        metrics_add(METRIC_TLS_HANDSHAKE_FAILURES, 1);
        c->tls_broken = true; /* no session to close politely */
        LOG(LOG_DEBUG, "tls_handshake_timeout", LI("ms", c->hl->cfg->header_timeout_ms));
    } else {
        LOG(LOG_DEBUG, "connection_timeout", LS("state", c->state == CS_IDLE ? "idle" : "request"));
    }
    conn_close(c);
}

static void timer_arm(http_conn_t *c, uint32_t ms)
{
    if (c->closing) return;
    uv_timer_start(&c->timer, timer_cb, ms > 0 ? ms : 1, 0);
}

/* Arms the timer for at most ms, and never beyond the request deadline. */
void http__timer_arm_request(http_conn_t *c, uint32_t ms)
{
    uint64_t now = uv_hrtime();
    uint64_t left = c->deadline_ns > now ? (c->deadline_ns - now) / 1000000u : 0;
    timer_arm(c, left < ms ? (uint32_t)left : ms);
}

/* ---- body memory (limits.body_memory, shared by every loop) ---- */

/* Charges (grow) or gives back (shrink) without a limit: for memory already allocated. */
void http__body_mem_adjust(http_loop_t *hl, size_t old_size, size_t new_size)
{
    if (new_size > old_size)
        atomic_fetch_add_explicit(hl->body_mem, new_size - old_size, memory_order_relaxed);
    else if (old_size > new_size)
        atomic_fetch_sub_explicit(hl->body_mem, old_size - new_size, memory_order_relaxed);
}

/* Charges a body buffer growing from old_cap to new_cap, if it fits: bodies over BODY_KEEP_MAX
 * may use only the first seven eighths of limits.body_memory (the rest stays for small ones).
 * Returns false (nothing charged, the refusal counted) when it does not. */
bool http__body_mem_admit(http_loop_t *hl, size_t old_cap, size_t new_cap)
{
    size_t delta = new_cap - old_cap;
    uint64_t limit = hl->cfg->body_memory;
    if (new_cap > BODY_KEEP_MAX) limit -= limit / 8;
    size_t prev = atomic_fetch_add_explicit(hl->body_mem, delta, memory_order_relaxed);
    if ((uint64_t)prev + delta <= limit) return true;
    atomic_fetch_sub_explicit(hl->body_mem, delta, memory_order_relaxed);
    metrics_add(METRIC_BODY_MEMORY_REFUSED, 1);
    return false;
}

static void on_handle_closed(uv_handle_t *h)
{
    http_conn_t *c = h->data;
    if (--c->open_handles > 0) return;
    http__body_mem_adjust(c->hl, c->body.cap + c->pending.cap + c->tls_held, 0);
    tls_conn_free(c->tls);
    base_buf_free(&c->body);
    base_buf_free(&c->pending);
    free(c);
}

static void conn_close(http_conn_t *c)
{
    if (c->closing) return;
    c->closing = true;
    http_loop_t *hl = c->hl;
    if (c->defer_cancel != NULL) {
        void (*cancel)(void *) = c->defer_cancel;
        c->defer_cancel = NULL;
        cancel(c->defer_arg);
    }
    if (c->req != NULL) {
        /* The request lives on until its delivery group reports; nobody to answer then. */
        c->req->owner = NULL;
        c->req = NULL;
        metrics_add(METRIC_CLIENT_ABORTS, 1);
    }
    if (c->prev != NULL)
        c->prev->next = c->next;
    else if (hl->conns == c)
        hl->conns = c->next;
    if (c->next != NULL) c->next->prev = c->prev;
    c->prev = c->next = NULL;
    if (c->counted) atomic_fetch_sub_explicit(hl->n_conns, 1, memory_order_relaxed);
    c->counted = false;
    if (c->tls != NULL && c->tls_counted && !c->tls_broken && !c->lingering) {
        /* close_notify, best effort and never waiting: a client that reads it knows the answer
         * was not truncated. */
        tls_conn_shutdown(c->tls);
        char out[256];
        size_t n = tls_conn_take(c->tls, out, sizeof out);
        uv_buf_t b = uv_buf_init(out, (unsigned)n);
        if (n > 0) (void)uv_try_write((uv_stream_t *)&c->tcp, &b, 1);
    }
    uv_close((uv_handle_t *)&c->timer, on_handle_closed);
    uv_close((uv_handle_t *)&c->tcp, on_handle_closed);
}

static void alloc_cb(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
    http_conn_t *c = h->data;
    /* One buffer per loop: a read callback consumes (or copies) its bytes before returning. */
    buf->base = c->hl->readbuf;
    buf->len = HTTP_READ_BUF;
}

static void read_cb(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf)
{
    http_conn_t *c = s->data;
    if (c->closing) return;
    if (c->lingering) {
        if (nread < 0) {
            conn_close(c);
        } else {
            c->linger_bytes += (size_t)nread;
            if (c->linger_bytes > LINGER_MAX_BYTES) conn_close(c);
        }
        return;
    }
    if (nread > 0) {
        if (c->state == CS_BODY) http__timer_arm_request(c, c->hl->cfg->idle_timeout_ms);
        if (c->tls != NULL) {
            if (tls_conn_feed(c->tls, buf->base, (size_t)nread) != TLS_OK) {
                conn_close(c);
                return;
            }
            tls_pump(c);
            return;
        }
        conn_feed(c, buf->base, (size_t)nread, false);
        return;
    }
    if (nread == 0) return;
    if (c->state == CS_HEADERS || c->state == CS_BODY) {
        metrics_add(METRIC_CLIENT_ABORTS, 1);
        LOG(LOG_DEBUG, "client_abort", LS("reason", uv_err_name((int)nread)));
    }
    conn_close(c);
}

static void read_start(http_conn_t *c)
{
    if (c->reading || c->closing) return;
    if (uv_read_start((uv_stream_t *)&c->tcp, alloc_cb, read_cb) == 0)
        c->reading = true;
    else
        conn_close(c);
}

static void read_stop(http_conn_t *c)
{
    if (!c->reading) return;
    uv_read_stop((uv_stream_t *)&c->tcp);
    c->reading = false;
}

/* ---- writing answers ---- */

static void linger_shutdown_cb(uv_shutdown_t *sr, int status)
{
    http_conn_t *c = sr->data;
    free(sr);
    if (c->closing) return;
    if (status < 0) {
        conn_close(c);
        return;
    }
    c->lingering = true;
    timer_arm(c, LINGER_MS);
    read_start(c);
}

/*
 * Closing right after refusing a request whose body is still arriving would make the kernel
 * answer the unread bytes with a reset, which can destroy our answer before the client reads it.
 * So: shut our write side (the answer is flushed, the client sees EOF), discard what still comes
 * for at most LINGER_MS / LINGER_MAX_BYTES, then close (nginx's lingering close).
 */
static void conn_linger(http_conn_t *c)
{
    if (c->tls != NULL && c->tls_counted && !c->tls_broken) {
        tls_conn_shutdown(c->tls); /* queued before the shutdown, which waits for it */
        tls_flush(c);
        if (c->closing) return;
    }
    uv_shutdown_t *sr = malloc(sizeof *sr);
    if (sr == NULL) {
        conn_close(c);
        return;
    }
    sr->data = c;
    if (uv_shutdown(sr, (uv_stream_t *)&c->tcp, linger_shutdown_cb) != 0) {
        free(sr);
        conn_close(c);
    }
}

static void write_cb(uv_write_t *wr, int status)
{
    conn_write_t *w = (conn_write_t *)wr;
    http_conn_t *c = w->c;
    c->writes--;
    if (w->observe && status == 0)
        metrics_latency_observe((double)(uv_hrtime() - w->start_ns) / 1e9);
    bool close_after = w->close_after, final = w->final;
    free(w);
    if (c->closing) return;
    if (status < 0) {
        conn_close(c);
        return;
    }
    if (!final) return;
    if (close_after && c->linger)
        conn_linger(c);
    else if (close_after)
        conn_close(c);
    else
        conn_next(c);
}

/* Over TLS: w's plaintext replaced by its ciphertext (with everything OpenSSL had queued before
 * it, in order), w's flags kept. Returns the write to send, or NULL (w freed, c closed). */
static conn_write_t *tls_encrypt(http_conn_t *c, conn_write_t *w)
{
    if (tls_conn_write(c->tls, w->data, w->len) != TLS_OK) {
        LOG(LOG_DEBUG, "tls_write_failed", LS("reason", tls_conn_reason(c->tls)));
        free(w);
        c->tls_broken = true;
        conn_close(c);
        return NULL;
    }
    size_t n = tls_conn_pending_out(c->tls);
    conn_write_t *e = malloc(sizeof *e + n);
    if (e == NULL) {
        free(w);
        conn_close(c);
        return NULL;
    }
    memcpy(e, w, sizeof *e);
    e->len = tls_conn_take(c->tls, e->data, n);
    free(w);
    return e;
}

void http__conn_write_raw(http_conn_t *c, conn_write_t *w)
{
    if (c->tls != NULL && (w = tls_encrypt(c, w)) == NULL) return;
    uv_buf_t b = uv_buf_init(w->data, (unsigned)w->len);
    w->c = c;
    c->writes++;
    if (uv_write(&w->wr, (uv_stream_t *)&c->tcp, &b, 1, write_cb) != 0) {
        c->writes--;
        free(w);
        conn_close(c);
    }
}

/* Sends what OpenSSL queued (handshake records, session tickets, an alert, close_notify). */
static void tls_flush(http_conn_t *c)
{
    size_t n = tls_conn_pending_out(c->tls);
    if (n == 0 || c->closing) return;
    conn_write_t *w = malloc(sizeof *w + n);
    if (w == NULL) {
        conn_close(c);
        return;
    }
    w->len = tls_conn_take(c->tls, w->data, n);
    w->close_after = false;
    w->final = false;
    w->observe = false;
    w->c = c;
    uv_buf_t b = uv_buf_init(w->data, (unsigned)w->len);
    c->writes++;
    if (uv_write(&w->wr, (uv_stream_t *)&c->tcp, &b, 1, write_cb) != 0) {
        c->writes--;
        free(w);
        conn_close(c);
    }
}

/*
 * Decrypts what has arrived and feeds it to llhttp, until OpenSSL needs more input, a request
 * is complete (BUSY: the rest waits, see the top of this file) or the connection ends; then
 * flushes what OpenSSL wants to send and re-charges the undecrypted bytes to body_mem.
 */
static void tls_pump(http_conn_t *c)
{
    http_loop_t *hl = c->hl;
    while (!c->closing && c->state != CS_BUSY) {
        int n = tls_conn_read(c->tls, hl->tlsbuf, HTTP_READ_BUF);
        if (!c->tls_counted && tls_conn_established(c->tls)) {
            c->tls_counted = true;
            metrics_add(METRIC_TLS_HANDSHAKES, 1);
        }
        if (n > 0) {
            conn_feed(c, hl->tlsbuf, (size_t)n, false);
            continue;
        }
        if (n == 0) break;
        if (!c->tls_counted) {
            metrics_add(METRIC_TLS_HANDSHAKE_FAILURES, 1);
            LOG(LOG_DEBUG, "tls_handshake_failed", LS("reason", tls_conn_reason(c->tls)));
        } else if (n != TLS_E_CLOSED || c->state == CS_HEADERS || c->state == CS_BODY) {
            metrics_add(METRIC_CLIENT_ABORTS, 1);
            LOG(LOG_DEBUG, "client_abort",
                LS("reason", n == TLS_E_CLOSED ? "close_notify" : tls_conn_reason(c->tls)));
        }
        if (n != TLS_E_CLOSED) c->tls_broken = true;
        /* The alert OpenSSL made, if any, best effort (a queued uv_write would be cancelled
         * by the close). */
        char alert[512];
        size_t an = tls_conn_take(c->tls, alert, sizeof alert);
        uv_buf_t b = uv_buf_init(alert, (unsigned)an);
        if (an > 0) (void)uv_try_write((uv_stream_t *)&c->tcp, &b, 1);
        conn_close(c);
        return;
    }
    if (c->closing) return;
    tls_flush(c);
    if (c->closing) return;
    size_t held = tls_conn_pending_in(c->tls);
    http__body_mem_adjust(hl, c->tls_held, held);
    c->tls_held = held;
}

/*
 * Writes a complete answer (http_conn.h). After it is written the connection closes (the
 * client asked, a refusal cleared keep_alive, or draining) or goes on with the next request.
 */
void http_respond(http_conn_t *c, int status, const char *ctype, const char *body, size_t len,
                  const char *extra)
{
    c->defer_cancel = NULL; /* answered: a deferred handler is done with c */
    if (c->closing) return;
    http_loop_t *hl = c->hl;
    bool close_after = !c->keep_alive || atomic_load_explicit(hl->draining, memory_order_relaxed);
    char head[1024], clen[48] = "";
    /* RFC 9110 §8.6: no Content-Length on a 204. */
    if (status != 204) snprintf(clen, sizeof clen, "Content-Length: %zu\r\n", len);
    int hn = snprintf(head, sizeof head,
                      "HTTP/1.1 %d %s\r\n"
                      "%s"
                      "%s%s%s"
                      "%s"
                      "Connection: %s\r\n\r\n",
                      status, status_text(status), clen, ctype != NULL ? "Content-Type: " : "",
                      ctype != NULL ? ctype : "", ctype != NULL ? "\r\n" : "",
                      extra != NULL ? extra : "", close_after ? "close" : "keep-alive");
    if (hn < 0 || (size_t)hn >= sizeof head) {
        conn_close(c);
        return;
    }
    /* HEAD: the same headers (Content-Length included), no body. */
    size_t blen = c->method == HTTP_HEAD ? 0 : len;
    conn_write_t *w = malloc(sizeof *w + (size_t)hn + blen);
    if (w == NULL) {
        conn_close(c);
        return;
    }
    memcpy(w->data, head, (size_t)hn);
    if (blen > 0) memcpy(w->data + hn, body, blen);
    w->len = (size_t)hn + blen;
    w->close_after = close_after;
    w->final = true;
    w->observe = route_is_ingest(c->route) && c->start_ns != 0;
    w->start_ns = c->start_ns;
    metrics_http_status(status);
    c->state = CS_BUSY;
    read_stop(c);
    /* The client has request_timeout to take the answer (write_cb moves on and re-arms). */
    timer_arm(c, hl->cfg->request_timeout_ms);
    http__conn_write_raw(c, w);
}

void http_respond_retry(http_conn_t *c, int status, const char *code, const char *message,
                        int retry_after)
{
    char body[512];
    base_buf_t out = {body, 0, sizeof body, sizeof body};
    /* A stack buffer posing as a full-capacity base_buf_t: appends never reallocate it. */
    if (ingest_error_json(&out, code, message) != 0) out.len = 0;
    char extra[256];
    int n = 0;
    extra[0] = '\0';
    if (route_is_cors(c->route))
        n += snprintf(extra + n, sizeof extra - (size_t)n, "Access-Control-Allow-Origin: *\r\n");
    if (retry_after > 0)
        n += snprintf(extra + n, sizeof extra - (size_t)n, "Retry-After: %d\r\n", retry_after);
    if (status == 405)
        snprintf(extra + n, sizeof extra - (size_t)n, "Allow: %s\r\n",
                 c->route != NULL ? c->route->allow : "GET, HEAD");
    http_respond(c, status, "application/json", out.data, out.len, extra);
}

void http_respond_error(http_conn_t *c, int status, const char *code, const char *message)
{
    http_respond_retry(c, status, code, message, 0);
}

void http_respond_json(http_conn_t *c, int status, const char *json, size_t len)
{
    http_respond(c, status, "application/json", json, len,
                 route_is_cors(c->route) ? "Access-Control-Allow-Origin: *\r\n" : NULL);
}

/* A refusal that ends the connection: answered, then a lingering close (the client may still
 * be sending). 503 carries Retry-After: 5. */
static void conn_refuse(http_conn_t *c, int status, const char *code, const char *message)
{
    c->keep_alive = false;
    c->linger = true;
    http_respond_retry(c, status, code, message, status == 503 ? 5 : 0);
}

/* ---- for route handlers (http_conn.h) ---- */

http_loop_t *http_conn_loop(const http_conn_t *c)
{
    return c->hl;
}

const char *http_conn_target(const http_conn_t *c, size_t *len)
{
    *len = c->url_len;
    return c->url;
}

const char *http_conn_header(const http_conn_t *c, http_hdr_t h, size_t *len)
{
    *len = 0;
    if (h < 0 || h >= HTTP_HDR_COUNT || !c->hdr[h].seen || c->hdr[h].overflow) return NULL;
    *len = c->hdr[h].len;
    return c->hdr[h].buf;
}

void http_conn_defer(http_conn_t *c, void (*cancel_cb)(void *arg), void *arg)
{
    c->defer_cancel = cancel_cb;
    c->defer_arg = arg;
}

/* ---- request dispatch ---- */

/* True when s[0..len) is 1..len of the bytes in allowed. */
static bool chars_in(const char *s, size_t len, const char *allowed)
{
    if (len == 0) return false;
    for (size_t i = 0; i < len; i++)
        if (s[i] == '\0' || strchr(allowed, s[i]) == NULL) return false;
    return true;
}

#define TOKEN_CHARS "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789!#$%&'*+-.^_`|~"

/*
 * CORS preflight (OPTIONS on an ingest route or the settings route). Any origin may post (the
 * write key, not the origin, authenticates; no cookies are involved, so "*" is safe). The
 * headers the browser asks for (Access-Control-Request-Headers) are granted as asked when they
 * are a plain list of header names — analytics-next adds X-Retry-Count on retries, other SDKs
 * their own — else the headers sluice reads are granted.
 */
static void respond_preflight(http_conn_t *c)
{
    const hdr_val_t *h = &c->hdr[HTTP_HDR_ACRH];
    bool echo = h->seen && !h->overflow && chars_in(h->buf, h->len, TOKEN_CHARS ", \t");
    static const char sluice_headers[] =
        "Authorization, Content-Type, Content-Encoding, X-Retry-Count";
    char extra[640];
    int n = snprintf(extra, sizeof extra,
                     "Access-Control-Allow-Origin: *\r\n"
                     "Access-Control-Allow-Methods: %s\r\n"
                     "Access-Control-Allow-Headers: %.*s\r\n"
                     "Access-Control-Max-Age: 86400\r\n",
                     c->route->allow, echo ? (int)h->len : (int)sizeof sluice_headers - 1,
                     echo ? h->buf : sluice_headers);
    if (n < 0 || (size_t)n >= sizeof extra) {
        conn_close(c);
        return;
    }
    http_respond(c, 204, NULL, NULL, 0, extra);
}

void http_conn_ingest(http_conn_t *c, const route_t *r)
{
    http_loop_t *hl = c->hl;
    ingest_input_t in = {
        .kind = r->kind,
        .fmt = c->fmt,
        .enc = c->enc,
        .body = c->body.data,
        .len = c->body.len,
        .header_key = c->header_key,
        .source = c->source,
        .key_index = c->key_index,
        .start_ns = c->start_ns,
    };
    ingest_req_t *req = NULL;
    ingest_error_t err;
    if (ingest_start(hl->ingest, &hl->scratch, &hl->mailbox, &in, &req, &err) != 0) {
        LOG(LOG_DEBUG, "request_refused", LI("status", err.status), LS("error", err.code));
        http_respond_retry(c, err.status, err.code, err.message, err.retry_after);
        return;
    }
    req->owner = c;
    req->lprev = NULL;
    req->lnext = hl->reqs;
    if (hl->reqs != NULL) hl->reqs->lprev = req;
    hl->reqs = req;
    c->req = req;
    /* Now waiting for Kafka, not reading; the timer now bounds the wait for the reports. */
    timer_arm(c, hl->cfg->delivery_timeout_ms);
}

static void conn_dispatch(http_conn_t *c)
{
    read_stop(c);
    uv_timer_stop(&c->timer);
    if (c->early_status != 0) {
        http_respond_error(c, c->early_status, c->early_code, c->early_msg);
        return;
    }
    if (c->method == HTTP_OPTIONS && route_is_cors(c->route)) {
        respond_preflight(c);
        return;
    }
    c->route->handler(c, c->route);
}

/* Saves data[consumed..len) for after the answer. from_pending: data lies inside c->pending. */
static int keep_pending(http_conn_t *c, const char *data, size_t len, size_t consumed,
                        bool from_pending)
{
    if (from_pending) { /* still in place: pending.data[pending_off..pending.len) */
        c->pending_off += consumed;
        return 0;
    }
    size_t rest = len - consumed;
    c->pending_off = 0;
    base_buf_reset(&c->pending);
    if (rest == 0) return 0;
    /* The buffer holds at most one read (HTTP_READ_BUF, its max): bounded per connection. Its
     * allocation is charged to body_mem (already received: it is counted, never refused). */
    size_t was = c->pending.cap;
    if (base_buf_grow_to(&c->pending, rest) != BASE_OK) return -1;
    http__body_mem_adjust(c->hl, was, c->pending.cap);
    return base_buf_append(&c->pending, data + consumed, rest) == BASE_OK ? 0 : -1;
}

static void conn_feed(http_conn_t *c, const char *data, size_t len, bool from_pending)
{
    c->exec_data = data;
    llhttp_errno_t err = llhttp_execute(&c->parser, data, len);
    if (err == HPE_OK) {
        if (from_pending) {
            c->pending_off = 0;
            base_buf_reset(&c->pending);
        }
        return;
    }
    if (err == HPE_PAUSED) {
        const char *pos = llhttp_get_error_pos(&c->parser);
        size_t consumed =
            pos != NULL && pos >= data && pos <= data + len ? (size_t)(pos - data) : len;
        if (keep_pending(c, data, len, consumed, from_pending) != 0) {
            conn_close(c);
            return;
        }
        conn_dispatch(c);
        return;
    }
    read_stop(c);
    if (c->fatal_status != 0) {
        LOG(LOG_DEBUG, "request_refused", LI("status", c->fatal_status),
            LS("error", c->fatal_code));
        if (c->fatal_status == 400) metrics_add(METRIC_HTTP_PARSE_ERRORS, 1);
        conn_refuse(c, c->fatal_status, c->fatal_code, c->fatal_msg);
        return;
    }
    metrics_add(METRIC_HTTP_PARSE_ERRORS, 1);
    LOG(LOG_DEBUG, "http_parse_error", LS("error", llhttp_errno_name(err)),
        LS("reason", llhttp_get_error_reason(&c->parser)));
    conn_refuse(c, 400, "bad_request", "malformed HTTP request");
}

static void conn_next(http_conn_t *c)
{
    c->state = CS_IDLE;
    http__request_reset(c);
    llhttp_resume(&c->parser);
    if (c->pending.len > c->pending_off) {
        conn_feed(c, c->pending.data + c->pending_off, c->pending.len - c->pending_off, true);
        if (c->closing || c->state == CS_BUSY) return;
    }
    if (c->tls != NULL && (tls_conn_pending_in(c->tls) > 0 || tls_conn_has_plaintext(c->tls))) {
        tls_pump(c);
        if (c->closing || c->state == CS_BUSY) return;
    }
    read_start(c);
    if (c->state == CS_IDLE) timer_arm(c, c->hl->cfg->idle_timeout_ms);
}

/* ---- loop-level API ---- */

int http_loop_init(http_loop_t *hl, uv_loop_t *uv, const config_t *cfg, ingest_ctx_t *ingest,
                   uv_async_t *async, atomic_bool *draining, atomic_uint *n_conns,
                   atomic_size_t *body_mem)
{
    memset(hl, 0, sizeof *hl);
    hl->uv = uv;
    hl->cfg = cfg;
    hl->ingest = ingest;
    hl->draining = draining;
    hl->n_conns = n_conns;
    hl->body_mem = body_mem;
    ingest_mailbox_init(&hl->mailbox, async);
    hl->readbuf = malloc(HTTP_READ_BUF);
    hl->tlsbuf = cfg->tls_cert_file != NULL ? malloc(HTTP_READ_BUF) : NULL;
    int rc = ingest_scratch_init(&hl->scratch, cfg);
    /* The decompression buffer holds bodies too. */
    http__body_mem_adjust(hl, 0, hl->scratch.plain_cap);
    return hl->readbuf != NULL && (cfg->tls_cert_file == NULL || hl->tlsbuf != NULL) && rc == 0
               ? 0
               : -1;
}

static void refused_write_cb(uv_write_t *wr, int status)
{
    conn_write_t *w = (conn_write_t *)wr;
    http_conn_t *c = w->c;
    free(w);
    conn_close(c);
}

void http_conn_accept(http_loop_t *hl, uv_stream_t *listener, http_port_t port)
{
    http_conn_t *c = calloc(1, sizeof *c);
    if (c == NULL) return;
    c->hl = hl;
    c->port = port;
    c->tcp.data = c;
    c->timer.data = c;
    c->key_index = -1;
    base_buf_init(&c->body, (size_t)hl->cfg->body_bytes);
    base_buf_init(&c->pending, HTTP_READ_BUF);
    uv_tcp_init(hl->uv, &c->tcp);
    uv_timer_init(hl->uv, &c->timer);
    c->open_handles = 2;
    http__parser_init(c);
    c->next = hl->conns;
    if (hl->conns != NULL) hl->conns->prev = c;
    hl->conns = c;
    if (uv_accept(listener, (uv_stream_t *)&c->tcp) != 0) {
        conn_close(c);
        return;
    }
    uv_tcp_nodelay(&c->tcp, 1);
    unsigned n = atomic_fetch_add_explicit(hl->n_conns, 1, memory_order_relaxed) + 1;
    c->counted = true;
    bool use_tls = port != HTTP_PORT_ADMIN && hl->cfg->tls_cert_file != NULL;
    if (use_tls && (n > hl->cfg->max_connections || atomic_load(hl->draining))) {
        /* On the TLS port a 503 would cost a whole handshake at the moment we are overloaded:
         * the connection is closed unanswered (counted as refused). */
        metrics_add(METRIC_CONN_REFUSED, 1);
        conn_close(c);
        return;
    }
    if (n > hl->cfg->max_connections || atomic_load(hl->draining)) {
        metrics_add(METRIC_CONN_REFUSED, 1);
        metrics_http_status(503);
        static const char body[] = "{\"success\":false,\"error\":\"too_many_connections\","
                                   "\"message\":\"connection limit reached; retry later\"}";
        char head[256];
        int hn = snprintf(head, sizeof head,
                          "HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
                          "Content-Length: %zu\r\nRetry-After: 1\r\nConnection: close\r\n\r\n",
                          sizeof body - 1);
        conn_write_t *w = malloc(sizeof *w + (size_t)hn + sizeof body);
        if (w == NULL) {
            conn_close(c);
            return;
        }
        memcpy(w->data, head, (size_t)hn);
        memcpy(w->data + hn, body, sizeof body - 1);
        w->len = (size_t)hn + sizeof body - 1;
        w->c = c;
        c->state = CS_BUSY;
        uv_buf_t b = uv_buf_init(w->data, (unsigned)w->len);
        if (uv_write(&w->wr, (uv_stream_t *)&c->tcp, &b, 1, refused_write_cb) != 0) {
            free(w);
            conn_close(c);
        }
        return;
    }
    if (use_tls) {
        /* The context current now (reload swaps it for new connections only). */
        int rc = TLS_E_NOMEM;
        if (hl->ingest->reload != NULL) {
            reload_ticket_t t;
            const runtime_t *rt = reload_enter(hl->ingest->reload, &t);
            if (rt->tls != NULL) rc = tls_conn_new(rt->tls, &c->tls);
            reload_exit(hl->ingest->reload, t);
        }
        if (rc != TLS_OK) {
            LOG(LOG_WARN, "tls_session_failed", LS("reason", tls_strerror(rc)));
            conn_close(c);
            return;
        }
    }
    metrics_add(METRIC_CONN_ACCEPTED, 1);
    c->state = CS_IDLE;
    /* A fresh connection has header_timeout to send its first request's headers. */
    timer_arm(c, hl->cfg->header_timeout_ms);
    read_start(c);
}

void http_loop_deliver(http_loop_t *hl)
{
    ingest_req_t *req = ingest_mailbox_take(&hl->mailbox);
    while (req != NULL) {
        ingest_req_t *next = ingest_req_next(req);
        ingest_reply_t reply;
        ingest_finish(req, &reply);
        if (req->lprev != NULL)
            req->lprev->lnext = req->lnext;
        else if (hl->reqs == req)
            hl->reqs = req->lnext;
        if (req->lnext != NULL) req->lnext->lprev = req->lprev;
        http_conn_t *c = req->owner;
        if (c != NULL) {
            c->req = NULL;
            if (reply.status == 200)
                http_respond_json(c, 200, reply.body, reply.body_len);
            else
                http_respond_retry(c, reply.status, reply.code, reply.message, reply.retry_after);
        }
        ingest_req_free(req);
        req = next;
    }
}

void http_loop_drain(http_loop_t *hl)
{
    if (hl->drained) return;
    hl->drained = true;
    http_conn_t *c = hl->conns;
    while (c != NULL) {
        http_conn_t *next = c->next;
        if (c->state == CS_IDLE && c->pending.len == c->pending_off && c->writes == 0)
            conn_close(c);
        c = next;
    }
}

void http_loop_close_all(http_loop_t *hl)
{
    while (hl->conns != NULL)
        conn_close(hl->conns);
}

void http_loop_free(http_loop_t *hl)
{
    ingest_req_t *r = hl->reqs;
    while (r != NULL) {
        ingest_req_t *next = r->lnext;
        ingest_req_free(r);
        r = next;
    }
    hl->reqs = NULL;
    if (hl->body_mem != NULL) http__body_mem_adjust(hl, hl->scratch.plain_cap, 0);
    hl->body_mem = NULL;
    ingest_scratch_free(&hl->scratch);
    free(hl->readbuf);
    hl->readbuf = NULL;
    free(hl->tlsbuf);
    hl->tlsbuf = NULL;
}
