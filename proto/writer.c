/*
 * writer.c — msgpack encoding of events and batches (see writer.h for the contracts).
 * Hand-written encoders rather than msgpack-c's packer: the SDK calls them on the application's
 * thread for every event, they must write into a bounded buffer with all-or-nothing semantics,
 * and they stay tiny (libsluice's size budget). Only writer_msgpack_to_json() uses msgpack-c.
 */
#include "writer.h"

#include <math.h>
#include <msgpack.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

const char *writer_strerror(int err)
{
    switch (err) {
#define WRITER_X_CASE(name, val, msg)                                                              \
    case val:                                                                                      \
        return msg;
        WRITER_ERRORS(WRITER_X_CASE)
#undef WRITER_X_CASE
    }
    return "unknown error";
}

/* Buffer failures pass through as writer errors: the codes are the same numbers. */
_Static_assert((int)WRITER_E_NOMEM == (int)BASE_E_NOMEM, "writer and base share the NOMEM code");
_Static_assert((int)WRITER_E_TOO_LARGE == (int)BASE_E_TOO_LARGE,
               "writer and base share the TOO_LARGE code");
_Static_assert((int)WRITER_E_INVAL == (int)BASE_E_INVAL, "writer and base share the INVAL code");

/* Big-endian stores into a reserved area. */
static void be16(unsigned char *p, uint16_t v)
{
    p[0] = (unsigned char)(v >> 8);
    p[1] = (unsigned char)v;
}

static void be32(unsigned char *p, uint32_t v)
{
    p[0] = (unsigned char)(v >> 24);
    p[1] = (unsigned char)(v >> 16);
    p[2] = (unsigned char)(v >> 8);
    p[3] = (unsigned char)v;
}

static void be64(unsigned char *p, uint64_t v)
{
    be32(p, (uint32_t)(v >> 32));
    be32(p + 4, (uint32_t)v);
}

/* Writes a one-byte tag followed by an n-byte big-endian value (n = 0, 1, 2, 4 or 8). */
static int tagged(base_buf_t *b, unsigned char tag, uint64_t v, int n)
{
    int rc = base_buf_reserve(b, 1 + (size_t)n);
    if (rc) return rc;
    unsigned char *p = (unsigned char *)b->data + b->len;
    p[0] = tag;
    switch (n) {
    case 1:
        p[1] = (unsigned char)v;
        break;
    case 2:
        be16(p + 1, (uint16_t)v);
        break;
    case 4:
        be32(p + 1, (uint32_t)v);
        break;
    case 8:
        be64(p + 1, v);
        break;
    default:
        break;
    }
    b->len += 1 + (size_t)n;
    return WRITER_OK;
}

int writer_nil(base_buf_t *b)
{
    return tagged(b, 0xc0, 0, 0);
}

int writer_bool(base_buf_t *b, bool v)
{
    return tagged(b, v ? 0xc3 : 0xc2, 0, 0);
}

int writer_uint(base_buf_t *b, uint64_t v)
{
    if (v < 128) return tagged(b, (unsigned char)v, 0, 0);
    if (v <= UINT8_MAX) return tagged(b, 0xcc, v, 1);
    if (v <= UINT16_MAX) return tagged(b, 0xcd, v, 2);
    if (v <= UINT32_MAX) return tagged(b, 0xce, v, 4);
    return tagged(b, 0xcf, v, 8);
}

int writer_int(base_buf_t *b, int64_t v)
{
    if (v >= 0) return writer_uint(b, (uint64_t)v);
    if (v >= -32) return tagged(b, (unsigned char)(0xe0 | (v & 0x1f)), 0, 0);
    if (v >= INT8_MIN) return tagged(b, 0xd0, (uint64_t)v & 0xff, 1);
    if (v >= INT16_MIN) return tagged(b, 0xd1, (uint64_t)v & 0xffff, 2);
    if (v >= INT32_MIN) return tagged(b, 0xd2, (uint64_t)v & 0xffffffffu, 4);
    return tagged(b, 0xd3, (uint64_t)v, 8);
}

int writer_double(base_buf_t *b, double v)
{
    uint64_t bits;
    memcpy(&bits, &v, sizeof bits);
    return tagged(b, 0xcb, bits, 8);
}

size_t writer_str_size(size_t len)
{
    if (len < 32) return 1 + len;
    if (len <= UINT8_MAX) return 2 + len;
    if (len <= UINT16_MAX) return 3 + len;
    return 5 + len;
}

