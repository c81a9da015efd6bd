/*
 * main.c — sluice-collector: parse the configuration, start Kafka, the loops and the signal
 * handlers, and run the graceful shutdown of SPEC §7 (stop accepting, finish in-flight
 * requests, flush Kafka, exit 0).
 *
 * Exit codes: 0 normal (including --help/--version/--check-config), 2 bad configuration,
 * 1 start-up failure (socket, Kafka, memory), 3 shut down cleanly but a final snapshot (dedup or
 * PQL) could not be written to --data-dir (its warning names path and errno).
 */
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include <uv.h>

#include "accounts.h"
#include "auth.h"
#include "config.h"
#include "dedup.h"
#include "dedup_journal.h"
#include "identities.h"
#include "ingest.h"
#include "kafka_out.h"
#include "log.h"
#include "metrics.h"
#include "pql.h"
#include "reload.h"
#include "server.h"
#include "spool.h"

static void on_signal(uv_signal_t *h, int signum)
{
    LOG(LOG_INFO, "shutdown", LS("signal", signum == SIGTERM ? "SIGTERM" : "SIGINT"));
    /* Closing the watchers restores the default action: a second signal ends the process. */
    uv_stop(h->loop);
}

/* SIGHUP (SPEC §5): re-read the config with the same flags and swap the live rules; runs on
 * main's loop, which serves no connection, so the file I/O and the grace wait block nobody. */
typedef struct hup_ctx {
    reload_t *rl;
    const config_t *cfg;
    int argc;
    char **argv;
} hup_ctx_t;

static void on_sighup(uv_signal_t *h, int signum)
{
    (void)signum;
    hup_ctx_t *hc = h->data;
    LOG(LOG_INFO, "config_reload", LS("signal", "SIGHUP"));
    (void)reload_apply(hc->rl, hc->cfg, hc->argc, hc->argv);
}

/* Gauges of the bounded user->account map (limits.max_users). */
static double gauge_users(void *ud)
{
    return (double)accounts_count(ud);
}

static double gauge_users_evictions(void *ud)
{
    return (double)accounts_evictions(ud);
}

static void close_cb_noop(uv_handle_t *h)
{
    (void)h;
}

/* PQL tier rises go to pql_signals keyed by accountId; fire-and-forget (kafka_out.h: g NULL is
 * delivered and counted, nobody waits). Runs on PQL's feeder thread (pql_feeder_start). */
static void pql_signal_to_kafka(void *ud, const char *account, size_t alen, const char *json,
                                size_t jlen)
{
    int rc = kafka_out_produce(ud, KAFKA_TOPIC_PQL, account, alen, json, jlen, NULL, 0, NULL);
    if (rc != 0) LOG(LOG_WARN, "pql_signal_dropped", LS("reason", kafka_strerror(rc)));
}

/* PQL on (cfg->pql.rules given): the tracker, its snapshot restored from data_dir (a corrupt or
 * mismatched snapshot is logged and PQL starts empty) and the snapshot worker. Returns 0, or -1
 * when memory is short. */
static int pql_start(const config_t *cfg, kafka_out_t *ko, pql_t **pql, pql_saver_t **saver)
{
    if (cfg->pql.n_rules == 0) return 0;
    if (cfg->pql_mode == CONFIG_PQL_STREAM) {
        /* SPEC §10: sluice-stream owns the counters; a local snapshot, if any, is left alone. */
        LOG(LOG_INFO, "pql_off", LS("reason", "pql.mode is stream"),
            LS("effect", "no in-process PQL: sluice-stream signals from the events topic"));
        return 0;
    }
    if (pql_new(&cfg->pql, pql_signal_to_kafka, ko, pql) != PQL_OK) return -1;
    char path[4096];
    snprintf(path, sizeof path, "%s/pql.snapshot", cfg->data_dir);
    struct stat st;
    if (stat(path, &st) == 0) {
        int rc = pql_snapshot_load(*pql, path);
        if (rc != PQL_OK)
            LOG(LOG_WARN, "pql_snapshot_ignored", LS("path", path), LS("error", pql_strerror(rc)),
                LS("effect", "PQL counters start empty"));
        else
            LOG(LOG_INFO, "pql_snapshot_loaded", LS("path", path));
    }
    pql_register_metrics(*pql);
    /* The loops hand their records to PQL's feeder thread (they never wait on a shard lock). */
    if (pql_feeder_start(*pql, cfg->pql.queue_bytes) != PQL_OK) return -1;
    if (pql_saver_start(*pql, path, cfg->pql.snapshot_interval_ms, saver) != PQL_OK) return -1;
    return 0;
}

