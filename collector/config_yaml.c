/*
 * config_yaml.c — the YAML node and value helpers every config section shares (config_yaml.h).
 */
#include "config_yaml.h"

#include "config.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

int config_fail(int code, char *err, size_t errlen, const char *fmt, ...)
{
    if (err != NULL && errlen > 0) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(err, errlen, fmt, ap);
        va_end(ap);
    }
    return code;
}

const char *config_parse_u64(const char *s, uint64_t *out)
{
    if (*s < '0' || *s > '9') return "expected a non-negative integer";
    uint64_t v = 0;
    for (; *s >= '0' && *s <= '9'; s++) {
        unsigned d = (unsigned)(*s - '0');
        if (v > (UINT64_MAX - d) / 10) return "number too large";
        v = v * 10 + d;
    }
    if (*s != '\0') return "expected a non-negative integer";
    *out = v;
    return NULL;
}

/* "<integer><unit>" with unit one of units[] (multipliers mul[]); unit_required says whether a
 * bare integer is allowed (it then means unit 1; "0" is always allowed). */
static const char *parse_with_unit(const char *s, const char *const *units, const uint64_t *mul,
                                   size_t nunits, bool unit_required, uint64_t *out)
{
    const char *p = s;
    uint64_t v = 0;
    if (*p < '0' || *p > '9') return "expected a number";
    for (; *p >= '0' && *p <= '9'; p++) {
        unsigned d = (unsigned)(*p - '0');
        if (v > (UINT64_MAX - d) / 10) return "number too large";
        v = v * 10 + d;
    }
    while (*p == ' ')
        p++;
    if (*p == '\0') {
        if (unit_required && v != 0) return "a unit is required";
        *out = v;
        return NULL;
    }
    for (size_t i = 0; i < nunits; i++) {
        if (strcmp(p, units[i]) == 0) {
            if (v != 0 && v > UINT64_MAX / mul[i]) return "number too large";
            *out = v * mul[i];
            return NULL;
        }
    }
    return "unknown unit";
}

const char *config_parse_size(const char *s, uint64_t *out)
{
    static const char *const units[] = {"B", "KB", "KiB", "MB", "MiB", "GB", "GiB"};
    static const uint64_t mul[] = {1, 1000, 1024, 1000000, 1048576, 1000000000, 1073741824};
    const char *why = parse_with_unit(s, units, mul, 7, false, out);
    return why ? "expected a size such as 512KiB (units B, KB, KiB, MB, MiB, GB, GiB)" : NULL;
}

const char *config_parse_duration(const char *s, uint64_t *out)
{
    static const char *const units[] = {"ms", "s", "m", "h", "d"};
    static const uint64_t mul[] = {1, 1000, 60000, 3600000, 86400000};
    const char *why = parse_with_unit(s, units, mul, 5, true, out);
    return why ? "expected a duration such as 10s (integer with unit ms, s, m, h or d)" : NULL;
}

unsigned long config_yaml_line(const yaml_node_t *n)
{
    return (unsigned long)n->start_mark.line + 1;
}

bool config_yaml_is_null(const yaml_node_t *n)
{
    if (n->data.scalar.style != YAML_PLAIN_SCALAR_STYLE) return false;
    const char *v = (const char *)n->data.scalar.value;
    return v[0] == '\0' || strcmp(v, "~") == 0 || strcmp(v, "null") == 0 ||
           strcmp(v, "Null") == 0 || strcmp(v, "NULL") == 0;
}

const char *config_yaml_text(const yaml_node_t *n)
{
    return (const char *)n->data.scalar.value;
}

bool config_yaml_has_nul(const yaml_node_t *n)
{
    return strlen(config_yaml_text(n)) != n->data.scalar.length;
}

/* Finds an earlier pair of the mapping with the same scalar key; returns its node or NULL. */
yaml_node_t *config_yaml_dup_key(yaml_document_t *doc, yaml_node_t *map, yaml_node_pair_t *upto)
{
    yaml_node_t *key = yaml_document_get_node(doc, upto->key);
    for (yaml_node_pair_t *p = map->data.mapping.pairs.start; p < upto; p++) {
        yaml_node_t *k = yaml_document_get_node(doc, p->key);
        if (k != NULL && k->type == YAML_SCALAR_NODE &&
            k->data.scalar.length == key->data.scalar.length &&
            memcmp(k->data.scalar.value, key->data.scalar.value, key->data.scalar.length) == 0)
            return k;
    }
    return NULL;
}

bool config_name_ok(const char *s, size_t max)
{
    size_t n = strlen(s);
    if (n == 0 || n > max) return false;
    for (size_t i = 0; i < n; i++) {
        char ch = s[i];
        if (!((ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') ||
              ch == '_' || ch == '.' || ch == '-'))
            return false;
    }
    return true;
}

/* Write keys travel as a Basic user name or a Bearer token: visible ASCII, no ':'. */

bool config_yaml_is_text(const yaml_node_t *n)
{
    return n != NULL && n->type == YAML_SCALAR_NODE && !config_yaml_is_null(n) &&
           !config_yaml_has_nul(n);
}

int config_yaml_map_keys(const config_yaml_t *y, yaml_node_t *map, const char *name)
{
    for (yaml_node_pair_t *p = map->data.mapping.pairs.start; p < map->data.mapping.pairs.top;
         p++) {
        yaml_node_t *k = yaml_document_get_node(y->doc, p->key);
        if (k == NULL || k->type != YAML_SCALAR_NODE)
            return config_fail(CONFIG_E_INVALID, y->err, y->errlen,
                               "%s:%lu: %s: keys must be strings", y->file,
                               k ? config_yaml_line(k) : config_yaml_line(map), name);
        yaml_node_t *prev = config_yaml_dup_key(y->doc, map, p);
        if (prev != NULL)
            return config_fail(CONFIG_E_INVALID, y->err, y->errlen,
                               "%s:%lu: %s: duplicate key \"%s\" (first at line %lu)", y->file,
                               config_yaml_line(k), name, config_yaml_text(k),
                               config_yaml_line(prev));
    }
    return CONFIG_OK;
}
