/* pql_admin.c — the admin answers (GET /v1/accounts/{id}, /v1/pql/top): JSON of one account and of
 * the top accounts by score (contract in pql.h). Runs on libuv's threadpool, never a loop. */
#include <jansson.h>
#include <stdlib.h>
#include <string.h>
#include <xxhash.h>

#include "pql_internal.h"

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
    base_iso8601_format((int64_t)a->head * p->bucket_ms, when);
    json_object_set_new(o, "lastBucket", json_string(when));
    json_t *c = json_object();
    if (c != NULL) {
        json_object_set_new(c, "events", json_integer(a->agg[0]));
        json_object_set_new(c, "activeUsers", json_integer((json_int_t)pql__users_active(p, a)));
        json_object_set_new(c, "activeDays", json_integer(a->agg[p->agg_days]));
        json_object_set_new(c, "usersExact", json_boolean(a->sk == NULL));
        json_object_set_new(o, "counters", c);
    }
    json_object_set_new(o, "rules", pql__rules_json(p, a, false));
    json_object_set_new(o, "userIds", pql__users_json(a, PQL_SIGNAL_TOP));
    return o;
}

static int dump_into(json_t *o, base_buf_t *out)
{
    if (o == NULL) return PQL_E_NOMEM;
    char *s = json_dumps(o, JSON_COMPACT);
    json_decref(o);
    if (s == NULL) return PQL_E_NOMEM;
    int brc = base_buf_append(out, s, strlen(s));
    int rc = brc == BASE_OK ? PQL_OK : brc == BASE_E_TOO_LARGE ? PQL_E_TOO_LARGE : PQL_E_NOMEM;
    free(s);
    return rc;
}

int pql_account_json(pql_t *p, const char *id, size_t len, int64_t now_ms, base_buf_t *out)
{
    (void)now_ms;
    if (len == 0 || len > 255) return PQL_E_NOTFOUND;
    uint64_t h = XXH3_64bits(id, len);
    pql_shard_t *sh = pql__shard_of(p, h);
    pthread_mutex_lock(&sh->mu);
    pql_acct_t *a = pql__acct_find(sh, h, id, len);
    json_t *o = a != NULL ? acct_json(p, a) : NULL;
    pthread_mutex_unlock(&sh->mu);
    if (a == NULL) return PQL_E_NOTFOUND;
    return dump_into(o, out);
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

int pql_top_json(pql_t *p, size_t n, base_buf_t *out)
{
    if (n < 1) n = 1;
    if (n > PQL_TOP_MAX) n = PQL_TOP_MAX;
    top_walk_t t = {calloc(n, sizeof(top_ent_t)), n, 0};
    if (t.best == NULL) return PQL_E_NOMEM;
    pql__walk_all(p, top_visit, NULL, &t);
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
        pql_shard_t *sh = pql__shard_of(p, h);
        pthread_mutex_lock(&sh->mu);
        pql_acct_t *a = pql__acct_find(sh, h, t.best[i].id, t.best[i].len);
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
