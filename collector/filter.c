/*
 * filter.c — edge filter rules: YAML → compiled rules, and their application to events
 * (contract in filter.h).
 *
 * Compiled form: each glob is classified once (exact, prefix*, *suffix, *contains*, * or general)
 * so the common patterns match with one memcmp/memmem; general globs are a token array matched
 * by the linear star-backtracking algorithm (no recursion, O(len * tokens) worst case). Paths
 * are split into (ptr, len) segments. The hash key is keyed into an HMAC-SHA256 context at load.
 *
 * Modifying a record: a msgpack_object tree is shared read-only by the decoder's arena, so strip
 * and hash copy only the maps along the edited path into the batch's zone (copy-on-write) and
 * repoint ev->obj; proto_encode_event() then writes the edited record unchanged otherwise.
 */
#include "filter.h"

#include <errno.h>
#include <math.h>
#include <openssl/core_names.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/params.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <xxhash.h>

#include "base.h"
#include "config.h"

/* Fixed seed of the sampling hash: a user's decision must not change across restarts. */
#define FILTER_SAMPLE_SEED 0x736c75696365ULL /* "sluice" */
#define FILTER_NAME_MAX    64

const char *filter_strerror(int err)
{
    switch (err) {
#define FILTER_X_STR(name, val, msg)                                                               \
    case val:                                                                                      \
        return msg;
        FILTER_ERRORS(FILTER_X_STR)
#undef FILTER_X_STR
    default:
        return "unknown error";
    }
}

const char *filter_kind_name(filter_kind_t k)
{
    static const char *const names[] = {"drop", "allow", "sample", "strip", "hash"};
    return (unsigned)k < 5 ? names[k] : "?";
}

/* ---- globs ---- */

typedef enum { G_EXACT, G_PREFIX, G_SUFFIX, G_CONTAINS, G_ALL, G_GENERAL } glob_kind_t;
typedef enum { T_LIT, T_ANY, T_STAR, T_CLASS } tok_kind_t;

typedef struct gtok {
    uint8_t kind;
    unsigned char c; /* T_LIT (lower-cased when icase) */
    uint8_t set[32]; /* T_CLASS: bit per byte value */
} gtok_t;

struct filter_glob {
    glob_kind_t kind;
    bool icase;
    char *lit; /* the literal of the fast kinds (lower-cased when icase) */
    size_t lit_len;
    gtok_t *toks; /* G_GENERAL */
    size_t ntoks;
};

static unsigned char lower(unsigned char c)
{
    return c >= 'A' && c <= 'Z' ? (unsigned char)(c + 32) : c;
}

static void set_bit(uint8_t *set, unsigned char c, bool icase)
{
    set[c >> 3] |= (uint8_t)(1u << (c & 7));
    if (icase) {
        unsigned char l = lower(c);
        set[l >> 3] |= (uint8_t)(1u << (l & 7));
    }
}

void filter_glob_free(filter_glob_t *g)
{
    if (g == NULL) return;
    free(g->lit);
    free(g->toks);
    free(g);
}

int filter_glob_new(const char *pat, size_t len, bool icase, filter_glob_t **out, const char **why)
{
    *out = NULL;
    *why = NULL;
    if (len > FILTER_MAX_PATTERN) {
        *why = "pattern longer than 1024 bytes";
        return FILTER_E_INVALID;
    }
    filter_glob_t *g = calloc(1, sizeof *g);
    gtok_t *t = calloc(len > 0 ? len : 1, sizeof *t); /* at most one token per pattern byte */
    if (g == NULL || t == NULL) {
        free(g);
        free(t);
        return FILTER_E_NOMEM;
    }
    g->icase = icase;
    size_t n = 0;
    bool only_lit_star = true;
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)pat[i];
        if (c == '*') {
            if (n == 0 || t[n - 1].kind != T_STAR) t[n++].kind = T_STAR;
        } else if (c == '?') {
            t[n++].kind = T_ANY;
            only_lit_star = false;
        } else if (c == '[') {
            gtok_t *k = &t[n];
            k->kind = T_CLASS;
            size_t j = i + 1;
            bool neg = j < len && (pat[j] == '!' || pat[j] == '^');
            if (neg) j++;
            bool first = true;
            for (; j < len && (pat[j] != ']' || first); j++) {
                first = false;
                unsigned char a = (unsigned char)pat[j];
                if (a == '\\' && j + 1 < len) a = (unsigned char)pat[++j];
                if (j + 2 < len && pat[j + 1] == '-' && pat[j + 2] != ']') {
                    unsigned char b = (unsigned char)pat[j + 2];
                    if (b == '\\' && j + 3 < len) b = (unsigned char)pat[++j + 2];
                    j += 2;
                    for (unsigned v = a; v <= b; v++)
                        set_bit(k->set, (unsigned char)v, icase);
                } else {
                    set_bit(k->set, a, icase);
                }
            }
            if (j >= len) {
                free(t);
                free(g);
                *why = "unterminated '[' in pattern";
                return FILTER_E_INVALID;
            }
            if (neg)
                for (size_t b = 0; b < 32; b++)
                    k->set[b] = (uint8_t)~k->set[b];
            i = j;
            n++;
            only_lit_star = false;
        } else {
            if (c == '\\') {
                if (i + 1 >= len) {
                    free(t);
                    free(g);
                    *why = "pattern ends with a lone '\\'";
                    return FILTER_E_INVALID;
                }
                c = (unsigned char)pat[++i];
            }
            t[n].kind = T_LIT;
            t[n++].c = icase ? lower(c) : c;
        }
    }
    /* Classify: literals with stars only at the ends take a fast path. */
    size_t stars = 0;
    for (size_t i = 0; i < n; i++)
        stars += t[i].kind == T_STAR;
    bool lead = n > 0 && t[0].kind == T_STAR, trail = n > 0 && t[n - 1].kind == T_STAR;
    if (only_lit_star && stars == 1 && n == 1)
        g->kind = G_ALL;
    else if (only_lit_star && stars == 0)
        g->kind = G_EXACT;
    else if (only_lit_star && stars == 1 && trail)
        g->kind = G_PREFIX;
    else if (only_lit_star && stars == 1 && lead)
        g->kind = G_SUFFIX;
    else if (only_lit_star && stars == 2 && lead && trail)
        g->kind = G_CONTAINS;
    else
        g->kind = G_GENERAL;
    if (g->kind == G_GENERAL) {
        g->toks = t;
        g->ntoks = n;
    } else {
        g->lit = malloc(n > 0 ? n : 1);
        if (g->lit == NULL) {
            free(t);
            free(g);
            return FILTER_E_NOMEM;
        }
        for (size_t i = 0; i < n; i++)
            if (t[i].kind == T_LIT) g->lit[g->lit_len++] = (char)t[i].c;
        free(t);
    }
    *out = g;
    return FILTER_OK;
}

