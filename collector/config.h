/*
 * config.h — the collector's configuration: one table of every key (name, type, default, bounds,
 * doc) from which YAML parsing, validation, CLI overrides, --help and the README's config
 * reference (collector/CONFIG.md) are all produced, so they cannot drift (librdkafka style).
 *
 * Error reporting: every function that can fail fills err (NUL-terminated, truncated to errlen)
 * with one line naming the file and line ("sluice.yaml:12: limits.body_bytes: expected a size
 * such as 512KiB") and returns a negative value; on failure the config is left in a state that
 * config_free() can release and nothing else should be read from it.
 *
 * Ownership: all strings inside config_t are owned by it and released by config_free().
 * A config_t is immutable once loaded; reload builds a new one (issue 5) and swaps.
 */
#ifndef SLUICE_CONFIG_H
#define SLUICE_CONFIG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "pql_config.h"
#include <stdio.h>

/* X(NAME, value, "message"). Append-only. Every failing function also fills err with detail. */
#define CONFIG_ERRORS(X)                                                                           \
    X(OK, 0, "ok")                                                                                 \
    X(E_INVALID, -1, "invalid configuration")                                                      \
    X(E_NOMEM, -2, "out of memory")                                                                \
    X(E_IO, -3, "cannot read the configuration file")

typedef enum {
#define CONFIG_X_ENUM(name, val, msg) CONFIG_##name = val,
    CONFIG_ERRORS(CONFIG_X_ENUM)
#undef CONFIG_X_ENUM
} config_err_t;

/* Message for a config_err_t; "unknown error" for other values. Never NULL. */
const char *config_strerror(int err);

typedef struct config_write_key {
    char *key;    /* the secret; never logged whole */
    char *source; /* name of the source, e.g. "web" */
} config_write_key_t;

typedef struct config_kv {
    char *key, *value;
} config_kv_t;

typedef struct config {
    /* listen: "ADDR:PORT" (IPv4, or [IPv6]:PORT). */
    char *listen;
    /* admin_listen: a second "ADDR:PORT" serving /metrics and the admin views (then no longer
     * served on listen); NULL: everything on listen. */
    char *admin_listen;
    /* tls: {cert_file, key_file} (SPEC §3): both set serves HTTPS on listen. tls_ctx is the
     * OpenSSL context made from them by config_from_args (NULL without tls, and after
     * config_load_file alone); owned, like filters, until reload_init takes it. */
    char *tls_cert_file, *tls_key_file;
    struct ssl_ctx_st *tls_ctx;
    uint32_t threads; /* event-loop threads, 1..64, default 2 */
    char *data_dir;   /* default "./sluice-data" */
    char *admin_token;
    config_write_key_t *write_keys;
    size_t n_write_keys;
    char *public_url; /* http[s]://HOST[:PORT][/PREFIX] browsers use; NULL: the Host header */
    bool dev;         /* --dev: accept any write key (source "dev") */
    int log_level;    /* log_level_t */

    /* limits */
    uint64_t event_bytes;        /* 32 KiB */
    uint64_t body_bytes;         /* 512 KiB, before and after decompression */
    uint32_t max_connections;    /* 10000 per process */
    double rate_per_key;         /* events/s per write key, 0 = unlimited */
    uint32_t max_events;         /* events per batch, default 10000 */
    uint64_t header_bytes;       /* all request headers together, 16 KiB */
    uint32_t header_timeout_ms;  /* 10 s: slowloris */
    uint32_t idle_timeout_ms;    /* 60 s: idle keep-alive */
    uint32_t request_timeout_ms; /* 30 s: whole request (headers + body); also answer writes */
    uint64_t body_memory;        /* 256 MiB: request bodies held in memory, all connections */
    uint32_t max_depth;          /* 16 */
    uint64_t max_users;          /* user->account map entries, 1,000,000 */

    /* kafka */
    char *brokers;    /* NULL/empty: embedded mock cluster */
    int kafka_format; /* proto_format_t: msgpack (default) or json */
    char *topic_events, *topic_rejected, *topic_pql;
    char *topic_changelog;         /* sluice-stream's state (compacted); sluice_stream_changelog */
    char *topic_events_deduped;    /* sluice-stream's deduplicated events; events_deduped */
    char *topic_identities;        /* compacted user -> account links (SPEC §10), "identities" */
    config_kv_t *kafka_properties; /* passed to librdkafka as-is, after ours */
    size_t n_kafka_properties;
    uint32_t delivery_timeout_ms; /* 503 when a request's events are not delivered by then; 5 s */
    uint64_t kafka_queue_bytes;   /* producer queue cap; full -> 503. 256 MiB */
    uint32_t kafka_producers;     /* producers, partitions shared out among them; 16 (0 = 1) */

    uint32_t shutdown_timeout_ms; /* graceful drain bound, 10 s */

    struct filter_set *filters; /* `filters:` compiled by filter_config.c; NULL when absent */

    /* dedup (SPEC §5) */
    uint32_t dedup_window_ms;            /* 1 h; 0 = off */
    uint64_t dedup_max_memory;           /* 256 MiB */
    uint32_t dedup_snapshot_interval_ms; /* 60 s */
    bool dedup_journal;                  /* true: append-only journal of remembered events */
    uint64_t dedup_journal_max_bytes;    /* 64 MiB: forced snapshot at it, no journal at 2x */

    pql_config_t pql; /* SPEC §6 */
    int pql_mode;     /* config_pql_mode_t: local (default) or stream (SPEC §10) */

    /* identities (SPEC §10, collector/identities.h) */
    bool identities_produce;           /* each accepted group call's link to topic_identities */
    bool identities_consume;           /* every link of the topic into the accounts map */
    uint64_t identities_queue_bytes;   /* consumer's prefetch queue (librdkafka), 8 MiB */
    uint32_t identities_ready_wait_ms; /* /readyz waits this long for the catch-up; 0 */

    /* stream: read by sluice-stream only (SPEC §10); the collector accepts and ignores it. */
    char *stream_group_id;              /* consumer group; "sluice-stream" */
    char *stream_transactional_id;      /* NULL: <group_id>-<hostname>-<pid> */
    uint32_t stream_commit_interval_ms; /* a transaction at least this often; 100 ms */
    uint32_t stream_max_batch;          /* records per transaction at most; 20000 */
    uint32_t stream_poll_batch;         /* records per per-event batch, 1..32; 32 */
    uint32_t stream_txn_timeout_ms;     /* transaction.timeout.ms; 10 s */
    bool stream_events_deduped;         /* write events_deduped; false */
    uint32_t stream_max_partitions;     /* partitions the per-partition shares are cut for; 32 */
    uint64_t stream_tombstone_bytes;    /* removed PQL ids kept between two flushes; 1 MiB */
    uint32_t stream_admin_connections;  /* admin listener connections; 64 */
    uint32_t stream_restore_timeout_ms; /* one partition's restore from the changelog; 5 min */
    uint32_t stream_max_aborts;         /* aborted transactions in a row before exit 1; 10 */

    /* spool (SPEC §4) */
    bool spool_enabled;           /* default true */
    uint64_t spool_max_bytes;     /* 1 GiB: 503 beyond */
    uint64_t spool_segment_bytes; /* 64 MiB per segment file */

    /* Secrets hygiene, recorded while loading (not keys of the table; main warns at start):
     * config_file is the --config path (owned; NULL: none); inline_secret_line the first line of
     * that file holding a write key or admin_token in clear (0: none; key_env and
     * admin_token_env do not count); cli_secret_flag "--write-key" or "--admin-token" when a
     * secret was given on the command line (static string; NULL: none). */
    char *config_file;
    unsigned long inline_secret_line;
    const char *cli_secret_flag;
} config_t;

