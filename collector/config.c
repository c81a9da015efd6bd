/*
 * config.c — the collector's configuration (contract in config.h, keys in SPEC §7).
 *
 * One table, config_keys[], describes every key: its dotted YAML path, type, place in config_t,
 * bounds, default (spelled exactly as a user would write it in YAML, and parsed by the same code
 * as user input, so a default can never be out of its own bounds) and doc. Defaults, YAML
 * loading, CLI flags, --help and collector/CONFIG.md are all produced from it.
 *
 * YAML is read with libyaml's document API so that every node carries its line; every error is
 * one line "FILE:LINE: key: reason" (CLI errors: "--flag: reason").
 */
#include "config_internal.h"

#include <arpa/inet.h>
#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <yaml.h>

#include "config_yaml.h"
#include "filter.h"
#include "log.h"
#include "tls.h"

/* Bounds on what a config file may hold, so a mistaken file cannot make us allocate without
 * limit. */
#define CONFIG_MAX_WRITE_KEYS 1024
#define CONFIG_MAX_PROPERTIES 256
#define CONFIG_KEY_MAX_LEN    256
#define CONFIG_SOURCE_MAX_LEN 64
#define CONFIG_NAME_MAX       128

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
     "Memory cap of the dedup tables; at the cap the oldest entries go first and the effective "
     "window shrinks (sluice_dedup_window_seconds)."},
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
     "request spools its links with its events (sluice_identities_produced_total)."},
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

#define SECTION(k) (config_sections[section_index(k)].section)

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

const char *config_strerror(int err)
{
    switch (err) {
#define CONFIG_X_STR(name, val, msg)                                                               \
    case val:                                                                                      \
        return msg;
        CONFIG_ERRORS(CONFIG_X_STR)
#undef CONFIG_X_STR
    default:
        return "unknown error";
    }
}

static const config_key_t *key_find(const char *name)
{
    for (size_t i = 0; i < CONFIG_N_KEYS; i++)
        if (strcmp(config_keys[i].name, name) == 0) return &config_keys[i];
    return NULL;
}

/* True when name is a section: some key is "name.<something>". */
static bool key_is_section(const char *name)
{
    size_t n = strlen(name);
    for (size_t i = 0; i < CONFIG_N_KEYS; i++)
        if (strncmp(config_keys[i].name, name, n) == 0 && config_keys[i].name[n] == '.')
            return true;
    return false;
}

static void *field(config_t *c, const config_key_t *k)
{
    return (char *)c + k->offset;
}

static void free_write_keys(config_write_key_t *wk, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        if (wk[i].key != NULL) /* wipe secrets before handing the memory back */
            memset(wk[i].key, 0, strlen(wk[i].key));
        free(wk[i].key);
        free(wk[i].source);
    }
    free(wk);
}

static void free_properties(config_kv_t *kv, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        free(kv[i].key);
        free(kv[i].value);
    }
    free(kv);
}

/* ---- scalar parsing: each returns NULL on success or a reason (static or in why[]) ---- */

static const char *parse_bool(const char *s, bool *out)
{
    static const char *const yes[] = {"true", "True", "TRUE", "yes", "Yes", "on", "On"};
    static const char *const no[] = {"false", "False", "FALSE", "no", "No", "off", "Off"};
    for (size_t i = 0; i < sizeof yes / sizeof yes[0]; i++) {
        if (strcmp(s, yes[i]) == 0) {
            *out = true;
            return NULL;
        }
        if (strcmp(s, no[i]) == 0) {
            *out = false;
            return NULL;
        }
    }
    return "expected true or false";
}

/* Index of s in "a|b|c", or -1. */
/* Index of s among the '|'-separated values, where "a/b" are two spellings of one value
 * (log_level "warn/warning", matching log_level_parse()); -1 when absent. */
static int enum_index(const char *values, const char *s)
{
    size_t n = strlen(s);
    int i = 0;
    for (const char *p = values; *p; i++) {
        const char *bar = strchr(p, '|');
        const char *end = bar ? bar : p + strlen(p);
        for (const char *q = p; q < end;) {
            const char *slash = memchr(q, '/', (size_t)(end - q));
            const char *qe = slash ? slash : end;
            if ((size_t)(qe - q) == n && strncmp(q, s, n) == 0) return i;
            q = slash ? slash + 1 : end;
        }
        if (bar == NULL) break;
        p = bar + 1;
    }
    return -1;
}

static void store_uint(void *dst, size_t width, uint64_t v)
{
    if (width == sizeof(uint32_t)) {
        uint32_t v32 = (uint32_t)v;
        memcpy(dst, &v32, sizeof v32);
    } else {
        memcpy(dst, &v, sizeof v);
    }
}

static void format_bound(const config_key_t *k, double v, char *out, size_t outlen)
{
    if (k->type == CT_SIZE && v >= GiB && fmod(v, GiB) == 0)
        snprintf(out, outlen, "%.0fGiB", v / GiB);
    else if (k->type == CT_SIZE && v >= MiB && fmod(v, MiB) == 0)
        snprintf(out, outlen, "%.0fMiB", v / MiB);
    else if (k->type == CT_SIZE && v >= KiB && fmod(v, KiB) == 0)
        snprintf(out, outlen, "%.0fKiB", v / KiB);
    else if (k->type == CT_SIZE)
        snprintf(out, outlen, "%.0fB", v);
    else if (k->type == CT_DURATION && v >= 86400000 && fmod(v, 86400000) == 0)
        snprintf(out, outlen, "%.0fd", v / 86400000);
    else if (k->type == CT_DURATION && v >= 3600000 && fmod(v, 3600000) == 0)
        snprintf(out, outlen, "%.0fh", v / 3600000);
    else if (k->type == CT_DURATION && v >= 60000 && fmod(v, 60000) == 0)
        snprintf(out, outlen, "%.0fm", v / 60000);
    else if (k->type == CT_DURATION && v >= 1000 && fmod(v, 1000) == 0)
        snprintf(out, outlen, "%.0fs", v / 1000);
    else if (k->type == CT_DURATION && v != 0)
        snprintf(out, outlen, "%.0fms", v);
    else
        snprintf(out, outlen, "%.15g", v);
}

/*
 * Sets scalar key k from text s. On failure returns CONFIG_E_INVALID (or E_NOMEM) with a reason
 * in why and leaves the field unchanged. is_null: the YAML value was null/empty.
 */
