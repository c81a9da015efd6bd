/*
 * server.h — the collector's event loops: N threads, each with its own uv_loop_t and its own
 * listening socket on the same address (SO_REUSEPORT, so the kernel spreads connections), the
 * process-wide connection cap, and the graceful shutdown sequence.
 *
 * Shutdown (driven by main, which is not an event-loop thread and may block):
 *   server_drain_begin   listeners close, idle connections close, new requests get 503;
 *   server_wait_drained  waits (bounded) until every loop acknowledged and every request in
 *                        progress (receiving its body, waiting for Kafka, being answered) is
 *                        done: no connection is open any more;
 *   (main flushes Kafka)
 *   server_stop          closes every connection and stops and joins the loop threads;
 *   (main destroys the Kafka producer: no delivery report can arrive after that)
 *   server_free          closes the last handles and frees requests that never came back.
 * Thread rules: every function here is for the main thread only.
 */
#ifndef SLUICE_SERVER_H
#define SLUICE_SERVER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "config.h"
#include "ingest.h"

/* X(NAME, value, "message"). 0 = OK, negative = failure; append-only. The err text filled next
 * to each code names the step and the system's reason. */
#define SERVER_ERRORS(X)                                                                           \
    X(OK, 0, "ok")                                                                                 \
    X(E_NOMEM, -1, "out of memory")                                                                \
    X(E_ADDRESS, -2, "listen or admin_listen is not a usable numeric address")                     \
    X(E_SOCKET, -3, "cannot open or bind the listening socket")                                    \
    X(E_LOOP, -4, "cannot set up an event loop")                                                   \
    X(E_LISTEN, -5, "cannot listen on the socket")                                                 \
    X(E_THREAD, -6, "cannot start a loop thread")

typedef enum {
#define SERVER_X_ENUM(name, val, msg) SERVER_##name = val,
    SERVER_ERRORS(SERVER_X_ENUM)
#undef SERVER_X_ENUM
} server_err_t;

/* Message for a server_err_t; "unknown error" for other values. Never NULL. */
const char *server_strerror(int err);

typedef struct server server_t;

/*
 * Creates cfg->threads loops and binds their listening sockets to cfg->listen (port 0 picks a
 * free port, shared by every loop), and the admin listener to cfg->admin_listen when set. Does not
 * start the threads. Returns SERVER_OK and *out, or with *out NULL and err filled (nothing is
 * left open): SERVER_E_NOMEM, SERVER_E_ADDRESS (an address that does not parse or resolve
 * numerically), SERVER_E_SOCKET (socket/setsockopt/bind/getsockname failed: in use, not ours,
 * no permission) or SERVER_E_LOOP (libuv could not set up a loop or adopt a socket). cfg and
 * ingest must outlive the server.
 */
int server_new(const config_t *cfg, ingest_ctx_t *ingest, server_t **out, char *err, size_t errlen);

/* The bound address: host as configured (numeric) and the actual port. */
const char *server_host(const server_t *s);
int server_port(const server_t *s);
/* The admin listener (admin_listen; served by loop 0, plain HTTP): host and actual port, or ""
 * and 0 when admin_listen is unset. */
const char *server_admin_host(const server_t *s);
int server_admin_port(const server_t *s);

/* Starts listening and the loop threads. Returns SERVER_OK, or SERVER_E_LISTEN or
 * SERVER_E_THREAD with err filled (then call server_stop and server_free). */
int server_start(server_t *s, char *err, size_t errlen);

void server_drain_begin(server_t *s);
/* Waits until drained or timeout_ms passed. Returns true when fully drained. */
bool server_wait_drained(server_t *s, uint32_t timeout_ms);
void server_stop(server_t *s);
void server_free(server_t *s);

#endif
