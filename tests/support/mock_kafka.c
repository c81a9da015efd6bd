/*
 * sluice-mock-kafka — hosts librdkafka's mock cluster in a process of its own, so integration
 * tests can run the real collector against "Kafka" and take brokers down and up under it.
 *
 * Usage: sluice-mock-kafka [BROKERS (default 1)] [PARTITIONS per topic (default 3)]
 *
 * Protocol: the first stdout line is the bootstrap list ("127.0.0.1:PORT,..."). Then one command
 * per stdin line, each answered with one stdout line, "ok" or "error: why":
 *   down ID   rd_kafka_mock_broker_set_down (ID -1: all brokers)
 *   up ID     rd_kafka_mock_broker_set_up
 *   rtt ID MS rd_kafka_mock_broker_set_rtt
 *   quit      exit 0 (EOF on stdin does the same, so a dead test never leaves the helper behind)
 * Topics events, events_rejected and pql_signals are created up front. The process ends itself
 * after SLUICE_MOCK_LIFETIME seconds (default 600) whatever happens (alarm).
 */
#include <librdkafka/rdkafka.h>
#include <librdkafka/rdkafka_mock.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static const char *const topics[] = {"events", "events_rejected", "pql_signals"};

static int parse_int(const char *s, int lo, int hi, int *out)
{
    char *end;
    long v = strtol(s, &end, 10);
    if (end == s || *end != '\0' || v < lo || v > hi) return -1;
    *out = (int)v;
    return 0;
}

/* Executes one command line; returns 1 on quit, else 0 (answer already printed). */
static int run_command(rd_kafka_mock_cluster_t *mc, char *line)
{
    char *save = NULL;
    char *verb = strtok_r(line, " \t\r\n", &save);
    char *a1 = strtok_r(NULL, " \t\r\n", &save);
    char *a2 = strtok_r(NULL, " \t\r\n", &save);
    if (!verb) {
        puts("error: empty command");
        return 0;
    }
    if (strcmp(verb, "quit") == 0) {
        puts("ok");
        return 1;
    }
    int id = 0, ms = 0;
    if (!a1 || parse_int(a1, -1, 1000, &id) != 0) {
        puts("error: broker id expected");
        return 0;
    }
    rd_kafka_resp_err_t err;
    if (strcmp(verb, "down") == 0) {
        err = rd_kafka_mock_broker_set_down(mc, id);
    } else if (strcmp(verb, "up") == 0) {
        err = rd_kafka_mock_broker_set_up(mc, id);
    } else if (strcmp(verb, "rtt") == 0) {
        if (!a2 || parse_int(a2, 0, 600000, &ms) != 0) {
            puts("error: rtt ID MS");
            return 0;
        }
        err = rd_kafka_mock_broker_set_rtt(mc, id, ms);
    } else {
        printf("error: unknown command %s\n", verb);
        return 0;
    }
    if (err)
        printf("error: %s\n", rd_kafka_err2str(err));
    else
        puts("ok");
    return 0;
}

int main(int argc, char **argv)
{
    int brokers = 1, partitions = 3, lifetime = 600;
    if ((argc > 1 && parse_int(argv[1], 1, 16, &brokers) != 0) ||
        (argc > 2 && parse_int(argv[2], 1, 64, &partitions) != 0)) {
        fprintf(stderr, "usage: %s [BROKERS 1..16] [PARTITIONS 1..64]\n", argv[0]);
        return 2;
    }
    const char *life = getenv("SLUICE_MOCK_LIFETIME");
    if (life && parse_int(life, 1, 86400, &lifetime) != 0) {
        fprintf(stderr, "SLUICE_MOCK_LIFETIME: seconds expected\n");
        return 2;
    }
    /* The default SIGALRM action ends the process: a hard bound on its lifetime. */
    alarm((unsigned)lifetime);

    char err[512];
    rd_kafka_conf_t *conf = rd_kafka_conf_new();
    if (rd_kafka_conf_set(conf, "log_level", "3", err, sizeof err) != RD_KAFKA_CONF_OK) {
        fprintf(stderr, "conf: %s\n", err);
        return 1;
    }
    /* The handle only anchors the cluster's bookkeeping; it never produces. */
    rd_kafka_t *rk = rd_kafka_new(RD_KAFKA_PRODUCER, conf, err, sizeof err);
    if (!rk) {
        fprintf(stderr, "rd_kafka_new: %s\n", err);
        return 1;
    }
    rd_kafka_mock_cluster_t *mc = rd_kafka_mock_cluster_new(rk, brokers);
    if (!mc) {
        fprintf(stderr, "rd_kafka_mock_cluster_new failed\n");
        rd_kafka_destroy(rk);
        return 1;
    }
    for (size_t i = 0; i < sizeof topics / sizeof topics[0]; i++) {
        rd_kafka_resp_err_t e = rd_kafka_mock_topic_create(mc, topics[i], partitions, brokers);
        if (e) {
            fprintf(stderr, "topic %s: %s\n", topics[i], rd_kafka_err2str(e));
            rd_kafka_mock_cluster_destroy(mc);
            rd_kafka_destroy(rk);
            return 1;
        }
    }
    printf("%s\n", rd_kafka_mock_cluster_bootstraps(mc));
    fflush(stdout);

    char line[256];
    while (fgets(line, sizeof line, stdin)) {
        int quit = run_command(mc, line);
        fflush(stdout);
        if (quit) break;
    }
    rd_kafka_mock_cluster_destroy(mc);
    rd_kafka_destroy(rk);
    return 0;
}
