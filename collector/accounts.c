/*
 * accounts.c — the bounded user -> account map (contract in accounts.h).
 *
 * 64 shards chosen by the top 6 bits of XXH3_64bits(user). Each shard is a chained hash table
 * (power-of-two buckets, doubled as the shard fills up to its cap, so chains stay O(1) on
 * average) plus an intrusive doubly linked LRU list; one entry is one allocation holding both
 * strings inline.
 * Allocation and free happen outside the shard mutex: the mutex covers only pointer updates
 * and a <= 255-byte copy. count/bytes/evictions are atomics so the readers need no lock.
 */
#include "accounts.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <xxhash.h>

#define ACCOUNTS_SHARDS          64
#define ACCOUNTS_SHARD_BITS      6
#define ACCOUNTS_STR_MAX         255
#define ACCOUNTS_INITIAL_BUCKETS 16

typedef struct acct_entry {
    struct acct_entry *hnext;       /* bucket chain */
    struct acct_entry *prev, *next; /* LRU: head = most recently used */
    uint64_t hash;
    uint16_t ulen, alen, acap; /* acap: room for the account, so a shorter one fits in place */
    bool linked;               /* in the identities topic (read back or acknowledged) since it
                                * last changed */
    char data[];               /* user bytes, then acap account bytes */
} acct_entry_t;

typedef struct acct_shard {
    pthread_mutex_t mu;
    acct_entry_t **buckets; /* mask + 1 heads */
    size_t mask;
    size_t cap;              /* max entries of this shard */
    size_t max_buckets;      /* the table stops doubling here (>= cap) */
    _Atomic size_t nbuckets; /* mask + 1, readable without the lock */
    acct_entry_t *head, *tail;
    _Atomic size_t count;
    _Atomic size_t bytes;
    _Atomic uint64_t evictions;
    char pad[64]; /* keep neighbouring shards' mutexes off one cache line */
} acct_shard_t;

struct accounts {
    acct_shard_t shards[ACCOUNTS_SHARDS];
};

static size_t entry_size(size_t ulen, size_t acap)
{
    return sizeof(acct_entry_t) + ulen + acap;
}

accounts_t *accounts_new(size_t max_entries)
{
    if (max_entries < ACCOUNTS_SHARDS) max_entries = ACCOUNTS_SHARDS;
    accounts_t *a = calloc(1, sizeof *a);
    if (a == NULL) return NULL;
    size_t cap = max_entries / ACCOUNTS_SHARDS;
    size_t max_nb = 1;
    while (max_nb < cap)
        max_nb <<= 1;
    /* Tables start small and double with the shard's population, so a large max_entries costs
     * memory only once users arrive. */
    size_t nb = max_nb < ACCOUNTS_INITIAL_BUCKETS ? max_nb : ACCOUNTS_INITIAL_BUCKETS;
    int i;
    for (i = 0; i < ACCOUNTS_SHARDS; i++) {
        acct_shard_t *s = &a->shards[i];
        s->buckets = calloc(nb, sizeof *s->buckets);
        if (s->buckets == NULL || pthread_mutex_init(&s->mu, NULL) != 0) {
            free(s->buckets);
            break;
        }
        s->mask = nb - 1;
        s->cap = cap;
        s->max_buckets = max_nb;
        atomic_init(&s->nbuckets, nb);
        atomic_init(&s->bytes, nb * sizeof *s->buckets);
    }
    if (i < ACCOUNTS_SHARDS) {
        while (i-- > 0) {
            pthread_mutex_destroy(&a->shards[i].mu);
            free(a->shards[i].buckets);
        }
        free(a);
        return NULL;
    }
    return a;
}

void accounts_free(accounts_t *a)
{
    if (a == NULL) return;
    for (int i = 0; i < ACCOUNTS_SHARDS; i++) {
        acct_shard_t *s = &a->shards[i];
        acct_entry_t *e = s->head;
        while (e != NULL) {
            acct_entry_t *next = e->next;
            free(e);
            e = next;
        }
        free(s->buckets);
        pthread_mutex_destroy(&s->mu);
    }
    free(a);
}

static acct_shard_t *shard_of(accounts_t *a, uint64_t h)
{
    return &a->shards[h >> (64 - ACCOUNTS_SHARD_BITS)];
}

/* Caller holds s->mu. Returns the slot pointing at the entry (or at the chain's NULL end). */
static acct_entry_t **find_slot(acct_shard_t *s, uint64_t h, const char *user, size_t ulen)
{
    acct_entry_t **pp = &s->buckets[h & s->mask];
    while (*pp != NULL) {
        acct_entry_t *e = *pp;
        if (e->hash == h && e->ulen == ulen && memcmp(e->data, user, ulen) == 0) return pp;
        pp = &e->hnext;
    }
    return pp;
}

static void lru_unlink(acct_shard_t *s, acct_entry_t *e)
{
    if (e->prev)
        e->prev->next = e->next;
    else
        s->head = e->next;
    if (e->next)
        e->next->prev = e->prev;
    else
        s->tail = e->prev;
    e->prev = e->next = NULL;
}

