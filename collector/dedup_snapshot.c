/*
 * dedup_snapshot.c — the dedup snapshot file: dedup_snapshot_write and dedup_snapshot_load
 * (contract in dedup.h; the table's layout in dedup_internal.h).
 */
#include "dedup_internal.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <xxhash.h>

#define SNAP_MAGIC   "SLUDEDUP"
#define SNAP_VERSION 1u
#define SNAP_REC     9 /* fingerprint + generation index */

/* The snapshot being written: the base layer's atomic file, hashed as it is written. */
typedef struct snap_out {
    base_afile_t f;
    XXH3_state_t *h;
    bool err; /* a write failed (f.err says how) or memory ran short (nomem) */
    bool nomem;
} snap_out_t;

static void snap_put(snap_out_t *o, const void *p, size_t n)
{
    if (o->err) return;
    XXH3_64bits_update(o->h, p, n);
    if (base_afile_write(&o->f, p, n) != BASE_OK) o->err = true;
}

static void put_u64(uint8_t *p, uint64_t v)
{
    memcpy(p, &v, 8);
}

static uint64_t get_u64(const uint8_t *p)
{
    uint64_t v;
    memcpy(&v, p, 8);
    return v;
}

/* Writes the body (entries); returns the count, with o->err set on failure. */
static uint64_t snap_entries(dedup_t *d, snap_out_t *o, uint64_t floor0, uint64_t cur0)
{
    uint64_t n = 0;
    bucket_t *copy = NULL;
    uint32_t copy_cap = 0;
    uint8_t rec[4096 * SNAP_REC];
    size_t rn = 0;
    for (unsigned si = 0; si < DEDUP_SHARDS && !o->err; si++) {
        shard_t *s = &d->shards[si];
        view_t v;
        shard_lock(s);
        view_load(d, &v);
        dedup__shard_prepare(d, s, &v);
        /* The new table, then the old one's unmoved buckets while growing. */
        uint32_t nnb = atomic_load_explicit(&s->nb, memory_order_relaxed);
        uint32_t nb = nnb + (s->ob != NULL ? s->onb - s->mig : 0);
        if (nb > copy_cap) {
            bucket_t *c = realloc(copy, (size_t)nb * sizeof *c);
            if (c == NULL) {
                shard_unlock(s);
                o->err = o->nomem = true;
                break;
            }
            copy = c;
            copy_cap = nb;
        }
        memcpy(copy, atomic_load_explicit(&s->b, memory_order_relaxed), (size_t)nnb * sizeof *copy);
        if (nb > nnb) memcpy(copy + nnb, s->ob + s->mig, (size_t)(nb - nnb) * sizeof *copy);
        shard_unlock(s);
        for (uint32_t i = 0; i < nb; i++) {
            for (int k = 0; k < DEDUP_SLOTS; k++) {
                uint8_t t = copy[i].tag[k];
                if ((t & DEDUP_PENDING) || !tag_live(&v, t)) continue;
                uint64_t g = tag_gen(&v, t);
                /* The floor only grows, so g >= floor0; a generation opened meanwhile is filed
                 * under cur0, whose end is the write time, so its entries keep their lifetime. */
                if (g < floor0) continue;
                if (g > cur0) g = cur0;
                put_u64(rec + rn * SNAP_REC, copy[i].fp[k]);
                rec[rn * SNAP_REC + 8] = (uint8_t)(g - floor0);
                n++;
                if (++rn == 4096) {
                    snap_put(o, rec, rn * SNAP_REC);
                    rn = 0;
                }
            }
        }
    }
    if (rn > 0) snap_put(o, rec, rn * SNAP_REC);
    free(copy);
    return n;
}

/*
 * Layout (host byte order; the magic is checked, so a foreign-endian file reads as corrupt):
 *   "SLUDEDUP" | u32 version | u32 n_gens | u64 window_ms | n_gens x u64 generation start ms
 *   | n_entries x (u64 fingerprint, u8 generation index) | u64 n_entries | u64 written_ms
 *   | u64 XXH3-64 of everything before it
 */
static int io_fail(base_ioerr_t *err, const base_ioerr_t *e, int rc)
{
    if (err != NULL) *err = *e;
    return rc;
}

