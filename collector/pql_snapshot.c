/*
 * pql_snapshot.c — the PQL snapshot file (layout below): written atomically through the base
 * layer (base_afile: tmp, fsync, rename, fsync dir) with an XXH64 trailer, loaded with every
 * field checked. Contract in pql.h (pql_snapshot_write / pql_snapshot_load).
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <xxhash.h>

#include "log.h"
#include "pql_internal.h"

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

/* One account's record (the layout in the file comment), appended to b. Sticky: does nothing
 * when *rc is not BASE_OK, and keeps the first append's error there. Shared with the changelog
 * (pql_changelog.c): the same record is one account's changelog value. */
void pql__acct_serialize(const pql_t *p, const pql_acct_t *a, base_buf_t *b, int *rc)
{
    wbuf_t w = {*b, *rc};
    uint8_t flags = (a->sk != NULL) | (a->tier_sig != NULL) << 1;
    wb_put(&w, &a->id_len, 1);
    wb_put(&w, a->id, a->id_len);
    wb_put(&w, &flags, 1);
    wb_put(&w, &a->head, 4);
    wb_put(&w, &a->n_slots, 2);
    wb_put(&w, a->slots, (size_t)a->n_slots * p->stride * 4);
    wb_put(&w, &a->n_users, 2);
    wb_put(&w, a->users, (size_t)a->n_users * sizeof(pql_user_t));
    if (a->sk != NULL) {
        wb_put(&w, a->sk->day_of, p->n_days * 4);
        for (uint32_t i = 0; i < p->n_days; i++)
            if (a->sk->day_of[i] != UINT32_MAX) wb_put(&w, a->sk->days[i].reg, PQL_HLL_M);
    }
    if (a->tier_sig != NULL) wb_put(&w, a->tier_sig, p->n_tiers * 4);
    int8_t tier = a->tier;
    wb_put(&w, &tier, 1);
    wb_put(&w, &a->n_top, 1);
    for (uint8_t i = 0; i < a->n_top; i++) {
        wb_put(&w, &a->top[i].len, 1);
        wb_put(&w, a->top[i].id, a->top[i].len);
        wb_put(&w, &a->top[i].count, 4);
    }
    *b = w.b;
    *rc = w.rc;
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
    pql__acct_serialize(p, a, &sw->w->b, &sw->w->rc);
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

int pql_snapshot_write(pql_t *p, const char *path, base_ioerr_t *err)
{
    if (err != NULL) {
        err->errnum = 0;
        err->op = NULL;
    }
    XXH64_state_t *xs = XXH64_createState();
    if (xs == NULL) return PQL_E_NOMEM;
    base_afile_t f;
    int frc = base_afile_open(&f, path, 0644);
    if (frc != BASE_OK) {
        XXH64_freeState(xs);
        if (err != NULL) *err = f.err;
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
    pql__walk_all(p, snap_visit, snap_flush, &sw);
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
        /* The tmp file goes; an earlier snapshot stays as it was. */
        if (err != NULL) *err = f.err;
        base_afile_abort(&f);
        return rc;
    }
    int crc = base_afile_commit(&f);
    if (crc == BASE_OK) return PQL_OK;
    if (err != NULL) *err = f.err;
    return crc == BASE_E_NOMEM ? PQL_E_NOMEM : PQL_E_IO;
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
            pql__acct_remove(p, sh, sh->lru_head);
        pthread_mutex_unlock(&sh->mu);
    }
}

/* One account from r into the tracker. Returns false on a malformed record (r->bad set: an empty
 * or repeated account id, slots out of order, a truncated field) or when memory ran out
 * (r->bad left clear), so the caller can tell PQL_E_CORRUPT from PQL_E_NOMEM. With replace, an
 * account already tracked under that id is replaced (a changelog holds several values per key
 * until compaction) instead of being refused. */
static bool acct_restore(pql_t *p, rbuf_t *r, bool replace)
{
    uint8_t len = 0, flags = 0;
    char id[256];
    rb_get(r, &len, 1);
    rb_get(r, id, len);
    rb_get(r, &flags, 1);
    if (len == 0) r->bad = true;
    if (r->bad) return false;
    uint64_t h = XXH3_64bits(id, len);
    pql_shard_t *sh = pql__shard_of(p, h);
    pthread_mutex_lock(&sh->mu);
    bool ok = false;
    pql_acct_t *a = NULL;
    pql_acct_t *old = pql__acct_find(sh, h, id, len);
    if (old != NULL && replace) {
        pql__acct_forget(p, sh, old);
    } else if (old != NULL) {
        r->bad = true; /* the same account twice */
        goto out;
    }
    a = pql__acct_create(p, sh, h, id, len);
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
        if (pql__to_sketch(p, a) != PQL_OK) goto out;
        rb_get(r, a->sk->day_of, p->n_days * 4);
        for (uint32_t i = 0; i < p->n_days && !r->bad; i++) {
            pql_hll_clear(&a->sk->days[i]);
            if (a->sk->day_of[i] == UINT32_MAX) continue;
            uint8_t reg[PQL_HLL_M];
            rb_get(r, reg, PQL_HLL_M);
            for (uint32_t j = 0; j < PQL_HLL_M; j++)
                pql_hll_set(&a->sk->days[i], j, reg[j] > PQL_RHO_MAX ? PQL_RHO_MAX : reg[j]);
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
        (void)pql__top_touch(a, uh, uid, ul);
        if (a->n_top > 0) a->top[a->n_top - 1].count = cnt;
    }
    if (r->bad) goto out;
    for (uint16_t i = 1; i < a->n_slots; i++)
        if (pql__slot_at(p, a, i)[0] <= pql__slot_at(p, a, i - 1)[0]) {
            r->bad = true; /* buckets out of order */
            goto out;
        }
    pql__recompute(p, a);
    a->score = pql__score_of(p, a);
    pql__acct_remeasure(p, a);
    ok = true;
out:
    if (!ok && a != NULL) pql__acct_forget(p, sh, a);
    pthread_mutex_unlock(&sh->mu);
    return ok;
}

int pql_snapshot_load(pql_t *p, const char *path)
{
    FILE *f = fopen(path, "rb");
    if (f == NULL) return PQL_E_IO;
    base_buf_t b;
    base_buf_init(&b, SIZE_MAX); /* the file is as large as the table it was written from */
    for (;;) {
        if (b.len == b.cap && base_buf_reserve(&b, 65536) != BASE_OK) {
            base_buf_free(&b);
            fclose(f);
            return PQL_E_NOMEM;
        }
        size_t k = fread(b.data + b.len, 1, b.cap - b.len, f);
        b.len += k;
        if (k == 0) break;
    }
    const unsigned char *d = (const unsigned char *)b.data;
    size_t len = b.len;
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
            else if (mark != 1)
                rc = PQL_E_CORRUPT; /* neither an account (1) nor the end (0) */
            else if (!acct_restore(p, &r, false))
                rc = r.bad ? PQL_E_CORRUPT : PQL_E_NOMEM;
            else
                got++;
        }
        if (rc == PQL_OK) {
            rb_get(&r, &total, 8);
            if (r.bad || total != got || r.off != r.len) rc = PQL_E_CORRUPT;
        }
    }
    base_buf_free(&b);
    if (rc != PQL_OK) clear_all(p);
    return rc;
}

int pql__acct_restore(pql_t *p, const unsigned char *d, size_t len, size_t *used, bool replace)
{
    rbuf_t r = {d, len, 0, false};
    if (!acct_restore(p, &r, replace)) return r.bad ? PQL_E_CORRUPT : PQL_E_NOMEM;
    *used = r.off;
    return PQL_OK;
}