static int set_scalar(config_t *c, const config_key_t *k, const char *s, bool is_null,
                      config_why_t *why)
{
    void *dst = field(c, k);
    const char *reason = NULL;
    uint64_t u = 0;
    double d = 0;
    why->text[0] = '\0';

    if (is_null && k->type != CT_STRING) {
        snprintf(why->text, sizeof why->text, "needs a value");
        return CONFIG_E_INVALID;
    }
    switch (k->type) {
    case CT_STRING: {
        char *copy = NULL;
        if (!is_null && (copy = strdup(s)) == NULL) {
            snprintf(why->text, sizeof why->text, "out of memory");
            return CONFIG_E_NOMEM;
        }
        char **sp = dst;
        free(*sp);
        *sp = copy;
        return CONFIG_OK;
    }
    case CT_BOOL: {
        bool b;
        if ((reason = parse_bool(s, &b)) != NULL) break;
        memcpy(dst, &b, sizeof b);
        return CONFIG_OK;
    }
    case CT_ENUM: {
        int i = enum_index(k->values, s);
        if (i < 0) {
            snprintf(why->text, sizeof why->text, "expected one of %s", k->values);
            return CONFIG_E_INVALID;
        }
        memcpy(dst, &i, sizeof i);
        return CONFIG_OK;
    }
    case CT_DOUBLE: {
        char *end = NULL;
        errno = 0;
        d = strtod(s, &end);
        if (end == s || *end != '\0' || errno != 0 || !isfinite(d)) {
            reason = "expected a number";
            break;
        }
        if (d < k->min || d > k->max) goto out_of_bounds;
        memcpy(dst, &d, sizeof d);
        return CONFIG_OK;
    }
    case CT_UINT:
        reason = config_parse_u64(s, &u);
        break;
    case CT_SIZE:
        reason = config_parse_size(s, &u);
        break;
    case CT_DURATION:
        reason = config_parse_duration(s, &u);
        break;
    default:
        reason = "not a scalar key";
        break;
    }
    if (reason != NULL) {
        snprintf(why->text, sizeof why->text, "%s", reason);
        return CONFIG_E_INVALID;
    }
    d = (double)u;
    if (d < k->min || d > k->max) goto out_of_bounds;
    store_uint(dst, k->width, u);
    return CONFIG_OK;

out_of_bounds : {
    char lo[32], hi[32];
    format_bound(k, k->min, lo, sizeof lo);
    format_bound(k, k->max, hi, sizeof hi);
    snprintf(why->text, sizeof why->text, "%s is out of range %s..%s", s, lo, hi);
    return CONFIG_E_INVALID;
}
}

void config_init(config_t *c)
{
    memset(c, 0, sizeof *c);
    for (size_t i = 0; i < CONFIG_N_KEYS; i++) {
        const config_key_t *k = &config_keys[i];
        config_why_t why;
        /* Defaults are checked by the unit tests; a failure here (out of memory for a string)
         * leaves the field NULL, which config_validate reports. */
        if (k->def != NULL && k->type != CT_ENV) (void)set_scalar(c, k, k->def, false, &why);
    }
}

void config_free(config_t *c)
{
    if (c == NULL) return;
    for (size_t i = 0; i < CONFIG_N_KEYS; i++) {
        const config_key_t *k = &config_keys[i];
        if (k->type == CT_STRING) {
            char **sp = field(c, k);
            if (*sp != NULL && k->offset == offsetof(config_t, admin_token))
                memset(*sp, 0, strlen(*sp));
            free(*sp);
            *sp = NULL;
        }
    }
    free_write_keys(c->write_keys, c->n_write_keys);
    c->write_keys = NULL;
    c->n_write_keys = 0;
    free_properties(c->kafka_properties, c->n_kafka_properties);
    c->kafka_properties = NULL;
    c->n_kafka_properties = 0;
    for (size_t i = 0; i < CONFIG_N_KEYS; i++)
        if (config_keys[i].type == CT_SECTION)
            SECTION(&config_keys[i])->free(field(c, &config_keys[i]));
    tls_ctx_free(c->tls_ctx);
    c->tls_ctx = NULL;
    free(c->config_file);
    c->config_file = NULL;
}

static bool str_differs(const char *a, const char *b)
{
    return (a == NULL) != (b == NULL) || (a != NULL && strcmp(a, b) != 0);
}

void config_diff(const config_t *a, const config_t *b, void (*fn)(const char *key, void *ud),
                 void *ud)
{
    for (size_t i = 0; i < CONFIG_N_KEYS; i++) {
        const config_key_t *k = &config_keys[i];
        const void *fa = (const char *)a + k->offset, *fb = (const char *)b + k->offset;
        bool differs = false;
        switch (k->type) {
        case CT_ENV: /* an alias of admin_token, compared there */
            break;
        case CT_SECTION: /* the owner says; a live section (differs NULL) never "changed" */
            differs = SECTION(k)->differs != NULL && SECTION(k)->differs(fa, fb);
            break;
        case CT_STRING:
            differs = str_differs(*(char *const *)fa, *(char *const *)fb);
            break;
        case CT_WRITE_KEYS:
            differs = a->n_write_keys != b->n_write_keys;
            for (size_t j = 0; !differs && j < a->n_write_keys; j++)
                differs = str_differs(a->write_keys[j].key, b->write_keys[j].key) ||
                          str_differs(a->write_keys[j].source, b->write_keys[j].source);
            break;
        case CT_PROPERTIES:
            differs = a->n_kafka_properties != b->n_kafka_properties;
            for (size_t j = 0; !differs && j < a->n_kafka_properties; j++)
                differs = str_differs(a->kafka_properties[j].key, b->kafka_properties[j].key) ||
                          str_differs(a->kafka_properties[j].value, b->kafka_properties[j].value);
            break;
        case CT_BOOL:
        case CT_UINT:
        case CT_DOUBLE:
        case CT_SIZE:
        case CT_DURATION:
        case CT_ENUM:
            differs = memcmp(fa, fb, k->width) != 0;
            break;
        default: /* a structured section: its owner adds a comparison when it matters */
            break;
        }
        if (differs) fn(k->name, ud);
    }
}

/* ---- validation helpers shared by YAML and CLI ---- */

