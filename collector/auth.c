/*
 * auth.c — write keys and per-key rate limits (see auth.h for the contract).
 */
#include "auth.h"

#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

const char *auth_strerror(int err)
{
    switch (err) {
#define AUTH_X_STR(name, val, msg)                                                                 \
    case val:                                                                                      \
        return msg;
        AUTH_ERRORS(AUTH_X_STR)
#undef AUTH_X_STR
    }
    return "unknown error";
}

typedef struct auth_key {
    char *key;
    size_t len;
    char *source;
} auth_key_t;

struct auth {
    auth_key_t *keys;
    size_t n_keys;
    bool dev;
    uint64_t interval_ns; /* GCRA emission interval: ns per event; 0 = no limit */
    uint64_t burst_ns;    /* tolerated debt */
    /* One theoretical-arrival-time per key, plus one for dev-mode keys (index n_keys). Padded
     * to a cache line each: loops on different cores charge different keys independently. */
    struct {
        _Alignas(64) atomic_uint_fast64_t tat;
    } * buckets;
};

void auth_free(auth_t *a)
{
    if (a == NULL) return;
    for (size_t i = 0; i < a->n_keys; i++) {
        free(a->keys[i].key);
        free(a->keys[i].source);
    }
    free(a->keys);
    free(a->buckets);
    free(a);
}

int auth_new(const config_t *cfg, auth_t **out)
{
    *out = NULL;
    auth_t *a = calloc(1, sizeof *a);
    if (a == NULL) return AUTH_E_NOMEM;
    a->dev = cfg->dev;
    if (cfg->n_write_keys > 0) {
        a->keys = calloc(cfg->n_write_keys, sizeof *a->keys);
        if (a->keys == NULL) goto nomem;
    }
    for (size_t i = 0; i < cfg->n_write_keys; i++) {
        const config_write_key_t *k = &cfg->write_keys[i];
        const char *src = k->source != NULL ? k->source : "";
        a->keys[i].len = k->key != NULL ? strlen(k->key) : 0;
        a->keys[i].key = malloc(a->keys[i].len + 1);
        a->keys[i].source = strdup(src);
        a->n_keys = i + 1;
        if (a->keys[i].key == NULL || a->keys[i].source == NULL) goto nomem;
        memcpy(a->keys[i].key, k->key != NULL ? k->key : "", a->keys[i].len + 1);
    }
    a->buckets = aligned_alloc(64, sizeof *a->buckets * (a->n_keys + 1));
    if (a->buckets == NULL) goto nomem;
    for (size_t i = 0; i <= a->n_keys; i++)
        atomic_init(&a->buckets[i].tat, 0);
    if (cfg->rate_per_key > 0) {
        double ival = 1e9 / cfg->rate_per_key;
        a->interval_ns = ival < 1.0 ? 1 : (uint64_t)ival;
        a->burst_ns = 1000000000ull;
    }
    *out = a;
    return AUTH_OK;
nomem:
    auth_free(a);
    return AUTH_E_NOMEM;
}

bool auth_ct_equal(const char *a, size_t alen, const char *b, size_t blen)
{
    /* Reads every byte of b whatever a holds; a is indexed modulo its length so a shorter
     * candidate neither shortens the loop nor reads out of bounds. */
    unsigned diff = (alen != blen);
    for (size_t i = 0; i < blen; i++) {
        unsigned char ca = alen > 0 ? (unsigned char)a[i % alen] : 0;
        diff |= (unsigned)(ca ^ (unsigned char)b[i]);
    }
    return diff == 0;
}

int auth_lookup(auth_t *a, const char *key, size_t len, const char **source, int *key_index)
{
    size_t found = 0, idx = 0;
    if (len > 0 && len <= AUTH_KEY_MAX) {
        for (size_t i = 0; i < a->n_keys; i++) {
            size_t eq = auth_ct_equal(key, len, a->keys[i].key, a->keys[i].len);
            /* Branch-free select: keep scanning after a match. */
            size_t mask = (size_t)0 - (eq & (found ^ 1));
            idx = (idx & ~mask) | (i & mask);
            found |= eq;
        }
    }
    if (found) {
        *source = a->keys[idx].source;
        *key_index = (int)idx;
        return AUTH_OK;
    }
    if (a->dev) {
        *source = "dev";
        *key_index = (int)a->n_keys;
        return AUTH_OK;
    }
    return len == 0 ? AUTH_E_MISSING : AUTH_E_UNKNOWN;
}

int auth_rate_take(auth_t *a, int key_index, uint64_t n, uint64_t now_ns, int *retry_after_s)
{
    if (a->interval_ns == 0) return AUTH_OK;
    if (key_index < 0 || (size_t)key_index > a->n_keys) return AUTH_E_UNKNOWN;
    atomic_uint_fast64_t *tat = &a->buckets[key_index].tat;
    uint64_t cost = n * a->interval_ns;
    if (n != 0 && cost / n != a->interval_ns) cost = UINT64_MAX / 2; /* overflow: huge debt */
    uint_fast64_t old = atomic_load_explicit(tat, memory_order_relaxed);
    /* CAS retries only when another thread charged the same key in between; bounded anyway:
     * after the bound the request is admitted, erring on the client's side. */
    for (int tries = 0; tries < 64; tries++) {
        uint64_t base = old > now_ns ? old : now_ns;
        uint64_t debt = base - now_ns;
        /* Admit when the charge fits in the burst, or when the bucket is full (so a request
         * larger than the burst is not refused forever). */
        if (debt > 0 && debt + cost > a->burst_ns) {
            uint64_t wait = cost > a->burst_ns ? debt : debt + cost - a->burst_ns;
            uint64_t secs = (wait + 999999999ull) / 1000000000ull;
            if (secs < 1) secs = 1;
            if (secs > 3600) secs = 3600;
            *retry_after_s = (int)secs;
            return AUTH_E_RATE_LIMITED;
        }
        uint64_t next = base + cost;
        if (atomic_compare_exchange_weak_explicit(tat, &old, next, memory_order_relaxed,
                                                  memory_order_relaxed))
            return AUTH_OK;
    }
    return AUTH_OK;
}

