/*
 * transport_curl.c — the default transport: one libcurl easy handle (kept, so its connection is
 * reused: keep-alive) driven through a multi handle, so that cancel_cb can interrupt a hung
 * request at once with curl_multi_wakeup() instead of waiting for a progress callback.
 * TLS, proxies (environment variables) and HTTP/1.1 keep-alive come from libcurl's defaults;
 * sluice_config.ca_file replaces the CA store (CURLOPT_CAINFO) for a collector whose
 * certificate is self-signed or from a private CA. Verification is never turned off.
 *
 * fork(): handles created in another process are abandoned, never used or cleaned up (cleanup
 * could write a TLS close_notify on the parent's socket); the child creates its own.
 */
#include "internal.h"

#include <curl/curl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <unistd.h>

/* The collector's answers are at most 64 KiB (100 listed errors); the rest is cut. */
#define BODY_MAX (64 * 1024)

typedef struct curl_tp {
    pthread_mutex_t mu; /* guards multi against cancel_cb during (re)creation; never held in I/O */
    CURLM *multi;
    CURL *easy;
    pid_t pid;
    atomic_bool cancelled;
    sluice_response *resp; /* the response being filled by the callbacks */
    size_t msg_len;
    char *body; /* the answer body (resp->body), at most BODY_MAX bytes; kept for reuse */
    size_t body_len;
    char errbuf[CURL_ERROR_SIZE];
    char *ca_file; /* CURLOPT_CAINFO, or NULL */
} curl_tp_t;

static size_t header_cb(char *buf, size_t size, size_t n, void *ud)
{
    curl_tp_t *t = ud;
    size_t len = size * n;
    static const char name[] = "retry-after:";
    if (len >= 5 && !strncmp(buf, "HTTP/", 5)) {
        t->resp->retry_after_ms = -1; /* a new response (after 100 Continue or a redirect) */
    } else if (len > sizeof name - 1 && !strncasecmp(buf, name, sizeof name - 1)) {
        char v[64];
        size_t vl = len - (sizeof name - 1);
        if (vl >= sizeof v) vl = sizeof v - 1;
        memcpy(v, buf + sizeof name - 1, vl);
        v[vl] = '\0';
        char *s = v;
        while (*s == ' ' || *s == '\t')
            s++;
        char *end;
        long long secs = strtoll(s, &end, 10);
        if (end != s && (*end == '\r' || *end == '\n' || *end == '\0' || *end == ' ')) {
            if (secs >= 0) t->resp->retry_after_ms = secs * 1000;
        } else {
            time_t when = curl_getdate(s, NULL); /* HTTP-date form */
            if (when > 0) {
                int64_t ms = ((int64_t)when - (int64_t)time(NULL)) * 1000;
                t->resp->retry_after_ms = ms > 0 ? ms : 0;
            }
        }
    }
    return len;
}

/* Keeps the start of the answer body: in message (for error reports) and in body (per-event
 * rejections of a 2xx); beyond BODY_MAX it is discarded. */
static size_t write_cb(char *buf, size_t size, size_t n, void *ud)
{
    curl_tp_t *t = ud;
    size_t len = size * n, room = sizeof t->resp->message - 1 - t->msg_len;
    size_t take = len < room ? len : room;
    memcpy(t->resp->message + t->msg_len, buf, take);
    t->msg_len += take;
    t->resp->message[t->msg_len] = '\0';
    if (t->body) {
        take = len < BODY_MAX - t->body_len ? len : BODY_MAX - t->body_len;
        memcpy(t->body + t->body_len, buf, take);
        t->body_len += take;
    }
    return len;
}

static int ensure_handles(curl_tp_t *t)
{
    pid_t pid = getpid();
    if (t->pid != pid) {
        pthread_mutex_lock(&t->mu);
        t->multi = NULL; /* the parent's: abandoned (see the file comment) */
        t->easy = NULL;
        t->pid = pid;
        pthread_mutex_unlock(&t->mu);
    }
    if (t->multi && t->easy) return SLUICE_OK;
    CURLM *m = t->multi ? t->multi : curl_multi_init();
    CURL *e = t->easy ? t->easy : curl_easy_init();
    pthread_mutex_lock(&t->mu);
    t->multi = m;
    t->easy = e;
    pthread_mutex_unlock(&t->mu);
    if (!m || !e) return SLUICE_E_NOMEM;
    curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(e, CURLOPT_TCP_KEEPALIVE, 1L);
    curl_easy_setopt(e, CURLOPT_USERAGENT, "sluice-c/" SLUICE_VERSION_STRING);
    curl_easy_setopt(e, CURLOPT_HEADERFUNCTION, header_cb);
    curl_easy_setopt(e, CURLOPT_HEADERDATA, t);
    curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, write_cb);
    curl_easy_setopt(e, CURLOPT_WRITEDATA, t);
    curl_easy_setopt(e, CURLOPT_ERRORBUFFER, t->errbuf);
    curl_easy_setopt(e, CURLOPT_HTTPAUTH, (long)CURLAUTH_BASIC);
    curl_easy_setopt(e, CURLOPT_PASSWORD, "");
    if (t->ca_file) curl_easy_setopt(e, CURLOPT_CAINFO, t->ca_file);
    return SLUICE_OK;
}

