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
 * reads are; answers are encrypted in conn_write_raw and what OpenSSL wants to send (handshake
 * records, alerts) is flushed after every read. Decryption stops while a request is BUSY, like
 * reading does; what is left (ciphertext in the read BIO, at most one socket read, charged to
 * body_mem as pending bytes are) is decrypted by conn_next before it reads the socket again, so
 * pipelined requests inside one TLS record are not stranded. The handshake happens before any
 * request, so the fresh connection's header_timeout covers it.
 */
#include "http_conn.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <llhttp.h>

#include "auth.h"
#include "body.h"
#include "log.h"
#include "metrics.h"
#include "proto.h"
#include "reload.h"
#include "routes.h"
#include "tls.h"

#define URL_MAX   256
#define FIELD_MAX 32
/* Per-header overhead counted against header_bytes (": " and CRLF), so that many empty
 * headers cannot slip past the limit. */
#define HEADER_OVERHEAD 4
/* Keep a connection's body allocation between requests only up to this size. */
#define BODY_KEEP_MAX (64 * 1024)
/* Lingering close after refusing a request mid-body: at most this long / this many bytes. */
#define LINGER_MS        1000
#define LINGER_MAX_BYTES (1024 * 1024)

typedef enum { CS_IDLE, CS_HEADERS, CS_BODY, CS_BUSY } conn_state_t;

/* Headers we capture (http_hdr_t, http_conn.h); values longer than their buffer are flagged,
 * never truncated silently. */
static const char *const hdr_names[HTTP_HDR_COUNT] = {"content-type",
                                                      "content-encoding",
                                                      "authorization",
                                                      "expect",
                                                      "host",
                                                      "access-control-request-headers",
                                                      "transfer-encoding"};
static const size_t hdr_caps[HTTP_HDR_COUNT] = {128, 64, 1100, 32, 256, 256, 32};

/* Headers that may appear at most once (RFC 9110 §5.3: a second one is either a list the field
 * does not allow or a disagreement a front proxy may resolve differently; CVE-2022-32213). */
static const char *const once_names[] = {"host",           "authorization",
                                         "content-type",   "content-encoding",
                                         "content-length", "transfer-encoding"};
#define ONCE_HOST  0
#define ONCE_COUNT (sizeof once_names / sizeof once_names[0])

typedef struct hdr_val {
    char *buf;
    size_t len;
    bool seen, overflow;
} hdr_val_t;

struct http_conn {
    uv_tcp_t tcp;
    uv_timer_t timer;
    llhttp_t parser;
    http_loop_t *hl;
    http_conn_t *prev, *next; /* hl->conns */
    http_port_t port;         /* the listener it came from: which routes it serves */
    int open_handles;
    bool closing, reading, counted;
    bool linger;    /* close after the answer by lingering: the client may still be sending */
    bool lingering; /* write side shut, discarding input until EOF or the linger timer */
    size_t linger_bytes;
    conn_state_t state;
    unsigned writes; /* uv_write requests outstanding */

    /* The request being parsed. */
    uint64_t start_ns;
    uint64_t deadline_ns;  /* start + request_timeout: the body must be complete by then */
    unsigned once_seen;    /* bit i: once_names[i] seen */
    const char *exec_data; /* the buffer llhttp_execute is parsing now */
    bool value_started;    /* a piece of the current header value was seen */
    size_t header_bytes;
    char url[URL_MAX];
    size_t url_len;
    bool url_long;
    char field[FIELD_MAX];
    size_t field_len;
    bool field_long;
    http_hdr_t cur_hdr;
    char hdr_mem[128 + 64 + 1100 + 32 + 256 + 256 + 32];
    hdr_val_t hdr[HTTP_HDR_COUNT];
    const route_t *route; /* NULL: no such endpoint (on this listener) */
    int method;
    bool keep_alive;
    /* A refusal decided before the body: answered at message complete, body discarded. */
    int early_status;
    const char *early_code, *early_msg;
    /* A refusal that ends the connection now (413 before body, 431, draining). */
    int fatal_status;
    const char *fatal_code, *fatal_msg;
    bool header_key;
    const char *source;
    int key_index;
    proto_format_t fmt;
    body_encoding_t enc;
    char *body;
    size_t body_len, body_cap; /* body_cap bytes are charged to hl->body_mem */
    size_t body_seen;          /* body bytes of this request, kept or discarded */

    /* Pipelined bytes received beyond the current message (pending_cap charged to body_mem). */
    char *pending;
    size_t pending_off, pending_len, pending_cap;

