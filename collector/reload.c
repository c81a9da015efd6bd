/*
 * reload.c — the reloadable runtime and SIGHUP reload (contract and grace-period argument in
 * reload.h).
 */
#include "reload.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "base.h"
#include "log.h"

/* How long reload_apply waits for readers of the old version (they never block, so this is a
 * safety bound, not an expected wait). */
#define RELOAD_GRACE_NS (10ull * 1000 * 1000 * 1000)

static void runtime_free(runtime_t *rt)
{
    if (rt == NULL) return;
    filter_set_free(rt->filters);
    tls_ctx_free(rt->tls);
    free(rt);
}

/* Builds a runtime from a validated config, taking what it keeps (cfg->filters). */
static runtime_t *runtime_build(config_t *cfg, uint64_t generation)
{
    runtime_t *rt = calloc(1, sizeof *rt);
    if (rt == NULL) return NULL;
    rt->filters = cfg->filters;
    cfg->filters = NULL;
    rt->tls = cfg->tls_ctx;
    cfg->tls_ctx = NULL;
    rt->log_level = cfg->log_level;
    rt->generation = generation;
    return rt;
}

const char *reload_strerror(int err)
{
    switch (err) {
#define RELOAD_X_STR(name, val, msg)                                                               \
    case val:                                                                                      \
        return msg;
        RELOAD_ERRORS(RELOAD_X_STR)
#undef RELOAD_X_STR
    default:
        return "unknown error";
    }
}

int reload_init(reload_t *rl, config_t *cfg)
{
    memset(rl, 0, sizeof *rl);
    atomic_init(&rl->epoch, 0);
    atomic_init(&rl->readers[0], 0);
    atomic_init(&rl->readers[1], 0);
    atomic_init(&rl->reloads, 0);
    atomic_init(&rl->failures, 0);
    runtime_t *rt = runtime_build(cfg, 1);
    if (rt == NULL) return RELOAD_E_NOMEM;
    atomic_init(&rl->cur, rt);
    return RELOAD_OK;
}

/* Waits until no reader that entered before this call is inside (see reload.h). Returns false
 * when the bound passed first. */
static bool grace_period(reload_t *rl)
{
    const uint64_t deadline = base_mono_ns() + RELOAD_GRACE_NS;
    for (int phase = 0; phase < 2; phase++) {
        unsigned old = atomic_fetch_xor(&rl->epoch, 1u) & 1u;
        while (atomic_load(&rl->readers[old]) != 0) {
            if (base_mono_ns() > deadline) return false;
            struct timespec d = {0, 50 * 1000}; /* 50 µs: readers hold for one request's CPU work */
            nanosleep(&d, NULL);
        }
    }
    return true;
}

typedef struct diff_ctx {
    char list[512];
    size_t len, n;
} diff_ctx_t;

static void diff_cb(const char *key, void *ud)
{
    diff_ctx_t *d = ud;
    if (strcmp(key, "log_level") == 0 || strncmp(key, "tls.", 4) == 0) return; /* applied live */
    d->n++;
    int w = snprintf(d->list + d->len, sizeof d->list - d->len, "%s%s", d->len ? "," : "", key);
    if (w > 0 && (size_t)w < sizeof d->list - d->len) d->len += (size_t)w;
}