static const char *write_key_problem(const char *k)
{
    size_t n = strlen(k);
    if (n == 0) return "write key is empty";
    if (n > CONFIG_KEY_MAX_LEN) return "write key longer than 256 characters";
    for (size_t i = 0; i < n; i++) {
        unsigned char ch = (unsigned char)k[i];
        if (ch <= 0x20 || ch >= 0x7F || ch == ':')
            return "write key must be visible ASCII characters without ':' or spaces";
    }
    return NULL;
}

/* ---- YAML ---- */

typedef struct yctx {
    yaml_document_t *doc;
    const char *file;
    config_t *c;
    char *err;
    size_t errlen;
    int admin_token_line, admin_env_line;
} yctx_t;

/* Checks a mapping's keys: strings, no duplicates. */
static int check_map_keys(yctx_t *y, yaml_node_t *map, const char *name)
{
    config_yaml_t cy = {y->doc, y->file, y->err, y->errlen};
    return config_yaml_map_keys(&cy, map, name);
}

static int env_value(yctx_t *y, const yaml_node_t *v, const char *name, const char **out)
{
    if (v->type != YAML_SCALAR_NODE || config_yaml_is_null(v) || config_yaml_has_nul(v))
        return config_fail(CONFIG_E_INVALID, y->err, y->errlen,
                           "%s:%lu: %s: expected the name of an environment variable", y->file,
                           config_yaml_line(v), name);
    const char *val = getenv(config_yaml_text(v));
    if (val == NULL)
        return config_fail(CONFIG_E_INVALID, y->err, y->errlen,
                           "%s:%lu: %s: environment variable %s is not set", y->file,
                           config_yaml_line(v), name, config_yaml_text(v));
    if (val[0] == '\0')
        return config_fail(CONFIG_E_INVALID, y->err, y->errlen,
                           "%s:%lu: %s: environment variable %s is empty", y->file,
                           config_yaml_line(v), name, config_yaml_text(v));
    *out = val;
    return CONFIG_OK;
}

static int yaml_write_keys(yctx_t *y, yaml_node_t *seq)
{
    const char *name = "write_keys";
    if (seq->type != YAML_SEQUENCE_NODE)
        return config_fail(CONFIG_E_INVALID, y->err, y->errlen,
                           "%s:%lu: %s: expected a list of {key: ..., source: ...}", y->file,
                           config_yaml_line(seq), name);
    size_t n = (size_t)(seq->data.sequence.items.top - seq->data.sequence.items.start);
    if (n > CONFIG_MAX_WRITE_KEYS)
        return config_fail(CONFIG_E_INVALID, y->err, y->errlen, "%s:%lu: %s: more than %d keys",
                           y->file, config_yaml_line(seq), name, CONFIG_MAX_WRITE_KEYS);
    config_write_key_t *wk = calloc(n ? n : 1, sizeof *wk);
    unsigned long *lines = calloc(n ? n : 1, sizeof *lines);
    if (wk == NULL || lines == NULL) {
        free(wk);
        free(lines);
        return config_fail(CONFIG_E_NOMEM, y->err, y->errlen, "%s: out of memory", y->file);
    }
    int rc = CONFIG_OK;
    size_t i = 0;
    for (; i < n && rc == CONFIG_OK; i++) {
        yaml_node_t *item = yaml_document_get_node(y->doc, seq->data.sequence.items.start[i]);
        lines[i] = config_yaml_line(item);
        if (item->type != YAML_MAPPING_NODE) {
            rc = config_fail(CONFIG_E_INVALID, y->err, y->errlen,
                             "%s:%lu: %s: expected {key: ..., source: ...}", y->file, lines[i],
                             name);
            break;
        }
        if ((rc = check_map_keys(y, item, name)) != CONFIG_OK) break;
        const char *key = NULL, *source = "default";
        for (yaml_node_pair_t *p = item->data.mapping.pairs.start;
             p < item->data.mapping.pairs.top && rc == CONFIG_OK; p++) {
            yaml_node_t *k = yaml_document_get_node(y->doc, p->key);
            yaml_node_t *v = yaml_document_get_node(y->doc, p->value);
            const char *kn = config_yaml_text(k);
            bool is_key = strcmp(kn, "key") == 0, is_env = strcmp(kn, "key_env") == 0;
            if (!is_key && !is_env && strcmp(kn, "source") != 0) {
                rc = config_fail(CONFIG_E_INVALID, y->err, y->errlen,
                                 "%s:%lu: %s: unknown key \"%s\" (expected key, key_env or source)",
                                 y->file, config_yaml_line(k), name, kn);
            } else if ((is_key || is_env) && key != NULL) {
                rc = config_fail(CONFIG_E_INVALID, y->err, y->errlen,
                                 "%s:%lu: %s: key and key_env are exclusive", y->file,
                                 config_yaml_line(k), name);
            } else if (is_env) {
                rc = env_value(y, v, "write_keys.key_env", &key);
            } else if (v->type != YAML_SCALAR_NODE || config_yaml_is_null(v) ||
                       config_yaml_has_nul(v)) {
                rc = config_fail(CONFIG_E_INVALID, y->err, y->errlen,
                                 "%s:%lu: %s: %s needs a string", y->file, config_yaml_line(v),
                                 name, kn);
            } else if (is_key) {
                key = config_yaml_text(v);
                if (y->c->inline_secret_line == 0) y->c->inline_secret_line = config_yaml_line(v);
            } else {
                source = config_yaml_text(v);
                if (!config_name_ok(source, CONFIG_SOURCE_MAX_LEN))
                    rc = config_fail(CONFIG_E_INVALID, y->err, y->errlen,
                                     "%s:%lu: %s: source must be 1..64 of [A-Za-z0-9_.-]", y->file,
                                     config_yaml_line(v), name);
            }
        }
        if (rc != CONFIG_OK) break;
        if (key == NULL) {
            rc = config_fail(CONFIG_E_INVALID, y->err, y->errlen,
                             "%s:%lu: %s: entry needs key or key_env", y->file, lines[i], name);
            break;
        }
        const char *problem = write_key_problem(key);
        if (problem != NULL) {
            rc = config_fail(CONFIG_E_INVALID, y->err, y->errlen, "%s:%lu: %s: %s", y->file,
                             lines[i], name, problem);
            break;
        }
        for (size_t j = 0; j < i; j++) {
            if (strcmp(wk[j].key, key) == 0) {
                /* The key itself is a secret: name the lines, not the key. */
                rc = config_fail(CONFIG_E_INVALID, y->err, y->errlen,
                                 "%s:%lu: %s: duplicate write key (same as line %lu)", y->file,
                                 lines[i], name, lines[j]);
                break;
            }
        }
        if (rc != CONFIG_OK) break;
        wk[i].key = strdup(key);
        wk[i].source = strdup(source);
        if (wk[i].key == NULL || wk[i].source == NULL) {
            i++;
            rc = config_fail(CONFIG_E_NOMEM, y->err, y->errlen, "%s: out of memory", y->file);
            break;
        }
    }
    free(lines);
    if (rc != CONFIG_OK) {
        free_write_keys(wk, n);
        return rc;
    }
    free_write_keys(y->c->write_keys, y->c->n_write_keys);
    y->c->write_keys = wk;
    y->c->n_write_keys = n;
    return CONFIG_OK;
}

