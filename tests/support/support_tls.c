/*
 * support_tls.c — the TLS client of the integration tests (see support.h, "TLS to 127.0.0.1"):
 * OpenSSL over a blocking socket whose every wait is bounded by poll() against a deadline, and
 * certificates made by the openssl command, as an operator would make them.
 */
#include <errno.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#include "support.h"

struct sup_tls {
    int fd;
    SSL_CTX *ctx;
    SSL *ssl;
};

int sup_tls_make_cert(const char *dir, const char *name, const char *cn)
{
    char cmd[2048];
    snprintf(cmd, sizeof cmd,
             "openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes "
             "-keyout '%s/%s.key' -out '%s/%s.crt' -days 2 -subj '/CN=%s' "
             "-addext subjectAltName=IP:127.0.0.1 >/dev/null 2>&1",
             dir, name, dir, name, cn);
    int rc = system(cmd);
    if (rc != 0) fprintf(stderr, "support: openssl req failed (%d): %s\n", rc, cmd);
    return rc == 0 ? 0 : -1;
}

static int remaining(int64_t deadline)
{
    int64_t left = deadline - base_mono_ms();
    return left > 0 ? (int)left : 0;
}

/* Waits for what OpenSSL asked for (rc from an SSL_* call). 1: retry, 0: done/failed. */
static int wait_io(sup_tls_t *t, int rc, int64_t deadline)
{
    int e = SSL_get_error(t->ssl, rc);
    short ev = e == SSL_ERROR_WANT_READ ? POLLIN : e == SSL_ERROR_WANT_WRITE ? POLLOUT : 0;
    if (ev == 0) return 0;
    struct pollfd p = {t->fd, ev, 0};
    int r;
    do {
        r = poll(&p, 1, remaining(deadline));
    } while (r < 0 && errno == EINTR);
    return r == 1 ? 1 : 0;
}

void sup_tls_close(sup_tls_t *t)
{
    if (t == NULL) return;
    if (t->ssl != NULL) SSL_free(t->ssl);
    if (t->ctx != NULL) SSL_CTX_free(t->ctx);
    if (t->fd >= 0) close(t->fd);
    free(t);
}

sup_tls_t *sup_tls_connect(int port, const char *cafile, int timeout_ms)
{
    int64_t deadline = base_mono_ms() + timeout_ms;
    sup_tls_t *t = calloc(1, sizeof *t);
    if (t == NULL) return NULL;
    t->fd = sup_tcp_connect(port, timeout_ms); /* non-blocking */
    t->ctx = SSL_CTX_new(TLS_client_method());
    if (t->fd < 0 || t->ctx == NULL) {
        fprintf(stderr, "support: tls connect to %d: %s\n", port,
                t->fd < 0 ? "TCP connect failed" : "SSL_CTX_new failed");
        sup_tls_close(t);
        return NULL;
    }
    SSL_CTX_set_verify(t->ctx, SSL_VERIFY_PEER, NULL);
    if (SSL_CTX_load_verify_locations(t->ctx, cafile, NULL) != 1) {
        fprintf(stderr, "support: cannot load CA file %s\n", cafile);
        sup_tls_close(t);
        return NULL;
    }
    t->ssl = SSL_new(t->ctx);
    if (t->ssl == NULL || SSL_set_fd(t->ssl, t->fd) != 1 ||
        X509_VERIFY_PARAM_set1_ip_asc(SSL_get0_param(t->ssl), "127.0.0.1") != 1) {
        sup_tls_close(t);
        return NULL;
    }
    for (;;) {
        int rc = SSL_connect(t->ssl);
        if (rc == 1) return t;
        if (!wait_io(t, rc, deadline)) break;
    }
    unsigned long e = ERR_get_error();
    fprintf(stderr, "support: TLS handshake with port %d failed: %s (verify: %s)\n", port,
            e ? ERR_reason_error_string(e) : "timeout or closed",
            X509_verify_cert_error_string(SSL_get_verify_result(t->ssl)));
    ERR_clear_error();
    sup_tls_close(t);
    return NULL;
}

int sup_tls_peer_cn(sup_tls_t *t, char *out, size_t outlen)
{
    X509 *x = SSL_get1_peer_certificate(t->ssl);
    if (x == NULL) return -1;
    int n = X509_NAME_get_text_by_NID(X509_get_subject_name(x), NID_commonName, out, (int)outlen);
    X509_free(x);
    return n > 0 ? 0 : -1;
}

int sup_tls_send(sup_tls_t *t, const void *p, size_t n, int timeout_ms)
{
    int64_t deadline = base_mono_ms() + timeout_ms;
    const char *c = p;
    while (n > 0) {
        size_t done = 0;
        int rc = SSL_write_ex(t->ssl, c, n, &done);
        if (rc == 1) {
            c += done;
            n -= done;
            continue;
        }
        if (!wait_io(t, rc, deadline)) {
            ERR_clear_error();
            return -1;
        }
    }
    return 0;
}

/* One read into out: 1 bytes read, 0 timeout, -1 closed. */
static int read_some(sup_tls_t *t, base_buf_t *out, int64_t deadline)
{
    char tmp[4096];
    for (;;) {
        size_t got = 0;
        int rc = SSL_read_ex(t->ssl, tmp, sizeof tmp, &got);
        if (rc == 1) return sup_text_append(out, tmp, got) == 0 ? 1 : -1;
        int e = SSL_get_error(t->ssl, rc);
        if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE) {
            if (remaining(deadline) == 0) return 0;
            if (!wait_io(t, rc, deadline)) return 0;
            continue;
        }
        ERR_clear_error();
        return -1; /* close_notify, EOF, reset, alert */
    }
}

int sup_tls_read_answer(sup_tls_t *t, base_buf_t *out, int timeout_ms)
{
    int64_t deadline = base_mono_ms() + timeout_ms;
    for (;;) {
        if (out->data) {
            const char *eoh = strstr(out->data, "\r\n\r\n");
            if (eoh) {
                size_t head = (size_t)(eoh + 4 - out->data);
                long clen = 0;
                const char *p = out->data;
                while (p < eoh) {
                    const char *eol = strstr(p, "\r\n");
                    if (strncasecmp(p, "Content-Length:", 15) == 0) clen = atol(p + 15);
                    p = eol + 2;
                }
                if (out->len >= head + (size_t)clen) break;
            }
        }
        if (read_some(t, out, deadline) != 1) break;
    }
    int status = -1;
    if (out->data && sscanf(out->data, "HTTP/1.%*d %d", &status) != 1) status = -1;
    return status;
}

int sup_tls_read_until_close(sup_tls_t *t, base_buf_t *out, size_t max, int timeout_ms)
{
    int64_t deadline = base_mono_ms() + timeout_ms;
    while (out->len < max) {
        int r = read_some(t, out, deadline);
        if (r < 0) return 1;
        if (r == 0) return 0;
    }
    return 0;
}
