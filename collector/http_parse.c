/*
 * http_parse.c — llhttp's callbacks for one connection (see http_conn.h for the contract and
 * http_conn.c for the connection states): the target, the headers sluice reads and the body
 * are captured as they arrive, and every limit is checked while parsing — header bytes (431),
 * Content-Length (413 before the body), accumulated chunked body (413), body memory (503),
 * duplicated or missing singleton headers, obs-fold, transfer codings (400). At the end of the
 * headers the route table decides the route (routes.h), and for an event endpoint the body
 * format, its encoding and the write key are taken before the body is read.
 */
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "auth.h"
#include "http_conn_internal.h"
#include "log.h"
#include "metrics.h"

/* Headers we capture (http_hdr_t, http_conn.h); values longer than their buffer are flagged,
 * never truncated silently. */
static const char *const hdr_names[HTTP_HDR_COUNT] = {"content-type",
                                                      "content-encoding",
                                                      "authorization",
                                                      "expect",
                                                      "host",
                                                      "access-control-request-headers",
                                                      "transfer-encoding"};
static const size_t hdr_caps[HTTP_HDR_COUNT] = {128, 64, 1100, 32, 256, 256, 32};

/* Headers that may appear at most once (RFC 9110 §5.3: a second one is either a list the field
 * does not allow or a disagreement a front proxy may resolve differently; CVE-2022-32213). */
static const char *const once_names[] = {"host",           "authorization",
                                         "content-type",   "content-encoding",
                                         "content-length", "transfer-encoding"};
#define ONCE_HOST  0
#define ONCE_COUNT (sizeof once_names / sizeof once_names[0])

static http_conn_t *conn_of(llhttp_t *p)
{
    return p->data;
}

/* Body format from a Content-Type value (SPEC §3): msgpack only when labelled
 * application/msgpack or application/x-msgpack (parameters ignored), JSON whatever else the
 * client says — missing, application/json, text/plain (browsers' sendBeacon and
 * analytics-next's fetch), application/x-www-form-urlencoded (@rudderstack/rudder-sdk-node's
 * gzip bodies) or anything else. A body that then is not JSON is a 400, not a 415. */
static proto_format_t content_type_parse(const char *s, size_t len)
{
    size_t end = 0;
    while (end < len && s[end] != ';')
        end++;
    size_t b = 0;
    while (b < end && (s[b] == ' ' || s[b] == '\t'))
        b++;
    while (end > b && (s[end - 1] == ' ' || s[end - 1] == '\t'))
        end--;
    const char *t = s + b;
    size_t n = end - b;
    if (n == 19 && strncasecmp(t, "application/msgpack", 19) == 0) return PROTO_FMT_MSGPACK;
    if (n == 21 && strncasecmp(t, "application/x-msgpack", 21) == 0) return PROTO_FMT_MSGPACK;
    return PROTO_FMT_JSON;
}

void http__request_reset(http_conn_t *c)
{
    c->start_ns = 0;
    c->header_bytes = 0;
    c->url_len = 0;
    c->url_long = false;
    c->field_len = 0;
    c->field_long = false;
    c->cur_hdr = HTTP_HDR_NONE;
    for (int i = 0; i < HTTP_HDR_COUNT; i++) {
        c->hdr[i].len = 0;
        c->hdr[i].seen = false;
        c->hdr[i].overflow = false;
    }
    c->route = NULL;
    c->early_status = 0;
    c->fatal_status = 0;
    c->header_key = false;
    c->source = NULL;
    c->key_index = -1;
    c->once_seen = 0;
    base_buf_reset(&c->body);
    c->body.max = (size_t)c->hl->cfg->body_bytes;
    c->body_seen = 0;
    /* Keep a small buffer for the next request, unless bodies are using half the budget. */
    if (c->body.cap > BODY_KEEP_MAX ||
        (c->body.cap > 0 && atomic_load_explicit(c->hl->body_mem, memory_order_relaxed) >=
                                c->hl->cfg->body_memory / 2)) {
        http__body_mem_adjust(c->hl, c->body.cap, 0);
        base_buf_free(&c->body);
    }
}

