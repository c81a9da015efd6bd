/*
 * test_http_parse.c — the parser side of the HTTP layer (collector/http_parse.c) as pure
 * functions: the body format a Content-Type label selects. The parser at work, limits
 * included, is tested over real connections in test_http_conn.c and tests/integration.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "http_parse.c"

static void test_content_type(void **state)
{
    (void)state;
#define CT(s) content_type_parse((s), strlen(s))
    /* msgpack only when labelled so ... */
    assert_int_equal(CT("application/msgpack"), PROTO_FMT_MSGPACK);
    assert_int_equal(CT(" application/x-msgpack ; q=1"), PROTO_FMT_MSGPACK);
    assert_int_equal(CT("Application/MsgPack"), PROTO_FMT_MSGPACK);
    /* ... JSON whatever else the label says (SPEC §3). */
    assert_int_equal(CT(""), PROTO_FMT_JSON);
    assert_int_equal(CT("application/json"), PROTO_FMT_JSON);
    assert_int_equal(CT("Application/JSON; charset=utf-8"), PROTO_FMT_JSON);
    assert_int_equal(CT("text/plain;charset=UTF-8"), PROTO_FMT_JSON);
    assert_int_equal(CT("application/x-www-form-urlencoded"), PROTO_FMT_JSON);
    assert_int_equal(CT("application/xml"), PROTO_FMT_JSON);
    assert_int_equal(CT("application/msgpackx"), PROTO_FMT_JSON);
    assert_int_equal(CT("application/msgpac"), PROTO_FMT_JSON);
#undef CT
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_content_type),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
