/* enc.c — bounded msgpack/JSON writer; see enc.h. */
#include "enc.h"

#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* The common case inline (room in the allocation and under the cap); base_buf_append for the
 * rest, which grows the buffer or reports TOO_LARGE (issue 11: one call per token was the second
 * item of sluice-load's JSON profile). */
static inline void put(enc_t *e, const void *p, size_t n)
{
    base_buf_t *b = &e->buf;
    if (e->err == 0 && n > 0 && n <= b->cap - b->len && b->len + n <= b->max) {
        memcpy(b->data + b->len, p, n);
        b->len += n;
        return;
    }
    if (e->err == 0) e->err = base_buf_append(b, p, n);
}

static inline void putc1(enc_t *e, char c)
{
    base_buf_t *b = &e->buf;
    if (e->err == 0 && b->len < b->cap && b->len + 1 <= b->max) {
        b->data[b->len++] = c;
        return;
    }
    put(e, &c, 1);
}

/* Decimal text of v into tmp (room for 20 digits and a sign), returns its length: printf-free. */
static size_t fmt_i64(char tmp[24], int64_t v)
{
    char d[24];
    size_t n = 0, o = 0;
    uint64_t u = v < 0 ? (uint64_t)0 - (uint64_t)v : (uint64_t)v;
    do {
        d[n++] = (char)('0' + u % 10);
        u /= 10;
    } while (u != 0);
    if (v < 0) tmp[o++] = '-';
    while (n > 0)
        tmp[o++] = d[--n];
    return o;
}

char *enc_claim(enc_t *e, size_t n)
{
    if (e->err == 0) e->err = base_buf_reserve(&e->buf, n);
    if (e->err != 0) return NULL;
    char *p = e->buf.data + e->buf.len;
    e->buf.len += n;
    return p;
}

static int pk_write(void *data, const char *buf, size_t len)
{
    enc_t *e = data;
    put(e, buf, len);
    return e->err;
}

void enc_init(enc_t *e, enc_format_t fmt, size_t max)
{
    memset(e, 0, sizeof(*e));
    e->fmt = fmt;
    base_buf_init(&e->buf, max);
    msgpack_packer_init(&e->pk, e, pk_write);
    e->first[0] = true;
}

void enc_reset(enc_t *e)
{
    base_buf_reset(&e->buf);
    e->err = 0;
    e->depth = 0;
    e->after_key = false;
    e->first[0] = true;
}

void enc_free(enc_t *e)
{
    base_buf_free(&e->buf);
}

/* JSON: the separator owed before a new key or array element. */
static void json_sep(enc_t *e)
{
    if (e->after_key) {
        e->after_key = false;
        return;
    }
    if (!e->first[e->depth]) putc1(e, ',');
    e->first[e->depth] = false;
}

static void json_open(enc_t *e, char c)
{
    json_sep(e);
    if (e->depth >= ENC_MAX_DEPTH) {
        e->err = BASE_E_INVAL;
        return;
    }
    putc1(e, c);
    e->depth++;
    e->first[e->depth] = true;
}

void enc_map(enc_t *e, uint32_t n)
{
    if (e->fmt == ENC_MSGPACK)
        msgpack_pack_map(&e->pk, n);
    else
        json_open(e, '{');
}

void enc_array(enc_t *e, uint32_t n)
{
    if (e->fmt == ENC_MSGPACK)
        msgpack_pack_array(&e->pk, n);
    else
        json_open(e, '[');
}

void enc_end(enc_t *e, bool is_map)
{
    if (e->fmt == ENC_MSGPACK || e->err) return;
    if (e->depth == 0) {
        e->err = BASE_E_INVAL;
        return;
    }
    putc1(e, is_map ? '}' : ']');
    e->depth--;
}

static void json_string(enc_t *e, const char *s, size_t n)
{
    if (e->err == 0) e->err = base_json_str_utf8(&e->buf, s, n);
}

void enc_key(enc_t *e, const char *k)
{
    size_t n = strlen(k);
    if (e->fmt == ENC_MSGPACK) {
        msgpack_pack_str(&e->pk, n);
        msgpack_pack_str_body(&e->pk, k, n);
        return;
    }
    json_sep(e);
    json_string(e, k, n);
    putc1(e, ':');
    e->after_key = true;
}

void enc_int_key(enc_t *e, int64_t k)
{
    if (e->fmt == ENC_MSGPACK) {
        msgpack_pack_int64(&e->pk, k);
        return;
    }
    char tmp[24];
    tmp[fmt_i64(tmp, k)] = '\0';
    enc_key(e, tmp);
}

void enc_strn(enc_t *e, const char *s, size_t n)
{
    if (e->fmt == ENC_MSGPACK) {
        msgpack_pack_str(&e->pk, n);
        msgpack_pack_str_body(&e->pk, s, n);
        return;
    }
    json_sep(e);
    json_string(e, s, n);
}

void enc_str(enc_t *e, const char *s)
{
    enc_strn(e, s, strlen(s));
}

void enc_int(enc_t *e, int64_t v)
{
    if (e->fmt == ENC_MSGPACK) {
        msgpack_pack_int64(&e->pk, v);
        return;
    }
    json_sep(e);
    char tmp[24];
    put(e, tmp, fmt_i64(tmp, v));
}

void enc_double(enc_t *e, double v)
{
    if (e->fmt == ENC_MSGPACK) {
        msgpack_pack_double(&e->pk, v);
        return;
    }
    json_sep(e);
    char tmp[32];
    /* %.3f without printf for the model's magnitudes: v * 1000 rounded to an integer, written with
     * three decimals (printf rounds the exact binary value instead; the two can differ in the last
     * digit on a tie, which changes nothing here: the text is generated, not compared with
     * printf's). Beyond 2^53 / 1000 or non-finite: printf. */
    if (v > -9.0e12 && v < 9.0e12) {
        double r = v * 1000.0;
        int64_t m = (int64_t)(r < 0 ? r - 0.5 : r + 0.5);
        size_t o = 0;
        if (m < 0 || (m == 0 && signbit(v))) tmp[o++] = '-';
        uint64_t u = m < 0 ? (uint64_t)0 - (uint64_t)m : (uint64_t)m;
        o += fmt_i64(tmp + o, (int64_t)(u / 1000));
        tmp[o++] = '.';
        unsigned f = (unsigned)(u % 1000);
        tmp[o++] = (char)('0' + f / 100);
        tmp[o++] = (char)('0' + f / 10 % 10);
        tmp[o++] = (char)('0' + f % 10);
        put(e, tmp, o);
        return;
    }
    int n = snprintf(tmp, sizeof(tmp), "%.3f", v);
    put(e, tmp, (size_t)n);
}

void enc_bool(enc_t *e, bool v)
{
    if (e->fmt == ENC_MSGPACK) {
        if (v)
            msgpack_pack_true(&e->pk);
        else
            msgpack_pack_false(&e->pk);
        return;
    }
    json_sep(e);
    if (v)
        put(e, "true", 4);
    else
        put(e, "false", 5);
}

void enc_nil(enc_t *e)
{
    if (e->fmt == ENC_MSGPACK) {
        msgpack_pack_nil(&e->pk);
        return;
    }
    json_sep(e);
    put(e, "null", 4);
}
