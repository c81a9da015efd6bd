/*
 * tls.h — HTTPS on `listen` (SPEC §3): the server context made from `tls: {cert_file, key_file}`
 * and the per-connection TLS state, driven from the event loop through two memory BIOs so that
 * OpenSSL never touches the socket and never blocks:
 *
 *     socket bytes ──tls_conn_feed──▶ [rbio] ──SSL_read──▶ tls_conn_read ──▶ llhttp
 *     answers ──tls_conn_write──▶ SSL_write ──▶ [wbio] ──tls_conn_take──▶ uv_write
 *
 * The handshake runs inside tls_conn_read (SSL_read drives it); its records and any alert land
 * in wbio, so the caller must send tls_conn_take's bytes after every read or write.
 *
 * Context (tls_ctx_new): TLS 1.2 and 1.3 only, renegotiation off, ALPN "http/1.1" when offered,
 * no server-side session cache (it is one locked table shared by every loop thread; TLS 1.3
 * tickets still resume statelessly), read/write buffers released while a connection is idle.
 * A tls_ctx_t is an OpenSSL SSL_CTX: reference-counted by OpenSSL, so a connection keeps the
 * context it was made with alive after a reload replaced it (tls_conn_new takes a reference,
 * tls_conn_free drops it) — existing connections stay up, new ones use the new certificate.
 *
 * Thread rules: tls_ctx_new/tls_ctx_free on the main thread (they read files); a tls_ctx_t may
 * be shared by every loop thread for tls_conn_new; a tls_conn_t belongs to one loop thread.
 * Errors: one enum, 0 = OK, negative = failure (X-macro below).
 */
#ifndef SLUICE_TLS_H
#define SLUICE_TLS_H

#include <stdbool.h>
#include <stddef.h>

/* X(NAME, value, "message"). Append-only. */
#define TLS_ERRORS(X)                                                                              \
    X(OK, 0, "ok")                                                                                 \
    X(E_CONFIG, -1, "certificate or key refused")                                                  \
    X(E_NOMEM, -2, "out of memory")                                                                \
    X(E_PROTOCOL, -3, "TLS protocol error (not TLS, or a failed handshake)")                       \
    X(E_CLOSED, -4, "the peer closed the TLS session")

typedef enum {
#define TLS_X_ENUM(name, val, msg) TLS_##name = val,
    TLS_ERRORS(TLS_X_ENUM)
#undef TLS_X_ENUM
} tls_err_t;

/* Message for a tls_err_t; "unknown error" otherwise. Never NULL. */
const char *tls_strerror(int err);

typedef struct ssl_ctx_st tls_ctx_t; /* OpenSSL's SSL_CTX */
typedef struct tls_conn tls_conn_t;

/*
 * Reads a PEM certificate chain (cert_file: the leaf first) and its PEM private key (key_file,
 * unencrypted) and checks that they belong together. Returns 0 and *out (owned by the caller:
 * tls_ctx_free), or TLS_E_CONFIG / TLS_E_NOMEM with *out NULL and err holding one line naming
 * the file and OpenSSL's reason ("tls.key_file /etc/k.pem does not match tls.cert_file
 * /etc/c.pem (key values mismatch)"). Blocks on file I/O.
 */
int tls_ctx_new(const char *cert_file, const char *key_file, tls_ctx_t **out, char *err,
                size_t errlen);
/* Drops the caller's reference (NULL is fine); connections made from it keep theirs. */
void tls_ctx_free(tls_ctx_t *ctx);
/* One line about the certificate for logs: "subject=CN=... serial=0A1B not_after=...". */
void tls_ctx_describe(const tls_ctx_t *ctx, char *out, size_t outlen);

/* A server-side session on ctx. Returns 0 and *out (tls_conn_free), or TLS_E_NOMEM. */
int tls_conn_new(tls_ctx_t *ctx, tls_conn_t **out);
void tls_conn_free(tls_conn_t *t);

/* Hands len bytes received from the socket to OpenSSL (copied into the read BIO). Returns 0 or
 * TLS_E_NOMEM. */
int tls_conn_feed(tls_conn_t *t, const char *data, size_t len);

/*
 * Decrypts into buf[0..cap): returns the number of plaintext bytes (> 0), 0 when more input is
 * needed (everything fed so far is consumed or buffered inside OpenSSL), TLS_E_CLOSED when the
 * peer sent close_notify, TLS_E_PROTOCOL on anything else (plain HTTP on the TLS port, a failed
 * handshake, a bad record): the connection must then close, after sending what tls_conn_take
 * holds (an alert). Drives the handshake.
 */
int tls_conn_read(tls_conn_t *t, char *buf, size_t cap);

/* True once the handshake completed (counted once per connection by the caller). */
bool tls_conn_established(const tls_conn_t *t);

/* Encrypts data[0..len) (all of it; the memory BIO never pushes back). Returns 0, TLS_E_NOMEM
 * or TLS_E_PROTOCOL (the session is broken: close). */
int tls_conn_write(tls_conn_t *t, const char *data, size_t len);

/* Bytes waiting to be sent to the peer (handshake records, encrypted answers, alerts). */
size_t tls_conn_pending_out(const tls_conn_t *t);
/* Moves up to cap of them into buf; returns how many. */
size_t tls_conn_take(tls_conn_t *t, char *buf, size_t cap);
/* Ciphertext received but not decrypted yet (bounded by what the caller fed: it stops feeding
 * while a request is being answered). */
size_t tls_conn_pending_in(const tls_conn_t *t);
/* Plaintext decrypted by OpenSSL but not read yet (the rest of a record). */
bool tls_conn_has_plaintext(const tls_conn_t *t);

/* Queues close_notify (then send tls_conn_take's bytes). Only after the handshake. */
void tls_conn_shutdown(tls_conn_t *t);

/* Why the last TLS_E_PROTOCOL happened, for a debug log ("http request", "wrong version
 * number", ...). Never NULL. */
const char *tls_conn_reason(const tls_conn_t *t);

#endif
