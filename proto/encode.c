/*
 * encode.c — the normalized Kafka record (msgpack through msgpack_packer, or JSON through our own
 * writer over the msgpack_object tree) and the rejected-event record (JSON).
 *
 * The JSON writer has two modes. Strict: for valid events, whose keys are strings and whose
 * strings are known-valid UTF-8 (validated at decode), so it only escapes. Lenient: for the raw
 * copy of a REJECTED event, which may hold anything a body can: non-string keys (written as the
 * string of their JSON text), invalid UTF-8 (each bad byte becomes U+FFFD), bin/ext (null).
 * Floats: %.17g (float32: %.9g) round-trips in the "C" numeric locale, which is what a process
 * has unless it calls setlocale(); a float keeps a ".0" so it decodes back as a float;
 * NaN and ±Inf (possible in msgpack only) become null.
 */
#include "proto.h"

#include <math.h>
#include <stdio.h>
#include <string.h>

/* ---- JSON writer ----------------------------------------------------------------------------- */

#define APPEND_LIT(o, lit) base_buf_append((o), (lit), sizeof(lit) - 1)

/* The writers below return base_buf_t's codes; proto's callers get PROTO_E_EVENT_TOO_LARGE when
 * the record reached out's cap and PROTO_E_NOMEM when memory ran out. */
static int out_err(int rc)
{
    return rc == BASE_E_TOO_LARGE ? PROTO_E_EVENT_TOO_LARGE
           : rc == BASE_E_NOMEM   ? PROTO_E_NOMEM
                                  : rc;
}

static int j_value(base_buf_t *o, const msgpack_object *v, bool lenient, uint32_t depth);

/* Strict (valid events: UTF-8 checked at decode) or lenient (a rejected event's raw copy: each
 * bad byte becomes U+FFFD): the base layer's JSON string writer either way. */
static int j_str(base_buf_t *o, const char *s, size_t n, bool lenient)
{
    return lenient ? base_json_str(o, s, n) : base_json_str_utf8(o, s, n);
}

static int j_u64(base_buf_t *o, uint64_t u, bool neg)
{
    char tmp[24];
    size_t i = sizeof tmp;
    do {
        tmp[--i] = (char)('0' + u % 10);
        u /= 10;
    } while (u != 0);
    if (neg) tmp[--i] = '-';
    return base_buf_append(o, tmp + i, sizeof tmp - i);
}

static int j_float(base_buf_t *o, double d, bool f32)
{
    if (!isfinite(d)) return APPEND_LIT(o, "null");
    char tmp[40];
    int n = snprintf(tmp, sizeof tmp - 2, f32 ? "%.9g" : "%.17g", d);
    if (n <= 0 || (size_t)n >= sizeof tmp - 2) return PROTO_E_NOMEM;
    if (strpbrk(tmp, ".eE") == NULL) {
        tmp[n++] = '.';
        tmp[n++] = '0';
    }
    return base_buf_append(o, tmp, (size_t)n);
}

/* A non-string key of a rejected event's raw copy: the string of the key's own JSON text. */
static int j_key_lenient(base_buf_t *o, const msgpack_object *k, uint32_t depth)
{
    if (k->type == MSGPACK_OBJECT_STR) return j_str(o, k->via.str.ptr, k->via.str.size, true);
    base_buf_t tmp;
    base_buf_init(&tmp, o->max);
    int rc = j_value(&tmp, k, true, depth);
    if (rc == PROTO_OK) rc = j_str(o, tmp.data, tmp.len, true);
    base_buf_free(&tmp);
    return rc;
}

