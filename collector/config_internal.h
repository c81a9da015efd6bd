/*
 * config_internal.h — what the config module's three files share (config_keys.c: the tables;
 * config.c: defaults, YAML, checks, flags; config_doc.c: --help and CONFIG.md), also shown to its
 * unit test (tests/collector/test_config.c links the module instead of #including a .c): the
 * shape of the key and flag tables, the tables, and hooks onto them. Nothing outside the module
 * uses this header; the contract is config.h.
 */
#ifndef SLUICE_CONFIG_INTERNAL_H
#define SLUICE_CONFIG_INTERNAL_H

#include <stdbool.h>
#include <stddef.h>

#include "config.h"

/* Bounds on what a config file may hold, so a mistaken file cannot make us allocate without
 * limit. */
#define CONFIG_MAX_WRITE_KEYS 1024
#define CONFIG_MAX_PROPERTIES 256
#define CONFIG_KEY_MAX_LEN    256
#define CONFIG_SOURCE_MAX_LEN 64
#define CONFIG_NAME_MAX       128

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

struct config_section;

/* The tables (config_keys.c): every key, every flag, and the NULL-terminated list of SPEC §7
 * sections this version refuses by name. Static storage, never freed. */
extern const config_key_t *const config__key_tab;
extern const size_t config__n_keys;
extern const config_flag_t *const config__flag_tab;
extern const size_t config__n_flags;
extern const char *const *const config__unsupported_tab;
/* The module that parses CT_SECTION key k (config_yaml.h); *shape (if not NULL) gets "list" or
 * "map", for the reference. Aborts on a CT_SECTION key without a module (a build mistake). */
const struct config_section *config__section(const config_key_t *k, const char **shape);
/* Writes bound v of key k as a user would (64MiB, 5s, 1000) into out. */
void config__format_bound(const config_key_t *k, double v, char *out, size_t outlen);
/* The key called name, or NULL. */
const config_key_t *config__key_find(const char *name);

/* The key table (config_keys[] in config_keys.c): *n gets its length. Static storage, never freed.
 */
const config_key_t *config__keys(size_t *n);
/* The CLI flag table (config_flags[] in config_keys.c): *n gets its length. Static storage. */
const config_flag_t *config__flags(size_t *n);
/* Sets scalar key k of c from text s, as a YAML value or a flag would (set_scalar in config.c).
 * Returns CONFIG_OK, or CONFIG_E_INVALID / CONFIG_E_NOMEM with a reason in why, leaving the
 * field unchanged. is_null: the value was YAML null/empty. */
int config__set_scalar(config_t *c, const config_key_t *k, const char *s, bool is_null,
                       config_why_t *why);

#endif
