/*
 * decode.c — request bodies (msgpack or JSON) into the batch's msgpack_object tree, then the
 * batch envelope (batch/sentAt/context/writeKey) and per-event validation.
 *
 * Why our own msgpack reader instead of msgpack_unpack(): msgpack-c allocates
 * count * sizeof(msgpack_object) as soon as it reads a container header (a 5-byte array32 header
 * claiming 2^32 elements asks for ~100 GB) and its parser stack is a fixed 32 levels. This reader
 * checks every count against the bytes left BEFORE allocating (each element needs at least one
 * byte, each map entry two), caps nesting at a depth derived from the limits, and points str/bin/
 * ext objects into the body instead of copying them. So the arena never holds more than
 * ~24 bytes per body byte plus the events array, and a hostile header costs nothing.
 */
#include "proto.h"

#include <jansson.h>
#include <string.h>

/* Levels a body may nest in total, beyond which it is unreadable (E_TOO_DEEP): the envelope
 * (root map, batch array, event map) plus max_depth, plus slack so that moderately deep events
 * are decoded and rejected one by one (E_EVENT_TOO_DEEP) instead of failing the whole batch. */
#define DECODE_DEPTH_SLACK 16u

static uint32_t decode_depth_cap(const proto_limits_t *lim)
{
    return lim->max_depth + 3 + DECODE_DEPTH_SLACK;
}

/* ---- msgpack reader -------------------------------------------------------------------------- */

struct mp {
    const uint8_t *p, *end;
    msgpack_zone *zone;
    uint32_t depth_cap;
    uint32_t max_events;
    bool batch_next; /* the next value read is the root map's "batch" value */
    bool want_batch; /* body kind is a batch: watch for the root's "batch" key */
};

static uint64_t be(const uint8_t *p, size_t n)
{
    uint64_t v = 0;
    for (size_t i = 0; i < n; i++)
        v = v << 8 | p[i];
    return v;
}

static int mp_value(struct mp *r, msgpack_object *o, uint32_t depth);

/* Consumes n bytes of payload (str/bin/ext) that must be present in the body. */
static int mp_span(struct mp *r, uint64_t n, const char **out)
{
    if (n > (uint64_t)(r->end - r->p)) return PROTO_E_MALFORMED;
    *out = (const char *)r->p;
    r->p += n;
    return PROTO_OK;
}

static int mp_array(struct mp *r, msgpack_object *o, uint64_t n, uint32_t depth, bool is_batch)
{
    if (depth > r->depth_cap) return PROTO_E_TOO_DEEP;
    if (n > (uint64_t)(r->end - r->p))
        return PROTO_E_MALFORMED; /* every element takes at least one byte */
    if (is_batch && n > r->max_events) return PROTO_E_TOO_MANY_EVENTS;
    o->type = MSGPACK_OBJECT_ARRAY;
    o->via.array.size = (uint32_t)n;
    o->via.array.ptr = NULL;
    if (n == 0) return PROTO_OK;
    o->via.array.ptr = msgpack_zone_malloc(r->zone, (size_t)n * sizeof(msgpack_object));
    if (o->via.array.ptr == NULL) return PROTO_E_NOMEM;
    for (uint64_t i = 0; i < n; i++) {
        int rc = mp_value(r, &o->via.array.ptr[i], depth + 1);
        if (rc != PROTO_OK) return rc;
    }
    return PROTO_OK;
}

static int mp_map(struct mp *r, msgpack_object *o, uint64_t n, uint32_t depth)
{
    if (depth > r->depth_cap) return PROTO_E_TOO_DEEP;
    if (n > (uint64_t)(r->end - r->p) / 2)
        return PROTO_E_MALFORMED; /* every entry takes at least two bytes */
    o->type = MSGPACK_OBJECT_MAP;
    o->via.map.size = (uint32_t)n;
    o->via.map.ptr = NULL;
    if (n == 0) return PROTO_OK;
    o->via.map.ptr = msgpack_zone_malloc(r->zone, (size_t)n * sizeof(msgpack_object_kv));
    if (o->via.map.ptr == NULL) return PROTO_E_NOMEM;
    for (uint64_t i = 0; i < n; i++) {
        msgpack_object_kv *kv = &o->via.map.ptr[i];
        int rc = mp_value(r, &kv->key, depth + 1);
        if (rc != PROTO_OK) return rc;
        if (depth == 1 && r->want_batch && kv->key.type == MSGPACK_OBJECT_STR &&
            kv->key.via.str.size == 5 && memcmp(kv->key.via.str.ptr, "batch", 5) == 0)
            r->batch_next = true;
        rc = mp_value(r, &kv->val, depth + 1);
        if (rc != PROTO_OK) return rc;
    }
    return PROTO_OK;
}