int writer_str(base_buf_t *b, const char *s, size_t len)
{
    if (len > UINT32_MAX) return WRITER_E_TOO_LARGE;
    int rc = base_buf_reserve(b, writer_str_size(len));
    if (rc) return rc;
    /* reserve succeeded for header + payload, so neither step below can fail */
    if (len < 32)
        (void)tagged(b, (unsigned char)(0xa0 | len), 0, 0);
    else if (len <= UINT8_MAX)
        (void)tagged(b, 0xd9, len, 1);
    else if (len <= UINT16_MAX)
        (void)tagged(b, 0xda, len, 2);
    else
        (void)tagged(b, 0xdb, len, 4);
    if (len) memcpy(b->data + b->len, s, len);
    b->len += len;
    return WRITER_OK;
}

int writer_cstr(base_buf_t *b, const char *s)
{
    return s ? writer_str(b, s, strlen(s)) : writer_nil(b);
}

int writer_map_header(base_buf_t *b, uint32_t n)
{
    if (n < 16) return tagged(b, (unsigned char)(0x80 | n), 0, 0);
    if (n <= UINT16_MAX) return tagged(b, 0xde, n, 2);
    return tagged(b, 0xdf, n, 4);
}

int writer_array_header(base_buf_t *b, uint32_t n)
{
    if (n < 16) return tagged(b, (unsigned char)(0x90 | n), 0, 0);
    if (n <= UINT16_MAX) return tagged(b, 0xdc, n, 2);
    return tagged(b, 0xdd, n, 4);
}

static size_t container_header_size(uint32_t n)
{
    return n < 16 ? 1 : n <= UINT16_MAX ? 3 : 5;
}

int writer_raw(base_buf_t *b, const void *p, size_t n)
{
    return base_buf_append(b, p, n);
}

int writer_map_open(base_buf_t *b, size_t *pos)
{
    *pos = b->len;
    return tagged(b, 0xdf, 0, 4);
}

int writer_array_open(base_buf_t *b, size_t *pos)
{
    *pos = b->len;
    return tagged(b, 0xdd, 0, 4);
}

void writer_close(base_buf_t *b, size_t pos, uint32_t count)
{
    be32((unsigned char *)b->data + pos + 1, count);
}

static size_t int_size(int64_t v)
{
    if (v >= 0) {
        uint64_t u = (uint64_t)v;
        return u < 128 ? 1 : u <= UINT8_MAX ? 2 : u <= UINT16_MAX ? 3 : u <= UINT32_MAX ? 5 : 9;
    }
    return v >= -32 ? 1 : v >= INT8_MIN ? 2 : v >= INT16_MIN ? 3 : v >= INT32_MIN ? 5 : 9;
}

/* The event's optional fields, in encoding order; NULL-terminated key list drives both the size
 * computation and the encoder so they cannot disagree. */
#define EVENT_STR_FIELDS(X)                                                                        \
    X("type", type)                                                                                \
    X("messageId", message_id)                                                                     \
    X("userId", user_id)                                                                           \
    X("anonymousId", anonymous_id)                                                                 \
    X("event", event)                                                                              \
    X("name", name)                                                                                \
    X("groupId", group_id)                                                                         \
    X("previousId", previous_id)

#define EVENT_BLOB_FIELDS(X)                                                                       \
    X("properties", properties)                                                                    \
    X("traits", traits)                                                                            \
    X("context", context)

static uint32_t event_field_count(const writer_event_t *ev)
{
    uint32_t n = ev->has_timestamp ? 1 : 0;
#define COUNT_STR(key, f)  n += ev->f != NULL;
#define COUNT_BLOB(key, f) n += ev->f != NULL && ev->f##_len > 0;
    EVENT_STR_FIELDS(COUNT_STR)
    EVENT_BLOB_FIELDS(COUNT_BLOB)
#undef COUNT_STR
#undef COUNT_BLOB
    return n;
}

