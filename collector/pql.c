/*
 * pql.c — PQL counters, scoring and signals (contract and the metric definitions in pql.h; the
 * other files of the engine and what they share: pql_internal.h).
 *
 * Locking: shard->mu protects the shard's hash table, LRU list (and its walk cursor) and every
 * account in it; it is held for one account update, or by a worker walk (snapshot, sweep, top)
 * for one chunk of at most PQL_WALK_STEPS accounts / PQL_WALK_BYTES of account memory (so for
 * about one account update when an account is large), and never across I/O or a callback.
 * The collector's loop threads take no shard lock at all: they hand their records to the
 * feeder thread (pql_submit), which is the only one to wait on a shard held by a walk.
 * Statistics are relaxed atomics.
 */
#include "pql_internal.h"

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
#include "pql_hll.h"

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

/* ---- configuration compiled for the hot path ---- */

static bool set_equal(const pql_config_rule_t *r, const pql_set_t *s)
{
    if (r->n_events != s->n) return false;
    for (size_t i = 0; i < s->n; i++)
        if (strcmp(r->events[i], s->names[i]) != 0) return false;
    return true;
}

int pql_new(const pql_config_t *cfg, pql_signal_cb cb, void *ud, pql_t **out)
{
    *out = NULL;
    if (cfg == NULL || cfg->n_rules == 0 || cfg->n_rules > PQL_CONFIG_MAX_RULES ||
        cfg->n_tiers == 0 || cfg->n_tiers > PQL_CONFIG_MAX_TIERS || cfg->bucket_ms == 0 ||
        DAY_MS % cfg->bucket_ms != 0 || cfg->window_ms % cfg->bucket_ms != 0 ||
        cfg->window_ms < cfg->bucket_ms)
        return PQL_E_INVALID;
    pql_t *p = calloc(1, sizeof *p);
    if (p == NULL) return PQL_E_NOMEM;
    base_stack_init(&p->inbox);
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
        const pql_config_rule_t *cr = &cfg->rules[i];
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
        if (r->metric == PQL_METRIC_USERS_VELOCITY) {
            p->uv_rules[p->n_uv] = (uint8_t)i;
            r->uv = (int)p->n_uv++;
        }
        if (r->metric == PQL_METRIC_EVENTS_VELOCITY) p->ev_rules[p->n_ev++] = (uint8_t)i;
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
        if (r->metric == PQL_METRIC_EVENTS_VELOCITY || r->metric == PQL_METRIC_USERS_VELOCITY) {
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
    if (p->orphaned) return; /* the process is exiting; the saver may still read p */
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
    for (size_t i = 0; i < PQL_CONFIG_MAX_TIERS; i++)
        free(p->tier_names[i]);
    for (size_t i = 0; i < PQL_CONFIG_MAX_RULES; i++)
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
        b +=
            sizeof *a->sk + p->n_days * (sizeof(pql_hll_t) + 4) + (1 + p->n_uv) * sizeof(pql_hll_t);
    return (uint32_t)b;
}

/* Re-measures a, moving the global figure by the difference. */
void pql__acct_remeasure(pql_t *p, pql_acct_t *a)
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

pql_acct_t *pql__acct_find(pql_shard_t *sh, uint64_t h, const char *id, size_t len)
{
    for (pql_acct_t *a = sh->tab[(h >> PQL_SHARD_BITS) & (sh->cap - 1)]; a != NULL; a = a->hnext)
        if (a->h == h && a->id_len == len && memcmp(a->id, id, len) == 0) return a;
    return NULL;
}

void pql__acct_remove(pql_t *p, pql_shard_t *sh, pql_acct_t *a)
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

pql_acct_t *pql__acct_create(pql_t *p, pql_shard_t *sh, uint64_t h, const char *id, size_t len)
{
    if (sh->n >= sh->max && sh->lru_tail != NULL) {
        pql__acct_remove(p, sh, sh->lru_tail);
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
    pql__acct_remeasure(p, a);
    return a;
}

/* ---- per-account counters ---- */

uint32_t *pql__slot_at(const pql_t *p, const pql_acct_t *a, size_t i)
{
    return a->slots + i * p->stride;
}

/* The slot of bucket b, created in order when missing. NULL when memory is short. */
static uint32_t *slot_get(pql_t *p, pql_acct_t *a, uint32_t b)
{
    size_t lo = 0, hi = a->n_slots;
    if (hi > 0 && pql__slot_at(p, a, hi - 1)[0] == b) return pql__slot_at(p, a, hi - 1);
    while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        if (pql__slot_at(p, a, mid)[0] < b)
            lo = mid + 1;
        else
            hi = mid;
    }
    if (lo < a->n_slots && pql__slot_at(p, a, lo)[0] == b) return pql__slot_at(p, a, lo);
    if (a->n_slots == UINT16_MAX) return NULL;
    if (a->n_slots == a->cap_slots) {
        size_t ncap = a->cap_slots < 2 ? 2 : (size_t)a->cap_slots * 2;
        if (ncap > UINT16_MAX) ncap = UINT16_MAX;
        uint32_t *ns = realloc(a->slots, ncap * p->stride * sizeof *ns);
        if (ns == NULL) return NULL;
        a->slots = ns;
        a->cap_slots = (uint16_t)ncap;
    }
    uint32_t *s = pql__slot_at(p, a, lo);
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
            pql_hll_clear(&sk->days[i]);
            sk->day_of[i] = UINT32_MAX;
        }
    for (size_t u = 0; u <= p->n_uv; u++)
        pql_hll_clear(&sk->uni[u]);
    for (uint32_t i = 0; i < p->n_days; i++) {
        if (sk->day_of[i] == UINT32_MAX) continue;
        pql_hll_merge(&sk->uni[0], &sk->days[i]);
    }
    for (size_t r = 0; r < p->n_rules; r++) {
        const pql_rule_t *ru = &p->rules[r];
        if (ru->uv < 0) continue;
        uint32_t rd = day_of_bucket(p, recent_start(a->head, ru->recent_b));
        for (uint32_t i = 0; i < p->n_days; i++)
            if (sk->day_of[i] != UINT32_MAX && sk->day_of[i] < rd)
                pql_hll_merge(&sk->uni[1 + ru->uv], &sk->days[i]);
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
        pql_hll_clear(&sk->days[i]);
        sk->day_of[i] = d;
    }
    uint32_t j;
    uint8_t rho;
    pql_hll_hash_split(uh, &j, &rho);
    pql_hll_set(&sk->days[i], j, rho);
    pql_hll_set(&sk->uni[0], j, rho);
    for (size_t r = 0; r < p->n_rules; r++) {
        const pql_rule_t *ru = &p->rules[r];
        if (ru->uv < 0) continue;
        if (d < day_of_bucket(p, recent_start(a->head, ru->recent_b)))
            pql_hll_set(&sk->uni[1 + ru->uv], j, rho);
    }
}

