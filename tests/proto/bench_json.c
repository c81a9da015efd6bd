/*
 * bench_json.c — the JSON reader comparison of issue 9: decode + validate + normalize per event of
 * the fixed benchmark body (loadtest/bodies/track100.json, 100 Segment-style track events), on one
 * core, for each candidate reader writing the same msgpack_object tree into a msgpack_zone arena:
 *   simdjson  the production path: proto_decode_arena() (json_reader.cpp) + proto_normalize()
 *   yajl      yajl 2 callbacks building the tree in the arena (a reused value stack, no per-value
 *             heap allocation), then the same envelope/validate/normalize
 *   jansson   the old path: json_loadb() tree, copied into the arena, json_decref()
 *   msgpack   the same body as msgpack through proto_decode_arena(), for reference
 * Not a ctest test (timings are not assertions). Build and run by hand, from the repo root:
 *   g++ -O2 -std=c++17 -fno-exceptions -fno-rtti -Iproto -Iproto/base -c proto/json_reader.cpp \
 *      -o /tmp/jr.o
 *   cc -O2 -std=c11 -D_GNU_SOURCE -Iproto -Iproto/base tests/proto/bench_json.c proto/decode.c \
 *      proto/encode.c proto/normalize.c proto/util.c proto/validate.c proto/base/\*.c /tmp/jr.o \
 *      $(pkg-config --cflags --libs msgpack jansson yajl simdjson) -lstdc++ -lpthread -lm \
 *      -o /tmp/bench_json
 *   /tmp/bench_json [BODY] [MODE] [ITERS]
 * Without MODE it runs every mode for ~2 s of CPU time each and prints ns/event. With MODE
 * (simdjson|yajl|jansson|msgpack) and ITERS it runs that many bodies of that mode only, for
 * instruction counts: valgrind --tool=callgrind --collect-atstart=no --toggle-collect='loop_*'
 *   /tmp/bench_json loadtest/bodies/track100.json yajl 200   (Ir / (200 * 100) = per event)
 */
#include "proto.h"

#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <yajl/yajl_parse.h>

static double cpu_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts); /* CPU time: the machine is shared */
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static const proto_limits_t *limits(void)
{
    static proto_limits_t lim;
    lim = proto_limits_default();
    return &lim;
}

static const proto_norm_ctx_t nctx = {.received_at_ms = 1796126460000LL, .source = {"web", 3}};

/* The envelope + validation decode.c does, for a tree built outside it (yajl, jansson). */
static int finish_batch(proto_batch_t *b)
{
    if (b->root.type != MSGPACK_OBJECT_MAP) return PROTO_E_NOT_A_MAP;
    const msgpack_object *batch = NULL;
    for (uint32_t i = 0; i < b->root.via.map.size; i++) {
        const msgpack_object_kv *kv = &b->root.via.map.ptr[i];
        if (kv->key.via.str.size == 5 && memcmp(kv->key.via.str.ptr, "batch", 5) == 0)
            batch = &kv->val;
        else if (kv->key.via.str.size == 6 && memcmp(kv->key.via.str.ptr, "sentAt", 6) == 0)
            b->has_sent_at = proto_parse_time(&kv->val, &b->sent_at_ms);
    }
    if (batch == NULL || batch->type != MSGPACK_OBJECT_ARRAY) return PROTO_E_NO_BATCH;
    size_t n = batch->via.array.size;
    b->events = msgpack_zone_malloc(&b->zone, n * sizeof(proto_event_t) + 1);
    if (b->events == NULL) return PROTO_E_NOMEM;
    proto_envelope_t env = {.has_sent_at = b->has_sent_at, .sent_at_ms = b->sent_at_ms};
    for (size_t i = 0; i < n; i++)
        proto_event_validate(&b->events[i], &batch->via.array.ptr[i], PROTO_T_NONE, &env, limits(),
                             PROTO_CHECK_DUP_KEYS);
    b->n_events = n;
    return PROTO_OK;
}

/* ---- yajl ------------------------------------------------------------------------------------ */

struct ystate {
    msgpack_zone *zone;
    msgpack_object *vals; /* pending values (map keys and values alternate), reused */
    size_t n, cap;
    size_t frames[64]; /* start index in vals of each open container */
    int kinds[64];     /* 1 map, 2 array */
    int depth;
    int err;
};

