/*
 * config.c — the collector's configuration (contract in config.h, keys in SPEC §7).
 *
 * One table (config_keys.c) describes every key: its dotted YAML path, type, place in config_t,
 * bounds, default (spelled exactly as a user would write it in YAML, and parsed by the same code
 * as user input, so a default can never be out of its own bounds) and doc. This file gives the
 * defaults, loads YAML, checks the whole, and reads CLI flags from it; config_doc.c prints
 * --help and collector/CONFIG.md from it.
 *
 * YAML is read with libyaml's document API so that every node carries its line; every error is
 * one line "FILE:LINE: key: reason" (CLI errors: "--flag: reason").
 */
#include "config_internal.h"

#include <arpa/inet.h>
#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <yaml.h>

#include "config_yaml.h"
#include "filter.h"
#include "log.h"
#include "tls.h"

#define KiB 1024.0
#define MiB (1024.0 * 1024.0)
#define GiB (1024.0 * 1024.0 * 1024.0)

const char *config_strerror(int err)
{
    switch (err) {
#define CONFIG_X_STR(name, val, msg)                                                               \
    case val:                                                                                      \
        return msg;
        CONFIG_ERRORS(CONFIG_X_STR)
#undef CONFIG_X_STR
    default:
        return "unknown error";
    }
}

const config_key_t *config__key_find(const char *name)
{
    for (size_t i = 0; i < config__n_keys; i++)
        if (strcmp(config__key_tab[i].name, name) == 0) return &config__key_tab[i];
    return NULL;
}

/* True when name is a section: some key is "name.<something>". */
static bool key_is_section(const char *name)
{
    size_t n = strlen(name);
    for (size_t i = 0; i < config__n_keys; i++)
        if (strncmp(config__key_tab[i].name, name, n) == 0 && config__key_tab[i].name[n] == '.')
            return true;
    return false;
}

static void *field(config_t *c, const config_key_t *k)
{
    return (char *)c + k->offset;
}

static void free_write_keys(config_write_key_t *wk, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        if (wk[i].key != NULL) /* wipe secrets before handing the memory back */
            memset(wk[i].key, 0, strlen(wk[i].key));
        free(wk[i].key);
        free(wk[i].source);
    }
    free(wk);
}

static void free_properties(config_kv_t *kv, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        free(kv[i].key);
        free(kv[i].value);
    }
    free(kv);
}

/* ---- scalar parsing: each returns NULL on success or a reason (static or in why[]) ---- */

static const char *parse_bool(const char *s, bool *out)
{
    static const char *const yes[] = {"true", "True", "TRUE", "yes", "Yes", "on", "On"};
    static const char *const no[] = {"false", "False", "FALSE", "no", "No", "off", "Off"};
    for (size_t i = 0; i < sizeof yes / sizeof yes[0]; i++) {
        if (strcmp(s, yes[i]) == 0) {
            *out = true;
            return NULL;
        }
        if (strcmp(s, no[i]) == 0) {
            *out = false;
            return NULL;
        }
    }
    return "expected true or false";
}

/* Index of s in "a|b|c", or -1. */
/* Index of s among the '|'-separated values, where "a/b" are two spellings of one value
 * (log_level "warn/warning", matching log_level_parse()); -1 when absent. */
static int enum_index(const char *values, const char *s)
{
    size_t n = strlen(s);
    int i = 0;
    for (const char *p = values; *p; i++) {
        const char *bar = strchr(p, '|');
        const char *end = bar ? bar : p + strlen(p);
        for (const char *q = p; q < end;) {
            const char *slash = memchr(q, '/', (size_t)(end - q));
            const char *qe = slash ? slash : end;
            if ((size_t)(qe - q) == n && strncmp(q, s, n) == 0) return i;
            q = slash ? slash + 1 : end;
        }
        if (bar == NULL) break;
        p = bar + 1;
    }
    return -1;
}

static void store_uint(void *dst, size_t width, uint64_t v)
{
    if (width == sizeof(uint32_t)) {
        uint32_t v32 = (uint32_t)v;
        memcpy(dst, &v32, sizeof v32);
    } else {
        memcpy(dst, &v, sizeof v);
    }
}

void config__format_bound(const config_key_t *k, double v, char *out, size_t outlen)
{
    if (k->type == CT_SIZE && v >= GiB && fmod(v, GiB) == 0)
        snprintf(out, outlen, "%.0fGiB", v / GiB);
    else if (k->type == CT_SIZE && v >= MiB && fmod(v, MiB) == 0)
        snprintf(out, outlen, "%.0fMiB", v / MiB);
    else if (k->type == CT_SIZE && v >= KiB && fmod(v, KiB) == 0)
        snprintf(out, outlen, "%.0fKiB", v / KiB);
    else if (k->type == CT_SIZE)
        snprintf(out, outlen, "%.0fB", v);
    else if (k->type == CT_DURATION && v >= 86400000 && fmod(v, 86400000) == 0)
        snprintf(out, outlen, "%.0fd", v / 86400000);
    else if (k->type == CT_DURATION && v >= 3600000 && fmod(v, 3600000) == 0)
        snprintf(out, outlen, "%.0fh", v / 3600000);
    else if (k->type == CT_DURATION && v >= 60000 && fmod(v, 60000) == 0)
        snprintf(out, outlen, "%.0fm", v / 60000);
    else if (k->type == CT_DURATION && v >= 1000 && fmod(v, 1000) == 0)
        snprintf(out, outlen, "%.0fs", v / 1000);
    else if (k->type == CT_DURATION && v != 0)
        snprintf(out, outlen, "%.0fms", v);
    else
        snprintf(out, outlen, "%.15g", v);
}

