/*
 * storage.c — storage_dir: batches kept on disk until a later attempt (in this run or the next
 * start, by this process or another) delivers them, and two small files: anonymous_id (the
 * persisted anonymousId) and opted_out (present while the user is opted out).
 *
 * One file per batch, named <epoch ms, 13 digits>-<pid>-<client tag>-<seq>.slb so that name
 * order is age order. Layout (little-endian):
 *     "SLB2" | u32 n_events | u32 payload_len | u32 crc32(payload) | payload
 *     payload = n_events x (u64 born_ms | u32 len | len bytes: one encoded event)
 * ("SLB1" files of earlier versions, without born_ms, are read too; their events count as born
 * when the file was named.) Written atomically: a .tmp file is written, fsync'd and renamed,
 * then the directory is fsync'd (base_write_all, base_fsync_dir; not base_afile_*, which closes
 * the file, since the writer keeps its lock through the rename), so a crash leaves either the whole
 * file or a stray .tmp (deleted by a later scan once it is a minute old and unlocked).
 *
 * Sharing. Several clients (in one process or many) may use one directory. Whoever sends a file
 * holds an exclusive flock() on it from loading (or from creating it, in write-ahead mode) until
 * it is deleted; others skip a locked file, and one that wins the lock on a file already deleted
 * (it opened it just before) sees st_nlink == 0 and lets it go. So a stored batch is never sent
 * by two holders at once, and never again once delivered.
 *
 * A file that fails any check is renamed *.corrupt (kept for inspection, never read again) and
 * reported through error_cb; it never stops the other files from being sent.
 */
#include "internal.h"

#include "base.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zlib.h>

#define FILE_MAGIC    "SLB2"
#define FILE_MAGIC_V1 "SLB1"
/* A .tmp this old and unlocked is an interrupted write (its writer crashed). */
#define TMP_STALE_MS (60 * 1000)
/* Batch files considered per load (the oldest first); more are seen by later loads. */
#define LOAD_MAX_NAMES 65536
#define HEADER_LEN     16
/* Sanity bounds for reading: a batch file larger than this is corrupt by definition. */
#define FILE_MAX_BYTES  (16u * 1024 * 1024)
#define FILE_MAX_EVENTS 100000u

static void put_u32(unsigned char *p, uint32_t v)
{
    p[0] = (unsigned char)v;
    p[1] = (unsigned char)(v >> 8);
    p[2] = (unsigned char)(v >> 16);
    p[3] = (unsigned char)(v >> 24);
}

