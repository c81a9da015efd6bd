/*
 * base.h — the base layer: small helpers every sluice binary (sluice-collector, libsluice,
 * sluice-load) compiles instead of writing its own. Depends on libc (with POSIX threads) only:
 * no libuv, no msgpack, no allocator of its own, no global state.
 *
 * Modelled on curl's lib/curlx/ (dynbuf: a buffer born with a hard cap that tells "too large"
 * from "out of memory"), Redis's fsyncFileDir (atomic replace made durable by syncing the
 * directory) and sentry-native's background worker (one thread, signals blocked, a shutdown
 * deadline).
 *
 * Errors: every function that can fail returns 0 (BASE_OK) or a negative base_err_t; results go
 * out through pointers. I/O failures also carry errno and the failed step (base_ioerr_t).
 * Thread safety: none of these functions keeps shared state; a base_buf_t or base_afile_t belongs
 * to one thread at a time; base_stack_* and base_worker_wake are safe from any thread.
 */
#ifndef SLUICE_BASE_H
#define SLUICE_BASE_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <time.h>

/* ---- errors ---------------------------------------------------------------------------------- */

#define BASE_ERRORS(X)                                                                             \
    X(OK, 0, "ok")                                                                                 \
    X(E_NOMEM, -1, "out of memory")                                                                \
    X(E_TOO_LARGE, -2, "larger than the configured limit")                                         \
    X(E_INVAL, -3, "invalid argument")                                                             \
    X(E_IO, -4, "I/O error")                                                                       \
    X(E_THREAD, -5, "could not start a thread")                                                    \
    X(E_TIMEOUT, -6, "deadline passed")

typedef enum {
#define BASE_X_ENUM(name, val, msg) BASE_##name = val,
    BASE_ERRORS(BASE_X_ENUM)
#undef BASE_X_ENUM
} base_err_t;

/* A static English message for a base_err_t ("unknown error" for anything else). */
const char *base_strerror(int err);

/* The symbolic name of an errno value ("ENOSPC", "EROFS", "ENOENT", ...), static, for logs that
 * must tell disk full from read-only from missing; "EUNKNOWN" for a value it does not know, ""
 * for 0. Thread-safe. */
const char *base_errno_name(int errnum);

/* ---- bounded buffer (curl's dynbuf) ---------------------------------------------------------- */

/*
 * A growable byte buffer with a hard cap set at birth: len never exceeds max. The buffer owns
 * data (malloc'd, NOT NUL-terminated unless the caller appends one); base_buf_free() releases it,
 * base_buf_reset() empties it and keeps the allocation. A zero-initialised base_buf_t is NOT
 * usable: call base_buf_init() (max 0 refuses every append).
 *
 * Every append/reserve returns BASE_OK, BASE_E_TOO_LARGE when len + n would exceed max (the
 * limit the caller chose: answer 413 or "too large", never "out of memory"), or BASE_E_NOMEM when
 * malloc failed. On failure the buffer is unchanged. max may be lowered between appends to
 * bound one record inside a buffer that already grew for bigger ones.
 *
 * A fixed buffer (base_buf_init_fixed) writes into caller memory of cap bytes and never
 * allocates, because max never exceeds cap: appends past cap are BASE_E_TOO_LARGE. The caller
 * owns the memory: it may lower max and raise it again up to cap (never beyond), and must not
 * call base_buf_free() or base_buf_detach() on it (base_buf_reset() is fine).
 */
typedef struct base_buf {
    char *data;
    size_t len, cap, max;
} base_buf_t;

void base_buf_init(base_buf_t *b, size_t max);
void base_buf_init_fixed(base_buf_t *b, void *mem, size_t cap);
int base_buf_reserve(base_buf_t *b, size_t n); /* afterwards len + n <= cap */
/* Makes the allocation exactly cap bytes when it is smaller (no doubling), for a caller that
 * charges each allocation to a memory budget and so picks the size itself. BASE_E_TOO_LARGE when
 * cap > max, BASE_E_NOMEM when realloc fails; b is unchanged on failure and when cap is not
 * larger than the allocation. Not for a fixed buffer. */
