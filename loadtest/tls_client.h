/*
 * tls_client.h — the client side of TLS for sluice-load, over two memory BIOs: OpenSSL never
 * touches a socket and never blocks, the caller's event loop moves every byte. Ciphertext read
 * from the socket goes in with tls_client_feed(), the ciphertext OpenSSL made (handshake, records,
 * alerts) comes out with tls_client_pending() + tls_client_take(), plaintext with
 * tls_client_read(). How client.c drives it from its libuv callbacks: client.h, "HTTPS".
 *
 * Contexts: TLS 1.2+, no compression, no renegotiation, ALPN "http/1.1", peer verification
 * always on. One SSL_CTX per worker thread, one SSL per connection; a session is used by one
 * thread only. Functions that can fail leave OpenSSL's error queue as it is, so that
 * tls_client_describe() can tell why; tls_client_forget_errors() then empties it.
 */
#ifndef SLUICE_LOAD_TLS_CLIENT_H
#define SLUICE_LOAD_TLS_CLIENT_H

#include <openssl/ssl.h>
#include <stdbool.h>
#include <stddef.h>

/* tls_client_session_new()'s answers. */
#define TLS_CLIENT_OK      0
#define TLS_CLIENT_E_NOMEM (-1) /* no SSL or BIO could be made; *out is NULL */
#define TLS_CLIENT_E_NAME                                                                          \
    (-2) /* the name to verify was refused; *out is set, the caller frees it */

/* A client context trusting the certificates of ca_file (PEM), or the system store when ca_file
 * is NULL. NULL on failure, with the reason (naming --ca-file) in err, and the error queue
 * emptied. The caller frees the context with SSL_CTX_free(). */
SSL_CTX *tls_client_ctx_new(const char *ca_file, char *err, size_t errlen);

/* A session of ctx in connect state on two fresh memory BIOs (the SSL owns them), checking the
 * peer's certificate against name: an IP address against its IP SANs when name_is_ip, else a host
 * name (also sent as SNI). TLS_CLIENT_OK with *out set, or an error above. The caller frees the
 * session with SSL_free(). */
int tls_client_session_new(SSL_CTX *ctx, const char *name, bool name_is_ip, SSL **out);

/* Advances the handshake: 1 done, 0 waiting for the server's bytes (tls_client_feed), -1 failed
 * (tls_client_describe says why). Either way, ciphertext may be pending. */
int tls_client_handshake(SSL *ssl);

/* Gives OpenSSL n bytes of ciphertext read from the socket. false when the read BIO refused them
 * (out of memory). */
bool tls_client_feed(SSL *ssl, const char *p, size_t n);

/* Up to cap bytes of plaintext into buf: their count (> 0), or 0 when nothing more can be read
 * now, with *eof set when the stream ended (close_notify) or failed rather than waiting for more
 * ciphertext. */
size_t tls_client_read(SSL *ssl, char *buf, size_t cap, bool *eof);

/* Encrypts n > 0 bytes into one or more records (their ciphertext is then pending). 0, or -1. */
int tls_client_write(SSL *ssl, const void *p, size_t n);

/* Bytes of ciphertext waiting to be sent. */
size_t tls_client_pending(SSL *ssl);

/* Moves exactly n pending bytes (n <= tls_client_pending()) into buf. 0, or -1. */
int tls_client_take(SSL *ssl, char *buf, size_t n);

/* Why the handshake failed, for a report, into out: why itself when not NULL, else the
 * certificate verification result, else OpenSSL's first queued error (with a hint when the
 * server does not seem to speak TLS), else a generic text. The error queue is left as it is. */
void tls_client_describe(SSL *ssl, const char *why, char *out, size_t outlen);

/* Empties this thread's OpenSSL error queue. */
void tls_client_forget_errors(void);

#endif
