/*
 * tls.c — OpenSSL server contexts and memory-BIO sessions (contract in tls.h).
 */
#include "tls.h"

#include <openssl/bio.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct tls_conn {
    SSL *ssl;
    BIO *rbio, *wbio; /* owned by ssl (SSL_set_bio) */
    char reason[96];
};

const char *tls_strerror(int err)
{
    switch (err) {
#define TLS_X_STR(name, val, msg)                                                                  \
    case val:                                                                                      \
        return msg;
        TLS_ERRORS(TLS_X_STR)
#undef TLS_X_STR
    default:
        return "unknown error";
    }
}

/* OpenSSL's reason for the last failure on this thread ("no such file", "key values mismatch"),
 * and the thread's error queue emptied. */
static void ssl_reason(char *out, size_t outlen)
{
    unsigned long e = ERR_peek_last_error();
    const char *r = e != 0 ? ERR_reason_error_string(e) : NULL;
    snprintf(out, outlen, "%s", r != NULL ? r : "unknown OpenSSL error");
    ERR_clear_error();
}

/* ALPN: we speak HTTP/1.1 only; a client offering only h2 proceeds without ALPN. */
static int alpn_cb(SSL *ssl, const unsigned char **out, unsigned char *outlen,
                   const unsigned char *in, unsigned int inlen, void *arg)
{
    (void)ssl;
    (void)arg;
    static const unsigned char h11[] = "\x08http/1.1";
    unsigned char *sel = NULL;
    if (SSL_select_next_proto(&sel, outlen, h11, sizeof h11 - 1, in, inlen) !=
        OPENSSL_NPN_NEGOTIATED)
        return SSL_TLSEXT_ERR_NOACK;
    *out = sel;
    return SSL_TLSEXT_ERR_OK;
}

int tls_ctx_new(const char *cert_file, const char *key_file, tls_ctx_t **out, char *err,
                size_t errlen)
{
    *out = NULL;
    char why[128];
    ERR_clear_error();
    SSL_CTX *ctx = SSL_CTX_new(TLS_server_method());
    if (ctx == NULL) {
        snprintf(err, errlen, "tls: cannot create an OpenSSL context (out of memory)");
        return TLS_E_NOMEM;
    }
    if (SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION) != 1) goto nomem;
    SSL_CTX_set_options(ctx, SSL_OP_NO_RENEGOTIATION | SSL_OP_CIPHER_SERVER_PREFERENCE |
                                 SSL_OP_NO_COMPRESSION);
    SSL_CTX_set_mode(ctx, SSL_MODE_RELEASE_BUFFERS);
    SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_OFF);
    SSL_CTX_set_alpn_select_cb(ctx, alpn_cb, NULL);
    if (SSL_CTX_use_certificate_chain_file(ctx, cert_file) != 1) {
        ssl_reason(why, sizeof why);
        snprintf(err, errlen, "tls.cert_file %s: not a readable PEM certificate (%s)", cert_file,
                 why);
        goto fail;
    }
    if (SSL_CTX_use_PrivateKey_file(ctx, key_file, SSL_FILETYPE_PEM) != 1) {
        bool mismatch = ERR_GET_REASON(ERR_peek_last_error()) == X509_R_KEY_VALUES_MISMATCH;
        ssl_reason(why, sizeof why);
        if (mismatch)
            snprintf(err, errlen, "tls.key_file %s does not match tls.cert_file %s (%s)", key_file,
                     cert_file, why);
        else
            snprintf(err, errlen,
                     "tls.key_file %s: not a readable unencrypted PEM private key (%s)", key_file,
                     why);
        goto fail;
    }
    if (SSL_CTX_check_private_key(ctx) != 1) {
        ssl_reason(why, sizeof why);
        snprintf(err, errlen, "tls.key_file %s does not match tls.cert_file %s (%s)", key_file,
                 cert_file, why);
        goto fail;
    }
    *out = ctx;
    return TLS_OK;
nomem:
    snprintf(err, errlen, "tls: out of memory");
    SSL_CTX_free(ctx);
    ERR_clear_error();
    return TLS_E_NOMEM;
fail:
    SSL_CTX_free(ctx);
    return TLS_E_CONFIG;
}

void tls_ctx_free(tls_ctx_t *ctx)
{
    SSL_CTX_free(ctx);
}