static int b64_value(unsigned char c)
{
    if (c >= 'A' && c <= 'Z') return c - 'A';
    if (c >= 'a' && c <= 'z') return c - 'a' + 26;
    if (c >= '0' && c <= '9') return c - '0' + 52;
    if (c == '+') return 62;
    if (c == '/') return 63;
    return -1;
}

/* Standard base64 with optional padding. Returns decoded length or -1 (bad input or > cap). */
static long b64_decode(const char *in, size_t len, unsigned char *out, size_t cap)
{
    while (len > 0 && in[len - 1] == '=')
        len--;
    if (len % 4 == 1) return -1;
    size_t o = 0;
    uint32_t acc = 0;
    int bits = 0;
    for (size_t i = 0; i < len; i++) {
        int v = b64_value((unsigned char)in[i]);
        if (v < 0) return -1;
        acc = (acc << 6) | (uint32_t)v;
        bits += 6;
        if (bits >= 8) {
            bits -= 8;
            if (o >= cap) return -1;
            out[o++] = (unsigned char)((acc >> bits) & 0xff);
        }
    }
    return (long)o;
}

/* Splits an Authorization value into its scheme and argument (RFC 9110 §11.4: scheme, 1*SP,
 * credentials), blanks around the whole value dropped. */
static void split_credentials(const char *value, size_t len, const char **scheme, size_t *slen,
                              const char **arg, size_t *arglen)
{
    while (len > 0 && (*value == ' ' || *value == '\t')) {
        value++;
        len--;
    }
    while (len > 0 && (value[len - 1] == ' ' || value[len - 1] == '\t'))
        len--;
    size_t sp = 0;
    while (sp < len && value[sp] != ' ')
        sp++;
    *scheme = value;
    *slen = sp;
    *arg = value + sp;
    *arglen = len - sp;
    while (*arglen > 0 && **arg == ' ') {
        (*arg)++;
        (*arglen)--;
    }
}

static bool is_scheme(const char *scheme, size_t slen, const char *want)
{
    size_t n = strlen(want);
    return slen == n && strncasecmp(scheme, want, n) == 0;
}

int auth_parse_header(const char *value, size_t len, char *out, size_t outcap, size_t *outlen)
{
    *outlen = 0;
    const char *scheme, *arg;
    size_t slen, arglen;
    split_credentials(value, len, &scheme, &slen, &arg, &arglen);
    if (is_scheme(scheme, slen, "Bearer")) {
        if (arglen == 0) return AUTH_E_MISSING;
        if (arglen > outcap) return AUTH_E_MALFORMED;
        memcpy(out, arg, arglen);
        *outlen = arglen;
        return AUTH_OK;
    }
    if (is_scheme(scheme, slen, "Basic")) {
        unsigned char dec[3 * AUTH_KEY_MAX];
        long n = b64_decode(arg, arglen, dec, sizeof dec);
        if (n < 0) return AUTH_E_MALFORMED;
        size_t user = 0;
        while (user < (size_t)n && dec[user] != ':')
            user++;
        if (user == 0) return AUTH_E_MISSING;
        if (user > outcap) return AUTH_E_MALFORMED;
        memcpy(out, dec, user);
        *outlen = user;
        return AUTH_OK;
    }
    return AUTH_E_MALFORMED;
}

int auth_check_admin(const char *value, size_t len, const char *token, size_t token_len)
{
    if (value == NULL) return AUTH_E_MISSING;
    const char *scheme, *arg;
    size_t slen, arglen;
    split_credentials(value, len, &scheme, &slen, &arg, &arglen);
    if (!is_scheme(scheme, slen, "Bearer")) return AUTH_E_MALFORMED;
    if (arglen == 0) return AUTH_E_MISSING;
    return auth_ct_equal(arg, arglen, token, token_len) ? AUTH_OK : AUTH_E_UNKNOWN;
}

char *auth_mask(const char *key, size_t len, char *out, size_t outcap)
{
    static const char ellipsis[] = "\xe2\x80\xa6"; /* U+2026 */
    if (outcap == 0) return out;
    size_t keep = len < 4 ? len : 4;
    if (keep + sizeof ellipsis > outcap)
        keep = outcap > sizeof ellipsis ? outcap - sizeof ellipsis : 0;
    memcpy(out, key, keep);
    if (keep + sizeof ellipsis <= outcap)
        memcpy(out + keep, ellipsis, sizeof ellipsis);
    else
        out[keep] = '\0';
    return out;
}
