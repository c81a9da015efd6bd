/*
 * http_conn.h — HTTP/1.1 connections of one event loop (SPEC §3): llhttp parsing with bounded
 * headers and bodies, routing, CORS, timeouts, keep-alive and pipelining, and the answers.
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

#endif
