/*
 * test_delivery.c — libsluice's delivery promises against the REAL sluice-collector (producing to
 * librdkafka's mock cluster in the sluice-mock-kafka helper), through the default libcurl
 * transport; every check reads the events back from Kafka:
 *   collector_down_60s          a 60 s collector outage (SIGTERM, then a restart on the same port)
 *                               loses nothing, without a storage dir;
 *   kill9_offline_write_ahead   the app is killed with SIGKILL while the collector is down, with
 *                               write_ahead on; the next run delivers every accepted event;
 *   two_processes_one_dir       two processes sending one storage dir's files never send a file
 *                               twice (their sent counters add up to exactly the stored events);
 *   per_event_rejection         an event the collector rejects inside a 200 reaches error_cb and
 *                               is not counted as sent;
 *   default_context             library (overridden, as a wrapper SDK does), app, os, locale and
 *                               timezone arrive in the event's context (also merged into an event's
 *                               own context, whose keys win); the anonymousId too.
 * Each case is its own ctest (sdk_delivery_<case>): `sdk_delivery test_<case>`.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <arpa/inet.h>
#include <dirent.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include "sluice.h"
#include "support.h"

extern char **environ;

/* ---- a collector on a fixed port (so it can come back where the client expects it) ---- */

typedef struct coll {
    pid_t pid;
    int port;
    char dir[64];
    char bootstrap[256];
} coll_t;

static int free_port(void)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t len = sizeof a;
    assert_int_equal(bind(fd, (struct sockaddr *)&a, sizeof a), 0);
    assert_int_equal(getsockname(fd, (struct sockaddr *)&a, &len), 0);
    close(fd);
    return ntohs(a.sin_port);
}

static void coll_start(coll_t *k)
{
    const char *path = getenv("SLUICE_COLLECTOR");
    assert_non_null(path);
    char listen[64], data[128], log[128];
    snprintf(listen, sizeof listen, "127.0.0.1:%d", k->port);
    snprintf(data, sizeof data, "%s/data", k->dir);
    snprintf(log, sizeof log, "%s/collector.log", k->dir);
    char *argv[] = {(char *)path, "--listen",    listen,         "--brokers",
                    k->bootstrap, "--write-key", "wk_test=test", "--data-dir",
                    data,         "--log-level", "info",         NULL};
    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_addopen(&fa, 2, log, O_WRONLY | O_CREAT | O_APPEND, 0644);
    posix_spawn_file_actions_addopen(&fa, 1, "/dev/null", O_WRONLY, 0);
    assert_int_equal(posix_spawn(&k->pid, path, &fa, NULL, argv, environ), 0);
    posix_spawn_file_actions_destroy(&fa);
    for (int i = 0; i < 300; i++) { /* bounded: 30 s */
        int fd = sup_tcp_connect(k->port, 100);
        if (fd >= 0) {
            close(fd);
            return;
        }
        int st;
        if (waitpid(k->pid, &st, WNOHANG) == k->pid) fail_msg("collector exited (0x%x)", st);
        base_sleep_ms(100);
    }
    fail_msg("collector not listening on %d within 30 s", k->port);
}

/* SIGTERM (a deploy), bounded wait; SIGKILL if it does not exit. */
static void coll_stop(coll_t *k)
{
    if (k->pid <= 0) return;
    kill(k->pid, SIGTERM);
    for (int i = 0; i < 150; i++) {
        if (waitpid(k->pid, NULL, WNOHANG) == k->pid) {
            k->pid = 0;
            return;
        }
        base_sleep_ms(100);
    }
    kill(k->pid, SIGKILL);
    waitpid(k->pid, NULL, 0);
    k->pid = 0;
}

static void env_up(coll_t *k, sup_mock_t *mock)
{
    const char *mp = getenv("SLUICE_MOCK_KAFKA");
    assert_non_null(mp);
    assert_int_equal(sup_mock_start(mock, mp, 1, 3, 30000), 0);
    snprintf(k->bootstrap, sizeof k->bootstrap, "%s", mock->bootstrap);
    snprintf(k->dir, sizeof k->dir, "/tmp/sluice-sdk-dlv-XXXXXX");
    assert_non_null(mkdtemp(k->dir));
    k->port = free_port();
    k->pid = 0;
}

