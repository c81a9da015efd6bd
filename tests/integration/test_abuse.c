/*
 * test_abuse.c — issue 12 items 3–5: hostile clients against the real collector, each with a
 * legitimate load running beside them (one keep-alive client posting 5-event batches back to back
 * on its own thread). Every case asserts that the legitimate load got only 200s, that every
 * abuser was cut, and prints the figures (sent, acknowledged, p99, RSS) the closing note quotes.
 *
 *  - slow-body trickle (item 3): 100 clients send their headers, then one body byte every 500 ms;
 *    each must be answered 408 or closed by limits.request_timeout, however slowly it trickles.
 *  - near-limit bodies (item 4): 200 clients each declare a body of limits.body_bytes and send it
 *    but for its last 300 bytes; limits.body_memory caps what is held (503 beyond), the RSS stays
 *    bounded, and small legitimate bodies still fit (the last eighth is kept for them).
 *  - non-reading pipeliners (item 5): 20 clients with a tiny receive buffer pipeline requests and
 *    never read; the answers back up and the connection is closed at the write timeout.
 *
 * Bounded in count and time; every wait is generous (the machine is shared), no assertion is on
 * speed.
 */
#include "it_common.h"

#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#define BASIC_KEY "Authorization: Basic d2tfdGVzdDo=\r\n" /* "wk_test:" */
#define LEGIT_MAX 200000

/* ---- the legitimate load ---- */

typedef struct legit {
    int port;
    pthread_t th;
    atomic_bool stop;
    uint64_t sent, ok, other, events_ok;
    long first_other; /* status of the first non-200 (0: transport failure) */
    double *lat;      /* seconds, one per answered request */
    size_t n_lat;
} legit_t;

static void *legit_main(void *arg)
{
    legit_t *l = arg;
    sup_http_t *h = sup_http_new(l->port);
    while (!atomic_load(&l->stop) && l->n_lat < LEGIT_MAX) {
        json_t *events = json_array();
        for (int i = 0; i < 5; i++) {
            char id[IT_ID_BYTES];
            sup_message_id(id, sizeof id, "legit");
            json_array_append_new(events, sup_track(id, "legit-user", "Legit", i));
        }
        json_t *b = sup_batch(events);
        base_buf_t body = {0};
        sup_json_dump(b, &body);
        json_decref(b);
        static const char *const hdrs[] = {"Content-Type: application/json", NULL};
        sup_http_req_t req = {.path = "/v1/batch",
                              .headers = hdrs,
                              .body = body.data,
                              .body_len = body.len,
                              .user = IT_KEY,
                              .timeout_ms = 30000};
        sup_http_resp_t r;
        int64_t t0 = base_mono_ms();
        int rc = sup_http_do(h, &req, &r);
        l->sent++;
        if (rc == 0 && r.status == 200) {
            l->ok++;
            l->events_ok += 5;
            l->lat[l->n_lat++] = r.seconds;
        } else {
            if (l->other == 0) l->first_other = r.status;
            l->other++;
            l->lat[l->n_lat++] = (double)(base_mono_ms() - t0) / 1000.0;
        }
        sup_http_resp_free(&r);
        base_buf_free(&body);
    }
    sup_http_free(h);
    return NULL;
}

