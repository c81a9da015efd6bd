/*
 * pql.c — PQL counters, scoring and signals (contract and the metric definitions in pql.h).
 *
 * Locking: shard->mu protects the shard's hash table, LRU list (and its walk cursor) and every
 * account in it; it is held for one account update, or by a worker walk (snapshot, sweep, top)
 * for one chunk of at most PQL_WALK_STEPS accounts / PQL_WALK_BYTES of account memory (so for
 * about one account update when an account is large), and never across I/O or a callback.
 * The collector's loop threads take no shard lock at all: they hand their records to the
 * feeder thread (pql_submit), which is the only one to wait on a shard held by a walk.
 * Statistics are relaxed atomics.
 */
#include "pql.h"

#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <math.h>
#include <pthread.h>
#include <semaphore.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <xxhash.h>

#include "base.h"
#include "log.h"
#include "metrics.h"

/* Shards: independent locks for concurrent feeders and readers. */
#define PQL_SHARDS 256
/* A worker walk (snapshot, sweep, top) holds a shard lock for at most PQL_WALK_STEPS accounts
 * (visited or skipped) and stops a hold early once the visited accounts' memory reaches
 * PQL_WALK_BYTES: an exact-mode account serializes in well under a microsecond, so a hold is a
 * few tens of microseconds; a sketch-mode account (~80 KiB) is alone in its hold, which then
 * costs about what one event's update of that account costs (a union rebuild). */
#define PQL_WALK_STEPS 32
#define PQL_WALK_BYTES (64 * 1024)
#define PQL_SHARD_BITS 8
#define PQL_HLL_M      (1u << PQL_HLL_P)
#define PQL_RHO_MAX    50 /* registers saturate here so the fixed-point sum fits 64 bits */
#define PQL_SIGNAL_TOP 5
#define PQL_MAX_SETS   (1 + CONFIG_PQL_MAX_RULES)
#define DAY_MS         86400000LL
#define NO_TIER        (-1)

const char *pql_strerror(int err)
{
    switch (err) {
#define PQL_X_STR(name, val, msg)                                                                  \
    case val:                                                                                      \
        return msg;
        PQL_ERRORS(PQL_X_STR)
#undef PQL_X_STR
    default:
        return "unknown error";
    }
}

/* ---- HyperLogLog with an incrementally maintained estimate ---- */

typedef struct hll {
    uint64_t sum;   /* sum of 2^(RHO_MAX - reg[j]) */
    uint32_t zeros; /* registers still 0 */
    uint8_t reg[PQL_HLL_M];
} hll_t;

static void hll_clear(hll_t *h)
{
    memset(h->reg, 0, sizeof h->reg);
    h->zeros = PQL_HLL_M;
    h->sum = (uint64_t)PQL_HLL_M << PQL_RHO_MAX;
}

static void hll_set(hll_t *h, uint32_t j, uint8_t rho)
{
    uint8_t old = h->reg[j];
    if (rho <= old) return;
    h->sum -= 1ull << (PQL_RHO_MAX - old);
    h->sum += 1ull << (PQL_RHO_MAX - rho);
    if (old == 0) h->zeros--;
    h->reg[j] = rho;
}

static void hll_hash_split(uint64_t x, uint32_t *j, uint8_t *rho)
{
    *j = (uint32_t)(x >> (64 - PQL_HLL_P));
    uint64_t w = x << PQL_HLL_P;
    int r = w == 0 ? 64 - PQL_HLL_P + 1 : __builtin_clzll(w) + 1;
    if (r > PQL_RHO_MAX) r = PQL_RHO_MAX;
    *rho = (uint8_t)r;
}

static void hll_merge(hll_t *dst, const hll_t *src)
{
    for (uint32_t j = 0; j < PQL_HLL_M; j++)
        hll_set(dst, j, src->reg[j]);
}

static double hll_estimate(const hll_t *h)
{
    const double m = PQL_HLL_M;
    const double alpha = 0.7213 / (1.0 + 1.079 / m);
    double harm = (double)h->sum / (double)(1ull << PQL_RHO_MAX);
    double e = alpha * m * m / harm;
    if (e <= 2.5 * m && h->zeros > 0) e = m * log(m / (double)h->zeros);
    return e;
}

/* ---- configuration compiled for the hot path ---- */

typedef struct pql_rule {
    int metric;
    double at_least, min_recent;
    uint32_t points;
    uint32_t recent_b; /* velocity: recent period in buckets */
    double periods;    /* velocity: periods of that length in the rest of the window */
    int set;           /* count set (events, events_velocity, event_seen) */
    int agg_recent;    /* velocity: index of its recent count in agg[] */
    int uv;            /* users_velocity: index among the users_velocity rules */
    const char *name;
} pql_rule_t;

/* An event-name list; set 0 (all events) has none. */
typedef struct pql_set {
    char **names;
    size_t *lens;
    size_t n;
} pql_set_t;

typedef struct pql_user {
    uint64_t h;
    uint32_t first, last; /* buckets */
} pql_user_t;

typedef struct pql_top {
    uint64_t h;
    uint32_t count;
    uint8_t len;
    char *id;
} pql_top_t;

typedef struct pql_sketch {
    uint32_t built_head; /* the head the unions were built for (they depend on nothing else) */
    uint32_t *day_of;    /* ring slot -> day it holds, UINT32_MAX empty */
    hll_t *days;         /* n_days ring, slot = day % n_days */
    hll_t *uni;          /* 1 + n_uv: [0] the window, [1+i] days before uv rule i's period */
} pql_sketch_t;

typedef struct pql_acct pql_acct_t;
struct pql_acct {
    pql_acct_t *hnext;
    pql_acct_t *lprev, *lnext; /* shard LRU: head most recent */
    uint64_t h;
    uint32_t head;      /* newest bucket */
    uint32_t *slots;    /* n_slots x stride: bucket, counts[n_sets] */
    uint32_t *agg;      /* aggregates (pql_t.n_agg), in the same allocation as the account */
    uint32_t *tier_sig; /* n_tiers: bucket + 1 of the last signal, 0 never */
    pql_user_t *users;  /* exact mode */
    pql_sketch_t *sk;   /* sketch mode (users == NULL) */
    pql_top_t *top;
    uint32_t score;
    uint32_t bytes;
    uint16_t n_slots, cap_slots, n_users, cap_users;
    uint8_t n_top;
    int8_t tier;
    uint8_t walk_gen; /* the last worker walk that visited it (see shard_walk) */
    uint8_t id_len;
    char id[];
};

typedef struct pql_shard {
    pthread_mutex_t mu;
    pql_acct_t **tab;
    size_t cap, n, max;
    pql_acct_t *lru_head, *lru_tail;
    pql_acct_t *cursor; /* a walk's next account (towards lru_head), kept valid by lru_unlink */
} pql_shard_t;

/* Records handed over by pql_submit: a lock-free stack (push CAS, take-all exchange). */
typedef struct pql_batch {
    struct pql_batch *next;
    int64_t now_ms;
    size_t len;
    char *data;
} pql_batch_t;

struct pql {
    pql_signal_cb cb;
    void *ud;
    uint32_t bucket_ms, window_b, late_b, day_b, n_days;
    size_t n_rules, n_tiers, n_sets, n_uv, stride, n_agg;
    size_t agg_days, agg_users;
    size_t n_ev;                            /* events_velocity rules */
    uint8_t ev_rules[CONFIG_PQL_MAX_RULES]; /* their indices */
    uint8_t uv_rules[CONFIG_PQL_MAX_RULES]; /* users_velocity rules, by uv index */
    pql_rule_t rules[CONFIG_PQL_MAX_RULES];
    pql_set_t sets[PQL_MAX_SETS];
    char *tier_names[CONFIG_PQL_MAX_TIERS];
    uint32_t tier_th[CONFIG_PQL_MAX_TIERS];
    char *rule_names[CONFIG_PQL_MAX_RULES];
    uint64_t fingerprint;
    pql_shard_t shards[PQL_SHARDS];
    _Atomic uint64_t n_accounts, bytes, evictions, expired, late, signals;
    _Atomic uint64_t by_tier[CONFIG_PQL_MAX_TIERS];
    char metric_names[CONFIG_PQL_MAX_TIERS][96];
    /* Worker walks: one at a time (walk_mu, never taken by a loop thread). */
    pthread_mutex_t walk_mu;
    _Atomic uint32_t walk_gen;
    _Atomic uint64_t walk_holds, walk_max_steps; /* tests: every hold bounded */
    void (*walk_hook)(void *ud);                 /* tests: runs between two holds, no lock held */
    void *walk_hook_ud;
    /* The feeder thread (pql_feeder_start). */
    _Atomic(pql_batch_t *) inbox;
    _Atomic uint64_t q_bytes, q_dropped;
    uint64_t q_max;
    sem_t q_sem;
    atomic_bool q_stop;
    bool feeder_on;
    pthread_t feeder;
};

static bool set_equal(const config_pql_rule_t *r, const pql_set_t *s)
{
    if (r->n_events != s->n) return false;
    for (size_t i = 0; i < s->n; i++)
        if (strcmp(r->events[i], s->names[i]) != 0) return false;
    return true;
}

