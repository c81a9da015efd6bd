/*
 * support.h — helpers for the integration tests: child processes (the collector and the mock
 * Kafka helper), an HTTP client (libcurl) and a raw-socket client, a Kafka consumer that reads a
 * whole topic, and JSON / msgpack / zstd / gzip builders.
 *
 * Not thread-safe: a test process uses these from its main thread only.
 *
 * Children never outlive the test: each is forked with PR_SET_PDEATHSIG(SIGKILL) (so a test killed
 * by a ctest timeout takes its children with it), every live child is recorded in a small table,
 * and an atexit handler kills whatever is still in it (so a failing assertion that ends the
 * process leaves nothing behind). Normal teardown goes through sup_env_stop().
 *
 * Errors: functions returning int return 0 on success and -1 on failure, after printing one line
 * that says why on stderr (tests assert on the return value; the line is what a human reads).
 * Every wait has a deadline given in milliseconds; no function waits longer than that.
 */
#ifndef SLUICE_TEST_SUPPORT_H
#define SLUICE_TEST_SUPPORT_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "base.h"
#include "kafka_read.h"

/* ---------- time (clocks: base_mono_ms / base_wall_ms) ---------- */

/* ---------- text buffers: base_buf_t, kept NUL-terminated ---------- */

#define SUP_TEXT_MAX ((size_t)256 << 20) /* the cap of a zeroed buffer */

/* Appends p[0..n) to b and keeps b->data NUL-terminated (the NUL is not counted in len, so
 * data is a C string once anything, even 0 bytes, was appended). A zeroed base_buf_t ({0},
 * calloc) is taken as an empty buffer capped at SUP_TEXT_MAX, so every sup_ output parameter
 * may start zeroed. Returns 0, BASE_E_TOO_LARGE or BASE_E_NOMEM (b unchanged). Free with
 * base_buf_free(). */
int sup_text_append(base_buf_t *b, const void *p, size_t n);

/* ---------- the mock Kafka helper process (sluice-mock-kafka) ---------- */

typedef struct sup_mock {
    pid_t pid;
    int cmd_fd;          /* its stdin */
    int out_fd;          /* its stdout */
    char bootstrap[256]; /* "127.0.0.1:PORT[,...]" */
} sup_mock_t;

/* Starts the helper at path with n_brokers brokers and partitions partitions per topic, and waits
 * up to timeout_ms for its bootstrap line. On failure nothing is left running. */
int sup_mock_start(sup_mock_t *m, const char *path, int n_brokers, int partitions, int timeout_ms);
/* Sends one command line ("down 1", "up 1") and waits up to timeout_ms for its "ok". */
int sup_mock_cmd(sup_mock_t *m, const char *cmd, int timeout_ms);
/* Sends "quit", waits for exit (bounded), kills it if needed. Safe on a zeroed/stopped mock. */
void sup_mock_stop(sup_mock_t *m);

/* ---------- the collector process ---------- */

typedef struct sup_collector {
    pid_t pid;
    int port;
    int admin_port;     /* from the "admin_listening" line (admin_listen set), else 0 */
    char log_path[512]; /* its stderr (JSON lines), kept after the process ends */
} sup_collector_t;

/*
 * Starts path with: --listen 127.0.0.1:0 --brokers BOOT (omitted when brokers is NULL) --write-key
 * each of keys[] (NULL-terminated, "KEY=SOURCE") --data-dir DIR/data --log-level debug, plus
 * --config DIR/sluice.yaml when config_yaml is not NULL (its text is written there first).
 * stderr goes to DIR/collector.log. Waits up to timeout_ms for the "listening" log line and takes
 * the port from it. On failure the process is killed and its log is printed.
 */
int sup_collector_start(sup_collector_t *c, const char *path, const char *dir, const char *brokers,
                        const char *const *keys, const char *config_yaml, int timeout_ms);
/* Sends sig (no-op when not running). */
void sup_collector_signal(sup_collector_t *c, int sig);
/* Waits up to timeout_ms for exit; returns the exit status (0..255), 128+signal when killed by a
 * signal, or -1 on timeout (the process is then left running). */
int sup_collector_wait(sup_collector_t *c, int timeout_ms);
/* SIGTERM, wait up to timeout_ms, then SIGKILL. Returns the exit status as above. Safe to call
 * on a zeroed or already-stopped collector (returns 0). */
int sup_collector_stop(sup_collector_t *c, int timeout_ms);
/* Prints the last max_bytes of the collector's log to stderr (for failing tests). */
void sup_collector_dump_log(const sup_collector_t *c, size_t max_bytes);
/* True when the log contains needle. */
bool sup_collector_log_contains(const sup_collector_t *c, const char *needle);

