/*
 * config_keys.c — the collector's key table: every YAML key of SPEC §7 (dotted path, type, place in
 * config_t, bounds, default as a user would write it, doc), the sections other modules parse, and
 * the command-line flags. Data only; config.c parses with it, config_doc.c prints --help and
 * collector/CONFIG.md from it. Accessors in config_internal.h.
 */
#include <stdlib.h>
#include <string.h>

#include "config_internal.h"
#include "config_yaml.h"
#include "filter.h"
#include "pql_config.h"

#define F(field) offsetof(config_t, field), sizeof(((config_t *)0)->field)
#define KiB      1024.0
#define MiB      (1024.0 * 1024.0)
#define GiB      (1024.0 * 1024.0 * 1024.0)

static const config_key_t config_keys[] = {
    {"listen", CT_STRING, F(listen), 0, 0, "0.0.0.0:8080", NULL,
     "Address to serve HTTP on: IPV4:PORT, [IPV6]:PORT or localhost:PORT (port 0 picks a free "
     "port)."},
    {"admin_listen", CT_STRING, F(admin_listen), 0, 0, NULL, NULL,
     "Address of a second, plain-HTTP listener (typically 127.0.0.1:PORT) for /metrics and the "
     "admin views (GET /v1/accounts/{id}, /v1/pql/top); when set, the listen port answers 404 "
     "for them and this one answers 404 for everything else but /healthz and /readyz, which "
     "both serve. Its connections count against limits.max_connections. Unset: everything on "
     "listen."},
    {"tls.cert_file", CT_STRING, F(tls_cert_file), 0, 0, NULL, NULL,
     "PEM certificate chain (leaf first) to serve HTTPS on listen (TLS 1.2+, HTTP/1.1); with "
     "tls.key_file. Re-read on SIGHUP: new connections use the new certificate, open ones keep "
     "theirs; a pair that does not load is refused (config_reload_failed) and the old one stays. "
     "Turning TLS on or off needs a restart. admin_listen stays plain HTTP. Unset: plain HTTP."},
    {"tls.key_file", CT_STRING, F(tls_key_file), 0, 0, NULL, NULL,
     "PEM private key (unencrypted) of tls.cert_file; must match it."},
    {"threads", CT_UINT, F(threads), 1, 64, "2", NULL, "Event-loop threads."},
    {"data_dir", CT_STRING, F(data_dir), 0, 0, "./sluice-data", NULL,
     "Directory for the spool and snapshots; created (mkdir -p, mode 0750) when missing."},
    {"admin_token", CT_STRING, F(admin_token), 0, 0, NULL, NULL,
     "Bearer token for the admin endpoints; unset disables them."},
    {"admin_token_env", CT_ENV, F(admin_token), 0, 0, NULL, NULL,
     "Name of an environment variable holding admin_token (exclusive with admin_token)."},
    {"write_keys", CT_WRITE_KEYS, F(write_keys), 0, CONFIG_MAX_WRITE_KEYS, NULL, NULL,
     "List of {key: K, source: S} or {key_env: VAR, source: S}; source defaults to \"default\". "
     "Keys are 1..256 visible ASCII characters without ':'. Required unless dev."},
    {"public_url", CT_STRING, F(public_url), 0, 0, NULL, NULL,
     "Base URL browsers reach this collector at (http[s]://HOST[:PORT][/PREFIX]), named in the "
     "settings document GET /v1/projects/{writeKey}/settings serves to @segment/analytics-next; "
     "unset: http:// and the request's Host header."},
    {"dev", CT_BOOL, F(dev), 0, 0, "false", NULL,
     "Development mode: accept any write key (source \"dev\")."},
    {"log_level", CT_ENUM, F(log_level), 0, 0, "info", "debug|info|warn/warning|error|off",
     "Minimum level of the JSON log lines on stderr."},
    {"limits.event_bytes", CT_SIZE, F(event_bytes), 64, 64 * MiB, "32KiB", NULL,
     "Largest encoded event; bigger events are rejected (event_too_large)."},
    {"limits.body_bytes", CT_SIZE, F(body_bytes), 1 * KiB, 1 * GiB, "512KiB", NULL,
     "Largest request body, before and after decompression (413 beyond)."},
    {"limits.max_connections", CT_UINT, F(max_connections), 1, 1000000, "10000", NULL,
     "Open connections per process; beyond it new connections get 503."},
    {"limits.rate_per_key", CT_DOUBLE, F(rate_per_key), 0, 1e9, "0", NULL,
     "Events per second per write key (429 beyond); 0 = unlimited."},
    {"limits.max_events", CT_UINT, F(max_events), 1, 1000000, "10000", NULL, "Events per batch."},
    {"limits.header_bytes", CT_SIZE, F(header_bytes), 1 * KiB, 1 * MiB, "16KiB", NULL,
     "All request headers together; a request with more is refused."},
    {"limits.header_timeout", CT_DURATION, F(header_timeout_ms), 100, 3600000, "10s", NULL,
     "A request whose headers have not arrived by then is closed (slowloris)."},
    {"limits.idle_timeout", CT_DURATION, F(idle_timeout_ms), 100, 86400000, "60s", NULL,
     "Idle keep-alive connections are closed after this."},
    {"limits.request_timeout", CT_DURATION, F(request_timeout_ms), 100, 3600000, "30s", NULL,
     "A whole request (headers and body) must arrive within this, however slowly it trickles "
     "(408 and close beyond; sluice_request_timeouts_total); an answer the client has not read "
     "within it closes the connection (sluice_write_timeouts_total)."},
    {"limits.body_memory", CT_SIZE, F(body_memory), 1 * MiB, 64 * GiB, "256MiB", NULL,
     "Request bodies held in memory across all connections, the loops' decompression buffers "
     "included (sluice_http_body_memory_bytes); a body that does not fit gets 503 + Retry-After "
     "(sluice_body_memory_refused_total). The last eighth is kept for bodies up to 64 KiB. At "
     "least 2 x (threads + 1) x limits.body_bytes."},
    {"limits.max_depth", CT_UINT, F(max_depth), 1, 64, "16", NULL,
     "Nesting depth of properties, traits and context."},
    {"limits.max_users", CT_UINT, F(max_users), 64, 1e9, "1000000", NULL,
     "Entries of the user->account map learned from group calls (LRU beyond)."},
    {"kafka.brokers", CT_STRING, F(brokers), 0, 0, NULL, NULL,
     "Bootstrap servers HOST:PORT,...; unset or empty starts the embedded mock cluster (data in "
     "memory only)."},
    {"kafka.format", CT_ENUM, F(kafka_format), 0, 0, "msgpack", "msgpack|json",
     "Encoding of the events topic's values."},
    {"kafka.topics.events", CT_STRING, F(topic_events), 0, 0, "events", NULL,
     "Topic of accepted events."},
    {"kafka.topics.rejected", CT_STRING, F(topic_rejected), 0, 0, "events_rejected", NULL,
     "Topic of rejected events, with their reasons."},
    {"kafka.topics.pql", CT_STRING, F(topic_pql), 0, 0, "pql_signals", NULL,
     "Topic of PQL tier changes."},
    {"kafka.topics.changelog", CT_STRING, F(topic_changelog), 0, 0, "sluice_stream_changelog", NULL,
     "sluice-stream: its state, one record per account (PQL) and per dedup chunk; create it "
     "compacted (cleanup.policy=compact) with as many partitions as kafka.topics.events "
     "(partition p holds the state of events partition p; fewer partitions: the worker refuses "
     "to start)."},
    {"kafka.topics.events_deduped", CT_STRING, F(topic_events_deduped), 0, 0, "events_deduped",
     NULL,
     "sluice-stream with stream.events_deduped: the events topic's records without the "
     "duplicates, same key, headers and partition, written exactly once."},
    {"kafka.topics.identities", CT_STRING, F(topic_identities), 0, 0, "identities", NULL,
     "Compacted topic of user -> account links (key userId, value the accountId), written for "
     "every accepted group call and read by every collector (identities.*). Create it with "
     "cleanup.policy=compact."},
    {"kafka.properties", CT_PROPERTIES, F(kafka_properties), 0, CONFIG_MAX_PROPERTIES, NULL, NULL,
     "Map of librdkafka properties (string values, in order), applied after sluice's own "
     "(e.g. security.protocol, sasl.*, linger.ms). sluice's own include reconnect.backoff.ms 50 "
     "and reconnect.backoff.max.ms 500, so the producer is back within ~1 s of a broker."},
    {"kafka.delivery_timeout", CT_DURATION, F(delivery_timeout_ms), 100, 600000, "5s", NULL,
     "A request whose events are not acknowledged by Kafka by then gets 503."},
    {"kafka.queue_bytes", CT_SIZE, F(kafka_queue_bytes), 1 * MiB, 64 * GiB, "256MiB", NULL,
     "Producer queue cap; when full, requests get 503."},
    {"kafka.producers", CT_UINT, F(kafka_producers), 1, 16, "16", NULL,
     "Idempotent producers, each with its own connection per broker; each partition of the events "
     "topic is written by one of them (partition modulo producers). librdkafka sends one request "
     "per partition and keeps at most 5 in flight per connection, so a partition waits about "
     "partitions x RTT / (5 x producers) for its turn, and beyond 5 partitions per producer and "
     "broker librdkafka serves them unevenly (some wait much longer). 16 keeps 64 partitions "
     "per broker at 500 ms RTT within ~1.5 s. Gauge sluice_kafka_producers."},
    {"filters", CT_SECTION, F(filters), 0, FILTER_MAX_RULES, NULL, NULL,
     "Edge filter rules (drop, allow, sample, strip, hash), applied in order to every valid "
     "event; see \"Filter rules\" below. Reloaded by SIGHUP."},
    {"shutdown_timeout", CT_DURATION, F(shutdown_timeout_ms), 0, 600000, "10s", NULL,
     "On SIGTERM/SIGINT, how long in-flight requests and Kafka get to finish."},
    {"dedup.window", CT_DURATION, F(dedup_window_ms), 0, 7 * 86400000.0, "1h", NULL,
     "Exact dedup of (source, messageId) within this window; 0 disables dedup."},
    {"dedup.max_memory", CT_SIZE, F(dedup_max_memory), 1 * MiB, 64 * GiB, "256MiB", NULL,
     "Memory cap of the dedup tables, including the old table a growing shard keeps while its "
     "entries move (sluice_dedup_bytes); at the cap the oldest entries go first and the "
     "effective window shrinks (sluice_dedup_window_seconds)."},
    {"dedup.snapshot_interval", CT_DURATION, F(dedup_snapshot_interval_ms), 1000, 86400000, "60s",
     NULL, "How often the dedup state is written to data_dir (also at shutdown)."},
    {"dedup.journal", CT_BOOL, F(dedup_journal), 0, 0, "true", NULL,
     "Append every remembered (delivered) event to a journal in data_dir, fsync'd before the 200, "
     "so dedup survives kill -9; replayed over the snapshot at start."},
    {"dedup.journal_max_bytes", CT_SIZE, F(dedup_journal_max_bytes), 64 * KiB, 16 * GiB, "64MiB",
     NULL,
     "Journal cap (records of 24 bytes; also the bound of its queue): at it a snapshot is forced "
     "(which truncates the journal); at twice it records are dropped "
     "(sluice_dedup_journal_dropped_total) until a snapshot succeeds."},
    {"spool.enabled", CT_BOOL, F(spool_enabled), 0, 0, "true", NULL,
     "Spool to data_dir/spool when Kafka is unreachable or its queue is full: such requests get "
     "200 once their events are fsync'd there, and the spool drains to Kafka in order when it "
     "recovers. false: those requests get 503."},
    {"spool.max_bytes", CT_SIZE, F(spool_max_bytes), 1 * MiB, 16384 * GiB, "1GiB", NULL,
     "Spool cap (segments on disk); beyond it requests that need the spool get 503 + "
     "Retry-After (sluice_spool_full_total, sluice_spool_bytes)."},
    {"spool.segment_bytes", CT_SIZE, F(spool_segment_bytes), 64 * KiB, 1 * GiB, "64MiB", NULL,
     "A spool segment file is closed at this size and deleted once all its records are "
     "delivered."},
    {"stream.group_id", CT_STRING, F(stream_group_id), 0, 0, "sluice-stream", NULL,
     "sluice-stream: Kafka consumer group on kafka.topics.events (flag --group-id); every worker "
     "of one fleet uses the same."},
    {"stream.transactional_id", CT_STRING, F(stream_transactional_id), 0, 0, NULL, NULL,
     "sluice-stream: transactional.id of the worker's producer; must be unique per worker and "
     "stable across its restarts to fence its previous incarnation at once. Unset: "
     "<group_id>-<hostname>-<pid> (a crashed worker's open transaction is then aborted by the "
     "broker after stream.transaction_timeout)."},
    {"stream.commit_interval", CT_DURATION, F(stream_commit_interval_ms), 10, 60000, "100ms", NULL,
     "sluice-stream: a transaction (signals, changelog, events_deduped, consumed offsets) is "
     "committed at least this often while records arrive; the latency a signal adds beyond "
     "processing (sluice_stream_txn_commits_total)."},
    {"stream.max_batch", CT_UINT, F(stream_max_batch), 1, 1000000, "20000", NULL,
     "sluice-stream: records per transaction at most (then it commits early); bounds the changes "
     "a flush writes and a restore buffers."},
    {"stream.poll_batch", CT_UINT, F(stream_poll_batch), 1, 32, "32", NULL,
     "sluice-stream: records taken from the consumer at once (at most what it already holds "
     "after the first) and run through the per-event path together: decoded, hashed and their "
     "dedup and PQL memory prefetched as one batch, then processed in order with the same "
     "results as one at a time (sluice_stream_batches_total: events processed / batches is the "
     "mean batch). 1 = one record at a time; JSON records (kafka.format: json) always are."},
    {"stream.transaction_timeout", CT_DURATION, F(stream_txn_timeout_ms), 1000, 900000, "10s", NULL,
     "sluice-stream: transaction.timeout.ms of its producer: how long the broker keeps a dead "
     "worker's open transaction (which holds back read_committed readers, a restoring worker "
     "included) before aborting it."},
    {"stream.events_deduped", CT_BOOL, F(stream_events_deduped), 0, 0, "false", NULL,
     "sluice-stream: also write every first-seen event to kafka.topics.events_deduped."},
    {"stream.max_partitions", CT_UINT, F(stream_max_partitions), 1, 4096, "32", NULL,
     "sluice-stream: each owned partition gets pql.max_accounts / max_partitions accounts and "
     "dedup.max_memory / max_partitions bytes, so memory stays within those caps while a worker "
     "owns at most this many partitions; beyond it the worker still takes them (a warning, "
     "sluice_stream_partitions_owned) and its memory grows past the caps in proportion."},
    {"stream.tombstone_bytes", CT_SIZE, F(stream_tombstone_bytes), 64 * KiB, 1 * GiB, "1MiB", NULL,
     "sluice-stream: ids of expired/evicted PQL accounts kept per partition until the next "
     "commit writes their tombstones; beyond it a tombstone is lost "
     "(sluice_stream_tombstones_lost_total) and the stale account is expired again after a "
     "restore."},
    {"stream.admin_connections", CT_UINT, F(stream_admin_connections), 1, 10000, "64", NULL,
     "sluice-stream: open connections of the --admin-listen listener; beyond it new ones are "
     "answered 503 and closed."},
    {"stream.restore_timeout", CT_DURATION, F(stream_restore_timeout_ms), 1000, 3600000, "5m", NULL,
     "sluice-stream: reading one partition's changelog to its end on assignment must finish "
     "within this; beyond it the worker exits 1 (its partitions move to another worker) rather "
     "than process events on a partial state."},
    {"stream.max_aborts", CT_UINT, F(stream_max_aborts), 1, 1000000, "10", NULL,
     "sluice-stream: transactions aborted in a row (each one rebuilds the owned partitions from "
     "the changelog and retries) before the worker gives up with exit 1, so a persistent failure "
     "(a missing topic, a record too large) moves the partitions rather than spinning "
     "(sluice_stream_txn_aborts_total)."},
    {"identities.produce", CT_BOOL, F(identities_produce), 0, 0, "true", NULL,
     "Produce each accepted group call's link (userId -> groupId) to kafka.topics.identities as "
     "part of its request: the 200 waits for the link's acknowledgement as for the event's, a "
     "link that cannot be delivered fails the request (503, the client retries), and a spooled "
     "request spools its links with its events (sluice_identities_produced_total). A link this "
     "collector has read back from the topic or had acknowledged by Kafka (not spooled), "
     "unchanged since, is not produced again (sluice_identities_unchanged_total)."},
    {"identities.consume", CT_BOOL, F(identities_consume), 0, 0, "true", NULL,
     "Read every partition of kafka.topics.identities from the beginning (no consumer group) on "
     "a thread of its own into the user->account map (limits.max_users), so a user who joined an "
     "account through any collector resolves here too; the last record in topic order wins "
     "(sluice_identities_applied_total, sluice_identities_lag, sluice_identities_caught_up)."},
    {"identities.queue_bytes", CT_SIZE, F(identities_queue_bytes), 64 * KiB, 1 * GiB, "8MiB", NULL,
     "Records the identities consumer prefetches (librdkafka queued.max.messages.kbytes); "
     "when full, fetching pauses until the thread has applied them."},
    {"identities.ready_wait", CT_DURATION, F(identities_ready_wait_ms), 0, 3600000, "0s", NULL,
     "/readyz answers 503 (\"identities catching up\") until the identities consumer has read "
     "every partition to its end once, for at most this long after start (a Kafka that cannot "
     "be read must not hold readiness longer than that); 0 (the single-node default): readiness "
     "does not wait. In a fleet behind a load balancer set it (e.g. 30s), so a starting "
     "collector gets traffic only once it resolves every user's account."},
    {"pql.mode", CT_ENUM, F(pql_mode), 0, 0, "local", "local|stream",
     "local: PQL (pql.rules) runs in this process. stream: sluice-stream computes it from the "
     "events topic (SPEC §10); this collector keeps no PQL state (no feeder, no snapshot) and "
     "GET /v1/accounts/{id} and /v1/pql/top answer 404 with error pql_in_stream, naming "
     "sluice-stream's --admin-listen as the place to ask."},
    {"pql.window", CT_DURATION, F(pql.window_ms), 3600000, 30 * 86400000.0, "7d", NULL,
     "PQL sliding window per account; a multiple of pql.bucket. Idle accounts expire after it."},
    {"pql.bucket", CT_DURATION, F(pql.bucket_ms), 60000, 86400000, "1h", NULL,
     "PQL counter bucket; must divide 1d (active days are whole UTC days)."},
    {"pql.late", CT_DURATION, F(pql.late_ms), 0, 30 * 86400000.0, "7d", NULL,
     "Late allowance: an event older than its account's newest event by more than this (or than "
     "the window) is not counted (sluice_pql_late_events_total)."},
    {"pql.snapshot_interval", CT_DURATION, F(pql.snapshot_interval_ms), 1000, 86400000, "5m", NULL,
     "How often the PQL counters are written to data_dir (also at shutdown)."},
    {"pql.max_accounts", CT_UINT, F(pql.max_accounts), 1024, 1e9, "1000000", NULL,
     "Accounts tracked; beyond it the least recently active account is forgotten "
     "(sluice_pql_evictions_total)."},
    {"pql.queue_bytes", CT_SIZE, F(pql.queue_bytes), 64 * KiB, 4 * GiB, "64MiB", NULL,
     "Event records waiting for PQL's feeder thread (the loops hand accepted events to it); "
     "beyond it a request's events are not counted (sluice_pql_queue_dropped_events_total)."},
    {"pql.tiers", CT_SECTION, F(pql), 0, PQL_CONFIG_MAX_TIERS, NULL, NULL,
     "Map of tier name to score threshold, e.g. {hot: 80, warm: 50}; required with rules."},
    {"pql.rules", CT_SECTION, F(pql), 0, PQL_CONFIG_MAX_RULES, NULL, NULL,
     "List of {name, metric, at_least, points, recent, min_recent, event}; metric is "
     "active_users, events, events_velocity, users_velocity, active_days or event_seen; event (a "
     "name or a list) restricts events/events_velocity and names what event_seen looks for; "
     "recent (default 24h) and min_recent (default 0) are for the velocities. No rules: PQL off."},
};
#define CONFIG_N_KEYS (sizeof config_keys / sizeof config_keys[0])