static bool lit_eq(const char *s, const char *lit, size_t n, bool icase)
{
    if (!icase) return memcmp(s, lit, n) == 0;
    for (size_t i = 0; i < n; i++)
        if (lower((unsigned char)s[i]) != (unsigned char)lit[i]) return false;
    return true;
}

static bool glob_general(const filter_glob_t *g, const char *s, size_t len)
{
    size_t ti = 0, si = 0, star = SIZE_MAX, mark = 0;
    const gtok_t *t = g->toks;
    while (si < len) {
        if (ti < g->ntoks && t[ti].kind == T_STAR) {
            star = ti++;
            mark = si;
            continue;
        }
        if (ti < g->ntoks) {
            unsigned char c = (unsigned char)s[si];
            if (g->icase) c = lower(c);
            const gtok_t *k = &t[ti];
            if (k->kind == T_ANY) { /* one character: a whole UTF-8 sequence (or a stray byte) */
                size_t n = base_utf8_seq_len(s + si, len - si);
                si += n > 0 ? n : 1;
                ti++;
                continue;
            }
            if ((k->kind == T_LIT && k->c == c) ||
                (k->kind == T_CLASS && (k->set[c >> 3] & (1u << (c & 7))))) {
                si++;
                ti++;
                continue;
            }
        }
        if (star == SIZE_MAX) return false;
        ti = star + 1;
        si = ++mark;
    }
    while (ti < g->ntoks && t[ti].kind == T_STAR)
        ti++;
    return ti == g->ntoks;
}

bool filter_glob_match(const filter_glob_t *g, const char *s, size_t len)
{
    const size_t n = g->lit_len;
    switch (g->kind) {
    case G_ALL:
        return true;
    case G_EXACT:
        return len == n && lit_eq(s, g->lit, n, g->icase);
    case G_PREFIX:
        return len >= n && lit_eq(s, g->lit, n, g->icase);
    case G_SUFFIX:
        return len >= n && lit_eq(s + len - n, g->lit, n, g->icase);
    case G_CONTAINS:
        if (n == 0) return true;
        if (!g->icase) return len >= n && memmem(s, len, g->lit, n) != NULL;
        for (size_t i = 0; i + n <= len; i++)
            if (lit_eq(s + i, g->lit, n, true)) return true;
        return false;
    case G_GENERAL:
        return glob_general(g, s, len);
    }
    return false;
}

/* ---- compiled rules ---- */

typedef struct fseg {
    const char *p;
    uint32_t len;
} fseg_t;

typedef struct fpath {
    char *text; /* the path as written; segments point into it */
    size_t nseg;
    bool in_context; /* seg[0] is "context": resolved through the record's context */
    fseg_t seg[FILTER_MAX_SEGMENTS];
} fpath_t;

typedef struct fglobs {
    filter_glob_t **g;
    size_t n;
} fglobs_t;

typedef struct fprop {
    fpath_t path;
    fglobs_t globs;
} fprop_t;

typedef struct fmatch {
    uint32_t types; /* bit per proto_type_t; 0 = any type */
    fglobs_t events, uas;
    fprop_t *props;
    size_t n_props;
} fmatch_t;

typedef struct frule {
    char *name;
    filter_kind_t kind;
    fmatch_t m;
    double keep;
    fpath_t *paths;
    size_t n_paths;
    filter_hmac_t *hmac; /* hash rules */
    _Atomic uint64_t count;
} frule_t;

struct filter_set {
    frule_t *rules;
    size_t n;
};

static void globs_free(fglobs_t *gl)
{
    for (size_t i = 0; i < gl->n; i++)
        filter_glob_free(gl->g[i]);
    free(gl->g);
    gl->g = NULL;
    gl->n = 0;
}

static void rule_free(frule_t *r)
{
    free(r->name);
    globs_free(&r->m.events);
    globs_free(&r->m.uas);
    for (size_t i = 0; i < r->m.n_props; i++) {
        free(r->m.props[i].path.text);
        globs_free(&r->m.props[i].globs);
    }
    free(r->m.props);
    for (size_t i = 0; i < r->n_paths; i++)
        free(r->paths[i].text);
    free(r->paths);
    filter_hmac_free(r->hmac);
}

void filter_set_free(filter_set_t *fs)
{
    if (fs == NULL) return;
    for (size_t i = 0; i < fs->n; i++)
        rule_free(&fs->rules[i]);
    free(fs->rules);
    free(fs);
}

size_t filter_set_count(const filter_set_t *fs)
{
    return fs != NULL ? fs->n : 0;
}

const char *filter_rule_name(const filter_set_t *fs, size_t i)
{
    return fs->rules[i].name;
}

filter_kind_t filter_rule_kind(const filter_set_t *fs, size_t i)
{
    return fs->rules[i].kind;
}

uint64_t filter_rule_count(const filter_set_t *fs, size_t i)
{
    return atomic_load_explicit(&fs->rules[i].count, memory_order_relaxed);
}

void filter_set_counts_snapshot(const filter_set_t *src, uint64_t *counts)
{
    for (size_t i = 0; i < filter_set_count(src); i++)
        counts[i] = filter_rule_count(src, i);
}

void filter_set_add_counts(filter_set_t *dst, const filter_set_t *src, const uint64_t *values)
{
    if (dst == NULL || src == NULL) return;
    for (size_t i = 0; i < src->n; i++) {
        if (values[i] == 0) continue;
        for (size_t j = 0; j < dst->n; j++) {
            if (dst->rules[j].kind == src->rules[i].kind &&
                strcmp(dst->rules[j].name, src->rules[i].name) == 0) {
                atomic_fetch_add_explicit(&dst->rules[j].count, values[i], memory_order_relaxed);
                break;
            }
        }
    }
}

/* ---- keyed hash and sampling ---- */

/* Contexts kept ready for concurrent callers: one per loop thread is enough (threads: 2 by
 * default); a caller that finds them all taken copies the keyed context instead. */
#define FILTER_HMAC_SLOTS 8

struct filter_hmac {
    EVP_MAC *mac;
    EVP_MAC_CTX *keyed; /* initialised with the key; only ever copied after that */
    EVP_MAC_CTX *slot[FILTER_HMAC_SLOTS]; /* copies of keyed, each used by one caller at a time */
    _Atomic bool busy[FILTER_HMAC_SLOTS]; /* slot[i] taken (a try-lock: nobody waits on it) */
};

void filter_hmac_free(filter_hmac_t *h)
{
    if (h == NULL) return;
    for (size_t i = 0; i < FILTER_HMAC_SLOTS; i++)
        EVP_MAC_CTX_free(h->slot[i]);
    EVP_MAC_CTX_free(h->keyed); /* OpenSSL cleanses the key material it holds */
    EVP_MAC_free(h->mac);
    free(h);
}