static void env_down(coll_t *k, sup_mock_t *mock)
{
    coll_stop(k);
    sup_mock_stop(mock);
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", k->dir);
    assert_int_equal(system(cmd), 0);
}

static void client_config(sluice_config *cfg, char *endpoint, size_t size, int port)
{
    snprintf(endpoint, size, "http://127.0.0.1:%d", port);
    sluice_config_init(cfg, SLUICE_CONFIG_VERSION);
    cfg->endpoint = endpoint;
    cfg->write_key = "wk_test";
    cfg->retry_base_ms = 100;
    cfg->retry_max_ms = 1000;
    cfg->connect_timeout_ms = 1000;
    cfg->request_timeout_ms = 5000;
    cfg->flush_interval_ms = 200;
}

static void send_ids(sluice_client *c, const char *prefix, int from, int to)
{
    char id[64];
    for (int i = from; i < to; i++) {
        snprintf(id, sizeof id, "%s-%d", prefix, i);
        sluice_event ev = {
            .type = "track", .user_id = "u-dlv", .event = "Delivered", .message_id = id};
        assert_int_equal(sluice_send(c, &ev), SLUICE_OK);
    }
}

/* Every id prefix-0 .. prefix-(n-1) is in Kafka (at least once); returns how many records. */
static size_t expect_all(const char *bootstrap, const char *prefix, int n)
{
    sup_kmsgs_t msgs = {0};
    assert_int_equal(sup_consume(bootstrap, "events", (size_t)n, 30000, &msgs), 0);
    char id[64];
    for (int i = 0; i < n; i++) {
        snprintf(id, sizeof id, "%s-%d", prefix, i);
        if (sup_kmsgs_count_id(&msgs, id) < 1) fail_msg("%s never reached Kafka", id);
    }
    size_t got = msgs.n;
    sup_kmsgs_free(&msgs);
    return got;
}

static int count_slb(const char *dir)
{
    DIR *d = opendir(dir);
    if (!d) return -1;
    int n = 0;
    struct dirent *de;
    while ((de = readdir(d))) {
        size_t l = strlen(de->d_name);
        n += l > 4 && !strcmp(de->d_name + l - 4, ".slb");
    }
    closedir(d);
    return n;
}

/* ---- the cases ---- */

#define OUTAGE_S 60

static void test_collector_down_60s(void **state)
{
    (void)state;
    coll_t k;
    sup_mock_t mock;
    env_up(&k, &mock);
    coll_start(&k);
    char ep[64];
    sluice_config cfg;
    client_config(&cfg, ep, sizeof ep, k.port);
    cfg.retry_max_ms = 2000; /* the pause after the collector is back is at most 2 s */
    sluice_client *c;
    assert_int_equal(sluice_client_new(&c, &cfg), SLUICE_OK);
    send_ids(c, "down", 0, 100);
    assert_int_equal(sluice_flush(c, 10000), SLUICE_OK);

    coll_stop(&k); /* a deploy: down for 60 s; the app keeps tracking meanwhile */
    int64_t t0 = (int64_t)base_mono_ms();
    int sent = 100;
    while ((int64_t)base_mono_ms() - t0 < OUTAGE_S * 1000) {
        send_ids(c, "down", sent, sent + 10);
        sent += 10;
        base_sleep_ms(1000);
    }
    sluice_stats st;
    assert_int_equal(sluice_client_stats(c, &st), 0);
    assert_int_equal(st.failed, 0);
    assert_int_equal(st.dropped, 0);
    assert_true(st.retried > 0);
    coll_start(&k); /* back on the same port */
    send_ids(c, "down", sent, sent + 10);
    sent += 10;
    assert_int_equal(sluice_flush(c, 30000), SLUICE_OK);
    assert_int_equal(sluice_client_stats(c, &st), 0);
    assert_int_equal(st.sent, (uint64_t)sent);
    assert_int_equal(sluice_client_close(c, 10000), 0);
    expect_all(k.bootstrap, "down", sent);
    env_down(&k, &mock);
}

