/*
 * ingest.h — one readable request body to durable Kafka messages and back to an answer
 * (SPEC §2–§4): decode → authenticate (body writeKey) → rate-limit → normalize → encode and
 * produce every event (valid ones to the events topic, invalid ones with their reason to the
 * rejected topic, and each accepted group call's userId → groupId link to the identities topic
 * when identities.produce), all into one Kafka delivery group → wait for every delivery report
 * → answer.
 *
 * Threads: ingest_start() and ingest_finish() run on the request's event-loop thread (the
 * encoding is CPU work, never blocking). The group's done callback runs on Kafka's poll thread
 * (or inside ingest_start when nothing was produced); it only pushes the request onto the loop's
 * lock-free mailbox and wakes the loop with uv_async_send. The loop pops it and calls
 * ingest_finish().
 *
 * Durability: the answer is 200 only when every message of the request was acknowledged.
 * Any produce refusal or failed delivery makes it 503 (Retry-After), and the request's events
 * are then not remembered as seen. Fail fast (SPEC §3): when Kafka is known down
 * (kafka_out_down) ingest_start refuses at once with 503 kafka_unavailable, before the rate
 * limit and dedup, so nothing is produced or reserved.
 *
 * Spool (SPEC §4, spool.h), when ctx->spool is set: a request goes to the spool when Kafka is
 * known down or the spool still holds undelivered records (so per-key order holds: nothing new
 * overtakes what is spooled), and from the message Kafka's queue refuses (QUEUE_FULL) on. Its
 * group then completes when the spool's group commit is fsync'd: 200 as for a Kafka ack, 503 on
 * a write error (events released from dedup). Fail fast then applies only when the spool is
 * full too (503 kafka_unavailable; 503 spool_full when Kafka is up but the spool is busy and
 * full). Dedup and PQL see spooled events exactly as delivered ones.
 *
 * Dedup (SPEC §5, dedup.h): after the filters, every valid event's (source, messageId) is
 * reserved PENDING; copies already remembered or repeated inside the request are not produced
 * and are counted in "duplicates". The reservations are committed in ingest_finish when every
 * report is a success, and released otherwise — on the real delivery reports, not at the HTTP
 * delivery_timeout (a request answered 503 at the deadline may still be delivered later; then
 * it is remembered and the client's retry is a duplicate, as it should be). A copy of an event
 * that another request is still delivering is not produced either; this request answers 200
 * only if, once its own messages are acknowledged, that event is remembered (delivered); else
 * 503 + Retry-After: 1, since a 200 could lose the event if that delivery failed.
 *
 * Journal (dedup_journal.h): with ctx->journal set, a request whose messages were all
 * acknowledged goes from its done callback to the journal writer, which fsyncs its fingerprints,
 * commits them in dedup and only then pushes it to the mailbox: the 200 leaves after both the
 * Kafka ack and the journal fsync. A request the journal cannot take (queue full, stopping) is
 * committed in ingest_finish as without a journal.
 */
#ifndef SLUICE_INGEST_H
#define SLUICE_INGEST_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <uv.h>

#include "accounts.h"
#include "base.h"
#include "auth.h"
#include "body.h"
#include "config.h"
#include "dedup.h"
#include "dedup_journal.h"
#include "kafka_out.h"
#include "proto.h"
#include "reload.h"
#include "spool.h"

/* Shared by every loop; immutable after ingest_ctx_init except the atomic counter. */
typedef struct ingest_ctx {
    const config_t *cfg;
    kafka_out_t *ko;
    auth_t *auth;
    accounts_t *accounts;          /* may be NULL: no account learning */
    struct identities *identities; /* may be NULL: identities.consume off (identities.h); /readyz
                                    * waits for its catch-up. Set after ingest_ctx_init (main). */
    reload_t *reload; /* filter rules (SPEC §5); NULL: none. Set after ingest_ctx_init */
    struct pql *pql;  /* may be NULL: PQL off. Set after ingest_ctx_init (main). Delivered
                       * events are fed in ingest_finish's success branch only, so a failed
                       * request's retry is not counted twice (records: pql_record_append). */
    dedup_t *dedup;   /* may be NULL: dedup off (dedup.window 0). Set after ingest_ctx_init */
    struct dedup_journal *journal; /* may be NULL: no journal (dedup.journal false). A delivered
                                    * request's reservations go through it before its answer */
    spool_t *spool; /* may be NULL: spool off (spool.enabled false). Set after init */
    proto_limits_t limits;
    atomic_uint in_flight; /* requests started and not yet finished, all loops */
} ingest_ctx_t;

/* None of the pointers is owned; all must outlive the context. Never fails. */
void ingest_ctx_init(ingest_ctx_t *ctx, const config_t *cfg, kafka_out_t *ko, auth_t *auth,
                     accounts_t *accounts);

/* Per-loop reusable working memory: the decompression buffer (body_bytes), the decoder
 * contexts, the encoding buffer and the decode arena (at most PROTO_ARENA_KEEP_MAX kept between
 * requests). Owned by one loop thread. */
typedef struct ingest_scratch {
    body_decoder_t dec;
    char *plain;
    size_t plain_cap;
    base_buf_t enc;
    proto_arena_t arena;
    dedup_scratch_t dedup; /* in-request duplicate set */
    uint64_t id_seed[2];   /* generated messageIds (proto_norm_ctx_t): random per loop */
    uint64_t id_seq;
} ingest_scratch_t;