int pql_new(const config_pql_t *cfg, pql_signal_cb cb, void *ud, pql_t **out)
{
    *out = NULL;
    if (cfg == NULL || cfg->n_rules == 0 || cfg->n_rules > CONFIG_PQL_MAX_RULES ||
        cfg->n_tiers == 0 || cfg->n_tiers > CONFIG_PQL_MAX_TIERS || cfg->bucket_ms == 0 ||
        DAY_MS % cfg->bucket_ms != 0 || cfg->window_ms % cfg->bucket_ms != 0 ||
        cfg->window_ms < cfg->bucket_ms)
        return PQL_E_INVALID;
    pql_t *p = calloc(1, sizeof *p);
    if (p == NULL) return PQL_E_NOMEM;
    p->cb = cb;
    p->ud = ud;
    p->bucket_ms = cfg->bucket_ms;
    p->window_b = cfg->window_ms / cfg->bucket_ms;
    uint32_t late = cfg->late_ms < cfg->window_ms ? cfg->late_ms : cfg->window_ms;
    p->late_b = late / cfg->bucket_ms;
    p->day_b = (uint32_t)(DAY_MS / cfg->bucket_ms);
    p->n_days = (uint32_t)((cfg->window_ms + DAY_MS - 1) / DAY_MS) + 1;
    p->n_rules = cfg->n_rules;
    p->n_tiers = cfg->n_tiers;
    p->n_sets = 1;
    pthread_mutex_init(&p->walk_mu, NULL);
    int rc = PQL_OK;
    size_t agg = 0;
    XXH64_state_t *fp = XXH64_createState();
    if (fp == NULL)
        rc = PQL_E_NOMEM;
    else
        XXH64_reset(fp, 0x51);
    for (size_t i = 0; i < cfg->n_rules && rc == PQL_OK; i++) {
        const config_pql_rule_t *cr = &cfg->rules[i];
        pql_rule_t *r = &p->rules[i];
        r->metric = cr->metric;
        r->at_least = cr->at_least;
        r->min_recent = cr->min_recent;
        r->points = cr->points;
        r->recent_b = cr->recent_ms / cfg->bucket_ms;
        if (r->recent_b == 0) r->recent_b = 1;
        r->periods = r->recent_b < p->window_b
                         ? (double)(p->window_b - r->recent_b) / (double)r->recent_b
                         : 0;
        r->set = 0;
        if (cr->n_events > 0) {
            size_t s = 1;
            while (s < p->n_sets && !set_equal(cr, &p->sets[s]))
                s++;
            if (s == p->n_sets) {
                p->sets[s].names = calloc(cr->n_events, sizeof(char *));
                p->sets[s].lens = calloc(cr->n_events, sizeof(size_t));
                if (p->sets[s].names == NULL || p->sets[s].lens == NULL) {
                    free(p->sets[s].names);
                    free(p->sets[s].lens);
                    p->sets[s].names = NULL;
                    p->sets[s].lens = NULL;
                    rc = PQL_E_NOMEM;
                    break;
                }
                for (size_t j = 0; j < cr->n_events; j++) {
                    if ((p->sets[s].names[j] = strdup(cr->events[j])) == NULL) rc = PQL_E_NOMEM;
                    p->sets[s].lens[j] = strlen(cr->events[j]);
                    p->sets[s].n = j + 1;
                }
                p->n_sets++;
            }
            r->set = (int)s;
        }
        r->uv = -1;
        if (r->metric == CONFIG_PQL_USERS_VELOCITY) {
            p->uv_rules[p->n_uv] = (uint8_t)i;
            r->uv = (int)p->n_uv++;
        }
        if (r->metric == CONFIG_PQL_EVENTS_VELOCITY) p->ev_rules[p->n_ev++] = (uint8_t)i;
        if ((p->rule_names[i] = strdup(cr->name)) == NULL) rc = PQL_E_NOMEM;
        r->name = p->rule_names[i];
        /* The fingerprint covers what the stored counters mean. */
        if (fp != NULL) {
            XXH64_update(fp, &r->metric, sizeof r->metric);
            XXH64_update(fp, &r->recent_b, sizeof r->recent_b);
            for (size_t j = 0; j < cr->n_events; j++)
                XXH64_update(fp, cr->events[j], strlen(cr->events[j]) + 1);
        }
    }
    for (size_t i = 0; i < p->n_rules; i++) {
        pql_rule_t *r = &p->rules[i];
        if (r->metric == CONFIG_PQL_EVENTS_VELOCITY || r->metric == CONFIG_PQL_USERS_VELOCITY) {
            r->agg_recent = (int)(p->n_sets + agg);
            agg += 2; /* recent, and (users_velocity) first-seen users of the rest */
        } else
            r->agg_recent = -1;
    }
    p->agg_days = p->n_sets + agg;
    p->agg_users = p->agg_days + 1;
    p->n_agg = p->agg_users + 1;
    p->stride = 1 + p->n_sets;
    for (size_t t = 0; t < cfg->n_tiers && rc == PQL_OK; t++) {
        p->tier_th[t] = cfg->tiers[t].threshold;
        if ((p->tier_names[t] = strdup(cfg->tiers[t].name)) == NULL) rc = PQL_E_NOMEM;
        int n = snprintf(p->metric_names[t], sizeof p->metric_names[t], "pql_signals_%s_total",
                         cfg->tiers[t].name);
        for (int c = 0; c < n && c < (int)sizeof p->metric_names[t]; c++)
            if (p->metric_names[t][c] == '.' || p->metric_names[t][c] == '-')
                p->metric_names[t][c] = '_';
    }
    if (fp != NULL) {
        uint32_t geo[4] = {p->bucket_ms, p->window_b, (uint32_t)p->n_sets, 0x01020304u};
        XXH64_update(fp, geo, sizeof geo);
        p->fingerprint = XXH64_digest(fp);
        XXH64_freeState(fp);
    }
    /* max_accounts spread exactly over the shards (config: >= 1024, so >= 4 each). */
    size_t per = cfg->max_accounts / PQL_SHARDS, extra = cfg->max_accounts % PQL_SHARDS;
    for (size_t s = 0; s < PQL_SHARDS; s++) {
        pql_shard_t *sh = &p->shards[s];
        pthread_mutex_init(&sh->mu, NULL);
        sh->max = per + (s < extra ? 1 : 0);
        if (sh->max == 0) sh->max = 1;
        sh->cap = 64;
        sh->tab = calloc(sh->cap, sizeof *sh->tab);
        if (sh->tab == NULL) rc = PQL_E_NOMEM;
    }
    if (rc != PQL_OK) {
        pql_free(p);
        return rc;
    }
    *out = p;
    return PQL_OK;
}

static void acct_free(pql_acct_t *a)
{
    free(a->slots);
    free(a->tier_sig);
    free(a->users);
    if (a->sk != NULL) {
        free(a->sk->day_of);
        free(a->sk->days);
        free(a->sk->uni);
        free(a->sk);
    }
    for (uint8_t i = 0; i < a->n_top; i++)
        free(a->top[i].id);
    free(a->top);
    free(a);
}

void pql_free(pql_t *p)
{
    if (p == NULL) return;
    pql_feeder_stop(p);
    for (size_t s = 0; s < PQL_SHARDS; s++) {
        pql_shard_t *sh = &p->shards[s];
        for (size_t i = 0; sh->tab != NULL && i < sh->cap; i++) {
            pql_acct_t *a = sh->tab[i];
            while (a != NULL) {
                pql_acct_t *n = a->hnext;
                acct_free(a);
                a = n;
            }
        }
        free(sh->tab);
        pthread_mutex_destroy(&sh->mu);
    }
    for (size_t i = 0; i < PQL_MAX_SETS; i++) {
        for (size_t j = 0; j < p->sets[i].n; j++)
            free(p->sets[i].names[j]);
        free(p->sets[i].names);
        free(p->sets[i].lens);
    }
    for (size_t i = 0; i < CONFIG_PQL_MAX_TIERS; i++)
        free(p->tier_names[i]);
    for (size_t i = 0; i < CONFIG_PQL_MAX_RULES; i++)
        free(p->rule_names[i]);
    pthread_mutex_destroy(&p->walk_mu);
    free(p);
}

/* ---- accounts: hash table, LRU, memory accounting ---- */

static uint32_t acct_bytes(const pql_t *p, const pql_acct_t *a)
{
    size_t b = sizeof *a + a->id_len + (size_t)a->cap_slots * p->stride * 4 + p->n_agg * 4 +
               (size_t)a->cap_users * sizeof(pql_user_t) + (size_t)a->n_top * sizeof(pql_top_t);
    for (uint8_t i = 0; i < a->n_top; i++)
        b += a->top[i].len + 1u;
    if (a->tier_sig != NULL) b += p->n_tiers * 4;
    if (a->sk != NULL)
        b += sizeof *a->sk + p->n_days * (sizeof(hll_t) + 4) + (1 + p->n_uv) * sizeof(hll_t);
    return (uint32_t)b;
}

/* Re-measures a, moving the global figure by the difference. */
static void acct_remeasure(pql_t *p, pql_acct_t *a)
{
    uint32_t nb = acct_bytes(p, a);
    if (nb >= a->bytes)
        atomic_fetch_add_explicit(&p->bytes, nb - a->bytes, memory_order_relaxed);
    else
        atomic_fetch_sub_explicit(&p->bytes, a->bytes - nb, memory_order_relaxed);
    a->bytes = nb;
}

static void lru_unlink(pql_shard_t *sh, pql_acct_t *a)
{
    if (sh->cursor == a) sh->cursor = a->lprev; /* a walk resumes past it */
    if (a->lprev)
        a->lprev->lnext = a->lnext;
    else
        sh->lru_head = a->lnext;
    if (a->lnext)
        a->lnext->lprev = a->lprev;
    else
        sh->lru_tail = a->lprev;
    a->lprev = a->lnext = NULL;
}

static void lru_front(pql_shard_t *sh, pql_acct_t *a)
{
    a->lnext = sh->lru_head;
    a->lprev = NULL;
    if (sh->lru_head) sh->lru_head->lprev = a;
    sh->lru_head = a;
    if (sh->lru_tail == NULL) sh->lru_tail = a;
}

static pql_acct_t *acct_find(pql_shard_t *sh, uint64_t h, const char *id, size_t len)
{
    for (pql_acct_t *a = sh->tab[(h >> PQL_SHARD_BITS) & (sh->cap - 1)]; a != NULL; a = a->hnext)
        if (a->h == h && a->id_len == len && memcmp(a->id, id, len) == 0) return a;
    return NULL;
}

static void acct_remove(pql_t *p, pql_shard_t *sh, pql_acct_t *a)
{
    pql_acct_t **pp = &sh->tab[(a->h >> PQL_SHARD_BITS) & (sh->cap - 1)];
    while (*pp != a)
        pp = &(*pp)->hnext;
    *pp = a->hnext;
    lru_unlink(sh, a);
    sh->n--;
    atomic_fetch_sub_explicit(&p->n_accounts, 1, memory_order_relaxed);
    atomic_fetch_sub_explicit(&p->bytes, a->bytes, memory_order_relaxed);
    acct_free(a);
}

