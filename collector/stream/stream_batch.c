/*
 * stream_batch.c — the per-event path over a batch with prefetches (contract in stream_batch.h).
 */
#include "stream_batch.h"

#include <string.h>

/* The user PQL counts an event under: userId, else anonymousId (may be absent). */
static const stream_str_t *user_of(const stream_rec_t *r)
{
    return r->user.p != NULL ? &r->user : &r->anon;
}

/* Records decoded between two prefetch steps of the same account: four decodes (~0.5 µs)
 * cover a memory access on a loaded machine (two were measured as often too short: the next
 * step then stalled on the line), and the batch's misses spread over its decodes instead of
 * coming in one burst. */
#define STEP_AHEAD 4

/* Records ahead whose bytes are fetched while one is decoded (their first 512 bytes). */
#define RECORD_AHEAD 2

static void pql_step(stream_ev_t *evs, size_t n, size_t i, int step)
{
    if (i < n && evs[i].rc == 0 && evs[i].rec.account.p != NULL && evs[i].pql != NULL)
        pql_prefetch(evs[i].pql, evs[i].ah, step);
}

size_t stream_batch_prepare(stream_decoder_t *dec, bool json, stream_ev_t *evs, size_t n)
{
    if (n > STREAM_BATCH_MAX) n = STREAM_BATCH_MAX;
    if (json && n > 1) n = 1;
    /* Record i: decode, hashes, prefetch of its dedup buckets and of its account's table slot;
     * then the next steps for the accounts of records i - STEP_AHEAD (its header: the slot is
     * there by now) and i - 2 * STEP_AHEAD (its state: the header is there by now). */
    for (size_t i = 0; i < n + 2 * STEP_AHEAD; i++) {
        if (i >= STEP_AHEAD) pql_step(evs, n, i - STEP_AHEAD, PQL_PREFETCH_ACCOUNT);
        if (i >= 2 * STEP_AHEAD) pql_step(evs, n, i - 2 * STEP_AHEAD, PQL_PREFETCH_STATE);
        if (i >= n) continue;
        if (i + RECORD_AHEAD < n) { /* a later record's bytes (a record is a few lines) */
            const char *v = evs[i + RECORD_AHEAD].val;
            size_t len = evs[i + RECORD_AHEAD].len < 512 ? evs[i + RECORD_AHEAD].len : 512;
            for (size_t off = 0; v != NULL && off < len; off += 64)
                __builtin_prefetch(v + off);
        }
        stream_ev_t *e = &evs[i];
        e->rc = stream_record_decode(dec, e->val, e->len, json, &e->rec);
        e->dedup_key = e->has_fp = false;
        e->ah = e->uh = 0;
        if (e->rc != 0) continue;
        const stream_rec_t *r = &e->rec;
        e->dedup_key = r->message_id.p != NULL && !r->message_id_generated;
        if (e->dedup_key && e->dedup != NULL) {
            e->fp = stream_dedup_fp(e->dedup, r->source.p ? r->source.p : "", r->source.n,
                                    r->message_id.p, r->message_id.n);
            e->has_fp = true;
            stream_dedup_prefetch(e->dedup, e->fp);
        }
        if (r->account.p != NULL) {
            const stream_str_t *u = user_of(r);
            e->ah = pql_hash(r->account.p, r->account.n);
            if (u->p != NULL) e->uh = pql_hash(u->p, u->n);
            pql_step(evs, n, i, PQL_PREFETCH_SLOT);
        }
    }
    return n;
}

int stream_ev_dedup(stream_dedup_t *d, stream_ev_t *e, int64_t now_ms)
{
    if (d == NULL || !e->dedup_key) return 1;
    const stream_rec_t *r = &e->rec;
    uint64_t fp = e->has_fp ? e->fp
                            : stream_dedup_fp(d, r->source.p ? r->source.p : "", r->source.n,
                                              r->message_id.p, r->message_id.n);
    return stream_dedup_seen_first_fp(d, fp, now_ms);
}

int stream_ev_count(pql_t *p, const stream_ev_t *e, int64_t now_ms)
{
    const stream_rec_t *r = &e->rec;
    if (r->account.p == NULL) return STREAM_EV_NO_ACCOUNT; /* PQL counts accounts only */
    const stream_str_t *user = user_of(r);
    bool track = r->type.n == 5 && memcmp(r->type.p, "track", 5) == 0;
    pql_event_t ev = {r->account.p,
                      r->account.n,
                      user->p,
                      user->n,
                      track ? r->event.p : NULL,
                      track ? r->event.n : 0,
                      r->source.p,
                      r->source.n,
                      r->ts_ms >= 0 ? r->ts_ms : e->fallback_ts};
    return pql_feed_hashed(p, &ev, e->ah, e->uh, now_ms);
}