static int mp_value(struct mp *r, msgpack_object *o, uint32_t depth)
{
    bool is_batch = r->batch_next;
    r->batch_next = false;
    if (r->p >= r->end) return PROTO_E_MALFORMED;
    uint8_t c = *r->p++;
    size_t left = (size_t)(r->end - r->p);
    if (c <= 0x7f) {
        o->type = MSGPACK_OBJECT_POSITIVE_INTEGER;
        o->via.u64 = c;
        return PROTO_OK;
    }
    if (c >= 0xe0) {
        o->type = MSGPACK_OBJECT_NEGATIVE_INTEGER;
        o->via.i64 = (int8_t)c;
        return PROTO_OK;
    }
    if (c >= 0x80 && c <= 0x8f) return mp_map(r, o, c & 0x0f, depth);
    if (c >= 0x90 && c <= 0x9f) return mp_array(r, o, c & 0x0f, depth, is_batch);
    if (c >= 0xa0 && c <= 0xbf) {
        o->type = MSGPACK_OBJECT_STR;
        o->via.str.size = c & 0x1f;
        return mp_span(r, o->via.str.size, &o->via.str.ptr);
    }
    /* Fixed-size header lengths of the 0xc0..0xdf codes (payload length field or value). */
    static const uint8_t hdr[32] = {
        0, 0, 0, 0, 1, 2, 4, 1, 2, 4, 4, 8, 1, 2, 4, 8, /* c0..cf */
        1, 2, 4, 8, 1, 1, 1, 1, 1, 1, 2, 4, 2, 4, 2, 4, /* d0..df */
    };
    size_t h = hdr[c - 0xc0];
    if (h > left) return PROTO_E_MALFORMED;
    const uint8_t *q = r->p;
    r->p += h;
    uint64_t v = be(q, h);
    switch (c) {
    case 0xc0:
        o->type = MSGPACK_OBJECT_NIL;
        return PROTO_OK;
    case 0xc2:
    case 0xc3:
        o->type = MSGPACK_OBJECT_BOOLEAN;
        o->via.boolean = c == 0xc3;
        return PROTO_OK;
    case 0xc4:
    case 0xc5:
    case 0xc6:
        o->type = MSGPACK_OBJECT_BIN;
        o->via.bin.size = (uint32_t)v;
        return mp_span(r, v, &o->via.bin.ptr);
    case 0xc7:
    case 0xc8:
    case 0xc9:
        if (r->p >= r->end) return PROTO_E_MALFORMED;
        o->type = MSGPACK_OBJECT_EXT;
        o->via.ext.type = (int8_t)*r->p++;
        o->via.ext.size = (uint32_t)v;
        return mp_span(r, v, &o->via.ext.ptr);
    case 0xca: {
        uint32_t u = (uint32_t)v;
        float f;
        memcpy(&f, &u, sizeof f);
        o->type = MSGPACK_OBJECT_FLOAT32;
        o->via.f64 = f;
        return PROTO_OK;
    }
    case 0xcb: {
        double d;
        memcpy(&d, &v, sizeof d);
        o->type = MSGPACK_OBJECT_FLOAT64;
        o->via.f64 = d;
        return PROTO_OK;
    }
    case 0xcc:
    case 0xcd:
    case 0xce:
    case 0xcf:
        o->type = MSGPACK_OBJECT_POSITIVE_INTEGER;
        o->via.u64 = v;
        return PROTO_OK;
    case 0xd0:
    case 0xd1:
    case 0xd2:
    case 0xd3: {
        /* Sign-extend from h bytes; non-negative values are POSITIVE_INTEGER, as msgpack-c does. */
        int64_t i = (int64_t)(v << (64 - 8 * h)) >> (64 - 8 * h);
        if (i >= 0) {
            o->type = MSGPACK_OBJECT_POSITIVE_INTEGER;
            o->via.u64 = (uint64_t)i;
        } else {
            o->type = MSGPACK_OBJECT_NEGATIVE_INTEGER;
            o->via.i64 = i;
        }
        return PROTO_OK;
    }
    case 0xd4:
    case 0xd5:
    case 0xd6:
    case 0xd7:
    case 0xd8:
        o->type = MSGPACK_OBJECT_EXT;
        o->via.ext.type = (int8_t)*q;
        o->via.ext.size = 1u << (c - 0xd4);
        return mp_span(r, o->via.ext.size, &o->via.ext.ptr);
    case 0xd9:
    case 0xda:
    case 0xdb:
        o->type = MSGPACK_OBJECT_STR;
        o->via.str.size = (uint32_t)v;
        return mp_span(r, v, &o->via.str.ptr);
    case 0xdc:
    case 0xdd:
        return mp_array(r, o, v, depth, is_batch);
    case 0xde:
    case 0xdf:
        return mp_map(r, o, v, depth);
    default: /* 0xc1: never used */
        return PROTO_E_MALFORMED;
    }
}

