/*
 * test_disk.c — disk errors under --data-dir (issue 12 item 9, SPEC §4/§5): a data dir that
 * cannot be created, a full disk (ENOSPC) and a read-only one (EROFS). Each time: one clear log
 * line carrying the errno name, the same fields for the periodic and the final snapshot warning,
 * serving goes on, no corrupt or temporary snapshot is left behind, and the exit code is 3 when
 * the final snapshot failed.
 *
 * The full and read-only disks are a tiny tmpfs and a read-only bind mount inside a private mount
 * namespace of the test process (unshare(CLONE_NEWNS); the collector inherits it). Without
 * CAP_SYS_ADMIN those cases are skipped with a message.
 */
#include "it_common.h"

#include <errno.h>
#include <fcntl.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <unistd.h>

static const char *const KEYS[] = {"wk_test=test", "wk_web=web", NULL};
#define YAML "dedup: {window: 1h, snapshot_interval: 1s}\n"

/* True when one line of the collector's log contains every needle (NULL-terminated). */
static bool log_line_has(const sup_collector_t *c, const char *const *needles)
{
    FILE *f = fopen(c->log_path, "r");
    if (f == NULL) return false;
    char line[8192];
    bool found = false;
    while (!found && fgets(line, sizeof line, f) != NULL) {
        found = true;
        for (size_t i = 0; needles[i] != NULL && found; i++)
            if (strstr(line, needles[i]) == NULL) found = false;
    }
    fclose(f);
    return found;
}

/* Waits up to ms for such a line. */
static bool wait_log_line(const sup_collector_t *c, const char *const *needles, int ms)
{
    int64_t deadline = base_mono_ms() + ms;
    while (base_mono_ms() < deadline) {
        if (log_line_has(c, needles)) return true;
        base_sleep_ms(100);
    }
    return log_line_has(c, needles);
}

static void restart(sup_env_t *e)
{
    assert_int_equal(sup_collector_start(&e->coll, getenv("SLUICE_COLLECTOR"), e->dir,
                                         e->mock.bootstrap, KEYS, YAML, 15000),
                     0);
}

static void data_path(const sup_env_t *e, const char *name, char *out, size_t cap)
{
    snprintf(out, cap, "%s/data%s%s", e->dir, name[0] ? "/" : "", name);
}

/* A private mount namespace, or false (the case is then skipped). */
static bool private_mounts(void)
{
    if (unshare(CLONE_NEWNS) != 0) {
        fprintf(stderr, "SKIP: unshare(CLONE_NEWNS): %s (needs CAP_SYS_ADMIN)\n", strerror(errno));
        return false;
    }
    if (mount(NULL, "/", NULL, MS_REC | MS_PRIVATE, NULL) != 0) {
        fprintf(stderr, "SKIP: mount --make-rprivate /: %s\n", strerror(errno));
        return false;
    }
    return true;
}

/* The final-snapshot warning and the periodic one carry the same fields. */
static void assert_failure_lines(const sup_collector_t *c, const char *err_name, const char *when)
{
    char errno_field[64], when_field[64];
    snprintf(errno_field, sizeof errno_field, "\"errno\":\"%s\"", err_name);
    snprintf(when_field, sizeof when_field, "\"when\":\"%s\"", when);
    const char *const want[] = {"\"dedup_snapshot_failed\"",
                                when_field,
                                errno_field,
                                "\"path\":",
                                "\"op\":",
                                "\"error\":",
                                "\"reason\":",
                                NULL};
    if (!wait_log_line(c, want, 8000)) {
        sup_collector_dump_log(c, 4000);
        fail_msg("no dedup_snapshot_failed line with %s and %s", when_field, errno_field);
    }
}

static void assert_no_tmp(const sup_env_t *e)
{
    char tmp[600];
    data_path(e, "dedup.snapshot.tmp", tmp, sizeof tmp);
    assert_int_equal(access(tmp, F_OK), -1);
}

/* --data-dir is a regular file: ENOTDIR at start (error line), serving goes on, the final
 * snapshot fails with the same errno, exit code 3. */
static void test_data_dir_is_a_file_names_enotdir_and_exits_3(void **state)
{
    sup_env_t *e = it_start(state, YAML);
    assert_int_equal(sup_collector_stop(&e->coll, 15000), 0);
    char dd[600], cmd[700];
    data_path(e, "", dd, sizeof dd);
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dd);
    assert_int_equal(system(cmd), 0);
    FILE *f = fopen(dd, "w");
    assert_non_null(f);
    fputs("not a directory\n", f);
    fclose(f);
    restart(e);
    const char *const start[] = {"\"data_dir_unusable\"", "\"errno\":\"ENOTDIR\"", "\"error\"",
                                 "\"level\":\"error\"", NULL};
    assert_true(log_line_has(&e->coll, start));
    it_ids_t ids = {0};
    it_post_good(e, "notdir", 5, &ids);
    assert_failure_lines(&e->coll, "ENOTDIR", "periodic");
    it_post_good(e, "notdir", 5, &ids);
    assert_int_equal(sup_collector_stop(&e->coll, 15000), 3);
    assert_failure_lines(&e->coll, "ENOTDIR", "final");
    unlink(dd);
    it_assert_events_exactly(e, &ids, NULL);
}

