/*
 * pql_config.h — PQL's section of the collector's config (SPEC §6): the pql.* settings, the
 * tiers and the rules as loaded. pql_config.c parses pql.tiers and pql.rules itself (they are
 * sections of config.c's table, see config_yaml.h), so a new metric touches only this module and
 * the scoring in pql_score.c. Rules are compiled by pql_new(), not here.
 */
#ifndef SLUICE_PQL_CONFIG_H
#define SLUICE_PQL_CONFIG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "config_yaml.h"

/* pql: section (SPEC §6). Rules and tiers are validated at load (names unique, thresholds set,
 * velocity periods a multiple of the bucket and shorter than the window). */
typedef enum {
    PQL_METRIC_ACTIVE_USERS = 0,
    PQL_METRIC_EVENTS,
    PQL_METRIC_EVENTS_VELOCITY,
    PQL_METRIC_USERS_VELOCITY,
    PQL_METRIC_ACTIVE_DAYS,
    PQL_METRIC_EVENT_SEEN,
} pql_metric_t;

#define PQL_CONFIG_MAX_RULES  64
#define PQL_CONFIG_MAX_TIERS  16
#define PQL_CONFIG_MAX_EVENTS 32 /* event names of one rule */

typedef struct pql_config_rule {
    char *name;
    int metric;         /* pql_metric_t */
    double at_least;    /* threshold; event_seen: 1 */
    uint32_t points;    /* added to the score while the rule holds */
    uint32_t recent_ms; /* *_velocity: the recent period (default 24h) */
    double min_recent;  /* *_velocity: the recent count must reach this too (default 0) */
    char **events;      /* events / events_velocity / event_seen: names (NULL: all events) */
    size_t n_events;
} pql_config_rule_t;

typedef struct pql_config_tier {
    char *name;
    uint32_t threshold;
} pql_config_tier_t;

typedef struct pql_config {
    uint32_t window_ms, bucket_ms, late_ms, snapshot_interval_ms;
    uint64_t max_accounts;
    uint64_t queue_bytes;     /* records waiting for PQL's feeder thread (pql.queue_bytes) */
    pql_config_tier_t *tiers; /* highest threshold first */
    size_t n_tiers;
    pql_config_rule_t *rules; /* in file order; PQL is on when n_rules > 0 */
    size_t n_rules;
} pql_config_t;

/* The sections config.c's table points pql.tiers and pql.rules at (slot: the pql_config_t). */
extern const config_section_t pql_config_tiers_section;
extern const config_section_t pql_config_rules_section;

/* Checks what only the whole section can: bucket divides 1d and the window, tiers present when
 * rules are, velocity periods fit. Returns CONFIG_OK or CONFIG_E_INVALID (err says why). */
int pql_config_validate(const pql_config_t *q, char *err, size_t errlen);

#endif
