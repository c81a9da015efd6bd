/*
 * pql_config.c — PQL's own config section (pql_config.h): the pql.tiers and pql.rules parsers,
 * registered with config.c's table as sections, and the cross-key checks of PQL's settings.
 */
#include "pql_config.h"

#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "config.h"

static void free_pql_rules(pql_config_rule_t *r, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        free(r[i].name);
        for (size_t j = 0; j < r[i].n_events; j++)
            free(r[i].events[j]);
        free(r[i].events);
    }
    free(r);
}

static void free_pql_tiers(pql_config_tier_t *t, size_t n)
{
    for (size_t i = 0; i < n; i++)
        free(t[i].name);
    free(t);
}

static bool str_differs(const char *a, const char *b)
{
    return (a == NULL) != (b == NULL) || (a != NULL && strcmp(a, b) != 0);
}

static bool pql_rule_differs(const pql_config_rule_t *a, const pql_config_rule_t *b)
{
    if (str_differs(a->name, b->name) || a->metric != b->metric || a->at_least != b->at_least ||
        a->points != b->points || a->recent_ms != b->recent_ms || a->min_recent != b->min_recent ||
        a->n_events != b->n_events)
        return true;
    for (size_t i = 0; i < a->n_events; i++)
        if (str_differs(a->events[i], b->events[i])) return true;
    return false;
}

/* ---- pql: tiers and rules (SPEC §6) ---- */

/* A rule or tier name: 1..64 of [A-Za-z0-9_.-] (it appears in JSON and in metric labels). */
static bool pql_name_ok(const yaml_node_t *v)
{
    return v->type == YAML_SCALAR_NODE && !config_yaml_is_null(v) && !config_yaml_has_nul(v) &&
           config_name_ok(config_yaml_text(v), 64);
}

static int yaml_pql_tiers(const config_yaml_t *y, yaml_node_t *map, const char *name,
                          pql_config_t *q)
{
    if (map->type != YAML_MAPPING_NODE)
        return config_fail(CONFIG_E_INVALID, y->err, y->errlen,
                           "%s:%lu: %s: expected a map of tier name: score threshold", y->file,
                           config_yaml_line(map), name);
    int rc = config_yaml_map_keys(y, map, name);
    if (rc != CONFIG_OK) return rc;
    size_t n = (size_t)(map->data.mapping.pairs.top - map->data.mapping.pairs.start);
    if (n > PQL_CONFIG_MAX_TIERS)
        return config_fail(CONFIG_E_INVALID, y->err, y->errlen, "%s:%lu: %s: more than %d tiers",
                           y->file, config_yaml_line(map), name, PQL_CONFIG_MAX_TIERS);
    pql_config_tier_t *t = calloc(n ? n : 1, sizeof *t);
    if (t == NULL)
        return config_fail(CONFIG_E_NOMEM, y->err, y->errlen, "%s: out of memory", y->file);
    for (size_t i = 0; i < n && rc == CONFIG_OK; i++) {
        yaml_node_pair_t *p = &map->data.mapping.pairs.start[i];
        yaml_node_t *k = yaml_document_get_node(y->doc, p->key);
        yaml_node_t *v = yaml_document_get_node(y->doc, p->value);
        uint64_t th = 0;
        if (!pql_name_ok(k)) {
            rc = config_fail(CONFIG_E_INVALID, y->err, y->errlen,
                             "%s:%lu: %s: tier name must be 1..64 of [A-Za-z0-9_.-]", y->file,
                             config_yaml_line(k), name);
        } else if (strcmp(config_yaml_text(k), "none") == 0) {
            rc = config_fail(CONFIG_E_INVALID, y->err, y->errlen,
                             "%s:%lu: %s: \"none\" is reserved (no tier reached)", y->file,
                             config_yaml_line(k), name);
        } else if (v->type != YAML_SCALAR_NODE || config_yaml_has_nul(v) ||
                   config_parse_u64(config_yaml_text(v), &th) != NULL || th < 1 || th > 1000000) {
            rc = config_fail(CONFIG_E_INVALID, y->err, y->errlen,
                             "%s:%lu: %s.%s: expected a score threshold 1..1000000", y->file,
                             config_yaml_line(v), name, config_yaml_text(k));
        } else {
            for (size_t j = 0; j < i && rc == CONFIG_OK; j++)
                if (t[j].threshold == th)
                    rc = config_fail(CONFIG_E_INVALID, y->err, y->errlen,
                                     "%s:%lu: %s.%s: same threshold as tier %s", y->file,
                                     config_yaml_line(v), name, config_yaml_text(k), t[j].name);
            if (rc == CONFIG_OK) {
                t[i].threshold = (uint32_t)th;
                if ((t[i].name = strdup(config_yaml_text(k))) == NULL)
                    rc = config_fail(CONFIG_E_NOMEM, y->err, y->errlen, "%s: out of memory",
                                     y->file);
            }
        }
    }
    if (rc != CONFIG_OK) {
        free_pql_tiers(t, n);
        return rc;
    }
    /* Highest threshold first: the tier of a score is the first one it reaches. */
    for (size_t i = 1; i < n; i++)
        for (size_t j = i; j > 0 && t[j].threshold > t[j - 1].threshold; j--) {
            pql_config_tier_t tmp = t[j];
            t[j] = t[j - 1];
            t[j - 1] = tmp;
        }
    free_pql_tiers(q->tiers, q->n_tiers);
    q->tiers = t;
    q->n_tiers = n;
    return CONFIG_OK;
}