static int on_message_begin(llhttp_t *p)
{
    http_conn_t *c = conn_of(p);
    http__request_reset(c);
    c->start_ns = uv_hrtime();
    c->deadline_ns = c->start_ns + (uint64_t)c->hl->cfg->request_timeout_ms * 1000000u;
    c->state = CS_HEADERS;
    http__timer_arm_request(c, c->hl->cfg->header_timeout_ms);
    return 0;
}

static int header_budget(http_conn_t *c, size_t n)
{
    c->header_bytes += n;
    if (c->header_bytes > c->hl->cfg->header_bytes) {
        c->fatal_status = 431;
        c->fatal_code = "headers_too_large";
        c->fatal_msg = "request headers larger than allowed";
        return HPE_USER;
    }
    return 0;
}

/* llhttp hands a URL, field or value over in pieces: appends one piece to buf (holding *len of
 * cap bytes), or sets *overflow and keeps what it has once the piece would not fit. */
static void append_capped(char *buf, size_t *len, size_t cap, bool *overflow, const char *at,
                          size_t n)
{
    if (*overflow || *len + n > cap) {
        *overflow = true;
        return;
    }
    memcpy(buf + *len, at, n);
    *len += n;
}

static int on_url(llhttp_t *p, const char *at, size_t len)
{
    http_conn_t *c = conn_of(p);
    append_capped(c->url, &c->url_len, URL_MAX, &c->url_long, at, len);
    return header_budget(c, len);
}

static int on_header_field(llhttp_t *p, const char *at, size_t len)
{
    http_conn_t *c = conn_of(p);
    append_capped(c->field, &c->field_len, FIELD_MAX, &c->field_long, at, len);
    return header_budget(c, len);
}

static int on_header_field_complete(llhttp_t *p)
{
    http_conn_t *c = conn_of(p);
    c->cur_hdr = HTTP_HDR_NONE;
    c->value_started = false;
    for (unsigned i = 0; i < ONCE_COUNT && !c->field_long; i++) {
        if (strlen(once_names[i]) != c->field_len ||
            strncasecmp(c->field, once_names[i], c->field_len) != 0)
            continue;
        if (c->once_seen & (1u << i)) {
            c->fatal_status = 400;
            c->fatal_code = "bad_request";
            c->fatal_msg = "a header that must appear once is repeated";
            return HPE_USER;
        }
        c->once_seen |= 1u << i;
        break;
    }
    if (!c->field_long) {
        for (int i = 0; i < HTTP_HDR_COUNT; i++) {
            if (strlen(hdr_names[i]) == c->field_len &&
                strncasecmp(c->field, hdr_names[i], c->field_len) == 0) {
                c->cur_hdr = (http_hdr_t)i;
                c->hdr[i].len = 0;
                c->hdr[i].overflow = false;
                c->hdr[i].seen = true;
                break;
            }
        }
    }
    c->field_len = 0;
    c->field_long = false;
    return header_budget(c, HEADER_OVERHEAD);
}

static int on_header_value(llhttp_t *p, const char *at, size_t len)
{
    http_conn_t *c = conn_of(p);
    /* llhttp hands a value over in one piece per read, and starts a new piece within a read
     * only for an obs-fold continuation line. RFC 9112 §5.2 lets a server refuse those, and a
     * proxy may unfold them differently: refuse. */
    bool fold = c->value_started && at != c->exec_data;
    c->value_started = true;
    if (fold) {
        c->fatal_status = 400;
        c->fatal_code = "bad_request";
        c->fatal_msg = "folded header lines (obs-fold) are not accepted";
        return HPE_USER;
    }
    if (c->cur_hdr != HTTP_HDR_NONE) {
        hdr_val_t *h = &c->hdr[c->cur_hdr];
        append_capped(h->buf, &h->len, hdr_caps[c->cur_hdr], &h->overflow, at, len);
    }
    return header_budget(c, len);
}

