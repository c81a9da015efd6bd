/*
 * test_tls.c — HTTPS on `listen` (SPEC §3), with the real binary and certificates the test makes
 * with the openssl command (self-signed EC P-256 for IP 127.0.0.1): events over HTTPS reach
 * Kafka (libcurl and the curl command with --cacert); keep-alive and pipelining inside TLS
 * records; plain HTTP to the TLS port is closed cleanly; a handshake that never completes is cut
 * at limits.header_timeout; SIGHUP swaps the certificate while an open connection stays up, and a
 * wrong pair is refused on reload (the old certificate kept) and at start; the HTTP fuzz corpus
 * replayed over TLS gets well-formed answers and no crash.
 */
#include "it_common.h"

#include <dirent.h>
#include <ftw.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static char certdir[128]; /* a.crt/a.key, b.crt/b.key, and cur.crt/cur.key the config names */
static char ca_a[192], ca_b[192];

static int rm_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
    (void)st;
    (void)flag;
    (void)ftw;
    return remove(path);
}

static void copy_file(const char *from, const char *to)
{
    char tmp[256];
    snprintf(tmp, sizeof tmp, "%s.tmp", to);
    FILE *in = fopen(from, "rb"), *out = fopen(tmp, "wb");
    assert_non_null(in);
    assert_non_null(out);
    char buf[8192];
    size_t n;
    while ((n = fread(buf, 1, sizeof buf, in)) > 0)
        assert_int_equal(fwrite(buf, 1, n, out), n);
    fclose(in);
    assert_int_equal(fclose(out), 0);
    assert_int_equal(rename(tmp, to), 0); /* atomic: the collector never reads half a file */
}

/* cur.crt/cur.key := the given pair */
static void install(const char *cert, const char *key)
{
    char p[256], q[256], c[256], k[256];
    snprintf(p, sizeof p, "%s/%s.crt", certdir, cert);
    snprintf(q, sizeof q, "%s/%s.key", certdir, key);
    snprintf(c, sizeof c, "%s/cur.crt", certdir);
    snprintf(k, sizeof k, "%s/cur.key", certdir);
    copy_file(p, c);
    copy_file(q, k);
}

static int certs_setup(void **state)
{
    (void)state;
    snprintf(certdir, sizeof certdir, "/tmp/sluice-it-tls-XXXXXX");
    if (mkdtemp(certdir) == NULL) return -1;
    if (sup_tls_make_cert(certdir, "a", "sluice-test-a") != 0 ||
        sup_tls_make_cert(certdir, "b", "sluice-test-b") != 0)
        return -1;
    snprintf(ca_a, sizeof ca_a, "%s/a.crt", certdir);
    snprintf(ca_b, sizeof ca_b, "%s/b.crt", certdir);
    install("a", "a");
    return 0;
}

static int certs_teardown(void **state)
{
    (void)state;
    if (certdir[0] && !getenv("SLUICE_KEEP_TMP")) nftw(certdir, rm_entry, 8, FTW_DEPTH | FTW_PHYS);
    return 0;
}

/* A TLS collector: the config names cur.crt/cur.key, plus extra YAML lines. */
static sup_env_t *tls_start(void **state, const char *extra)
{
    static char yaml[2048];
    snprintf(yaml, sizeof yaml, "tls: {cert_file: %s/cur.crt, key_file: %s/cur.key}\n%s", certdir,
             certdir, extra != NULL ? extra : "");
    sup_env_t *e = it_start(state, yaml);
    assert_true(sup_collector_log_contains(&e->coll, "\"scheme\":\"https\""));
    return e;
}