/* event: "Name" or ["A", "B"] into r->events. */
static int yaml_pql_events(const config_yaml_t *y, yaml_node_t *v, pql_config_rule_t *r,
                           const char *name)
{
    size_t n = 1;
    yaml_node_item_t *items = NULL;
    if (v->type == YAML_SEQUENCE_NODE) {
        items = v->data.sequence.items.start;
        n = (size_t)(v->data.sequence.items.top - items);
    } else if (v->type != YAML_SCALAR_NODE) {
        n = 0;
    }
    if (n < 1 || n > PQL_CONFIG_MAX_EVENTS)
        return config_fail(CONFIG_E_INVALID, y->err, y->errlen,
                           "%s:%lu: %s.event: expected an event name or a list of 1..%d names",
                           y->file, config_yaml_line(v), name, PQL_CONFIG_MAX_EVENTS);
    r->events = calloc(n, sizeof *r->events);
    if (r->events == NULL)
        return config_fail(CONFIG_E_NOMEM, y->err, y->errlen, "%s: out of memory", y->file);
    for (size_t i = 0; i < n; i++) {
        yaml_node_t *e = items ? yaml_document_get_node(y->doc, items[i]) : v;
        size_t len = e->type == YAML_SCALAR_NODE ? e->data.scalar.length : 0;
        if (e->type != YAML_SCALAR_NODE || config_yaml_is_null(e) || config_yaml_has_nul(e) ||
            len < 1 || len > 200)
            return config_fail(CONFIG_E_INVALID, y->err, y->errlen,
                               "%s:%lu: %s.event: an event name is 1..200 bytes", y->file,
                               config_yaml_line(e), name);
        if ((r->events[i] = strdup(config_yaml_text(e))) == NULL)
            return config_fail(CONFIG_E_NOMEM, y->err, y->errlen, "%s: out of memory", y->file);
        r->n_events = i + 1;
    }
    return CONFIG_OK;
}

