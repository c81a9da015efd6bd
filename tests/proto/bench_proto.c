/*
 * bench_proto.c — throughput of the collector's per-event proto path (decode + validate +
 * normalize + encode the msgpack record) on msgpack and JSON batches of 100 realistic events.
 * Not a ctest test (timings are not assertions); build and run by hand, Release flags:
 *   cc -O2 -std=c11 -D_GNU_SOURCE -Iproto tests/proto/bench_proto.c proto/decode.c \
 *      proto/encode.c proto/normalize.c proto/util.c proto/validate.c \
 *      $(pkg-config --cflags --libs msgpack jansson) -o /tmp/bench_proto && /tmp/bench_proto
 */
#include "proto.h"

#include <stdio.h>
#include <string.h>
#include <time.h>

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts); /* CPU time: the machine is shared */
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void pstr(msgpack_packer *pk, const char *s)
{
    msgpack_pack_str_with_body(pk, s, strlen(s));
}

/* {"sentAt":..,"batch":[100 track events with 5 properties and a small context]} */
static void build(msgpack_sbuffer *sb)
{
    msgpack_packer pk;
    msgpack_sbuffer_init(sb);
    msgpack_packer_init(&pk, sb, msgpack_sbuffer_write);
    msgpack_pack_map(&pk, 2);
    pstr(&pk, "sentAt");
    msgpack_pack_uint64(&pk, 1795435200000ULL);
    pstr(&pk, "batch");
    msgpack_pack_array(&pk, 100);
    for (int i = 0; i < 100; i++) {
        char id[64];
        msgpack_pack_map(&pk, 8);
        pstr(&pk, "type");
        pstr(&pk, "track");
        pstr(&pk, "messageId");
        snprintf(id, sizeof id, "5f0c2a8e-1b7d-4c1e-9a3f-%012d", i);
        pstr(&pk, id);
        pstr(&pk, "userId");
        snprintf(id, sizeof id, "user-%d", i % 17);
        pstr(&pk, id);
        pstr(&pk, "anonymousId");
        pstr(&pk, "a8f3e1d2-77aa-4bcd-9e10-3f2c1b0a9d8e");
        pstr(&pk, "event");
        pstr(&pk, "Report Exported");
        pstr(&pk, "timestamp");
        msgpack_pack_uint64(&pk, 1795435199000ULL + (uint64_t)i);
        pstr(&pk, "properties");
        msgpack_pack_map(&pk, 5);
        pstr(&pk, "format");
        pstr(&pk, "csv");
        pstr(&pk, "rows");
        msgpack_pack_int(&pk, 1200 + i);
        pstr(&pk, "duration_ms");
        msgpack_pack_double(&pk, 12.5);
        pstr(&pk, "scheduled");
        msgpack_pack_false(&pk);
        pstr(&pk, "dashboard");
        pstr(&pk, "Weekly revenue by region");
        pstr(&pk, "context");
        msgpack_pack_map(&pk, 2);
        pstr(&pk, "ip");
        pstr(&pk, "203.0.113.7");
        pstr(&pk, "library");
        msgpack_pack_map(&pk, 2);
        pstr(&pk, "name");
        pstr(&pk, "sluice-c");
        pstr(&pk, "version");
        pstr(&pk, "0.1.0");
    }
}

/* arena NULL: proto_decode + proto_batch_free per batch; else proto_decode_arena + recycle. */
static void run(const char *name, const char *body, size_t len, proto_format_t fmt,
                proto_arena_t *arena)
{
    proto_limits_t lim = proto_limits_default();
    proto_norm_ctx_t ctx = {.received_at_ms = 1795435200500LL, .source = {"web", 3}};
    base_buf_t out;
    base_buf_init(&out, 1 << 20);
    size_t events = 0, bytes = 0;
    double t0 = now_s(), t;
    do {
        for (int r = 0; r < 100; r++) {
            proto_batch_t b;
            int rc = arena != NULL
                         ? proto_decode_arena(&b, arena, body, len, fmt, PROTO_T_NONE, &lim)
                         : proto_decode(&b, body, len, fmt, PROTO_T_NONE, &lim);
            if (rc != PROTO_OK) return;
            proto_normalize(&b, &ctx);
            for (size_t i = 0; i < b.n_events; i++) {
                base_buf_reset(&out);
                if (proto_encode_event(&b.events[i], PROTO_FMT_MSGPACK, &out) == PROTO_OK)
                    bytes += out.len;
            }
            events += b.n_events;
            if (arena != NULL)
                proto_batch_recycle(&b, arena);
            else
                proto_batch_free(&b);
        }
        t = now_s() - t0;
    } while (t < 2.0);
    printf("%-8s %-6s body %6zu B: %9.0f events/s (%.0f ns/event, record %zu B avg)\n", name,
           arena != NULL ? "arena" : "plain", len, (double)events / t, t * 1e9 / (double)events,
           bytes / events);
    base_buf_free(&out);
}

int main(int argc, char **argv)
{
    msgpack_sbuffer sb;
    build(&sb);
    proto_arena_t arena;
    proto_arena_init(&arena);
    run("msgpack", sb.data, sb.size, PROTO_FMT_MSGPACK, NULL);
    run("msgpack", sb.data, sb.size, PROTO_FMT_MSGPACK, &arena);
    if (argc > 1 && strcmp(argv[1], "msgpack") == 0) {
        msgpack_sbuffer_destroy(&sb);
        proto_arena_free(&arena);
        return 0;
    }
    /* The same batch as JSON: the lenient writer renders it (it is valid, so output is JSON). */
    proto_batch_t b;
    proto_limits_t lim = proto_limits_default();
    proto_decode(&b, sb.data, sb.size, PROTO_FMT_MSGPACK, PROTO_T_NONE, &lim);
    base_buf_t js;
    base_buf_init(&js, 1 << 20);
    proto_event_t whole = {.obj = &b.root, .error = PROTO_E_MALFORMED};
    proto_encode_rejected(&whole, &js);
    const char *raw = strstr(js.data, "\"raw\":") + 6;
    size_t rawlen = (size_t)(js.data + js.len - 1 - raw);
    run("json", raw, rawlen, PROTO_FMT_JSON, NULL);
    run("json", raw, rawlen, PROTO_FMT_JSON, &arena);
    proto_arena_free(&arena);
    base_buf_free(&js);
    proto_batch_free(&b);
    msgpack_sbuffer_destroy(&sb);
    return 0;
}
