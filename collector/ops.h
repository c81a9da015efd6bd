/*
 * ops.h — the operations endpoints (SPEC §3): liveness, readiness and Prometheus metrics. Route
 * handlers (routes.h); they run on the loop thread and answer at once.
 */
#ifndef SLUICE_OPS_H
#define SLUICE_OPS_H

#include "routes.h"

/* GET /healthz (every listener): 200 {"status":"ok"} while the process serves. */
void ops_healthz_cb(http_conn_t *c, const route_t *r);

/*
 * GET /readyz (every listener): 200 when events can be made durable now — Kafka reachable (and
 * no spooled backlog that new events would have to queue behind in a full spool), or the spool
 * has room — else 503. The body says why not ("reason"), and with a spool shows Kafka's state,
 * the spool's bytes, records and oldest age. 503 "identities catching up (lag N)" until the
 * identities consumer has read its topic to the end once (at most identities.ready_wait after
 * start); with the consumer on, "identities": {caught_up, lag, partitions} is in the body.
 * 503 "shutting down" while draining.
 */
void ops_readyz_cb(http_conn_t *c, const route_t *r);

/* GET /metrics (admin_listen when set): the Prometheus text of metrics_render, at most
 * OPS_METRICS_MAX bytes; 503 unavailable (Retry-After: 1) when it does not render. */
#define OPS_METRICS_MAX (4 * 1024 * 1024)
void ops_metrics_cb(http_conn_t *c, const route_t *r);

#endif
