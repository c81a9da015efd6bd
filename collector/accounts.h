/*
 * accounts.h — the bounded user -> account map learned from `group` calls (SPEC §2: accountId
 * falls back to "the account that this user was last seen joining through a group call").
 *
 * Sharded (64 shards, one mutex each, held only for a hash-table operation: never during I/O),
 * LRU per shard. At max_entries the least recently used user of the shard is forgotten.
 * Keys and values are copied in; nothing returned points into the map.
 *
 * Each link also remembers whether the identities topic holds it: read back by the identities
 * consumer (accounts_learn_linked), or acknowledged by Kafka when this collector produced it
 * (accounts_mark_linked). A group call whose link the topic already holds need not be produced
 * again (accounts_is_linked), which a compacted topic would only collapse.
 */
#ifndef SLUICE_ACCOUNTS_H
#define SLUICE_ACCOUNTS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* X(NAME, value, "message"). 0 = OK, negative = failure; append-only. */
#define ACCOUNTS_ERRORS(X)                                                                         \
    X(OK, 0, "ok")                                                                                 \
    X(E_NOMEM, -1, "out of memory")                                                                \
    X(E_INVALID, -2, "user or account empty or longer than 255 bytes")

typedef enum {
#define ACCOUNTS_X_ENUM(name, val, msg) ACCOUNTS_##name = val,
    ACCOUNTS_ERRORS(ACCOUNTS_X_ENUM)
#undef ACCOUNTS_X_ENUM
} accounts_err_t;

/* Message for an accounts_err_t; "unknown error" for other values. Never NULL. */
const char *accounts_strerror(int err);

typedef struct accounts accounts_t;

/* max_entries >= 64. Returns NULL on allocation failure. Free with accounts_free(). */
accounts_t *accounts_new(size_t max_entries);
void accounts_free(accounts_t *a);

/* Remembers that user joined account (replacing any earlier account). A link the map already
 * holds with the same account keeps its "read back" mark; a new or changed one has none. Returns
 * ACCOUNTS_OK, ACCOUNTS_E_INVALID when either string is empty or longer than 255 bytes (or a is
 * NULL), or ACCOUNTS_E_NOMEM; on failure the map is unchanged. A repeated link allocates
 * nothing. */
int accounts_learn(accounts_t *a, const char *user, size_t ulen, const char *acct, size_t alen);

/* As accounts_learn, for a link read back from the identities topic: marks it "read back". */
int accounts_learn_linked(accounts_t *a, const char *user, size_t ulen, const char *acct,
                          size_t alen);

/* Marks the link user -> acct "in the topic" (Kafka acknowledged its produce) when the map still
 * holds exactly that link; a user since moved to another account, or forgotten, is left alone
 * (the later link is the latest record, or will be). Returns true when marked. Allocates
 * nothing and does not touch the LRU order. */
bool accounts_mark_linked(accounts_t *a, const char *user, size_t ulen, const char *acct,
                          size_t alen);

/* True when user is remembered with account acct and that link was read back from the
 * identities topic or acknowledged by it since it last changed (so the topic holds it as its
 * latest record for the user, as far as this collector knows). Does not touch the LRU order. */
bool accounts_is_linked(accounts_t *a, const char *user, size_t ulen, const char *acct,
                        size_t alen);

/* Forgets user (an identities tombstone, identities.h). Returns true when it was remembered. */
bool accounts_forget(accounts_t *a, const char *user, size_t ulen);

/* Copies the account of user into out (outcap >= 256 always suffices) and sets *outlen.
 * Returns true when found (and marks it recently used). */
bool accounts_lookup(accounts_t *a, const char *user, size_t ulen, char *out, size_t outcap,
                     size_t *outlen);

size_t accounts_count(const accounts_t *a); /* users remembered */
size_t accounts_bytes(const accounts_t *a); /* memory held, approximately */
uint64_t accounts_evictions(const accounts_t *a);

#endif
