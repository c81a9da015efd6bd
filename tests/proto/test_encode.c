/* Unit tests for proto/encode.c: the normalized record in msgpack and JSON (round trips through
 * decode), the fields set/dropped, number and string encoding, caps, and the rejected record. */
#include "testutil.h"

#include <math.h>

#define NOW 1795435200000LL /* 2026-11-23T12:00:00Z */

static proto_norm_ctx_t ctx(void)
{
    proto_norm_ctx_t c = {.received_at_ms = NOW, .source = {"web", 3}, .max_future_ms = 86400000};
    return c;
}

#define BATCH                                                                                      \
    "{\"writeKey\":\"secret\",\"sentAt\":\"2026-11-23T11:00:00Z\",\"context\":{\"ip\":\"9.9.9."    \
    "9\"},"                                                                                        \
    "\"batch\":[{\"type\":\"track\",\"messageId\":\"m1\",\"userId\":\"u1\",\"event\":\"Plan "      \
    "Upgraded\",\"timestamp\":\"2026-11-23T10:59:00Z\",\"writeKey\":\"secret2\",\"accountId\":"    \
    "\"forged\",\"receivedAt\":\"x\",\"source\":\"evil\",\"properties\":{\"plan\":\"pro\","        \
    "\"seats\":7,\"price\":0.1,\"neg\":-3,\"ok\":true,\"none\":null,\"tags\":[\"a\",\"b\"],"       \
    "\"nested\":{\"k\":\"v\\n\\\"q\\\"\\u0001\\u00e9\\u20ac\"}}},"                                 \
    "{\"type\":\"group\",\"messageId\":\"m2\",\"userId\":\"u1\",\"groupId\":\"acme\",\"context\":" \
    "{\"own\":1}}]}"

static json_t *record_json(const base_buf_t *out)
{
    json_error_t err;
    json_t *j = json_loadb(out->data, out->len, JSON_REJECT_DUPLICATES, &err);
    if (j == NULL) fail_msg("record is not JSON: %s: %.*s", err.text, (int)out->len, out->data);
    return j;
}

static void check_record(json_t *r, bool first)
{
    assert_null(json_object_get(r, "writeKey"));
    assert_string_equal(json_string_value(json_object_get(r, "receivedAt")),
                        "2026-11-23T12:00:00.000Z");
    assert_string_equal(json_string_value(json_object_get(r, "source")), "web");
    if (first) {
        /* sentAt 11:00, timestamp 10:59, received 12:00 → 11:59 */
        assert_string_equal(json_string_value(json_object_get(r, "timestamp")),
                            "2026-11-23T11:59:00.000Z");
        assert_null(json_object_get(r, "accountId")); /* forged one dropped, none known */
        /* Segment's warehouse columns: the client's time as sent, and the batch's sentAt. */
        assert_string_equal(json_string_value(json_object_get(r, "originalTimestamp")),
                            "2026-11-23T10:59:00.000Z");
        assert_string_equal(json_string_value(json_object_get(r, "sentAt")),
                            "2026-11-23T11:00:00.000Z");
        assert_null(json_object_get(r, "messageIdGenerated"));
        json_t *ctxo = json_object_get(r, "context"); /* batch context merged */
        assert_string_equal(json_string_value(json_object_get(ctxo, "ip")), "9.9.9.9");
        json_t *p = json_object_get(r, "properties");
        assert_string_equal(json_string_value(json_object_get(p, "plan")), "pro");
        assert_int_equal(json_integer_value(json_object_get(p, "seats")), 7);
        assert_true(json_is_real(json_object_get(p, "price")));
        assert_true(json_real_value(json_object_get(p, "price")) == 0.1);
        assert_int_equal(json_integer_value(json_object_get(p, "neg")), -3);
        assert_true(json_is_true(json_object_get(p, "ok")));
        assert_true(json_is_null(json_object_get(p, "none")));
        assert_int_equal(json_array_size(json_object_get(p, "tags")), 2);
        assert_string_equal(json_string_value(json_object_get(json_object_get(p, "nested"), "k")),
                            "v\n\"q\"\x01\xc3\xa9\xe2\x82\xac");
        assert_string_equal(json_string_value(json_object_get(r, "event")), "Plan Upgraded");
    } else {
        assert_string_equal(json_string_value(json_object_get(r, "accountId")), "acme");
        json_t *ctxo = json_object_get(r, "context"); /* own context merged with the batch's */
        assert_int_equal(json_integer_value(json_object_get(ctxo, "own")), 1);
        assert_string_equal(json_string_value(json_object_get(ctxo, "ip")), "9.9.9.9");
        assert_null(json_object_get(r, "originalTimestamp")); /* the client sent no time */
        assert_string_equal(json_string_value(json_object_get(r, "sentAt")),
                            "2026-11-23T11:00:00.000Z");
    }
}