int dedup_snapshot_write(dedup_t *d, const char *dir, base_ioerr_t *err)
{
    base_ioerr_t none = {0, NULL};
    if (err != NULL) *err = none;
    char path[4096];
    if (path_join(path, sizeof path, dir, SNAP_NAME) != 0) {
        base_ioerr_t e = {ENAMETOOLONG, "open"};
        return io_fail(err, &e, DEDUP_E_INVALID);
    }
    base_ioerr_t me;
    int mrc = base_mkdir_p(dir, 0750, &me);
    if (mrc != BASE_OK)
        return io_fail(err, &me, mrc == BASE_E_INVAL ? DEDUP_E_INVALID : DEDUP_E_IO);
    snap_out_t o = {.h = XXH3_createState()};
    if (o.h == NULL) return DEDUP_E_NOMEM;
    int orc = base_afile_open(&o.f, path, 0640);
    if (orc != BASE_OK) {
        XXH3_freeState(o.h);
        return io_fail(err, &o.f.err, orc == BASE_E_NOMEM ? DEDUP_E_NOMEM : DEDUP_E_IO);
    }
    XXH3_64bits_reset(o.h);
    view_t v;
    view_load(d, &v);
    uint8_t hdr[24];
    memcpy(hdr, SNAP_MAGIC, 8);
    uint32_t version = SNAP_VERSION, n_gens = (uint32_t)(v.span + 1);
    memcpy(hdr + 8, &version, 4);
    memcpy(hdr + 12, &n_gens, 4);
    put_u64(hdr + 16, d->window_ms);
    snap_put(&o, hdr, sizeof hdr);
    for (uint64_t g = v.floor; g <= v.cur; g++) {
        uint8_t b[8];
        put_u64(b, atomic_load_explicit(&d->gen_start[tag_of(g) - 1], memory_order_relaxed));
        snap_put(&o, b, 8);
    }
    uint64_t n = snap_entries(d, &o, v.floor, v.cur);
    uint8_t tail[16];
    put_u64(tail, n);
    put_u64(tail + 8, now_ms(d));
    snap_put(&o, tail, sizeof tail);
    uint8_t sum[8];
    put_u64(sum, XXH3_64bits_digest(o.h));
    if (!o.err && base_afile_write(&o.f, sum, 8) != BASE_OK) o.err = true;
    XXH3_freeState(o.h);
    if (o.err) {
        /* The tmp file goes; an earlier snapshot stays as it was. */
        base_ioerr_t e = o.f.err;
        base_afile_abort(&o.f);
        return io_fail(err, &e, o.nomem ? DEDUP_E_NOMEM : DEDUP_E_IO);
    }
    int crc = base_afile_commit(&o.f);
    if (crc == BASE_OK) return DEDUP_OK;
    return io_fail(err, &o.f.err, crc == BASE_E_NOMEM ? DEDUP_E_NOMEM : DEDUP_E_IO);
}