static int on_header_value_complete(llhttp_t *p)
{
    conn_of(p)->cur_hdr = HTTP_HDR_NONE;
    return 0;
}

static void early(http_conn_t *c, int status, const char *code, const char *msg)
{
    if (c->early_status != 0) return;
    c->early_status = status;
    c->early_code = code;
    c->early_msg = msg;
}

static void send_continue(http_conn_t *c)
{
    static const char line[] = "HTTP/1.1 100 Continue\r\n\r\n";
    conn_write_t *w = malloc(sizeof *w + sizeof line - 1);
    if (w == NULL) return; /* the client sends the body after its own timeout */
    memcpy(w->data, line, sizeof line - 1);
    w->len = sizeof line - 1;
    w->close_after = false;
    w->final = false;
    w->observe = false;
    http__conn_write_raw(c, w);
}

/* Auth from the Authorization header, decided before the body is read. */
static void header_auth(http_conn_t *c)
{
    http_loop_t *hl = c->hl;
    hdr_val_t *h = &c->hdr[HTTP_HDR_AUTHORIZATION];
    if (!h->seen) return; /* maybe the body carries writeKey */
    char key[AUTH_KEY_MAX];
    size_t klen = 0;
    int rc =
        h->overflow ? AUTH_E_MALFORMED : auth_parse_header(h->buf, h->len, key, sizeof key, &klen);
    if (rc == AUTH_OK) rc = auth_lookup(hl->ingest->auth, key, klen, &c->source, &c->key_index);
    if (rc == AUTH_OK) {
        c->header_key = true;
        return;
    }
    if (hl->cfg->dev) return; /* dev: anything goes, the body or "dev" decides the source */
    metrics_add(METRIC_AUTH_FAILURES, 1);
    if (rc == AUTH_E_UNKNOWN && log_get_level() <= LOG_DEBUG) {
        char masked[16];
        LOG(LOG_DEBUG, "unknown_write_key", LS("key", auth_mask(key, klen, masked, sizeof masked)));
    }
    early(c, 401, "unauthorized",
          rc == AUTH_E_UNKNOWN ? "unknown write key"
                               : (rc == AUTH_E_MISSING ? "a write key is required"
                                                       : "malformed Authorization header"));
}

/* A refusal decided at the headers is answered at message complete (the body is read and
 * discarded, the connection kept). But a client that sent Expect: 100-continue waits before
 * sending its body: answer it now and close (RFC 9110 §10.1.1). */
static int refuse_early(http_conn_t *c, bool expect_continue)
{
    if (!expect_continue) return 0;
    c->fatal_status = c->early_status;
    c->fatal_code = c->early_code;
    c->fatal_msg = c->early_msg;
    return HPE_USER;
}

/* True when a Transfer-Encoding value is exactly "chunked" (case-insensitive, blanks around). */
static bool te_is_chunked(const char *s, size_t len)
{
    while (len > 0 && (*s == ' ' || *s == '\t')) {
        s++;
        len--;
    }
    while (len > 0 && (s[len - 1] == ' ' || s[len - 1] == '\t'))
        len--;
    return len == 7 && strncasecmp(s, "chunked", 7) == 0;
}

/* A body that does not fit in limits.body_memory: 503 now, and close. */
static int refuse_body_memory(http_conn_t *c)
{
    c->fatal_status = 503;
    c->fatal_code = "unavailable";
    c->fatal_msg = "request bodies are using all the memory set aside for them; retry later";
    return HPE_USER;
}

/* The answer when the body buffer cannot take the request: 413 past limits.body_bytes (the
 * buffer's max; the parser checks that limit first, so this is a backstop), 503 when malloc
 * failed. */