/* Unpacks a msgpack record with msgpack-c itself (an independent decoder) and converts it to
 * JSON text through our writer via a fresh decode, so both paths are compared. */
static void test_msgpack_record(void **state)
{
    (void)state;
    proto_norm_ctx_t c = ctx();
    TU_BOTH({
        tu_body_t t;
        assert_int_equal(tu_decode(&t, BATCH, fmt, PROTO_T_NONE, NULL), PROTO_OK);
        proto_normalize(&t.b, &c);
        for (size_t i = 0; i < 2; i++) {
            assert_int_equal(t.b.events[i].error, PROTO_OK);
            base_buf_t out;
            base_buf_init(&out, 1 << 20);
            assert_int_equal(proto_encode_event(&t.b.events[i], PROTO_FMT_MSGPACK, &out), PROTO_OK);
            /* msgpack-c's own unpacker accepts it and sees exactly one value. */
            msgpack_unpacked up;
            msgpack_unpacked_init(&up);
            size_t off = 0;
            assert_int_equal(msgpack_unpack_next(&up, out.data, out.len, &off),
                             MSGPACK_UNPACK_SUCCESS);
            assert_int_equal(off, out.len);
            assert_int_equal(up.data.type, MSGPACK_OBJECT_MAP);
            msgpack_unpacked_destroy(&up);
            /* Round trip: the record decodes as a valid single event of its type. */
            proto_batch_t rb;
            proto_limits_t lim = proto_limits_default();
            proto_type_t kind = i == 0 ? PROTO_T_TRACK : PROTO_T_GROUP;
            assert_int_equal(proto_decode(&rb, out.data, out.len, PROTO_FMT_MSGPACK, kind, &lim),
                             PROTO_OK);
            assert_int_equal(rb.events[0].error, PROTO_OK);
            assert_true(rb.events[0].has_timestamp);
            assert_int_equal(rb.events[0].timestamp_ms, t.b.events[i].norm_timestamp_ms);
            assert_null(rb.write_key.ptr); /* the secret is gone */
            /* ... and re-encoded as JSON it carries the same fields. */
            base_buf_t js;
            base_buf_init(&js, 1 << 20);
            assert_int_equal(proto_encode_rejected(&rb.events[0], &js), PROTO_OK);
            json_t *rej = record_json(&js);
            check_record(json_object_get(rej, "raw"), i == 0);
            json_decref(rej);
            base_buf_free(&js);
            proto_batch_free(&rb);
            base_buf_free(&out);
        }
        tu_free(&t);
    });
}

/* The msgpack writer copies strings of up to 16 bytes as overlapping loads (issue 11): every
 * length 0..40, each byte distinct within its string, comes back byte for byte. */
static void test_msgpack_string_lengths(void **state)
{
    (void)state;
    char body[4096];
    size_t n = (size_t)snprintf(body, sizeof body,
                                "{\"batch\":[{\"type\":\"track\",\"messageId\":\"m1\",\"userId\":"
                                "\"u1\",\"event\":\"E\",\"properties\":{");
    for (int len = 0; len <= 40; len++) {
        n += (size_t)snprintf(body + n, sizeof body - n, "%s\"k%d\":\"", len ? "," : "", len);
        for (int k = 0; k < len; k++)
            body[n++] = (char)('A' + (k * 7 + len) % 26);
        body[n++] = '"';
    }
    n += (size_t)snprintf(body + n, sizeof body - n, "}}]}");
    body[n] = '\0';
    proto_norm_ctx_t c = ctx();
    TU_BOTH({
        tu_body_t t;
        assert_int_equal(tu_decode(&t, body, fmt, PROTO_T_NONE, NULL), PROTO_OK);
        proto_normalize(&t.b, &c);
        assert_int_equal(t.b.events[0].error, PROTO_OK);
        base_buf_t out;
        base_buf_init(&out, 1 << 20);
        assert_int_equal(proto_encode_event(&t.b.events[0], PROTO_FMT_MSGPACK, &out), PROTO_OK);
        msgpack_unpacked up;
        msgpack_unpacked_init(&up);
        size_t off = 0;
        assert_int_equal(msgpack_unpack_next(&up, out.data, out.len, &off), MSGPACK_UNPACK_SUCCESS);
        const msgpack_object *props = NULL;
        for (uint32_t i = 0; i < up.data.via.map.size; i++) {
            const msgpack_object_kv *kv = &up.data.via.map.ptr[i];
            if (kv->key.via.str.size == 10 && memcmp(kv->key.via.str.ptr, "properties", 10) == 0)
                props = &kv->val;
        }
        assert_non_null(props);
        assert_int_equal(props->via.map.size, 41);
        for (uint32_t i = 0; i < 41; i++) {
            const msgpack_object_kv *kv = &props->via.map.ptr[i];
            char want[48];
            for (uint32_t k = 0; k < i; k++)
                want[k] = (char)('A' + (k * 7 + i) % 26);
            assert_int_equal(kv->val.type, MSGPACK_OBJECT_STR);
            assert_int_equal(kv->val.via.str.size, i);
            assert_memory_equal(kv->val.via.str.ptr, want, i);
        }
        msgpack_unpacked_destroy(&up);
        base_buf_free(&out);
        tu_free(&t);
    });
}

