/*
 * bench_filter.c — what the edge filters cost on the collector's per-event CPU path (issue 5:
 * "≤ 10% throughput drop with 10 rules"). Not a test: figures come from running it.
 *
 * One thread, a msgpack batch of 100 events shaped like sluice-load's traffic (track events with
 * 5 properties, identify events with traits, a context with library and groupId); each round
 * decodes, validates, normalizes and encodes every event as msgpack for Kafka — once without
 * rules and once with the 10 rules below (5 drop/sample rules that match nothing in this
 * traffic, so the same events are encoded, plus strip and hash rules that do edit records).
 * Prints ns per event for both and the relative cost, and the cost of one `hash` value alone
 * (HMAC-SHA256 of a 20-byte email through filter_hmac, OpenSSL). The end-to-end drop is smaller:
 * HTTP, zstd and the Kafka producer add per-event work that filters do not touch.
 *
 *   bench_filter [ROUNDS]      (default 20000 rounds of 100 events)
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "base.h"
#include "config.h"
#include "filter.h"
#include "proto.h"

static const char rules[] =
    "filters:\n"
    "  - {name: no_bots,      drop: {user_agent: [\"*bot*\", \"*crawler*\", \"*spider*\"]}}\n"
    "  - {name: no_debug,     drop: {event: \"debug.*\"}}\n"
    "  - {name: internal,     drop: {property: {\"context.traits.email\": \"*@ourcompany.com\"}}}\n"
    "  - {name: no_int_plan,  drop: {property: {\"properties.plan\": \"internal-*\"}}}\n"
    "  - {name: heartbeats,   sample: {event: \"Heartbeat\", keep: 1.0}}\n"
    "  - {name: no_tests,     drop: {event: [\"Internal *\", \"test.*\"]}}\n"
    "  - {name: no_headless,  drop: {type: [track, page], user_agent: \"*HeadlessChrome*\"}}\n"
    "  - {name: scrub_pii,    strip: [properties.email, traits.phone, context.ip]}\n"
    "  - {name: no_duration,  strip: [properties.duration_ms]}\n"
    "  - {name: pseudonymize, hash: [traits.email], key_env: SLUICE_BENCH_HASH_KEY}\n";

static double now_s(void)
{
    return (double)base_mono_ns() / 1e9;
}

/* The msgpack body of a 100-event batch (JSON built here, re-encoded as msgpack). */
static int make_body(msgpack_sbuffer *sb)
{
    static char json[64 * 1024];
    static const char *names[] = {"Heartbeat", "Page Viewed", "Report Created", "Signed In",
                                  "Pricing Page Viewed"};
    size_t off = (size_t)snprintf(json, sizeof json,
                                  "{\"sentAt\":\"2026-11-23T12:00:00.000Z\","
                                  "\"batch\":[");
    for (int i = 0; i < 100; i++) {
        const char *sep = i ? "," : "";
        if (i % 10 == 9)
            off += (size_t)snprintf(
                json + off, sizeof json - off,
                "%s{\"type\":\"identify\",\"messageId\":\"bench-%d\",\"userId\":\"user-%d\","
                "\"timestamp\":\"2026-11-23T11:59:59.000Z\",\"traits\":{\"email\":"
                "\"user-%d@example.com\",\"plan\":\"pro\",\"logins\":%d},\"context\":{"
                "\"library\":{\"name\":\"sluice-load\",\"version\":\"0.1.0\"},\"groupId\":"
                "\"acct-%d\"}}",
                sep, i, i % 37, i % 37, i * 7, i % 5);
        else
            off += (size_t)snprintf(
                json + off, sizeof json - off,
                "%s{\"type\":\"track\",\"messageId\":\"bench-%d\",\"userId\":\"user-%d\","
                "\"event\":\"%s\",\"timestamp\":\"2026-11-23T11:59:59.000Z\",\"properties\":{"
                "\"plan\":\"pro\",\"path\":\"/reports/%d\",\"value\":%d,\"duration_ms\":%d.5,"
                "\"first_time\":false},\"context\":{\"library\":{\"name\":\"sluice-load\","
                "\"version\":\"0.1.0\"},\"groupId\":\"acct-%d\"}}",
                sep, i, i % 37, names[i % 5], i, i * 13, i * 101, i % 5);
    }
    off += (size_t)snprintf(json + off, sizeof json - off, "]}");
    proto_batch_t b;
    memset(&b, 0, sizeof b);
    if (proto_decode(&b, json, off, PROTO_FMT_JSON, PROTO_T_NONE, NULL) != 0) return -1;
    msgpack_packer pk;
    msgpack_packer_init(&pk, sb, msgpack_sbuffer_write);
    int rc = msgpack_pack_object(&pk, b.root);
    proto_batch_free(&b);
    return rc;
}