/* Sections of SPEC §7 that later versions implement; naming them is a clear error, not an
 * "unknown key", so an operator knows the file is right but the binary is too old. */
/* The sections: keys of type CT_SECTION and the module that parses each (config_yaml.h); the
 * slot is the key's field. */
static const struct {
    const char *key;
    const config_section_t *section;
    const char *shape; /* for the reference: "list" or "map" */
} config_sections[] = {
    {"filters", &filter_config_section, "list"},
    {"pql.tiers", &pql_config_tiers_section, "map"},
    {"pql.rules", &pql_config_rules_section, "list"},
};

static size_t section_index(const config_key_t *k)
{
    for (size_t i = 0; i < sizeof config_sections / sizeof config_sections[0]; i++)
        if (strcmp(config_sections[i].key, k->name) == 0) return i;
    abort(); /* a CT_SECTION key missing from config_sections: a build-time mistake */
}

static const char *const config_unsupported[] = {NULL}; /* NULL-terminated; none today */

static const config_flag_t config_flags[] = {
    {"--config", "FILE", NULL, "Read the YAML config FILE first; the other flags override it."},
    {"--listen", "ADDR:PORT", "listen", NULL},
    {"--brokers", "LIST", "kafka.brokers", NULL},
    {"--data-dir", "DIR", "data_dir", NULL},
    {"--threads", "N", "threads", NULL},
    {"--write-key", "KEY[=SOURCE]", NULL,
     "Accept write key KEY for source SOURCE (default \"default\"); repeatable. Given on the "
     "command line, these replace the file's write_keys. The text is split at its LAST '=' when "
     "what follows is a valid source name ([A-Za-z0-9_.-], 1..64), so a key may itself contain "
     "'=' (write KEY=default to be explicit)."},
    {"--admin-token", "T", "admin_token", NULL},
    {"--log-level", "L", "log_level", NULL},
    {"--dev", NULL, "dev", NULL},
    {"--public-url", "URL", "public_url", NULL},
    {"--check-config", NULL, NULL, "Load and validate everything, then exit (0 if valid)."},
    {"--version", NULL, NULL, "Print the version and exit."},
    {"--help", NULL, NULL, "Print this help and exit."},
};
#define CONFIG_N_FLAGS (sizeof config_flags / sizeof config_flags[0])

const config_key_t *const config__key_tab = config_keys;
const size_t config__n_keys = CONFIG_N_KEYS;
const config_flag_t *const config__flag_tab = config_flags;
const size_t config__n_flags = CONFIG_N_FLAGS;
const char *const *const config__unsupported_tab = config_unsupported;

const config_key_t *config__keys(size_t *n)
{
    *n = CONFIG_N_KEYS;
    return config_keys;
}

const config_flag_t *config__flags(size_t *n)
{
    *n = CONFIG_N_FLAGS;
    return config_flags;
}

const config_section_t *config__section(const config_key_t *k, const char **shape)
{
    size_t i = section_index(k);
    if (shape != NULL) *shape = config_sections[i].shape;
    return config_sections[i].section;
}