/* Dedup on (dedup.window > 0): the structure, its snapshot restored from data_dir (missing: a
 * log line; corrupt or unreadable: a warning, and dedup starts empty) and its worker (generation
 * ticks, sweeps, periodic snapshots). Returns 0, or -1 when memory or a thread is short. */
static int dedup_start(const config_t *cfg, dedup_t **out, dedup_journal_t **jout)
{
    *out = NULL;
    *jout = NULL;
    if (cfg->dedup_window_ms == 0) {
        LOG(LOG_INFO, "dedup_off", LS("reason", "dedup.window is 0"));
        return 0;
    }
    dedup_opts_t o = {.window_ms = cfg->dedup_window_ms, .max_memory = cfg->dedup_max_memory};
    dedup_t *d = NULL;
    if (dedup_new(&o, &d) != DEDUP_OK) return -1;
    uint64_t t0 = uv_hrtime();
    int rc = dedup_snapshot_load(d, cfg->data_dir);
    dedup_stats_t st;
    dedup_stats(d, &st);
    if (rc == DEDUP_OK)
        LOG(LOG_INFO, "dedup_snapshot_loaded", LS("dir", cfg->data_dir), LI("entries", st.entries),
            LI("ms", (uv_hrtime() - t0) / 1000000u));
    else if (rc == DEDUP_E_NOENT)
        LOG(LOG_INFO, "dedup_snapshot_missing", LS("dir", cfg->data_dir),
            LS("effect", "dedup starts empty"));
    else
        LOG(LOG_WARN, "dedup_snapshot_ignored", LS("dir", cfg->data_dir),
            LS("error", dedup_strerror(rc)), LS("effect", "dedup starts empty"));
    if (rc != DEDUP_OK && st.entries > 0) {
        /* A read error half way: keep nothing rather than a part. */
        dedup_free(d);
        if (dedup_new(&o, &d) != DEDUP_OK) return -1;
    }
    if (dedup_register_metrics(d) != 0) LOG(LOG_WARN, "dedup_metrics_unavailable");
    /* The journal: replayed over the snapshot (what was remembered after it), then appended to
     * before every 200 (dedup_journal.h). */
    dedup_journal_t *j = NULL;
    if (cfg->dedup_journal) {
        t0 = uv_hrtime();
        dedup_journal_replay_t rp;
        if (dedup_journal_open(d, cfg->data_dir, cfg->dedup_journal_max_bytes, &rp, &j) !=
            DEDUP_OK) {
            dedup_free(d);
            return -1;
        }
        LOG(LOG_INFO, "dedup_journal_replayed", LS("dir", cfg->data_dir),
            LI("segments", rp.segments), LI("records", rp.records), LI("restored", rp.restored),
            LI("torn_bytes", rp.torn_bytes), LI("ms", (uv_hrtime() - t0) / 1000000u));
        dedup_attach_journal(d, j);
    }
    if (dedup_worker_start(d, cfg->data_dir, cfg->dedup_snapshot_interval_ms) != DEDUP_OK) {
        dedup_journal_free(j);
        dedup_free(d);
        return -1;
    }
    *out = d;
    *jout = j;
    return 0;
}

/* --data-dir is created when missing (mkdir -p, mode 0750). When that fails the collector still
 * serves (state then lives in memory only; every snapshot attempt logs the same errno) but says
 * so at start, once, at error level, with the errno name. */
