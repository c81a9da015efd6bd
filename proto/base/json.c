/* json.c — the JSON string writer: the one place that escapes a string for JSON output. */
#include "base.h"

#include <string.h>

static const char hexd[] = "0123456789abcdef";

static int esc(base_buf_t *b, unsigned char c)
{
    char e[6] = {'\\', 0, 0, 0, 0, 0};
    size_t n = 2;
    switch (c) {
    case '"':
        e[1] = '"';
        break;
    case '\\':
        e[1] = '\\';
        break;
    case '\n':
        e[1] = 'n';
        break;
    case '\r':
        e[1] = 'r';
        break;
    case '\t':
        e[1] = 't';
        break;
    case '\b':
        e[1] = 'b';
        break;
    case '\f':
        e[1] = 'f';
        break;
    default:
        e[1] = 'u';
        e[2] = '0';
        e[3] = '0';
        e[4] = hexd[c >> 4];
        e[5] = hexd[c & 15];
        n = 6;
    }
    return base_buf_append(b, e, n);
}

/* What the input promises: INPUT_ANY bytes (each byte that does not start a well-formed UTF-8
 * sequence becomes \ufffd) or INPUT_UTF8 (validated by the caller: copied unchecked). */
typedef enum { INPUT_ANY, INPUT_UTF8 } input_t;

/* Nonzero when one of the 8 bytes of w needs a look: a control byte (< 0x20), '"', '\\' or, for
 * any-bytes input, a byte >= 0x80 (SWAR: "has a zero byte" on w ^ the byte, "has a byte < n").
 * The plain runs between such bytes are skipped a word at a time (issue 11: the byte loop was the
 * top of sluice-load's JSON profile). */
static inline uint64_t json_word_special(uint64_t w, bool any)
{
    const uint64_t ones = 0x0101010101010101ull, high = 0x8080808080808080ull;
    uint64_t q = w ^ (ones * '"'), bs = w ^ (ones * '\\');
    uint64_t t = ((q - ones) & ~q) | ((bs - ones) & ~bs) | ((w - ones * 0x20) & ~w);
    return (t | (any ? w : 0)) & high;
}

/* base_buf_append with the common case (room in the allocation, under the cap) inline: a string
 * makes three appends at least. */
static inline int app(base_buf_t *b, const char *p, size_t n)
{
    if (n > 0 && n <= b->cap - b->len && b->len + n <= b->max) {
        memcpy(b->data + b->len, p, n);
        b->len += n;
        return BASE_OK;
    }
    return base_buf_append(b, p, n);
}

static int json_str(base_buf_t *b, const char *s, size_t n, input_t in)
{
    int rc = app(b, "\"", 1);
    size_t run = 0; /* start of the pending run of bytes that need no escaping */
    size_t i = 0;
    while (rc == BASE_OK && i < n) {
        while (i + 8 <= n) {
            uint64_t w;
            memcpy(&w, s + i, 8);
            if (json_word_special(w, in == INPUT_ANY)) break;
            i += 8;
        }
        if (i >= n) break;
        unsigned char c = (unsigned char)s[i];
        if (c >= 0x20 && c != '"' && c != '\\' && (c < 0x80 || in == INPUT_UTF8)) {
            i++;
            continue;
        }
        if (c >= 0x80) {
            size_t len = base_utf8_seq_len(s + i, n - i);
            if (len > 0) {
                i += len;
                continue;
            }
            rc = app(b, s + run, i - run);
            if (rc == BASE_OK) rc = BASE_BUF_LIT(b, "\\ufffd");
            run = ++i;
            continue;
        }
        rc = app(b, s + run, i - run);
        if (rc == BASE_OK) rc = esc(b, c);
        run = ++i;
    }
    if (rc == BASE_OK) rc = app(b, s + run, n - run);
    if (rc == BASE_OK) rc = app(b, "\"", 1);
    return rc;
}

int base_json_str(base_buf_t *b, const char *s, size_t len)
{
    return json_str(b, s, len, INPUT_ANY);
}

int base_json_str_utf8(base_buf_t *b, const char *s, size_t len)
{
    return json_str(b, s, len, INPUT_UTF8);
}