static int body_failed(http_conn_t *c, int rc)
{
    if (rc == BASE_E_TOO_LARGE) {
        c->fatal_status = 413;
        c->fatal_code = "payload_too_large";
        c->fatal_msg = "body larger than allowed";
    } else {
        c->fatal_status = 503;
        c->fatal_code = "unavailable";
        c->fatal_msg = "out of memory";
    }
    return HPE_USER;
}

/* Grows the body buffer to exactly ncap bytes, charging them to limits.body_memory first
 * (http__body_mem_admit); a charge whose allocation fails is given back. Returns 0 or the
 * parser's HPE_USER with the refusal set (503 when body memory is exhausted). */
static int body_grow(http_conn_t *c, size_t ncap)
{
    size_t old = c->body.cap;
    if (!http__body_mem_admit(c->hl, old, ncap)) return refuse_body_memory(c);
    int rc = base_buf_grow_to(&c->body, ncap);
    if (rc != BASE_OK) {
        http__body_mem_adjust(c->hl, ncap, old);
        return body_failed(c, rc);
    }
    return 0;
}

static int on_headers_complete(llhttp_t *p)
{
    http_conn_t *c = conn_of(p);
    http_loop_t *hl = c->hl;
    const config_t *cfg = hl->cfg;
    metrics_add(METRIC_HTTP_REQUESTS, 1);
    c->state = CS_BODY;
    http__timer_arm_request(c, cfg->idle_timeout_ms);
    c->method = llhttp_get_method(p);
    c->route = c->url_long ? NULL : routes_match(c->url, c->url_len, c->port);

    /* RFC 9112 §3.2: an HTTP/1.1 request without Host is a 400. */
    if (!(c->once_seen & (1u << ONCE_HOST)) && p->http_major == 1 && p->http_minor >= 1) {
        c->fatal_status = 400;
        c->fatal_code = "bad_request";
        c->fatal_msg = "an HTTP/1.1 request needs a Host header";
        return HPE_USER;
    }

    if (atomic_load_explicit(hl->draining, memory_order_relaxed)) {
        c->fatal_status = 503;
        c->fatal_code = "unavailable";
        c->fatal_msg = "shutting down";
        return HPE_USER;
    }
    /* Transfer codings other than chunked are not implemented (a front proxy might decode
     * them; we would read the coded bytes as the body). */
    hdr_val_t *te = &c->hdr[HTTP_HDR_TRANSFER_ENCODING];
    if (te->seen && (te->overflow || te_is_chunked(te->buf, te->len) == false)) {
        c->fatal_status = 400;
        c->fatal_code = "bad_request";
        c->fatal_msg = "Transfer-Encoding must be chunked";
        return HPE_USER;
    }
    /* Any request, whatever its route: a declared body over the limit is refused unread. */
    if ((p->flags & F_CONTENT_LENGTH) && p->content_length > cfg->body_bytes) {
        c->fatal_status = 413;
        c->fatal_code = "payload_too_large";
        c->fatal_msg = "body larger than allowed";
        return HPE_USER;
    }
    if (c->route == NULL) {
        early(c, 404, "not_found", "no such endpoint");
    } else if (route_is_cors(c->route) && c->method == HTTP_OPTIONS) {
        return 0;
    } else if (!route_allows(c->route, c->method)) {
        early(c, 405, "method_not_allowed", c->route->wrong_method);
    }
    hdr_val_t *ex = &c->hdr[HTTP_HDR_EXPECT];
    bool expect_continue = ex->seen && ex->len == 12 &&
                           strncasecmp(ex->buf, "100-continue", 12) == 0 && p->http_major == 1 &&
                           p->http_minor >= 1;
    if (c->early_status != 0) return refuse_early(c, expect_continue);
    if (!route_is_ingest(c->route)) return 0;

    /* POST to an ingest endpoint. */
    hdr_val_t *ct = &c->hdr[HTTP_HDR_CONTENT_TYPE], *ce = &c->hdr[HTTP_HDR_CONTENT_ENCODING];
    /* A label too long to keep is no msgpack label: JSON, like any other label. */
    c->fmt = ct->overflow ? PROTO_FMT_JSON : content_type_parse(ct->buf, ct->len);
    c->enc = ce->overflow ? BODY_ENC_UNKNOWN : body_encoding_parse(ce->buf, ce->len);
    if (c->enc == BODY_ENC_UNKNOWN)
        early(c, 415, "unsupported_media_type", "Content-Encoding must be zstd, gzip or identity");
    if (c->early_status == 0) header_auth(c);
    if (c->early_status != 0) return refuse_early(c, expect_continue);

    if ((p->flags & F_CONTENT_LENGTH) && p->content_length > c->body.cap) {
        int rc = body_grow(c, (size_t)p->content_length);
        if (rc != 0) return rc;
    }
    if (expect_continue) send_continue(c);
    return 0;
}

