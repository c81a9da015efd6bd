/*
 * storage.c — storage_dir: batches that could not be delivered, kept on disk until a later
 * attempt (in this run or the next start) delivers them. Worker thread only.
 *
 * One file per batch, named <epoch ms, 13 digits>-<pid>-<seq>.slb so that name order is age
 * order. Layout (little-endian):
 *     "SLB1" | u32 n_events | u32 payload_len | u32 crc32(payload) | payload
 *     payload = n_events x (u32 len | len bytes: one encoded event)
 * Written atomically: a .tmp file is written, fsync'd and renamed, then the directory is
 * fsync'd, so a crash leaves either the whole file or a stray .tmp (deleted by the next scan).
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
#include <sys/stat.h>
#include <unistd.h>
#include <zlib.h>

#define FILE_MAGIC "SLB1"
#define HEADER_LEN 16
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

int sdk_storage_scan(sluice_client *c)
{
    if (mkdir(c->storage_dir, 0700) != 0 && errno != EEXIST) return SLUICE_E_STORAGE;
    DIR *d = opendir(c->storage_dir);
    if (!d) return SLUICE_E_STORAGE;
    c->storage_bytes = 0;
    c->storage_files = 0;
    struct dirent *e;
    char path[4096];
    while ((e = readdir(d))) {
        bool batch = has_suffix(e->d_name, ".slb"), tmp = has_suffix(e->d_name, ".slb.tmp");
        if ((!batch && !tmp) || path_join(path, sizeof path, c->storage_dir, e->d_name)) continue;
        if (tmp) {
            /* An interrupted write of ours (this directory has one client by contract). */
            unlink(path);
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

int sdk_storage_write(sluice_client *c, sdk_node_t *const *nodes, uint32_t n)
{
    size_t size = HEADER_LEN;
    for (uint32_t i = 0; i < n; i++)
        size += 4 + nodes[i]->len;
    if (c->storage_bytes + size > c->cfg.storage_max_bytes) return SLUICE_E_TOO_LARGE;
    unsigned char *buf = malloc(size);
    if (!buf) return SLUICE_E_NOMEM;
    unsigned char *p = buf + HEADER_LEN;
    for (uint32_t i = 0; i < n; i++) {
        put_u32(p, nodes[i]->len);
        memcpy(p + 4, nodes[i]->data, nodes[i]->len);
        p += 4 + nodes[i]->len;
    }
    uint32_t payload = (uint32_t)(size - HEADER_LEN);
    memcpy(buf, FILE_MAGIC, 4);
    put_u32(buf + 4, n);
    put_u32(buf + 8, payload);
    put_u32(buf + 12, (uint32_t)crc32(crc32(0L, Z_NULL, 0), buf + HEADER_LEN, payload));

    char name[64], path[4096];
    snprintf(name, sizeof name, "%013lld-%d-%06u.slb", (long long)base_wall_ms(), (int)getpid(),
             c->file_seq++ % 1000000u);
    int rc = SLUICE_E_STORAGE;
    if (path_join(path, sizeof path, c->storage_dir, name) == 0 &&
        base_file_replace(path, 0600, buf, size, NULL) == BASE_OK) {
        c->storage_bytes += size;
        c->storage_files++;
        rc = SLUICE_OK;
    }
    free(buf);
    return rc;
}

/* Finds the oldest *.slb name. 1 found, 0 none, negative on error. */
static int oldest_name(sluice_client *c, char *name, size_t size)
{
    DIR *d = opendir(c->storage_dir);
    if (!d) return SLUICE_E_STORAGE;
    struct dirent *e;
    name[0] = '\0';
    while ((e = readdir(d))) {
        if (!has_suffix(e->d_name, ".slb") || strlen(e->d_name) >= size) continue;
        if (!name[0] || strcmp(e->d_name, name) < 0) snprintf(name, size, "%s", e->d_name);
    }
    closedir(d);
    return name[0] ? 1 : 0;
}

