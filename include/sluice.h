/*
 * sluice.h — libsluice, the C client SDK of sluice (SPEC §8).
 *
 *     sluice_config cfg;
 *     sluice_config_init(&cfg, SLUICE_CONFIG_VERSION);
 *     cfg.endpoint = "http://127.0.0.1:8080";
 *     cfg.write_key = "wk_test_123";
 *     sluice_client *c;
 *     if (sluice_client_new(&c, &cfg) != SLUICE_OK) ...
 *     sluice_props *p = sluice_props_new();
 *     sluice_props_set_str(p, "plan", "pro");
 *     sluice_track(c, "user-1", "Signed Up", p);     // copies p; never blocks on the network
 *     sluice_props_free(p);
 *     int lost = sluice_client_close(c, 5000);       // flushes; <= 5 s; events not delivered
 *
 * Threads. Every function taking a sluice_client may be called from any number of threads at
 * once, except sluice_client_close(), which must be the last call on that client. A call never
 * performs network or disk I/O and never waits on a lock that is held during I/O: it validates
 * the event, encodes it (msgpack) into a bounded in-memory queue and returns. One background
 * worker thread per client forms batches, compresses them (zstd) and sends them through the
 * transport (libcurl by default). A sluice_props builder is NOT thread-safe: one thread at a time.
 *
 * Errors. Functions that can fail return a sluice_err (0 OK, negative failure); results go out
 * through pointers. sluice_strerror()/sluice_err_name() describe any code. When a call fails
 * synchronously nothing was queued and no callback will run for it. Failures that happen later
 * on the worker (a batch refused by the collector, an event rejected inside a 200 answer, an
 * event given up by age, a corrupt storage file) are reported through sluice_config.error_cb.
 *
 * Delivery. An accepted event is retried until it is delivered or refused; it is given up only
 * by age (max_event_age_ms, default 24 h) or by queue pressure (the queue_full_policy) -- never
 * after a number of attempts -- so a collector restart or deploy loses nothing. With storage_dir,
 * batches the collector cannot take now go to disk and are sent later (also by the next run);
 * with write_ahead, every batch is on disk before its first send, so kill -9 loses nothing that
 * was batched (an event is batched at most flush_interval_ms after its call; sluice_flush()
 * returns once every earlier event is delivered or on disk). sluice_client_close() returns how
 * many accepted events were not delivered over the client's life.
 *
 * Signals. The worker thread blocks every signal, so the application's signal handling is never
 * disturbed. libcurl is used with CURLOPT_NOSIGNAL.
 *
 * fork(). A client survives fork() in both processes. The parent is unaffected. In the child,
 * the client is fresh and stopped: its locks are re-initialized (the child never deadlocks on a
 * lock another thread held at fork time), events queued in the parent before fork() are NOT
 * inherited (the parent delivers them; the child discards its copy without counting them),
 * counters start from the parent's values, and the worker thread is started again lazily by the
 * child's next call that queues an event. The default transport opens new connections in the
 * child (it never writes on the parent's sockets); a custom transport must do the same (it may
 * compare getpid()). Use sluice_client_close() in each process that wants its events delivered.
 */
#ifndef SLUICE_H
#define SLUICE_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#if defined(__GNUC__)
#define SLUICE_API __attribute__((visibility("default")))
#else
#define SLUICE_API
#endif

#define SLUICE_VERSION_MAJOR  0
#define SLUICE_VERSION_MINOR  1
#define SLUICE_VERSION_PATCH  0
#define SLUICE_VERSION_STRING "0.1.0"

/* ---- errors ---- */

/*
 * X(NAME, value, "message"). Append-only: values never change meaning. Categories:
 * bad input (INVAL, UTF8, TOO_LARGE, DEPTH, STATE, VERSION, URL, NUMBER), out of resources
 * (NOMEM, QUEUE_FULL, THREAD), try later / delivery (TIMEOUT, NETWORK, HTTP, CANCELLED), refused
 * by the collector (HTTP, REJECTED), given up (EXPIRED), storage (STORAGE, CORRUPT), the user's
 * choice (OPTED_OUT).
 */
