/*
 * verify.h — sluice-load --verify: after a run, consume the collector's topics from the beginning
 * and account for every event the run sent (SPEC §9).
 *
 * Input is the run's ledger (client.h): one byte per generated event per stream, saying its kind
 * and whether a request carrying it was answered 200 (ACKED) or got no definite answer (UNSURE).
 * Messages are matched by the `message-id` header on `events` and by the run's messageId found in
 * the `raw` event on `events_rejected` (model_parse_message_id()); messages of other runs are
 * counted as other_runs and otherwise ignored.
 *
 * Rules: an ACKED valid event must be on `events` exactly once and never on `events_rejected`; an
 * UNSURE valid event at most once; an event that was only ever refused (a 4xx other than 408/429)
 * not at all. An ACKED invalid event must be on `events_rejected` (at least once: a re-sent
 * invalid event is rejected again) with the error code of its kind, and never on `events`.
 * PQL: when pql_signals holds messages for this run's scripted accounts (or expect_pql is set),
 * each scripted account's highest signalled tier must be the one it was scripted to reach;
 * otherwise the PQL check is "not checked" (pql_state -1), which does not fail the run.
 *
 * Where to start: verify_prepare(), called BEFORE the run, records where each partition of the
 * three topics ends; verify_run() then reads from there (this run's messages cannot be earlier),
 * which skips earlier runs' data. Without a snapshot it reads from the beginning. If the broker
 * has already deleted messages past the start point (retention: librdkafka's mock cluster keeps
 * only about 5 MiB or 100k message batches per partition), `pruned` counts them and the
 * verification fails as impossible rather than reporting them as lost.
 *
 * Consumption ends when every partition has reached its end and nothing new arrived for quiet_ms,
 * or at timeout_ms (then `complete` is false and the verification fails).
 */
#ifndef SLUICE_LOADTEST_VERIFY_H
#define SLUICE_LOADTEST_VERIFY_H

#include "model.h"

#include <stdbool.h>
#include <stdint.h>

#define VERIFY_MAX_PARTS 1024

/* Where each partition ended before the run (verify_prepare()). */
typedef struct verify_start {
    int n;
    struct {
        int topic; /* 0 events, 1 rejected, 2 pql */
        int32_t partition;
        int64_t offset;
    } p[VERIFY_MAX_PARTS];
} verify_start_t;

typedef struct verify_config {
    const char *brokers;
    const char *topic_events, *topic_rejected, *topic_pql;
    uint32_t timeout_ms, quiet_ms;
    bool expect_pql;
    const model_t *model;
    /* The run's ledger, borrowed: ledgers[stream][seq] for seq < ledger_len[stream]. */
    uint8_t *const *ledgers;
    const uint64_t *ledger_len;
    uint32_t n_ledgers;
    bool ledger_overflow;
    const verify_start_t *start; /* NULL: read from the beginning */
} verify_config_t;

typedef struct verify_result {
    bool ok;
    bool complete;             /* consumed to the end before the deadline */
    uint64_t sent_unique;      /* distinct valid events answered 200: must arrive exactly once */
    uint64_t sent_unsure;      /* distinct valid events with no definite answer */
    uint64_t delivered;        /* messages on `events` of this run */
    uint64_t missing;          /* ACKED valid events not delivered */
    uint64_t duplicated;       /* valid events delivered more than once */
    uint64_t unsure_delivered; /* UNSURE valid events that did arrive (once) */
    uint64_t unexpected;       /* this run's messages that must not exist (refused events,
                                  unknown seqs, no message-id header) */
    uint64_t invalid_sent;     /* distinct invalid events answered 200 */
    uint64_t rejected_ok;      /* ... found on events_rejected with the right code */
    uint64_t rejected_wrong;   /* ... found with another code */
    uint64_t rejected_missing; /* ... not found */
    uint64_t rejected_messages;
    uint64_t invalid_delivered; /* invalid events found on `events` */
    uint64_t valid_rejected;    /* ACKED valid events found on events_rejected */
    uint64_t other_runs;        /* messages of other runs (ignored) */
    uint64_t pruned;            /* messages deleted by the broker inside this run's range */
    uint64_t pql_messages;      /* all messages on pql_signals */
    int pql_state;              /* -1 not checked, 0 mismatch, 1 every scripted tier signalled */
    char pql_note[256];
    char first_problem[256]; /* a human sentence about the first mismatch seen, or "" */
    double consume_s;
} verify_result_t;

/*
 * Records the end offset of every partition of the three topics (topics that do not exist yet
 * are left out: they will be read from the beginning). Only brokers and topic names of cfg are
 * used. Returns 0, or LT_E_KAFKA when the cluster cannot be reached (start->n is then 0).
 */
int verify_prepare(const verify_config_t *cfg, verify_start_t *start);

/*
 * Consumes and checks. Returns 0 when the check ran (look at res->ok), LT_E_INVAL for a bad
 * config, LT_E_NOMEM, LT_E_KAFKA when no consumer could be created (res->first_problem says why).
 * Blocks the calling thread (not a loop thread) for up to cfg->timeout_ms.
 */
int verify_run(const verify_config_t *cfg, verify_result_t *res);

#endif