/* n good events in one batch over h (HTTPS, keep-alive); asserts 200. */
static void https_post_good(sup_http_t *h, const char *prefix, size_t n, it_ids_t *ids,
                            long *num_connects)
{
    json_t *events = json_array();
    for (size_t i = 0; i < n; i++) {
        char id[IT_ID_BYTES];
        sup_message_id(id, sizeof id, prefix);
        json_array_append_new(events, sup_track(id, "user-tls", "Good Event", (int)i));
        it_ids_add(ids, id);
    }
    json_t *batch = sup_batch(events);
    base_buf_t body = {0};
    assert_int_equal(sup_json_dump(batch, &body), 0);
    json_decref(batch);
    const char *hdr[] = {"Content-Type: application/json", NULL};
    sup_http_req_t q = {.path = "/v1/batch",
                        .headers = hdr,
                        .body = body.data,
                        .body_len = body.len,
                        .user = IT_KEY};
    sup_http_resp_t r;
    sup_http_do(h, &q, &r);
    it_assert_ok(&r, (long)n, 0);
    if (num_connects != NULL) *num_connects = r.num_connects;
    sup_http_resp_free(&r);
    base_buf_free(&body);
}

/* GET path over a new TLS connection verified against ca; returns the status. */
static long https_get(int port, const char *ca, const char *path, base_buf_t *out)
{
    sup_http_t *h = sup_http_new(port);
    sup_http_set_ca(h, ca);
    sup_http_req_t q = {.method = "GET", .path = path};
    sup_http_resp_t r;
    sup_http_do(h, &q, &r);
    long st = r.status;
    if (out != NULL && r.body.data)
        assert_int_equal(sup_text_append(out, r.body.data, r.body.len), 0);
    sup_http_resp_free(&r);
    sup_http_free(h);
    return st;
}

static long metric(int port, const char *name)
{
    base_buf_t m = {0};
    assert_int_equal(https_get(port, ca_a, "/metrics", &m), 200);
    const char *p = strstr(m.data, name);
    long v = -1;
    while (p != NULL && (p[strlen(name)] != ' ' || (p > m.data && p[-1] != '\n')))
        p = strstr(p + 1, name); /* the sample line, not # HELP */
    if (p != NULL) v = atol(p + strlen(name) + 1);
    base_buf_free(&m);
    return v;
}

static void test_tls_https_end_to_end(void **state)
{
    sup_env_t *e = tls_start(state, NULL);
    it_ids_t ids = {0};
    sup_http_t *h = sup_http_new(e->coll.port);
    sup_http_set_ca(h, ca_a);
    long nc = -1;
    https_post_good(h, "tls-a", 3, &ids, &nc);
    assert_int_equal(nc, 1);
    https_post_good(h, "tls-b", 2, &ids, &nc);
    assert_int_equal(nc, 0); /* keep-alive over TLS */
    sup_http_free(h);

    /* the curl command, as the README shows it */
    char cmd[512];
    snprintf(cmd, sizeof cmd,
             "curl -sS --max-time 10 --cacert '%s' -u " IT_KEY ": -H 'Content-Type: "
             "application/json' -d '{\"batch\":[{\"type\":\"track\",\"messageId\":\"tls-curl-1\","
             "\"userId\":\"u\",\"event\":\"Curl\"}]}' https://127.0.0.1:%d/v1/batch",
             ca_a, e->coll.port);
    FILE *p = popen(cmd, "r");
    assert_non_null(p);
    char line[512] = "";
    if (fgets(line, sizeof line, p) == NULL) line[0] = '\0';
    assert_int_equal(pclose(p), 0);
    assert_non_null(strstr(line, "\"accepted\":1"));
    it_ids_add(&ids, "tls-curl-1");

    it_assert_events_exactly(e, &ids, NULL);
    assert_true(metric(e->coll.port, "sluice_tls_handshakes_total") >= 3);
    assert_int_equal(metric(e->coll.port, "sluice_tls_handshake_failures_total"), 0);
}