#define SLUICE_ERRORS(X)                                                                           \
    X(OK, 0, "ok")                                                                                 \
    X(E_INVAL, -1, "invalid argument")                                                             \
    X(E_NOMEM, -2, "out of memory")                                                                \
    X(E_QUEUE_FULL, -3, "queue is full; event dropped")                                            \
    X(E_TOO_LARGE, -4, "value exceeds its size limit")                                             \
    X(E_UTF8, -5, "string is not valid UTF-8")                                                     \
    X(E_DEPTH, -6, "properties nested too deeply")                                                 \
    X(E_STATE, -7, "property builder used out of order")                                           \
    X(E_VERSION, -8, "unsupported config version")                                                 \
    X(E_THREAD, -9, "cannot start the worker thread")                                              \
    X(E_TIMEOUT, -10, "timed out")                                                                 \
    X(E_NETWORK, -11, "network error")                                                             \
    X(E_HTTP, -12, "collector refused the batch")                                                  \
    X(E_CANCELLED, -13, "request cancelled")                                                       \
    X(E_STORAGE, -14, "storage I/O error")                                                         \
    X(E_CORRUPT, -15, "corrupt storage file skipped")                                              \
    X(E_URL, -16, "endpoint is not an http:// or https:// URL")                                    \
    X(E_NUMBER, -17, "number is NaN or infinite")                                                  \
    X(E_REJECTED, -18, "collector rejected the event")                                             \
    X(E_EXPIRED, -19, "event older than max_event_age_ms; given up")                               \
    X(E_OPTED_OUT, -20, "tracking is opted out; event not queued")

typedef enum sluice_err {
#define SLUICE_X_ENUM(name, val, msg) SLUICE_##name = val,
    SLUICE_ERRORS(SLUICE_X_ENUM)
#undef SLUICE_X_ENUM
} sluice_err;

/* Human message ("queue is full; event dropped"). Never NULL; "unknown error" if not a code. */
SLUICE_API const char *sluice_strerror(int err);
/* Symbolic name ("SLUICE_E_QUEUE_FULL"). Never NULL; "SLUICE_E_UNKNOWN" if not a code. */
SLUICE_API const char *sluice_err_name(int err);
/* The library version, e.g. "0.1.0". Static storage. */
SLUICE_API const char *sluice_version(void);

/*
 * Optional global initialization: initializes libcurl globally (curl_global_init). Call it once
 * from the main thread before starting other threads if the application does not initialize
 * libcurl itself; otherwise libcurl initializes lazily. sluice_global_cleanup() undoes it and
 * may only be called after every client is closed.
 */
SLUICE_API int sluice_global_init(void);
SLUICE_API void sluice_global_cleanup(void);

/* ---- property / trait builder ---- */

/*
 * A sluice_props builds one map of properties (or traits, or context) directly in its encoded
 * form. Ownership: created by sluice_props_new(), owned by the caller, freed with
 * sluice_props_free(). Calls that take a props (sluice_track ...) copy it: the caller may reuse
 * (sluice_props_clear) or free it as soon as the call returns. Keys and string values are copied
 * at once; the caller keeps ownership of its strings.
 *
 * Every setter takes the key under which the value goes in the innermost open map; inside an
 * array the key must be NULL. sluice_props_begin_map/array open a nested container (depth <= 15
 * below the top map), sluice_props_end closes the innermost one. Keys are not de-duplicated.
 *
 * Errors are sticky: the first failure (E_UTF8, E_NUMBER for a NaN or infinite double,
 * E_TOO_LARGE past max_bytes, E_DEPTH, E_STATE for
 * a key where none belongs / a missing key / an unbalanced end, E_NOMEM) is returned by the
 * failing setter AND by every later setter and by any call given this props, until
 * sluice_props_clear(). So a chain of setters may be checked once, at the send call.
 */
typedef struct sluice_props sluice_props;

/* New empty map, limited to 32 KiB encoded. NULL when out of memory. */
SLUICE_API sluice_props *sluice_props_new(void);
/* Frees p. NULL is a no-op. */
SLUICE_API void sluice_props_free(sluice_props *p);
/* Empties p (and clears its sticky error), keeping its memory for reuse. */
SLUICE_API void sluice_props_clear(sluice_props *p);
/* The sticky error (0 when p is usable). */
SLUICE_API int sluice_props_error(const sluice_props *p);