static int j_value(base_buf_t *o, const msgpack_object *v, bool lenient, uint32_t depth)
{
    switch (v->type) {
    case MSGPACK_OBJECT_NIL:
        return APPEND_LIT(o, "null");
    case MSGPACK_OBJECT_BOOLEAN:
        return v->via.boolean ? APPEND_LIT(o, "true") : APPEND_LIT(o, "false");
    case MSGPACK_OBJECT_POSITIVE_INTEGER:
        return j_u64(o, v->via.u64, false);
    case MSGPACK_OBJECT_NEGATIVE_INTEGER:
        return j_u64(o, (uint64_t)0 - (uint64_t)v->via.i64, true);
    case MSGPACK_OBJECT_FLOAT32:
    case MSGPACK_OBJECT_FLOAT64:
        return j_float(o, v->via.f64, v->type == MSGPACK_OBJECT_FLOAT32);
    case MSGPACK_OBJECT_STR:
        return j_str(o, v->via.str.ptr, v->via.str.size, lenient);
    case MSGPACK_OBJECT_ARRAY: {
        int rc = base_buf_append(o, "[", 1);
        for (uint32_t i = 0; rc == PROTO_OK && i < v->via.array.size; i++) {
            if (i > 0) rc = base_buf_append(o, ",", 1);
            if (rc == PROTO_OK) rc = j_value(o, &v->via.array.ptr[i], lenient, depth + 1);
        }
        return rc == PROTO_OK ? base_buf_append(o, "]", 1) : rc;
    }
    case MSGPACK_OBJECT_MAP: {
        int rc = base_buf_append(o, "{", 1);
        for (uint32_t i = 0; rc == PROTO_OK && i < v->via.map.size; i++) {
            const msgpack_object_kv *kv = &v->via.map.ptr[i];
            if (i > 0) rc = base_buf_append(o, ",", 1);
            if (rc == PROTO_OK)
                rc = lenient ? j_key_lenient(o, &kv->key, depth + 1)
                             : j_str(o, kv->key.via.str.ptr, kv->key.via.str.size, false);
            if (rc == PROTO_OK) rc = base_buf_append(o, ":", 1);
            if (rc == PROTO_OK) rc = j_value(o, &kv->val, lenient, depth + 1);
        }
        return rc == PROTO_OK ? base_buf_append(o, "}", 1) : rc;
    }
    default: /* bin, ext: only reachable in a rejected event's raw copy */
        return APPEND_LIT(o, "null");
    }
}

/* ---- normalized record ----------------------------------------------------------------------- */

static bool key_eq(const msgpack_object *k, const char *lit, size_t n)
{
    return k->type == MSGPACK_OBJECT_STR && k->via.str.size == n &&
           memcmp(k->via.str.ptr, lit, n) == 0;
}

#define KEY_IS(k, lit) key_eq((k), (lit), sizeof(lit) - 1)

/* One field we add to the record. */
struct extra {
    const char *key;
    size_t key_len;
    const char *str; /* string value, or NULL when obj is used */
    size_t str_len;
    const msgpack_object *obj;
};

struct plan {
    struct extra x[16];
    size_t nx;
    char ts[4][25];
    const proto_event_t *ev;
    bool add_type;
};

static const msgpack_object TRUE_OBJ = {.type = MSGPACK_OBJECT_BOOLEAN, .via.boolean = true};

static void add_str(struct plan *p, const char *key, const char *s, size_t n)
{
    struct extra *e = &p->x[p->nx++];
    e->key = key;
    e->key_len = strlen(key);
    e->str = s;
    e->str_len = n;
    e->obj = NULL;
}

static void add_obj(struct plan *p, const char *key, const msgpack_object *obj)
{
    struct extra *e = &p->x[p->nx++];
    e->key = key;
    e->key_len = strlen(key);
    e->str = NULL;
    e->str_len = 0;
    e->obj = obj;
}

/* Keys of the event as received that the record does not carry: writeKey is a secret; the rest
 * are set by the collector (appended by plan_record) and must not be forged by a client. */
static bool dropped(const struct plan *p, const msgpack_object *k)
{
    if (k->type != MSGPACK_OBJECT_STR) return false;
    const proto_event_t *ev = p->ev;
    switch (k->via.str.size) {
    case 4:
        return p->add_type && KEY_IS(k, "type");
    case 6:
        return KEY_IS(k, "source") || KEY_IS(k, "sentAt") ||
               ((ev->rewrite & PROTO_RW_USER_ID) && KEY_IS(k, "userId"));
    case 7:
        return (ev->rewrite & PROTO_RW_GROUP_ID) && KEY_IS(k, "groupId");
    case 8:
        return KEY_IS(k, "writeKey");
    case 9:
        return KEY_IS(k, "timestamp") || KEY_IS(k, "accountId") ||
               (ev->message_id_generated && KEY_IS(k, "messageId"));
    case 10:
        return KEY_IS(k, "receivedAt");
    case 11:
        return (ev->rewrite & PROTO_RW_ANONYMOUS_ID) && KEY_IS(k, "anonymousId");
    case 17:
        return KEY_IS(k, "originalTimestamp");
    case 18:
        return KEY_IS(k, "messageIdGenerated");
    default:
        return false;
    }
}

