/*
 * test_body.c — bounded decompression (collector/body.c): round trips, the bomb stopping at the
 * cap, corrupt input, and the exact-cap boundary for every encoding.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "body.c"

#define CAP 4096

/* Deterministic compressible payload of n bytes. */
static void fill(char *p, size_t n)
{
    for (size_t i = 0; i < n; i++)
        p[i] = (char)('a' + (i * 7 + i / 13) % 26);
}

static size_t gz(const char *in, size_t n, char *out, size_t cap)
{
    z_stream zs;
    memset(&zs, 0, sizeof zs);
    assert_int_equal(deflateInit2(&zs, 6, Z_DEFLATED, 16 + MAX_WBITS, 8, Z_DEFAULT_STRATEGY), Z_OK);
    zs.next_in = (unsigned char *)(uintptr_t)in;
    zs.avail_in = (uInt)n;
    zs.next_out = (unsigned char *)out;
    zs.avail_out = (uInt)cap;
    assert_int_equal(deflate(&zs, Z_FINISH), Z_STREAM_END);
    size_t len = cap - zs.avail_out;
    deflateEnd(&zs);
    return len;
}

static size_t zs(const char *in, size_t n, char *out, size_t cap)
{
    size_t r = ZSTD_compress(out, cap, in, n, 3);
    assert_false(ZSTD_isError(r));
    return r;
}

/* zstd without a content size in the header (streaming compressor), like many clients send. */
static size_t zs_stream(const char *in, size_t n, char *out, size_t cap)
{
    ZSTD_CCtx *c = ZSTD_createCCtx();
    ZSTD_inBuffer ib = {in, n, 0};
    ZSTD_outBuffer ob = {out, cap, 0};
    size_t r;
    do {
        r = ZSTD_compressStream2(c, &ob, &ib, ZSTD_e_end);
        assert_false(ZSTD_isError(r));
    } while (r != 0);
    ZSTD_freeCCtx(c);
    return ob.pos;
}

static void test_encoding_parse(void **state)
{
    (void)state;
    assert_int_equal(body_encoding_parse(NULL, 0), BODY_ENC_IDENTITY);
    assert_int_equal(body_encoding_parse("", 0), BODY_ENC_IDENTITY);
    assert_int_equal(body_encoding_parse(" identity ", 10), BODY_ENC_IDENTITY);
    assert_int_equal(body_encoding_parse("GZIP", 4), BODY_ENC_GZIP);
    assert_int_equal(body_encoding_parse("x-gzip", 6), BODY_ENC_GZIP);
    assert_int_equal(body_encoding_parse("zstd", 4), BODY_ENC_ZSTD);
    assert_int_equal(body_encoding_parse("br", 2), BODY_ENC_UNKNOWN);
    assert_int_equal(body_encoding_parse("gzip, zstd", 10), BODY_ENC_UNKNOWN);
    assert_int_equal(body_encoding_parse("deflate", 7), BODY_ENC_UNKNOWN);
}

static void roundtrip(body_encoding_t enc, size_t (*compress)(const char *, size_t, char *, size_t))
{
    static char plain[CAP], packed[2 * CAP + 1024], out[CAP];
    body_decoder_t d;
    body_decoder_init(&d);
    size_t sizes[] = {1, 100, CAP - 1, CAP};
    for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; i++) {
        fill(plain, sizes[i]);
        size_t n = compress(plain, sizes[i], packed, sizeof packed);
        size_t outlen = 12345;
        /* Twice with the same decoder: contexts are reused between bodies. */
        for (int rep = 0; rep < 2; rep++) {
            assert_int_equal(body_decode(&d, enc, packed, n, out, CAP, &outlen), BODY_OK);
            assert_int_equal(outlen, sizes[i]);
            assert_memory_equal(out, plain, sizes[i]);
        }
    }
    /* Exactly one byte over the cap. */
    static char big[CAP + 1];
    fill(big, CAP + 1);
    size_t n = compress(big, CAP + 1, packed, sizeof packed);
    size_t outlen = 7;
    assert_int_equal(body_decode(&d, enc, packed, n, out, CAP, &outlen), BODY_E_TOO_LARGE);
    assert_int_equal(outlen, 0);
    /* The decoder still works after a refusal. */
    fill(plain, 10);
    n = compress(plain, 10, packed, sizeof packed);
    assert_int_equal(body_decode(&d, enc, packed, n, out, CAP, &outlen), BODY_OK);
    assert_int_equal(outlen, 10);
    body_decoder_free(&d);
    body_decoder_free(&d); /* idempotent */
}

static void test_gzip_roundtrip(void **state)
{
    (void)state;
    roundtrip(BODY_ENC_GZIP, gz);
}

static void test_zstd_roundtrip(void **state)
{
    (void)state;
    roundtrip(BODY_ENC_ZSTD, zs);
}

static void test_zstd_stream_roundtrip(void **state)
{
    (void)state;
    roundtrip(BODY_ENC_ZSTD, zs_stream);
}