/*
 * Sets scalar key k from text s. On failure returns CONFIG_E_INVALID (or E_NOMEM) with a reason
 * in why and leaves the field unchanged. is_null: the YAML value was null/empty.
 */
static int set_scalar(config_t *c, const config_key_t *k, const char *s, bool is_null,
                      config_why_t *why)
{
    void *dst = field(c, k);
    const char *reason = NULL;
    uint64_t u = 0;
    double d = 0;
    why->text[0] = '\0';

    if (is_null && k->type != CT_STRING) {
        snprintf(why->text, sizeof why->text, "needs a value");
        return CONFIG_E_INVALID;
    }
    switch (k->type) {
    case CT_STRING: {
        char *copy = NULL;
        if (!is_null && (copy = strdup(s)) == NULL) {
            snprintf(why->text, sizeof why->text, "out of memory");
            return CONFIG_E_NOMEM;
        }
        char **sp = dst;
        free(*sp);
        *sp = copy;
        return CONFIG_OK;
    }
    case CT_BOOL: {
        bool b;
        if ((reason = parse_bool(s, &b)) != NULL) break;
        memcpy(dst, &b, sizeof b);
        return CONFIG_OK;
    }
    case CT_ENUM: {
        int i = enum_index(k->values, s);
        if (i < 0) {
            snprintf(why->text, sizeof why->text, "expected one of %s", k->values);
            return CONFIG_E_INVALID;
        }
        memcpy(dst, &i, sizeof i);
        return CONFIG_OK;
    }
    case CT_DOUBLE: {
        char *end = NULL;
        errno = 0;
        d = strtod(s, &end);
        if (end == s || *end != '\0' || errno != 0 || !isfinite(d)) {
            reason = "expected a number";
            break;
        }
        if (d < k->min || d > k->max) goto out_of_bounds;
        memcpy(dst, &d, sizeof d);
        return CONFIG_OK;
    }
    case CT_UINT:
        reason = config_parse_u64(s, &u);
        break;
    case CT_SIZE:
        reason = config_parse_size(s, &u);
        break;
    case CT_DURATION:
        reason = config_parse_duration(s, &u);
        break;
    default:
        reason = "not a scalar key";
        break;
    }
    if (reason != NULL) {
        snprintf(why->text, sizeof why->text, "%s", reason);
        return CONFIG_E_INVALID;
    }
    d = (double)u;
    if (d < k->min || d > k->max) goto out_of_bounds;
    store_uint(dst, k->width, u);
    return CONFIG_OK;

out_of_bounds : {
    char lo[32], hi[32];
    config__format_bound(k, k->min, lo, sizeof lo);
    config__format_bound(k, k->max, hi, sizeof hi);
    snprintf(why->text, sizeof why->text, "%s is out of range %s..%s", s, lo, hi);
    return CONFIG_E_INVALID;
}
}

void config_init(config_t *c)
{
    memset(c, 0, sizeof *c);
    for (size_t i = 0; i < config__n_keys; i++) {
        const config_key_t *k = &config__key_tab[i];
        config_why_t why;
        /* Defaults are checked by the unit tests; a failure here (out of memory for a string)
         * leaves the field NULL, which config_validate reports. */
        if (k->def != NULL && k->type != CT_ENV) (void)set_scalar(c, k, k->def, false, &why);
    }
}

void config_free(config_t *c)
{
    if (c == NULL) return;
    for (size_t i = 0; i < config__n_keys; i++) {
        const config_key_t *k = &config__key_tab[i];
        if (k->type == CT_STRING) {
            char **sp = field(c, k);
            if (*sp != NULL && k->offset == offsetof(config_t, admin_token))
                memset(*sp, 0, strlen(*sp));
            free(*sp);
            *sp = NULL;
        }
    }
    free_write_keys(c->write_keys, c->n_write_keys);
    c->write_keys = NULL;
    c->n_write_keys = 0;
    free_properties(c->kafka_properties, c->n_kafka_properties);
    c->kafka_properties = NULL;
    c->n_kafka_properties = 0;
    for (size_t i = 0; i < config__n_keys; i++)
        if (config__key_tab[i].type == CT_SECTION)
            config__section(&config__key_tab[i], NULL)->free(field(c, &config__key_tab[i]));
    tls_ctx_free(c->tls_ctx);
    c->tls_ctx = NULL;
    free(c->config_file);
    c->config_file = NULL;
}

static bool str_differs(const char *a, const char *b)
{
    return (a == NULL) != (b == NULL) || (a != NULL && strcmp(a, b) != 0);
}

