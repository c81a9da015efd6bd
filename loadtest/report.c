/* report.c — terminal summary, JSON report and HTML report of a run. */
#include "report.h"

#include "lt_error.h"

#include <jansson.h>
#include <math.h>
#include <stdarg.h>
#include <stdlib.h>
#include <stdio.h>
#include <string.h>

double report_events_per_sec(const client_result_t *r)
{
    return r->elapsed_s > 0 ? (double)r->events_ok / r->elapsed_s : 0;
}

double report_requests_per_sec(const client_result_t *r)
{
    return r->elapsed_s > 0 ? (double)r->responses / r->elapsed_s : 0;
}

static double ms(uint64_t us)
{
    return (double)us / 1000.0;
}

static const char *status_name(int s, char *buf, size_t n)
{
    if (s == CLIENT_ST_CONN_ERROR) return "conn_error";
    if (s == CLIENT_ST_TIMEOUT) return "timeout";
    snprintf(buf, n, "%d", s);
    return buf;
}

static const char *pql_text(const verify_result_t *v)
{
    return v->pql_state < 0 ? "not checked" : v->pql_state ? "ok" : "MISMATCH";
}

void report_print_summary(const report_input_t *in, FILE *out)
{
    const client_result_t *r = in->res;
    const hist_t *h = &r->latency;
    fprintf(out, "\n== sluice-load summary: %s, %s+%s, batch %u, %u conns, %u threads, rate %s\n",
            in->url, in->format, in->compress, in->model->batch, in->cfg->connections,
            in->cfg->threads, in->cfg->rate > 0 ? "open loop" : "max (closed loop)");
    if (in->cfg->rate > 0) fprintf(out, "   target            %.0f events/s\n", in->cfg->rate);
    fprintf(out, "   events/s          %.0f  (in 200 answers; %llu events in %.2f s)\n",
            report_events_per_sec(r), (unsigned long long)r->events_ok, r->elapsed_s);
    fprintf(out, "   requests/s        %.0f  (%llu answers, %llu sent)\n",
            report_requests_per_sec(r), (unsigned long long)r->responses,
            (unsigned long long)r->requests_sent);
    fprintf(out, "   latency ms        p50 %.2f  p90 %.2f  p99 %.2f  p99.9 %.2f  max %.2f%s\n",
            ms(hist_percentile(h, 0.5)), ms(hist_percentile(h, 0.9)), ms(hist_percentile(h, 0.99)),
            ms(hist_percentile(h, 0.999)), ms(h->max),
            in->cfg->rate > 0 ? "  (from intended send time)" : "");
    fprintf(out, "   answers          ");
    char b[16];
    bool any = false;
    for (int s = 0; s < CLIENT_ST_SLOTS; s++)
        any |= r->status[s] != 0;
    if (!any) fprintf(out, " none");
    for (int s = 0; s < CLIENT_ST_SLOTS; s++)
        if (r->status[s])
            fprintf(out, " %s:%llu", status_name(s, b, sizeof(b)),
                    (unsigned long long)r->status[s]);
    fprintf(out, "\n   wire              %.1f MB out (%.1f MB before compression), %.1f MB in\n",
            (double)r->bytes_out / 1e6, (double)r->body_bytes_raw / 1e6, (double)r->bytes_in / 1e6);
    for (uint32_t i = 0; r->n_urls > 1 && i < r->n_urls; i++) {
        const client_url_result_t *u = &r->urls[i];
        fprintf(out,
                "   url %-2u            %s: %u conns, %llu requests, %llu events sent, %llu ok, "
                "%llu not 200, %llu conn errors\n",
                i + 1, in->urls && in->urls[i] ? in->urls[i] : "?", u->connections,
                (unsigned long long)u->requests_sent, (unsigned long long)u->events_sent,
                (unsigned long long)u->events_ok, (unsigned long long)u->non_200,
                (unsigned long long)u->conn_errors);
    }
    fprintf(out, "   collector said    accepted %llu, duplicates %llu, rejected %llu\n",
            (unsigned long long)r->accepted, (unsigned long long)r->duplicates,
            (unsigned long long)r->rejected);
    if (in->cfg->tls)
        fprintf(out, "   tls               %llu handshakes, %llu failed%s%s\n",
                (unsigned long long)r->tls_handshakes,
                (unsigned long long)r->tls_handshake_failures, r->tls_error[0] ? ": " : "",
                r->tls_error);
    if (r->backlog_at_end || r->in_flight_at_end || r->conn_errors)
        fprintf(out,
                "   NOTE              %llu requests due but not sent at the end (rate not "
                "sustained), %llu unanswered at the drain deadline, %llu connection errors\n",
                (unsigned long long)r->backlog_at_end, (unsigned long long)r->in_flight_at_end,
                (unsigned long long)r->conn_errors);
    const verify_result_t *v = in->ver;
    if (v) {
        fprintf(out,
                "   verify            %s: sent_unique %llu, delivered %llu, missing %llu, "
                "duplicated %llu, unexpected %llu\n",
                v->ok ? "OK" : "FAILED", (unsigned long long)v->sent_unique,
                (unsigned long long)v->delivered, (unsigned long long)v->missing,
                (unsigned long long)v->duplicated, (unsigned long long)v->unexpected);
        fprintf(out,
                "                     invalid sent %llu: rejected_ok %llu, wrong reason %llu, "
                "not rejected %llu, on events %llu; unsure %llu (%llu arrived); other runs "
                "%llu; pruned by the broker %llu; %.1f s\n",
                (unsigned long long)v->invalid_sent, (unsigned long long)v->rejected_ok,
                (unsigned long long)v->rejected_wrong, (unsigned long long)v->rejected_missing,
                (unsigned long long)v->invalid_delivered, (unsigned long long)v->sent_unsure,
                (unsigned long long)v->unsure_delivered, (unsigned long long)v->other_runs,
                (unsigned long long)v->pruned, v->consume_s);
        fprintf(out, "                     pql: %s — %s\n", pql_text(v), v->pql_note);
        if (v->first_problem[0])
            fprintf(out, "                     first problem: %s\n", v->first_problem);
    }
}

