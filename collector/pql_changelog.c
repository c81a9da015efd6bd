/*
 * pql_changelog.c — one account's state as bytes, and the accounts changed or removed since the
 * last flush: what sluice-stream writes to (and restores from) its compacted changelog topic.
 * Contract in pql.h (pql_changes_track .. pql_account_drop).
 *
 * Value layout: "PQ" version(1) fingerprint(8, native order) then the snapshot's account record
 * (pql_snapshot.c: id, flags, head, slots, users, sketch days, tier_sig, tier, top users). Like
 * the snapshot, native byte order: the changelog is for workers of the same architecture.
 */
#include <stdlib.h>
#include <string.h>
#include <xxhash.h>

#include "pql_internal.h"

#define CL_MAGIC0   'P'
#define CL_MAGIC1   'Q'
#define CL_VERSION  1u
#define CL_HEAD_LEN 11 /* magic 2, version 1, fingerprint 8 */

void pql__acct_touched(pql_t *p, pql_shard_t *sh, pql_acct_t *a)
{
    if (!p->track || a->dirty) return;
    a->dirty = 1;
    a->dprev = NULL;
    a->dnext = sh->dirty_head;
    if (sh->dirty_head != NULL) sh->dirty_head->dprev = a;
    sh->dirty_head = a;
}

int pql_changes_track(pql_t *p, uint64_t max_tombstone_bytes)
{
    if (p == NULL || p->track || max_tombstone_bytes < PQL_SHARDS * 256u) return PQL_E_INVALID;
    size_t per = (size_t)(max_tombstone_bytes / PQL_SHARDS);
    for (size_t s = 0; s < PQL_SHARDS; s++) {
        pql_shard_t *sh = &p->shards[s];
        pthread_mutex_lock(&sh->mu);
        sh->gone.max = per;
        pthread_mutex_unlock(&sh->mu);
    }
    p->track = true; /* before any feed: set by the owner thread right after pql_new */
    return PQL_OK;
}

uint64_t pql_changes_lost(pql_t *p)
{
    return atomic_load_explicit(&p->gone_lost, memory_order_relaxed);
}

static void head_put(const pql_t *p, base_buf_t *b, int *rc)
{
    unsigned char h[CL_HEAD_LEN] = {CL_MAGIC0, CL_MAGIC1, CL_VERSION};
    memcpy(h + 3, &p->fingerprint, 8);
    if (*rc == BASE_OK) *rc = base_buf_append(b, h, sizeof h);
}

static int buf_err(int brc)
{
    return brc == BASE_E_TOO_LARGE ? PQL_E_TOO_LARGE : PQL_E_NOMEM;
}

int pql_account_export(pql_t *p, const char *id, size_t len, base_buf_t *out)
{
    if (id == NULL || len == 0 || len > 255) return PQL_E_INVALID;
    uint64_t h = XXH3_64bits(id, len);
    pql_shard_t *sh = pql__shard_of(p, h);
    size_t mark = out->len;
    int rc = BASE_OK;
    pthread_mutex_lock(&sh->mu);
    pql_acct_t *a = pql__acct_find(sh, h, id, len);
    if (a != NULL) {
        head_put(p, out, &rc);
        pql__acct_serialize(p, a, out, &rc);
    }
    pthread_mutex_unlock(&sh->mu);
    if (a == NULL) return PQL_E_NOTFOUND;
    if (rc != BASE_OK) {
        out->len = mark;
        return buf_err(rc);
    }
    return PQL_OK;
}

int pql_account_import(pql_t *p, const void *val, size_t len)
{
    const unsigned char *d = val;
    if (d == NULL || len < CL_HEAD_LEN + 1 || d[0] != CL_MAGIC0 || d[1] != CL_MAGIC1 ||
        d[2] != CL_VERSION)
        return PQL_E_CORRUPT;
    uint64_t fpr;
    memcpy(&fpr, d + 3, 8);
    if (fpr != p->fingerprint) return PQL_E_MISMATCH;
    size_t used = 0;
    int rc = pql__acct_restore(p, d + CL_HEAD_LEN, len - CL_HEAD_LEN, &used, true);
    if (rc != PQL_OK) return rc;
    if (used != len - CL_HEAD_LEN) {
        /* trailing bytes: the record is not what this version writes; forget it again */
        pql_account_drop(p, (const char *)d + CL_HEAD_LEN + 1, d[CL_HEAD_LEN]);
        return PQL_E_CORRUPT;
    }
    return PQL_OK;
}