int filter_hmac_new(const void *key, size_t len, filter_hmac_t **out)
{
    *out = NULL;
    filter_hmac_t *h = calloc(1, sizeof *h);
    if (h == NULL) return FILTER_E_NOMEM;
    char digest[] = "SHA256";
    OSSL_PARAM params[] = {OSSL_PARAM_construct_utf8_string(OSSL_MAC_PARAM_DIGEST, digest, 0),
                           OSSL_PARAM_construct_end()};
    h->mac = EVP_MAC_fetch(NULL, "HMAC", NULL);
    if (h->mac != NULL) h->keyed = EVP_MAC_CTX_new(h->mac);
    bool ok = h->keyed != NULL && EVP_MAC_init(h->keyed, key, len, params) == 1;
    for (size_t i = 0; ok && i < FILTER_HMAC_SLOTS; i++) {
        atomic_init(&h->busy[i], false);
        h->slot[i] = EVP_MAC_CTX_dup(h->keyed);
        ok = h->slot[i] != NULL;
    }
    if (!ok) {
        filter_hmac_free(h);
        return FILTER_E_NOMEM;
    }
    *out = h;
    return FILTER_OK;
}

/* One MAC on c; reset: c is a copy of the keyed context that may have been used before (init
 * with no key restarts it under the same key without redoing the key schedule). */
static bool hmac_run(EVP_MAC_CTX *c, bool reset, const void *data, size_t len, unsigned char md[32])
{
    size_t n = 0;
    return (!reset || EVP_MAC_init(c, NULL, 0, NULL) == 1) && EVP_MAC_update(c, data, len) == 1 &&
           EVP_MAC_final(c, md, &n, 32) == 1 && n == 32;
}

int filter_hmac(const filter_hmac_t *h, const void *data, size_t len, char out[FILTER_HASH_LEN])
{
    static const char hex[] = "0123456789abcdef";
    unsigned char md[32];
    filter_hmac_t *m = (filter_hmac_t *)h; /* only the slots' state changes, under busy[] */
    bool ok = false, done = false;
    for (size_t i = 0; i < FILTER_HMAC_SLOTS && !done; i++) {
        if (atomic_load_explicit(&m->busy[i], memory_order_relaxed) ||
            atomic_exchange_explicit(&m->busy[i], true, memory_order_acquire))
            continue;
        ok = hmac_run(m->slot[i], true, data, len, md);
        atomic_store_explicit(&m->busy[i], false, memory_order_release);
        done = true;
    }
    if (!done) { /* every slot in use: a private copy of the keyed context */
        EVP_MAC_CTX *c = EVP_MAC_CTX_dup(h->keyed);
        if (c == NULL) return FILTER_E_NOMEM;
        ok = hmac_run(c, false, data, len, md);
        EVP_MAC_CTX_free(c);
    }
    if (!ok) return FILTER_E_NOMEM;
    memcpy(out, FILTER_HASH_PREFIX, FILTER_HASH_PREFIX_LEN);
    for (size_t i = 0; i < sizeof md; i++) {
        out[FILTER_HASH_PREFIX_LEN + 2 * i] = hex[md[i] >> 4];
        out[FILTER_HASH_PREFIX_LEN + 2 * i + 1] = hex[md[i] & 15];
    }
    OPENSSL_cleanse(md, sizeof md);
    return FILTER_OK;
}

double filter_sample_value(const char *id, size_t len)
{
    uint64_t h = XXH3_64bits_withSeed(id, len, FILTER_SAMPLE_SEED);
    return (double)(h >> 11) * 0x1.0p-53;
}

/* ---- reading events ---- */

static bool key_is(const msgpack_object *k, const char *s, uint32_t n)
{
    /* Length and first byte before memcmp: most keys of a map differ there (hot path). */
    return k->type == MSGPACK_OBJECT_STR && k->via.str.size == n &&
           (n == 0 || (k->via.str.ptr[0] == s[0] && memcmp(k->via.str.ptr, s, n) == 0));
}

static const msgpack_object *map_get(const msgpack_object *map, const char *k, uint32_t n)
{
    if (map == NULL || map->type != MSGPACK_OBJECT_MAP) return NULL;
    for (uint32_t i = 0; i < map->via.map.size; i++)
        if (key_is(&map->via.map.ptr[i].key, k, n)) return &map->via.map.ptr[i].val;
    return NULL;
}

/* One event under the rules: its context is looked up once, again only after an edit. */
typedef struct evview {
    const proto_batch_t *b;
    const proto_event_t *ev;
    const msgpack_object *ctx; /* valid when ctx_known */
    bool ctx_known;
} evview_t;

/* The context the record will carry: the event's own, else the batch's (SPEC §2 merge). */
static const msgpack_object *event_context(evview_t *w)
{
    if (!w->ctx_known) {
        const msgpack_object *c = map_get(w->ev->obj, "context", 7);
        w->ctx = c != NULL && c->type == MSGPACK_OBJECT_MAP ? c : w->b->context;
        w->ctx_known = true;
    }
    return w->ctx;
}

static bool seg_is(const fseg_t *s, const char *lit, uint32_t n)
{
    return s->len == n && memcmp(s->p, lit, n) == 0;
}

static const msgpack_object *resolve(evview_t *w, const fpath_t *p)
{
    const msgpack_object *v =
        p->in_context ? event_context(w) : map_get(w->ev->obj, p->seg[0].p, p->seg[0].len);
    for (size_t i = 1; i < p->nseg && v != NULL; i++)
        v = map_get(v, p->seg[i].p, p->seg[i].len);
    return v;
}

/* The string form of a scalar: strings as they are, numbers in decimal, true/false, null.
 * Returns false for containers. tmp holds the text of non-strings. */
static bool value_text(const msgpack_object *v, char *tmp, size_t tmplen, const char **s, size_t *n)
{
    int len;
    switch (v->type) {
    case MSGPACK_OBJECT_STR:
        *s = v->via.str.ptr;
        *n = v->via.str.size;
        return true;
    case MSGPACK_OBJECT_POSITIVE_INTEGER:
        len = snprintf(tmp, tmplen, "%llu", (unsigned long long)v->via.u64);
        break;
    case MSGPACK_OBJECT_NEGATIVE_INTEGER:
        len = snprintf(tmp, tmplen, "%lld", (long long)v->via.i64);
        break;
    case MSGPACK_OBJECT_FLOAT32:
    case MSGPACK_OBJECT_FLOAT64:
        len = snprintf(tmp, tmplen, "%.17g", v->via.f64);
        break;
    case MSGPACK_OBJECT_BOOLEAN:
        len = snprintf(tmp, tmplen, "%s", v->via.boolean ? "true" : "false");
        break;
    case MSGPACK_OBJECT_NIL:
        len = snprintf(tmp, tmplen, "null");
        break;
    default:
        return false;
    }
    if (len < 0 || (size_t)len >= tmplen) return false;
    *s = tmp;
    *n = (size_t)len;
    return true;
}

