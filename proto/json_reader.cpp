/*
 * json_reader.cpp — simdjson's DOM parser behind proto's C API (json_reader.h). The project's only
 * C++: built without exceptions or RTTI, and nothing C++ crosses the API (no exception can reach
 * C: simdjson's error-code API is used throughout and its allocations are nothrow).
 *
 * Why simdjson's DOM and not its On Demand API: the DOM parse validates the whole document before
 * we look at it and knows every container's size, so each map/array gets exactly one arena
 * allocation of the right size; On Demand would need a size pass or a growable stack per level.
 * Measured against yajl in tests/proto/bench_json.c (table in proto/README.md).
 *
 * The repair pass (see json_reader.h) is a second, lexical pass over a copy of the body, run only
 * after simdjson refused the original with a string or number error. It tracks just enough to
 * know whether a byte is inside a string (a quote opens or closes one, a backslash escapes the
 * next byte) and rewrites two spellings simdjson cannot be told to accept: a lone surrogate
 * escape becomes \ufffd (same length), and an integer literal that does not fit 64 bits gets an
 * "e0" suffix, so simdjson reads it as a double. Then simdjson parses the copy and decides, as for
 * any body, whether it is JSON.
 */
#include "json_reader.h"

#include <simdjson.h>

#include <cstdlib>
#include <cstring>
#include <new>

extern "C" {
#include "proto.h"
}

using simdjson::error_code;
namespace dom = simdjson::dom;

struct proto_json_reader {
    dom::parser parser;
    char *fix = nullptr; /* the repair copy, reused; fix_cap bytes */
    size_t fix_cap = 0;
};

extern "C" proto_json_reader_t *proto_json_reader_new(void)
{
    return new (std::nothrow) proto_json_reader();
}

extern "C" void proto_json_reader_free(proto_json_reader_t *r)
{
    if (r == nullptr) return;
    std::free(r->fix);
    delete r;
}

/* ---- tape to msgpack_object ----------------------------------------------------------------- */

/*
 * The parsed document is read straight from simdjson's tape (doc/tape.md in simdjson: one 64-bit
 * entry per value, type in the top byte; '{'/'[' carry the index just past their matching close
 * and the element count, saturated at 0xFFFFFF, in bits 32..55; '"' carries the offset of a
 * uint32 length + bytes + NUL in the string buffer; 'l'/'u'/'d' keep their value in the next
 * entry). Walking the tape instead of dom::element's accessors halves the conversion cost. The
 * strings are not copied one by one: the used part of the string buffer goes into the arena with
 * one memcpy and every string points into that copy.
 */
struct tape_walk {
    const uint64_t *tape;
    const uint8_t *sbuf; /* the arena's copy of the string buffer */
    msgpack_zone *zone;
};

static inline char tape_type(uint64_t t)
{
    return static_cast<char>(t >> 56);
}

static inline size_t tape_next(const uint64_t *tape, size_t i)
{
    char c = tape_type(tape[i]);
    if (c == '{' || c == '[') return static_cast<uint32_t>(tape[i]);
    return c == 'l' || c == 'u' || c == 'd' ? i + 2 : i + 1;
}

static size_t tape_count(const uint64_t *tape, size_t i)
{
    size_t n = static_cast<size_t>((tape[i] >> 32) & simdjson::internal::JSON_COUNT_MASK);
    if (n < simdjson::internal::JSON_COUNT_MASK) return n;
    size_t end = static_cast<uint32_t>(tape[i]) - 1;
    n = 0;
    for (size_t j = i + 1; j < end; j = tape_next(tape, j))
        n++;
    return tape_type(tape[i]) == '{' ? n / 2 : n;
}

static void tape_str(const struct tape_walk *w, uint64_t t, msgpack_object *o)
{
    const uint8_t *p = w->sbuf + (t & simdjson::internal::JSON_VALUE_MASK);
    uint32_t n;
    std::memcpy(&n, p, sizeof n);
    o->type = MSGPACK_OBJECT_STR;
    o->via.str.size = n;
    o->via.str.ptr = reinterpret_cast<const char *>(p + sizeof n);
}

/* Converts the value at tape[*i] and moves *i past it. Recursion depth is bounded by the parser's
 * max_depth (the caller's depth_cap). */