static int pql_number(const config_yaml_t *y, yaml_node_t *v, const char *rule, const char *key,
                      double max, double *out)
{
    char *end = NULL;
    double d = 0;
    if (v->type == YAML_SCALAR_NODE && !config_yaml_is_null(v) && !config_yaml_has_nul(v)) {
        errno = 0;
        d = strtod(config_yaml_text(v), &end);
    }
    if (end == NULL || end == config_yaml_text(v) || *end != '\0' || errno != 0 || !isfinite(d) ||
        d < 0 || d > max)
        return config_fail(CONFIG_E_INVALID, y->err, y->errlen,
                           "%s:%lu: pql.rules %s: %s: expected a number 0..%.0f", y->file,
                           config_yaml_line(v), rule, key, max);
    *out = d;
    return CONFIG_OK;
}

static int yaml_pql_rule(const config_yaml_t *y, yaml_node_t *item, pql_config_rule_t *r)
{
    static const char *const metrics[] = {"active_users",   "events",      "events_velocity",
                                          "users_velocity", "active_days", "event_seen"};
    const char *name = "pql.rules";
    if (item->type != YAML_MAPPING_NODE)
        return config_fail(CONFIG_E_INVALID, y->err, y->errlen,
                           "%s:%lu: %s: expected {name: ..., metric: ..., ...}", y->file,
                           config_yaml_line(item), name);
    int rc = config_yaml_map_keys(y, item, name);
    if (rc != CONFIG_OK) return rc;
    yaml_node_t *nm = NULL, *metric = NULL, *at_least = NULL, *points = NULL, *recent = NULL,
                *min_recent = NULL, *event = NULL;
    for (yaml_node_pair_t *p = item->data.mapping.pairs.start; p < item->data.mapping.pairs.top;
         p++) {
        yaml_node_t *k = yaml_document_get_node(y->doc, p->key);
        yaml_node_t *v = yaml_document_get_node(y->doc, p->value);
        const char *kn = config_yaml_text(k);
        if (strcmp(kn, "name") == 0)
            nm = v;
        else if (strcmp(kn, "metric") == 0)
            metric = v;
        else if (strcmp(kn, "at_least") == 0)
            at_least = v;
        else if (strcmp(kn, "points") == 0)
            points = v;
        else if (strcmp(kn, "recent") == 0)
            recent = v;
        else if (strcmp(kn, "min_recent") == 0)
            min_recent = v;
        else if (strcmp(kn, "event") == 0)
            event = v;
        else
            return config_fail(CONFIG_E_INVALID, y->err, y->errlen,
                               "%s:%lu: %s: unknown key \"%s\" (expected name, metric, at_least, "
                               "points, recent, min_recent or event)",
                               y->file, config_yaml_line(k), name, kn);
    }
    if (nm == NULL || !pql_name_ok(nm))
        return config_fail(CONFIG_E_INVALID, y->err, y->errlen,
                           "%s:%lu: %s: every rule needs a name of 1..64 [A-Za-z0-9_.-]", y->file,
                           config_yaml_line(nm ? nm : item), name);
    const char *rn = config_yaml_text(nm);
    if ((r->name = strdup(rn)) == NULL)
        return config_fail(CONFIG_E_NOMEM, y->err, y->errlen, "%s: out of memory", y->file);
    r->metric = -1;
    for (int i = 0; metric != NULL && metric->type == YAML_SCALAR_NODE && i < 6; i++)
        if (strcmp(config_yaml_text(metric), metrics[i]) == 0) r->metric = i;
    if (r->metric < 0)
        return config_fail(CONFIG_E_INVALID, y->err, y->errlen,
                           "%s:%lu: %s %s: metric must be one of active_users, events, "
                           "events_velocity, users_velocity, active_days, event_seen",
                           y->file, config_yaml_line(metric ? metric : item), name, rn);
    bool velocity =
        r->metric == PQL_METRIC_EVENTS_VELOCITY || r->metric == PQL_METRIC_USERS_VELOCITY;
    bool seen = r->metric == PQL_METRIC_EVENT_SEEN;
    double pts = 0;
    if (points == NULL)
        return config_fail(CONFIG_E_INVALID, y->err, y->errlen, "%s:%lu: %s %s: points is required",
                           y->file, config_yaml_line(item), name, rn);
    if ((rc = pql_number(y, points, rn, "points", 1000000, &pts)) != CONFIG_OK) return rc;
    if (pts != floor(pts))
        return config_fail(CONFIG_E_INVALID, y->err, y->errlen,
                           "%s:%lu: %s %s: points must be an integer", y->file,
                           config_yaml_line(points), name, rn);
    r->points = (uint32_t)pts;
    if (seen) {
        if (at_least != NULL)
            return config_fail(CONFIG_E_INVALID, y->err, y->errlen,
                               "%s:%lu: %s %s: event_seen takes no at_least", y->file,
                               config_yaml_line(at_least), name, rn);
        r->at_least = 1;
    } else if (at_least == NULL) {
        return config_fail(CONFIG_E_INVALID, y->err, y->errlen,
                           "%s:%lu: %s %s: at_least is required", y->file, config_yaml_line(item),
                           name, rn);
    } else if ((rc = pql_number(y, at_least, rn, "at_least", 1e12, &r->at_least)) != CONFIG_OK) {
        return rc;
    }
    if (!velocity && (recent != NULL || min_recent != NULL))
        return config_fail(CONFIG_E_INVALID, y->err, y->errlen,
                           "%s:%lu: %s %s: recent and min_recent are for *_velocity metrics",
                           y->file, config_yaml_line(recent ? recent : min_recent), name, rn);
    r->recent_ms = 86400000;
    if (recent != NULL) {
        uint64_t ms = 0;
        if (recent->type != YAML_SCALAR_NODE || config_yaml_has_nul(recent) ||
            config_parse_duration(config_yaml_text(recent), &ms) != NULL || ms < 60000 ||
            ms > 30 * 86400000ull)
            return config_fail(CONFIG_E_INVALID, y->err, y->errlen,
                               "%s:%lu: %s %s: recent: expected a duration such as 24h (1m..30d)",
                               y->file, config_yaml_line(recent), name, rn);
        r->recent_ms = (uint32_t)ms;
    }
    if (min_recent != NULL &&
        (rc = pql_number(y, min_recent, rn, "min_recent", 1e12, &r->min_recent)) != CONFIG_OK)
        return rc;
    bool takes_event =
        seen || r->metric == PQL_METRIC_EVENTS || r->metric == PQL_METRIC_EVENTS_VELOCITY;
    if (event != NULL && !takes_event)
        return config_fail(CONFIG_E_INVALID, y->err, y->errlen,
                           "%s:%lu: %s %s: event is for events, events_velocity and event_seen",
                           y->file, config_yaml_line(event), name, rn);
    if (seen && event == NULL)
        return config_fail(CONFIG_E_INVALID, y->err, y->errlen,
                           "%s:%lu: %s %s: event_seen needs event", y->file, config_yaml_line(item),
                           name, rn);
    if (event != NULL) return yaml_pql_events(y, event, r, rn);
    return CONFIG_OK;
}

