/*
 * test_tls.c — collector/tls.c: contexts (good pair, missing file, not a key, mismatched pair,
 * the describe line) and a memory-BIO session driven against an in-process OpenSSL client over
 * two memory BIOs: handshake, both directions of plaintext, pipelined requests in one record,
 * close_notify, and plain HTTP bytes (TLS_E_PROTOCOL, reason "http request").
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <openssl/err.h>
#include <openssl/ssl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "../../collector/tls.c"

static char dir[64], crt_a[128], key_a[128], key_b[128];

static int make(const char *name, const char *cn)
{
    char cmd[1024];
    snprintf(cmd, sizeof cmd,
             "openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes "
             "-keyout %s/%s.key -out %s/%s.crt -days 2 -subj /CN=%s >/dev/null 2>&1",
             dir, name, dir, name, cn);
    return system(cmd);
}

static int setup(void **state)
{
    (void)state;
    snprintf(dir, sizeof dir, "/tmp/sluice-test-tls-XXXXXX");
    if (mkdtemp(dir) == NULL || make("a", "unit-a") != 0 || make("b", "unit-b") != 0) return -1;
    snprintf(crt_a, sizeof crt_a, "%s/a.crt", dir);
    snprintf(key_a, sizeof key_a, "%s/a.key", dir);
    snprintf(key_b, sizeof key_b, "%s/b.key", dir);
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
    return system(cmd) == 0 ? 0 : -1;
}

static void test_ctx(void **state)
{
    (void)state;
    tls_ctx_t *ctx = NULL;
    char err[512] = "";
    assert_int_equal(tls_ctx_new(crt_a, key_a, &ctx, err, sizeof err), TLS_OK);
    char desc[512];
    tls_ctx_describe(ctx, desc, sizeof desc);
    assert_non_null(strstr(desc, "subject=/CN=unit-a serial="));
    assert_non_null(strstr(desc, "not_after="));
    tls_ctx_free(ctx);

    assert_int_equal(tls_ctx_new(crt_a, key_b, &ctx, err, sizeof err), TLS_E_CONFIG);
    assert_null(ctx);
    assert_non_null(strstr(err, "b.key does not match tls.cert_file"));
    assert_non_null(strstr(err, "key values mismatch"));
    assert_int_equal(tls_ctx_new("/nonexistent.crt", key_a, &ctx, err, sizeof err), TLS_E_CONFIG);
    assert_non_null(strstr(err, "tls.cert_file /nonexistent.crt: not a readable PEM certificate"));
    assert_int_equal(tls_ctx_new(crt_a, crt_a, &ctx, err, sizeof err), TLS_E_CONFIG);
    assert_non_null(strstr(err, "a.crt: not a readable unencrypted PEM private key"));
    assert_int_equal(ERR_peek_error(), 0); /* nothing left on the thread's error queue */
}

/* An OpenSSL client over memory BIOs, and the pump between it and a tls_conn_t. */
typedef struct client {
    SSL_CTX *ctx;
    SSL *ssl;
    BIO *in, *out; /* in: what the server sent; out: what the client sends */
} client_t;

static void client_new(client_t *c)
{
    c->ctx = SSL_CTX_new(TLS_client_method());
    assert_non_null(c->ctx);
    assert_int_equal(SSL_CTX_load_verify_locations(c->ctx, crt_a, NULL), 1);
    SSL_CTX_set_verify(c->ctx, SSL_VERIFY_PEER, NULL);
    c->ssl = SSL_new(c->ctx);
    c->in = BIO_new(BIO_s_mem());
    c->out = BIO_new(BIO_s_mem());
    BIO_set_mem_eof_return(c->in, -1);
    SSL_set_bio(c->ssl, c->in, c->out);
    SSL_set_connect_state(c->ssl);
}

static void client_free(client_t *c)
{
    SSL_free(c->ssl);
    SSL_CTX_free(c->ctx);
}

/* Moves bytes both ways until neither side has anything to send; plaintext the server reads is
 * appended to got. Returns the last tls_conn_read result that was not 0 (or 0). */