static int yaml_properties(yctx_t *y, yaml_node_t *map, const char *name)
{
    if (map->type != YAML_MAPPING_NODE)
        return config_fail(CONFIG_E_INVALID, y->err, y->errlen,
                           "%s:%lu: %s: expected a map of librdkafka property: value", y->file,
                           config_yaml_line(map), name);
    int rc = check_map_keys(y, map, name);
    if (rc != CONFIG_OK) return rc;
    size_t n = (size_t)(map->data.mapping.pairs.top - map->data.mapping.pairs.start);
    if (n > CONFIG_MAX_PROPERTIES)
        return config_fail(CONFIG_E_INVALID, y->err, y->errlen,
                           "%s:%lu: %s: more than %d properties", y->file, config_yaml_line(map),
                           name, CONFIG_MAX_PROPERTIES);
    config_kv_t *kv = calloc(n ? n : 1, sizeof *kv);
    if (kv == NULL)
        return config_fail(CONFIG_E_NOMEM, y->err, y->errlen, "%s: out of memory", y->file);
    for (size_t i = 0; i < n && rc == CONFIG_OK; i++) {
        yaml_node_pair_t *p = &map->data.mapping.pairs.start[i];
        yaml_node_t *k = yaml_document_get_node(y->doc, p->key);
        yaml_node_t *v = yaml_document_get_node(y->doc, p->value);
        if (config_yaml_text(k)[0] == '\0' || config_yaml_has_nul(k)) {
            rc = config_fail(CONFIG_E_INVALID, y->err, y->errlen, "%s:%lu: %s: empty property name",
                             y->file, config_yaml_line(k), name);
        } else if (v->type != YAML_SCALAR_NODE || config_yaml_is_null(v) ||
                   config_yaml_has_nul(v)) {
            rc = config_fail(CONFIG_E_INVALID, y->err, y->errlen,
                             "%s:%lu: %s.%s: expected a string, number or boolean", y->file,
                             config_yaml_line(v), name, config_yaml_text(k));
        } else {
            kv[i].key = strdup(config_yaml_text(k));
            kv[i].value = strdup(config_yaml_text(v));
            if (kv[i].key == NULL || kv[i].value == NULL)
                rc = config_fail(CONFIG_E_NOMEM, y->err, y->errlen, "%s: out of memory", y->file);
        }
    }
    if (rc != CONFIG_OK) {
        free_properties(kv, n);
        return rc;
    }
    free_properties(y->c->kafka_properties, y->c->n_kafka_properties);
    y->c->kafka_properties = kv;
    y->c->n_kafka_properties = n;
    return CONFIG_OK;
}

static int yaml_key(yctx_t *y, const config_key_t *k, yaml_node_t *key, yaml_node_t *v)
{
    switch (k->type) {
    case CT_WRITE_KEYS:
        return yaml_write_keys(y, v);
    case CT_PROPERTIES:
        return yaml_properties(y, v, k->name);
    case CT_SECTION: {
        config_yaml_t cy = {y->doc, y->file, y->err, y->errlen};
        return SECTION(k)->parse(&cy, v, k->name, field(y->c, k));
    }
    case CT_ENV: {
        const char *val = NULL;
        int rc = env_value(y, v, k->name, &val);
        if (rc != CONFIG_OK) return rc;
        y->admin_env_line = (int)config_yaml_line(key);
        config_why_t why;
        rc = set_scalar(y->c, key_find("admin_token"), val, false, &why);
        if (rc != CONFIG_OK)
            return config_fail(rc, y->err, y->errlen, "%s:%lu: %s: %s", y->file,
                               config_yaml_line(v), k->name, why.text);
        break;
    }
    default: {
        if (v->type != YAML_SCALAR_NODE)
            return config_fail(CONFIG_E_INVALID, y->err, y->errlen,
                               "%s:%lu: %s: expected a single value", y->file, config_yaml_line(v),
                               k->name);
        if (config_yaml_has_nul(v))
            return config_fail(CONFIG_E_INVALID, y->err, y->errlen,
                               "%s:%lu: %s: contains a NUL byte", y->file, config_yaml_line(v),
                               k->name);
        config_why_t why;
        int rc = set_scalar(y->c, k, config_yaml_text(v), config_yaml_is_null(v), &why);
        if (rc != CONFIG_OK)
            return config_fail(rc, y->err, y->errlen, "%s:%lu: %s: %s", y->file,
                               config_yaml_line(v), k->name, why.text);
        if (strcmp(k->name, "admin_token") == 0) {
            y->admin_token_line = (int)config_yaml_line(key);
            if (!config_yaml_is_null(v) && y->c->inline_secret_line == 0)
                y->c->inline_secret_line = config_yaml_line(v);
        }
        break;
    }
    }
    if (y->admin_token_line && y->admin_env_line)
        return config_fail(
            CONFIG_E_INVALID, y->err, y->errlen,
            "%s:%lu: %s: admin_token and admin_token_env are exclusive (other at line %d)", y->file,
            config_yaml_line(key), k->name,
            k->type == CT_ENV ? y->admin_token_line : y->admin_env_line);
    return CONFIG_OK;
}

