/*
 * settings.h — the browser SDK's settings document (GET /v1/projects/{writeKey}/settings),
 * the one @segment/analytics-next loads from its cdnURL before anything else (its
 * CDNSettings). A route handler (routes.h), public listener, CORS.
 *
 * The document points the SDK's "Segment.io" destination at this collector — apiHost
 * "HOST[:PORT][/PREFIX]/v1" and protocol, from public_url, else the request's Host header over
 * http — so the SDK then posts to the short paths /v1/t, /v1/p, ... (or /v1/b when batching).
 * Remote metrics are off (sampleRate 0: the SDK would post them to Segment), and no device-mode
 * destination, middleware or remote plugin is named, so the SDK loads nothing else.
 *
 * Answers: 200 the document (Cache-Control: public, max-age=60); 401 unknown write key (any key
 * in dev mode); 400 a key that does not decode, or no usable Host header and no public_url;
 * 503 out of memory.
 */
#ifndef SLUICE_SETTINGS_H
#define SLUICE_SETTINGS_H

#include "routes.h"

/* Longest document: the fixed JSON, the key and the host (each bounded by the request). */
#define SETTINGS_DOC_MAX 8192

void settings_document_cb(http_conn_t *c, const route_t *r);

#endif
