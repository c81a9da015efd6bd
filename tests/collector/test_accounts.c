/* Unit tests for collector/accounts.c: the bounded, sharded LRU user -> account map. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <string.h>
#include <time.h>

#include "../../collector/accounts.c"
#include "base.h"

static int learn(accounts_t *a, const char *u, const char *acct)
{
    return accounts_learn(a, u, strlen(u), acct, strlen(acct));
}

/* Looks u up; returns the account (static buffer) or NULL. */
static const char *lookup(accounts_t *a, const char *u)
{
    static char out[256];
    size_t len = 999;
    if (!accounts_lookup(a, u, strlen(u), out, sizeof out, &len)) return NULL;
    assert_true(len < sizeof out);
    assert_int_equal(strlen(out), len);
    return out;
}

static void test_learn_lookup_replace(void **state)
{
    accounts_t *a = accounts_new(1000);
    assert_non_null(a);
    size_t empty_bytes = accounts_bytes(a);
    assert_null(lookup(a, "u1"));
    assert_int_equal(learn(a, "u1", "acme"), 0);
    assert_int_equal(learn(a, "u2", "globex"), 0);
    assert_string_equal(lookup(a, "u1"), "acme");
    assert_string_equal(lookup(a, "u2"), "globex");
    assert_null(lookup(a, "u3"));
    assert_int_equal(accounts_count(a), 2);
    assert_true(accounts_bytes(a) > empty_bytes);

    /* Replace with a shorter (in place) and then a longer account (new entry). */
    assert_int_equal(learn(a, "u1", "ac"), 0);
    assert_string_equal(lookup(a, "u1"), "ac");
    assert_int_equal(learn(a, "u1", "a-much-longer-account-name"), 0);
    assert_string_equal(lookup(a, "u1"), "a-much-longer-account-name");
    assert_int_equal(accounts_count(a), 2);
    assert_int_equal(accounts_evictions(a), 0);

    /* Keys are bytes, not C strings: embedded NULs and prefixes are distinct users. */
    assert_int_equal(accounts_learn(a, "u\0x", 3, "nul", 3), 0);
    char out[256];
    size_t len;
    assert_true(accounts_lookup(a, "u\0x", 3, out, sizeof out, &len));
    assert_int_equal(len, 3);
    assert_memory_equal(out, "nul", 3);
    assert_false(accounts_lookup(a, "u", 1, out, sizeof out, &len));
    /* An out buffer too small for the account is a miss, never an overflow. */
    assert_false(accounts_lookup(a, "u2", 2, out, 3, &len));
    accounts_free(a);
}

static void test_refuses_bad_strings(void **state)
{
    accounts_t *a = accounts_new(64);
    char s255[256], s256[257];
    memset(s255, 'x', 255);
    s255[255] = '\0';
    memset(s256, 'y', 256);
    s256[256] = '\0';
    assert_int_equal(accounts_learn(a, "", 0, "acct", 4), ACCOUNTS_E_INVALID);
    assert_int_equal(accounts_learn(a, "u", 1, "", 0), ACCOUNTS_E_INVALID);
    assert_int_equal(accounts_learn(a, s256, 256, "acct", 4), ACCOUNTS_E_INVALID);
    assert_int_equal(accounts_learn(a, "u", 1, s256, 256), ACCOUNTS_E_INVALID);
    assert_int_equal(accounts_learn(NULL, "u", 1, "acct", 4), ACCOUNTS_E_INVALID);
    assert_int_equal(accounts_count(a), 0);
    assert_string_equal(accounts_strerror(ACCOUNTS_E_INVALID),
                        "user or account empty or longer than 255 bytes");
    assert_string_equal(accounts_strerror(ACCOUNTS_E_NOMEM), "out of memory");
    assert_string_equal(accounts_strerror(7), "unknown error");
    assert_int_equal(learn(a, s255, s255), ACCOUNTS_OK);
    assert_string_equal(lookup(a, s255), s255);
    assert_false(accounts_lookup(a, s256, 256, s256, sizeof s256, NULL));
    assert_int_equal(accounts_count(a), 1);
    accounts_free(a);
}

