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
#include "filter_internal.h"

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

/* Fixed seed of the sampling hash: a user's decision must not change across restarts. */
#define FILTER_SAMPLE_SEED 0x736c75696365ULL /* "sluice" */

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

/* ---- compiled rules (their types: filter_internal.h) ---- */

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
