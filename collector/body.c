/*
 * body.c — bounded decompression (see body.h for the contract).
 *
 * zstd uses the single-shot ZSTD_decompressDCtx: it writes straight into the capped output
 * buffer (no window buffer sized by the frame header, so a hostile header cannot make us
 * allocate) and fails with dstSize_tooSmall as soon as the output would pass the cap.
 * gzip streams through zlib into the same kind of buffer; when the buffer is full, a one-byte
 * probe tells "ends exactly at the cap" from "would go beyond".
 */
#include "body.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <zlib.h>
#include <zstd.h>
#include <zstd_errors.h>

const char *body_strerror(int err)
{
    switch (err) {
#define BODY_X_STR(name, val, msg)                                                                 \
    case val:                                                                                      \
        return msg;
        BODY_ERRORS(BODY_X_STR)
#undef BODY_X_STR
    }
    return "unknown error";
}

body_encoding_t body_encoding_parse(const char *s, size_t len)
{
    if (s == NULL) return BODY_ENC_IDENTITY;
    while (len > 0 && (*s == ' ' || *s == '\t')) {
        s++;
        len--;
    }
    while (len > 0 && (s[len - 1] == ' ' || s[len - 1] == '\t'))
        len--;
    if (len == 0) return BODY_ENC_IDENTITY;
    if (len == 8 && strncasecmp(s, "identity", 8) == 0) return BODY_ENC_IDENTITY;
    if (len == 4 && strncasecmp(s, "gzip", 4) == 0) return BODY_ENC_GZIP;
    if (len == 6 && strncasecmp(s, "x-gzip", 6) == 0) return BODY_ENC_GZIP;
    if (len == 4 && strncasecmp(s, "zstd", 4) == 0) return BODY_ENC_ZSTD;
    return BODY_ENC_UNKNOWN;
}

void body_decoder_init(body_decoder_t *d)
{
    d->zstd = NULL;
    d->zlib = NULL;
}

void body_decoder_free(body_decoder_t *d)
{
    if (d->zstd != NULL) ZSTD_freeDCtx(d->zstd);
    if (d->zlib != NULL) {
        inflateEnd(d->zlib);
        free(d->zlib);
    }
    d->zstd = NULL;
    d->zlib = NULL;
}

static int decode_zstd(body_decoder_t *d, const char *in, size_t inlen, char *out, size_t outcap,
                       size_t *outlen)
{
    if (inlen == 0) return BODY_E_CORRUPT;
    /* Cheap early refusal when the (first) frame declares its size. */
    unsigned long long declared = ZSTD_getFrameContentSize(in, inlen);
    if (declared == ZSTD_CONTENTSIZE_ERROR) return BODY_E_CORRUPT;
    if (declared != ZSTD_CONTENTSIZE_UNKNOWN && declared > outcap) return BODY_E_TOO_LARGE;
    if (d->zstd == NULL) {
        d->zstd = ZSTD_createDCtx();
        if (d->zstd == NULL) return BODY_E_NOMEM;
    }
    size_t r = ZSTD_decompressDCtx(d->zstd, out, outcap, in, inlen);
    if (ZSTD_isError(r)) {
        ZSTD_ErrorCode code = ZSTD_getErrorCode(r);
        /* The context may be left mid-frame: reset it for the next body. */
        ZSTD_DCtx_reset(d->zstd, ZSTD_reset_session_only);
        if (code == ZSTD_error_dstSize_tooSmall) return BODY_E_TOO_LARGE;
        if (code == ZSTD_error_memory_allocation) return BODY_E_NOMEM;
        return BODY_E_CORRUPT;
    }
    *outlen = r;
    return BODY_OK;
}

static int decode_gzip(body_decoder_t *d, const char *in, size_t inlen, char *out, size_t outcap,
                       size_t *outlen)
{
    z_stream *zs = d->zlib;
    if (zs == NULL) {
        zs = calloc(1, sizeof *zs);
        if (zs == NULL) return BODY_E_NOMEM;
        /* 16 + MAX_WBITS: gzip wrapper only (a raw or zlib stream is not "gzip"). */
        if (inflateInit2(zs, 16 + MAX_WBITS) != Z_OK) {
            free(zs);
            return BODY_E_NOMEM;
        }
        d->zlib = zs;
    } else if (inflateReset(zs) != Z_OK) {
        return BODY_E_NOMEM;
    }
    if (inlen == 0) return BODY_E_CORRUPT;

    /* zlib counts in uInt: bodies are bounded far below 4 GiB by config, but be exact. */
    if (inlen > UINT32_MAX || outcap > UINT32_MAX) return BODY_E_TOO_LARGE;
    unsigned char probe;
    int probing = 0;
    zs->next_in = (unsigned char *)(uintptr_t)in;
    zs->avail_in = (uInt)inlen;
    zs->next_out = (unsigned char *)out;
    zs->avail_out = (uInt)outcap;

    /* Each inflate() call either makes progress or returns Z_BUF_ERROR, so the loop ends; the
     * count bound only guards that invariant. */
    for (size_t iter = 0; iter < inlen + outcap + 64; iter++) {
        if (zs->avail_out == 0 && !probing) {
            probing = 1;
            zs->next_out = &probe;
            zs->avail_out = 1;
        }
        int ret = inflate(zs, Z_NO_FLUSH);
        if (probing && zs->avail_out == 0) return BODY_E_TOO_LARGE;
        switch (ret) {
        case Z_STREAM_END:
            if (zs->avail_in == 0) {
                *outlen = probing ? outcap : outcap - zs->avail_out;
                return BODY_OK;
            }
            /* Another gzip member follows (RFC 1952 allows concatenation). */
            if (inflateReset(zs) != Z_OK) return BODY_E_NOMEM;
            break;
        case Z_OK:
            break;
        case Z_MEM_ERROR:
            return BODY_E_NOMEM;
        default: /* Z_BUF_ERROR (truncated), Z_DATA_ERROR, Z_NEED_DICT, Z_STREAM_ERROR */
            return BODY_E_CORRUPT;
        }
    }
    return BODY_E_CORRUPT;
}

int body_decode(body_decoder_t *d, body_encoding_t enc, const char *in, size_t inlen, char *out,
                size_t outcap, size_t *outlen)
{
    *outlen = 0;
    int rc;
    switch (enc) {
    case BODY_ENC_IDENTITY:
        if (inlen > outcap) return BODY_E_TOO_LARGE;
        if (inlen > 0) memcpy(out, in, inlen);
        *outlen = inlen;
        return BODY_OK;
    case BODY_ENC_GZIP:
        rc = decode_gzip(d, in, inlen, out, outcap, outlen);
        break;
    case BODY_ENC_ZSTD:
        rc = decode_zstd(d, in, inlen, out, outcap, outlen);
        break;
    default:
        return BODY_E_ENCODING;
    }
    if (rc != BODY_OK) *outlen = 0;
    return rc;
}