/* True when needle[0..n) occurs in out. */
static bool has_bytes(const base_buf_t *out, const char *needle, size_t n)
{
    for (size_t i = 0; i + n <= out->len; i++)
        if (memcmp(out->data + i, needle, n) == 0) return true;
    return false;
}

/* Encodes ev as msgpack into a fresh buffer capped at max. */
static int encode_mp(const proto_event_t *ev, size_t max, base_buf_t *out)
{
    base_buf_init(out, max);
    return proto_encode_event(ev, PROTO_FMT_MSGPACK, out);
}

/* Issue 11: a msgpack body's top-level containers are copied from the body as received. With a
 * minimal encoding (what msgpack-c and our SDK write) the record is byte for byte the one the
 * re-encoding writes; JSON bodies have no raw spans. */
static void test_raw_copy_same_bytes(void **state)
{
    (void)state;
    proto_norm_ctx_t c = ctx();
    TU_BOTH({
        tu_body_t t;
        assert_int_equal(tu_decode(&t, BATCH, fmt, PROTO_T_NONE, NULL), PROTO_OK);
        proto_normalize(&t.b, &c);
        for (size_t i = 0; i < 2; i++) {
            proto_event_t *ev = &t.b.events[i];
            assert_int_equal(ev->error, PROTO_OK);
            if (fmt == PROTO_FMT_MSGPACK)
                assert_true(ev->n_raw > 0);
            else
                assert_int_equal(ev->n_raw, 0);
            proto_event_t copy = *ev;
            copy.n_raw = 0;
            base_buf_t a;
            base_buf_t b;
            assert_int_equal(encode_mp(ev, 1 << 20, &a), PROTO_OK);
            assert_int_equal(encode_mp(&copy, 1 << 20, &b), PROTO_OK);
            assert_int_equal(a.len, b.len);
            assert_memory_equal(a.data, b.data, a.len);
            base_buf_free(&a);
            base_buf_free(&b);
        }
        tu_free(&t);
    });
}

/* The tree is edited copy-on-write (collector/filter.c, the batch context merge): a container
 * with a new element array is re-encoded, so an edit deep inside properties reaches the record,
 * while an untouched sibling is still copied. */
static void test_raw_copy_skips_edited(void **state)
{
    (void)state;
    proto_norm_ctx_t c = ctx();
    tu_body_t t;
    assert_int_equal(tu_decode(&t, BATCH, PROTO_FMT_MSGPACK, PROTO_T_NONE, NULL), PROTO_OK);
    proto_normalize(&t.b, &c);
    proto_event_t *ev = &t.b.events[0];
    const msgpack_object_map *m = &ev->obj->via.map;
    /* A new event map whose properties is a new map with "plan" changed to "edited". */
    msgpack_object_kv kv[32];
    assert_true(m->size <= 32);
    memcpy(kv, m->ptr, m->size * sizeof *kv);
    msgpack_object_kv props[16];
    msgpack_object obj = {.type = MSGPACK_OBJECT_MAP, .via.map = {m->size, kv}};
    bool found = false;
    for (uint32_t i = 0; i < m->size; i++) {
        if (kv[i].key.via.str.size != 10 || memcmp(kv[i].key.via.str.ptr, "properties", 10) != 0)
            continue;
        const msgpack_object_map *pm = &kv[i].val.via.map;
        assert_true(pm->size <= 16);
        memcpy(props, pm->ptr, pm->size * sizeof *props);
        for (uint32_t j = 0; j < pm->size; j++)
            if (props[j].key.via.str.size == 4 && memcmp(props[j].key.via.str.ptr, "plan", 4) == 0)
                props[j].val.via.str = (msgpack_object_str){6, "edited"};
        kv[i].val.via.map.ptr = props;
        found = true;
    }
    assert_true(found);
    ev->obj = &obj;
    base_buf_t out;
    assert_int_equal(encode_mp(ev, 1 << 20, &out), PROTO_OK);
    assert_true(has_bytes(&out,
                          "\xa6"
                          "edited",
                          7));
    assert_false(has_bytes(&out,
                           "\xa3"
                           "pro",
                           4)); /* the old value is gone */
    assert_true(has_bytes(&out,
                          "\xa7"
                          "9.9.9.9",
                          8)); /* the merged batch context */
    base_buf_free(&out);
    tu_free(&t);
}

