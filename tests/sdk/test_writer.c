/* test_writer.c — proto/writer: msgpack encoding of events and batches, JSON rendering, UUIDs,
 * UTF-8 checks, bounded buffers. Decoded with msgpack-c (an independent implementation). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <msgpack.h>
#include <string.h>

#include "base.h"
#include "writer.h"

static const msgpack_object *get(const msgpack_object *m, const char *key)
{
    assert_int_equal(m->type, MSGPACK_OBJECT_MAP);
    for (uint32_t i = 0; i < m->via.map.size; i++) {
        const msgpack_object *k = &m->via.map.ptr[i].key;
        if (k->via.str.size == strlen(key) && !memcmp(k->via.str.ptr, key, k->via.str.size))
            return &m->via.map.ptr[i].val;
    }
    return NULL;
}

static void assert_str(const msgpack_object *o, const char *want)
{
    assert_non_null(o);
    assert_int_equal(o->type, MSGPACK_OBJECT_STR);
    assert_int_equal(o->via.str.size, strlen(want));
    assert_memory_equal(o->via.str.ptr, want, strlen(want));
}

static void test_ints_roundtrip(void **state)
{
    (void)state;
    const int64_t vals[] = {
        0,         1,  127, 128, 255,  256,  65535,  65536,  4294967295LL, 4294967296LL,
        INT64_MAX, -1, -32, -33, -128, -129, -32768, -32769, INT32_MIN,    (int64_t)INT32_MIN - 1,
        INT64_MIN};
    for (size_t i = 0; i < sizeof vals / sizeof vals[0]; i++) {
        base_buf_t b;
        base_buf_init(&b, 64);
        assert_int_equal(writer_int(&b, vals[i]), 0);
        msgpack_zone z;
        msgpack_zone_init(&z, 256);
        msgpack_object o;
        size_t off = 0;
        assert_int_equal(msgpack_unpack(b.data, b.len, &off, &z, &o), MSGPACK_UNPACK_SUCCESS);
        assert_int_equal(off, b.len);
        if (vals[i] >= 0) {
            assert_int_equal(o.type, MSGPACK_OBJECT_POSITIVE_INTEGER);
            assert_true(o.via.u64 == (uint64_t)vals[i]);
        } else {
            assert_int_equal(o.type, MSGPACK_OBJECT_NEGATIVE_INTEGER);
            assert_true(o.via.i64 == vals[i]);
        }
        msgpack_zone_destroy(&z);
        base_buf_free(&b);
    }
}

static void test_event_and_batch(void **state)
{
    (void)state;
    base_buf_t props;
    base_buf_init(&props, 1024);
    size_t pos;
    assert_int_equal(writer_map_open(&props, &pos), 0);
    writer_cstr(&props, "plan");
    writer_cstr(&props, "pro");
    writer_cstr(&props, "seats");
    writer_int(&props, 7);
    writer_close(&props, pos, 2);

    char long_name[300];
    memset(long_name, 'x', sizeof long_name - 1);
    long_name[sizeof long_name - 1] = '\0';
    writer_event_t ev = {.type = "track",
                         .message_id = "m-1",
                         .user_id = "u-1",
                         .event = long_name,
                         .has_timestamp = true,
                         .timestamp_ms = 1795000000000LL,
                         .properties = props.data,
                         .properties_len = props.len};
    base_buf_t b;
    base_buf_init(&b, 4096);
    size_t over = writer_batch_overhead(2, 1795000000123LL, "wk", 0);
    assert_int_equal(writer_batch_begin(&b, 2, 1795000000123LL, "wk", NULL, 0), 0);
    assert_int_equal(b.len, over);
    size_t before = b.len;
    assert_int_equal(writer_event(&b, &ev), 0);
    assert_int_equal(b.len - before, writer_event_size(&ev));
    ev.message_id = "m-2";
    ev.has_timestamp = false;
    before = b.len;
    assert_int_equal(writer_event(&b, &ev), 0);
    assert_int_equal(b.len - before, writer_event_size(&ev));

    msgpack_zone z;
    msgpack_zone_init(&z, 4096);
    msgpack_object root;
    size_t off = 0;
    assert_int_equal(msgpack_unpack(b.data, b.len, &off, &z, &root), MSGPACK_UNPACK_SUCCESS);
    assert_int_equal(off, b.len);
    assert_str(get(&root, "writeKey"), "wk");
    assert_true(get(&root, "sentAt")->via.u64 == 1795000000123ULL);
    const msgpack_object *batch = get(&root, "batch");
    assert_int_equal(batch->via.array.size, 2);
    const msgpack_object *e0 = &batch->via.array.ptr[0];
    assert_str(get(e0, "type"), "track");
    assert_str(get(e0, "messageId"), "m-1");
    assert_str(get(e0, "userId"), "u-1");
    assert_str(get(e0, "event"), long_name);
    assert_null(get(e0, "anonymousId"));
    assert_true(get(e0, "timestamp")->via.u64 == 1795000000000ULL);
    const msgpack_object *p = get(e0, "properties");
    assert_str(get(p, "plan"), "pro");
    assert_int_equal(get(p, "seats")->via.u64, 7);
    assert_null(get(&batch->via.array.ptr[1], "timestamp"));
    assert_str(get(&batch->via.array.ptr[1], "messageId"), "m-2");
    msgpack_zone_destroy(&z);

    /* The JSON rendering of the same batch. */
    base_buf_t j;
    base_buf_init(&j, 1 << 16);
    assert_int_equal(writer_msgpack_to_json(b.data, b.len, &j), 0);
    base_buf_append(&j, "", 1);
    assert_non_null(strstr(j.data, "\"properties\":{\"plan\":\"pro\",\"seats\":7}"));
    assert_non_null(strstr(j.data, "\"sentAt\":1795000000123"));
    base_buf_free(&j);
    base_buf_free(&b);
    base_buf_free(&props);
}

