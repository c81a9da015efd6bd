/*
 * ingest.c — decode, validate, normalize, produce, answer (see ingest.h for the contract).
 */
#include "ingest.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>
#include <unistd.h>

#include "base.h"
#include "log.h"
#include "metrics.h"
#include "pql.h"

/* Appends a string literal (its length known at compile time, no NUL). */
#define buf_lit(out, lit) base_buf_append((out), (lit), sizeof(lit) - 1)

/* The errors array of an answer lists at most this many events ("errors_truncated" beyond). */
#define INGEST_MAX_ERRORS 100
/* Answer body cap: 100 errors of at most ~260 bytes each, plus the counters. */
#define INGEST_ANSWER_MAX (64 * 1024)
/* SPEC §2: a corrected timestamp more than 24 h ahead is clamped. */
#define INGEST_MAX_FUTURE_MS (24LL * 3600 * 1000)
/* PQL records one request may carry (~3 x the ids of 10000 events at most). */
#define INGEST_PQL_MAX (4 * 1024 * 1024)
/* Identities links one request remembers to mark "in the topic" once Kafka acknowledged them
 * (each 2 + user + account bytes, so at least 128 links of the longest ids). Beyond it the rest
 * are not marked: they are produced again by the next group call that repeats them, until the
 * identities consumer reads them back. */
#define INGEST_LINKS_MAX (64 * 1024)
/* Retry-After for "cannot make events durable now". */
#define INGEST_RETRY_AFTER_S 5
/* A request's spool batch: its records re-encoded with their headers (rejected ones embed the
 * raw event, up to twice the body), plus slack. */
#define INGEST_SPOOL_SLACK (1u << 20)
/* Retry-After of a fail-fast 503 (Kafka known down): short, since the producer reconnects
 * within 500 ms of the broker's return and readiness follows within the probe interval. */
#define INGEST_FAIL_FAST_RETRY_AFTER_S 2

void ingest_ctx_init(ingest_ctx_t *ctx, const config_t *cfg, kafka_out_t *ko, auth_t *auth,
                     accounts_t *accounts)
{
    ctx->cfg = cfg;
    ctx->ko = ko;
    ctx->auth = auth;
    ctx->accounts = accounts;
    ctx->identities = NULL;
    ctx->pql = NULL;
    ctx->dedup = NULL;
    ctx->journal = NULL;
    ctx->spool = NULL;
    ctx->reload = NULL;
    ctx->limits = proto_limits_default();
    ctx->limits.event_bytes = (size_t)cfg->event_bytes;
    ctx->limits.body_bytes = (size_t)cfg->body_bytes;
    ctx->limits.max_depth = cfg->max_depth;
    if (cfg->max_events > 0) ctx->limits.max_events = cfg->max_events;
    atomic_init(&ctx->in_flight, 0);
}

int ingest_scratch_init(ingest_scratch_t *s, const config_t *cfg)
{
    body_decoder_init(&s->dec);
    s->plain_cap = (size_t)cfg->body_bytes;
    s->plain = malloc(s->plain_cap > 0 ? s->plain_cap : 1);
    /* A rejected record embeds the raw event, which may be as large as the body, escaped. */
    base_buf_init(&s->enc, 2 * (size_t)cfg->body_bytes + 64 * 1024);
    proto_arena_init(&s->arena);
    /* Seeds of this loop's generated messageIds (SPEC §2): random, so no two loops or processes
     * share a sequence; when the kernel gives no randomness, clock, pid and address stand in. */
    s->id_seq = 0;
    if (getrandom(s->id_seed, sizeof s->id_seed, GRND_NONBLOCK) != (ssize_t)sizeof s->id_seed) {
        s->id_seed[0] = (uint64_t)base_wall_ms() * 0x9e3779b97f4a7c15ULL ^ (uint64_t)getpid();
        s->id_seed[1] = base_mono_ns() ^ (uint64_t)(uintptr_t)s;
    }
    return s->plain != NULL ? 0 : -1;
}

void ingest_scratch_free(ingest_scratch_t *s)
{
    body_decoder_free(&s->dec);
    free(s->plain);
    s->plain = NULL;
    base_buf_free(&s->enc);
    proto_arena_free(&s->arena);
    dedup_scratch_free(&s->dedup);
}

void ingest_mailbox_init(ingest_mailbox_t *mb, uv_async_t *async)
{
    base_stack_init(&mb->stack);
    mb->async = async;
}