static bool any_glob(const fglobs_t *gl, const char *s, size_t n)
{
    for (size_t i = 0; i < gl->n; i++)
        if (filter_glob_match(gl->g[i], s, n)) return true;
    return false;
}

static const fpath_t ua_path = {NULL, 2, true, {{"context", 7}, {"userAgent", 9}}};

static bool matches(const fmatch_t *m, evview_t *w)
{
    const proto_event_t *ev = w->ev;
    if (m->types != 0 && !(m->types & (1u << ev->type))) return false;
    if (m->events.n > 0 &&
        (ev->event.ptr == NULL || !any_glob(&m->events, ev->event.ptr, ev->event.len)))
        return false;
    if (m->uas.n > 0) {
        const msgpack_object *ua = resolve(w, &ua_path);
        if (ua == NULL || ua->type != MSGPACK_OBJECT_STR ||
            !any_glob(&m->uas, ua->via.str.ptr, ua->via.str.size))
            return false;
    }
    for (size_t i = 0; i < m->n_props; i++) {
        const msgpack_object *v = resolve(w, &m->props[i].path);
        char tmp[64];
        const char *s;
        size_t n;
        if (v == NULL || !value_text(v, tmp, sizeof tmp, &s, &n) ||
            !any_glob(&m->props[i].globs, s, n))
            return false;
    }
    return true;
}

/* ---- editing events (copy-on-write into the batch's zone) ---- */

/* Replaces *v by its keyed hash: 1 changed, 0 left alone (null), -1 out of memory. */
static int hash_value(msgpack_zone *z, const frule_t *r, const msgpack_object *v,
                      msgpack_object *out)
{
    if (v->type == MSGPACK_OBJECT_NIL) return 0;
    char *h = msgpack_zone_malloc(z, FILTER_HASH_LEN);
    if (h == NULL) return -1;
    char tmp[64];
    const char *s;
    size_t n;
    if (value_text(v, tmp, sizeof tmp, &s, &n)) {
        if (filter_hmac(r->hmac, s, n, h) != FILTER_OK) return -1;
    } else { /* a map or an array: the hash of its msgpack encoding */
        msgpack_sbuffer sb;
        msgpack_sbuffer_init(&sb);
        msgpack_packer pk;
        msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
        if (msgpack_pack_object(&pk, *v) != 0 || sb.data == NULL) {
            msgpack_sbuffer_destroy(&sb);
            return -1;
        }
        int rc = filter_hmac(r->hmac, sb.data, sb.size, h);
        msgpack_sbuffer_destroy(&sb);
        if (rc != FILTER_OK) return -1;
    }
    out->type = MSGPACK_OBJECT_STR;
    out->via.str.ptr = h;
    out->via.str.size = FILTER_HASH_LEN;
    return 1;
}

/* Applies strip/hash of path seg[0..nseg) inside map. Returns 1 with *out = the edited copy,
 * 0 when nothing matched (no copy made), -1 out of memory. Every key equal to seg[0] is edited
 * (a body may carry duplicate keys when duplicate checks are off). Depth <= FILTER_MAX_SEGMENTS. */
static int edit_map(msgpack_zone *z, const msgpack_object *map, const fseg_t *seg, size_t nseg,
                    const frule_t *r, msgpack_object *out)
{
    if (map == NULL || map->type != MSGPACK_OBJECT_MAP) return 0;
    const msgpack_object_kv *src = map->via.map.ptr;
    const uint32_t n = map->via.map.size;
    msgpack_object_kv *kv = NULL;
    uint32_t o = 0;
    for (uint32_t i = 0; i < n; i++) {
        if (!key_is(&src[i].key, seg[0].p, seg[0].len)) {
            if (kv != NULL) kv[o++] = src[i];
            continue;
        }
        msgpack_object nv;
        int rc = 1;
        if (nseg > 1)
            rc = edit_map(z, &src[i].val, seg + 1, nseg - 1, r, &nv);
        else if (r->kind == FILTER_HASH)
            rc = hash_value(z, r, &src[i].val, &nv);
        if (rc < 0) return -1;
        if (rc == 0) {
            if (kv != NULL) kv[o++] = src[i];
            continue;
        }
        if (kv == NULL) {
            kv = msgpack_zone_malloc(z, (size_t)n * sizeof *kv);
            if (kv == NULL) return -1;
            memcpy(kv, src, (size_t)i * sizeof *kv);
            o = i;
        }
        if (nseg == 1 && r->kind == FILTER_STRIP) continue; /* removed */
        kv[o].key = src[i].key;
        kv[o].val = nv;
        o++;
    }
    if (kv == NULL) return 0;
    out->type = MSGPACK_OBJECT_MAP;
    out->via.map.ptr = kv;
    out->via.map.size = o;
    return 1;
}

/* Edits one path of ev's record; 1 changed, 0 not, -1 out of memory. */
static int edit_event(proto_batch_t *b, proto_event_t *ev, const fpath_t *p, const frule_t *r)
{
    msgpack_zone *z = &b->zone;
    msgpack_object edited;
    int rc;
    bool inherit = false;
    if (p->in_context && b->context != NULL) {
        const msgpack_object *own = map_get(ev->obj, "context", 7);
        inherit = own == NULL || own->type != MSGPACK_OBJECT_MAP;
    }
    if (!inherit) {
        rc = edit_map(z, ev->obj, p->seg, p->nseg, r, &edited);
    } else {
        /* The record would carry the batch context: edit a copy and make it the event's own. */
        msgpack_object ctx;
        rc = edit_map(z, b->context, p->seg + 1, p->nseg - 1, r, &ctx);
        if (rc != 1) return rc;
        const msgpack_object_map *m = &ev->obj->via.map;
        msgpack_object_kv *kv = msgpack_zone_malloc(z, ((size_t)m->size + 1) * sizeof *kv);
        if (kv == NULL) return -1;
        uint32_t o = 0;
        for (uint32_t i = 0; i < m->size; i++)
            if (!key_is(&m->ptr[i].key, "context", 7)) kv[o++] = m->ptr[i];
        kv[o].key.type = MSGPACK_OBJECT_STR;
        kv[o].key.via.str.ptr = "context";
        kv[o].key.via.str.size = 7;
        kv[o++].val = ctx;
        edited.type = MSGPACK_OBJECT_MAP;
        edited.via.map.ptr = kv;
        edited.via.map.size = o;
    }
    if (rc != 1) return rc;
    msgpack_object *obj = msgpack_zone_malloc(z, sizeof *obj);
    if (obj == NULL) return -1;
    *obj = edited;
    ev->obj = obj;
    return 1;
}

