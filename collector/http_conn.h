/*
 * http_conn.h — HTTP/1.1 connections of one event loop (SPEC §3): llhttp parsing with bounded
 * headers and bodies, dispatch through the route table (routes.h), CORS, timeouts, keep-alive
 * and pipelining, and writing the answers. What each route answers is its handler's business
 * (routes.h); the calls handlers use are at the end of this header.
 *
 * One request at a time per connection: the parser pauses at the end of each message, reading
 * stops while the request waits for Kafka, and bytes of pipelined requests that already arrived
 * are kept (at most one read buffer) and parsed after the answer has been written.
 *
 * Timers (one per connection): header_timeout from the first byte of a request (and for a fresh
 * connection) until its headers are complete (then the connection is closed: slowloris);
 * request_timeout from the first byte until the body is complete, however slowly it trickles,
 * with idle_timeout as body inactivity (either: 408 and close); idle_timeout between requests;
 * delivery_timeout while a request waits for Kafka — when it passes, the client is answered 503
 * (Retry-After) and the connection goes on; request_timeout again while an answer is being
 * written (a client that does not read its answers is closed).
 *
 * Memory: answers are written one at a time (the next request is parsed only once the previous
 * answer left), so at most one answer (and one "100 Continue") is queued for write per
 * connection. Request bodies are charged to the process-wide body_mem counter (with the loops'
 * decompression buffers) and bounded by limits.body_memory: a body that does not fit is refused
 * with 503 + Retry-After before it is read (Content-Length) or as it grows (chunked). Bodies over
 * 64 KiB may use only the first seven eighths, so a flood of large bodies leaves room for small
 * ones. A connection keeps its body buffer (up to 64 KiB) between requests only while less than
 * half of body_memory is in use.
 *
 * Parsing is strict (RFC 9112; llhttp built with LLHTTP_STRICT_MODE, every lenient flag off):
 * anything a front proxy could read differently is 400 and close — a chunk not ended by CRLF, a
 * header name with a space, an HTTP/1.1 request without Host, or a second Host, Authorization,
 * Content-Type, Content-Encoding, Content-Length or Transfer-Encoding header.
 *
 * Everything here runs on the loop's thread, except the mailbox push of finished requests
 * (ingest.h). A request outlives its connection when the client leaves, or is answered by the
 * delivery timeout, while it waits for Kafka: the connection detaches (req->owner = NULL) and
 * the request is freed when its delivery group reports.
 */
#ifndef SLUICE_HTTP_CONN_H
#define SLUICE_HTTP_CONN_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <uv.h>

#include "config.h"
#include "ingest.h"

/* Size of the loop's shared read buffer, and so the most pipelined bytes kept per connection. */
#define HTTP_READ_BUF (64 * 1024)

typedef struct http_conn http_conn_t;

typedef struct http_loop {
    uv_loop_t *uv;
    const config_t *cfg;
    ingest_ctx_t *ingest;     /* shared by all loops */
    ingest_scratch_t scratch; /* this loop's working memory */
    ingest_mailbox_t mailbox; /* finished requests come back here */
    atomic_bool *draining;    /* process-wide: shutting down, refuse new requests */
    atomic_uint *n_conns;     /* process-wide open connections, for max_connections */
    atomic_size_t *body_mem;  /* process-wide body bytes held, for limits.body_memory */
    bool drained;             /* this loop already closed its idle connections */
    char *readbuf;            /* HTTP_READ_BUF bytes, shared by this loop's reads */
    char *tlsbuf;             /* HTTP_READ_BUF bytes of decrypted reads (tls set), shared too */
    http_conn_t *conns;       /* live connections */
    ingest_req_t *reqs;       /* live requests (waiting for Kafka or being answered) */
} http_loop_t;

/* Sets up hl for the loop uv. async is the loop's wake-up handle used by the mailbox. None of
 * the pointers is owned; draining, n_conns and body_mem are shared by every loop of the process
 * (the loop's decompression buffer is charged to body_mem here, and given back by
 * http_loop_free). Returns 0 or -1 (memory short; http_loop_free is then safe). */
int http_loop_init(http_loop_t *hl, uv_loop_t *uv, const config_t *cfg, ingest_ctx_t *ingest,
                   uv_async_t *async, atomic_bool *draining, atomic_uint *n_conns,
                   atomic_size_t *body_mem);