static void test_kill9_offline_write_ahead(void **state)
{
    (void)state;
    coll_t k;
    sup_mock_t mock;
    env_up(&k, &mock); /* the collector is NOT started: offline */
    char store[128];
    snprintf(store, sizeof store, "%s/store", k.dir);
    enum { N = 250 };
    int pfd[2];
    assert_int_equal(pipe(pfd), 0);
    pid_t app = fork();
    assert_true(app >= 0);
    if (app == 0) {
        close(pfd[0]);
        char ep[64];
        sluice_config cfg;
        client_config(&cfg, ep, sizeof ep, k.port);
        cfg.storage_dir = store;
        cfg.write_ahead = 1;
        cfg.batch_size = 20;
        sluice_client *c;
        int rc = sluice_client_new(&c, &cfg);
        if (rc == 0) {
            char id[64];
            for (int i = 0; i < N && rc == 0; i++) {
                snprintf(id, sizeof id, "wa-%d", i);
                sluice_event ev = {
                    .type = "track", .user_id = "u-wa", .event = "E", .message_id = id};
                rc = sluice_send(c, &ev);
            }
            /* every accepted event is on disk once flush returns (it cannot be sent) */
            if (rc == 0) rc = sluice_flush(c, 15000);
        }
        if (write(pfd[1], &rc, sizeof rc) != (ssize_t)sizeof rc) _exit(3);
        for (;;)
            pause(); /* killed here, client open, worker retrying */
    }
    close(pfd[1]);
    int rc = -1;
    assert_int_equal(read(pfd[0], &rc, sizeof rc), (ssize_t)sizeof rc);
    close(pfd[0]);
    assert_int_equal(rc, 0);
    assert_int_equal(kill(app, SIGKILL), 0);
    int st;
    assert_int_equal(waitpid(app, &st, 0), app);
    assert_true(WIFSIGNALED(st) && WTERMSIG(st) == SIGKILL);
    assert_true(count_slb(store) >= N / 20);

    /* the collector comes up; the app restarts on the same storage dir */
    coll_start(&k);
    char ep[64];
    sluice_config cfg;
    client_config(&cfg, ep, sizeof ep, k.port);
    cfg.storage_dir = store;
    sluice_client *c;
    assert_int_equal(sluice_client_new(&c, &cfg), SLUICE_OK);
    sluice_stats s;
    for (int i = 0; i < 300; i++) { /* bounded: 30 s */
        sluice_client_stats(c, &s);
        if (s.sent >= N) break;
        base_sleep_ms(100);
    }
    assert_int_equal(s.sent, N);
    assert_int_equal(sluice_client_close(c, 10000), 0);
    assert_int_equal(count_slb(store), 0);
    assert_int_equal(expect_all(k.bootstrap, "wa", N), N);
    env_down(&k, &mock);
}

static void test_two_processes_one_dir(void **state)
{
    (void)state;
    coll_t k;
    sup_mock_t mock;
    env_up(&k, &mock);
    char store[128];
    snprintf(store, sizeof store, "%s/store", k.dir);
    enum { N = 400 };
    /* offline: every batch of 10 goes to its own file */
    char ep[64];
    sluice_config cfg;
    client_config(&cfg, ep, sizeof ep, k.port);
    cfg.storage_dir = store;
    cfg.batch_size = 10;
    sluice_client *c;
    assert_int_equal(sluice_client_new(&c, &cfg), SLUICE_OK);
    send_ids(c, "two", 0, N);
    assert_int_equal(sluice_client_close(c, 10000), N); /* all stored, none delivered */
    int files = count_slb(store);
    assert_true(files >= N / 10);

    coll_start(&k);
    int pfd[2];
    assert_int_equal(pipe(pfd), 0);
    pid_t kids[2];
    for (int p = 0; p < 2; p++) {
        kids[p] = fork();
        assert_true(kids[p] >= 0);
        if (kids[p] == 0) {
            close(pfd[0]);
            sluice_config kc;
            char kep[64];
            client_config(&kc, kep, sizeof kep, k.port);
            kc.storage_dir = store;
            kc.retry_max_ms = 200; /* look again soon at files the other one held */
            sluice_client *kcl;
            uint64_t sent = UINT64_MAX;
            if (sluice_client_new(&kcl, &kc) == 0) {
                for (int i = 0; i < 300 && count_slb(store) > 0; i++) /* bounded: 30 s */
                    base_sleep_ms(100);
                sluice_stats s;
                sluice_client_stats(kcl, &s);
                sent = s.sent;
                sluice_client_close(kcl, 5000);
            }
            if (write(pfd[1], &sent, sizeof sent) != (ssize_t)sizeof sent) _exit(3);
            _exit(0);
        }
    }
    close(pfd[1]);
    uint64_t total = 0;
    for (int p = 0; p < 2; p++) {
        uint64_t sent = 0;
        assert_int_equal(read(pfd[0], &sent, sizeof sent), (ssize_t)sizeof sent);
        assert_true(sent != UINT64_MAX);
        print_message("process %d sent %llu events\n", p, (unsigned long long)sent);
        total += sent;
    }
    close(pfd[0]);
    for (int p = 0; p < 2; p++)
        assert_int_equal(waitpid(kids[p], NULL, 0), kids[p]);
    assert_int_equal(count_slb(store), 0);
    assert_int_equal(total, N); /* a file sent twice would count its events twice */
    assert_int_equal(expect_all(k.bootstrap, "two", N), N);
    env_down(&k, &mock);
}