/* Returns 0, or -1 when memory is short (then ingest_scratch_free is still safe). */
int ingest_scratch_init(ingest_scratch_t *s, const config_t *cfg);
void ingest_scratch_free(ingest_scratch_t *s);

typedef struct ingest_req ingest_req_t;

/* Multi-producer single-consumer stack of finished requests (the base layer's base_stack_t).
 * Any thread may push; only the owning loop takes. async is the loop's wake-up handle and must
 * stay open while any request that points at this mailbox can still be pushed. */
typedef struct ingest_mailbox {
    base_stack_t stack;
    uv_async_t *async;
} ingest_mailbox_t;

void ingest_mailbox_init(ingest_mailbox_t *mb, uv_async_t *async);
/* Lock-free; wakes the loop. After the push the request belongs to the loop: don't touch it. */
void ingest_mailbox_push(ingest_mailbox_t *mb, ingest_req_t *req);
/* Takes every pushed request, oldest first, as a list linked through ingest_req_next(). */
ingest_req_t *ingest_mailbox_take(ingest_mailbox_t *mb);
ingest_req_t *ingest_req_next(const ingest_req_t *req);

struct ingest_req {
    kafka_group_t group; /* group.ud == this request */
    base_snode_t node;   /* mailbox link */
    ingest_mailbox_t *mailbox;
    ingest_ctx_t *ctx;
    void *owner; /* whoever waits for the answer (a connection); NULL once it left */
    ingest_req_t *lprev, *lnext; /* the owner loop's list of live requests (loop thread only) */
    uint64_t start_ns;           /* uv_hrtime() at request start */
    uint32_t n_events, n_accepted, n_rejected, n_filtered;
    int produce_err;   /* kafka_err_t of the first refused produce, 0 if none */
    base_buf_t answer; /* the 200 body, built while producing */
    base_buf_t pql;    /* PQL records of the accepted events (ctx->pql set), fed on success */
    base_buf_t links;  /* identities links produced to Kafka, marked "in the topic" on success */

    uint32_t n_duplicates; /* valid events skipped as duplicates (answer's "duplicates") */
    uint32_t n_dedup;      /* dedup_fps[0..n_dedup): reserved (PENDING) by this request,
                            * committed on success, released otherwise, in ingest_finish */
    uint32_t n_wait;       /* dedup_fps[n_dedup..+n_wait): copies PENDING for other requests,
                            * which must be remembered by the end for a 200 */
    uint64_t *dedup_fps;
    dedup_journal_req_t jreq; /* the trip through the journal (ctx->journal set) */
    bool journaled;           /* the journal committed dedup_fps[0..n_dedup) in dedup */

    /* Spool (spool.h): from the first message that needs it on (Kafka down or the spool busy
     * at the start, or Kafka's queue full midway), the request's messages are encoded into
     * spool_recs and submitted as one batch that holds the group until it is fsync'd. */
    bool spooling;
    base_buf_t spool_recs;
    spool_batch_t spool_batch;
    int spool_err; /* spool_err_t of a refused encode or submit, 0 if none */
};

typedef struct ingest_input {
    proto_type_t kind; /* PROTO_T_NONE: /v1/batch; else the single-call type */
    proto_format_t fmt;
    body_encoding_t enc;
    const char *body; /* as received; need only live during ingest_start */
    size_t len;
    bool header_key;    /* a key came in the Authorization header, already looked up: */
    const char *source; /*   its source (owned by auth) */
    int key_index;      /*   its rate bucket */
    uint64_t start_ns;
} ingest_input_t;

/* A request-level refusal: HTTP status, machine code, human message (static strings). */
typedef struct ingest_error {
    int status;
    const char *code;
    const char *message;
    int retry_after; /* seconds, 0 = no Retry-After */
} ingest_error_t;

/*
 * Runs the request up to "every message queued, group sealed". On success returns 0 and
 * *req_out (owned by the caller's loop from now on, but it must not be freed until it came back
 * through mb; ctx->in_flight counts it). On refusal (400/401/413/429/503) returns -1, fills *err
 * and nothing was produced.
 */
int ingest_start(ingest_ctx_t *ctx, ingest_scratch_t *s, ingest_mailbox_t *mb,
                 const ingest_input_t *in, ingest_req_t **req_out, ingest_error_t *err);

/* The final answer of a request back from the mailbox. body is valid until ingest_req_free. */
typedef struct ingest_reply {
    int status;
    int retry_after;
    const char *code, *message; /* for errors (status != 200) */
    const char *body;           /* for 200: the JSON answer */
    size_t body_len;
} ingest_reply_t;

/* Decides 200 or 503, counts the metrics and releases the in-flight slot. Call exactly once per
 * request, on its loop, after it came out of the mailbox. */
void ingest_finish(ingest_req_t *req, ingest_reply_t *reply);
/* Frees a request. Only after ingest_finish, or at teardown once no done callback can run. */
void ingest_req_free(ingest_req_t *req);

/* Appends {"success":false,"error":CODE,"message":MSG}. Returns 0 or PROTO_E_NOMEM. */
int ingest_error_json(base_buf_t *out, const char *code, const char *message);

#endif
