/*
 * stream_main.c — sluice-stream (SPEC §10): command line, the YAML config (the collector's own
 * parser and table, collector/config_keys.c: its pql, dedup, kafka and stream sections), signals.
 *
 * Usage: sluice-stream --brokers LIST [--config FILE] [--group-id ID] [--data-dir DIR]
 *        [--admin-listen ADDR:PORT] [--log-level L] [--check-config] [--version] [--help]
 * Exit: 0 after SIGTERM/SIGINT (the open transaction committed, partitions handed back);
 * 1 on a fatal Kafka error or a failed restore; 2 on a bad command line or config.
 */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "log.h"
#include "metrics.h"
#include "stream.h"

static volatile sig_atomic_t stop_flag;

static void on_signal(int sig)
{
    (void)sig;
    stop_flag = 1;
}

static void usage(FILE *f)
{
    fprintf(f,
            "usage: sluice-stream --brokers LIST [--config FILE] [--group-id ID] [--data-dir DIR]\n"
            "                     [--admin-listen ADDR:PORT] [--log-level L] [--check-config]\n"
            "                     [--version] [--help]\n\n"
            "Consumes kafka.topics.events in consumer group stream.group_id; per owned partition\n"
            "keeps PQL counters (pql section) and exact dedup (dedup section), checkpoints them\n"
            "to kafka.topics.changelog and writes pql_signals (and events_deduped) in Kafka\n"
            "transactions. The YAML keys (stream.*, kafka.*, pql.*, dedup.*) are those of\n"
            "collector/CONFIG.md; flags override them. --data-dir is accepted for symmetry with\n"
            "the collector: every state lives in Kafka, nothing is written there.\n");
}

int main(int argc, char **argv)
{
    signal(SIGPIPE, SIG_IGN);
    config_t cfg;
    config_init(&cfg);
    char err[1024];
    const char *file = NULL, *brokers = NULL, *group = NULL, *admin = NULL, *level = NULL;
    bool check = false;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        const char **slot = strcmp(a, "--config") == 0         ? &file
                            : strcmp(a, "--brokers") == 0      ? &brokers
                            : strcmp(a, "--group-id") == 0     ? &group
                            : strcmp(a, "--admin-listen") == 0 ? &admin
                            : strcmp(a, "--log-level") == 0    ? &level
                                                               : NULL;
        const char *dd = NULL;
        if (strcmp(a, "--data-dir") == 0) slot = &dd;
        if (slot != NULL) {
            if (i + 1 >= argc) {
                fprintf(stderr, "sluice-stream: %s needs a value\n", a);
                config_free(&cfg);
                return 2;
            }
            *slot = argv[++i];
        } else if (strcmp(a, "--check-config") == 0)
            check = true;
        else if (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0) {
            usage(stdout);
            config_free(&cfg);
            return 0;
        } else if (strcmp(a, "--version") == 0) {
            printf("sluice-stream %s\n", SLUICE_VERSION);
            config_free(&cfg);
            return 0;
        } else {
            fprintf(stderr, "sluice-stream: unknown argument %s\n", a);
            usage(stderr);
            config_free(&cfg);
            return 2;
        }
    }
    int rc = 0;
    if (file != NULL) rc = config_load_file(&cfg, file, err, sizeof err);
    if (rc == 0 && level != NULL) {
        int l = log_level_parse(level);
        if (l < 0) {
            snprintf(err, sizeof err, "--log-level %s: debug|info|warn|error|off", level);
            rc = -1;
        } else
            cfg.log_level = l;
    }
    if (rc == 0 && brokers != NULL) {
        free(cfg.brokers);
        cfg.brokers = strdup(brokers);
    }
    if (rc == 0 && group != NULL) {
        free(cfg.stream_group_id);
        cfg.stream_group_id = strdup(group);
    }
    if (rc == 0) {
        /* The collector's cross-key checks; write keys are the collector's business only. */
        bool dev = cfg.dev;
        cfg.dev = true;
        rc = config_validate(&cfg, err, sizeof err);
        cfg.dev = dev;
    }
    if (rc == 0 && (cfg.brokers == NULL || cfg.brokers[0] == '\0')) {
        snprintf(err, sizeof err,
                 "kafka.brokers / --brokers: required (sluice-stream has no embedded cluster)");
        rc = -1;
    }
    if (rc == 0 && cfg.pql.n_rules == 0) {
        snprintf(err, sizeof err, "pql.rules: sluice-stream needs the PQL rules of SPEC §6");
        rc = -1;
    }
    if (rc == 0 && (cfg.stream_group_id == NULL || cfg.stream_group_id[0] == '\0')) {
        snprintf(err, sizeof err, "stream.group_id: must not be empty");
        rc = -1;
    }
    if (rc != 0) {
        fprintf(stderr, "sluice-stream: %s\n", err);
        config_free(&cfg);
        return 2;
    }
    if (check) {
        printf("config ok\n");
        config_free(&cfg);
        return 0;
    }
    log_set_level((log_level_t)cfg.log_level);

    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal;
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);

    stream_worker_t *w = calloc(1, sizeof *w);
    if (w == NULL || stream_worker_init(w, &cfg, &stop_flag, err, sizeof err) != 0) {
        LOG(LOG_ERROR, "stream_start_failed", LS("reason", w ? err : "out of memory"));
        if (w) stream_worker_free(w);
        free(w);
        config_free(&cfg);
        return 1;
    }
    stream_worker_register_metrics(w);
    (void)stream_dedup_register_metrics();
    stream_admin_t *adm = NULL;
    if (admin != NULL) {
        int port = 0;
        if (stream_admin_start(w, admin, &adm, &port, err, sizeof err) != 0) {
            LOG(LOG_ERROR, "stream_start_failed", LS("reason", err));
            stream_worker_free(w);
            free(w);
            config_free(&cfg);
            return 1;
        }
        LOG(LOG_INFO, "stream_admin_listening", LS("address", admin), LI("port", port));
    }
    int code = stream_worker_run(w);
    LOG(LOG_INFO, "stream_stopping", LS("reason", code == 0 ? "signal" : "fatal"));
    stream_admin_stop(adm); /* first: it reads the tasks the worker frees */
    stream_worker_free(w);  /* consumer close: partitions handed back */
    LOG(LOG_INFO, "stream_stopped", LI("exit", code));
    free(w);
    config_free(&cfg);
    return code;
}