static void add_id(struct plan *p, unsigned flag, const char *key, proto_str_t v)
{
    if ((p->ev->rewrite & flag) && v.ptr != NULL) add_str(p, key, v.ptr, v.len);
}

static void plan_record(struct plan *p, const proto_event_t *ev)
{
    /* Not memset: x[] and ts[] are written before they are read, and zeroing ~800 bytes per
     * event showed in the profile. */
    p->nx = 0;
    p->add_type = false;
    p->ev = ev;
    base_iso8601_format(ev->received_at_ms, p->ts[0]);
    base_iso8601_format(ev->norm_timestamp_ms, p->ts[1]);
    add_str(p, "receivedAt", p->ts[0], 24);
    add_str(p, "timestamp", p->ts[1], 24);
    if (ev->has_timestamp) { /* the client's time as sent (Segment's originalTimestamp) */
        base_iso8601_format(ev->timestamp_ms, p->ts[2]);
        add_str(p, "originalTimestamp", p->ts[2], 24);
    }
    if (ev->has_sent_at) {
        base_iso8601_format(ev->sent_at_ms, p->ts[3]);
        add_str(p, "sentAt", p->ts[3], 24);
    }
    if (ev->source.ptr != NULL) add_str(p, "source", ev->source.ptr, ev->source.len);
    if (ev->account_id.ptr != NULL) add_str(p, "accountId", ev->account_id.ptr, ev->account_id.len);
    bool has_type = false;
    const msgpack_object_map *m = &ev->obj->via.map;
    for (uint32_t i = 0; i < m->size && !has_type; i++)
        has_type = m->ptr[i].val.type != MSGPACK_OBJECT_NIL && KEY_IS(&m->ptr[i].key, "type");
    /* A single-call body may leave the type to the endpoint; the record always states it. */
    if (!has_type) {
        p->add_type = true;
        const char *tn = proto_type_name(ev->type);
        add_str(p, "type", tn, strlen(tn));
    }
    if (ev->message_id_generated && ev->message_id.ptr != NULL) {
        add_str(p, "messageId", ev->message_id.ptr, ev->message_id.len);
        add_obj(p, "messageIdGenerated", &TRUE_OBJ);
    }
    add_id(p, PROTO_RW_USER_ID, "userId", ev->user_id);
    add_id(p, PROTO_RW_ANONYMOUS_ID, "anonymousId", ev->anonymous_id);
    add_id(p, PROTO_RW_GROUP_ID, "groupId", ev->group_id);
}

/*
 * msgpack writer. Our own instead of msgpack_pack_object(): that one calls the write callback
 * once per token (a function pointer and a bounds check for every header byte), which made it
 * the top of the collector's profile. Here each token makes one inline room check and writes
 * directly; output is the same minimal encoding msgpack-c produces (str8 for 32..255 bytes).
 */
static inline int room(base_buf_t *o, size_t n)
{
    if (n <= o->cap - o->len && n <= o->max - o->len) return PROTO_OK;
    return base_buf_reserve(o, n);
}

static inline void put_be(base_buf_t *o, uint8_t code, uint64_t v, size_t n)
{
    char *d = o->data + o->len;
    d[0] = (char)code;
    for (size_t i = 0; i < n; i++)
        d[1 + i] = (char)(v >> (8 * (n - 1 - i)));
    o->len += 1 + n;
}

static inline int mp_hdr(base_buf_t *o, uint32_t n, uint8_t fix, uint32_t fix_max, uint8_t c8,
                         uint8_t c16, uint8_t c32)
{
    int rc = room(o, 5);
    if (rc != PROTO_OK) return rc;
    if (n <= fix_max)
        o->data[o->len++] = (char)(fix | n);
    else if (c8 != 0 && n < 256)
        put_be(o, c8, n, 1);
    else if (n < 65536)
        put_be(o, c16, n, 2);
    else
        put_be(o, c32, n, 4);
    return PROTO_OK;
}

/* Copies n bytes; up to 16 as two overlapping loads and stores (most keys and ids), so the common
 * short string costs no call into libc's memcpy (issue 11: 40 strings per event). */
