/*
 * enc.h — the body writer of sluice-load: one call sequence writes either msgpack or JSON into a
 * bounded buffer. It writes exactly what it is told, including deliberately invalid events
 * (integer map keys, invalid UTF-8), which is why the harness keeps its own writer.
 *
 * Division of labour with the shared encoder (proto/writer.h, engineer "sdk"): valid msgpack
 * events and the msgpack batch envelope are written by writer.h (writer_event,
 * writer_batch_begin) straight into this buffer through enc_claim(). This writer remains, as a
 * STAND-IN on msgpack-c's packer, for what writer.h's API cannot express today:
 *   - JSON bodies: writer.h writes msgpack only (writer_msgpack_to_json() converts afterwards,
 *     but then timestamps stay integers; JSON clients send ISO-8601 strings);
 *   - a string "timestamp" (writer_event_t has only integer timestamp_ms), needed for ISO
 *     timestamps and for the invalid_timestamp kind;
 *   - an event-level "sentAt" (absent from writer_event_t), needed for invalid_sent_at;
 *   - explicit lengths for string fields (writer_event_t takes NUL-terminated strings);
 *   - non-map events and integer map keys (event_not_an_object, invalid_key kinds).
 * The properties/traits/context maps handed to writer_event() are also built here (writer.h
 * leaves nesting to the caller).
 *
 * Memory: enc_t owns buf (a base_buf_t grown on demand up to max); enc_free() releases it. After
 * any failure (allocation, max exceeded, nesting beyond ENC_MAX_DEPTH) e->err is set, further
 * calls do nothing, and the buffer content is unusable until enc_reset(). JSON strings are
 * written by base_json_str_utf8(): bytes are copied as given, so invalid UTF-8 stays invalid
 * (the bad-input kinds rely on it).
 */
#ifndef SLUICE_LOADTEST_ENC_H
#define SLUICE_LOADTEST_ENC_H

#include <msgpack.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "base.h"

#define ENC_MAX_DEPTH 64

typedef enum { ENC_MSGPACK = 0, ENC_JSON = 1 } enc_format_t;

typedef struct enc {
    enc_format_t fmt;
    base_buf_t buf;
    int err; /* 0, or a negative base_err_t (BASE_E_INVAL: bad nesting) once anything failed */
    msgpack_packer pk;
    int depth;
    bool after_key;
    bool first[ENC_MAX_DEPTH + 1]; /* JSON: nothing written yet at this depth */
} enc_t;

/* Initializes e for fmt with a hard cap of max bytes; allocates nothing yet. */
void enc_init(enc_t *e, enc_format_t fmt, size_t max);
/* Empties the buffer (keeps the allocation) and clears err. */
void enc_reset(enc_t *e);
void enc_free(enc_t *e);

/* Appends n bytes of space and returns where they start, for another encoder to fill exactly
 * (writer.h's fixed buffers); NULL (and err set) when the cap would be exceeded or allocation
 * failed. */
char *enc_claim(enc_t *e, size_t n);

/* Containers: n is the exact number of entries (msgpack needs it up front). JSON closes with
 * enc_end(); msgpack ignores enc_end(), so call it for both formats. */
void enc_map(enc_t *e, uint32_t n);
void enc_array(enc_t *e, uint32_t n);
void enc_end(enc_t *e, bool is_map);
/* A map key (string). */
void enc_key(enc_t *e, const char *k);
/* Values. enc_strn writes the bytes as given (JSON-escaped, not validated). */
void enc_str(enc_t *e, const char *s);
void enc_strn(enc_t *e, const char *s, size_t n);
void enc_int(enc_t *e, int64_t v);
void enc_double(enc_t *e, double v);
void enc_bool(enc_t *e, bool v);
void enc_nil(enc_t *e);
/* A msgpack integer in key position (invalid on purpose). JSON has no such thing: writes a
 * string key instead. */
void enc_int_key(enc_t *e, int64_t k);

#endif