/* Users that all land in one shard, so its per-shard cap and LRU order can be observed. */
static int same_shard_users(int shard, char names[][16], int n)
{
    int found = 0;
    for (int i = 0; found < n && i < 1000000; i++) {
        char u[16];
        int len = snprintf(u, sizeof u, "user%d", i);
        uint64_t h = XXH3_64bits(u, (size_t)len);
        if ((int)(h >> (64 - ACCOUNTS_SHARD_BITS)) == shard)
            memcpy(names[found++], u, (size_t)len + 1);
    }
    return found;
}

static void test_lru_eviction_order(void **state)
{
    /* 64 * 4 entries: each shard holds 4. */
    accounts_t *a = accounts_new(256);
    char u[6][16];
    assert_int_equal(same_shard_users(5, u, 6), 6);
    for (int i = 0; i < 4; i++)
        assert_int_equal(learn(a, u[i], "acct"), 0);
    assert_int_equal(accounts_count(a), 4);
    assert_int_equal(accounts_evictions(a), 0);
    /* Touch u0 (lookup) and u1 (re-learn): u2 becomes the least recently used. */
    assert_non_null(lookup(a, u[0]));
    assert_int_equal(learn(a, u[1], "other"), 0);
    assert_int_equal(learn(a, u[4], "acct4"), 0);
    assert_int_equal(accounts_count(a), 4);
    assert_int_equal(accounts_evictions(a), 1);
    assert_null(lookup(a, u[2]));
    assert_non_null(lookup(a, u[0]));
    assert_string_equal(lookup(a, u[1]), "other");
    assert_non_null(lookup(a, u[3]));
    assert_string_equal(lookup(a, u[4]), "acct4");
    /* Order now (MRU first): u4 u3 u1 u0 -> next victim u0. */
    assert_int_equal(learn(a, u[5], "acct5"), 0);
    assert_null(lookup(a, u[0]));
    assert_int_equal(accounts_evictions(a), 2);
    assert_int_equal(accounts_count(a), 4);
    /* Other shards are unaffected by this one's cap. */
    assert_int_equal(learn(a, "someone-else", "x"), 0);
    accounts_free(a);
}

static void test_total_cap_and_bytes(void **state)
{
    accounts_t *a = accounts_new(6400); /* 100 per shard */
    size_t base = accounts_bytes(a);
    char u[32];
    for (int i = 0; i < 50000; i++) {
        int n = snprintf(u, sizeof u, "u-%d", i);
        assert_int_equal(accounts_learn(a, u, (size_t)n, "account-x", 9), 0);
    }
    assert_true(accounts_count(a) <= 6400);
    assert_true(accounts_count(a) > 6000); /* shards fill close to their cap */
    assert_int_equal(accounts_evictions(a), 50000 - accounts_count(a));
    size_t held = accounts_bytes(a) - base;
    assert_true(held >= accounts_count(a) * (sizeof(acct_entry_t) + 12));
    /* entries (12..16 string bytes each) plus the bucket arrays grown from 16 to 128 heads */
    assert_true(held <= accounts_count(a) * (sizeof(acct_entry_t) + 16) +
                            ACCOUNTS_SHARDS * 128 * sizeof(acct_entry_t *));
    for (int s = 0; s < ACCOUNTS_SHARDS; s++)
        assert_int_equal(a->shards[s].mask + 1, 128);
    /* The most recent users are the ones kept. */
    assert_string_equal(lookup(a, "u-49999"), "account-x");
    assert_null(lookup(a, "u-0"));
    accounts_free(a);

    /* Below the minimum, the map still works with one entry per shard. */
    a = accounts_new(1);
    assert_non_null(a);
    assert_int_equal(learn(a, "u", "a"), 0);
    assert_string_equal(lookup(a, "u"), "a");
    accounts_free(a);
    accounts_free(NULL);
}

