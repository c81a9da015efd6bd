/*
 * metrics.h — process-wide counters, gauges and the request-latency histogram, rendered in the
 * Prometheus text format for GET /metrics.
 *
 * Hot-path calls are lock-free (relaxed atomics) and safe from any thread. Gauge callbacks are
 * called only from metrics_render(), on the thread that renders.
 */
#ifndef SLUICE_METRICS_H
#define SLUICE_METRICS_H

#include <stddef.h>
#include <stdint.h>

#include "proto.h"

/* X(ID, "name", "help") — counters, all *_total. */
#define METRICS_COUNTERS(X)                                                                        \
    X(HTTP_REQUESTS, "sluice_http_requests_total", "HTTP requests parsed")                         \
    X(HTTP_PARSE_ERRORS, "sluice_http_parse_errors_total", "connections closed for broken HTTP")   \
    X(CONN_ACCEPTED, "sluice_connections_accepted_total", "TCP connections accepted")              \
    X(CONN_REFUSED, "sluice_connections_refused_total", "connections answered 503 at the cap")     \
    X(CONN_TIMEOUTS, "sluice_connection_timeouts_total",                                           \
      "connections closed by header/idle timeout")                                                 \
    X(CLIENT_ABORTS, "sluice_client_aborts_total", "clients that went away mid-request")           \
    X(REQUEST_TIMEOUTS, "sluice_request_timeouts_total",                                           \
      "requests answered 408: body not complete within limits.request_timeout")                    \
    X(WRITE_TIMEOUTS, "sluice_write_timeouts_total",                                               \
      "connections closed: answer not read within limits.request_timeout")                         \
    X(BODY_MEMORY_REFUSED, "sluice_body_memory_refused_total",                                     \
      "requests answered 503: their body did not fit in limits.body_memory")                       \
    X(BYTES_IN, "sluice_http_body_bytes_total", "request body bytes received (as sent)")           \
    X(DECOMPRESS_LIMIT, "sluice_decompress_limit_total",                                           \
      "bodies refused at the decompression limit")                                                 \
    X(EVENTS_RECEIVED, "sluice_events_received_total", "events decoded from readable bodies")      \
    X(EVENTS_ACCEPTED, "sluice_events_accepted_total", "events delivered to the events topic")     \
    X(EVENTS_REJECTED, "sluice_events_rejected_total", "invalid events (all reasons)")             \
    X(EVENTS_DUPLICATE, "sluice_events_duplicate_total", "events dropped as duplicates")           \
    X(DEDUP_EVICTIONS, "sluice_dedup_evictions_total",                                             \
      "dedup entries dropped before their window ended, at the memory cap")                        \
    X(DEDUP_IN_FLIGHT, "sluice_dedup_in_flight_total",                                             \
      "requests answered 503 because a copy of an event was still being delivered")                \
    X(DEDUP_SNAPSHOT_ERRORS, "sluice_dedup_snapshot_errors_total", "dedup snapshots that failed")  \
    X(PQL_SNAPSHOT_ERRORS, "sluice_pql_snapshot_errors_total", "PQL snapshots that failed")        \
    X(DEDUP_JOURNAL_RECORDS, "sluice_dedup_journal_records_total",                                 \
      "dedup journal records written and fsync'd")                                                 \
    X(DEDUP_JOURNAL_ERRORS, "sluice_dedup_journal_errors_total",                                   \
      "dedup journal writes or fsyncs that failed")                                                \
    X(DEDUP_JOURNAL_DROPPED, "sluice_dedup_journal_dropped_total",                                 \
      "remembered events not journaled (queue or size cap, disk error)")                           \
    X(DEDUP_JOURNAL_FORCED_SNAPSHOTS, "sluice_dedup_journal_forced_snapshots_total",               \
      "dedup snapshots forced by dedup.journal_max_bytes")                                         \
    X(EVENTS_FILTERED, "sluice_events_filtered_total", "events dropped by filter rules")           \
    X(JSON_LONE_SURROGATES, "sluice_json_lone_surrogates_total",                                   \
      "lone surrogate escapes in JSON bodies read as U+FFFD")                                      \
    X(JSON_BIG_INTS, "sluice_json_big_integers_total",                                             \
      "JSON integers beyond 64 bits read as doubles")                                              \
    X(MESSAGE_IDS_GENERATED, "sluice_message_ids_generated_total",                                 \
      "events that came without a messageId (one was generated; not deduplicated)")                \
    X(IDENTITIES_PRODUCED, "sluice_identities_produced_total",                                     \
      "group calls' user->account links produced to kafka.topics.identities")                      \
    X(IDENTITIES_UNCHANGED, "sluice_identities_unchanged_total",                                   \
      "group calls whose link the identities topic already holds (read back or acknowledged): "    \
      "not produced again")                                                                        \
    X(IDENTITIES_APPLIED, "sluice_identities_applied_total",                                       \
      "identities records applied to the user->account map (tombstones included)")                 \
    X(IDENTITIES_FORGOTTEN, "sluice_identities_forgotten_total",                                   \
      "identities tombstones (no value) that removed a user from the map")                         \
    X(IDENTITIES_SKIPPED, "sluice_identities_skipped_total",                                       \
      "identities records skipped as malformed (key or value empty, over 255 bytes, not UTF-8)")   \
    X(KAFKA_DELIVERED, "sluice_kafka_delivered_total", "messages acknowledged by Kafka")           \
    X(KAFKA_ERRORS, "sluice_kafka_errors_total", "messages whose delivery failed")                 \
    X(KAFKA_QUEUE_FULL, "sluice_kafka_queue_full_total", "produce calls refused: queue full")      \
    X(KAFKA_FAIL_FAST, "sluice_kafka_fail_fast_total",                                             \
      "requests answered 503 at once: Kafka known down and the spool off or full")                 \
    X(SPOOL_APPENDED, "sluice_spool_appended_total", "records written and fsync'd to the spool")   \
    X(SPOOL_DRAINED, "sluice_spool_drained_total", "spooled records delivered to Kafka")           \
    X(SPOOL_TRUNCATED_BYTES, "sluice_spool_truncated_bytes_total",                                 \
      "spool bytes dropped: torn or corrupt tails cut at start, unreadable records skipped")       \
    X(SPOOL_FULL, "sluice_spool_full_total", "requests answered 503: spool.max_bytes reached")     \
    X(SPOOL_WRITE_ERRORS, "sluice_spool_write_errors_total",                                       \
      "spool group commits that failed (write or fsync): their requests answered 503")             \
    X(AUTH_FAILURES, "sluice_auth_failures_total", "requests with a missing or unknown write key") \
    X(TLS_HANDSHAKES, "sluice_tls_handshakes_total", "TLS handshakes completed (tls set)")         \
    X(TLS_HANDSHAKE_FAILURES, "sluice_tls_handshake_failures_total",                               \
      "TLS connections closed before their handshake completed: not TLS (e.g. plain HTTP), a "     \
      "failed handshake, or limits.header_timeout")

