/* test_stack.c — the lock-free stack: push order kept, "was empty" cue, many producers. */
#include "base.h"

#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdlib.h>

#include <cmocka.h>

typedef struct item {
    base_snode_t node; /* first, so a node pointer is an item pointer */
    int producer, seq;
} item_t;

static void take_returns_push_order(void **state)
{
    (void)state;
    base_stack_t s;
    base_stack_init(&s);
    assert_null(base_stack_take(&s));
    item_t it[3] = {{{NULL}, 0, 0}, {{NULL}, 0, 1}, {{NULL}, 0, 2}};
    assert_true(base_stack_push(&s, &it[0].node));
    assert_false(base_stack_push(&s, &it[1].node));
    assert_false(base_stack_push(&s, &it[2].node));
    base_snode_t *n = base_stack_take(&s);
    for (int i = 0; i < 3; i++) {
        assert_non_null(n);
        assert_int_equal(((item_t *)n)->seq, i);
        n = n->next;
    }
    assert_null(n);
    assert_null(base_stack_take(&s));
    assert_true(base_stack_push(&s, &it[0].node)); /* empty again */
}

#define PRODUCERS 4
#define PER       20000

typedef struct prod {
    base_stack_t *s;
    item_t *items;
    int id;
} prod_t;

static void *producer(void *arg)
{
    prod_t *p = arg;
    for (int i = 0; i < PER; i++) {
        p->items[i].producer = p->id;
        p->items[i].seq = i;
        base_stack_push(p->s, &p->items[i].node);
    }
    return NULL;
}

static void many_producers_lose_nothing_and_keep_each_order(void **state)
{
    (void)state;
    base_stack_t s;
    base_stack_init(&s);
    item_t *items = calloc(PRODUCERS * PER, sizeof *items);
    assert_non_null(items);
    pthread_t th[PRODUCERS];
    prod_t pa[PRODUCERS];
    for (int i = 0; i < PRODUCERS; i++) {
        pa[i] = (prod_t){&s, items + i * PER, i};
        assert_int_equal(pthread_create(&th[i], NULL, producer, &pa[i]), 0);
    }
    int next[PRODUCERS] = {0};
    int total = 0;
    int done = 0;
    while (total < PRODUCERS * PER) {
        for (base_snode_t *n = base_stack_take(&s); n != NULL; n = n->next) {
            item_t *it = (item_t *)n;
            assert_int_equal(it->seq, next[it->producer]);
            next[it->producer]++;
            total++;
        }
        if (!done) {
            for (int i = 0; i < PRODUCERS; i++)
                pthread_join(th[i], NULL);
            done = 1;
        }
    }
    assert_int_equal(total, PRODUCERS * PER);
    assert_null(base_stack_take(&s));
    free(items);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(take_returns_push_order),
        cmocka_unit_test(many_producers_lose_nothing_and_keep_each_order),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