static int decode_msgpack(proto_batch_t *b, const char *body, size_t len, const proto_limits_t *lim,
                          bool want_batch)
{
    struct mp r = {
        .p = (const uint8_t *)body,
        .end = (const uint8_t *)body + len,
        .zone = &b->zone,
        .depth_cap = decode_depth_cap(lim),
        .max_events = lim->max_events,
        .want_batch = want_batch,
    };
    int rc = mp_value(&r, &b->root, 1);
    if (rc != PROTO_OK) return rc;
    if (r.p != r.end) return PROTO_E_TRAILING_DATA;
    return PROTO_OK;
}

/* ---- JSON ------------------------------------------------------------------------------------ */

static char *zone_copy(msgpack_zone *z, const char *s, size_t n)
{
    if (n == 0) return (char *)"";
    char *p = msgpack_zone_malloc_no_align(z, n);
    if (p != NULL) memcpy(p, s, n);
    return p;
}

static int json_to_obj(msgpack_zone *z, json_t *j, msgpack_object *o, uint32_t depth, uint32_t cap)
{
    switch (json_typeof(j)) {
    case JSON_OBJECT: {
        if (depth > cap) return PROTO_E_TOO_DEEP;
        size_t n = json_object_size(j);
        o->type = MSGPACK_OBJECT_MAP;
        o->via.map.size = (uint32_t)n;
        o->via.map.ptr = NULL;
        if (n == 0) return PROTO_OK;
        o->via.map.ptr = msgpack_zone_malloc(z, n * sizeof(msgpack_object_kv));
        if (o->via.map.ptr == NULL) return PROTO_E_NOMEM;
        size_t i = 0;
        const char *key;
        size_t key_len;
        json_t *val;
        json_object_keylen_foreach(j, key, key_len, val)
        {
            if (i >= n) break;
            msgpack_object_kv *kv = &o->via.map.ptr[i++];
            kv->key.type = MSGPACK_OBJECT_STR;
            kv->key.via.str.size = (uint32_t)key_len;
            kv->key.via.str.ptr = zone_copy(z, key, key_len);
            if (kv->key.via.str.ptr == NULL) return PROTO_E_NOMEM;
            int rc = json_to_obj(z, val, &kv->val, depth + 1, cap);
            if (rc != PROTO_OK) return rc;
        }
        return PROTO_OK;
    }
    case JSON_ARRAY: {
        if (depth > cap) return PROTO_E_TOO_DEEP;
        size_t n = json_array_size(j);
        o->type = MSGPACK_OBJECT_ARRAY;
        o->via.array.size = (uint32_t)n;
        o->via.array.ptr = NULL;
        if (n == 0) return PROTO_OK;
        o->via.array.ptr = msgpack_zone_malloc(z, n * sizeof(msgpack_object));
        if (o->via.array.ptr == NULL) return PROTO_E_NOMEM;
        for (size_t i = 0; i < n; i++) {
            int rc = json_to_obj(z, json_array_get(j, i), &o->via.array.ptr[i], depth + 1, cap);
            if (rc != PROTO_OK) return rc;
        }
        return PROTO_OK;
    }
    case JSON_STRING:
        o->type = MSGPACK_OBJECT_STR;
        o->via.str.size = (uint32_t)json_string_length(j);
        o->via.str.ptr = zone_copy(z, json_string_value(j), o->via.str.size);
        return o->via.str.ptr == NULL ? PROTO_E_NOMEM : PROTO_OK;
    case JSON_INTEGER: {
        json_int_t v = json_integer_value(j);
        if (v >= 0) {
            o->type = MSGPACK_OBJECT_POSITIVE_INTEGER;
            o->via.u64 = (uint64_t)v;
        } else {
            o->type = MSGPACK_OBJECT_NEGATIVE_INTEGER;
            o->via.i64 = (int64_t)v;
        }
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

/*
 * jansson flags:
 *  - JSON_REJECT_DUPLICATES: {"userId":"a","userId":"b"} is ambiguous (which one did the client
 *    mean, which one does a downstream JSON parser pick?). jansson can only fail the whole body,
 *    so a duplicate key in JSON is E_MALFORMED; msgpack rejects just the event (E_DUPLICATE_KEY).
 *  - JSON_DISABLE_EOF_CHECK: stop after the top-level value so that bytes after it can be told
 *    apart (E_TRAILING_DATA) from broken JSON (E_MALFORMED); trailing whitespace is allowed.
 *  - JSON_DECODE_ANY: a scalar body is E_NOT_A_MAP (as in msgpack), not "malformed".
 *  - JSON_ALLOW_NUL: "\u0000" is valid JSON and valid UTF-8; msgpack strings may hold NUL too.
 * jansson itself rejects invalid UTF-8 and lone surrogate escapes, so for JSON they are
 * E_MALFORMED, and integers beyond int64 are E_MALFORMED as well.
 */
static int decode_json(proto_batch_t *b, const char *body, size_t len, const proto_limits_t *lim)
{
    json_error_t jerr;
    json_t *j = json_loadb(
        body, len,
        JSON_REJECT_DUPLICATES | JSON_DISABLE_EOF_CHECK | JSON_DECODE_ANY | JSON_ALLOW_NUL, &jerr);
    if (j == NULL) {
        switch (json_error_code(&jerr)) {
        case json_error_out_of_memory:
            return PROTO_E_NOMEM;
        case json_error_stack_overflow:
            return PROTO_E_TOO_DEEP;
        default:
            return PROTO_E_MALFORMED;
        }
    }
    int rc = PROTO_OK;
    if (!json_is_object(j)) {
        rc = PROTO_E_NOT_A_MAP;
    } else {
        for (size_t i = (size_t)jerr.position; i < len; i++) {
            char c = body[i];
            if (c != ' ' && c != '\t' && c != '\n' && c != '\r') {
                rc = PROTO_E_TRAILING_DATA;
                break;
            }
        }
    }
    if (rc == PROTO_OK) rc = json_to_obj(&b->zone, j, &b->root, 1, decode_depth_cap(lim));
    json_decref(j);
    return rc;
}

/* ---- envelope -------------------------------------------------------------------------------- */

static bool key_is(const msgpack_object *k, const char *lit, uint32_t n)
{
    return k->type == MSGPACK_OBJECT_STR && k->via.str.size == n &&
           memcmp(k->via.str.ptr, lit, n) == 0;
}

static int write_key(proto_batch_t *b, const msgpack_object *v)
{
    if (v->type == MSGPACK_OBJECT_NIL) return PROTO_OK;
    if (v->type != MSGPACK_OBJECT_STR || v->via.str.size == 0 || v->via.str.size > 1024 ||
        !base_utf8_valid(v->via.str.ptr, v->via.str.size))
        return PROTO_E_BAD_WRITE_KEY;
    b->write_key.ptr = v->via.str.ptr;
    b->write_key.len = v->via.str.size;
    return PROTO_OK;
}

static int envelope_batch(proto_batch_t *b, const proto_limits_t *lim, bool dups)
{
    const msgpack_object *batch = NULL, *sent_at = NULL, *context = NULL, *wk = NULL;
    const msgpack_object_map *m = &b->root.via.map;
    for (uint32_t i = 0; i < m->size; i++) {
        const msgpack_object *k = &m->ptr[i].key, *v = &m->ptr[i].val;
        const msgpack_object **slot = key_is(k, "batch", 5)      ? &batch
                                      : key_is(k, "sentAt", 6)   ? &sent_at
                                      : key_is(k, "context", 7)  ? &context
                                      : key_is(k, "writeKey", 8) ? &wk
                                                                 : NULL;
        if (slot == NULL) continue; /* unknown envelope keys are ignored, as Segment does */
        if (*slot != NULL) return PROTO_E_MALFORMED; /* the same envelope key twice: ambiguous */
        *slot = v;
    }
    if (batch == NULL || batch->type != MSGPACK_OBJECT_ARRAY) return PROTO_E_NO_BATCH;
    if (batch->via.array.size > lim->max_events) return PROTO_E_TOO_MANY_EVENTS;
    if (wk != NULL) {
        int rc = write_key(b, wk);
        if (rc != PROTO_OK) return rc;
    }
    if (sent_at != NULL && sent_at->type != MSGPACK_OBJECT_NIL) {
        if (!proto_parse_time(sent_at, &b->sent_at_ms)) return PROTO_E_BAD_SENT_AT;
        b->has_sent_at = true;
    }
    if (context != NULL && context->type != MSGPACK_OBJECT_NIL) {
        /* The batch context is merged into events' records, so it obeys the event rules. */
        if (context->type != MSGPACK_OBJECT_MAP ||
            proto_value_check(context, lim->max_depth, lim->event_bytes, dups, NULL) != PROTO_OK)
            return PROTO_E_BAD_BATCH_CONTEXT;
        b->context = context;
    }
    size_t n = batch->via.array.size;
    if (n > 0) {
        b->events = msgpack_zone_malloc(&b->zone, n * sizeof(proto_event_t));
        if (b->events == NULL) return PROTO_E_NOMEM;
    }
    for (size_t i = 0; i < n; i++)
        proto_event_validate(&b->events[i], &batch->via.array.ptr[i], PROTO_T_NONE, b->has_sent_at,
                             b->sent_at_ms, lim, dups);
    b->n_events = n;
    return PROTO_OK;
}

/* Single-call body: the body is the event; Segment SDKs put writeKey, sentAt and context into it.
 */
static int envelope_single(proto_batch_t *b, proto_type_t kind, const proto_limits_t *lim,
                           bool dups)
{
    const msgpack_object_map *m = &b->root.via.map;
    for (uint32_t i = 0; i < m->size; i++) {
        const msgpack_object *k = &m->ptr[i].key, *v = &m->ptr[i].val;
        if (key_is(k, "writeKey", 8) && b->write_key.ptr == NULL) {
            int rc = write_key(b, v);
            if (rc != PROTO_OK) return rc;
        } else if (key_is(k, "sentAt", 6) && !b->has_sent_at) {
            /* An invalid sentAt here is the event's fault: E_BAD_EVENT_SENT_AT below. */
            b->has_sent_at = proto_parse_time(v, &b->sent_at_ms);
        } else if (key_is(k, "context", 7) && b->context == NULL && v->type == MSGPACK_OBJECT_MAP) {
            b->context = v;
        }
    }
    b->events = msgpack_zone_malloc(&b->zone, sizeof(proto_event_t));
    if (b->events == NULL) return PROTO_E_NOMEM;
    proto_event_validate(&b->events[0], &b->root, kind, b->has_sent_at, b->sent_at_ms, lim, dups);
    b->n_events = 1;
    return PROTO_OK;
}

/* Size of the first arena chunk for a body of len bytes: one chunk sized to the body covers a
 * typical batch's objects without a second malloc. */
static size_t decode_chunk_size(size_t len)
{
    size_t chunk = len * 2;
    if (chunk < 4096) chunk = 4096;
    if (chunk > PROTO_ARENA_KEEP_MAX) chunk = PROTO_ARENA_KEEP_MAX;
    return chunk;
}

/* The checks that need no arena; points *lim at def (the defaults) when it is NULL. */
static int decode_precheck(const char *body, size_t len, const proto_limits_t **lim,
                           proto_limits_t *def)
{
    if (*lim == NULL) {
        *def = proto_limits_default();
        *lim = def;
    }
    if (len > (*lim)->body_bytes) return PROTO_E_BODY_TOO_LARGE;
    if (len == 0 || body == NULL) return PROTO_E_MALFORMED;
    return PROTO_OK;
}

/* Everything after the arena is in place (b->zone initialized, the rest of b zeroed). */
static int decode_body(proto_batch_t *b, const char *body, size_t len, proto_format_t fmt,
                       proto_type_t kind, const proto_limits_t *lim)
{
    int rc;
    if (fmt == PROTO_FMT_JSON)
        rc = decode_json(b, body, len, lim);
    else
        rc = decode_msgpack(b, body, len, lim, kind == PROTO_T_NONE);
    if (rc == PROTO_OK && b->root.type != MSGPACK_OBJECT_MAP) rc = PROTO_E_NOT_A_MAP;
    /* jansson already refused duplicate keys, so only msgpack needs the per-map check. */
    bool dups = fmt != PROTO_FMT_JSON;
    if (rc == PROTO_OK)
        rc = kind == PROTO_T_NONE ? envelope_batch(b, lim, dups)
                                  : envelope_single(b, kind, lim, dups);
    if (rc != PROTO_OK) {
        b->events = NULL;
        b->n_events = 0;
        b->context = NULL;
        b->write_key.ptr = NULL;
        b->write_key.len = 0;
        b->has_sent_at = false;
    }
    return rc;
}

int proto_decode(proto_batch_t *b, const char *body, size_t len, proto_format_t fmt,
                 proto_type_t kind, const proto_limits_t *lim)
{
    memset(b, 0, sizeof *b);
    proto_limits_t def;
    int rc = decode_precheck(body, len, &lim, &def);
    if (rc != PROTO_OK) return rc;
    if (!msgpack_zone_init(&b->zone, decode_chunk_size(len))) {
        memset(b, 0, sizeof *b);
        return PROTO_E_NOMEM;
    }
    return decode_body(b, body, len, fmt, kind, lim);
}

/* ---- reusable arena ------------------------------------------------------------------------- */

void proto_arena_init(proto_arena_t *a)
{
    memset(a, 0, sizeof *a);
}

void proto_arena_free(proto_arena_t *a)
{
    if (a->held) msgpack_zone_destroy(&a->zone);
    memset(a, 0, sizeof *a);
}

int proto_decode_arena(proto_batch_t *b, proto_arena_t *a, const char *body, size_t len,
                       proto_format_t fmt, proto_type_t kind, const proto_limits_t *lim)
{
    memset(b, 0, sizeof *b);
    proto_limits_t def;
    int rc = decode_precheck(body, len, &lim, &def);
    if (rc != PROTO_OK) return rc;
    size_t chunk = decode_chunk_size(len);
    if (a->held && a->zone.chunk_size >= chunk) {
        b->zone = a->zone; /* lent: b owns the chunk until it is recycled or freed */
    } else {
        /* Too small for this body (or nothing kept): a new chunk, as proto_decode would take. */
        if (a->held) msgpack_zone_destroy(&a->zone);
        if (!msgpack_zone_init(&b->zone, chunk)) {
            memset(b, 0, sizeof *b);
            a->held = false;
            a->lent = false;
            return PROTO_E_NOMEM;
        }
    }
    a->held = false;
    a->lent = true;
    a->chunk0 = b->zone.chunk_list.head;
    return decode_body(b, body, len, fmt, kind, lim);
}

void proto_batch_recycle(proto_batch_t *b, proto_arena_t *a)
{
    if (b->zone.chunk_size == 0) { /* zeroed, freed, or failed before it had an arena */
        memset(b, 0, sizeof *b);
        return;
    }
    msgpack_zone z = b->zone;
    memset(b, 0, sizeof *b);
    /* msgpack_zone_malloc_expand puts each extra chunk at the head of the list, so a head that
     * is not the lent chunk means this batch outgrew it: keep a bigger one next time. */
    bool outgrown = a->lent && z.chunk_list.head != a->chunk0;
    a->lent = false;
    a->chunk0 = NULL;
    if (a->held) { /* a batch from elsewhere while a chunk is kept: keep just one */
        msgpack_zone_destroy(&z);
        return;
    }
    if (outgrown && z.chunk_size < PROTO_ARENA_KEEP_MAX) {
        size_t grow = z.chunk_size * 2;
        if (grow > PROTO_ARENA_KEEP_MAX) grow = PROTO_ARENA_KEEP_MAX;
        msgpack_zone_destroy(&z);
        /* On failure the arena is empty and the next decode allocates as usual. */
        a->held = msgpack_zone_init(&a->zone, grow);
        return;
    }
    if (z.chunk_size > PROTO_ARENA_KEEP_MAX) {
        msgpack_zone_destroy(&z);
        return;
    }
    msgpack_zone_clear(&z); /* frees every chunk but the first, resets it to empty */
    a->zone = z;
    a->held = true;
}

void proto_batch_free(proto_batch_t *b)
{
    /* msgpack_zone_init() sets chunk_size; a zeroed or freed batch has 0 and owns nothing. */
    if (b->zone.chunk_size != 0) msgpack_zone_destroy(&b->zone);
    memset(b, 0, sizeof *b);
}