static json_t *verify_json(const verify_result_t *v)
{
    if (!v) return json_null();
    return json_pack(
        "{s:b, s:b, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I, "
        "s:o, s:s, s:s, s:f}",
        "ok", v->ok, "complete", v->complete, "sent_unique", (json_int_t)v->sent_unique,
        "delivered", (json_int_t)v->delivered, "missing", (json_int_t)v->missing, "duplicated",
        (json_int_t)v->duplicated, "unexpected", (json_int_t)v->unexpected, "rejected_ok",
        (json_int_t)v->rejected_ok, "rejected_wrong_reason", (json_int_t)v->rejected_wrong,
        "rejected_missing", (json_int_t)v->rejected_missing, "invalid_sent",
        (json_int_t)v->invalid_sent, "invalid_delivered", (json_int_t)v->invalid_delivered,
        "valid_rejected", (json_int_t)v->valid_rejected, "sent_unsure", (json_int_t)v->sent_unsure,
        "unsure_delivered", (json_int_t)v->unsure_delivered, "other_runs",
        (json_int_t)v->other_runs, "pruned", (json_int_t)v->pruned, "pql_ok",
        v->pql_state < 0 ? json_null() : json_boolean(v->pql_state == 1), "pql_note", v->pql_note,
        "first_problem", v->first_problem, "consume_s", v->consume_s);
}