static void shard_grow(pql_shard_t *sh)
{
    size_t ncap = sh->cap * 2;
    pql_acct_t **nt = calloc(ncap, sizeof *nt);
    if (nt == NULL) return; /* chains just get longer */
    for (size_t i = 0; i < sh->cap; i++) {
        pql_acct_t *a = sh->tab[i];
        while (a != NULL) {
            pql_acct_t *n = a->hnext;
            size_t b = (a->h >> PQL_SHARD_BITS) & (ncap - 1);
            a->hnext = nt[b];
            nt[b] = a;
            a = n;
        }
    }
    free(sh->tab);
    sh->tab = nt;
    sh->cap = ncap;
}

static pql_acct_t *acct_create(pql_t *p, pql_shard_t *sh, uint64_t h, const char *id, size_t len)
{
    if (sh->n >= sh->max && sh->lru_tail != NULL) {
        acct_remove(p, sh, sh->lru_tail);
        atomic_fetch_add_explicit(&p->evictions, 1, memory_order_relaxed);
    }
    /* One allocation: header, id, then the aggregates (4-byte aligned): one cache miss less
     * per event. */
    size_t agg_off = (sizeof(pql_acct_t) + len + 3) & ~(size_t)3;
    pql_acct_t *a = calloc(1, agg_off + p->n_agg * sizeof(uint32_t));
    if (a == NULL) return NULL;
    a->agg = (uint32_t *)((char *)a + agg_off);
    a->h = h;
    a->id_len = (uint8_t)len;
    memcpy(a->id, id, len);
    a->tier = NO_TIER;
    /* Created during a walk: not visited by it (it holds nothing older to write or sweep). */
    a->walk_gen = (uint8_t)atomic_load_explicit(&p->walk_gen, memory_order_relaxed);
    if (sh->n >= sh->cap) shard_grow(sh);
    size_t b = (h >> PQL_SHARD_BITS) & (sh->cap - 1);
    a->hnext = sh->tab[b];
    sh->tab[b] = a;
    lru_front(sh, a);
    sh->n++;
    atomic_fetch_add_explicit(&p->n_accounts, 1, memory_order_relaxed);
    acct_remeasure(p, a);
    return a;
}

/* ---- per-account counters ---- */

static uint32_t *slot_at(const pql_t *p, const pql_acct_t *a, size_t i)
{
    return a->slots + i * p->stride;
}

/* The slot of bucket b, created in order when missing. NULL when memory is short. */
static uint32_t *slot_get(pql_t *p, pql_acct_t *a, uint32_t b)
{
    size_t lo = 0, hi = a->n_slots;
    if (hi > 0 && slot_at(p, a, hi - 1)[0] == b) return slot_at(p, a, hi - 1);
    while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        if (slot_at(p, a, mid)[0] < b)
            lo = mid + 1;
        else
            hi = mid;
    }
    if (lo < a->n_slots && slot_at(p, a, lo)[0] == b) return slot_at(p, a, lo);
    if (a->n_slots == UINT16_MAX) return NULL;
    if (a->n_slots == a->cap_slots) {
        size_t ncap = a->cap_slots < 2 ? 2 : (size_t)a->cap_slots * 2;
        if (ncap > UINT16_MAX) ncap = UINT16_MAX;
        uint32_t *ns = realloc(a->slots, ncap * p->stride * sizeof *ns);
        if (ns == NULL) return NULL;
        a->slots = ns;
        a->cap_slots = (uint16_t)ncap;
    }
    uint32_t *s = slot_at(p, a, lo);
    memmove(s + p->stride, s, (a->n_slots - lo) * p->stride * sizeof *s);
    memset(s, 0, p->stride * sizeof *s);
    s[0] = b;
    a->n_slots++;
    return s;
}

/* Bitmask (bit s) of the count sets the event name belongs to; set 0 always. */
static uint64_t sets_of(const pql_t *p, const char *ev, size_t len)
{
    uint64_t m = 1;
    if (ev == NULL) return m;
    for (size_t s = 1; s < p->n_sets; s++)
        for (size_t j = 0; j < p->sets[s].n; j++)
            if (p->sets[s].lens[j] == len && memcmp(p->sets[s].names[j], ev, len) == 0) {
                m |= 1ull << s;
                break;
            }
    return m;
}

static uint32_t day_of_bucket(const pql_t *p, uint32_t b)
{
    return b / p->day_b;
}

static uint32_t window_start(const pql_t *p, uint32_t head)
{
    return head + 1 >= p->window_b ? head + 1 - p->window_b : 0;
}

static uint32_t recent_start(uint32_t head, uint32_t recent_b)
{
    return head + 1 >= recent_b ? head + 1 - recent_b : 0;
}

/* Sketch mode: first day of the window and the first day of each uv rule's recent period. */
static void sketch_rebuild(pql_t *p, pql_acct_t *a)
{
    pql_sketch_t *sk = a->sk;
    uint32_t hd = day_of_bucket(p, a->head);
    uint32_t wd = day_of_bucket(p, window_start(p, a->head));
    for (uint32_t i = 0; i < p->n_days; i++)
        if (sk->day_of[i] != UINT32_MAX && (sk->day_of[i] < wd || sk->day_of[i] > hd)) {
            hll_clear(&sk->days[i]);
            sk->day_of[i] = UINT32_MAX;
        }
    for (size_t u = 0; u <= p->n_uv; u++)
        hll_clear(&sk->uni[u]);
    for (uint32_t i = 0; i < p->n_days; i++) {
        if (sk->day_of[i] == UINT32_MAX) continue;
        hll_merge(&sk->uni[0], &sk->days[i]);
    }
    for (size_t r = 0; r < p->n_rules; r++) {
        const pql_rule_t *ru = &p->rules[r];
        if (ru->uv < 0) continue;
        uint32_t rd = day_of_bucket(p, recent_start(a->head, ru->recent_b));
        for (uint32_t i = 0; i < p->n_days; i++)
            if (sk->day_of[i] != UINT32_MAX && sk->day_of[i] < rd)
                hll_merge(&sk->uni[1 + ru->uv], &sk->days[i]);
    }
    sk->built_head = a->head;
}

/* Adds user hash uh seen in bucket b to the sketches (b inside the window). */
static void sketch_add(pql_t *p, pql_acct_t *a, uint64_t uh, uint32_t b)
{
    pql_sketch_t *sk = a->sk;
    uint32_t d = day_of_bucket(p, b);
    uint32_t i = d % p->n_days;
    if (sk->day_of[i] != d) {
        hll_clear(&sk->days[i]);
        sk->day_of[i] = d;
    }
    uint32_t j;
    uint8_t rho;
    hll_hash_split(uh, &j, &rho);
    hll_set(&sk->days[i], j, rho);
    hll_set(&sk->uni[0], j, rho);
    for (size_t r = 0; r < p->n_rules; r++) {
        const pql_rule_t *ru = &p->rules[r];
        if (ru->uv < 0) continue;
        if (d < day_of_bucket(p, recent_start(a->head, ru->recent_b)))
            hll_set(&sk->uni[1 + ru->uv], j, rho);
    }
}

/* Exact users -> sketches, once the account has more than PQL_EXACT_USERS. */
static int to_sketch(pql_t *p, pql_acct_t *a)
{
    pql_sketch_t *sk = calloc(1, sizeof *sk);
    if (sk == NULL) return PQL_E_NOMEM;
    sk->day_of = malloc(p->n_days * sizeof *sk->day_of);
    sk->days = malloc(p->n_days * sizeof *sk->days);
    sk->uni = malloc((1 + p->n_uv) * sizeof *sk->uni);
    if (sk->day_of == NULL || sk->days == NULL || sk->uni == NULL) {
        free(sk->day_of);
        free(sk->days);
        free(sk->uni);
        free(sk);
        return PQL_E_NOMEM;
    }
    for (uint32_t i = 0; i < p->n_days; i++) {
        sk->day_of[i] = UINT32_MAX;
        hll_clear(&sk->days[i]);
    }
    for (size_t u = 0; u <= p->n_uv; u++)
        hll_clear(&sk->uni[u]);
    a->sk = sk;
    /* A user counts on the day of its first and of its last event: present in every union that
     * the exact set would have counted it in, at day granularity. */
    uint32_t ws = window_start(p, a->head);
    for (uint16_t i = 0; i < a->n_users; i++) {
        const pql_user_t *u = &a->users[i];
        if (u->first >= ws) sketch_add(p, a, u->h, u->first);
        if (u->last >= ws) sketch_add(p, a, u->h, u->last);
    }
    free(a->users);
    a->users = NULL;
    a->n_users = a->cap_users = 0;
    sketch_rebuild(p, a);
    return PQL_OK;
}

/* Recomputes every aggregate of a from its buckets and users, dropping what left the window. */
static void recompute(pql_t *p, pql_acct_t *a)
{
    uint32_t ws = window_start(p, a->head);
    size_t keep = 0;
    while (keep < a->n_slots && slot_at(p, a, keep)[0] < ws)
        keep++;
    if (keep > 0) {
        memmove(a->slots, slot_at(p, a, keep), (a->n_slots - keep) * p->stride * 4);
        a->n_slots = (uint16_t)(a->n_slots - keep);
    }
    memset(a->agg, 0, p->n_agg * sizeof *a->agg);
    uint32_t last_day = UINT32_MAX;
    for (size_t i = 0; i < a->n_slots; i++) {
        const uint32_t *s = slot_at(p, a, i);
        for (size_t k = 0; k < p->n_sets; k++)
            a->agg[k] += s[1 + k];
        uint32_t d = day_of_bucket(p, s[0]);
        if (d != last_day) a->agg[p->agg_days]++;
        last_day = d;
    }
    /* Recent periods: the newest slots, walked back from the end. */
    for (size_t v = 0; v < p->n_ev; v++) {
        const pql_rule_t *ru = &p->rules[p->ev_rules[v]];
        uint32_t rs = recent_start(a->head, ru->recent_b);
        for (size_t i = a->n_slots; i > 0 && slot_at(p, a, i - 1)[0] >= rs; i--)
            a->agg[ru->agg_recent] += slot_at(p, a, i - 1)[1 + ru->set];
    }
    if (a->users != NULL || a->sk == NULL) {
        size_t n = 0;
        for (uint16_t i = 0; i < a->n_users; i++) {
            pql_user_t u = a->users[i];
            if (u.last < ws) continue;
            a->users[n++] = u;
            for (size_t v = 0; v < p->n_uv; v++) {
                const pql_rule_t *ru = &p->rules[p->uv_rules[v]];
                if (u.first >= recent_start(a->head, ru->recent_b))
                    a->agg[ru->agg_recent]++;
                else if (u.first >= ws)
                    a->agg[ru->agg_recent + 1]++;
            }
        }
        a->n_users = (uint16_t)n;
        a->agg[p->agg_users] = (uint32_t)n;
    } else if (a->sk->built_head != a->head) {
        /* A late event at the same head was added to the unions by sketch_add already. */
        sketch_rebuild(p, a);
    }
}

