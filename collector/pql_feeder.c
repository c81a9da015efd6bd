/* pql_feeder.c — records handed over by the loops (pql_submit, a base_stack_t) and the feeder
 * thread that feeds them off the loops (contract in pql.h). */
#include <errno.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>

#include "pql_internal.h"

/* ---- the feeder thread (pql_submit) ---- */

static uint64_t records_count(const char *buf, size_t len)
{
    uint64_t n = 0;
    size_t off = 0;
    while (off + PQL_RECORD_HEAD <= len) {
        const unsigned char *h = (const unsigned char *)buf + off;
        off += PQL_RECORD_HEAD + (size_t)h[0] + h[1] + h[2] + h[4];
        n++;
    }
    return n;
}

int pql_submit(pql_t *p, base_buf_t *rec, int64_t now_ms)
{
    if (rec->len == 0) return PQL_OK;
    if (!p->feeder_on) {
        pql_feed_records(p, rec->data, rec->len, now_ms);
        return PQL_OK;
    }
    uint64_t len = rec->len;
    uint64_t q = atomic_fetch_add_explicit(&p->q_bytes, len, memory_order_relaxed) + len;
    pql_batch_t *b = q <= p->q_max ? malloc(sizeof *b) : NULL;
    if (b == NULL) {
        atomic_fetch_sub_explicit(&p->q_bytes, len, memory_order_relaxed);
        atomic_fetch_add_explicit(&p->q_dropped, records_count(rec->data, rec->len),
                                  memory_order_relaxed);
        return q <= p->q_max ? PQL_E_NOMEM : PQL_E_FULL;
    }
    b->data = rec->data;
    b->len = rec->len;
    b->now_ms = now_ms;
    rec->data = NULL;
    rec->len = rec->cap = 0;
    /* b belongs to the feeder once pushed: only the local head is read after the CAS. */
    /* b belongs to the feeder once pushed. Only the push onto an empty stack wakes the feeder:
     * it takes everything at once. */
    if (base_stack_push(&p->inbox, &b->node)) sem_post(&p->q_sem);
    return PQL_OK;
}

/* Feeds a taken stack (base_stack_take: submission order) and frees it. */
static void inbox_drain(pql_t *p, base_snode_t *n)
{
    while (n != NULL) {
        pql_batch_t *b = (pql_batch_t *)n;
        n = n->next;
        pql_feed_records(p, b->data, b->len, b->now_ms);
        atomic_fetch_sub_explicit(&p->q_bytes, b->len, memory_order_relaxed);
        free(b->data);
        free(b);
    }
}

static void *inbox_thread_main(void *arg)
{
    pql_t *p = arg;
    sigset_t all;
    sigfillset(&all);
    pthread_sigmask(SIG_BLOCK, &all, NULL);
    for (;;) {
        while (sem_wait(&p->q_sem) != 0 && errno == EINTR) {
        }
        bool stop = atomic_load_explicit(&p->q_stop, memory_order_acquire);
        inbox_drain(p, base_stack_take(&p->inbox));
        if (stop) break;
    }
    return NULL;
}

int pql_feeder_start(pql_t *p, uint64_t max_bytes)
{
    if (p->feeder_on) return PQL_E_INVALID;
    p->q_max = max_bytes;
    atomic_store(&p->q_stop, false);
    if (sem_init(&p->q_sem, 0, 0) != 0) return PQL_E_THREAD;
    if (pthread_create(&p->feeder, NULL, inbox_thread_main, p) != 0) {
        sem_destroy(&p->q_sem);
        return PQL_E_THREAD;
    }
    p->feeder_on = true;
    return PQL_OK;
}

void pql_feeder_stop(pql_t *p)
{
    if (p == NULL || !p->feeder_on) return;
    atomic_store_explicit(&p->q_stop, true, memory_order_release);
    sem_post(&p->q_sem);
    pthread_join(p->feeder, NULL);
    /* Anything pushed after the feeder's last take (a caller breaking the contract) is fed
     * here rather than leaked. */
    inbox_drain(p, base_stack_take(&p->inbox));
    sem_destroy(&p->q_sem);
    p->feeder_on = false;
}