static int tape_value(const struct tape_walk *w, size_t *i, msgpack_object *o)
{
    const uint64_t *tape = w->tape;
    uint64_t t = tape[*i];
    switch (tape_type(t)) {
    case '{': {
        size_t n = tape_count(tape, *i), j = *i + 1;
        o->type = MSGPACK_OBJECT_MAP;
        o->via.map.size = static_cast<uint32_t>(n);
        o->via.map.ptr = nullptr;
        if (n > 0) {
            auto *kv = static_cast<msgpack_object_kv *>(
                msgpack_zone_malloc(w->zone, n * sizeof(msgpack_object_kv)));
            if (kv == nullptr) return PROTO_E_NOMEM;
            o->via.map.ptr = kv;
            for (size_t k = 0; k < n; k++) {
                tape_str(w, tape[j++], &kv[k].key);
                int rc = tape_value(w, &j, &kv[k].val);
                if (rc != PROTO_OK) return rc;
            }
        }
        *i = static_cast<uint32_t>(t);
        return PROTO_OK;
    }
    case '[': {
        size_t n = tape_count(tape, *i), j = *i + 1;
        o->type = MSGPACK_OBJECT_ARRAY;
        o->via.array.size = static_cast<uint32_t>(n);
        o->via.array.ptr = nullptr;
        if (n > 0) {
            auto *v = static_cast<msgpack_object *>(
                msgpack_zone_malloc(w->zone, n * sizeof(msgpack_object)));
            if (v == nullptr) return PROTO_E_NOMEM;
            o->via.array.ptr = v;
            for (size_t k = 0; k < n; k++) {
                int rc = tape_value(w, &j, &v[k]);
                if (rc != PROTO_OK) return rc;
            }
        }
        *i = static_cast<uint32_t>(t);
        return PROTO_OK;
    }
    case '"':
        tape_str(w, t, o);
        *i += 1;
        return PROTO_OK;
    case 'l': {
        int64_t v;
        std::memcpy(&v, &tape[*i + 1], sizeof v);
        if (v >= 0) {
            o->type = MSGPACK_OBJECT_POSITIVE_INTEGER;
            o->via.u64 = static_cast<uint64_t>(v);
        } else {
            o->type = MSGPACK_OBJECT_NEGATIVE_INTEGER;
            o->via.i64 = v;
        }
        *i += 2;
        return PROTO_OK;
    }
    case 'u':
        o->type = MSGPACK_OBJECT_POSITIVE_INTEGER;
        o->via.u64 = tape[*i + 1];
        *i += 2;
        return PROTO_OK;
    case 'd':
        o->type = MSGPACK_OBJECT_FLOAT64;
        std::memcpy(&o->via.f64, &tape[*i + 1], sizeof o->via.f64);
        *i += 2;
        return PROTO_OK;
    case 't':
    case 'f':
        o->type = MSGPACK_OBJECT_BOOLEAN;
        o->via.boolean = tape_type(t) == 't';
        *i += 1;
        return PROTO_OK;
    default: /* 'n' */
        o->type = MSGPACK_OBJECT_NIL;
        *i += 1;
        return PROTO_OK;
    }
}

/* The parsed document into *root; strings into one arena copy of the used string buffer. */
static int convert(const dom::document &doc, msgpack_zone *z, msgpack_object *root)
{
    const uint64_t *tape = doc.tape.get();
    size_t last = static_cast<size_t>(tape[0] & simdjson::internal::JSON_VALUE_MASK);
    /* Strings sit in the buffer in tape order: the last one ends the used part. */
    size_t used = 0;
    for (size_t j = 1; j < last;
         j += tape_type(tape[j]) == 'l' || tape_type(tape[j]) == 'u' || tape_type(tape[j]) == 'd'
                  ? 2
                  : 1) {
        if (tape_type(tape[j]) == '"') {
            size_t off = static_cast<size_t>(tape[j] & simdjson::internal::JSON_VALUE_MASK);
            uint32_t n;
            std::memcpy(&n, doc.string_buf.get() + off, sizeof n);
            used = off + sizeof n + n;
        }
    }
    struct tape_walk w = {tape, nullptr, z};
    if (used > 0) {
        auto *copy = static_cast<uint8_t *>(msgpack_zone_malloc_no_align(z, used));
        if (copy == nullptr) return PROTO_E_NOMEM;
        std::memcpy(copy, doc.string_buf.get(), used);
        w.sbuf = copy;
    }
    size_t i = 1;
    return tape_value(&w, &i, root);
}

/* ---- repair pass ----------------------------------------------------------------------------- */

static int hex4(const char *p, const char *end)
{
    if (end - p < 4) return -1;
    int v = 0;
    for (int i = 0; i < 4; i++) {
        char c = p[i];
        int d = c >= '0' && c <= '9'   ? c - '0'
                : c >= 'a' && c <= 'f' ? c - 'a' + 10
                : c >= 'A' && c <= 'F' ? c - 'A' + 10
                                       : -1;
        if (d < 0) return -1;
        v = v << 4 | d;
    }
    return v;
}