/* Sketch-mode user figures, computed when read (O(1) each). */
static double users_active(const pql_t *p, const pql_acct_t *a)
{
    if (a->sk == NULL) return a->agg[p->agg_users];
    return floor(hll_estimate(&a->sk->uni[0]) + 0.5);
}

static double users_new_recent(const pql_t *p, const pql_acct_t *a, const pql_rule_t *ru)
{
    if (a->sk == NULL) return a->agg[ru->agg_recent];
    double all = hll_estimate(&a->sk->uni[0]);
    double rest = hll_estimate(&a->sk->uni[1 + ru->uv]);
    return all > rest ? floor(all - rest + 0.5) : 0;
}

static double users_new_rest(const pql_t *p, const pql_acct_t *a, const pql_rule_t *ru)
{
    if (a->sk == NULL) return a->agg[ru->agg_recent + 1];
    return floor(hll_estimate(&a->sk->uni[1 + ru->uv]) + 0.5);
}

/* The value a rule compares with at_least. */
static double rule_value(const pql_t *p, const pql_acct_t *a, const pql_rule_t *ru, double *recent)
{
    const double periods = ru->periods;
    double rec, rest;
    switch (ru->metric) {
    case CONFIG_PQL_ACTIVE_USERS:
        return users_active(p, a);
    case CONFIG_PQL_EVENTS:
        return a->agg[ru->set];
    case CONFIG_PQL_ACTIVE_DAYS:
        return a->agg[p->agg_days];
    case CONFIG_PQL_EVENT_SEEN:
        return a->agg[ru->set] > 0 ? 1 : 0;
    case CONFIG_PQL_EVENTS_VELOCITY:
        rec = a->agg[ru->agg_recent];
        rest = (double)a->agg[ru->set] - rec;
        break;
    default: /* users_velocity */
        rec = users_new_recent(p, a, ru);
        rest = users_new_rest(p, a, ru);
        break;
    }
    if (recent) *recent = rec;
    double mean = periods > 0 ? rest / periods : 0;
    if (mean < 1) mean = 1;
    return rec / mean;
}

static bool rule_holds(const pql_t *p, const pql_acct_t *a, const pql_rule_t *ru, double *value)
{
    double recent = 0;
    double v = rule_value(p, a, ru, &recent);
    if (value) *value = v;
    if (v < ru->at_least) return false;
    if ((ru->metric == CONFIG_PQL_EVENTS_VELOCITY || ru->metric == CONFIG_PQL_USERS_VELOCITY) &&
        recent < ru->min_recent)
        return false;
    return true;
}

static uint32_t score_of(const pql_t *p, const pql_acct_t *a)
{
    uint32_t s = 0;
    for (size_t r = 0; r < p->n_rules; r++)
        if (rule_holds(p, a, &p->rules[r], NULL)) s += p->rules[r].points;
    return s;
}

static int tier_of(const pql_t *p, uint32_t score)
{
    for (size_t t = 0; t < p->n_tiers; t++)
        if (score >= p->tier_th[t]) return (int)t;
    return NO_TIER;
}

/* Space-saving top users. Returns true when the list's memory changed. */
static bool top_touch(pql_acct_t *a, uint64_t uh, const char *user, size_t len)
{
    /* Users are told apart by their 64-bit hash, as in the distinct-user set (a collision,
     * ~n^2/2^65, would merge two users); the id is read only to report it. */
    for (uint8_t i = 0; i < a->n_top; i++)
        if (a->top[i].h == uh && a->top[i].len == len) {
            a->top[i].count++;
            return false;
        }
    char *id = malloc(len + 1);
    if (id == NULL) return false;
    memcpy(id, user, len);
    id[len] = '\0';
    if (a->n_top < PQL_TOP_USERS) {
        pql_top_t *nt = realloc(a->top, (a->n_top + 1u) * sizeof *nt);
        if (nt == NULL) {
            free(id);
            return false;
        }
        a->top = nt;
        a->top[a->n_top++] = (pql_top_t){uh, 1, (uint8_t)len, id};
        return true;
    }
    uint8_t mi = 0;
    for (uint8_t i = 1; i < a->n_top; i++)
        if (a->top[i].count < a->top[mi].count) mi = i;
    free(a->top[mi].id);
    a->top[mi] = (pql_top_t){uh, a->top[mi].count + 1, (uint8_t)len, id};
    return true;
}

/* Indices of the up to k most active top users, best first. */
static size_t top_order(const pql_acct_t *a, uint8_t *idx, size_t k)
{
    size_t n = 0;
    for (uint8_t i = 0; i < a->n_top; i++) {
        size_t j = n < k ? n++ : k;
        if (j == k) {
            if (a->top[i].count <= a->top[idx[k - 1]].count) continue;
            j = k - 1;
        }
        while (j > 0 && a->top[idx[j - 1]].count < a->top[i].count) {
            idx[j] = idx[j - 1];
            j--;
        }
        idx[j] = i;
    }
    return n;
}

static void iso8601(int64_t ms, char *out, size_t cap)
{
    time_t sec = (time_t)(ms / 1000);
    struct tm tm;
    gmtime_r(&sec, &tm);
    snprintf(out, cap, "%04d-%02d-%02dT%02d:%02d:%02d.%03dZ", tm.tm_year + 1900, tm.tm_mon + 1,
             tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec, (int)(ms % 1000));
}

static json_t *rules_json(const pql_t *p, const pql_acct_t *a, bool only_holding)
{
    json_t *arr = json_array();
    for (size_t r = 0; r < p->n_rules && arr != NULL; r++) {
        const pql_rule_t *ru = &p->rules[r];
        double v = 0;
        bool holds = rule_holds(p, a, ru, &v);
        if (only_holding && !holds) continue;
        json_t *o = json_pack("{s:s,s:f,s:f,s:i}", "name", ru->name, "value", v, "threshold",
                              ru->at_least, "points", (json_int_t)ru->points);
        if (o != NULL && !only_holding) json_object_set_new(o, "holds", json_boolean(holds));
        if (o != NULL) json_array_append_new(arr, o);
    }
    return arr;
}

static json_t *users_json(const pql_acct_t *a, size_t k)
{
    uint8_t idx[PQL_TOP_USERS];
    size_t n = top_order(a, idx, k);
    json_t *arr = json_array();
    for (size_t i = 0; i < n && arr != NULL; i++)
        json_array_append_new(arr, json_stringn(a->top[idx[i]].id, a->top[idx[i]].len));
    return arr;
}

/* What a signal says, copied under the shard lock so that the JSON is rendered (jansson,
 * malloc) after the lock is released. */
typedef struct pql_sig {
    int tier, prev;
    uint32_t score;
    uint64_t holds; /* bit r: rule r holds (CONFIG_PQL_MAX_RULES <= 64) */
    double value[CONFIG_PQL_MAX_RULES];
    uint8_t n_users;
    uint8_t ulen[PQL_SIGNAL_TOP];
    char uid[PQL_SIGNAL_TOP][255];
} pql_sig_t;

static void sig_capture(const pql_t *p, const pql_acct_t *a, int prev, pql_sig_t *sg)
{
    sg->tier = a->tier;
    sg->prev = prev;
    sg->score = a->score;
    sg->holds = 0;
    for (size_t r = 0; r < p->n_rules; r++)
        if (rule_holds(p, a, &p->rules[r], &sg->value[r])) sg->holds |= 1ull << r;
    uint8_t idx[PQL_TOP_USERS];
    sg->n_users = (uint8_t)top_order(a, idx, PQL_SIGNAL_TOP);
    for (uint8_t i = 0; i < sg->n_users; i++) {
        sg->ulen[i] = a->top[idx[i]].len;
        memcpy(sg->uid[i], a->top[idx[i]].id, a->top[idx[i]].len);
    }
}

/* The signal JSON (malloc'd, caller frees) or NULL when memory is short. No lock needed. */
static char *signal_json(const pql_t *p, const pql_sig_t *sg, const pql_event_t *ev, int64_t now_ms,
                         size_t *len)
{
    char when[96];
    iso8601(now_ms, when, sizeof when);
    json_t *o = json_object();
    if (o == NULL) return NULL;
    json_object_set_new(o, "accountId", json_stringn(ev->account, ev->account_len));
    json_object_set_new(o, "tier", json_string(p->tier_names[sg->tier]));
    json_object_set_new(o, "previousTier",
                        sg->prev == NO_TIER ? json_null() : json_string(p->tier_names[sg->prev]));
    json_object_set_new(o, "score", json_integer(sg->score));
    json_t *rules = json_array();
    for (size_t r = 0; r < p->n_rules && rules != NULL; r++) {
        if (!(sg->holds >> r & 1)) continue;
        const pql_rule_t *ru = &p->rules[r];
        json_t *ro = json_pack("{s:s,s:f,s:f,s:i}", "name", ru->name, "value", sg->value[r],
                               "threshold", ru->at_least, "points", (json_int_t)ru->points);
        if (ro != NULL) json_array_append_new(rules, ro);
    }
    json_object_set_new(o, "rules", rules);
    json_t *users = json_array();
    for (uint8_t i = 0; i < sg->n_users && users != NULL; i++)
        json_array_append_new(users, json_stringn(sg->uid[i], sg->ulen[i]));
    json_object_set_new(o, "userIds", users);
    json_object_set_new(
        o, "source", ev->source != NULL ? json_stringn(ev->source, ev->source_len) : json_null());
    json_object_set_new(o, "triggeredAt", json_string(when));
    char *s = json_dumps(o, JSON_COMPACT);
    json_decref(o);
    if (s != NULL) *len = strlen(s);
    return s;
}

