/*
 * normalize.c — SPEC §2 normalization: receive time, clock-skew-corrected and clamped timestamp,
 * source, and the account an event belongs to (learned from group calls, in batch order).
 */
#include "proto.h"

#define DAY_MS (24LL * 3600 * 1000)

void proto_normalize(proto_batch_t *b, const proto_norm_ctx_t *ctx)
{
    int64_t max_future = ctx->max_future_ms > 0 ? ctx->max_future_ms : DAY_MS;
    int64_t now = ctx->received_at_ms;
    for (size_t i = 0; i < b->n_events; i++) {
        proto_event_t *ev = &b->events[i];
        /* Invalid events get receive time and source too: the rejected record carries both. */
        ev->received_at_ms = now;
        ev->source = ctx->source;
        ev->account_id.ptr = NULL;
        ev->account_id.len = 0;
        ev->clamped = false;
        if (ev->error != PROTO_OK) continue;

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
