/*
 * buf.c — the bounded buffer (curl's dynbuf): grows by doubling up to the cap chosen at birth and
 * tells BASE_E_TOO_LARGE (the caller's limit) from BASE_E_NOMEM (malloc failed).
 */
#include "base.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

void base_buf_init(base_buf_t *b, size_t max)
{
    b->data = NULL;
    b->len = 0;
    b->cap = 0;
    b->max = max;
}

void base_buf_init_fixed(base_buf_t *b, void *mem, size_t cap)
{
    b->data = mem;
    b->len = 0;
    b->cap = cap;
    b->max = cap; /* len + n <= max <= cap: reserve never reaches realloc */
}

int base_buf_reserve(base_buf_t *b, size_t n)
{
    if (n > b->max || b->len > b->max - n) return BASE_E_TOO_LARGE;
    size_t need = b->len + n;
    if (need <= b->cap) return BASE_OK;
    size_t cap = b->cap ? b->cap : 256;
    while (cap < need)
        cap = cap > b->max / 2 ? b->max : cap * 2;
    char *p = realloc(b->data, cap);
    if (p == NULL) return BASE_E_NOMEM;
    b->data = p;
    b->cap = cap;
    return BASE_OK;
}

int base_buf_grow_to(base_buf_t *b, size_t cap)
{
    if (cap > b->max) return BASE_E_TOO_LARGE;
    if (cap <= b->cap) return BASE_OK;
    char *p = realloc(b->data, cap);
    if (p == NULL) return BASE_E_NOMEM;
    b->data = p;
    b->cap = cap;
    return BASE_OK;
}

int base_buf_append(base_buf_t *b, const void *p, size_t n)
{
    if (n == 0) return BASE_OK;
    /* max is checked even when the allocation has room: a caller may lower max to bound one
     * record inside a buffer that already grew for bigger ones. */
    if (n > b->max || b->len > b->max - n) return BASE_E_TOO_LARGE;
    if (b->cap - b->len < n) {
        int rc = base_buf_reserve(b, n);
        if (rc != BASE_OK) return rc;
    }
    memcpy(b->data + b->len, p, n);
    b->len += n;
    return BASE_OK;
}

int base_buf_append_str(base_buf_t *b, const char *s)
{
    return base_buf_append(b, s, strlen(s));
}

int base_buf_printf(base_buf_t *b, const char *fmt, ...)
{
    char tmp[256];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(tmp, sizeof tmp, fmt, ap);
    va_end(ap);
    if (n < 0) return BASE_E_INVAL;
    if ((size_t)n < sizeof tmp) return base_buf_append(b, tmp, (size_t)n);
    /* Longer than the stack buffer: format straight into the reserved tail (n + 1 for vsnprintf's
     * NUL, which is not kept). */
    int rc = base_buf_reserve(b, (size_t)n + 1);
    if (rc != BASE_OK) return rc;
    va_start(ap, fmt);
    int m = vsnprintf(b->data + b->len, (size_t)n + 1, fmt, ap);
    va_end(ap);
    if (m != n) return BASE_E_INVAL;
    b->len += (size_t)n;
    return BASE_OK;
}

void base_buf_reset(base_buf_t *b)
{
    b->len = 0;
}

void base_buf_free(base_buf_t *b)
{
    free(b->data);
    b->data = NULL;
    b->len = 0;
    b->cap = 0;
}

char *base_buf_detach(base_buf_t *b, size_t *len)
{
    char *d = b->data;
    if (len != NULL) *len = b->len;
    b->data = NULL;
    b->len = 0;
    b->cap = 0;
    return d;
}