static void legit_start(legit_t *l, int port)
{
    memset(l, 0, sizeof *l);
    l->port = port;
    atomic_init(&l->stop, false);
    l->lat = calloc(LEGIT_MAX, sizeof *l->lat);
    assert_non_null(l->lat);
    assert_int_equal(pthread_create(&l->th, NULL, legit_main, l), 0);
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

/* Stops the load, prints its figures and asserts it only ever got 200s. */
static void legit_stop_and_check(legit_t *l, const char *name)
{
    atomic_store(&l->stop, true);
    pthread_join(l->th, NULL);
    qsort(l->lat, l->n_lat, sizeof *l->lat, cmp_double);
    double p50 = l->n_lat ? l->lat[l->n_lat / 2] : 0;
    double p99 = l->n_lat ? l->lat[(size_t)((double)(l->n_lat - 1) * 0.99)] : 0;
    double max = l->n_lat ? l->lat[l->n_lat - 1] : 0;
    printf("[%s] legitimate load: requests sent %llu, answered 200 %llu (events acknowledged "
           "%llu), other %llu; latency p50 %.1f ms, p99 %.1f ms, max %.1f ms\n",
           name, (unsigned long long)l->sent, (unsigned long long)l->ok,
           (unsigned long long)l->events_ok, (unsigned long long)l->other, p50 * 1e3, p99 * 1e3,
           max * 1e3);
    if (l->other > 0) fprintf(stderr, "[%s] first non-200: %ld\n", name, l->first_other);
    assert_true(l->ok > 0);
    assert_int_equal(l->other, 0);
    free(l->lat);
}

/* ---- collector observations ---- */

static uint64_t metric(const sup_env_t *e, const char *name)
{
    sup_http_req_t get = {.method = "GET", .path = "/metrics"};
    sup_http_resp_t r;
    assert_int_equal(sup_http_once(e->coll.port, &get, &r), 0);
    double v = -1;
    size_t nl = strlen(name);
    for (const char *p = r.body.data; p != NULL && *p != '\0';) {
        if (strncmp(p, name, nl) == 0 && p[nl] == ' ') {
            v = strtod(p + nl + 1, NULL);
            break;
        }
        p = strchr(p, '\n');
        if (p != NULL) p++;
    }
    sup_http_resp_free(&r);
    if (v < 0) fprintf(stderr, "metric %s missing\n", name);
    assert_true(v >= 0);
    return (uint64_t)v;
}

/* The collector's resident set (VmRSS), KiB. */
static long rss_kib(const sup_env_t *e)
{
    char path[64], line[256];
    snprintf(path, sizeof path, "/proc/%d/status", (int)e->coll.pid);
    FILE *f = fopen(path, "r");
    assert_non_null(f);
    long kib = -1;
    while (fgets(line, sizeof line, f) != NULL)
        if (sscanf(line, "VmRSS: %ld kB", &kib) == 1) break;
    fclose(f);
    assert_true(kib > 0);
    return kib;
}

/* True when the peer has closed fd (EOF or reset); any answer bytes go to *status. */
static bool peer_closed(int fd, int *status)
{
    char buf[4096];
    for (;;) {
        ssize_t n = recv(fd, buf, sizeof buf - 1, MSG_DONTWAIT);
        if (n > 0) {
            buf[n] = '\0';
            if (*status == 0) sscanf(buf, "HTTP/1.1 %d", status);
            continue;
        }
        if (n == 0) return true;
        return errno != EAGAIN && errno != EWOULDBLOCK;
    }
}

/* ---- item 3: slow-body trickle ---- */

#define TRICKLERS 100

static void test_slow_body_trickle_is_cut(void **state)
{
    /* Without the request timeout these 100 connections would be held forever and, at
     * max_connections 110, leave the legitimate client almost no room. */
    sup_env_t *e = it_start(state, "limits:\n"
                                   "  request_timeout: 3s\n"
                                   "  max_connections: 110\n");
    legit_t l;
    legit_start(&l, e->coll.port);
    int fds[TRICKLERS], status[TRICKLERS];
    bool cut[TRICKLERS];
    int64_t cut_ms[TRICKLERS];
    static const char head[] = "POST /v1/batch HTTP/1.1\r\nHost: 127.0.0.1\r\n" BASIC_KEY
                               "Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n";
    int64_t t0 = base_mono_ms();
    for (int i = 0; i < TRICKLERS; i++) {
        fds[i] = sup_tcp_connect(e->coll.port, 5000);
        assert_true(fds[i] >= 0);
        assert_int_equal(sup_tcp_send(fds[i], head, sizeof head - 1, 5000), 0);
        status[i] = 0;
        cut[i] = false;
    }
    uint64_t trickled = 0;
    int n_cut = 0;
    /* One byte per client every 500 ms, for at most 30 s (10 x the timeout). */
    while (n_cut < TRICKLERS && base_mono_ms() - t0 < 30000) {
        for (int i = 0; i < TRICKLERS; i++) {
            if (cut[i]) continue;
            if (peer_closed(fds[i], &status[i])) {
                cut[i] = true;
                cut_ms[i] = base_mono_ms() - t0;
                n_cut++;
                continue;
            }
            if (send(fds[i], " ", 1, MSG_DONTWAIT | MSG_NOSIGNAL) == 1) trickled++;
        }
        base_sleep_ms(500);
    }
    int64_t last_cut = 0;
    int n408 = 0;
    for (int i = 0; i < TRICKLERS; i++) {
        if (cut[i] && cut_ms[i] > last_cut) last_cut = cut_ms[i];
        n408 += status[i] == 408;
        close(fds[i]);
    }
    uint64_t timeouts = metric(e, "sluice_request_timeouts_total");
    legit_stop_and_check(&l, "slow_body_trickle");
    printf(
        "[slow_body_trickle] %d trickling clients, %llu body bytes trickled, %d cut (%d answered "
        "408), last cut %.1f s after start (request_timeout 3 s); "
        "sluice_request_timeouts_total %llu\n",
        TRICKLERS, (unsigned long long)trickled, n_cut, n408, (double)last_cut / 1000.0,
        (unsigned long long)timeouts);
    assert_int_equal(n_cut, TRICKLERS);
    assert_int_equal(n408, TRICKLERS);
    assert_true(timeouts >= TRICKLERS);
}

/* ---- item 4: many near-limit bodies ---- */

#define HOLDERS     200
#define BODY_BYTES  (512 * 1024)
#define BODY_MEMORY (16 * 1024 * 1024)

static void test_near_limit_bodies_memory_bounded(void **state)
{
    sup_env_t *e = it_start(state, "threads: 2\n"
                                   "limits:\n"
                                   "  body_bytes: 512KiB\n"
                                   "  body_memory: 16MiB\n"
                                   "  request_timeout: 8s\n");
    legit_t l;
    legit_start(&l, e->coll.port);
    base_sleep_ms(500);
    long rss0 = rss_kib(e), rss_peak = rss0;
    char *body = malloc(BODY_BYTES);
    assert_non_null(body);
    memset(body, ' ', BODY_BYTES);
    char head[512];
    int hn = snprintf(head, sizeof head,
                      "POST /v1/batch HTTP/1.1\r\nHost: 127.0.0.1\r\n" BASIC_KEY
                      "Content-Type: application/json\r\nContent-Length: %d\r\n\r\n",
                      BODY_BYTES);
    int fds[HOLDERS], status[HOLDERS];
    uint64_t held_max = 0;
    for (int i = 0; i < HOLDERS; i++) {
        fds[i] = sup_tcp_connect(e->coll.port, 5000);
        assert_true(fds[i] >= 0);
        status[i] = 0;
        assert_int_equal(sup_tcp_send(fds[i], head, (size_t)hn, 5000), 0);
        /* The body but its last 300 bytes; a refused one may be cut off mid-way. */
        (void)sup_tcp_send(fds[i], body, BODY_BYTES - 300, 5000);
        if (i % 20 == 19) {
            long r = rss_kib(e);
            if (r > rss_peak) rss_peak = r;
            uint64_t held = metric(e, "sluice_http_body_memory_bytes");
            if (held > held_max) held_max = held;
        }
    }
    base_sleep_ms(1000);
    long r = rss_kib(e);
    if (r > rss_peak) rss_peak = r;
    uint64_t refused = metric(e, "sluice_body_memory_refused_total");
    uint64_t held = metric(e, "sluice_http_body_memory_bytes");
    if (held > held_max) held_max = held;
    int n503 = 0, n_closed = 0;
    for (int i = 0; i < HOLDERS; i++) {
        if (peer_closed(fds[i], &status[i])) n_closed++;
        n503 += status[i] == 503;
    }
    /* The admitted ones are cut at the request timeout (408). */
    int n408 = 0;
    for (int64_t t = base_mono_ms(); base_mono_ms() - t < 30000;) {
        n_closed = 0;
        n408 = 0;
        for (int i = 0; i < HOLDERS; i++) {
            if (peer_closed(fds[i], &status[i])) n_closed++;
            n408 += status[i] == 408;
        }
        if (n_closed == HOLDERS) break;
        base_sleep_ms(250);
    }
    for (int i = 0; i < HOLDERS; i++)
        close(fds[i]);
    free(body);
    legit_stop_and_check(&l, "near_limit_bodies");
    printf("[near_limit_bodies] %d clients x %d-byte bodies (%.0f MiB asked), body_memory 16 MiB: "
           "%d refused 503 (sluice_body_memory_refused_total %llu), %d cut 408 at the request "
           "timeout; body memory held max %.1f MiB; collector RSS %.1f MiB before, peak %.1f MiB "
           "(+%.1f MiB)\n",
           HOLDERS, BODY_BYTES, (double)HOLDERS * BODY_BYTES / 1048576.0, n503,
           (unsigned long long)refused, n408, (double)held_max / 1048576.0, rss0 / 1024.0,
           rss_peak / 1024.0, (rss_peak - rss0) / 1024.0);
    assert_true(held_max <= BODY_MEMORY);
    assert_true(refused >= HOLDERS / 2);
    assert_true(n503 >= HOLDERS / 2);
    assert_int_equal(n503 + n408, HOLDERS);
    /* 100 MiB asked; what is held stays near the 16 MiB cap (3x for allocator and sanitizer
     * overhead). */
    assert_true(rss_peak - rss0 < 3 * BODY_MEMORY / 1024);
}

/* ---- item 5: non-reading pipeliners ---- */

#define PIPELINERS 20

/* A blocking connect with a 4 KiB receive buffer, set before the handshake so the advertised
 * window stays small (set later, the kernel keeps autotuning it up to megabytes). */
static int connect_small_rcvbuf(int port)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    assert_true(fd >= 0);
    int small = 4096;
    assert_int_equal(setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &small, sizeof small), 0);
    struct sockaddr_in sa;
    memset(&sa, 0, sizeof sa);
    sa.sin_family = AF_INET;
    sa.sin_port = htons((uint16_t)port);
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    assert_int_equal(connect(fd, (struct sockaddr *)&sa, sizeof sa), 0);
    return fd;
}

