/*
 * validate.c — SPEC §2 rules for one event: a structural walk over the whole event (keys, UTF-8,
 * value types, depth, duplicate keys, encoded size) followed by the per-field rules. Works on the
 * msgpack_object tree, so msgpack and JSON bodies share it. Allocates nothing in the common case.
 */
#include "proto.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- structural walk ------------------------------------------------------------------------- */

struct walk {
    size_t size; /* minimal msgpack encoding size so far */
    size_t max;
    bool dups, utf8;
};

static size_t hdr_len_str(uint32_t n)
{
    return n < 32 ? 1 : n < 256 ? 2 : n < 65536 ? 3 : 5;
}

static size_t hdr_len_container(uint32_t n)
{
    return n < 16 ? 1 : n < 65536 ? 3 : 5;
}

static size_t scalar_size(const msgpack_object *o)
{
    switch (o->type) {
    case MSGPACK_OBJECT_POSITIVE_INTEGER: {
        uint64_t u = o->via.u64;
        return u < 128 ? 1 : u < 256 ? 2 : u < 65536 ? 3 : u <= UINT32_MAX ? 5 : 9;
    }
    case MSGPACK_OBJECT_NEGATIVE_INTEGER: {
        int64_t i = o->via.i64;
        return i >= -32 ? 1 : i >= -128 ? 2 : i >= -32768 ? 3 : i >= INT32_MIN ? 5 : 9;
    }
    case MSGPACK_OBJECT_FLOAT32:
        return 5;
    case MSGPACK_OBJECT_FLOAT64:
        return 9;
    default:
        return 1; /* nil, boolean */
    }
}

static int str_cmp(const void *a, const void *b)
{
    const msgpack_object_str *x = *(const msgpack_object_str *const *)a;
    const msgpack_object_str *y = *(const msgpack_object_str *const *)b;
    if (x->size != y->size) return x->size < y->size ? -1 : 1;
    return memcmp(x->ptr, y->ptr, x->size);
}

/* Keys are already known to be strings. Small maps (the common case: an event has ~10 keys)
 * compare pairwise; bigger ones sort pointers to the keys, O(n log n), never quadratic. */
static int check_dup_keys(const msgpack_object_map *m)
{
    uint32_t n = m->size;
    if (n < 2) return PROTO_OK;
    if (n <= 16) {
        for (uint32_t i = 1; i < n; i++) {
            const msgpack_object_str *a = &m->ptr[i].key.via.str;
            for (uint32_t j = 0; j < i; j++) {
                const msgpack_object_str *b = &m->ptr[j].key.via.str;
                if (a->size == b->size && memcmp(a->ptr, b->ptr, a->size) == 0)
                    return PROTO_E_DUPLICATE_KEY;
            }
        }
        return PROTO_OK;
    }
    const msgpack_object_str *stack_keys[256];
    const msgpack_object_str **keys = stack_keys;
    if (n > 256) {
        keys = malloc((size_t)n * sizeof *keys);
        if (keys == NULL) return PROTO_E_NOMEM;
    }
    for (uint32_t i = 0; i < n; i++)
        keys[i] = &m->ptr[i].key.via.str;
    qsort(keys, n, sizeof *keys, str_cmp);
    int rc = PROTO_OK;
    for (uint32_t i = 1; i < n && rc == PROTO_OK; i++)
        if (str_cmp(&keys[i - 1], &keys[i]) == 0) rc = PROTO_E_DUPLICATE_KEY;
    if (keys != stack_keys) free(keys);
    return rc;
}

