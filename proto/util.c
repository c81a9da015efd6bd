/*
 * util.c — the small pieces of the wire format that everything else builds on: error tables,
 * event type names, default limits, the bounded output buffer, UTF-8 validation and ISO-8601
 * time parsing/formatting (timegm-free, so no locale, TZ or libc time state is involved).
 */
#include "proto.h"

#include <stdlib.h>
#include <string.h>

/* ---- errors ---------------------------------------------------------------------------------- */

static const int err_values[] = {
#define PROTO_X_VAL(name, val, code, msg) val,
    PROTO_ERRORS(PROTO_X_VAL)
#undef PROTO_X_VAL
};
static const char *const err_codes[] = {
#define PROTO_X_CODE(name, val, code, msg) code,
    PROTO_ERRORS(PROTO_X_CODE)
#undef PROTO_X_CODE
};
static const char *const err_messages[] = {
#define PROTO_X_MSG(name, val, code, msg) msg,
    PROTO_ERRORS(PROTO_X_MSG)
#undef PROTO_X_MSG
};

const int PROTO_ERR_COUNT = (int)(sizeof err_values / sizeof err_values[0]);

int proto_err_index(int err)
{
    /* The table is short (~45 entries) and this runs once per rejected event, so a linear scan
     * beats keeping a second, hand-maintained dense map in sync with the X-macro. */
    for (int i = 0; i < PROTO_ERR_COUNT; i++)
        if (err_values[i] == err) return i;
    return -1;
}

int proto_err_at(int i)
{
    if (i < 0 || i >= PROTO_ERR_COUNT) return PROTO_E_MALFORMED;
    return err_values[i];
}

const char *proto_err_code(int err)
{
    int i = proto_err_index(err);
    return i < 0 ? "unknown" : err_codes[i];
}

const char *proto_err_message(int err)
{
    int i = proto_err_index(err);
    return i < 0 ? "unknown error" : err_messages[i];
}

bool proto_err_is_event_level(int err)
{
    return err <= PROTO_E_EVENT_NOT_A_MAP;
}

/* ---- types and limits ------------------------------------------------------------------------ */

static const char *const type_names[] = {"",     "track",  "identify", "group",
                                         "page", "screen", "alias"};

const char *proto_type_name(proto_type_t t)
{
    if ((int)t < 0 || (size_t)t >= sizeof type_names / sizeof type_names[0]) return "";
    return type_names[t];
}

proto_type_t proto_type_parse(const char *s, size_t len)
{
    if (s == NULL) return PROTO_T_NONE;
    for (size_t t = PROTO_T_TRACK; t < sizeof type_names / sizeof type_names[0]; t++) {
        if (strlen(type_names[t]) == len && memcmp(type_names[t], s, len) == 0)
            return (proto_type_t)t;
    }
    return PROTO_T_NONE;
}

proto_limits_t proto_limits_default(void)
{
    proto_limits_t l = {
        .event_bytes = 32 * 1024,
        .body_bytes = 512 * 1024,
        .max_depth = 16,
        .max_events = 10000,
    };
    return l;
}

proto_str_t proto_event_key(const proto_event_t *ev)
{
    if (ev->account_id.ptr != NULL && ev->account_id.len > 0) return ev->account_id;
    if (ev->user_id.ptr != NULL && ev->user_id.len > 0) return ev->user_id;
    if (ev->anonymous_id.ptr != NULL && ev->anonymous_id.len > 0) return ev->anonymous_id;
    proto_str_t none = {NULL, 0};
    return none;
}

/* ---- bounded buffer -------------------------------------------------------------------------- */

void proto_buf_init(proto_buf_t *buf, size_t max)
{
    buf->data = NULL;
    buf->len = 0;
    buf->cap = 0;
    buf->max = max;
}

int proto_buf_reserve(proto_buf_t *buf, size_t n)
{
    if (n > buf->max || buf->len > buf->max - n) return PROTO_E_NOMEM;
    size_t need = buf->len + n;
    if (need <= buf->cap) return PROTO_OK;
    size_t cap = buf->cap ? buf->cap : 256;
    while (cap < need)
        cap = cap > buf->max / 2 ? buf->max : cap * 2;
    char *p = realloc(buf->data, cap);
    if (p == NULL) return PROTO_E_NOMEM;
    buf->data = p;
    buf->cap = cap;
    return PROTO_OK;
}