void config_diff(const config_t *a, const config_t *b, void (*fn)(const char *key, void *ud),
                 void *ud)
{
    for (size_t i = 0; i < config__n_keys; i++) {
        const config_key_t *k = &config__key_tab[i];
        const void *fa = (const char *)a + k->offset, *fb = (const char *)b + k->offset;
        bool differs = false;
        switch (k->type) {
        case CT_ENV: /* an alias of admin_token, compared there */
            break;
        case CT_SECTION: /* the owner says; a live section (differs NULL) never "changed" */
            differs = config__section(k, NULL)->differs != NULL &&
                      config__section(k, NULL)->differs(fa, fb);
            break;
        case CT_STRING:
            differs = str_differs(*(char *const *)fa, *(char *const *)fb);
            break;
        case CT_WRITE_KEYS:
            differs = a->n_write_keys != b->n_write_keys;
            for (size_t j = 0; !differs && j < a->n_write_keys; j++)
                differs = str_differs(a->write_keys[j].key, b->write_keys[j].key) ||
                          str_differs(a->write_keys[j].source, b->write_keys[j].source);
            break;
        case CT_PROPERTIES:
            differs = a->n_kafka_properties != b->n_kafka_properties;
            for (size_t j = 0; !differs && j < a->n_kafka_properties; j++)
                differs = str_differs(a->kafka_properties[j].key, b->kafka_properties[j].key) ||
                          str_differs(a->kafka_properties[j].value, b->kafka_properties[j].value);
            break;
        case CT_BOOL:
        case CT_UINT:
        case CT_DOUBLE:
        case CT_SIZE:
        case CT_DURATION:
        case CT_ENUM:
            differs = memcmp(fa, fb, k->width) != 0;
            break;
        default: /* a structured section: its owner adds a comparison when it matters */
            break;
        }
        if (differs) fn(k->name, ud);
    }
}

/* ---- validation helpers shared by YAML and CLI ---- */

static const char *write_key_problem(const char *k)
{
    size_t n = strlen(k);
    if (n == 0) return "write key is empty";
    if (n > CONFIG_KEY_MAX_LEN) return "write key longer than 256 characters";
    for (size_t i = 0; i < n; i++) {
        unsigned char ch = (unsigned char)k[i];
        if (ch <= 0x20 || ch >= 0x7F || ch == ':')
            return "write key must be visible ASCII characters without ':' or spaces";
    }
    return NULL;
}

/* ---- YAML ---- */

typedef struct yctx {
    yaml_document_t *doc;
    const char *file;
    config_t *c;
    char *err;
    size_t errlen;
    int admin_token_line, admin_env_line;
} yctx_t;

/* Checks a mapping's keys: strings, no duplicates. */
static int check_map_keys(yctx_t *y, yaml_node_t *map, const char *name)
{
    config_yaml_t cy = {y->doc, y->file, y->err, y->errlen};
    return config_yaml_map_keys(&cy, map, name);
}

static int env_value(yctx_t *y, const yaml_node_t *v, const char *name, const char **out)
{
    if (v->type != YAML_SCALAR_NODE || config_yaml_is_null(v) || config_yaml_has_nul(v))
        return config_fail(CONFIG_E_INVALID, y->err, y->errlen,
                           "%s:%lu: %s: expected the name of an environment variable", y->file,
                           config_yaml_line(v), name);
    const char *val = getenv(config_yaml_text(v));
    if (val == NULL)
        return config_fail(CONFIG_E_INVALID, y->err, y->errlen,
                           "%s:%lu: %s: environment variable %s is not set", y->file,
                           config_yaml_line(v), name, config_yaml_text(v));
    if (val[0] == '\0')
        return config_fail(CONFIG_E_INVALID, y->err, y->errlen,
                           "%s:%lu: %s: environment variable %s is empty", y->file,
                           config_yaml_line(v), name, config_yaml_text(v));
    *out = val;
    return CONFIG_OK;
}