typedef struct worker {
    accounts_t *a;
    int id;
    int bad;
} worker_t;

/* Each value is derived from its user, so any value read back can be checked. */
static void *worker_main(void *arg)
{
    worker_t *w = arg;
    char u[32], acct[40], out[256];
    unsigned seed = (unsigned)w->id * 7919u + 1;
    for (int i = 0; i < 20000; i++) {
        seed = seed * 1103515245u + 12345u;
        int user = (int)((seed >> 8) % 3000);
        int ul = snprintf(u, sizeof u, "user-%d", user);
        if (seed & 1) {
            int al = snprintf(acct, sizeof acct, "acct-%d-%d", user, (int)(seed >> 20) % 3);
            if (accounts_learn(w->a, u, (size_t)ul, acct, (size_t)al) != 0) w->bad++;
        } else {
            size_t len;
            if (accounts_lookup(w->a, u, (size_t)ul, out, sizeof out, &len)) {
                int prefix = snprintf(acct, sizeof acct, "acct-%d-", user);
                if (len != (size_t)prefix + 1 || memcmp(out, acct, (size_t)prefix) != 0) w->bad++;
            }
        }
    }
    return NULL;
}

/* The "read back" mark (identities.produce skips a link the topic already holds): set only by
 * accounts_learn_linked, kept by a local learn of the same account, lost when the account
 * changes, gone with the user (forget, eviction); accounts_is_linked answers for the exact
 * account only. */
static bool linked(accounts_t *a, const char *u, const char *acct)
{
    return accounts_is_linked(a, u, strlen(u), acct, strlen(acct));
}

static void test_linked_mark(void **state)
{
    (void)state;
    accounts_t *a = accounts_new(64);
    assert_non_null(a);
    assert_false(linked(a, "u1", "acme")); /* unknown user */
    assert_int_equal(learn(a, "u1", "acme"), 0);
    assert_false(linked(a, "u1", "acme")); /* learned locally only: not in the topic yet */
    assert_int_equal(accounts_learn_linked(a, "u1", 2, "acme", 4), 0);
    assert_true(linked(a, "u1", "acme"));
    assert_false(linked(a, "u1", "acm"));   /* another account: a prefix */
    assert_false(linked(a, "u1", "acmex")); /* another account: longer */
    assert_int_equal(learn(a, "u1", "acme"), 0);
    assert_true(linked(a, "u1", "acme")); /* the same link again keeps the mark */
    assert_int_equal(learn(a, "u1", "globex"), 0);
    assert_false(linked(a, "u1", "globex")); /* changed: the topic's latest is still acme */
    assert_false(linked(a, "u1", "acme"));
    assert_int_equal(learn(a, "u1", "acme"), 0);
    assert_false(linked(a, "u1", "acme")); /* back to acme, but the topic may say globex */
    /* A longer account than the entry has room for: a new entry, marked as asked. */
    assert_int_equal(accounts_learn_linked(a, "u1", 2, "a-much-longer-account-id", 24), 0);
    assert_true(linked(a, "u1", "a-much-longer-account-id"));
    assert_string_equal(lookup(a, "u1"), "a-much-longer-account-id");
    assert_true(accounts_forget(a, "u1", 2));
    assert_false(linked(a, "u1", "a-much-longer-account-id"));
    /* Eviction: 64 entries, one shard holds one; a second user of u2's shard replaces it. */
    assert_int_equal(accounts_learn_linked(a, "u2", 2, "acme", 4), 0);
    char other[32];
    uint64_t shard = XXH3_64bits("u2", 2) >> (64 - ACCOUNTS_SHARD_BITS);
    for (int i = 0;; i++) {
        snprintf(other, sizeof other, "x%d", i);
        if (XXH3_64bits(other, strlen(other)) >> (64 - ACCOUNTS_SHARD_BITS) == shard) break;
    }
    assert_int_equal(learn(a, other, "acme"), 0);
    assert_null(lookup(a, "u2"));
    assert_false(linked(a, "u2", "acme"));
    assert_false(linked(a, other, "acme"));
    assert_false(accounts_is_linked(NULL, "u2", 2, "acme", 4));
    accounts_free(a);
}