int report_write_json(const report_input_t *in, const char *path)
{
    const client_result_t *r = in->res;
    const hist_t *h = &r->latency;
    json_t *status = json_object();
    char b[16];
    for (int s = 0; s < CLIENT_ST_SLOTS; s++)
        if (r->status[s])
            json_object_set_new(status, status_name(s, b, sizeof(b)),
                                json_integer((json_int_t)r->status[s]));
    json_t *series = json_array();
    for (size_t i = 0; i < r->n_series; i++) {
        const client_second_t *s = &r->series[i];
        json_array_append_new(
            series, json_pack("{s:f, s:I, s:I, s:I, s:I, s:f, s:f, s:f, s:f}", "t", s->t,
                              "events_ok", (json_int_t)s->events_ok, "events_sent",
                              (json_int_t)s->events_sent, "responses", (json_int_t)s->responses,
                              "non_200", (json_int_t)s->non_200, "p50_ms", ms(s->p50_us), "p90_ms",
                              ms(s->p90_us), "p99_ms", ms(s->p99_us), "max_ms", ms(s->max_us)));
    }
    const model_config_t *m = in->model;
    json_t *root = json_pack(
        "{s:f, s:f, s:f, s:{s:f, s:f, s:f, s:f, s:f, s:f}, s:o, s:o, "
        "s:{s:s, s:s, s:s, s:s, s:f, s:f, s:i, s:i, s:i, s:i, s:i, s:f, s:f, s:f, s:I, s:s}, "
        "s:{s:f, s:f, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I}, "
        "s:o}",
        "events_per_sec", report_events_per_sec(r), "requests_per_sec", report_requests_per_sec(r),
        "events_sent_per_sec", r->elapsed_s > 0 ? (double)r->events_sent / r->elapsed_s : 0.0,
        "latency_ms", "p50", ms(hist_percentile(h, 0.5)), "p90", ms(hist_percentile(h, 0.9)), "p99",
        ms(hist_percentile(h, 0.99)), "p999", ms(hist_percentile(h, 0.999)), "max", ms(h->max),
        "mean", hist_mean(h) / 1000.0, "status", status, "verify", verify_json(in->ver), "config",
        "url", in->url, "format", in->format, "compress", in->compress, "started_at",
        in->started_at, "rate", in->cfg->rate, "duration_s", in->cfg->duration_s, "connections",
        (int)in->cfg->connections, "threads", (int)in->cfg->threads, "batch", (int)m->batch,
        "accounts", (int)m->accounts, "max_users", (int)m->max_users, "zipf_s", m->zipf_s,
        "dup_rate", m->dup_rate, "invalid_rate", m->invalid_rate, "seed", (json_int_t)m->seed,
        "run_id", m->run_id, "totals", "elapsed_s", r->elapsed_s, "send_s", r->send_s,
        "events_sent", (json_int_t)r->events_sent, "events_ok", (json_int_t)r->events_ok,
        "requests_sent", (json_int_t)r->requests_sent, "responses", (json_int_t)r->responses,
        "bytes_out", (json_int_t)r->bytes_out, "bytes_in", (json_int_t)r->bytes_in,
        "body_bytes_uncompressed", (json_int_t)r->body_bytes_raw, "accepted",
        (json_int_t)r->accepted, "duplicates", (json_int_t)r->duplicates, "rejected",
        (json_int_t)r->rejected, "backlog_at_end", (json_int_t)r->backlog_at_end,
        "in_flight_at_end", (json_int_t)r->in_flight_at_end, "conn_errors",
        (json_int_t)r->conn_errors, "latency_samples", (json_int_t)h->count, "series", series);
    if (root && in->cfg->tls) {
        json_t *tls = json_pack("{s:I,s:I,s:s}", "handshakes", (json_int_t)r->tls_handshakes,
                                "handshake_failures", (json_int_t)r->tls_handshake_failures,
                                "first_error", r->tls_error);
        json_t *totals = json_object_get(root, "totals");
        if (tls && totals)
            json_object_set_new(totals, "tls", tls);
        else
            json_decref(tls);
    }
    if (!root) return LT_E_NOMEM;
    /* Per --url, in the order given: where the connections went and what each collector took. */
    json_t *urls = json_array();
    for (uint32_t i = 0; urls && i < r->n_urls; i++) {
        const client_url_result_t *u = &r->urls[i];
        json_array_append_new(
            urls,
            json_pack("{s:s, s:i, s:I, s:I, s:I, s:I, s:I, s:I}", "url",
                      in->urls && in->urls[i] ? in->urls[i] : "", "connections",
                      (int)u->connections, "requests_sent", (json_int_t)u->requests_sent,
                      "events_sent", (json_int_t)u->events_sent, "responses",
                      (json_int_t)u->responses, "events_ok", (json_int_t)u->events_ok, "non_200",
                      (json_int_t)u->non_200, "conn_errors", (json_int_t)u->conn_errors));
    }
    if (!urls) {
        json_decref(root);
        return LT_E_NOMEM;
    }
    json_object_set_new(root, "urls", urls);
    int rc =
        json_dump_file(root, path, JSON_INDENT(2) | JSON_REAL_PRECISION(10)) == 0 ? 0 : LT_E_IO;
    json_decref(root);
    return rc;
}