/* Re-scores a after a change. On a tier rise not signalled within the window, fills *sg (when
 * given) and returns true: the caller renders and emits the signal once the lock is released. */
static bool evaluate(pql_t *p, pql_acct_t *a, const pql_event_t *ev, pql_sig_t *sg)
{
    int prev = a->tier;
    a->score = score_of(p, a);
    a->tier = (int8_t)tier_of(p, a->score);
    /* Only an event raises a signal (a sweep only moves time forward). */
    if (ev == NULL || sg == NULL || a->tier == NO_TIER || (prev != NO_TIER && a->tier >= prev))
        return false;
    if (a->tier_sig == NULL) {
        a->tier_sig = calloc(p->n_tiers, sizeof *a->tier_sig);
        if (a->tier_sig == NULL) return false;
    }
    uint32_t last = a->tier_sig[a->tier];
    if (last != 0 && a->head < last - 1 + p->window_b) return false; /* once per window */
    a->tier_sig[a->tier] = a->head + 1;
    atomic_fetch_add_explicit(&p->signals, 1, memory_order_relaxed);
    atomic_fetch_add_explicit(&p->by_tier[a->tier], 1, memory_order_relaxed);
    sig_capture(p, a, prev, sg);
    return true;
}

static pql_shard_t *shard_of(pql_t *p, uint64_t h)
{
    return &p->shards[h & (PQL_SHARDS - 1)];
}

int pql_feed(pql_t *p, const pql_event_t *ev, int64_t now_ms)
{
    if (ev->account == NULL || ev->account_len == 0 || ev->account_len > 255 || ev->user == NULL ||
        ev->user_len == 0 || ev->user_len > 255 || ev->ts_ms < 0)
        return PQL_E_INVALID;
    uint64_t ah = XXH3_64bits(ev->account, ev->account_len);
    uint64_t uh = XXH3_64bits(ev->user, ev->user_len);
    uint64_t sets = sets_of(p, ev->event, ev->event_len);
    uint32_t b = (uint32_t)((uint64_t)ev->ts_ms / p->bucket_ms);
    pql_shard_t *sh = shard_of(p, ah);
    pql_sig_t sg;
    bool sig = false;
    int rc = PQL_OK;

    pthread_mutex_lock(&sh->mu);
    pql_acct_t *a = acct_find(sh, ah, ev->account, ev->account_len);
    if (a == NULL) {
        a = acct_create(p, sh, ah, ev->account, ev->account_len);
        if (a == NULL) {
            pthread_mutex_unlock(&sh->mu);
            return PQL_E_NOMEM;
        }
        a->head = b;
    } else if (sh->lru_head != a) {
        lru_unlink(sh, a);
        lru_front(sh, a);
    }
    if (b + p->late_b < a->head || b < window_start(p, a->head)) {
        pthread_mutex_unlock(&sh->mu);
        atomic_fetch_add_explicit(&p->late, 1, memory_order_relaxed);
        return PQL_E_LATE;
    }
    bool slow = b != a->head || a->n_slots == 0 || slot_at(p, a, a->n_slots - 1)[0] != b;
    bool grew = false; /* memory changes only on the paths that set it */
    if (b > a->head) a->head = b;
    uint32_t *s = slot_get(p, a, b);
    if (s == NULL) {
        rc = PQL_E_NOMEM;
        goto out;
    }
    for (size_t k = 0; k < p->n_sets; k++)
        if (sets >> k & 1) {
            s[1 + k]++;
            if (!slow) a->agg[k]++;
        }
    if (!slow)
        for (size_t v = 0; v < p->n_ev; v++) {
            const pql_rule_t *ru = &p->rules[p->ev_rules[v]];
            if (sets >> ru->set & 1) a->agg[ru->agg_recent]++;
        }
    /* users */
    if (a->sk == NULL) {
        pql_user_t *u = NULL;
        for (uint16_t i = 0; i < a->n_users; i++)
            if (a->users[i].h == uh) {
                u = &a->users[i];
                break;
            }
        if (u != NULL) {
            if (b > u->last) u->last = b;
            if (b < u->first) {
                u->first = b;
                slow = true;
            }
        } else if (a->n_users < PQL_EXACT_USERS) {
            if (a->n_users == a->cap_users) {
                uint16_t ncap = a->cap_users == 0 ? 2 : (uint16_t)(a->cap_users * 2);
                if (ncap > PQL_EXACT_USERS) ncap = PQL_EXACT_USERS;
                pql_user_t *nu = realloc(a->users, ncap * sizeof *nu);
                if (nu == NULL) {
                    rc = PQL_E_NOMEM;
                    goto out;
                }
                a->users = nu;
                a->cap_users = ncap;
                grew = true;
            }
            a->users[a->n_users++] = (pql_user_t){uh, b, b};
            if (!slow) {
                a->agg[p->agg_users]++;
                for (size_t v = 0; v < p->n_uv; v++)
                    a->agg[p->rules[p->uv_rules[v]].agg_recent]++;
            }
        } else {
            if (to_sketch(p, a) != PQL_OK) {
                rc = PQL_E_NOMEM;
                goto out;
            }
            sketch_add(p, a, uh, b);
            grew = true;
        }
    } else {
        sketch_add(p, a, uh, b);
    }
    grew |= top_touch(a, uh, ev->user, ev->user_len);
    if (slow) recompute(p, a);
    sig = evaluate(p, a, ev, &sg);
out:
    if (rc != PQL_OK && slow) recompute(p, a); /* keep the aggregates true to the buckets */
    if (slow || grew || rc != PQL_OK) acct_remeasure(p, a);
    pthread_mutex_unlock(&sh->mu);
    if (sig && p->cb != NULL) {
        size_t jlen = 0;
        char *json = signal_json(p, &sg, ev, now_ms, &jlen);
        if (json != NULL) p->cb(p->ud, ev->account, ev->account_len, json, jlen);
        free(json);
    }
    return rc;
}

/* ---- records carried by a request (see pql.h) ---- */

/* u8 account_len, u8 user_len, u8 source_len, u8 has_event, u8 event_len (<= 200), i64 ts,
 * then the bytes. */
int pql_record_append(proto_buf_t *buf, const pql_event_t *ev)
{
    if (ev->account == NULL || ev->user == NULL || ev->account_len == 0 || ev->account_len > 255 ||
        ev->user_len == 0 || ev->user_len > 255 || ev->source_len > 255 || ev->event_len > 255)
        return PROTO_OK; /* nothing to count */
    unsigned char h[PQL_RECORD_HEAD];
    h[0] = (unsigned char)ev->account_len;
    h[1] = (unsigned char)ev->user_len;
    h[2] = (unsigned char)(ev->source ? ev->source_len : 0);
    h[3] = ev->event != NULL;
    h[4] = (unsigned char)(ev->event ? ev->event_len : 0);
    memcpy(h + 5, &ev->ts_ms, 8);
    size_t need = sizeof h + h[0] + h[1] + h[2] + h[4];
    if (buf->len + need > buf->max) return PROTO_E_NOMEM;
    int rc = proto_buf_append(buf, h, sizeof h);
    if (rc == 0) rc = proto_buf_append(buf, ev->account, h[0]);
    if (rc == 0) rc = proto_buf_append(buf, ev->user, h[1]);
    if (rc == 0 && h[2]) rc = proto_buf_append(buf, ev->source, h[2]);
    if (rc == 0 && h[4]) rc = proto_buf_append(buf, ev->event, h[4]);
    return rc;
}

void pql_feed_records(pql_t *p, const char *buf, size_t len, int64_t now_ms)
{
    size_t off = 0;
    while (off + 13 <= len) {
        const unsigned char *h = (const unsigned char *)buf + off;
        pql_event_t ev;
        memset(&ev, 0, sizeof ev);
        size_t need = 13u + h[0] + h[1] + h[2] + h[4];
        if (off + need > len) break;
        memcpy(&ev.ts_ms, h + 5, 8);
        const char *q = buf + off + 13;
        ev.account = q;
        ev.account_len = h[0];
        q += h[0];
        ev.user = q;
        ev.user_len = h[1];
        q += h[1];
        if (h[2]) {
            ev.source = q;
            ev.source_len = h[2];
            q += h[2];
        }
        if (h[3]) {
            ev.event = q;
            ev.event_len = h[4];
        }
        (void)pql_feed(p, &ev, now_ms);
        off += need;
    }
}

/* ---- the feeder thread (pql_submit) ---- */

static uint64_t records_count(const char *buf, size_t len)
{
    uint64_t n = 0;
    size_t off = 0;
    while (off + PQL_RECORD_HEAD <= len) {
        const unsigned char *h = (const unsigned char *)buf + off;
        off += PQL_RECORD_HEAD + (size_t)h[0] + h[1] + h[2] + h[4];
        n++;
    }
    return n;
}

int pql_submit(pql_t *p, proto_buf_t *rec, int64_t now_ms)
{
    if (rec->len == 0) return PQL_OK;
    if (!p->feeder_on) {
        pql_feed_records(p, rec->data, rec->len, now_ms);
        return PQL_OK;
    }
    uint64_t len = rec->len;
    uint64_t q = atomic_fetch_add_explicit(&p->q_bytes, len, memory_order_relaxed) + len;
    pql_batch_t *b = q <= p->q_max ? malloc(sizeof *b) : NULL;
    if (b == NULL) {
        atomic_fetch_sub_explicit(&p->q_bytes, len, memory_order_relaxed);
        atomic_fetch_add_explicit(&p->q_dropped, records_count(rec->data, rec->len),
                                  memory_order_relaxed);
        return q <= p->q_max ? PQL_E_NOMEM : PQL_E_FULL;
    }
    b->data = rec->data;
    b->len = rec->len;
    b->now_ms = now_ms;
    rec->data = NULL;
    rec->len = rec->cap = 0;
    /* b belongs to the feeder once pushed: only the local head is read after the CAS. */
    pql_batch_t *head = atomic_load_explicit(&p->inbox, memory_order_relaxed);
    do
        b->next = head;
    while (!atomic_compare_exchange_weak_explicit(&p->inbox, &head, b, memory_order_release,
                                                  memory_order_relaxed));
    /* Only the push onto an empty stack wakes the feeder: it takes everything at once. */
    if (head == NULL) sem_post(&p->q_sem);
    return PQL_OK;
}

