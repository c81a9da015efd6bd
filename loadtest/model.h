/*
 * model.h — the traffic model of sluice-load: which events a run sends, deterministically.
 *
 * Accounts 1..N have Zipf-distributed sizes: account of rank r has max(1, max_users / r^s) users,
 * and an account's share of the traffic is proportional to its users. Events come from a product
 * vocabulary (PQL signal events "Pricing Page Viewed" and "Terms Viewed" included, invites, group
 * calls, identify/page/screen/alias). A fraction dup_rate of batch slots re-send an earlier event
 * (same messageId, same bytes) from the same batch or from one of the last MODEL_DUP_RING events
 * of earlier batches; a fraction invalid_rate are invalid, one kind of SPEC §2 each (MODEL_KINDS).
 * Stream 0 starts with a script that drives three accounts across the PQL tiers of SPEC §6's
 * example rules (model_scripted()).
 *
 * Determinism: the bytes of the n-th batch of stream k depend only on the config (seed, run_id,
 * base_ms, ...), k, n and the sent_at_ms passed in. An event's bytes depend only on
 * (config, stream, seq), so a re-sent event is byte-identical to its first copy.
 *
 * messageId = "<run_id>-<stream>-<seq>"; model_parse_message_id() inverts it so the verifier can
 * account for every message with one byte per event instead of a hash set.
 *
 * Threads: a model_t is read-only after model_new() and may be shared; a model_stream_t belongs
 * to one thread.
 */
#ifndef SLUICE_LOADTEST_MODEL_H
#define SLUICE_LOADTEST_MODEL_H

#include "enc.h"

#include <proto.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define MODEL_MAX_ACCOUNTS 1000000
#define MODEL_MAX_BATCH    10000
#define MODEL_RUN_ID_MAX   16
#define MODEL_DUP_RING     4096
#define MODEL_BODY_MAX     (8u << 20) /* the encoder's hard cap for one body */

/*
 * Invalid kinds: X(NAME, expected proto error, msgpack_only, "description").
 * Every invalid event breaks exactly one rule, so the expected code does not depend on the order
 * in which the collector checks rules. msgpack_only kinds cannot be expressed in a JSON body
 * (integer map keys; invalid UTF-8 makes the whole JSON body unreadable), so JSON runs skip them.
 */
#define MODEL_KINDS(X)                                                                             \
    X(NOT_A_MAP, PROTO_E_EVENT_NOT_A_MAP, false, "event is a string, not a map")                   \
    X(MISSING_TYPE, PROTO_E_MISSING_TYPE, false, "no type")                                        \
    X(BAD_TYPE, PROTO_E_BAD_TYPE, false, "type \"purchase\"")                                      \
    X(NUMERIC_MESSAGE_ID, PROTO_E_BAD_MESSAGE_ID, false, "messageId is a number")                  \
    X(BAD_MESSAGE_ID, PROTO_E_BAD_MESSAGE_ID, false, "messageId of 101 bytes")                     \
    X(MISSING_USER, PROTO_E_MISSING_USER, false, "neither userId nor anonymousId")                 \
    X(BAD_USER_ID, PROTO_E_BAD_USER_ID, false, "userId of 256 bytes")                              \
    X(BAD_ANONYMOUS_ID, PROTO_E_BAD_ANONYMOUS_ID, false, "anonymousId of 256 bytes")               \
    X(MISSING_EVENT, PROTO_E_MISSING_EVENT, false, "track without event")                          \
    X(BAD_EVENT, PROTO_E_BAD_EVENT, false, "event name of 201 bytes")                              \
    X(MISSING_GROUP_ID, PROTO_E_MISSING_GROUP_ID, false, "group without groupId")                  \
    X(BAD_GROUP_ID, PROTO_E_BAD_GROUP_ID, false, "empty groupId")                                  \
    X(BAD_TIMESTAMP, PROTO_E_BAD_TIMESTAMP, false, "timestamp \"yesterday\"")                      \
    X(BAD_PROPERTIES, PROTO_E_BAD_PROPERTIES, false, "properties is a string")                     \
    X(BAD_TRAITS, PROTO_E_BAD_TRAITS, false, "traits is an array")                                 \
    X(BAD_CONTEXT, PROTO_E_BAD_CONTEXT, false, "context is an integer")                            \
    X(TOO_DEEP, PROTO_E_EVENT_TOO_DEEP, false, "properties nested 20 deep")                        \
    X(BAD_UTF8, PROTO_E_BAD_UTF8, true, "invalid UTF-8 in a property value")                       \
    X(TOO_LARGE, PROTO_E_EVENT_TOO_LARGE, false, "event of ~33 KB")                                \
    X(BAD_SENT_AT, PROTO_E_BAD_EVENT_SENT_AT, false, "event sentAt \"soon\"")                      \
    X(BAD_KEY, PROTO_E_BAD_KEY, true, "integer key in properties")