    ingest_req_t *req; /* waiting for Kafka, NULL otherwise */
    /* A handler answering later (http_conn_defer): called if the connection closes first. */
    void (*defer_cancel)(void *arg);
    void *defer_arg;

    tls_conn_t *tls;  /* HTTPS: the session; NULL on plain connections */
    size_t tls_held;  /* undecrypted ciphertext charged to body_mem */
    bool tls_counted; /* handshake counted (sluice_tls_handshakes_total) */
    bool tls_broken;  /* a protocol error: no close_notify */
};

typedef struct conn_write {
    uv_write_t wr;
    http_conn_t *c;
    bool close_after, final;
    bool observe; /* ingest request: record its latency */
    uint64_t start_ns;
    size_t len;
    char data[];
} conn_write_t;

static void conn_close(http_conn_t *c);
static void conn_linger(http_conn_t *c);
static void tls_pump(http_conn_t *c);
static void tls_flush(http_conn_t *c);
static void conn_next(http_conn_t *c);
static void conn_feed(http_conn_t *c, const char *data, size_t len, bool from_pending);

/* ---- small pure helpers (unit-tested) ---- */

static bool route_is_ingest(const route_t *r)
{
    return r != NULL && (r->flags & ROUTE_F_INGEST) != 0;
}

/* Routes a browser page calls cross-origin: CORS headers on every answer, OPTIONS preflight. */
static bool route_is_cors(const route_t *r)
{
    return r != NULL && (r->flags & ROUTE_F_CORS) != 0;
}

/* Body format from a Content-Type value (SPEC §3): msgpack only when labelled
 * application/msgpack or application/x-msgpack (parameters ignored), JSON whatever else the
 * client says — missing, application/json, text/plain (browsers' sendBeacon and
 * analytics-next's fetch), application/x-www-form-urlencoded (@rudderstack/rudder-sdk-node's
 * gzip bodies) or anything else. A body that then is not JSON is a 400, not a 415. */
static proto_format_t content_type_parse(const char *s, size_t len)
{
    size_t end = 0;
    while (end < len && s[end] != ';')
        end++;
    size_t b = 0;
    while (b < end && (s[b] == ' ' || s[b] == '\t'))
        b++;
    while (end > b && (s[end - 1] == ' ' || s[end - 1] == '\t'))
        end--;
    const char *t = s + b;
    size_t n = end - b;
    if (n == 19 && strncasecmp(t, "application/msgpack", 19) == 0) return PROTO_FMT_MSGPACK;
    if (n == 21 && strncasecmp(t, "application/x-msgpack", 21) == 0) return PROTO_FMT_MSGPACK;
    return PROTO_FMT_JSON;
}

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

static http_conn_t *conn_of(llhttp_t *p)
{
    return p->data;
}

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
static void timer_arm_request(http_conn_t *c, uint32_t ms)
{
    uint64_t now = uv_hrtime();
    uint64_t left = c->deadline_ns > now ? (c->deadline_ns - now) / 1000000u : 0;
    timer_arm(c, left < ms ? (uint32_t)left : ms);
}

/* ---- body memory (limits.body_memory, shared by every loop) ---- */

/* Charges (grow) or gives back (shrink) without a limit: for memory already allocated. */
static void body_mem_adjust(http_loop_t *hl, size_t old_size, size_t new_size)
{
    if (new_size > old_size)
        atomic_fetch_add_explicit(hl->body_mem, new_size - old_size, memory_order_relaxed);
    else if (old_size > new_size)
        atomic_fetch_sub_explicit(hl->body_mem, old_size - new_size, memory_order_relaxed);
}

/* Charges a body buffer growing from old_cap to new_cap, if it fits: bodies over BODY_KEEP_MAX
 * may use only the first seven eighths of limits.body_memory (the rest stays for small ones).
 * Returns false (nothing charged, the refusal counted) when it does not. */
static bool body_mem_admit(http_loop_t *hl, size_t old_cap, size_t new_cap)
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
    body_mem_adjust(c->hl, c->body_cap + c->pending_cap + c->tls_held, 0);
    tls_conn_free(c->tls);
    free(c->body);
    free(c->pending);
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
        if (c->state == CS_BODY) timer_arm_request(c, c->hl->cfg->idle_timeout_ms);
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

static void conn_write_raw(http_conn_t *c, conn_write_t *w)
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
    body_mem_adjust(hl, c->tls_held, held);
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
    conn_write_raw(c, w);
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

