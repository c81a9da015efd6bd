/*
 * iso8601.c — ISO-8601 UTC time text <-> epoch milliseconds, on the proleptic Gregorian calendar
 * (H. Hinnant's civil-date algorithms), so dates before 1970 are right and no locale, TZ or libc
 * time state (timegm, gmtime_r) is involved.
 */
#include "base.h"

#include <string.h>

/* Days since 1970-01-01 of a proleptic Gregorian date. */
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

/* "YYYY-MM-DD(T|t| )hh:mm" (s has at least 19 bytes): the epoch ms of that minute. */
static bool parse_minute(const char *s, int64_t *minute_ms)
{
    unsigned y, mo, d, h, mi;
    if (!digits(s, 4, &y) || s[4] != '-' || !digits(s + 5, 2, &mo) || s[7] != '-' ||
        !digits(s + 8, 2, &d))
        return false;
    if (s[10] != 'T' && s[10] != 't' && s[10] != ' ') return false;
    if (!digits(s + 11, 2, &h) || s[13] != ':' || !digits(s + 14, 2, &mi)) return false;
    static const unsigned mdays[] = {31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
    if (mo < 1 || mo > 12 || d < 1) return false;
    if (d > mdays[mo - 1] + (mo == 2 && leap(y))) return false;
    if (h > 23 || mi > 59) return false;
    int64_t days = days_from_civil((int64_t)y, mo, d);
    *minute_ms = (days * 86400 + (int64_t)h * 3600 + (int64_t)mi * 60) * 1000;
    return true;
}

/* ":ss[.f+][Z|z|±hh:mm|±hhmm]" from s[16] to s[len): ms to add to the minute. */
static bool parse_rest(const char *s, size_t len, int64_t *rest_ms)
{
    unsigned sec, ms = 0;
    if (s[16] != ':' || !digits(s + 17, 2, &sec) || sec > 60) return false;
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
    *rest_ms = ((int64_t)sec - off_min * 60) * 1000 + ms;
    return true;
}

bool base_iso8601_parse(const char *s, size_t len, int64_t *ms_out)
{
    int64_t minute, rest;
    if (s == NULL || len < 19 || len > 64) return false;
    if (!parse_minute(s, &minute) || !parse_rest(s, len, &rest)) return false;
    *ms_out = minute + rest;
    return true;
}

bool base_iso8601_parse_cached(base_iso8601_cache_t *c, const char *s, size_t len, int64_t *ms_out)
{
    int64_t minute, rest;
    if (s == NULL || len < 19 || len > 64) return false;
    if (c->valid && memcmp(s, c->minute, sizeof c->minute) == 0) {
        minute = c->minute_ms;
    } else {
        if (!parse_minute(s, &minute)) return false;
        memcpy(c->minute, s, sizeof c->minute);
        c->minute_ms = minute;
        c->valid = true;
    }
    if (!parse_rest(s, len, &rest)) return false;
    *ms_out = minute + rest;
    return true;
}

static void put2(char *p, unsigned v)
{
    p[0] = (char)('0' + v / 10);
    p[1] = (char)('0' + v % 10);
}

/* The "YYYY-MM-DDThh:mm:ss." prefix of one second. */
static void format_second(int64_t secs, char *out)
{
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
}

/* Per thread, the prefixes of the last few seconds formatted: a record's times (received, sent,
 * the event's own) mostly fall in a handful of seconds shared by a whole batch, so the calendar
 * arithmetic runs once per second and stream instead of once per field (issue 11). A miss
 * replaces the least recently used entry, so a field whose second changes with every event
 * (an event's own timestamp) does not evict the batch's shared ones. Thread-local: no locking. */
#define ISO8601_CACHE 4
static _Thread_local struct {
    int64_t secs[ISO8601_CACHE];
    uint64_t used[ISO8601_CACHE]; /* 0: empty; else the tick of the last use */
    uint64_t tick;
    char prefix[ISO8601_CACHE][20];
} iso8601_cache;

size_t base_iso8601_format(int64_t ms, char *out)
{
    const int64_t lo = -62167219200000LL; /* 0000-01-01T00:00:00.000Z */
    const int64_t hi = 253402300799999LL; /* 9999-12-31T23:59:59.999Z */
    if (ms < lo) ms = lo;
    if (ms > hi) ms = hi;
    /* Floor division, so a negative ms falls into the second and day before it. */
    int64_t secs = ms >= 0 ? ms / 1000 : -((-ms + 999) / 1000);
    unsigned milli = (unsigned)(ms - secs * 1000);
    unsigned i = 0, lru = 0;
    for (; i < ISO8601_CACHE; i++) {
        if (iso8601_cache.used[i] != 0 && iso8601_cache.secs[i] == secs) break;
        if (iso8601_cache.used[i] < iso8601_cache.used[lru]) lru = i;
    }
    if (i == ISO8601_CACHE) {
        i = lru;
        iso8601_cache.secs[i] = secs;
        format_second(secs, iso8601_cache.prefix[i]);
    }
    iso8601_cache.used[i] = ++iso8601_cache.tick;
    memcpy(out, iso8601_cache.prefix[i], 20);
    out[20] = (char)('0' + milli / 100);
    put2(out + 21, milli % 100);
    out[23] = 'Z';
    out[24] = '\0';
    return BASE_ISO8601_LEN;
}
