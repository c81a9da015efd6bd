/* fake_transport.c — see fake_transport.h. */
#include "fake_transport.h"

#include "base.h"

#include <errno.h>
#include <signal.h>
#include <msgpack.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <zstd.h>

#include "writer.h"

int64_t fake_now_ms(void)
{
    return base_mono_ms();
}

static void init_sync(fake_t *f)
{
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_mutex_init(&f->mu, NULL);
    pthread_cond_init(&f->cv, &ca);
    pthread_condattr_destroy(&ca);
}

void fake_init(fake_t *f)
{
    memset(f, 0, sizeof *f);
    init_sync(f);
    f->dflt = (fake_step_t){200, -1, 0, false};
}

void fake_after_fork_child(fake_t *f)
{
    init_sync(f);
}

void fake_free(fake_t *f)
{
    for (size_t i = 0; i < f->n_events; i++)
        free(f->events[i].json);
    free(f->events);
    pthread_mutex_destroy(&f->mu);
    pthread_cond_destroy(&f->cv);
}

void fake_script(fake_t *f, const fake_step_t *steps, int n)
{
    pthread_mutex_lock(&f->mu);
    memcpy(f->script, steps, sizeof *steps * (size_t)n);
    f->n_script = n;
    f->pos = 0;
    pthread_mutex_unlock(&f->mu);
}

static const msgpack_object *map_get(const msgpack_object *m, const char *key)
{
    if (m->type != MSGPACK_OBJECT_MAP) return NULL;
    size_t kl = strlen(key);
    for (uint32_t i = 0; i < m->via.map.size; i++) {
        const msgpack_object *k = &m->via.map.ptr[i].key;
        if (k->type == MSGPACK_OBJECT_STR && k->via.str.size == kl &&
            !memcmp(k->via.str.ptr, key, kl))
            return &m->via.map.ptr[i].val;
    }
    return NULL;
}

/* Decodes a body into its events (appended to f->events when keep). Returns the event count or
 * -1 when the body is not a well-formed batch. Called with f->mu held. */
static int decode_body(fake_t *f, const sluice_request *req, bool keep)
{
    const char *body = req->body;
    size_t len = req->body_len;
    char *plain = NULL;
    if (req->content_encoding && !strcmp(req->content_encoding, "zstd")) {
        unsigned long long sz = ZSTD_getFrameContentSize(body, len);
        if (sz == ZSTD_CONTENTSIZE_ERROR || sz == ZSTD_CONTENTSIZE_UNKNOWN || sz > (1u << 20))
            return -1;
        plain = malloc(sz ? sz : 1);
        size_t got = ZSTD_decompress(plain, sz, body, len);
        if (ZSTD_isError(got) || got != sz) {
            free(plain);
            return -1;
        }
        body = plain;
        len = got;
    }
    msgpack_zone zone;
    msgpack_zone_init(&zone, 4096);
    msgpack_object root;
    size_t off = 0;
    int n = -1;
    if (msgpack_unpack(body, len, &off, &zone, &root) == MSGPACK_UNPACK_SUCCESS && off == len) {
        const msgpack_object *batch = map_get(&root, "batch");
        const msgpack_object *sent_at = map_get(&root, "sentAt");
        if (batch && batch->type == MSGPACK_OBJECT_ARRAY && sent_at &&
            sent_at->type == MSGPACK_OBJECT_POSITIVE_INTEGER) {
            n = (int)batch->via.array.size;
            for (int i = 0; i < n && !keep && f->n_attempt_ids < FAKE_MAX_ATTEMPT_IDS; i++) {
                const msgpack_object *id = map_get(&batch->via.array.ptr[i], "messageId");
                int k = f->n_attempt_ids++;
                f->attempt_req[k] = f->n_req - 1;
                f->attempt_id[k][0] = '\0';
                if (id && id->type == MSGPACK_OBJECT_STR && id->via.str.size <= 100) {
                    memcpy(f->attempt_id[k], id->via.str.ptr, id->via.str.size);
                    f->attempt_id[k][id->via.str.size] = '\0';
                }
            }
            for (int i = 0; i < n && keep; i++) {
                const msgpack_object *ev = &batch->via.array.ptr[i];
                const msgpack_object *id = map_get(ev, "messageId");
                if (f->n_events == f->cap_events) {
                    f->cap_events = f->cap_events ? f->cap_events * 2 : 256;
                    f->events = realloc(f->events, f->cap_events * sizeof *f->events);
                }
                fake_event_t *fe = &f->events[f->n_events++];
                memset(fe, 0, sizeof *fe);
                if (id && id->type == MSGPACK_OBJECT_STR && id->via.str.size <= 100)
                    memcpy(fe->id, id->via.str.ptr, id->via.str.size);
                /* Re-encode this event alone and render it with the shared writer's converter. */
                msgpack_sbuffer sb;
                msgpack_sbuffer_init(&sb);
                msgpack_packer pk;
                msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
                msgpack_pack_object(&pk, *ev);
                base_buf_t jb;
                base_buf_init(&jb, 1 << 20);
                if (writer_msgpack_to_json(sb.data, sb.size, &jb) == 0 &&
                    base_buf_append(&jb, "", 1) == 0) {
                    fe->json = jb.data;
                } else {
                    base_buf_free(&jb);
                    fe->json = strdup("");
                }
                msgpack_sbuffer_destroy(&sb);
            }
        }
    }
    msgpack_zone_destroy(&zone);
    free(plain);
    return n;
}