/* ---- llhttp callbacks ---- */

static void request_reset(http_conn_t *c)
{
    c->start_ns = 0;
    c->header_bytes = 0;
    c->url_len = 0;
    c->url_long = false;
    c->field_len = 0;
    c->field_long = false;
    c->cur_hdr = HTTP_HDR_NONE;
    for (int i = 0; i < HTTP_HDR_COUNT; i++) {
        c->hdr[i].len = 0;
        c->hdr[i].seen = false;
        c->hdr[i].overflow = false;
    }
    c->route = NULL;
    c->early_status = 0;
    c->fatal_status = 0;
    c->header_key = false;
    c->source = NULL;
    c->key_index = -1;
    c->once_seen = 0;
    c->body_len = 0;
    c->body_seen = 0;
    /* Keep a small buffer for the next request, unless bodies are using half the budget. */
    if (c->body_cap > BODY_KEEP_MAX ||
        (c->body_cap > 0 && atomic_load_explicit(c->hl->body_mem, memory_order_relaxed) >=
                                c->hl->cfg->body_memory / 2)) {
        body_mem_adjust(c->hl, c->body_cap, 0);
        free(c->body);
        c->body = NULL;
        c->body_cap = 0;
    }
}

static int on_message_begin(llhttp_t *p)
{
    http_conn_t *c = conn_of(p);
    request_reset(c);
    c->start_ns = uv_hrtime();
    c->deadline_ns = c->start_ns + (uint64_t)c->hl->cfg->request_timeout_ms * 1000000u;
    c->state = CS_HEADERS;
    timer_arm_request(c, c->hl->cfg->header_timeout_ms);
    return 0;
}

static int header_budget(http_conn_t *c, size_t n)
{
    c->header_bytes += n;
    if (c->header_bytes > c->hl->cfg->header_bytes) {
        c->fatal_status = 431;
        c->fatal_code = "headers_too_large";
        c->fatal_msg = "request headers larger than allowed";
        return HPE_USER;
    }
    return 0;
}

/* llhttp hands a URL, field or value over in pieces: appends one piece to buf (holding *len of
 * cap bytes), or sets *overflow and keeps what it has once the piece would not fit. */
static void append_capped(char *buf, size_t *len, size_t cap, bool *overflow, const char *at,
                          size_t n)
{
    if (*overflow || *len + n > cap) {
        *overflow = true;
        return;
    }
    memcpy(buf + *len, at, n);
    *len += n;
}

static int on_url(llhttp_t *p, const char *at, size_t len)
{
    http_conn_t *c = conn_of(p);
    append_capped(c->url, &c->url_len, URL_MAX, &c->url_long, at, len);
    return header_budget(c, len);
}

static int on_header_field(llhttp_t *p, const char *at, size_t len)
{
    http_conn_t *c = conn_of(p);
    append_capped(c->field, &c->field_len, FIELD_MAX, &c->field_long, at, len);
    return header_budget(c, len);
}

static int on_header_field_complete(llhttp_t *p)
{
    http_conn_t *c = conn_of(p);
    c->cur_hdr = HTTP_HDR_NONE;
    c->value_started = false;
    for (unsigned i = 0; i < ONCE_COUNT && !c->field_long; i++) {
        if (strlen(once_names[i]) != c->field_len ||
            strncasecmp(c->field, once_names[i], c->field_len) != 0)
            continue;
        if (c->once_seen & (1u << i)) {
            c->fatal_status = 400;
            c->fatal_code = "bad_request";
            c->fatal_msg = "a header that must appear once is repeated";
            return HPE_USER;
        }
        c->once_seen |= 1u << i;
        break;
    }
    if (!c->field_long) {
        for (int i = 0; i < HTTP_HDR_COUNT; i++) {
            if (strlen(hdr_names[i]) == c->field_len &&
                strncasecmp(c->field, hdr_names[i], c->field_len) == 0) {
                c->cur_hdr = (http_hdr_t)i;
                c->hdr[i].len = 0;
                c->hdr[i].overflow = false;
                c->hdr[i].seen = true;
                break;
            }
        }
    }
    c->field_len = 0;
    c->field_long = false;
    return header_budget(c, HEADER_OVERHEAD);
}

