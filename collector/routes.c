/*
 * routes.c — the route table (see routes.h for the contract).
 */
#include "routes.h"

#include <string.h>

#include <llhttp.h>

#include "admin.h"
#include "ops.h"
#include "settings.h"

#define INGEST(p, k)                                                                               \
    {                                                                                              \
        .path = (p), .match = ROUTE_MATCH_EXACT, .cls = ROUTE_PUBLIC, .methods = ROUTE_POST,       \
        .flags = ROUTE_F_INGEST | ROUTE_F_CORS, .allow = "POST, OPTIONS",                          \
        .wrong_method = "use POST", .kind = (k), .handler = http_conn_ingest                       \
    }
#define GET(p, m, c, h)                                                                            \
    {                                                                                              \
        .path = (p), .match = (m), .cls = (c), .methods = ROUTE_GET, .allow = "GET, HEAD",         \
        .wrong_method = "use GET", .handler = (h)                                                  \
    }

static const route_t table[] = {
    INGEST("/v1/batch", PROTO_T_NONE),
    INGEST("/v1/track", PROTO_T_TRACK),
    INGEST("/v1/identify", PROTO_T_IDENTIFY),
    INGEST("/v1/group", PROTO_T_GROUP),
    INGEST("/v1/page", PROTO_T_PAGE),
    INGEST("/v1/screen", PROTO_T_SCREEN),
    INGEST("/v1/alias", PROTO_T_ALIAS),
    /* The short paths of @segment/analytics-next (its "{apiHost}/{type's first letter}"). */
    INGEST("/v1/b", PROTO_T_NONE),
    INGEST("/v1/t", PROTO_T_TRACK),
    INGEST("/v1/i", PROTO_T_IDENTIFY),
    INGEST("/v1/g", PROTO_T_GROUP),
    INGEST("/v1/p", PROTO_T_PAGE),
    INGEST("/v1/s", PROTO_T_SCREEN),
    INGEST("/v1/a", PROTO_T_ALIAS),
    GET("/healthz", ROUTE_MATCH_EXACT, ROUTE_ANY, ops_healthz_cb),
    GET("/readyz", ROUTE_MATCH_EXACT, ROUTE_ANY, ops_readyz_cb),
    GET("/metrics", ROUTE_MATCH_EXACT, ROUTE_ADMIN, ops_metrics_cb),
    GET("/v1/accounts/", ROUTE_MATCH_PREFIX, ROUTE_ADMIN, admin_account_cb),
    GET("/v1/pql/top", ROUTE_MATCH_EXACT, ROUTE_ADMIN, admin_pql_top_cb),
    /* The settings document analytics-next loads from its cdnURL: a browser page reads it. */
    {.path = "/v1/projects/",
     .suffix = "/settings",
     .match = ROUTE_MATCH_SEGMENT,
     .cls = ROUTE_PUBLIC,
     .methods = ROUTE_GET,
     .flags = ROUTE_F_CORS,
     .allow = "GET, HEAD, OPTIONS",
     .wrong_method = "use GET",
     .handler = settings_document_cb},
};

#define TABLE_LEN (sizeof table / sizeof table[0])

const route_t *routes_table(size_t *n)
{
    *n = TABLE_LEN;
    return table;
}

size_t route_path_len(const char *target, size_t len)
{
    size_t n = 0;
    while (n < len && target[n] != '?' && target[n] != '#')
        n++;
    /* A trailing slash is tolerated ("/v1/batch/"), as most HTTP servers do. */
    if (n > 1 && target[n - 1] == '/') n--;
    return n;
}

/* Matches path[0..n) against r; the parameter's slice to *param, *plen. */
static bool path_matches(const route_t *r, const char *path, size_t n, const char **param,
                         size_t *plen)
{
    size_t pl = strlen(r->path);
    *param = path + n;
    *plen = 0;
    switch (r->match) {
    case ROUTE_MATCH_EXACT:
        return n == pl && memcmp(path, r->path, n) == 0;
    case ROUTE_MATCH_PREFIX:
        if (n <= pl || memcmp(path, r->path, pl) != 0) return false;
        *param = path + pl;
        *plen = n - pl;
        return true;
    case ROUTE_MATCH_SEGMENT: {
        size_t sl = strlen(r->suffix);
        if (n <= pl + sl || memcmp(path, r->path, pl) != 0 ||
            memcmp(path + n - sl, r->suffix, sl) != 0)
            return false;
        if (memchr(path + pl, '/', n - pl - sl) != NULL) return false;
        *param = path + pl;
        *plen = n - pl - sl;
        return true;
    }
    }
    return false;
}

static bool on_port(const route_t *r, http_port_t port)
{
    switch (r->cls) {
    case ROUTE_ANY:
        return true;
    case ROUTE_PUBLIC:
        return port != HTTP_PORT_ADMIN;
    case ROUTE_ADMIN:
        return port != HTTP_PORT_PUBLIC;
    }
    return false;
}

const route_t *routes_match(const char *target, size_t len, http_port_t port)
{
    size_t n = route_path_len(target, len);
    for (size_t i = 0; i < TABLE_LEN; i++) {
        const char *param;
        size_t plen;
        if (path_matches(&table[i], target, n, &param, &plen))
            return on_port(&table[i], port) ? &table[i] : NULL;
    }
    return NULL;
}

bool route_param(const route_t *r, const char *target, size_t len, const char **param, size_t *plen)
{
    size_t n = route_path_len(target, len);
    bool ok = path_matches(r, target, n, param, plen);
    if (!ok || r->match == ROUTE_MATCH_EXACT) {
        *param = target + n;
        *plen = 0;
        return false;
    }
    return true;
}

bool route_allows(const route_t *r, int method)
{
    if (r->methods == ROUTE_POST) return method == HTTP_POST;
    return method == HTTP_GET || method == HTTP_HEAD;
}
