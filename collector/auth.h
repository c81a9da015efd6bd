/*
 * auth.h — write-key authentication and the per-key rate limit (SPEC §3, §7).
 *
 * A key arrives as the HTTP Basic user name (Segment style, password ignored), as
 * "Authorization: Bearer KEY", or as the body's writeKey; the header wins. Lookups compare the
 * candidate against EVERY configured key in constant time per key (no early exit on a match),
 * so the answer time does not tell which key, or which prefix, matched.
 *
 * Rate limit: limits.rate_per_key events/s per key (0 = off), as GCRA (a token bucket in one
 * atomic "theoretical arrival time"), so loop threads share a key's budget without a lock.
 * Burst: one second's worth of events. A request is admitted when all its events fit in the
 * burst, or when the key's bucket is full (so a batch larger than the burst is not refused
 * forever; it leaves the key in debt and the long-run rate still holds).
 *
 * Thread safety: after auth_new, every function may be called from any thread.
 */
#ifndef SLUICE_AUTH_H
#define SLUICE_AUTH_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "config.h"

#define AUTH_ERRORS(X)                                                                             \
    X(OK, 0, "ok")                                                                                 \
    X(E_MISSING, -1, "no write key given")                                                         \
    X(E_UNKNOWN, -2, "unknown write key")                                                          \
    X(E_MALFORMED, -3, "malformed Authorization header")                                           \
    X(E_NOMEM, -4, "out of memory")                                                                \
    X(E_RATE_LIMITED, -5, "write key over its rate limit")

typedef enum {
#define AUTH_X_ENUM(name, val, msg) AUTH_##name = val,
    AUTH_ERRORS(AUTH_X_ENUM)
#undef AUTH_X_ENUM
} auth_err_t;

/* Human message; "unknown error" for values not in the table. Never NULL. */
const char *auth_strerror(int err);

/* Longest write key accepted (longer candidates are simply unknown). */
#define AUTH_KEY_MAX 256

typedef struct auth auth_t;

/* Copies the keys and sources of cfg (cfg need not outlive the result). rate_per_key and dev
 * come from cfg. Returns 0 and *out, or AUTH_E_NOMEM. Free with auth_free(). */
int auth_new(const config_t *cfg, auth_t **out);
void auth_free(auth_t *a);

/*
 * Extracts the key from an Authorization header value: "Basic base64(user:pass)" gives user,
 * "Bearer TOKEN" gives TOKEN (scheme case-insensitive). The key is written to out[0..outcap)
 * (not NUL-terminated) and *outlen set. Returns AUTH_OK, AUTH_E_MISSING for an empty user/
 * token, or AUTH_E_MALFORMED (unknown scheme, bad base64, key longer than outcap).
 */
int auth_parse_header(const char *value, size_t len, char *out, size_t outcap, size_t *outlen);

/*
 * Checks an Authorization header value against the admin token token[0..token_len) (SPEC §6,
 * admin_token): "Bearer TOKEN" with the same grammar auth_parse_header reads (scheme
 * case-insensitive), TOKEN compared in constant time (time depends on token_len only). value
 * NULL means no header (or one too long to keep). Returns AUTH_OK, AUTH_E_MISSING (no header,
 * or an empty token), AUTH_E_MALFORMED (another scheme: Basic does not carry the admin token),
 * or AUTH_E_UNKNOWN (a different token). Needs no auth_t: the admin token is not a write key.
 */
int auth_check_admin(const char *value, size_t len, const char *token, size_t token_len);

/*
 * Finds the configured key equal to key[0..len). Returns AUTH_OK with *source (owned by a,
 * valid while a lives) and *key_index (for auth_rate_take), AUTH_E_MISSING when len is 0 and
 * not in dev mode, or AUTH_E_UNKNOWN. In dev mode a configured key still maps to its source;
 * any other key (or none) is accepted as source "dev" with its own shared rate bucket.
 */
int auth_lookup(auth_t *a, const char *key, size_t len, const char **source, int *key_index);

/*
 * Charges n events to the key's bucket at time now_ns (any monotonic clock, same for every
 * call). Returns AUTH_OK, or AUTH_E_RATE_LIMITED with *retry_after_s (>= 1) set: the seconds
 * after which a request of the same key will be admitted. Always AUTH_OK when the limit is off.
 */
int auth_rate_take(auth_t *a, int key_index, uint64_t n, uint64_t now_ns, int *retry_after_s);

/* Constant-time equality of a[0..alen) and b[0..blen): time depends on blen only. */
bool auth_ct_equal(const char *a, size_t alen, const char *b, size_t blen);

/* Writes a log-safe form of key: its first 4 characters (fewer if shorter) and "…", into
 * out[0..outcap) NUL-terminated (outcap >= 12 suffices). Returns out. */
char *auth_mask(const char *key, size_t len, char *out, size_t outcap);

#endif