static void test_identity(void **state)
{
    (void)state;
    body_decoder_t d;
    body_decoder_init(&d);
    char out[8];
    size_t outlen;
    assert_int_equal(body_decode(&d, BODY_ENC_IDENTITY, "12345678", 8, out, 8, &outlen), BODY_OK);
    assert_int_equal(outlen, 8);
    assert_int_equal(body_decode(&d, BODY_ENC_IDENTITY, "123456789", 9, out, 8, &outlen),
                     BODY_E_TOO_LARGE);
    assert_int_equal(body_decode(&d, BODY_ENC_UNKNOWN, "x", 1, out, 8, &outlen), BODY_E_ENCODING);
    body_decoder_free(&d);
}

/* 64 MiB of zeros compress to ~64 KiB (gzip) / a few KiB (zstd): decoding must stop at the cap
 * and fail fast, never producing (or allocating) the whole thing. */
static void test_bombs(void **state)
{
    (void)state;
    const size_t huge = 64u << 20;
    char *zeros = calloc(1, huge);
    assert_non_null(zeros);
    size_t gcap = huge / 100, zcap = ZSTD_compressBound(huge);
    char *gbomb = malloc(gcap), *zbomb = malloc(zcap);
    size_t gn = gz(zeros, huge, gbomb, gcap);
    size_t zn = zs_stream(zeros, huge, zbomb, zcap); /* no content size: no early refusal */
    size_t zn2 = zs(zeros, huge, zbomb + zn, zcap - zn);
    free(zeros);

    body_decoder_t d;
    body_decoder_init(&d);
    char *out = malloc(512 * 1024);
    size_t outlen;
    assert_int_equal(body_decode(&d, BODY_ENC_GZIP, gbomb, gn, out, 512 * 1024, &outlen),
                     BODY_E_TOO_LARGE);
    assert_int_equal(body_decode(&d, BODY_ENC_ZSTD, zbomb, zn, out, 512 * 1024, &outlen),
                     BODY_E_TOO_LARGE);
    /* With a declared content size, refused from the header alone. */
    assert_int_equal(body_decode(&d, BODY_ENC_ZSTD, zbomb + zn, zn2, out, 512 * 1024, &outlen),
                     BODY_E_TOO_LARGE);
    body_decoder_free(&d);
    free(out);
    free(gbomb);
    free(zbomb);
}

static void test_corrupt(void **state)
{
    (void)state;
    static char plain[1000], packed[4096], out[CAP];
    fill(plain, sizeof plain);
    body_decoder_t d;
    body_decoder_init(&d);
    size_t outlen;
    /* Not compressed at all. */
    assert_int_equal(body_decode(&d, BODY_ENC_GZIP, "hello world", 11, out, CAP, &outlen),
                     BODY_E_CORRUPT);
    assert_int_equal(body_decode(&d, BODY_ENC_ZSTD, "hello world", 11, out, CAP, &outlen),
                     BODY_E_CORRUPT);
    /* Empty. */
    assert_int_equal(body_decode(&d, BODY_ENC_GZIP, "", 0, out, CAP, &outlen), BODY_E_CORRUPT);
    assert_int_equal(body_decode(&d, BODY_ENC_ZSTD, "", 0, out, CAP, &outlen), BODY_E_CORRUPT);
    /* Truncated. */
    size_t n = gz(plain, sizeof plain, packed, sizeof packed);
    assert_int_equal(body_decode(&d, BODY_ENC_GZIP, packed, n - 5, out, CAP, &outlen),
                     BODY_E_CORRUPT);
    n = zs(plain, sizeof plain, packed, sizeof packed);
    assert_int_equal(body_decode(&d, BODY_ENC_ZSTD, packed, n - 3, out, CAP, &outlen),
                     BODY_E_CORRUPT);
    /* A flipped byte in the middle of the gzip stream (CRC or data error). */
    n = gz(plain, sizeof plain, packed, sizeof packed);
    packed[n / 2] ^= 0x55;
    assert_int_equal(body_decode(&d, BODY_ENC_GZIP, packed, n, out, CAP, &outlen), BODY_E_CORRUPT);
    /* Garbage after a complete gzip member. */
    n = gz(plain, 10, packed, sizeof packed);
    memcpy(packed + n, "junk", 4);
    assert_int_equal(body_decode(&d, BODY_ENC_GZIP, packed, n + 4, out, CAP, &outlen),
                     BODY_E_CORRUPT);
    /* Two concatenated gzip members are one valid body. */
    size_t n1 = gz(plain, 10, packed, sizeof packed);
    size_t n2 = gz(plain + 10, 20, packed + n1, sizeof packed - n1);
    assert_int_equal(body_decode(&d, BODY_ENC_GZIP, packed, n1 + n2, out, CAP, &outlen), BODY_OK);
    assert_int_equal(outlen, 30);
    assert_memory_equal(out, plain, 30);
    body_decoder_free(&d);
    assert_string_equal(body_strerror(BODY_E_TOO_LARGE), "decompressed body larger than allowed");
    assert_string_equal(body_strerror(-99), "unknown error");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_encoding_parse), cmocka_unit_test(test_gzip_roundtrip),
        cmocka_unit_test(test_zstd_roundtrip), cmocka_unit_test(test_zstd_stream_roundtrip),
        cmocka_unit_test(test_identity),       cmocka_unit_test(test_bombs),
        cmocka_unit_test(test_corrupt),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
