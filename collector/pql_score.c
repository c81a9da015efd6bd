/*
 * pql_score.c — what one event does to its account: the per-account counters (time buckets,
 * exact user sets and their HyperLogLog sketches), the rules' values, the score and tier, the top
 * users, and the tier-rise signal (pql_feed). Contract and metric definitions in pql.h; locking
 * (shard->mu held for one account update) at the top of pql.c; shared layout in pql_internal.h.
 */
#include "pql_internal.h"

#include <jansson.h>
#include <math.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <xxhash.h>

#include "base.h"
#include "log.h"
#include "metrics.h"
#include "pql_hll.h"

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
    if (a->n_top == PQL_TOP_USERS) {
        /* Space-saving: the least counted entry takes the new user, in its id's allocation
         * when that is large enough (a thrashing top list then allocates nothing). */
        uint8_t mi = 0;
        for (uint8_t i = 1; i < a->n_top; i++)
            if (a->top[i].count < a->top[mi].count) mi = i;
        pql_top_t *t = &a->top[mi];
        bool grew = false;
        if (len > t->cap) {
            size_t alloc = (len + 16) & ~(size_t)15;
            char *id = malloc(alloc);
            if (id == NULL) return false;
            free(t->id);
            t->id = id;
            t->cap = (uint8_t)(alloc - 1);
            grew = true;
        }
        memcpy(t->id, user, len);
        t->id[len] = '\0';
        t->h = uh;
        t->count++;
        t->len = (uint8_t)len;
        return grew;
    }
    size_t alloc = (len + 16) & ~(size_t)15; /* len <= 255: at most 256 */
    char *id = malloc(alloc);
    if (id == NULL) return false;
    memcpy(id, user, len);
    id[len] = '\0';
    pql_top_t *nt = realloc(a->top, (a->n_top + 1u) * sizeof *nt);
    if (nt == NULL) {
        free(id);
        return false;
    }
    a->top = nt;
    a->top[a->n_top++] = (pql_top_t){uh, 1, (uint8_t)len, (uint8_t)(alloc - 1), id};
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
bool pql__evaluate(pql_t *p, pql_acct_t *a, const pql_event_t *ev, pql_sig_t *sg)
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

uint64_t pql_hash(const char *id, size_t len)
{
    return XXH3_64bits(id, len);
}

static bool ev_invalid(const pql_event_t *ev)
{
    return ev->account == NULL || ev->account_len == 0 || ev->account_len > 255 ||
           ev->user == NULL || ev->user_len == 0 || ev->user_len > 255 || ev->ts_ms < 0;
}

int pql_feed(pql_t *p, const pql_event_t *ev, int64_t now_ms)
{
    if (ev_invalid(ev)) return PQL_E_INVALID; /* before hashing: the lengths are checked */
    return pql_feed_hashed(p, ev, pql_hash(ev->account, ev->account_len),
                           pql_hash(ev->user, ev->user_len), now_ms);
}

int pql_feed_hashed(pql_t *p, const pql_event_t *ev, uint64_t ah, uint64_t uh, int64_t now_ms)
{
    if (ev_invalid(ev)) return PQL_E_INVALID;
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
        pql__lru_unlink(sh, a);
        pql__lru_front(sh, a);
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
    sig = pql__evaluate(p, a, ev, &sg);
out:
    if (rc != PQL_OK && slow) pql__recompute(p, a); /* keep the aggregates true to the buckets */
    if (slow || grew || rc != PQL_OK) pql__acct_remeasure(p, a);
    pql__acct_touched(p, sh, a);
    pthread_mutex_unlock(&sh->mu);
    if (sig && p->cb != NULL) {
        size_t jlen = 0;
        char *json = signal_json(p, &sg, ev, now_ms, &jlen);
        if (json != NULL) p->cb(p->ud, ev->account, ev->account_len, json, jlen);
        free(json);
    }
    return rc;
}

double pql__rule_value(const pql_t *p, const pql_acct_t *a, const pql_rule_t *ru, double *recent)
{
    return rule_value(p, a, ru, recent);
}

double pql__users_new_recent(const pql_t *p, const pql_acct_t *a, const pql_rule_t *ru)
{
    return users_new_recent(p, a, ru);
}