/* Applies every pair of mapping map, whose dotted path is prefix ("" at the top). */
static int yaml_map(yctx_t *y, yaml_node_t *map, const char *prefix)
{
    int rc = check_map_keys(y, map, prefix[0] ? prefix : "config");
    if (rc != CONFIG_OK) return rc;
    for (yaml_node_pair_t *p = map->data.mapping.pairs.start; p < map->data.mapping.pairs.top;
         p++) {
        yaml_node_t *k = yaml_document_get_node(y->doc, p->key);
        yaml_node_t *v = yaml_document_get_node(y->doc, p->value);
        const char *kn = config_yaml_text(k);
        char name[CONFIG_NAME_MAX];
        int len = snprintf(name, sizeof name, "%s%s%s", prefix, prefix[0] ? "." : "", kn);
        bool name_ok = len > 0 && (size_t)len < sizeof name && strchr(kn, '.') == NULL &&
                       kn[0] != '\0' && !config_yaml_has_nul(k);
        if (name_ok && prefix[0] == '\0') {
            for (size_t i = 0; config_unsupported[i] != NULL; i++)
                if (strcmp(kn, config_unsupported[i]) == 0)
                    return config_fail(
                        CONFIG_E_INVALID, y->err, y->errlen,
                        "%s:%lu: %s: not supported by this version of sluice-collector", y->file,
                        config_yaml_line(k), kn);
        }
        const config_key_t *key = name_ok ? key_find(name) : NULL;
        if (key != NULL) {
            rc = yaml_key(y, key, k, v);
        } else if (name_ok && key_is_section(name)) {
            if (v->type != YAML_MAPPING_NODE)
                return config_fail(CONFIG_E_INVALID, y->err, y->errlen,
                                   "%s:%lu: %s: expected a mapping", y->file, config_yaml_line(v),
                                   name);
            rc = yaml_map(y, v, name);
        } else {
            return config_fail(CONFIG_E_INVALID, y->err, y->errlen, "%s:%lu: %s%s%s: unknown key",
                               y->file, config_yaml_line(k), prefix, prefix[0] ? "." : "", kn);
        }
        if (rc != CONFIG_OK) return rc;
    }
    return CONFIG_OK;
}

int config_load_file(config_t *c, const char *path, char *err, size_t errlen)
{
    FILE *f = fopen(path, "rb");
    if (f == NULL)
        return config_fail(CONFIG_E_IO, err, errlen, "%s: cannot open: %s", path, strerror(errno));
    yaml_parser_t parser;
    yaml_document_t doc;
    if (!yaml_parser_initialize(&parser)) {
        fclose(f);
        return config_fail(CONFIG_E_NOMEM, err, errlen, "%s: out of memory", path);
    }
    yaml_parser_set_input_file(&parser, f);
    int rc = CONFIG_OK;
    if (!yaml_parser_load(&parser, &doc)) {
        rc = config_fail(parser.error == YAML_MEMORY_ERROR ? CONFIG_E_NOMEM : CONFIG_E_INVALID, err,
                         errlen, "%s:%lu: YAML: %s%s%s", path,
                         (unsigned long)parser.problem_mark.line + 1,
                         parser.problem ? parser.problem : "syntax error",
                         parser.context ? " " : "", parser.context ? parser.context : "");
        yaml_parser_delete(&parser);
        fclose(f);
        return rc;
    }
    yaml_node_t *root = yaml_document_get_root_node(&doc);
    if (root != NULL) {
        yctx_t y = {&doc, path, c, err, errlen, 0, 0};
        if (root->type == YAML_MAPPING_NODE)
            rc = yaml_map(&y, root, "");
        else if (!(root->type == YAML_SCALAR_NODE && config_yaml_is_null(root)))
            rc = config_fail(CONFIG_E_INVALID, err, errlen,
                             "%s:%lu: the top level must be a mapping", path,
                             config_yaml_line(root));
    }
    yaml_document_delete(&doc);
    if (rc == CONFIG_OK) {
        /* A second document would be silently ignored; say so instead. */
        yaml_document_t next;
        if (!yaml_parser_load(&parser, &next)) {
            rc = config_fail(CONFIG_E_INVALID, err, errlen, "%s:%lu: YAML: %s", path,
                             (unsigned long)parser.problem_mark.line + 1,
                             parser.problem ? parser.problem : "syntax error");
        } else {
            yaml_node_t *r2 = yaml_document_get_root_node(&next);
            if (r2 != NULL)
                rc = config_fail(CONFIG_E_INVALID, err, errlen,
                                 "%s:%lu: only one YAML document is allowed", path,
                                 config_yaml_line(r2));
            yaml_document_delete(&next);
        }
    }
    yaml_parser_delete(&parser);
    fclose(f);
    return rc;
}

/* ---- validation ---- */

int config_listen_addr(const config_t *c, char *host, size_t hostlen, int *port)
{
    return config_addr_parse(c->listen, host, hostlen, port);
}

int config_addr_parse(const char *s, char *host, size_t hostlen, int *port)
{
    if (s == NULL || host == NULL || hostlen == 0) return CONFIG_E_INVALID;
    const char *h, *colon;
    size_t hl;
    int family;
    if (s[0] == '[') {
        const char *close = strchr(s, ']');
        if (close == NULL || close[1] != ':') return CONFIG_E_INVALID;
        h = s + 1;
        hl = (size_t)(close - h);
        colon = close + 1;
        family = AF_INET6;
    } else {
        colon = strrchr(s, ':');
        if (colon == NULL || memchr(s, ':', (size_t)(colon - s)) != NULL) return CONFIG_E_INVALID;
        h = s;
        hl = (size_t)(colon - s);
        family = AF_INET;
    }
    char buf[64];
    if (hl == 0 || hl >= sizeof buf) return CONFIG_E_INVALID;
    memcpy(buf, h, hl);
    buf[hl] = '\0';
    /* Only numeric addresses (and "localhost"): resolving a name would mean DNS at start-up and
     * an address that depends on it. */
    if (family == AF_INET && strcmp(buf, "localhost") == 0) snprintf(buf, sizeof buf, "127.0.0.1");
    unsigned char addr[16];
    if (inet_pton(family, buf, addr) != 1) return CONFIG_E_INVALID;
    uint64_t p;
    if (colon[1] == '\0' || strlen(colon + 1) > 5 || config_parse_u64(colon + 1, &p) != NULL ||
        p > 65535)
        return CONFIG_E_INVALID;
    if (strlen(buf) >= hostlen) return CONFIG_E_INVALID;
    memcpy(host, buf, strlen(buf) + 1);
    if (port) *port = (int)p;
    return CONFIG_OK;
}

/* public_url: a scheme, a non-empty host and an optional path, nothing a JSON string or a URL
 * would read differently (so the settings document can carry it as is). */