static int yaml_pql_rules(const config_yaml_t *y, yaml_node_t *seq, const char *name,
                          pql_config_t *q)
{
    if (seq->type != YAML_SEQUENCE_NODE)
        return config_fail(CONFIG_E_INVALID, y->err, y->errlen,
                           "%s:%lu: %s: expected a list of {name: ..., metric: ..., ...}", y->file,
                           config_yaml_line(seq), name);
    size_t n = (size_t)(seq->data.sequence.items.top - seq->data.sequence.items.start);
    if (n > PQL_CONFIG_MAX_RULES)
        return config_fail(CONFIG_E_INVALID, y->err, y->errlen, "%s:%lu: %s: more than %d rules",
                           y->file, config_yaml_line(seq), name, PQL_CONFIG_MAX_RULES);
    pql_config_rule_t *r = calloc(n ? n : 1, sizeof *r);
    if (r == NULL)
        return config_fail(CONFIG_E_NOMEM, y->err, y->errlen, "%s: out of memory", y->file);
    int rc = CONFIG_OK;
    for (size_t i = 0; i < n && rc == CONFIG_OK; i++) {
        yaml_node_t *item = yaml_document_get_node(y->doc, seq->data.sequence.items.start[i]);
        rc = yaml_pql_rule(y, item, &r[i]);
        for (size_t j = 0; j < i && rc == CONFIG_OK; j++)
            if (strcmp(r[i].name, r[j].name) == 0)
                rc = config_fail(CONFIG_E_INVALID, y->err, y->errlen,
                                 "%s:%lu: %s: duplicate rule name \"%s\"", y->file,
                                 config_yaml_line(item), name, r[i].name);
    }
    if (rc != CONFIG_OK) {
        free_pql_rules(r, n);
        return rc;
    }
    free_pql_rules(q->rules, q->n_rules);
    q->rules = r;
    q->n_rules = n;
    return CONFIG_OK;
}

