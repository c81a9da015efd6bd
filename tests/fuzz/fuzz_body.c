/*
 * fuzz_body.c — libFuzzer target for bounded decompression (collector/body.c): the first byte
 * picks the Content-Encoding and the output cap, the rest is the body. Checks the contract of
 * body.h: success never reports more than the cap, failure reports nothing, identity is a copy,
 * and a body that decoded within the cap decodes the same again with a reused decoder.
 * Build: cmake -DSLUICE_FUZZ=ON with CC=clang (see tests/fuzz/CMakeLists.txt).
 */
#include "body.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static body_decoder_t dec; /* reused across inputs, as a loop reuses its decoder */

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1) return 0;
    static const body_encoding_t encs[4] = {BODY_ENC_IDENTITY, BODY_ENC_GZIP, BODY_ENC_ZSTD,
                                            BODY_ENC_UNKNOWN};
    body_encoding_t enc = encs[data[0] & 3];
    /* Caps from 0 to 64 KiB, so exact-cap and one-over cases are reachable. */
    static const size_t caps[8] = {0, 1, 7, 64, 1000, 4096, 16384, 65536};
    size_t cap = caps[(data[0] >> 2) & 7];
    size_t len = size - 1;
    /* Exact-size copies, so any over-read or over-write is caught by ASan. */
    char *in = malloc(len ? len : 1);
    char *out = malloc(cap ? cap : 1);
    if (in == NULL || out == NULL) abort();
    memcpy(in, data + 1, len);

    size_t outlen = 12345;
    int rc = body_decode(&dec, enc, in, len, out, cap, &outlen);
    if (rc == BODY_OK) {
        if (outlen > cap) abort();
        if (enc == BODY_ENC_IDENTITY && (outlen != len || memcmp(out, in, len) != 0)) abort();
        char *again = malloc(cap ? cap : 1);
        size_t len2 = 0;
        if (again == NULL) abort();
        if (body_decode(&dec, enc, in, len, again, cap, &len2) != BODY_OK || len2 != outlen ||
            memcmp(again, out, outlen) != 0)
            abort();
        free(again);
    } else {
        if (outlen != 0) abort();
        if (enc == BODY_ENC_UNKNOWN && rc != BODY_E_ENCODING) abort();
        if (body_strerror(rc) == NULL) abort();
    }
    /* The header parser sees the same bytes as a Content-Encoding value. */
    body_encoding_t pe = body_encoding_parse(in, len);
    if (pe != BODY_ENC_IDENTITY && pe != BODY_ENC_GZIP && pe != BODY_ENC_ZSTD &&
        pe != BODY_ENC_UNKNOWN)
        abort();
    free(in);
    free(out);
    return 0;
}