static ingest_req_t *req_of(base_snode_t *n)
{
    return n != NULL ? (ingest_req_t *)((char *)n - offsetof(ingest_req_t, node)) : NULL;
}

void ingest_mailbox_push(ingest_mailbox_t *mb, ingest_req_t *req)
{
    (void)base_stack_push(&mb->stack, &req->node);
    /* uv_async_send coalesces wake-ups; the loop always takes the whole stack. */
    uv_async_send(mb->async);
}

ingest_req_t *ingest_mailbox_take(ingest_mailbox_t *mb)
{
    return req_of(base_stack_take(&mb->stack));
}

ingest_req_t *ingest_req_next(const ingest_req_t *req)
{
    return req_of(req->node.next);
}

int ingest_error_json(base_buf_t *out, const char *code, const char *message)
{
    int rc = buf_lit(out, "{\"success\":false,\"error\":");
    if (rc == 0) rc = proto_json_str(out, code, strlen(code));
    if (rc == 0) rc = buf_lit(out, ",\"message\":");
    if (rc == 0) rc = proto_json_str(out, message, strlen(message));
    if (rc == 0) rc = buf_lit(out, "}");
    return rc;
}

static void refuse(ingest_error_t *err, int status, const char *code, const char *message,
                   int retry_after)
{
    err->status = status;
    err->code = code;
    err->message = message;
    err->retry_after = retry_after;
}

/* Where a new request's messages can go (contract in ingest.h): *to_spool when it must go to
 * the spool. Returns true (err filled) when neither Kafka nor the spool can take it now — SPEC
 * §3's fail fast: answered at once, not after kafka.delivery_timeout. Called before the rate
 * limit, so a refused request spends none of the key's budget. */
static bool cannot_take(ingest_ctx_t *ctx, bool *to_spool, ingest_error_t *err)
{
    bool down = kafka_out_down(ctx->ko);
    *to_spool = ctx->spool != NULL && (down || spool_busy(ctx->spool));
    if (*to_spool && spool_has_room(ctx->spool)) return false;
    if (down) {
        metrics_add(METRIC_KAFKA_FAIL_FAST, 1);
        refuse(err, 503, "kafka_unavailable",
               ctx->spool != NULL ? "Kafka is unreachable and the spool is full; retry later"
                                  : "Kafka is unreachable; retry later",
               INGEST_FAIL_FAST_RETRY_AFTER_S);
        return true;
    }
    if (*to_spool) {
        metrics_add(METRIC_SPOOL_FULL, 1);
        refuse(err, 503, "spool_full", "the spool is full and draining to Kafka; retry later",
               INGEST_RETRY_AFTER_S);
        return true;
    }
    return false;
}

static bool account_lookup_cb(void *ud, proto_str_t user, msgpack_zone *zone, proto_str_t *out)
{
    char buf[256];
    size_t n = 0;
    if (user.ptr == NULL || !accounts_lookup(ud, user.ptr, user.len, buf, sizeof buf, &n))
        return false;
    char *p = msgpack_zone_malloc(zone, n > 0 ? n : 1);
    if (p == NULL) return false;
    memcpy(p, buf, n);
    out->ptr = p;
    out->len = (uint32_t)n;
    return true;
}

static void account_learn_cb(void *ud, proto_str_t user, proto_str_t group)
{
    if (user.ptr == NULL || group.ptr == NULL) return;
    /* A refusal (oversized id, memory short) only means this user is not remembered. */
    (void)accounts_learn(ud, user.ptr, user.len, group.ptr, group.len);
}

/* A link produced straight to Kafka (not spooled): marked "in the topic" by ingest_finish once
 * the whole request is acknowledged, so the next group call that repeats it is not produced
 * again. Waiting for the identities consumer to read it back instead took ~2 s after a start,
 * during which every repeated link was produced again (the 50-80 ms p99 of the first seconds of
 * an open-loop run), and forever with identities.consume off. */
static void remember_link(ingest_req_t *req, proto_str_t user, proto_str_t acct)
{
    if (user.len == 0 || user.len > 255 || acct.len == 0 || acct.len > 255) return;
    uint8_t n[2] = {(uint8_t)user.len, (uint8_t)acct.len};
    /* Reserved first, so the three appends cannot fail halfway. */
    if (base_buf_reserve(&req->links, 2 + (size_t)user.len + acct.len) != BASE_OK) return;
    (void)base_buf_append(&req->links, n, 2);
    (void)base_buf_append(&req->links, user.ptr, user.len);
    (void)base_buf_append(&req->links, acct.ptr, acct.len);
}

