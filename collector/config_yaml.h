/*
 * config_yaml.h — what a module needs to parse its own section of the collector's YAML config
 * (h2o's configurators are the model): the section contract the config table calls, and the
 * node and value helpers every parser shares, so a section's errors read like the rest.
 *
 * A section is one key of config.c's table (type CT_SECTION) whose value a module parses: the
 * table names it, gives its place in config_t (the "slot") and points to the module's
 * config_section_t. config.c stays ignorant of the section's types: it calls parse with the
 * key's node, free on config_free, differs on config_diff.
 *
 * Errors: every message is one line "FILE:LINE: key: reason" (config_fail writes it into the
 * caller's err buffer); the return codes are config.h's CONFIG_OK / CONFIG_E_*.
 * No globals, no I/O: safe from any thread on distinct documents.
 */
#ifndef SLUICE_CONFIG_YAML_H
#define SLUICE_CONFIG_YAML_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <yaml.h>

/* The document being loaded and where its errors go. */
typedef struct config_yaml {
    yaml_document_t *doc;
    const char *file;
    char *err;
    size_t errlen;
} config_yaml_t;

typedef struct config_section {
    /* Parses node, the value of the table key `key`, into slot (the key's field of config_t).
     * On success the section's earlier value there is freed and replaced; on failure slot is
     * unchanged and y->err says why. Returns CONFIG_OK or CONFIG_E_INVALID / CONFIG_E_NOMEM. */
    int (*parse)(const config_yaml_t *y, yaml_node_t *node, const char *key, void *slot);
    /* Frees what parse put into slot and clears it. Safe on a cleared slot. */
    void (*free)(void *slot);
    /* True when two loaded values differ (config_diff: what a reload changes). NULL: the section
     * reloads live, so it is never reported as changed. */
    bool (*differs)(const void *a, const void *b);
} config_section_t;

/* 1-based line of a node. */
unsigned long config_yaml_line(const yaml_node_t *n);
/* A scalar's text (NUL-terminated by libyaml). */
const char *config_yaml_text(const yaml_node_t *n);
/* A plain scalar spelled as YAML null ("", ~, null, Null, NULL). */
bool config_yaml_is_null(const yaml_node_t *n);
/* A scalar whose text holds a NUL byte (so C string functions would cut it). */
bool config_yaml_has_nul(const yaml_node_t *n);
/* A scalar usable as text: not null, no NUL byte. n may be NULL (false). */
bool config_yaml_is_text(const yaml_node_t *n);
/* The earlier key of mapping map equal to the key of pair upto, or NULL. */
yaml_node_t *config_yaml_dup_key(yaml_document_t *doc, yaml_node_t *map, yaml_node_pair_t *upto);

/* Checks a mapping's keys: scalars, no duplicates. Returns CONFIG_OK or CONFIG_E_INVALID with
 * "FILE:LINE: name: ..." in y->err. */
int config_yaml_map_keys(const config_yaml_t *y, yaml_node_t *map, const char *name);

/* Value parsers: NULL on success (*out set), else the reason as a phrase for the message. */
const char *config_parse_u64(const char *s, uint64_t *out);  /* decimal digits only */
const char *config_parse_size(const char *s, uint64_t *out); /* 512KiB: B KB KiB MB MiB GB GiB */
const char *config_parse_duration(const char *s, uint64_t *out); /* 10s in ms: ms s m h d */
/* A name that appears in JSON and metric labels: 1..max of [A-Za-z0-9_.-]. */
bool config_name_ok(const char *s, size_t max);

/* Writes the formatted message into err (when err != NULL) and returns code. */
__attribute__((format(printf, 4, 5))) int config_fail(int code, char *err, size_t errlen,
                                                      const char *fmt, ...);

#endif