static int fake_send(void *ud, const sluice_request *req, sluice_response *resp)
{
    fake_t *f = ud;
    pthread_mutex_lock(&f->mu);
    if (f->cancelled) {
        pthread_mutex_unlock(&f->mu);
        return SLUICE_E_CANCELLED;
    }
    int idx = f->n_req < FAKE_MAX_REQS ? f->n_req : FAKE_MAX_REQS - 1;
    f->n_req++;
    f->req_ms[idx] = fake_now_ms();
    f->req_events[idx] = req->n_events;
    f->req_status[idx] = 0;
    snprintf(f->last_content_type, sizeof f->last_content_type, "%s", req->content_type);
    snprintf(f->last_encoding, sizeof f->last_encoding, "%s",
             req->content_encoding ? req->content_encoding : "");
    snprintf(f->last_key, sizeof f->last_key, "%s", req->write_key);
    snprintf(f->last_url, sizeof f->last_url, "%s", req->url);
    fake_step_t step = f->pos < f->n_script ? f->script[f->pos++] : f->dflt;
    sigset_t cur;
    pthread_sigmask(SIG_BLOCK, NULL, &cur);
    if (!sigismember(&cur, SIGINT) || !sigismember(&cur, SIGTERM) || !sigismember(&cur, SIGUSR1))
        f->signals_unblocked++;
    int n = decode_body(f, req, false);
    if (n < 0 || (uint32_t)n != req->n_events) f->bad_bodies++;
    if (f->max_events && req->n_events > f->max_events) step = (fake_step_t){413, -1, 0, false};
    if (step.hang) {
        f->hanging = true;
        pthread_cond_broadcast(&f->cv);
        struct timespec ts = base_deadline(CLOCK_MONOTONIC, 20000);
        while (!f->cancelled && !f->released)
            if (pthread_cond_timedwait(&f->cv, &f->mu, &ts) == ETIMEDOUT) break;
        f->hanging = false;
        if (!f->released) {
            pthread_mutex_unlock(&f->mu);
            return SLUICE_E_CANCELLED;
        }
        f->released = false; /* released: answer the step's status */
    }
    if (step.rc) {
        pthread_cond_broadcast(&f->cv);
        pthread_mutex_unlock(&f->mu);
        return step.rc;
    }
    resp->status = step.status;
    resp->retry_after_ms = step.retry_after_ms;
    f->req_status[idx] = step.status;
    if (step.status >= 200 && step.status < 300)
        decode_body(f, req, true);
    else
        snprintf(resp->message, sizeof resp->message, "fake answer %d", step.status);
    pthread_cond_broadcast(&f->cv);
    pthread_mutex_unlock(&f->mu);
    return 0;
}

static void fake_cancel(void *ud)
{
    fake_t *f = ud;
    pthread_mutex_lock(&f->mu);
    f->cancelled = true;
    pthread_cond_broadcast(&f->cv);
    pthread_mutex_unlock(&f->mu);
}

sluice_transport fake_transport(fake_t *f)
{
    return (sluice_transport){.ud = f, .send_cb = fake_send, .cancel_cb = fake_cancel};
}

static bool wait_cond(fake_t *f, int timeout_ms, bool (*done)(fake_t *, long), long arg)
{
    struct timespec ts = base_deadline(CLOCK_MONOTONIC, (uint64_t)timeout_ms);
    pthread_mutex_lock(&f->mu);
    bool ok;
    while (!(ok = done(f, arg)))
        if (pthread_cond_timedwait(&f->cv, &f->mu, &ts) == ETIMEDOUT) {
            ok = done(f, arg);
            break;
        }
    pthread_mutex_unlock(&f->mu);
    return ok;
}

static bool have_events(fake_t *f, long n)
{
    return f->n_events >= (size_t)n;
}

static bool have_requests(fake_t *f, long n)
{
    return f->n_req >= n;
}

static bool is_hanging(fake_t *f, long unused)
{
    (void)unused;
    return f->hanging;
}

size_t fake_wait_events(fake_t *f, size_t n, int timeout_ms)
{
    wait_cond(f, timeout_ms, have_events, (long)n);
    pthread_mutex_lock(&f->mu);
    size_t got = f->n_events;
    pthread_mutex_unlock(&f->mu);
    return got;
}

int fake_wait_requests(fake_t *f, int n, int timeout_ms)
{
    wait_cond(f, timeout_ms, have_requests, n);
    pthread_mutex_lock(&f->mu);
    int got = f->n_req;
    pthread_mutex_unlock(&f->mu);
    return got;
}

void fake_release(fake_t *f)
{
    pthread_mutex_lock(&f->mu);
    f->released = true;
    pthread_cond_broadcast(&f->cv);
    pthread_mutex_unlock(&f->mu);
}

bool fake_wait_hanging(fake_t *f, int timeout_ms)
{
    return wait_cond(f, timeout_ms, is_hanging, 0);
}

size_t fake_count_id(fake_t *f, const char *id)
{
    size_t n = 0;
    pthread_mutex_lock(&f->mu);
    for (size_t i = 0; i < f->n_events; i++)
        n += !strcmp(f->events[i].id, id);
    pthread_mutex_unlock(&f->mu);
    return n;
}