static void lru_push_front(acct_shard_t *s, acct_entry_t *e)
{
    e->prev = NULL;
    e->next = s->head;
    if (s->head) s->head->prev = e;
    s->head = e;
    if (s->tail == NULL) s->tail = e;
}

/* Caller holds s->mu. Removes e from its chain and the LRU list; the caller frees it. */
static void entry_remove(acct_shard_t *s, acct_entry_t *e)
{
    acct_entry_t **pp = find_slot(s, e->hash, e->data, e->ulen);
    *pp = e->hnext;
    lru_unlink(s, e);
    atomic_fetch_sub_explicit(&s->count, 1, memory_order_relaxed);
    atomic_fetch_sub_explicit(&s->bytes, entry_size(e->ulen, e->acap), memory_order_relaxed);
}

/*
 * Doubles the shard's bucket array from nb heads. The new array is allocated before taking the
 * lock; under the lock only pointers move (O(entries of this shard), amortized O(1) per learn).
 * On allocation failure the table keeps its size: chains grow longer but stay correct.
 */
static void shard_grow(acct_shard_t *s, size_t nb)
{
    acct_entry_t **nbk = calloc(nb * 2, sizeof *nbk);
    if (nbk == NULL) return;
    acct_entry_t **old = nbk;
    pthread_mutex_lock(&s->mu);
    if (s->mask + 1 == nb) {
        size_t mask = nb * 2 - 1;
        for (acct_entry_t *e = s->head; e != NULL; e = e->next) {
            e->hnext = nbk[e->hash & mask];
            nbk[e->hash & mask] = e;
        }
        old = s->buckets;
        s->buckets = nbk;
        s->mask = mask;
        atomic_store_explicit(&s->nbuckets, nb * 2, memory_order_relaxed);
        atomic_fetch_add_explicit(&s->bytes, nb * sizeof *nbk, memory_order_relaxed);
    }
    pthread_mutex_unlock(&s->mu);
    free(old); /* the replaced array, or ours if another thread grew the table first */
}

const char *accounts_strerror(int err)
{
    switch (err) {
#define ACCOUNTS_X_STR(name, val, msg)                                                             \
    case val:                                                                                      \
        return msg;
        ACCOUNTS_ERRORS(ACCOUNTS_X_STR)
#undef ACCOUNTS_X_STR
    default:
        return "unknown error";
    }
}

static bool entry_is(const acct_entry_t *e, const char *acct, size_t alen)
{
    return e->alen == alen && memcmp(e->data + e->ulen, acct, alen) == 0;
}

static int accounts_put(accounts_t *a, const char *user, size_t ulen, const char *acct, size_t alen,
                        bool linked)
{
    if (a == NULL || user == NULL || acct == NULL || ulen == 0 || alen == 0 ||
        ulen > ACCOUNTS_STR_MAX || alen > ACCOUNTS_STR_MAX)
        return ACCOUNTS_E_INVALID;
    uint64_t h = XXH3_64bits(user, ulen);
    acct_shard_t *s = shard_of(a, h);
    /* The common case, a user's repeated group call: the same link, nothing to allocate. */
    pthread_mutex_lock(&s->mu);
    acct_entry_t *same = *find_slot(s, h, user, ulen);
    if (same != NULL && entry_is(same, acct, alen)) {
        same->linked |= linked;
        lru_unlink(s, same);
        lru_push_front(s, same);
        pthread_mutex_unlock(&s->mu);
        return ACCOUNTS_OK;
    }
    pthread_mutex_unlock(&s->mu);

    /* Allocated before locking; freed after unlocking if an in-place update was enough. */
    acct_entry_t *fresh = malloc(entry_size(ulen, alen));
    if (fresh == NULL) return ACCOUNTS_E_NOMEM;
    fresh->hash = h;
    fresh->ulen = (uint16_t)ulen;
    fresh->alen = fresh->acap = (uint16_t)alen;
    fresh->linked = linked;
    memcpy(fresh->data, user, ulen);
    memcpy(fresh->data + ulen, acct, alen);
    fresh->hnext = fresh->prev = fresh->next = NULL;

    acct_entry_t *garbage = NULL;
    pthread_mutex_lock(&s->mu);
    acct_entry_t **pp = find_slot(s, h, user, ulen);
    acct_entry_t *old = *pp;
    if (old != NULL && old->acap >= alen) {
        /* Another thread may have stored this very link meanwhile: its mark stays. */
        old->linked = linked || (entry_is(old, acct, alen) && old->linked);
        memcpy(old->data + old->ulen, acct, alen);
        old->alen = (uint16_t)alen;
        lru_unlink(s, old);
        lru_push_front(s, old);
        garbage = fresh;
    } else {
        if (old != NULL) {
            entry_remove(s, old);
            garbage = old;
        } else if (atomic_load_explicit(&s->count, memory_order_relaxed) >= s->cap) {
            garbage = s->tail;
            entry_remove(s, garbage);
            atomic_fetch_add_explicit(&s->evictions, 1, memory_order_relaxed);
        }
        /* The removal above may have unlinked the slot we found: look it up again. */
        pp = find_slot(s, h, user, ulen);
        *pp = fresh;
        lru_push_front(s, fresh);
        atomic_fetch_add_explicit(&s->count, 1, memory_order_relaxed);
        atomic_fetch_add_explicit(&s->bytes, entry_size(ulen, alen), memory_order_relaxed);
    }
    pthread_mutex_unlock(&s->mu);
    free(garbage);
    size_t nb = atomic_load_explicit(&s->nbuckets, memory_order_relaxed);
    if (nb < s->max_buckets && atomic_load_explicit(&s->count, memory_order_relaxed) > nb)
        shard_grow(s, nb);
    return ACCOUNTS_OK;
}