static inline void put_bytes(char *d, const char *s, size_t n)
{
    if (n > 16) {
        memcpy(d, s, n);
    } else if (n >= 8) {
        uint64_t a, b;
        memcpy(&a, s, 8);
        memcpy(&b, s + n - 8, 8);
        memcpy(d, &a, 8);
        memcpy(d + n - 8, &b, 8);
    } else if (n >= 4) {
        uint32_t a, b;
        memcpy(&a, s, 4);
        memcpy(&b, s + n - 4, 4);
        memcpy(d, &a, 4);
        memcpy(d + n - 4, &b, 4);
    } else if (n > 0) {
        d[0] = s[0];
        d[n / 2] = s[n / 2];
        d[n - 1] = s[n - 1];
    }
}

static int mp_str(base_buf_t *o, const char *s, uint32_t n)
{
    int rc = room(o, (size_t)n + 5);
    if (rc != PROTO_OK) return rc;
    char *d = o->data + o->len;
    if (n < 32) { /* fixstr: the header is one byte */
        d[0] = (char)(0xa0 | n);
        o->len += 1;
    } else {
        mp_hdr(o, n, 0xa0, 31, 0xd9, 0xda, 0xdb); /* cannot fail: room above */
    }
    put_bytes(o->data + o->len, s, n);
    o->len += n;
    return PROTO_OK;
}

static int mp_obj(base_buf_t *o, const msgpack_object *v)
{
    int rc = room(o, 9);
    if (rc != PROTO_OK) return rc;
    switch (v->type) {
    case MSGPACK_OBJECT_NIL:
        o->data[o->len++] = (char)0xc0;
        return PROTO_OK;
    case MSGPACK_OBJECT_BOOLEAN:
        o->data[o->len++] = (char)(v->via.boolean ? 0xc3 : 0xc2);
        return PROTO_OK;
    case MSGPACK_OBJECT_POSITIVE_INTEGER: {
        uint64_t u = v->via.u64;
        if (u < 128)
            o->data[o->len++] = (char)u;
        else if (u < 256)
            put_be(o, 0xcc, u, 1);
        else if (u < 65536)
            put_be(o, 0xcd, u, 2);
        else if (u <= UINT32_MAX)
            put_be(o, 0xce, u, 4);
        else
            put_be(o, 0xcf, u, 8);
        return PROTO_OK;
    }
    case MSGPACK_OBJECT_NEGATIVE_INTEGER: {
        int64_t i = v->via.i64;
        if (i >= -32)
            o->data[o->len++] = (char)(uint8_t)i;
        else if (i >= -128)
            put_be(o, 0xd0, (uint64_t)i, 1);
        else if (i >= -32768)
            put_be(o, 0xd1, (uint64_t)i, 2);
        else if (i >= INT32_MIN)
            put_be(o, 0xd2, (uint64_t)i, 4);
        else
            put_be(o, 0xd3, (uint64_t)i, 8);
        return PROTO_OK;
    }
    case MSGPACK_OBJECT_FLOAT32: {
        float f = (float)v->via.f64;
        uint32_t u;
        memcpy(&u, &f, sizeof u);
        put_be(o, 0xca, u, 4);
        return PROTO_OK;
    }
    case MSGPACK_OBJECT_FLOAT64: {
        uint64_t u;
        memcpy(&u, &v->via.f64, sizeof u);
        put_be(o, 0xcb, u, 8);
        return PROTO_OK;
    }
    case MSGPACK_OBJECT_STR:
        return mp_str(o, v->via.str.ptr, v->via.str.size);
    case MSGPACK_OBJECT_ARRAY:
        rc = mp_hdr(o, v->via.array.size, 0x90, 15, 0, 0xdc, 0xdd);
        for (uint32_t i = 0; rc == PROTO_OK && i < v->via.array.size; i++)
            rc = mp_obj(o, &v->via.array.ptr[i]);
        return rc;
    case MSGPACK_OBJECT_MAP:
        rc = mp_hdr(o, v->via.map.size, 0x80, 15, 0, 0xde, 0xdf);
        for (uint32_t i = 0; rc == PROTO_OK && i < v->via.map.size; i++) {
            rc = mp_obj(o, &v->via.map.ptr[i].key);
            if (rc == PROTO_OK) rc = mp_obj(o, &v->via.map.ptr[i].val);
        }
        return rc;
    default: /* bin/ext: validation rejects them, so a record never holds one */
        return PROTO_E_BAD_VALUE;
    }
}