static void mark_links(ingest_ctx_t *ctx, const ingest_req_t *req)
{
    const uint8_t *p = (const uint8_t *)req->links.data, *end = p + req->links.len;
    while (end - p >= 2) {
        size_t ul = p[0], al = p[1];
        if ((size_t)(end - p) < 2 + ul + al) break;
        (void)accounts_mark_linked(ctx->accounts, (const char *)p + 2, ul, (const char *)p + 2 + ul,
                                   al);
        p += 2 + ul + al;
    }
}

static void journal_done_cb(dedup_journal_req_t *r, bool durable)
{
    (void)durable; /* not durable: logged and counted by the journal; the answer is the same */
    ingest_req_t *req = (ingest_req_t *)((char *)r - offsetof(ingest_req_t, jreq));
    req->journaled = true;
    ingest_mailbox_push(req->mailbox, req);
}

/* Every report is in (Kafka's poll thread, or inside ingest_start). A delivered request with
 * reservations takes the journal's trip first (ingest.h). */
static void group_done_cb(kafka_group_t *g)
{
    ingest_req_t *req = g->ud;
    ingest_ctx_t *ctx = req->ctx;
    if (ctx->journal != NULL && req->n_dedup > 0 && req->produce_err == 0 &&
        atomic_load_explicit(&g->failed, memory_order_acquire) == 0) {
        req->jreq.fps = req->dedup_fps;
        req->jreq.n = req->n_dedup;
        req->jreq.done_cb = journal_done_cb;
        if (dedup_journal_submit(ctx->journal, &req->jreq) == DEDUP_OK) return;
    }
    ingest_mailbox_push(req->mailbox, req);
}

static int decode_error_status(int rc)
{
    switch (rc) {
    case PROTO_E_BODY_TOO_LARGE:
    case PROTO_E_TOO_MANY_EVENTS:
        return 413;
    case PROTO_E_NOMEM:
        return 503;
    default:
        return 400;
    }
}

static int append_u(base_buf_t *out, const char *prefix, uint64_t v)
{
    char tmp[64];
    int n = snprintf(tmp, sizeof tmp, "%s%" PRIu64, prefix, v);
    return base_buf_append(out, tmp, (size_t)n);
}

/* Edge filters (SPEC §5), in order, on every valid normalized event, with the rules of one
 * runtime version for the whole request. Marks dropped events in filtered[i] (filtered is NULL
 * when no rule dropped anything). strip/hash repoint ev->obj at an edited copy in b's zone.
 * Returns 0, or -1 when the zone ran out of memory (nothing may be produced then: an event
 * could be half-scrubbed). */
static int apply_filters(ingest_ctx_t *ctx, proto_batch_t *b, ingest_req_t *req, uint8_t **filtered)
{
    *filtered = NULL;
    if (ctx->reload == NULL) return 0;
    reload_ticket_t ticket;
    const runtime_t *rt = reload_enter(ctx->reload, &ticket);
    int rc = 0;
    if (filter_set_count(rt->filters) > 0) {
        for (size_t i = 0; i < b->n_events && rc == 0; i++) {
            proto_event_t *ev = &b->events[i];
            bool keep = true;
            if (ev->error != 0) continue;
            if (filter_apply(rt->filters, b, ev, &keep) != FILTER_OK) {
                rc = -1;
            } else if (!keep) {
                if (*filtered == NULL) {
                    *filtered = msgpack_zone_malloc(&b->zone, b->n_events);
                    if (*filtered == NULL) {
                        rc = -1;
                        break;
                    }
                    memset(*filtered, 0, b->n_events);
                }
                (*filtered)[i] = 1;
                req->n_filtered++;
            }
        }
    }
    reload_exit(ctx->reload, ticket);
    if (rc == 0 && req->n_filtered > 0) metrics_add(METRIC_EVENTS_FILTERED, req->n_filtered);
    return rc;
}

/* Dedup (SPEC §5; contract in ingest.h): reserves the fingerprints of the valid events not
 * filtered out. Duplicates (remembered, repeated in this request, or in flight elsewhere) are
 * marked 2 in *skip (allocated in b's zone when still NULL) and counted in req->n_duplicates;
 * the reserved ones and the in-flight ones are listed in *pass (b's zone) for dedup_settle.
 * Returns 0, or DEDUP_E_NOMEM (then nothing is reserved). */
