/*
 * test_embed.c — libsluice as an application gets it: tests/sdk/embed.sh builds sdk/examples
 * against the INSTALLED library (pkg-config, find_package, static via `pkg-config --static`), as
 * a subproject (add_subdirectory of the repository root) or from an SDK-only configure, out of
 * tree; each resulting program then runs against the real sluice-collector (embedded Kafka) and
 * every event it sends must arrive. One ctest per mode: sdk_embed_<mode> runs `test_embed MODE`.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>

#include "support.h"

/* sdk/examples/example.c sends identify + group + 10 track. */
#define EXAMPLE_EVENTS 12

static const char *g_mode;

/* Starts the collector in its embedded-Kafka mode and reads the mock cluster's bootstrap
 * address from its log. */
static void start_embedded(sup_collector_t *coll, char *dir, size_t dir_size, char *bootstrap,
                           size_t bs_size)
{
    const char *path = getenv("SLUICE_COLLECTOR");
    assert_non_null(path);
    snprintf(dir, dir_size, "/tmp/sluice-sdk-embed-XXXXXX");
    assert_non_null(mkdtemp(dir));
    static const char *const keys[] = {"wk_embed=embed", NULL};
    assert_int_equal(sup_collector_start(coll, path, dir, NULL, keys, NULL, 30000), 0);
    bootstrap[0] = '\0';
    for (int i = 0; i < 100 && !bootstrap[0]; i++) { /* bounded: 10 s */
        FILE *f = fopen(coll->log_path, "r");
        char line[2048];
        while (f && fgets(line, sizeof line, f)) {
            const char *b = strstr(line, "\"bootstrap\":\"");
            if (strstr(line, "embedded_kafka") && b) {
                b += strlen("\"bootstrap\":\"");
                size_t n = strcspn(b, "\"");
                if (n < bs_size) memcpy(bootstrap, b, n), bootstrap[n] = '\0';
            }
        }
        if (f) fclose(f);
        if (!bootstrap[0]) base_sleep_ms(100);
    }
    if (!bootstrap[0]) {
        sup_collector_dump_log(coll, 4096);
        fail_msg("no embedded_kafka bootstrap line in the collector's log");
    }
}

static void test_embed(void **state)
{
    (void)state;
    const char *build = getenv("SLUICE_BUILD_DIR"), *script = getenv("SLUICE_EMBED_SH");
    assert_non_null(build);
    assert_non_null(script);
    char work[256], cmd[1024];
    snprintf(work, sizeof work, "%s/sdk-embed-%s", build, g_mode);
    snprintf(cmd, sizeof cmd, "'%s' '%s' '%s' '%s'", script, g_mode, build, work);
    FILE *p = popen(cmd, "r");
    assert_non_null(p);
    char bins[4][512];
    int n_bins = 0;
    while (n_bins < 4 && fgets(bins[n_bins], sizeof bins[n_bins], p)) {
        bins[n_bins][strcspn(bins[n_bins], "\n")] = '\0';
        if (bins[n_bins][0]) n_bins++;
    }
    int st = pclose(p);
    if (st != 0) fail_msg("embed.sh %s failed (status 0x%x); logs in %s", g_mode, st, work);
    assert_true(n_bins >= 1);

    sup_collector_t coll;
    char dir[64], bootstrap[128];
    start_embedded(&coll, dir, sizeof dir, bootstrap, sizeof bootstrap);
    for (int i = 0; i < n_bins; i++) {
        snprintf(cmd, sizeof cmd, "'%s' http://127.0.0.1:%d wk_embed >'%s/run-%d.log' 2>&1",
                 bins[i], coll.port, work, i);
        int rc = system(cmd);
        if (rc != 0)
            fail_msg("%s exited with status 0x%x (see %s/run-%d.log)", bins[i], rc, work, i);
    }
    size_t want = (size_t)n_bins * EXAMPLE_EVENTS;
    sup_kmsgs_t msgs = {0};
    assert_int_equal(sup_consume(bootstrap, "events", want, 20000, &msgs), 0);
    assert_int_equal(msgs.n, want);
    json_t *v = sup_kmsg_value(&msgs.msgs[0]);
    assert_non_null(v);
    json_t *lib = json_object_get(json_object_get(v, "context"), "library");
    assert_string_equal(json_string_value(json_object_get(lib, "name")), "sluice-c");
    json_decref(v);
    sup_kmsgs_free(&msgs);
    assert_int_equal(sup_collector_stop(&coll, 15000), 0);
    snprintf(cmd, sizeof cmd, "rm -rf '%s' '%s'", dir, work);
    assert_int_equal(system(cmd), 0);
}

int main(int argc, char **argv)
{
    if (argc != 2) {
        fprintf(stderr, "usage: %s pkg-config|find_package|static|subdirectory|sdk-only\n",
                argv[0]);
        return 2;
    }
    g_mode = argv[1];
    const struct CMUnitTest tests[] = {cmocka_unit_test(test_embed)};
    return cmocka_run_group_tests(tests, NULL, NULL);
}
