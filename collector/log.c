/*
 * log.c — JSON-lines logger (contract in log.h).
 *
 * Each line is built in a fixed stack buffer of LOG_LINE_MAX bytes and written with one write(2).
 * LOG_LINE_MAX equals Linux's PIPE_BUF, so a line written to a pipe is atomic and lines from
 * different threads never interleave. Nothing here allocates or takes a lock; the only shared
 * state is the level, an atomic.
 */
#include "log.h"

#include <errno.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "base.h"

/* One line, newline included. */
#define LOG_LINE_MAX 4096
/* Room always kept free for `,"truncated":true}` + newline, so a line is always valid JSON. */
#define LOG_TAIL_RESERVE 24
/* Longest string value (input bytes) copied before it is cut and marked with an ellipsis. */
#define LOG_VALUE_MAX 1024

static atomic_int log_level_ = LOG_INFO;

static const char *const log_level_names[] = {"debug", "info", "warn", "error", "off"};

void log_set_level(log_level_t lvl)
{
    if ((int)lvl < LOG_DEBUG || lvl > LOG_OFF) return;
    atomic_store_explicit(&log_level_, (int)lvl, memory_order_relaxed);
}

log_level_t log_get_level(void)
{
    return (log_level_t)atomic_load_explicit(&log_level_, memory_order_relaxed);
}

int log_level_parse(const char *s)
{
    if (s == NULL) return -1;
    for (int i = LOG_DEBUG; i <= LOG_OFF; i++)
        if (strcmp(s, log_level_names[i]) == 0) return i;
    if (strcmp(s, "warning") == 0) return LOG_WARN;
    return -1;
}

/* A bounded writer over the line buffer: a fixed base_buf_t over the stack line, and ok, which
 * stays false once an append did not fit. */
typedef struct log_w {
    base_buf_t b;
    bool ok;
} log_w_t;

static void w_put(log_w_t *w, const char *s, size_t n)
{
    if (w->ok && base_buf_append(&w->b, s, n) != BASE_OK) w->ok = false;
}

static void w_puts(log_w_t *w, const char *s)
{
    w_put(w, s, strlen(s));
}

/*
 * Appends s[0..n) as a JSON string (with quotes) by base_json_str(): invalid UTF-8 bytes become
 * U+FFFD each. Input longer than LOG_VALUE_MAX is cut at a character boundary and ends with "…".
 */
static void w_json_str(log_w_t *w, const char *s, size_t n)
{
    const unsigned char *u = (const unsigned char *)s;
    bool cut = false;
    if (n > LOG_VALUE_MAX) {
        /* Cut before a character that straddles the limit (at most 3 continuation bytes). */
        size_t keep = LOG_VALUE_MAX;
        for (int k = 0; k < 3 && keep > 0 && (u[keep] & 0xC0) == 0x80; k++)
            keep--;
        if ((u[keep] & 0xC0) == 0x80)
            keep = LOG_VALUE_MAX; /* not UTF-8 anyway: bytes become U+FFFD */
        n = keep;
        cut = true;
    }
    if (!w->ok) return;
    if (base_json_str(&w->b, s, n) != BASE_OK) {
        w->ok = false;
        return;
    }
    if (cut) {
        w->b.len--; /* the closing quote goes after the ellipsis */
        w_put(w, "\xE2\x80\xA6\"", 4);
    }
}

/* "2026-11-23T12:00:00.000Z" */
static void w_timestamp(log_w_t *w)
{
    char buf[BASE_ISO8601_LEN + 1];
    w_put(w, buf, base_iso8601_format(base_wall_ms(), buf));
}

/* Writes the whole line; retries EINTR and short writes a bounded number of times. */
static void log_write_line(const char *buf, size_t len)
{
    int saved = errno;
    size_t off = 0;
    for (int tries = 0; off < len && tries < 8; tries++) {
        ssize_t n = write(STDERR_FILENO, buf + off, len - off);
        if (n > 0)
            off += (size_t)n;
        else if (n < 0 && errno != EINTR && errno != EAGAIN)
            break;
    }
    errno = saved;
}

void log_emit(log_level_t lvl, const char *msg, size_t nfields, const log_field_t *fields)
{
    if ((int)lvl < LOG_DEBUG || lvl >= LOG_OFF || lvl < log_get_level()) return;
    char line[LOG_LINE_MAX];
    log_w_t w = {.ok = true};
    base_buf_init_fixed(&w.b, line, LOG_LINE_MAX);
    w.b.max = LOG_LINE_MAX - LOG_TAIL_RESERVE;
    w_puts(&w, "{\"ts\":\"");
    w_timestamp(&w);
    w_puts(&w, "\",\"level\":\"");
    w_puts(&w, log_level_names[lvl]);
    w_puts(&w, "\",\"msg\":");
    if (msg == NULL) msg = "";
    w_json_str(&w, msg, strlen(msg));
    bool truncated = !w.ok;
    if (truncated) {
        /* Only an absurdly long msg gets here; keep the line valid JSON. */
        w.ok = true;
        w.b.len = 0;
        w_puts(&w, "{\"ts\":\"");
        w_timestamp(&w);
        w_puts(&w, "\",\"level\":\"");
        w_puts(&w, log_level_names[lvl]);
        w_puts(&w, "\",\"msg\":\"\"");
    }
    for (size_t i = 0; i < nfields && !truncated; i++) {
        size_t mark = w.b.len;
        const log_field_t *f = &fields[i];
        const char *key = f->key ? f->key : "";
        w_put(&w, ",", 1);
        w_json_str(&w, key, strlen(key));
        w_put(&w, ":", 1);
        if (f->type == LOG_F_INT) {
            char num[24];
            int n = snprintf(num, sizeof num, "%lld", f->i);
            if (n > 0 && (size_t)n < sizeof num) w_put(&w, num, (size_t)n);
        } else if (f->s == NULL) {
            w_puts(&w, "null");
        } else {
            w_json_str(&w, f->s, strlen(f->s));
        }
        if (!w.ok) {
            /* The field does not fit: drop it whole and flag the line. */
            w.b.len = mark;
            w.ok = true;
            truncated = true;
        }
    }
    w.b.max = LOG_LINE_MAX; /* release the reserve for the tail */
    if (truncated) w_puts(&w, ",\"truncated\":true");
    w_puts(&w, "}\n");
    log_write_line(w.b.data, w.b.len);
}
