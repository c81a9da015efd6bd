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

#include <string.h>

#include "json_reader.h"

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
    /* Raw spans (proto_raw_t): containers read at depth raw_depth while raw_on are recorded in
     * b->raw_tab (an event's top-level values: depth 4 inside the batch array, 2 for a single
     * call). A full table only stops the recording: the encoder then re-encodes. */
    proto_batch_t *b;
    uint32_t raw_depth;
    bool raw_on;
};

/* Records the container o, read from [start, r->p), as a raw span. */
static void raw_note(struct mp *r, const msgpack_object *o, const uint8_t *start)
{
    proto_batch_t *b = r->b;
    const void *elems = o->type == MSGPACK_OBJECT_MAP ? (const void *)o->via.map.ptr
                                                      : (const void *)o->via.array.ptr;
    uint32_t n = o->type == MSGPACK_OBJECT_MAP ? o->via.map.size : o->via.array.size;
    if (n == 0 || (size_t)(r->p - start) > UINT32_MAX) return;
    if (b->n_raw == b->cap_raw) {
        uint32_t cap = b->cap_raw ? b->cap_raw * 2 : 64;
        proto_raw_t *t = msgpack_zone_malloc(r->zone, (size_t)cap * sizeof *t);
        if (t == NULL) {
            r->raw_on = false;
            return;
        }
        if (b->n_raw > 0) memcpy(t, b->raw_tab, (size_t)b->n_raw * sizeof *t);
        b->raw_tab = t;
        b->cap_raw = cap;
    }
    b->raw_tab[b->n_raw++] = (proto_raw_t){elems, n, (uint32_t)(r->p - start), (const char *)start};
}

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

static int mp_array(struct mp *r, msgpack_object *o, uint64_t n, uint32_t depth, bool is_batch,
                    const uint8_t *start)
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
    uint32_t *first = NULL;
    if (is_batch) { /* each element's raw spans start where the previous element's end */
        first = msgpack_zone_malloc(r->zone, ((size_t)n + 1) * sizeof *first);
        r->b->raw_first = first;
        r->b->n_raw_first = first != NULL ? (uint32_t)n : 0;
        r->raw_on = first != NULL;
    }
    for (uint64_t i = 0; i < n; i++) {
        if (first != NULL) first[i] = r->b->n_raw;
        int rc = mp_value(r, &o->via.array.ptr[i], depth + 1);
        if (rc != PROTO_OK) return rc;
    }
    if (first != NULL) {
        first[n] = r->b->n_raw;
        r->raw_on = false;
    }
    if (r->raw_on && depth == r->raw_depth) raw_note(r, o, start);
    return PROTO_OK;
}

/* A map key that is a fixstr (nearly all keys), read inline: true when it was one (*rc then says
 * whether it fit in the body), false to take mp_value(). Keys never carry batch_next: it is set
 * after the root's "batch" key and consumed by its value. */
static inline bool mp_fixstr_key(struct mp *r, msgpack_object *o, int *rc)
{
    if (r->p >= r->end || (*r->p & 0xe0) != 0xa0) return false;
    uint32_t n = *r->p & 0x1f;
    if (n >= (size_t)(r->end - r->p)) {
        *rc = PROTO_E_MALFORMED;
        return true;
    }
    o->type = MSGPACK_OBJECT_STR;
    o->via.str.size = n;
    o->via.str.ptr = (const char *)r->p + 1;
    r->p += 1 + n;
    *rc = PROTO_OK;
    return true;
}

static int mp_map(struct mp *r, msgpack_object *o, uint64_t n, uint32_t depth, const uint8_t *start)
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
        int rc;
        if (!mp_fixstr_key(r, &kv->key, &rc)) rc = mp_value(r, &kv->key, depth + 1);
        if (rc != PROTO_OK) return rc;
        if (depth == 1 && r->want_batch && kv->key.type == MSGPACK_OBJECT_STR &&
            kv->key.via.str.size == 5 && memcmp(kv->key.via.str.ptr, "batch", 5) == 0)
            r->batch_next = true;
        rc = mp_value(r, &kv->val, depth + 1);
        if (rc != PROTO_OK) return rc;
    }
    if (r->raw_on && depth == r->raw_depth) raw_note(r, o, start);
    return PROTO_OK;
}

