/* Unit tests of loadtest/model.c: determinism from the seed, messageId round trip, the duplicate
 * and invalid rates, the PQL script, and that bodies are well-formed msgpack / JSON. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>
#include <jansson.h>
#include <msgpack.h>

#include "lt_error.h"
#include "model.h"

static model_config_t base_cfg(enc_format_t fmt, uint64_t seed)
{
    model_config_t c;
    model_config_default(&c);
    c.seed = seed;
    c.format = fmt;
    c.base_ms = 1795000000000LL;
    c.dup_rate = 0.1;
    c.invalid_rate = 0.1;
    strcpy(c.run_id, "t1");
    return c;
}

/* Concatenation of the first n batches of stream sid, as one heap buffer (caller frees). */
static char *run_batches(const model_config_t *c, uint32_t sid, int n, size_t *total)
{
    model_t *m = NULL;
    model_stream_t *s = NULL;
    assert_int_equal(model_new(c, &m), 0);
    assert_int_equal(model_stream_new(m, sid, &s), 0);
    char *all = NULL;
    *total = 0;
    for (int i = 0; i < n; i++) {
        const char *body;
        size_t len, ni;
        const model_item_t *items;
        assert_int_equal(model_stream_next(s, 1795000001000LL + i, &body, &len, &items, &ni), 0);
        all = realloc(all, *total + len);
        assert_non_null(all);
        memcpy(all + *total, body, len);
        *total += len;
    }
    model_stream_free(s);
    model_free(m);
    return all;
}

static void test_same_seed_same_bytes(void **state)
{
    for (int f = 0; f < 2; f++) {
        model_config_t c = base_cfg(f ? ENC_JSON : ENC_MSGPACK, 42);
        size_t n1, n2, n3;
        char *a = run_batches(&c, 1, 20, &n1);
        char *b = run_batches(&c, 1, 20, &n2);
        assert_int_equal(n1, n2);
        assert_memory_equal(a, b, n1);
        c.seed = 43;
        char *d = run_batches(&c, 1, 20, &n3);
        assert_true(n1 != n3 || memcmp(a, d, n1) != 0);
        free(a);
        free(b);
        free(d);
    }
}

static void test_bad_config(void **state)
{
    model_t *m = NULL;
    model_config_t c = base_cfg(ENC_MSGPACK, 1);
    c.batch = 0;
    assert_int_equal(model_new(&c, &m), LT_E_INVAL);
    c = base_cfg(ENC_MSGPACK, 1);
    strcpy(c.run_id, "a-b");
    assert_int_equal(model_new(&c, &m), LT_E_INVAL);
    c = base_cfg(ENC_MSGPACK, 1);
    c.dup_rate = 1.5;
    assert_int_equal(model_new(&c, &m), LT_E_INVAL);
    assert_null(m);
}

static void test_message_id_round_trip(void **state)
{
    model_config_t c = base_cfg(ENC_MSGPACK, 1);
    model_t *m;
    assert_int_equal(model_new(&c, &m), 0);
    uint32_t st;
    uint64_t sq;
    assert_true(model_parse_message_id(m, "t1-3-12345", 10, &st, &sq));
    assert_int_equal(st, 3);
    assert_int_equal(sq, 12345);
    assert_true(model_parse_message_id(m, "t1-0-7-xxxx", 11, &st, &sq));
    assert_int_equal(sq, 7);
    assert_false(model_parse_message_id(m, "t2-3-12345", 10, &st, &sq));
    assert_false(model_parse_message_id(m, "t1-3-", 5, &st, &sq));
    assert_false(model_parse_message_id(m, "t1-3-12a", 8, &st, &sq));
    model_free(m);
}

/* Walks a msgpack body: the batch array's events, checking each slot's messageId against items. */
static void check_msgpack_body(const model_t *m, const char *body, size_t len,
                               const model_item_t *items, size_t n)
{
    msgpack_unpacked u;
    msgpack_unpacked_init(&u);
    size_t off = 0;
    assert_int_equal(msgpack_unpack_next(&u, body, len, &off), MSGPACK_UNPACK_SUCCESS);
    assert_int_equal(off, len);
    assert_int_equal(u.data.type, MSGPACK_OBJECT_MAP);
    const msgpack_object *batch = NULL;
    for (uint32_t i = 0; i < u.data.via.map.size; i++) {
        const msgpack_object_kv *kv = &u.data.via.map.ptr[i];
        if (kv->key.via.str.size == 5 && memcmp(kv->key.via.str.ptr, "batch", 5) == 0)
            batch = &kv->val;
    }
    assert_non_null(batch);
    assert_int_equal(batch->via.array.size, n);
    for (size_t i = 0; i < n; i++) {
        const msgpack_object *ev = &batch->via.array.ptr[i];
        if (items[i].kind == MODEL_INV_NOT_A_MAP) {
            assert_int_equal(ev->type, MSGPACK_OBJECT_STR);
            continue;
        }
        assert_int_equal(ev->type, MSGPACK_OBJECT_MAP);
        for (uint32_t k = 0; k < ev->via.map.size; k++) {
            const msgpack_object_kv *kv = &ev->via.map.ptr[k];
            if (kv->key.type == MSGPACK_OBJECT_STR && kv->key.via.str.size == 9 &&
                memcmp(kv->key.via.str.ptr, "messageId", 9) == 0 &&
                items[i].kind != MODEL_INV_NUMERIC_MESSAGE_ID) {
                uint32_t st;
                uint64_t sq;
                assert_true(
                    model_parse_message_id(m, kv->val.via.str.ptr, kv->val.via.str.size, &st, &sq));
                assert_int_equal(sq, items[i].seq);
            }
        }
    }
    msgpack_unpacked_destroy(&u);
}