/* String values must be valid UTF-8; NULL value stores null. _n variants take a length. */
SLUICE_API int sluice_props_set_str(sluice_props *p, const char *key, const char *value);
SLUICE_API int sluice_props_set_strn(sluice_props *p, const char *key, const char *value,
                                     size_t len);
SLUICE_API int sluice_props_set_int(sluice_props *p, const char *key, int64_t value);
SLUICE_API int sluice_props_set_double(sluice_props *p, const char *key, double value);
SLUICE_API int sluice_props_set_bool(sluice_props *p, const char *key, int value);
SLUICE_API int sluice_props_set_null(sluice_props *p, const char *key);
SLUICE_API int sluice_props_begin_map(sluice_props *p, const char *key);
SLUICE_API int sluice_props_begin_array(sluice_props *p, const char *key);
SLUICE_API int sluice_props_end(sluice_props *p);

/* ---- transport ---- */

/* One HTTP request the worker wants sent. All pointers are valid only during send_cb. */
typedef struct sluice_request {
    const char *url;              /* endpoint + "/v1/batch" */
    const char *write_key;        /* send as HTTP Basic user name (empty password) */
    const char *content_type;     /* "application/msgpack" */
    const char *content_encoding; /* "zstd", or NULL when the body is not compressed */
    const void *body;
    size_t body_len;
    uint32_t n_events;           /* events in the batch (informational) */
    uint32_t connect_timeout_ms; /* from the config */
    uint32_t timeout_ms;         /* total time allowed for this request */
} sluice_request;

/* What came back. The worker zeroes it and sets retry_after_ms = -1 before send_cb. */
typedef struct sluice_response {
    int status;             /* HTTP status; 0 when no response was received */
    int64_t retry_after_ms; /* Retry-After converted to ms; -1 when absent */
    char message[256];      /* optional NUL-terminated detail (error body, curl error) */
    /* Optional: the whole answer body, owned by the transport and valid until its next send_cb
     * or destroy_cb. A 2xx body's "errors" list (SPEC §3) is what reports per-event rejections;
     * a transport that leaves body NULL has every event of a 2xx counted as sent. */
    const char *body;
    size_t body_len;
} sluice_response;

/*
 * A replaceable transport (the default is libcurl). Calls come from the client's worker thread
 * only, never concurrently, except cancel_cb, which the thread running sluice_client_close()
 * calls at its deadline while send_cb may be running.
 *
 * send_cb: performs req synchronously and fills resp. Returns 0 when an HTTP answer was
 *   received (whatever its status), SLUICE_E_NETWORK (or another negative code) when not —
 *   connect failure, timeout, reset. Must honour req->timeout_ms.
 * cancel_cb: makes the running send_cb return promptly (with SLUICE_E_CANCELLED) and every later
 *   send_cb return at once without sending. Must be async with respect to send_cb (flag + wakeup).
 *   May be NULL only if send_cb never takes longer than timeout_ms anyway.
 * destroy_cb: frees ud; called once by sluice_client_close() after the worker has stopped, or by
 *   sluice_client_new() on failure. May be NULL.
 */
typedef struct sluice_transport {
    void *ud;
    int (*send_cb)(void *ud, const sluice_request *req, sluice_response *resp);
    void (*cancel_cb)(void *ud);
    void (*destroy_cb)(void *ud);
} sluice_transport;

/* ---- client ---- */

typedef struct sluice_client sluice_client;

enum sluice_queue_full_policy {
    SLUICE_QUEUE_FULL_REJECT = 0,     /* the new event is refused: SLUICE_E_QUEUE_FULL */
    SLUICE_QUEUE_FULL_DROP_OLDEST = 1 /* the oldest queued events make room; counted dropped */
};

enum sluice_log_level { SLUICE_LOG_DEBUG = 0, SLUICE_LOG_INFO, SLUICE_LOG_WARN, SLUICE_LOG_ERROR };

/* Called on the worker thread (or the closing thread). msg is valid during the call only. The
 * callback must not call back into the client except sluice_client_stats(). */