static int yaml_write_keys(yctx_t *y, yaml_node_t *seq)
{
    const char *name = "write_keys";
    if (seq->type != YAML_SEQUENCE_NODE)
        return config_fail(CONFIG_E_INVALID, y->err, y->errlen,
                           "%s:%lu: %s: expected a list of {key: ..., source: ...}", y->file,
                           config_yaml_line(seq), name);
    size_t n = (size_t)(seq->data.sequence.items.top - seq->data.sequence.items.start);
    if (n > CONFIG_MAX_WRITE_KEYS)
        return config_fail(CONFIG_E_INVALID, y->err, y->errlen, "%s:%lu: %s: more than %d keys",
                           y->file, config_yaml_line(seq), name, CONFIG_MAX_WRITE_KEYS);
    config_write_key_t *wk = calloc(n ? n : 1, sizeof *wk);
    unsigned long *lines = calloc(n ? n : 1, sizeof *lines);
    if (wk == NULL || lines == NULL) {
        free(wk);
        free(lines);
        return config_fail(CONFIG_E_NOMEM, y->err, y->errlen, "%s: out of memory", y->file);
    }
    int rc = CONFIG_OK;
    size_t i = 0;
    for (; i < n && rc == CONFIG_OK; i++) {
        yaml_node_t *item = yaml_document_get_node(y->doc, seq->data.sequence.items.start[i]);
        lines[i] = config_yaml_line(item);
        if (item->type != YAML_MAPPING_NODE) {
            rc = config_fail(CONFIG_E_INVALID, y->err, y->errlen,
                             "%s:%lu: %s: expected {key: ..., source: ...}", y->file, lines[i],
                             name);
            break;
        }
        if ((rc = check_map_keys(y, item, name)) != CONFIG_OK) break;
        const char *key = NULL, *source = "default";
        for (yaml_node_pair_t *p = item->data.mapping.pairs.start;
             p < item->data.mapping.pairs.top && rc == CONFIG_OK; p++) {
            yaml_node_t *k = yaml_document_get_node(y->doc, p->key);
            yaml_node_t *v = yaml_document_get_node(y->doc, p->value);
            const char *kn = config_yaml_text(k);
            bool is_key = strcmp(kn, "key") == 0, is_env = strcmp(kn, "key_env") == 0;
            if (!is_key && !is_env && strcmp(kn, "source") != 0) {
                rc = config_fail(CONFIG_E_INVALID, y->err, y->errlen,
                                 "%s:%lu: %s: unknown key \"%s\" (expected key, key_env or source)",
                                 y->file, config_yaml_line(k), name, kn);
            } else if ((is_key || is_env) && key != NULL) {
                rc = config_fail(CONFIG_E_INVALID, y->err, y->errlen,
                                 "%s:%lu: %s: key and key_env are exclusive", y->file,
                                 config_yaml_line(k), name);
            } else if (is_env) {
                rc = env_value(y, v, "write_keys.key_env", &key);
            } else if (v->type != YAML_SCALAR_NODE || config_yaml_is_null(v) ||
                       config_yaml_has_nul(v)) {
                rc = config_fail(CONFIG_E_INVALID, y->err, y->errlen,
                                 "%s:%lu: %s: %s needs a string", y->file, config_yaml_line(v),
                                 name, kn);
            } else if (is_key) {
                key = config_yaml_text(v);
                if (y->c->inline_secret_line == 0) y->c->inline_secret_line = config_yaml_line(v);
            } else {
                source = config_yaml_text(v);
                if (!config_name_ok(source, CONFIG_SOURCE_MAX_LEN))
                    rc = config_fail(CONFIG_E_INVALID, y->err, y->errlen,
                                     "%s:%lu: %s: source must be 1..64 of [A-Za-z0-9_.-]", y->file,
                                     config_yaml_line(v), name);
            }
        }
        if (rc != CONFIG_OK) break;
        if (key == NULL) {
            rc = config_fail(CONFIG_E_INVALID, y->err, y->errlen,
                             "%s:%lu: %s: entry needs key or key_env", y->file, lines[i], name);
            break;
        }
        const char *problem = write_key_problem(key);
        if (problem != NULL) {
            rc = config_fail(CONFIG_E_INVALID, y->err, y->errlen, "%s:%lu: %s: %s", y->file,
                             lines[i], name, problem);
            break;
        }
        for (size_t j = 0; j < i; j++) {
            if (strcmp(wk[j].key, key) == 0) {
                /* The key itself is a secret: name the lines, not the key. */
                rc = config_fail(CONFIG_E_INVALID, y->err, y->errlen,
                                 "%s:%lu: %s: duplicate write key (same as line %lu)", y->file,
                                 lines[i], name, lines[j]);
                break;
            }
        }
        if (rc != CONFIG_OK) break;
        wk[i].key = strdup(key);
        wk[i].source = strdup(source);
        if (wk[i].key == NULL || wk[i].source == NULL) {
            i++;
            rc = config_fail(CONFIG_E_NOMEM, y->err, y->errlen, "%s: out of memory", y->file);
            break;
        }
    }
    free(lines);
    if (rc != CONFIG_OK) {
        free_write_keys(wk, n);
        return rc;
    }
    free_write_keys(y->c->write_keys, y->c->n_write_keys);
    y->c->write_keys = wk;
    y->c->n_write_keys = n;
    return CONFIG_OK;
}

static int yaml_properties(yctx_t *y, yaml_node_t *map, const char *name)
{
    if (map->type != YAML_MAPPING_NODE)
        return config_fail(CONFIG_E_INVALID, y->err, y->errlen,
                           "%s:%lu: %s: expected a map of librdkafka property: value", y->file,
                           config_yaml_line(map), name);
    int rc = check_map_keys(y, map, name);
    if (rc != CONFIG_OK) return rc;
    size_t n = (size_t)(map->data.mapping.pairs.top - map->data.mapping.pairs.start);
    if (n > CONFIG_MAX_PROPERTIES)
        return config_fail(CONFIG_E_INVALID, y->err, y->errlen,
                           "%s:%lu: %s: more than %d properties", y->file, config_yaml_line(map),
                           name, CONFIG_MAX_PROPERTIES);
    config_kv_t *kv = calloc(n ? n : 1, sizeof *kv);
    if (kv == NULL)
        return config_fail(CONFIG_E_NOMEM, y->err, y->errlen, "%s: out of memory", y->file);
    for (size_t i = 0; i < n && rc == CONFIG_OK; i++) {
        yaml_node_pair_t *p = &map->data.mapping.pairs.start[i];
        yaml_node_t *k = yaml_document_get_node(y->doc, p->key);
        yaml_node_t *v = yaml_document_get_node(y->doc, p->value);
        if (config_yaml_text(k)[0] == '\0' || config_yaml_has_nul(k)) {
            rc = config_fail(CONFIG_E_INVALID, y->err, y->errlen, "%s:%lu: %s: empty property name",
                             y->file, config_yaml_line(k), name);
        } else if (v->type != YAML_SCALAR_NODE || config_yaml_is_null(v) ||
                   config_yaml_has_nul(v)) {
            rc = config_fail(CONFIG_E_INVALID, y->err, y->errlen,
                             "%s:%lu: %s.%s: expected a string, number or boolean", y->file,
                             config_yaml_line(v), name, config_yaml_text(k));
        } else {
            kv[i].key = strdup(config_yaml_text(k));
            kv[i].value = strdup(config_yaml_text(v));
            if (kv[i].key == NULL || kv[i].value == NULL)
                rc = config_fail(CONFIG_E_NOMEM, y->err, y->errlen, "%s: out of memory", y->file);
        }
    }
    if (rc != CONFIG_OK) {
        free_properties(kv, n);
        return rc;
    }
    free_properties(y->c->kafka_properties, y->c->n_kafka_properties);
    y->c->kafka_properties = kv;
    y->c->n_kafka_properties = n;
    return CONFIG_OK;
}

