/*
 * proto.h — the sluice wire format (see proto/README.md): decode a request body (msgpack or JSON)
 * into one event representation, validate every event against SPEC §2, normalize it, and encode
 * the normalized record (msgpack or JSON) and the rejected-event record for Kafka.
 *
 * Shared by the collector, the SDK and the load harness. No I/O, no threads, no globals: every
 * function here is safe to call concurrently on distinct objects.
 *
 * Memory: a proto_batch_t owns one arena (msgpack_zone) that holds every decoded object and the
 * event array. What points where:
 *   - msgpack body: str/bin/ext objects (and the proto_str_t fields derived from them) point INTO
 *     the caller's body buffer (zero copy), so the body must outlive the batch;
 *   - JSON body: the JSON reader (json_reader.h, simdjson) writes the tree into the arena, every
 *     string and key included, so the body may be freed right after the call;
 *   - proto_str_t fields filled by proto_normalize() (source, a learned account_id) point to
 *     memory of the caller (proto_norm_ctx_t.source) or of the lookup callback (which copies
 *     into the batch's zone), see there.
 * proto_batch_free() releases everything at once.
 *
 * Unified representation: JSON bodies are converted into the same msgpack_object tree that a
 * msgpack body decodes to, so validation, normalization and encoding have one code path.
 * JSON numbers that are integers within 64 bits become POSITIVE/NEGATIVE_INTEGER, others FLOAT64.
 */
#ifndef SLUICE_PROTO_H
#define SLUICE_PROTO_H

#include <msgpack.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "base.h"

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
    X(E_MALFORMED, -1, "malformed_body", "body is not valid JSON or msgpack")                      \
    X(E_NOT_A_MAP, -2, "not_an_object", "body must be a JSON object / msgpack map")                \
    X(E_NO_BATCH, -3, "missing_batch", "batch body needs a \"batch\" array")                       \
    X(E_TOO_MANY_EVENTS, -4, "too_many_events", "batch has more events than allowed")              \
    X(E_TOO_DEEP, -5, "too_deep", "nesting deeper than allowed")                                   \
    X(E_BODY_TOO_LARGE, -6, "body_too_large", "body larger than allowed")                          \
    X(E_TRAILING_DATA, -7, "trailing_data", "bytes after the end of the body's value")             \
    X(E_NOMEM, -8, "no_memory", "out of memory")                                                   \
    X(E_BAD_SENT_AT, -9, "invalid_sent_at", "sentAt must be an ISO-8601 string or epoch ms")       \
    X(E_BAD_WRITE_KEY, -10, "invalid_write_key", "writeKey must be a non-empty string")            \
    X(E_BAD_BATCH_CONTEXT, -11, "invalid_context",                                                 \
      "batch context must be an object of valid values")                                           \
    /* event level */                                                                              \
    X(E_EVENT_NOT_A_MAP, -20, "event_not_an_object", "event must be an object")                    \
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
    X(E_BAD_PROPERTIES, -33, "invalid_properties", "properties must be an object")                 \
    X(E_BAD_TRAITS, -34, "invalid_traits", "traits must be an object")                             \
    X(E_BAD_CONTEXT, -35, "invalid_context", "context must be an object")                          \
    X(E_EVENT_TOO_DEEP, -36, "too_deep", "nesting deeper than 16 levels")                          \
    X(E_BAD_UTF8, -37, "invalid_utf8", "strings must be valid UTF-8")                              \
    X(E_EVENT_TOO_LARGE, -38, "event_too_large", "encoded event larger than allowed")              \
    X(E_BAD_KEY, -39, "invalid_key", "object keys must be strings")                                \
    X(E_BAD_EVENT_SENT_AT, -40, "invalid_sent_at",                                                 \
      "sentAt must be an ISO-8601 string or epoch ms")                                             \
    X(E_DUPLICATE_KEY, -41, "duplicate_key", "an object has the same key twice")                   \
    X(E_BAD_VALUE, -42, "invalid_value", "binary and extension values are not allowed")            \
    X(E_BAD_INTEGRATIONS, -43, "invalid_integrations", "integrations must be an object")

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
/* The error value at dense index i (inverse of proto_err_index); PROTO_E_MALFORMED when i is out
 * of range. */
