/* test_props.c — the property builder: nesting, sticky errors, limits, reuse, and what the
 * encoded map decodes to. Reaches the encoded bytes through sdk_props_data (internal.h). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdlib.h>
#include <string.h>

#include "internal.h"

static char *to_json(const sluice_props *p)
{
    size_t len;
    int err;
    const void *d = sdk_props_data(p, &len, &err);
    assert_int_equal(err, 0);
    base_buf_t j;
    base_buf_init(&j, 1 << 20);
    assert_int_equal(writer_msgpack_to_json(d, len, &j), 0);
    assert_int_equal(base_buf_append(&j, "", 1), 0);
    return j.data;
}

static void test_nested_values(void **state)
{
    (void)state;
    sluice_props *p = sluice_props_new();
    assert_non_null(p);
    assert_int_equal(sluice_props_set_str(p, "s", "v"), 0);
    assert_int_equal(sluice_props_set_int(p, "i", -5), 0);
    assert_int_equal(sluice_props_set_double(p, "d", 1.5), 0);
    assert_int_equal(sluice_props_set_bool(p, "b", 1), 0);
    assert_int_equal(sluice_props_set_null(p, "n"), 0);
    assert_int_equal(sluice_props_set_str(p, "nullstr", NULL), 0);
    assert_int_equal(sluice_props_begin_map(p, "m"), 0);
    assert_int_equal(sluice_props_begin_array(p, "a"), 0);
    assert_int_equal(sluice_props_set_int(p, NULL, 1), 0);
    assert_int_equal(sluice_props_set_strn(p, NULL, "xyz", 2), 0);
    assert_int_equal(sluice_props_end(p), 0);
    assert_int_equal(sluice_props_end(p), 0);
    char *j = to_json(p);
    assert_string_equal(j, "{\"s\":\"v\",\"i\":-5,\"d\":1.5,\"b\":true,\"n\":null,\"nullstr\":null,"
                           "\"m\":{\"a\":[1,\"xy\"]}}");
    free(j);
    /* clear keeps it usable */
    sluice_props_clear(p);
    j = to_json(p);
    assert_string_equal(j, "{}");
    free(j);
    sluice_props_free(p);
}

static void test_sticky_errors(void **state)
{
    (void)state;
    sluice_props *p = sluice_props_new();
    assert_int_equal(sluice_props_set_str(p, "bad", "\xff"), SLUICE_E_UTF8);
    assert_int_equal(sluice_props_set_int(p, "ok", 1), SLUICE_E_UTF8); /* sticky */
    assert_int_equal(sluice_props_error(p), SLUICE_E_UTF8);
    sluice_props_clear(p);
    assert_int_equal(sluice_props_error(p), 0);
    /* a key inside an array, no key inside a map, end without begin */
    assert_int_equal(sluice_props_set_int(p, NULL, 1), SLUICE_E_STATE);
    sluice_props_clear(p);
    assert_int_equal(sluice_props_begin_array(p, "a"), 0);
    assert_int_equal(sluice_props_set_int(p, "k", 1), SLUICE_E_STATE);
    sluice_props_clear(p);
    assert_int_equal(sluice_props_end(p), SLUICE_E_STATE);
    sluice_props_clear(p);
    /* an unclosed container is refused when sent */
    assert_int_equal(sluice_props_begin_map(p, "open"), 0);
    size_t len;
    int err;
    assert_null(sdk_props_data(p, &len, &err));
    assert_int_equal(err, SLUICE_E_STATE);
    sluice_props_free(p);
    assert_int_equal(sluice_props_set_int(NULL, "k", 1), SLUICE_E_INVAL);
    sluice_props_free(NULL);
}

static void test_depth_and_size_limits(void **state)
{
    (void)state;
    sluice_props *p = sluice_props_new();
    int rc = 0, levels = 0;
    for (int i = 0; i < 40 && rc == 0; i++) {
        rc = sluice_props_begin_map(p, "k");
        if (rc == 0) levels++;
    }
    assert_int_equal(rc, SLUICE_E_DEPTH);
    assert_int_equal(levels, 15); /* 16 levels including the top map */
    sluice_props_clear(p);
    char big[1024];
    memset(big, 'a', sizeof big - 1);
    big[sizeof big - 1] = '\0';
    rc = 0;
    int n = 0;
    for (; n < 100 && rc == 0; n++)
        rc = sluice_props_set_str(p, "k", big);
    assert_int_equal(rc, SLUICE_E_TOO_LARGE);
    assert_true(n > 20 && n < 40); /* 32 KiB cap */
    sluice_props_free(p);
}

static void test_error_strings(void **state)
{
    (void)state;
    assert_string_equal(sluice_strerror(SLUICE_E_QUEUE_FULL), "queue is full; event dropped");
    assert_string_equal(sluice_err_name(SLUICE_E_QUEUE_FULL), "SLUICE_E_QUEUE_FULL");
    assert_string_equal(sluice_err_name(SLUICE_OK), "SLUICE_OK");
    assert_string_equal(sluice_strerror(12345), "unknown error");
    assert_string_equal(sluice_err_name(-999), "SLUICE_E_UNKNOWN");
    assert_string_equal(sluice_version(), SLUICE_VERSION_STRING);
    sluice_config cfg;
    assert_int_equal(sluice_config_init(&cfg, SLUICE_CONFIG_VERSION + 1), SLUICE_E_VERSION);
    assert_int_equal(sluice_config_init(&cfg, SLUICE_CONFIG_VERSION), 0);
    assert_int_equal(cfg.batch_size, 100);
    assert_int_equal(cfg.batch_bytes, 500 * 1024);
    assert_int_equal(cfg.flush_interval_ms, 1000);
    sluice_client *c = (sluice_client *)1;
    assert_int_equal(sluice_client_new(&c, &cfg), SLUICE_E_INVAL); /* no endpoint / key */
    assert_null(c);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_nested_values),
        cmocka_unit_test(test_sticky_errors),
        cmocka_unit_test(test_depth_and_size_limits),
        cmocka_unit_test(test_error_strings),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