typedef void (*sluice_log_cb)(void *ud, int level, const char *msg);
/* A loss or a problem on the worker: err is a sluice_err -- E_HTTP with http_status for a refused
 * batch; E_REJECTED (http_status 200, n_events 1, msg "<messageId>: <error code>") for each event
 * the collector rejected inside a 2xx answer; E_EXPIRED for events given up by age; E_NETWORK /
 * E_TIMEOUT / E_CANCELLED for events lost at close without storage, or when an optional
 * max_retries ran out; E_CORRUPT for a skipped storage file; E_STORAGE -- and n_events how many
 * events it concerns (0 if none). */
typedef void (*sluice_error_cb)(void *ud, int err, int http_status, uint32_t n_events,
                                const char *msg);

#define SLUICE_CONFIG_VERSION 3

/*
 * Client configuration. Always prepare it with sluice_config_init(cfg, SLUICE_CONFIG_VERSION),
 * which sets every default, then change fields. Fields may be appended in later versions (with
 * a new SLUICE_CONFIG_VERSION); a library accepts configs of its own and older versions.
 * sluice_client_new() copies every string; the config may be discarded after it returns.
 */
typedef struct sluice_config {
    int version;                       /* set by sluice_config_init */
    const char *endpoint;              /* "http://HOST:PORT" (https works); required */
    const char *write_key;             /* required */
    uint32_t batch_size;               /* events per batch; default 100 */
    uint32_t batch_bytes;              /* encoded events per batch; default 500 KiB, max 510 KiB */
    uint32_t flush_interval_ms;        /* a partial batch is sent after this; default 1000 */
    uint32_t queue_max_events;         /* default 10000 */
    uint32_t queue_max_bytes;          /* encoded bytes in the queue; default 16 MiB */
    int queue_full_policy;             /* enum sluice_queue_full_policy; default REJECT */
    uint32_t event_max_bytes;          /* one encoded event; default 32 KiB (SPEC §2) */
    uint32_t connect_timeout_ms;       /* default 5000 */
    uint32_t request_timeout_ms;       /* default 15000 */
    uint32_t retry_base_ms;            /* first backoff cap; default 200 */
    uint32_t retry_max_ms;             /* backoff cap; default 30000 */
    uint32_t max_retries;              /* 0 (default): no limit, events are given up by age only;
                                          N: also give a batch up after N retries (not advised) */
    int compress;                      /* zstd bodies; default 1 */
    const char *storage_dir;           /* NULL (default): no persistence. Created (one level, 0700)
                                          if missing; must be writable (else SLUICE_E_STORAGE).
                                          Several clients and processes may share one: a batch
                                          file is locked (flock) by whoever sends it. */
    uint64_t storage_max_bytes;        /* default 64 MiB; a batch that does not fit stays in
                                          memory (retried, subject to the queue bounds) */
    const sluice_transport *transport; /* NULL: libcurl. Copied; on success the client owns
                                          transport->ud (destroy_cb at close) */
    sluice_log_cb log_cb;              /* may be NULL */
    sluice_error_cb error_cb;          /* may be NULL */
    void *cb_ud;                       /* passed to log_cb and error_cb */
    /* ---- version 2 ---- */
    uint64_t max_event_age_ms; /* an undelivered event older than this is given up (E_EXPIRED);
                                  default 24 h, min 1000 */
    int write_ahead;           /* 1: every batch is written to storage_dir before it is sent
                                  (needs storage_dir); default 0 */
    int opt_out;               /* 1: start opted out (see sluice_set_opt_out); default 0 */
    /* The default context sent with every batch and merged by the collector into each event's
     * context (the event's own keys win). Strings are copied; each at most 128 bytes UTF-8.
     * library_*: NULL = "sluice-c" / this version -- wrapper SDKs put their own name here.
     * app_*: NULL = absent. locale: NULL = from LC_ALL / LC_MESSAGES / LANG ("en-US"), "" = absent.
     * timezone: NULL = from TZ or /etc/timezone or /etc/localtime ("Europe/Berlin"), "" = absent.
     * os: always {name, version} from uname(). */
    const char *library_name, *library_version;
    const char *app_name, *app_version;
    const char *locale, *timezone;
    /* ---- version 3 ---- */
    const char *ca_file; /* https endpoints: PEM file of the CA certificate(s) to trust instead of
                            the system store (a collector's self-signed certificate is its own
                            CA); NULL (default): the system store. Copied; read by libcurl when
                            a connection is made. Ignored by a replaced transport. */
} sluice_config;

