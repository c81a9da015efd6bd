/*
 * admin.c — the admin PQL views (see admin.h for the contract).
 */
#include "admin.h"

#include <stdlib.h>
#include <string.h>

#include "auth.h"
#include "metrics.h"
#include "pql.h"
#include "query.h"

/* One admin read on the threadpool. owner is the connection while it waits, NULL once it closed
 * (cancel_cb); only the loop thread touches owner. */
typedef struct admin_job {
    uv_work_t work;
    http_conn_t *owner;
    pql_t *pql;
    bool top;
    size_t n; /* top: 1..PQL_TOP_MAX */
    size_t id_len;
    char id[ADMIN_ID_MAX + 1];
    int rc;
    base_buf_t out;
} admin_job_t;

/* Threadpool side: the PQL read, no loop state touched. */
static void job_work_cb(uv_work_t *w)
{
    admin_job_t *job = w->data;
    job->rc = job->top ? pql_top_json(job->pql, job->n, &job->out)
                       : pql_account_json(job->pql, job->id, job->id_len, 0, &job->out);
}

/* Loop side: answers the connection if it is still there, then frees the job. */
static void job_done_cb(uv_work_t *w, int status)
{
    admin_job_t *job = w->data;
    http_conn_t *c = job->owner;
    if (c != NULL) {
        if (status != 0)
            http_respond_retry(c, 503, "unavailable", "request cancelled", 1);
        else if (job->rc == PQL_E_NOTFOUND)
            http_respond_error(c, 404, "not_found", "account not tracked");
        else if (job->rc == PQL_E_TOO_LARGE)
            http_respond_error(c, 500, "too_large", "the answer is larger than its limit");
        else if (job->rc == PQL_E_NOMEM)
            http_respond_retry(c, 503, "unavailable", "out of memory", 1);
        else if (job->rc != PQL_OK)
            http_respond_error(c, 500, "internal", pql_strerror(job->rc));
        else
            http_respond_json(c, 200, job->out.data, job->out.len);
    }
    base_buf_free(&job->out);
    free(job);
}

/* The connection closed while the read ran: nobody to answer. */
static void job_cancel_cb(void *arg)
{
    admin_job_t *job = arg;
    job->owner = NULL;
}

/* The checks both views share (admin.h's order). Returns a job to fill and start, or NULL
 * (answered). */
static admin_job_t *admin_begin(http_conn_t *c)
{
    const http_loop_t *hl = http_conn_loop(c);
    const config_t *cfg = hl->cfg;
    pql_t *pql = hl->ingest->pql;
    if (cfg->admin_token == NULL || cfg->admin_token[0] == '\0') {
        http_respond_error(c, 404, "not_found", "admin endpoints are disabled (no admin token)");
        return NULL;
    }
    size_t alen;
    const char *authz = http_conn_header(c, HTTP_HDR_AUTHORIZATION, &alen);
    if (auth_check_admin(authz, alen, cfg->admin_token, strlen(cfg->admin_token)) != AUTH_OK) {
        metrics_add(METRIC_AUTH_FAILURES, 1);
        http_respond_error(c, 401, "unauthorized", "admin token required (Authorization: Bearer)");
        return NULL;
    }
    if (cfg->pql_mode == CONFIG_PQL_STREAM) {
        /* SPEC §10: the counters live in sluice-stream; this process has none to show. */
        http_respond_error(c, 404, "pql_in_stream",
                           "pql.mode is stream: PQL runs in sluice-stream; ask its --admin-listen "
                           "for /v1/accounts/{id} and /v1/pql/top");
        return NULL;
    }
    if (pql == NULL) {
        http_respond_error(c, 404, "not_found", "PQL is off (no pql.rules configured)");
        return NULL;
    }
    admin_job_t *job = calloc(1, sizeof *job);
    if (job == NULL) {
        http_respond_retry(c, 503, "unavailable", "out of memory", 1);
        return NULL;
    }
    job->pql = pql;
    job->work.data = job;
    base_buf_init(&job->out, ADMIN_ANSWER_MAX);
    return job;
}

/* Queues job on the loop's threadpool; c waits for job_done_cb. */
static void admin_start(http_conn_t *c, admin_job_t *job)
{
    job->owner = c;
    if (uv_queue_work(http_conn_loop(c)->uv, &job->work, job_work_cb, job_done_cb) != 0) {
        free(job);
        http_respond_retry(c, 503, "unavailable", "could not schedule the request", 1);
        return;
    }
    http_conn_defer(c, job_cancel_cb, job);
}

void admin_account_cb(http_conn_t *c, const route_t *r)
{
    admin_job_t *job = admin_begin(c);
    if (job == NULL) return;
    size_t tlen, plen;
    const char *target = http_conn_target(c, &tlen), *param;
    if (!route_param(r, target, tlen, &param, &plen) ||
        query_unescape(param, plen, job->id, ADMIN_ID_MAX, &job->id_len) != QUERY_OK ||
        job->id_len == 0) {
        free(job);
        http_respond_error(c, 400, "bad_request", "malformed account id");
        return;
    }
    admin_start(c, job);
}

void admin_pql_top_cb(http_conn_t *c, const route_t *r)
{
    (void)r;
    admin_job_t *job = admin_begin(c);
    if (job == NULL) return;
    size_t tlen, qlen, vlen;
    const char *target = http_conn_target(c, &tlen);
    const char *q = query_of(target, tlen, &qlen);
    char num[16];
    long n = 10;
    int rc = query_get(q, qlen, "n", num, sizeof num - 1, &vlen);
    if (rc == QUERY_E_MALFORMED) {
        free(job);
        http_respond_error(c, 400, "bad_request", "malformed query string");
        return;
    }
    if (rc != QUERY_E_ABSENT) {
        char *e = NULL;
        num[rc == QUERY_OK ? vlen : 0] = '\0';
        n = rc == QUERY_OK ? strtol(num, &e, 10) : 0;
        if (rc != QUERY_OK || vlen == 0 || *e != '\0' || n < 1 || n > PQL_TOP_MAX) {
            free(job);
            http_respond_error(c, 400, "bad_request", "n must be an integer 1..1000");
            return;
        }
    }
    job->top = true;
    job->n = (size_t)n;
    admin_start(c, job);
}
