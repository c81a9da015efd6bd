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
}

void stream_decoder_free(stream_decoder_t *d)
{
    msgpack_zone_destroy(&d->zone);
    if (d->json != NULL) json_decref(d->json);
    d->json = NULL;
}

static bool key_is(const char *k, size_t kn, const char *lit)
{
    size_t n = strlen(lit);
    return kn == n && memcmp(k, lit, n) == 0;
}

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

static int field(stream_rec_t *r, const char *k, size_t kn, const char *s, size_t sn, bool is_str,
                 bool is_nil, int is_bool)
{
    if (key_is(k, kn, "type")) return take_str(&r->type, s, sn, is_str, is_nil);
    if (key_is(k, kn, "event")) return take_str(&r->event, s, sn, is_str, is_nil);
    if (key_is(k, kn, "userId")) return take_str(&r->user, s, sn, is_str, is_nil);
    if (key_is(k, kn, "anonymousId")) return take_str(&r->anon, s, sn, is_str, is_nil);
    if (key_is(k, kn, "accountId")) return take_str(&r->account, s, sn, is_str, is_nil);
    if (key_is(k, kn, "source")) return take_str(&r->source, s, sn, is_str, is_nil);
    if (key_is(k, kn, "messageId")) return take_str(&r->message_id, s, sn, is_str, is_nil);
    if (key_is(k, kn, "messageIdGenerated")) {
        if (is_bool < 0) return is_nil ? 0 : STREAM_REC_E_BAD;
        r->message_id_generated = is_bool == 1;
        return 0;
    }
    if (key_is(k, kn, "timestamp")) {
        if (is_nil) return 0;
        if (!is_str || !base_iso8601_parse(s, sn, &r->ts_ms)) return STREAM_REC_E_BAD;
        return 0;
    }
    return 0;
}

static int decode_msgpack(stream_decoder_t *d, const void *val, size_t len, stream_rec_t *r)
{
    msgpack_zone_clear(&d->zone);
    msgpack_object obj;
    size_t off = 0;
    msgpack_unpack_return ur = msgpack_unpack(val, len, &off, &d->zone, &obj);
    if (ur == MSGPACK_UNPACK_NOMEM_ERROR) return STREAM_REC_E_NOMEM;
    if (ur != MSGPACK_UNPACK_SUCCESS || off != len || obj.type != MSGPACK_OBJECT_MAP)
        return STREAM_REC_E_BAD;
    for (uint32_t i = 0; i < obj.via.map.size; i++) {
        const msgpack_object_kv *kv = &obj.via.map.ptr[i];
        if (kv->key.type != MSGPACK_OBJECT_STR) return STREAM_REC_E_BAD;
        const msgpack_object *v = &kv->val;
        bool is_str = v->type == MSGPACK_OBJECT_STR;
        int is_bool = v->type == MSGPACK_OBJECT_BOOLEAN ? (v->via.boolean ? 1 : 0) : -1;
        int rc =
            field(r, kv->key.via.str.ptr, kv->key.via.str.size, is_str ? v->via.str.ptr : NULL,
                  is_str ? v->via.str.size : 0, is_str, v->type == MSGPACK_OBJECT_NIL, is_bool);
        if (rc != 0) return rc;
    }
    return 0;
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
        int rc = field(r, k, strlen(k), is_str ? json_string_value(v) : NULL,
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
