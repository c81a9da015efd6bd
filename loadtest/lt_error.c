/* lt_error.c — string tables generated from LT_ERRORS. */
#include "lt_error.h"

const char *lt_err_code(int err)
{
    switch (err) {
#define LT_X_CODE(name, val, code, msg)                                                            \
    case val:                                                                                      \
        return code;
        LT_ERRORS(LT_X_CODE)
#undef LT_X_CODE
    }
    return "unknown";
}

const char *lt_strerror(int err)
{
    switch (err) {
#define LT_X_MSG(name, val, code, msg)                                                             \
    case val:                                                                                      \
        return msg;
        LT_ERRORS(LT_X_MSG)
#undef LT_X_MSG
    }
    return "unknown error";
}
