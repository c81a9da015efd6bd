/* err.c — the base layer's error strings, from the one X-macro in base.h. */
#include "base.h"

const char *base_strerror(int err)
{
    switch (err) {
#define BASE_X_MSG(name, val, msg)                                                                 \
    case BASE_##name:                                                                              \
        return msg;
        BASE_ERRORS(BASE_X_MSG)
#undef BASE_X_MSG
    }
    return "unknown error";
}