int pql_account_drop(pql_t *p, const char *id, size_t len)
{
    if (id == NULL || len == 0 || len > 255) return PQL_E_INVALID;
    uint64_t h = XXH3_64bits(id, len);
    pql_shard_t *sh = pql__shard_of(p, h);
    pthread_mutex_lock(&sh->mu);
    pql_acct_t *a = pql__acct_find(sh, h, id, len);
    if (a != NULL) pql__acct_forget(p, sh, a); /* the changelog already says so */
    pthread_mutex_unlock(&sh->mu);
    return a != NULL ? PQL_OK : PQL_E_NOTFOUND;
}

/* A shard's changes are copied out under its lock (memory only: tombstones, then each dirty
 * account's value) and handed to emit without it, so emit may produce to Kafka. The copy is
 * bounded by the shard's dirty accounts (those fed since the last flush). */
int pql_changes_flush(pql_t *p, base_buf_t *scratch, pql_change_fn emit, void *ud,
                      pql_changes_stats_t *st)
{
    if (st != NULL) memset(st, 0, sizeof *st);
    if (!p->track) return PQL_E_INVALID;
    for (size_t s = 0; s < PQL_SHARDS; s++) {
        pql_shard_t *sh = &p->shards[s];
        base_buf_reset(scratch);
        int brc = BASE_OK;
        pthread_mutex_lock(&sh->mu);
        if (sh->dirty_head == NULL && sh->gone.len == 0) {
            pthread_mutex_unlock(&sh->mu);
            continue;
        }
        /* Entries: kind(1: 0 tombstone, 1 value) idlen(1) id [vlen(4) value]. A tombstone for an
         * id that is tracked again is skipped: a dirty account's value follows, and a clean one
         * was imported from the changelog, whose last value it is. */
        for (size_t off = 0; off < sh->gone.len && brc == BASE_OK;) {
            uint8_t l = (uint8_t)sh->gone.data[off];
            const char *id = sh->gone.data + off + 1;
            off += 1u + l;
            if (pql__acct_find(sh, XXH3_64bits(id, l), id, l) != NULL) continue;
            unsigned char k[2] = {0, l};
            brc = base_buf_append(scratch, k, 2);
            if (brc == BASE_OK) brc = base_buf_append(scratch, id, l);
        }
        for (pql_acct_t *a = sh->dirty_head; a != NULL && brc == BASE_OK; a = a->dnext) {
            unsigned char k[2] = {1, a->id_len};
            brc = base_buf_append(scratch, k, 2);
            if (brc == BASE_OK) brc = base_buf_append(scratch, a->id, a->id_len);
            size_t at = scratch->len;
            uint32_t vlen = 0;
            if (brc == BASE_OK) brc = base_buf_append(scratch, &vlen, 4);
            head_put(p, scratch, &brc);
            pql__acct_serialize(p, a, scratch, &brc);
            if (brc == BASE_OK) {
                vlen = (uint32_t)(scratch->len - at - 4);
                memcpy(scratch->data + at, &vlen, 4);
            }
        }
        if (brc == BASE_OK) {
            /* Copied: the shard's changes are now the caller's to write. */
            for (pql_acct_t *a = sh->dirty_head, *n; a != NULL; a = n) {
                n = a->dnext;
                a->dirty = 0;
                a->dprev = a->dnext = NULL;
            }
            sh->dirty_head = NULL;
            base_buf_reset(&sh->gone);
        }
        pthread_mutex_unlock(&sh->mu);
        if (brc != BASE_OK) return buf_err(brc);
        for (size_t off = 0; off < scratch->len;) {
            const unsigned char *e = (const unsigned char *)scratch->data + off;
            uint8_t l = e[1];
            const char *id = (const char *)e + 2;
            const void *val = NULL;
            uint32_t vlen = 0;
            off += 2u + l;
            if (e[0] == 1) {
                memcpy(&vlen, scratch->data + off, 4);
                val = scratch->data + off + 4;
                off += 4u + vlen;
            }
            int rc = emit(ud, id, l, val, vlen);
            if (rc != 0) return rc;
            if (st != NULL) {
                if (val == NULL)
                    st->tombstones++;
                else
                    st->values++;
                st->bytes += l + vlen;
            }
        }
    }
    return PQL_OK;
}