/* Pipelined requests inside one TLS record (one SSL_write), then more on the same session. */
static void test_tls_keepalive_pipelining(void **state)
{
    sup_env_t *e = tls_start(state, NULL);
    sup_tls_t *t = sup_tls_connect(e->coll.port, ca_a, 5000);
    assert_non_null(t);
    it_ids_t ids = {0};
    char reqs[8192];
    size_t off = 0;
    for (int i = 0; i < 3; i++) {
        char id[IT_ID_BYTES], body[256];
        sup_message_id(id, sizeof id, "tls-pipe");
        it_ids_add(&ids, id);
        int bl = snprintf(body, sizeof body,
                          "{\"batch\":[{\"type\":\"track\",\"messageId\":\"%s\",\"userId\":\"u\","
                          "\"event\":\"Piped\"}]}",
                          id);
        off += (size_t)snprintf(reqs + off, sizeof reqs - off,
                                "POST /v1/batch HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: "
                                "Bearer " IT_KEY "\r\nContent-Type: application/json\r\n"
                                "Content-Length: %d\r\n\r\n%s",
                                bl, body);
    }
    off += (size_t)snprintf(reqs + off, sizeof reqs - off,
                            "GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n");
    assert_int_equal(sup_tls_send(t, reqs, off, 5000), 0);
    base_buf_t out = {0};
    for (int i = 0; i < 4; i++) {
        /* answers one at a time, in order */
        int st = sup_tls_read_answer(t, &out, 10000);
        assert_int_equal(st, 200);
        const char *eoh = strstr(out.data, "\r\n\r\n");
        long clen = atol(strcasestr(out.data, "Content-Length:") + 15);
        size_t used = (size_t)(eoh + 4 - out.data) + (size_t)clen;
        if (i < 3) assert_non_null(memmem(out.data, used, "\"accepted\":1", 12));
        memmove(out.data, out.data + used, out.len - used + 1);
        out.len -= used;
    }
    /* the same session goes on: one more request, then Connection: close ends it cleanly */
    static const char last[] =
        "GET /readyz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n";
    assert_int_equal(sup_tls_send(t, last, sizeof last - 1, 5000), 0);
    assert_int_equal(sup_tls_read_until_close(t, &out, 1 << 16, 10000), 1);
    assert_non_null(strstr(out.data, "HTTP/1.1 200"));
    assert_non_null(strstr(out.data, "Connection: close"));
    base_buf_free(&out);
    sup_tls_close(t);
    it_assert_events_exactly(e, &ids, NULL);
}

/* Plain HTTP to the TLS port: closed without an HTTP answer (at most a TLS alert), no crash. */
static void test_tls_plain_http_refused(void **state)
{
    sup_env_t *e = tls_start(state, NULL);
    int fd = sup_tcp_connect(e->coll.port, 2000);
    assert_true(fd >= 0);
    static const char req[] = "GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n";
    assert_int_equal(sup_tcp_send(fd, req, sizeof req - 1, 2000), 0);
    base_buf_t out = {0};
    int64_t t0 = base_mono_ms();
    assert_int_equal(sup_tcp_read_until_close(fd, &out, 4096, 5000), 1);
    assert_true(base_mono_ms() - t0 < 2000);                         /* at once, not at a timeout */
    assert_true(out.len == 0 || (unsigned char)out.data[0] == 0x15); /* nothing, or an alert */
    base_buf_free(&out);
    close(fd);
    assert_int_equal(https_get(e->coll.port, ca_a, "/healthz", NULL), 200);
    assert_int_equal(metric(e->coll.port, "sluice_tls_handshake_failures_total"), 1);
    assert_true(sup_collector_log_contains(&e->coll, "tls_handshake_failed"));
}

/* A TLS slowloris: TCP connected, handshake never finished (nothing, or a partial ClientHello),
 * closed at limits.header_timeout. */
static void test_tls_slowloris_handshake(void **state)
{
    sup_env_t *e = tls_start(state, "limits: {header_timeout: 1s}\n");
    for (int partial = 0; partial < 2; partial++) {
        int fd = sup_tcp_connect(e->coll.port, 2000);
        assert_true(fd >= 0);
        if (partial) { /* a record header promising 512 bytes of ClientHello, then silence */
            static const char rec[] = "\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03";
            assert_int_equal(sup_tcp_send(fd, rec, sizeof rec - 1, 2000), 0);
        }
        int64_t t0 = base_mono_ms();
        base_buf_t out = {0};
        assert_int_equal(sup_tcp_read_until_close(fd, &out, 4096, 8000), 1);
        int64_t dt = base_mono_ms() - t0;
        if (dt < 800 || dt > 4000) fprintf(stderr, "closed after %lld ms\n", (long long)dt);
        assert_true(dt >= 800 && dt <= 4000);
        base_buf_free(&out);
        close(fd);
    }
    assert_int_equal(metric(e->coll.port, "sluice_tls_handshake_failures_total"), 2);
    assert_true(sup_collector_log_contains(&e->coll, "tls_handshake_timeout"));
}

