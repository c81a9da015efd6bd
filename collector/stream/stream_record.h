/*
 * stream_record.h — reads what sluice-stream needs out of one record of the `events` topic (the
 * collector's normalized event, SPEC §4: msgpack by default, JSON with kafka.format: json):
 * type, event, userId/anonymousId, accountId, source, messageId (+ messageIdGenerated) and the
 * normalized timestamp. Nothing else is decoded (the properties are skipped unread), so a record
 * costs one pass over its top-level keys.
 *
 * Bad input: a record that is not a map of the expected shape (not msgpack/JSON, a field of the
 * wrong type, an unparsable timestamp) is STREAM_REC_E_BAD: the worker counts it
 * (sluice_stream_records_undecodable_total), logs it (rate-limited) and skips it — its offset
 * is still consumed, so one bad record never stalls a partition.
 */
#ifndef SLUICE_STREAM_RECORD_H
#define SLUICE_STREAM_RECORD_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <msgpack.h>

#include "base.h"

#define STREAM_REC_E_BAD   (-1) /* not a normalized event record */
#define STREAM_REC_E_NOMEM (-2)

typedef struct stream_str {
    const char *p; /* into the record (or the decoder's scratch); NULL when absent */
    size_t n;
} stream_str_t;

typedef struct stream_rec {
    stream_str_t type, event, user, anon, account, source, message_id;
    bool message_id_generated;
    int64_t ts_ms; /* the normalized "timestamp"; -1 when absent */
} stream_rec_t;

/* A reusable decoder (its JSON document lives until the next call; msgpack is read in place, with
 * no allocation: the zone is unused since the in-place walker and kept for the layout). */
typedef struct stream_decoder {
    msgpack_zone zone;
    void *json;                    /* json_t * of the last JSON record */
    base_iso8601_cache_t ts_cache; /* the last timestamp's minute (a stream's are alike) */
} stream_decoder_t;

void stream_decoder_init(stream_decoder_t *d);
void stream_decoder_free(stream_decoder_t *d);
/* Decodes val[0..len) as msgpack (json false) or JSON into r, whose strings point into val or
 * into d (valid until the next call on d). Returns 0, STREAM_REC_E_BAD or STREAM_REC_E_NOMEM. */
int stream_record_decode(stream_decoder_t *d, const void *val, size_t len, bool json,
                         stream_rec_t *r);

#endif