static int y_push(struct ystate *s, msgpack_object o)
{
    if (s->n == s->cap) {
        size_t cap = s->cap ? s->cap * 2 : 1024;
        msgpack_object *v = realloc(s->vals, cap * sizeof *v);
        if (v == NULL) return 0;
        s->vals = v;
        s->cap = cap;
    }
    s->vals[s->n++] = o;
    return 1;
}

static int y_str_obj(struct ystate *s, const unsigned char *p, size_t n)
{
    msgpack_object o = {.type = MSGPACK_OBJECT_STR};
    char *c = n ? msgpack_zone_malloc_no_align(s->zone, n) : (char *)"";
    if (c == NULL) return 0;
    memcpy(c, p, n);
    o.via.str.ptr = c;
    o.via.str.size = (uint32_t)n;
    return y_push(s, o);
}

static int y_null(void *ctx)
{
    msgpack_object o = {.type = MSGPACK_OBJECT_NIL};
    return y_push(ctx, o);
}

static int y_bool(void *ctx, int v)
{
    msgpack_object o = {.type = MSGPACK_OBJECT_BOOLEAN};
    o.via.boolean = v != 0;
    return y_push(ctx, o);
}

static int y_int(void *ctx, long long v)
{
    msgpack_object o;
    if (v >= 0) {
        o.type = MSGPACK_OBJECT_POSITIVE_INTEGER;
        o.via.u64 = (uint64_t)v;
    } else {
        o.type = MSGPACK_OBJECT_NEGATIVE_INTEGER;
        o.via.i64 = v;
    }
    return y_push(ctx, o);
}

static int y_double(void *ctx, double v)
{
    msgpack_object o = {.type = MSGPACK_OBJECT_FLOAT64};
    o.via.f64 = v;
    return y_push(ctx, o);
}

static int y_string(void *ctx, const unsigned char *p, size_t n)
{
    return y_str_obj(ctx, p, n);
}

static int y_open(struct ystate *s, int kind)
{
    if (s->depth == 64) return 0;
    s->frames[s->depth] = s->n;
    s->kinds[s->depth++] = kind;
    return 1;
}

static int y_start_map(void *ctx)
{
    return y_open(ctx, 1);
}

static int y_start_array(void *ctx)
{
    return y_open(ctx, 2);
}

static int y_close(struct ystate *s)
{
    size_t start = s->frames[--s->depth], n = s->n - start;
    msgpack_object o;
    if (s->kinds[s->depth] == 1) {
        o.type = MSGPACK_OBJECT_MAP;
        o.via.map.size = (uint32_t)(n / 2);
        o.via.map.ptr = n ? msgpack_zone_malloc(s->zone, n * sizeof(msgpack_object)) : NULL;
        if (n && o.via.map.ptr == NULL) return 0;
        memcpy(o.via.map.ptr, s->vals + start, n * sizeof(msgpack_object)); /* kv = 2 objects */
    } else {
        o.type = MSGPACK_OBJECT_ARRAY;
        o.via.array.size = (uint32_t)n;
        o.via.array.ptr = n ? msgpack_zone_malloc(s->zone, n * sizeof(msgpack_object)) : NULL;
        if (n && o.via.array.ptr == NULL) return 0;
        memcpy(o.via.array.ptr, s->vals + start, n * sizeof(msgpack_object));
    }
    s->n = start;
    return y_push(s, o);
}

static int y_end(void *ctx)
{
    return y_close(ctx);
}

static const yajl_callbacks ycb = {
    y_null,      y_bool,   y_int, y_double,      NULL,  y_string,
    y_start_map, y_string, y_end, y_start_array, y_end,
};

static int decode_yajl(proto_batch_t *b, struct ystate *s, const char *body, size_t len)
{
    memset(b, 0, sizeof *b);
    if (!msgpack_zone_init(&b->zone, len * 2)) return PROTO_E_NOMEM;
    s->zone = &b->zone;
    s->n = 0;
    s->depth = 0;
    yajl_handle h = yajl_alloc(&ycb, NULL, s);
    int rc = PROTO_OK;
    if (yajl_parse(h, (const unsigned char *)body, len) != yajl_status_ok ||
        yajl_complete_parse(h) != yajl_status_ok || s->n != 1)
        rc = PROTO_E_MALFORMED;
    yajl_free(h);
    if (rc != PROTO_OK) return rc;
    b->root = s->vals[0];
    return finish_batch(b);
}