typedef struct dedup_pass {
    uint64_t *fps;
    uint32_t *idx; /* event index of fps[j] */
    uint32_t n;
    uint64_t *wait; /* DEDUP_BUSY copies */
    uint32_t n_wait;
} dedup_pass_t;

static int dedup_reserve(ingest_ctx_t *ctx, ingest_scratch_t *s, proto_batch_t *b,
                         ingest_req_t *req, const char *source, uint8_t **skip, dedup_pass_t *pass)
{
    memset(pass, 0, sizeof *pass);
    if (ctx->dedup == NULL || b->n_events == 0) return 0;
    size_t n = b->n_events;
    pass->fps = msgpack_zone_malloc(&b->zone, n * sizeof *pass->fps);
    pass->idx = msgpack_zone_malloc(&b->zone, n * sizeof *pass->idx);
    uint8_t *verdict = msgpack_zone_malloc(&b->zone, n);
    pass->wait = msgpack_zone_malloc(&b->zone, n * sizeof *pass->wait);
    if (*skip == NULL) {
        *skip = msgpack_zone_malloc(&b->zone, n);
        if (*skip != NULL) memset(*skip, 0, n);
    }
    if (pass->fps == NULL || pass->idx == NULL || verdict == NULL || pass->wait == NULL ||
        *skip == NULL)
        return DEDUP_E_NOMEM;
    uint64_t seed = dedup_seed(source, strlen(source));
    uint32_t m = 0;
    for (size_t i = 0; i < n; i++) {
        const proto_event_t *ev = &b->events[i];
        /* A generated messageId is new by construction: nothing to deduplicate (SPEC §2). */
        if (ev->error != 0 || (*skip)[i] || ev->message_id_generated) continue;
        pass->fps[m] = dedup_fp(seed, ev->message_id.ptr, ev->message_id.len);
        pass->idx[m++] = (uint32_t)i;
    }
    int rc = dedup_reserve_all(ctx->dedup, &s->dedup, pass->fps, m, verdict);
    if (rc != DEDUP_OK) return rc;
    uint32_t kept = 0;
    for (uint32_t j = 0; j < m; j++) {
        if (verdict[j] == DEDUP_NEW) {
            pass->fps[kept] = pass->fps[j];
            pass->idx[kept++] = pass->idx[j];
            continue;
        }
        if (verdict[j] == DEDUP_BUSY) pass->wait[pass->n_wait++] = pass->fps[j];
        (*skip)[pass->idx[j]] = 2;
        req->n_duplicates++;
    }
    pass->n = kept;
    return 0;
}

/* After producing: an event reserved but then rejected (not encodable) was not delivered to the
 * events topic, so it is released now; the rest move to the request (committed or released in
 * ingest_finish). Returns 0, or -1 when memory is short (everything released then). */
static int dedup_settle(ingest_ctx_t *ctx, const proto_batch_t *b, ingest_req_t *req,
                        dedup_pass_t *pass)
{
    if (pass->n + pass->n_wait == 0) return 0;
    req->dedup_fps = malloc(((size_t)pass->n + pass->n_wait) * sizeof *req->dedup_fps);
    if (req->dedup_fps == NULL) {
        dedup_release(ctx->dedup, pass->fps, pass->n);
        return -1;
    }
    for (uint32_t j = 0; j < pass->n; j++) {
        if (b->events[pass->idx[j]].error != 0)
            dedup_release(ctx->dedup, &pass->fps[j], 1);
        else
            req->dedup_fps[req->n_dedup++] = pass->fps[j];
    }
    memcpy(req->dedup_fps + req->n_dedup, pass->wait, (size_t)pass->n_wait * sizeof *pass->wait);
    req->n_wait = pass->n_wait;
    return 0;
}

/* One message of req: to Kafka, or to the request's spool batch once spooling. A QUEUE_FULL
 * from Kafka switches the request to the spool (when there is one) from this message on.
 * Returns 0 or a kafka_err_t (a spool refusal: KAFKA_E_PRODUCE with req->spool_err set). */
