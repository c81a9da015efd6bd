/* test_file.c — write-all and atomic replace: content, mode, stale tmp, failures with errno. */
#include "base.h"

#include <errno.h>
#include <fcntl.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmocka.h>

typedef struct fx {
    char dir[64];
    char path[128];
} fx_t;

static int setup(void **state)
{
    fx_t *f = calloc(1, sizeof *f);
    snprintf(f->dir, sizeof f->dir, "/tmp/base_file_XXXXXX");
    if (mkdtemp(f->dir) == NULL) return -1;
    snprintf(f->path, sizeof f->path, "%s/snap", f->dir);
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    fx_t *f = *state;
    char tmp[160];
    snprintf(tmp, sizeof tmp, "%s.tmp", f->path);
    unlink(tmp);
    unlink(f->path);
    rmdir(f->dir);
    free(f);
    return 0;
}

static size_t slurp(const char *path, char *out, size_t cap)
{
    FILE *fp = fopen(path, "rb");
    assert_non_null(fp);
    size_t n = fread(out, 1, cap, fp);
    fclose(fp);
    return n;
}

static void replace_writes_the_whole_content(void **state)
{
    fx_t *f = *state;
    base_ioerr_t err = {0, NULL};
    assert_int_equal(base_file_replace(f->path, 0600, "first", 5, &err), BASE_OK);
    assert_int_equal(base_file_replace(f->path, 0600, "second!", 7, &err), BASE_OK);
    char got[32];
    assert_int_equal(slurp(f->path, got, sizeof got), 7);
    assert_memory_equal(got, "second!", 7);
    struct stat st;
    assert_int_equal(stat(f->path, &st), 0);
    assert_int_equal(st.st_mode & 0777, 0600);
    char tmp[160];
    snprintf(tmp, sizeof tmp, "%s.tmp", f->path);
    assert_int_equal(access(tmp, F_OK), -1);
}

static void streamed_writes_larger_than_the_buffer(void **state)
{
    fx_t *f = *state;
    base_afile_t af;
    assert_int_equal(base_afile_open(&af, f->path, 0644), BASE_OK);
    static char chunk[100000];
    for (size_t i = 0; i < sizeof chunk; i++)
        chunk[i] = (char)('a' + i % 26);
    for (int i = 0; i < 3; i++) {
        assert_int_equal(base_afile_write(&af, "hdr", 3), BASE_OK);
        assert_int_equal(base_afile_write(&af, chunk, sizeof chunk), BASE_OK);
    }
    assert_int_equal(base_afile_commit(&af), BASE_OK);
    struct stat st;
    assert_int_equal(stat(f->path, &st), 0);
    assert_int_equal(st.st_size, 3 * (3 + sizeof chunk));
}

/* Write-behind: a file of 2.5 x BASE_AFILE_SYNC_BYTES is fdatasync'd twice on the way (through
 * the buffer and by large writes alike), and its content is whole. */
static void large_file_is_synced_on_the_way(void **state)
{
    fx_t *f = *state;
    base_afile_t af;
    assert_int_equal(base_afile_open(&af, f->path, 0644), BASE_OK);
    size_t total = BASE_AFILE_SYNC_BYTES * 5 / 2, done = 0;
    static char big[300000];
    for (size_t i = 0; i < sizeof big; i++)
        big[i] = (char)(i * 7);
    while (done < total) {
        size_t n = done / 2 % 2 ? 1000 : sizeof big; /* small (buffered) and large writes */
        if (n > total - done) n = total - done;
        assert_int_equal(base_afile_write(&af, big, n), BASE_OK);
        done += n;
    }
    assert_int_equal(af.syncs, 2);
    assert_int_equal(base_afile_commit(&af), BASE_OK);
    struct stat st;
    assert_int_equal(stat(f->path, &st), 0);
    assert_int_equal((size_t)st.st_size, total);
}

static void abort_keeps_the_old_file(void **state)
{
    fx_t *f = *state;
    assert_int_equal(base_file_replace(f->path, 0600, "old", 3, NULL), BASE_OK);
    base_afile_t af;
    assert_int_equal(base_afile_open(&af, f->path, 0600), BASE_OK);
    assert_int_equal(base_afile_write(&af, "new", 3), BASE_OK);
    base_afile_abort(&af);
    char got[8];
    assert_int_equal(slurp(f->path, got, sizeof got), 3);
    assert_memory_equal(got, "old", 3);
    char tmp[160];
    snprintf(tmp, sizeof tmp, "%s.tmp", f->path);
    assert_int_equal(access(tmp, F_OK), -1);
}