int dedup_snapshot_load(dedup_t *d, const char *dir)
{
    char path[4096];
    if (path_join(path, sizeof path, dir, SNAP_NAME) != 0) return DEDUP_E_INVALID;
    FILE *f = fopen(path, "rb");
    if (f == NULL) return errno == ENOENT ? DEDUP_E_NOENT : DEDUP_E_IO;
    int rc = DEDUP_E_CORRUPT;
    uint8_t *buf = malloc(1 << 20);
    XXH3_state_t *h = XXH3_createState();
    struct stat stt;
    uint8_t hdr[24], tail[24];
    uint32_t version = 0, n_gens = 0;
    if (buf == NULL || h == NULL) {
        rc = DEDUP_E_NOMEM;
        goto out;
    }
    if (fstat(fileno(f), &stt) != 0) {
        rc = DEDUP_E_IO;
        goto out;
    }
    uint64_t size = (uint64_t)stt.st_size;
    if (size < sizeof hdr + sizeof tail || fread(hdr, 1, sizeof hdr, f) != sizeof hdr) goto out;
    memcpy(&version, hdr + 8, 4);
    memcpy(&n_gens, hdr + 12, 4);
    if (memcmp(hdr, SNAP_MAGIC, 8) != 0 || version != SNAP_VERSION || n_gens == 0 ||
        n_gens > DEDUP_TAGS)
        goto out;
    uint64_t head = sizeof hdr + 8ull * n_gens;
    if (size < head + sizeof tail || (size - head - sizeof tail) % SNAP_REC != 0) goto out;
    uint64_t n_recs = (size - head - sizeof tail) / SNAP_REC;
    /* Pass 1: checksum of everything but the last 8 bytes. */
    XXH3_64bits_reset(h);
    XXH3_64bits_update(h, hdr, sizeof hdr);
    /* The same pass checks every record's generation index, so that pass 2 never meets a bad
     * record after it has inserted entries (DEDUP_E_CORRUPT leaves d empty). */
    uint64_t left = size - sizeof hdr - 8, pos = sizeof hdr;
    uint64_t gi_at = head + 8, recs_end = head + n_recs * SNAP_REC;
    while (left > 0) {
        size_t want = left > (1 << 20) ? (1 << 20) : (size_t)left;
        if (fread(buf, 1, want, f) != want) goto out;
        XXH3_64bits_update(h, buf, want);
        for (; gi_at < recs_end && gi_at < pos + want; gi_at += SNAP_REC)
            if (gi_at >= pos && buf[gi_at - pos] >= n_gens) goto out;
        pos += want;
        left -= want;
    }
    if (fread(tail, 1, 8, f) != 8 || get_u64(tail) != XXH3_64bits_digest(h)) goto out;
    if (fseek(f, (long)(size - sizeof tail), SEEK_SET) != 0 || fread(tail, 1, 24, f) != 24)
        goto out;
    if (get_u64(tail) != n_recs) goto out;
    uint64_t written = get_u64(tail + 8);
    /* Pass 2: generations, then entries. */
    uint64_t starts[DEDUP_TAGS];
    if (fseek(f, (long)sizeof hdr, SEEK_SET) != 0 ||
        fread(buf, 1, 8ull * n_gens, f) != 8ull * n_gens)
        goto out;
    for (uint32_t j = 0; j < n_gens; j++)
        starts[j] = get_u64(buf + 8 * j);
    uint64_t t = now_ms(d);
    /* Keep generation j when its end (next start, or the write time) is within the window. */
    uint32_t j0 = 0;
    while (j0 < n_gens) {
        uint64_t end = j0 + 1 < n_gens ? starts[j0 + 1] : written;
        if (end + d->window_ms > t) break;
        j0++;
    }
    if (n_gens - j0 > DEDUP_MAX_LIVE - 1) j0 = n_gens - (DEDUP_MAX_LIVE - 1);
    uint32_t kept = n_gens - j0;
    pthread_mutex_lock(&d->gen_mu);
    for (uint32_t i = 0; i < kept; i++)
        atomic_store(&d->gen_start[tag_of(i) - 1], starts[j0 + i]);
    /* The snapshot's last generation ends at the write time, not at this restart: the open
     * generation is dated from the write, and dedup_tick opens a fresh one for what comes now. */
    atomic_store(&d->gen_start[tag_of(kept) - 1], written < t ? written : t);
    atomic_store(&d->floor, 0);
    atomic_store(&d->cur, (uint64_t)kept);
    pthread_mutex_unlock(&d->gen_mu);
    dedup_tick(d);
    uint64_t done = 0;
    rc = DEDUP_OK;
    while (done < n_recs) {
        size_t m =
            n_recs - done > (1 << 20) / SNAP_REC ? (1 << 20) / SNAP_REC : (size_t)(n_recs - done);
        if (fread(buf, 1, m * SNAP_REC, f) != m * SNAP_REC) {
            rc = DEDUP_E_IO;
            break;
        }
        for (size_t i = 0; i < m; i++) {
            const uint8_t *r = buf + i * SNAP_REC;
            uint32_t gi = r[8];
            if (gi >= n_gens) {
                rc = DEDUP_E_CORRUPT;
                break;
            }
            if (gi < j0) continue;
            dedup__load_insert(d, get_u64(r), (uint8_t)tag_of(gi - j0));
        }
        if (rc != DEDUP_OK) break;
        done += m;
    }
out:
    XXH3_freeState(h);
    free(buf);
    fclose(f);
    return rc;
}