size_t writer_event_size(const writer_event_t *ev)
{
    uint32_t n = event_field_count(ev);
    size_t sz = container_header_size(n);
#define SIZE_STR(key, f)                                                                           \
    if (ev->f) sz += writer_str_size(sizeof key - 1) + writer_str_size(strlen(ev->f));
#define SIZE_BLOB(key, f)                                                                          \
    if (ev->f && ev->f##_len) sz += writer_str_size(sizeof key - 1) + ev->f##_len;
    EVENT_STR_FIELDS(SIZE_STR)
    if (ev->has_timestamp)
        sz += writer_str_size(sizeof "timestamp" - 1) + int_size(ev->timestamp_ms);
    EVENT_BLOB_FIELDS(SIZE_BLOB)
#undef SIZE_STR
#undef SIZE_BLOB
    return sz;
}

int writer_event(base_buf_t *out, const writer_event_t *ev)
{
    int rc = writer_map_header(out, event_field_count(ev));
#define PUT_STR(key, f)                                                                            \
    if (!rc && ev->f) {                                                                            \
        rc = writer_str(out, key, sizeof key - 1);                                                 \
        if (!rc) rc = writer_cstr(out, ev->f);                                                     \
    }
#define PUT_BLOB(key, f)                                                                           \
    if (!rc && ev->f && ev->f##_len) {                                                             \
        rc = writer_str(out, key, sizeof key - 1);                                                 \
        if (!rc) rc = writer_raw(out, ev->f, ev->f##_len);                                         \
    }
    EVENT_STR_FIELDS(PUT_STR)
    if (!rc && ev->has_timestamp) {
        rc = writer_str(out, "timestamp", sizeof "timestamp" - 1);
        if (!rc) rc = writer_int(out, ev->timestamp_ms);
    }
    EVENT_BLOB_FIELDS(PUT_BLOB)
#undef PUT_STR
#undef PUT_BLOB
    return rc;
}

size_t writer_batch_overhead(uint32_t n_events, int64_t sent_at_ms, const char *write_key,
                             size_t context_len)
{
    uint32_t n = 2 + (write_key != NULL) + (context_len > 0);
    size_t sz = container_header_size(n);
    sz += writer_str_size(6) + int_size(sent_at_ms);
    if (write_key) sz += writer_str_size(8) + writer_str_size(strlen(write_key));
    if (context_len) sz += writer_str_size(7) + context_len;
    sz += writer_str_size(5) + container_header_size(n_events);
    return sz;
}

int writer_batch_begin(base_buf_t *out, uint32_t n_events, int64_t sent_at_ms,
                       const char *write_key, const void *context, size_t context_len)
{
    if (!context) context_len = 0;
    uint32_t n = 2 + (write_key != NULL) + (context_len > 0);
    int rc = writer_map_header(out, n);
    if (!rc) rc = writer_str(out, "sentAt", 6);
    if (!rc) rc = writer_int(out, sent_at_ms);
    if (!rc && write_key) {
        rc = writer_str(out, "writeKey", 8);
        if (!rc) rc = writer_cstr(out, write_key);
    }
    if (!rc && context_len) {
        rc = writer_str(out, "context", 7);
        if (!rc) rc = writer_raw(out, context, context_len);
    }
    if (!rc) rc = writer_str(out, "batch", 5);
    if (!rc) rc = writer_array_header(out, n_events);
    return rc;
}

/* ---- msgpack -> JSON ---- */

#define JSON_MAX_DEPTH 64

static int json_value(base_buf_t *out, const msgpack_object *o, int depth)
{
    char num[40];
    int n, rc = 0;
    if (depth > JSON_MAX_DEPTH) return WRITER_E_DEPTH;
    switch (o->type) {
    case MSGPACK_OBJECT_NIL:
        return base_buf_append(out, "null", 4);
    case MSGPACK_OBJECT_BOOLEAN:
        return o->via.boolean ? base_buf_append(out, "true", 4) : base_buf_append(out, "false", 5);
    case MSGPACK_OBJECT_POSITIVE_INTEGER:
        n = snprintf(num, sizeof num, "%llu", (unsigned long long)o->via.u64);
        return base_buf_append(out, num, (size_t)n);
    case MSGPACK_OBJECT_NEGATIVE_INTEGER:
        n = snprintf(num, sizeof num, "%lld", (long long)o->via.i64);
        return base_buf_append(out, num, (size_t)n);
    case MSGPACK_OBJECT_FLOAT32:
    case MSGPACK_OBJECT_FLOAT64:
        if (!isfinite(o->via.f64)) return base_buf_append(out, "null", 4);
        n = snprintf(num, sizeof num, "%.17g", o->via.f64);
        return base_buf_append(out, num, (size_t)n);
    case MSGPACK_OBJECT_STR:
        return base_json_str_utf8(out, o->via.str.ptr, o->via.str.size);
    case MSGPACK_OBJECT_ARRAY:
        rc = base_buf_append(out, "[", 1);
        for (uint32_t i = 0; i < o->via.array.size && !rc; i++) {
            if (i) rc = base_buf_append(out, ",", 1);
            if (!rc) rc = json_value(out, &o->via.array.ptr[i], depth + 1);
        }
        return rc ? rc : base_buf_append(out, "]", 1);
    case MSGPACK_OBJECT_MAP:
        rc = base_buf_append(out, "{", 1);
        for (uint32_t i = 0; i < o->via.map.size && !rc; i++) {
            const msgpack_object_kv *kv = &o->via.map.ptr[i];
            if (kv->key.type != MSGPACK_OBJECT_STR) return WRITER_E_MALFORMED;
            if (i) rc = base_buf_append(out, ",", 1);
            if (!rc) rc = base_json_str_utf8(out, kv->key.via.str.ptr, kv->key.via.str.size);
            if (!rc) rc = base_buf_append(out, ":", 1);
            if (!rc) rc = json_value(out, &kv->val, depth + 1);
        }
        return rc ? rc : base_buf_append(out, "}", 1);
    default:
        return WRITER_E_MALFORMED;
    }
}

/* Depth of the msgpack value at p, checked before unpacking so msgpack-c's unpacker (whose own
 * stack limit is 32 and fails with a generic error) never sees hostile nesting. Returns the end
 * offset or 0 when malformed / too deep. Iterative: a counter of values still owed per level. */
static size_t mp_scan(const unsigned char *p, size_t len, int *err)
{
    uint32_t owed[JSON_MAX_DEPTH + 2];
    int depth = 0;
    size_t i = 0;
    owed[0] = 1;
    while (depth >= 0) {
        if (owed[depth] == 0) {
            depth--;
            continue;
        }
        owed[depth]--;
        if (i >= len) goto malformed;
        unsigned char t = p[i++];
        uint64_t skip = 0, count = 0;
        int container = 0, hl = 0; /* hl: big-endian length bytes following the tag */
        if (t <= 0x7f || t >= 0xe0 || t == 0xc0 || t == 0xc2 || t == 0xc3) {
        } else if (t >= 0x80 && t <= 0x8f) {
            container = 2, count = t & 15u;
        } else if (t >= 0x90 && t <= 0x9f) {
            container = 1, count = t & 15u;
        } else if (t >= 0xa0 && t <= 0xbf) {
            skip = t & 31u;
        } else {
            switch (t) {
            case 0xcc:
            case 0xd0:
                skip = 1;
                break;
            case 0xcd:
            case 0xd1:
                skip = 2;
                break;
            case 0xca:
            case 0xce:
            case 0xd2:
                skip = 4;
                break;
            case 0xcb:
            case 0xcf:
            case 0xd3:
                skip = 8;
                break;
            case 0xd9:
                hl = 1;
                break;
            case 0xda:
                hl = 2;
                break;
            case 0xdb:
                hl = 4;
                break;
            case 0xdc:
                hl = 2, container = 1;
                break;
            case 0xdd:
                hl = 4, container = 1;
                break;
            case 0xde:
                hl = 2, container = 2;
                break;
            case 0xdf:
                hl = 4, container = 2;
                break;
            default:
                goto malformed; /* bin, ext: refused */
            }
        }
        if (hl) {
            if (len - i < (size_t)hl) goto malformed;
            uint64_t v = 0;
            for (int k = 0; k < hl; k++)
                v = v << 8 | p[i + (size_t)k];
            i += (size_t)hl;
            if (container)
                count = v;
            else
                skip = v;
        }
        if (skip > len - i) goto malformed;
        i += (size_t)skip;
        if (container) {
            count *= (uint64_t)container;
            if (count > len - i) goto malformed; /* every element takes at least one byte */
            if (depth + 1 > JSON_MAX_DEPTH) {
                *err = WRITER_E_DEPTH;
                return 0;
            }
            owed[++depth] = (uint32_t)count;
        }
    }
    return i;
malformed:
    *err = WRITER_E_MALFORMED;
    return 0;
}

int writer_msgpack_to_json(const void *mp, size_t len, base_buf_t *out)
{
    int err = WRITER_OK;
    size_t end = mp_scan(mp, len, &err);
    if (!end) return err;
    if (end != len) return WRITER_E_MALFORMED;
    msgpack_zone zone;
    if (!msgpack_zone_init(&zone, 4096)) return WRITER_E_NOMEM;
    msgpack_object obj;
    size_t off = 0;
    size_t before = out->len;
    int rc;
    msgpack_unpack_return ur = msgpack_unpack(mp, len, &off, &zone, &obj);
    if (ur == MSGPACK_UNPACK_NOMEM_ERROR)
        rc = WRITER_E_NOMEM;
    else if (ur != MSGPACK_UNPACK_SUCCESS || off != len)
        rc = WRITER_E_MALFORMED;
    else
        rc = json_value(out, &obj, 0);
    msgpack_zone_destroy(&zone);
    if (rc) out->len = before;
    return rc;
}

void writer_uuid_v4(uint64_t hi, uint64_t lo, char out[WRITER_UUID_LEN + 1])
{
    static const char hex[] = "0123456789abcdef";
    hi = (hi & ~UINT64_C(0xf000)) | UINT64_C(0x4000);       /* version 4 */
    lo = (lo & ~(UINT64_C(3) << 62)) | (UINT64_C(2) << 62); /* variant 10xx */
    char *p = out;
    for (int i = 15; i >= 0; i--) {
        uint64_t w = i >= 8 ? hi : lo;
        unsigned byte = (unsigned)(w >> ((i & 7) * 8)) & 0xff;
        *p++ = hex[byte >> 4];
        *p++ = hex[byte & 15];
        if (i == 12 || i == 10 || i == 8 || i == 6) *p++ = '-';
    }
    *p = '\0';
}