/* A sender's longer-than-minimal encoding (str32 for 10-byte strings) is still the same value;
 * when the copy would not fit the record's cap but the minimal encoding does, the record is the
 * minimal one instead of E_EVENT_TOO_LARGE. */
static void test_raw_copy_non_minimal_fits_cap(void **state)
{
    (void)state;
    tu_mp_t m;
    tu_mp_event_start(&m, 1);
    tu_mp_str(&m, "properties");
    msgpack_pack_map(&m.pk, 5);
    for (int i = 0; i < 5; i++) {
        char k[2] = {(char)('a' + i), 0};
        tu_mp_str(&m, k);
        tu_mp_raw(&m,
                  "\xdb\x00\x00\x00\x0a"
                  "0123456789",
                  15);
    }
    proto_batch_t b;
    assert_int_equal(proto_decode(&b, m.sb.data, m.sb.size, PROTO_FMT_MSGPACK, PROTO_T_NONE, NULL),
                     PROTO_OK);
    proto_norm_ctx_t c = ctx();
    proto_normalize(&b, &c);
    proto_event_t *ev = &b.events[0];
    assert_int_equal(ev->error, PROTO_OK);
    assert_true(ev->n_raw > 0);
    proto_event_t copy = *ev;
    copy.n_raw = 0;
    base_buf_t minimal, raw, capped;
    assert_int_equal(encode_mp(&copy, 1 << 20, &minimal), PROTO_OK);
    assert_int_equal(encode_mp(ev, 1 << 20, &raw), PROTO_OK);
    assert_int_equal(raw.len, minimal.len + 20); /* the sender's str32 headers, as sent */
    /* The writer asks for up to 9 bytes of room per token, so the cap has that much slack. */
    assert_int_equal(encode_mp(ev, minimal.len + 10, &capped), PROTO_OK);
    assert_int_equal(capped.len, minimal.len);
    assert_memory_equal(capped.data, minimal.data, minimal.len);
    base_buf_free(&minimal);
    base_buf_free(&raw);
    base_buf_free(&capped);
    proto_batch_free(&b);
    msgpack_sbuffer_destroy(&m.sb);
}

static void test_json_record(void **state)
{
    (void)state;
    proto_norm_ctx_t c = ctx();
    char first[2][4096];
    TU_BOTH({
        tu_body_t t;
        assert_int_equal(tu_decode(&t, BATCH, fmt, PROTO_T_NONE, NULL), PROTO_OK);
        proto_normalize(&t.b, &c);
        for (size_t i = 0; i < 2; i++) {
            base_buf_t out;
            base_buf_init(&out, 1 << 20);
            assert_int_equal(proto_encode_event(&t.b.events[i], PROTO_FMT_JSON, &out), PROTO_OK);
            json_t *r = record_json(&out);
            check_record(r, i == 0);
            json_decref(r);
            if (i == 0) {
                /* msgpack and JSON bodies produce byte-identical JSON records. */
                assert_true(out.len < sizeof first[0]);
                if (fmt == PROTO_FMT_MSGPACK) {
                    memcpy(first[0], out.data, out.len);
                    first[0][out.len] = '\0';
                } else {
                    assert_int_equal(strlen(first[0]), out.len);
                    assert_memory_equal(first[0], out.data, out.len);
                }
            }
            base_buf_free(&out);
        }
        tu_free(&t);
    });
}

static void test_clamped_record(void **state)
{
    (void)state;
    proto_norm_ctx_t c = ctx();
    tu_body_t t;
    assert_int_equal(tu_decode(&t,
                               "{\"batch\":[" TU_EVENT(",\"timestamp\":\"2027-01-01T00:00:00Z\","
                                                       "\"originalTimestamp\":\"client\"") "]}",
                               PROTO_FMT_JSON, PROTO_T_NONE, NULL),
                     PROTO_OK);
    proto_normalize(&t.b, &c);
    base_buf_t out;
    base_buf_init(&out, 1 << 16);
    assert_int_equal(proto_encode_event(&t.b.events[0], PROTO_FMT_JSON, &out), PROTO_OK);
    json_t *r = record_json(&out); /* REJECT_DUPLICATES: the client's originalTimestamp is gone */
    assert_string_equal(json_string_value(json_object_get(r, "timestamp")),
                        "2026-11-23T12:00:00.000Z");
    assert_string_equal(json_string_value(json_object_get(r, "originalTimestamp")),
                        "2027-01-01T00:00:00.000Z");
    json_decref(r);
    base_buf_free(&out);
    tu_free(&t);
}