static int mp_value(struct mp *r, msgpack_object *o, uint32_t depth)
{
    bool is_batch = r->batch_next;
    r->batch_next = false;
    if (r->p >= r->end) return PROTO_E_MALFORMED;
    const uint8_t *start = r->p;
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
    if (c >= 0x80 && c <= 0x8f) return mp_map(r, o, c & 0x0f, depth, start);
    if (c >= 0x90 && c <= 0x9f) return mp_array(r, o, c & 0x0f, depth, is_batch, start);
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
        return mp_array(r, o, v, depth, is_batch, start);
    case 0xde:
    case 0xdf:
        return mp_map(r, o, v, depth, start);
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
        .b = b,
        .raw_depth = want_batch ? 4 : 2,
        .raw_on = !want_batch,
    };
    int rc = mp_value(&r, &b->root, 1);
    if (rc != PROTO_OK) return rc;
    if (r.p != r.end) return PROTO_E_TRAILING_DATA;
    return PROTO_OK;
}

/* ---- JSON ------------------------------------------------------------------------------------ */

/* The reader (json_reader.h) writes the tree into the batch's arena; JSON duplicate keys are
 * left to the per-event check, like msgpack's (SPEC §2: they reject that event alone). */
static int decode_json(proto_batch_t *b, proto_json_reader_t *r, const char *body, size_t len,
                       const proto_limits_t *lim)
{
    return proto_json_read(r, body, len, decode_depth_cap(lim), &b->zone, &b->root,
                           &b->json_surrogates, &b->json_big_ints);
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

/* ---- batch-level context and integrations (SPEC §2: merged key by key, the event's own keys
 * win). The merged map is built in the batch's arena and replaces the event's own in its map, so
 * validation's results, filters and the encoder all see one event. */

/* FNV-1a of a key: only to spread keys over the probe table below. */
static uint32_t key_hash(const char *p, uint32_t n)
{
    uint32_t h = 2166136261u;
    for (uint32_t i = 0; i < n; i++)
        h = (h ^ (uint8_t)p[i]) * 16777619u;
    return h;
}

/* The keys of one map, for "is this key there" (open addressing over key indices). Small maps
 * are scanned instead (no table). */
#define MERGE_SCAN_MAX 8

struct keyset {
    const msgpack_object_map *m;
    uint32_t *slot; /* index + 1, 0 empty; NULL: scan */
    uint32_t mask;
};

static bool keyset_has(const struct keyset *ks, const msgpack_object *k)
{
    const msgpack_object_map *m = ks->m;
    if (ks->slot == NULL) {
        for (uint32_t i = 0; i < m->size; i++)
            if (key_is(&m->ptr[i].key, k->via.str.ptr, k->via.str.size)) return true;
        return false;
    }
    for (uint32_t h = key_hash(k->via.str.ptr, k->via.str.size) & ks->mask;;
         h = (h + 1) & ks->mask) {
        uint32_t s = ks->slot[h];
        if (s == 0) return false;
        if (key_is(&m->ptr[s - 1].key, k->via.str.ptr, k->via.str.size)) return true;
    }
}

/* Builds the set over m; the table (when m is large) is malloc'd: free ks->slot after. */
static int keyset_init(struct keyset *ks, const msgpack_object_map *m)
{
    ks->m = m;
    ks->slot = NULL;
    ks->mask = 0;
    if (m->size <= MERGE_SCAN_MAX) return PROTO_OK;
    uint32_t cap = 16;
    while (cap < 2 * m->size)
        cap *= 2;
    ks->slot = calloc(cap, sizeof *ks->slot);
    if (ks->slot == NULL) return PROTO_E_NOMEM;
    ks->mask = cap - 1;
    for (uint32_t i = 0; i < m->size; i++) {
        const msgpack_object *k = &m->ptr[i].key; /* string keys: the event is valid */
        uint32_t h = key_hash(k->via.str.ptr, k->via.str.size) & ks->mask;
        while (ks->slot[h] != 0)
            h = (h + 1) & ks->mask;
        ks->slot[h] = i + 1;
    }
    return PROTO_OK;
}

/* obj's value under key (the event map's own kv), or NULL. */
static msgpack_object_kv *map_kv(const msgpack_object *obj, const char *key, uint32_t n)
{
    for (uint32_t i = 0; i < obj->via.map.size; i++)
        if (key_is(&obj->via.map.ptr[i].key, key, n)) return &obj->via.map.ptr[i];
    return NULL;
}

/* Merges the batch's map add (context or integrations) into valid event ev under key. */
static int merge_into(msgpack_zone *z, proto_event_t *ev, const char *key, uint32_t klen,
                      const msgpack_object *add)
{
    msgpack_object *obj = (msgpack_object *)ev->obj; /* the event lives in the batch's arena */
    msgpack_object_kv *own = map_kv(obj, key, klen);
    if (own != NULL && own->val.type == MSGPACK_OBJECT_NIL) {
        own->val = *add; /* null counts as absent: the batch's map as it is */
        return PROTO_OK;
    }
    if (own == NULL) { /* a new key: the event's map grows by one */
        uint32_t n = obj->via.map.size;
        msgpack_object_kv *kv = msgpack_zone_malloc(z, ((size_t)n + 1) * sizeof *kv);
        if (kv == NULL) return PROTO_E_NOMEM;
        if (n > 0) memcpy(kv, obj->via.map.ptr, (size_t)n * sizeof *kv);
        kv[n].key.type = MSGPACK_OBJECT_STR;
        kv[n].key.via.str.ptr = key; /* a literal: lives longer than the batch */
        kv[n].key.via.str.size = klen;
        kv[n].val = *add;
        obj->via.map.ptr = kv;
        obj->via.map.size = n + 1;
        return PROTO_OK;
    }
    const msgpack_object_map *mine = &own->val.via.map; /* a map: the event is valid */
    struct keyset ks;
    int rc = keyset_init(&ks, mine);
    if (rc != PROTO_OK) return rc;
    uint32_t extra = 0;
    for (uint32_t i = 0; i < add->via.map.size; i++)
        extra += !keyset_has(&ks, &add->via.map.ptr[i].key);
    if (extra > 0) {
        size_t n = (size_t)mine->size + extra;
        msgpack_object_kv *kv = msgpack_zone_malloc(z, n * sizeof *kv);
        if (kv == NULL) {
            rc = PROTO_E_NOMEM;
        } else {
            if (mine->size > 0) memcpy(kv, mine->ptr, (size_t)mine->size * sizeof *kv);
            uint32_t o = mine->size;
            for (uint32_t i = 0; i < add->via.map.size; i++)
                if (!keyset_has(&ks, &add->via.map.ptr[i].key)) kv[o++] = add->via.map.ptr[i];
            own->val.via.map.ptr = kv;
            own->val.via.map.size = (uint32_t)n;
        }
    }
    free(ks.slot);
    return rc;
}

/* A valid string context.groupId of the batch context, the account hint for events whose own
 * context has none. */
static proto_str_t context_group_id(const msgpack_object *ctx)
{
    proto_str_t s = {NULL, 0};
    msgpack_object_kv *kv = ctx != NULL ? map_kv(ctx, "groupId", 7) : NULL;
    if (kv != NULL && kv->val.type == MSGPACK_OBJECT_STR && kv->val.via.str.size >= 1 &&
        kv->val.via.str.size <= 255) {
        s.ptr = kv->val.via.str.ptr;
        s.len = kv->val.via.str.size;
    }
    return s;
}

/* A batch-level map (context, integrations): it is merged into events' records, so it obeys the
 * event rules; false when it does not (its events are rejected, SPEC §2). */
static bool batch_map_ok(const msgpack_object *v, const proto_limits_t *lim, unsigned checks)
{
    return v->type == MSGPACK_OBJECT_MAP &&
           proto_value_check(v, lim->max_depth, lim->event_bytes, checks, NULL) == PROTO_OK;
}

static int envelope_batch(proto_batch_t *b, const proto_limits_t *lim, unsigned checks)
{
    const msgpack_object *batch = NULL, *sent_at = NULL, *context = NULL, *integ = NULL, *wk = NULL;
    const msgpack_object_map *m = &b->root.via.map;
    for (uint32_t i = 0; i < m->size; i++) {
        const msgpack_object *k = &m->ptr[i].key, *v = &m->ptr[i].val;
        const msgpack_object **slot = key_is(k, "batch", 5)           ? &batch
                                      : key_is(k, "sentAt", 6)        ? &sent_at
                                      : key_is(k, "context", 7)       ? &context
                                      : key_is(k, "integrations", 12) ? &integ
                                      : key_is(k, "writeKey", 8)      ? &wk
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
    /* A bad sentAt, context or integrations of a readable batch rejects its events, one by one
     * (each with its reason in the answer and in events_rejected), not the request. */
    proto_envelope_t env = {0};
    if (sent_at != NULL && sent_at->type != MSGPACK_OBJECT_NIL) {
        if (proto_parse_time(sent_at, &b->sent_at_ms))
            b->has_sent_at = true;
        else
            env.bad_sent_at = true;
    }
    env.has_sent_at = b->has_sent_at;
    env.sent_at_ms = b->sent_at_ms;
    if (context != NULL && context->type != MSGPACK_OBJECT_NIL) {
        if (batch_map_ok(context, lim, checks))
            b->context = context;
        else
            env.bad_context = true;
    }
    if (integ != NULL && integ->type != MSGPACK_OBJECT_NIL) {
        if (batch_map_ok(integ, lim, checks))
            b->integrations = integ;
        else
            env.bad_integrations = true;
    }
    size_t n = batch->via.array.size;
    if (n > 0) {
        b->events = msgpack_zone_malloc(&b->zone, n * sizeof(proto_event_t));
        if (b->events == NULL) return PROTO_E_NOMEM;
    }
    proto_str_t ctx_gid = context_group_id(b->context);
    for (size_t i = 0; i < n; i++) {
        proto_event_t *ev = &b->events[i];
        proto_event_validate(ev, &batch->via.array.ptr[i], PROTO_T_NONE, &env, lim, checks);
        if (ev->error != PROTO_OK) continue; /* a rejected event's raw copy is as received */
        if (b->raw_tab != NULL && b->raw_first != NULL && i < b->n_raw_first) {
            ev->raw = b->raw_tab + b->raw_first[i];
            ev->n_raw = b->raw_first[i + 1] - b->raw_first[i];
        }
        int rc = PROTO_OK;
        if (b->context != NULL && b->context->via.map.size > 0) {
            rc = merge_into(&b->zone, ev, "context", 7, b->context);
            if (ev->context_group_id.ptr == NULL) ev->context_group_id = ctx_gid;
        }
        if (rc == PROTO_OK && b->integrations != NULL && b->integrations->via.map.size > 0)
            rc = merge_into(&b->zone, ev, "integrations", 12, b->integrations);
        if (rc != PROTO_OK) return rc;
    }
    b->n_events = n;
    return PROTO_OK;
}

/* Single-call body: the body is the event; Segment SDKs put writeKey, sentAt and context into it.
 */
static int envelope_single(proto_batch_t *b, proto_type_t kind, const proto_limits_t *lim,
                           unsigned checks)
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
    /* The event's own sentAt is validated as the event's (E_BAD_EVENT_SENT_AT). */
    proto_event_validate(&b->events[0], &b->root, kind, NULL, lim, checks);
    if (b->events[0].error == PROTO_OK && b->raw_tab != NULL) {
        b->events[0].raw = b->raw_tab;
        b->events[0].n_raw = b->n_raw;
    }
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

/* Everything after the arena is in place (b->zone initialized, the rest of b zeroed). json: the
 * reader for a JSON body (NULL for msgpack). */
static int decode_body(proto_batch_t *b, proto_json_reader_t *json, const char *body, size_t len,
                       proto_format_t fmt, proto_type_t kind, const proto_limits_t *lim)
{
    int rc;
    if (fmt == PROTO_FMT_JSON)
        rc = json != NULL ? decode_json(b, json, body, len, lim) : PROTO_E_NOMEM;
    else
        rc = decode_msgpack(b, body, len, lim, kind == PROTO_T_NONE);
    if (rc == PROTO_OK && b->root.type != MSGPACK_OBJECT_MAP) rc = PROTO_E_NOT_A_MAP;
    /* Every body is checked for duplicate keys; a JSON body's UTF-8 was validated by the reader
     * (simdjson validates the whole text), so only msgpack strings need the per-string check. */
    unsigned checks = PROTO_CHECK_DUP_KEYS | (fmt == PROTO_FMT_JSON ? 0u : PROTO_CHECK_UTF8);
    if (rc == PROTO_OK)
        rc = kind == PROTO_T_NONE ? envelope_batch(b, lim, checks)
                                  : envelope_single(b, kind, lim, checks);
    if (rc != PROTO_OK) {
        b->events = NULL;
        b->n_events = 0;
        b->context = NULL;
        b->integrations = NULL;
        b->write_key.ptr = NULL;
        b->write_key.len = 0;
        b->has_sent_at = false;
        b->json_surrogates = 0;
        b->json_big_ints = 0;
        b->raw_tab = NULL;
        b->n_raw = b->cap_raw = 0;
        b->raw_first = NULL;
        b->n_raw_first = 0;
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
    /* One-off decode: a reader for this body only (a loop keeps one in its proto_arena_t). */
    proto_json_reader_t *json = fmt == PROTO_FMT_JSON ? proto_json_reader_new() : NULL;
    rc = decode_body(b, json, body, len, fmt, kind, lim);
    proto_json_reader_free(json);
    return rc;
}

/* ---- reusable arena ------------------------------------------------------------------------- */

void proto_arena_init(proto_arena_t *a)
{
    memset(a, 0, sizeof *a);
}

void proto_arena_free(proto_arena_t *a)
{
    if (a->held) msgpack_zone_destroy(&a->zone);
    proto_json_reader_free(a->json);
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
    if (fmt == PROTO_FMT_JSON && a->json == NULL) a->json = proto_json_reader_new();
    return decode_body(b, a->json, body, len, fmt, kind, lim);
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
