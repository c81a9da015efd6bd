/*
 * json_reader.h — the JSON reader of proto (internal to proto/; not part of proto.h's contract).
 *
 * A JSON body becomes the same msgpack_object tree a msgpack body decodes to, written straight
 * into the batch's arena (msgpack_zone): one zone allocation per container and per string, no
 * heap allocation per value. Parsing is simdjson's DOM parser (libsimdjson, behind json_reader.cpp,
 * the project's only C++ file); everything else in proto stays C11.
 *
 * What the reader answers for inputs simdjson refuses but SPEC §2 accepts (a second pass over a
 * copy, only after simdjson refused the original, so the common case pays nothing):
 *   - a lone surrogate escape ("\ud83d" with no low half, or a lone "\udc00") becomes U+FFFD,
 *     counted in *surrogates;
 *   - an integer literal beyond 64 bits becomes a double (FLOAT64), counted in *big_ints.
 * Everything else simdjson refuses is PROTO_E_MALFORMED: broken syntax, invalid UTF-8 bytes
 * (RFC 8259 §8.1: a JSON text is UTF-8), bytes after the root value, numbers out of double range;
 * PROTO_E_TOO_DEEP beyond depth_cap levels; PROTO_E_NOMEM when the parser or the zone cannot grow.
 *
 * Memory: a reader keeps simdjson's parser buffers (about 14 bytes per byte of the largest body it
 * has read, so at most ~14 x limits.body_bytes) and the repair copy, reused from body to body.
 * Not thread-safe: one reader belongs to one thread at a time (proto_arena_t holds one per loop).
 */
#ifndef SLUICE_PROTO_JSON_READER_H
#define SLUICE_PROTO_JSON_READER_H

#include <msgpack.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct proto_json_reader proto_json_reader_t;

/* A new reader, or NULL when memory is short. Freed by proto_json_reader_free. */
proto_json_reader_t *proto_json_reader_new(void);
/* Frees r and its buffers. Safe on NULL. */
void proto_json_reader_free(proto_json_reader_t *r);

/*
 * Parses body[0..len) (any value, not only an object) into *root, every container and string in
 * zone (the body may be freed right after). depth_cap: containers may nest that many levels, the
 * root counting as 1. The buffers grow to len (callers bound len by limits.body_bytes). On success
 * returns PROTO_OK and adds to *surrogates and *big_ints the repairs described above; on failure
 * returns a proto_err_t (see above) and *root is undefined (whatever was allocated stays in zone,
 * freed with it).
 */
int proto_json_read(proto_json_reader_t *r, const char *body, size_t len, uint32_t depth_cap,
                    msgpack_zone *zone, msgpack_object *root, uint32_t *surrogates,
                    uint32_t *big_ints);

#ifdef __cplusplus
}
#endif

#endif
