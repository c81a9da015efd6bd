/* pql_saver.c — the PQL snapshot worker on the base layer's periodic worker (contract in pql.h). */
#include <stdlib.h>
#include <string.h>

#include "log.h"
#include "metrics.h"
#include "pql_internal.h"

/* ---- snapshot worker ---- */

struct pql_saver {
    pql_t *p;
    char *path;
    base_worker_t *w;
};

/* A saver stop waits this long for a snapshot in progress. */
#define PQL_SAVER_STOP_MS 60000

/* The one warning of a failed snapshot, periodic or final: the same fields as dedup's
 * (dedup_snapshot_failed), errno by name and text. */
static void snapshot_failed(const pql_saver_t *s, const char *when, int rc, const base_ioerr_t *e)
{
    metrics_add(METRIC_PQL_SNAPSHOT_ERRORS, 1);
    LOG(LOG_WARN, "pql_snapshot_failed", LS("path", s->path), LS("when", when),
        LS("reason", pql_strerror(rc)), LS("op", e->op),
        LS("errno", e->errnum != 0 ? base_errno_name(e->errnum) : NULL),
        LS("error", e->errnum != 0 ? strerror(e->errnum) : NULL),
        LS("effect", "PQL counters since the last good snapshot are not on disk"));
}

/* One saver tick (every interval): the idle accounts' windows advance, then the snapshot. */
static void saver_tick(void *arg)
{
    pql_saver_t *s = arg;
    size_t expired = pql_sweep(s->p, base_wall_ms());
    int64_t t0 = base_mono_ms();
    base_ioerr_t e;
    int rc = pql_snapshot_write(s->p, s->path, &e);
    if (rc != PQL_OK)
        snapshot_failed(s, "periodic", rc, &e);
    else
        LOG(LOG_DEBUG, "pql_snapshot", LS("path", s->path), LI("expired", expired),
            LI("ms", (uint64_t)(base_mono_ms() - t0)));
}

int pql_saver_start(pql_t *p, const char *path, uint32_t interval_ms, pql_saver_t **out)
{
    *out = NULL;
    pql_saver_t *s = calloc(1, sizeof *s);
    if (s == NULL || (s->path = strdup(path)) == NULL) {
        free(s);
        return PQL_E_NOMEM;
    }
    s->p = p;
    int rc = base_worker_start(&s->w, "sluice-pql-save", interval_ms > 0 ? interval_ms : 1000,
                               saver_tick, s);
    if (rc != BASE_OK) {
        free(s->path);
        free(s);
        return rc == BASE_E_NOMEM ? PQL_E_NOMEM : PQL_E_THREAD;
    }
    *out = s;
    return PQL_OK;
}

int pql_saver_stop(pql_saver_t *s)
{
    if (s == NULL) return PQL_OK;
    if (base_worker_stop(s->w, PQL_SAVER_STOP_MS) != BASE_OK) {
        /* Still writing: s and its pql stay allocated for the running tick. */
        s->p->orphaned = true;
        return PQL_E_TIMEOUT;
    }
    base_ioerr_t e;
    int rc = pql_snapshot_write(s->p, s->path, &e);
    if (rc != PQL_OK) snapshot_failed(s, "final", rc, &e);
    free(s->path);
    free(s);
    return rc;
}