static int walk(const msgpack_object *o, uint32_t depth_left, struct walk *w)
{
    switch (o->type) {
    case MSGPACK_OBJECT_STR:
        w->size += hdr_len_str(o->via.str.size) + o->via.str.size;
        if (w->size > w->max) return PROTO_E_EVENT_TOO_LARGE;
        if (w->utf8 && !base_utf8_valid(o->via.str.ptr, o->via.str.size)) return PROTO_E_BAD_UTF8;
        return PROTO_OK;
    case MSGPACK_OBJECT_BIN:
    case MSGPACK_OBJECT_EXT:
        return PROTO_E_BAD_VALUE;
    case MSGPACK_OBJECT_ARRAY: {
        if (depth_left == 0) return PROTO_E_EVENT_TOO_DEEP;
        w->size += hdr_len_container(o->via.array.size);
        for (uint32_t i = 0; i < o->via.array.size; i++) {
            int rc = walk(&o->via.array.ptr[i], depth_left - 1, w);
            if (rc != PROTO_OK) return rc;
        }
        return w->size > w->max ? PROTO_E_EVENT_TOO_LARGE : PROTO_OK;
    }
    case MSGPACK_OBJECT_MAP: {
        if (depth_left == 0) return PROTO_E_EVENT_TOO_DEEP;
        w->size += hdr_len_container(o->via.map.size);
        for (uint32_t i = 0; i < o->via.map.size; i++) {
            const msgpack_object_kv *kv = &o->via.map.ptr[i];
            if (kv->key.type != MSGPACK_OBJECT_STR) return PROTO_E_BAD_KEY;
            /* The key's string case of walk(), inline: one call fewer per entry. */
            const msgpack_object_str *k = &kv->key.via.str;
            w->size += hdr_len_str(k->size) + k->size;
            if (w->size > w->max) return PROTO_E_EVENT_TOO_LARGE;
            if (w->utf8 && !base_utf8_valid(k->ptr, k->size)) return PROTO_E_BAD_UTF8;
            int rc = walk(&kv->val, depth_left - 1, w);
            if (rc != PROTO_OK) return rc;
        }
        if (w->dups) return check_dup_keys(&o->via.map);
        return PROTO_OK;
    }
    default:
        w->size += scalar_size(o);
        return w->size > w->max ? PROTO_E_EVENT_TOO_LARGE : PROTO_OK;
    }
}

int proto_value_check(const msgpack_object *obj, uint32_t max_depth, size_t max_bytes,
                      unsigned checks, size_t *size_out)
{
    struct walk w = {0, max_bytes, (checks & PROTO_CHECK_DUP_KEYS) != 0,
                     (checks & PROTO_CHECK_UTF8) != 0};
    int rc = walk(obj, max_depth, &w);
    if (rc == PROTO_OK && size_out != NULL) *size_out = w.size;
    return rc;
}

/* ---- field rules ----------------------------------------------------------------------------- */

bool proto_parse_time(const msgpack_object *obj, int64_t *ms_out)
{
    int64_t ms;
    if (obj->type == MSGPACK_OBJECT_STR) {
        if (!base_iso8601_parse(obj->via.str.ptr, obj->via.str.size, &ms)) return false;
    } else if (obj->type == MSGPACK_OBJECT_POSITIVE_INTEGER) {
        if (obj->via.u64 >= (uint64_t)PROTO_TIME_MAX_MS) return false;
        ms = (int64_t)obj->via.u64;
    } else {
        return false; /* floats, negatives and everything else: epoch ms is an integer */
    }
    if (ms < PROTO_TIME_MIN_MS || ms >= PROTO_TIME_MAX_MS) return false;
    *ms_out = ms;
    return true;
}

enum field {
    F_NONE = -1,
    F_TYPE,
    F_MESSAGE_ID,
    F_USER_ID,
    F_ANONYMOUS_ID,
    F_EVENT,
    F_GROUP_ID,
    F_TIMESTAMP,
    F_ORIGINAL_TIMESTAMP,
    F_SENT_AT,
    F_PROPERTIES,
    F_TRAITS,
    F_CONTEXT,
    F_INTEGRATIONS,
    F_COUNT
};