static int yaml_key(yctx_t *y, const config_key_t *k, yaml_node_t *key, yaml_node_t *v)
{
    switch (k->type) {
    case CT_WRITE_KEYS:
        return yaml_write_keys(y, v);
    case CT_PROPERTIES:
        return yaml_properties(y, v, k->name);
    case CT_SECTION: {
        config_yaml_t cy = {y->doc, y->file, y->err, y->errlen};
        return config__section(k, NULL)->parse(&cy, v, k->name, field(y->c, k));
    }
    case CT_ENV: {
        const char *val = NULL;
        int rc = env_value(y, v, k->name, &val);
        if (rc != CONFIG_OK) return rc;
        y->admin_env_line = (int)config_yaml_line(key);
        config_why_t why;
        rc = set_scalar(y->c, config__key_find("admin_token"), val, false, &why);
        if (rc != CONFIG_OK)
            return config_fail(rc, y->err, y->errlen, "%s:%lu: %s: %s", y->file,
                               config_yaml_line(v), k->name, why.text);
        break;
    }
    default: {
        if (v->type != YAML_SCALAR_NODE)
            return config_fail(CONFIG_E_INVALID, y->err, y->errlen,
                               "%s:%lu: %s: expected a single value", y->file, config_yaml_line(v),
                               k->name);
        if (config_yaml_has_nul(v))
            return config_fail(CONFIG_E_INVALID, y->err, y->errlen,
                               "%s:%lu: %s: contains a NUL byte", y->file, config_yaml_line(v),
                               k->name);
        config_why_t why;
        int rc = set_scalar(y->c, k, config_yaml_text(v), config_yaml_is_null(v), &why);
        if (rc != CONFIG_OK)
            return config_fail(rc, y->err, y->errlen, "%s:%lu: %s: %s", y->file,
                               config_yaml_line(v), k->name, why.text);
        if (strcmp(k->name, "admin_token") == 0) {
            y->admin_token_line = (int)config_yaml_line(key);
            if (!config_yaml_is_null(v) && y->c->inline_secret_line == 0)
                y->c->inline_secret_line = config_yaml_line(v);
        }
        break;
    }
    }
    if (y->admin_token_line && y->admin_env_line)
        return config_fail(
            CONFIG_E_INVALID, y->err, y->errlen,
            "%s:%lu: %s: admin_token and admin_token_env are exclusive (other at line %d)", y->file,
            config_yaml_line(key), k->name,
            k->type == CT_ENV ? y->admin_token_line : y->admin_env_line);
    return CONFIG_OK;
}

/* Applies every pair of mapping map, whose dotted path is prefix ("" at the top). */
static int yaml_map(yctx_t *y, yaml_node_t *map, const char *prefix)
{
    int rc = check_map_keys(y, map, prefix[0] ? prefix : "config");
    if (rc != CONFIG_OK) return rc;
    for (yaml_node_pair_t *p = map->data.mapping.pairs.start; p < map->data.mapping.pairs.top;
         p++) {
        yaml_node_t *k = yaml_document_get_node(y->doc, p->key);
        yaml_node_t *v = yaml_document_get_node(y->doc, p->value);
        const char *kn = config_yaml_text(k);
        char name[CONFIG_NAME_MAX];
        int len = snprintf(name, sizeof name, "%s%s%s", prefix, prefix[0] ? "." : "", kn);
        bool name_ok = len > 0 && (size_t)len < sizeof name && strchr(kn, '.') == NULL &&
                       kn[0] != '\0' && !config_yaml_has_nul(k);
        if (name_ok && prefix[0] == '\0') {
            for (size_t i = 0; config__unsupported_tab[i] != NULL; i++)
                if (strcmp(kn, config__unsupported_tab[i]) == 0)
                    return config_fail(
                        CONFIG_E_INVALID, y->err, y->errlen,
                        "%s:%lu: %s: not supported by this version of sluice-collector", y->file,
                        config_yaml_line(k), kn);
        }
        const config_key_t *key = name_ok ? config__key_find(name) : NULL;
        if (key != NULL) {
            rc = yaml_key(y, key, k, v);
        } else if (name_ok && key_is_section(name)) {
            if (v->type != YAML_MAPPING_NODE)
                return config_fail(CONFIG_E_INVALID, y->err, y->errlen,
                                   "%s:%lu: %s: expected a mapping", y->file, config_yaml_line(v),
                                   name);
            rc = yaml_map(y, v, name);
        } else {
            return config_fail(CONFIG_E_INVALID, y->err, y->errlen, "%s:%lu: %s%s%s: unknown key",
                               y->file, config_yaml_line(k), prefix, prefix[0] ? "." : "", kn);
        }
        if (rc != CONFIG_OK) return rc;
    }
    return CONFIG_OK;
}