static int emit(ingest_ctx_t *ctx, ingest_req_t *req, kafka_topic_t topic, proto_str_t key,
                const void *value, size_t len, const kafka_header_t *hdr, size_t nhdr,
                int64_t received_at)
{
    if (!req->spooling) {
        int rc =
            kafka_out_produce(ctx->ko, topic, key.ptr, key.len, value, len, hdr, nhdr, &req->group);
        if (rc != KAFKA_E_QUEUE_FULL || ctx->spool == NULL) return rc;
        req->spooling = true;
    }
    int src = spool_encode(&req->spool_recs, (int)topic, key.ptr, key.len, value, len, hdr, nhdr,
                           received_at);
    if (src != SPOOL_OK) {
        req->spool_err = src;
        return src == SPOOL_E_NOMEM ? KAFKA_E_NOMEM : KAFKA_E_PRODUCE;
    }
    req->spool_batch.n_records++;
    return 0;
}

/* Produces every event of b into req's group (skipping those marked in filtered, which may be
 * NULL). Returns 0, or the kafka_err_t of the first refused produce (the loop stops there: the
 * request will be answered 503 anyway). */
static int produce_all(ingest_ctx_t *ctx, ingest_scratch_t *s, proto_batch_t *b, ingest_req_t *req,
                       const char *source, int64_t received_at, const uint8_t *filtered)
{
    const proto_format_t fmt =
        ctx->cfg->kafka_format == PROTO_FMT_JSON ? PROTO_FMT_JSON : PROTO_FMT_MSGPACK;
    const char *ctype = fmt == PROTO_FMT_JSON ? "application/json" : "application/msgpack";
    char schema[16];
    int schema_len = snprintf(schema, sizeof schema, "%d", PROTO_SCHEMA_VERSION);
    proto_str_t src = {source, (uint32_t)strlen(source)};

    for (size_t i = 0; i < b->n_events; i++) {
        proto_event_t *ev = &b->events[i];
        if (filtered != NULL && filtered[i]) continue;
        base_buf_reset(&s->enc);
        if (ev->error == 0) {
            int erc = proto_encode_event(ev, fmt, &s->enc);
            if (erc != 0) {
                /* Valid by the rules but not encodable within the limits: reject it. */
                ev->error = erc;
                base_buf_reset(&s->enc);
            }
        }
        proto_str_t key = proto_event_key(ev);
        int rc;
        if (ev->error == 0) {
            const char *tname = proto_type_name(ev->type);
            kafka_header_t hdr[4] = {
                {"sluice-schema", schema, (size_t)schema_len},
                {"content-type", ctype, strlen(ctype)},
                {"event-type", tname, strlen(tname)},
                {"message-id", ev->message_id.ptr, ev->message_id.len},
            };
            rc = emit(ctx, req, KAFKA_TOPIC_EVENTS, key, s->enc.data, s->enc.len, hdr, 4,
                      received_at);
            if (rc != 0) return rc;
            req->n_accepted++;
            if (ev->type == PROTO_T_GROUP && ev->user_id.ptr != NULL && ev->group_id.ptr != NULL &&
                ctx->cfg->identities_produce) {
                /* SPEC §10: the link, keyed by userId, in the same group as its event (so the
                 * 200 waits for both, a failure of either is a 503 and a spooled request spools
                 * both). groupId is 1..255 bytes (validated), as the consumers require. A link
                 * this collector has read back from the topic (unchanged since) is already
                 * there as the user's latest: producing it again would cost a message per
                 * group call for nothing (repeated group calls are the common case; it cost
                 * 8.0 against 4.5 us of CPU per event under sluice-load's model). */
                if (accounts_is_linked(ctx->accounts, ev->user_id.ptr, ev->user_id.len,
                                       ev->group_id.ptr, ev->group_id.len)) {
                    metrics_add(METRIC_IDENTITIES_UNCHANGED, 1);
                } else {
                    rc = emit(ctx, req, KAFKA_TOPIC_IDENTITIES, ev->user_id, ev->group_id.ptr,
                              ev->group_id.len, NULL, 0, received_at);
                    if (rc != 0) return rc;
                    metrics_add(METRIC_IDENTITIES_PRODUCED, 1);
                    if (!req->spooling) remember_link(req, ev->user_id, ev->group_id);
                }
            }
            if (ctx->pql != NULL) {
                proto_str_t user = ev->user_id.ptr != NULL ? ev->user_id : ev->anonymous_id;
                pql_event_t pe = {ev->account_id.ptr, ev->account_id.len, user.ptr,
                                  user.len,           ev->event.ptr,      ev->event.len,
                                  ev->source.ptr,     ev->source.len,     ev->norm_timestamp_ms};
                /* Full (beyond PQL_REQ_MAX): the rest of this request is not counted. */
                (void)pql_record_append(&req->pql, &pe);
            }
        } else {
            if (ev->source.ptr == NULL) ev->source = src;
            if (ev->received_at_ms == 0) ev->received_at_ms = received_at;
            if (proto_encode_rejected(ev, &s->enc) != 0) {
                /* Only a raw event beyond twice the body limit could get here. */
                LOG(LOG_DEBUG, "reject_encode_failed", LI("index", i),
                    LS("reason", proto_err_code(ev->error)));
            } else {
                rc = emit(ctx, req, KAFKA_TOPIC_REJECTED, key, s->enc.data, s->enc.len, NULL, 0,
                          received_at);
                if (rc != 0) return rc;
            }
            req->n_rejected++;
            metrics_rejected(ev->error);
        }
    }
    return 0;
}