/* Which routes a listener serves (SPEC §3 admin_listen). /healthz and /readyz: on every port. */
typedef enum {
    HTTP_PORT_ALL = 0, /* listen without admin_listen: every route */
    HTTP_PORT_PUBLIC,  /* listen with admin_listen: all but /metrics and the admin views (404) */
    HTTP_PORT_ADMIN,   /* admin_listen: /metrics, the admin views and health only (else 404) */
} http_port_t;

/* Accepts one pending connection from listener (call from its connection callback); port says
 * which routes it serves. At the connection cap, or while draining, the client gets 503
 * too_many_connections and is closed. */
void http_conn_accept(http_loop_t *hl, uv_stream_t *listener, http_port_t port);

/* Answers every request that came back through the mailbox (call from the async callback). */
void http_loop_deliver(http_loop_t *hl);

/* Shutdown, phase 1: closes idle connections; the others get Connection: close on their next
 * answer, and new requests on them 503. Idempotent. */
void http_loop_drain(http_loop_t *hl);

/* Shutdown, phase 2: closes every connection (pending answers are dropped). Requests still
 * waiting for Kafka stay on hl->reqs. */
void http_loop_close_all(http_loop_t *hl);

/* Releases hl. Call once the loop has stopped and no delivery report can arrive any more
 * (the Kafka producer is destroyed): frees requests that never came back. */
void http_loop_free(http_loop_t *hl);

/* ---- for route handlers (routes.h): the request a connection is answering ----
 *
 * Every call below runs on c's loop thread, between the handler's call and its answer. c stays
 * valid until the handler answers, or, after http_conn_defer, until it answers or its cancel
 * callback runs. Exactly one http_respond* per request. */

/* The request headers the transport keeps (each bounded; a longer value is not kept). */
typedef enum {
    HTTP_HDR_NONE = -1,
    HTTP_HDR_CONTENT_TYPE,
    HTTP_HDR_CONTENT_ENCODING,
    HTTP_HDR_AUTHORIZATION,
    HTTP_HDR_EXPECT,
    HTTP_HDR_HOST,
    HTTP_HDR_ACRH, /* Access-Control-Request-Headers (CORS preflight) */
    HTTP_HDR_TRANSFER_ENCODING,
    HTTP_HDR_COUNT
} http_hdr_t;

/* The loop c belongs to (its config, ingest context, libuv loop). */
http_loop_t *http_conn_loop(const http_conn_t *c);

/* The request target as received (path and query, not NUL-terminated), *len its length
 * (at most the transport's URL_MAX: a longer target matches no route). */
const char *http_conn_target(const http_conn_t *c, size_t *len);

/* Header h's value (not NUL-terminated) and *len, or NULL (*len 0) when the request did not
 * carry it or it was longer than the transport keeps: either way, not usable. */
const char *http_conn_header(const http_conn_t *c, http_hdr_t h, size_t *len);

/* Answers status with body[0..len) (copied) and Content-Type ctype (NULL: none); extra: more
 * header lines, each ending in CRLF (NULL: none). Content-Length, Connection (keep-alive unless
 * the client, an earlier refusal or shutdown says close) and HEAD's empty body are the
 * transport's. */
void http_respond(http_conn_t *c, int status, const char *ctype, const char *body, size_t len,
                  const char *extra);

/* http_respond with Content-Type application/json, plus Access-Control-Allow-Origin on a
 * ROUTE_F_CORS route. */
void http_respond_json(http_conn_t *c, int status, const char *json, size_t len);

/* An error answer, SPEC §3's {"success":false,"error":code,"message":message}, with the
 * headers every error carries (Access-Control-Allow-Origin on a CORS route, Allow on a 405). */
void http_respond_error(http_conn_t *c, int status, const char *code, const char *message);

/* http_respond_error plus Retry-After: retry_after_s (none when retry_after_s <= 0). */
void http_respond_retry(http_conn_t *c, int status, const char *code, const char *message,
                        int retry_after_s);

/* The handler answers later (from work on libuv's threadpool, say): c waits (not reading,
 * timer stopped) for the handler's http_respond*. If the connection closes first,
 * cancel_cb(arg) runs once, on the loop thread, inside the close; c must not be used after. */
void http_conn_defer(http_conn_t *c, void (*cancel_cb)(void *arg), void *arg);

struct route;
/* The handler of the event endpoints (ROUTE_F_INGEST): hands the body the transport read to
 * ingest_start (ingest.h) and answers when its delivery group reports through the mailbox
 * (http_loop_deliver), or with 503 when kafka.delivery_timeout passes first. */
void http_conn_ingest(http_conn_t *c, const struct route *r);

#endif