int config_load_file(config_t *c, const char *path, char *err, size_t errlen)
{
    FILE *f = fopen(path, "rb");
    if (f == NULL)
        return config_fail(CONFIG_E_IO, err, errlen, "%s: cannot open: %s", path, strerror(errno));
    yaml_parser_t parser;
    yaml_document_t doc;
    if (!yaml_parser_initialize(&parser)) {
        fclose(f);
        return config_fail(CONFIG_E_NOMEM, err, errlen, "%s: out of memory", path);
    }
    yaml_parser_set_input_file(&parser, f);
    int rc = CONFIG_OK;
    if (!yaml_parser_load(&parser, &doc)) {
        rc = config_fail(parser.error == YAML_MEMORY_ERROR ? CONFIG_E_NOMEM : CONFIG_E_INVALID, err,
                         errlen, "%s:%lu: YAML: %s%s%s", path,
                         (unsigned long)parser.problem_mark.line + 1,
                         parser.problem ? parser.problem : "syntax error",
                         parser.context ? " " : "", parser.context ? parser.context : "");
        yaml_parser_delete(&parser);
        fclose(f);
        return rc;
    }
    yaml_node_t *root = yaml_document_get_root_node(&doc);
    if (root != NULL) {
        yctx_t y = {&doc, path, c, err, errlen, 0, 0};
        if (root->type == YAML_MAPPING_NODE)
            rc = yaml_map(&y, root, "");
        else if (!(root->type == YAML_SCALAR_NODE && config_yaml_is_null(root)))
            rc = config_fail(CONFIG_E_INVALID, err, errlen,
                             "%s:%lu: the top level must be a mapping", path,
                             config_yaml_line(root));
    }
    yaml_document_delete(&doc);
    if (rc == CONFIG_OK) {
        /* A second document would be silently ignored; say so instead. */
        yaml_document_t next;
        if (!yaml_parser_load(&parser, &next)) {
            rc = config_fail(CONFIG_E_INVALID, err, errlen, "%s:%lu: YAML: %s", path,
                             (unsigned long)parser.problem_mark.line + 1,
                             parser.problem ? parser.problem : "syntax error");
        } else {
            yaml_node_t *r2 = yaml_document_get_root_node(&next);
            if (r2 != NULL)
                rc = config_fail(CONFIG_E_INVALID, err, errlen,
                                 "%s:%lu: only one YAML document is allowed", path,
                                 config_yaml_line(r2));
            yaml_document_delete(&next);
        }
    }
    yaml_parser_delete(&parser);
    fclose(f);
    return rc;
}

/* ---- validation ---- */

int config_listen_addr(const config_t *c, char *host, size_t hostlen, int *port)
{
    return config_addr_parse(c->listen, host, hostlen, port);
}

int config_addr_parse(const char *s, char *host, size_t hostlen, int *port)
{
    if (s == NULL || host == NULL || hostlen == 0) return CONFIG_E_INVALID;
    const char *h, *colon;
    size_t hl;
    int family;
    if (s[0] == '[') {
        const char *close = strchr(s, ']');
        if (close == NULL || close[1] != ':') return CONFIG_E_INVALID;
        h = s + 1;
        hl = (size_t)(close - h);
        colon = close + 1;
        family = AF_INET6;
    } else {
        colon = strrchr(s, ':');
        if (colon == NULL || memchr(s, ':', (size_t)(colon - s)) != NULL) return CONFIG_E_INVALID;
        h = s;
        hl = (size_t)(colon - s);
        family = AF_INET;
    }
    char buf[64];
    if (hl == 0 || hl >= sizeof buf) return CONFIG_E_INVALID;
    memcpy(buf, h, hl);
    buf[hl] = '\0';
    /* Only numeric addresses (and "localhost"): resolving a name would mean DNS at start-up and
     * an address that depends on it. */
    if (family == AF_INET && strcmp(buf, "localhost") == 0) snprintf(buf, sizeof buf, "127.0.0.1");
    unsigned char addr[16];
    if (inet_pton(family, buf, addr) != 1) return CONFIG_E_INVALID;
    uint64_t p;
    if (colon[1] == '\0' || strlen(colon + 1) > 5 || config_parse_u64(colon + 1, &p) != NULL ||
        p > 65535)
        return CONFIG_E_INVALID;
    if (strlen(buf) >= hostlen) return CONFIG_E_INVALID;
    memcpy(host, buf, strlen(buf) + 1);
    if (port) *port = (int)p;
    return CONFIG_OK;
}

/* public_url: a scheme, a non-empty host and an optional path, nothing a JSON string or a URL
 * would read differently (so the settings document can carry it as is). */
static bool public_url_ok(const char *u)
{
    size_t skip = strncmp(u, "http://", 7) == 0 ? 7 : strncmp(u, "https://", 8) == 0 ? 8 : 0;
    if (skip == 0 || u[skip] == '\0' || u[skip] == '/' || strlen(u) > 512) return false;
    for (const char *p = u + skip; *p != '\0'; p++)
        if (*p <= ' ' || *p >= 0x7f || *p == '"' || *p == '\\' || *p == '?' || *p == '#')
            return false;
    return true;
}

