/*
 * config_doc.c — the collector's --help and collector/CONFIG.md (config_print_help and
 * config_print_reference in config.h), both printed from the key and flag tables in
 * config_keys.c, so the documentation cannot drift from what is parsed.
 */
#include <stdio.h>
#include <string.h>

#include "config_internal.h"
#include "config_yaml.h"
#include "filter.h"

static const char *type_name(const config_key_t *k)
{
    switch (k->type) {
    case CT_STRING:
        return "string";
    case CT_BOOL:
        return "bool";
    case CT_UINT:
        return "integer";
    case CT_DOUBLE:
        return "number";
    case CT_SIZE:
        return "size";
    case CT_DURATION:
        return "duration";
    case CT_ENUM:
        return "enum";
    case CT_ENV:
        return "env var name";
    case CT_WRITE_KEYS:
        return "list";
    case CT_PROPERTIES:
        return "map";
    case CT_SECTION: {
        const char *shape = "?";
        config__section(k, &shape);
        return shape;
    }
    }
    return "?";
}

/* "1..64", "one of a, b", or "" */
static void range_text(const config_key_t *k, char *out, size_t outlen)
{
    out[0] = '\0';
    if (k->type == CT_ENUM) {
        /* ", " rather than '|', which would split a Markdown table cell */
        size_t o = 0;
        for (const char *p = k->values; *p && o + 3 < outlen; p++) {
            if (*p == '|') {
                out[o++] = ',';
                out[o++] = ' ';
            } else {
                out[o++] = *p;
            }
        }
        out[o] = '\0';
    } else if (k->type == CT_UINT || k->type == CT_DOUBLE || k->type == CT_SIZE ||
               k->type == CT_DURATION) {
        char lo[32], hi[32];
        config__format_bound(k, k->min, lo, sizeof lo);
        config__format_bound(k, k->max, hi, sizeof hi);
        snprintf(out, outlen, "%s..%s", lo, hi);
    } else if (k->type == CT_WRITE_KEYS || k->type == CT_PROPERTIES || k->type == CT_SECTION) {
        snprintf(out, outlen, "≤ %.0f entries", k->max);
    }
}

static const char *flag_doc(const config_flag_t *f)
{
    if (f->doc != NULL) return f->doc;
    const config_key_t *k = config__key_find(f->key);
    return k ? k->doc : "";
}

/* Prints text word-wrapped to 100 columns, every line indented by indent spaces. */
static void print_wrapped(FILE *out, int indent, const char *text)
{
    const int width = 100 - indent;
    while (*text) {
        int len = (int)strlen(text);
        if (len > width) {
            len = width;
            while (len > 0 && text[len] != ' ')
                len--;
            if (len == 0) /* one word longer than the line */
                len = (int)strcspn(text, " ");
        }
        fprintf(out, "%*s%.*s\n", indent, "", len, text);
        text += len;
        while (*text == ' ')
            text++;
    }
}

void config_print_help(FILE *out)
{
    fprintf(out, "Usage: sluice-collector [OPTIONS]\n\n"
                 "Takes batched usage events over HTTP and produces them to Kafka.\n\nOptions:\n");
    for (size_t i = 0; i < config__n_flags; i++) {
        const config_flag_t *f = &config__flag_tab[i];
        char doc[512];
        fprintf(out, "  %s%s%s\n", f->flag, f->arg ? " " : "", f->arg ? f->arg : "");
        snprintf(doc, sizeof doc, "%s%s%s%s", flag_doc(f), f->key ? " (YAML: " : "",
                 f->key ? f->key : "", f->key ? ")" : "");
        print_wrapped(out, 6, doc);
    }
    fprintf(out, "\nYAML config keys (all optional but the write keys; sizes take B, KB, KiB, MB,\n"
                 "MiB, GB, GiB; durations ms, s, m, h, d):\n");
    for (size_t i = 0; i < config__n_keys; i++) {
        const config_key_t *k = &config__key_tab[i];
        char range[96];
        range_text(k, range, sizeof range);
        fprintf(out, "  %-24s %s", k->name, type_name(k));
        if (range[0]) fprintf(out, " [%s]", range);
        fprintf(out, ", default %s\n", k->def ? k->def : "unset");
        print_wrapped(out, 6, k->doc);
    }
    if (config__unsupported_tab[0] != NULL) {
        fprintf(out, "\nNot supported by this version: ");
        for (size_t i = 0; config__unsupported_tab[i] != NULL; i++)
            fprintf(out, "%s%s", i ? ", " : "", config__unsupported_tab[i]);
        fprintf(out, ".\n");
    }
}

void config_print_reference(FILE *out)
{
    fprintf(
        out,
        "# sluice-collector configuration reference\n\n"
        "<!-- Generated from the key table in collector/config_keys.c by config_print_reference();"
        " do not edit.\n     Regenerate: build-*/tests/collector/collector_test_config "
        "--print-reference > collector/CONFIG.md -->\n\n"
        "Every key is optional except the write keys (unless `dev`). Command-line flags "
        "override the file.\nSizes are an integer with an optional unit (B, KB, KiB, MB, MiB, "
        "GB, GiB; none means bytes);\ndurations an integer with a unit (ms, s, m, h, d). "
        "Errors name the file and line: `sluice.yaml:12: limits.body_bytes: ...`.\n\n"
        "## YAML keys\n\n"
        "| key | type | default | range | description |\n"
        "| --- | --- | --- | --- | --- |\n");
    for (size_t i = 0; i < config__n_keys; i++) {
        const config_key_t *k = &config__key_tab[i];
        char range[96];
        range_text(k, range, sizeof range);
        fprintf(out, "| `%s` | %s | %s%s%s | %s | %s |\n", k->name, type_name(k), k->def ? "`" : "",
                k->def ? k->def : "unset", k->def ? "`" : "", range, k->doc);
    }
    /* Listed from config__unsupported_tab[], so implementing a section only edits that array. */
    size_t n_unsup = 0;
    while (config__unsupported_tab[n_unsup] != NULL)
        n_unsup++;
    if (n_unsup > 0) {
        fprintf(out, "\nSection%s ", n_unsup == 1 ? "" : "s");
        for (size_t i = 0; i < n_unsup; i++) {
            const char *sep = i == 0 ? "" : (i + 1 == n_unsup ? " and " : ", ");
            fprintf(out, "%s`%s`", sep, config__unsupported_tab[i]);
        }
        fprintf(out, " %s refused by this version with\n", n_unsup == 1 ? "is" : "are");
        fprintf(out, "\"not supported by this version of sluice-collector\".\n");
    }
    fprintf(out, "\n## Command-line flags\n\n");
    fprintf(out, "| flag | YAML key | description |\n"
                 "| --- | --- | --- |\n");
    for (size_t i = 0; i < config__n_flags; i++) {
        const config_flag_t *f = &config__flag_tab[i];
        fprintf(out, "| `%s%s%s` | %s%s%s | %s |\n", f->flag, f->arg ? " " : "",
                f->arg ? f->arg : "", f->key ? "`" : "", f->key ? f->key : "", f->key ? "`" : "",
                flag_doc(f));
    }
    filter_print_reference(out);
}
