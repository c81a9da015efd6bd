/*
 * stream_dedup.c — sluice-stream's per-partition exact dedup with a changelog (contract and
 * changelog format in stream_dedup.h). The table is the collector's dedup engine with
 * caller-numbered generations; this file keeps what the changelog needs: the fingerprints
 * remembered since the last flush (in runs of one generation each) and, per generation with
 * records on the changelog, how many records it has (the next seq, and the tombstones it needs
 * when it dies).
 */
#include "stream_dedup.h"

#include <stdatomic.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <xxhash.h>

#include "base.h"
#include "dedup.h"
#include "metrics.h"

/* A generation cannot have more records than this (a 1 MiB record every 100 ms for 24 h is
 * ~860 k): a restored seq beyond it is refused as corrupt, so garbage cannot make a flush write
 * billions of tombstones. */
#define SD_MAX_SEQ (1u << 24)
/* Sources up to this long have their seed kept (stream_dedup_fp). */
#define SD_SEED_SRC 64
/* dedup.c's generations per window (DEDUP_GENS). */
#define DEDUP_GENS_PER_WINDOW 32

const char *stream_dedup_strerror(int err)
{
    switch (err) {
#define SD_X_STR(name, val, msg)                                                                   \
    case val:                                                                                      \
        return msg;
        STREAM_DEDUP_ERRORS(SD_X_STR)
#undef SD_X_STR
    default:
        return "unknown error";
    }
}

/* A generation with records on the changelog, under its key's numbering (gms, kgen); die is our
 * own generation whose death kills it. */
typedef struct gen_rec {
    uint64_t gms, kgen, die;
    uint32_t nseq;
} gen_rec_t;

/* Pending fingerprints pend[start, next run's start) were remembered in generation gen. */
typedef struct run {
    uint64_t gen;
    size_t start;
    uint32_t nrec; /* records this flush writes for it */
} run_t;

struct stream_dedup {
    dedup_t *dd;
    uint64_t window_ms, gen_ms;
    uint64_t now;         /* the engine's clock: the latest time seen, never going back */
    uint64_t next_change; /* when the time generation or the time floor next moves */
    stream_dedup_clock_fn clock;
    void *clock_ud;
    uint64_t max_pending, max_fps; /* fingerprints per record */
    uint64_t *pend;
    size_t npend, pcap;
    run_t *runs;
    size_t nruns, rcap;
    gen_rec_t *gens;
    size_t ngens, gcap;
    base_buf_t val; /* one record's value: grown to the largest written, <= max record */
    /* The last source's seed (a partition's events come from few sources). */
    char seed_src[SD_SEED_SRC];
    size_t seed_len; /* SD_SEED_SRC + 1: none yet */
    uint64_t seed;
    stream_dedup_stats_t st;
};

/* Process totals (stream_dedup_register_metrics). */
static _Atomic uint64_t g_dups, g_full, g_records, g_tombs, g_bytes, g_restored, g_rerrs;

static uint64_t engine_clock(void *ud)
{
    return ((stream_dedup_t *)ud)->now;
}

static uint64_t wall_ms(void *ud)
{
    (void)ud;
    return (uint64_t)base_wall_ms();
}

static void put_be64(unsigned char *p, uint64_t v)
{
    for (int i = 7; i >= 0; i--, v >>= 8)
        p[i] = (unsigned char)v;
}

static uint64_t get_be64(const unsigned char *p)
{
    uint64_t v = 0;
    for (int i = 0; i < 8; i++)
        v = v << 8 | p[i];
    return v;
}

static void put_le32(unsigned char *p, uint32_t v)
{
    for (int i = 0; i < 4; i++, v >>= 8)
        p[i] = (unsigned char)v;
}

