/*
 * reload.h — the reloadable runtime: the part of the configuration that can change while the
 * collector serves (the compiled filter rules, log_level and the TLS certificate), and SIGHUP
 * reload (SPEC §5).
 *
 * Versions: a runtime_t is immutable once published (rule counters aside). reload_apply() builds
 * a complete new one from a fully validated config, publishes it with one atomic pointer swap and
 * frees the old one only after every reader that could have seen it has left. Readers never
 * block and never wait: reload_enter() is three atomic operations.
 *
 * Readers (any thread, typically a loop thread for the synchronous part of one request):
 *     reload_ticket_t t;
 *     const runtime_t *rt = reload_enter(rl, &t);
 *     ... use rt (do not keep it past reload_exit) ...
 *     reload_exit(rl, t);
 * A request applies its filters inside ingest_start() between one enter/exit pair, so every event
 * of a request sees one version, and a reload never waits for Kafka deliveries.
 *
 * Grace period (why two counters): a reader registers in readers[epoch & 1] before it loads the
 * pointer. After the swap the writer flips the epoch and waits for the old parity's counter to
 * drain, then flips and drains the other one; a reader still holding the old pointer registered
 * before the swap and is counted in one of them until it exits. New readers always enter the
 * current parity, which the writer is not waiting on, so the wait cannot be starved by load.
 *
 * Adding state (e.g. PQL rules): add a pointer to runtime_t, build it in runtime_build() in
 * reload.c from the new config (failure there refuses the reload like any config error), free it
 * in runtime_free(), and read it through reload_enter() like the filters.
 *
 * Thread rules: reload_init/reload_apply/reload_free are for one thread at a time (main); only
 * reload_enter/reload_exit and reload_render_metrics may run concurrently with them.
 */
#ifndef SLUICE_RELOAD_H
#define SLUICE_RELOAD_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

#include "config.h"
#include "filter.h"
#include "proto.h"
#include "tls.h"

/* X(NAME, value, "message"). 0 = OK, negative = failure; append-only. */
#define RELOAD_ERRORS(X)                                                                           \
    X(OK, 0, "ok")                                                                                 \
    X(E_NOMEM, -1, "out of memory")                                                                \
    X(E_CONFIG, -2, "the new configuration is invalid")                                            \
    X(E_RESTART, -3, "the change cannot be applied live: restart")                                 \
    X(E_IO, -4, "cannot read the configuration file")

typedef enum {
#define RELOAD_X_ENUM(name, val, msg) RELOAD_##name = val,
    RELOAD_ERRORS(RELOAD_X_ENUM)
#undef RELOAD_X_ENUM
} reload_err_t;

/* Message for a reload_err_t; "unknown error" for other values. Never NULL. */
const char *reload_strerror(int err);

typedef struct runtime {
    filter_set_t *filters; /* owned; NULL when no rules are configured */
    tls_ctx_t *tls;        /* owned reference; NULL without tls. New connections take theirs */
    int log_level;
    uint64_t generation;  /* 1 at start, +1 per successful reload */
    struct runtime *next; /* reload.c: list of retired versions still awaiting their free */
} runtime_t;

typedef struct reload {
    _Atomic(runtime_t *) cur;
    atomic_uint epoch;
    atomic_uint readers[2];
    atomic_uint_fast64_t reloads, failures; /* sluice_config_reloads_total{result=...} */
    runtime_t *retired; /* versions whose grace period timed out; freed by reload_free */
} reload_t;

typedef unsigned reload_ticket_t;

static inline const runtime_t *reload_enter(reload_t *rl, reload_ticket_t *ticket)
{
    unsigned e = atomic_load(&rl->epoch) & 1u;
    atomic_fetch_add(&rl->readers[e], 1);
    *ticket = e;
    return atomic_load(&rl->cur);
}

static inline void reload_exit(reload_t *rl, reload_ticket_t ticket)
{
    atomic_fetch_sub(&rl->readers[ticket], 1);
}

/*
 * Publishes the first runtime, taking ownership of cfg->filters and cfg->tls_ctx (both NULL
 * after the call; an absent list becomes an empty set). Returns RELOAD_OK, or RELOAD_E_NOMEM
 * (cfg then still owns its filters).
 */
int reload_init(reload_t *rl, config_t *cfg);

/*
 * SIGHUP: re-runs the start-up parse (config_from_args over argc/argv: the --config file, then
 * the same flags) and full validation, the TLS certificate and key re-read when tls is set. On
 * failure (a bad certificate/key pair included, or tls turned on or off: that needs a restart)
 * logs "config_reload_failed" with the reason, keeps the running runtime and returns
 * RELOAD_E_CONFIG (the file or flags do not parse or validate, certificate included),
 * RELOAD_E_IO (the --config file cannot be read), RELOAD_E_RESTART (tls turned on or off) or
 * RELOAD_E_NOMEM. On success
 * publishes the new runtime, applies its log_level, waits (bounded, 10 s) for readers of the old
 * one to leave and frees it, logs "config_reloaded" and, for every key that differs from running
 * (the start-up config) but cannot change live, "config_reload_restart_required"; returns
 * RELOAD_OK. Blocks
 * on file I/O and on the grace period: call it from main's thread, never a loop thread.
 */
int reload_apply(reload_t *rl, const config_t *running, int argc, char **argv);

/* Appends the per-rule filter counters of the current runtime (metrics section callback:
 * ud is the reload_t). Returns 0 or PROTO_E_NOMEM. */
int reload_render_metrics(base_buf_t *out, void *ud);

/* Frees the current runtime. No reader may be inside. */
void reload_free(reload_t *rl);

#endif