/* pql.mode: where the PQL counters of SPEC §6 live. */
typedef enum {
    CONFIG_PQL_LOCAL = 0, /* in this process (the single-node default) */
    CONFIG_PQL_STREAM =
        1, /* in sluice-stream: no in-process PQL, admin views answer 404 pql_in_stream */
} config_pql_mode_t;

typedef enum {
    CONFIG_RUN = 0,   /* start the server */
    CONFIG_CHECK = 1, /* --check-config: print "config ok" and exit 0 */
    CONFIG_VERSION = 2,
    CONFIG_HELP = 3,
} config_action_t;

/* Sets every key to its default. Never fails. */
void config_init(config_t *c);
void config_free(config_t *c);

/* Reads YAML file path over c (keys not in the file keep their values). Unknown keys, wrong
 * types and out-of-bounds values are errors naming the line. Environment indirections
 * (key_env, admin_token_env) are resolved here; a missing variable is an error. */
int config_load_file(config_t *c, const char *path, char *err, size_t errlen);

/*
 * Full start-up parse: defaults, then --config FILE (if given), then the other flags override.
 * Then validates (config_validate) and, with tls set, reads the certificate and key into
 * c->tls_ctx (a file that does not load, or a key that does not match, is an error naming both
 * files). *action tells what main should do.
 * c need not be initialized (config_init is called first); call config_free(c) afterwards
 * whatever the result. --help/--version return 0 at once with CONFIG_HELP/CONFIG_VERSION (main
 * prints config_print_help()/the version). --write-key flags replace the file's write_keys;
 * "KEY=SOURCE" splits at the last '=' when a valid source name ([A-Za-z0-9_.-]{1,64}) follows.
 * Flag errors name the flag ("--threads: 0 is out of range 1..64"). Does not touch global state
 * (main applies c->log_level with log_set_level()).
 */
int config_from_args(config_t *c, int argc, char **argv, config_action_t *action, char *err,
                     size_t errlen);

/* Cross-key checks: a write key is required unless dev, sizes consistent, ... */
int config_validate(const config_t *c, char *err, size_t errlen);

/* Calls fn(key, ud) with the table name of every key whose value differs between a and b
 * (reload: what cannot change live). filters are not compared (they reload live). */
void config_diff(const config_t *a, const config_t *b, void (*fn)(const char *key, void *ud),
                 void *ud);

/* Splits an "ADDR:PORT" text (IPV4:PORT, [IPV6]:PORT, localhost:PORT; numeric, no DNS) into
 * host (NUL-terminated, into host[hostlen]) and port. Returns CONFIG_OK or CONFIG_E_INVALID. */
int config_addr_parse(const char *s, char *host, size_t hostlen, int *port);
/* config_addr_parse of c->listen. */
int config_listen_addr(const config_t *c, char *host, size_t hostlen, int *port);

/* --help text (flags and every YAML key with its default and doc). */
void config_print_help(FILE *out);
/* Markdown reference of every key, generated from the table (collector/CONFIG.md). */
void config_print_reference(FILE *out);

#endif