/* Kind 0 is a valid event; 1..MODEL_KIND_COUNT-1 the invalid kinds in table order. */
typedef enum {
    MODEL_VALID = 0,
#define MODEL_X_ENUM(name, err, mp_only, desc) MODEL_INV_##name,
    MODEL_KINDS(MODEL_X_ENUM)
#undef MODEL_X_ENUM
        MODEL_KIND_COUNT
} model_kind_t;

/* "valid", or for an invalid kind its expected error code ("missing_type"; the codes of the
 * kinds are distinct). Never NULL. */
const char *model_kind_name(int kind);
/* The error code string the collector must put in events_rejected for this kind ("missing_type");
 * NULL for MODEL_VALID or an unknown kind. */
const char *model_kind_code(int kind);

typedef struct model_config {
    uint64_t seed;
    char run_id[MODEL_RUN_ID_MAX + 1]; /* [A-Za-z0-9_]{1,16}: tags messageIds, scripted accounts */
    enc_format_t format;
    uint32_t batch;     /* events per batch, 1..MODEL_MAX_BATCH */
    uint32_t accounts;  /* 1..MODEL_MAX_ACCOUNTS */
    uint32_t max_users; /* users of the largest account, >= 1 */
    double zipf_s;      /* Zipf exponent of account sizes, 0 < s <= 4 */
    double dup_rate;    /* 0..1 */
    double invalid_rate;
    int64_t base_ms; /* event timestamps are base_ms minus up to a minute (days, scripted) */
    bool scripted;   /* stream 0 starts with the PQL script */
} model_config_t;

/* Defaults: seed 1, run_id "run", msgpack, batch 100, 1000 accounts, 200 users, s = 1.1,
 * no dups, no invalid, scripted on, base_ms 0 (set it). */
void model_config_default(model_config_t *cfg);

typedef struct model model_t;

/* Checks cfg and builds the shared tables. Returns 0 and *out (free with model_free), or
 * LT_E_INVAL (bad config) / LT_E_NOMEM; *out untouched on failure. */
int model_new(const model_config_t *cfg, model_t **out);
void model_free(model_t *m);
const model_config_t *model_config(const model_t *m);

/* One slot of a batch. */
typedef struct model_item {
    uint64_t seq;
    uint8_t kind; /* model_kind_t */
    bool dup;     /* a re-send of an earlier seq */
} model_item_t;

typedef struct model_stream model_stream_t;

/* A generator for stream id (one per sending thread). Returns 0 or LT_E_NOMEM. m must outlive
 * it. */
int model_stream_new(const model_t *m, uint32_t id, model_stream_t **out);
void model_stream_free(model_stream_t *s);

/*
 * Writes the next batch (uncompressed) with batch-level sentAt = sent_at_ms. On success *body,
 * *len, *items and *n_items describe it; they stay valid (owned by s) until the next call or
 * model_stream_free(). Returns 0, or LT_E_TOO_LARGE when the body would exceed MODEL_BODY_MAX.
 */
int model_stream_next(model_stream_t *s, int64_t sent_at_ms, const char **body, size_t *len,
                      const model_item_t **items, size_t *n_items);
/* Sequence numbers handed out so far by this stream (new events, not re-sends). */
uint64_t model_stream_seqs(const model_stream_t *s);

/*
 * Parses a messageId of this run: "<run_id>-<stream>-<seq>" optionally followed by '-' and
 * anything (the padded invalid_message_id kind). Returns true and the parts, or false when the
 * id is not of this run.
 */
bool model_parse_message_id(const model_t *m, const char *id, size_t len, uint32_t *stream,
                            uint64_t *seq);

/* Scripted PQL accounts (0 when cfg.scripted is false, else 3). i < model_scripted_count(). */
size_t model_scripted_count(const model_t *m);
/* The account id ("pql-hot-<run_id>") and the tier it must reach ("hot", "warm", "watching")
 * under SPEC §6's example rules. Strings owned by m. */
void model_scripted(const model_t *m, size_t i, const char **account_id, const char **tier);

#endif