static uint32_t get_u32(const unsigned char *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static bool has_suffix(const char *name, const char *suffix)
{
    size_t n = strlen(name), s = strlen(suffix);
    return n > s && !strcmp(name + n - s, suffix);
}

static int path_join(char *out, size_t size, const char *dir, const char *name)
{
    int n = snprintf(out, size, "%s/%s", dir, name);
    return n > 0 && (size_t)n < size ? 0 : SLUICE_E_TOO_LARGE;
}

static void put_u64(unsigned char *p, uint64_t v)
{
    put_u32(p, (uint32_t)v);
    put_u32(p + 4, (uint32_t)(v >> 32));
}

static uint64_t get_u64(const unsigned char *p)
{
    return (uint64_t)get_u32(p) | (uint64_t)get_u32(p + 4) << 32;
}

/* Writes a small file atomically: tmp, fsync, then link() to name -- which fails with EEXIST when
 * another client created it first (the caller then reads theirs). 0, EEXIST, or -1. */
static int create_small_file(const char *dir, const char *name, const char *data, size_t len)
{
    char path[4096], tmp[4200];
    if (path_join(path, sizeof path, dir, name)) return -1;
    char tag[SDK_UUID_LEN + 1];
    sdk_uuid(tag);
    snprintf(tmp, sizeof tmp, "%s.%s.tmp", path, tag);
    int fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
    if (fd < 0) return -1;
    bool ok = base_write_all(fd, data, len) == BASE_OK && fsync(fd) == 0;
    ok = close(fd) == 0 && ok;
    int rc = -1;
    if (ok) {
        if (link(tmp, path) == 0)
            rc = 0;
        else if (errno == EEXIST)
            rc = EEXIST;
    }
    unlink(tmp);
    if (rc == 0) base_fsync_dir(dir);
    return rc;
}

static bool uuid_valid(const char *s)
{
    for (int i = 0; i < SDK_UUID_LEN; i++) {
        bool dash = i == 8 || i == 13 || i == 18 || i == 23;
        if (dash ? s[i] != '-' : !strchr("0123456789abcdefABCDEF", s[i]) || !s[i]) return false;
    }
    return s[SDK_UUID_LEN] == '\0';
}

/* Reads storage_dir/anonymous_id into c->anon_id. 1 when a valid id was read, 0 when absent or
 * invalid. */
static int read_anon_id(sluice_client *c)
{
    char path[4096], buf[64];
    if (path_join(path, sizeof path, c->storage_dir, "anonymous_id")) return 0;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return 0;
    ssize_t n = read(fd, buf, sizeof buf - 1);
    close(fd);
    if (n <= 0) return 0;
    buf[n] = '\0';
    buf[strcspn(buf, "\r\n")] = '\0';
    if (!uuid_valid(buf)) return 0;
    memcpy(c->anon_id, buf, SDK_UUID_LEN + 1);
    return 1;
}

int sdk_storage_open(sluice_client *c)
{
    const char *dir = c->storage_dir;
    if (mkdir(dir, 0700) != 0 && errno != EEXIST) {
        sdk_log(c, SLUICE_LOG_ERROR, "storage_dir %s: cannot create: %s", dir, strerror(errno));
        return SLUICE_E_STORAGE;
    }
    struct stat st;
    if (stat(dir, &st) != 0 || !S_ISDIR(st.st_mode)) {
        sdk_log(c, SLUICE_LOG_ERROR, "storage_dir %s: not a directory", dir);
        return SLUICE_E_STORAGE;
    }
    /* Writable? Create (and remove) a probe: access() would lie for root and read-only mounts. */
    char probe[4096], tag[SDK_UUID_LEN + 1];
    sdk_uuid(tag);
    int n = snprintf(probe, sizeof probe, "%s/.probe-%s", dir, tag);
    if (n <= 0 || (size_t)n >= sizeof probe) return SLUICE_E_STORAGE;
    int fd = open(probe, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
    if (fd < 0) {
        sdk_log(c, SLUICE_LOG_ERROR, "storage_dir %s: cannot write: %s", dir, strerror(errno));
        return SLUICE_E_STORAGE;
    }
    close(fd);
    unlink(probe);

    if (!read_anon_id(c)) {
        char id[SDK_UUID_LEN + 2];
        sdk_uuid(id);
        id[SDK_UUID_LEN] = '\n';
        int rc = create_small_file(dir, "anonymous_id", id, SDK_UUID_LEN + 1);
        if (rc == 0) {
            memcpy(c->anon_id, id, SDK_UUID_LEN);
            c->anon_id[SDK_UUID_LEN] = '\0';
        } else if (rc != EEXIST || !read_anon_id(c)) {
            /* An unreadable anonymous_id that is not ours to replace: keep a per-run id. */
            sdk_log(c, SLUICE_LOG_WARN, "storage_dir %s: anonymous_id unusable; per-run id", dir);
            id[SDK_UUID_LEN] = '\0';
            memcpy(c->anon_id, id, SDK_UUID_LEN + 1);
        }
    }
    char path[4096];
    if (!path_join(path, sizeof path, dir, "opted_out") && access(path, F_OK) == 0)
        atomic_store(&c->opted_out, true);
    return SLUICE_OK;
}

int sdk_storage_set_opt_out(sluice_client *c, bool opted_out)
{
    char path[4096];
    if (path_join(path, sizeof path, c->storage_dir, "opted_out")) return SLUICE_E_STORAGE;
    if (!opted_out) return unlink(path) == 0 || errno == ENOENT ? SLUICE_OK : SLUICE_E_STORAGE;
    int rc = create_small_file(c->storage_dir, "opted_out", "1\n", 2);
    return rc == 0 || rc == EEXIST ? SLUICE_OK : SLUICE_E_STORAGE;
}

int sdk_storage_scan(sluice_client *c)
{
    if (mkdir(c->storage_dir, 0700) != 0 && errno != EEXIST) return SLUICE_E_STORAGE;
    DIR *d = opendir(c->storage_dir);
    if (!d) return SLUICE_E_STORAGE;
    c->storage_bytes = 0;
    c->storage_files = 0;
    struct dirent *e;
    char path[4096];
    int64_t now = base_wall_ms();
    while ((e = readdir(d))) {
        bool batch = has_suffix(e->d_name, ".slb"), tmp = has_suffix(e->d_name, ".slb.tmp");
        if ((!batch && !tmp) || path_join(path, sizeof path, c->storage_dir, e->d_name)) continue;
        if (tmp) {
            /* An interrupted write: old, and no writer holds its lock. */
            struct stat ts;
            int fd = open(path, O_RDONLY | O_CLOEXEC);
            if (fd < 0) continue;
            if (fstat(fd, &ts) == 0 && now - (int64_t)ts.st_mtime * 1000 > TMP_STALE_MS &&
                flock(fd, LOCK_EX | LOCK_NB) == 0)
                unlink(path);
            close(fd);
            continue;
        }
        struct stat st;
        if (stat(path, &st) == 0 && S_ISREG(st.st_mode)) {
            c->storage_bytes += (uint64_t)st.st_size;
            c->storage_files++;
        }
    }
    closedir(d);
    if (c->storage_files)
        sdk_log(c, SLUICE_LOG_INFO, "storage_dir holds %u batches (%llu bytes) to send",
                c->storage_files, (unsigned long long)c->storage_bytes);
    return SLUICE_OK;
}

int sdk_storage_write(sluice_client *c, sdk_node_t *const *nodes, uint32_t n, sdk_file_t *held)
{
    size_t size = HEADER_LEN;
    for (uint32_t i = 0; i < n; i++)
        size += 12 + nodes[i]->len;
    if (c->storage_bytes + size > c->cfg.storage_max_bytes) return SLUICE_E_TOO_LARGE;
    unsigned char *buf = malloc(size);
    if (!buf) return SLUICE_E_NOMEM;
    unsigned char *p = buf + HEADER_LEN;
    for (uint32_t i = 0; i < n; i++) {
        put_u64(p, (uint64_t)nodes[i]->born_ms);
        put_u32(p + 8, nodes[i]->len);
        memcpy(p + 12, nodes[i]->data, nodes[i]->len);
        p += 12 + nodes[i]->len;
    }
    uint32_t payload = (uint32_t)(size - HEADER_LEN);
    memcpy(buf, FILE_MAGIC, 4);
    put_u32(buf + 4, n);
    put_u32(buf + 8, payload);
    put_u32(buf + 12, (uint32_t)crc32(crc32(0L, Z_NULL, 0), buf + HEADER_LEN, payload));

    char name[64], path[4096], tmp[4096];
    snprintf(name, sizeof name, "%013lld-%d-%s-%06u.slb", (long long)base_wall_ms(), (int)getpid(),
             c->inst, c->file_seq++ % 1000000u);
    int rc = SLUICE_E_STORAGE;
    if (path_join(path, sizeof path, c->storage_dir, name) ||
        snprintf(tmp, sizeof tmp, "%s.tmp", path) >= (int)sizeof tmp) {
        free(buf);
        return rc;
    }
    /* Locked from creation, so neither a scan (tmp cleanup) nor a loader touches it. */
    int fd = open(tmp, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (fd >= 0) {
        bool ok =
            flock(fd, LOCK_EX) == 0 && base_write_all(fd, buf, size) == BASE_OK && fsync(fd) == 0;
        if (ok && rename(tmp, path) == 0) {
            base_fsync_dir(c->storage_dir);
            c->storage_bytes += size;
            c->storage_files++;
            rc = SLUICE_OK;
            if (held) {
                snprintf(held->path, sizeof held->path, "%s", path);
                held->fd = fd;
                held->own = true;
                fd = -1;
            }
        } else {
            unlink(tmp);
        }
        if (fd >= 0) close(fd);
    }
    free(buf);
    return rc;
}

static int cmp_names(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

/* The *.slb names, oldest first (at most LOAD_MAX_NAMES): *names (free each and the array).
 * Returns the count or a negative error. */
static long list_names(sluice_client *c, char ***names)
{
    DIR *d = opendir(c->storage_dir);
    if (!d) return SLUICE_E_STORAGE;
    char **v = NULL;
    size_t n = 0, cap = 0;
    struct dirent *e;
    while ((e = readdir(d)) && n < LOAD_MAX_NAMES) {
        if (!has_suffix(e->d_name, ".slb") || strlen(e->d_name) >= 256) continue;
        if (n == cap) {
            size_t nc = cap ? cap * 2 : 64;
            char **nv = realloc(v, nc * sizeof *nv);
            if (!nv) break;
            v = nv;
            cap = nc;
        }
        if (!(v[n] = strdup(e->d_name))) break;
        n++;
    }
    closedir(d);
    if (n) qsort(v, n, sizeof *v, cmp_names);
    *names = v;
    return (long)n;
}

/* Parses a whole file; on success *nodes holds n nodes. Returns 0 or a reason string. v1 files'
 * events get born_ms = v1_born. */
static const char *parse_file(const unsigned char *buf, size_t size, int64_t v1_born,
                              sdk_node_t ***nodes_out, uint32_t *n_out)
{
    if (size < HEADER_LEN) return "short header";
    bool v1 = !memcmp(buf, FILE_MAGIC_V1, 4);
    if (!v1 && memcmp(buf, FILE_MAGIC, 4)) return "bad magic";
    const size_t pre = v1 ? 4 : 12; /* per-event prefix: [born_ms] len */
    uint32_t n = get_u32(buf + 4), payload = get_u32(buf + 8);
    if (n == 0 || n > FILE_MAX_EVENTS) return "bad event count";
    if (payload != size - HEADER_LEN) return "length mismatch (truncated?)";
    if ((uint32_t)crc32(crc32(0L, Z_NULL, 0), buf + HEADER_LEN, payload) != get_u32(buf + 12))
        return "checksum mismatch";
    sdk_node_t **nodes = calloc(n, sizeof *nodes);
    if (!nodes) return "out of memory";
    const unsigned char *p = buf + HEADER_LEN, *end = buf + size;
    for (uint32_t i = 0; i < n; i++) {
        uint32_t len = (size_t)(end - p) >= pre ? get_u32(p + pre - 4) : 0;
        if (len == 0 || len > (size_t)(end - p) - pre ||
            !(nodes[i] = malloc(sizeof **nodes + len))) {
            for (uint32_t k = 0; k < i; k++)
                free(nodes[k]);
            free(nodes);
            return len ? "out of memory" : "bad event length";
        }
        nodes[i]->next = NULL;
        nodes[i]->seq = 0;
        nodes[i]->born_ms = v1 ? v1_born : (int64_t)get_u64(p);
        nodes[i]->len = len;
        memcpy(nodes[i]->data, p + pre, len);
        p += pre + len;
    }
    if (p != end) {
        for (uint32_t k = 0; k < n; k++)
            free(nodes[k]);
        free(nodes);
        return "trailing bytes";
    }
    *nodes_out = nodes;
    *n_out = n;
    return NULL;
}

static void quarantine(sluice_client *c, const char *path, uint64_t size, const char *why)
{
    char bad[4200];
    snprintf(bad, sizeof bad, "%s.corrupt", path);
    if (rename(path, bad) != 0) unlink(path);
    c->storage_bytes = c->storage_bytes > size ? c->storage_bytes - size : 0;
    if (c->storage_files) c->storage_files--;
    char msg[4400];
    snprintf(msg, sizeof msg, "%s: %s; renamed *.corrupt", path, why);
    sdk_report(c, SLUICE_E_CORRUPT, 0, 0, msg);
}

/* Opens and locks path for sending. 1 held, 0 gone (delivered by its holder meanwhile), 2 held
 * by someone else, <0 error. */
static int hold(const char *path, sdk_file_t *f)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return errno == ENOENT ? 0 : SLUICE_E_STORAGE;
    struct stat st;
    if (flock(fd, LOCK_EX | LOCK_NB) != 0) {
        close(fd);
        return 2;
    }
    if (fstat(fd, &st) != 0 || st.st_nlink == 0) {
        close(fd); /* we won the lock only after its holder deleted it */
        return 0;
    }
    f->fd = fd;
    return 1;
}

/* Reads the held file whole and parses it. 1 loaded, 0 quarantined, negative on error. */
static int load_held(sluice_client *c, sdk_file_t *f, const char *name, sdk_node_t ***nodes,
                     uint32_t *n)
{
    struct stat st;
    if (fstat(f->fd, &st) != 0) return SLUICE_E_STORAGE;
    uint64_t size = (uint64_t)st.st_size;
    if (size > FILE_MAX_BYTES || size < HEADER_LEN) {
        quarantine(c, f->path, size, "impossible size");
        return 0;
    }
    unsigned char *buf = malloc(size);
    if (!buf) return SLUICE_E_NOMEM;
    size_t got = 0;
    while (got < size) {
        ssize_t r = pread(f->fd, buf + got, size - got, (off_t)got);
        if (r < 0 && errno == EINTR) continue;
        if (r <= 0) break;
        got += (size_t)r;
    }
    const char *why =
        got == size ? parse_file(buf, size, strtoll(name, NULL, 10), nodes, n) : "short read";
    free(buf);
    if (!why) return 1;
    if (!strcmp(why, "out of memory")) return SLUICE_E_NOMEM;
    quarantine(c, f->path, size, why);
    return 0;
}

int sdk_storage_load_oldest(sluice_client *c, sdk_node_t ***nodes, uint32_t *n, sdk_file_t *f,
                            uint32_t *locked)
{
    *locked = 0;
    f->fd = -1;
    char **names = NULL;
    long count = list_names(c, &names);
    if (count < 0) return (int)count;
    int rc = 0;
    for (long i = 0; i < count && rc == 0; i++) {
        if (path_join(f->path, sizeof f->path, c->storage_dir, names[i])) continue;
        int h = hold(f->path, f);
        if (h < 0) {
            rc = h;
        } else if (h == 2) {
            (*locked)++;
        } else if (h == 1) {
            f->own = strstr(names[i], c->inst) != NULL;
            rc = load_held(c, f, names[i], nodes, n);
            if (rc != 1) { /* quarantined (rc 0: try the next) or an error */
                close(f->fd);
                f->fd = -1;
            }
        }
    }
    for (long i = 0; i < count; i++)
        free(names[i]);
    free(names);
    return rc;
}

void sdk_storage_remove(sluice_client *c, sdk_file_t *f)
{
    struct stat st;
    uint64_t size = f->fd >= 0 && fstat(f->fd, &st) == 0 ? (uint64_t)st.st_size : 0;
    /* Deleted while still locked: a client that opened it meanwhile sees st_nlink == 0. A file
     * that cannot be deleted would be sent again by a later run (the collector dedups it); this
     * run stops counting it either way so it is not resent in a loop. */
    if (unlink(f->path) != 0 && errno != ENOENT)
        sdk_report(c, SLUICE_E_STORAGE, 0, 0, "cannot delete a delivered batch file");
    c->storage_bytes = c->storage_bytes > size ? c->storage_bytes - size : 0;
    if (c->storage_files) c->storage_files--;
    sdk_storage_release(f);
}

void sdk_storage_release(sdk_file_t *f)
{
    if (f->fd >= 0) close(f->fd);
    f->fd = -1;
}