int proto_buf_append(proto_buf_t *buf, const void *p, size_t n)
{
    if (n == 0) return PROTO_OK;
    /* max is checked even when the allocation has room: a caller may lower max to bound one
     * record inside a buffer that already grew for bigger ones. */
    if (n > buf->max || buf->len > buf->max - n) return PROTO_E_NOMEM;
    if (buf->cap - buf->len < n) {
        int rc = proto_buf_reserve(buf, n);
        if (rc != PROTO_OK) return rc;
    }
    memcpy(buf->data + buf->len, p, n);
    buf->len += n;
    return PROTO_OK;
}

void proto_buf_reset(proto_buf_t *buf)
{
    buf->len = 0;
}

void proto_buf_free(proto_buf_t *buf)
{
    free(buf->data);
    buf->data = NULL;
    buf->len = 0;
    buf->cap = 0;
}

/* ---- UTF-8 ----------------------------------------------------------------------------------- */

bool proto_utf8_valid(const char *str, size_t len)
{
    const unsigned char *s = (const unsigned char *)str;
    size_t i = 0;
    while (i < len) {
        /* ASCII fast path: 8 bytes at a time while no high bit is set. */
        while (i + 8 <= len) {
            uint64_t w;
            memcpy(&w, s + i, 8);
            if (w & 0x8080808080808080ull) break;
            i += 8;
        }
        if (i >= len) break;
        unsigned c = s[i];
        if (c < 0x80) {
            i++;
            continue;
        }
        /* Unicode Table 3-7 (well-formed byte sequences): rejects overlongs (C0, C1, E0 80..9F,
         * F0 80..8F), surrogates (ED A0..BF) and code points above U+10FFFF (F4 90.., F5..FF). */
        size_t n;
        unsigned lo = 0x80, hi = 0xBF;
        if (c >= 0xC2 && c <= 0xDF) {
            n = 1;
        } else if (c >= 0xE0 && c <= 0xEF) {
            n = 2;
            if (c == 0xE0)
                lo = 0xA0;
            else if (c == 0xED)
                hi = 0x9F;
        } else if (c >= 0xF0 && c <= 0xF4) {
            n = 3;
            if (c == 0xF0)
                lo = 0x90;
            else if (c == 0xF4)
                hi = 0x8F;
        } else {
            return false;
        }
        if (len - i - 1 < n) return false;
        if (s[i + 1] < lo || s[i + 1] > hi) return false;
        for (size_t k = 2; k <= n; k++)
            if ((s[i + k] & 0xC0) != 0x80) return false;
        i += n + 1;
    }
    return true;
}

/* ---- ISO-8601 -------------------------------------------------------------------------------- */

/* Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's days_from_civil). */
static int64_t days_from_civil(int64_t y, unsigned m, unsigned d)
{
    y -= m <= 2;
    const int64_t era = (y >= 0 ? y : y - 399) / 400;
    const unsigned yoe = (unsigned)(y - era * 400);
    const unsigned doy = (153 * (m > 2 ? m - 3 : m + 9) + 2) / 5 + d - 1;
    const unsigned doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    return era * 146097 + (int64_t)doe - 719468;
}

static void civil_from_days(int64_t z, int64_t *y, unsigned *m, unsigned *d)
{
    z += 719468;
    const int64_t era = (z >= 0 ? z : z - 146096) / 146097;
    const unsigned doe = (unsigned)(z - era * 146097);
    const unsigned yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
    const unsigned doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    const unsigned mp = (5 * doy + 2) / 153;
    *d = doy - (153 * mp + 2) / 5 + 1;
    *m = mp < 10 ? mp + 3 : mp - 9;
    *y = (int64_t)yoe + era * 400 + (*m <= 2);
}

