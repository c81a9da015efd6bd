/* json.c — the JSON string writer: the one place that escapes a string for JSON output. */
#include "base.h"

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

static int json_str(base_buf_t *b, const char *s, size_t n, input_t in)
{
    int rc = base_buf_append(b, "\"", 1);
    size_t run = 0; /* start of the pending run of bytes that need no escaping */
    size_t i = 0;
    while (rc == BASE_OK && i < n) {
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
            rc = base_buf_append(b, s + run, i - run);
            if (rc == BASE_OK) rc = BASE_BUF_LIT(b, "\\ufffd");
            run = ++i;
            continue;
        }
        rc = base_buf_append(b, s + run, i - run);
        if (rc == BASE_OK) rc = esc(b, c);
        run = ++i;
    }
    if (rc == BASE_OK) rc = base_buf_append(b, s + run, n - run);
    if (rc == BASE_OK) rc = base_buf_append(b, "\"", 1);
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
