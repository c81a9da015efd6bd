/*
 * Unit tests for collector/stream/stream_record.c: the fields sluice-stream reads from an events
 * record, msgpack and JSON, and the documented answer to bad input (STREAM_REC_E_BAD: counted and
 * skipped by the worker) — not msgpack/JSON, not a map, no type, a field of the wrong type, an
 * unparsable timestamp, trailing bytes — and that the in-place msgpack walker accepts exactly
 * what msgpack_unpack accepts, with the same fields (test_msgpack_walker_matches_msgpack_unpack:
 * every truncation, byte flips at every offset, nesting at and past msgpack-c's depth limit).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <msgpack.h>
#include <stdio.h>
#include <string.h>

#include "../../collector/stream/stream_record.c"

static void pk_str(msgpack_packer *pk, const char *s)
{
    msgpack_pack_str(pk, strlen(s));
    msgpack_pack_str_body(pk, s, strlen(s));
}

static bool eq(const stream_str_t *s, const char *want)
{
    return s->p != NULL && s->n == strlen(want) && memcmp(s->p, want, s->n) == 0;
}

static void test_msgpack_record_fields(void **state)
{
    (void)state;
    msgpack_sbuffer sb;
    msgpack_sbuffer_init(&sb);
    msgpack_packer pk;
    msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
    msgpack_pack_map(&pk, 9);
    pk_str(&pk, "type"), pk_str(&pk, "track");
    pk_str(&pk, "event"), pk_str(&pk, "Pricing Page Viewed");
    pk_str(&pk, "userId"), pk_str(&pk, "u1");
    pk_str(&pk, "properties");
    msgpack_pack_map(&pk, 1);
    pk_str(&pk, "userId"), msgpack_pack_int(&pk, 5); /* nested: not read */
    pk_str(&pk, "messageId"), pk_str(&pk, "m-1");
    pk_str(&pk, "messageIdGenerated"), msgpack_pack_true(&pk);
    pk_str(&pk, "timestamp"), pk_str(&pk, "2026-01-01T00:00:01.500Z");
    pk_str(&pk, "source"), pk_str(&pk, "web");
    pk_str(&pk, "accountId"), pk_str(&pk, "acme");
    stream_decoder_t d;
    stream_decoder_init(&d);
    stream_rec_t r;
    assert_int_equal(stream_record_decode(&d, sb.data, sb.size, false, &r), 0);
    assert_true(eq(&r.type, "track"));
    assert_true(eq(&r.event, "Pricing Page Viewed"));
    assert_true(eq(&r.user, "u1"));
    assert_null(r.anon.p);
    assert_true(eq(&r.message_id, "m-1"));
    assert_true(r.message_id_generated);
    assert_true(eq(&r.source, "web"));
    assert_true(eq(&r.account, "acme"));
    assert_int_equal(r.ts_ms, 1767225601500LL);
    /* trailing bytes after the map: not one record */
    msgpack_pack_nil(&pk);
    assert_int_equal(stream_record_decode(&d, sb.data, sb.size, false, &r), STREAM_REC_E_BAD);
    stream_decoder_free(&d);
    msgpack_sbuffer_destroy(&sb);
}

static void test_json_record_fields(void **state)
{
    (void)state;
    const char *j = "{\"type\":\"identify\",\"anonymousId\":\"a1\",\"accountId\":null,"
                    "\"timestamp\":\"2026-01-01T00:00:00.000Z\",\"traits\":{\"x\":1}}";
    stream_decoder_t d;
    stream_decoder_init(&d);
    stream_rec_t r;
    assert_int_equal(stream_record_decode(&d, j, strlen(j), true, &r), 0);
    assert_true(eq(&r.type, "identify"));
    assert_true(eq(&r.anon, "a1"));
    assert_null(r.account.p); /* null = absent */
    assert_null(r.message_id.p);
    assert_false(r.message_id_generated);
    assert_int_equal(r.ts_ms, 1767225600000LL);
    stream_decoder_free(&d);
}