static void data_dir_prepare(const config_t *cfg)
{
    base_ioerr_t e;
    if (base_mkdir_p(cfg->data_dir, 0750, &e) == BASE_OK) return;
    LOG(LOG_ERROR, "data_dir_unusable", LS("path", cfg->data_dir), LS("op", e.op),
        LS("errno", base_errno_name(e.errnum)), LS("error", strerror(e.errnum)),
        LS("effect", "dedup and PQL state will not be saved; serving goes on"));
}

/* Spool on (spool.enabled, SPEC §4): data_dir/spool recovered (torn tails cut, logged) and its
 * writer and drain threads started. Returns 0 (*out NULL when off, or when the directory cannot
 * be used: logged, the collector serves without it), or -1 when a thread cannot start. */
static int spool_start_cfg(const config_t *cfg, kafka_out_t *ko, spool_t **out)
{
    *out = NULL;
    if (!cfg->spool_enabled) {
        LOG(LOG_INFO, "spool_off", LS("reason", "spool.enabled is false"));
        return 0;
    }
    spool_opts_t o = {.data_dir = cfg->data_dir,
                      .max_bytes = cfg->spool_max_bytes,
                      .segment_bytes = cfg->spool_segment_bytes,
                      .ko = ko};
    char err[600] = "";
    int rc = spool_open(&o, out, err, sizeof err);
    if (rc != SPOOL_OK) {
        /* An unusable data dir must not stop the service: serve without the spool. */
        LOG(LOG_ERROR, "spool_unavailable", LS("reason", err[0] ? err : spool_strerror(rc)),
            LS("effect", "spool off: requests get 503 while Kafka is unreachable"));
        return 0;
    }
    if (spool_start(*out) != SPOOL_OK) {
        LOG(LOG_ERROR, "startup_failed", LS("reason", "spool: cannot start its threads"));
        spool_free(*out);
        *out = NULL;
        return -1;
    }
    return 0;
}

/* Secrets hygiene: a config file holding a write key or the admin token in clear that group or
 * others may read, and secrets on the command line (visible to every local user in ps and
 * /proc/PID/cmdline), are warned about once at start. The secrets themselves are never logged. */
static void warn_secrets(const config_t *cfg)
{
    struct stat st;
    if (cfg->config_file != NULL && cfg->inline_secret_line > 0 &&
        stat(cfg->config_file, &st) == 0 && (st.st_mode & 077) != 0) {
        char mode[8];
        snprintf(mode, sizeof mode, "%04o", (unsigned)(st.st_mode & 07777));
        LOG(LOG_WARN, "config_file_readable_by_others", LS("path", cfg->config_file),
            LS("mode", mode), LI("line", cfg->inline_secret_line),
            LS("reason", "the file holds a write key or admin_token in clear and group or others "
                         "may read it"),
            LS("fix", "chmod 600 the file, or use key_env / admin_token_env"));
    }
    if (cfg->cli_secret_flag != NULL)
        LOG(LOG_WARN, "secret_on_command_line", LS("flag", cfg->cli_secret_flag),
            LS("reason", "command lines are visible to every local user (ps, /proc/PID/cmdline)"),
            LS("fix", "put the key in the environment: write_keys key_env, admin_token_env"));
}