/* ---------- any other child process (e.g. sluice-load) ---------- */

/* Starts argv[0] (argv NULL-terminated) with stdin from /dev/null and stdout+stderr appended to
 * log_path, tracked like the other children (killed when the test dies). Returns its pid, or -1
 * (a line on stderr says why). */
pid_t sup_child_start(char *const argv[], const char *log_path);
/* Waits up to timeout_ms for pid to exit; returns its exit status (0..255), 128+signal when
 * killed by a signal, or -1 on timeout (it is then SIGKILLed and reaped, so nothing is left). */
int sup_child_wait(pid_t pid, int timeout_ms);
/* As sup_child_wait, but on timeout the child is left running (returns -1). */
int sup_child_wait_quiet(pid_t pid, int timeout_ms);

/* Peak resident set (VmHWM) of a live process in KiB, or -1. */
long sup_proc_hwm_kb(pid_t pid);

/* ---------- a whole test environment: temp dir + mock helper + collector ---------- */

typedef struct sup_env {
    char dir[256]; /* mkdtemp'd; sup_env_stop removes it unless SLUICE_KEEP_TMP is set */
    sup_mock_t mock;
    sup_collector_t coll;
} sup_env_t;

typedef struct sup_env_opts {
    const char *config_yaml; /* NULL: none */
    int n_brokers;           /* 0: 1 */
    int partitions;          /* 0: 3 */
    const char *const *keys; /* NULL: {"wk_test=test", "wk_web=web"} */
} sup_env_opts_t;

/* Paths from the environment set by CMake: SLUICE_COLLECTOR, SLUICE_MOCK_KAFKA. */
int sup_env_start(sup_env_t *e, const sup_env_opts_t *opts);
/* Stops the collector (SIGTERM, bounded) and the helper. Returns the collector's exit status.
 * Idempotent. */
int sup_env_stop(sup_env_t *e);

/* ---------- HTTP over libcurl ---------- */

typedef struct sup_http_resp {
    long status;        /* 0 when the transfer failed (connection refused/closed) */
    base_buf_t body;    /* NUL-terminated */
    base_buf_t headers; /* raw header lines of the final answer, NUL-terminated */
    long num_connects;  /* new connections this transfer made (0 = reused keep-alive) */
    double seconds;     /* total time */
    json_t *json;       /* body parsed as JSON, or NULL */
} sup_http_resp_t;

typedef struct sup_http_req {
    const char *method; /* "POST" when NULL */
    const char *path;
    const char *const *headers; /* NULL-terminated "Name: value" lines, may be NULL */
    const void *body;
    size_t body_len;
    bool chunked;     /* send the body with Transfer-Encoding: chunked, in 1 KiB pieces */
    const char *user; /* HTTP Basic user (password empty) when not NULL */
    int timeout_ms;   /* 0: 15000 */
} sup_http_req_t;

typedef struct sup_http sup_http_t; /* one curl easy handle: keeps its connection alive */

sup_http_t *sup_http_new(int port);
/* From now on: https://, verifying the server against the CA (PEM) file cafile (NULL: back to
 * http://). */
void sup_http_set_ca(sup_http_t *h, const char *cafile);
void sup_http_free(sup_http_t *h);
/* Performs req. Returns 0 when an HTTP answer arrived (any status), -1 otherwise (resp->status 0).
 * resp must be released with sup_http_resp_free() in both cases. */
int sup_http_do(sup_http_t *h, const sup_http_req_t *req, sup_http_resp_t *resp);
void sup_http_resp_free(sup_http_resp_t *resp);
/* Value of header name (case-insensitive) in resp, copied into out (NUL-terminated). */
bool sup_http_header(const sup_http_resp_t *resp, const char *name, char *out, size_t outlen);

/* One request on a fresh connection (a new handle, freed after). */
int sup_http_once(int port, const sup_http_req_t *req, sup_http_resp_t *resp);

/* ---------- raw TCP to 127.0.0.1 ---------- */

/* Connects with a deadline; returns the fd or -1. */
int sup_tcp_connect(int port, int timeout_ms);
/* Writes all of p (bounded by timeout_ms). Returns 0, or -1 (e.g. the peer closed). */
int sup_tcp_send(int fd, const void *p, size_t n, int timeout_ms);
/* Reads until the peer closes, out holds max bytes, or timeout_ms passes. Returns 1 if the peer
 * closed (EOF or reset), 0 on timeout/full. */
int sup_tcp_read_until_close(int fd, base_buf_t *out, size_t max, int timeout_ms);
/* Reads until one full HTTP answer head and its Content-Length body are in out, or the peer
 * closes, or timeout_ms passes. Returns the status code, or -1 when no status line arrived. */
