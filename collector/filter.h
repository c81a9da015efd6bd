/*
 * filter.h — edge filter rules (SPEC §5): drop, allow, sample, strip and hash, applied in order
 * to each valid, normalized event before it is encoded for Kafka.
 *
 * Life cycle: the `filters:` YAML list is parsed AND compiled in one step (filter_parse_yaml,
 * called by config.c while it loads a file): globs are pre-parsed, dotted paths pre-split, the
 * hash key turned into a keyed HMAC-SHA256 context (filter_hmac_t). Nothing is parsed per event. A
 * compiled filter_set_t is immutable except for its per-rule counters (relaxed atomics), so any
 * number of threads may call filter_apply() on one set at once. Reload (reload.h) swaps whole sets.
 *
 * Rule language (collector/CONFIG.md "Filter rules" is generated from filter_print_reference()):
 *   - {name: N, drop:   MATCH}             matching events are filtered out
 *   - {name: N, allow:  MATCH}             events NOT matching are filtered out
 *   - {name: N, sample: MATCH + keep: F}   of the matching events, keep the users whose hash of
 *                                          userId (else anonymousId) falls below F
 *   - {name: N, strip:  [PATH, ...]}       remove these keys
 *   - {name: N, hash:   [PATH, ...], key_env: VAR}  replace these values by HMAC-SHA256
 * MATCH = {type: T|[..], event: GLOB|[..], user_agent: GLOB|[..], property: {PATH: GLOB|[..]}};
 * all given conditions must hold (AND), any element of a list may match (OR).
 *
 * Errors: one enum, 0 = OK, negative = failure (X-macro below).
 */
#ifndef SLUICE_FILTER_H
#define SLUICE_FILTER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <yaml.h>

#include "config_yaml.h"

#include "proto.h"

/* X(NAME, value, "message"). Append-only. */
#define FILTER_ERRORS(X)                                                                           \
    X(OK, 0, "ok")                                                                                 \
    X(E_INVALID, -1, "invalid filter rule")                                                        \
    X(E_NOMEM, -2, "out of memory")

typedef enum {
#define FILTER_X_ENUM(name, val, msg) FILTER_##name = val,
    FILTER_ERRORS(FILTER_X_ENUM)
#undef FILTER_X_ENUM
} filter_err_t;

/* Message for a filter_err_t; "unknown error" otherwise. Never NULL. */
const char *filter_strerror(int err);

/* Bounds on a rule list, so a mistaken file cannot make us allocate without limit. */
#define FILTER_MAX_RULES    256  /* rules in `filters:` */
#define FILTER_MAX_ITEMS    64   /* patterns in one list, paths in one strip/hash, properties */
#define FILTER_MAX_PATTERN  1024 /* bytes of one glob */
#define FILTER_MAX_SEGMENTS 16   /* segments of one dotted path (SPEC nesting depth) */
#define FILTER_MIN_KEY      16   /* bytes of the hash key */
/* Length of a hashed value: "hmac-sha256:" + 64 lowercase hex digits (SPEC §5). */
#define FILTER_HASH_PREFIX     "hmac-sha256:"
#define FILTER_HASH_PREFIX_LEN 12
#define FILTER_HASH_LEN        (FILTER_HASH_PREFIX_LEN + 64)

typedef enum {
    FILTER_DROP = 0,
    FILTER_ALLOW = 1,
    FILTER_SAMPLE = 2,
    FILTER_STRIP = 3,
    FILTER_HASH = 4,
} filter_kind_t;

/* "drop", "allow", ... */
const char *filter_kind_name(filter_kind_t k);

typedef struct filter_set filter_set_t;

/*
 * Parses and compiles the `filters:` node (a YAML sequence of rule mappings) of doc. file names
 * the file in errors, which are one line "FILE:LINE: filters[I] (NAME): reason". hash rules read
 * their key from the environment here: the variable must be set and hold at least
 * FILTER_MIN_KEY bytes. On success returns 0 and *out (owned by the caller: filter_set_free);
 * an empty list gives a set with no rules. On failure returns FILTER_E_INVALID or FILTER_E_NOMEM,
 * *out is NULL and nothing is left allocated.
 */
/* The `filters:` section of config.c's table (slot: config_t.filters), parsed by
 * filter_parse_yaml(); reloads live, so config_diff never reports it. */
extern const config_section_t filter_config_section;

int filter_parse_yaml(yaml_document_t *doc, yaml_node_t *node, const char *file, filter_set_t **out,
                      char *err, size_t errlen);