static bool public_url_ok(const char *u)
{
    size_t skip = strncmp(u, "http://", 7) == 0 ? 7 : strncmp(u, "https://", 8) == 0 ? 8 : 0;
    if (skip == 0 || u[skip] == '\0' || u[skip] == '/' || strlen(u) > 512) return false;
    for (const char *p = u + skip; *p != '\0'; p++)
        if (*p <= ' ' || *p >= 0x7f || *p == '"' || *p == '\\' || *p == '?' || *p == '#')
            return false;
    return true;
}

int config_validate(const config_t *c, char *err, size_t errlen)
{
    char host[64];
    int port;
    if (config_listen_addr(c, host, sizeof host, &port) != CONFIG_OK)
        return config_fail(CONFIG_E_INVALID, err, errlen,
                           "listen: \"%s\" is not IPV4:PORT, [IPV6]:PORT or localhost:PORT",
                           c->listen ? c->listen : "");
    if (c->admin_listen != NULL) {
        char ahost[64];
        int aport;
        if (config_addr_parse(c->admin_listen, ahost, sizeof ahost, &aport) != CONFIG_OK)
            return config_fail(
                CONFIG_E_INVALID, err, errlen,
                "admin_listen: \"%s\" is not IPV4:PORT, [IPV6]:PORT or localhost:PORT",
                c->admin_listen);
        bool wild = strcmp(host, "0.0.0.0") == 0 || strcmp(host, "::") == 0 ||
                    strcmp(ahost, "0.0.0.0") == 0 || strcmp(ahost, "::") == 0;
        if (aport != 0 && aport == port && (wild || strcmp(host, ahost) == 0))
            return config_fail(CONFIG_E_INVALID, err, errlen,
                               "admin_listen: \"%s\" is the listen address; the admin listener "
                               "needs its own",
                               c->admin_listen);
    }
    if ((c->tls_cert_file != NULL) != (c->tls_key_file != NULL))
        return config_fail(CONFIG_E_INVALID, err, errlen,
                           "tls: needs both cert_file and key_file (%s is missing)",
                           c->tls_cert_file == NULL ? "tls.cert_file" : "tls.key_file");
    if (c->threads < 1 || c->threads > 64)
        return config_fail(CONFIG_E_INVALID, err, errlen, "threads: %u is out of range 1..64",
                           c->threads);
    if (c->n_write_keys == 0 && !c->dev)
        return config_fail(CONFIG_E_INVALID, err, errlen,
                           "no write key configured (use --write-key or write_keys, or --dev)");
    for (size_t i = 0; i < c->n_write_keys; i++) {
        const char *problem = write_key_problem(c->write_keys[i].key);
        if (problem != NULL)
            return config_fail(CONFIG_E_INVALID, err, errlen, "write key %zu: %s", i + 1, problem);
        if (!config_name_ok(c->write_keys[i].source, CONFIG_SOURCE_MAX_LEN))
            return config_fail(CONFIG_E_INVALID, err, errlen,
                               "write key %zu: source must be 1..64 of [A-Za-z0-9_.-]", i + 1);
        for (size_t j = 0; j < i; j++)
            if (strcmp(c->write_keys[i].key, c->write_keys[j].key) == 0)
                return config_fail(CONFIG_E_INVALID, err, errlen,
                                   "write key %zu: duplicate of write key %zu", i + 1, j + 1);
    }
    if (c->public_url != NULL && !public_url_ok(c->public_url))
        return config_fail(CONFIG_E_INVALID, err, errlen,
                           "public_url: \"%s\" is not http[s]://HOST[:PORT][/PREFIX] (visible "
                           "ASCII, no quotes, backslashes, '?' or '#')",
                           c->public_url);
    if (c->event_bytes > c->body_bytes)
        return config_fail(CONFIG_E_INVALID, err, errlen,
                           "limits.event_bytes (%llu) must not exceed limits.body_bytes (%llu)",
                           (unsigned long long)c->event_bytes, (unsigned long long)c->body_bytes);
    /* Every loop's decompression buffer plus room for large bodies beside them. */
    uint64_t min_body_memory = 2 * ((uint64_t)c->threads + 1) * c->body_bytes;
    if (c->body_memory < min_body_memory)
        return config_fail(CONFIG_E_INVALID, err, errlen,
                           "limits.body_memory (%llu) must be at least 2 x (threads + 1) x "
                           "limits.body_bytes (%llu)",
                           (unsigned long long)c->body_memory, (unsigned long long)min_body_memory);
    if (c->data_dir == NULL || c->data_dir[0] == '\0')
        return config_fail(CONFIG_E_INVALID, err, errlen, "data_dir: must not be empty");
    const char *topics[] = {c->topic_events,    c->topic_rejected,       c->topic_pql,
                            c->topic_changelog, c->topic_events_deduped, c->topic_identities};
    const char *tnames[] = {
        "kafka.topics.events",    "kafka.topics.rejected",       "kafka.topics.pql",
        "kafka.topics.changelog", "kafka.topics.events_deduped", "kafka.topics.identities"};
    for (int i = 0; i < (int)(sizeof topics / sizeof topics[0]); i++) {
        if (topics[i] == NULL || topics[i][0] == '\0')
            return config_fail(CONFIG_E_INVALID, err, errlen, "%s: must not be empty", tnames[i]);
        for (int j = 0; j < i; j++)
            if (strcmp(topics[i], topics[j]) == 0)
                return config_fail(CONFIG_E_INVALID, err, errlen, "%s: same topic as %s", tnames[i],
                                   tnames[j]);
    }
    int prc = pql_config_validate(&c->pql, err, errlen);
    if (prc != CONFIG_OK) return prc;
    if (c->log_level < LOG_DEBUG || c->log_level > LOG_OFF ||
        (c->kafka_format != 0 && c->kafka_format != 1) ||
        (c->pql_mode != CONFIG_PQL_LOCAL && c->pql_mode != CONFIG_PQL_STREAM))
        return config_fail(CONFIG_E_INVALID, err, errlen,
                           "log_level, kafka.format or pql.mode out of range");
    return CONFIG_OK;
}

/* ---- command line ---- */

static const config_flag_t *flag_find(const char *arg, size_t len)
{
    for (size_t i = 0; i < CONFIG_N_FLAGS; i++)
        if (strlen(config_flags[i].flag) == len && strncmp(config_flags[i].flag, arg, len) == 0)
            return &config_flags[i];
    if (len == 2 && strncmp(arg, "-h", 2) == 0) return flag_find("--help", 6);
    return NULL;
}