static int on_body(llhttp_t *p, const char *at, size_t len)
{
    http_conn_t *c = conn_of(p);
    metrics_add(METRIC_BYTES_IN, len);
    size_t max = (size_t)c->hl->cfg->body_bytes;
    c->body_seen += len;
    if (c->body_seen > max) { /* chunked (or discarded) bodies are bounded too */
        c->fatal_status = 413;
        c->fatal_code = "payload_too_large";
        c->fatal_msg = "body larger than allowed";
        return HPE_USER;
    }
    if (c->early_status != 0 || !route_is_ingest(c->route) || c->method != HTTP_POST)
        return 0; /* discarded: the answer is already decided */
    if (c->body.len + len > c->body.cap) {
        size_t ncap = c->body.cap < 16384 ? 16384 : c->body.cap * 2;
        while (ncap < c->body.len + len)
            ncap *= 2;
        if (ncap > max) ncap = max;
        int rc = body_grow(c, ncap);
        if (rc != 0) return rc;
    }
    /* Cannot fail: body_seen <= body.max (checked above) and the allocation has room. */
    int rc = base_buf_append(&c->body, at, len);
    return rc == BASE_OK ? 0 : body_failed(c, rc);
}

static int on_message_complete(llhttp_t *p)
{
    http_conn_t *c = conn_of(p);
    c->keep_alive = llhttp_should_keep_alive(p) && !llhttp_get_upgrade(p);
    c->state = CS_BUSY;
    /* One request at a time: stop here; conn_next() resumes after the answer is written. */
    return HPE_PAUSED;
}

static llhttp_settings_t http_settings;
static uv_once_t http_settings_once = UV_ONCE_INIT;

static void http_settings_init(void)
{
    llhttp_settings_init(&http_settings);
    http_settings.on_message_begin = on_message_begin;
    http_settings.on_url = on_url;
    http_settings.on_header_field = on_header_field;
    http_settings.on_header_field_complete = on_header_field_complete;
    http_settings.on_header_value = on_header_value;
    http_settings.on_header_value_complete = on_header_value_complete;
    http_settings.on_headers_complete = on_headers_complete;
    http_settings.on_body = on_body;
    http_settings.on_message_complete = on_message_complete;
}

void http__parser_init(http_conn_t *c)
{
    uv_once(&http_settings_once, http_settings_init);
    size_t off = 0;
    for (int i = 0; i < HTTP_HDR_COUNT; i++) {
        c->hdr[i].buf = c->hdr_mem + off;
        off += hdr_caps[i];
    }
    llhttp_init(&c->parser, HTTP_REQUEST, &http_settings);
    /* Strict RFC 9112 parsing (see http_conn.h): every leniency stays off. */
    llhttp_set_lenient_headers(&c->parser, 0);
    llhttp_set_lenient_chunked_length(&c->parser, 0);
    llhttp_set_lenient_keep_alive(&c->parser, 0);
    llhttp_set_lenient_transfer_encoding(&c->parser, 0);
    c->parser.data = c;
}