/* The raw span of v when v is a container of the event exactly as decoded from a msgpack body
 * (same element array, same count: the tree is edited copy-on-write, so anything changed inside
 * v gave it a new array), else NULL. */
static const proto_raw_t *raw_of(const proto_event_t *ev, const msgpack_object *v)
{
    const void *elems;
    uint32_t n;
    if (v->type == MSGPACK_OBJECT_MAP) {
        elems = v->via.map.ptr;
        n = v->via.map.size;
    } else if (v->type == MSGPACK_OBJECT_ARRAY) {
        elems = v->via.array.ptr;
        n = v->via.array.size;
    } else {
        return NULL;
    }
    for (uint32_t i = 0; i < ev->n_raw; i++)
        if (ev->raw[i].elems == elems && ev->raw[i].n == n) return &ev->raw[i];
    return NULL;
}

/* use_raw: top-level containers still as received are copied from the body (validated, so the
 * same values; only a sender's non-minimal encoding would make them longer than ours). */
static int encode_msgpack(const struct plan *p, const msgpack_object *obj, base_buf_t *out,
                          bool use_raw)
{
    const msgpack_object_map *m = &obj->via.map;
    /* Which of the first 64 keys are dropped, decided once (the count goes first in msgpack). */
    uint64_t drop = 0;
    uint32_t kept = 0;
    for (uint32_t i = 0; i < m->size; i++) {
        bool d = dropped(p, &m->ptr[i].key);
        if (d && i < 64) drop |= 1ull << i;
        kept += !d;
    }
    int rc = mp_hdr(out, kept + (uint32_t)p->nx, 0x80, 15, 0, 0xde, 0xdf);
    for (uint32_t i = 0; rc == PROTO_OK && i < m->size; i++) {
        const msgpack_object_kv *kv = &m->ptr[i];
        if (i < 64 ? (drop >> i) & 1 : dropped(p, &kv->key)) continue;
        rc = mp_obj(out, &kv->key);
        const proto_raw_t *raw = use_raw ? raw_of(p->ev, &kv->val) : NULL;
        if (rc == PROTO_OK && raw != NULL) {
            rc = room(out, raw->len);
            if (rc == PROTO_OK) {
                memcpy(out->data + out->len, raw->bytes, raw->len);
                out->len += raw->len;
            }
        } else if (rc == PROTO_OK) {
            rc = mp_obj(out, &kv->val);
        }
    }
    for (size_t i = 0; rc == PROTO_OK && i < p->nx; i++) {
        const struct extra *e = &p->x[i];
        rc = mp_str(out, e->key, (uint32_t)e->key_len);
        if (rc == PROTO_OK)
            rc = e->obj != NULL ? mp_obj(out, e->obj) : mp_str(out, e->str, (uint32_t)e->str_len);
    }
    return rc;
}

static int encode_json(const struct plan *p, const msgpack_object *obj, base_buf_t *out)
{
    const msgpack_object_map *m = &obj->via.map;
    int rc = base_buf_append(out, "{", 1);
    bool first = true;
    for (uint32_t i = 0; rc == PROTO_OK && i < m->size; i++) {
        const msgpack_object_kv *kv = &m->ptr[i];
        if (dropped(p, &kv->key)) continue;
        if (!first) rc = base_buf_append(out, ",", 1);
        first = false;
        if (rc == PROTO_OK) rc = j_str(out, kv->key.via.str.ptr, kv->key.via.str.size, false);
        if (rc == PROTO_OK) rc = base_buf_append(out, ":", 1);
        if (rc == PROTO_OK) rc = j_value(out, &kv->val, false, 1);
    }
    for (size_t i = 0; rc == PROTO_OK && i < p->nx; i++) {
        const struct extra *e = &p->x[i];
        if (!first) rc = base_buf_append(out, ",", 1);
        first = false;
        if (rc == PROTO_OK) rc = j_str(out, e->key, e->key_len, false);
        if (rc == PROTO_OK) rc = base_buf_append(out, ":", 1);
        if (rc == PROTO_OK)
            rc = e->obj != NULL ? j_value(out, e->obj, false, 1)
                                : j_str(out, e->str, e->str_len, true);
    }
    if (rc == PROTO_OK) rc = base_buf_append(out, "}", 1);
    return rc;
}

