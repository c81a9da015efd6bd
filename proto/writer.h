/*
 * writer.h — encodes sluice events and batches on the wire (msgpack, proto/README.md, SPEC §2):
 * the inverse of proto_decode(). Shared by the SDK (libsluice compiles writer.c into itself) and
 * the load harness (links sluice_proto). Depends on nothing but libc and, for
 * writer_msgpack_to_json() only, msgpack-c's unpacker.
 *
 * No I/O, no threads, no globals: every function is safe to call concurrently on distinct
 * buffers. Nothing here allocates except base_buf_t growth (bounded by its max) and
 * writer_msgpack_to_json() (bounded by a small multiple of its input).
 *
 * Encoding choices, all valid msgpack that proto_decode() accepts:
 *   - integers and string/array/map headers use the smallest msgpack form, EXCEPT containers
 *     opened with writer_map_open()/writer_array_open(), whose count is not known in advance:
 *     they always use the 32-bit form (map32/array32) and are patched by writer_close();
 *   - timestamps are written as integer epoch milliseconds (SPEC §2 allows them);
 *   - doubles are always float64.
 *
 * A typical batch (what the SDK sends, and what sluice-load sends):
 *
 *     base_buf_t b;
 *     base_buf_init(&b, 512 * 1024);
 *     writer_batch_begin(&b, n, now_ms, NULL, NULL, 0);   // {"sentAt":..,"batch":[  (n events)
 *     for (i = 0; i < n; i++) writer_event(&b, &ev[i]);  // each: {"type":..,"messageId":..,...}
 *     ... POST b.data[0..b.len) as application/msgpack ...
 *     base_buf_free(&b);
 *
 * Properties/traits/context are passed to writer_event() as already-encoded msgpack maps, so a
 * caller builds them once (writer_map_open + key/value calls + writer_close) and may reuse them.
 */
#ifndef SLUICE_PROTO_WRITER_H
#define SLUICE_PROTO_WRITER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "base.h"

/* X(NAME, value, "message"). 0 = OK, negative = failure; append-only. */
#define WRITER_ERRORS(X)                                                                           \
    X(OK, 0, "ok")                                                                                 \
    X(E_NOMEM, -1, "out of memory")                                                                \
    X(E_TOO_LARGE, -2, "output would exceed the buffer's limit")                                   \
    X(E_INVAL, -3, "invalid argument")                                                             \
    X(E_UTF8, -4, "string is not valid UTF-8")                                                     \
    X(E_MALFORMED, -5, "input is not one well-formed msgpack value")                               \
    X(E_DEPTH, -6, "nesting deeper than allowed")

typedef enum {
#define WRITER_X_ENUM(name, val, msg) WRITER_##name = val,
    WRITER_ERRORS(WRITER_X_ENUM)
#undef WRITER_X_ENUM
} writer_err_t;

/* Human message for a writer_err_t; "unknown error" for other values. Never NULL. */
const char *writer_strerror(int err);

/*
 * Output goes to a base_buf_t (base.h: heap with a hard max, or fixed over caller memory). Every
 * single-value writer either writes all its bytes or none: on failure (WRITER_E_TOO_LARGE when
 * the buffer's limit would be exceeded, WRITER_E_NOMEM when growth failed — the same values as
 * BASE_E_TOO_LARGE and BASE_E_NOMEM) len is unchanged. Multi-part writers (writer_event,
 * writer_batch_begin) may leave a partial value behind on failure: the caller discards the
 * buffer (or resets len to its value before the call).
 */

/*
 * msgpack values. Each returns 0, WRITER_E_TOO_LARGE or WRITER_E_NOMEM.
 * writer_str() does NOT check UTF-8 (use base_utf8_valid() on untrusted input); s may be NULL
 * when len is 0. writer_cstr(NULL) writes nil.
 */
int writer_nil(base_buf_t *b);
int writer_bool(base_buf_t *b, bool v);
int writer_int(base_buf_t *b, int64_t v);
int writer_uint(base_buf_t *b, uint64_t v);
int writer_double(base_buf_t *b, double v);
int writer_str(base_buf_t *b, const char *s, size_t len);
int writer_cstr(base_buf_t *b, const char *s);
/* Headers for containers of known size; the caller then writes n entries (map: key, value). */
int writer_map_header(base_buf_t *b, uint32_t n);
int writer_array_header(base_buf_t *b, uint32_t n);
/* Appends raw bytes that already are one or more msgpack values (e.g. an encoded event). */
int writer_raw(base_buf_t *b, const void *p, size_t n);