static int on_header_value(llhttp_t *p, const char *at, size_t len)
{
    http_conn_t *c = conn_of(p);
    /* llhttp hands a value over in one piece per read, and starts a new piece within a read
     * only for an obs-fold continuation line. RFC 9112 §5.2 lets a server refuse those, and a
     * proxy may unfold them differently: refuse. */
    bool fold = c->value_started && at != c->exec_data;
    c->value_started = true;
    if (fold) {
        c->fatal_status = 400;
        c->fatal_code = "bad_request";
        c->fatal_msg = "folded header lines (obs-fold) are not accepted";
        return HPE_USER;
    }
    if (c->cur_hdr != HTTP_HDR_NONE) {
        hdr_val_t *h = &c->hdr[c->cur_hdr];
        append_capped(h->buf, &h->len, hdr_caps[c->cur_hdr], &h->overflow, at, len);
    }
    return header_budget(c, len);
}

static int on_header_value_complete(llhttp_t *p)
{
    conn_of(p)->cur_hdr = HTTP_HDR_NONE;
    return 0;
}

static void early(http_conn_t *c, int status, const char *code, const char *msg)
{
    if (c->early_status != 0) return;
    c->early_status = status;
    c->early_code = code;
    c->early_msg = msg;
}

static void send_continue(http_conn_t *c)
{
    static const char line[] = "HTTP/1.1 100 Continue\r\n\r\n";
    conn_write_t *w = malloc(sizeof *w + sizeof line - 1);
    if (w == NULL) return; /* the client sends the body after its own timeout */
    memcpy(w->data, line, sizeof line - 1);
    w->len = sizeof line - 1;
    w->close_after = false;
    w->final = false;
    w->observe = false;
    conn_write_raw(c, w);
}

/* Auth from the Authorization header, decided before the body is read. */
static void header_auth(http_conn_t *c)
{
    http_loop_t *hl = c->hl;
    hdr_val_t *h = &c->hdr[HTTP_HDR_AUTHORIZATION];
    if (!h->seen) return; /* maybe the body carries writeKey */
    char key[AUTH_KEY_MAX];
    size_t klen = 0;
    int rc =
        h->overflow ? AUTH_E_MALFORMED : auth_parse_header(h->buf, h->len, key, sizeof key, &klen);
    if (rc == AUTH_OK) rc = auth_lookup(hl->ingest->auth, key, klen, &c->source, &c->key_index);
    if (rc == AUTH_OK) {
        c->header_key = true;
        return;
    }
    if (hl->cfg->dev) return; /* dev: anything goes, the body or "dev" decides the source */
    metrics_add(METRIC_AUTH_FAILURES, 1);
    if (rc == AUTH_E_UNKNOWN && log_get_level() <= LOG_DEBUG) {
        char masked[16];
        LOG(LOG_DEBUG, "unknown_write_key", LS("key", auth_mask(key, klen, masked, sizeof masked)));
    }
    early(c, 401, "unauthorized",
          rc == AUTH_E_UNKNOWN ? "unknown write key"
                               : (rc == AUTH_E_MISSING ? "a write key is required"
                                                       : "malformed Authorization header"));
}

/* A refusal decided at the headers is answered at message complete (the body is read and
 * discarded, the connection kept). But a client that sent Expect: 100-continue waits before
 * sending its body: answer it now and close (RFC 9110 §10.1.1). */
static int refuse_early(http_conn_t *c, bool expect_continue)
{
    if (!expect_continue) return 0;
    c->fatal_status = c->early_status;
    c->fatal_code = c->early_code;
    c->fatal_msg = c->early_msg;
    return HPE_USER;
}

/* True when a Transfer-Encoding value is exactly "chunked" (case-insensitive, blanks around). */
static bool te_is_chunked(const char *s, size_t len)
{
    while (len > 0 && (*s == ' ' || *s == '\t')) {
        s++;
        len--;
    }
    while (len > 0 && (s[len - 1] == ' ' || s[len - 1] == '\t'))
        len--;
    return len == 7 && strncasecmp(s, "chunked", 7) == 0;
}

/* A body that does not fit in limits.body_memory: 503 now, and close. */
static int refuse_body_memory(http_conn_t *c)
{
    c->fatal_status = 503;
    c->fatal_code = "unavailable";
    c->fatal_msg = "request bodies are using all the memory set aside for them; retry later";
    return HPE_USER;
}

