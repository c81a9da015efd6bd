/*
 * filter_internal.h — what the files of the filter module share and nobody else may touch: the
 * compiled form of a rule set (struct filter_set and its parts). The contract is filter.h.
 *
 *   filter.c         globs, compiled rules, keyed hash and sampling, reading and editing events
 *                    (filter_apply), metrics
 *   filter_config.c  the `filters:` YAML section: parsing and compiling (filter_parse_yaml), the
 *                    reference text of CONFIG.md, the config_section_t registration
 */
#ifndef SLUICE_FILTER_INTERNAL_H
#define SLUICE_FILTER_INTERNAL_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "filter.h"

#define FILTER_NAME_MAX 64

typedef struct fseg {
    const char *p;
    uint32_t len;
} fseg_t;

typedef struct fpath {
    char *text; /* the path as written; segments point into it */
    size_t nseg;
    bool in_context; /* seg[0] is "context": resolved through the record's context */
    fseg_t seg[FILTER_MAX_SEGMENTS];
} fpath_t;

typedef struct fglobs {
    filter_glob_t **g;
    size_t n;
} fglobs_t;

typedef struct fprop {
    fpath_t path;
    fglobs_t globs;
} fprop_t;

typedef struct fmatch {
    uint32_t types; /* bit per proto_type_t; 0 = any type */
    fglobs_t events, uas;
    fprop_t *props;
    size_t n_props;
} fmatch_t;

typedef struct frule {
    char *name;
    filter_kind_t kind;
    fmatch_t m;
    double keep;
    fpath_t *paths;
    size_t n_paths;
    filter_hmac_t *hmac; /* hash rules */
    _Atomic uint64_t count;
} frule_t;

struct filter_set {
    frule_t *rules;
    size_t n;
};

#endif
