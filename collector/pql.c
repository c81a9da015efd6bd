/*
 * pql.c — the PQL tracker: configuration compiled for the hot path, the account table (hash,
 * LRU, memory accounting), records carried by a request, worker walks and sweeps, statistics
 * (contract and the metric definitions in pql.h; counters, scoring and signals are in
 * pql_score.c; the other files of the engine and what they share: pql_internal.h).
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
        base_buf_init(&sh->gone, 0); /* no tombstones kept until pql_changes_track */
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
        base_buf_free(&sh->gone);
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
        b += a->top[i].cap + 1u;
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

void pql__lru_unlink(pql_shard_t *sh, pql_acct_t *a)
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

void pql__lru_front(pql_shard_t *sh, pql_acct_t *a)
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

/* tombstone: whether the changelog must learn of the removal (pql__acct_forget: no, the
 * changelog already says so or is about to be overwritten). */
static void acct_remove(pql_t *p, pql_shard_t *sh, pql_acct_t *a, bool tombstone)
{
    pql_acct_t **pp = &sh->tab[(a->h >> PQL_SHARD_BITS) & (sh->cap - 1)];
    while (*pp != a)
        pp = &(*pp)->hnext;
    *pp = a->hnext;
    pql__lru_unlink(sh, a);
    if (p->track) {
        if (a->dirty) {
            if (a->dprev)
                a->dprev->dnext = a->dnext;
            else
                sh->dirty_head = a->dnext;
            if (a->dnext) a->dnext->dprev = a->dprev;
        }
        /* The tombstone for the changelog; at the buffer's cap it is lost (counted): the
         * changelog then keeps a stale account, which a restore loads and the next sweep
         * expires again. */
        uint8_t l = a->id_len;
        if (tombstone) {
            if (sh->gone.len + 1u + l > sh->gone.max)
                atomic_fetch_add_explicit(&p->gone_lost, 1, memory_order_relaxed);
            else if (base_buf_reserve(&sh->gone, 1u + l) != BASE_OK)
                atomic_fetch_add_explicit(&p->gone_lost, 1, memory_order_relaxed);
            else {
                sh->gone.data[sh->gone.len] = (char)l;
                memcpy(sh->gone.data + sh->gone.len + 1, a->id, l);
                sh->gone.len += 1u + l;
            }
        }
    }
    sh->n--;
    atomic_fetch_sub_explicit(&p->n_accounts, 1, memory_order_relaxed);
    atomic_fetch_sub_explicit(&p->bytes, a->bytes, memory_order_relaxed);
    acct_free(a);
}

void pql__acct_remove(pql_t *p, pql_shard_t *sh, pql_acct_t *a)
{
    acct_remove(p, sh, a, true);
}

void pql__acct_forget(pql_t *p, pql_shard_t *sh, pql_acct_t *a)
{
    acct_remove(p, sh, a, false);
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
    pql__lru_front(sh, a);
    sh->n++;
    atomic_fetch_add_explicit(&p->n_accounts, 1, memory_order_relaxed);
    pql__acct_remeasure(p, a);
    return a;
}

pql_shard_t *pql__shard_of(pql_t *p, uint64_t h)
{
    return &p->shards[h & (PQL_SHARDS - 1)];
}

void pql_prefetch(pql_t *p, uint64_t ah, int step)
{
    /* Hints only (see pql.h): no lock, nothing written; every pointer read is valid because no
     * other thread changes the table. */
    pql_shard_t *sh = pql__shard_of(p, ah);
    pql_acct_t **slot = &sh->tab[(ah >> PQL_SHARD_BITS) & (sh->cap - 1)];
    if (step == PQL_PREFETCH_SLOT) {
        __builtin_prefetch(slot);
        return;
    }
    pql_acct_t *a = *slot;
    if (step == PQL_PREFETCH_ACCOUNT) {
        if (a == NULL) return;
        /* The header, its id and the aggregates after it (one allocation of ~140 bytes +
         * 4 per aggregate, 16-byte aligned: up to four lines). Nothing of it is read here: it
         * is still on its way. */
        const char *c = (const char *)a;
        __builtin_prefetch(c, 1);
        __builtin_prefetch(c + 64, 1);
        __builtin_prefetch(c + 128, 1);
        __builtin_prefetch(c + 192, 1);
        return;
    }
    while (a != NULL && a->h != ah)
        a = a->hnext;
    if (a == NULL) return;
    if (a->n_slots > 0) __builtin_prefetch(pql__slot_at(p, a, a->n_slots - 1u), 1);
    /* the users pql_feed scans (up to four lines of them) and the whole top list */
    const char *u = (const char *)a->users;
    size_t ub = (size_t)a->n_users * sizeof *a->users;
    for (size_t off = 0; u != NULL && off < ub && off < 256; off += 64)
        __builtin_prefetch(u + off, 1);
    const char *tp = (const char *)a->top;
    size_t tb = (size_t)a->n_top * sizeof *a->top;
    for (size_t off = 0; tp != NULL && off < tb; off += 64)
        __builtin_prefetch(tp + off, 1);
    /* the LRU neighbours pql_feed relinks it between */
    if (a->lprev != NULL) __builtin_prefetch(&a->lprev->lnext, 1);
    if (a->lnext != NULL) __builtin_prefetch(&a->lnext->lprev, 1);
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
        (void)pql__evaluate(p, a, NULL, NULL); /* a fall: no signal */
        pql__acct_remeasure(p, a);
        pql__acct_touched(p, sh, a);
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
