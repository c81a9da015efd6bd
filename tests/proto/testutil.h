/*
 * testutil.h — helpers shared by the proto unit tests: building msgpack bodies from JSON text
 * (so one test body exercises both formats) and by hand (for what JSON cannot express), and
 * decoding a batch in either format.
 */
#ifndef SLUICE_TEST_PROTO_UTIL_H
#define SLUICE_TEST_PROTO_UTIL_H

#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>
#include <jansson.h>
#include <msgpack.h>

#include "proto.h"

/* Packs jansson value j as msgpack, integers as integers, reals as float64. */
static inline void tu_pack_json(msgpack_packer *pk, const json_t *j)
{
    switch (json_typeof(j)) {
    case JSON_OBJECT: {
        const char *k;
        size_t klen;
        json_t *v;
        msgpack_pack_map(pk, json_object_size(j));
        json_object_keylen_foreach((json_t *)j, k, klen, v)
        {
            msgpack_pack_str_with_body(pk, k, klen);
            tu_pack_json(pk, v);
        }
        break;
    }
    case JSON_ARRAY:
        msgpack_pack_array(pk, json_array_size(j));
        for (size_t i = 0; i < json_array_size(j); i++)
            tu_pack_json(pk, json_array_get(j, i));
        break;
    case JSON_STRING:
        msgpack_pack_str_with_body(pk, json_string_value(j), json_string_length(j));
        break;
    case JSON_INTEGER:
        msgpack_pack_int64(pk, json_integer_value(j));
        break;
    case JSON_REAL:
        msgpack_pack_double(pk, json_real_value(j));
        break;
    case JSON_TRUE:
        msgpack_pack_true(pk);
        break;
    case JSON_FALSE:
        msgpack_pack_false(pk);
        break;
    default:
        msgpack_pack_nil(pk);
    }
}

/* JSON text → msgpack bytes in sb (caller destroys sb). Fails the test on bad JSON. */
static inline void tu_json_to_mp(const char *json, msgpack_sbuffer *sb)
{
    json_error_t err;
    json_t *j = json_loads(json, JSON_DECODE_ANY | JSON_ALLOW_NUL, &err);
    if (j == NULL) fail_msg("bad test JSON: %s: %s", err.text, json);
    msgpack_sbuffer_init(sb);
    msgpack_packer pk;
    msgpack_packer_init(&pk, sb, msgpack_sbuffer_write);
    tu_pack_json(&pk, j);
    json_decref(j);
}

/* A formatted JSON string (tests keep them short). */
__attribute__((format(printf, 1, 2))) static inline char *tu_fmt(const char *fmt, ...)
{
    static char buf[8][65536];
    static int slot;
    char *out = buf[slot++ % 8];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(out, sizeof buf[0], fmt, ap);
    va_end(ap);
    assert_true(n > 0 && (size_t)n < sizeof buf[0]);
    return out;
}

/* Holds a body's bytes for as long as the batch that points into them. */
typedef struct tu_body {
    msgpack_sbuffer sb;
    proto_batch_t b;
    int rc;
} tu_body_t;

/* Decodes JSON text as fmt (msgpack: converted first) with limits lim (NULL: defaults). */
static inline int tu_decode(tu_body_t *t, const char *json, proto_format_t fmt, proto_type_t kind,
                            const proto_limits_t *lim)
{
    proto_limits_t def = proto_limits_default();
    if (lim == NULL) lim = &def;
    memset(t, 0, sizeof *t);
    if (fmt == PROTO_FMT_JSON) {
        msgpack_sbuffer_init(&t->sb);
        msgpack_sbuffer_write(&t->sb, json, strlen(json));
    } else {
        tu_json_to_mp(json, &t->sb);
    }
    t->rc = proto_decode(&t->b, t->sb.data, t->sb.size, fmt, kind, lim);
    return t->rc;
}

static inline void tu_free(tu_body_t *t)
{
    proto_batch_free(&t->b);
    msgpack_sbuffer_destroy(&t->sb);
}

/* A valid track event with the given extra JSON members (may be ""), as JSON object text. */
#define TU_EVENT(extra)                                                                            \
    "{\"type\":\"track\",\"messageId\":\"m1\",\"userId\":\"u1\",\"event\":\"Signed Up\"" extra "}"

/* Runs check(fmt) for both formats. */
#define TU_BOTH(stmt)                                                                              \
    do {                                                                                           \
        for (int tu_f = 0; tu_f < 2; tu_f++) {                                                     \
            proto_format_t fmt = tu_f == 0 ? PROTO_FMT_MSGPACK : PROTO_FMT_JSON;                   \
            stmt;                                                                                  \
        }                                                                                          \
    } while (0)

/* The error of the only event of a one-event batch {"batch":[EVENT]} in format fmt. */
static inline int tu_event_error(const char *event_json, proto_format_t fmt)
{
    tu_body_t t;
    int rc = tu_decode(&t, tu_fmt("{\"batch\":[%s]}", event_json), fmt, PROTO_T_NONE, NULL);
    if (rc != PROTO_OK) {
        tu_free(&t);
        return 1000 + rc; /* distinguishable from any event error */
    }
    assert_int_equal(t.b.n_events, 1);
    int err = t.b.events[0].error;
    tu_free(&t);
    return err;
}

/* Raw msgpack builder for hostile inputs. */
typedef struct tu_mp {
    msgpack_sbuffer sb;
    msgpack_packer pk;
} tu_mp_t;

static inline void tu_mp_init(tu_mp_t *m)
{
    msgpack_sbuffer_init(&m->sb);
    msgpack_packer_init(&m->pk, &m->sb, msgpack_sbuffer_write);
}

static inline void tu_mp_str(tu_mp_t *m, const char *s)
{
    msgpack_pack_str_with_body(&m->pk, s, strlen(s));
}

static inline void tu_mp_raw(tu_mp_t *m, const void *p, size_t n)
{
    msgpack_sbuffer_write(&m->sb, p, n);
}

/* Starts {"batch":[ {"type":"track","messageId":"m1","userId":"u1","event":"e", <extra...> } ]}
 * with extra_pairs more key/value pairs that the caller packs next. */
static inline void tu_mp_event_start(tu_mp_t *m, uint32_t extra_pairs)
{
    tu_mp_init(m);
    msgpack_pack_map(&m->pk, 1);
    tu_mp_str(m, "batch");
    msgpack_pack_array(&m->pk, 1);
    msgpack_pack_map(&m->pk, 4 + extra_pairs);
    tu_mp_str(m, "type");
    tu_mp_str(m, "track");
    tu_mp_str(m, "messageId");
    tu_mp_str(m, "m1");
    tu_mp_str(m, "userId");
    tu_mp_str(m, "u1");
    tu_mp_str(m, "event");
    tu_mp_str(m, "e");
}

/* Decodes m's bytes as a msgpack batch and returns the request code, or the first event's error
 * when the request is readable. */
static inline int tu_mp_event_error(tu_mp_t *m)
{
    proto_batch_t b;
    proto_limits_t lim = proto_limits_default();
    int rc = proto_decode(&b, m->sb.data, m->sb.size, PROTO_FMT_MSGPACK, PROTO_T_NONE, &lim);
    int out = rc != PROTO_OK ? 1000 + rc : b.events[0].error;
    proto_batch_free(&b);
    msgpack_sbuffer_destroy(&m->sb);
    return out;
}

#endif
