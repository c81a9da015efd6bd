/*
 * stream_record.c — one `events` record to the fields sluice-stream uses (stream_record.h).
 */
#include "stream_record.h"

#include <jansson.h>
#include <string.h>

#include "base.h"

void stream_decoder_init(stream_decoder_t *d)
{
    msgpack_zone_init(&d->zone, 4096);
    d->json = NULL;
    d->ts_cache = (base_iso8601_cache_t){0};
}

void stream_decoder_free(stream_decoder_t *d)
{
    msgpack_zone_destroy(&d->zone);
    if (d->json != NULL) json_decref(d->json);
    d->json = NULL;
}

/* k[0..kn) is the literal lit of length kn (the caller switched on the length). */
#define KEY_IS(k, lit) (memcmp((k), (lit), sizeof(lit) - 1) == 0)
/* Sets *out from a string value; any other type of a field we read is a bad record, but nil is
 * "absent" (the collector never writes nil for these, a foreign producer might). */
static int take_str(stream_str_t *out, const char *p, size_t n, bool is_str, bool is_nil)
{
    if (is_nil) return 0;
    if (!is_str) return STREAM_REC_E_BAD;
    out->p = p;
    out->n = n;
    return 0;
}

static int field(stream_decoder_t *d, stream_rec_t *r, const char *k, size_t kn, const char *s,
                 size_t sn, bool is_str, bool is_nil, int is_bool)
{
    /* By length first: one comparison per key instead of one per field read. */
    switch (kn) {
    case 4:
        if (KEY_IS(k, "type")) return take_str(&r->type, s, sn, is_str, is_nil);
        return 0;
    case 5:
        if (KEY_IS(k, "event")) return take_str(&r->event, s, sn, is_str, is_nil);
        return 0;
    case 6:
        if (KEY_IS(k, "userId")) return take_str(&r->user, s, sn, is_str, is_nil);
        if (KEY_IS(k, "source")) return take_str(&r->source, s, sn, is_str, is_nil);
        return 0;
    case 9:
        if (KEY_IS(k, "accountId")) return take_str(&r->account, s, sn, is_str, is_nil);
        if (KEY_IS(k, "messageId")) return take_str(&r->message_id, s, sn, is_str, is_nil);
        if (KEY_IS(k, "timestamp")) {
            if (is_nil) return 0;
            if (!is_str || !base_iso8601_parse_cached(&d->ts_cache, s, sn, &r->ts_ms))
                return STREAM_REC_E_BAD;
        }
        return 0;
    case 11:
        if (KEY_IS(k, "anonymousId")) return take_str(&r->anon, s, sn, is_str, is_nil);
        return 0;
    case 18:
        if (KEY_IS(k, "messageIdGenerated")) {
            if (is_bool < 0) return is_nil ? 0 : STREAM_REC_E_BAD;
            r->message_id_generated = is_bool == 1;
        }
        return 0;
    default:
        return 0;
    }
}

/* msgpack without building objects: the top-level map's keys and the scalar values we read are
 * taken in place, everything else is walked over (and checked) without a copy or an allocation.
 * It accepts exactly what msgpack_unpack accepts (one complete object, nothing after it; 0xc1
 * refused; at most MP_MAX_DEPTH containers open at once, msgpack-c's MSGPACK_EMBED_STACK_SIZE),
 * so a record is refused when and only when it was before. */
#define MP_MAX_DEPTH 32

typedef struct mp {
    const unsigned char *p, *end;
} mp_t;

static bool mp_need(const mp_t *m, uint64_t n)
{
    return (uint64_t)(m->end - m->p) >= n;
}

static uint64_t mp_be(const unsigned char *p, int n)
{
    uint64_t v = 0;
    for (int i = 0; i < n; i++)
        v = v << 8 | p[i];
    return v;
}

/* One object's header: kind 's' (str: *n bytes follow), 'c' (container: *n items follow, a map
 * counts 2 per entry), 'n' nil, 'b' bool (*n = value), 'o' any other scalar (skipped); 0 = bad. */
static int mp_head(mp_t *m, uint64_t *n)
{
    if (!mp_need(m, 1)) return 0;
    unsigned c = *m->p++;
    int w = 0, kind = 'o';
    uint64_t mul = 1;
    *n = 0;
    if (c <= 0x7f || c >= 0xe0) return 'o';
    if (c >= 0xa0 && c <= 0xbf) {
        *n = c & 0x1f;
        kind = 's';
    } else if (c >= 0x90 && c <= 0x9f) {
        *n = c & 0x0f;
        return 'c';
    } else if (c >= 0x80 && c <= 0x8f) {
        *n = (uint64_t)(c & 0x0f) * 2;
        return 'c';
    } else {
        switch (c) {
        case 0xc0:
            return 'n';
        case 0xc2:
            *n = 0;
            return 'b';
        case 0xc3:
            *n = 1;
            return 'b';
        case 0xcc:
        case 0xd0:
            *n = 1;
            break;
        case 0xcd:
        case 0xd1:
            *n = 2;
            break;
        case 0xca:
        case 0xce:
        case 0xd2:
            *n = 4;
            break;
        case 0xcb:
        case 0xcf:
        case 0xd3:
            *n = 8;
            break;
        case 0xd4:
            *n = 2;
            break;
        case 0xd5:
            *n = 3;
            break;
        case 0xd6:
            *n = 5;
            break;
        case 0xd7:
            *n = 9;
            break;
        case 0xd8:
            *n = 17;
            break;
        case 0xc4:
            w = 1;
            break;
        case 0xc5:
            w = 2;
            break;
        case 0xc6:
            w = 4;
            break;
        case 0xc7:
            w = 1, *n = 1;
            break; /* ext: + the type byte */
        case 0xc8:
            w = 2, *n = 1;
            break;
        case 0xc9:
            w = 4, *n = 1;
            break;
        case 0xd9:
            w = 1, kind = 's';
            break;
        case 0xda:
            w = 2, kind = 's';
            break;
        case 0xdb:
            w = 4, kind = 's';
            break;
        case 0xdc:
            w = 2, kind = 'c';
            break;
        case 0xdd:
            w = 4, kind = 'c';
            break;
        case 0xde:
            w = 2, kind = 'c', mul = 2;
            break;
        case 0xdf:
            w = 4, kind = 'c', mul = 2;
            break;
        default:
            return 0; /* 0xc1 */
        }
        if (w > 0) {
            if (!mp_need(m, (uint64_t)w)) return 0;
            *n += mp_be(m->p, w) * mul;
            m->p += w;
        }
    }
    if (kind == 'c') return 'c';
    if (!mp_need(m, *n)) return 0;
    if (kind == 'o') m->p += *n; /* a string's bytes are the caller's to take */
    return kind;
}