int proto_err_at(int i);
extern const int PROTO_ERR_COUNT;
/* True for the event-level codes (value <= -20): they reject one event, not the request. */
bool proto_err_is_event_level(int err);

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
    uint32_t max_events; /* events per batch; default 10000 */
} proto_limits_t;

/* SPEC §2 defaults. */
proto_limits_t proto_limits_default(void);

/* Fields whose value in the record differs from the event as received (proto_event_t.rewrite):
 * a numeric id becomes its decimal text, "" becomes absent; the record drops the received key
 * and carries the value of the proto_event_t field instead (nothing when its ptr is NULL). */
#define PROTO_RW_USER_ID      1u
#define PROTO_RW_ANONYMOUS_ID 2u
#define PROTO_RW_GROUP_ID     4u

/* Room for the decimal text of a numeric id: a 64-bit integer (20 digits and a sign) or the
 * shortest round-trip form of a double ("-1.2345678901234567e-308"). */
#define PROTO_NUM_TEXT 26
/* A generated messageId: a version-4 UUID in text form ("xxxxxxxx-xxxx-4xxx-yxxx-xxxxxxxxxxxx"). */
#define PROTO_GEN_ID_LEN 36

/* Where a container value of an event's top-level map lies in a msgpack body as received: the
 * value's element array in the arena (its identity: an edit of anything inside it replaces that
 * array, see collector/filter.c and merge_into) and its bytes in the body. */
typedef struct proto_raw {
    const void *elems; /* via.map.ptr / via.array.ptr of the value as decoded */
    uint32_t n;        /* its element count as decoded */
    uint32_t len;      /* bytes of its encoding in the body */
    const char *bytes; /* its encoding in the body (lives as long as the body) */
} proto_raw_t;

typedef struct proto_event {
    const msgpack_object *obj; /* the event map as received (inside the batch's arena); for a
                                * valid event of a batch with a batch-level context/integrations
                                * the map holds the merged context/integrations (SPEC §2) */
    int error;                 /* proto_err_t: 0 valid, else the first rule it broke */
    proto_type_t type;
    proto_str_t message_id, user_id, anonymous_id, event, group_id, context_group_id;
    bool has_timestamp, has_sent_at;
    bool message_id_generated; /* messageId was absent: proto_normalize() generates one; such an
                                * event cannot be deduplicated (SPEC §2) */
    uint8_t rewrite;           /* PROTO_RW_* */
    int64_t timestamp_ms; /* as sent (epoch ms) when has_timestamp: "timestamp", else (RudderStack)
                           * "originalTimestamp" */
    int64_t sent_at_ms;   /* event-level sentAt, else the batch's, when has_sent_at */
    char num_text[3][PROTO_NUM_TEXT];  /* storage of numeric userId, anonymousId, groupId text */
    char gen_id[PROTO_GEN_ID_LEN + 1]; /* storage of a generated messageId */

    /* Filled by proto_normalize(). */
    int64_t received_at_ms;
    int64_t norm_timestamp_ms;     /* clock-skew corrected, clamped */
    int64_t original_timestamp_ms; /* the timestamp as sent, kept when clamped */
    bool clamped;
    proto_str_t source;
    proto_str_t account_id; /* groupId / context.groupId / learned; ptr NULL when absent */

    /* msgpack bodies: the top-level container values of the event as received (in the batch's
     * arena), which proto_encode_event() copies instead of re-encoding when the record still
     * holds them unchanged; NULL/0 for JSON bodies. */
    const proto_raw_t *raw;
    uint32_t n_raw;
} proto_event_t;