/* A missing data dir, parents included, is created (mkdir -p). */
static void test_missing_data_dir_is_created(void **state)
{
    sup_env_t *e = it_start(state, YAML);
    assert_int_equal(sup_collector_stop(&e->coll, 15000), 0);
    char dd[600], cmd[700];
    data_path(e, "", dd, sizeof dd);
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dd);
    assert_int_equal(system(cmd), 0);
    restart(e);
    struct stat st;
    assert_int_equal(stat(dd, &st), 0);
    assert_true(S_ISDIR(st.st_mode));
    assert_int_equal(st.st_mode & 0007, 0); /* 0750 under any umask */
    assert_false(sup_collector_log_contains(&e->coll, "data_dir_unusable"));
    it_ids_t ids = {0};
    it_post_good(e, "mkdirp", 3, &ids);
}

/* Disk full: a 64 KiB tmpfs as the data dir, filled after a first good snapshot. */
static void test_disk_full_names_enospc_serving_goes_on(void **state)
{
    if (!private_mounts()) skip();
    sup_env_t *e = it_start(state, YAML);
    assert_int_equal(sup_collector_stop(&e->coll, 15000), 0);
    char dd[600], snap[600], filler[600];
    data_path(e, "", dd, sizeof dd);
    data_path(e, "dedup.snapshot", snap, sizeof snap);
    data_path(e, "filler", filler, sizeof filler);
    if (mount("sluice-test", dd, "tmpfs", 0, "size=64k,mode=0750") != 0) {
        fprintf(stderr, "SKIP: mount tmpfs: %s\n", strerror(errno));
        skip();
    }
    restart(e);
    it_ids_t ids = {0};
    it_post_good(e, "full-a", 10, &ids);
    const char *const wrote[] = {"\"dedup_snapshot\"", NULL};
    assert_true(wait_log_line(&e->coll, wrote, 5000));
    struct stat good;
    assert_int_equal(stat(snap, &good), 0);
    /* Fill every byte that is left. */
    int fd = open(filler, O_WRONLY | O_CREAT | O_TRUNC, 0600);
    assert_true(fd >= 0);
    char block[4096] = {0};
    while (write(fd, block, sizeof block) > 0) {
    }
    while (write(fd, block, 1) > 0) {
    }
    assert_int_equal(errno, ENOSPC);
    close(fd);
    it_post_good(e, "full-b", 10, &ids);
    assert_failure_lines(&e->coll, "ENOSPC", "periodic");
    it_post_good(e, "full-c", 10, &ids); /* serving goes on */
    assert_no_tmp(e);
    assert_int_equal(sup_collector_stop(&e->coll, 15000), 3);
    assert_failure_lines(&e->coll, "ENOSPC", "final");
    assert_no_tmp(e);
    /* The snapshot written before the disk filled is intact and loads. */
    assert_int_equal(unlink(filler), 0);
    restart(e);
    assert_true(sup_collector_log_contains(&e->coll, "dedup_snapshot_loaded"));
    assert_false(sup_collector_log_contains(&e->coll, "dedup_snapshot_ignored"));
    assert_int_equal(sup_collector_stop(&e->coll, 15000), 0);
    assert_int_equal(umount(dd), 0);
    it_assert_events_exactly(e, &ids, NULL);
}

/* Read-only data dir: a read-only bind mount of it. */
static void test_read_only_data_dir_names_erofs_serving_goes_on(void **state)
{
    if (!private_mounts()) skip();
    sup_env_t *e = it_start(state, YAML);
    it_ids_t ids = {0};
    it_post_good(e, "ro-a", 5, &ids);
    assert_int_equal(sup_collector_stop(&e->coll, 15000), 0);
    char dd[600];
    data_path(e, "", dd, sizeof dd);
    if (mount(dd, dd, NULL, MS_BIND, NULL) != 0 ||
        mount(NULL, dd, NULL, MS_REMOUNT | MS_BIND | MS_RDONLY, NULL) != 0) {
        fprintf(stderr, "SKIP: read-only bind mount: %s\n", strerror(errno));
        skip();
    }
    restart(e);
    assert_true(sup_collector_log_contains(&e->coll, "dedup_snapshot_loaded"));
    it_post_good(e, "ro-b", 5, &ids);
    assert_failure_lines(&e->coll, "EROFS", "periodic");
    it_post_good(e, "ro-c", 5, &ids);
    assert_int_equal(sup_collector_stop(&e->coll, 15000), 3);
    assert_failure_lines(&e->coll, "EROFS", "final");
    assert_no_tmp(e);
    assert_int_equal(umount(dd), 0);
    it_assert_events_exactly(e, &ids, NULL);
}

int main(int argc, char **argv)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_teardown(test_data_dir_is_a_file_names_enotdir_and_exits_3, it_teardown),
        cmocka_unit_test_teardown(test_missing_data_dir_is_created, it_teardown),
        cmocka_unit_test_teardown(test_disk_full_names_enospc_serving_goes_on, it_teardown),
        cmocka_unit_test_teardown(test_read_only_data_dir_names_erofs_serving_goes_on, it_teardown),
    };
    return it_run(argc, argv, "disk", tests, sizeof tests / sizeof tests[0]);
}
