/*
 * bench_stream_dedup.c — cost of sluice-stream's dedup per event on one core (not a ctest):
 * stream_dedup_seen_first on fresh keys with 10% duplicates, a changelog flush every --batch
 * events (emit copies nothing: the producer's copy is the stream's cost), then the restore of
 * that changelog into a fresh store. Prints ns/event and events/s for each phase and the
 * changelog bytes per remembered event.
 *   bench_stream_dedup [--events N] [--batch N] [--mem BYTES] [--runs N]
 * (defaults 4 M events, 20000 = stream.max_batch, 64 MiB, 5 runs; event time advances 1 ms per
 * 1000 events, i.e. 1 M events/s).
 * Figures: notes/issue-14-sdedup.md.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "base.h"
#include "stream_dedup.h"

typedef struct rec {
    unsigned char key[STREAM_DEDUP_KEY_LEN];
    unsigned char *val;
    size_t vlen;
} rec_t;

typedef struct sink {
    rec_t *r;
    size_t n, cap;
    uint64_t bytes;
    int keep;
} sink_t;

static int emit(void *ud, const void *key, size_t klen, const void *val, size_t vlen)
{
    sink_t *s = ud;
    s->bytes += klen + vlen;
    if (!s->keep) return 0;
    if (s->n == s->cap) {
        s->cap = s->cap ? s->cap * 2 : 1024;
        s->r = realloc(s->r, s->cap * sizeof *s->r);
        if (s->r == NULL) abort();
    }
    rec_t *r = &s->r[s->n++];
    memcpy(r->key, key, klen);
    r->vlen = vlen;
    r->val = malloc(vlen ? vlen : 1);
    if (r->val == NULL) abort();
    if (vlen) memcpy(r->val, val, vlen);
    return 0;
}

static double now_s(void)
{
    return (double)base_mono_ns() / 1e9;
}

static int cmp_d(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

int main(int argc, char **argv)
{
    uint64_t events = 4000000, batch = 20000, mem = 64u << 20;
    int runs = 5;
    for (int i = 1; i + 1 < argc; i += 2) {
        if (!strcmp(argv[i], "--events"))
            events = strtoull(argv[i + 1], NULL, 10);
        else if (!strcmp(argv[i], "--batch"))
            batch = strtoull(argv[i + 1], NULL, 10);
        else if (!strcmp(argv[i], "--mem"))
            mem = strtoull(argv[i + 1], NULL, 10);
        else if (!strcmp(argv[i], "--runs"))
            runs = atoi(argv[i + 1]);
    }
    if (runs < 1 || runs > 99 || batch == 0) return 2;
    double seen_ns[99], rest_ns[99], flush_ns[99], bpe = 0;
    /* The ids are made before the clock starts: the stream gets them decoded, not printed. */
    char(*ids)[24] = malloc(events * sizeof *ids);
    if (ids == NULL) return 1;
    for (uint64_t i = 0; i < events; i++) {
        /* every 10th event repeats one of the previous 1000 */
        uint64_t k = i % 10 == 9 ? i - 1 - (i * 7919) % (i < 1000 ? i : 1000) : i;
        snprintf(ids[i], sizeof ids[i], "%016llx-4a1b", (unsigned long long)k);
    }
    uint64_t firsts = 0;
    for (int run = 0; run < runs; run++) {
        stream_dedup_t *d = NULL, *r = NULL;
        if (stream_dedup_new(3600000, mem, &d) != 0 || stream_dedup_new(3600000, mem, &r) != 0)
            return 1;
        sink_t s = {.keep = 1};
        firsts = 0;
        double tf = 0;
        int64_t t = (int64_t)time(NULL) * 1000;
        double t0 = now_s();
        for (uint64_t i = 0; i < events; i++) {
            /* 1 M events per second of event time */
            firsts +=
                stream_dedup_seen_first(d, "web", 3, ids[i], 21, t + (int64_t)(i / 1000)) == 1;
            if ((i + 1) % batch == 0) {
                double f0 = now_s();
                if (stream_dedup_changelog(d, emit, &s) != 0) return 1;
                tf += now_s() - f0;
            }
        }
        if (stream_dedup_changelog(d, emit, &s) != 0) return 1;
        double t1 = now_s();
        for (size_t i = 0; i < s.n; i++)
            if (stream_dedup_restore(r, s.r[i].key, STREAM_DEDUP_KEY_LEN, s.r[i].val, s.r[i].vlen))
                return 1;
        double t2 = now_s();
        stream_dedup_stats_t st;
        stream_dedup_stats(r, &st);
        seen_ns[run] = (t1 - t0) * 1e9 / (double)events;
        flush_ns[run] = tf * 1e9 / (double)events;
        rest_ns[run] = (t2 - t1) * 1e9 / (double)(firsts ? firsts : 1);
        bpe = (double)s.bytes / (double)firsts;
        printf("run %d: seen_first+changelog %.1f ns/event (%.2f M/s; changelog part %.1f), "
               "restore %.1f ns/entry, "
               "%llu first of %llu, restored %llu entries, %zu records, %.3f changelog bytes/event "
               "(key+value)\n",
               run, seen_ns[run], 1e3 / seen_ns[run], flush_ns[run], rest_ns[run],
               (unsigned long long)firsts, (unsigned long long)events,
               (unsigned long long)st.entries, s.n, bpe);
        for (size_t i = 0; i < s.n; i++)
            free(s.r[i].val);
        free(s.r);
        stream_dedup_free(d);
        stream_dedup_free(r);
    }
    qsort(seen_ns, (size_t)runs, sizeof seen_ns[0], cmp_d);
    qsort(rest_ns, (size_t)runs, sizeof rest_ns[0], cmp_d);
    qsort(flush_ns, (size_t)runs, sizeof flush_ns[0], cmp_d);
    printf("median: seen_first+changelog %.1f ns/event = %.2f M events/s/core (changelog part "
           "%.1f ns/event); restore %.1f ns/entry = %.2f M entries/s; %.3f changelog bytes per "
           "remembered event\n",
           seen_ns[runs / 2], 1e3 / seen_ns[runs / 2], flush_ns[runs / 2], rest_ns[runs / 2],
           1e3 / rest_ns[runs / 2], bpe);
    free(ids);
    return 0;
}