/* The 200 body: counters and the first INGEST_MAX_ERRORS rejected events. */
static int build_answer(base_buf_t *out, const proto_batch_t *b, const ingest_req_t *req)
{
    int rc = append_u(out, "{\"success\":true,\"accepted\":", req->n_accepted);
    if (rc == 0) rc = append_u(out, ",\"duplicates\":", req->n_duplicates);
    if (rc == 0) rc = append_u(out, ",\"rejected\":", req->n_rejected);
    if (rc == 0) rc = append_u(out, ",\"filtered\":", req->n_filtered);
    if (rc == 0) rc = buf_lit(out, ",\"errors\":[");
    size_t listed = 0;
    bool truncated = false;
    for (size_t i = 0; i < b->n_events && rc == 0; i++) {
        const proto_event_t *ev = &b->events[i];
        if (ev->error == 0) continue;
        if (listed == INGEST_MAX_ERRORS) {
            truncated = true;
            break;
        }
        rc = append_u(out, listed > 0 ? ",{\"index\":" : "{\"index\":", i);
        if (rc == 0) rc = buf_lit(out, ",\"messageId\":");
        if (rc == 0) rc = proto_json_str(out, ev->message_id.ptr, ev->message_id.len);
        if (rc == 0) rc = buf_lit(out, ",\"error\":");
        if (rc == 0) {
            const char *code = proto_err_code(ev->error);
            rc = proto_json_str(out, code, strlen(code));
        }
        if (rc == 0) rc = buf_lit(out, "}");
        listed++;
    }
    if (rc == 0) rc = buf_lit(out, "]");
    if (rc == 0 && truncated) rc = buf_lit(out, ",\"errors_truncated\":true");
    if (rc == 0) rc = buf_lit(out, "}");
    return rc;
}