/* ---- jansson (the reader before issue 9) ----------------------------------------------------- */

static int j2o(msgpack_zone *z, json_t *j, msgpack_object *o)
{
    switch (json_typeof(j)) {
    case JSON_OBJECT: {
        size_t n = json_object_size(j), i = 0;
        o->type = MSGPACK_OBJECT_MAP;
        o->via.map.size = (uint32_t)n;
        o->via.map.ptr = n ? msgpack_zone_malloc(z, n * sizeof(msgpack_object_kv)) : NULL;
        const char *k;
        size_t kl;
        json_t *v;
        json_object_keylen_foreach(j, k, kl, v)
        {
            msgpack_object_kv *kv = &o->via.map.ptr[i++];
            kv->key.type = MSGPACK_OBJECT_STR;
            kv->key.via.str.size = (uint32_t)kl;
            char *c = msgpack_zone_malloc_no_align(z, kl ? kl : 1);
            memcpy(c, k, kl);
            kv->key.via.str.ptr = c;
            j2o(z, v, &kv->val);
        }
        return PROTO_OK;
    }
    case JSON_ARRAY: {
        size_t n = json_array_size(j);
        o->type = MSGPACK_OBJECT_ARRAY;
        o->via.array.size = (uint32_t)n;
        o->via.array.ptr = n ? msgpack_zone_malloc(z, n * sizeof(msgpack_object)) : NULL;
        for (size_t i = 0; i < n; i++)
            j2o(z, json_array_get(j, i), &o->via.array.ptr[i]);
        return PROTO_OK;
    }
    case JSON_STRING: {
        size_t n = json_string_length(j);
        char *c = msgpack_zone_malloc_no_align(z, n ? n : 1);
        memcpy(c, json_string_value(j), n);
        o->type = MSGPACK_OBJECT_STR;
        o->via.str.ptr = c;
        o->via.str.size = (uint32_t)n;
        return PROTO_OK;
    }
    case JSON_INTEGER: {
        json_int_t v = json_integer_value(j);
        o->type = v >= 0 ? MSGPACK_OBJECT_POSITIVE_INTEGER : MSGPACK_OBJECT_NEGATIVE_INTEGER;
        o->via.i64 = v;
        return PROTO_OK;
    }
    case JSON_REAL:
        o->type = MSGPACK_OBJECT_FLOAT64;
        o->via.f64 = json_real_value(j);
        return PROTO_OK;
    case JSON_TRUE:
    case JSON_FALSE:
        o->type = MSGPACK_OBJECT_BOOLEAN;
        o->via.boolean = json_is_true(j);
        return PROTO_OK;
    default:
        o->type = MSGPACK_OBJECT_NIL;
        return PROTO_OK;
    }
}

static int decode_jansson(proto_batch_t *b, const char *body, size_t len)
{
    memset(b, 0, sizeof *b);
    if (!msgpack_zone_init(&b->zone, len * 2)) return PROTO_E_NOMEM;
    json_error_t e;
    json_t *j = json_loadb(body, len, JSON_REJECT_DUPLICATES | JSON_ALLOW_NUL, &e);
    if (j == NULL) return PROTO_E_MALFORMED;
    j2o(&b->zone, j, &b->root);
    json_decref(j);
    return finish_batch(b);
}

/* ---- the loops (callgrind collects inside loop_* only) --------------------------------------- */

static size_t checked_events(proto_batch_t *b, int rc)
{
    if (rc != PROTO_OK) {
        fprintf(stderr, "decode failed: %s\n", proto_err_code(rc));
        exit(1);
    }
    proto_normalize(b, &nctx);
    size_t ok = 0;
    for (size_t i = 0; i < b->n_events; i++)
        ok += b->events[i].error == PROTO_OK;
    if (ok != b->n_events) {
        fprintf(stderr, "%zu of %zu events invalid\n", b->n_events - ok, b->n_events);
        exit(1);
    }
    return ok;
}

__attribute__((noinline)) static size_t loop_simdjson(const char *body, size_t len, long iters,
                                                      proto_arena_t *a)
{
    size_t ev = 0;
    for (long i = 0; i < iters; i++) {
        proto_batch_t b;
        int rc = proto_decode_arena(&b, a, body, len, PROTO_FMT_JSON, PROTO_T_NONE, limits());
        ev += checked_events(&b, rc);
        proto_batch_recycle(&b, a);
    }
    return ev;
}