static void test_non_reading_pipeliner_is_cut(void **state)
{
    sup_env_t *e = it_start(state, "limits:\n"
                                   "  request_timeout: 3s\n");
    legit_t l;
    legit_start(&l, e->coll.port);
    int fds[PIPELINERS];
    bool cut[PIPELINERS];
    uint64_t sent_bytes = 0;
    static const char get[] = "GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n";
    for (int i = 0; i < PIPELINERS; i++) {
        fds[i] = connect_small_rcvbuf(e->coll.port);
        cut[i] = false;
    }
    char burst[sizeof get * 64];
    for (int k = 0; k < 64; k++)
        memcpy(burst + k * (sizeof get - 1), get, sizeof get - 1);
    size_t burst_len = 64 * (sizeof get - 1);
    int n_cut = 0;
    int64_t t0 = base_mono_ms();
    /* Pipeline as fast as the sockets take it, never read; at most 60 s. */
    while (n_cut < PIPELINERS && base_mono_ms() - t0 < 60000) {
        for (int i = 0; i < PIPELINERS; i++) {
            if (cut[i]) continue;
            ssize_t n = send(fds[i], burst, burst_len, MSG_DONTWAIT | MSG_NOSIGNAL);
            if (n > 0) {
                sent_bytes += (uint64_t)n;
            } else if (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK) {
                cut[i] = true; /* EPIPE / ECONNRESET: the collector closed it */
                n_cut++;
            }
        }
        base_sleep_ms(50);
    }
    int64_t elapsed = base_mono_ms() - t0;
    uint64_t wt = metric(e, "sluice_write_timeouts_total");
    uint64_t conns = metric(e, "sluice_http_connections");
    for (int i = 0; i < PIPELINERS; i++)
        close(fds[i]);
    legit_stop_and_check(&l, "non_reading_pipeliner");
    printf("[non_reading_pipeliner] %d clients pipelined %.1f MiB of requests without reading; "
           "%d cut within %.1f s (request_timeout 3 s); sluice_write_timeouts_total %llu; open "
           "connections after %llu\n",
           PIPELINERS, (double)sent_bytes / 1048576.0, n_cut, (double)elapsed / 1000.0,
           (unsigned long long)wt, (unsigned long long)conns);
    assert_int_equal(n_cut, PIPELINERS);
    assert_true(wt >= PIPELINERS);
}

int main(int argc, char **argv)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_teardown(test_slow_body_trickle_is_cut, it_teardown),
        cmocka_unit_test_teardown(test_near_limit_bodies_memory_bounded, it_teardown),
        cmocka_unit_test_teardown(test_non_reading_pipeliner_is_cut, it_teardown),
    };
    return it_run(argc, argv, "abuse", tests, sizeof tests / sizeof tests[0]);
}