/* ---- HTML ---- */

#define CW 860
#define CH 260
#define ML 70
#define MR 20
#define MT 30
#define MB 40

typedef struct {
    const char *name, *color;
    double *v;
    bool dashed;
} line_t;

static double nice_ceil(double x)
{
    if (x <= 0) return 1;
    double p = pow(10, floor(log10(x)));
    double f = x / p;
    static const double steps[] = {1, 1.2, 1.5, 2, 2.5, 3, 4, 5, 6, 8, 10};
    for (size_t i = 0; i < sizeof(steps) / sizeof(steps[0]); i++)
        if (f <= steps[i] + 1e-9) return steps[i] * p;
    return 10 * p;
}

static void fmt_num(char *buf, size_t n, double v)
{
    if (v >= 1e6)
        snprintf(buf, n, "%.3gM", v / 1e6);
    else if (v >= 1e3)
        snprintf(buf, n, "%.3gk", v / 1e3);
    else
        snprintf(buf, n, "%.3g", v);
}

/* One line chart; y is linear from 0, or log10 when logy (values <= 0 are drawn at the floor). */
static void svg_chart(FILE *f, const char *title, const char *ylabel, const double *t, size_t n,
                      const line_t *lines, size_t nl, bool logy)
{
    double tmax = n ? t[n - 1] : 1, ymax = 0, ymin = 1e300;
    for (size_t l = 0; l < nl; l++)
        for (size_t i = 0; i < n; i++) {
            if (lines[l].v[i] > ymax) ymax = lines[l].v[i];
            if (lines[l].v[i] > 0 && lines[l].v[i] < ymin) ymin = lines[l].v[i];
        }
    if (tmax <= 0) tmax = 1;
    double lo = 0, hi = nice_ceil(ymax);
    if (logy) {
        lo = ymin < 1e300 ? floor(log10(ymin)) : -1;
        hi = ymax > 0 ? ceil(log10(ymax)) : 0;
        if (hi <= lo) hi = lo + 1;
    }
    fprintf(f,
            "<figure><figcaption>%s</figcaption><svg viewBox=\"0 0 %d %d\" "
            "role=\"img\" aria-label=\"%s\">\n",
            title, CW, CH, title);
    int pw = CW - ML - MR, ph = CH - MT - MB;
    fprintf(f, "<rect x=\"%d\" y=\"%d\" width=\"%d\" height=\"%d\" class=\"plot\"/>\n", ML, MT, pw,
            ph);
    /* y grid and labels; a log axis also gets 2x and 5x lines inside each decade */
    int nticks = logy ? (int)(hi - lo) : 5;
    for (int k = 0; k <= nticks; k++) {
        static const double sub[3] = {1, 2, 5};
        for (int j = 0; j < (logy && k < nticks ? 3 : 1); j++) {
            double frac = logy ? (k + log10(sub[j])) / nticks : (double)k / nticks;
            double y = MT + ph - ph * frac;
            double val = logy ? sub[j] * pow(10, lo + k) : hi * k / nticks;
            char lab[32];
            fmt_num(lab, sizeof(lab), val);
            fprintf(f,
                    "<line x1=\"%d\" x2=\"%d\" y1=\"%.1f\" y2=\"%.1f\" class=\"grid\"/>"
                    "<text x=\"%d\" y=\"%.1f\" class=\"yl\">%s</text>\n",
                    ML, ML + pw, y, y, ML - 6, y + 4, lab);
        }
    }
    /* x labels: about 8 */
    double step = nice_ceil(tmax / 8);
    for (double x = 0; x <= tmax + 1e-9; x += step) {
        double px = ML + pw * x / tmax;
        fprintf(f, "<text x=\"%.1f\" y=\"%d\" class=\"xl\">%gs</text>\n", px, MT + ph + 18, x);
    }
    fprintf(f, "<text x=\"14\" y=\"%d\" class=\"axis\" transform=\"rotate(-90 14 %d)\">%s</text>\n",
            MT + ph / 2, MT + ph / 2, ylabel);
    int lx = ML;
    for (size_t l = 0; l < nl; l++) {
        fprintf(f, "<polyline fill=\"none\" stroke=\"%s\" stroke-width=\"%s\"%s points=\"",
                lines[l].color, lines[l].dashed ? "1.5" : "2.2",
                lines[l].dashed ? " stroke-dasharray=\"5 4\"" : "");
        for (size_t i = 0; i < n; i++) {
            double v = lines[l].v[i], frac;
            if (logy)
                frac = v > 0 ? (log10(v) - lo) / (hi - lo) : 0;
            else
                frac = hi > 0 ? v / hi : 0;
            if (frac < 0) frac = 0;
            if (frac > 1) frac = 1;
            fprintf(f, "%.1f,%.1f ", ML + pw * t[i] / tmax, MT + ph - ph * frac);
        }
        fprintf(f, "\"/>\n");
        fprintf(f,
                "<rect x=\"%d\" y=\"8\" width=\"12\" height=\"12\" fill=\"%s\"/>"
                "<text x=\"%d\" y=\"18\" class=\"lg\">%s</text>\n",
                lx, lines[l].color, lx + 16, lines[l].name);
        lx += 16 + 7 * (int)strlen(lines[l].name) + 24;
    }
    fprintf(f, "</svg></figure>\n");
}

