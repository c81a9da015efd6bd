/*
 * reply.c — the collector's 2xx answer (SPEC §3):
 *     {"success":true,"accepted":N,"duplicates":N,"rejected":N,"filtered":N,
 *      "errors":[{"index":I,"messageId":ID,"error":CODE}, ...],"errors_truncated":true?}
 * Invalid events inside a readable batch are rejected one by one while the rest is accepted;
 * each rejected event is reported through error_cb (E_REJECTED) and is not counted as sent.
 *
 * A small bounded scanner over our own collector's fixed shape, not a JSON parser: it looks for
 * the "rejected" counter and walks the "errors" array's objects. A body it cannot read (another
 * server, truncated) reports nothing and counts every event as sent, as a 2xx says.
 */
#include "internal.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* First occurrence of the key "name" followed by ':' (whitespace allowed), within [p, end). */
static const char *find_key(const char *p, const char *end, const char *name)
{
    size_t n = strlen(name);
    while (p < end) {
        const char *q = memchr(p, '"', (size_t)(end - p));
        if (!q || (size_t)(end - q) < n + 2) return NULL;
        if (!memcmp(q + 1, name, n) && q[n + 1] == '"') {
            const char *v = q + n + 2;
            while (v < end && (*v == ' ' || *v == '\t' || *v == '\n' || *v == '\r'))
                v++;
            if (v < end && *v == ':') {
                v++;
                while (v < end && (*v == ' ' || *v == '\t' || *v == '\n' || *v == '\r'))
                    v++;
                return v;
            }
        }
        p = q + 1;
    }
    return NULL;
}

/* A JSON string at p (escapes kept as written) into out; returns the position after it. */
static const char *read_str(const char *p, const char *end, char *out, size_t size)
{
    size_t n = 0;
    out[0] = '\0';
    if (p >= end || *p != '"') return NULL;
    for (p++; p < end && *p != '"'; p++) {
        if (*p == '\\' && p + 1 < end) {
            if (n + 2 < size) out[n++] = *p;
            p++;
        }
        if (n + 1 < size) out[n++] = *p;
    }
    out[n] = '\0';
    return p < end ? p + 1 : NULL;
}

/* The end of the JSON object starting at p (strings skipped), or NULL. Bounded by end. */
static const char *object_end(const char *p, const char *end)
{
    int depth = 0;
    for (; p < end; p++) {
        if (*p == '"') {
            for (p++; p < end && *p != '"'; p++)
                if (*p == '\\') p++;
            continue;
        }
        if (*p == '{') depth++;
        if (*p == '}' && --depth == 0) return p + 1;
    }
    return NULL;
}

uint32_t sdk_reply_rejections(sluice_client *c, const char *body, size_t len, uint32_t n)
{
    if (!body || !len) return 0;
    const char *end = body + len;
    const char *v = find_key(body, end, "rejected");
    if (!v) return 0;
    char *num_end;
    unsigned long long rejected = strtoull(v, &num_end, 10);
    if (num_end == v || rejected == 0) return 0;
    if (rejected > n) rejected = n;

    uint32_t listed = 0;
    const char *arr = find_key(body, end, "errors");
    if (arr && arr < end && *arr == '[') {
        const char *p = arr + 1;
        while (p < end && listed < rejected) {
            while (p < end && *p != '{' && *p != ']')
                p++;
            if (p >= end || *p == ']') break;
            const char *oe = object_end(p, end);
            if (!oe) break;
            char id[128] = "", code[64] = "", msg[200];
            const char *s = find_key(p, oe, "messageId");
            if (s) read_str(s, oe, id, sizeof id);
            s = find_key(p, oe, "error");
            if (s) read_str(s, oe, code, sizeof code);
            snprintf(msg, sizeof msg, "%s: %s", id[0] ? id : "?", code[0] ? code : "rejected");
            sdk_report(c, SLUICE_E_REJECTED, 200, 1, msg);
            listed++;
            p = oe;
        }
    }
    if (listed < rejected) {
        char msg[96];
        snprintf(msg, sizeof msg, "%llu more events rejected (not listed in the answer)",
                 rejected - listed);
        sdk_report(c, SLUICE_E_REJECTED, 200, (uint32_t)(rejected - listed), msg);
    }
    return (uint32_t)rejected;
}