/* Splits argv[*i] into its flag and value (from "--f=v" or the next argument). */
static int next_flag(int argc, char **argv, int *i, const config_flag_t **flag, const char **val,
                     char *err, size_t errlen)
{
    const char *a = argv[*i];
    if (a[0] != '-')
        return config_fail(CONFIG_E_INVALID, err, errlen, "unexpected argument \"%s\"", a);
    const char *eq = strchr(a, '=');
    size_t len = eq ? (size_t)(eq - a) : strlen(a);
    const config_flag_t *f = flag_find(a, len);
    if (f == NULL)
        return config_fail(CONFIG_E_INVALID, err, errlen, "%.*s: unknown option (see --help)",
                           (int)len, a);
    *flag = f;
    *val = NULL;
    if (f->arg == NULL) {
        if (eq != NULL)
            return config_fail(CONFIG_E_INVALID, err, errlen, "%s: takes no value", f->flag);
    } else if (eq != NULL) {
        *val = eq + 1;
    } else if (*i + 1 < argc) {
        *val = argv[++*i];
    } else {
        return config_fail(CONFIG_E_INVALID, err, errlen, "%s: needs a value %s", f->flag, f->arg);
    }
    return CONFIG_OK;
}

/* --write-key KEY[=SOURCE]: split at the last '=' when a valid source name follows it. */
static int add_cli_write_key(config_t *c, const char *val, char *err, size_t errlen)
{
    if (c->n_write_keys >= CONFIG_MAX_WRITE_KEYS)
        return config_fail(CONFIG_E_INVALID, err, errlen, "--write-key: more than %d keys",
                           CONFIG_MAX_WRITE_KEYS);
    const char *eq = strrchr(val, '=');
    size_t klen = strlen(val);
    const char *source = "default";
    if (eq != NULL && eq != val && config_name_ok(eq + 1, CONFIG_SOURCE_MAX_LEN)) {
        klen = (size_t)(eq - val);
        source = eq + 1;
    }
    char *key = strndup(val, klen);
    char *src = strdup(source);
    config_write_key_t *wk = realloc(c->write_keys, (c->n_write_keys + 1) * sizeof *wk);
    if (key == NULL || src == NULL || wk == NULL) {
        free(key);
        free(src);
        if (wk != NULL) c->write_keys = wk;
        return config_fail(CONFIG_E_NOMEM, err, errlen, "--write-key: out of memory");
    }
    c->write_keys = wk;
    const char *problem = write_key_problem(key);
    if (problem != NULL) {
        free(key);
        free(src);
        return config_fail(CONFIG_E_INVALID, err, errlen, "--write-key: %s", problem);
    }
    wk[c->n_write_keys++] = (config_write_key_t){key, src};
    return CONFIG_OK;
}

int config_from_args(config_t *c, int argc, char **argv, config_action_t *action, char *err,
                     size_t errlen)
{
    config_init(c);
    *action = CONFIG_RUN;
    const char *config_file = NULL;
    bool check = false;
    int rc;

    /* Pass 1: syntax of every flag, --help/--version, and which file to read. */
    for (int i = 1; i < argc; i++) {
        const config_flag_t *f;
        const char *val;
        if ((rc = next_flag(argc, argv, &i, &f, &val, err, errlen)) != CONFIG_OK) return rc;
        if (strcmp(f->flag, "--help") == 0) {
            *action = CONFIG_HELP;
            return CONFIG_OK;
        }
        if (strcmp(f->flag, "--version") == 0) {
            *action = CONFIG_VERSION;
            return CONFIG_OK;
        }
        if (strcmp(f->flag, "--config") == 0) {
            if (config_file != NULL)
                return config_fail(CONFIG_E_INVALID, err, errlen, "--config: given more than once");
            config_file = val;
        }
        if (strcmp(f->flag, "--check-config") == 0) check = true;
    }
    if (config_file != NULL && (c->config_file = strdup(config_file)) == NULL)
        return config_fail(CONFIG_E_NOMEM, err, errlen, "out of memory");
    if (config_file != NULL && (rc = config_load_file(c, config_file, err, errlen)) != CONFIG_OK)
        return rc;

    /* Pass 2: the flags override the file, in order. */
    bool cli_keys = false;
    for (int i = 1; i < argc; i++) {
        const config_flag_t *f;
        const char *val;
        if ((rc = next_flag(argc, argv, &i, &f, &val, err, errlen)) != CONFIG_OK) return rc;
        if (strcmp(f->flag, "--write-key") == 0) {
            if (!cli_keys) {
                free_write_keys(c->write_keys, c->n_write_keys);
                c->write_keys = NULL;
                c->n_write_keys = 0;
                cli_keys = true;
            }
            if ((rc = add_cli_write_key(c, val, err, errlen)) != CONFIG_OK) return rc;
            c->cli_secret_flag = "--write-key";
            continue;
        }
        if (f->key == NULL) continue;
        if (strcmp(f->key, "admin_token") == 0) c->cli_secret_flag = "--admin-token";
        const config_key_t *k = key_find(f->key);
        config_why_t why;
        rc = set_scalar(c, k, val ? val : "true", false, &why);
        if (rc != CONFIG_OK) return config_fail(rc, err, errlen, "%s: %s", f->flag, why.text);
    }
    if ((rc = config_validate(c, err, errlen)) != CONFIG_OK) return rc;
    if (c->tls_cert_file != NULL) {
        rc = tls_ctx_new(c->tls_cert_file, c->tls_key_file, &c->tls_ctx, err, errlen);
        if (rc != TLS_OK) return rc == TLS_E_NOMEM ? CONFIG_E_NOMEM : CONFIG_E_INVALID;
    }
    *action = check ? CONFIG_CHECK : CONFIG_RUN;
    return CONFIG_OK;
}

/* ---- help and reference ---- */

static const char *type_name(const config_key_t *k)
{
    switch (k->type) {
    case CT_STRING:
        return "string";
    case CT_BOOL:
        return "bool";
    case CT_UINT:
        return "integer";
    case CT_DOUBLE:
        return "number";
    case CT_SIZE:
        return "size";
    case CT_DURATION:
        return "duration";
    case CT_ENUM:
        return "enum";
    case CT_ENV:
        return "env var name";
    case CT_WRITE_KEYS:
        return "list";
    case CT_PROPERTIES:
        return "map";
    case CT_SECTION:
        return config_sections[section_index(k)].shape;
    }
    return "?";
}