/* Feeds a taken stack in submission order and frees it. */
static void inbox_drain(pql_t *p, pql_batch_t *b)
{
    pql_batch_t *fifo = NULL;
    while (b != NULL) {
        pql_batch_t *n = b->next;
        b->next = fifo;
        fifo = b;
        b = n;
    }
    while (fifo != NULL) {
        pql_batch_t *n = fifo->next;
        pql_feed_records(p, fifo->data, fifo->len, fifo->now_ms);
        atomic_fetch_sub_explicit(&p->q_bytes, fifo->len, memory_order_relaxed);
        free(fifo->data);
        free(fifo);
        fifo = n;
    }
}

static void *inbox_thread_main(void *arg)
{
    pql_t *p = arg;
    sigset_t all;
    sigfillset(&all);
    pthread_sigmask(SIG_BLOCK, &all, NULL);
    for (;;) {
        while (sem_wait(&p->q_sem) != 0 && errno == EINTR) {
        }
        bool stop = atomic_load_explicit(&p->q_stop, memory_order_acquire);
        inbox_drain(p, atomic_exchange_explicit(&p->inbox, NULL, memory_order_acquire));
        if (stop) break;
    }
    return NULL;
}

int pql_feeder_start(pql_t *p, uint64_t max_bytes)
{
    if (p->feeder_on) return PQL_E_INVALID;
    p->q_max = max_bytes;
    atomic_store(&p->q_stop, false);
    if (sem_init(&p->q_sem, 0, 0) != 0) return PQL_E_IO;
    if (pthread_create(&p->feeder, NULL, inbox_thread_main, p) != 0) {
        sem_destroy(&p->q_sem);
        return PQL_E_IO;
    }
    p->feeder_on = true;
    return PQL_OK;
}

void pql_feeder_stop(pql_t *p)
{
    if (p == NULL || !p->feeder_on) return;
    atomic_store_explicit(&p->q_stop, true, memory_order_release);
    sem_post(&p->q_sem);
    pthread_join(p->feeder, NULL);
    /* Anything pushed after the feeder's last take (a caller breaking the contract) is fed
     * here rather than leaked. */
    inbox_drain(p, atomic_exchange(&p->inbox, NULL));
    sem_destroy(&p->q_sem);
    p->feeder_on = false;
}

/* ---- reading ---- */

static json_t *acct_json(const pql_t *p, const pql_acct_t *a)
{
    json_t *o = json_object();
    if (o == NULL) return NULL;
    json_object_set_new(o, "accountId", json_stringn(a->id, a->id_len));
    json_object_set_new(o, "score", json_integer(a->score));
    json_object_set_new(o, "tier",
                        a->tier == NO_TIER ? json_null() : json_string(p->tier_names[a->tier]));
    char when[96];
    iso8601((int64_t)a->head * p->bucket_ms, when, sizeof when);
    json_object_set_new(o, "lastBucket", json_string(when));
    json_t *c = json_object();
    if (c != NULL) {
        json_object_set_new(c, "events", json_integer(a->agg[0]));
        json_object_set_new(c, "activeUsers", json_integer((json_int_t)users_active(p, a)));
        json_object_set_new(c, "activeDays", json_integer(a->agg[p->agg_days]));
        json_object_set_new(c, "usersExact", json_boolean(a->sk == NULL));
        json_object_set_new(o, "counters", c);
    }
    json_object_set_new(o, "rules", rules_json(p, a, false));
    json_object_set_new(o, "userIds", users_json(a, PQL_SIGNAL_TOP));
    return o;
}

static int dump_into(json_t *o, proto_buf_t *out)
{
    if (o == NULL) return PQL_E_NOMEM;
    char *s = json_dumps(o, JSON_COMPACT);
    json_decref(o);
    if (s == NULL) return PQL_E_NOMEM;
    int rc = proto_buf_append(out, s, strlen(s)) == 0 ? PQL_OK : PQL_E_NOMEM;
    free(s);
    return rc;
}

int pql_account_json(pql_t *p, const char *id, size_t len, int64_t now_ms, proto_buf_t *out)
{
    (void)now_ms;
    if (len == 0 || len > 255) return PQL_E_NOTFOUND;
    uint64_t h = XXH3_64bits(id, len);
    pql_shard_t *sh = shard_of(p, h);
    pthread_mutex_lock(&sh->mu);
    pql_acct_t *a = acct_find(sh, h, id, len);
    json_t *o = a != NULL ? acct_json(p, a) : NULL;
    pthread_mutex_unlock(&sh->mu);
    if (a == NULL) return PQL_E_NOTFOUND;
    return dump_into(o, out);
}

/* ---- worker walks ---- */

typedef void (*walk_visit_fn)(pql_t *p, pql_shard_t *sh, pql_acct_t *a, void *ud);
typedef void (*walk_flush_fn)(pql_t *p, void *ud);

/*
 * One walk over the accounts present when it starts, shard by shard, from the least recently
 * active, in holds of at most PQL_WALK_STEPS accounts and PQL_WALK_BYTES of visited account
 * memory (see the top of this file). visit runs under the shard lock and may remove the account;
 * flush (optional) runs after every hold with no lock held. An account is visited once even when
 * a feed moves it to the LRU front between two holds (walk_gen); accounts created during the
 * walk are not visited, nor are accounts removed before the cursor reaches them. The walk ends:
 * every step moves the cursor one account towards the LRU head, and only accounts moved to the
 * front during the walk are met a second time (and skipped). Walks run one at a time (walk_mu).
 */
static void walk_all(pql_t *p, walk_visit_fn visit, walk_flush_fn flush, void *ud)
{
    pthread_mutex_lock(&p->walk_mu);
    uint8_t gen = (uint8_t)(atomic_fetch_add_explicit(&p->walk_gen, 1, memory_order_relaxed) + 1);
    for (size_t s = 0; s < PQL_SHARDS; s++) {
        pql_shard_t *sh = &p->shards[s];
        pthread_mutex_lock(&sh->mu);
        sh->cursor = sh->lru_tail;
        for (;;) {
            uint64_t steps = 0;
            size_t bytes = 0;
            while (sh->cursor != NULL && steps < PQL_WALK_STEPS && bytes < PQL_WALK_BYTES) {
                pql_acct_t *a = sh->cursor;
                sh->cursor = a->lprev;
                steps++;
                if (a->walk_gen == gen) continue;
                a->walk_gen = gen;
                bytes += a->bytes;
                visit(p, sh, a, ud);
            }
            bool done = sh->cursor == NULL;
            pthread_mutex_unlock(&sh->mu);
            atomic_fetch_add_explicit(&p->walk_holds, 1, memory_order_relaxed);
            if (steps > atomic_load_explicit(&p->walk_max_steps, memory_order_relaxed))
                atomic_store_explicit(&p->walk_max_steps, steps, memory_order_relaxed);
            if (flush != NULL) flush(p, ud);
            if (done) break;
            if (p->walk_hook != NULL) p->walk_hook(p->walk_hook_ud);
            pthread_mutex_lock(&sh->mu);
        }
    }
    pthread_mutex_unlock(&p->walk_mu);
}

typedef struct top_ent {
    uint32_t score;
    uint8_t len;
    char id[256];
} top_ent_t;

/* The n best so far: a min-heap on score (best[0] the weakest). */
typedef struct top_walk {
    top_ent_t *best;
    size_t n, have;
} top_walk_t;

static void heap_down(top_ent_t *h, size_t n, size_t i)
{
    for (;;) {
        size_t l = 2 * i + 1, m = i;
        if (l < n && h[l].score < h[m].score) m = l;
        if (l + 1 < n && h[l + 1].score < h[m].score) m = l + 1;
        if (m == i) return;
        top_ent_t t = h[i];
        h[i] = h[m];
        h[m] = t;
        i = m;
    }
}

static void top_visit(pql_t *p, pql_shard_t *sh, pql_acct_t *a, void *ud)
{
    (void)p;
    (void)sh;
    top_walk_t *t = ud;
    top_ent_t e;
    if (t->have == t->n && a->score <= t->best[0].score) return;
    e.score = a->score;
    e.len = a->id_len;
    memcpy(e.id, a->id, a->id_len);
    if (t->have < t->n) {
        size_t i = t->have++;
        t->best[i] = e;
        while (i > 0 && t->best[(i - 1) / 2].score > t->best[i].score) {
            top_ent_t x = t->best[i];
            t->best[i] = t->best[(i - 1) / 2];
            t->best[(i - 1) / 2] = x;
            i = (i - 1) / 2;
        }
    } else {
        t->best[0] = e;
        heap_down(t->best, t->n, 0);
    }
}

int pql_top_json(pql_t *p, size_t n, proto_buf_t *out)
{
    if (n < 1) n = 1;
    if (n > PQL_TOP_MAX) n = PQL_TOP_MAX;
    top_walk_t t = {calloc(n, sizeof(top_ent_t)), n, 0};
    if (t.best == NULL) return PQL_E_NOMEM;
    walk_all(p, top_visit, NULL, &t);
    /* Pop the heap: weakest first, so fill from the back for best first. */
    size_t have = t.have;
    for (size_t k = have; k > 1; k--) {
        top_ent_t x = t.best[0];
        t.best[0] = t.best[k - 1];
        t.best[k - 1] = x;
        heap_down(t.best, k - 1, 0);
    }
    /* best[] is now in descending score order. Each account rendered under its own lock. */
    json_t *arr = json_array();
    for (size_t i = 0; i < have && arr != NULL; i++) {
        uint64_t h = XXH3_64bits(t.best[i].id, t.best[i].len);
        pql_shard_t *sh = shard_of(p, h);
        pthread_mutex_lock(&sh->mu);
        pql_acct_t *a = acct_find(sh, h, t.best[i].id, t.best[i].len);
        if (a != NULL) json_array_append_new(arr, acct_json(p, a));
        pthread_mutex_unlock(&sh->mu);
    }
    free(t.best);
    json_t *o = json_object();
    if (o != NULL)
        json_object_set_new(o, "accounts", arr);
    else
        json_decref(arr);
    return dump_into(o, out);
}