/* Waits (bounded) until the log holds needle at least n times. */
static void wait_log_count(const sup_env_t *e, const char *needle, int n)
{
    for (int i = 0; i < 100; i++) {
        FILE *f = fopen(e->coll.log_path, "r");
        assert_non_null(f);
        char line[8192];
        int count = 0;
        while (fgets(line, sizeof line, f) != NULL)
            if (strstr(line, needle) != NULL) count++;
        fclose(f);
        if (count >= n) return;
        base_sleep_ms(50);
    }
    sup_collector_dump_log(&e->coll, 4096);
    fail_msg("log never held \"%s\" %d times", needle, n);
}

static void keepalive_healthz(sup_tls_t *t)
{
    static const char req[] = "GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n";
    assert_int_equal(sup_tls_send(t, req, sizeof req - 1, 5000), 0);
    base_buf_t out = {0};
    assert_int_equal(sup_tls_read_answer(t, &out, 5000), 200);
    base_buf_free(&out);
}

static void assert_cn(int port, const char *ca, const char *want)
{
    sup_tls_t *t = sup_tls_connect(port, ca, 5000);
    assert_non_null(t);
    char cn[128] = "";
    assert_int_equal(sup_tls_peer_cn(t, cn, sizeof cn), 0);
    assert_string_equal(cn, want);
    keepalive_healthz(t);
    sup_tls_close(t);
}

static void test_tls_sighup_swaps_certificate(void **state)
{
    sup_env_t *e = tls_start(state, NULL);
    int port = e->coll.port;
    sup_tls_t *old = sup_tls_connect(port, ca_a, 5000);
    assert_non_null(old);
    char cn[128] = "";
    assert_int_equal(sup_tls_peer_cn(old, cn, sizeof cn), 0);
    assert_string_equal(cn, "sluice-test-a");
    keepalive_healthz(old);

    /* swap to B: new connections see B, the open one stays up on its session */
    install("b", "b");
    sup_collector_signal(&e->coll, SIGHUP);
    wait_log_count(e, "CN=sluice-test-b", 1);
    assert_cn(port, ca_b, "sluice-test-b");
    keepalive_healthz(old);

    /* a wrong pair (B's key is not A's): refused, logged, B kept */
    install("a", "b");
    sup_collector_signal(&e->coll, SIGHUP);
    wait_log_count(e, "config_reload_failed", 1);
    assert_true(sup_collector_log_contains(&e->coll, "does not match tls.cert_file"));
    assert_cn(port, ca_b, "sluice-test-b");
    keepalive_healthz(old);
    sup_tls_close(old);
    install("a", "a");

    base_buf_t m = {0};
    assert_int_equal(https_get(port, ca_b, "/metrics", &m), 200);
    assert_non_null(strstr(m.data, "sluice_config_reloads_total{result=\"ok\"} 1\n"));
    assert_non_null(strstr(m.data, "sluice_config_reloads_total{result=\"failed\"} 1\n"));
    base_buf_free(&m);
}

static void test_tls_wrong_pair_refused_at_start(void **state)
{
    (void)state;
    char yaml[1024];
    snprintf(yaml, sizeof yaml, "tls: {cert_file: %s/a.crt, key_file: %s/b.key}\n", certdir,
             certdir);
    it_assert_refused(yaml, NULL, "does not match tls.cert_file", NULL);
    snprintf(yaml, sizeof yaml, "tls: {cert_file: %s/none.crt, key_file: %s/a.key}\n", certdir,
             certdir);
    it_assert_refused(yaml, NULL, "none.crt: not a readable PEM certificate", NULL);
    snprintf(yaml, sizeof yaml, "tls: {cert_file: %s/a.crt, key_file: %s/a.crt}\n", certdir,
             certdir);
    it_assert_refused(yaml, NULL, "a.crt: not a readable unencrypted PEM private key", NULL);
    snprintf(yaml, sizeof yaml, "tls: {cert_file: %s/a.crt}\n", certdir);
    it_assert_refused(yaml, NULL, "tls: needs both cert_file and key_file", NULL);
}

