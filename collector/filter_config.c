/*
 * filter_config.c — the `filters:` config section: YAML → compiled rules (filter_parse_yaml), the
 * rules' reference text (filter_print_reference, CONFIG.md) and the section's registration
 * (contract in filter.h; compiled form in filter_internal.h).
 */
#include "filter_internal.h"

#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "config.h"

/* ---- YAML ---- */

static bool seg_is(const fseg_t *s, const char *lit, uint32_t n)
{
    return s->len == n && memcmp(s->p, lit, n) == 0;
}

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