int config_validate(const config_t *c, char *err, size_t errlen)
{
    char host[64];
    int port;
    if (config_listen_addr(c, host, sizeof host, &port) != CONFIG_OK)
        return config_fail(CONFIG_E_INVALID, err, errlen,
                           "listen: \"%s\" is not IPV4:PORT, [IPV6]:PORT or localhost:PORT",
                           c->listen ? c->listen : "");
    if (c->admin_listen != NULL) {
        char ahost[64];
        int aport;
        if (config_addr_parse(c->admin_listen, ahost, sizeof ahost, &aport) != CONFIG_OK)
            return config_fail(
                CONFIG_E_INVALID, err, errlen,
                "admin_listen: \"%s\" is not IPV4:PORT, [IPV6]:PORT or localhost:PORT",
                c->admin_listen);
        bool wild = strcmp(host, "0.0.0.0") == 0 || strcmp(host, "::") == 0 ||
                    strcmp(ahost, "0.0.0.0") == 0 || strcmp(ahost, "::") == 0;
        if (aport != 0 && aport == port && (wild || strcmp(host, ahost) == 0))
            return config_fail(CONFIG_E_INVALID, err, errlen,
                               "admin_listen: \"%s\" is the listen address; the admin listener "
                               "needs its own",
                               c->admin_listen);
    }
    if ((c->tls_cert_file != NULL) != (c->tls_key_file != NULL))
        return config_fail(CONFIG_E_INVALID, err, errlen,
                           "tls: needs both cert_file and key_file (%s is missing)",
                           c->tls_cert_file == NULL ? "tls.cert_file" : "tls.key_file");
    if (c->threads < 1 || c->threads > 64)
        return config_fail(CONFIG_E_INVALID, err, errlen, "threads: %u is out of range 1..64",
                           c->threads);
    if (c->n_write_keys == 0 && !c->dev)
        return config_fail(CONFIG_E_INVALID, err, errlen,
                           "no write key configured (use --write-key or write_keys, or --dev)");
    for (size_t i = 0; i < c->n_write_keys; i++) {
        const char *problem = write_key_problem(c->write_keys[i].key);
        if (problem != NULL)
            return config_fail(CONFIG_E_INVALID, err, errlen, "write key %zu: %s", i + 1, problem);
        if (!config_name_ok(c->write_keys[i].source, CONFIG_SOURCE_MAX_LEN))
            return config_fail(CONFIG_E_INVALID, err, errlen,
                               "write key %zu: source must be 1..64 of [A-Za-z0-9_.-]", i + 1);
        for (size_t j = 0; j < i; j++)
            if (strcmp(c->write_keys[i].key, c->write_keys[j].key) == 0)
                return config_fail(CONFIG_E_INVALID, err, errlen,
                                   "write key %zu: duplicate of write key %zu", i + 1, j + 1);
    }
    if (c->public_url != NULL && !public_url_ok(c->public_url))
        return config_fail(CONFIG_E_INVALID, err, errlen,
                           "public_url: \"%s\" is not http[s]://HOST[:PORT][/PREFIX] (visible "
                           "ASCII, no quotes, backslashes, '?' or '#')",
                           c->public_url);
    if (c->event_bytes > c->body_bytes)
        return config_fail(CONFIG_E_INVALID, err, errlen,
                           "limits.event_bytes (%llu) must not exceed limits.body_bytes (%llu)",
                           (unsigned long long)c->event_bytes, (unsigned long long)c->body_bytes);
    /* Every loop's decompression buffer plus room for large bodies beside them. */
    uint64_t min_body_memory = 2 * ((uint64_t)c->threads + 1) * c->body_bytes;
    if (c->body_memory < min_body_memory)
        return config_fail(CONFIG_E_INVALID, err, errlen,
                           "limits.body_memory (%llu) must be at least 2 x (threads + 1) x "
                           "limits.body_bytes (%llu)",
                           (unsigned long long)c->body_memory, (unsigned long long)min_body_memory);
    if (c->data_dir == NULL || c->data_dir[0] == '\0')
        return config_fail(CONFIG_E_INVALID, err, errlen, "data_dir: must not be empty");
    const char *topics[] = {c->topic_events,    c->topic_rejected,       c->topic_pql,
                            c->topic_changelog, c->topic_events_deduped, c->topic_identities};
    const char *tnames[] = {
        "kafka.topics.events",    "kafka.topics.rejected",       "kafka.topics.pql",
        "kafka.topics.changelog", "kafka.topics.events_deduped", "kafka.topics.identities"};
    for (int i = 0; i < (int)(sizeof topics / sizeof topics[0]); i++) {
        if (topics[i] == NULL || topics[i][0] == '\0')
            return config_fail(CONFIG_E_INVALID, err, errlen, "%s: must not be empty", tnames[i]);
        for (int j = 0; j < i; j++)
            if (strcmp(topics[i], topics[j]) == 0)
                return config_fail(CONFIG_E_INVALID, err, errlen, "%s: same topic as %s", tnames[i],
                                   tnames[j]);
    }
    int prc = pql_config_validate(&c->pql, err, errlen);
    if (prc != CONFIG_OK) return prc;
    if (c->log_level < LOG_DEBUG || c->log_level > LOG_OFF ||
        (c->kafka_format != 0 && c->kafka_format != 1) ||
        (c->pql_mode != CONFIG_PQL_LOCAL && c->pql_mode != CONFIG_PQL_STREAM))
        return config_fail(CONFIG_E_INVALID, err, errlen,
                           "log_level, kafka.format or pql.mode out of range");
    return CONFIG_OK;
}

/* ---- command line ---- */

static const config_flag_t *flag_find(const char *arg, size_t len)
{
    for (size_t i = 0; i < config__n_flags; i++)
        if (strlen(config__flag_tab[i].flag) == len &&
            strncmp(config__flag_tab[i].flag, arg, len) == 0)
            return &config__flag_tab[i];
    if (len == 2 && strncmp(arg, "-h", 2) == 0) return flag_find("--help", 6);
    return NULL;
}