static int on_headers_complete(llhttp_t *p)
{
    http_conn_t *c = conn_of(p);
    http_loop_t *hl = c->hl;
    const config_t *cfg = hl->cfg;
    metrics_add(METRIC_HTTP_REQUESTS, 1);
    c->state = CS_BODY;
    timer_arm_request(c, cfg->idle_timeout_ms);
    c->method = llhttp_get_method(p);
    c->route = c->url_long ? NULL : routes_match(c->url, c->url_len, c->port);

    /* RFC 9112 §3.2: an HTTP/1.1 request without Host is a 400. */
    if (!(c->once_seen & (1u << ONCE_HOST)) && p->http_major == 1 && p->http_minor >= 1) {
        c->fatal_status = 400;
        c->fatal_code = "bad_request";
        c->fatal_msg = "an HTTP/1.1 request needs a Host header";
        return HPE_USER;
    }

    if (atomic_load_explicit(hl->draining, memory_order_relaxed)) {
        c->fatal_status = 503;
        c->fatal_code = "unavailable";
        c->fatal_msg = "shutting down";
        return HPE_USER;
    }
    /* Transfer codings other than chunked are not implemented (a front proxy might decode
     * them; we would read the coded bytes as the body). */
    hdr_val_t *te = &c->hdr[HTTP_HDR_TRANSFER_ENCODING];
    if (te->seen && (te->overflow || te_is_chunked(te->buf, te->len) == false)) {
        c->fatal_status = 400;
        c->fatal_code = "bad_request";
        c->fatal_msg = "Transfer-Encoding must be chunked";
        return HPE_USER;
    }
    /* Any request, whatever its route: a declared body over the limit is refused unread. */
    if ((p->flags & F_CONTENT_LENGTH) && p->content_length > cfg->body_bytes) {
        c->fatal_status = 413;
        c->fatal_code = "payload_too_large";
        c->fatal_msg = "body larger than allowed";
        return HPE_USER;
    }
    if (c->route == NULL) {
        early(c, 404, "not_found", "no such endpoint");
    } else if (route_is_cors(c->route) && c->method == HTTP_OPTIONS) {
        return 0;
    } else if (!route_allows(c->route, c->method)) {
        early(c, 405, "method_not_allowed", c->route->wrong_method);
    }
    hdr_val_t *ex = &c->hdr[HTTP_HDR_EXPECT];
    bool expect_continue = ex->seen && ex->len == 12 &&
                           strncasecmp(ex->buf, "100-continue", 12) == 0 && p->http_major == 1 &&
                           p->http_minor >= 1;
    if (c->early_status != 0) return refuse_early(c, expect_continue);
    if (!route_is_ingest(c->route)) return 0;

    /* POST to an ingest endpoint. */
    hdr_val_t *ct = &c->hdr[HTTP_HDR_CONTENT_TYPE], *ce = &c->hdr[HTTP_HDR_CONTENT_ENCODING];
    /* A label too long to keep is no msgpack label: JSON, like any other label. */
    c->fmt = ct->overflow ? PROTO_FMT_JSON : content_type_parse(ct->buf, ct->len);
    c->enc = ce->overflow ? BODY_ENC_UNKNOWN : body_encoding_parse(ce->buf, ce->len);
    if (c->enc == BODY_ENC_UNKNOWN)
        early(c, 415, "unsupported_media_type", "Content-Encoding must be zstd, gzip or identity");
    if (c->early_status == 0) header_auth(c);
    if (c->early_status != 0) return refuse_early(c, expect_continue);

    if ((p->flags & F_CONTENT_LENGTH) && p->content_length > c->body_cap) {
        size_t want = (size_t)p->content_length;
        if (!body_mem_admit(hl, c->body_cap, want)) return refuse_body_memory(c);
        char *nb = realloc(c->body, want);
        if (nb == NULL) {
            body_mem_adjust(hl, want, c->body_cap);
            c->fatal_status = 503;
            c->fatal_code = "unavailable";
            c->fatal_msg = "out of memory";
            return HPE_USER;
        }
        c->body = nb;
        c->body_cap = want;
    }
    if (expect_continue) send_continue(c);
    return 0;
}

