/*
 * it_common.h — what every integration test shares: starting an environment (mock Kafka helper +
 * collector) per test case, posting batches, and checking the topics. Functions named it_assert_*
 * and it_post_good* fail the running cmocka test on a mismatch.
 *
 * Lifecycle: a case calls it_start(state, yaml) and registers it_teardown as its teardown, which
 * stops the collector with SIGTERM and asserts it exited 0 (graceful drain is checked in every
 * case), then stops the helper and removes the temp dir.
 */
#ifndef SLUICE_IT_COMMON_H
#define SLUICE_IT_COMMON_H

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "support.h"

#define IT_KEY      "wk_test"
#define IT_SOURCE   "test"
#define IT_MAX_IDS  512
#define IT_ID_BYTES 64

/* Message ids a case expects to find exactly once on the events topic. */
typedef struct it_ids {
    char id[IT_MAX_IDS][IT_ID_BYTES];
    size_t n;
} it_ids_t;

void it_ids_add(it_ids_t *ids, const char *id);

/* Starts an environment with config_yaml (may be NULL) and stores it in *state. Asserts. */
sup_env_t *it_start(void **state, const char *config_yaml);
sup_env_t *it_start_opts(void **state, const sup_env_opts_t *opts);
/* cmocka teardown: stops everything; fails the case if the collector did not exit 0. */
int it_teardown(void **state);

/* Posts body to path with Basic auth IT_KEY. content_type/encoding may be NULL (header omitted). */
void it_post(const sup_env_t *e, const char *path, const char *content_type, const char *encoding,
             const void *body, size_t len, sup_http_resp_t *resp);
/* Posts j as JSON (uncompressed) to path with Basic auth IT_KEY. */
void it_post_json(const sup_env_t *e, const char *path, const json_t *j, sup_http_resp_t *resp);

/* Posts a JSON batch of n valid track events with ids "<prefix>-..." and asserts 200 with
 * accepted == n; the ids are added to ids. */
void it_post_good(const sup_env_t *e, const char *prefix, size_t n, it_ids_t *ids);

/* Asserts resp is 200 with success true and the given counts. */
void it_assert_ok(const sup_http_resp_t *resp, long accepted, long rejected);
/* Asserts resp is an error answer: status, success false, a non-empty message, and error equal to
 * code when code is not NULL (else any non-empty string). */
void it_assert_error(const sup_http_resp_t *resp, long status, const char *code);
/* Asserts the errors[] entry for index i exists with that messageId and error code. */
void it_assert_event_error(const sup_http_resp_t *resp, long index, const char *message_id,
                           const char *code);

/* Reads the events topic: asserts it holds exactly ids->n messages and each id exactly once. The
 * messages are returned in out (free with sup_kmsgs_free) when out is not NULL. */
void it_assert_events_exactly(const sup_env_t *e, const it_ids_t *ids, sup_kmsgs_t *out);

/* Asserts that a good batch on a new connection is still accepted (the collector survived). */
void it_assert_still_serving(const sup_env_t *e, it_ids_t *ids);

/* Runs the collector with --config (config_yaml written to a temp dir; the file is named
 * "sluice.yaml"), --listen 127.0.0.1:0, --write-key IT_KEY=IT_SOURCE, a temp --data-dir and the
 * NULL-terminated extra_args (may be NULL), and asserts that it refuses to start: it exits
 * non-zero within 20 s and its stderr contains want. The stderr is copied into log (when not
 * NULL, NUL-terminated) for further checks. */
void it_assert_refused(const char *config_yaml, const char *const *extra_args, const char *want,
                       base_buf_t *log);

/* Runs the single case named by argv[1] (or all when absent) from tests[]. */
int it_run(int argc, char **argv, const char *group, const struct CMUnitTest *tests, size_t n);

#endif