/* The SPEC §2 fields a Segment-family client relies on: a generated messageId (marked, and a
 * forged mark dropped), numeric and empty ids, RudderStack's originalTimestamp, in both formats
 * of the record (the msgpack one checked through our JSON writer after decoding it back). */
static void test_segment_fields(void **state)
{
    (void)state;
    uint64_t seq = 0;
    proto_norm_ctx_t c = ctx();
    c.id_seed[0] = 1;
    c.id_seed[1] = 2;
    c.id_seq = &seq;
    TU_BOTH({
        tu_body_t t;
        assert_int_equal(
            tu_decode(
                &t,
                "{\"batch\":["
                "{\"type\":\"track\",\"userId\":42,\"event\":\"E\",\"messageIdGenerated\":false},"
                "{\"type\":\"track\",\"userId\":\"\",\"anonymousId\":\"a1\",\"event\":\"E\","
                "\"messageId\":null,\"originalTimestamp\":\"2026-11-23T10:00:00Z\"},"
                "{\"type\":\"group\",\"messageId\":\"g\",\"userId\":\"u\",\"groupId\":7}]}",
                fmt, PROTO_T_NONE, NULL),
            PROTO_OK);
        proto_normalize(&t.b, &c);
        const char *ids[2];
        for (size_t i = 0; i < 3; i++) {
            base_buf_t out;
            base_buf_init(&out, 1 << 16);
            assert_int_equal(proto_encode_event(&t.b.events[i], PROTO_FMT_JSON, &out), PROTO_OK);
            json_t *r = record_json(&out); /* REJECT_DUPLICATES: each key once */
            if (i < 2) {
                const char *mid = json_string_value(json_object_get(r, "messageId"));
                assert_non_null(mid);
                assert_int_equal(strlen(mid), PROTO_GEN_ID_LEN);
                assert_int_equal(mid[14], '4'); /* UUID version 4 */
                ids[i] = t.b.events[i].message_id.ptr;
                assert_true(json_is_true(json_object_get(r, "messageIdGenerated")));
            }
            if (i == 0) {
                assert_string_equal(json_string_value(json_object_get(r, "userId")), "42");
            } else if (i == 1) {
                assert_null(json_object_get(r, "userId")); /* "" is absent */
                assert_string_equal(json_string_value(json_object_get(r, "anonymousId")), "a1");
                /* RudderStack: originalTimestamp is the timestamp when no timestamp came */
                assert_string_equal(json_string_value(json_object_get(r, "originalTimestamp")),
                                    "2026-11-23T10:00:00.000Z");
                assert_string_equal(json_string_value(json_object_get(r, "timestamp")),
                                    "2026-11-23T10:00:00.000Z");
            } else {
                assert_string_equal(json_string_value(json_object_get(r, "groupId")), "7");
                assert_string_equal(json_string_value(json_object_get(r, "accountId")), "7");
                assert_string_equal(json_string_value(json_object_get(r, "messageId")), "g");
                assert_null(json_object_get(r, "messageIdGenerated"));
            }
            json_decref(r);
            /* The msgpack record carries the same keys. */
            base_buf_reset(&out);
            assert_int_equal(proto_encode_event(&t.b.events[i], PROTO_FMT_MSGPACK, &out), PROTO_OK);
            msgpack_unpacked up;
            msgpack_unpacked_init(&up);
            assert_int_equal(msgpack_unpack_next(&up, out.data, out.len, NULL),
                             MSGPACK_UNPACK_SUCCESS);
            bool gen = false;
            bool uid_str = false;
            for (uint32_t k = 0; k < up.data.via.map.size; k++) {
                const msgpack_object *key = &up.data.via.map.ptr[k].key;
                const msgpack_object *val = &up.data.via.map.ptr[k].val;
                if (key->via.str.size == 18 &&
                    memcmp(key->via.str.ptr, "messageIdGenerated", 18) == 0)
                    gen = val->type == MSGPACK_OBJECT_BOOLEAN && val->via.boolean;
                if (key->via.str.size == 6 && memcmp(key->via.str.ptr, "userId", 6) == 0)
                    uid_str = val->type == MSGPACK_OBJECT_STR;
            }
            assert_int_equal(gen, i < 2);
            assert_int_equal(uid_str, i != 1);
            msgpack_unpacked_destroy(&up);
            base_buf_free(&out);
        }
        assert_memory_not_equal(ids[0], ids[1], PROTO_GEN_ID_LEN);
        tu_free(&t);
    });
    assert_int_equal(seq, 4); /* two generated ids per format */
}