/* Splits argv[*i] into its flag and value (from "--f=v" or the next argument). */
static int next_flag(int argc, char **argv, int *i, const config_flag_t **flag, const char **val,
                     char *err, size_t errlen)
{
    const char *a = argv[*i];
    if (a[0] != '-')
        return config_fail(CONFIG_E_INVALID, err, errlen, "unexpected argument \"%s\"", a);
    const char *eq = strchr(a, '=');
    size_t len = eq ? (size_t)(eq - a) : strlen(a);
    const config_flag_t *f = flag_find(a, len);
    if (f == NULL)
        return config_fail(CONFIG_E_INVALID, err, errlen, "%.*s: unknown option (see --help)",
                           (int)len, a);
    *flag = f;
    *val = NULL;
    if (f->arg == NULL) {
        if (eq != NULL)
            return config_fail(CONFIG_E_INVALID, err, errlen, "%s: takes no value", f->flag);
    } else if (eq != NULL) {
        *val = eq + 1;
    } else if (*i + 1 < argc) {
        *val = argv[++*i];
    } else {
        return config_fail(CONFIG_E_INVALID, err, errlen, "%s: needs a value %s", f->flag, f->arg);
    }
    return CONFIG_OK;
}

/* --write-key KEY[=SOURCE]: split at the last '=' when a valid source name follows it. */
static int add_cli_write_key(config_t *c, const char *val, char *err, size_t errlen)
{
    if (c->n_write_keys >= CONFIG_MAX_WRITE_KEYS)
        return config_fail(CONFIG_E_INVALID, err, errlen, "--write-key: more than %d keys",
                           CONFIG_MAX_WRITE_KEYS);
    const char *eq = strrchr(val, '=');
    size_t klen = strlen(val);
    const char *source = "default";
    if (eq != NULL && eq != val && config_name_ok(eq + 1, CONFIG_SOURCE_MAX_LEN)) {
        klen = (size_t)(eq - val);
        source = eq + 1;
    }
    char *key = strndup(val, klen);
    char *src = strdup(source);
    config_write_key_t *wk = realloc(c->write_keys, (c->n_write_keys + 1) * sizeof *wk);
    if (key == NULL || src == NULL || wk == NULL) {
        free(key);
        free(src);
        if (wk != NULL) c->write_keys = wk;
        return config_fail(CONFIG_E_NOMEM, err, errlen, "--write-key: out of memory");
    }
    c->write_keys = wk;
    const char *problem = write_key_problem(key);
    if (problem != NULL) {
        free(key);
        free(src);
        return config_fail(CONFIG_E_INVALID, err, errlen, "--write-key: %s", problem);
    }
    wk[c->n_write_keys++] = (config_write_key_t){key, src};
    return CONFIG_OK;
}

int config_from_args(config_t *c, int argc, char **argv, config_action_t *action, char *err,
                     size_t errlen)
{
    config_init(c);
    *action = CONFIG_RUN;
    const char *config_file = NULL;
    bool check = false;
    int rc;

    /* Pass 1: syntax of every flag, --help/--version, and which file to read. */
    for (int i = 1; i < argc; i++) {
        const config_flag_t *f;
        const char *val;
        if ((rc = next_flag(argc, argv, &i, &f, &val, err, errlen)) != CONFIG_OK) return rc;
        if (strcmp(f->flag, "--help") == 0) {
            *action = CONFIG_HELP;
            return CONFIG_OK;
        }
        if (strcmp(f->flag, "--version") == 0) {
            *action = CONFIG_VERSION;
            return CONFIG_OK;
        }
        if (strcmp(f->flag, "--config") == 0) {
            if (config_file != NULL)
                return config_fail(CONFIG_E_INVALID, err, errlen, "--config: given more than once");
            config_file = val;
        }
        if (strcmp(f->flag, "--check-config") == 0) check = true;
    }
    if (config_file != NULL && (c->config_file = strdup(config_file)) == NULL)
        return config_fail(CONFIG_E_NOMEM, err, errlen, "out of memory");
    if (config_file != NULL && (rc = config_load_file(c, config_file, err, errlen)) != CONFIG_OK)
        return rc;

    /* Pass 2: the flags override the file, in order. */
    bool cli_keys = false;
    for (int i = 1; i < argc; i++) {
        const config_flag_t *f;
        const char *val;
        if ((rc = next_flag(argc, argv, &i, &f, &val, err, errlen)) != CONFIG_OK) return rc;
        if (strcmp(f->flag, "--write-key") == 0) {
            if (!cli_keys) {
                free_write_keys(c->write_keys, c->n_write_keys);
                c->write_keys = NULL;
                c->n_write_keys = 0;
                cli_keys = true;
            }
            if ((rc = add_cli_write_key(c, val, err, errlen)) != CONFIG_OK) return rc;
            c->cli_secret_flag = "--write-key";
            continue;
        }
        if (f->key == NULL) continue;
        if (strcmp(f->key, "admin_token") == 0) c->cli_secret_flag = "--admin-token";
        const config_key_t *k = config__key_find(f->key);
        config_why_t why;
        rc = set_scalar(c, k, val ? val : "true", false, &why);
        if (rc != CONFIG_OK) return config_fail(rc, err, errlen, "%s: %s", f->flag, why.text);
    }
    if ((rc = config_validate(c, err, errlen)) != CONFIG_OK) return rc;
    if (c->tls_cert_file != NULL) {
        rc = tls_ctx_new(c->tls_cert_file, c->tls_key_file, &c->tls_ctx, err, errlen);
        if (rc != TLS_OK) return rc == TLS_E_NOMEM ? CONFIG_E_NOMEM : CONFIG_E_INVALID;
    }
    *action = check ? CONFIG_CHECK : CONFIG_RUN;
    return CONFIG_OK;
}

int config__set_scalar(config_t *c, const config_key_t *k, const char *s, bool is_null,
                       config_why_t *why)
{
    return set_scalar(c, k, s, is_null, why);
}