/* ns per event of rounds x (decode, normalize, [filter], encode). */
static double run(const msgpack_sbuffer *body, filter_set_t *fs, long rounds, size_t *bytes)
{
    base_buf_t out;
    base_buf_init(&out, 1 << 20);
    size_t events = 0;
    *bytes = 0;
    double t0 = now_s();
    for (long r = 0; r < rounds; r++) {
        proto_batch_t b;
        memset(&b, 0, sizeof b);
        if (proto_decode(&b, body->data, body->size, PROTO_FMT_MSGPACK, PROTO_T_NONE, NULL) != 0)
            abort();
        proto_norm_ctx_t nc = {.received_at_ms = 1795000000000LL, .source = {"bench", 5}};
        proto_normalize(&b, &nc);
        for (size_t i = 0; i < b.n_events; i++) {
            bool keep = true;
            if (fs != NULL && filter_apply(fs, &b, &b.events[i], &keep) != FILTER_OK) abort();
            if (!keep) continue;
            base_buf_reset(&out);
            if (proto_encode_event(&b.events[i], PROTO_FMT_MSGPACK, &out) != 0) abort();
            *bytes += out.len;
            events++;
        }
        proto_batch_free(&b);
    }
    double dt = now_s() - t0;
    base_buf_free(&out);
    return dt * 1e9 / (double)(rounds * 100);
}

int main(int argc, char **argv)
{
    long rounds = argc > 1 ? atol(argv[1]) : 20000;
    if (rounds <= 0) rounds = 20000;
    setenv("SLUICE_BENCH_HASH_KEY", "bench-hash-key-0123456789abcdef", 1);
    char path[] = "/tmp/sluice-bench-filter-XXXXXX";
    int fd = mkstemp(path);
    if (fd < 0) return 1;
    FILE *f = fdopen(fd, "w");
    fputs(rules, f);
    fclose(f);
    config_t c;
    config_init(&c);
    char err[512];
    int rc = config_load_file(&c, path, err, sizeof err);
    unlink(path);
    if (rc != 0) {
        fprintf(stderr, "bench_filter: %s\n", err);
        return 1;
    }
    msgpack_sbuffer body;
    msgpack_sbuffer_init(&body);
    if (make_body(&body) != 0) return 1;
    size_t b_off = 0, b_on = 0;
    double best_off = 1e9, best_on = 1e9;
    for (int rep = 0; rep < 5; rep++) { /* interleaved; the best of 5 filters out noise */
        double off = run(&body, NULL, rounds / 5, &b_off);
        double on = run(&body, c.filters, rounds / 5, &b_on);
        if (off < best_off) best_off = off;
        if (on < best_on) best_on = on;
    }
    printf("events per round: 100, rules: %zu, body: %zu bytes msgpack\n",
           filter_set_count(c.filters), body.size);
    printf("without filters: %.0f ns/event (%.2f M events/s), %zu bytes encoded per round\n",
           best_off, 1e3 / best_off, b_off / (size_t)(rounds / 5));
    printf("with 10 rules:   %.0f ns/event (%.2f M events/s), %zu bytes encoded per round\n",
           best_on, 1e3 / best_on, b_on / (size_t)(rounds / 5));
    printf("filter cost: +%.0f ns/event (+%.1f%% of decode+normalize+encode)\n", best_on - best_off,
           100.0 * (best_on - best_off) / best_off);
    filter_hmac_t *h = NULL;
    if (filter_hmac_new("bench-hash-key-0123456789abcdef", 31, &h) != FILTER_OK) return 1;
    char out[FILTER_HASH_LEN];
    long n_mac = rounds * 10;
    double t0 = now_s();
    for (long i = 0; i < n_mac; i++)
        if (filter_hmac(h, "user-12@example.com!", 20, out) != FILTER_OK) abort();
    printf("one hash value (HMAC-SHA256, 20 bytes): %.0f ns\n",
           (now_s() - t0) * 1e9 / (double)n_mac);
    filter_hmac_free(h);
    msgpack_sbuffer_destroy(&body);
    config_free(&c);
    return 0;
}