int base_buf_grow_to(base_buf_t *b, size_t cap);
int base_buf_append(base_buf_t *b, const void *p, size_t n);
int base_buf_append_str(base_buf_t *b, const char *s); /* strlen(s) bytes, no NUL */
/* printf-style append (no NUL kept); BASE_E_INVAL on a format error. */
int base_buf_printf(base_buf_t *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
void base_buf_reset(base_buf_t *b);
void base_buf_free(base_buf_t *b);
/* Hands data to the caller (who frees it with free()) and leaves b empty, keeping max. */
char *base_buf_detach(base_buf_t *b, size_t *len);

#define BASE_BUF_LIT(b, lit) base_buf_append((b), (lit), sizeof(lit) - 1)

/* ---- UTF-8 ----------------------------------------------------------------------------------- */

/* True when s[0..len) is well-formed UTF-8 (Unicode Table 3-7: no overlongs, no surrogates,
 * nothing above U+10FFFF). s may be NULL when len is 0. */
bool base_utf8_valid(const char *s, size_t len);

/* Length (1..4) of the well-formed sequence starting at s[0] (n > 0 bytes available), or 0 when
 * s[0] does not start one. */
size_t base_utf8_seq_len(const char *s, size_t n);

/* ---- JSON string writer ---------------------------------------------------------------------- */

/*
 * Appends s[0..len) as a JSON string (quotes included) to b: '"', '\\' and control characters
 * escaped (\n \r \t \b \f or \u00XX), everything else copied. base_json_str() takes any bytes:
 * each byte that does not start a well-formed UTF-8 sequence becomes \ufffd. base_json_str_utf8()
 * is for text the caller has already validated (no checks, faster). s may be NULL when len is 0.
 * Errors as base_buf_append(); on failure b may hold a partial string (reset it).
 */
int base_json_str(base_buf_t *b, const char *s, size_t len);
int base_json_str_utf8(base_buf_t *b, const char *s, size_t len);

/* ---- ISO-8601 -------------------------------------------------------------------------------- */

#define BASE_ISO8601_LEN 24 /* "YYYY-MM-DDThh:mm:ss.mmmZ" */

/* Writes ms (epoch milliseconds, any sign: proleptic Gregorian, correct before 1970) as
 * "YYYY-MM-DDThh:mm:ss.mmmZ" plus a NUL into out[BASE_ISO8601_LEN + 1]; returns 24. Clamped to
 * years 0000..9999 so the shape is fixed. */
size_t base_iso8601_format(int64_t ms, char *out);

/* Parses YYYY-MM-DD(T|t| )hh:mm:ss[.f+][Z|z|±hh:mm|±hhmm] (no zone means UTC; fractions are
 * truncated to ms; second 60 rolls into the next minute) into epoch ms. Returns true on success;
 * *ms_out is untouched on failure. */
bool base_iso8601_parse(const char *s, size_t len, int64_t *ms_out);
/* The same answer, with the minute ("YYYY-MM-DDThh:mm") of the last valid parse kept in c: a
 * stream of timestamps of the same minute then parses only seconds, fraction and zone. c starts
 * zeroed ({0}); one per thread. */
typedef struct base_iso8601_cache {
    char minute[16];
    int64_t minute_ms;
    bool valid;
} base_iso8601_cache_t;
bool base_iso8601_parse_cached(base_iso8601_cache_t *c, const char *s, size_t len, int64_t *ms_out);

/* ---- clocks ---------------------------------------------------------------------------------- */

uint64_t base_mono_ns(void); /* CLOCK_MONOTONIC: for intervals and deadlines */
int64_t base_mono_ms(void);
int64_t base_wall_ms(void); /* CLOCK_REALTIME epoch ms: for timestamps only */
/* The absolute time ms from now on clock (CLOCK_MONOTONIC or CLOCK_REALTIME), for
 * pthread_cond_timedwait / sem_timedwait. */
struct timespec base_deadline(clockid_t clock, uint64_t ms);
/* The timespec of the monotonic instant mono_ms (a base_mono_ms() value; a past one is fine),
 * for pthread_cond_timedwait on a condition set to CLOCK_MONOTONIC. */
struct timespec base_mono_ts(int64_t mono_ms);
/* Sleeps ms milliseconds of CLOCK_MONOTONIC, resuming after a signal. Blocks: never on an event
 * loop thread (SPEC: the loops never sleep). */
void base_sleep_ms(uint32_t ms);
/* The same in microseconds (a worker pacing short lock holds). */
void base_sleep_us(uint32_t us);

/* ---- files ----------------------------------------------------------------------------------- */

/* What failed: errnum (errno at the failure) and op, a static name of the step ("open",
 * "write", "fsync", "close", "rename", "fsync dir", "mkdir"). */
typedef struct base_ioerr {
    int errnum;
    const char *op;
} base_ioerr_t;

/* Writes all n bytes to fd, retrying short writes and EINTR. BASE_OK or BASE_E_IO (errno set). */
int base_write_all(int fd, const void *p, size_t n);

/* fsyncs the directory dir (Redis's fsyncFileDir), making a rename in it durable. BASE_OK or
 * BASE_E_IO (errno set). */
int base_fsync_dir(const char *dir);

/* mkdir -p: creates dir and every missing parent with mode (existing ones are left as they are).
 * BASE_OK when dir exists as a directory afterwards; BASE_E_IO with *err (op "mkdir", or "stat"
 * when a component exists but is not a directory: ENOTDIR) and errno set; BASE_E_INVAL for an
 * empty or over-long path. err may be NULL. */
int base_mkdir_p(const char *dir, unsigned mode, base_ioerr_t *err);

/*
 * Atomic file replace: base_afile_open() creates "<path>.tmp" (truncating a stale one) with
 * mode; base_afile_write() appends through a 64 KiB buffer; base_afile_commit() flushes, fsyncs
 * and closes the tmp file, renames it over path and fsyncs path's directory, so after a crash
 * path holds either the old or the whole new content. Any checksum is the caller's (hash the
 * bytes as you write them). Errors stick: after a failed write, commit fails with the first
 * error. commit and abort always release f (abort also unlinks the tmp file); call exactly one
 * of them after a successful open. Failures return BASE_E_IO (or BASE_E_NOMEM, BASE_E_INVAL for
 * a path too long) with f->err saying which step and errno. Blocks on disk I/O: never call from an
 * event-loop thread.
 * Write-behind: every BASE_AFILE_SYNC_BYTES written, the data so far is fdatasync'd, so a large
 * file never has more than that dirty in the page cache (Redis's rdb-save-incremental-fsync).
 * Without it a 168 MB dedup snapshot was written back all at once by the final fsync, and on
 * ext4 (data=ordered) every other fsync of the process, the dedup journal's that each 200 waits
 * for, queued behind it: p99 spikes of 100-170 ms every ~28 s at 100 k events/s.
 */
#define BASE_AFILE_SYNC_BYTES ((size_t)4 << 20)
typedef struct base_afile {
    int fd;
    int rc; /* first error, sticky */
    base_ioerr_t err;
    char *path, *tmp;
    unsigned char *wbuf;
    size_t wlen;
    size_t unsynced; /* bytes written to fd since the last (write-behind) fdatasync */
    unsigned syncs;  /* write-behind fdatasyncs so far (not counting commit's fsync) */
} base_afile_t;

int base_afile_open(base_afile_t *f, const char *path, unsigned mode);
int base_afile_write(base_afile_t *f, const void *p, size_t n);
int base_afile_commit(base_afile_t *f);
void base_afile_abort(base_afile_t *f);

/* Writes the whole of p[0..n) to path by base_afile_*: one call for small files. */
int base_file_replace(const char *path, unsigned mode, const void *p, size_t n, base_ioerr_t *err);

/* ---- lock-free stack ------------------------------------------------------------------------- */

/*
 * An intrusive multi-producer stack whose consumer takes everything at once (Treiber push by
 * CAS, take-all by exchange: no ABA, since nodes are never popped one by one). Embed a
 * base_snode_t in your struct and recover it with container_of-style arithmetic (or put it first).
 * base_stack_push() is safe from any thread and returns true when the stack was empty (the
 * caller's cue to wake the consumer once per batch). base_stack_take() returns every node pushed
 * so far in push order (oldest first), as a NULL-terminated list through next.
 */
typedef struct base_snode {
    struct base_snode *next;
} base_snode_t;

typedef struct base_stack {
#ifdef __cplusplus
    /* The one C++ file (proto/json_reader.cpp) only sees this layout, never touches it: a
     * pointer-sized atomic has a plain pointer's size and alignment on every target we build. */
    base_snode_t *head;
#else
    _Atomic(base_snode_t *) head;
#endif
} base_stack_t;

void base_stack_init(base_stack_t *s);
bool base_stack_push(base_stack_t *s, base_snode_t *n);
base_snode_t *base_stack_take(base_stack_t *s);

/* ---- periodic worker thread (sentry-native's bgworker) --------------------------------------- */

/*
 * One thread that runs tick(ud) every period_ms (measured from the end of the previous tick) and
 * whenever base_worker_wake() is called; all signals are blocked in it. tick runs on the worker
 * thread only, never concurrently with itself.
 *
 * base_worker_start(): BASE_OK with *out set, BASE_E_INVAL (no tick or period 0), BASE_E_NOMEM or
 * BASE_E_THREAD (pthread_create failed; nothing was started and *out is NULL).
 * base_worker_stop(): asks the thread to finish (a running tick is not interrupted; no further
 * tick starts) and waits at most deadline_ms. BASE_OK: the thread has exited and w is freed.
 * BASE_E_TIMEOUT: the tick is still running past the deadline; the thread is detached and frees
 * w itself when the tick returns, so the caller must keep ud alive (in practice: the process
 * exits). stop(NULL, ...) is BASE_OK.
 */
typedef struct base_worker base_worker_t;
typedef void (*base_worker_cb)(void *ud);

int base_worker_start(base_worker_t **out, const char *name, uint64_t period_ms,
                      base_worker_cb tick, void *ud);
void base_worker_wake(base_worker_t *w);
int base_worker_stop(base_worker_t *w, uint64_t deadline_ms);

#endif