typedef struct proto_batch {
    msgpack_zone zone;   /* arena: all objects and the events array */
    msgpack_object root; /* the decoded body */
    proto_event_t *events;
    size_t n_events;
    proto_str_t write_key; /* body's writeKey, ptr NULL if absent */
    bool has_sent_at;
    int64_t sent_at_ms;
    const msgpack_object *context;      /* batch-level context map or NULL (single call: the
                                         * event's own context) */
    const msgpack_object *integrations; /* batch-level integrations map or NULL */
    uint32_t json_surrogates;           /* JSON: lone surrogate escapes read as U+FFFD (SPEC §2) */
    uint32_t json_big_ints; /* JSON: integers beyond 64 bits read as doubles (SPEC §2) */
    /* msgpack bodies: the raw spans of the events' top-level container values, in the arena;
     * raw_first[i] .. raw_first[i + 1] are batch element i's (single call: all of them). */
    proto_raw_t *raw_tab;
    uint32_t n_raw, cap_raw;
    uint32_t *raw_first;
    uint32_t n_raw_first; /* batch elements covered by raw_first (+1 entries) */
} proto_batch_t;

/*
 * Decodes body[0..len) as fmt. kind PROTO_T_NONE: a batch map ({"batch":[...], ...}); any other
 * kind: the body is ONE event of that type (single-call endpoints: /v1/track ...), whose "type"
 * field, if present, must agree (else that event is rejected with E_BAD_TYPE).
 * On success returns 0 and b holds n_events events, each already validated (events[i].error set);
 * invalid events do not make the call fail. On failure returns a request-level proto_err_t and b
 * holds nothing that needs freeing beyond proto_batch_free() (which is always safe to call).
 * Bounds: depth, counts and sizes are checked against lim before any allocation they imply;
 * allocation is bounded by a small multiple of len. lim NULL means proto_limits_default().
 * b is overwritten (it must not hold a live batch: free that first).
 */
int proto_decode(proto_batch_t *b, const char *body, size_t len, proto_format_t fmt,
                 proto_type_t kind, const proto_limits_t *lim);

/* Frees the batch's arena. Safe on a zeroed or already-freed batch. */
void proto_batch_free(proto_batch_t *b);

/*
 * Reusable arena, for a thread that decodes body after body (a collector loop): instead of one
 * malloc'd chunk per proto_decode() and its free afterwards, the chunk is lent to each batch by
 * proto_decode_arena() and handed back, cleared, by proto_batch_recycle().
 *
 * Bound: the chunk kept between batches is at most PROTO_ARENA_KEEP_MAX bytes (the size cap of
 * the chunk proto_decode() itself allocates first), so an idle arena holds at most that much.
 * A batch that needs more gets extra chunks exactly as with proto_decode(); they are freed by
 * the recycle, which also grows the kept chunk (doubling, up to the cap) so the next batch of
 * that size fits in one. Not thread-safe: one arena belongs to one thread at a time.
 */
#define PROTO_ARENA_KEEP_MAX ((size_t)1 << 20)

typedef struct proto_arena {
    msgpack_zone zone;              /* valid only when held */
    struct proto_json_reader *json; /* the JSON reader, made at the first JSON body, kept */
    bool held;                      /* zone holds a chunk that is not lent out */
    bool lent;          /* the chunk is lent to a batch (set by decode, cleared by recycle) */
    const void *chunk0; /* the lent chunk (zone.chunk_list.head when it was lent) */
} proto_arena_t;

/* An empty arena (holds no memory yet). Never fails. */
void proto_arena_init(proto_arena_t *a);
/* Frees the kept chunk. Safe on an empty or freed arena. A batch still holding the lent chunk
 * stays valid (it owns it now: proto_batch_free releases it). */
void proto_arena_free(proto_arena_t *a);

/*
 * proto_decode() with the batch's arena taken from a: the kept chunk when it is large enough for
 * this body, else a new one (the old one is freed). Same results, errors and bounds as
 * proto_decode(); b is overwritten the same way. Afterwards (success or failure) b owns the
 * chunk: end it with proto_batch_recycle(b, a) to give the chunk back, or with
 * proto_batch_free(b) (then a is simply empty again and the next decode allocates).
 */