static void html_row(FILE *f, const char *k, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void html_row(FILE *f, const char *k, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fprintf(f, "<tr><th>%s</th><td>", k);
    vfprintf(f, fmt, ap);
    fprintf(f, "</td></tr>\n");
    va_end(ap);
}

/* Writes s with HTML escaping. */
static void html_text(FILE *f, const char *s)
{
    for (; *s; s++) {
        switch (*s) {
        case '<':
            fputs("&lt;", f);
            break;
        case '>':
            fputs("&gt;", f);
            break;
        case '&':
            fputs("&amp;", f);
            break;
        case '"':
            fputs("&quot;", f);
            break;
        default:
            fputc(*s, f);
        }
    }
}

int report_write_html(const report_input_t *in, const char *path)
{
    FILE *f = fopen(path, "w");
    if (!f) return LT_E_IO;
    const client_result_t *r = in->res;
    const hist_t *h = &r->latency;
    size_t n = r->n_series;
    double *buf = calloc(n * 7 + 1, sizeof(double));
    if (!buf) {
        fclose(f);
        return LT_E_IO;
    }
    double *t = buf, *eok = buf + n, *esent = buf + 2 * n, *p50 = buf + 3 * n, *p99 = buf + 4 * n,
           *mx = buf + 5 * n, *bad = buf + 6 * n;
    /* A trailing interval shorter than half a second (the drain after the window) would plot
     * as a misleading spike or dip in per-second rates: it is left out of the charts. */
    size_t k = 0;
    for (size_t i = 0; i < n; i++) {
        const client_second_t *s = &r->series[i];
        double dt = i ? s->t - r->series[i - 1].t : s->t;
        if (dt < 0.5 && i + 1 == n && i > 0) break;
        if (dt <= 0) dt = 1;
        t[k] = s->t;
        eok[k] = (double)s->events_ok / dt;
        esent[k] = (double)s->events_sent / dt;
        bad[k] = (double)s->non_200 / dt;
        p50[k] = ms(s->p50_us);
        p99[k] = ms(s->p99_us);
        mx[k] = ms(s->max_us);
        k++;
    }
    n = k;
    fprintf(f, "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\n"
               "<title>sluice-load report</title>\n<style>\n"
               "body{font:15px/1.45 system-ui,sans-serif;margin:24px auto;max-width:900px;"
               "color:#1d2330;background:#fff}\n"
               "h1{font-size:22px;margin:0 0 4px}h2{font-size:17px;margin:28px 0 8px}\n"
               ".sub{color:#5b6475;margin-bottom:18px}\n"
               ".cards{display:grid;grid-template-columns:repeat(4,1fr);gap:10px}\n"
               ".card{border:1px solid #d9dee8;border-radius:8px;padding:10px 12px}\n"
               ".card b{display:block;font-size:22px}.card span{color:#5b6475;font-size:13px}\n"
               "table{border-collapse:collapse;width:100%%}th,td{text-align:left;padding:4px "
               "8px;border-bottom:1px solid #eceff4}th{width:40%%;font-weight:600}\n"
               ".ok{color:#137333;font-weight:700}.bad{color:#b3261e;font-weight:700}\n"
               "figure{margin:18px 0}figcaption{font-weight:600;margin-bottom:4px}\n"
               "svg{width:100%%;height:auto}.plot{fill:#fafbfd;stroke:#d9dee8}\n"
               ".grid{stroke:#e6e9ef}.yl{font-size:12px;text-anchor:end;fill:#5b6475}\n"
               ".xl{font-size:12px;text-anchor:middle;fill:#5b6475}"
               ".axis{font-size:12px;text-anchor:middle;fill:#5b6475}.lg{font-size:12px}\n"
               "</style></head><body>\n");
    fprintf(f, "<h1>sluice-load report</h1><div class=\"sub\">");
    html_text(f, in->url);
    fprintf(f,
            " &middot; %s+%s &middot; batch %u &middot; %u connections &middot; %u thread%s "
            "&middot; %s &middot; started %s &middot; run %s</div>\n",
            in->format, in->compress, in->model->batch, in->cfg->connections, in->cfg->threads,
            in->cfg->threads == 1 ? "" : "s",
            in->cfg->rate > 0 ? "open loop" : "rate max (closed loop)", in->started_at,
            in->model->run_id);
    fprintf(f,
            "<div class=\"cards\">"
            "<div class=\"card\"><b>%.0f</b><span>events/s (200 answers)</span></div>"
            "<div class=\"card\"><b>%.0f</b><span>requests/s</span></div>"
            "<div class=\"card\"><b>%.2f ms</b><span>p99 latency</span></div>"
            "<div class=\"card\"><b class=\"%s\">%s</b><span>verification</span></div>"
            "</div>\n",
            report_events_per_sec(r), report_requests_per_sec(r), ms(hist_percentile(h, 0.99)),
            !in->ver      ? ""
            : in->ver->ok ? "ok"
                          : "bad",
            !in->ver      ? "not run"
            : in->ver->ok ? "passed"
                          : "FAILED");

    line_t tl[3] = {{"events/s sent", "#9aa0a6", esent, true},
                    {"events/s answered 200", "#1a73e8", eok, false},
                    {"non-200 answers/s", "#d93025", bad, false}};
    svg_chart(f, "Throughput over time", "per second", t, n, tl, 3, false);
    line_t ll[3] = {{"max", "#d93025", mx, true},
                    {"p50", "#1e8e3e", p50, false},
                    {"p99", "#f29900", p99, false}};
    svg_chart(f,
              in->cfg->rate > 0 ? "Latency over time (ms, log scale, from intended send time)"
                                : "Latency over time (ms, log scale)",
              "ms", t, n, ll, 3, true);

    fprintf(f, "<h2>Latency</h2><table>\n");
    html_row(f, "p50 / p90 / p99 / p99.9", "%.2f / %.2f / %.2f / %.2f ms",
             ms(hist_percentile(h, 0.5)), ms(hist_percentile(h, 0.9)), ms(hist_percentile(h, 0.99)),
             ms(hist_percentile(h, 0.999)));
    html_row(f, "max / mean", "%.2f / %.2f ms", ms(h->max), hist_mean(h) / 1000.0);
    html_row(f, "samples", "%llu", (unsigned long long)h->count);
    fprintf(f, "</table>\n<h2>Answers</h2><table>\n");
    char b[16];
    for (int s = 0; s < CLIENT_ST_SLOTS; s++)
        if (r->status[s])
            html_row(f, status_name(s, b, sizeof(b)), "%llu", (unsigned long long)r->status[s]);
    html_row(f, "collector counts (200 bodies)", "accepted %llu, duplicates %llu, rejected %llu",
             (unsigned long long)r->accepted, (unsigned long long)r->duplicates,
             (unsigned long long)r->rejected);
    fprintf(f, "</table>\n<h2>Traffic</h2><table>\n");
    html_row(f, "events sent / in 200 answers", "%llu / %llu", (unsigned long long)r->events_sent,
             (unsigned long long)r->events_ok);
    html_row(f, "requests sent / answered", "%llu / %llu", (unsigned long long)r->requests_sent,
             (unsigned long long)r->responses);
    html_row(f, "elapsed", "%.2f s (sending window %.2f s)", r->elapsed_s, r->send_s);
    html_row(f, "bytes on the wire", "%.2f MB out (%.2f MB uncompressed), %.2f MB in",
             (double)r->bytes_out / 1e6, (double)r->body_bytes_raw / 1e6,
             (double)r->bytes_in / 1e6);
    html_row(f, "model",
             "seed %llu, %u accounts (Zipf s=%.2f, up to %u users), dup rate %.3f, "
             "invalid rate %.3f",
             (unsigned long long)in->model->seed, in->model->accounts, in->model->zipf_s,
             in->model->max_users, in->model->dup_rate, in->model->invalid_rate);
    if (in->cfg->rate > 0)
        html_row(f, "target rate", "%.0f events/s; %llu requests due but unsent at the end",
                 in->cfg->rate, (unsigned long long)r->backlog_at_end);
    html_row(f, "unanswered at the end / connection errors", "%llu / %llu",
             (unsigned long long)r->in_flight_at_end, (unsigned long long)r->conn_errors);
    if (in->cfg->tls)
        html_row(f, "TLS handshakes / failed", "%llu / %llu%s",
                 (unsigned long long)r->tls_handshakes,
                 (unsigned long long)r->tls_handshake_failures,
                 r->tls_error[0] ? " (first failure in the text report)" : "");
    fprintf(f, "</table>\n");
    const verify_result_t *v = in->ver;
    if (v) {
        fprintf(f, "<h2>Verification <span class=\"%s\">%s</span></h2><table>\n",
                v->ok ? "ok" : "bad", v->ok ? "passed" : "FAILED");
        html_row(f, "unique valid events answered 200", "%llu", (unsigned long long)v->sent_unique);
        html_row(f, "delivered to events", "%llu", (unsigned long long)v->delivered);
        html_row(f, "missing / duplicated / unexpected", "%llu / %llu / %llu",
                 (unsigned long long)v->missing, (unsigned long long)v->duplicated,
                 (unsigned long long)v->unexpected);
        html_row(f, "invalid events answered 200", "%llu", (unsigned long long)v->invalid_sent);
        html_row(f, "rejected with the right reason / wrong reason / not rejected",
                 "%llu / %llu / %llu", (unsigned long long)v->rejected_ok,
                 (unsigned long long)v->rejected_wrong, (unsigned long long)v->rejected_missing);
        html_row(f, "without a definite answer (arrived)", "%llu (%llu)",
                 (unsigned long long)v->sent_unsure, (unsigned long long)v->unsure_delivered);
        fprintf(f, "<tr><th>PQL</th><td>%s — ", pql_text(v));
        html_text(f, v->pql_note);
        fprintf(f, "</td></tr>\n");
        if (v->first_problem[0]) {
            fprintf(f, "<tr><th>first problem</th><td class=\"bad\">");
            html_text(f, v->first_problem);
            fprintf(f, "</td></tr>\n");
        }
        fprintf(f, "</table>\n");
    }
    fprintf(f, "</body></html>\n");
    free(buf);
    return fclose(f) == 0 ? 0 : LT_E_IO;
}
