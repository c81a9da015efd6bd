/*
 * admin.h — the admin views of PQL (SPEC §6): GET /v1/accounts/{id} (one account's live
 * counters, score, tier and holding rules) and GET /v1/pql/top?n=N (the N best-scored
 * accounts). Route handlers (routes.h), served on admin_listen when it is set.
 *
 * Answers, in this order: 404 "admin endpoints are disabled" with no admin token configured
 * (config.h: "unset disables them"); 401 without "Authorization: Bearer <admin token>" (checked
 * by auth_check_admin, constant time; counted in sluice_auth_failures_total); 404
 * "pql_in_stream" with pql.mode: stream (SPEC §10: the counters live in sluice-stream, whose
 * --admin-listen serves these views); 404 with PQL off (no pql.rules); 400 a malformed account id
 * (bad percent-escape, %00, over ADMIN_ID_MAX bytes), a malformed query string, or n not an
 * integer 1..PQL_TOP_MAX; then the JSON of pql_account_json / pql_top_json (404 account not
 * tracked; 500 too_large over ADMIN_ANSWER_MAX; 503 out of memory).
 *
 * The read runs on libuv's threadpool: it takes PQL's shard locks (top walks every account),
 * which a loop thread must not wait on. The connection defers its answer (http_conn_defer);
 * if it closes meanwhile, the job only frees itself when the work is done. The loop stays alive
 * until the after-work callback ran (server_stop runs it to completion), and PQL outlives the
 * loops.
 */
#ifndef SLUICE_ADMIN_H
#define SLUICE_ADMIN_H

#include "routes.h"

#define ADMIN_ID_MAX     255               /* longest account id, decoded */
#define ADMIN_ANSWER_MAX (4 * 1024 * 1024) /* n <= PQL_TOP_MAX accounts of a few KiB each */

/* GET /v1/accounts/{id} (ROUTE_MATCH_PREFIX: the parameter is the percent-encoded id). */
void admin_account_cb(http_conn_t *c, const route_t *r);

/* GET /v1/pql/top?n=N (n defaults to 10). */
void admin_pql_top_cb(http_conn_t *c, const route_t *r);

#endif