typedef struct sweep_walk {
    uint32_t now_b;
    size_t expired;
} sweep_walk_t;

static void sweep_visit(pql_t *p, pql_shard_t *sh, pql_acct_t *a, void *ud)
{
    sweep_walk_t *w = ud;
    if (a->head >= w->now_b) return;
    a->head = w->now_b;
    recompute(p, a);
    if (a->n_slots == 0) {
        acct_remove(p, sh, a);
        w->expired++;
    } else {
        (void)evaluate(p, a, NULL, NULL); /* a fall: no signal */
        acct_remeasure(p, a);
    }
}

size_t pql_sweep(pql_t *p, int64_t now_ms)
{
    sweep_walk_t w = {(uint32_t)((uint64_t)(now_ms < 0 ? 0 : now_ms) / p->bucket_ms), 0};
    walk_all(p, sweep_visit, NULL, &w);
    atomic_fetch_add_explicit(&p->expired, w.expired, memory_order_relaxed);
    return w.expired;
}

/* ---- snapshot ---- */

#define SNAP_MAGIC   "SLPQLSN1"
#define SNAP_VERSION 1u

/* The serialized accounts of one walk chunk wait in a base_buf_t (capped: a chunk holds at most
 * PQL_WALK_STEPS accounts, each far below the cap) until snap_flush hands them to the file.
 * Appends are sticky: the first failure is kept in wbuf_t.rc and later appends do nothing. */
#define SNAP_BUF_MAX ((size_t)256 * 1024 * 1024)

typedef struct wbuf {
    base_buf_t b;
    int rc; /* BASE_OK or the first append's error */
} wbuf_t;

static void wb_put(wbuf_t *w, const void *src, size_t n)
{
    if (w->rc == BASE_OK) w->rc = base_buf_append(&w->b, src, n);
}

static void acct_serialize(const pql_t *p, const pql_acct_t *a, wbuf_t *w)
{
    uint8_t flags = (a->sk != NULL) | (a->tier_sig != NULL) << 1;
    wb_put(w, &a->id_len, 1);
    wb_put(w, a->id, a->id_len);
    wb_put(w, &flags, 1);
    wb_put(w, &a->head, 4);
    wb_put(w, &a->n_slots, 2);
    wb_put(w, a->slots, (size_t)a->n_slots * p->stride * 4);
    wb_put(w, &a->n_users, 2);
    wb_put(w, a->users, (size_t)a->n_users * sizeof(pql_user_t));
    if (a->sk != NULL) {
        wb_put(w, a->sk->day_of, p->n_days * 4);
        for (uint32_t i = 0; i < p->n_days; i++)
            if (a->sk->day_of[i] != UINT32_MAX) wb_put(w, a->sk->days[i].reg, PQL_HLL_M);
    }
    if (a->tier_sig != NULL) wb_put(w, a->tier_sig, p->n_tiers * 4);
    int8_t tier = a->tier;
    wb_put(w, &tier, 1);
    wb_put(w, &a->n_top, 1);
    for (uint8_t i = 0; i < a->n_top; i++) {
        wb_put(w, &a->top[i].len, 1);
        wb_put(w, a->top[i].id, a->top[i].len);
        wb_put(w, &a->top[i].count, 4);
    }
}

typedef struct snap_walk {
    wbuf_t *w;
    XXH64_state_t *xs;
    base_afile_t *f;
    int rc;
    uint64_t total;
} snap_walk_t;

/* Serialized under the shard lock (memory only); written by snap_flush without it. */
static void snap_visit(pql_t *p, pql_shard_t *sh, pql_acct_t *a, void *ud)
{
    (void)sh;
    snap_walk_t *sw = ud;
    if (sw->rc != PQL_OK) return; /* the walk still ends normally; the file is dropped */
    uint8_t mark = 1;
    wb_put(sw->w, &mark, 1);
    acct_serialize(p, a, sw->w);
    sw->total++;
}

#define SNAP_FLUSH_BYTES (1024 * 1024)

static void snap_flush_now(snap_walk_t *sw)
{
    if (sw->rc != PQL_OK) return;
    if (sw->w->rc != BASE_OK) {
        sw->rc = sw->w->rc == BASE_E_TOO_LARGE ? PQL_E_TOO_LARGE : PQL_E_NOMEM;
        return;
    }
    XXH64_update(sw->xs, sw->w->b.data, sw->w->b.len);
    if (base_afile_write(sw->f, sw->w->b.data, sw->w->b.len) != BASE_OK) sw->rc = PQL_E_IO;
    base_buf_reset(&sw->w->b);
}

static void snap_flush(pql_t *p, void *ud)
{
    (void)p;
    snap_walk_t *sw = ud;
    if (sw->w->b.len >= SNAP_FLUSH_BYTES || sw->w->rc != BASE_OK) snap_flush_now(sw);
}

int pql_snapshot_write(pql_t *p, const char *path)
{
    XXH64_state_t *xs = XXH64_createState();
    if (xs == NULL) return PQL_E_NOMEM;
    base_afile_t f;
    int frc = base_afile_open(&f, path, 0644);
    if (frc != BASE_OK) {
        XXH64_freeState(xs);
        return frc == BASE_E_NOMEM ? PQL_E_NOMEM : frc == BASE_E_INVAL ? PQL_E_INVALID : PQL_E_IO;
    }
    XXH64_reset(xs, 0);
    wbuf_t w = {.rc = BASE_OK};
    base_buf_init(&w.b, SNAP_BUF_MAX);
    uint32_t ver = SNAP_VERSION;
    wb_put(&w, SNAP_MAGIC, 8);
    wb_put(&w, &ver, 4);
    wb_put(&w, &p->fingerprint, 8);
    snap_walk_t sw = {&w, xs, &f, PQL_OK, 0};
    walk_all(p, snap_visit, snap_flush, &sw);
    int rc = sw.rc;
    uint64_t total = sw.total;
    if (rc == PQL_OK) {
        snap_flush_now(&sw);
        rc = sw.rc;
    }
    if (rc == PQL_OK) {
        uint8_t end = 0;
        wb_put(&w, &end, 1);
        wb_put(&w, &total, 8);
        if (w.rc == BASE_OK) XXH64_update(xs, w.b.data, w.b.len);
        uint64_t sum = XXH64_digest(xs);
        wb_put(&w, &sum, 8);
        if (w.rc != BASE_OK)
            rc = PQL_E_NOMEM;
        else if (base_afile_write(&f, w.b.data, w.b.len) != BASE_OK)
            rc = PQL_E_IO;
    }
    base_buf_free(&w.b);
    XXH64_freeState(xs);
    if (rc != PQL_OK) {
        base_afile_abort(&f);
        return rc;
    }
    return base_afile_commit(&f) == BASE_OK ? PQL_OK : PQL_E_IO;
}

typedef struct rbuf {
    const unsigned char *d;
    size_t len, off;
    bool bad;
} rbuf_t;

static void rb_get(rbuf_t *r, void *dst, size_t n)
{
    if (r->bad || r->len - r->off < n) {
        r->bad = true;
        memset(dst, 0, n);
        return;
    }
    memcpy(dst, r->d + r->off, n);
    r->off += n;
}

static void clear_all(pql_t *p)
{
    for (size_t s = 0; s < PQL_SHARDS; s++) {
        pql_shard_t *sh = &p->shards[s];
        pthread_mutex_lock(&sh->mu);
        while (sh->lru_head != NULL)
            acct_remove(p, sh, sh->lru_head);
        pthread_mutex_unlock(&sh->mu);
    }
}

/* One account from r into the tracker. Returns false on a malformed record. */
static bool acct_restore(pql_t *p, rbuf_t *r)
{
    uint8_t len = 0, flags = 0;
    char id[256];
    rb_get(r, &len, 1);
    rb_get(r, id, len);
    rb_get(r, &flags, 1);
    if (r->bad || len == 0) return false;
    uint64_t h = XXH3_64bits(id, len);
    pql_shard_t *sh = shard_of(p, h);
    pthread_mutex_lock(&sh->mu);
    bool ok = false;
    pql_acct_t *a = acct_find(sh, h, id, len) == NULL ? acct_create(p, sh, h, id, len) : NULL;
    if (a == NULL) goto out;
    rb_get(r, &a->head, 4);
    uint16_t n = 0;
    rb_get(r, &n, 2);
    if (n > 0 && !r->bad) {
        a->slots = malloc((size_t)n * p->stride * 4);
        if (a->slots == NULL) goto out;
        a->cap_slots = a->n_slots = n;
        rb_get(r, a->slots, (size_t)n * p->stride * 4);
    }
    rb_get(r, &n, 2);
    if (n > PQL_EXACT_USERS) r->bad = true;
    if (n > 0 && !r->bad) {
        a->users = malloc((size_t)n * sizeof(pql_user_t));
        if (a->users == NULL) goto out;
        a->cap_users = a->n_users = n;
        rb_get(r, a->users, (size_t)n * sizeof(pql_user_t));
    }
    if ((flags & 1) && !r->bad) {
        if (to_sketch(p, a) != PQL_OK) goto out;
        rb_get(r, a->sk->day_of, p->n_days * 4);
        for (uint32_t i = 0; i < p->n_days && !r->bad; i++) {
            hll_clear(&a->sk->days[i]);
            if (a->sk->day_of[i] == UINT32_MAX) continue;
            uint8_t reg[PQL_HLL_M];
            rb_get(r, reg, PQL_HLL_M);
            for (uint32_t j = 0; j < PQL_HLL_M; j++)
                hll_set(&a->sk->days[i], j, reg[j] > PQL_RHO_MAX ? PQL_RHO_MAX : reg[j]);
        }
        a->sk->built_head = a->head + 1; /* the unions are rebuilt from the loaded days */
    }
    if ((flags & 2) && !r->bad) {
        a->tier_sig = calloc(p->n_tiers, 4);
        if (a->tier_sig == NULL) goto out;
        rb_get(r, a->tier_sig, p->n_tiers * 4);
    }
    int8_t tier = 0;
    rb_get(r, &tier, 1);
    a->tier = tier >= 0 && (size_t)tier < p->n_tiers ? tier : NO_TIER;
    uint8_t nt = 0;
    rb_get(r, &nt, 1);
    if (nt > PQL_TOP_USERS) r->bad = true;
    for (uint8_t i = 0; i < nt && !r->bad; i++) {
        uint8_t ul = 0;
        char uid[256];
        uint32_t cnt = 0;
        rb_get(r, &ul, 1);
        rb_get(r, uid, ul);
        rb_get(r, &cnt, 4);
        if (r->bad || ul == 0) break;
        uint64_t uh = XXH3_64bits(uid, ul);
        (void)top_touch(a, uh, uid, ul);
        if (a->n_top > 0) a->top[a->n_top - 1].count = cnt;
    }
    if (r->bad) goto out;
    for (uint16_t i = 1; i < a->n_slots; i++)
        if (slot_at(p, a, i)[0] <= slot_at(p, a, i - 1)[0]) goto out;
    recompute(p, a);
    a->score = score_of(p, a);
    acct_remeasure(p, a);
    ok = true;
out:
    if (!ok && a != NULL) acct_remove(p, sh, a);
    pthread_mutex_unlock(&sh->mu);
    return ok;
}