/* True when every answer in p[0..n) begins with a well-formed status line. */
static bool answers_well_formed(const char *p, size_t n, int *count)
{
    *count = 0;
    const char *end = p + n;
    while (p < end) {
        if ((size_t)(end - p) < 13 || memcmp(p, "HTTP/1.1 ", 9) != 0 || p[9] < '1' || p[9] > '5' ||
            p[12] != ' ')
            return false;
        (*count)++;
        const char *eoh = memmem(p, (size_t)(end - p), "\r\n\r\n", 4);
        if (eoh == NULL) return false;
        const char *cl = memmem(p, (size_t)(eoh - p), "Content-Length: ", 16);
        long clen = cl != NULL ? atol(cl + 16) : 0;
        if (memcmp(p + 9, "100", 3) == 0) clen = 0;
        /* an answer to HEAD has a Content-Length and no body: the next answer follows */
        if ((size_t)(end - (eoh + 4)) >= 9 && memcmp(eoh + 4, "HTTP/1.1 ", 9) == 0) clen = 0;
        p = eoh + 4 + clen;
    }
    return p == end;
}

/* The HTTP fuzz corpus (tests/fuzz/corpus/http) over TLS: each input on its own connection,
 * read until the collector closes it (idle_timeout 1 s); answers well-formed, never a crash. */
static void test_tls_http_corpus_replay(void **state)
{
    sup_env_t *e = tls_start(state, "limits: {idle_timeout: 1s}\n");
    const char *dir = getenv("SLUICE_HTTP_CORPUS");
    assert_non_null(dir);
    DIR *d = opendir(dir);
    assert_non_null(d);
    struct dirent *de;
    int files = 0;
    while ((de = readdir(d)) != NULL) {
        if (de->d_name[0] == '.') continue;
        char path[512];
        snprintf(path, sizeof path, "%s/%s", dir, de->d_name);
        FILE *f = fopen(path, "rb");
        assert_non_null(f);
        static char input[1 << 16];
        size_t n = fread(input, 1, sizeof input, f);
        fclose(f);
        sup_tls_t *t = sup_tls_connect(e->coll.port, ca_a, 5000);
        assert_non_null(t);
        assert_int_equal(sup_tls_send(t, input, n, 5000), 0);
        base_buf_t out = {0};
        int closed = sup_tls_read_until_close(t, &out, 1 << 20, 10000);
        int answers = 0;
        bool ok = closed == 1 && answers_well_formed(out.data ? out.data : "", out.len, &answers);
        if (!ok)
            fprintf(stderr, "%s over TLS: closed %d, answer:\n%.*s\n", de->d_name, closed,
                    (int)out.len, out.data ? out.data : "");
        assert_true(ok);
        assert_true(answers >= 1);
        base_buf_free(&out);
        sup_tls_close(t);
        files++;
    }
    closedir(d);
    assert_true(files >= 5);
    assert_int_equal(https_get(e->coll.port, ca_a, "/healthz", NULL), 200);
}

static int tls_teardown(void **state)
{
    return it_teardown(state);
}

int main(int argc, char **argv)
{
    if (certs_setup(NULL) != 0) return 1;
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_teardown(test_tls_https_end_to_end, tls_teardown),
        cmocka_unit_test_teardown(test_tls_keepalive_pipelining, tls_teardown),
        cmocka_unit_test_teardown(test_tls_plain_http_refused, tls_teardown),
        cmocka_unit_test_teardown(test_tls_slowloris_handshake, tls_teardown),
        cmocka_unit_test_teardown(test_tls_sighup_swaps_certificate, tls_teardown),
        cmocka_unit_test(test_tls_wrong_pair_refused_at_start),
        cmocka_unit_test_teardown(test_tls_http_corpus_replay, tls_teardown),
    };
    int rc = it_run(argc, argv, "tls", tests, sizeof tests / sizeof tests[0]);
    certs_teardown(NULL);
    return rc;
}