int filter_apply(filter_set_t *fs, proto_batch_t *b, proto_event_t *ev, bool *keep)
{
    *keep = true;
    if (fs == NULL) return FILTER_OK;
    evview_t w = {b, ev, NULL, false};
    for (size_t i = 0; i < fs->n; i++) {
        frule_t *r = &fs->rules[i];
        bool drop = false;
        switch (r->kind) {
        case FILTER_DROP:
            drop = matches(&r->m, &w);
            break;
        case FILTER_ALLOW:
            drop = !matches(&r->m, &w);
            break;
        case FILTER_SAMPLE:
            if (matches(&r->m, &w)) {
                proto_str_t id = ev->user_id.ptr != NULL ? ev->user_id : ev->anonymous_id;
                drop = id.ptr == NULL || filter_sample_value(id.ptr, id.len) >= r->keep;
            }
            break;
        case FILTER_STRIP:
        case FILTER_HASH: {
            bool changed = false;
            for (size_t j = 0; j < r->n_paths; j++) {
                int rc = edit_event(b, ev, &r->paths[j], r);
                if (rc < 0) return FILTER_E_NOMEM;
                changed |= rc == 1;
            }
            if (changed) {
                w.ctx_known = false; /* ev->obj is a new map now */
                atomic_fetch_add_explicit(&r->count, 1, memory_order_relaxed);
            }
            break;
        }
        }
        if (drop) {
            atomic_fetch_add_explicit(&r->count, 1, memory_order_relaxed);
            *keep = false;
            return FILTER_OK;
        }
    }
    return FILTER_OK;
}

/* ---- metrics ---- */

int filter_set_render(const filter_set_t *fs, base_buf_t *out)
{
    static const char head[] =
        "# HELP sluice_filter_events_total events each filter rule acted on (drop, allow, sample: "
        "filtered out; strip, hash: modified)\n# TYPE sluice_filter_events_total counter\n";
    if (filter_set_count(fs) == 0) return PROTO_OK;
    int rc = base_buf_append(out, head, sizeof head - 1);
    for (size_t i = 0; i < fs->n && rc == PROTO_OK; i++) {
        char line[FILTER_NAME_MAX + 128];
        /* Rule names are [A-Za-z0-9_.-]: nothing to escape in a label value. */
        int n = snprintf(line, sizeof line,
                         "sluice_filter_events_total{rule=\"%s\",action=\"%s\"} %llu\n",
                         fs->rules[i].name, filter_kind_name(fs->rules[i].kind),
                         (unsigned long long)filter_rule_count(fs, i));
        rc = n > 0 && (size_t)n < sizeof line ? base_buf_append(out, line, (size_t)n)
                                              : PROTO_E_NOMEM;
    }
    return rc;
}

/* ---- YAML ---- */

typedef struct pctx {
    yaml_document_t *doc;
    const char *file;
    char *err;
    size_t errlen;
    size_t index;     /* rule number, 1-based */
    const char *name; /* the rule's name once known */
} pctx_t;

__attribute__((format(printf, 4, 5))) static int pfail(pctx_t *p, int code, const yaml_node_t *at,
                                                       const char *fmt, ...)
{
    if (p->err != NULL && p->errlen > 0) {
        int n = snprintf(p->err, p->errlen, "%s:%lu: filters[%zu]%s%s%s: ", p->file,
                         config_yaml_line(at), p->index, p->name ? " (" : "",
                         p->name ? p->name : "", p->name ? ")" : "");
        if (n >= 0 && (size_t)n < p->errlen) {
            va_list ap;
            va_start(ap, fmt);
            vsnprintf(p->err + n, p->errlen - (size_t)n, fmt, ap);
            va_end(ap);
        }
    }
    return code;
}

/* Checks a mapping's keys: text, no duplicates. */
static int check_keys(pctx_t *p, yaml_node_t *map, const char *what)
{
    for (yaml_node_pair_t *a = map->data.mapping.pairs.start; a < map->data.mapping.pairs.top;
         a++) {
        yaml_node_t *k = yaml_document_get_node(p->doc, a->key);
        if (!config_yaml_is_text(k))
            return pfail(p, FILTER_E_INVALID, k ? k : map, "%s: keys must be strings", what);
        yaml_node_t *kb = config_yaml_dup_key(p->doc, map, a);
        if (kb != NULL)
            return pfail(p, FILTER_E_INVALID, k, "%s: duplicate key \"%s\" (first at line %lu)",
                         what, config_yaml_text(k), config_yaml_line(kb));
    }
    return FILTER_OK;
}

/* Items of a scalar-or-list node: fills items[] (at most FILTER_MAX_ITEMS). */
static int scalar_list(pctx_t *p, yaml_node_t *n, const char *what, yaml_node_t **items,
                       size_t *count)
{
    *count = 0;
    if (n->type == YAML_SCALAR_NODE) {
        if (!config_yaml_is_text(n))
            return pfail(p, FILTER_E_INVALID, n, "%s: expected a string", what);
        items[(*count)++] = n;
        return FILTER_OK;
    }
    if (n->type != YAML_SEQUENCE_NODE)
        return pfail(p, FILTER_E_INVALID, n, "%s: expected a string or a list of strings", what);
    size_t len = (size_t)(n->data.sequence.items.top - n->data.sequence.items.start);
    if (len == 0) return pfail(p, FILTER_E_INVALID, n, "%s: the list is empty", what);
    if (len > FILTER_MAX_ITEMS)
        return pfail(p, FILTER_E_INVALID, n, "%s: more than %d entries", what, FILTER_MAX_ITEMS);
    for (size_t i = 0; i < len; i++) {
        yaml_node_t *it = yaml_document_get_node(p->doc, n->data.sequence.items.start[i]);
        if (!config_yaml_is_text(it))
            return pfail(p, FILTER_E_INVALID, it ? it : n, "%s: expected a string", what);
        items[(*count)++] = it;
    }
    return FILTER_OK;
}

static int parse_globs(pctx_t *p, yaml_node_t *n, const char *what, bool icase, fglobs_t *out)
{
    yaml_node_t *items[FILTER_MAX_ITEMS];
    size_t count;
    int rc = scalar_list(p, n, what, items, &count);
    if (rc != FILTER_OK) return rc;
    out->g = calloc(count, sizeof *out->g);
    if (out->g == NULL) return pfail(p, FILTER_E_NOMEM, n, "out of memory");
    for (size_t i = 0; i < count; i++) {
        const char *why = NULL;
        rc = filter_glob_new(config_yaml_text(items[i]), items[i]->data.scalar.length, icase,
                             &out->g[i], &why);
        if (rc != FILTER_OK)
            return pfail(p, rc, items[i], "%s: \"%s\": %s", what, config_yaml_text(items[i]),
                         why ? why : "out of memory");
        out->n++;
    }
    return FILTER_OK;
}

/* A dotted path; for strip/hash (edit) it must start at properties, traits or context and name
 * a key inside it. */
