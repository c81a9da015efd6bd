/*
 * pql_internal.h — what the files of the PQL engine share and nobody else may touch: the
 * tracker's layout (struct pql, shards, accounts) and the few engine functions that more than
 * one file calls (pql__ prefix). The contract is pql.h.
 *
 *   pql.c           config compiled for the hot path, account table + LRU, records carried by
 *                   a request, walks and sweeps, statistics
 *   pql_score.c     per-account counters, rules, score and tier, top users, signals (pql_feed)
 *   pql_feeder.c    records handed over by the loops (pql_submit) and the feeder thread
 *   pql_admin.c     the admin answers: one account, the top accounts (JSON)
 *   pql_hll.c       HyperLogLog (pql_hll.h)
 *   pql_snapshot.c  the snapshot file format: write and load; one account's record
 *   pql_changelog.c per-account export/import and the changed/removed accounts (sluice-stream)
 *   pql_saver.c     the snapshot worker (base_worker)
 */
#ifndef SLUICE_PQL_INTERNAL_H
#define SLUICE_PQL_INTERNAL_H

#include <jansson.h>
#include <pthread.h>
#include <semaphore.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "base.h"
#include "pql.h"
#include "pql_hll.h"

/* Shards: independent locks for concurrent feeders and readers. */
#define PQL_SHARDS 256
/* A worker walk (snapshot, sweep, top) holds a shard lock for at most PQL_WALK_STEPS accounts
 * (visited or skipped) and stops a hold early once the visited accounts' memory reaches
 * PQL_WALK_BYTES: an exact-mode account serializes in well under a microsecond, so a hold is a
 * few tens of microseconds; a sketch-mode account (~80 KiB) is alone in its hold, which then
 * costs about what one event's update of that account costs (a union rebuild). */
#define PQL_WALK_STEPS 32
#define PQL_WALK_BYTES (64 * 1024)
#define PQL_SHARD_BITS 8
#define PQL_SIGNAL_TOP 5
#define PQL_MAX_SETS   (1 + PQL_CONFIG_MAX_RULES)
#define DAY_MS         86400000LL
#define NO_TIER        (-1)

typedef struct pql_rule {
    int metric;
    double at_least, min_recent;
    uint32_t points;
    uint32_t recent_b; /* velocity: recent period in buckets */
    double periods;    /* velocity: periods of that length in the rest of the window */
    int set;           /* count set (events, events_velocity, event_seen) */
    int agg_recent;    /* velocity: index of its recent count in agg[] */
    int uv;            /* users_velocity: index among the users_velocity rules */
    const char *name;
} pql_rule_t;

/* An event-name list; set 0 (all events) has none. */
typedef struct pql_set {
    char **names;
    size_t *lens;
    size_t n;
} pql_set_t;

typedef struct pql_user {
    uint64_t h;
    uint32_t first, last; /* buckets */
} pql_user_t;

typedef struct pql_top {
    uint64_t h;
    uint32_t count;
    uint8_t len;
    uint8_t cap; /* id's allocation holds cap + 1 bytes (a multiple of 16): reused in place */
    char *id;
} pql_top_t;

typedef struct pql_sketch {
    uint32_t built_head; /* the head the unions were built for (they depend on nothing else) */
    uint32_t *day_of;    /* ring slot -> day it holds, UINT32_MAX empty */
    pql_hll_t *days;     /* n_days ring, slot = day % n_days */
    pql_hll_t *uni;      /* 1 + n_uv: [0] the window, [1+i] days before uv rule i's period */
} pql_sketch_t;

typedef struct pql_acct pql_acct_t;
struct pql_acct {
    pql_acct_t *hnext;
    pql_acct_t *lprev, *lnext; /* shard LRU: head most recent */
    pql_acct_t *dprev, *dnext; /* shard dirty list (changelog tracking), valid while dirty */
    uint64_t h;
    uint32_t head;      /* newest bucket */
    uint32_t *slots;    /* n_slots x stride: bucket, counts[n_sets] */
    uint32_t *agg;      /* aggregates (pql_t.n_agg), in the same allocation as the account */
    uint32_t *tier_sig; /* n_tiers: bucket + 1 of the last signal, 0 never */
    pql_user_t *users;  /* exact mode */
    pql_sketch_t *sk;   /* sketch mode (users == NULL) */
    pql_top_t *top;
    uint32_t score;
    uint32_t bytes;
    uint16_t n_slots, cap_slots, n_users, cap_users;
    uint8_t n_top;
    int8_t tier;
    uint8_t walk_gen; /* the last worker walk that visited it (see shard_walk) */
    uint8_t id_len;
    uint8_t dirty; /* on the shard's dirty list: changed since the last pql_changes_flush */
    char id[];
};

typedef struct pql_shard {
    pthread_mutex_t mu;
    pql_acct_t **tab;
    size_t cap, n, max;
    pql_acct_t *lru_head, *lru_tail;
    pql_acct_t *cursor;     /* a walk's next account (towards lru_head), kept valid by lru_unlink */
    pql_acct_t *dirty_head; /* changelog tracking: accounts changed since the last flush */
    base_buf_t gone;        /* changelog tracking: ids (len byte + id) removed since then */
} pql_shard_t;

