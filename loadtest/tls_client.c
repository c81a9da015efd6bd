/* tls_client.c — TLS over memory BIOs for sluice-load (contract in tls_client.h). */
#include "tls_client.h"

#include <openssl/err.h>
#include <openssl/x509v3.h>
#include <stdio.h>

SSL_CTX *tls_client_ctx_new(const char *ca_file, char *err, size_t errlen)
{
    SSL_CTX *ctx = SSL_CTX_new(TLS_client_method());
    if (ctx == NULL) {
        snprintf(err, errlen, "cannot make an SSL_CTX (%s)",
                 ERR_reason_error_string(ERR_get_error()));
        ERR_clear_error();
        return NULL;
    }
    static const unsigned char alpn[] = "\x08http/1.1";
    SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
    SSL_CTX_set_options(ctx, SSL_OP_NO_COMPRESSION | SSL_OP_NO_RENEGOTIATION);
    SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, NULL); /* never off */
    SSL_CTX_set_alpn_protos(ctx, alpn, sizeof(alpn) - 1);
    int ok = ca_file != NULL ? SSL_CTX_load_verify_locations(ctx, ca_file, NULL)
                             : SSL_CTX_set_default_verify_paths(ctx);
    if (ok != 1) {
        unsigned long e = ERR_get_error();
        snprintf(err, errlen, "--ca-file %s: cannot load trusted certificates (%s)",
                 ca_file ? ca_file : "(system store)",
                 e ? ERR_reason_error_string(e) : "no certificate found");
        ERR_clear_error();
        SSL_CTX_free(ctx);
        return NULL;
    }
    return ctx;
}

int tls_client_session_new(SSL_CTX *ctx, const char *name, bool name_is_ip, SSL **out)
{
    BIO *rb = BIO_new(BIO_s_mem()), *wb = BIO_new(BIO_s_mem());
    SSL *ssl = rb && wb ? SSL_new(ctx) : NULL;
    *out = ssl;
    if (ssl == NULL) {
        BIO_free(rb);
        BIO_free(wb);
        return TLS_CLIENT_E_NOMEM;
    }
    SSL_set_bio(ssl, rb, wb); /* the SSL owns them now */
    SSL_set_connect_state(ssl);
    int ok = name_is_ip ? X509_VERIFY_PARAM_set1_ip_asc(SSL_get0_param(ssl), name)
                        : SSL_set1_host(ssl, name) && SSL_set_tlsext_host_name(ssl, name);
    return ok ? TLS_CLIENT_OK : TLS_CLIENT_E_NAME;
}

int tls_client_handshake(SSL *ssl)
{
    int r = SSL_do_handshake(ssl);
    if (r == 1) return 1;
    return SSL_get_error(ssl, r) == SSL_ERROR_WANT_READ ? 0 : -1;
}

bool tls_client_feed(SSL *ssl, const char *p, size_t n)
{
    return BIO_write(SSL_get_rbio(ssl), p, (int)n) == (int)n;
}

size_t tls_client_read(SSL *ssl, char *buf, size_t cap, bool *eof)
{
    int r = SSL_read(ssl, buf, (int)cap);
    if (r > 0) return (size_t)r;
    *eof = SSL_get_error(ssl, r) != SSL_ERROR_WANT_READ;
    return 0;
}

int tls_client_write(SSL *ssl, const void *p, size_t n)
{
    return SSL_write(ssl, p, (int)n) > 0 ? 0 : -1;
}

size_t tls_client_pending(SSL *ssl)
{
    return BIO_ctrl_pending(SSL_get_wbio(ssl));
}

int tls_client_take(SSL *ssl, char *buf, size_t n)
{
    return BIO_read(SSL_get_wbio(ssl), buf, (int)n) == (int)n ? 0 : -1;
}

void tls_client_describe(SSL *ssl, const char *why, char *out, size_t outlen)
{
    long v = SSL_get_verify_result(ssl);
    unsigned long e = ERR_peek_error();
    if (why != NULL)
        snprintf(out, outlen, "%s", why);
    else if (v != X509_V_OK)
        snprintf(out, outlen, "certificate verify failed: %s", X509_verify_cert_error_string(v));
    else if (e != 0)
        snprintf(out, outlen, "%s%s", ERR_reason_error_string(e),
                 ERR_GET_REASON(e) == SSL_R_WRONG_VERSION_NUMBER
                     ? " (the server does not speak TLS on this port?)"
                     : "");
    else
        snprintf(out, outlen, "the handshake failed");
}

void tls_client_forget_errors(void)
{
    ERR_clear_error();
}
