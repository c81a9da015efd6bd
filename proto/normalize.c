/*
 * normalize.c — SPEC §2 normalization: receive time, clock-skew-corrected and clamped timestamp,
 * source, the account an event belongs to (learned from group calls, in batch order), and a
 * generated messageId for an event that came without one.
 */
#include "proto.h"

#define DAY_MS (24LL * 3600 * 1000)

/* SplitMix64's finalizer: a bijection of 64-bit values, so distinct inputs give distinct ids. */
static uint64_t mix64(uint64_t z)
{
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

/* A version-4 UUID text from (seed, seq): the high half is a bijection of seq for one seed, so a
 * seed never repeats an id; the low half adds the second seed word. */
static void gen_message_id(const uint64_t seed[2], uint64_t seq, char out[PROTO_GEN_ID_LEN + 1])
{
    static const char hex[] = "0123456789abcdef";
    uint64_t hi = mix64(seed[0] + seq * 0x9e3779b97f4a7c15ULL);
    uint64_t lo = mix64(seed[1] ^ mix64(seq + 0x632be59bd9b4e019ULL));
    uint8_t u[16];
    for (int i = 0; i < 8; i++) {
        u[i] = (uint8_t)(hi >> (56 - 8 * i));
        u[8 + i] = (uint8_t)(lo >> (56 - 8 * i));
    }
    u[6] = (uint8_t)((u[6] & 0x0f) | 0x40); /* version 4 */
    u[8] = (uint8_t)((u[8] & 0x3f) | 0x80); /* RFC 4122 variant */
    size_t o = 0;
    for (int i = 0; i < 16; i++) {
        if (i == 4 || i == 6 || i == 8 || i == 10) out[o++] = '-';
        out[o++] = hex[u[i] >> 4];
        out[o++] = hex[u[i] & 15];
    }
    out[o] = '\0';
}

void proto_normalize(proto_batch_t *b, const proto_norm_ctx_t *ctx)
{
    int64_t max_future = ctx->max_future_ms > 0 ? ctx->max_future_ms : DAY_MS;
    int64_t now = ctx->received_at_ms;
    uint64_t local_seq = 0, *seq = ctx->id_seq != NULL ? ctx->id_seq : &local_seq;
    for (size_t i = 0; i < b->n_events; i++) {
        proto_event_t *ev = &b->events[i];
        /* Invalid events get receive time and source too: the rejected record carries both. */
        ev->received_at_ms = now;
        ev->source = ctx->source;
        ev->account_id.ptr = NULL;
        ev->account_id.len = 0;
        ev->clamped = false;
        if (ev->error != PROTO_OK) continue;

        if (ev->message_id_generated && ev->message_id.ptr == NULL) {
            gen_message_id(ctx->id_seed, (*seq)++, ev->gen_id);
            ev->message_id.ptr = ev->gen_id;
            ev->message_id.len = PROTO_GEN_ID_LEN;
        }

        /* Both times are within [2000, 2100) (validated), so the difference cannot overflow;
         * receivedAt comes from our own clock. */
        int64_t ts = now;
        if (ev->has_timestamp)
            ts = ev->has_sent_at ? now - (ev->sent_at_ms - ev->timestamp_ms) : ev->timestamp_ms;
        ev->original_timestamp_ms = ev->has_timestamp ? ev->timestamp_ms : now;
        if (ts > now && ts - now > max_future) {
            ts = now;
            ev->clamped = true;
        }
        ev->norm_timestamp_ms = ts;

        if (ev->type == PROTO_T_GROUP && ev->group_id.ptr != NULL) {
            ev->account_id = ev->group_id;
        } else if (ev->context_group_id.ptr != NULL) {
            ev->account_id = ev->context_group_id;
        } else if (ctx->lookup != NULL && ev->user_id.ptr != NULL) {
            proto_str_t acc = {NULL, 0};
            if (ctx->lookup(ctx->lookup_ud, ev->user_id, &b->zone, &acc) && acc.ptr != NULL &&
                acc.len > 0)
                ev->account_id = acc;
        }
        if (ev->type == PROTO_T_GROUP && ev->user_id.ptr != NULL && ctx->learn != NULL)
            ctx->learn(ctx->lookup_ud, ev->user_id, ev->group_id);
    }
}