/* mp_head with the common headers inline: a fixstr, a positive or negative fixint. */
static inline int mp_head_fast(mp_t *m, uint64_t *n)
{
    if (m->p < m->end) {
        unsigned c = *m->p;
        if ((c & 0xe0) == 0xa0) {
            *n = c & 0x1f;
            if ((uint64_t)(m->end - m->p - 1) < *n) return 0;
            m->p++;
            return 's';
        }
        if (c <= 0x7f || c >= 0xe0) {
            m->p++;
            *n = 0;
            return 'o';
        }
    }
    return mp_head(m, n);
}

/* Walks over one whole object (items left to read in each open container on a stack). */
static bool mp_skip(mp_t *m, int depth)
{
    uint64_t left[MP_MAX_DEPTH];
    int top = 0;
    uint64_t todo = 1;
    for (;;) {
        while (todo == 0) {
            if (top == 0) return true;
            todo = left[--top];
        }
        todo--;
        uint64_t n;
        int k = mp_head_fast(m, &n);
        if (k == 0) return false;
        if (k == 's') m->p += n;
        if (k != 'c' || n == 0) {
            if (k == 'c' && depth + top >= MP_MAX_DEPTH) return false;
            continue;
        }
        if (depth + top >= MP_MAX_DEPTH) return false;
        if (n > (uint64_t)(m->end - m->p)) return false; /* every item takes >= 1 byte */
        left[top++] = todo;
        todo = n;
    }
}

static int decode_msgpack(stream_decoder_t *d, const void *val, size_t len, stream_rec_t *r)
{
    const unsigned char *b = val;
    mp_t m = {b, b + len};
    uint64_t n;
    /* a map (an array's header is a container too) */
    if (mp_head(&m, &n) != 'c' || (b[0] & 0xf0) == 0x90 || b[0] == 0xdc || b[0] == 0xdd)
        return STREAM_REC_E_BAD;
    /* Any refusal is STREAM_REC_E_BAD whatever follows, so the first one returns. */
    for (uint64_t i = 0; i < n; i += 2) {
        uint64_t kn, vn;
        if (mp_head_fast(&m, &kn) != 's') return STREAM_REC_E_BAD;
        const char *k = (const char *)m.p;
        m.p += kn;
        const unsigned char *vstart = m.p;
        int vk = mp_head_fast(&m, &vn);
        if (vk == 0) return STREAM_REC_E_BAD;
        const char *v = (const char *)m.p;
        if (vk == 's') m.p += vn;
        if (vk == 'c') {
            m.p = vstart;
            if (!mp_skip(&m, 1)) return STREAM_REC_E_BAD;
        }
        int rc = field(d, r, k, (size_t)kn, vk == 's' ? v : NULL, vk == 's' ? (size_t)vn : 0,
                       vk == 's', vk == 'n', vk == 'b' ? (int)vn : -1);
        if (rc != 0) return rc;
    }
    return m.p == m.end ? 0 : STREAM_REC_E_BAD;
}

static int decode_json(stream_decoder_t *d, const void *val, size_t len, stream_rec_t *r)
{
    if (d->json != NULL) json_decref(d->json);
    json_error_t jerr;
    json_t *root = json_loadb(val, len, JSON_REJECT_DUPLICATES, &jerr);
    d->json = root;
    if (root == NULL) return STREAM_REC_E_BAD;
    if (!json_is_object(root)) return STREAM_REC_E_BAD;
    const char *k;
    json_t *v;
    json_object_foreach(root, k, v)
    {
        bool is_str = json_is_string(v);
        int is_bool = json_is_boolean(v) ? (json_is_true(v) ? 1 : 0) : -1;
        int rc = field(d, r, k, strlen(k), is_str ? json_string_value(v) : NULL,
                       is_str ? json_string_length(v) : 0, is_str, json_is_null(v), is_bool);
        if (rc != 0) return rc;
    }
    return 0;
}

int stream_record_decode(stream_decoder_t *d, const void *val, size_t len, bool json,
                         stream_rec_t *r)
{
    memset(r, 0, sizeof *r);
    r->ts_ms = -1;
    if (val == NULL || len == 0) return STREAM_REC_E_BAD;
    int rc = json ? decode_json(d, val, len, r) : decode_msgpack(d, val, len, r);
    if (rc == 0 && r->type.p == NULL) rc = STREAM_REC_E_BAD; /* every record has a type */
    return rc;
}
