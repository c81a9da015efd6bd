/*
 * worker.c — one periodic background thread with a shutdown deadline (sentry-native's
 * sentry_bgworker): signals blocked, ticks every period or on wake, stop waits a bounded time.
 *
 * Lifetime: w is freed by whoever drops the last of two references, the stopper's and the
 * thread's, so a stop that times out can detach the thread and return.
 */
#include "base.h"

#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct base_worker {
    base_worker_cb tick;
    void *ud;
    uint64_t period_ms;
    pthread_t th;
    pthread_mutex_t mu;
    pthread_cond_t cv;       /* CLOCK_MONOTONIC; signalled on wake, stop and exit */
    bool stop, wake, exited; /* protected by mu */
    int refs;                /* protected by mu */
    char name[16];
};

static void worker_free(base_worker_t *w)
{
    pthread_cond_destroy(&w->cv);
    pthread_mutex_destroy(&w->mu);
    free(w);
}

/* Drops one reference (mu held on entry, released here); frees w on the last. */
static void unref_unlock(base_worker_t *w)
{
    bool last = --w->refs == 0;
    pthread_mutex_unlock(&w->mu);
    if (last) worker_free(w);
}

static void *worker_main(void *arg)
{
    base_worker_t *w = arg;
    sigset_t all;
    sigfillset(&all);
    pthread_sigmask(SIG_BLOCK, &all, NULL);
    if (w->name[0] != '\0') pthread_setname_np(pthread_self(), w->name);
    pthread_mutex_lock(&w->mu);
    while (!w->stop) {
        struct timespec dl = base_deadline(CLOCK_MONOTONIC, w->period_ms);
        while (!w->stop && !w->wake && pthread_cond_timedwait(&w->cv, &w->mu, &dl) != ETIMEDOUT) {
        }
        if (w->stop) break;
        w->wake = false;
        pthread_mutex_unlock(&w->mu);
        w->tick(w->ud);
        pthread_mutex_lock(&w->mu);
    }
    w->exited = true;
    pthread_cond_broadcast(&w->cv);
    unref_unlock(w);
    return NULL;
}

int base_worker_start(base_worker_t **out, const char *name, uint64_t period_ms,
                      base_worker_cb tick, void *ud)
{
    *out = NULL;
    if (tick == NULL || period_ms == 0) return BASE_E_INVAL;
    base_worker_t *w = calloc(1, sizeof *w);
    if (w == NULL) return BASE_E_NOMEM;
    w->tick = tick;
    w->ud = ud;
    w->period_ms = period_ms;
    w->refs = 2;
    if (name != NULL) snprintf(w->name, sizeof w->name, "%s", name);
    pthread_mutex_init(&w->mu, NULL);
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&w->cv, &ca);
    pthread_condattr_destroy(&ca);
    if (pthread_create(&w->th, NULL, worker_main, w) != 0) {
        worker_free(w);
        return BASE_E_THREAD;
    }
    *out = w;
    return BASE_OK;
}

void base_worker_wake(base_worker_t *w)
{
    pthread_mutex_lock(&w->mu);
    w->wake = true;
    pthread_cond_broadcast(&w->cv);
    pthread_mutex_unlock(&w->mu);
}

int base_worker_stop(base_worker_t *w, uint64_t deadline_ms)
{
    if (w == NULL) return BASE_OK;
    struct timespec dl = base_deadline(CLOCK_MONOTONIC, deadline_ms);
    pthread_mutex_lock(&w->mu);
    w->stop = true;
    pthread_cond_broadcast(&w->cv);
    while (!w->exited && pthread_cond_timedwait(&w->cv, &w->mu, &dl) != ETIMEDOUT) {
    }
    bool exited = w->exited;
    pthread_t th = w->th;
    if (!exited) pthread_detach(th);
    unref_unlock(w);
    if (!exited) return BASE_E_TIMEOUT;
    pthread_join(th, NULL);
    return BASE_OK;
}