static bool leap(int64_t y)
{
    return (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
}

static bool digits(const char *s, size_t n, unsigned *out)
{
    unsigned v = 0;
    for (size_t i = 0; i < n; i++) {
        if (s[i] < '0' || s[i] > '9') return false;
        v = v * 10 + (unsigned)(s[i] - '0');
    }
    *out = v;
    return true;
}

/*
 * Accepted: YYYY-MM-DD(T|t| )hh:mm:ss[.f+][Z|z|±hh:mm|±hhmm]. A missing zone means UTC (what
 * every Segment SDK means; local time of an unknown machine is not recoverable). Fractions of any
 * length are truncated to milliseconds; second 60 (a leap second) rolls into the next minute.
 */
bool proto_parse_iso8601(const char *s, size_t len, int64_t *ms_out)
{
    unsigned y, mo, d, h, mi, sec, ms = 0;
    if (s == NULL || len < 19 || len > 64) return false;
    if (!digits(s, 4, &y) || s[4] != '-' || !digits(s + 5, 2, &mo) || s[7] != '-' ||
        !digits(s + 8, 2, &d))
        return false;
    if (s[10] != 'T' && s[10] != 't' && s[10] != ' ') return false;
    if (!digits(s + 11, 2, &h) || s[13] != ':' || !digits(s + 14, 2, &mi) || s[16] != ':' ||
        !digits(s + 17, 2, &sec))
        return false;
    static const unsigned mdays[] = {31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
    if (mo < 1 || mo > 12 || d < 1) return false;
    if (d > mdays[mo - 1] + (mo == 2 && leap(y))) return false;
    if (h > 23 || mi > 59 || sec > 60) return false;
    size_t i = 19;
    if (i < len && s[i] == '.') {
        i++;
        size_t start = i;
        while (i < len && s[i] >= '0' && s[i] <= '9') {
            if (i - start < 3) ms = ms * 10 + (unsigned)(s[i] - '0');
            i++;
        }
        if (i == start) return false;
        for (size_t k = i - start; k < 3; k++)
            ms *= 10;
    }
    int64_t off_min = 0;
    if (i < len) {
        if ((s[i] == 'Z' || s[i] == 'z') && i + 1 == len) {
            i++;
        } else if (s[i] == '+' || s[i] == '-') {
            unsigned oh, om;
            size_t rest = len - i - 1;
            const char *o = s + i + 1;
            if (rest == 5 && o[2] == ':') {
                if (!digits(o, 2, &oh) || !digits(o + 3, 2, &om)) return false;
            } else if (rest == 4) {
                if (!digits(o, 2, &oh) || !digits(o + 2, 2, &om)) return false;
            } else {
                return false;
            }
            if (oh > 23 || om > 59) return false;
            off_min = (int64_t)oh * 60 + om;
            if (s[i] == '-') off_min = -off_min;
            i = len;
        } else {
            return false;
        }
    }
    if (i != len) return false;
    int64_t days = days_from_civil((int64_t)y, mo, d);
    int64_t secs = days * 86400 + (int64_t)h * 3600 + (int64_t)mi * 60 + sec - off_min * 60;
    *ms_out = secs * 1000 + ms;
    return true;
}

static void put2(char *p, unsigned v)
{
    p[0] = (char)('0' + v / 10);
    p[1] = (char)('0' + v % 10);
}

size_t proto_format_iso8601(int64_t ms, char *out)
{
    /* Clamped to years 0000..9999 so the output always has the fixed 24-character shape. */
    const int64_t lo = -62167219200000LL; /* 0000-01-01T00:00:00.000Z */
    const int64_t hi = 253402300799999LL; /* 9999-12-31T23:59:59.999Z */
    if (ms < lo) ms = lo;
    if (ms > hi) ms = hi;
    int64_t secs = ms >= 0 ? ms / 1000 : -((-ms + 999) / 1000);
    unsigned milli = (unsigned)(ms - secs * 1000);
    int64_t days = secs >= 0 ? secs / 86400 : -((-secs + 86399) / 86400);
    unsigned sod = (unsigned)(secs - days * 86400);
    int64_t y;
    unsigned m, d;
    civil_from_days(days, &y, &m, &d);
    unsigned yy = (unsigned)y;
    put2(out, yy / 100);
    put2(out + 2, yy % 100);
    out[4] = '-';
    put2(out + 5, m);
    out[7] = '-';
    put2(out + 8, d);
    out[10] = 'T';
    put2(out + 11, sod / 3600);
    out[13] = ':';
    put2(out + 14, sod / 60 % 60);
    out[16] = ':';
    put2(out + 17, sod % 60);
    out[19] = '.';
    out[20] = (char)('0' + milli / 100);
    put2(out + 21, milli % 100);
    out[23] = 'Z';
    out[24] = '\0';
    return 24;
}
