/*
 * test_http_strict.c — issue 12 item 6: strict HTTP parsing (SPEC §3, RFC 9112), one regression
 * test per smuggling shape, named after what it guards. Each case sends raw bytes over loopback
 * to the real collector: a request that a front proxy could read differently, followed on the
 * same connection by a request carrying an event that must never be delivered. The answer must
 * be 400 bad_request and the connection closed; then a good batch is still accepted and the
 * events topic holds exactly the good events (nothing smuggled through).
 */
#include "it_common.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define HOST      "Host: 127.0.0.1\r\n"
#define BASIC_KEY "Authorization: Basic d2tfdGVzdDo=\r\n" /* "wk_test:" */
#define SMUGGLED_BODY                                                                              \
    "{\"batch\":[{\"type\":\"track\",\"event\":\"Smuggled\",\"userId\":\"s\","                     \
    "\"messageId\":\"smuggled-1\"}]}"
/* A complete, valid request: delivered only if the bytes before it were misread. */
#define SMUGGLED                                                                                   \
    "POST /v1/batch HTTP/1.1\r\n" HOST BASIC_KEY "Content-Type: application/json\r\n"              \
    "Content-Length: 85\r\n\r\n" SMUGGLED_BODY

/* Sends raw on a fresh connection: asserts 400 bad_request, then that the collector closed. */
static void expect_400_and_close(const sup_env_t *e, const char *raw, const char *why)
{
    int fd = sup_tcp_connect(e->coll.port, 5000);
    assert_true(fd >= 0);
    assert_int_equal(sup_tcp_send(fd, raw, strlen(raw), 5000), 0);
    base_buf_t answer = {0};
    int closed = sup_tcp_read_until_close(fd, &answer, 65536, 10000);
    close(fd);
    int status = -1;
    if (answer.data != NULL) sscanf(answer.data, "HTTP/1.1 %d", &status);
    if (status != 400 || !closed)
        fprintf(stderr, "%s: status %d, closed %d: %s\n", why, status, closed,
                answer.data ? answer.data : "(nothing)");
    assert_int_equal(status, 400);
    assert_true(closed);
    assert_non_null(strstr(answer.data, "\"error\":\"bad_request\""));
    /* One answer only: the request behind it was not parsed. */
    assert_null(strstr(answer.data, "HTTP/1.1 200"));
    base_buf_free(&answer);
}

static void run_strict(void **state, const char *raw, const char *why)
{
    assert_int_equal(strlen(SMUGGLED_BODY), 85);
    sup_env_t *e = it_start(state, NULL);
    it_ids_t ids = {0};
    it_post_good(e, "before", 3, &ids);
    expect_400_and_close(e, raw, why);
    it_assert_still_serving(e, &ids);
    it_assert_events_exactly(e, &ids, NULL); /* smuggled-1 is not there */
}

static void test_chunk_data_not_ended_by_crlf_is_400(void **state)
{
    /* "2\r\n{}XX0\r\n\r\n": a lenient parser skips any two bytes after the chunk data. */
    run_strict(state,
               "POST /v1/batch HTTP/1.1\r\n" HOST BASIC_KEY "Transfer-Encoding: chunked\r\n\r\n"
               "2\r\n{}XX0\r\n\r\n" SMUGGLED,
               "chunk without CRLF");
}

static void test_header_name_with_space_is_400(void **state)
{
    run_strict(state,
               "POST /v1/batch HTTP/1.1\r\n" HOST BASIC_KEY "Content Length: 5\r\n"
               "Content-Length: 0\r\n\r\n" SMUGGLED,
               "space inside a header name");
}

static void test_header_name_space_before_colon_is_400(void **state)
{
    run_strict(state,
               "POST /v1/batch HTTP/1.1\r\n" HOST BASIC_KEY "Content-Length : 0\r\n\r\n" SMUGGLED,
               "space before the colon");
}

static void test_missing_host_is_400(void **state)
{
    run_strict(state, "POST /v1/batch HTTP/1.1\r\n" BASIC_KEY "Content-Length: 0\r\n\r\n" SMUGGLED,
               "HTTP/1.1 without Host");
}

static void test_duplicate_host_is_400(void **state)
{
    run_strict(state,
               "POST /v1/batch HTTP/1.1\r\n" HOST "Host: other.example\r\n" BASIC_KEY
               "Content-Length: 0\r\n\r\n" SMUGGLED,
               "two Host headers");
}

static void test_duplicate_authorization_is_400(void **state)
{
    /* Last-wins would authenticate with the second key; first-wins with the first. */
    run_strict(state,
               "POST /v1/batch HTTP/1.1\r\n" HOST "Authorization: Bearer nobody\r\n" BASIC_KEY
               "Content-Type: application/json\r\nContent-Length: 85\r\n\r\n" SMUGGLED_BODY,
               "two Authorization headers");
}

