/*
 * ops.c — /healthz, /readyz, /metrics (see ops.h for the contract).
 */
#include "ops.h"

#include <inttypes.h>
#include <stdio.h>
#include <string.h>

#include "identities.h"
#include "kafka_out.h"
#include "metrics.h"
#include "proto.h"
#include "spool.h"

void ops_healthz_cb(http_conn_t *c, const route_t *r)
{
    (void)r;
    http_respond_json(c, 200, "{\"status\":\"ok\"}", 15);
}

void ops_readyz_cb(http_conn_t *c, const route_t *r)
{
    (void)r;
    const http_loop_t *hl = http_conn_loop(c);
    char why[200] = "";
    spool_t *sp = hl->ingest->spool;
    bool kafka_ok = kafka_out_ready(hl->ingest->ko, why, sizeof why);
    bool spool_room = sp != NULL && spool_has_room(sp);
    bool ready = kafka_ok ? sp == NULL || spool_room || !spool_busy(sp) : spool_room;
    char kafka_why[sizeof why];
    memcpy(kafka_why, kafka_ok ? "ok" : why, kafka_ok ? 3 : sizeof why);
    if (kafka_ok && !ready) snprintf(why, sizeof why, "spool full");
    if (!kafka_ok && sp != NULL && !ready) {
        size_t n = strnlen(why, sizeof why - 13);
        memcpy(why + n, "; spool full", 13);
    }
    /* A collector that has not read the fleet's links yet would key a user's events by userId
     * (identities.h); bounded by identities.ready_wait, so a Kafka that cannot be read does not
     * hold readiness beyond it. */
    char id_why[96] = "";
    if (ready && !identities_ready(hl->ingest->identities, id_why, sizeof id_why)) {
        ready = false;
        snprintf(why, sizeof why, "%s", id_why);
    }
    if (atomic_load_explicit(hl->draining, memory_order_relaxed)) {
        ready = false;
        snprintf(why, sizeof why, "shutting down");
    }
    char body[768];
    /* A stack buffer posing as a full-capacity base_buf_t: appends never reallocate it. */
    base_buf_t out = {body, 0, sizeof body, sizeof body};
    int rc = base_buf_append(&out, ready ? "{\"ready\":true" : "{\"ready\":false", ready ? 13 : 14);
    if (rc == 0 && !ready) rc = BASE_BUF_LIT(&out, ",\"reason\":");
    if (rc == 0 && !ready) rc = proto_json_str(&out, why, strnlen(why, sizeof why));
    if (rc == 0 && sp != NULL) {
        spool_stats_t st;
        spool_stats(sp, &st);
        rc = BASE_BUF_LIT(&out, ",\"kafka\":");
        if (rc == 0) rc = proto_json_str(&out, kafka_why, strnlen(kafka_why, sizeof kafka_why));
        if (rc == 0)
            rc = base_buf_printf(&out,
                                 ",\"spool\":{\"bytes\":%" PRIu64 ",\"max_bytes\":%" PRIu64
                                 ",\"records\":%" PRIu64 ",\"oldest_age_seconds\":%.3f}",
                                 st.bytes, st.max_bytes, st.records, st.oldest_age_s);
    }
    if (rc == 0 && hl->ingest->identities != NULL) {
        identities_stats_t ist;
        identities_stats(hl->ingest->identities, &ist);
        rc = base_buf_printf(
            &out, ",\"identities\":{\"caught_up\":%s,\"lag\":%" PRId64 ",\"partitions\":%d}",
            ist.caught_up ? "true" : "false", ist.lag, ist.partitions);
    }
    if (rc == 0) rc = BASE_BUF_LIT(&out, "}");
    http_respond_json(c, ready ? 200 : 503, out.data, rc == 0 ? out.len : 0);
}

void ops_metrics_cb(http_conn_t *c, const route_t *r)
{
    (void)r;
    base_buf_t out;
    base_buf_init(&out, OPS_METRICS_MAX);
    if (metrics_render(&out) != 0) {
        base_buf_free(&out);
        http_respond_retry(c, 503, "unavailable", "metrics could not be rendered", 1);
        return;
    }
    http_respond(c, 200, "text/plain; version=0.0.4", out.data, out.len, NULL);
    base_buf_free(&out);
}