typedef enum {
#define METRICS_X_ENUM(id, name, help) METRIC_##id,
    METRICS_COUNTERS(METRICS_X_ENUM)
#undef METRICS_X_ENUM
        METRIC_COUNT_
} metric_id_t;

void metrics_add(metric_id_t id, uint64_t n);
uint64_t metrics_get(metric_id_t id);

/* sluice_http_responses_total{code="200"}; any code 100..599. */
void metrics_http_status(int code);
uint64_t metrics_http_status_get(int code);
/* sluice_events_rejected_by_reason_total{reason="missing_type"} — also bumps EVENTS_REJECTED. */
void metrics_rejected(int proto_err);
uint64_t metrics_rejected_get(int proto_err);
/* sluice_request_duration_seconds histogram (buckets 0.5ms .. 10s). */
void metrics_latency_observe(double seconds);

/* A gauge read at render time: sluice_<name> (e.g. "kafka_queue_messages"). name and help must be
 * static strings. Register at start-up, before serving; up to 64. Returns 0 or -1 when full. */
typedef double (*metrics_gauge_fn)(void *ud);
int metrics_gauge_register(const char *name, const char *help, metrics_gauge_fn fn, void *ud);

/* A labelled family rendered by its owner (e.g. the per-rule filter counters): fn appends
 * complete exposition lines, # HELP and # TYPE included, and returns 0 or PROTO_E_NOMEM. Called
 * from metrics_render() on the rendering thread, so it must not block. Register at start-up,
 * before serving; up to 16. Returns 0 or -1 when full. */
typedef int (*metrics_section_fn)(base_buf_t *out, void *ud);
int metrics_section_register(metrics_section_fn fn, void *ud);

/* Appends the whole exposition to out. Returns 0 or PROTO_E_NOMEM. */
int metrics_render(base_buf_t *out);

/* Test hook: zero every counter and drop registered gauges and sections. */
void metrics_reset(void);

#endif