typedef struct errs {
    int n, rejected;
    char msg[512];
} errs_t;

static void on_error(void *ud, int err, int status, uint32_t n, const char *msg)
{
    errs_t *e = ud;
    e->n++;
    if (err == SLUICE_E_REJECTED && status == 200 && n == 1) {
        e->rejected++;
        snprintf(e->msg, sizeof e->msg, "%s", msg);
    }
}

static void test_per_event_rejection(void **state)
{
    (void)state;
    coll_t k;
    sup_mock_t mock;
    env_up(&k, &mock);
    coll_start(&k);
    char ep[64];
    sluice_config cfg;
    client_config(&cfg, ep, sizeof ep, k.port);
    errs_t errs = {0};
    cfg.error_cb = on_error;
    cfg.cb_ud = &errs;
    sluice_client *c;
    assert_int_equal(sluice_client_new(&c, &cfg), SLUICE_OK);
    send_ids(c, "rej-ok", 0, 5);
    /* the builder does not de-duplicate keys; the collector rejects such an event alone */
    sluice_props *p = sluice_props_new();
    sluice_props_set_str(p, "plan", "pro");
    sluice_props_set_str(p, "plan", "free");
    sluice_event bad = {
        .type = "track", .user_id = "u", .event = "E", .message_id = "rej-bad", .properties = p};
    assert_int_equal(sluice_send(c, &bad), SLUICE_OK);
    sluice_props_free(p);
    assert_int_equal(sluice_flush(c, 10000), SLUICE_OK);
    assert_int_equal(errs.rejected, 1);
    assert_int_equal(errs.n, 1);
    assert_non_null(strstr(errs.msg, "rej-bad"));
    assert_non_null(strstr(errs.msg, "duplicate_key"));
    sluice_stats st;
    sluice_client_stats(c, &st);
    assert_int_equal(st.sent, 5);
    assert_int_equal(st.rejected, 1);
    assert_int_equal(st.failed, 1);
    assert_int_equal(sluice_client_close(c, 5000), 1); /* the rejected event was not delivered */
    sup_kmsgs_t msgs = {0};
    assert_int_equal(sup_consume(k.bootstrap, "events", 5, 20000, &msgs), 0);
    assert_int_equal(sup_kmsgs_count_id(&msgs, "rej-bad"), 0);
    sup_kmsgs_free(&msgs);
    env_down(&k, &mock);
}

static const char *jpath(json_t *v, const char *a, const char *b)
{
    json_t *x = json_object_get(v, a);
    if (b) x = json_object_get(x, b);
    return json_is_string(x) ? json_string_value(x) : NULL;
}