static int parse_path(pctx_t *p, yaml_node_t *n, const char *what, bool edit, fpath_t *out)
{
    const char *s = config_yaml_text(n);
    size_t len = n->data.scalar.length;
    out->text = strndup(s, len);
    if (out->text == NULL) return pfail(p, FILTER_E_NOMEM, n, "out of memory");
    out->nseg = 0;
    const char *q = out->text, *end = out->text + len;
    while (q <= end) {
        const char *dot = memchr(q, '.', (size_t)(end - q));
        const char *stop = dot ? dot : end;
        if (stop == q)
            return pfail(p, FILTER_E_INVALID, n, "%s: \"%s\": empty segment in path", what, s);
        if (out->nseg == FILTER_MAX_SEGMENTS)
            return pfail(p, FILTER_E_INVALID, n, "%s: \"%s\": more than %d segments", what, s,
                         FILTER_MAX_SEGMENTS);
        out->seg[out->nseg++] = (fseg_t){q, (uint32_t)(stop - q)};
        if (dot == NULL) break;
        q = dot + 1;
    }
    out->in_context = seg_is(&out->seg[0], "context", 7);
    if (edit) {
        const fseg_t *r = &out->seg[0];
        bool root = (r->len == 10 && memcmp(r->p, "properties", 10) == 0) ||
                    (r->len == 6 && memcmp(r->p, "traits", 6) == 0) ||
                    (r->len == 7 && memcmp(r->p, "context", 7) == 0);
        if (!root || out->nseg < 2)
            return pfail(p, FILTER_E_INVALID, n,
                         "%s: \"%s\": paths must name a key inside properties, traits or context "
                         "(e.g. properties.email)",
                         what, s);
    }
    return FILTER_OK;
}

static int parse_match(pctx_t *p, yaml_node_t *n, frule_t *r)
{
    const char *kind = filter_kind_name(r->kind);
    if (n->type != YAML_MAPPING_NODE)
        return pfail(p, FILTER_E_INVALID, n,
                     "%s: expected a mapping of conditions (type, event, user_agent, property%s)",
                     kind, r->kind == FILTER_SAMPLE ? ", keep" : "");
    int rc = check_keys(p, n, kind);
    if (rc != FILTER_OK) return rc;
    bool have_keep = false;
    size_t conds = 0;
    for (yaml_node_pair_t *a = n->data.mapping.pairs.start; a < n->data.mapping.pairs.top; a++) {
        yaml_node_t *k = yaml_document_get_node(p->doc, a->key);
        yaml_node_t *v = yaml_document_get_node(p->doc, a->value);
        const char *kn = config_yaml_text(k);
        char what[64];
        snprintf(what, sizeof what, "%s.%s", kind, kn);
        if (strcmp(kn, "type") == 0) {
            yaml_node_t *items[FILTER_MAX_ITEMS];
            size_t count;
            if ((rc = scalar_list(p, v, what, items, &count)) != FILTER_OK) return rc;
            for (size_t i = 0; i < count; i++) {
                proto_type_t t =
                    proto_type_parse(config_yaml_text(items[i]), items[i]->data.scalar.length);
                if (t == PROTO_T_NONE)
                    return pfail(p, FILTER_E_INVALID, items[i],
                                 "%s: \"%s\" is not track, identify, group, page, screen or alias",
                                 what, config_yaml_text(items[i]));
                r->m.types |= 1u << t;
            }
        } else if (strcmp(kn, "event") == 0) {
            if ((rc = parse_globs(p, v, what, false, &r->m.events)) != FILTER_OK) return rc;
        } else if (strcmp(kn, "user_agent") == 0) {
            if ((rc = parse_globs(p, v, what, true, &r->m.uas)) != FILTER_OK) return rc;
        } else if (strcmp(kn, "property") == 0) {
            if (v->type != YAML_MAPPING_NODE)
                return pfail(p, FILTER_E_INVALID, v, "%s: expected a mapping PATH: PATTERN", what);
            if ((rc = check_keys(p, v, what)) != FILTER_OK) return rc;
            size_t np = (size_t)(v->data.mapping.pairs.top - v->data.mapping.pairs.start);
            if (np == 0) return pfail(p, FILTER_E_INVALID, v, "%s: is empty", what);
            if (np > FILTER_MAX_ITEMS)
                return pfail(p, FILTER_E_INVALID, v, "%s: more than %d paths", what,
                             FILTER_MAX_ITEMS);
            r->m.props = calloc(np, sizeof *r->m.props);
            if (r->m.props == NULL) return pfail(p, FILTER_E_NOMEM, v, "out of memory");
            for (size_t i = 0; i < np; i++) {
                yaml_node_pair_t *pp = &v->data.mapping.pairs.start[i];
                yaml_node_t *pk = yaml_document_get_node(p->doc, pp->key);
                yaml_node_t *pv = yaml_document_get_node(p->doc, pp->value);
                fprop_t *fp = &r->m.props[r->m.n_props++];
                if ((rc = parse_path(p, pk, what, false, &fp->path)) != FILTER_OK) return rc;
                if ((rc = parse_globs(p, pv, what, false, &fp->globs)) != FILTER_OK) return rc;
            }
        } else if (strcmp(kn, "keep") == 0 && r->kind == FILTER_SAMPLE) {
            char *endp = NULL;
            errno = 0;
            double d = config_yaml_is_text(v) ? strtod(config_yaml_text(v), &endp) : NAN;
            if (!config_yaml_is_text(v) || endp == config_yaml_text(v) || *endp != '\0' ||
                errno != 0 || !(d >= 0) || d > 1)
                return pfail(p, FILTER_E_INVALID, v, "%s: expected a fraction from 0 to 1", what);
            r->keep = d;
            have_keep = true;
            continue;
        } else {
            return pfail(p, FILTER_E_INVALID, k,
                         "%s: unknown condition \"%s\" (expected type, event, user_agent, "
                         "property%s)",
                         kind, kn, r->kind == FILTER_SAMPLE ? " or keep" : "");
        }
        conds++;
    }
    if (r->kind == FILTER_SAMPLE && !have_keep)
        return pfail(p, FILTER_E_INVALID, n, "sample: needs keep: FRACTION");
    if (r->kind != FILTER_SAMPLE && conds == 0)
        return pfail(p, FILTER_E_INVALID, n, "%s: needs at least one condition", kind);
    return FILTER_OK;
}

static int parse_paths(pctx_t *p, yaml_node_t *n, frule_t *r)
{
    const char *what = filter_kind_name(r->kind);
    yaml_node_t *items[FILTER_MAX_ITEMS];
    size_t count;
    int rc = scalar_list(p, n, what, items, &count);
    if (rc != FILTER_OK) return rc;
    r->paths = calloc(count, sizeof *r->paths);
    if (r->paths == NULL) return pfail(p, FILTER_E_NOMEM, n, "out of memory");
    for (size_t i = 0; i < count; i++) {
        rc = parse_path(p, items[i], what, true, &r->paths[r->n_paths++]);
        if (rc != FILTER_OK) return rc;
    }
    return FILTER_OK;
}