static int shuttle(client_t *c, tls_conn_t *t, char *got, size_t *got_len, size_t cap)
{
    int last = 0;
    for (int round = 0; round < 20; round++) {
        (void)SSL_do_handshake(c->ssl);
        char buf[16384];
        int moved = 0, n;
        while ((n = BIO_read(c->out, buf, sizeof buf)) > 0) {
            assert_int_equal(tls_conn_feed(t, buf, (size_t)n), TLS_OK);
            moved = 1;
        }
        int r;
        while ((r = tls_conn_read(t, buf, sizeof buf)) > 0) {
            assert_true(*got_len + (size_t)r <= cap);
            memcpy(got + *got_len, buf, (size_t)r);
            *got_len += (size_t)r;
        }
        if (r < 0) last = r;
        size_t w;
        while ((w = tls_conn_take(t, buf, sizeof buf)) > 0) {
            assert_int_equal(BIO_write(c->in, buf, (int)w), (int)w);
            moved = 1;
        }
        if (!moved || last < 0) break;
    }
    return last;
}

static void test_session(void **state)
{
    (void)state;
    tls_ctx_t *ctx = NULL;
    char err[512];
    assert_int_equal(tls_ctx_new(crt_a, key_a, &ctx, err, sizeof err), TLS_OK);
    tls_conn_t *t = NULL;
    assert_int_equal(tls_conn_new(ctx, &t), TLS_OK);
    tls_ctx_free(ctx); /* the session keeps its reference (a reload frees the old context) */
    client_t c;
    client_new(&c);
    char got[4096];
    size_t got_len = 0;
    assert_int_equal(shuttle(&c, t, got, &got_len, sizeof got), 0);
    assert_true(tls_conn_established(t));
    assert_int_equal(SSL_is_init_finished(c.ssl), 1);
    assert_true(SSL_version(c.ssl) >= TLS1_2_VERSION);

    /* two pipelined requests in one record arrive as one plaintext run */
    static const char two[] = "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"
                              "GET /readyz HTTP/1.1\r\nHost: x\r\n\r\n";
    assert_int_equal(SSL_write(c.ssl, two, sizeof two - 1), (int)sizeof two - 1);
    assert_int_equal(shuttle(&c, t, got, &got_len, sizeof got), 0);
    assert_int_equal(got_len, sizeof two - 1);
    assert_memory_equal(got, two, got_len);
    assert_int_equal(tls_conn_pending_in(t), 0);
    assert_false(tls_conn_has_plaintext(t));

    /* an answer back */
    static const char ans[] = "HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n";
    assert_int_equal(tls_conn_write(t, ans, sizeof ans - 1), TLS_OK);
    assert_true(tls_conn_pending_out(t) > sizeof ans - 1);
    char buf[4096];
    size_t w = tls_conn_take(t, buf, sizeof buf);
    assert_int_equal(BIO_write(c.in, buf, (int)w), (int)w);
    char back[256];
    assert_int_equal(SSL_read(c.ssl, back, sizeof back), (int)sizeof ans - 1);
    assert_memory_equal(back, ans, sizeof ans - 1);

    /* the client says close_notify */
    assert_true(SSL_shutdown(c.ssl) >= 0);
    assert_int_equal(shuttle(&c, t, got, &got_len, sizeof got), TLS_E_CLOSED);
    client_free(&c);
    tls_conn_free(t);
}

static void test_plain_http_is_protocol_error(void **state)
{
    (void)state;
    tls_ctx_t *ctx = NULL;
    char err[512];
    assert_int_equal(tls_ctx_new(crt_a, key_a, &ctx, err, sizeof err), TLS_OK);
    tls_conn_t *t = NULL;
    assert_int_equal(tls_conn_new(ctx, &t), TLS_OK);
    static const char req[] = "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n";
    assert_int_equal(tls_conn_feed(t, req, sizeof req - 1), TLS_OK);
    char buf[256];
    assert_int_equal(tls_conn_read(t, buf, sizeof buf), TLS_E_PROTOCOL);
    assert_string_equal(tls_conn_reason(t), "http request");
    assert_false(tls_conn_established(t));
    assert_int_equal(ERR_peek_error(), 0);
    tls_conn_free(t);
    tls_ctx_free(ctx);
    assert_string_equal(tls_strerror(TLS_E_CLOSED), "the peer closed the TLS session");
    assert_string_equal(tls_strerror(42), "unknown error");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_ctx),
        cmocka_unit_test(test_session),
        cmocka_unit_test(test_plain_http_is_protocol_error),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
