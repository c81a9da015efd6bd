/*
 * metrics.c — process-wide counters, HTTP answers by code, rejected events by reason, the
 * request-latency histogram and registered gauges; rendered in the Prometheus text exposition
 * format (version 0.0.4) by metrics_render().
 *
 * Every hot-path update is one relaxed atomic add: the values are statistics, no other memory is
 * published through them. The hot counters sit on their own cache lines so that loop threads
 * bumping different counters do not bounce a shared line. Gauges are registered before serving
 * and published with a release store of the count, so rendering takes no lock.
 */
#include "metrics.h"

#include <math.h>
#include <stdalign.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>

#ifndef SLUICE_VERSION
#define SLUICE_VERSION "unknown"
#endif

#define METRICS_CACHELINE  64
#define METRICS_MAX_GAUGES 64
#define METRICS_STATUS_MIN 100
#define METRICS_STATUS_MAX 599

/* Number of proto error codes, known at compile time from the X-macro. */
#define METRICS_X_COUNT(name, val, code, msg) +1
enum { METRICS_N_REASONS = 0 PROTO_ERRORS(METRICS_X_COUNT) };
#undef METRICS_X_COUNT

typedef struct metrics_counter {
    alignas(METRICS_CACHELINE) _Atomic uint64_t v;
} metrics_counter_t;

static const char *const metrics_counter_names[] = {
#define METRICS_X_NAME(id, name, help) name,
    METRICS_COUNTERS(METRICS_X_NAME)
#undef METRICS_X_NAME
};
static const char *const metrics_counter_help[] = {
#define METRICS_X_HELP(id, name, help) help,
    METRICS_COUNTERS(METRICS_X_HELP)
#undef METRICS_X_HELP
};

/* Histogram upper bounds in seconds, and their `le` labels spelled as Prometheus users expect. */
static const double metrics_bounds[] = {0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
                                        0.1,    0.25,  0.5,    1,     2.5,  5,     10};
static const char *const metrics_bound_labels[] = {"0.0005", "0.001", "0.0025", "0.005", "0.01",
                                                   "0.025",  "0.05",  "0.1",    "0.25",  "0.5",
                                                   "1",      "2.5",   "5",      "10"};
#define METRICS_N_BOUNDS (sizeof metrics_bounds / sizeof metrics_bounds[0])

typedef struct metrics_gauge {
    const char *name, *help;
    metrics_gauge_fn fn;
    void *ud;
} metrics_gauge_t;

static metrics_counter_t metrics_counters[METRIC_COUNT_];
static _Atomic uint64_t metrics_status[METRICS_STATUS_MAX - METRICS_STATUS_MIN + 1];
static _Atomic uint64_t metrics_reasons[METRICS_N_REASONS];
/* Per-bucket (not cumulative) counts; the last slot is +Inf. */
static _Atomic uint64_t metrics_lat_buckets[METRICS_N_BOUNDS + 1];
static alignas(METRICS_CACHELINE) _Atomic uint64_t metrics_lat_sum_ns;
static metrics_gauge_t metrics_gauges[METRICS_MAX_GAUGES];
static _Atomic size_t metrics_n_gauges;

#define METRICS_MAX_SECTIONS 16
typedef struct metrics_section {
    metrics_section_fn fn;
    void *ud;
} metrics_section_t;
static metrics_section_t metrics_sections[METRICS_MAX_SECTIONS];
static _Atomic size_t metrics_n_sections;

int metrics_section_register(metrics_section_fn fn, void *ud)
{
    size_t n = atomic_load_explicit(&metrics_n_sections, memory_order_relaxed);
    if (n >= METRICS_MAX_SECTIONS || fn == NULL) return -1;
    metrics_sections[n] = (metrics_section_t){fn, ud};
    atomic_store_explicit(&metrics_n_sections, n + 1, memory_order_release);
    return 0;
}

void metrics_add(metric_id_t id, uint64_t n)
{
    if ((unsigned)id >= METRIC_COUNT_) return;
    atomic_fetch_add_explicit(&metrics_counters[id].v, n, memory_order_relaxed);
}

uint64_t metrics_get(metric_id_t id)
{
    if ((unsigned)id >= METRIC_COUNT_) return 0;
    return atomic_load_explicit(&metrics_counters[id].v, memory_order_relaxed);
}

void metrics_http_status(int code)
{
    if (code < METRICS_STATUS_MIN || code > METRICS_STATUS_MAX) return;
    atomic_fetch_add_explicit(&metrics_status[code - METRICS_STATUS_MIN], 1, memory_order_relaxed);
}

uint64_t metrics_http_status_get(int code)
{
    if (code < METRICS_STATUS_MIN || code > METRICS_STATUS_MAX) return 0;
    return atomic_load_explicit(&metrics_status[code - METRICS_STATUS_MIN], memory_order_relaxed);
}