/* Numbers the JSON writer must get right; NaN/Inf only exist in msgpack input. */
static void test_numbers(void **state)
{
    (void)state;
    tu_mp_t m;
    tu_mp_event_start(&m, 1);
    tu_mp_str(&m, "properties");
    msgpack_pack_map(&m.pk, 9);
    tu_mp_str(&m, "nan");
    msgpack_pack_double(&m.pk, NAN);
    tu_mp_str(&m, "inf");
    msgpack_pack_double(&m.pk, -INFINITY);
    tu_mp_str(&m, "one");
    msgpack_pack_double(&m.pk, 1.0);
    tu_mp_str(&m, "tenth");
    msgpack_pack_double(&m.pk, 0.1);
    tu_mp_str(&m, "f32");
    msgpack_pack_float(&m.pk, 1.25f);
    tu_mp_str(&m, "big");
    msgpack_pack_double(&m.pk, 1e300);
    tu_mp_str(&m, "min");
    msgpack_pack_int64(&m.pk, INT64_MIN);
    tu_mp_str(&m, "max");
    msgpack_pack_uint64(&m.pk, UINT64_MAX);
    tu_mp_str(&m, "negz");
    msgpack_pack_double(&m.pk, -0.0);
    proto_batch_t b;
    proto_limits_t lim = proto_limits_default();
    assert_int_equal(proto_decode(&b, m.sb.data, m.sb.size, PROTO_FMT_MSGPACK, PROTO_T_NONE, &lim),
                     PROTO_OK);
    assert_int_equal(b.events[0].error, PROTO_OK);
    proto_norm_ctx_t c = ctx();
    proto_normalize(&b, &c);
    base_buf_t out;
    base_buf_init(&out, 1 << 16);
    assert_int_equal(proto_encode_event(&b.events[0], PROTO_FMT_JSON, &out), PROTO_OK);
    const char *want = "\"properties\":{\"nan\":null,\"inf\":null,\"one\":1.0,"
                       "\"tenth\":0.10000000000000001,\"f32\":1.25,\"big\":1.0000000000000001e+300,"
                       "\"min\":-9223372036854775808,\"max\":18446744073709551615,\"negz\":-0.0}";
    if (memmem(out.data, out.len, want, strlen(want)) == NULL)
        fail_msg("numbers: %.*s", (int)out.len, out.data);
    /* The msgpack record keeps float32 as float32 and NaN as NaN. */
    base_buf_reset(&out);
    assert_int_equal(proto_encode_event(&b.events[0], PROTO_FMT_MSGPACK, &out), PROTO_OK);
    msgpack_unpacked up;
    msgpack_unpacked_init(&up);
    assert_int_equal(msgpack_unpack_next(&up, out.data, out.len, NULL), MSGPACK_UNPACK_SUCCESS);
    const msgpack_object *props = NULL;
    for (uint32_t i = 0; i < up.data.via.map.size; i++)
        if (up.data.via.map.ptr[i].key.via.str.size == 10 &&
            memcmp(up.data.via.map.ptr[i].key.via.str.ptr, "properties", 10) == 0)
            props = &up.data.via.map.ptr[i].val;
    assert_non_null(props);
    assert_true(isnan(props->via.map.ptr[0].val.via.f64));
    assert_int_equal(props->via.map.ptr[4].val.type, MSGPACK_OBJECT_FLOAT32);
    msgpack_unpacked_destroy(&up);
    base_buf_free(&out);
    proto_batch_free(&b);
    msgpack_sbuffer_destroy(&m.sb);
}