/*
 * Containers of unknown size: open writes a 5-byte map32/array32 header with count 0 and stores
 * its offset in *pos; after writing the entries, writer_close(b, pos, count) patches the count
 * (count = number of key/value pairs for a map, of elements for an array). Nesting is the
 * caller's to track (the SDK's property builder keeps a bounded stack of positions).
 */
int writer_map_open(base_buf_t *b, size_t *pos);
int writer_array_open(base_buf_t *b, size_t *pos);
void writer_close(base_buf_t *b, size_t pos, uint32_t count);

/* Exact encoded size of a string of len bytes (header + payload). */
size_t writer_str_size(size_t len);

/*
 * One event (SPEC §2). String fields are NUL-terminated; NULL means "field omitted". No field is
 * validated here (the SDK validates before encoding; the load harness deliberately sends invalid
 * events): writer_event() writes exactly what it is given, in this order, with these keys:
 *   type, messageId, userId, anonymousId, event, name, groupId, previousId, timestamp,
 *   properties, traits, context.
 * properties/traits/context are each one complete encoded msgpack value (normally a map) of the
 * given length, copied verbatim; NULL (or length 0) omits the field.
 */
typedef struct writer_event {
    const char *type;         /* "track", "identify", "group", "page", "screen", "alias" */
    const char *message_id;   /* "messageId" */
    const char *user_id;      /* "userId" */
    const char *anonymous_id; /* "anonymousId" */
    const char *event;        /* "event" (track) */
    const char *name;         /* "name" (page, screen) */
    const char *group_id;     /* "groupId" (group) */
    const char *previous_id;  /* "previousId" (alias) */
    bool has_timestamp;
    int64_t timestamp_ms; /* "timestamp" as integer epoch ms, when has_timestamp */
    const void *properties;
    size_t properties_len;
    const void *traits;
    size_t traits_len;
    const void *context;
    size_t context_len;
} writer_event_t;

/* Exact number of bytes writer_event() appends for ev (lets a caller allocate once). */
size_t writer_event_size(const writer_event_t *ev);
/* Appends ev as one msgpack map. 0, WRITER_E_TOO_LARGE or WRITER_E_NOMEM. */
int writer_event(base_buf_t *out, const writer_event_t *ev);

/*
 * Batch envelope: appends the map {"sentAt": sent_at_ms, "writeKey": write_key?,
 * "context": context?, "batch": [ — i.e. everything up to and including the array header for
 * n_events elements. The caller then appends exactly n_events encoded events (writer_event() or
 * writer_raw() of previously encoded events); the body is complete after the last one.
 * write_key NULL and context NULL/0 omit those fields. Returns 0 or a buffer error.
 */
int writer_batch_begin(base_buf_t *out, uint32_t n_events, int64_t sent_at_ms,
                       const char *write_key, const void *context, size_t context_len);
/* Exact number of bytes writer_batch_begin() appends with these arguments. */
size_t writer_batch_overhead(uint32_t n_events, int64_t sent_at_ms, const char *write_key,
                             size_t context_len);

/*
 * Converts ONE msgpack value mp[0..len) (e.g. a whole batch body) to JSON text appended to out
 * (not NUL-terminated). Strings are escaped per RFC 8259 by base_json_str_utf8() (bytes copied
 * as they are, not re-validated); map keys must be strings; float NaN/Inf
 * become null; bin and ext values are refused. Depth is limited to 64.
 * Returns 0, WRITER_E_MALFORMED (not exactly one msgpack value, or a non-string key, bin or ext),
 * WRITER_E_DEPTH, WRITER_E_TOO_LARGE or WRITER_E_NOMEM. On failure out->len is restored.
 */
int writer_msgpack_to_json(const void *mp, size_t len, base_buf_t *out);

/*
 * Formats 128 random bits as an RFC 4122 version-4 UUID ("xxxxxxxx-xxxx-4xxx-Yxxx-xxxxxxxxxxxx",
 * lowercase) into out: 36 characters and a NUL. The caller supplies the randomness (getrandom, or
 * a PRNG seeded from it).
 */
#define WRITER_UUID_LEN 36
void writer_uuid_v4(uint64_t hi, uint64_t lo, char out[WRITER_UUID_LEN + 1]);

#endif
