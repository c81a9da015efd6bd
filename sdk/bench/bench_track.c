/*
 * bench_track — latency of sluice_track() (5 properties) from app threads while the worker
 * sends to an in-process fake transport that counts, plus RSS over time.
 *
 *   sluice-bench [--threads N] [--rate EVENTS_PER_SEC|max] [--duration S] [--queue N]
 *
 * Every call is timed with CLOCK_MONOTONIC into a per-thread histogram of 10 ns buckets (fixed
 * memory). RSS (from /proc/self/statm) is printed every second so growth is visible.
 * Open-loop pacing: each thread has a schedule (rate/threads per second) and sleeps only when
 * ahead of it, so calls are not slowed by the pacing itself.
 */
#include <sluice.h>

#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define BUCKET_NS 10
#define N_BUCKETS 100000 /* 1 ms; slower calls land in the last bucket */

typedef struct {
    pthread_t th;
    int id;
    sluice_client *c;
    double rate; /* calls per second for this thread; 0 = flat out */
    double duration;
    uint32_t *hist;
    uint64_t calls, errors;
} worker_t;

static atomic_uint_fast64_t fake_events, fake_requests, fake_bytes;

static int fake_send(void *ud, const sluice_request *req, sluice_response *resp)
{
    (void)ud;
    atomic_fetch_add(&fake_events, req->n_events);
    atomic_fetch_add(&fake_requests, 1);
    atomic_fetch_add(&fake_bytes, req->body_len);
    resp->status = 200;
    return 0;
}

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static long rss_kib(void)
{
    long pages = 0, rss = 0;
    FILE *f = fopen("/proc/self/statm", "r");
    if (!f) return -1;
    if (fscanf(f, "%ld %ld", &pages, &rss) != 2) rss = -1;
    fclose(f);
    return rss < 0 ? -1 : rss * (sysconf(_SC_PAGESIZE) / 1024);
}

static void *run(void *arg)
{
    worker_t *w = arg;
    sluice_props *p = sluice_props_new();
    char user[32];
    double start = now_s(), end = start + w->duration;
    uint64_t i = 0;
    for (;; i++) {
        if ((i & 63) == 0) {
            double t = now_s();
            if (t >= end) break;
            if (w->rate > 0) {
                double due = start + (double)i / w->rate;
                if (due > t) {
                    double d = due - t;
                    struct timespec ts = {(time_t)d, (long)((d - (double)(time_t)d) * 1e9)};
                    nanosleep(&ts, NULL);
                }
            }
        }
        /* Building the properties is the app's work, not the SDK's: outside the timing. */
        sluice_props_clear(p);
        sluice_props_set_str(p, "plan", "pro");
        sluice_props_set_int(p, "seats", (int64_t)(i % 50));
        sluice_props_set_double(p, "amount", 12.5);
        sluice_props_set_bool(p, "trial", (int)(i & 1));
        sluice_props_set_str(p, "page", "/reports/usage");
        snprintf(user, sizeof user, "user-%d-%llu", w->id, (unsigned long long)(i % 1000));
        uint64_t t0 = now_ns();
        int rc = sluice_track(w->c, user, "Report Viewed", p);
        uint64_t dt = now_ns() - t0;
        size_t b = dt / BUCKET_NS;
        w->hist[b < N_BUCKETS ? b : N_BUCKETS - 1]++;
        if (rc) w->errors++;
    }
    w->calls = i;
    sluice_props_free(p);
    return NULL;
}

static double pct(const uint64_t *h, uint64_t total, double q)
{
    uint64_t want = (uint64_t)(q * (double)total), acc = 0;
    for (size_t b = 0; b < N_BUCKETS; b++) {
        acc += h[b];
        if (acc > want) return (double)(b * BUCKET_NS + BUCKET_NS / 2) / 1000.0;
    }
    return (double)N_BUCKETS * BUCKET_NS / 1000.0;
}

int main(int argc, char **argv)
{
    int threads = 4;
    double rate = 100000, duration = 10;
    uint32_t queue = 100000;
    for (int i = 1; i + 1 < argc; i += 2) {
        if (!strcmp(argv[i], "--threads"))
            threads = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--rate"))
            rate = strcmp(argv[i + 1], "max") ? atof(argv[i + 1]) : 0;
        else if (!strcmp(argv[i], "--duration"))
            duration = atof(argv[i + 1]);
        else if (!strcmp(argv[i], "--queue"))
            queue = (uint32_t)atol(argv[i + 1]);
        else
            return fprintf(stderr, "unknown option %s\n", argv[i]), 2;
    }
    if (threads < 1 || threads > 64 || duration <= 0) return 2;

    sluice_transport tp = {.send_cb = fake_send};
    sluice_config cfg;
    sluice_config_init(&cfg, SLUICE_CONFIG_VERSION);
    cfg.endpoint = "http://127.0.0.1:1";
    cfg.write_key = "bench";
    cfg.transport = &tp;
    cfg.queue_max_events = queue;
    cfg.queue_max_bytes = queue * 1024u;
    sluice_client *c;
    int rc = sluice_client_new(&c, &cfg);
    if (rc) return fprintf(stderr, "client: %s\n", sluice_strerror(rc)), 1;

    worker_t *w = calloc((size_t)threads, sizeof *w);
    for (int i = 0; i < threads; i++) {
        w[i].id = i;
        w[i].c = c;
        w[i].rate = rate / threads;
        w[i].duration = duration;
        /* touched now, so the histogram's pages do not show up later as RSS growth */
        w[i].hist = malloc(N_BUCKETS * sizeof *w[i].hist);
        memset(w[i].hist, 0, N_BUCKETS * sizeof *w[i].hist);
        pthread_create(&w[i].th, NULL, run, &w[i]);
    }
    long rss0 = rss_kib();
    for (int s = 1; s <= (int)duration; s++) {
        sleep(1);
        sluice_stats st;
        sluice_client_stats(c, &st);
        printf("t=%2ds rss=%ld KiB queued=%llu sent=%llu dropped=%llu queue=%llu\n", s, rss_kib(),
               (unsigned long long)st.queued, (unsigned long long)st.sent,
               (unsigned long long)st.dropped, (unsigned long long)st.queue_events);
        fflush(stdout);
    }
    uint64_t *h = calloc(N_BUCKETS, sizeof *h), total = 0, errors = 0;
    for (int i = 0; i < threads; i++) {
        pthread_join(w[i].th, NULL);
        for (size_t b = 0; b < N_BUCKETS; b++)
            h[b] += w[i].hist[b];
        total += w[i].calls;
        errors += w[i].errors;
        free(w[i].hist);
    }
    int lost = sluice_client_close(c, 5000);
    printf("threads=%d rate=%.0f/s (0 = max) calls=%llu errors=%llu lost_at_close=%d\n", threads,
           rate, (unsigned long long)total, (unsigned long long)errors, lost);
    printf("track latency us: p50=%.3f p90=%.3f p99=%.3f p99.9=%.3f\n", pct(h, total, 0.5),
           pct(h, total, 0.9), pct(h, total, 0.99), pct(h, total, 0.999));
    printf("transport: requests=%llu events=%llu bytes=%llu; rss start=%ld KiB end=%ld KiB\n",
           (unsigned long long)fake_requests, (unsigned long long)fake_events,
           (unsigned long long)fake_bytes, rss0, rss_kib());
    free(h);
    free(w);
    return 0;
}
