/*
 * report.h — what sluice-load prints and writes after a run: the terminal summary, the JSON
 * report (SPEC §9 fields plus the run's config, totals and per-second series) and a
 * self-contained HTML page (inline CSS and SVG charts, no scripts, no network).
 */
#ifndef SLUICE_LOADTEST_REPORT_H
#define SLUICE_LOADTEST_REPORT_H

#include "client.h"
#include "verify.h"

#include <stdio.h>

typedef struct report_input {
    const char *url;         /* every --url, comma-separated (config.url) */
    const char *const *urls; /* res->n_urls of them, in --url order (the "urls" array) */
    const char *format;      /* "msgpack" | "json" */
    const char *compress;    /* "zstd" | "gzip" | "none" */
    const char *started_at;
    const client_config_t *cfg;
    const model_config_t *model;
    const client_result_t *res;
    const verify_result_t *ver; /* NULL when --verify was not given */
} report_input_t;

/* Throughput figures shared by every output. */
double report_events_per_sec(const client_result_t *r);
double report_requests_per_sec(const client_result_t *r);

/* Human summary. Never fails (write errors on out are ignored). */
void report_print_summary(const report_input_t *in, FILE *out);
/* Writes the JSON report to path (replaced). Returns 0, LT_E_NOMEM or LT_E_IO. */
int report_write_json(const report_input_t *in, const char *path);
/* Writes the HTML report to path (replaced). Returns 0 or LT_E_IO. */
int report_write_html(const report_input_t *in, const char *path);

#endif