int ingest_start(ingest_ctx_t *ctx, ingest_scratch_t *s, ingest_mailbox_t *mb,
                 const ingest_input_t *in, ingest_req_t **req_out, ingest_error_t *err)
{
    *req_out = NULL;
    const char *plain = in->body;
    size_t plain_len = in->len;
    if (in->enc != BODY_ENC_IDENTITY) {
        int brc =
            body_decode(&s->dec, in->enc, in->body, in->len, s->plain, s->plain_cap, &plain_len);
        if (brc == BODY_E_TOO_LARGE) {
            metrics_add(METRIC_DECOMPRESS_LIMIT, 1);
            refuse(err, 413, "payload_too_large", "decompressed body larger than allowed", 0);
            return -1;
        }
        if (brc == BODY_E_NOMEM) {
            refuse(err, 503, "unavailable", "out of memory", INGEST_RETRY_AFTER_S);
            return -1;
        }
        if (brc != BODY_OK) {
            refuse(err, 400, "malformed_body", body_strerror(brc), 0);
            return -1;
        }
        plain = s->plain;
    } else if (in->len > ctx->limits.body_bytes) {
        refuse(err, 413, "payload_too_large", "body larger than allowed", 0);
        return -1;
    }

    proto_batch_t b;
    memset(&b, 0, sizeof b);
    /* The batch borrows the loop's arena; the success path gives it back (proto_batch_recycle),
     * the refusals below simply free it. */
    int rc = proto_decode_arena(&b, &s->arena, plain, plain_len, in->fmt, in->kind, &ctx->limits);
    if (rc != 0) {
        proto_batch_free(&b);
        int status = decode_error_status(rc);
        refuse(err, status, status == 413 ? "payload_too_large" : proto_err_code(rc),
               proto_err_message(rc), status == 503 ? INGEST_RETRY_AFTER_S : 0);
        return -1;
    }

    /* Repairs of a readable JSON body (SPEC §2): counted, never a refusal. */
    if (b.json_surrogates > 0) metrics_add(METRIC_JSON_LONE_SURROGATES, b.json_surrogates);
    if (b.json_big_ints > 0) metrics_add(METRIC_JSON_BIG_INTS, b.json_big_ints);

    const char *source = in->source;
    int key_index = in->key_index;
    if (!in->header_key) {
        int arc = auth_lookup(ctx->auth, b.write_key.ptr, b.write_key.ptr ? b.write_key.len : 0,
                              &source, &key_index);
        if (arc != AUTH_OK) {
            proto_batch_free(&b);
            metrics_add(METRIC_AUTH_FAILURES, 1);
            refuse(err, 401, "unauthorized",
                   arc == AUTH_E_MISSING ? "a write key is required" : "unknown write key", 0);
            return -1;
        }
    }
    bool to_spool = false;
    if (cannot_take(ctx, &to_spool, err)) {
        proto_batch_free(&b);
        return -1;
    }
    int retry_after = 0;
    if (auth_rate_take(ctx->auth, key_index, b.n_events, in->start_ns, &retry_after) != AUTH_OK) {
        proto_batch_free(&b);
        refuse(err, 429, "rate_limited", "write key over its rate limit", retry_after);
        return -1;
    }

    ingest_req_t *req = calloc(1, sizeof *req);
    if (req == NULL) {
        proto_batch_free(&b);
        refuse(err, 503, "unavailable", "out of memory", INGEST_RETRY_AFTER_S);
        return -1;
    }
    req->mailbox = mb;
    req->ctx = ctx;
    req->start_ns = in->start_ns;
    req->n_events = (uint32_t)b.n_events;
    base_buf_init(&req->answer, INGEST_ANSWER_MAX);
    base_buf_init(&req->pql, INGEST_PQL_MAX);
    base_buf_init(&req->links, INGEST_LINKS_MAX);
    kafka_group_init(&req->group, group_done_cb, req);
    req->spooling = to_spool;
    base_buf_init(&req->spool_recs, 4 * (size_t)ctx->cfg->body_bytes + INGEST_SPOOL_SLACK);
    req->spool_batch.records = &req->spool_recs;
    req->spool_batch.g = &req->group;
    metrics_add(METRIC_EVENTS_RECEIVED, b.n_events);

    int64_t now = base_wall_ms();
    proto_norm_ctx_t nctx = {
        .received_at_ms = now,
        .source = {source, (uint32_t)strlen(source)},
        .lookup = ctx->accounts != NULL ? account_lookup_cb : NULL,
        .learn = ctx->accounts != NULL ? account_learn_cb : NULL,
        .lookup_ud = ctx->accounts,
        .max_future_ms = INGEST_MAX_FUTURE_MS,
        .id_seed = {s->id_seed[0], s->id_seed[1]},
        .id_seq = &s->id_seq,
    };
    uint64_t seq0 = s->id_seq;
    proto_normalize(&b, &nctx);
    if (s->id_seq != seq0) metrics_add(METRIC_MESSAGE_IDS_GENERATED, s->id_seq - seq0);
    if (ctx->pql != NULL) { /* the request's PQL records in one allocation (not growth) */
        size_t need = 0;
        for (size_t i = 0; i < b.n_events; i++) {
            const proto_event_t *ev = &b.events[i];
            if (ev->error == 0 && ev->account_id.ptr != NULL)
                need += PQL_RECORD_HEAD + ev->account_id.len + ev->user_id.len +
                        ev->anonymous_id.len + ev->source.len + ev->event.len;
        }
        if (need > 0)
            (void)base_buf_reserve(&req->pql, need < INGEST_PQL_MAX ? need : INGEST_PQL_MAX);
    }

    uint8_t *filtered = NULL;
    dedup_pass_t pass = {0};
    if (apply_filters(ctx, &b, req, &filtered) != 0) {
        req->produce_err = KAFKA_E_NOMEM; /* 503: retry; nothing of this request was produced */
    } else {
        /* filtered also marks the duplicates (2) from here: produce_all skips both. */
        if (dedup_reserve(ctx, s, &b, req, source, &filtered, &pass) != 0)
            req->produce_err = KAFKA_E_NOMEM;
        else
            req->produce_err = produce_all(ctx, s, &b, req, source, now, filtered);
        if (dedup_settle(ctx, &b, req, &pass) != 0 && req->produce_err == 0)
            req->produce_err = KAFKA_E_NOMEM;
    }
    if (req->produce_err == 0 && build_answer(&req->answer, &b, req) != 0)
        req->produce_err = KAFKA_E_NOMEM;
    if (req->produce_err == 0 && req->spool_batch.n_records > 0) {
        /* Holds the group until the records are fsync'd (or their write failed). */
        int src = spool_submit(ctx->spool, &req->spool_batch);
        if (src != SPOOL_OK) {
            req->spool_err = src;
            req->produce_err = KAFKA_E_PRODUCE;
        }
    }
    proto_batch_recycle(&b, &s->arena);

    atomic_fetch_add_explicit(&ctx->in_flight, 1, memory_order_relaxed);
    *req_out = req;
    /* From here the request may come back through the mailbox at any moment (even inside this
     * call when every report is already in); the caller only keeps its pointer. */
    kafka_group_seal(&req->group);
    return 0;
}