static void test_bad_records_are_refused(void **state)
{
    (void)state;
    static const char *const bad_json[] = {
        "",
        "not json",
        "[1,2]",
        "{\"event\":\"x\"}",                                /* no type */
        "{\"type\":5}",                                     /* type not a string */
        "{\"type\":\"track\",\"userId\":12}",               /* userId not a string */
        "{\"type\":\"track\",\"timestamp\":\"yesterday\"}", /* unparsable time */
        "{\"type\":\"track\",\"messageIdGenerated\":\"yes\"}",
        "{\"type\":\"track\",\"type\":\"page\"}", /* duplicate key */
    };
    stream_decoder_t d;
    stream_decoder_init(&d);
    stream_rec_t r;
    for (size_t i = 0; i < sizeof bad_json / sizeof bad_json[0]; i++)
        if (stream_record_decode(&d, bad_json[i], strlen(bad_json[i]), true, &r) !=
            STREAM_REC_E_BAD)
            fail_msg("accepted: %s", bad_json[i]);
    static const char garbage[] = "\xc1garbage";
    assert_int_equal(stream_record_decode(&d, garbage, 8, false, &r), STREAM_REC_E_BAD);
    assert_int_equal(stream_record_decode(&d, "\x93\x01\x02\x03", 4, false, &r),
                     STREAM_REC_E_BAD); /* an array */
    assert_int_equal(stream_record_decode(&d, "\x81\x01\x02", 3, false, &r),
                     STREAM_REC_E_BAD); /* integer key */
    assert_int_equal(stream_record_decode(&d, NULL, 0, false, &r), STREAM_REC_E_BAD);
    stream_decoder_free(&d);
}

/* The decoder before the in-place walker: msgpack_unpack into a zone, then the same fields. */
static int ref_decode(msgpack_zone *z, const void *val, size_t len, stream_rec_t *r)
{
    memset(r, 0, sizeof *r);
    r->ts_ms = -1;
    if (val == NULL || len == 0) return STREAM_REC_E_BAD;
    msgpack_zone_clear(z);
    msgpack_object obj;
    size_t off = 0;
    msgpack_unpack_return ur = msgpack_unpack(val, len, &off, z, &obj);
    if (ur == MSGPACK_UNPACK_NOMEM_ERROR) return STREAM_REC_E_NOMEM;
    if (ur != MSGPACK_UNPACK_SUCCESS || off != len || obj.type != MSGPACK_OBJECT_MAP)
        return STREAM_REC_E_BAD;
    stream_decoder_t fresh = {0}; /* an empty timestamp cache every time: the plain parse */
    for (uint32_t i = 0; i < obj.via.map.size; i++) {
        const msgpack_object_kv *kv = &obj.via.map.ptr[i];
        if (kv->key.type != MSGPACK_OBJECT_STR) return STREAM_REC_E_BAD;
        const msgpack_object *v = &kv->val;
        bool is_str = v->type == MSGPACK_OBJECT_STR;
        int is_bool = v->type == MSGPACK_OBJECT_BOOLEAN ? (v->via.boolean ? 1 : 0) : -1;
        int rc = field(&fresh, r, kv->key.via.str.ptr, kv->key.via.str.size,
                       is_str ? v->via.str.ptr : NULL, is_str ? v->via.str.size : 0, is_str,
                       v->type == MSGPACK_OBJECT_NIL, is_bool);
        if (rc != 0) return rc;
    }
    if (r->type.p == NULL) return STREAM_REC_E_BAD;
    return 0;
}

/* Same presence and bytes (msgpack-c points an empty string elsewhere in the record). */
static bool same_str(const stream_str_t *a, const stream_str_t *b)
{
    if ((a->p == NULL) != (b->p == NULL) || a->n != b->n) return false;
    return a->n == 0 || memcmp(a->p, b->p, a->n) == 0;
}