/* Sets every field to its default and cfg->version to version. Returns SLUICE_E_VERSION if
 * version is newer than this library knows, SLUICE_E_INVAL if cfg is NULL. */
SLUICE_API int sluice_config_init(sluice_config *cfg, int version);

/*
 * Creates a client and stores it in *out. Validates cfg (SLUICE_E_INVAL for a missing endpoint
 * or write key, an out-of-range limit, write_ahead without storage_dir, a context string over
 * 128 bytes; SLUICE_E_UTF8 for a context string; SLUICE_E_URL for an endpoint that is not
 * http:// or https:// followed by a host, or holds spaces or control characters;
 * SLUICE_E_VERSION), creates storage_dir and checks that it can write there (SLUICE_E_STORAGE),
 * loads or creates the persisted anonymousId, allocates the queue bookkeeping and starts the
 * worker thread. With storage_dir, batches stored by an earlier run are sent first.
 * On failure returns the error and *out is NULL; a custom transport's destroy_cb has been called,
 * except for SLUICE_E_VERSION (a config this library cannot read is not touched).
 */
SLUICE_API int sluice_client_new(sluice_client **out, const sluice_config *cfg);

/*
 * Flushes and frees the client. Sends everything queued, waiting at most timeout_ms (0: do not
 * wait; the in-flight request is cancelled at once). At the deadline the in-flight request is
 * cancelled; then every event not delivered is written to storage_dir when it is set.
 * Returns the number of events this client accepted over its life that were not delivered --
 * refused, rejected, expired, evicted by DROP_OLDEST, lost, or still in storage_dir for a later
 * run (0 when every accepted event reached the collector) -- or a negative error
 * (SLUICE_E_INVAL for NULL). Events refused synchronously (an error returned by the call) were
 * never accepted and are not counted. The client is freed in every case.
 */
SLUICE_API int sluice_client_close(sluice_client *c, uint32_t timeout_ms);

/*
 * Waits until every event queued before the call has been resolved (sent, or dropped/stored
 * after a failure), at most timeout_ms. Returns 0, or SLUICE_E_TIMEOUT. Does not stop new events
 * from being queued meanwhile (those are not waited for).
 */
SLUICE_API int sluice_flush(sluice_client *c, uint32_t timeout_ms);

/*
 * One event (SPEC §2), for full control; the typed calls below fill it. Strings NUL-terminated
 * UTF-8, NULL = absent. user_id / anonymous_id 1..255 bytes; when both are NULL the client's
 * anonymousId (sluice_anonymous_id) is used. timestamp_ms 0 = now. message_id NULL = a fresh random
 * UUID v4 (give one to make retries of your own idempotent). properties/traits/context are copied.
 */
typedef struct sluice_event {
    const char *type; /* "track", "identify", "group", "page", "screen", "alias" */
    const char *user_id;
    const char *anonymous_id;
    const char *event;       /* track: required, 1..200 bytes */
    const char *name;        /* page/screen: optional */
    const char *group_id;    /* group: required */
    const char *previous_id; /* alias: required */
    const char *message_id;  /* 1..100 bytes */
    int64_t timestamp_ms;    /* epoch ms; 0 = now */
    const sluice_props *properties;
    const sluice_props *traits;
    const sluice_props *context;
} sluice_event;

/*
 * Queues one event. Returns 0; SLUICE_E_INVAL (missing/oversized required field, unknown type),
 * SLUICE_E_UTF8, SLUICE_E_TOO_LARGE (encoded event over event_max_bytes), a props' sticky error,
 * SLUICE_E_QUEUE_FULL (REJECT policy; counted in dropped), SLUICE_E_OPTED_OUT, SLUICE_E_NOMEM.
 * Never blocks on I/O.
 */
SLUICE_API int sluice_send(sluice_client *c, const sluice_event *ev);

