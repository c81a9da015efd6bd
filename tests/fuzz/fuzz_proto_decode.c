/*
 * fuzz_proto_decode.c — libFuzzer target for the whole untrusted-input path of proto: decode
 * (msgpack and JSON, batch and single-call), normalize, and encode every event (record or
 * rejected record), with small limits so the size and depth checks are reached quickly.
 * The first input byte picks the format and body kind; the rest is the body.
 * Build: cmake -DSLUICE_FUZZ=ON with CC=clang (see tests/fuzz/CMakeLists.txt).
 */
#include "proto.h"

#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static bool lookup_cb(void *ud, proto_str_t user, msgpack_zone *zone, proto_str_t *out)
{
    (void)ud;
    if (user.len == 0 || user.ptr[0] != 'a') return false;
    char *p = msgpack_zone_malloc_no_align(zone, user.len);
    if (p == NULL) return false;
    memcpy(p, user.ptr, user.len);
    out->ptr = p;
    out->len = user.len;
    return true;
}

static void learn_cb(void *ud, proto_str_t user, proto_str_t group)
{
    size_t *n = ud;
    *n += user.len + group.len;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1) return 0;
    proto_format_t fmt = (data[0] & 1) ? PROTO_FMT_JSON : PROTO_FMT_MSGPACK;
    proto_type_t kind = (proto_type_t)((data[0] >> 1) % 7);
    /* An exact-size copy so that any over-read is caught by ASan. */
    size_t len = size - 1;
    char *body = malloc(len ? len : 1);
    if (body == NULL) return 0;
    memcpy(body, data + 1, len);

    proto_limits_t lim = {
        .event_bytes = 4096, .body_bytes = 64 * 1024, .max_depth = 6, .max_events = 64};
    proto_batch_t b;
    int rc = proto_decode(&b, body, len, fmt, kind, &lim);
    if (rc == PROTO_OK) {
        size_t learned = 0;
        proto_norm_ctx_t ctx = {
            .received_at_ms = 1795435200000LL,
            .source = {"fuzz", 4},
            .lookup = lookup_cb,
            .learn = learn_cb,
            .lookup_ud = &learned,
            .max_future_ms = 86400000,
        };
        proto_normalize(&b, &ctx);
        base_buf_t out;
        base_buf_init(&out, 256 * 1024);
        for (size_t i = 0; i < b.n_events; i++) {
            base_buf_reset(&out);
            if (b.events[i].error == PROTO_OK) {
                if (proto_encode_event(&b.events[i], PROTO_FMT_MSGPACK, &out) != PROTO_OK) abort();
                /* The msgpack record must decode again as a valid event; only a skew-corrected
                 * timestamp may fall outside [2000, 2100) (sentAt far ahead of timestamp). */
                proto_batch_t rb;
                proto_limits_t big = lim;
                big.event_bytes = 1 << 20;
                big.body_bytes = 1 << 20;
                int64_t ts = b.events[i].norm_timestamp_ms;
                bool ts_ok = ts >= PROTO_TIME_MIN_MS && ts < PROTO_TIME_MAX_MS;
                if (proto_decode(&rb, out.data, out.len, PROTO_FMT_MSGPACK, b.events[i].type,
                                 &big) != PROTO_OK)
                    abort();
                if (rb.events[0].error != (ts_ok ? PROTO_OK : PROTO_E_BAD_TIMESTAMP)) abort();
                proto_batch_free(&rb);
                base_buf_reset(&out);
                if (proto_encode_event(&b.events[i], PROTO_FMT_JSON, &out) != PROTO_OK) abort();
            } else {
                if (proto_encode_rejected(&b.events[i], &out) != PROTO_OK) abort();
            }
            /* Everything we write as JSON is valid UTF-8. */
            if (out.len > 0 && out.data[0] == '{' && !base_utf8_valid(out.data, out.len)) abort();
        }
        base_buf_free(&out);
    }
    proto_batch_free(&b);
    free(body);
    return 0;
}