/* Both refuse, or both accept with the same fields. */
static void check_same(stream_decoder_t *d, msgpack_zone *z, const char *buf, size_t len,
                       size_t *accepted)
{
    stream_rec_t a, b;
    int ra = stream_record_decode(d, buf, len, false, &a);
    int rb = ref_decode(z, buf, len, &b);
    if ((ra == 0) != (rb == 0)) fail_msg("len %zu: walker %d, msgpack_unpack %d", len, ra, rb);
    if (ra != 0) return;
    (*accepted)++;
    assert_true(same_str(&a.type, &b.type) && same_str(&a.event, &b.event) &&
                same_str(&a.user, &b.user) && same_str(&a.anon, &b.anon) &&
                same_str(&a.account, &b.account) && same_str(&a.source, &b.source) &&
                same_str(&a.message_id, &b.message_id));
    assert_int_equal(a.message_id_generated, b.message_id_generated);
    assert_int_equal(a.ts_ms, b.ts_ms);
}

static void nest(msgpack_packer *pk, int depth, bool map)
{
    for (int i = 0; i < depth; i++) {
        if (map) {
            msgpack_pack_map(pk, 1);
            pk_str(pk, "k");
        } else {
            msgpack_pack_array(pk, 1);
        }
    }
    msgpack_pack_nil(pk);
}

