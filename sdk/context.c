/*
 * context.c — the default context: what Segment/PostHog/Amplitude SDKs attach to every event
 * (library, app, os, locale, timezone). It is encoded once, at client creation, into the batch
 * envelope's "context" (SPEC §2), which the collector gives every event without a context of its
 * own: nothing per call, a few hundred bytes per batch. An event that has its own context gets
 * the default keys it lacks appended at the call (sdk_context_merge; its own keys win), so the
 * defaults reach every event whatever the server does with the envelope.
 */
#include "internal.h"

#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/utsname.h>
#include <unistd.h>

/* The default-context strings of a config, in ctx_strs order. */
static void config_strs(const sluice_config *cfg, const char *out[6])
{
    out[0] = cfg->library_name;
    out[1] = cfg->library_version;
    out[2] = cfg->app_name;
    out[3] = cfg->app_version;
    out[4] = cfg->locale;
    out[5] = cfg->timezone;
}

int sdk_context_check(const sluice_config *cfg)
{
    const char *strs[6];
    config_strs(cfg, strs);
    for (int i = 0; i < 6; i++) {
        if (!strs[i]) continue;
        size_t n = strlen(strs[i]);
        /* library name/version may not be empty: they identify the sender. */
        if (n > SDK_CTX_STR_MAX || (i < 2 && n == 0)) return SLUICE_E_INVAL;
        if (!base_utf8_valid(strs[i], n)) return SLUICE_E_UTF8;
    }
    return SLUICE_OK;
}

/* "en_US.UTF-8" -> "en-US"; "C" / "POSIX" / unset -> "" (absent). */
static void detect_locale(char *out, size_t size)
{
    const char *v = NULL;
    static const char *const vars[] = {"LC_ALL", "LC_MESSAGES", "LANG"};
    for (size_t i = 0; i < 3 && !v; i++) {
        const char *e = getenv(vars[i]);
        if (e && *e) v = e;
    }
    out[0] = '\0';
    if (!v || !strcmp(v, "C") || !strcmp(v, "POSIX") || !strncmp(v, "C.", 2)) return;
    size_t n = 0;
    for (; v[n] && v[n] != '.' && v[n] != '@' && n + 1 < size && n < 32; n++) {
        char ch = v[n] == '_' ? '-' : v[n];
        if (!isalnum((unsigned char)ch) && ch != '-') {
            out[0] = '\0';
            return;
        }
        out[n] = ch;
    }
    out[n] = '\0';
}

/* An IANA zone name: TZ (without a leading ':'), /etc/timezone, or /etc/localtime's target. */
static void detect_timezone(char *out, size_t size)
{
    out[0] = '\0';
    const char *tz = getenv("TZ");
    if (tz && *tz) {
        if (*tz == ':') tz++;
        if (!strncmp(tz, "/usr/share/zoneinfo/", 20)) tz += 20;
        snprintf(out, size, "%s", tz);
    } else {
        FILE *f = fopen("/etc/timezone", "re");
        if (f) {
            if (!fgets(out, (int)size, f)) out[0] = '\0';
            fclose(f);
            out[strcspn(out, "\r\n \t")] = '\0';
        }
        if (!out[0]) {
            char link[512];
            ssize_t n = readlink("/etc/localtime", link, sizeof link - 1);
            if (n > 0) {
                link[n] = '\0';
                const char *z = strstr(link, "zoneinfo/");
                if (z) snprintf(out, size, "%s", z + 9);
            }
        }
    }
    if (!base_utf8_valid(out, strlen(out))) out[0] = '\0';
}

/* Appends "key": str when str is set and not empty; counts it. */
static int put_str(base_buf_t *b, const char *key, const char *str, uint32_t *count)
{
    if (!str || !*str) return 0;
    (*count)++;
    int rc = writer_cstr(b, key);
    return rc ? rc : writer_str(b, str, strlen(str));
}

/* A nested {name, version} map under key, when either is set. */
static int put_name_version(base_buf_t *b, const char *key, const char *name, const char *version,
                            uint32_t *count)
{
    if ((!name || !*name) && (!version || !*version)) return 0;
    (*count)++;
    size_t pos;
    uint32_t n = 0;
    int rc = writer_cstr(b, key);
    if (!rc) rc = writer_map_open(b, &pos);
    if (!rc) rc = put_str(b, "name", name, &n);
    if (!rc) rc = put_str(b, "version", version, &n);
    if (!rc) writer_close(b, pos, n);
    return rc;
}