/* Records handed over by pql_submit: a lock-free stack (push CAS, take-all exchange). */
typedef struct pql_batch {
    base_snode_t node; /* first: a taken node is its batch */
    int64_t now_ms;
    size_t len;
    char *data;
} pql_batch_t;

struct pql {
    pql_signal_cb cb;
    void *ud;
    uint32_t bucket_ms, window_b, late_b, day_b, n_days;
    size_t n_rules, n_tiers, n_sets, n_uv, stride, n_agg;
    size_t agg_days, agg_users;
    size_t n_ev;                            /* events_velocity rules */
    uint8_t ev_rules[PQL_CONFIG_MAX_RULES]; /* their indices */
    uint8_t uv_rules[PQL_CONFIG_MAX_RULES]; /* users_velocity rules, by uv index */
    pql_rule_t rules[PQL_CONFIG_MAX_RULES];
    pql_set_t sets[PQL_MAX_SETS];
    char *tier_names[PQL_CONFIG_MAX_TIERS];
    uint32_t tier_th[PQL_CONFIG_MAX_TIERS];
    char *rule_names[PQL_CONFIG_MAX_RULES];
    uint64_t fingerprint;
    pql_shard_t shards[PQL_SHARDS];
    _Atomic uint64_t n_accounts, bytes, evictions, expired, late, signals;
    _Atomic uint64_t by_tier[PQL_CONFIG_MAX_TIERS];
    char metric_names[PQL_CONFIG_MAX_TIERS][96];
    /* Worker walks: one at a time (walk_mu, never taken by a loop thread). */
    pthread_mutex_t walk_mu;
    _Atomic uint32_t walk_gen;
    _Atomic uint64_t walk_holds, walk_max_steps; /* tests: every hold bounded */
    void (*walk_hook)(void *ud);                 /* tests: runs between two holds, no lock held */
    void *walk_hook_ud;
    /* The feeder thread (pql_feeder_start). */
    base_stack_t inbox;
    _Atomic uint64_t q_bytes, q_dropped;
    uint64_t q_max;
    sem_t q_sem;
    atomic_bool q_stop;
    bool feeder_on;
    bool orphaned; /* a saver stop timed out: its tick may still use p, never freed */
    pthread_t feeder;
    /* Changelog tracking (pql_changes_track): off in the collector. */
    bool track;
    _Atomic uint64_t gone_lost; /* tombstones not kept (the gone buffer at its cap) */
};

typedef void (*walk_visit_fn)(pql_t *p, pql_shard_t *sh, pql_acct_t *a, void *ud);
typedef void (*walk_flush_fn)(pql_t *p, void *ud);

/* Engine functions shared between the PQL files (each documented where it is defined). */
pql_acct_t *pql__acct_create(pql_t *p, pql_shard_t *sh, uint64_t h, const char *id, size_t len);
pql_acct_t *pql__acct_find(pql_shard_t *sh, uint64_t h, const char *id, size_t len);
void pql__acct_remeasure(pql_t *p, pql_acct_t *a);
void pql__acct_remove(pql_t *p, pql_shard_t *sh, pql_acct_t *a);
void pql__acct_forget(pql_t *p, pql_shard_t *sh, pql_acct_t *a); /* no tombstone */
void pql__recompute(pql_t *p, pql_acct_t *a);
uint32_t pql__score_of(const pql_t *p, const pql_acct_t *a);
pql_shard_t *pql__shard_of(pql_t *p, uint64_t h);
uint32_t *pql__slot_at(const pql_t *p, const pql_acct_t *a, size_t i);
int pql__to_sketch(pql_t *p, pql_acct_t *a);
bool pql__top_touch(pql_acct_t *a, uint64_t uh, const char *user, size_t len);
void pql__walk_all(pql_t *p, walk_visit_fn visit, walk_flush_fn flush, void *ud);
void pql__lru_unlink(pql_shard_t *sh, pql_acct_t *a);
void pql__lru_front(pql_shard_t *sh, pql_acct_t *a);
struct pql_sig;
bool pql__evaluate(pql_t *p, pql_acct_t *a, const pql_event_t *ev, struct pql_sig *sg);
json_t *pql__rules_json(const pql_t *p, const pql_acct_t *a, bool only_holding);
void pql__acct_touched(pql_t *p, pql_shard_t *sh, pql_acct_t *a);
void pql__acct_serialize(const pql_t *p, const pql_acct_t *a, base_buf_t *b, int *rc);
int pql__acct_restore(pql_t *p, const unsigned char *d, size_t len, size_t *used, bool replace);
double pql__users_active(const pql_t *p, const pql_acct_t *a);
json_t *pql__users_json(const pql_acct_t *a, size_t k);

/* Test hooks (tests/collector/test_pql.c links the module instead of #including its files): each
 * calls the static function of pql_score.c it is named after; nothing else calls them. */
/* The value rule ru compares with at_least for account a; *recent (when not NULL) gets the
 * recent part of a two-part rule. */
double pql__rule_value(const pql_t *p, const pql_acct_t *a, const pql_rule_t *ru, double *recent);
/* Sketch-mode "new users" in the recent window of rule ru (exact counter in exact mode). */
double pql__users_new_recent(const pql_t *p, const pql_acct_t *a, const pql_rule_t *ru);

#endif