void tls_ctx_describe(const tls_ctx_t *ctx, char *out, size_t outlen)
{
    X509 *x = SSL_CTX_get0_certificate(ctx);
    if (x == NULL) {
        snprintf(out, outlen, "(no certificate)");
        return;
    }
    char subj[256] = "", serial[80] = "", until[64] = "";
    X509_NAME_oneline(X509_get_subject_name(x), subj, sizeof subj);
    BIGNUM *bn = ASN1_INTEGER_to_BN(X509_get0_serialNumber(x), NULL);
    char *hex = bn != NULL ? BN_bn2hex(bn) : NULL;
    if (hex != NULL) snprintf(serial, sizeof serial, "%s", hex);
    OPENSSL_free(hex);
    BN_free(bn);
    BIO *m = BIO_new(BIO_s_mem());
    if (m != NULL && ASN1_TIME_print(m, X509_get0_notAfter(x)) == 1) {
        int n = BIO_read(m, until, (int)sizeof until - 1);
        until[n > 0 ? n : 0] = '\0';
    }
    BIO_free(m);
    snprintf(out, outlen, "subject=%s serial=%s not_after=%s", subj, serial, until);
}

int tls_conn_new(tls_ctx_t *ctx, tls_conn_t **out)
{
    *out = NULL;
    tls_conn_t *t = calloc(1, sizeof *t);
    if (t == NULL) return TLS_E_NOMEM;
    t->ssl = SSL_new(ctx); /* takes a reference on ctx */
    t->rbio = BIO_new(BIO_s_mem());
    t->wbio = BIO_new(BIO_s_mem());
    if (t->ssl == NULL || t->rbio == NULL || t->wbio == NULL) {
        BIO_free(t->rbio);
        BIO_free(t->wbio);
        SSL_free(t->ssl);
        free(t);
        ERR_clear_error();
        return TLS_E_NOMEM;
    }
    /* An empty read BIO means "no data yet" (retry), not end of file. */
    BIO_set_mem_eof_return(t->rbio, -1);
    SSL_set_bio(t->ssl, t->rbio, t->wbio);
    SSL_set_accept_state(t->ssl);
    *out = t;
    return TLS_OK;
}

void tls_conn_free(tls_conn_t *t)
{
    if (t == NULL) return;
    SSL_free(t->ssl); /* frees both BIOs and drops the context reference */
    free(t);
}

int tls_conn_feed(tls_conn_t *t, const char *data, size_t len)
{
    while (len > 0) {
        int chunk = len > (1u << 30) ? 1 << 30 : (int)len;
        int n = BIO_write(t->rbio, data, chunk);
        if (n <= 0) return TLS_E_NOMEM;
        data += n;
        len -= (size_t)n;
    }
    return TLS_OK;
}

int tls_conn_read(tls_conn_t *t, char *buf, size_t cap)
{
    int want = cap > (1u << 30) ? 1 << 30 : (int)cap;
    int n = SSL_read(t->ssl, buf, want);
    if (n > 0) return n;
    int e = SSL_get_error(t->ssl, n);
    if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE) return 0;
    if (e == SSL_ERROR_ZERO_RETURN) return TLS_E_CLOSED;
    ssl_reason(t->reason, sizeof t->reason);
    return TLS_E_PROTOCOL;
}

bool tls_conn_established(const tls_conn_t *t)
{
    return SSL_is_init_finished(t->ssl) == 1;
}

int tls_conn_write(tls_conn_t *t, const char *data, size_t len)
{
    while (len > 0) {
        int chunk = len > (1u << 30) ? 1 << 30 : (int)len;
        size_t done = 0;
        if (SSL_write_ex(t->ssl, data, (size_t)chunk, &done) != 1 || done == 0) {
            int e = SSL_get_error(t->ssl, 0);
            ssl_reason(t->reason, sizeof t->reason);
            return e == SSL_ERROR_SSL || e == SSL_ERROR_SYSCALL ? TLS_E_PROTOCOL : TLS_E_NOMEM;
        }
        data += done;
        len -= done;
    }
    return TLS_OK;
}

size_t tls_conn_pending_out(const tls_conn_t *t)
{
    return BIO_ctrl_pending(t->wbio);
}

size_t tls_conn_take(tls_conn_t *t, char *buf, size_t cap)
{
    size_t got = 0;
    if (cap == 0 || BIO_read_ex(t->wbio, buf, cap, &got) != 1) return 0;
    return got;
}

size_t tls_conn_pending_in(const tls_conn_t *t)
{
    return BIO_ctrl_pending(t->rbio);
}

bool tls_conn_has_plaintext(const tls_conn_t *t)
{
    return SSL_has_pending(t->ssl) == 1;
}

void tls_conn_shutdown(tls_conn_t *t)
{
    if (SSL_is_init_finished(t->ssl) == 1) (void)SSL_shutdown(t->ssl);
    ERR_clear_error();
}

const char *tls_conn_reason(const tls_conn_t *t)
{
    return t->reason[0] != '\0' ? t->reason : "unknown";
}
