/*
 * settings.c — the browser settings document (see settings.h for the contract).
 */
#include "settings.h"

#include <string.h>

#include "auth.h"
#include "metrics.h"
#include "proto.h"
#include "query.h"

/* True when s[0..len) is a non-empty run of the bytes a Host header may name us with. */
static bool host_usable(const char *s, size_t len)
{
    static const char allowed[] =
        "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.-_:[]";
    if (s == NULL || len == 0) return false;
    for (size_t i = 0; i < len; i++)
        if (s[i] == '\0' || strchr(allowed, s[i]) == NULL) return false;
    return true;
}

void settings_document_cb(http_conn_t *c, const route_t *r)
{
    const http_loop_t *hl = http_conn_loop(c);
    const config_t *cfg = hl->cfg;
    size_t tlen, enc_len, klen = 0;
    const char *target = http_conn_target(c, &tlen), *enc;
    char key[AUTH_KEY_MAX];
    if (!route_param(r, target, tlen, &enc, &enc_len) ||
        query_unescape(enc, enc_len, key, sizeof key, &klen) != QUERY_OK || klen == 0) {
        http_respond_error(c, 400, "bad_request", "malformed write key in the path");
        return;
    }
    const char *source = NULL;
    int key_index = -1;
    if (!cfg->dev && auth_lookup(hl->ingest->auth, key, klen, &source, &key_index) != AUTH_OK) {
        metrics_add(METRIC_AUTH_FAILURES, 1);
        http_respond_error(c, 401, "unauthorized", "unknown write key");
        return;
    }
    const char *proto = "http", *host;
    size_t host_len;
    if (cfg->public_url != NULL) {
        bool tls = strncmp(cfg->public_url, "https://", 8) == 0;
        proto = tls ? "https" : "http";
        host = cfg->public_url + (tls ? 8 : 7);
        host_len = strlen(host);
        while (host_len > 0 && host[host_len - 1] == '/')
            host_len--;
    } else {
        host = http_conn_header(c, HTTP_HDR_HOST, &host_len);
        if (!host_usable(host, host_len)) {
            http_respond_error(c, 400, "bad_request",
                               "no usable Host header to name this collector (set public_url)");
            return;
        }
    }
    base_buf_t out;
    base_buf_init(&out, SETTINGS_DOC_MAX);
    int rc = BASE_BUF_LIT(&out, "{\"integrations\":{\"Segment.io\":{\"apiKey\":");
    if (rc == 0) rc = proto_json_str(&out, key, klen);
    if (rc == 0) rc = BASE_BUF_LIT(&out, ",\"apiHost\":\"");
    if (rc == 0) rc = base_buf_append(&out, host, host_len);
    if (rc == 0) rc = BASE_BUF_LIT(&out, "/v1\",\"protocol\":\"");
    if (rc == 0) rc = base_buf_append(&out, proto, strlen(proto));
    if (rc == 0)
        rc = BASE_BUF_LIT(&out, "\",\"addBundledMetadata\":true,\"unbundledIntegrations\":[],"
                                "\"maybeBundledConfigIds\":{}}},"
                                "\"plan\":{\"track\":{\"__default\":{\"enabled\":true,"
                                "\"integrations\":{}}},\"identify\":{\"__default\":{\"enabled\":"
                                "true}},\"group\":{\"__default\":{\"enabled\":true}}},"
                                "\"edgeFunction\":{},\"analyticsNextEnabled\":true,"
                                "\"middlewareSettings\":{},\"enabledMiddleware\":{},"
                                "\"metrics\":{\"sampleRate\":0},\"legacyVideoPluginsEnabled\":"
                                "false,\"remotePlugins\":[]}");
    if (rc != 0) {
        base_buf_free(&out);
        http_respond_retry(c, 503, "unavailable", "out of memory", 1);
        return;
    }
    http_respond(c, 200, "application/json", out.data, out.len,
                 "Access-Control-Allow-Origin: *\r\nCache-Control: public, max-age=60\r\n");
    base_buf_free(&out);
}
