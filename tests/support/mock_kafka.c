/*
 * sluice-mock-kafka — hosts librdkafka's mock cluster (mock_cluster.h, the one mock-Kafka
 * helper) in a process of its own, so integration tests can run the real collector against
 * "Kafka" and take brokers down and up under it.
 *
 * Usage: sluice-mock-kafka [BROKERS (default 1)] [PARTITIONS per topic (default 3)]
 *
 * Protocol: the first stdout line is the bootstrap list ("127.0.0.1:PORT,..."). Then one command
 * per stdin line, each answered with one stdout line, "ok" or "error: why":
 *   down ID   rd_kafka_mock_broker_set_down (ID -1: all brokers)
 *   up ID     rd_kafka_mock_broker_set_up
 *   rtt ID MS rd_kafka_mock_broker_set_rtt
 *   topic NAME PARTITIONS  creates a topic (sluice-stream's changelog, events_deduped)
 *   quit      exit 0 (EOF on stdin does the same, so a dead test never leaves the helper behind)
 * Topics events, events_rejected, pql_signals and identities are created up front. The process ends
 * itself after SLUICE_MOCK_LIFETIME seconds (default 600) whatever happens (alarm).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "mock_cluster.h"

static const char *const topics[] = {"events", "events_rejected", "pql_signals", "identities"};

int main(int argc, char **argv)
{
    int brokers = 1, partitions = 3, lifetime = 600;
    if ((argc > 1 && mock_parse_int(argv[1], 1, 16, &brokers) != 0) ||
        (argc > 2 && mock_parse_int(argv[2], 1, 64, &partitions) != 0)) {
        fprintf(stderr, "usage: %s [BROKERS 1..16] [PARTITIONS 1..64]\n", argv[0]);
        return 2;
    }
    const char *life = getenv("SLUICE_MOCK_LIFETIME");
    if (life && mock_parse_int(life, 1, 86400, &lifetime) != 0) {
        fprintf(stderr, "SLUICE_MOCK_LIFETIME: seconds expected\n");
        return 2;
    }
    /* The default SIGALRM action ends the process: a hard bound on its lifetime. */
    alarm((unsigned)lifetime);

    char err[512];
    mock_cluster_t c;
    if (mock_cluster_start(&c, brokers, false, err, sizeof err) != 0) {
        fprintf(stderr, "%s\n", err);
        return 1;
    }
    for (size_t i = 0; i < sizeof topics / sizeof topics[0]; i++) {
        if (mock_cluster_topic(&c, topics[i], partitions, brokers, err, sizeof err) != 0) {
            fprintf(stderr, "%s\n", err);
            mock_cluster_stop(&c);
            return 1;
        }
    }
    printf("%s\n", c.bootstrap);
    fflush(stdout);

    char line[256], ans[256];
    while (fgets(line, sizeof line, stdin)) {
        int quit = mock_cluster_command(&c, line, ans, sizeof ans);
        puts(ans);
        fflush(stdout);
        if (quit) break;
    }
    mock_cluster_stop(&c);
    return 0;
}