void ingest_finish(ingest_req_t *req, ingest_reply_t *reply)
{
    ingest_ctx_t *ctx = req->ctx;
    atomic_fetch_sub_explicit(&ctx->in_flight, 1, memory_order_relaxed);
    unsigned failed = atomic_load_explicit(&req->group.failed, memory_order_acquire);
    memset(reply, 0, sizeof *reply);
    if (req->produce_err != 0 || failed > 0) {
        LOG(LOG_DEBUG, "request_not_durable", LI("events", req->n_events), LI("failed", failed),
            LS("produce_error", req->produce_err ? kafka_strerror(req->produce_err) : NULL),
            LI("kafka_error", atomic_load(&req->group.first_err)));
        reply->status = 503;
        reply->retry_after = INGEST_RETRY_AFTER_S;
        reply->code = req->spool_err == SPOOL_E_FULL ? "spool_full" : "unavailable";
        reply->message = req->spool_err == SPOOL_E_FULL ? "the spool is full; retry later"
                         : req->produce_err == KAFKA_E_QUEUE_FULL
                             ? "Kafka producer queue is full; retry later"
                             : "events could not be made durable; retry later";
        /* Forgotten: a failed request's events must go through on retry (SPEC §3). */
        if (ctx->dedup != NULL) dedup_release(ctx->dedup, req->dedup_fps, req->n_dedup);
        return;
    }
    /* Success: every message acknowledged. Dedup (SPEC §5) records the request's
     * (source, messageId) pairs as seen at exactly this point — or, with the journal, the
     * writer already did right after its fsync (ingest.h). */
    if (ctx->dedup != NULL && !req->journaled)
        dedup_commit(ctx->dedup, req->dedup_fps, req->n_dedup);
    /* Every link went to Kafka and is acknowledged (none spooled: those reach the topic later). */
    if (ctx->accounts != NULL && req->links.len > 0 && req->spool_batch.n_records == 0)
        mark_links(ctx, req);
    metrics_add(METRIC_EVENTS_DUPLICATE, req->n_duplicates);
    metrics_add(METRIC_EVENTS_ACCEPTED, req->n_accepted);
    /* PQL counts delivered events only: here, after Kafka acknowledged them. The records go to
     * PQL's feeder thread (no shard lock on this loop; a signal follows within milliseconds,
     * well inside SPEC §6's second); a full queue is counted there, not an error here. */
    if (ctx->pql != NULL && req->pql.len > 0) (void)pql_submit(ctx->pql, &req->pql, base_wall_ms());
    if (req->n_wait > 0 &&
        !dedup_all_remembered(ctx->dedup, req->dedup_fps + req->n_dedup, req->n_wait)) {
        /* A copy skipped because another request was delivering it is not delivered (yet, or
         * that delivery failed): only a retry can make it durable. This request's own events
         * are delivered and remembered, so the retry will not send them again. */
        metrics_add(METRIC_DEDUP_IN_FLIGHT, 1);
        reply->status = 503;
        reply->retry_after = 1;
        reply->code = "unavailable";
        reply->message = "a copy of an event in this batch was being delivered by another "
                         "request; retry shortly";
        return;
    }
    reply->status = 200;
    reply->body = req->answer.data;
    reply->body_len = req->answer.len;
}

void ingest_req_free(ingest_req_t *req)
{
    if (req == NULL) return;
    base_buf_free(&req->answer);
    base_buf_free(&req->pql);
    base_buf_free(&req->links);
    base_buf_free(&req->spool_recs);
    free(req->dedup_fps);
    free(req);
}