static enum field field_of(const char *p, uint32_t n)
{
#define IS(lit) (n == sizeof(lit) - 1 && memcmp(p, lit, sizeof(lit) - 1) == 0)
    switch (n) {
    case 4:
        return IS("type") ? F_TYPE : F_NONE;
    case 5:
        return IS("event") ? F_EVENT : F_NONE;
    case 6:
        return IS("userId")   ? F_USER_ID
               : IS("sentAt") ? F_SENT_AT
               : IS("traits") ? F_TRAITS
                              : F_NONE;
    case 7:
        return IS("groupId") ? F_GROUP_ID : IS("context") ? F_CONTEXT : F_NONE;
    case 9:
        return IS("messageId") ? F_MESSAGE_ID : IS("timestamp") ? F_TIMESTAMP : F_NONE;
    case 10:
        return IS("properties") ? F_PROPERTIES : F_NONE;
    case 11:
        return IS("anonymousId") ? F_ANONYMOUS_ID : F_NONE;
    case 12:
        return IS("integrations") ? F_INTEGRATIONS : F_NONE;
    case 17:
        return IS("originalTimestamp") ? F_ORIGINAL_TIMESTAMP : F_NONE;
    default:
        return F_NONE;
    }
#undef IS
}

static bool str_ok(const msgpack_object *o, uint32_t max)
{
    return o->type == MSGPACK_OBJECT_STR && o->via.str.size >= 1 && o->via.str.size <= max;
}

static proto_str_t to_str(const msgpack_object *o)
{
    proto_str_t s = {o->via.str.ptr, o->via.str.size};
    return s;
}

/* A present field; a null value counts as absent (Segment SDKs send "userId": null). */
static const msgpack_object *present(const msgpack_object *o)
{
    return o != NULL && o->type != MSGPACK_OBJECT_NIL ? o : NULL;
}

/* For an invalid event, keep only string fields that are safe to echo (their own rule holds). */
static void keep_if(proto_str_t *s, uint32_t max)
{
    if (s->ptr != NULL && (s->len < 1 || s->len > max || !base_utf8_valid(s->ptr, s->len))) {
        s->ptr = NULL;
        s->len = 0;
    }
}

/* Shortest "%.*g" text of d that reads back as d (at most 17 significant digits). */
static size_t double_text(double d, char *out)
{
    for (int prec = 1; prec <= 17; prec++) {
        int n = snprintf(out, PROTO_NUM_TEXT, "%.*g", prec, d);
        if (n > 0 && n < PROTO_NUM_TEXT && strtod(out, NULL) == d) return (size_t)n;
    }
    return 0;
}

/* An id field (userId, anonymousId, groupId): a string of 1..max bytes, or a number, converted
 * to its decimal text in buf (SPEC §2: several server SDKs send numeric ids). "" counts as
 * absent when empty_absent. Returns 1 (an id in *out; *rewritten when its text differs from the
 * received value), 0 (absent) or -1 (not an id). */
static int id_value(const msgpack_object *o, uint32_t max, bool empty_absent,
                    char buf[PROTO_NUM_TEXT], proto_str_t *out, bool *rewritten)
{
    *rewritten = false;
    out->ptr = NULL;
    out->len = 0;
    if (o == NULL || o->type == MSGPACK_OBJECT_NIL) return 0;
    size_t n;
    switch (o->type) {
    case MSGPACK_OBJECT_STR:
        if (o->via.str.size == 0 && empty_absent) {
            *rewritten = true; /* the record carries no "" id */
            return 0;
        }
        if (!str_ok(o, max)) return -1;
        *out = to_str(o);
        return 1;
    case MSGPACK_OBJECT_POSITIVE_INTEGER:
        n = (size_t)snprintf(buf, PROTO_NUM_TEXT, "%llu", (unsigned long long)o->via.u64);
        break;
    case MSGPACK_OBJECT_NEGATIVE_INTEGER:
        n = (size_t)snprintf(buf, PROTO_NUM_TEXT, "%lld", (long long)o->via.i64);
        break;
    case MSGPACK_OBJECT_FLOAT32:
    case MSGPACK_OBJECT_FLOAT64:
        if (!isfinite(o->via.f64)) return -1;
        n = double_text(o->via.f64, buf);
        if (n == 0) return -1;
        break;
    default:
        return -1;
    }
    out->ptr = buf;
    out->len = (uint32_t)n;
    *rewritten = true;
    return 1;
}

