/*
 * http_conn_internal.h — what the two files of the HTTP transport share and nobody else may
 * touch: the connection itself and the calls between http_conn.c (the connection: reads,
 * timers, body memory, TLS, writing answers, dispatch) and http_parse.c (llhttp's callbacks:
 * a request parsed and bounded while it arrives). Internal names are http__-prefixed. Every
 * function runs on the connection's loop thread.
 */
#ifndef SLUICE_HTTP_CONN_INTERNAL_H
#define SLUICE_HTTP_CONN_INTERNAL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <llhttp.h>

#include "base.h"
#include "body.h"
#include "http_conn.h"
#include "proto.h"
#include "routes.h"
#include "tls.h"

#define URL_MAX   256
#define FIELD_MAX 32
/* Per-header overhead counted against header_bytes (": " and CRLF), so that many empty
 * headers cannot slip past the limit. */
#define HEADER_OVERHEAD 4
/* Keep a connection's body allocation between requests only up to this size. */
#define BODY_KEEP_MAX (64 * 1024)

/* Connection states: see the top of http_conn.c. */
typedef enum { CS_IDLE, CS_HEADERS, CS_BODY, CS_BUSY } conn_state_t;

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
    /* The request body: max = limits.body_bytes (set at accept and at each request start); grown
     * only by body_grow in http_parse.c, which charges every allocation (body.cap bytes) to
     * hl->body_mem first. */
    base_buf_t body;
    size_t body_seen; /* body bytes of this request, kept or discarded */

    /* Pipelined bytes received beyond the current message, data[pending_off..len) still to
     * parse (its cap charged to body_mem; max one read). */
    base_buf_t pending;
    size_t pending_off;

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

static inline bool route_is_ingest(const route_t *r)
{
    return r != NULL && (r->flags & ROUTE_F_INGEST) != 0;
}

/* Routes a browser page calls cross-origin: CORS headers on every answer, OPTIONS preflight. */
static inline bool route_is_cors(const route_t *r)
{
    return r != NULL && (r->flags & ROUTE_F_CORS) != 0;
}

/* ---- http_conn.c, for the parser ---- */

/* Arms c's timer for at most ms, and never beyond the request deadline. */
void http__timer_arm_request(http_conn_t *c, uint32_t ms);

/* Charges (grow) or gives back (shrink) body memory without a limit: for memory already
 * allocated. */
void http__body_mem_adjust(http_loop_t *hl, size_t old_size, size_t new_size);

/* Charges a body buffer growing from old_cap to new_cap, if it fits: bodies over BODY_KEEP_MAX
 * may use only the first seven eighths of limits.body_memory (the rest stays for small ones).
 * Returns false (nothing charged, the refusal counted) when it does not. */
bool http__body_mem_admit(http_loop_t *hl, size_t old_cap, size_t new_cap);

/* Sends w (owned from now on; encrypted first over TLS). On failure c is closed. */
void http__conn_write_raw(http_conn_t *c, conn_write_t *w);

/* ---- http_parse.c, for the connection ---- */

/* Sets up c's parser (strict, every llhttp leniency off) and header buffers; once per
 * connection, after c->hl is set. */
void http__parser_init(http_conn_t *c);

/* Forgets the request parsed last (between requests); may give back a large body buffer. */
void http__request_reset(http_conn_t *c);

#endif