int accounts_learn(accounts_t *a, const char *user, size_t ulen, const char *acct, size_t alen)
{
    return accounts_put(a, user, ulen, acct, alen, false);
}

int accounts_learn_linked(accounts_t *a, const char *user, size_t ulen, const char *acct,
                          size_t alen)
{
    return accounts_put(a, user, ulen, acct, alen, true);
}

bool accounts_is_linked(accounts_t *a, const char *user, size_t ulen, const char *acct, size_t alen)
{
    if (a == NULL || user == NULL || acct == NULL || ulen == 0 || ulen > ACCOUNTS_STR_MAX)
        return false;
    uint64_t h = XXH3_64bits(user, ulen);
    acct_shard_t *s = shard_of(a, h);
    pthread_mutex_lock(&s->mu);
    const acct_entry_t *e = *find_slot(s, h, user, ulen);
    bool linked = e != NULL && e->linked && entry_is(e, acct, alen);
    pthread_mutex_unlock(&s->mu);
    return linked;
}

bool accounts_mark_linked(accounts_t *a, const char *user, size_t ulen, const char *acct,
                          size_t alen)
{
    if (a == NULL || user == NULL || acct == NULL || ulen == 0 || ulen > ACCOUNTS_STR_MAX)
        return false;
    uint64_t h = XXH3_64bits(user, ulen);
    acct_shard_t *s = shard_of(a, h);
    pthread_mutex_lock(&s->mu);
    acct_entry_t *e = *find_slot(s, h, user, ulen);
    bool marked = e != NULL && entry_is(e, acct, alen);
    if (marked) e->linked = true;
    pthread_mutex_unlock(&s->mu);
    return marked;
}

bool accounts_forget(accounts_t *a, const char *user, size_t ulen)
{
    if (a == NULL || user == NULL || ulen == 0 || ulen > ACCOUNTS_STR_MAX) return false;
    uint64_t h = XXH3_64bits(user, ulen);
    acct_shard_t *s = shard_of(a, h);
    pthread_mutex_lock(&s->mu);
    acct_entry_t *e = *find_slot(s, h, user, ulen);
    bool found = e != NULL;
    if (found) entry_remove(s, e);
    pthread_mutex_unlock(&s->mu);
    free(e); /* outside the lock, as every free here */
    return found;
}

bool accounts_lookup(accounts_t *a, const char *user, size_t ulen, char *out, size_t outcap,
                     size_t *outlen)
{
    if (a == NULL || user == NULL || ulen == 0 || ulen > ACCOUNTS_STR_MAX || out == NULL)
        return false;
    uint64_t h = XXH3_64bits(user, ulen);
    acct_shard_t *s = shard_of(a, h);
    bool found = false;
    pthread_mutex_lock(&s->mu);
    acct_entry_t *e = *find_slot(s, h, user, ulen);
    if (e != NULL && e->alen <= outcap) {
        memcpy(out, e->data + e->ulen, e->alen);
        if (e->alen < outcap) out[e->alen] = '\0';
        if (outlen) *outlen = e->alen;
        lru_unlink(s, e);
        lru_push_front(s, e);
        found = true;
    }
    pthread_mutex_unlock(&s->mu);
    return found;
}

size_t accounts_count(const accounts_t *a)
{
    size_t n = 0;
    for (int i = 0; i < ACCOUNTS_SHARDS; i++)
        n += atomic_load_explicit(&a->shards[i].count, memory_order_relaxed);
    return n;
}

size_t accounts_bytes(const accounts_t *a)
{
    size_t n = sizeof *a;
    for (int i = 0; i < ACCOUNTS_SHARDS; i++)
        n += atomic_load_explicit(&a->shards[i].bytes, memory_order_relaxed);
    return n;
}

uint64_t accounts_evictions(const accounts_t *a)
{
    uint64_t n = 0;
    for (int i = 0; i < ACCOUNTS_SHARDS; i++)
        n += atomic_load_explicit(&a->shards[i].evictions, memory_order_relaxed);
    return n;
}