static int rules(proto_event_t *ev, const msgpack_object *const *f, proto_type_t kind,
                 const proto_envelope_t *env, const proto_limits_t *lim, unsigned checks)
{
    int rc = proto_value_check(ev->obj, lim->max_depth + 1, lim->event_bytes, checks, NULL);
    if (rc != PROTO_OK) return rc;

    const msgpack_object *o = present(f[F_TYPE]);
    if (o == NULL) {
        if (kind == PROTO_T_NONE) return PROTO_E_MISSING_TYPE;
        ev->type = kind;
    } else {
        if (o->type != MSGPACK_OBJECT_STR) return PROTO_E_BAD_TYPE;
        ev->type = proto_type_parse(o->via.str.ptr, o->via.str.size);
        if (ev->type == PROTO_T_NONE || (kind != PROTO_T_NONE && ev->type != kind))
            return PROTO_E_BAD_TYPE;
    }

    /* No messageId (Segment's own HTTP examples send none): proto_normalize generates one. */
    if ((o = present(f[F_MESSAGE_ID])) == NULL)
        ev->message_id_generated = true;
    else if (!str_ok(o, 100))
        return PROTO_E_BAD_MESSAGE_ID;

    bool rw;
    int uid = id_value(f[F_USER_ID], 255, true, ev->num_text[0], &ev->user_id, &rw);
    if (uid < 0) return PROTO_E_BAD_USER_ID;
    if (rw) ev->rewrite |= PROTO_RW_USER_ID;
    int aid = id_value(f[F_ANONYMOUS_ID], 255, true, ev->num_text[1], &ev->anonymous_id, &rw);
    if (aid < 0) return PROTO_E_BAD_ANONYMOUS_ID;
    if (rw) ev->rewrite |= PROTO_RW_ANONYMOUS_ID;
    if (uid == 0 && aid == 0) return PROTO_E_MISSING_USER;

    if (ev->type == PROTO_T_TRACK) {
        if ((o = present(f[F_EVENT])) == NULL) return PROTO_E_MISSING_EVENT;
        if (!str_ok(o, 200)) return PROTO_E_BAD_EVENT;
    }
    if (ev->type == PROTO_T_GROUP) {
        int gid = id_value(f[F_GROUP_ID], 255, false, ev->num_text[2], &ev->group_id, &rw);
        if (gid == 0) return PROTO_E_MISSING_GROUP_ID;
        if (gid < 0) return PROTO_E_BAD_GROUP_ID;
        if (rw) ev->rewrite |= PROTO_RW_GROUP_ID;
    }

    /* timestamp; RudderStack sends the client time as originalTimestamp and no timestamp. */
    if ((o = present(f[F_TIMESTAMP])) != NULL || (o = present(f[F_ORIGINAL_TIMESTAMP])) != NULL) {
        if (!proto_parse_time(o, &ev->timestamp_ms)) return PROTO_E_BAD_TIMESTAMP;
        ev->has_timestamp = true;
    }
    if ((o = present(f[F_SENT_AT])) != NULL) {
        if (!proto_parse_time(o, &ev->sent_at_ms)) return PROTO_E_BAD_EVENT_SENT_AT;
        ev->has_sent_at = true;
    } else if (env != NULL && env->bad_sent_at) {
        return PROTO_E_BAD_EVENT_SENT_AT; /* inherits the batch's unreadable sentAt */
    }

    if ((o = present(f[F_PROPERTIES])) != NULL && o->type != MSGPACK_OBJECT_MAP)
        return PROTO_E_BAD_PROPERTIES;
    if ((o = present(f[F_TRAITS])) != NULL && o->type != MSGPACK_OBJECT_MAP)
        return PROTO_E_BAD_TRAITS;
    if ((o = present(f[F_CONTEXT])) != NULL) {
        if (o->type != MSGPACK_OBJECT_MAP) return PROTO_E_BAD_CONTEXT;
        /* context.groupId is an account hint, not a rule: used only when it is a valid id. */
        for (uint32_t i = 0; i < o->via.map.size; i++) {
            const msgpack_object_kv *kv = &o->via.map.ptr[i];
            if (kv->key.type == MSGPACK_OBJECT_STR && kv->key.via.str.size == 7 &&
                memcmp(kv->key.via.str.ptr, "groupId", 7) == 0) {
                if (str_ok(&kv->val, 255)) ev->context_group_id = to_str(&kv->val);
                break;
            }
        }
    }
    if (env != NULL && env->bad_context) return PROTO_E_BAD_CONTEXT;
    if ((o = present(f[F_INTEGRATIONS])) != NULL && o->type != MSGPACK_OBJECT_MAP)
        return PROTO_E_BAD_INTEGRATIONS;
    if (env != NULL && env->bad_integrations) return PROTO_E_BAD_INTEGRATIONS;
    return PROTO_OK;
}