/* Typed shorthands for sluice_send(); props may be NULL. user_id NULL: the event is anonymous
 * (the client's anonymousId). The _ctx forms also take the event's own context (may be NULL). */
SLUICE_API int sluice_track(sluice_client *c, const char *user_id, const char *event,
                            const sluice_props *properties);
SLUICE_API int sluice_identify(sluice_client *c, const char *user_id, const sluice_props *traits);
SLUICE_API int sluice_group(sluice_client *c, const char *user_id, const char *group_id,
                            const sluice_props *traits);
SLUICE_API int sluice_page(sluice_client *c, const char *user_id, const char *name,
                           const sluice_props *properties);
SLUICE_API int sluice_screen(sluice_client *c, const char *user_id, const char *name,
                             const sluice_props *properties);
SLUICE_API int sluice_alias(sluice_client *c, const char *user_id, const char *previous_id);
SLUICE_API int sluice_track_ctx(sluice_client *c, const char *user_id, const char *event,
                                const sluice_props *properties, const sluice_props *context);
SLUICE_API int sluice_identify_ctx(sluice_client *c, const char *user_id,
                                   const sluice_props *traits, const sluice_props *context);
SLUICE_API int sluice_group_ctx(sluice_client *c, const char *user_id, const char *group_id,
                                const sluice_props *traits, const sluice_props *context);
SLUICE_API int sluice_page_ctx(sluice_client *c, const char *user_id, const char *name,
                               const sluice_props *properties, const sluice_props *context);
SLUICE_API int sluice_screen_ctx(sluice_client *c, const char *user_id, const char *name,
                                 const sluice_props *properties, const sluice_props *context);
SLUICE_API int sluice_alias_ctx(sluice_client *c, const char *user_id, const char *previous_id,
                                const sluice_props *context);

/*
 * The anonymousId given to events without a user id: a random UUID v4 generated once and kept in
 * storage_dir/anonymous_id (so every run and every client on that directory shares it), or per
 * client without storage_dir. Owned by the client, valid until sluice_client_close(). NULL for
 * a NULL client.
 */
SLUICE_API const char *sluice_anonymous_id(sluice_client *c);

/*
 * Opt-out switch (the user's choice not to be tracked). While opted out every send call returns
 * SLUICE_E_OPTED_OUT and queues nothing; events queued before are still delivered. With
 * storage_dir the choice is persisted (storage_dir/opted_out) and applies to later runs and to
 * every client on that directory. Returns 0, SLUICE_E_INVAL, or SLUICE_E_STORAGE when the choice
 * could not be persisted (it applies to this client anyway). sluice_opted_out(): 1 or 0.
 */
SLUICE_API int sluice_set_opt_out(sluice_client *c, int opted_out);
SLUICE_API int sluice_opted_out(sluice_client *c);

/* Counters since sluice_client_new (monotonic, except the gauges marked "now"). The struct may
 * gain fields at its end in a later minor version (0.x: rebuild against the new header). */
typedef struct sluice_stats {
    uint64_t queued;       /* events accepted into the queue */
    uint64_t sent;         /* events the collector accepted (2xx, minus per-event rejections),
                              including events of stored batches from earlier runs */
    uint64_t dropped;      /* events not accepted (QUEUE_FULL) or evicted by DROP_OLDEST */
    uint64_t retried;      /* request attempts repeated after a retryable failure */
    uint64_t failed;       /* events lost after sending: refused (4xx), rejected, expired, lost at
                              close, an optional max_retries exhausted */
    uint64_t stored;       /* events written to storage_dir */
    uint64_t queue_events; /* now in the queue */
    uint64_t queue_bytes;  /* now in the queue */
    uint64_t in_flight;    /* now held by the worker: the batch being sent or retried */
    uint64_t rejected;     /* events rejected inside a 2xx answer (part of failed) */
    uint64_t expired;      /* events given up by max_event_age_ms (part of failed) */
} sluice_stats;

/* Copies the counters into *out. Returns 0 or SLUICE_E_INVAL. */
SLUICE_API int sluice_client_stats(sluice_client *c, sluice_stats *out);

#ifdef __cplusplus
}
#endif
#endif
