/*
 * lt_error.h — the error codes of sluice-load's modules: 0 OK, negative failure, one X-macro
 * table, append-only. "Bad input" (INVAL), "out of resources" (NOMEM, TOO_LARGE) and "the world
 * said no" (IO, KAFKA, TIMEOUT, MISMATCH) are distinct codes.
 */
#ifndef SLUICE_LOADTEST_LT_ERROR_H
#define SLUICE_LOADTEST_LT_ERROR_H

#define LT_ERRORS(X)                                                                               \
    X(OK, 0, "ok", "ok")                                                                           \
    X(E_INVAL, -1, "invalid_argument", "invalid argument or option value")                         \
    X(E_NOMEM, -2, "no_memory", "out of memory")                                                   \
    X(E_TOO_LARGE, -3, "too_large", "a bounded buffer or table would exceed its limit")            \
    X(E_IO, -4, "io_error", "a file, socket or process operation failed")                          \
    X(E_KAFKA, -5, "kafka_error", "the Kafka client failed")                                       \
    X(E_TIMEOUT, -6, "timeout", "the deadline passed")                                             \
    X(E_MISMATCH, -7, "verify_mismatch", "verification found lost, duplicated or unexpected data")

typedef enum {
#define LT_X_ENUM(name, val, code, msg) LT_##name = val,
    LT_ERRORS(LT_X_ENUM)
#undef LT_X_ENUM
} lt_err_t;

/* Stable code string of err ("unknown" if not in the table). Never NULL. */
const char *lt_err_code(int err);
/* Human message of err. Never NULL. */
const char *lt_strerror(int err);

#endif