int proto_encode_event(const proto_event_t *ev, proto_format_t fmt, base_buf_t *out)
{
    /* Only a validated event has string keys and valid UTF-8 throughout (strict writer). */
    if (ev->error != PROTO_OK || ev->obj == NULL || ev->obj->type != MSGPACK_OBJECT_MAP)
        return PROTO_E_EVENT_NOT_A_MAP;
    struct plan p;
    plan_record(&p, ev);
    size_t start = out->len;
    int rc;
    if (fmt == PROTO_FMT_JSON) {
        rc = encode_json(&p, ev->obj, out);
    } else {
        rc = encode_msgpack(&p, ev->obj, out, ev->n_raw > 0);
        if (rc == BASE_E_TOO_LARGE && ev->n_raw > 0) {
            /* A sender's longer-than-minimal encoding may not fit where ours does. */
            out->len = start;
            rc = encode_msgpack(&p, ev->obj, out, false);
        }
    }
    if (rc != PROTO_OK) out->len = start;
    return out_err(rc);
}

/* ---- rejected record ------------------------------------------------------------------------- */

int proto_json_str(base_buf_t *out, const char *s, size_t len)
{
    if (s == NULL || !base_utf8_valid(s, len)) return out_err(APPEND_LIT(out, "null"));
    return out_err(base_json_str_utf8(out, s, len));
}

/* The raw copy of a rejected event: the event map as received, but for a top-level writeKey
 * (a single-event call carries it in the event itself), which is a secret and is dropped as the
 * accepted record drops it. Anything that is not a map is written as it is. */
static int j_raw_event(base_buf_t *o, const msgpack_object *v)
{
    if (v->type != MSGPACK_OBJECT_MAP) return j_value(o, v, true, 1);
    int rc = base_buf_append(o, "{", 1);
    bool first = true;
    for (uint32_t i = 0; rc == PROTO_OK && i < v->via.map.size; i++) {
        const msgpack_object_kv *kv = &v->via.map.ptr[i];
        if (KEY_IS(&kv->key, "writeKey")) continue;
        if (!first) rc = base_buf_append(o, ",", 1);
        first = false;
        if (rc == PROTO_OK) rc = j_key_lenient(o, &kv->key, 2);
        if (rc == PROTO_OK) rc = base_buf_append(o, ":", 1);
        if (rc == PROTO_OK) rc = j_value(o, &kv->val, true, 2);
    }
    return rc == PROTO_OK ? base_buf_append(o, "}", 1) : rc;
}

int proto_encode_rejected(const proto_event_t *ev, base_buf_t *out)
{
    size_t start = out->len;
    char ts[25];
    int err = ev->error != PROTO_OK ? ev->error : PROTO_E_MALFORMED;
    const char *code = proto_err_code(err), *msg = proto_err_message(err);
    int rc = APPEND_LIT(out, "{\"error\":");
    if (rc == PROTO_OK) rc = j_str(out, code, strlen(code), false);
    if (rc == PROTO_OK) rc = APPEND_LIT(out, ",\"message\":");
    if (rc == PROTO_OK) rc = j_str(out, msg, strlen(msg), false);
    if (rc == PROTO_OK) rc = APPEND_LIT(out, ",\"source\":");
    if (rc == PROTO_OK)
        rc = ev->source.ptr != NULL ? j_str(out, ev->source.ptr, ev->source.len, true)
                                    : APPEND_LIT(out, "null");
    if (rc == PROTO_OK) rc = APPEND_LIT(out, ",\"receivedAt\":\"");
    if (rc == PROTO_OK) rc = base_buf_append(out, ts, base_iso8601_format(ev->received_at_ms, ts));
    if (rc == PROTO_OK) rc = APPEND_LIT(out, "\",\"raw\":");
    if (rc != PROTO_OK) {
        out->len = start;
        return out_err(rc);
    }
    size_t raw_start = out->len;
    rc = ev->obj != NULL ? j_raw_event(out, ev->obj) : APPEND_LIT(out, "null");
    if (rc == PROTO_OK) rc = base_buf_append(out, "}", 1);
    if (rc != PROTO_OK) {
        /* The raw event does not fit the record's cap: keep the reason, say it was cut. */
        out->len = raw_start;
        rc = APPEND_LIT(out, "null,\"rawTruncated\":true}");
        if (rc != PROTO_OK) out->len = start;
    }
    return out_err(rc);
}