int reload_apply(reload_t *rl, const config_t *running, int argc, char **argv)
{
    config_t next;
    char err[1024] = "";
    config_action_t action;
    int rc = config_from_args(&next, argc, argv, &action, err, sizeof err);
    if (rc != CONFIG_OK) {
        atomic_fetch_add(&rl->failures, 1);
        LOG(LOG_ERROR, "config_reload_failed", LS("reason", err),
            LS("kept", "the running configuration stays"));
        config_free(&next);
        return rc == CONFIG_E_NOMEM ? RELOAD_E_NOMEM
               : rc == CONFIG_E_IO  ? RELOAD_E_IO
                                    : RELOAD_E_CONFIG;
    }
    if ((running->tls_cert_file != NULL) != (next.tls_cert_file != NULL)) {
        atomic_fetch_add(&rl->failures, 1);
        LOG(LOG_ERROR, "config_reload_failed",
            LS("reason", "tls: turning HTTPS on or off needs a restart"),
            LS("kept", "the running configuration stays"));
        config_free(&next);
        return RELOAD_E_RESTART;
    }
    runtime_t *old = atomic_load(&rl->cur);
    runtime_t *rt = runtime_build(&next, old->generation + 1);
    if (rt == NULL) {
        atomic_fetch_add(&rl->failures, 1);
        LOG(LOG_ERROR, "config_reload_failed", LS("reason", "out of memory"),
            LS("kept", "the running configuration stays"));
        config_free(&next);
        return RELOAD_E_NOMEM;
    }
    diff_ctx_t d = {.len = 0, .n = 0};
    d.list[0] = '\0';
    config_diff(running, &next, diff_cb, &d);
    config_free(&next);

    /* Counters stay monotonic: the new rules start from the old ones' values at the swap, and
     * what the old rules count until their last reader leaves is added after the grace period.
     * Without memory for that (tiny) bookkeeping the counters restart, nothing else changes. */
    size_t nold = filter_set_count(old->filters);
    uint64_t *snap = calloc(2 * (nold > 0 ? nold : 1), sizeof *snap);
    if (snap != NULL) {
        filter_set_counts_snapshot(old->filters, snap);
        filter_set_add_counts(rt->filters, old->filters, snap);
    }
    atomic_store(&rl->cur, rt);
    log_set_level((log_level_t)rt->log_level);
    if (grace_period(rl)) {
        if (snap != NULL) {
            uint64_t *later = snap + nold;
            filter_set_counts_snapshot(old->filters, later);
            for (size_t i = 0; i < nold; i++)
                later[i] -= snap[i];
            filter_set_add_counts(rt->filters, old->filters, later);
        }
        runtime_free(old);
    } else {
        LOG(LOG_ERROR, "config_reload_grace_timeout",
            LS("reason", "a reader held the old rules for 10 s; they are freed at exit"));
        old->next = rl->retired;
        rl->retired = old;
    }
    free(snap);
    atomic_fetch_add(&rl->reloads, 1);
    LOG(LOG_INFO, "config_reloaded", LI("generation", rt->generation),
        LI("filters", filter_set_count(rt->filters)));
    if (rt->tls != NULL) {
        char desc[512];
        tls_ctx_describe(rt->tls, desc, sizeof desc);
        LOG(LOG_INFO, "tls_certificate_loaded", LS("certificate", desc),
            LS("effect", "new connections use it; open ones keep theirs"));
    }
    if (d.n > 0)
        LOG(LOG_WARN, "config_reload_restart_required", LS("keys", d.list),
            LS("reason", "these keys cannot change while running; restart to apply them"));
    return RELOAD_OK;
}

int reload_render_metrics(base_buf_t *out, void *ud)
{
    reload_t *rl = ud;
    char line[256];
    int n = snprintf(line, sizeof line,
                     "# HELP sluice_config_reloads_total SIGHUP reloads by result\n"
                     "# TYPE sluice_config_reloads_total counter\n"
                     "sluice_config_reloads_total{result=\"ok\"} %llu\n"
                     "sluice_config_reloads_total{result=\"failed\"} %llu\n",
                     (unsigned long long)atomic_load(&rl->reloads),
                     (unsigned long long)atomic_load(&rl->failures));
    int rc =
        n > 0 && (size_t)n < sizeof line ? base_buf_append(out, line, (size_t)n) : PROTO_E_NOMEM;
    reload_ticket_t t;
    const runtime_t *rt = reload_enter(rl, &t);
    if (rc == PROTO_OK) rc = filter_set_render(rt->filters, out);
    reload_exit(rl, t);
    return rc;
}

void reload_free(reload_t *rl)
{
    runtime_free(atomic_load(&rl->cur));
    atomic_store(&rl->cur, NULL);
    while (rl->retired != NULL) {
        runtime_t *n = rl->retired->next;
        runtime_free(rl->retired);
        rl->retired = n;
    }
}