static void test_buffer_limits(void **state)
{
    (void)state;
    base_buf_t b;
    base_buf_init(&b, 10);
    assert_int_equal(writer_str(&b, "12345678", 8), 0); /* 9 bytes */
    assert_int_equal(writer_str(&b, "a", 1), WRITER_E_TOO_LARGE);
    assert_int_equal(b.len, 9); /* all or nothing */
    assert_int_equal(writer_nil(&b), 0);
    assert_int_equal(writer_nil(&b), WRITER_E_TOO_LARGE);
    base_buf_free(&b);

    char mem[4];
    base_buf_init_fixed(&b, mem, sizeof mem);
    assert_int_equal(writer_int(&b, 70000), WRITER_E_TOO_LARGE); /* needs 5 */
    assert_int_equal(writer_int(&b, 300), 0);
    assert_int_equal(b.len, 3); /* a fixed buffer is not freed: mem is the caller's */
    assert_string_equal(writer_strerror(WRITER_E_TOO_LARGE),
                        "output would exceed the buffer's limit");
}

static void test_json_escaping_and_refusals(void **state)
{
    (void)state;
    base_buf_t b, j;
    base_buf_init(&b, 256);
    base_buf_init(&j, 256);
    writer_array_header(&b, 4);
    writer_str(&b, "a\"b\\c\n\x01", 7);
    writer_double(&b, 0.5);
    writer_bool(&b, false);
    writer_nil(&b);
    assert_int_equal(writer_msgpack_to_json(b.data, b.len, &j), 0);
    assert_int_equal(j.len, strlen("[\"a\\\"b\\\\c\\n\\u0001\",0.5,false,null]"));
    assert_memory_equal(j.data, "[\"a\\\"b\\\\c\\n\\u0001\",0.5,false,null]", j.len);

    /* trailing bytes, truncation, bin, non-string key, too deep */
    j.len = 0;
    assert_int_equal(writer_msgpack_to_json(b.data, b.len - 1, &j), WRITER_E_MALFORMED);
    writer_nil(&b);
    assert_int_equal(writer_msgpack_to_json(b.data, b.len, &j), WRITER_E_MALFORMED);
    assert_int_equal(j.len, 0);
    const unsigned char bin[] = {0xc4, 0x01, 0x00};
    assert_int_equal(writer_msgpack_to_json(bin, sizeof bin, &j), WRITER_E_MALFORMED);
    const unsigned char intkey[] = {0x81, 0x01, 0x02};
    assert_int_equal(writer_msgpack_to_json(intkey, sizeof intkey, &j), WRITER_E_MALFORMED);
    unsigned char deep[100];
    memset(deep, 0x91, sizeof deep);
    deep[99] = 0xc0;
    assert_int_equal(writer_msgpack_to_json(deep, sizeof deep, &j), WRITER_E_DEPTH);
    const unsigned char huge_count[] = {0xdd, 0xff, 0xff, 0xff, 0xff};
    assert_int_equal(writer_msgpack_to_json(huge_count, sizeof huge_count, &j), WRITER_E_MALFORMED);
    base_buf_free(&b);
    base_buf_free(&j);
}

static void test_uuid_v4(void **state)
{
    (void)state;
    char u[WRITER_UUID_LEN + 1];
    writer_uuid_v4(0, 0, u);
    assert_string_equal(u, "00000000-0000-4000-8000-000000000000");
    writer_uuid_v4(UINT64_MAX, UINT64_MAX, u);
    assert_string_equal(u, "ffffffff-ffff-4fff-bfff-ffffffffffff");
    writer_uuid_v4(0x0123456789abcdefULL, 0xfedcba9876543210ULL, u);
    assert_string_equal(u, "01234567-89ab-4def-bedc-ba9876543210");
}

static void test_utf8(void **state)
{
    (void)state;
    assert_true(base_utf8_valid("plain", 5));
    assert_true(base_utf8_valid("\xc3\xa9\xe2\x82\xac\xf0\x9f\x98\x80", 9));
    assert_false(base_utf8_valid("\xc0\xaf", 2));         /* overlong */
    assert_false(base_utf8_valid("\xed\xa0\x80", 3));     /* surrogate */
    assert_false(base_utf8_valid("\xf4\x90\x80\x80", 4)); /* > U+10FFFF */
    assert_false(base_utf8_valid("\xe2\x82", 2));         /* truncated */
    assert_false(base_utf8_valid("\x80", 1));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_ints_roundtrip), cmocka_unit_test(test_event_and_batch),
        cmocka_unit_test(test_buffer_limits),  cmocka_unit_test(test_json_escaping_and_refusals),
        cmocka_unit_test(test_uuid_v4),        cmocka_unit_test(test_utf8),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
