/*
 * proto.h — the sluice wire format (see proto/README.md): decode a request body (msgpack or JSON)
 * into one event representation, validate every event against SPEC §2, normalize it, and encode
 * the normalized record (msgpack or JSON) and the rejected-event record for Kafka.
 *
 * Shared by the collector, the SDK and the load harness. No I/O, no threads, no globals: every
 * function here is safe to call concurrently on distinct objects.
 *
 * Memory: a proto_batch_t owns one arena (msgpack_zone) that holds every decoded object and the
 * event array. Strings (proto_str_t, msgpack str objects) point INTO the caller's body buffer, so
 * the body must outlive the batch. proto_batch_free() releases everything at once.
 *
 * Unified representation: JSON bodies are converted into the same msgpack_object tree that a
 * msgpack body decodes to, so validation, normalization and encoding have one code path.
 * JSON numbers that are integers become POSITIVE/NEGATIVE_INTEGER, others FLOAT64.
 */
#ifndef SLUICE_PROTO_H
#define SLUICE_PROTO_H

#include <msgpack.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define PROTO_SCHEMA_VERSION 1

/*
 * Error codes. 0 = OK, negative = failure. Append-only: the numeric values and the code strings
 * are part of the external contract (they appear in HTTP answers and in events_rejected).
 * X(NAME, value, "code", "human message")
 * Request-level codes make the whole body unreadable (HTTP 400/413); event-level codes reject
 * one event inside a readable batch.
 */
#define PROTO_ERRORS(X)                                                                            \
    X(OK, 0, "ok", "ok")                                                                           \
    /* request level */                                                                            \
    X(E_MALFORMED, -1, "malformed_body", "body is not valid JSON or msgpack")                     \
    X(E_NOT_A_MAP, -2, "not_an_object", "body must be a JSON object / msgpack map")               \
    X(E_NO_BATCH, -3, "missing_batch", "batch body needs a \"batch\" array")                      \
    X(E_TOO_MANY_EVENTS, -4, "too_many_events", "batch has more events than allowed")             \
    X(E_TOO_DEEP, -5, "too_deep", "nesting deeper than allowed")                                  \
    X(E_BODY_TOO_LARGE, -6, "body_too_large", "body larger than allowed")                         \
    X(E_TRAILING_DATA, -7, "trailing_data", "bytes after the end of the body's value")            \
    X(E_NOMEM, -8, "no_memory", "out of memory")                                                   \
    X(E_BAD_SENT_AT, -9, "invalid_sent_at", "sentAt must be an ISO-8601 string or epoch ms")       \
    X(E_BAD_WRITE_KEY, -10, "invalid_write_key", "writeKey must be a non-empty string")            \
    /* event level */                                                                              \
    X(E_EVENT_NOT_A_MAP, -20, "event_not_an_object", "event must be an object")                   \
    X(E_MISSING_TYPE, -21, "missing_type", "type is required")                                     \
    X(E_BAD_TYPE, -22, "invalid_type",                                                             \
      "type must be track, identify, group, page, screen or alias")                                \
    X(E_MISSING_MESSAGE_ID, -23, "missing_message_id", "messageId is required")                    \
    X(E_BAD_MESSAGE_ID, -24, "invalid_message_id", "messageId must be a string of 1..100 bytes")   \
    X(E_MISSING_USER, -25, "missing_user", "userId or anonymousId is required")                    \
    X(E_BAD_USER_ID, -26, "invalid_user_id", "userId must be a string of 1..255 bytes")            \
    X(E_BAD_ANONYMOUS_ID, -27, "invalid_anonymous_id",                                             \
      "anonymousId must be a string of 1..255 bytes")                                              \
    X(E_MISSING_EVENT, -28, "missing_event", "event is required for track")                        \
    X(E_BAD_EVENT, -29, "invalid_event", "event must be a string of 1..200 bytes")                 \
    X(E_MISSING_GROUP_ID, -30, "missing_group_id", "groupId is required for group")                \
    X(E_BAD_GROUP_ID, -31, "invalid_group_id", "groupId must be a string of 1..255 bytes")         \
    X(E_BAD_TIMESTAMP, -32, "invalid_timestamp",                                                   \
      "timestamp must be an ISO-8601 string or integer epoch ms")                                  \
    X(E_BAD_PROPERTIES, -33, "invalid_properties", "properties must be an object")                \
    X(E_BAD_TRAITS, -34, "invalid_traits", "traits must be an object")                             \
    X(E_BAD_CONTEXT, -35, "invalid_context", "context must be an object")                          \
    X(E_EVENT_TOO_DEEP, -36, "too_deep", "nesting deeper than 16 levels")                          \
    X(E_BAD_UTF8, -37, "invalid_utf8", "strings must be valid UTF-8")                              \
    X(E_EVENT_TOO_LARGE, -38, "event_too_large", "encoded event larger than allowed")              \
    X(E_BAD_KEY, -39, "invalid_key", "object keys must be strings")                                \
    X(E_BAD_EVENT_SENT_AT, -40, "invalid_sent_at", "sentAt must be an ISO-8601 string or epoch ms")

