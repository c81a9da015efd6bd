/*
 * query.h — percent-decoding and the query string of a request target (RFC 3986 §2.1, §3.4).
 *
 * Pure functions over (base, len) slices: no allocation, no state, bounded by their inputs and
 * by the caller's output buffer. The HTTP layer keeps at most URL_MAX bytes of a target, so
 * every loop here is bounded by that too. Handlers answer 400 on any error below.
 */
#ifndef SLUICE_QUERY_H
#define SLUICE_QUERY_H

#include <stddef.h>

#define QUERY_ERRORS(X)                                                                            \
    X(OK, 0, "ok")                                                                                 \
    X(E_ABSENT, -1, "no such parameter")                                                           \
    X(E_MALFORMED, -2, "malformed percent-encoding")                                               \
    X(E_TOO_LONG, -3, "decoded value longer than its buffer")

typedef enum {
#define QUERY_X_ENUM(name, val, msg) QUERY_##name = val,
    QUERY_ERRORS(QUERY_X_ENUM)
#undef QUERY_X_ENUM
} query_err_t;

/* Human message; "unknown error" for values not in the table. Never NULL. */
const char *query_strerror(int err);

/*
 * Percent-decodes s[0..len) (a path segment: '+' stays '+') into out[0..outcap), not
 * NUL-terminated, and sets *outlen. Returns QUERY_OK, QUERY_E_MALFORMED ('%' not followed by two
 * hex digits, or an escaped NUL "%00": a decoded value is never cut short by C string code), or
 * QUERY_E_TOO_LONG (more than outcap decoded bytes). On error *outlen is 0 and out's contents
 * are unspecified.
 */
int query_unescape(const char *s, size_t len, char *out, size_t outcap, size_t *outlen);

/* The query string of target[0..len): the bytes after the first '?' up to a '#' or the end
 * (*qlen 0 and a pointer to the end when there is none). Never fails. */
const char *query_of(const char *target, size_t len, size_t *qlen);

/*
 * Finds parameter name in query string q[0..qlen) (as query_of gives it: "a=1&b=2") and
 * decodes its value as a form field (percent escapes, '+' is a space) into out[0..outcap), not
 * NUL-terminated, setting *outlen. A name without '=' has an empty value; empty pairs ("a=1&&b")
 * are skipped; names are compared as sent (not decoded, case-sensitive). When the name appears
 * more than once, the last one counts. Every pair is checked, not only the one asked for:
 * returns QUERY_OK, QUERY_E_MALFORMED (a bad escape anywhere in q), QUERY_E_TOO_LONG (the value
 * does not fit), or QUERY_E_ABSENT (*outlen 0).
 */
int query_get(const char *q, size_t qlen, const char *name, char *out, size_t outcap,
              size_t *outlen);

#endif
