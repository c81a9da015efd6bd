/* err.c — the base layer's error strings (from the one X-macro in base.h) and errno names. */
#include "base.h"

#include <errno.h>

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

const char *base_errno_name(int errnum)
{
    switch (errnum) {
    case 0:
        return "";
#define BASE_ERRNO(e)                                                                              \
    case e:                                                                                        \
        return #e;
        BASE_ERRNO(EPERM)
        BASE_ERRNO(ENOENT)
        BASE_ERRNO(EINTR)
        BASE_ERRNO(EIO)
        BASE_ERRNO(ENXIO)
        BASE_ERRNO(EBADF)
        BASE_ERRNO(EAGAIN)
        BASE_ERRNO(ENOMEM)
        BASE_ERRNO(EACCES)
        BASE_ERRNO(EFAULT)
        BASE_ERRNO(EBUSY)
        BASE_ERRNO(EEXIST)
        BASE_ERRNO(EXDEV)
        BASE_ERRNO(ENODEV)
        BASE_ERRNO(ENOTDIR)
        BASE_ERRNO(EISDIR)
        BASE_ERRNO(EINVAL)
        BASE_ERRNO(ENFILE)
        BASE_ERRNO(EMFILE)
        BASE_ERRNO(ETXTBSY)
        BASE_ERRNO(EFBIG)
        BASE_ERRNO(ENOSPC)
        BASE_ERRNO(ESPIPE)
        BASE_ERRNO(EROFS)
        BASE_ERRNO(EMLINK)
        BASE_ERRNO(ENAMETOOLONG)
        BASE_ERRNO(ENOTEMPTY)
        BASE_ERRNO(ELOOP)
        BASE_ERRNO(EDQUOT)
        BASE_ERRNO(ESTALE)
        BASE_ERRNO(EOVERFLOW)
        BASE_ERRNO(ENOTSUP)
#undef BASE_ERRNO
    }
    return "EUNKNOWN";
}
