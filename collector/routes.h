/*
 * routes.h — the route table (SPEC §3, §6): which paths the collector answers, on which
 * listener, with which methods, and the handler that answers each.
 *
 * http_conn.c speaks HTTP and nothing else: it parses and bounds a request, looks its target up
 * here once the headers are complete, applies what the entry says (the method check and its 405,
 * CORS and the preflight, reading an event body), and calls the entry's handler with the
 * complete request. Handlers live with what they answer: the event endpoints with ingest
 * (http_conn_ingest, http_conn.h), health, readiness and metrics in ops.c, the admin views in
 * admin.c, the browser SDK's settings document in settings.c. A handler answers through the
 * http_respond* calls of http_conn.h, at once or later (http_conn_defer).
 *
 * The table is static and read-only: every function here may be called from any thread.
 */
#ifndef SLUICE_ROUTES_H
#define SLUICE_ROUTES_H

#include <stdbool.h>
#include <stddef.h>

#include "http_conn.h"
#include "proto.h"

/* How an entry's path is matched against a target's path (the target without its query or
 * fragment, and without one trailing '/': "/v1/batch/" is "/v1/batch"). */
typedef enum {
    ROUTE_MATCH_EXACT,   /* the path is path */
    ROUTE_MATCH_PREFIX,  /* the path is path followed by at least one byte (the parameter) */
    ROUTE_MATCH_SEGMENT, /* path, one non-empty segment without '/' (the parameter), suffix */
} route_match_t;

/* Which listeners serve a route (SPEC §3 admin_listen). A listener of kind HTTP_PORT_ALL serves
 * every class; HTTP_PORT_PUBLIC serves ROUTE_ANY and ROUTE_PUBLIC, HTTP_PORT_ADMIN ROUTE_ANY and
 * ROUTE_ADMIN. Elsewhere the route does not exist (404 "no such endpoint", as for an unknown
 * path, so the public port does not even confirm that admin routes exist). */
typedef enum {
    ROUTE_ANY = 0, /* every listener: /healthz, /readyz (load-balancer probes) */
    ROUTE_PUBLIC,  /* listen: the event endpoints, the browser settings document */
    ROUTE_ADMIN,   /* admin_listen when set: /metrics and the admin views */
} route_class_t;

/* Which methods a route answers (any other is 405 with Allow). */
typedef enum {
    ROUTE_GET = 0, /* GET and HEAD (HEAD: the GET answer's headers, no body) */
    ROUTE_POST,    /* POST only */
} route_methods_t;

/* Entry flags. */
enum {
    /* An event endpoint: the transport reads and bounds the body (limits.body_bytes,
     * limits.body_memory), takes Content-Type, Content-Encoding and the write key from the
     * headers before the body, and records the request's latency. */
    ROUTE_F_INGEST = 1u << 0,
    /* Called cross-origin by browser pages: Access-Control-Allow-Origin on every answer and an
     * OPTIONS preflight answered by the transport. */
    ROUTE_F_CORS = 1u << 1,
};

typedef struct route route_t;

/* Answers the complete request on c, which r matched (at once or after http_conn_defer). */
typedef void (*route_handler_cb)(http_conn_t *c, const route_t *r);

struct route {
    const char *path;   /* exact path, or the prefix before the parameter */
    const char *suffix; /* ROUTE_MATCH_SEGMENT: what follows the segment; else NULL */
    route_match_t match;
    route_class_t cls;
    route_methods_t methods;
    unsigned flags;           /* ROUTE_F_* */
    const char *allow;        /* Allow on a 405, Access-Control-Allow-Methods on a preflight */
    const char *wrong_method; /* the 405's message */
    proto_type_t kind;        /* ROUTE_F_INGEST: the event type the path implies (NONE: batch) */
    route_handler_cb handler;
};

/* The entry serving target[0..len) (a request target as received, query included) on a
 * listener of kind port, or NULL: no such path, or not on this listener. */
const route_t *routes_match(const char *target, size_t len, http_port_t port);

/* The length of target's path as matched: up to the first '?' or '#', less one trailing '/'
 * (but never the leading one). */
size_t route_path_len(const char *target, size_t len);

/* The parameter of target under r (which matched it): the bytes after the prefix
 * (ROUTE_MATCH_PREFIX) or the segment (ROUTE_MATCH_SEGMENT), still percent-encoded, as a slice
 * of target in *param, *plen. Returns false (and an empty slice) for an exact route or a target
 * r does not match. */
bool route_param(const route_t *r, const char *target, size_t len, const char **param,
                 size_t *plen);

/* Whether r answers method (an llhttp_method_t). OPTIONS on a ROUTE_F_CORS route is the
 * preflight, answered by the transport: not a method of the route. */
bool route_allows(const route_t *r, int method);

/* The whole table and its size (for tests and documentation). */
const route_t *routes_table(size_t *n);

#endif