/* "1..64", "one of a, b", or "" */
static void range_text(const config_key_t *k, char *out, size_t outlen)
{
    out[0] = '\0';
    if (k->type == CT_ENUM) {
        /* ", " rather than '|', which would split a Markdown table cell */
        size_t o = 0;
        for (const char *p = k->values; *p && o + 3 < outlen; p++) {
            if (*p == '|') {
                out[o++] = ',';
                out[o++] = ' ';
            } else {
                out[o++] = *p;
            }
        }
        out[o] = '\0';
    } else if (k->type == CT_UINT || k->type == CT_DOUBLE || k->type == CT_SIZE ||
               k->type == CT_DURATION) {
        char lo[32], hi[32];
        format_bound(k, k->min, lo, sizeof lo);
        format_bound(k, k->max, hi, sizeof hi);
        snprintf(out, outlen, "%s..%s", lo, hi);
    } else if (k->type == CT_WRITE_KEYS || k->type == CT_PROPERTIES || k->type == CT_SECTION) {
        snprintf(out, outlen, "≤ %.0f entries", k->max);
    }
}

static const char *flag_doc(const config_flag_t *f)
{
    if (f->doc != NULL) return f->doc;
    const config_key_t *k = key_find(f->key);
    return k ? k->doc : "";
}

/* Prints text word-wrapped to 100 columns, every line indented by indent spaces. */
static void print_wrapped(FILE *out, int indent, const char *text)
{
    const int width = 100 - indent;
    while (*text) {
        int len = (int)strlen(text);
        if (len > width) {
            len = width;
            while (len > 0 && text[len] != ' ')
                len--;
            if (len == 0) /* one word longer than the line */
                len = (int)strcspn(text, " ");
        }
        fprintf(out, "%*s%.*s\n", indent, "", len, text);
        text += len;
        while (*text == ' ')
            text++;
    }
}

void config_print_help(FILE *out)
{
    fprintf(out, "Usage: sluice-collector [OPTIONS]\n\n"
                 "Takes batched usage events over HTTP and produces them to Kafka.\n\nOptions:\n");
    for (size_t i = 0; i < CONFIG_N_FLAGS; i++) {
        const config_flag_t *f = &config_flags[i];
        char doc[512];
        fprintf(out, "  %s%s%s\n", f->flag, f->arg ? " " : "", f->arg ? f->arg : "");
        snprintf(doc, sizeof doc, "%s%s%s%s", flag_doc(f), f->key ? " (YAML: " : "",
                 f->key ? f->key : "", f->key ? ")" : "");
        print_wrapped(out, 6, doc);
    }
    fprintf(out, "\nYAML config keys (all optional but the write keys; sizes take B, KB, KiB, MB,\n"
                 "MiB, GB, GiB; durations ms, s, m, h, d):\n");
    for (size_t i = 0; i < CONFIG_N_KEYS; i++) {
        const config_key_t *k = &config_keys[i];
        char range[96];
        range_text(k, range, sizeof range);
        fprintf(out, "  %-24s %s", k->name, type_name(k));
        if (range[0]) fprintf(out, " [%s]", range);
        fprintf(out, ", default %s\n", k->def ? k->def : "unset");
        print_wrapped(out, 6, k->doc);
    }
    if (config_unsupported[0] != NULL) {
        fprintf(out, "\nNot supported by this version: ");
        for (size_t i = 0; config_unsupported[i] != NULL; i++)
            fprintf(out, "%s%s", i ? ", " : "", config_unsupported[i]);
        fprintf(out, ".\n");
    }
}

void config_print_reference(FILE *out)
{
    fprintf(out,
            "# sluice-collector configuration reference\n\n"
            "<!-- Generated from the key table in collector/config.c by config_print_reference();"
            " do not edit.\n     Regenerate: build-*/tests/collector/collector_test_config "
            "--print-reference > collector/CONFIG.md -->\n\n"
            "Every key is optional except the write keys (unless `dev`). Command-line flags "
            "override the file.\nSizes are an integer with an optional unit (B, KB, KiB, MB, MiB, "
            "GB, GiB; none means bytes);\ndurations an integer with a unit (ms, s, m, h, d). "
            "Errors name the file and line: `sluice.yaml:12: limits.body_bytes: ...`.\n\n"
            "## YAML keys\n\n"
            "| key | type | default | range | description |\n"
            "| --- | --- | --- | --- | --- |\n");
    for (size_t i = 0; i < CONFIG_N_KEYS; i++) {
        const config_key_t *k = &config_keys[i];
        char range[96];
        range_text(k, range, sizeof range);
        fprintf(out, "| `%s` | %s | %s%s%s | %s | %s |\n", k->name, type_name(k), k->def ? "`" : "",
                k->def ? k->def : "unset", k->def ? "`" : "", range, k->doc);
    }
    /* Listed from config_unsupported[], so implementing a section only edits that array. */
    size_t n_unsup = 0;
    while (config_unsupported[n_unsup] != NULL)
        n_unsup++;
    if (n_unsup > 0) {
        fprintf(out, "\nSection%s ", n_unsup == 1 ? "" : "s");
        for (size_t i = 0; i < n_unsup; i++) {
            const char *sep = i == 0 ? "" : (i + 1 == n_unsup ? " and " : ", ");
            fprintf(out, "%s`%s`", sep, config_unsupported[i]);
        }
        fprintf(out, " %s refused by this version with\n", n_unsup == 1 ? "is" : "are");
        fprintf(out, "\"not supported by this version of sluice-collector\".\n");
    }
    fprintf(out, "\n## Command-line flags\n\n");
    fprintf(out, "| flag | YAML key | description |\n"
                 "| --- | --- | --- |\n");
    for (size_t i = 0; i < CONFIG_N_FLAGS; i++) {
        const config_flag_t *f = &config_flags[i];
        fprintf(out, "| `%s%s%s` | %s%s%s | %s |\n", f->flag, f->arg ? " " : "",
                f->arg ? f->arg : "", f->key ? "`" : "", f->key ? f->key : "", f->key ? "`" : "",
                flag_doc(f));
    }
    filter_print_reference(out);
}

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

int config__set_scalar(config_t *c, const config_key_t *k, const char *s, bool is_null,
                       config_why_t *why)
{
    return set_scalar(c, k, s, is_null, why);
}