static void test_msgpack_walker_matches_msgpack_unpack(void **state)
{
    (void)state;
    stream_decoder_t d;
    stream_decoder_init(&d);
    msgpack_zone z;
    msgpack_zone_init(&z, 4096);
    size_t accepted = 0, inputs = 0;
    for (int variant = 0; variant < 4; variant++) {
        msgpack_sbuffer sb;
        msgpack_sbuffer_init(&sb);
        msgpack_packer pk;
        msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
        msgpack_pack_map(&pk, variant == 3 ? 21 : 13);
        pk_str(&pk, "type"), pk_str(&pk, "track");
        pk_str(&pk, "event"), pk_str(&pk, "Pricing Page Viewed");
        pk_str(&pk, "userId"), pk_str(&pk, "u1");
        pk_str(&pk, "properties");
        msgpack_pack_map(&pk, 12);
        pk_str(&pk, "i8"), msgpack_pack_int8(&pk, -100);
        pk_str(&pk, "u16"), msgpack_pack_uint16(&pk, 60000);
        pk_str(&pk, "i32"), msgpack_pack_int32(&pk, -100000);
        pk_str(&pk, "u64"), msgpack_pack_uint64(&pk, 1ull << 60);
        pk_str(&pk, "f"), msgpack_pack_float(&pk, 1.5f);
        pk_str(&pk, "d"), msgpack_pack_double(&pk, 2.5);
        pk_str(&pk, "bin"), msgpack_pack_bin(&pk, 3), msgpack_pack_bin_body(&pk, "abc", 3);
        pk_str(&pk, "ext1"), msgpack_pack_ext(&pk, 1, 7), msgpack_pack_ext_body(&pk, "x", 1);
        pk_str(&pk, "ext5"), msgpack_pack_ext(&pk, 5, 7), msgpack_pack_ext_body(&pk, "abcde", 5);
        pk_str(&pk, "arr"), msgpack_pack_array(&pk, 3), msgpack_pack_true(&pk),
            msgpack_pack_nil(&pk), msgpack_pack_array(&pk, 0);
        pk_str(&pk, "deep");
        /* at the limit (variant 1: one past it): the record map + properties + these */
        nest(&pk, variant == 1 ? 31 : 30, variant == 2);
        pk_str(&pk, "m"), msgpack_pack_map(&pk, 0);
        pk_str(&pk, "messageId"), pk_str(&pk, "m-1");
        pk_str(&pk, "messageIdGenerated"), msgpack_pack_false(&pk);
        pk_str(&pk, "timestamp"), pk_str(&pk, "2026-01-01T00:00:01.500Z");
        pk_str(&pk, "source"), msgpack_pack_nil(&pk);
        pk_str(&pk, "accountId"), pk_str(&pk, "acme");
        char longs[300];
        memset(longs, 'x', sizeof longs);
        pk_str(&pk, "context"), msgpack_pack_str(&pk, sizeof longs),
            msgpack_pack_str_body(&pk, longs, sizeof longs);
        pk_str(&pk, "anonymousId"), msgpack_pack_str(&pk, 2), msgpack_pack_str_body(&pk, "a1", 2);
        pk_str(&pk, "n"), msgpack_pack_int(&pk, 1);
        pk_str(&pk, "z"), msgpack_pack_int(&pk, -1);
        for (int e = 12; e < (variant == 3 ? 20 : 12); e++) /* map16 header */
        {
            char k[16];
            snprintf(k, sizeof k, "e%d", e);
            pk_str(&pk, k), msgpack_pack_int(&pk, e);
        }
        char *buf = malloc(sb.size);
        assert_non_null(buf);
        stream_rec_t whole;
        /* one container past msgpack-c's depth limit (variant 1) is refused, the rest decode */
        assert_int_equal(stream_record_decode(&d, sb.data, sb.size, false, &whole) == 0,
                         variant != 1);
        assert_int_equal(ref_decode(&z, sb.data, sb.size, &whole) == 0, variant != 1);
        for (size_t len = 1; len <= sb.size; len++, inputs++) { /* every truncation */
            memcpy(buf, sb.data, len);
            check_same(&d, &z, buf, len, &accepted);
        }
        static const unsigned char vals[] = {0x00, 0x7f, 0x80, 0x8f, 0x90, 0x9f, 0xa0, 0xbf, 0xc0,
                                             0xc1, 0xc2, 0xc3, 0xc4, 0xc7, 0xca, 0xcc, 0xcf, 0xd4,
                                             0xd8, 0xd9, 0xdb, 0xdc, 0xde, 0xe0, 0xff};
        /* byte flips at every offset (not to array32/map32: msgpack_unpack allocates the count
         * it reads up front, gigabytes under ASan; those two are checked by hand below) */
        for (size_t off = 0; off < sb.size; off++)
            for (size_t v = 0; v < sizeof vals; v++, inputs++) {
                memcpy(buf, sb.data, sb.size);
                buf[off] = (char)vals[v];
                check_same(&d, &z, buf, sb.size, &accepted);
            }
        free(buf);
        msgpack_sbuffer_destroy(&sb);
    }
    static const struct {
        const char *b;
        size_t n;
        bool ok;
    } hand[] = {
        {"\xdf\x00\x00\x00\x01\xa4type\xa5track", 16, true}, /* map32 */
        {"\xdf\x00\x00\x00\x02\xa4type\xa5track\xa1x\xdd\x00\x00\x00\x01\xc0", 24,
         true}, /* + array32 */
        {"\xdf\x00\x00\x00\x02\xa4type\xa5track\xa1x\xdd\x00\x00\x00\x02\xc0", 24,
         false},                                                      /* short */
        {"\xdd\x00\x00\x00\x01\xa4type", 10, false},                  /* an array */
        {"\x82\xa4type\xa5track\xa1x\xdf\x00\x00\x00\x00", 19, true}, /* empty map32 */
    };
    for (size_t i = 0; i < sizeof hand / sizeof hand[0]; i++, inputs++) {
        size_t before = accepted;
        check_same(&d, &z, hand[i].b, hand[i].n, &accepted);
        assert_int_equal(accepted - before, hand[i].ok ? 1 : 0);
    }
    /* the base records themselves (variants 0, 2, 3) and many flips that keep a record valid */
    print_message("%zu inputs, %zu accepted\n", inputs, accepted);
    assert_true(accepted > 1000);
    assert_true(inputs > 10000);
    msgpack_zone_destroy(&z);
    stream_decoder_free(&d);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_msgpack_record_fields),
        cmocka_unit_test(test_json_record_fields),
        cmocka_unit_test(test_bad_records_are_refused),
        cmocka_unit_test(test_msgpack_walker_matches_msgpack_unpack),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