static bool name_ok(const char *s, size_t n)
{
    if (n == 0 || n > FILTER_NAME_MAX) return false;
    for (size_t i = 0; i < n; i++) {
        char c = s[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '_' || c == '.' || c == '-'))
            return false;
    }
    return true;
}

static int parse_rule(pctx_t *p, yaml_node_t *item, filter_set_t *fs)
{
    if (item->type != YAML_MAPPING_NODE)
        return pfail(p, FILTER_E_INVALID, item,
                     "expected a mapping {name: N, drop|allow|sample|strip|hash: ...}");
    int rc = check_keys(p, item, "rule");
    if (rc != FILTER_OK) return rc;
    yaml_node_t *name = NULL, *body = NULL, *body_key = NULL, *key_env = NULL, *env_key = NULL;
    filter_kind_t kind = FILTER_DROP;
    /* Name the rule in every error, as soon as it has a usable name. */
    for (yaml_node_pair_t *a = item->data.mapping.pairs.start; a < item->data.mapping.pairs.top;
         a++) {
        yaml_node_t *k = yaml_document_get_node(p->doc, a->key);
        yaml_node_t *v = yaml_document_get_node(p->doc, a->value);
        if (strcmp(config_yaml_text(k), "name") == 0 && config_yaml_is_text(v) &&
            name_ok(config_yaml_text(v), v->data.scalar.length))
            p->name = config_yaml_text(v);
    }
    for (yaml_node_pair_t *a = item->data.mapping.pairs.start; a < item->data.mapping.pairs.top;
         a++) {
        yaml_node_t *k = yaml_document_get_node(p->doc, a->key);
        yaml_node_t *v = yaml_document_get_node(p->doc, a->value);
        const char *kn = config_yaml_text(k);
        int which = -1;
        for (int i = 0; i < 5; i++)
            if (strcmp(kn, filter_kind_name((filter_kind_t)i)) == 0) which = i;
        if (strcmp(kn, "name") == 0) {
            name = v;
        } else if (strcmp(kn, "key_env") == 0) {
            key_env = v;
            env_key = k;
        } else if (which >= 0) {
            if (body != NULL)
                return pfail(p, FILTER_E_INVALID, k,
                             "a rule has exactly one of drop, allow, sample, strip, hash (also "
                             "\"%s\" at line %lu)",
                             config_yaml_text(body_key), config_yaml_line(body_key));
            body = v;
            body_key = k;
            kind = (filter_kind_t)which;
        } else {
            return pfail(p, FILTER_E_INVALID, k,
                         "unknown key \"%s\" (expected name, drop, allow, sample, strip, hash, "
                         "key_env)",
                         kn);
        }
    }
    if (name == NULL) return pfail(p, FILTER_E_INVALID, item, "needs a name");
    if (!config_yaml_is_text(name) || !name_ok(config_yaml_text(name), name->data.scalar.length))
        return pfail(p, FILTER_E_INVALID, name, "name must be 1..64 of [A-Za-z0-9_.-]");
    for (size_t i = 0; i < fs->n; i++)
        if (strcmp(fs->rules[i].name, config_yaml_text(name)) == 0)
            return pfail(p, FILTER_E_INVALID, name, "name \"%s\" is used by filters[%zu]",
                         config_yaml_text(name), i + 1);
    if (body == NULL)
        return pfail(p, FILTER_E_INVALID, item, "needs one of drop, allow, sample, strip, hash");
    if (key_env != NULL && kind != FILTER_HASH)
        return pfail(p, FILTER_E_INVALID, env_key, "key_env belongs to hash rules only");
    if (kind == FILTER_HASH && key_env == NULL)
        return pfail(p, FILTER_E_INVALID, item,
                     "hash needs key_env: the environment variable holding the key");

    frule_t *r = &fs->rules[fs->n];
    memset(r, 0, sizeof *r);
    fs->n++; /* counted at once so that filter_set_free releases what the rule holds */
    r->kind = kind;
    atomic_init(&r->count, 0);
    r->name = strdup(config_yaml_text(name));
    if (r->name == NULL) return pfail(p, FILTER_E_NOMEM, name, "out of memory");
    if (kind == FILTER_STRIP || kind == FILTER_HASH)
        rc = parse_paths(p, body, r);
    else
        rc = parse_match(p, body, r);
    if (rc != FILTER_OK) return rc;
    if (kind == FILTER_HASH) {
        if (!config_yaml_is_text(key_env))
            return pfail(p, FILTER_E_INVALID, key_env,
                         "key_env: expected the name of an environment variable");
        const char *key = getenv(config_yaml_text(key_env));
        if (key == NULL)
            return pfail(p, FILTER_E_INVALID, key_env,
                         "key_env: environment variable %s is not set", config_yaml_text(key_env));
        if (strlen(key) < FILTER_MIN_KEY)
            return pfail(p, FILTER_E_INVALID, key_env,
                         "key_env: environment variable %s must hold at least %d bytes",
                         config_yaml_text(key_env), FILTER_MIN_KEY);
        if (filter_hmac_new(key, strlen(key), &r->hmac) != FILTER_OK)
            return pfail(p, FILTER_E_NOMEM, key_env,
                         "cannot make an HMAC-SHA256 context (out of memory, or OpenSSL has no "
                         "HMAC/SHA256)");
    }
    return FILTER_OK;
}

int filter_parse_yaml(yaml_document_t *doc, yaml_node_t *node, const char *file, filter_set_t **out,
                      char *err, size_t errlen)
{
    *out = NULL;
    pctx_t p = {doc, file, err, errlen, 0, NULL};
    bool null = node->type == YAML_SCALAR_NODE && !config_yaml_is_text(node);
    if (node->type != YAML_SEQUENCE_NODE && !null) {
        if (err != NULL && errlen > 0)
            snprintf(err, errlen, "%s:%lu: filters: expected a list of rules", file,
                     config_yaml_line(node));
        return FILTER_E_INVALID;
    }
    size_t n = null ? 0 : (size_t)(node->data.sequence.items.top - node->data.sequence.items.start);
    if (n > FILTER_MAX_RULES) {
        if (err != NULL && errlen > 0)
            snprintf(err, errlen, "%s:%lu: filters: more than %d rules", file,
                     config_yaml_line(node), FILTER_MAX_RULES);
        return FILTER_E_INVALID;
    }
    filter_set_t *fs = calloc(1, sizeof *fs);
    if (fs != NULL) fs->rules = calloc(n > 0 ? n : 1, sizeof *fs->rules);
    if (fs == NULL || fs->rules == NULL) {
        free(fs);
        if (err != NULL && errlen > 0) snprintf(err, errlen, "%s: out of memory", file);
        return FILTER_E_NOMEM;
    }
    for (size_t i = 0; i < n; i++) {
        yaml_node_t *item = yaml_document_get_node(doc, node->data.sequence.items.start[i]);
        p.index = i + 1;
        p.name = NULL;
        int rc = item != NULL ? parse_rule(&p, item, fs)
                              : pfail(&p, FILTER_E_INVALID, node, "missing node");
        if (rc != FILTER_OK) {
            filter_set_free(fs);
            return rc;
        }
    }
    *out = fs;
    return FILTER_OK;
}

