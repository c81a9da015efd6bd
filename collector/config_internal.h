/*
 * config_internal.h — what config.c keeps to itself, shown to its unit test
 * (tests/collector/test_config.c links the module instead of #including config.c): the shape of
 * the key table and the flag table, and three hooks onto them. Nothing in the collector calls
 * the hooks; the contract is config.h.
 */
#ifndef SLUICE_CONFIG_INTERNAL_H
#define SLUICE_CONFIG_INTERNAL_H

#include <stdbool.h>
#include <stddef.h>

#include "config.h"

typedef enum {
    CT_STRING,
    CT_BOOL,
    CT_UINT,     /* uint32_t or uint64_t, by width */
    CT_DOUBLE,   /* double */
    CT_SIZE,     /* uint64_t bytes; units B KB KiB MB MiB GB GiB */
    CT_DURATION, /* uint32_t milliseconds; units ms s m h d */
    CT_ENUM,     /* int: index into the '|'-separated values */
    CT_ENV,      /* name of an environment variable whose value goes into a string field */
    CT_WRITE_KEYS,
    CT_PROPERTIES,
    CT_SECTION, /* parsed by the module that owns it: key.section (config_yaml.h) */
} config_type_t;

typedef struct config_key {
    const char *name; /* dotted YAML path */
    config_type_t type;
    size_t offset, width; /* of the field in config_t */
    double min, max;      /* numeric types (durations in ms, sizes in bytes) */
    const char *def;      /* default as written in YAML; NULL: unset */
    const char *values;   /* CT_ENUM: "a|b|c"; "b/bee" gives one value two spellings */
    const char *doc;
} config_key_t;

typedef struct config_flag {
    const char *flag;
    const char *arg; /* NULL: takes no value */
    const char *key; /* table key it sets, or NULL for the special flags */
    const char *doc;
} config_flag_t;

/* A reason for a rejected value, written by the scalar parsers. */
typedef struct config_why {
    char text[160];
} config_why_t;

/* The key table (config_keys[] in config.c): *n gets its length. Static storage, never freed. */
const config_key_t *config__keys(size_t *n);
/* The CLI flag table (config_flags[] in config.c): *n gets its length. Static storage. */
const config_flag_t *config__flags(size_t *n);
/* Sets scalar key k of c from text s, as a YAML value or a flag would (set_scalar in config.c).
 * Returns CONFIG_OK, or CONFIG_E_INVALID / CONFIG_E_NOMEM with a reason in why, leaving the
 * field unchanged. is_null: the value was YAML null/empty. */
int config__set_scalar(config_t *c, const config_key_t *k, const char *s, bool is_null,
                       config_why_t *why);

#endif