static int on_body(llhttp_t *p, const char *at, size_t len)
{
    http_conn_t *c = conn_of(p);
    metrics_add(METRIC_BYTES_IN, len);
    size_t max = (size_t)c->hl->cfg->body_bytes;
    c->body_seen += len;
    if (c->body_seen > max) { /* chunked (or discarded) bodies are bounded too */
        c->fatal_status = 413;
        c->fatal_code = "payload_too_large";
        c->fatal_msg = "body larger than allowed";
        return HPE_USER;
    }
    if (c->early_status != 0 || !route_is_ingest(c->route) || c->method != HTTP_POST)
        return 0; /* discarded: the answer is already decided */
    if (c->body_len + len > c->body_cap) {
        size_t ncap = c->body_cap < 16384 ? 16384 : c->body_cap * 2;
        while (ncap < c->body_len + len)
            ncap *= 2;
        if (ncap > max) ncap = max;
        if (!body_mem_admit(c->hl, c->body_cap, ncap)) return refuse_body_memory(c);
        char *nb = realloc(c->body, ncap);
        if (nb == NULL) {
            body_mem_adjust(c->hl, ncap, c->body_cap);
            c->fatal_status = 503;
            c->fatal_code = "unavailable";
            c->fatal_msg = "out of memory";
            return HPE_USER;
        }
        c->body = nb;
        c->body_cap = ncap;
    }
    memcpy(c->body + c->body_len, at, len);
    c->body_len += len;
    return 0;
}

static int on_message_complete(llhttp_t *p)
{
    http_conn_t *c = conn_of(p);
    c->keep_alive = llhttp_should_keep_alive(p) && !llhttp_get_upgrade(p);
    c->state = CS_BUSY;
    /* One request at a time: stop here; conn_next() resumes after the answer is written. */
    return HPE_PAUSED;
}

static llhttp_settings_t http_settings;
static uv_once_t http_settings_once = UV_ONCE_INIT;

static void http_settings_init(void)
{
    llhttp_settings_init(&http_settings);
    http_settings.on_message_begin = on_message_begin;
    http_settings.on_url = on_url;
    http_settings.on_header_field = on_header_field;
    http_settings.on_header_field_complete = on_header_field_complete;
    http_settings.on_header_value = on_header_value;
    http_settings.on_header_value_complete = on_header_value_complete;
    http_settings.on_headers_complete = on_headers_complete;
    http_settings.on_body = on_body;
    http_settings.on_message_complete = on_message_complete;
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
        .body = c->body,
        .len = c->body_len,
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
    size_t rest = len - consumed;
    if (from_pending) {
        c->pending_off += consumed;
        c->pending_len = rest;
        return 0;
    }
    c->pending_off = 0;
    c->pending_len = rest;
    if (rest == 0) return 0;
    /* The buffer holds at most one read (HTTP_READ_BUF): bounded per connection. It is
     * charged to body_mem (already received: it is counted, never refused). */
    char *nb = realloc(c->pending, rest);
    if (nb == NULL) return -1;
    body_mem_adjust(c->hl, c->pending_cap, rest);
    c->pending = nb;
    c->pending_cap = rest;
    memcpy(c->pending, data + consumed, rest);
    return 0;
}

static void conn_feed(http_conn_t *c, const char *data, size_t len, bool from_pending)
{
    c->exec_data = data;
    llhttp_errno_t err = llhttp_execute(&c->parser, data, len);
    if (err == HPE_OK) {
        if (from_pending) c->pending_off = c->pending_len = 0;
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
    request_reset(c);
    llhttp_resume(&c->parser);
    if (c->pending_len > 0) {
        conn_feed(c, c->pending + c->pending_off, c->pending_len, true);
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
    uv_once(&http_settings_once, http_settings_init);
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
    body_mem_adjust(hl, 0, hl->scratch.plain_cap);
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
    size_t off = 0;
    for (int i = 0; i < HTTP_HDR_COUNT; i++) {
        c->hdr[i].buf = c->hdr_mem + off;
        off += hdr_caps[i];
    }
    uv_tcp_init(hl->uv, &c->tcp);
    uv_timer_init(hl->uv, &c->timer);
    c->open_handles = 2;
    llhttp_init(&c->parser, HTTP_REQUEST, &http_settings);
    /* Strict RFC 9112 parsing (see http_conn.h): every leniency stays off. */
    llhttp_set_lenient_headers(&c->parser, 0);
    llhttp_set_lenient_chunked_length(&c->parser, 0);
    llhttp_set_lenient_keep_alive(&c->parser, 0);
    llhttp_set_lenient_transfer_encoding(&c->parser, 0);
    c->parser.data = c;
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
        if (c->state == CS_IDLE && c->pending_len == 0 && c->writes == 0) conn_close(c);
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
    if (hl->body_mem != NULL) body_mem_adjust(hl, hl->scratch.plain_cap, 0);
    hl->body_mem = NULL;
    ingest_scratch_free(&hl->scratch);
    free(hl->readbuf);
    hl->readbuf = NULL;
    free(hl->tlsbuf);
    hl->tlsbuf = NULL;
}