/* ---- reference ---- */

void filter_print_reference(FILE *out)
{
    fputs(
        "\n## Filter rules (`filters:`)\n\n"
        "A list of rules applied in order to every valid event after normalization and before\n"
        "dedup and encoding (SPEC §5). Every rule has a `name` (1..64 of `[A-Za-z0-9_.-]`, "
        "unique)\n"
        "and exactly one action. The first `drop`/`allow`/`sample` that filters an event out ends\n"
        "its processing; it is counted in the answer's `filtered` and never reaches Kafka.\n\n"
        "```yaml\n"
        "filters:\n"
        "  - {name: no_bots,      drop: {user_agent: [\"*bot*\", \"*crawler*\", \"*spider*\"]}}\n"
        "  - {name: no_debug,     drop: {event: \"debug.*\"}}\n"
        "  - {name: internal,     drop: {property: {\"context.traits.email\": "
        "\"*@ourcompany.com\"}}}\n"
        "  - {name: only_web,     allow: {type: [track, page]}}\n"
        "  - {name: heartbeats,   sample: {event: \"Heartbeat\", keep: 0.1}}\n"
        "  - {name: scrub_pii,    strip: [properties.email, traits.phone, context.ip]}\n"
        "  - {name: pseudonymize, hash: [traits.email], key_env: SLUICE_HASH_KEY}\n"
        "```\n\n"
        "| action | value | effect |\n"
        "| --- | --- | --- |\n"
        "| `drop` | MATCH | matching events are filtered out |\n"
        "| `allow` | MATCH | events that do NOT match are filtered out |\n"
        "| `sample` | MATCH plus `keep: F` (0..1) | of the matching events (all events when no "
        "condition is given), those of users whose sampling value is ≥ F are filtered out |\n"
        "| `strip` | list of PATHs | removes these keys from the record |\n"
        "| `hash` | list of PATHs, plus `key_env: VAR` on the rule | replaces these values by a "
        "HMAC-SHA256 |\n\n"
        "**MATCH** is a mapping of conditions; all given conditions must hold, and a list matches "
        "when any of its patterns does:\n\n"
        "- `type`: an event type or a list of them (`track`, `identify`, `group`, `page`, "
        "`screen`, `alias`);\n"
        "- `event`: pattern(s) for the event name of `track` calls (other types never match);\n"
        "- `user_agent`: pattern(s) for `context.userAgent`, ASCII case-insensitive;\n"
        "- `property`: a mapping `PATH: pattern(s)`; the value at PATH (strings as they are, "
        "numbers in decimal, `true`/`false`, `null`) must match. A missing value or an object "
        "never matches.\n\n"
        "**Patterns** are globs over the whole value, case-sensitive (except `user_agent`): `*` "
        "any run of bytes, `?` one UTF-8 character, `[abc]`, `[a-z]`, `[!a-z]` (or `[^a-z]`) one "
        "byte of (not of) the set, `\\` makes the next character literal. A pattern without "
        "these is an exact match.\n\n"
        "**PATHs** are dotted from the event's top level (`properties.plan`, "
        "`context.traits.email`); a key that contains a dot cannot be named. `context.*` paths "
        "see the batch-level context when the event has none, as the record does. `strip` and "
        "`hash` paths must name a key inside `properties`, `traits` or `context`.\n\n"
        "**Sampling** is consistent per user: the sampling value is XXH3-64 of `userId` (else "
        "`anonymousId`) with a fixed seed, mapped to [0, 1); an event is kept when that value is "
        "below `keep`, so a user is kept or dropped whole, across requests, collectors and "
        "restarts, and a user kept at 0.1 is also kept at 0.2.\n\n"
        "**Hashing** replaces a value by `\"hmac-sha256:\"` followed by 64 lowercase hex "
        "digits: HMAC-SHA256 (OpenSSL) under the key held by the environment variable `key_env` "
        "(its bytes as they are; it must be set and hold at least 16 bytes, else the config is "
        "refused with the file and line of the rule). The input is the value's string form as "
        "above; objects and arrays are hashed over their msgpack encoding; `null` stays `null`. "
        "The same value and key always give the same output, so hashed values still join. "
        "HMAC-SHA256 is a real MAC: without the key a pseudonym can neither be reversed nor "
        "forged, short of trying every candidate value *with* the key, so treat the key as a "
        "secret and use a random one (`openssl rand -hex 32`). An output can be checked with "
        "`printf %s VALUE | openssl dgst -sha256 -hmac \"$SLUICE_HASH_KEY\"`. The variable is "
        "read whenever the config loads, but a running process's environment is fixed at start, "
        "so a new key needs a restart (or a reload whose `key_env` names another variable that "
        "was already set at start); a new key changes every output.\n\n"
        "**Metrics**: `sluice_filter_events_total{rule=\"NAME\",action=\"drop|allow|sample|strip|"
        "hash\"}` counts the events each rule filtered out (drop, allow, sample) or modified "
        "(strip, hash); `sluice_events_filtered_total` counts all filtered events. Counters of a "
        "rule that keeps its name and action survive a reload.\n\n"
        "**Reload**: `SIGHUP` re-reads the `--config` file and re-applies the same command-line "
        "flags. A file that fails to load or validate is refused with a logged reason "
        "(`config_reload_failed`) and the running rules stay. On success the new `filters` and "
        "`log_level` take effect for requests that start afterwards; requests in flight finish "
        "with the rules they started with; no connection is dropped. Other changed keys are "
        "logged (`config_reload_restart_required`) and need a restart.\n",
        out);
}

/* ---- the config section (config_yaml.h): slot is config_t.filters ---- */

static int section_parse(const config_yaml_t *y, yaml_node_t *node, const char *key, void *slot)
{
    (void)key;
    filter_set_t *fs = NULL;
    int rc = filter_parse_yaml(y->doc, node, y->file, &fs, y->err, y->errlen);
    if (rc != FILTER_OK) return rc == FILTER_E_NOMEM ? CONFIG_E_NOMEM : CONFIG_E_INVALID;
    filter_set_t **cur = slot;
    filter_set_free(*cur);
    *cur = fs;
    return CONFIG_OK;
}

static void section_free(void *slot)
{
    filter_set_t **cur = slot;
    filter_set_free(*cur);
    *cur = NULL;
}

/* Filters reload live on SIGHUP: never reported as a change that needs a restart. */
const config_section_t filter_config_section = {section_parse, section_free, NULL};
