/*
 * body.h — bounded request-body decoding: Content-Encoding zstd, gzip or identity.
 *
 * SPEC §2: a body is limited both before and after decompression, and decompression stops at
 * the limit: a zstd or gzip bomb ends as BODY_E_TOO_LARGE, never as an allocation beyond the
 * cap. The output always goes into a caller-provided buffer of fixed capacity; this module never
 * allocates output memory. The only allocations are the decoder contexts (zstd DCtx, zlib
 * state, each a few tens of KiB), created once per body_decoder_t and reused.
 *
 * A body_decoder_t is owned by one thread (one per event loop); it is not thread-safe.
 */
#ifndef SLUICE_BODY_H
#define SLUICE_BODY_H

#include <stddef.h>

/* X(NAME, value, "message") — append-only. */
#define BODY_ERRORS(X)                                                                             \
    X(OK, 0, "ok")                                                                                 \
    X(E_TOO_LARGE, -1, "decompressed body larger than allowed")                                    \
    X(E_CORRUPT, -2, "compressed body is corrupt or truncated")                                    \
    X(E_NOMEM, -3, "out of memory")                                                                \
    X(E_ENCODING, -4, "unsupported content encoding")

typedef enum {
#define BODY_X_ENUM(name, val, msg) BODY_##name = val,
    BODY_ERRORS(BODY_X_ENUM)
#undef BODY_X_ENUM
} body_err_t;

/* Human message for err; "unknown error" for a value not in the table. Never NULL. */
const char *body_strerror(int err);

typedef enum {
    BODY_ENC_IDENTITY = 0,
    BODY_ENC_GZIP = 1,
    BODY_ENC_ZSTD = 2,
    BODY_ENC_UNKNOWN = -1,
} body_encoding_t;

/* Parses a Content-Encoding value (case-insensitive, surrounding blanks ignored). NULL or empty
 * means identity; "x-gzip" is gzip. Anything else (including a list of several codings) is
 * BODY_ENC_UNKNOWN, which the caller answers with 415. */
body_encoding_t body_encoding_parse(const char *s, size_t len);

typedef struct body_decoder {
    void *zstd; /* ZSTD_DCtx*, created on first use */
    void *zlib; /* z_stream*, created on first use */
} body_decoder_t;

/* Zeroes d; nothing is allocated until the first decode. Never fails. */
void body_decoder_init(body_decoder_t *d);
/* Releases the contexts. Safe on an initialized, never-used or already-freed decoder. */
void body_decoder_free(body_decoder_t *d);

/*
 * Decodes in[0..inlen) with encoding enc into out[0..outcap) and sets *outlen.
 * - identity: copies (callers that can use the input in place should not call this).
 * - gzip: one or more concatenated gzip members; anything after them is corrupt.
 * - zstd: one or more concatenated frames (skippable frames allowed).
 * Output of exactly outcap bytes is accepted; one byte more is BODY_E_TOO_LARGE, detected
 * without producing it. Empty input is corrupt for gzip/zstd. On any failure *outlen is 0 and
 * the contents of out are unspecified.
 */
int body_decode(body_decoder_t *d, body_encoding_t enc, const char *in, size_t inlen, char *out,
                size_t outcap, size_t *outlen);

#endif