int proto_event_validate(proto_event_t *ev, const msgpack_object *obj, proto_type_t kind,
                         const proto_envelope_t *env, const proto_limits_t *lim, unsigned checks)
{
    memset(ev, 0, sizeof *ev);
    ev->obj = obj;
    if (obj->type != MSGPACK_OBJECT_MAP) {
        ev->error = PROTO_E_EVENT_NOT_A_MAP;
        return ev->error;
    }
    /* One pass over the top-level keys; the first occurrence of a field wins (a second one makes
     * the event invalid anyway when duplicate keys are checked). */
    const msgpack_object *f[F_COUNT] = {0};
    for (uint32_t i = 0; i < obj->via.map.size; i++) {
        const msgpack_object_kv *kv = &obj->via.map.ptr[i];
        if (kv->key.type != MSGPACK_OBJECT_STR) continue;
        enum field id = field_of(kv->key.via.str.ptr, kv->key.via.str.size);
        if (id != F_NONE && f[id] == NULL) f[id] = &kv->val;
    }
    const msgpack_object *o;
    if ((o = present(f[F_MESSAGE_ID])) && o->type == MSGPACK_OBJECT_STR) ev->message_id = to_str(o);
    if ((o = present(f[F_USER_ID])) && o->type == MSGPACK_OBJECT_STR) ev->user_id = to_str(o);
    if ((o = present(f[F_ANONYMOUS_ID])) && o->type == MSGPACK_OBJECT_STR)
        ev->anonymous_id = to_str(o);
    if ((o = present(f[F_EVENT])) && o->type == MSGPACK_OBJECT_STR) ev->event = to_str(o);
    if ((o = present(f[F_GROUP_ID])) && o->type == MSGPACK_OBJECT_STR) ev->group_id = to_str(o);

    ev->error = rules(ev, f, kind, env, lim, checks);
    if (!ev->has_sent_at && env != NULL && env->has_sent_at) {
        ev->has_sent_at = true;
        ev->sent_at_ms = env->sent_at_ms;
    }
    if (ev->error != PROTO_OK) {
        ev->message_id_generated = false;
        ev->rewrite = 0;
        keep_if(&ev->message_id, 100);
        keep_if(&ev->user_id, 255);
        keep_if(&ev->anonymous_id, 255);
        keep_if(&ev->event, 200);
        keep_if(&ev->group_id, 255);
        keep_if(&ev->context_group_id, 255);
    }
    return ev->error;
}