/* Parses a whole file; on success *nodes holds n nodes. Returns 0 or a reason string. */
static const char *parse_file(const unsigned char *buf, size_t size, sdk_node_t ***nodes_out,
                              uint32_t *n_out)
{
    if (size < HEADER_LEN || memcmp(buf, FILE_MAGIC, 4)) return "bad magic or short header";
    uint32_t n = get_u32(buf + 4), payload = get_u32(buf + 8);
    if (n == 0 || n > FILE_MAX_EVENTS) return "bad event count";
    if (payload != size - HEADER_LEN) return "length mismatch (truncated?)";
    if ((uint32_t)crc32(crc32(0L, Z_NULL, 0), buf + HEADER_LEN, payload) != get_u32(buf + 12))
        return "checksum mismatch";
    sdk_node_t **nodes = calloc(n, sizeof *nodes);
    if (!nodes) return "out of memory";
    const unsigned char *p = buf + HEADER_LEN, *end = buf + size;
    for (uint32_t i = 0; i < n; i++) {
        uint32_t len = (size_t)(end - p) >= 4 ? get_u32(p) : 0;
        if (len == 0 || len > (size_t)(end - p) - 4 || !(nodes[i] = malloc(sizeof **nodes + len))) {
            for (uint32_t k = 0; k < i; k++)
                free(nodes[k]);
            free(nodes);
            return len ? "out of memory" : "bad event length";
        }
        nodes[i]->next = NULL;
        nodes[i]->seq = 0;
        nodes[i]->len = len;
        memcpy(nodes[i]->data, p + 4, len);
        p += 4 + len;
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

int sdk_storage_load_oldest(sluice_client *c, sdk_node_t ***nodes, uint32_t *n, char *path,
                            size_t path_size)
{
    /* Bounded: every iteration either returns or removes one file from consideration. */
    for (uint32_t guard = 0; guard < 100000; guard++) {
        char name[256];
        int rc = oldest_name(c, name, sizeof name);
        if (rc <= 0) return rc;
        if (path_join(path, path_size, c->storage_dir, name)) return SLUICE_E_STORAGE;
        int fd = open(path, O_RDONLY | O_CLOEXEC);
        if (fd < 0) return SLUICE_E_STORAGE;
        struct stat st;
        if (fstat(fd, &st) != 0) {
            close(fd);
            return SLUICE_E_STORAGE;
        }
        uint64_t size = (uint64_t)st.st_size;
        if (size > FILE_MAX_BYTES || size < HEADER_LEN) {
            close(fd);
            quarantine(c, path, size, "impossible size");
            continue;
        }
        unsigned char *buf = malloc(size);
        size_t got = 0;
        while (buf && got < size) {
            ssize_t r = read(fd, buf + got, size - got);
            if (r < 0 && errno == EINTR) continue;
            if (r <= 0) break;
            got += (size_t)r;
        }
        close(fd);
        if (!buf) return SLUICE_E_NOMEM;
        const char *why = got == size ? parse_file(buf, size, nodes, n) : "short read";
        free(buf);
        if (!why) return 1;
        if (!strcmp(why, "out of memory")) return SLUICE_E_NOMEM;
        quarantine(c, path, size, why);
    }
    return SLUICE_E_STORAGE;
}

void sdk_storage_remove(sluice_client *c, const char *path)
{
    struct stat st;
    uint64_t size = stat(path, &st) == 0 ? (uint64_t)st.st_size : 0;
    /* A file that cannot be deleted would be sent again by the next start (the collector dedups
     * it); this run stops counting it either way so it is not resent in a loop. */
    if (unlink(path) != 0 && errno != ENOENT)
        sdk_report(c, SLUICE_E_STORAGE, 0, 0, "cannot delete a delivered batch file");
    c->storage_bytes = c->storage_bytes > size ? c->storage_bytes - size : 0;
    if (c->storage_files) c->storage_files--;
}