static void test_caps_and_errors(void **state)
{
    (void)state;
    proto_norm_ctx_t c = ctx();
    tu_body_t t;
    assert_int_equal(tu_decode(&t, BATCH, PROTO_FMT_JSON, PROTO_T_NONE, NULL), PROTO_OK);
    proto_normalize(&t.b, &c);
    for (int f = 0; f < 2; f++) {
        base_buf_t out;
        base_buf_init(&out, 1 << 16);
        assert_int_equal(base_buf_append(&out, "prefix", 6), PROTO_OK);
        out.max = 100; /* far too small for the record */
        assert_int_equal(proto_encode_event(&t.b.events[0], (proto_format_t)f, &out),
                         PROTO_E_EVENT_TOO_LARGE);
        assert_int_equal(out.len, 6); /* restored */
        assert_memory_equal(out.data, "prefix", 6);
        /* Records append: two in one buffer. */
        out.max = 1 << 16;
        assert_int_equal(proto_encode_event(&t.b.events[0], (proto_format_t)f, &out), PROTO_OK);
        size_t one = out.len - 6;
        assert_int_equal(proto_encode_event(&t.b.events[0], (proto_format_t)f, &out), PROTO_OK);
        assert_int_equal(out.len, 6 + 2 * one);
        base_buf_free(&out);
    }
    tu_free(&t);
    /* An invalid event has no normalized record. */
    assert_int_equal(
        tu_decode(&t, "{\"batch\":[{\"type\":\"track\"}]}", PROTO_FMT_JSON, PROTO_T_NONE, NULL),
        PROTO_OK);
    base_buf_t out;
    base_buf_init(&out, 1 << 16);
    assert_int_not_equal(proto_encode_event(&t.b.events[0], PROTO_FMT_JSON, &out), PROTO_OK);
    assert_int_equal(out.len, 0);
    base_buf_free(&out);
    tu_free(&t);
}

static void test_rejected_record(void **state)
{
    (void)state;
    proto_norm_ctx_t c = ctx();
    tu_body_t t;
    assert_int_equal(tu_decode(&t,
                               "{\"batch\":[{\"type\":\"track\",\"messageId\":\"m9\","
                               "\"userId\":\"u\",\"properties\":{\"a\":[1,2.5,\"x\"]}}]}",
                               PROTO_FMT_JSON, PROTO_T_NONE, NULL),
                     PROTO_OK);
    proto_normalize(&t.b, &c);
    base_buf_t out;
    base_buf_init(&out, 1 << 16);
    assert_int_equal(proto_encode_rejected(&t.b.events[0], &out), PROTO_OK);
    json_t *r = record_json(&out);
    assert_string_equal(json_string_value(json_object_get(r, "error")), "missing_event");
    assert_string_equal(json_string_value(json_object_get(r, "message")),
                        "event is required for track");
    assert_string_equal(json_string_value(json_object_get(r, "source")), "web");
    assert_string_equal(json_string_value(json_object_get(r, "receivedAt")),
                        "2026-11-23T12:00:00.000Z");
    json_t *raw = json_object_get(r, "raw");
    json_t *want = json_loads("{\"type\":\"track\",\"messageId\":\"m9\",\"userId\":\"u\","
                              "\"properties\":{\"a\":[1,2.5,\"x\"]}}",
                              0, NULL);
    assert_true(json_equal(raw, want));
    json_decref(want);
    json_decref(r);

    /* Cap: raw does not fit → null plus rawTruncated, the reason is kept. */
    base_buf_reset(&out);
    out.max = 180;
    assert_int_equal(proto_encode_rejected(&t.b.events[0], &out), PROTO_OK);
    r = record_json(&out);
    assert_true(json_is_null(json_object_get(r, "raw")));
    assert_true(json_is_true(json_object_get(r, "rawTruncated")));
    assert_string_equal(json_string_value(json_object_get(r, "error")), "missing_event");
    json_decref(r);
    base_buf_reset(&out);
    out.max = 20;
    assert_int_equal(proto_encode_rejected(&t.b.events[0], &out), PROTO_E_EVENT_TOO_LARGE);
    assert_int_equal(out.len, 0);
    base_buf_free(&out);
    tu_free(&t);
}

/* Regression (issue 15): a single-event call carries writeKey in the event itself; the rejected
 * record's raw copy kept it, so the secret reached events_rejected. It is dropped, as in the
 * accepted record; everything else of the event stays, a nested writeKey too (it is data). */
static void test_rejected_raw_drops_writekey(void **state)
{
    (void)state;
    proto_norm_ctx_t c = ctx();
    tu_body_t t;
    assert_int_equal(tu_decode(&t,
                               "{\"writeKey\":\"wk_secret_123\",\"userId\":\"u\","
                               "\"messageId\":\"m1\",\"properties\":{\"writeKey\":\"x\"}}",
                               PROTO_FMT_JSON, PROTO_T_TRACK, NULL),
                     PROTO_OK);
    proto_normalize(&t.b, &c);
    assert_int_equal(t.b.n_events, 1);
    base_buf_t out;
    base_buf_init(&out, 1 << 16);
    assert_int_equal(proto_encode_rejected(&t.b.events[0], &out), PROTO_OK);
    assert_null(memmem(out.data, out.len, "wk_secret_123", 13));
    json_t *r = record_json(&out);
    assert_string_equal(json_string_value(json_object_get(r, "error")), "missing_event");
    json_t *raw = json_object_get(r, "raw");
    assert_null(json_object_get(raw, "writeKey"));
    assert_string_equal(json_string_value(json_object_get(raw, "messageId")), "m1");
    assert_string_equal(
        json_string_value(json_object_get(json_object_get(raw, "properties"), "writeKey")), "x");
    json_decref(r);
    base_buf_free(&out);
    tu_free(&t);
}