void metrics_rejected(int proto_err)
{
    metrics_add(METRIC_EVENTS_REJECTED, 1);
    int i = proto_err_index(proto_err);
    if (i >= 0 && i < METRICS_N_REASONS)
        atomic_fetch_add_explicit(&metrics_reasons[i], 1, memory_order_relaxed);
}

uint64_t metrics_rejected_get(int proto_err)
{
    int i = proto_err_index(proto_err);
    if (i < 0 || i >= METRICS_N_REASONS) return 0;
    return atomic_load_explicit(&metrics_reasons[i], memory_order_relaxed);
}

void metrics_latency_observe(double seconds)
{
    if (!(seconds >= 0)) /* negative or NaN: a clock step, counted as zero */
        seconds = 0;
    size_t b = 0;
    while (b < METRICS_N_BOUNDS && seconds > metrics_bounds[b])
        b++;
    atomic_fetch_add_explicit(&metrics_lat_buckets[b], 1, memory_order_relaxed);
    /* Observations above ~584 years would wrap the sum; cap one observation at a day. */
    if (seconds > 86400.0) seconds = 86400.0;
    atomic_fetch_add_explicit(&metrics_lat_sum_ns, (uint64_t)(seconds * 1e9), memory_order_relaxed);
}

static bool metrics_name_ok(const char *name)
{
    if (name == NULL || name[0] == '\0' || (name[0] >= '0' && name[0] <= '9')) return false;
    for (const char *p = name; *p; p++) {
        char c = *p;
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '_' || c == ':'))
            return false;
    }
    return true;
}

int metrics_gauge_register(const char *name, const char *help, metrics_gauge_fn fn, void *ud)
{
    size_t n = atomic_load_explicit(&metrics_n_gauges, memory_order_relaxed);
    if (n >= METRICS_MAX_GAUGES || fn == NULL || !metrics_name_ok(name)) return -1;
    metrics_gauges[n] = (metrics_gauge_t){name, help ? help : "", fn, ud};
    atomic_store_explicit(&metrics_n_gauges, n + 1, memory_order_release);
    return 0;
}

void metrics_reset(void)
{
    for (size_t i = 0; i < METRIC_COUNT_; i++)
        atomic_store_explicit(&metrics_counters[i].v, 0, memory_order_relaxed);
    for (size_t i = 0; i < sizeof metrics_status / sizeof metrics_status[0]; i++)
        atomic_store_explicit(&metrics_status[i], 0, memory_order_relaxed);
    for (size_t i = 0; i < METRICS_N_REASONS; i++)
        atomic_store_explicit(&metrics_reasons[i], 0, memory_order_relaxed);
    for (size_t i = 0; i <= METRICS_N_BOUNDS; i++)
        atomic_store_explicit(&metrics_lat_buckets[i], 0, memory_order_relaxed);
    atomic_store_explicit(&metrics_lat_sum_ns, 0, memory_order_relaxed);
    atomic_store_explicit(&metrics_n_gauges, 0, memory_order_release);
    atomic_store_explicit(&metrics_n_sections, 0, memory_order_release);
}

/* ---- rendering ---- */

typedef struct metrics_out {
    base_buf_t *buf;
    int err;
} metrics_out_t;

static void out_put(metrics_out_t *o, const char *s, size_t n)
{
    if (o->err == 0 && base_buf_append(o->buf, s, n) != 0) o->err = PROTO_E_NOMEM;
}

static void out_puts(metrics_out_t *o, const char *s)
{
    out_put(o, s, strlen(s));
}

static void out_u64(metrics_out_t *o, uint64_t v)
{
    char num[24];
    int n = snprintf(num, sizeof num, "%llu", (unsigned long long)v);
    out_put(o, num, (size_t)n);
}

/* A sample value: integers exactly, others with full precision, NaN and infinities spelled as
 * the exposition format wants. */
static void out_double(metrics_out_t *o, double v)
{
    if (isnan(v)) {
        out_puts(o, "NaN");
        return;
    }
    if (isinf(v)) {
        out_puts(o, v > 0 ? "+Inf" : "-Inf");
        return;
    }
    char num[40];
    int n;
    if (v == floor(v) && fabs(v) < 9e15)
        n = snprintf(num, sizeof num, "%.0f", v);
    else
        n = snprintf(num, sizeof num, "%.17g", v);
    out_put(o, num, (size_t)n);
}

/* Escapes for a label value: backslash, double quote and newline. */
static void out_label_value(metrics_out_t *o, const char *s)
{
    for (; *s; s++) {
        if (*s == '\\')
            out_puts(o, "\\\\");
        else if (*s == '"')
            out_puts(o, "\\\"");
        else if (*s == '\n')
            out_puts(o, "\\n");
        else
            out_put(o, s, 1);
    }
}

/* HELP text escapes only backslash and newline. */
static void out_help_text(metrics_out_t *o, const char *s)
{
    for (; *s; s++) {
        if (*s == '\\')
            out_puts(o, "\\\\");
        else if (*s == '\n')
            out_puts(o, "\\n");
        else
            out_put(o, s, 1);
    }
}