/* True when the digits [p, end) (no sign) do not fit: above UINT64_MAX, or above 2^63 when neg. */
static bool beyond_64(const char *p, size_t n, bool neg)
{
    if (n < 19) return false;
    if (n > 20) return true;
    uint64_t v = 0;
    for (size_t i = 0; i < n; i++) {
        uint64_t d = static_cast<uint64_t>(p[i] - '0');
        if (v > (UINT64_MAX - d) / 10) return true;
        v = v * 10 + d;
    }
    return neg && v > static_cast<uint64_t>(INT64_MAX) + 1;
}

/* Writes the repaired copy of s[0..n) into out (room for n + n / 10 + 2 bytes), returns its
 * length; counts what it changed. An escape or number cut short by the end of the body is copied
 * as is (simdjson then refuses it as usual). */
static size_t repair(const char *s, size_t n, char *out, uint32_t *surrogates, uint32_t *big_ints)
{
    const char *p = s, *end = s + n;
    char *w = out;
    bool in_str = false;
    while (p < end) {
        char c = *p;
        if (in_str) {
            if (c == '"') {
                in_str = false;
            } else if (c == '\\' && end - p >= 2 && p[1] == 'u') {
                int cp = hex4(p + 2, end);
                if (cp >= 0xD800 && cp <= 0xDBFF && end - p >= 12 && p[6] == '\\' && p[7] == 'u') {
                    int lo = hex4(p + 8, end);
                    if (lo >= 0xDC00 && lo <= 0xDFFF) { /* a proper pair */
                        std::memcpy(w, p, 12);
                        w += 12;
                        p += 12;
                        continue;
                    }
                }
                if (cp >= 0xD800 && cp <= 0xDFFF) {
                    std::memcpy(w, "\\ufffd", 6);
                    w += 6;
                    p += 6;
                    (*surrogates)++;
                    continue;
                }
            } else if (c == '\\' && end - p >= 2) {
                *w++ = *p++; /* the backslash; the escaped byte is copied below */
            }
            *w++ = *p++;
            continue;
        }
        if (c == '"') {
            in_str = true;
            *w++ = *p++;
            continue;
        }
        if (c == '-' || (c >= '0' && c <= '9')) {
            bool neg = c == '-';
            const char *d = p + (neg ? 1 : 0), *q = d;
            while (q < end && *q >= '0' && *q <= '9')
                q++;
            bool is_float = q < end && (*q == '.' || *q == 'e' || *q == 'E');
            std::memcpy(w, p, static_cast<size_t>(q - p));
            w += q - p;
            if (!is_float && beyond_64(d, static_cast<size_t>(q - d), neg)) {
                std::memcpy(w, "e0",
                            2); /* an integer literal >= 19 digits: at most n/10 of these */
                w += 2;
                (*big_ints)++;
            }
            p = q;
            continue;
        }
        *w++ = *p++;
    }
    return static_cast<size_t>(w - out);
}

/* ---- parse ----------------------------------------------------------------------------------- */

static int parse(proto_json_reader_t *r, const char *s, size_t n, msgpack_zone *z,
                 msgpack_object *root, error_code *err)
{
    dom::element e;
    *err = r->parser.parse(s, n).get(e);
    switch (*err) {
    case simdjson::SUCCESS:
        return convert(r->parser.doc, z, root);
    case simdjson::MEMALLOC:
        return PROTO_E_NOMEM;
    case simdjson::DEPTH_ERROR:
        return PROTO_E_TOO_DEEP;
    default:
        return PROTO_E_MALFORMED;
    }
}

extern "C" int proto_json_read(proto_json_reader_t *r, const char *body, size_t len,
                               uint32_t depth_cap, msgpack_zone *zone, msgpack_object *root,
                               uint32_t *surrogates, uint32_t *big_ints)
{
    if (r->parser.max_depth() != depth_cap || r->parser.capacity() < len) {
        size_t cap = len > r->parser.capacity() ? len : r->parser.capacity();
        if (r->parser.allocate(cap, depth_cap) != simdjson::SUCCESS) return PROTO_E_NOMEM;
    }
    error_code err;
    int rc = parse(r, body, len, zone, root, &err);
    if (err != simdjson::STRING_ERROR && err != simdjson::NUMBER_ERROR) return rc;

    size_t need = len + len / 10 + 2;
    if (r->fix_cap < need) {
        char *p = static_cast<char *>(std::realloc(r->fix, need));
        if (p == nullptr) return PROTO_E_NOMEM;
        r->fix = p;
        r->fix_cap = need;
    }
    uint32_t sur = 0, big = 0;
    size_t n = repair(body, len, r->fix, &sur, &big);
    if (sur == 0 && big == 0) return rc; /* nothing to repair: the original error stands */
    if (n > r->parser.capacity() && r->parser.allocate(n, depth_cap) != simdjson::SUCCESS)
        return PROTO_E_NOMEM;
    rc = parse(r, r->fix, n, zone, root, &err);
    if (rc == PROTO_OK) {
        *surrogates += sur;
        *big_ints += big;
    }
    return rc;
}