int proto_decode_arena(proto_batch_t *b, proto_arena_t *a, const char *body, size_t len,
                       proto_format_t fmt, proto_type_t kind, const proto_limits_t *lim);

/*
 * Ends b like proto_batch_free() — every object, string and event of b is invalid afterwards —
 * but keeps b's first chunk in a (cleared) for the next proto_decode_arena(), when that chunk
 * came from a's last decode; other chunks are freed. Safe on a zeroed or freed batch. b is
 * zeroed.
 */
void proto_batch_recycle(proto_batch_t *b, proto_arena_t *a);

/* What proto_value_check() and proto_event_validate() check beyond the rules that always apply.
 * PROTO_CHECK_UTF8 may be left out only for trees whose strings are already known to be valid
 * UTF-8 (the JSON reader validated the whole body). */
#define PROTO_CHECK_DUP_KEYS 1u /* no map has the same key twice */
#define PROTO_CHECK_UTF8     2u /* every string and key is valid UTF-8 */

/*
 * Checks one value tree against the structural rules that apply to everything inside an event:
 * map keys are strings (E_BAD_KEY), every string and key is valid UTF-8 when checks has
 * PROTO_CHECK_UTF8 (E_BAD_UTF8), no bin/ext values (E_BAD_VALUE), containers nest at most
 * max_depth levels with obj itself, when a container, counting as level 1 (E_EVENT_TOO_DEEP), no
 * map has the same key twice when checks has PROTO_CHECK_DUP_KEYS (E_DUPLICATE_KEY), and the
 * minimal msgpack encoding of obj is at most max_bytes (E_EVENT_TOO_LARGE). Returns 0 or the first
 * violation in depth-first order; the walk stops there. *size_out (may be NULL) receives the
 * encoded size on success. Allocates nothing for maps of up to 256 keys; bigger maps with
 * PROTO_CHECK_DUP_KEYS use one temporary malloc (E_NOMEM if that fails). Recursion depth is
 * bounded by max_depth.
 */
int proto_value_check(const msgpack_object *obj, uint32_t max_depth, size_t max_bytes,
                      unsigned checks, size_t *size_out);

/* What an event inherits from its batch's envelope (SPEC §2: a readable batch with a bad
 * envelope value rejects its events one by one, not the request). */
typedef struct proto_envelope {
    bool has_sent_at; /* the batch's sentAt, inherited unless the event has its own */
    int64_t sent_at_ms;
    bool bad_sent_at;      /* the batch's sentAt is no time value: events without their own
                            * sentAt are invalid_sent_at (-40) */
    bool bad_context;      /* the batch's context is not a valid map: every event
                            * invalid_context (-35) */
    bool bad_integrations; /* the same for integrations: invalid_integrations */
} proto_envelope_t;

/*
 * Validates the event map obj against SPEC §2 (rule order: proto/README.md) and fills *ev
 * (overwritten entirely). kind: the type the endpoint implies (PROTO_T_NONE inside a batch).
 * env: what the event inherits from its batch (NULL: nothing). Returns ev->error. For an invalid
 * event, each proto_str_t field is set only when it passes its own rule (so it is safe to
 * echo), else ptr is NULL. A numeric userId/anonymousId/groupId is converted into ev->num_text
 * (and flagged in ev->rewrite); a missing messageId sets ev->message_id_generated (the id itself
 * comes from proto_normalize). checks: as for proto_value_check(). Allocates nothing (see
 * proto_value_check).
 */
int proto_event_validate(proto_event_t *ev, const msgpack_object *obj, proto_type_t kind,
                         const proto_envelope_t *env, const proto_limits_t *lim, unsigned checks);

/* Parses a SPEC §2 time value: ISO-8601 string or integer epoch ms, within [2000-01-01,
 * 2100-01-01). Returns true and sets *ms_out, else false. */
