/*
 * Unit tests for collector/stream/stream_record.c: the fields sluice-stream reads from an events
 * record, msgpack and JSON, and the documented answer to bad input (STREAM_REC_E_BAD: counted and
 * skipped by the worker) — not msgpack/JSON, not a map, no type, a field of the wrong type, an
 * unparsable timestamp, trailing bytes.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <msgpack.h>
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

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_msgpack_record_fields),
        cmocka_unit_test(test_json_record_fields),
        cmocka_unit_test(test_bad_records_are_refused),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