static void open_in_a_missing_dir_names_the_step_and_errno(void **state)
{
    fx_t *f = *state;
    char bad[160];
    snprintf(bad, sizeof bad, "%s/no/such/dir/file", f->dir);
    base_ioerr_t err = {0, NULL};
    assert_int_equal(base_file_replace(bad, 0600, "x", 1, &err), BASE_E_IO);
    assert_string_equal(err.op, "open");
    assert_int_equal(err.errnum, ENOENT);
}

static void rename_over_a_directory_fails_with_errno(void **state)
{
    fx_t *f = *state;
    assert_int_equal(mkdir(f->path, 0755), 0);
    base_ioerr_t err = {0, NULL};
    assert_int_equal(base_file_replace(f->path, 0600, "x", 1, &err), BASE_E_IO);
    assert_string_equal(err.op, "rename");
    assert_int_equal(err.errnum, EISDIR);
    rmdir(f->path);
}

static void write_all_to_a_closed_fd_is_io(void **state)
{
    (void)state;
    int fds[2];
    assert_int_equal(pipe(fds), 0);
    assert_int_equal(base_write_all(fds[1], "abc", 3), BASE_OK);
    char got[3];
    assert_int_equal(read(fds[0], got, 3), 3);
    close(fds[0]);
    close(fds[1]);
    errno = 0;
    assert_int_equal(base_write_all(fds[1], "abc", 3), BASE_E_IO);
    assert_int_equal(errno, EBADF);
    assert_int_equal(base_fsync_dir("/nonexistent-dir-for-base"), BASE_E_IO);
}

static void mkdir_p_creates_parents_and_accepts_existing(void **state)
{
    fx_t *f = *state;
    char deep[200], mid[200], top[200];
    snprintf(top, sizeof top, "%s/a", f->dir);
    snprintf(mid, sizeof mid, "%s/a/b", f->dir);
    snprintf(deep, sizeof deep, "%s/a/b/c/", f->dir);
    base_ioerr_t err = {0, NULL};
    assert_int_equal(base_mkdir_p(deep, 0750, &err), BASE_OK);
    struct stat st;
    assert_int_equal(stat(deep, &st), 0);
    assert_true(S_ISDIR(st.st_mode));
    assert_int_equal(st.st_mode & 0777, 0750 & ~(unsigned)umask(022));
    assert_int_equal(base_mkdir_p(deep, 0750, &err), BASE_OK); /* exists: fine */
    deep[strlen(deep) - 1] = '\0';
    rmdir(deep);
    rmdir(mid);
    rmdir(top);
}

/* A data dir under a regular file: ENOTDIR, named, nothing created. */
static void mkdir_p_under_a_file_is_enotdir(void **state)
{
    fx_t *f = *state;
    assert_int_equal(base_file_replace(f->path, 0600, "x", 1, NULL), BASE_OK);
    char bad[200];
    snprintf(bad, sizeof bad, "%s/data", f->path);
    base_ioerr_t err = {0, NULL};
    assert_int_equal(base_mkdir_p(bad, 0750, &err), BASE_E_IO);
    assert_int_equal(err.errnum, ENOTDIR);
    assert_string_equal(base_errno_name(err.errnum), "ENOTDIR");
    /* The path itself a regular file. */
    assert_int_equal(base_mkdir_p(f->path, 0750, &err), BASE_E_IO);
    assert_int_equal(err.errnum, ENOTDIR);
    assert_string_equal(err.op, "stat");
    assert_int_equal(base_mkdir_p("", 0750, &err), BASE_E_INVAL);
}

static void errno_names(void **state)
{
    (void)state;
    assert_string_equal(base_errno_name(ENOSPC), "ENOSPC");
    assert_string_equal(base_errno_name(EROFS), "EROFS");
    assert_string_equal(base_errno_name(ENOENT), "ENOENT");
    assert_string_equal(base_errno_name(0), "");
    assert_string_equal(base_errno_name(100000), "EUNKNOWN");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(replace_writes_the_whole_content, setup, teardown),
        cmocka_unit_test_setup_teardown(streamed_writes_larger_than_the_buffer, setup, teardown),
        cmocka_unit_test_setup_teardown(large_file_is_synced_on_the_way, setup, teardown),
        cmocka_unit_test_setup_teardown(abort_keeps_the_old_file, setup, teardown),
        cmocka_unit_test_setup_teardown(open_in_a_missing_dir_names_the_step_and_errno, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(rename_over_a_directory_fails_with_errno, setup, teardown),
        cmocka_unit_test(write_all_to_a_closed_fd_is_io),
        cmocka_unit_test_setup_teardown(mkdir_p_creates_parents_and_accepts_existing, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(mkdir_p_under_a_file_is_enotdir, setup, teardown),
        cmocka_unit_test(errno_names),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
