/* utf8.c — UTF-8 validation (Unicode Table 3-7) with an 8-bytes-at-a-time ASCII fast path. */
#include "base.h"

#include <string.h>

size_t base_utf8_seq_len(const char *str, size_t n)
{
    const unsigned char *s = (const unsigned char *)str;
    if (n == 0) return 0;
    unsigned c = s[0];
    if (c < 0x80) return 1;
    /* Rejects overlongs (C0, C1, E0 80..9F, F0 80..8F), surrogates (ED A0..BF) and code points
     * above U+10FFFF (F4 90.., F5..FF). */
    size_t len;
    unsigned lo = 0x80, hi = 0xBF;
    if (c >= 0xC2 && c <= 0xDF) {
        len = 2;
    } else if (c >= 0xE0 && c <= 0xEF) {
        len = 3;
        if (c == 0xE0)
            lo = 0xA0;
        else if (c == 0xED)
            hi = 0x9F;
    } else if (c >= 0xF0 && c <= 0xF4) {
        len = 4;
        if (c == 0xF0)
            lo = 0x90;
        else if (c == 0xF4)
            hi = 0x8F;
    } else {
        return 0;
    }
    if (n < len) return 0;
    if (s[1] < lo || s[1] > hi) return 0;
    for (size_t k = 2; k < len; k++)
        if ((s[k] & 0xC0) != 0x80) return 0;
    return len;
}

/* True when s[0..len) is all ASCII. Whole words for the body; a short string or the tail is read
 * as two overlapping loads (8, 4, 2 or 1 bytes), so a typical key or id costs a few instructions
 * instead of a loop per byte (issue 11: validation's UTF-8 check was ~6% of the collector's
 * instructions on a msgpack body). Unaligned loads through memcpy, never beyond len. */
static bool ascii_only(const unsigned char *s, size_t len)
{
    const uint64_t hi8 = 0x8080808080808080ull;
    uint64_t w;
    if (len >= 8) {
        size_t i = 0;
        for (; i + 8 <= len; i += 8) {
            memcpy(&w, s + i, 8);
            if (w & hi8) return false;
        }
        if (i == len) return true;
        memcpy(&w, s + len - 8, 8);
        return (w & hi8) == 0;
    }
    if (len >= 4) {
        uint32_t a, b;
        memcpy(&a, s, 4);
        memcpy(&b, s + len - 4, 4);
        return ((a | b) & 0x80808080u) == 0;
    }
    if (len >= 2) {
        uint16_t a, b;
        memcpy(&a, s, 2);
        memcpy(&b, s + len - 2, 2);
        return ((a | b) & 0x8080u) == 0;
    }
    return len == 0 || s[0] < 0x80;
}

bool base_utf8_valid(const char *str, size_t len)
{
    const unsigned char *s = (const unsigned char *)str;
    if (ascii_only(s, len)) return true;
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
        if (s[i] < 0x80) {
            i++;
            continue;
        }
        size_t n = base_utf8_seq_len(str + i, len - i);
        if (n == 0) return false;
        i += n;
    }
    return true;
}