typedef enum {
#define PROTO_X_ENUM(name, val, code, msg) PROTO_##name = val,
    PROTO_ERRORS(PROTO_X_ENUM)
#undef PROTO_X_ENUM
} proto_err_t;

/* Stable machine code ("missing_type"); "unknown" for a value not in the table. Never NULL. */
const char *proto_err_code(int err);
/* Human message for err. Never NULL. */
const char *proto_err_message(int err);
/* Dense index 0..PROTO_ERR_COUNT-1 for err (for metrics arrays); -1 if unknown. */
int proto_err_index(int err);
/* The error value at dense index i (inverse of proto_err_index). */
int proto_err_at(int i);
extern const int PROTO_ERR_COUNT;

typedef enum { PROTO_FMT_MSGPACK = 0, PROTO_FMT_JSON = 1 } proto_format_t;

typedef enum {
    PROTO_T_NONE = 0, /* body kind: a batch */
    PROTO_T_TRACK,
    PROTO_T_IDENTIFY,
    PROTO_T_GROUP,
    PROTO_T_PAGE,
    PROTO_T_SCREEN,
    PROTO_T_ALIAS,
} proto_type_t;

/* "track" etc; "" for PROTO_T_NONE. */
const char *proto_type_name(proto_type_t t);
/* Parses "track" etc.; PROTO_T_NONE if not a known type. */
proto_type_t proto_type_parse(const char *s, size_t len);

typedef struct proto_str {
    const char *ptr; /* not NUL-terminated; NULL when absent */
    uint32_t len;
} proto_str_t;

typedef struct proto_limits {
    size_t event_bytes;  /* one encoded event (as received, re-encoded as msgpack); SPEC 32 KiB */
    size_t body_bytes;   /* one decoded body; SPEC 512 KiB */
    uint32_t max_depth;  /* nesting of properties/traits/context; SPEC 16 */
    uint32_t max_events; /* events per batch; default body_bytes/16 */
} proto_limits_t;

/* SPEC §2 defaults. */
proto_limits_t proto_limits_default(void);

typedef struct proto_event {
    const msgpack_object *obj; /* the event map as received (inside the batch's arena) */
    int error;                 /* proto_err_t: 0 valid, else the first rule it broke */
    proto_type_t type;
    proto_str_t message_id, user_id, anonymous_id, event, group_id, context_group_id;
    bool has_timestamp, has_sent_at;
    int64_t timestamp_ms; /* as sent (epoch ms) when has_timestamp */
    int64_t sent_at_ms;   /* event-level sentAt, else the batch's, when has_sent_at */

    /* Filled by proto_normalize(). */
    int64_t received_at_ms;
    int64_t norm_timestamp_ms;     /* clock-skew corrected, clamped */
    int64_t original_timestamp_ms; /* the timestamp as sent, kept when clamped */
    bool clamped;
    proto_str_t source;
    proto_str_t account_id; /* groupId / context.groupId / learned; ptr NULL when absent */
} proto_event_t;

typedef struct proto_batch {
    msgpack_zone zone;    /* arena: all objects and the events array */
    msgpack_object root;  /* the decoded body */
    proto_event_t *events;
    size_t n_events;
    proto_str_t write_key;                /* body's writeKey, ptr NULL if absent */
    bool has_sent_at;
    int64_t sent_at_ms;
    const msgpack_object *context;        /* batch-level context map or NULL */
} proto_batch_t;

