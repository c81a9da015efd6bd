/*
 * log.h — structured logs: one JSON object per line on stderr
 *   {"ts":"2026-11-23T12:00:00.000Z","level":"warn","msg":"kafka_error","reason":"...","code":3}
 * Thread-safe: each line is formatted into a local buffer and written with one write(2) call
 * (stderr is unbuffered; lines up to 4 KiB are never interleaved). Values are JSON-escaped;
 * over-long values are truncated. Never allocates. Writing to a pipe may block only if the
 * reader is stalled; the collector logs per request only at debug level.
 */
#ifndef SLUICE_LOG_H
#define SLUICE_LOG_H

#include <stddef.h>

typedef enum { LOG_DEBUG = 0, LOG_INFO = 1, LOG_WARN = 2, LOG_ERROR = 3, LOG_OFF = 4 } log_level_t;

typedef enum { LOG_F_STR, LOG_F_INT } log_field_type_t;
typedef struct log_field {
    const char *key;
    log_field_type_t type;
    const char *s; /* LOG_F_STR; NULL is written as null */
    long long i;   /* LOG_F_INT */
} log_field_t;

#define LS(k, v) ((log_field_t){(k), LOG_F_STR, (v), 0})
#define LI(k, v) ((log_field_t){(k), LOG_F_INT, NULL, (long long)(v)})

/* Sets the minimum level written (default LOG_INFO). */
void log_set_level(log_level_t lvl);
log_level_t log_get_level(void);
/* Parses "debug|info|warn|warning|error|off"; returns -1 if unknown. */
int log_level_parse(const char *s);
void log_emit(log_level_t lvl, const char *msg, size_t nfields, const log_field_t *fields);

/* LOG(LOG_WARN, "kafka_error", LS("reason", r), LI("code", c)); fields optional. */
#define LOG(lvl, msg, ...)                                                                         \
    do {                                                                                           \
        if ((lvl) >= log_get_level()) {                                                            \
            const log_field_t log_f_[] = {LS("", NULL), ##__VA_ARGS__};                            \
            log_emit((lvl), (msg), sizeof log_f_ / sizeof log_f_[0] - 1, log_f_ + 1);              \
        }                                                                                          \
    } while (0)

#endif
