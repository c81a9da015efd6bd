/* test_worker.c — the periodic worker: ticks, wake, stop within the deadline, stop past it. */
#include "base.h"

#include <pthread.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdlib.h>
#include <unistd.h>

#include <cmocka.h>

typedef struct counter {
    atomic_int ticks;
    atomic_int blocked_ok; /* SIGUSR1 was blocked on the worker thread */
    int sleep_ms;
} counter_t;

static void tick(void *ud)
{
    counter_t *c = ud;
    sigset_t cur;
    pthread_sigmask(SIG_BLOCK, NULL, &cur);
    if (sigismember(&cur, SIGUSR1)) atomic_store(&c->blocked_ok, 1);
    if (c->sleep_ms > 0) usleep((useconds_t)c->sleep_ms * 1000);
    atomic_fetch_add(&c->ticks, 1);
}

/* Waits (bounded: 30 s) until c has ticked at least n times. */
static void wait_ticks(counter_t *c, int n)
{
    for (int i = 0; i < 3000 && atomic_load(&c->ticks) < n; i++)
        usleep(10000);
    assert_true(atomic_load(&c->ticks) >= n);
}

static void ticks_periodically_with_signals_blocked(void **state)
{
    (void)state;
    counter_t c = {0};
    base_worker_t *w = NULL;
    assert_int_equal(base_worker_start(&w, "test-tick", 10, tick, &c), BASE_OK);
    wait_ticks(&c, 3);
    assert_int_equal(base_worker_stop(w, 30000), BASE_OK);
    assert_int_equal(atomic_load(&c.blocked_ok), 1);
    int after = atomic_load(&c.ticks);
    usleep(50000);
    assert_int_equal(atomic_load(&c.ticks), after); /* no tick after stop returned */
}

static void wake_runs_a_tick_before_the_period(void **state)
{
    (void)state;
    counter_t c = {0};
    base_worker_t *w = NULL;
    assert_int_equal(base_worker_start(&w, "test-wake", 3600 * 1000, tick, &c), BASE_OK);
    base_worker_wake(w);
    wait_ticks(&c, 1);
    assert_int_equal(base_worker_stop(w, 30000), BASE_OK);
    assert_int_equal(atomic_load(&c.ticks), 1);
}

static void stop_past_the_deadline_times_out_and_the_thread_finishes(void **state)
{
    (void)state;
    static counter_t c; /* outlives the detached thread */
    c.sleep_ms = 300;
    base_worker_t *w = NULL;
    assert_int_equal(base_worker_start(&w, "test-slow", 3600 * 1000, tick, &c), BASE_OK);
    base_worker_wake(w);
    for (int i = 0; i < 3000; i++) { /* until the tick has started: its sigmask probe ran */
        if (atomic_load(&c.blocked_ok)) break;
        usleep(1000);
    }
    assert_int_equal(base_worker_stop(w, 0), BASE_E_TIMEOUT);
    wait_ticks(&c, 1); /* the running tick completes; the thread frees w (ASan checks) */
    usleep(100000);
}

static void bad_arguments_are_refused(void **state)
{
    (void)state;
    base_worker_t *w = (base_worker_t *)&w;
    assert_int_equal(base_worker_start(&w, "x", 0, tick, NULL), BASE_E_INVAL);
    assert_null(w);
    assert_int_equal(base_worker_start(&w, "x", 10, NULL, NULL), BASE_E_INVAL);
    assert_int_equal(base_worker_stop(NULL, 0), BASE_OK);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(ticks_periodically_with_signals_blocked),
        cmocka_unit_test(wake_runs_a_tick_before_the_period),
        cmocka_unit_test(stop_past_the_deadline_times_out_and_the_thread_finishes),
        cmocka_unit_test(bad_arguments_are_refused),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