static void test_default_context(void **state)
{
    (void)state;
    coll_t k;
    sup_mock_t mock;
    env_up(&k, &mock);
    coll_start(&k);
    char ep[64], store[128];
    snprintf(store, sizeof store, "%s/store", k.dir);
    sluice_config cfg;
    client_config(&cfg, ep, sizeof ep, k.port);
    cfg.storage_dir = store;
    cfg.library_name = "sluice-unity"; /* a wrapper SDK names itself */
    cfg.library_version = "9.9.9";
    cfg.app_name = "Shop";
    cfg.app_version = "2.1.0";
    cfg.locale = "de-DE";
    cfg.timezone = "Europe/Berlin";
    sluice_client *c;
    assert_int_equal(sluice_client_new(&c, &cfg), SLUICE_OK);
    char anon[40];
    snprintf(anon, sizeof anon, "%s", sluice_anonymous_id(c));
    sluice_event ev = {.type = "track", .event = "Anon Viewed", .message_id = "ctx-1"};
    assert_int_equal(sluice_send(c, &ev), SLUICE_OK);
    /* an event with its own context: its keys win, the defaults it lacks are added */
    sluice_props *own = sluice_props_new();
    sluice_props_set_str(own, "locale", "fr-FR");
    sluice_props_set_str(own, "campaign", "spring");
    sluice_event ev2 = {
        .type = "track", .user_id = "u-ctx", .event = "Own", .message_id = "ctx-2", .context = own};
    assert_int_equal(sluice_send(c, &ev2), SLUICE_OK);
    sluice_props_free(own);
    assert_int_equal(sluice_client_close(c, 10000), 0);

    sup_kmsgs_t msgs = {0};
    assert_int_equal(sup_consume(k.bootstrap, "events", 2, 20000, &msgs), 0);
    long i = sup_kmsgs_find(&msgs, "ctx-1");
    assert_true(i >= 0);
    json_t *v = sup_kmsg_value(&msgs.msgs[i]);
    assert_non_null(v);
    json_t *ctx = json_object_get(v, "context");
    assert_string_equal(jpath(ctx, "library", "name"), "sluice-unity");
    assert_string_equal(jpath(ctx, "library", "version"), "9.9.9");
    assert_string_equal(jpath(ctx, "app", "name"), "Shop");
    assert_string_equal(jpath(ctx, "app", "version"), "2.1.0");
    assert_string_equal(jpath(ctx, "os", "name"), "Linux");
    assert_non_null(jpath(ctx, "os", "version"));
    assert_string_equal(jpath(ctx, "locale", NULL), "de-DE");
    assert_string_equal(jpath(ctx, "timezone", NULL), "Europe/Berlin");
    assert_string_equal(jpath(v, "anonymousId", NULL), anon);
    assert_null(json_object_get(v, "userId"));
    json_decref(v);
    i = sup_kmsgs_find(&msgs, "ctx-2");
    assert_true(i >= 0);
    v = sup_kmsg_value(&msgs.msgs[i]);
    ctx = json_object_get(v, "context");
    assert_string_equal(jpath(ctx, "locale", NULL), "fr-FR");
    assert_string_equal(jpath(ctx, "campaign", NULL), "spring");
    assert_string_equal(jpath(ctx, "library", "name"), "sluice-unity");
    assert_string_equal(jpath(ctx, "app", "name"), "Shop");
    assert_string_equal(jpath(ctx, "timezone", NULL), "Europe/Berlin");
    assert_null(json_object_get(v, "anonymousId")); /* a known user gets none added */
    json_decref(v);
    sup_kmsgs_free(&msgs);
    env_down(&k, &mock);
}

int main(int argc, char **argv)
{
    const struct CMUnitTest all[] = {
        cmocka_unit_test(test_collector_down_60s),
        cmocka_unit_test(test_kill9_offline_write_ahead),
        cmocka_unit_test(test_two_processes_one_dir),
        cmocka_unit_test(test_per_event_rejection),
        cmocka_unit_test(test_default_context),
    };
    if (argc > 1) {
        for (size_t i = 0; i < sizeof all / sizeof all[0]; i++)
            if (!strcmp(all[i].name, argv[1]))
                return _cmocka_run_group_tests(argv[1], &all[i], 1, NULL, NULL);
        fprintf(stderr, "no test %s\n", argv[1]);
        return 2;
    }
    return cmocka_run_group_tests(all, NULL, NULL);
}
