/*
 * query.c — percent-decoding and query parameters (see query.h for the contract).
 */
#include "query.h"

#include <stdbool.h>
#include <string.h>

const char *query_strerror(int err)
{
    switch (err) {
#define QUERY_X_STR(name, val, msg)                                                                \
    case val:                                                                                      \
        return msg;
        QUERY_ERRORS(QUERY_X_STR)
#undef QUERY_X_STR
    }
    return "unknown error";
}

static int hex_value(char h)
{
    if (h >= '0' && h <= '9') return h - '0';
    if (h >= 'a' && h <= 'f') return h - 'a' + 10;
    if (h >= 'A' && h <= 'F') return h - 'A' + 10;
    return -1;
}

/* The decoder both functions share; form: '+' decodes to a space. out may be NULL (check only,
 * outcap ignored). */
static int decode(const char *s, size_t len, bool form, char *out, size_t outcap, size_t *outlen)
{
    size_t o = 0;
    *outlen = 0;
    for (size_t i = 0; i < len; i++) {
        char ch = s[i];
        if (ch == '%') {
            if (len - i < 3) return QUERY_E_MALFORMED;
            int hi = hex_value(s[i + 1]), lo = hex_value(s[i + 2]);
            if (hi < 0 || lo < 0 || (hi | lo) == 0) return QUERY_E_MALFORMED;
            ch = (char)(hi * 16 + lo);
            i += 2;
        } else if (form && ch == '+') {
            ch = ' ';
        }
        if (out != NULL) {
            if (o >= outcap) return QUERY_E_TOO_LONG;
            out[o] = ch;
        }
        o++;
    }
    *outlen = out != NULL ? o : 0;
    return QUERY_OK;
}

int query_unescape(const char *s, size_t len, char *out, size_t outcap, size_t *outlen)
{
    int rc = decode(s, len, false, out, outcap, outlen);
    if (rc != QUERY_OK) *outlen = 0;
    return rc;
}

const char *query_of(const char *target, size_t len, size_t *qlen)
{
    const char *q = memchr(target, '?', len);
    const char *end = target + len;
    if (q == NULL) {
        *qlen = 0;
        return end;
    }
    q++;
    const char *hash = memchr(q, '#', (size_t)(end - q));
    *qlen = (size_t)((hash != NULL ? hash : end) - q);
    return q;
}

int query_get(const char *q, size_t qlen, const char *name, char *out, size_t outcap,
              size_t *outlen)
{
    size_t nlen = strlen(name);
    const char *val = NULL;
    size_t vlen = 0;
    *outlen = 0;
    /* One pass over the pairs (bounded by qlen): validate each, remember the last match. */
    for (size_t i = 0; i < qlen;) {
        const char *pair = q + i;
        const char *amp = memchr(pair, '&', qlen - i);
        size_t plen = amp != NULL ? (size_t)(amp - pair) : qlen - i;
        i += plen + 1;
        if (plen == 0) continue;
        const char *eq = memchr(pair, '=', plen);
        size_t klen = eq != NULL ? (size_t)(eq - pair) : plen;
        const char *v = eq != NULL ? eq + 1 : pair + plen;
        size_t vl = plen - klen - (eq != NULL ? 1 : 0);
        size_t ignored;
        if (decode(pair, klen, true, NULL, 0, &ignored) != QUERY_OK ||
            decode(v, vl, true, NULL, 0, &ignored) != QUERY_OK)
            return QUERY_E_MALFORMED;
        if (klen == nlen && memcmp(pair, name, nlen) == 0) {
            val = v;
            vlen = vl;
        }
    }
    if (val == NULL) return QUERY_E_ABSENT;
    int rc = decode(val, vlen, true, out, outcap, outlen);
    if (rc != QUERY_OK) *outlen = 0;
    return rc;
}