static void out_header(metrics_out_t *o, const char *prefix, const char *name, const char *help,
                       const char *type)
{
    out_puts(o, "# HELP ");
    out_puts(o, prefix);
    out_puts(o, name);
    out_puts(o, " ");
    out_help_text(o, help);
    out_puts(o, "\n# TYPE ");
    out_puts(o, prefix);
    out_puts(o, name);
    out_puts(o, " ");
    out_puts(o, type);
    out_puts(o, "\n");
}

static void render_reasons(metrics_out_t *o)
{
    out_header(o, "", "sluice_events_rejected_by_reason_total", "invalid events by reason",
               "counter");
    /* Several error values share one code string (e.g. request- and event-level too_deep):
     * one series per code, summing them, so no label set appears twice. */
    for (int i = 0; i < METRICS_N_REASONS; i++) {
        int err = proto_err_at(i);
        if (err == PROTO_OK) continue;
        const char *code = proto_err_code(err);
        bool seen = false;
        for (int j = 0; j < i && !seen; j++)
            seen =
                proto_err_at(j) != PROTO_OK && strcmp(proto_err_code(proto_err_at(j)), code) == 0;
        if (seen) continue;
        uint64_t sum = 0;
        for (int j = i; j < METRICS_N_REASONS; j++)
            if (strcmp(proto_err_code(proto_err_at(j)), code) == 0)
                sum += atomic_load_explicit(&metrics_reasons[j], memory_order_relaxed);
        out_puts(o, "sluice_events_rejected_by_reason_total{reason=\"");
        out_label_value(o, code);
        out_puts(o, "\"} ");
        out_u64(o, sum);
        out_puts(o, "\n");
    }
}

static void render_latency(metrics_out_t *o)
{
    static const char name[] = "sluice_request_duration_seconds";
    out_header(o, "", name, "time from a request's first byte to its answer", "histogram");
    uint64_t cum = 0;
    for (size_t b = 0; b <= METRICS_N_BOUNDS; b++) {
        cum += atomic_load_explicit(&metrics_lat_buckets[b], memory_order_relaxed);
        out_puts(o, name);
        out_puts(o, "_bucket{le=\"");
        out_puts(o, b < METRICS_N_BOUNDS ? metrics_bound_labels[b] : "+Inf");
        out_puts(o, "\"} ");
        out_u64(o, cum);
        out_puts(o, "\n");
    }
    out_puts(o, name);
    out_puts(o, "_sum ");
    out_double(o, (double)atomic_load_explicit(&metrics_lat_sum_ns, memory_order_relaxed) / 1e9);
    out_puts(o, "\n");
    out_puts(o, name);
    out_puts(o, "_count ");
    out_u64(o, cum);
    out_puts(o, "\n");
}

int metrics_render(base_buf_t *out)
{
    metrics_out_t o = {out, 0};

    out_header(&o, "", "sluice_build_info", "build of the running collector", "gauge");
    out_puts(&o, "sluice_build_info{version=\"");
    out_label_value(&o, SLUICE_VERSION);
    out_puts(&o, "\"} 1\n");

    for (size_t i = 0; i < METRIC_COUNT_; i++) {
        out_header(&o, "", metrics_counter_names[i], metrics_counter_help[i], "counter");
        out_puts(&o, metrics_counter_names[i]);
        out_puts(&o, " ");
        out_u64(&o, atomic_load_explicit(&metrics_counters[i].v, memory_order_relaxed));
        out_puts(&o, "\n");
    }

    out_header(&o, "", "sluice_http_responses_total", "HTTP answers by status code", "counter");
    for (int code = METRICS_STATUS_MIN; code <= METRICS_STATUS_MAX; code++) {
        uint64_t v = metrics_http_status_get(code);
        if (v == 0) continue;
        char line[64];
        int n = snprintf(line, sizeof line, "sluice_http_responses_total{code=\"%d\"} ", code);
        out_put(&o, line, (size_t)n);
        out_u64(&o, v);
        out_puts(&o, "\n");
    }

    render_reasons(&o);
    render_latency(&o);

    size_t ng = atomic_load_explicit(&metrics_n_gauges, memory_order_acquire);
    for (size_t i = 0; i < ng; i++) {
        const metrics_gauge_t *g = &metrics_gauges[i];
        out_header(&o, "sluice_", g->name, g->help, "gauge");
        out_puts(&o, "sluice_");
        out_puts(&o, g->name);
        out_puts(&o, " ");
        out_double(&o, g->fn(g->ud));
        out_puts(&o, "\n");
    }
    size_t ns = atomic_load_explicit(&metrics_n_sections, memory_order_acquire);
    for (size_t i = 0; i < ns && o.err == 0; i++)
        if (metrics_sections[i].fn(out, metrics_sections[i].ud) != 0) o.err = PROTO_E_NOMEM;
    return o.err;
}