/* Logs the effective configuration, write keys masked. */
static void log_config(const config_t *cfg)
{
    char keys[512];
    size_t off = 0;
    keys[0] = '\0';
    for (size_t i = 0; i < cfg->n_write_keys && off < sizeof keys - 64; i++) {
        char masked[16];
        const char *k = cfg->write_keys[i].key != NULL ? cfg->write_keys[i].key : "";
        int n = snprintf(keys + off, sizeof keys - off, "%s%s(%s)", i > 0 ? "," : "",
                         auth_mask(k, strlen(k), masked, sizeof masked),
                         cfg->write_keys[i].source != NULL ? cfg->write_keys[i].source : "");
        if (n < 0) break;
        off += (size_t)n;
        if (off >= sizeof keys) off = sizeof keys - 1;
    }
    LOG(LOG_INFO, "config", LS("version", SLUICE_VERSION), LS("listen", cfg->listen),
        LS("tls", cfg->tls_cert_file != NULL ? "on" : "off"),
        LS("admin_listen", cfg->admin_listen != NULL ? cfg->admin_listen : "(listen)"),
        LI("threads", cfg->threads),
        LS("brokers", cfg->brokers != NULL && cfg->brokers[0] ? cfg->brokers : "(embedded)"),
        LS("format", cfg->kafka_format == PROTO_FMT_JSON ? "json" : "msgpack"),
        LS("write_keys", keys), LI("dev", cfg->dev), LI("body_bytes", cfg->body_bytes),
        LI("event_bytes", cfg->event_bytes), LI("max_connections", cfg->max_connections),
        LI("rate_per_key", (long long)cfg->rate_per_key),
        LI("delivery_timeout_ms", cfg->delivery_timeout_ms),
        LI("shutdown_timeout_ms", cfg->shutdown_timeout_ms));
}