/* The raw copy of a rejected msgpack event may hold anything: it is still valid JSON. */
static void test_rejected_hostile_raw(void **state)
{
    (void)state;
    tu_mp_t m;
    tu_mp_event_start(&m, 4);
    msgpack_pack_int(&m.pk, 42); /* integer key → E_BAD_KEY */
    tu_mp_str(&m, "int-key");
    tu_mp_str(&m, "bad\xff\xc0\xafutf8 \xc3\xa9");
    tu_mp_str(&m, "v");
    tu_mp_str(&m, "bin");
    msgpack_pack_bin_with_body(&m.pk, "\x00\x01", 2);
    msgpack_pack_array(&m.pk, 1); /* array key */
    msgpack_pack_true(&m.pk);
    msgpack_pack_double(&m.pk, NAN);
    proto_batch_t b;
    proto_limits_t lim = proto_limits_default();
    assert_int_equal(proto_decode(&b, m.sb.data, m.sb.size, PROTO_FMT_MSGPACK, PROTO_T_NONE, &lim),
                     PROTO_OK);
    assert_int_equal(b.events[0].error, PROTO_E_BAD_KEY);
    proto_norm_ctx_t c = ctx();
    proto_normalize(&b, &c);
    base_buf_t out;
    base_buf_init(&out, 1 << 16);
    assert_int_equal(proto_encode_rejected(&b.events[0], &out), PROTO_OK);
    assert_true(base_utf8_valid(out.data, out.len));
    json_t *r = record_json(&out);
    json_t *raw = json_object_get(r, "raw");
    assert_string_equal(json_string_value(json_object_get(raw, "42")), "int-key");
    assert_string_equal(json_string_value(json_object_get(
                            raw, "bad\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbdutf8 \xc3\xa9")),
                        "v");
    assert_true(json_is_null(json_object_get(raw, "bin")));
    assert_true(json_is_null(json_object_get(raw, "[true]")));
    assert_string_equal(json_string_value(json_object_get(r, "error")), "invalid_key");
    json_decref(r);
    base_buf_free(&out);
    proto_batch_free(&b);
    msgpack_sbuffer_destroy(&m.sb);
}

/* Single-call bodies: writeKey inside the event is dropped; its own context is not duplicated. */
static void test_single_call_record(void **state)
{
    (void)state;
    proto_norm_ctx_t c = ctx();
    TU_BOTH({
        tu_body_t t;
        assert_int_equal(tu_decode(&t,
                                   "{\"messageId\":\"m\",\"anonymousId\":\"a\",\"writeKey\":\"wk\","
                                   "\"context\":{\"library\":{\"name\":\"analytics.js\"}}}",
                                   fmt, PROTO_T_PAGE, NULL),
                         PROTO_OK);
        proto_normalize(&t.b, &c);
        base_buf_t out;
        base_buf_init(&out, 1 << 16);
        assert_int_equal(proto_encode_event(&t.b.events[0], PROTO_FMT_JSON, &out), PROTO_OK);
        json_t *r = record_json(&out);
        assert_null(json_object_get(r, "writeKey"));
        assert_non_null(json_object_get(json_object_get(r, "context"), "library"));
        /* messageId anonymousId context + receivedAt timestamp source type */
        assert_int_equal(json_object_size(r), 7);
        assert_string_equal(json_string_value(json_object_get(r, "type")), "page");
        json_decref(r);
        base_buf_free(&out);
        tu_free(&t);
    });
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_msgpack_record),
        cmocka_unit_test(test_json_record),
        cmocka_unit_test(test_clamped_record),
        cmocka_unit_test(test_segment_fields),
        cmocka_unit_test(test_numbers),
        cmocka_unit_test(test_caps_and_errors),
        cmocka_unit_test(test_rejected_record),
        cmocka_unit_test(test_rejected_raw_drops_writekey),
        cmocka_unit_test(test_rejected_hostile_raw),
        cmocka_unit_test(test_single_call_record),
        cmocka_unit_test(test_msgpack_string_lengths),
        cmocka_unit_test(test_raw_copy_same_bytes),
        cmocka_unit_test(test_raw_copy_skips_edited),
        cmocka_unit_test(test_raw_copy_non_minimal_fits_cap),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