/* Exact users -> sketches, once the account has more than PQL_EXACT_USERS. */
int pql__to_sketch(pql_t *p, pql_acct_t *a)
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
        pql_hll_clear(&sk->days[i]);
    }
    for (size_t u = 0; u <= p->n_uv; u++)
        pql_hll_clear(&sk->uni[u]);
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
void pql__recompute(pql_t *p, pql_acct_t *a)
{
    uint32_t ws = window_start(p, a->head);
    size_t keep = 0;
    while (keep < a->n_slots && pql__slot_at(p, a, keep)[0] < ws)
        keep++;
    if (keep > 0) {
        memmove(a->slots, pql__slot_at(p, a, keep), (a->n_slots - keep) * p->stride * 4);
        a->n_slots = (uint16_t)(a->n_slots - keep);
    }
    memset(a->agg, 0, p->n_agg * sizeof *a->agg);
    uint32_t last_day = UINT32_MAX;
    for (size_t i = 0; i < a->n_slots; i++) {
        const uint32_t *s = pql__slot_at(p, a, i);
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
        for (size_t i = a->n_slots; i > 0 && pql__slot_at(p, a, i - 1)[0] >= rs; i--)
            a->agg[ru->agg_recent] += pql__slot_at(p, a, i - 1)[1 + ru->set];
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
double pql__users_active(const pql_t *p, const pql_acct_t *a)
{
    if (a->sk == NULL) return a->agg[p->agg_users];
    return floor(pql_hll_estimate(&a->sk->uni[0]) + 0.5);
}

static double users_new_recent(const pql_t *p, const pql_acct_t *a, const pql_rule_t *ru)
{
    if (a->sk == NULL) return a->agg[ru->agg_recent];
    double all = pql_hll_estimate(&a->sk->uni[0]);
    double rest = pql_hll_estimate(&a->sk->uni[1 + ru->uv]);
    return all > rest ? floor(all - rest + 0.5) : 0;
}

static double users_new_rest(const pql_t *p, const pql_acct_t *a, const pql_rule_t *ru)
{
    if (a->sk == NULL) return a->agg[ru->agg_recent + 1];
    return floor(pql_hll_estimate(&a->sk->uni[1 + ru->uv]) + 0.5);
}

/* The value a rule compares with at_least. */
static double rule_value(const pql_t *p, const pql_acct_t *a, const pql_rule_t *ru, double *recent)
{
    const double periods = ru->periods;
    double rec, rest;
    switch (ru->metric) {
    case PQL_METRIC_ACTIVE_USERS:
        return pql__users_active(p, a);
    case PQL_METRIC_EVENTS:
        return a->agg[ru->set];
    case PQL_METRIC_ACTIVE_DAYS:
        return a->agg[p->agg_days];
    case PQL_METRIC_EVENT_SEEN:
        return a->agg[ru->set] > 0 ? 1 : 0;
    case PQL_METRIC_EVENTS_VELOCITY:
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
    if ((ru->metric == PQL_METRIC_EVENTS_VELOCITY || ru->metric == PQL_METRIC_USERS_VELOCITY) &&
        recent < ru->min_recent)
        return false;
    return true;
}

uint32_t pql__score_of(const pql_t *p, const pql_acct_t *a)
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
bool pql__top_touch(pql_acct_t *a, uint64_t uh, const char *user, size_t len)
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

json_t *pql__rules_json(const pql_t *p, const pql_acct_t *a, bool only_holding)
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

json_t *pql__users_json(const pql_acct_t *a, size_t k)
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
    uint64_t holds; /* bit r: rule r holds (PQL_CONFIG_MAX_RULES <= 64) */
    double value[PQL_CONFIG_MAX_RULES];
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
    base_iso8601_format(now_ms, when);
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
    a->score = pql__score_of(p, a);
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

pql_shard_t *pql__shard_of(pql_t *p, uint64_t h)
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
    pql_shard_t *sh = pql__shard_of(p, ah);
    pql_sig_t sg;
    bool sig = false;
    int rc = PQL_OK;

    pthread_mutex_lock(&sh->mu);
    pql_acct_t *a = pql__acct_find(sh, ah, ev->account, ev->account_len);
    if (a == NULL) {
        a = pql__acct_create(p, sh, ah, ev->account, ev->account_len);
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
    bool slow = b != a->head || a->n_slots == 0 || pql__slot_at(p, a, a->n_slots - 1)[0] != b;
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
            if (pql__to_sketch(p, a) != PQL_OK) {
                rc = PQL_E_NOMEM;
                goto out;
            }
            sketch_add(p, a, uh, b);
            grew = true;
        }
    } else {
        sketch_add(p, a, uh, b);
    }
    grew |= pql__top_touch(a, uh, ev->user, ev->user_len);
    if (slow) pql__recompute(p, a);
    sig = evaluate(p, a, ev, &sg);
out:
    if (rc != PQL_OK && slow) pql__recompute(p, a); /* keep the aggregates true to the buckets */
    if (slow || grew || rc != PQL_OK) pql__acct_remeasure(p, a);
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
int pql_record_append(base_buf_t *buf, const pql_event_t *ev)
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
    int rc = base_buf_append(buf, h, sizeof h);
    if (rc == 0) rc = base_buf_append(buf, ev->account, h[0]);
    if (rc == 0) rc = base_buf_append(buf, ev->user, h[1]);
    if (rc == 0 && h[2]) rc = base_buf_append(buf, ev->source, h[2]);
    if (rc == 0 && h[4]) rc = base_buf_append(buf, ev->event, h[4]);
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

/* ---- worker walks ---- */

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
void pql__walk_all(pql_t *p, walk_visit_fn visit, walk_flush_fn flush, void *ud)
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

typedef struct sweep_walk {
    uint32_t now_b;
    size_t expired;
} sweep_walk_t;

static void sweep_visit(pql_t *p, pql_shard_t *sh, pql_acct_t *a, void *ud)
{
    sweep_walk_t *w = ud;
    if (a->head >= w->now_b) return;
    a->head = w->now_b;
    pql__recompute(p, a);
    if (a->n_slots == 0) {
        pql__acct_remove(p, sh, a);
        w->expired++;
    } else {
        (void)evaluate(p, a, NULL, NULL); /* a fall: no signal */
        pql__acct_remeasure(p, a);
    }
}

size_t pql_sweep(pql_t *p, int64_t now_ms)
{
    sweep_walk_t w = {(uint32_t)((uint64_t)(now_ms < 0 ? 0 : now_ms) / p->bucket_ms), 0};
    pql__walk_all(p, sweep_visit, NULL, &w);
    atomic_fetch_add_explicit(&p->expired, w.expired, memory_order_relaxed);
    return w.expired;
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