static void test_rates_and_wellformed(void **state)
{
    for (int f = 0; f < 2; f++) {
        model_config_t c = base_cfg(f ? ENC_JSON : ENC_MSGPACK, 7);
        c.dup_rate = 0.2;
        c.invalid_rate = 0.3;
        model_t *m;
        model_stream_t *s;
        assert_int_equal(model_new(&c, &m), 0);
        assert_int_equal(model_stream_new(m, 2, &s), 0);
        size_t total = 0, dups = 0, invalid = 0, kinds[MODEL_KIND_COUNT] = {0};
        for (int b = 0; b < 100; b++) {
            const char *body;
            size_t len, n;
            const model_item_t *items;
            assert_int_equal(model_stream_next(s, 1795000001000LL, &body, &len, &items, &n), 0);
            assert_int_equal(n, 100);
            for (size_t i = 0; i < n; i++) {
                total++;
                dups += items[i].dup;
                if (!items[i].dup && items[i].kind != MODEL_VALID) {
                    invalid++;
                    kinds[items[i].kind]++;
                }
            }
            if (f == 0) {
                check_msgpack_body(m, body, len, items, n);
            } else {
                json_error_t jerr;
                json_t *j = json_loadb(body, len, 0, &jerr);
                assert_non_null(j);
                assert_int_equal(json_array_size(json_object_get(j, "batch")), 100);
                json_decref(j);
            }
        }
        assert_true(dups > total * 15 / 100 && dups < total * 25 / 100);
        size_t fresh = total - dups;
        assert_true(invalid > fresh * 25 / 100 && invalid < fresh * 35 / 100);
        for (int k = 1; k < MODEL_KIND_COUNT; k++) {
            bool mp_only = k == MODEL_INV_BAD_UTF8 || k == MODEL_INV_BAD_KEY;
            if (f == 1 && mp_only)
                assert_int_equal(kinds[k], 0);
            else
                assert_true(kinds[k] > 0);
            assert_non_null(model_kind_code(k));
        }
        assert_int_equal(model_stream_seqs(s), fresh);
        model_stream_free(s);
        model_free(m);
    }
}

/* A re-sent event carries the same messageId as its first copy, and the script comes first. */
static void test_script_and_resend(void **state)
{
    model_config_t c = base_cfg(ENC_JSON, 9);
    c.dup_rate = 0.5;
    c.invalid_rate = 0;
    model_t *m;
    model_stream_t *s;
    assert_int_equal(model_new(&c, &m), 0);
    assert_int_equal(model_scripted_count(m), 3);
    const char *acct, *tier;
    model_scripted(m, 0, &acct, &tier);
    assert_string_equal(acct, "pql-hot-t1");
    assert_string_equal(tier, "hot");
    assert_int_equal(model_stream_new(m, 0, &s), 0);
    const char *body;
    size_t len, n;
    const model_item_t *items;
    assert_int_equal(model_stream_next(s, 1795000001000LL, &body, &len, &items, &n), 0);
    json_error_t jerr;
    json_t *j = json_loadb(body, len, 0, &jerr);
    assert_non_null(j);
    json_t *batch = json_object_get(j, "batch");
    int pricing_hot = 0;
    for (size_t i = 0; i < n; i++) {
        json_t *ev = json_array_get(batch, i);
        const char *mid = json_string_value(json_object_get(ev, "messageId"));
        uint32_t st;
        uint64_t sq;
        assert_true(model_parse_message_id(m, mid, strlen(mid), &st, &sq));
        assert_int_equal(sq, items[i].seq);
        if (items[i].dup) {
            /* byte-identical re-send: same content as the first copy of that seq */
            for (size_t k = 0; k < i; k++)
                if (!items[k].dup && items[k].seq == items[i].seq)
                    assert_true(json_equal(json_array_get(batch, k), ev));
        }
        const char *e = json_string_value(json_object_get(ev, "event"));
        json_t *ctx = json_object_get(ev, "context");
        const char *g = json_string_value(json_object_get(ctx, "groupId"));
        if (e && g && strcmp(e, "Pricing Page Viewed") == 0 && strcmp(g, "pql-hot-t1") == 0)
            pricing_hot++;
    }
    assert_true(pricing_hot >= 1);
    json_decref(j);
    model_stream_free(s);
    model_free(m);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_same_seed_same_bytes),  cmocka_unit_test(test_bad_config),
        cmocka_unit_test(test_message_id_round_trip), cmocka_unit_test(test_rates_and_wellformed),
        cmocka_unit_test(test_script_and_resend),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