/* Kafka acknowledged a produced link: marked only while the map still holds exactly it. */
static void test_mark_linked_on_ack(void **state)
{
    (void)state;
    accounts_t *a = accounts_new(64);
    assert_non_null(a);
    assert_false(accounts_mark_linked(a, "u1", 2, "acme", 4)); /* unknown user: nothing made */
    assert_null(lookup(a, "u1"));
    assert_int_equal(learn(a, "u1", "acme"), 0);
    assert_false(linked(a, "u1", "acme"));
    assert_false(accounts_mark_linked(a, "u1", 2, "acm", 3)); /* another account */
    assert_false(linked(a, "u1", "acme"));
    assert_true(accounts_mark_linked(a, "u1", 2, "acme", 4));
    assert_true(linked(a, "u1", "acme"));
    /* An older request's ack after the user moved on: the newer link stays unmarked. */
    assert_int_equal(learn(a, "u1", "globex"), 0);
    assert_false(accounts_mark_linked(a, "u1", 2, "acme", 4));
    assert_false(linked(a, "u1", "acme"));
    assert_false(linked(a, "u1", "globex"));
    assert_string_equal(lookup(a, "u1"), "globex");
    assert_true(accounts_mark_linked(a, "u1", 2, "globex", 6));
    assert_true(linked(a, "u1", "globex"));
    assert_false(accounts_mark_linked(NULL, "u1", 2, "globex", 6));
    assert_false(accounts_mark_linked(a, "u1", 0, "globex", 6));
    accounts_free(a);
}

static void test_concurrent(void **state)
{
    accounts_t *a = accounts_new(2048); /* 32 per shard: tables grow and evict under contention */
    worker_t w[4];
    pthread_t t[4];
    int64_t t0 = base_mono_ms();
    for (int i = 0; i < 4; i++) {
        w[i] = (worker_t){a, i, 0};
        assert_int_equal(pthread_create(&t[i], NULL, worker_main, &w[i]), 0);
    }
    for (int i = 0; i < 4; i++) {
        pthread_join(t[i], NULL);
        assert_int_equal(w[i].bad, 0);
    }
    assert_true(base_mono_ms() - t0 < 30000);
    assert_true(accounts_count(a) <= 2048);
    assert_true(accounts_evictions(a) > 0);
    /* Walk every shard: list length equals the count, and the chains hold the same entries. */
    size_t total = 0;
    for (int s = 0; s < ACCOUNTS_SHARDS; s++) {
        acct_shard_t *sh = &a->shards[s];
        size_t n = 0;
        for (acct_entry_t *e = sh->head; e; e = e->next) {
            assert_true(n < 1000);
            assert_ptr_equal(*find_slot(sh, e->hash, e->data, e->ulen), e);
            if (e->next)
                assert_ptr_equal(e->next->prev, e);
            else
                assert_ptr_equal(sh->tail, e);
            n++;
        }
        assert_int_equal(n, sh->count);
        assert_true(n <= sh->cap);
        total += n;
    }
    assert_int_equal(total, accounts_count(a));
    size_t grown = 0;
    for (int s = 0; s < ACCOUNTS_SHARDS; s++)
        grown += a->shards[s].mask + 1 == 32;
    assert_true(grown > ACCOUNTS_SHARDS / 2); /* tables doubled from 16 while threads ran */
    accounts_free(a);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_learn_lookup_replace), cmocka_unit_test(test_refuses_bad_strings),
        cmocka_unit_test(test_lru_eviction_order),   cmocka_unit_test(test_total_cap_and_bytes),
        cmocka_unit_test(test_concurrent),           cmocka_unit_test(test_linked_mark),
        cmocka_unit_test(test_mark_linked_on_ack),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