int pql_snapshot_load(pql_t *p, const char *path)
{
    FILE *f = fopen(path, "rb");
    if (f == NULL) return PQL_E_IO;
    unsigned char *d = NULL;
    size_t len = 0, cap = 0;
    for (;;) {
        if (len == cap) {
            size_t nc = cap ? cap * 2 : 65536;
            unsigned char *nd = realloc(d, nc);
            if (nd == NULL) {
                free(d);
                fclose(f);
                return PQL_E_NOMEM;
            }
            d = nd;
            cap = nc;
        }
        size_t k = fread(d + len, 1, cap - len, f);
        len += k;
        if (k == 0) break;
    }
    bool rerr = ferror(f) != 0;
    fclose(f);
    int rc = PQL_OK;
    if (rerr)
        rc = PQL_E_IO;
    else if (len < 8 + 4 + 8 + 1 + 8 + 8 || memcmp(d, SNAP_MAGIC, 8) != 0)
        rc = PQL_E_CORRUPT;
    else {
        uint64_t sum;
        memcpy(&sum, d + len - 8, 8);
        if (XXH64(d, len - 8, 0) != sum) rc = PQL_E_CORRUPT;
    }
    if (rc == PQL_OK) {
        rbuf_t r = {d, len - 8, 8, false};
        uint32_t ver = 0;
        uint64_t fpr = 0, total = 0, got = 0;
        rb_get(&r, &ver, 4);
        rb_get(&r, &fpr, 8);
        if (ver != SNAP_VERSION)
            rc = PQL_E_CORRUPT;
        else if (fpr != p->fingerprint)
            rc = PQL_E_MISMATCH;
        for (;;) {
            if (rc != PQL_OK) break;
            uint8_t mark = 0;
            rb_get(&r, &mark, 1);
            if (r.bad)
                rc = PQL_E_CORRUPT;
            else if (mark == 0)
                break;
            else if (mark != 1 || !acct_restore(p, &r))
                rc = r.bad ? PQL_E_CORRUPT : PQL_E_NOMEM;
            else
                got++;
        }
        if (rc == PQL_OK) {
            rb_get(&r, &total, 8);
            if (r.bad || total != got || r.off != r.len) rc = PQL_E_CORRUPT;
        }
    }
    free(d);
    if (rc != PQL_OK) clear_all(p);
    return rc;
}

/* ---- statistics ---- */

void pql_stats(pql_t *p, pql_stats_t *st)
{
    memset(st, 0, sizeof *st);
    st->accounts = atomic_load_explicit(&p->n_accounts, memory_order_relaxed);
    st->bytes = atomic_load_explicit(&p->bytes, memory_order_relaxed);
    st->evictions = atomic_load_explicit(&p->evictions, memory_order_relaxed);
    st->expired = atomic_load_explicit(&p->expired, memory_order_relaxed);
    st->late = atomic_load_explicit(&p->late, memory_order_relaxed);
    st->signals = atomic_load_explicit(&p->signals, memory_order_relaxed);
    st->queue_bytes = atomic_load_explicit(&p->q_bytes, memory_order_relaxed);
    st->queue_dropped = atomic_load_explicit(&p->q_dropped, memory_order_relaxed);
    for (size_t t = 0; t < p->n_tiers; t++)
        st->signals_by_tier[t] = atomic_load_explicit(&p->by_tier[t], memory_order_relaxed);
}

static double g_accounts(void *ud)
{
    return (double)atomic_load_explicit(&((pql_t *)ud)->n_accounts, memory_order_relaxed);
}
static double g_bytes(void *ud)
{
    return (double)atomic_load_explicit(&((pql_t *)ud)->bytes, memory_order_relaxed);
}
static double g_evictions(void *ud)
{
    return (double)atomic_load_explicit(&((pql_t *)ud)->evictions, memory_order_relaxed);
}
static double g_expired(void *ud)
{
    return (double)atomic_load_explicit(&((pql_t *)ud)->expired, memory_order_relaxed);
}
static double g_late(void *ud)
{
    return (double)atomic_load_explicit(&((pql_t *)ud)->late, memory_order_relaxed);
}
static double g_signals(void *ud)
{
    return (double)atomic_load_explicit(&((pql_t *)ud)->signals, memory_order_relaxed);
}

static double g_queue_bytes(void *ud)
{
    return (double)atomic_load_explicit(&((pql_t *)ud)->q_bytes, memory_order_relaxed);
}
static double g_queue_dropped(void *ud)
{
    return (double)atomic_load_explicit(&((pql_t *)ud)->q_dropped, memory_order_relaxed);
}

/* Per-tier gauges get ud = &p->by_tier[t]. */
static double g_tier(void *ud)
{
    return (double)atomic_load_explicit((_Atomic uint64_t *)ud, memory_order_relaxed);
}

void pql_register_metrics(pql_t *p)
{
    (void)metrics_gauge_register("pql_accounts", "accounts tracked by PQL", g_accounts, p);
    (void)metrics_gauge_register("pql_bytes", "memory held by the PQL counters", g_bytes, p);
    (void)metrics_gauge_register("pql_evictions_total",
                                 "accounts forgotten at pql.max_accounts (least recently active)",
                                 g_evictions, p);
    (void)metrics_gauge_register("pql_expired_total", "idle accounts expired after the window",
                                 g_expired, p);
    (void)metrics_gauge_register("pql_late_events_total",
                                 "events older than the late allowance, not counted", g_late, p);
    (void)metrics_gauge_register("pql_signals_total", "tier rises signalled on pql_signals",
                                 g_signals, p);
    (void)metrics_gauge_register("pql_queue_bytes",
                                 "event records waiting for the PQL feeder (pql.queue_bytes)",
                                 g_queue_bytes, p);
    (void)metrics_gauge_register("pql_queue_dropped_events_total",
                                 "events not counted by PQL: its queue was full (pql.queue_bytes)",
                                 g_queue_dropped, p);
    for (size_t t = 0; t < p->n_tiers; t++)
        (void)metrics_gauge_register(p->metric_names[t], "tier rises signalled for this tier",
                                     g_tier, &p->by_tier[t]);
}

/* ---- snapshot worker ---- */

struct pql_saver {
    pql_t *p;
    char *path;
    uint32_t interval_ms;
    pthread_t th;
    pthread_mutex_t mu;
    pthread_cond_t cv; /* CLOCK_MONOTONIC */
    bool stop;         /* protected by mu */
};

static void *saver_main(void *arg)
{
    pql_saver_t *s = arg;
    sigset_t all;
    sigfillset(&all);
    pthread_sigmask(SIG_BLOCK, &all, NULL);
    pthread_mutex_lock(&s->mu);
    while (!s->stop) {
        struct timespec dl = base_deadline(CLOCK_MONOTONIC, s->interval_ms);
        while (!s->stop && pthread_cond_timedwait(&s->cv, &s->mu, &dl) != ETIMEDOUT) {
        }
        if (s->stop) break;
        pthread_mutex_unlock(&s->mu);
        size_t expired = pql_sweep(s->p, base_wall_ms());
        uint64_t t0 = (uint64_t)base_wall_ms();
        int rc = pql_snapshot_write(s->p, s->path);
        if (rc != PQL_OK)
            LOG(LOG_WARN, "pql_snapshot_failed", LS("path", s->path),
                LS("error", pql_strerror(rc)));
        else
            LOG(LOG_DEBUG, "pql_snapshot", LS("path", s->path), LI("expired", expired),
                LI("ms", (uint64_t)base_wall_ms() - t0));
        pthread_mutex_lock(&s->mu);
    }
    pthread_mutex_unlock(&s->mu);
    return NULL;
}

int pql_saver_start(pql_t *p, const char *path, uint32_t interval_ms, pql_saver_t **out)
{
    *out = NULL;
    pql_saver_t *s = calloc(1, sizeof *s);
    if (s == NULL || (s->path = strdup(path)) == NULL) {
        free(s);
        return PQL_E_NOMEM;
    }
    s->p = p;
    s->interval_ms = interval_ms > 0 ? interval_ms : 1000;
    pthread_mutex_init(&s->mu, NULL);
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&s->cv, &ca);
    pthread_condattr_destroy(&ca);
    if (pthread_create(&s->th, NULL, saver_main, s) != 0) {
        pthread_cond_destroy(&s->cv);
        pthread_mutex_destroy(&s->mu);
        free(s->path);
        free(s);
        return PQL_E_IO;
    }
    *out = s;
    return PQL_OK;
}

int pql_saver_stop(pql_saver_t *s)
{
    if (s == NULL) return PQL_OK;
    pthread_mutex_lock(&s->mu);
    s->stop = true;
    pthread_cond_signal(&s->cv);
    pthread_mutex_unlock(&s->mu);
    pthread_join(s->th, NULL);
    int rc = pql_snapshot_write(s->p, s->path);
    pthread_cond_destroy(&s->cv);
    pthread_mutex_destroy(&s->mu);
    free(s->path);
    free(s);
    return rc;
}