/* ---- the section entry points (config_yaml.h) ---- */

static int tiers_parse(const config_yaml_t *y, yaml_node_t *node, const char *key, void *slot)
{
    return yaml_pql_tiers(y, node, key, slot);
}

static int rules_parse(const config_yaml_t *y, yaml_node_t *node, const char *key, void *slot)
{
    return yaml_pql_rules(y, node, key, slot);
}

static void tiers_free(void *slot)
{
    pql_config_t *q = slot;
    free_pql_tiers(q->tiers, q->n_tiers);
    q->tiers = NULL;
    q->n_tiers = 0;
}

static void rules_free(void *slot)
{
    pql_config_t *q = slot;
    free_pql_rules(q->rules, q->n_rules);
    q->rules = NULL;
    q->n_rules = 0;
}

/* PQL reads its rules and tiers at start-up: a change is reported (it needs a restart). */
static bool tiers_differ(const void *sa, const void *sb)
{
    const pql_config_t *a = sa, *b = sb;
    if (a->n_tiers != b->n_tiers) return true;
    for (size_t j = 0; j < a->n_tiers; j++)
        if (str_differs(a->tiers[j].name, b->tiers[j].name) ||
            a->tiers[j].threshold != b->tiers[j].threshold)
            return true;
    return false;
}

static bool rules_differ(const void *sa, const void *sb)
{
    const pql_config_t *a = sa, *b = sb;
    if (a->n_rules != b->n_rules) return true;
    for (size_t j = 0; j < a->n_rules; j++)
        if (pql_rule_differs(&a->rules[j], &b->rules[j])) return true;
    return false;
}

const config_section_t pql_config_tiers_section = {tiers_parse, tiers_free, tiers_differ};
const config_section_t pql_config_rules_section = {rules_parse, rules_free, rules_differ};

int pql_config_validate(const pql_config_t *q, char *err, size_t errlen)
{
    if (q->bucket_ms == 0 || 86400000u % q->bucket_ms != 0 || q->window_ms % q->bucket_ms != 0)
        return config_fail(CONFIG_E_INVALID, err, errlen,
                           "pql.bucket: must divide 1d and pql.window (%u ms)", q->window_ms);
    if (q->n_rules > 0 && q->n_tiers == 0)
        return config_fail(CONFIG_E_INVALID, err, errlen,
                           "pql.tiers: required when pql.rules is set");
    for (size_t i = 0; i < q->n_rules; i++) {
        const pql_config_rule_t *r = &q->rules[i];
        bool vel =
            r->metric == PQL_METRIC_EVENTS_VELOCITY || r->metric == PQL_METRIC_USERS_VELOCITY;
        if (vel && (r->recent_ms % q->bucket_ms != 0 || r->recent_ms >= q->window_ms))
            return config_fail(CONFIG_E_INVALID, err, errlen,
                               "pql.rules %s: recent must be a multiple of pql.bucket and shorter "
                               "than pql.window",
                               r->name);
    }
    return CONFIG_OK;
}