__attribute__((noinline)) static size_t loop_msgpack(const char *body, size_t len, long iters,
                                                     proto_arena_t *a)
{
    size_t ev = 0;
    for (long i = 0; i < iters; i++) {
        proto_batch_t b;
        int rc = proto_decode_arena(&b, a, body, len, PROTO_FMT_MSGPACK, PROTO_T_NONE, limits());
        ev += checked_events(&b, rc);
        proto_batch_recycle(&b, a);
    }
    return ev;
}

__attribute__((noinline)) static size_t loop_yajl(const char *body, size_t len, long iters,
                                                  struct ystate *s)
{
    size_t ev = 0;
    for (long i = 0; i < iters; i++) {
        proto_batch_t b;
        int rc = decode_yajl(&b, s, body, len);
        ev += checked_events(&b, rc);
        proto_batch_free(&b);
    }
    return ev;
}

__attribute__((noinline)) static size_t loop_jansson(const char *body, size_t len, long iters)
{
    size_t ev = 0;
    for (long i = 0; i < iters; i++) {
        proto_batch_t b;
        int rc = decode_jansson(&b, body, len);
        ev += checked_events(&b, rc);
        proto_batch_free(&b);
    }
    return ev;
}

static const char *modes[] = {"simdjson", "yajl", "jansson", "msgpack"};

static size_t run_mode(int m, const char *json, size_t jlen, const char *mp, size_t mplen,
                       long iters, proto_arena_t *a, struct ystate *ys)
{
    switch (m) {
    case 0:
        return loop_simdjson(json, jlen, iters, a);
    case 1:
        return loop_yajl(json, jlen, iters, ys);
    case 2:
        return loop_jansson(json, jlen, iters);
    default:
        return loop_msgpack(mp, mplen, iters, a);
    }
}

int main(int argc, char **argv)
{
    const char *path = argc > 1 ? argv[1] : "loadtest/bodies/track100.json";
    FILE *f = fopen(path, "rb");
    if (f == NULL) {
        perror(path);
        return 2;
    }
    static char json[1 << 20];
    size_t jlen = fread(json, 1, sizeof json, f);
    fclose(f);
    /* The same batch as msgpack, encoded from the decoded tree. */
    proto_batch_t b;
    if (proto_decode(&b, json, jlen, PROTO_FMT_JSON, PROTO_T_NONE, NULL) != PROTO_OK) return 2;
    msgpack_sbuffer sb;
    msgpack_sbuffer_init(&sb);
    msgpack_packer pk;
    msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
    msgpack_pack_object(&pk, b.root);
    proto_batch_free(&b);

    proto_arena_t a;
    proto_arena_init(&a);
    struct ystate ys = {0};
    int only = -1;
    long iters = 0;
    if (argc > 3) {
        for (int m = 0; m < 4; m++)
            if (strcmp(argv[2], modes[m]) == 0) only = m;
        iters = atol(argv[3]);
        if (only < 0 || iters <= 0) return 2;
        run_mode(only, json, jlen, sb.data, sb.size, 1, &a, &ys); /* warm-up, not collected */
        size_t ev = run_mode(only, json, jlen, sb.data, sb.size, iters, &a, &ys);
        printf("%s: %zu events\n", modes[only], ev);
    } else {
        printf("body %zu B JSON, %zu B msgpack; CPU time per event (decode+validate+normalize)\n",
               jlen, sb.size);
        for (int m = 0; m < 4; m++) {
            run_mode(m, json, jlen, sb.data, sb.size, 10, &a, &ys); /* warm-up */
            size_t ev = 0;
            double t0 = cpu_s(), t;
            do {
                ev += run_mode(m, json, jlen, sb.data, sb.size, 100, &a, &ys);
                t = cpu_s() - t0;
            } while (t < 2.0);
            printf("%-9s %8.0f ns/event  %6.1f MB/s\n", modes[m], t * 1e9 / (double)ev,
                   (double)(m == 3 ? sb.size : jlen) * (double)ev / 100.0 / t / 1e6);
        }
    }
    free(ys.vals);
    proto_arena_free(&a);
    msgpack_sbuffer_destroy(&sb);
    return 0;
}