int sup_tcp_read_answer(int fd, base_buf_t *out, int timeout_ms);

/* ---------- TLS to 127.0.0.1 (OpenSSL; support_tls.c) ---------- */

/* Makes a self-signed EC P-256 certificate for 127.0.0.1 (subjectAltName IP:127.0.0.1) with
 * subject CN=cn, by the openssl command: DIR/NAME.crt and DIR/NAME.key. Returns 0 or -1. */
int sup_tls_make_cert(const char *dir, const char *name, const char *cn);

typedef struct sup_tls sup_tls_t; /* one TLS client connection (blocking socket + deadlines) */

/* Connects and completes a handshake, verifying the server against cafile (PEM) for IP
 * 127.0.0.1. NULL on failure (a line on stderr says why). */
sup_tls_t *sup_tls_connect(int port, const char *cafile, int timeout_ms);
void sup_tls_close(sup_tls_t *t);
/* Subject CN of the server's certificate, into out. Returns 0 or -1. */
int sup_tls_peer_cn(sup_tls_t *t, char *out, size_t outlen);
/* Writes all of p. Returns 0, or -1. */
int sup_tls_send(sup_tls_t *t, const void *p, size_t n, int timeout_ms);
/* As sup_tcp_read_answer, over TLS: one answer (head + Content-Length body) appended to out;
 * returns the status, or -1 when no status line arrived (closed, timeout). */
int sup_tls_read_answer(sup_tls_t *t, base_buf_t *out, int timeout_ms);
/* Reads until the peer closes (close_notify, EOF or reset: returns 1) or timeout_ms (0). */
int sup_tls_read_until_close(sup_tls_t *t, base_buf_t *out, size_t max, int timeout_ms);

/* ---------- event / batch builders (jansson) ---------- */

/* A unique messageId "<prefix>-<n>" (n from a process-wide counter). */
void sup_message_id(char *out, size_t outlen, const char *prefix);
/* {"type":"track","messageId":ID,"userId":USER,"event":NAME,"properties":{"i":i}} — new ref. */
json_t *sup_track(const char *message_id, const char *user_id, const char *event, int i);
/* {"batch":events (reference stolen),"sentAt":ISO now} — new ref. */
json_t *sup_batch(json_t *events);
/* Parses "YYYY-MM-DDTHH:MM:SS.mmmZ" (that shape only) to epoch ms: 0, or -1. */
int sup_parse_iso8601(const char *s, int64_t *ms);

/* json_dumps (compact) into buf. */
int sup_json_dump(const json_t *j, base_buf_t *out);
/* Encodes j as msgpack (maps, arrays, strings, integers, reals, booleans, null). */
int sup_msgpack_encode(const json_t *j, base_buf_t *out);
/* Decodes one msgpack value into JSON (binary/ext become strings). NULL when malformed or when
 * bytes remain after the value. */
json_t *sup_msgpack_decode(const void *p, size_t n);

/* Compresses p with zstd (level 3) / gzip (RFC 1952). */
int sup_zstd(const void *p, size_t n, base_buf_t *out);
int sup_gzip(const void *p, size_t n, base_buf_t *out);
/* Compresses zero_bytes zero bytes, streaming (never holds them in memory): a decompression bomb.
 */
int sup_zstd_zeros(size_t zero_bytes, base_buf_t *out);
int sup_gzip_zeros(size_t zero_bytes, base_buf_t *out);

/* ---------- Kafka consumer ---------- */

/* The message types, sup_kmsgs_free and sup_kmsg_header: kafka_read.h (the one reader). */

/*
 * Reads every message of topic (all partitions, from the beginning) with a consumer of its own
 * (sup_kafka_read, kafka_read.h). First waits until the
 * topic's high watermarks add up to at least min_count (or timeout_ms passes), then reads up to
 * the watermarks seen at that moment, so the result is exactly what the topic held — extra or
 * duplicate messages are visible to the caller. Returns 0 (out->n may be below min_count when the
 * deadline passed first) or -1 when the topic could not be read.
 */
int sup_consume(const char *bootstrap, const char *topic, size_t min_count, int timeout_ms,
                sup_kmsgs_t *out);
/* The value decoded: msgpack when it starts like a msgpack map, else JSON. New ref or NULL. */
json_t *sup_kmsg_value(const sup_kmsg_t *m);
/* Index of the message whose decoded value has messageId id (in the value, or in "raw" for
 * rejected records), or -1. */
long sup_kmsgs_find(const sup_kmsgs_t *m, const char *message_id);
/* How many messages carry message_id (counts exact-once delivery). */
size_t sup_kmsgs_count_id(const sup_kmsgs_t *m, const char *message_id);

#endif