static uint32_t get_le32(const unsigned char *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static void put_le64(unsigned char *p, uint64_t v)
{
    for (int i = 0; i < 8; i++, v >>= 8)
        p[i] = (unsigned char)v;
}

static uint64_t get_le64(const unsigned char *p)
{
    uint64_t v = 0;
    for (int i = 7; i >= 0; i--)
        v = v << 8 | p[i];
    return v;
}

static void make_key(unsigned char *k, uint64_t gms, uint64_t gen, uint32_t seq)
{
    k[0] = 'd';
    put_be64(k + 1, gms);
    put_be64(k + 9, gen);
    k[17] = (unsigned char)(seq >> 24);
    k[18] = (unsigned char)(seq >> 16);
    k[19] = (unsigned char)(seq >> 8);
    k[20] = (unsigned char)seq;
}

/* Checksum of a record: the fingerprints' bytes seeded with the key's hash, so a value under
 * another key is refused too. */
static uint64_t rec_sum(const unsigned char *key, const void *fps, size_t n)
{
    return XXH3_64bits_withSeed(fps, n * 8, XXH3_64bits(key, STREAM_DEDUP_KEY_LEN));
}

/* Moves the time to t (never back) and the engine's generations with it: the open generation is
 * t / gen_ms, and those whose end is a window ago die. Cheap unless a boundary was crossed. */
static void advance(stream_dedup_t *d, uint64_t t)
{
    if (t > d->now) d->now = t;
    if (d->now < d->next_change) return;
    uint64_t g = d->now / d->gen_ms;
    uint64_t floor = d->now >= d->window_ms ? (d->now - d->window_ms) / d->gen_ms : 0;
    dedup_gen_advance(d->dd, g, floor, g * d->gen_ms);
    uint64_t next_gen = (g + 1) * d->gen_ms;
    uint64_t next_floor = (floor + 1) * d->gen_ms + d->window_ms;
    d->next_change = next_gen < next_floor ? next_gen : next_floor;
}

int stream_dedup_new_opts(const stream_dedup_opts_t *o, stream_dedup_t **out)
{
    *out = NULL;
    if (o == NULL || o->window_ms == 0) return STREAM_DEDUP_E_INVALID;
    uint64_t rec = o->max_record_bytes ? o->max_record_bytes : STREAM_DEDUP_DEF_MAX_RECORD;
    if (rec < STREAM_DEDUP_MIN_RECORD || rec > (1u << 30)) return STREAM_DEDUP_E_INVALID;
    stream_dedup_t *d = calloc(1, sizeof *d);
    if (d == NULL) return STREAM_DEDUP_E_NOMEM;
    d->window_ms = o->window_ms;
    d->clock = o->clock ? o->clock : wall_ms;
    d->clock_ud = o->clock ? o->clock_ud : NULL;
    d->max_pending = o->max_pending ? o->max_pending : STREAM_DEDUP_DEF_MAX_PENDING;
    d->max_fps = (rec - STREAM_DEDUP_HDR_LEN) / 8;
    base_buf_init(&d->val, STREAM_DEDUP_HDR_LEN + 8 * (size_t)d->max_fps);
    d->now = d->clock(d->clock_ud);
    d->seed_len = SD_SEED_SRC + 1;
    dedup_opts_t eo = {.window_ms = o->window_ms,
                       .max_memory = o->max_bytes,
                       .clock = engine_clock,
                       .clock_ud = d};
    if (dedup_new(&eo, &d->dd) != DEDUP_OK) {
        stream_dedup_free(d);
        return STREAM_DEDUP_E_NOMEM;
    }
    d->gen_ms = dedup_gen_ms(d->dd);
    advance(d, d->now);
    *out = d;
    return STREAM_DEDUP_OK;
}

int stream_dedup_new(uint64_t window_ms, uint64_t max_bytes, stream_dedup_t **out)
{
    stream_dedup_opts_t o = {.window_ms = window_ms, .max_bytes = max_bytes};
    return stream_dedup_new_opts(&o, out);
}

void stream_dedup_free(stream_dedup_t *d)
{
    if (d == NULL) return;
    dedup_free(d->dd);
    free(d->pend);
    free(d->runs);
    free(d->gens);
    base_buf_free(&d->val);
    free(d);
}

/* Room for one more pending fingerprint and one more run. */
static bool pend_room(stream_dedup_t *d)
{
    if (d->npend >= d->max_pending) return false;
    if (d->npend == d->pcap) {
        size_t n = d->pcap ? d->pcap * 2 : 1024;
        if (n > d->max_pending) n = (size_t)d->max_pending;
        uint64_t *p = realloc(d->pend, n * sizeof *p);
        if (p == NULL) return false;
        d->pend = p;
        d->pcap = n;
    }
    if (d->nruns == d->rcap) {
        size_t n = d->rcap ? d->rcap * 2 : 16;
        run_t *r = realloc(d->runs, n * sizeof *r);
        if (r == NULL) return false;
        d->runs = r;
        d->rcap = n;
    }
    return true;
}

uint64_t stream_dedup_fp(stream_dedup_t *d, const char *src, size_t slen, const char *mid,
                         size_t mlen)
{
    if (slen > SD_SEED_SRC) return dedup_fp(dedup_seed(src, slen), mid, mlen);
    if (slen != d->seed_len || (slen > 0 && memcmp(src, d->seed_src, slen) != 0)) {
        d->seed = dedup_seed(src, slen);
        d->seed_len = slen;
        if (slen > 0) memcpy(d->seed_src, src, slen);
    }
    return dedup_fp(d->seed, mid, mlen);
}

void stream_dedup_prefetch(stream_dedup_t *d, uint64_t fp)
{
    dedup_prefetch(d->dd, fp);
}

int stream_dedup_seen_first(stream_dedup_t *d, const char *src, size_t slen, const char *mid,
                            size_t mlen, int64_t now_ms)
{
    return stream_dedup_seen_first_fp(d, stream_dedup_fp(d, src, slen, mid, mlen), now_ms);
}

int stream_dedup_seen_first_fp(stream_dedup_t *d, uint64_t fp, int64_t now_ms)
{
    advance(d, now_ms > 0 ? (uint64_t)now_ms : 0);
    if (!pend_room(d)) {
        /* Cannot be written to the changelog: a duplicate is still one, a new key is not
         * remembered (it would be lost on a move) and goes through. */
        if (dedup_all_remembered(d->dd, &fp, 1)) {
            atomic_fetch_add_explicit(&g_dups, 1, memory_order_relaxed);
            return 0;
        }
        d->st.pending_full++;
        atomic_fetch_add_explicit(&g_full, 1, memory_order_relaxed);
        return STREAM_DEDUP_E_FULL;
    }
    uint64_t gen;
    if (dedup_insert(d->dd, fp, &gen) != DEDUP_NEW) {
        atomic_fetch_add_explicit(&g_dups, 1, memory_order_relaxed);
        return 0;
    }
    if (d->nruns == 0 || d->runs[d->nruns - 1].gen != gen)
        d->runs[d->nruns++] = (run_t){.gen = gen, .start = d->npend};
    d->pend[d->npend++] = fp;
    return 1;
}

static gen_rec_t *gen_find(stream_dedup_t *d, uint64_t gms, uint64_t kgen)
{
    for (size_t i = 0; i < d->ngens; i++)
        if (d->gens[i].kgen == kgen && d->gens[i].gms == gms) return &d->gens[i];
    return NULL;
}

/* Finds or adds (gms, kgen). NULL when memory is short. */
static gen_rec_t *gen_get(stream_dedup_t *d, uint64_t gms, uint64_t kgen, uint64_t die)
{
    gen_rec_t *r = gen_find(d, gms, kgen);
    if (r != NULL) return r;
    if (d->ngens == d->gcap) {
        size_t n = d->gcap ? d->gcap * 2 : 64;
        gen_rec_t *g = realloc(d->gens, n * sizeof *g);
        if (g == NULL) return NULL;
        d->gens = g;
        d->gcap = n;
    }
    r = &d->gens[d->ngens++];
    *r = (gen_rec_t){.gms = gms, .kgen = kgen, .die = die};
    return r;
}

static int emit_one(stream_dedup_t *d, stream_dedup_emit_fn emit, void *ud, const unsigned char *k,
                    const void *v, size_t vlen)
{
    if (emit(ud, k, STREAM_DEDUP_KEY_LEN, v, vlen) != 0) return STREAM_DEDUP_E_EMIT;
    d->st.record_bytes += STREAM_DEDUP_KEY_LEN + vlen;
    atomic_fetch_add_explicit(&g_bytes, STREAM_DEDUP_KEY_LEN + vlen, memory_order_relaxed);
    return STREAM_DEDUP_OK;
}

int stream_dedup_changelog(stream_dedup_t *d, stream_dedup_emit_fn emit, void *ud)
{
    advance(d, d->clock(d->clock_ud));
    uint64_t cur, floor;
    dedup_gen_range(d->dd, &cur, &floor);
    unsigned char key[STREAM_DEDUP_KEY_LEN];
    uint64_t records = 0, tombs = 0;
    /* Records of the pending fingerprints, per generation still live. */
    for (size_t r = 0; r < d->nruns; r++) {
        run_t *run = &d->runs[r];
        size_t end = r + 1 < d->nruns ? d->runs[r + 1].start : d->npend;
        run->nrec = 0;
        if (run->gen < floor) continue; /* died before it was written: nothing to restore */
        gen_rec_t *g = gen_get(d, d->gen_ms, run->gen, run->gen);
        if (g == NULL) return STREAM_DEDUP_E_NOMEM;
        for (size_t i = run->start; i < end; i += d->max_fps) {
            size_t n = end - i < d->max_fps ? end - i : (size_t)d->max_fps;
            make_key(key, d->gen_ms, run->gen, g->nseq + run->nrec);
            size_t vlen = STREAM_DEDUP_HDR_LEN + 8 * n;
            if (base_buf_grow_to(&d->val, vlen) != BASE_OK) return STREAM_DEDUP_E_NOMEM;
            unsigned char *v = (unsigned char *)d->val.data;
            v[0] = 'S';
            v[1] = 'D';
            v[2] = 1;
            v[3] = 0;
            put_le32(v + 4, (uint32_t)n);
            for (size_t j = 0; j < n; j++)
                put_le64(v + STREAM_DEDUP_HDR_LEN + 8 * j, d->pend[i + j]);
            put_le64(v + 8, rec_sum(key, v + STREAM_DEDUP_HDR_LEN, n));
            int rc = emit_one(d, emit, ud, key, v, vlen);
            if (rc != STREAM_DEDUP_OK) return rc;
            run->nrec++;
            records++;
        }
    }
    /* Tombstones for every record of the generations that died. */
    for (size_t i = 0; i < d->ngens; i++) {
        gen_rec_t *g = &d->gens[i];
        if (g->die >= floor) continue;
        for (uint32_t s = 0; s < g->nseq; s++) {
            make_key(key, g->gms, g->kgen, s);
            int rc = emit_one(d, emit, ud, key, NULL, 0);
            if (rc != STREAM_DEDUP_OK) return rc;
            tombs++;
        }
    }
    /* All written: commit. */
    for (size_t r = 0; r < d->nruns; r++) {
        if (d->runs[r].nrec == 0) continue;
        gen_rec_t *g = gen_find(d, d->gen_ms, d->runs[r].gen);
        g->nseq += d->runs[r].nrec;
    }
    size_t w = 0;
    for (size_t i = 0; i < d->ngens; i++)
        if (d->gens[i].die >= floor) d->gens[w++] = d->gens[i];
    d->ngens = w;
    d->npend = d->nruns = 0;
    d->st.records += records;
    d->st.tombstones += tombs;
    atomic_fetch_add_explicit(&g_records, records, memory_order_relaxed);
    atomic_fetch_add_explicit(&g_tombs, tombs, memory_order_relaxed);
    return STREAM_DEDUP_OK;
}

static int restore_failed(stream_dedup_t *d, int rc)
{
    d->st.restore_errors++;
    atomic_fetch_add_explicit(&g_rerrs, 1, memory_order_relaxed);
    return rc;
}

int stream_dedup_restore(stream_dedup_t *d, const void *key, size_t klen, const void *val,
                         size_t vlen)
{
    const unsigned char *k = key, *v = val;
    if (k == NULL || klen != STREAM_DEDUP_KEY_LEN || k[0] != 'd')
        return restore_failed(d, STREAM_DEDUP_E_CORRUPT);
    uint64_t gms = get_be64(k + 1), kgen = get_be64(k + 9);
    uint32_t seq = (uint32_t)k[17] << 24 | (uint32_t)k[18] << 16 | (uint32_t)k[19] << 8 | k[20];
    if (gms == 0 || seq >= SD_MAX_SEQ || kgen >= UINT64_MAX / gms)
        return restore_failed(d, STREAM_DEDUP_E_CORRUPT);
    /* Our generation holding the end of that one (the same one when the window is ours). */
    uint64_t own = gms == d->gen_ms ? kgen : ((kgen + 1) * gms - 1) / d->gen_ms;
    advance(d, d->clock(d->clock_ud));
    /* More than a window ahead of our clock: garbage (or a clock far off), refused so that one
     * bad key cannot move the generations into the future and stop expiry. */
    if (own > d->now / d->gen_ms + DEDUP_GENS_PER_WINDOW)
        return restore_failed(d, STREAM_DEDUP_E_CORRUPT);
    if (vlen == 0) {
        /* Dead at its writer, with every older generation (they die oldest first). A foreign
         * generation only kills ours below the one it ends in, which may hold newer ones. */
        gen_rec_t *g = gen_find(d, gms, kgen);
        if (g != NULL) *g = d->gens[--d->ngens];
        uint64_t f = gms == d->gen_ms ? own + 1 : own;
        dedup_gen_advance(d->dd, f, f, f * d->gen_ms);
        return STREAM_DEDUP_OK;
    }
    if (v == NULL || vlen < STREAM_DEDUP_HDR_LEN || v[0] != 'S' || v[1] != 'D' || v[2] != 1 ||
        v[3] != 0)
        return restore_failed(d, STREAM_DEDUP_E_CORRUPT);
    size_t n = get_le32(v + 4);
    if ((vlen - STREAM_DEDUP_HDR_LEN) % 8 != 0 || (vlen - STREAM_DEDUP_HDR_LEN) / 8 != n ||
        rec_sum(k, v + STREAM_DEDUP_HDR_LEN, n) != get_le64(v + 8))
        return restore_failed(d, STREAM_DEDUP_E_CORRUPT);
    gen_rec_t *g = gen_find(d, gms, kgen);
    if (g == NULL) {
        if (d->ngens >= STREAM_DEDUP_MAX_GENS) return restore_failed(d, STREAM_DEDUP_E_LIMIT);
        g = gen_get(d, gms, kgen, own);
        if (g == NULL) return restore_failed(d, STREAM_DEDUP_E_NOMEM);
    }
    if (g->nseq < seq + 1) g->nseq = seq + 1;
    uint64_t cur, floor;
    dedup_gen_range(d->dd, &cur, &floor);
    if (own < floor) {
        d->st.restore_skipped++; /* dead: tombstoned by the next flush */
        return STREAM_DEDUP_OK;
    }
    if (own > cur) dedup_gen_advance(d->dd, own, floor, own * d->gen_ms);
    uint64_t added = 0;
    for (size_t i = 0; i < n; i++)
        added += dedup_insert_gen(d->dd, get_le64(v + STREAM_DEDUP_HDR_LEN + 8 * i), own);
    d->st.restored += added;
    atomic_fetch_add_explicit(&g_restored, added, memory_order_relaxed);
    return STREAM_DEDUP_OK;
}

void stream_dedup_stats(stream_dedup_t *d, stream_dedup_stats_t *st)
{
    dedup_stats_t es;
    dedup_stats(d->dd, &es);
    *st = d->st;
    st->entries = es.entries;
    st->bytes = es.bytes + d->pcap * 8 + d->rcap * sizeof(run_t) + d->gcap * sizeof(gen_rec_t) +
                d->val.cap + sizeof *d;
    st->window_s = es.window_s;
    st->evicted_by_cap = es.evicted_by_cap;
    st->pending = d->npend;
    st->generations = (uint32_t)d->ngens;
}

static int render_totals(base_buf_t *out, void *ud)
{
    (void)ud;
    static const struct {
        const char *name, *help;
        _Atomic uint64_t *v;
    } c[] = {
        {"duplicates", "events sluice-stream's dedup recognised as duplicates", &g_dups},
        {"pending_full", "events let through undeduped: pending changelog buffer full", &g_full},
        {"changelog_records", "dedup changelog records written", &g_records},
        {"tombstones", "dedup changelog tombstones written", &g_tombs},
        {"changelog_bytes", "key + value bytes of dedup changelog records", &g_bytes},
        {"restored", "fingerprints restored from the dedup changelog", &g_restored},
        {"restore_errors", "dedup changelog records refused on restore", &g_rerrs},
    };
    for (size_t i = 0; i < sizeof c / sizeof c[0]; i++) {
        if (base_buf_printf(out,
                            "# HELP sluice_stream_dedup_%s_total %s\n"
                            "# TYPE sluice_stream_dedup_%s_total counter\n"
                            "sluice_stream_dedup_%s_total %llu\n",
                            c[i].name, c[i].help, c[i].name, c[i].name,
                            (unsigned long long)atomic_load(c[i].v)) != 0)
            return -1;
    }
    return 0;
}

int stream_dedup_register_metrics(void)
{
    return metrics_section_register(render_totals, NULL);
}