int sdk_context_encode(sluice_client *c)
{
    const sluice_config *cfg = &c->cfg;
    char locale[40], tz[SDK_CTX_STR_MAX + 1];
    const char *loc = cfg->locale, *zone = cfg->timezone;
    if (!loc) {
        detect_locale(locale, sizeof locale);
        loc = locale;
    }
    if (!zone) {
        detect_timezone(tz, sizeof tz);
        zone = tz;
    }
    struct utsname u;
    bool have_os = uname(&u) == 0;
    char os_name[SDK_CTX_STR_MAX + 1] = "", os_version[SDK_CTX_STR_MAX + 1] = "";
    if (have_os) {
        snprintf(os_name, sizeof os_name, "%s", u.sysname);
        snprintf(os_version, sizeof os_version, "%s", u.release);
        if (!base_utf8_valid(os_name, strlen(os_name))) os_name[0] = '\0';
        if (!base_utf8_valid(os_version, strlen(os_version))) os_version[0] = '\0';
    }

    base_buf_t b;
    base_buf_init_fixed(&b, c->ctx_enc, sizeof c->ctx_enc);
    size_t pos;
    uint32_t n = 0;
    int rc = writer_map_open(&b, &pos);
    if (!rc)
        rc = put_name_version(&b, "library", cfg->library_name ? cfg->library_name : "sluice-c",
                              cfg->library_version ? cfg->library_version : SLUICE_VERSION_STRING,
                              &n);
    if (!rc) rc = put_name_version(&b, "app", cfg->app_name, cfg->app_version, &n);
    if (!rc) rc = put_name_version(&b, "os", os_name, os_version, &n);
    if (!rc) rc = put_str(&b, "locale", loc, &n);
    if (!rc) rc = put_str(&b, "timezone", zone, &n);
    if (rc) return SLUICE_E_NOMEM; /* cannot happen: every string is bounded (SDK_ENVELOPE_MAX) */
    writer_close(&b, pos, n);
    c->ctx_len = b.len;
    return SLUICE_OK;
}

/* ---- merging the default context into an event's own context ---- */

static uint32_t rd_be(const unsigned char *p, int n)
{
    uint32_t v = 0;
    for (int i = 0; i < n; i++)
        v = v << 8 | p[i];
    return v;
}

/* Length of the msgpack value at p[0..n), as the writer encodes them; 0 if malformed. */
static size_t mp_skip(const unsigned char *p, size_t n, int depth)
{
    if (n == 0 || depth > 32) return 0;
    unsigned char t = p[0];
    size_t head = 1, body = 0, items = 0;
    if (t <= 0x7f || t >= 0xe0 || t == 0xc0 || t == 0xc2 || t == 0xc3) {
        return 1;
    } else if (t >= 0xa0 && t <= 0xbf) {
        body = t & 0x1f;
    } else if (t >= 0x80 && t <= 0x8f) {
        items = 2u * (t & 0x0f);
    } else if (t >= 0x90 && t <= 0x9f) {
        items = t & 0x0f;
    } else {
        switch (t) {
        case 0xcc:
        case 0xd0:
            body = 1;
            break;
        case 0xcd:
        case 0xd1:
            body = 2;
            break;
        case 0xca:
        case 0xce:
        case 0xd2:
            body = 4;
            break;
        case 0xcb:
        case 0xcf:
        case 0xd3:
            body = 8;
            break;
        case 0xd9:
        case 0xda:
        case 0xdb: {
            int w = t == 0xd9 ? 1 : t == 0xda ? 2 : 4;
            if (n < 1u + (size_t)w) return 0;
            head += (size_t)w;
            body = rd_be(p + 1, w);
            break;
        }
        case 0xdc:
        case 0xdd:
        case 0xde:
        case 0xdf: {
            int w = t == 0xdc || t == 0xde ? 2 : 4;
            if (n < 1u + (size_t)w) return 0;
            head += (size_t)w;
            items = rd_be(p + 1, w) * (t >= 0xde ? 2u : 1u);
            break;
        }
        default:
            return 0;
        }
    }
    if (head + body > n) return 0;
    size_t off = head + body;
    for (size_t i = 0; i < items; i++) {
        size_t l = mp_skip(p + off, n - off, depth + 1);
        if (!l) return 0;
        off += l;
    }
    return off;
}

