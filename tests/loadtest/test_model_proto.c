/* The traffic model against the real wire-format code: every event sluice-load sends as valid
 * passes proto_decode()'s validation, and every invalid kind fails with exactly the error code the
 * verifier will expect in events_rejected. This pins the harness to proto/ so the two cannot
 * drift apart silently. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "model.h"
#include "proto.h"

static void check_format(enc_format_t fmt)
{
    model_config_t c;
    model_config_default(&c);
    c.format = fmt;
    c.seed = 5;
    c.base_ms = 1795000000000LL;
    c.invalid_rate = 0.5;
    c.dup_rate = 0.05;
    model_t *m;
    model_stream_t *s;
    assert_int_equal(model_new(&c, &m), 0);
    assert_int_equal(model_stream_new(m, 0, &s), 0);
    proto_limits_t lim = proto_limits_default();
    int seen[MODEL_KIND_COUNT] = {0};
    for (int b = 0; b < 40; b++) {
        const char *body;
        size_t len, n;
        const model_item_t *items;
        assert_int_equal(model_stream_next(s, 1795000001000LL, &body, &len, &items, &n), 0);
        proto_batch_t pb;
        memset(&pb, 0, sizeof(pb));
        int rc = proto_decode(&pb, body, len, fmt == ENC_JSON ? PROTO_FMT_JSON : PROTO_FMT_MSGPACK,
                              PROTO_T_NONE, &lim);
        if (rc != 0) fail_msg("batch %d: request-level error %s", b, proto_err_code(rc));
        assert_int_equal(pb.n_events, n);
        for (size_t i = 0; i < n; i++) {
            int want = items[i].kind;
            const char *got = proto_err_code(pb.events[i].error);
            if (want == MODEL_VALID) {
                if (pb.events[i].error != 0)
                    fail_msg("batch %d event %zu: valid event rejected as %s", b, i, got);
            } else if (strcmp(got, model_kind_code(want)) != 0) {
                fail_msg("batch %d event %zu: kind %s rejected as %s", b, i, model_kind_name(want),
                         got);
            }
            seen[want]++;
        }
        proto_batch_free(&pb);
    }
    for (int k = 0; k < MODEL_KIND_COUNT; k++)
        if (fmt == ENC_MSGPACK || (k != MODEL_INV_BAD_UTF8 && k != MODEL_INV_BAD_KEY))
            assert_true(seen[k] > 0);
    model_stream_free(s);
    model_free(m);
}

static void test_msgpack_kinds(void **state)
{
    check_format(ENC_MSGPACK);
}

static void test_json_kinds(void **state)
{
    check_format(ENC_JSON);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_msgpack_kinds),
        cmocka_unit_test(test_json_kinds),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
