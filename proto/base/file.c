/*
 * file.c — write-all and atomic file replace (tmp -> fsync -> rename -> fsync dir, as Redis's
 * rdb.c with fsyncFileDir). Errors carry errno and the step that failed, so a caller can log
 * "rename: No space left on device" rather than "I/O error".
 */
#include "base.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define AFILE_BUF (64 * 1024)

int base_write_all(int fd, const void *p, size_t n)
{
    const char *c = p;
    while (n > 0) {
        ssize_t w = write(fd, c, n);
        if (w < 0) {
            if (errno == EINTR) continue;
            return BASE_E_IO;
        }
        if (w == 0) {
            errno = EIO;
            return BASE_E_IO;
        }
        c += w;
        n -= (size_t)w;
    }
    return BASE_OK;
}

int base_fsync_dir(const char *dir)
{
    int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0) return BASE_E_IO;
    int rc = fsync(fd);
    int saved = errno;
    close(fd);
    errno = saved;
    return rc == 0 ? BASE_OK : BASE_E_IO;
}

static int mkdir_fail(base_ioerr_t *err, const char *op, int errnum)
{
    if (err != NULL) {
        err->errnum = errnum;
        err->op = op;
    }
    errno = errnum;
    return errnum == EINVAL ? BASE_E_INVAL : BASE_E_IO;
}

/* One component: created, or already a directory. */
static int mkdir_one(const char *p, unsigned mode, base_ioerr_t *err)
{
    if (mkdir(p, (mode_t)mode) == 0) return BASE_OK;
    int e = errno;
    struct stat st;
    if (e == EEXIST) {
        if (stat(p, &st) != 0) return mkdir_fail(err, "stat", errno);
        return S_ISDIR(st.st_mode) ? BASE_OK : mkdir_fail(err, "stat", ENOTDIR);
    }
    /* A read-only or unreadable parent still lets an existing directory through. */
    if (stat(p, &st) == 0 && S_ISDIR(st.st_mode)) return BASE_OK;
    return mkdir_fail(err, "mkdir", e);
}

int base_mkdir_p(const char *dir, unsigned mode, base_ioerr_t *err)
{
    if (err != NULL) {
        err->errnum = 0;
        err->op = NULL;
    }
    size_t n = strlen(dir);
    if (n == 0 || n >= 4096) return mkdir_fail(err, "mkdir", EINVAL);
    char p[4096];
    memcpy(p, dir, n + 1);
    while (n > 1 && p[n - 1] == '/')
        p[--n] = '\0';
    /* Parents first (each stops at an existing one), then dir itself. */
    for (char *s = p + 1; *s != '\0'; s++) {
        if (*s != '/') continue;
        *s = '\0';
        int rc = mkdir_one(p, mode, err);
        *s = '/';
        if (rc != BASE_OK) return rc;
    }
    return mkdir_one(p, mode, err);
}

static int fail(base_afile_t *f, int rc, const char *op)
{
    if (f->rc == BASE_OK) {
        f->rc = rc;
        f->err.errnum = rc == BASE_E_IO ? errno : 0;
        f->err.op = op;
    }
    return f->rc;
}

static void release(base_afile_t *f)
{
    free(f->path);
    free(f->tmp);
    free(f->wbuf);
    f->path = f->tmp = NULL;
    f->wbuf = NULL;
    f->fd = -1;
}

int base_afile_open(base_afile_t *f, const char *path, unsigned mode)
{
    memset(f, 0, sizeof *f);
    f->fd = -1;
    size_t n = strlen(path);
    if (n == 0 || n > 4000) return fail(f, BASE_E_INVAL, "open");
    f->path = strdup(path);
    f->tmp = malloc(n + 5);
    f->wbuf = malloc(AFILE_BUF);
    if (f->path == NULL || f->tmp == NULL || f->wbuf == NULL) {
        int rc = fail(f, BASE_E_NOMEM, "open");
        release(f);
        return rc;
    }
    memcpy(f->tmp, path, n);
    memcpy(f->tmp + n, ".tmp", 5);
    f->fd = open(f->tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, (mode_t)mode);
    if (f->fd < 0) {
        int rc = fail(f, BASE_E_IO, "open");
        release(f);
        return rc;
    }
    return BASE_OK;
}

/* Counts n bytes written to fd; at BASE_AFILE_SYNC_BYTES, fdatasyncs them (write-behind). */
static int wrote(base_afile_t *f, size_t n)
{
    f->unsynced += n;
    if (f->unsynced < BASE_AFILE_SYNC_BYTES) return BASE_OK;
    if (fdatasync(f->fd) != 0) return fail(f, BASE_E_IO, "fsync");
    f->unsynced = 0;
    f->syncs++;
    return BASE_OK;
}

static int flush(base_afile_t *f)
{
    if (f->rc != BASE_OK) return f->rc;
    if (f->wlen > 0 && base_write_all(f->fd, f->wbuf, f->wlen) != BASE_OK)
        return fail(f, BASE_E_IO, "write");
    size_t n = f->wlen;
    f->wlen = 0;
    return wrote(f, n);
}

int base_afile_write(base_afile_t *f, const void *p, size_t n)
{
    if (f->rc != BASE_OK) return f->rc;
    if (n <= AFILE_BUF - f->wlen) {
        memcpy(f->wbuf + f->wlen, p, n);
        f->wlen += n;
        return BASE_OK;
    }
    if (flush(f) != BASE_OK) return f->rc;
    if (n < AFILE_BUF) {
        memcpy(f->wbuf, p, n);
        f->wlen = n;
        return BASE_OK;
    }
    if (base_write_all(f->fd, p, n) != BASE_OK) return fail(f, BASE_E_IO, "write");
    return wrote(f, n);
}

void base_afile_abort(base_afile_t *f)
{
    if (f->fd >= 0) close(f->fd);
    if (f->tmp != NULL) unlink(f->tmp);
    release(f);
}

int base_afile_commit(base_afile_t *f)
{
    if (flush(f) == BASE_OK && fsync(f->fd) != 0) fail(f, BASE_E_IO, "fsync");
    if (close(f->fd) != 0) fail(f, BASE_E_IO, "close");
    f->fd = -1;
    if (f->rc == BASE_OK && rename(f->tmp, f->path) != 0) fail(f, BASE_E_IO, "rename");
    if (f->rc != BASE_OK) {
        int saved = errno;
        unlink(f->tmp);
        errno = saved;
        release(f);
        return f->rc;
    }
    /* Make the rename itself durable: fsync the directory that holds path. */
    char *slash = strrchr(f->path, '/');
    const char *dir = ".";
    if (slash == f->path)
        dir = "/";
    else if (slash != NULL) {
        *slash = '\0';
        dir = f->path;
    }
    if (base_fsync_dir(dir) != BASE_OK) fail(f, BASE_E_IO, "fsync dir");
    release(f);
    return f->rc;
}

int base_file_replace(const char *path, unsigned mode, const void *p, size_t n, base_ioerr_t *err)
{
    base_afile_t f;
    int rc = base_afile_open(&f, path, mode);
    if (rc == BASE_OK) {
        base_afile_write(&f, p, n);
        rc = base_afile_commit(&f);
    }
    if (err != NULL) *err = f.err;
    return rc;
}