/* A map's entry count and where its entries start. False if p is not a map. */
static bool map_head(const unsigned char *p, size_t n, uint32_t *count, size_t *head)
{
    if (n >= 1 && p[0] >= 0x80 && p[0] <= 0x8f) {
        *count = p[0] & 0x0f;
        *head = 1;
    } else if (n >= 3 && p[0] == 0xde) {
        *count = rd_be(p + 1, 2);
        *head = 3;
    } else if (n >= 5 && p[0] == 0xdf) {
        *count = rd_be(p + 1, 4);
        *head = 5;
    } else {
        return false;
    }
    return true;
}

/* The string at p (a key): its bytes and length. False if not a string. */
static bool str_at(const unsigned char *p, size_t n, const unsigned char **s, size_t *len)
{
    size_t l = mp_skip(p, n, 0);
    if (!l) return false;
    if (p[0] >= 0xa0 && p[0] <= 0xbf) {
        *s = p + 1;
    } else if (p[0] == 0xd9 || p[0] == 0xda || p[0] == 0xdb) {
        *s = p + 1 + (p[0] == 0xd9 ? 1 : p[0] == 0xda ? 2 : 4);
    } else {
        return false;
    }
    *len = l - (size_t)(*s - p);
    return true;
}

/* True when the map entries at p[0..n) (count of them) have the key k[0..klen). */
static bool has_key(const unsigned char *p, size_t n, uint32_t count, const unsigned char *k,
                    size_t klen)
{
    size_t off = 0;
    for (uint32_t i = 0; i < count; i++) {
        const unsigned char *s;
        size_t sl, kl = mp_skip(p + off, n - off, 0);
        if (!kl || !str_at(p + off, n - off, &s, &sl)) return false;
        if (sl == klen && !memcmp(s, k, klen)) return true;
        off += kl;
        size_t vl = mp_skip(p + off, n - off, 0);
        if (!vl) return false;
        off += vl;
    }
    return false;
}

int sdk_context_merge(const sluice_client *c, const void *ctx, size_t len, char **out,
                      size_t *out_len)
{
    *out = NULL;
    const unsigned char *e = ctx, *d = (const unsigned char *)c->ctx_enc;
    uint32_t ne, nd;
    size_t he, hd;
    if (!map_head(e, len, &ne, &he) || !map_head(d, c->ctx_len, &nd, &hd)) return SLUICE_OK;
    if (mp_skip(e, len, 0) != len) return SLUICE_OK; /* not one map: the collector decides */
    /* The default entries the event's context lacks, in order (at most the 5 we write). */
    size_t keep_off[8], keep_len[8], extra = 0;
    uint32_t nkeep = 0;
    size_t off = hd;
    for (uint32_t i = 0; i < nd && nkeep < 8; i++) {
        const unsigned char *k;
        size_t kl;
        size_t kspan = mp_skip(d + off, c->ctx_len - off, 0);
        if (!kspan || !str_at(d + off, c->ctx_len - off, &k, &kl)) return SLUICE_OK;
        size_t vspan = mp_skip(d + off + kspan, c->ctx_len - off - kspan, 0);
        if (!vspan) return SLUICE_OK;
        if (!has_key(e + he, len - he, ne, k, kl)) {
            keep_off[nkeep] = off;
            keep_len[nkeep] = kspan + vspan;
            extra += kspan + vspan;
            nkeep++;
        }
        off += kspan + vspan;
    }
    if (!nkeep) return SLUICE_OK;
    size_t total = 5 + (len - he) + extra;
    unsigned char *m = malloc(total);
    if (!m) return SLUICE_E_NOMEM;
    uint32_t count = ne + nkeep;
    m[0] = 0xdf;
    m[1] = (unsigned char)(count >> 24);
    m[2] = (unsigned char)(count >> 16);
    m[3] = (unsigned char)(count >> 8);
    m[4] = (unsigned char)count;
    memcpy(m + 5, e + he, len - he);
    size_t w = 5 + (len - he);
    for (uint32_t i = 0; i < nkeep; i++) {
        memcpy(m + w, d + keep_off[i], keep_len[i]);
        w += keep_len[i];
    }
    *out = (char *)m;
    *out_len = total;
    return SLUICE_OK;
}
