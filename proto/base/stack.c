/* stack.c — the intrusive lock-free stack: many producers push, one consumer takes all. */
#include "base.h"

void base_stack_init(base_stack_t *s)
{
    atomic_init(&s->head, NULL);
}

bool base_stack_push(base_stack_t *s, base_snode_t *n)
{
    /* n belongs to the consumer once pushed: only the local head is read after the CAS. */
    base_snode_t *old = atomic_load_explicit(&s->head, memory_order_relaxed);
    do
        n->next = old;
    while (!atomic_compare_exchange_weak_explicit(&s->head, &old, n, memory_order_release,
                                                  memory_order_relaxed));
    return old == NULL;
}

base_snode_t *base_stack_take(base_stack_t *s)
{
    base_snode_t *top = atomic_exchange_explicit(&s->head, NULL, memory_order_acquire);
    base_snode_t *fifo = NULL;
    while (top != NULL) {
        base_snode_t *n = top->next;
        top->next = fifo;
        fifo = top;
        top = n;
    }
    return fifo;
}
