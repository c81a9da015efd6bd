/*
 * main.c — sluice-collector: parse the configuration, start Kafka, the loops and the signal
 * handlers, and run the graceful shutdown of SPEC §7 (stop accepting, finish in-flight
 * requests, flush Kafka, exit 0).
 *
 * Exit codes: 0 normal (including --help/--version/--check-config), 2 bad configuration,
 * 1 start-up failure (socket, Kafka, memory).
 */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <uv.h>

#include "accounts.h"
#include "auth.h"
#include "config.h"
#include "ingest.h"
#include "kafka_out.h"
#include "log.h"
#include "metrics.h"
#include "server.h"

static void on_signal(uv_signal_t *h, int signum)
{
    LOG(LOG_INFO, "shutdown", LS("signal", signum == SIGTERM ? "SIGTERM" : "SIGINT"));
    /* Closing the watchers restores the default action: a second signal ends the process. */
    uv_stop(h->loop);
}

static void close_cb_noop(uv_handle_t *h)
{
    (void)h;
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

    int rc = 1;
    accounts_t *accounts = accounts_new(cfg.max_users >= 64 ? (size_t)cfg.max_users : 64);
    kafka_out_t *ko = NULL;
    auth_t *auth = NULL;
    server_t *srv = NULL;
    ingest_ctx_t ingest;
    if (accounts == NULL) {
        LOG(LOG_ERROR, "startup_failed", LS("reason", "out of memory (accounts)"));
        goto out;
    }
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
    if (server_start(srv, err, sizeof err) != 0) {
        LOG(LOG_ERROR, "startup_failed", LS("reason", err));
        server_stop(srv);
    } else {
        LOG(LOG_INFO, "listening", LS("addr", server_host(srv)), LI("port", server_port(srv)));
        uv_run(main_loop, UV_RUN_DEFAULT);
        rc = 0;
    }
    uv_close((uv_handle_t *)&sigint, close_cb_noop);
    uv_close((uv_handle_t *)&sigterm, close_cb_noop);
    uv_run(main_loop, UV_RUN_NOWAIT);

    /* Graceful shutdown, bounded by shutdown_timeout as a whole. */
    uint64_t t0 = uv_hrtime();
    uint32_t budget = cfg.shutdown_timeout_ms;
    server_drain_begin(srv);
    bool drained = server_wait_drained(srv, budget);
    uint32_t spent = (uint32_t)((uv_hrtime() - t0) / 1000000ull);
    LOG(LOG_INFO, "shutdown_drained", LI("complete", drained),
        LI("in_flight", atomic_load(&ingest.in_flight)), LI("ms", spent));
    int left = kafka_out_flush(ko, spent < budget ? (int)(budget - spent) : 0);
    LOG(LOG_INFO, "shutdown_kafka_flushed", LI("messages_left", left));
    server_stop(srv);
    kafka_out_free(ko);
    ko = NULL;
    server_free(srv);
    srv = NULL;
    uv_loop_close(main_loop);
    LOG(LOG_INFO, "shutdown_complete", LI("ms", (uv_hrtime() - t0) / 1000000ull));
out:
    if (srv != NULL) {
        server_stop(srv);
        kafka_out_free(ko);
        ko = NULL;
        server_free(srv);
    }
    kafka_out_free(ko);
    auth_free(auth);
    accounts_free(accounts);
    config_free(&cfg);
    return rc;
}