static int curl_send(void *ud, const sluice_request *req, sluice_response *resp)
{
    curl_tp_t *t = ud;
    if (atomic_load(&t->cancelled)) return SLUICE_E_CANCELLED;
    if (ensure_handles(t)) return SLUICE_E_NOMEM;
    CURL *e = t->easy;
    char ctype[128], cenc[128];
    snprintf(ctype, sizeof ctype, "Content-Type: %s", req->content_type);
    struct curl_slist *h = curl_slist_append(NULL, ctype);
    if (h && req->content_encoding) {
        snprintf(cenc, sizeof cenc, "Content-Encoding: %s", req->content_encoding);
        struct curl_slist *h2 = curl_slist_append(h, cenc);
        h = h2 ? h2 : NULL;
    }
    struct curl_slist *h3 = h ? curl_slist_append(h, "Expect:") : NULL; /* no 100-continue trip */
    if (!h3) {
        curl_slist_free_all(h);
        return SLUICE_E_NOMEM;
    }
    h = h3;
    t->resp = resp;
    t->msg_len = 0;
    t->body_len = 0;
    t->errbuf[0] = '\0';
    curl_easy_setopt(e, CURLOPT_URL, req->url);
    curl_easy_setopt(e, CURLOPT_USERNAME, req->write_key);
    curl_easy_setopt(e, CURLOPT_HTTPHEADER, h);
    curl_easy_setopt(e, CURLOPT_POSTFIELDS, req->body);
    curl_easy_setopt(e, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)req->body_len);
    curl_easy_setopt(e, CURLOPT_CONNECTTIMEOUT_MS, (long)req->connect_timeout_ms);
    curl_easy_setopt(e, CURLOPT_TIMEOUT_MS, (long)req->timeout_ms);

    int rc = SLUICE_E_NETWORK;
    CURLcode result = CURLE_OK;
    bool done = false;
    if (curl_multi_add_handle(t->multi, e) != CURLM_OK) {
        curl_slist_free_all(h);
        return SLUICE_E_NOMEM;
    }
    /* Bounded by CURLOPT_TIMEOUT_MS (libcurl ends the transfer) or by cancel_cb. */
    while (!done && !atomic_load(&t->cancelled)) {
        int running = 0;
        if (curl_multi_perform(t->multi, &running) != CURLM_OK) break;
        int left;
        CURLMsg *m;
        while ((m = curl_multi_info_read(t->multi, &left))) {
            if (m->msg == CURLMSG_DONE) {
                result = m->data.result;
                done = true;
            }
        }
        if (done || !running) break;
        if (curl_multi_poll(t->multi, NULL, 0, 1000, NULL) != CURLM_OK) break;
    }
    curl_multi_remove_handle(t->multi, e);
    curl_easy_setopt(e, CURLOPT_HTTPHEADER, NULL);
    curl_slist_free_all(h);
    t->resp = NULL;
    if (atomic_load(&t->cancelled)) return SLUICE_E_CANCELLED;
    if (done && result == CURLE_OK) {
        long status = 0;
        curl_easy_getinfo(e, CURLINFO_RESPONSE_CODE, &status);
        resp->status = (int)status;
        if (t->body) {
            resp->body = t->body;
            resp->body_len = t->body_len;
        }
        rc = SLUICE_OK;
    } else {
        snprintf(resp->message, sizeof resp->message, "%s",
                 t->errbuf[0] ? t->errbuf : curl_easy_strerror(result));
        rc = result == CURLE_OPERATION_TIMEDOUT ? SLUICE_E_TIMEOUT : SLUICE_E_NETWORK;
    }
    return rc;
}

static void curl_cancel(void *ud)
{
    curl_tp_t *t = ud;
    atomic_store(&t->cancelled, true);
    pthread_mutex_lock(&t->mu);
    if (t->multi && t->pid == getpid()) curl_multi_wakeup(t->multi);
    pthread_mutex_unlock(&t->mu);
}

static void curl_destroy(void *ud)
{
    curl_tp_t *t = ud;
    if (t->pid == getpid()) {
        if (t->easy) curl_easy_cleanup(t->easy);
        if (t->multi) curl_multi_cleanup(t->multi);
    }
    pthread_mutex_destroy(&t->mu);
    free(t->ca_file);
    free(t->body);
    free(t);
}

int sdk_curl_transport_new(sluice_transport *tp, const char *ca_file)
{
    curl_tp_t *t = calloc(1, sizeof *t);
    if (!t) return SLUICE_E_NOMEM;
    if (ca_file && !(t->ca_file = strdup(ca_file))) {
        free(t);
        return SLUICE_E_NOMEM;
    }
    pthread_mutex_init(&t->mu, NULL);
    atomic_init(&t->cancelled, false);
    t->pid = getpid();
    /* Without it, per-event rejections go unseen (every event of a 2xx counts as sent). */
    t->body = malloc(BODY_MAX);
    tp->ud = t;
    tp->send_cb = curl_send;
    tp->cancel_cb = curl_cancel;
    tp->destroy_cb = curl_destroy;
    return SLUICE_OK;
}