static void test_duplicate_content_encoding_is_400(void **state)
{
    run_strict(state,
               "POST /v1/batch HTTP/1.1\r\n" HOST BASIC_KEY "Content-Encoding: gzip\r\n"
               "Content-Encoding: identity\r\nContent-Type: application/json\r\n"
               "Content-Length: 85\r\n\r\n" SMUGGLED_BODY,
               "two Content-Encoding headers");
}

static void test_duplicate_content_type_is_400(void **state)
{
    run_strict(state,
               "POST /v1/batch HTTP/1.1\r\n" HOST BASIC_KEY "Content-Type: application/msgpack\r\n"
               "Content-Type: application/json\r\nContent-Length: 85\r\n\r\n" SMUGGLED_BODY,
               "two Content-Type headers");
}

static void test_duplicate_content_length_is_400(void **state)
{
    /* Even with equal values (RFC 9112 §6.3 lets a server refuse them; a proxy may not). */
    run_strict(state,
               "POST /v1/batch HTTP/1.1\r\n" HOST BASIC_KEY "Content-Length: 0\r\n"
               "Content-Length: 0\r\n\r\n" SMUGGLED,
               "two Content-Length headers");
}

static void test_duplicate_transfer_encoding_is_400(void **state)
{
    run_strict(state,
               "POST /v1/batch HTTP/1.1\r\n" HOST BASIC_KEY "Transfer-Encoding: chunked\r\n"
               "Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n" SMUGGLED,
               "two Transfer-Encoding headers");
}

static void test_content_length_with_transfer_encoding_is_400(void **state)
{
    run_strict(state,
               "POST /v1/batch HTTP/1.1\r\n" HOST BASIC_KEY "Content-Length: 5\r\n"
               "Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n" SMUGGLED,
               "Content-Length and Transfer-Encoding");
}

static void test_transfer_coding_other_than_chunked_is_400(void **state)
{
    /* "gzip, chunked": we do not undo a gzip transfer coding, so we must not read the body. */
    run_strict(state,
               "POST /v1/batch HTTP/1.1\r\n" HOST BASIC_KEY "Transfer-Encoding: gzip, chunked\r\n"
               "\r\n0\r\n\r\n" SMUGGLED,
               "Transfer-Encoding gzip, chunked");
}

static void test_obs_fold_header_is_400(void **state)
{
    run_strict(state,
               "POST /v1/batch HTTP/1.1\r\n" HOST BASIC_KEY "X-Note: a\r\n Content-Length: 5\r\n"
               "Content-Length: 0\r\n\r\n" SMUGGLED,
               "obs-fold continuation line");
}

static void test_bare_lf_line_ending_is_400(void **state)
{
    run_strict(state, "POST /v1/batch HTTP/1.1\n" HOST BASIC_KEY "Content-Length: 0\n\n" SMUGGLED,
               "LF without CR");
}

static void test_http10_without_host_is_served(void **state)
{
    /* Host is required of HTTP/1.1 only (RFC 9112 §3.2): an HTTP/1.0 probe is answered. */
    sup_env_t *e = it_start(state, NULL);
    int fd = sup_tcp_connect(e->coll.port, 5000);
    assert_true(fd >= 0);
    static const char get[] = "GET /healthz HTTP/1.0\r\n\r\n";
    assert_int_equal(sup_tcp_send(fd, get, sizeof get - 1, 5000), 0);
    base_buf_t answer = {0};
    assert_int_equal(sup_tcp_read_answer(fd, &answer, 10000), 200);
    close(fd);
    base_buf_free(&answer);
}

int main(int argc, char **argv)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_teardown(test_chunk_data_not_ended_by_crlf_is_400, it_teardown),
        cmocka_unit_test_teardown(test_header_name_with_space_is_400, it_teardown),
        cmocka_unit_test_teardown(test_header_name_space_before_colon_is_400, it_teardown),
        cmocka_unit_test_teardown(test_missing_host_is_400, it_teardown),
        cmocka_unit_test_teardown(test_duplicate_host_is_400, it_teardown),
        cmocka_unit_test_teardown(test_duplicate_authorization_is_400, it_teardown),
        cmocka_unit_test_teardown(test_duplicate_content_encoding_is_400, it_teardown),
        cmocka_unit_test_teardown(test_duplicate_content_type_is_400, it_teardown),
        cmocka_unit_test_teardown(test_duplicate_content_length_is_400, it_teardown),
        cmocka_unit_test_teardown(test_duplicate_transfer_encoding_is_400, it_teardown),
        cmocka_unit_test_teardown(test_content_length_with_transfer_encoding_is_400, it_teardown),
        cmocka_unit_test_teardown(test_transfer_coding_other_than_chunked_is_400, it_teardown),
        cmocka_unit_test_teardown(test_obs_fold_header_is_400, it_teardown),
        cmocka_unit_test_teardown(test_bare_lf_line_ending_is_400, it_teardown),
        cmocka_unit_test_teardown(test_http10_without_host_is_served, it_teardown),
    };
    return it_run(argc, argv, "http_strict", tests, sizeof tests / sizeof tests[0]);
}
