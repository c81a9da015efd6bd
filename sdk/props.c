/*
 * props.c — the property builder: encodes a map straight into msgpack as the setters are called,
 * so sending it is one memcpy. Open containers are map32/array32 headers patched on end().
 */
#include "internal.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#define PROPS_MAX_BYTES (32u * 1024u)
#define PROPS_MAX_DEPTH 16 /* the top map is level 1 (SPEC §2: nesting depth <= 16) */

typedef struct props_level {
    size_t pos;     /* offset of the container's header */
    uint32_t count; /* entries written so far */
    bool is_map;
} props_level_t;

struct sluice_props {
    base_buf_t buf;
    int err;
    int depth; /* open containers, including the top map */
    props_level_t lv[PROPS_MAX_DEPTH];
};

static int to_sluice_err(int werr)
{
    switch (werr) {
    case WRITER_OK:
        return SLUICE_OK;
    case WRITER_E_NOMEM:
        return SLUICE_E_NOMEM;
    default:
        return SLUICE_E_TOO_LARGE;
    }
}

static void props_open_top(sluice_props *p)
{
    p->buf.len = 0;
    p->err = to_sluice_err(writer_map_open(&p->buf, &p->lv[0].pos));
    p->lv[0].count = 0;
    p->lv[0].is_map = true;
    p->depth = 1;
}

sluice_props *sluice_props_new(void)
{
    sluice_props *p = malloc(sizeof *p);
    if (!p) return NULL;
    base_buf_init(&p->buf, PROPS_MAX_BYTES);
    props_open_top(p);
    if (p->err) {
        base_buf_free(&p->buf);
        free(p);
        return NULL;
    }
    return p;
}

void sluice_props_free(sluice_props *p)
{
    if (!p) return;
    base_buf_free(&p->buf);
    free(p);
}

void sluice_props_clear(sluice_props *p)
{
    if (p) props_open_top(p);
}

int sluice_props_error(const sluice_props *p)
{
    return p ? p->err : SLUICE_E_INVAL;
}

static int fail(sluice_props *p, int err)
{
    p->err = err;
    return err;
}

/* Writes the key (or checks its absence inside an array) and counts the entry. On success the
 * caller writes exactly one value. */
static int begin_entry(sluice_props *p, const char *key)
{
    if (!p) return SLUICE_E_INVAL;
    if (p->err) return p->err;
    props_level_t *lv = &p->lv[p->depth - 1];
    if (lv->is_map != (key != NULL)) return fail(p, SLUICE_E_STATE);
    if (key) {
        size_t klen = strlen(key);
        if (!base_utf8_valid(key, klen)) return fail(p, SLUICE_E_UTF8);
        int rc = writer_str(&p->buf, key, klen);
        if (rc) return fail(p, to_sluice_err(rc));
    }
    lv->count++;
    /* The top map's count is kept current so a finished props is never written again: one
     * props may then be passed to send calls from several threads at once. */
    if (p->depth == 1) writer_close(&p->buf, lv->pos, lv->count);
    return SLUICE_OK;
}

static int end_value(sluice_props *p, int werr)
{
    return werr ? fail(p, to_sluice_err(werr)) : SLUICE_OK;
}

int sluice_props_set_strn(sluice_props *p, const char *key, const char *value, size_t len)
{
    if (value && !base_utf8_valid(value, len)) return p ? fail(p, SLUICE_E_UTF8) : SLUICE_E_INVAL;
    int rc = begin_entry(p, key);
    if (rc) return rc;
    return end_value(p, value ? writer_str(&p->buf, value, len) : writer_nil(&p->buf));
}

int sluice_props_set_str(sluice_props *p, const char *key, const char *value)
{
    return sluice_props_set_strn(p, key, value, value ? strlen(value) : 0);
}

int sluice_props_set_int(sluice_props *p, const char *key, int64_t value)
{
    int rc = begin_entry(p, key);
    return rc ? rc : end_value(p, writer_int(&p->buf, value));
}

int sluice_props_set_double(sluice_props *p, const char *key, double value)
{
    /* JSON has no NaN or Infinity: such a value would break every consumer downstream. */
    if (!isfinite(value)) return p ? (p->err ? p->err : fail(p, SLUICE_E_NUMBER)) : SLUICE_E_INVAL;
    int rc = begin_entry(p, key);
    return rc ? rc : end_value(p, writer_double(&p->buf, value));
}

int sluice_props_set_bool(sluice_props *p, const char *key, int value)
{
    int rc = begin_entry(p, key);
    return rc ? rc : end_value(p, writer_bool(&p->buf, value != 0));
}

int sluice_props_set_null(sluice_props *p, const char *key)
{
    int rc = begin_entry(p, key);
    return rc ? rc : end_value(p, writer_nil(&p->buf));
}

static int begin_container(sluice_props *p, const char *key, bool is_map)
{
    if (p && !p->err && p->depth >= PROPS_MAX_DEPTH) return fail(p, SLUICE_E_DEPTH);
    int rc = begin_entry(p, key);
    if (rc) return rc;
    props_level_t *lv = &p->lv[p->depth];
    rc = is_map ? writer_map_open(&p->buf, &lv->pos) : writer_array_open(&p->buf, &lv->pos);
    if (rc) return fail(p, to_sluice_err(rc));
    lv->count = 0;
    lv->is_map = is_map;
    p->depth++;
    return SLUICE_OK;
}

int sluice_props_begin_map(sluice_props *p, const char *key)
{
    return begin_container(p, key, true);
}

int sluice_props_begin_array(sluice_props *p, const char *key)
{
    return begin_container(p, key, false);
}

int sluice_props_end(sluice_props *p)
{
    if (!p) return SLUICE_E_INVAL;
    if (p->err) return p->err;
    if (p->depth <= 1) return fail(p, SLUICE_E_STATE);
    props_level_t *lv = &p->lv[--p->depth];
    writer_close(&p->buf, lv->pos, lv->count);
    return SLUICE_OK;
}

const void *sdk_props_data(const sluice_props *p, size_t *len, int *err)
{
    if (p->err) {
        *err = p->err;
        return NULL;
    }
    if (p->depth != 1) {
        *err = SLUICE_E_STATE; /* an unclosed nested container */
        return NULL;
    }
    *err = 0;
    *len = p->buf.len;
    return p->buf.data;
}
