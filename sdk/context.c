/*
 * context.c — the default context: what Segment/PostHog/Amplitude SDKs attach to every event
 * (library, app, os, locale, timezone). It is encoded once, at client creation, into the batch
 * envelope's "context" (SPEC §2); the collector merges it into each event's context, the event's
 * own keys winning. So it costs nothing per call and a few hundred bytes per batch.
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
static int put_str(writer_buf_t *b, const char *key, const char *str, uint32_t *count)
{
    if (!str || !*str) return 0;
    (*count)++;
    int rc = writer_cstr(b, key);
    return rc ? rc : writer_str(b, str, strlen(str));
}

/* A nested {name, version} map under key, when either is set. */
static int put_name_version(writer_buf_t *b, const char *key, const char *name, const char *version,
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

    writer_buf_t b;
    writer_buf_init_fixed(&b, c->ctx_enc, sizeof c->ctx_enc);
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