int main(int argc, char **argv)
{
    signal(SIGPIPE, SIG_IGN);
    /* Until the reload watcher runs, an early SIGHUP must not end the process. */
    signal(SIGHUP, SIG_IGN);
    config_t cfg; /* config_from_args starts from config_init() itself */
    memset(&cfg, 0, sizeof cfg);
    char err[1024] = "";
    config_action_t action = CONFIG_RUN;
    if (config_from_args(&cfg, argc, argv, &action, err, sizeof err) != 0) {
        fprintf(stderr, "sluice-collector: %s\n", err);
        config_free(&cfg);
        return 2;
    }
    switch (action) {
    case CONFIG_VERSION:
        printf("sluice-collector %s\n", SLUICE_VERSION);
        config_free(&cfg);
        return 0;
    case CONFIG_HELP:
        config_print_help(stdout);
        config_free(&cfg);
        return 0;
    case CONFIG_CHECK:
        printf("config ok\n");
        config_free(&cfg);
        return 0;
    case CONFIG_RUN:
        break;
    }
    log_set_level((log_level_t)cfg.log_level);
    log_config(&cfg);
    warn_secrets(&cfg);
    data_dir_prepare(&cfg);

    int rc = 1;
    accounts_t *accounts = accounts_new(cfg.max_users >= 64 ? (size_t)cfg.max_users : 64);
    kafka_out_t *ko = NULL;
    auth_t *auth = NULL;
    server_t *srv = NULL;
    identities_t *ident = NULL;
    pql_t *pql = NULL;
    pql_saver_t *pql_saver = NULL;
    dedup_t *dedup = NULL;
    dedup_journal_t *journal = NULL;
    spool_t *spool = NULL;
    ingest_ctx_t ingest;
    reload_t rl;
    bool rl_ok = false;
    if (accounts == NULL) {
        LOG(LOG_ERROR, "startup_failed", LS("reason", "out of memory (accounts)"));
        goto out;
    }
    metrics_gauge_register("user_accounts", "users in the user->account map (limits.max_users)",
                           gauge_users, accounts);
    metrics_gauge_register("user_accounts_evictions_total",
                           "users forgotten at limits.max_users (least recently used first)",
                           gauge_users_evictions, accounts);
    if (kafka_out_new(&cfg, &ko, err, sizeof err) != 0) {
        LOG(LOG_ERROR, "startup_failed", LS("reason", err));
        goto out;
    }
    if (kafka_out_embedded(ko)) {
        const char *bs = kafka_out_bootstrap(ko);
        LOG(LOG_WARN, "embedded_kafka", LS("bootstrap", bs),
            LS("warning", "data lives in memory only (librdkafka mock cluster); configure "
                          "--brokers for durability"));
        printf("embedded Kafka at %s \xe2\x80\x94 kcat -C -b %s -t %s\n", bs, bs,
               cfg.topic_events != NULL ? cfg.topic_events : "events");
        fflush(stdout);
    }
    if (auth_new(&cfg, &auth) != AUTH_OK) {
        LOG(LOG_ERROR, "startup_failed", LS("reason", "out of memory (auth)"));
        goto out;
    }
    ingest_ctx_init(&ingest, &cfg, ko, auth, accounts);
    if (cfg.identities_consume) {
        if (identities_start(&cfg, kafka_out_bootstrap(ko), accounts, &ident, err, sizeof err) !=
            IDENTITIES_OK) {
            LOG(LOG_ERROR, "startup_failed", LS("reason", err));
            goto out;
        }
        ingest.identities = ident;
    } else {
        LOG(LOG_INFO, "identities_consumer_off", LS("reason", "identities.consume is false"),
            LS("effect", "only links learned by this collector's own group calls resolve here"));
    }
    if (reload_init(&rl, &cfg) != 0) {
        LOG(LOG_ERROR, "startup_failed", LS("reason", "out of memory (runtime)"));
        goto out;
    }
    rl_ok = true;
    ingest.reload = &rl;
    if (atomic_load(&rl.cur)->tls != NULL) {
        char desc[512];
        tls_ctx_describe(atomic_load(&rl.cur)->tls, desc, sizeof desc);
        LOG(LOG_INFO, "tls_certificate_loaded", LS("certificate", desc),
            LS("cert_file", cfg.tls_cert_file), LS("key_file", cfg.tls_key_file));
    }
    (void)metrics_section_register(reload_render_metrics, &rl);
    if (pql_start(&cfg, ko, &pql, &pql_saver) != 0) {
        LOG(LOG_ERROR, "startup_failed", LS("reason", "PQL could not start (memory)"));
        goto out;
    }
    ingest.pql = pql;
    if (dedup_start(&cfg, &dedup, &journal) != 0) {
        LOG(LOG_ERROR, "startup_failed", LS("reason", "dedup could not start (memory, thread)"));
        goto out;
    }
    ingest.dedup = dedup;
    ingest.journal = journal;
    if (spool_start_cfg(&cfg, ko, &spool) != 0) goto out;
    ingest.spool = spool;
    if (server_new(&cfg, &ingest, &srv, err, sizeof err) != 0) {
        LOG(LOG_ERROR, "startup_failed", LS("reason", err));
        goto out;
    }
    uv_loop_t *main_loop = uv_default_loop();
    uv_signal_t sigint, sigterm;
    uv_signal_init(main_loop, &sigint);
    uv_signal_init(main_loop, &sigterm);
    uv_signal_start(&sigint, on_signal, SIGINT);
    uv_signal_start(&sigterm, on_signal, SIGTERM);
    uv_signal_t sighup;
    hup_ctx_t hup = {&rl, &cfg, argc, argv};
    uv_signal_init(main_loop, &sighup);
    sighup.data = &hup;
    uv_signal_start(&sighup, on_sighup, SIGHUP);
    if (server_start(srv, err, sizeof err) != 0) {
        LOG(LOG_ERROR, "startup_failed", LS("reason", err));
        server_stop(srv);
    } else {
        /* The admin line first: whoever waits for "listening" finds both ports logged. */
        if (server_admin_port(srv) > 0)
            LOG(LOG_INFO, "admin_listening", LS("addr", server_admin_host(srv)),
                LI("port", server_admin_port(srv)),
                LS("serves", "/metrics, /v1/accounts/{id}, /v1/pql/top, /healthz, /readyz"));
        LOG(LOG_INFO, "listening", LS("addr", server_host(srv)), LI("port", server_port(srv)),
            LS("scheme", cfg.tls_cert_file != NULL ? "https" : "http"));
        uv_run(main_loop, UV_RUN_DEFAULT);
        rc = 0;
    }
    uv_close((uv_handle_t *)&sigint, close_cb_noop);
    uv_close((uv_handle_t *)&sigterm, close_cb_noop);
    uv_close((uv_handle_t *)&sighup, close_cb_noop);
    signal(SIGHUP, SIG_IGN); /* no reload during shutdown, and no default "terminate" either */
    uv_run(main_loop, UV_RUN_NOWAIT);

    /* Graceful shutdown, bounded by shutdown_timeout as a whole. */
    uint64_t t0 = uv_hrtime();
    uint32_t budget = cfg.shutdown_timeout_ms;
    server_drain_begin(srv);
    bool drained = server_wait_drained(srv, budget);
    uint32_t spent = (uint32_t)((uv_hrtime() - t0) / 1000000ull);
    LOG(LOG_INFO, "shutdown_drained", LI("complete", drained),
        LI("in_flight", atomic_load(&ingest.in_flight)), LI("ms", spent));
    /* The drain stops before the flush (what it has not delivered stays spooled for the next
     * start), so the flush waits only for the requests' own messages. */
    spool_stop_drain(spool);
    int left = kafka_out_flush(ko, spent < budget ? (int)(budget - spent) : 0);
    LOG(LOG_INFO, "shutdown_kafka_flushed", LI("messages_left", left));
    /* Loops first, so none can produce into a destroyed producer (a drain that timed out may
     * leave a request still receiving its body). kafka_out_free then fails what is still
     * queued; those done_cb push into the stopped loops' mailboxes, whose async handles stay
     * open until server_free, which frees the requests (test_kafka_free_after_server_stop). */
    server_stop(srv);
    /* No /readyz or /metrics reads it any more; before kafka_out_free ends an embedded cluster. */
    identities_stop(ident);
    ident = NULL;
    /* The loops no longer submit to the spool either: write what is queued, stop the writer. */
    spool_stop(spool);
    /* The loops no longer submit to PQL: feed what is queued (its signals flushed within what
     * is left of the budget), then write its final snapshot. */
    if (pql != NULL) {
        pql_feeder_stop(pql);
        spent = (uint32_t)((uv_hrtime() - t0) / 1000000ull);
        (void)kafka_out_flush(ko, spent < budget ? (int)(budget - spent) : 0);
    }
    /* A failed final snapshot is logged by its owner (pql_snapshot_failed, dedup_snapshot_failed,
     * with errno) and makes the exit code 3. */
    bool snap_failed = false;
    if (pql_saver_stop(pql_saver) != PQL_OK) snap_failed = true;
    pql_saver = NULL;
    /* Finished requests have committed or released their dedup reservations: final snapshot
     * (PENDING entries are never written). */
    /* The journal writes what is queued (those requests are then answered into the stopped
     * loops' mailboxes, freed by server_free) before the final snapshot truncates it. */
    dedup_journal_stop(journal);
    if (dedup != NULL) {
        uint64_t ts = uv_hrtime();
        if (dedup_worker_stop(dedup, true) != DEDUP_OK)
            snap_failed = true;
        else
            LOG(LOG_INFO, "dedup_snapshot_written", LS("dir", cfg.data_dir),
                LI("ms", (uv_hrtime() - ts) / 1000000u));
    }
    if (snap_failed && rc == 0) rc = 3;
    kafka_out_free(ko);
    ko = NULL;
    /* After the last delivery report, before the mailboxes go. */
    dedup_journal_free(journal);
    journal = NULL;
    server_free(srv);
    srv = NULL;
    spool_free(spool); /* after kafka_out_free: a drain message's report may come until then */
    spool = NULL;
    uv_loop_close(main_loop);
    LOG(LOG_INFO, "shutdown_complete", LI("ms", (uv_hrtime() - t0) / 1000000ull));
out:
    if (srv != NULL) server_stop(srv);
    identities_stop(ident);
    if (srv != NULL) {
        kafka_out_free(ko);
        ko = NULL;
        dedup_journal_free(journal);
        journal = NULL;
        server_free(srv);
    }
    dedup_journal_free(journal);
    (void)pql_saver_stop(pql_saver);
    spool_stop(spool);
    kafka_out_free(ko);
    spool_free(spool);
    pql_free(pql);
    dedup_free(dedup); /* stops the worker if start-up failed after it began */
    auth_free(auth);
    accounts_free(accounts);
    if (rl_ok) reload_free(&rl); /* the loops are gone: no reader is left */
    config_free(&cfg);
    return rc;
}