/*
 * Decodes body[0..len) as fmt. kind PROTO_T_NONE: a batch map ({"batch":[...], ...}); any other
 * kind: the body is ONE event of that type (single-call endpoints: /v1/track ...), whose "type"
 * field, if present, must agree (else that event is rejected with E_BAD_TYPE).
 * On success returns 0 and b holds n_events events, each already validated (events[i].error set);
 * invalid events do not make the call fail. On failure returns a request-level proto_err_t and b
 * holds nothing that needs freeing beyond proto_batch_free() (which is always safe to call).
 * Bounds: depth, counts and sizes are checked against lim before any allocation they imply;
 * allocation is bounded by a small multiple of len.
 */
int proto_decode(proto_batch_t *b, const char *body, size_t len, proto_format_t fmt,
                 proto_type_t kind, const proto_limits_t *lim);

/* Frees the batch's arena. Safe on a zeroed or already-freed batch. */
void proto_batch_free(proto_batch_t *b);

/*
 * Account lookup for normalization: returns the account learned for user id (from earlier group
 * calls) in *out (ptr valid until the batch is freed; copy it into the batch arena via zone), or
 * false. May be NULL in proto_norm_ctx_t.
 */
typedef bool (*proto_account_lookup_cb)(void *ud, proto_str_t user_id, msgpack_zone *zone,
                                        proto_str_t *out);

/* Called for each valid group event with a userId, in batch order, before later events of the
 * same batch are normalized (so "group then track" in one batch resolves the account). */
typedef void (*proto_account_learn_cb)(void *ud, proto_str_t user_id, proto_str_t group_id);

typedef struct proto_norm_ctx {
    int64_t received_at_ms;
    proto_str_t source;
    proto_account_lookup_cb lookup; /* may be NULL */
    proto_account_learn_cb learn;   /* may be NULL */
    void *lookup_ud;                /* passed to both */
    int64_t max_future_ms; /* clamp threshold, SPEC 24 h */
} proto_norm_ctx_t;

/*
 * Normalizes every valid event of b (SPEC §2): receivedAt, corrected timestamp, clamp with
 * originalTimestamp, source, accountId. Does not touch invalid events' error codes.
 */
void proto_normalize(proto_batch_t *b, const proto_norm_ctx_t *ctx);

/*
 * Growable output buffer with a hard cap (curl dynbuf style). proto_buf_t memory is owned by the
 * buffer; proto_buf_free() releases it; proto_buf_reset() keeps the allocation.
 */
typedef struct proto_buf {
    char *data;
    size_t len, cap, max;
} proto_buf_t;
void proto_buf_init(proto_buf_t *buf, size_t max);
/* Returns 0 or PROTO_E_NOMEM (allocation failed or max would be exceeded). */
int proto_buf_append(proto_buf_t *buf, const void *p, size_t n);
void proto_buf_reset(proto_buf_t *buf);
void proto_buf_free(proto_buf_t *buf);

/*
 * Appends the normalized record of valid event ev (the event as received with receivedAt,
 * timestamp (ISO-8601 UTC, ms), originalTimestamp when clamped, source, accountId set and the
 * batch-level context merged in when the event has none) to out, as fmt. Returns 0 or an error.
 * batch may be NULL (no batch-level context).
 */
int proto_encode_event(const proto_batch_t *batch, const proto_event_t *ev, proto_format_t fmt,
                       proto_buf_t *out);

/*
 * Appends the rejected record as JSON:
 * {"error":CODE,"message":TEXT,"source":NAME,"receivedAt":ISO,"raw":<event as received>}
 */
int proto_encode_rejected(const proto_event_t *ev, proto_buf_t *out);

/* The Kafka key of an event: accountId, else userId, else anonymousId (ptr NULL if none). */
proto_str_t proto_event_key(const proto_event_t *ev);

/* Formats epoch ms as "2026-11-23T12:00:00.000Z" into out (>= 25 bytes). Returns length. */
size_t proto_format_iso8601(int64_t ms, char *out);
/* Parses ISO-8601 (date-time with optional fraction and Z or ±hh:mm). Returns true on success. */
bool proto_parse_iso8601(const char *s, size_t len, int64_t *ms_out);

/* True when s[0..len) is valid UTF-8 (no overlongs, no surrogates). */
bool proto_utf8_valid(const char *s, size_t len);

#endif