bool proto_parse_time(const msgpack_object *obj, int64_t *ms_out);
#define PROTO_TIME_MIN_MS 946684800000LL  /* 2000-01-01T00:00:00Z */
#define PROTO_TIME_MAX_MS 4102444800000LL /* 2100-01-01T00:00:00Z, exclusive */

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
    int64_t max_future_ms;          /* clamp threshold, SPEC 24 h */
    /* Generated messageIds (events that came without one): ids are a bijection of (seed,
     * *id_seq), so one seed never repeats an id; callers seed each thread from a random source.
     * id_seq is advanced once per generated id; NULL: a local sequence starting at 0. */
    uint64_t id_seed[2];
    uint64_t *id_seq;
} proto_norm_ctx_t;

/*
 * Normalizes every valid event of b (SPEC §2): receivedAt, corrected timestamp, clamp, source,
 * accountId, and a generated messageId (a UUID v4 from ctx->id_seed) for an event without one. Does
 * not touch invalid events' error codes; invalid events get received_at_ms and source only (the
 * rejected record carries them). Account order: groupId of a group call, else context.groupId, else
 * lookup(userId), else absent. learn() runs right after a valid group event with a userId is
 * normalized, so later events of the same batch see it. max_future_ms <= 0 means the SPEC default
 * (24 h). ev->source points to ctx->source.ptr, which must outlive every use of the batch's events.
 */
void proto_normalize(proto_batch_t *b, const proto_norm_ctx_t *ctx);

/*
 * Record rules (proto/README.md §4): the keys of the event as received are kept in their order
 * except writeKey (a secret) and the keys the collector sets — receivedAt, timestamp,
 * originalTimestamp, sentAt, source, accountId, messageIdGenerated, and the ids in ev->rewrite
 * (and messageId when generated) — then the collector's values are appended: receivedAt,
 * timestamp (clock-skew corrected, clamped), originalTimestamp (the client's time as sent, when
 * it sent one), sentAt (when known), source, accountId (when known), type (when the event left
 * it to the endpoint), messageId + messageIdGenerated:true (when generated), rewritten ids. Times
 * are ISO-8601 UTC with milliseconds. Batch-level context/integrations are already merged into
 * ev->obj by proto_decode().
 *
 * Appends the record of valid event ev to out, as fmt. Returns 0 or an error; on failure (ev
 * invalid: PROTO_E_EVENT_NOT_A_MAP; out's cap: PROTO_E_EVENT_TOO_LARGE; malloc failed:
 * PROTO_E_NOMEM) out->len is restored to its value before the call.
 */
int proto_encode_event(const proto_event_t *ev, proto_format_t fmt, base_buf_t *out);

/*
 * Appends the rejected record as JSON:
 * {"error":CODE,"message":TEXT,"source":NAME,"receivedAt":ISO,"raw":<event as received>}
 * (but for a top-level writeKey, a secret: never copied, as in the accepted record).
 * raw is written leniently (non-string keys as strings, bad UTF-8 bytes as U+FFFD, bin/ext as
 * null). When raw does not fit out's cap it becomes null plus "rawTruncated":true. Returns 0,
 * PROTO_E_EVENT_TOO_LARGE (not even that fits) or PROTO_E_NOMEM (then out->len is restored).
 */
int proto_encode_rejected(const proto_event_t *ev, base_buf_t *out);

/* Appends s[0..len) as a JSON string literal (quoted, escaped: base_json_str_utf8), or null when
 * s is NULL or not valid UTF-8. Returns 0, PROTO_E_EVENT_TOO_LARGE (out's cap) or PROTO_E_NOMEM. */
int proto_json_str(base_buf_t *out, const char *s, size_t len);

/* The Kafka key of an event: accountId, else userId, else anonymousId (ptr NULL if none). */
proto_str_t proto_event_key(const proto_event_t *ev);

#endif