/* Frees a set (NULL is fine). No filter_apply() on it may be running. */
void filter_set_free(filter_set_t *fs);

size_t filter_set_count(const filter_set_t *fs);
/* Name and kind of rule i (< filter_set_count); the name lives as long as the set. */
const char *filter_rule_name(const filter_set_t *fs, size_t i);
filter_kind_t filter_rule_kind(const filter_set_t *fs, size_t i);
/* Events rule i acted on so far: filtered out (drop, allow, sample) or modified (strip, hash). */
uint64_t filter_rule_count(const filter_set_t *fs, size_t i);

/*
 * Reload keeps counters monotonic. snapshot: fills counts[0..filter_set_count(src)) with src's
 * counters. add_counts: adds values[i] to the rule of dst with the same name and kind as rule i
 * of src (if any). Both sets may be in use meanwhile; the adds are atomic.
 */
void filter_set_counts_snapshot(const filter_set_t *src, uint64_t *counts);
void filter_set_add_counts(filter_set_t *dst, const filter_set_t *src, const uint64_t *values);

/*
 * Applies every rule, in order, to valid event ev of batch b (after proto_normalize). Sets *keep
 * to false when a drop/allow/sample rule filtered it out (later rules are then skipped). strip
 * and hash rules change the record that proto_encode_event() writes: the event map is
 * copied-on-write along each touched path into b's zone and ev->obj is pointed at the copy (the
 * original map and everything the proto_str_t fields point to stay intact). A context path of an
 * event without its own context acts on a copy of the batch-level context, which then becomes the
 * event's context. Returns 0, or FILTER_E_NOMEM when the zone is exhausted (then ev->obj may
 * already be partly rewritten: the caller must not produce the event).
 */
int filter_apply(filter_set_t *fs, proto_batch_t *b, proto_event_t *ev, bool *keep);

/*
 * The pseudonymization function of `hash` rules: HMAC-SHA256 (OpenSSL's EVP_MAC "HMAC") under a
 * key from the environment. A filter_hmac_t holds the keyed MAC context and is immutable once
 * made (but for a small pool of ready copies of the keyed context, taken with a try-lock that
 * never waits), so any number of threads may call filter_hmac() on one at once. The key
 * schedule is computed once, at load; a call costs two SHA-256 compressions plus OpenSSL's
 * per-call overhead (~0.3 us; bench_filter prints it).
 *
 * filter_hmac_new: key[0..len) (len >= FILTER_MIN_KEY, checked by the caller) is copied into
 * OpenSSL's context; the caller may wipe its copy afterwards. Returns 0 and *out (owned by the
 * caller: filter_hmac_free, which wipes the key), or FILTER_E_NOMEM (OpenSSL failed to make the
 * context: out of memory or no HMAC/SHA256 provider) with *out NULL.
 *
 * filter_hmac: writes "hmac-sha256:" + 64 lowercase hex digits of HMAC-SHA256(key, data[0..len))
 * into out (FILTER_HASH_LEN bytes, no NUL). Returns 0, or FILTER_E_NOMEM (out untouched).
 */
typedef struct filter_hmac filter_hmac_t;
int filter_hmac_new(const void *key, size_t len, filter_hmac_t **out);
void filter_hmac_free(filter_hmac_t *h);
int filter_hmac(const filter_hmac_t *h, const void *data, size_t len, char out[FILTER_HASH_LEN]);

/* Consistent sampling: the uniform [0,1) value of a user id (XXH3-64, fixed seed). */
double filter_sample_value(const char *id, size_t len);

/* Glob matching, exposed for tests: compiles pat (FILTER_E_INVALID with a reason in why for an
 * unterminated '[' or a trailing '\\'), matches, frees. icase: ASCII case-insensitive. */
typedef struct filter_glob filter_glob_t;
int filter_glob_new(const char *pat, size_t len, bool icase, filter_glob_t **out, const char **why);
bool filter_glob_match(const filter_glob_t *g, const char *s, size_t len);
void filter_glob_free(filter_glob_t *g);

/* Appends the sluice_filter_events_total family (# HELP, # TYPE, a line per rule) to out.
 * Returns 0 or PROTO_E_NOMEM. Nothing is written for a set without rules. */
int filter_set_render(const filter_set_t *fs, base_buf_t *out);

/* Markdown section "Filter rules" of collector/CONFIG.md. */
void filter_print_reference(FILE *out);

#endif
