/*
 * it_common.c — see it_common.h.
 */
#include "it_common.h"

#include <fcntl.h>
#include <ftw.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

void it_ids_add(it_ids_t *ids, const char *id)
{
    assert_true(ids->n < IT_MAX_IDS);
    assert_true(strlen(id) < IT_ID_BYTES);
    strcpy(ids->id[ids->n++], id);
}

sup_env_t *it_start_opts(void **state, const sup_env_opts_t *opts)
{
    sup_env_t *e = calloc(1, sizeof *e);
    assert_non_null(e);
    *state = e;
    assert_int_equal(sup_env_start(e, opts), 0);
    return e;
}

sup_env_t *it_start(void **state, const char *config_yaml)
{
    sup_env_opts_t o = {.config_yaml = config_yaml};
    return it_start_opts(state, &o);
}

int it_teardown(void **state)
{
    sup_env_t *e = *state;
    if (!e) return 0;
    int st = sup_env_stop(e);
    free(e);
    *state = NULL;
    if (st != 0) fprintf(stderr, "collector exit status %d after SIGTERM (want 0)\n", st);
    return st == 0 ? 0 : -1;
}

void it_post(const sup_env_t *e, const char *path, const char *content_type, const char *encoding,
             const void *body, size_t len, sup_http_resp_t *resp)
{
    char ct[128], ce[128];
    const char *headers[3] = {NULL, NULL, NULL};
    size_t h = 0;
    if (content_type) {
        snprintf(ct, sizeof ct, "Content-Type: %s", content_type);
        headers[h++] = ct;
    }
    if (encoding) {
        snprintf(ce, sizeof ce, "Content-Encoding: %s", encoding);
        headers[h++] = ce;
    }
    sup_http_req_t req = {
        .path = path, .headers = headers, .body = body, .body_len = len, .user = IT_KEY};
    sup_http_once(e->coll.port, &req, resp);
}

void it_post_json(const sup_env_t *e, const char *path, const json_t *j, sup_http_resp_t *resp)
{
    base_buf_t body = {0};
    assert_int_equal(sup_json_dump(j, &body), 0);
    it_post(e, path, "application/json", NULL, body.data, body.len, resp);
    base_buf_free(&body);
}

void it_post_good(const sup_env_t *e, const char *prefix, size_t n, it_ids_t *ids)
{
    json_t *events = json_array();
    for (size_t i = 0; i < n; i++) {
        char id[IT_ID_BYTES], user[32];
        sup_message_id(id, sizeof id, prefix);
        snprintf(user, sizeof user, "user-%zu", i);
        json_array_append_new(events, sup_track(id, user, "Good Event", (int)i));
        it_ids_add(ids, id);
    }
    json_t *batch = sup_batch(events);
    sup_http_resp_t resp;
    it_post_json(e, "/v1/batch", batch, &resp);
    json_decref(batch);
    if (resp.status != 200) fprintf(stderr, "good batch answer: %s\n", resp.body.data);
    it_assert_ok(&resp, (long)n, 0);
    sup_http_resp_free(&resp);
}

static long json_int(const json_t *o, const char *key)
{
    const json_t *v = json_object_get(o, key);
    assert_true(json_is_integer(v));
    return (long)json_integer_value(v);
}

void it_assert_ok(const sup_http_resp_t *resp, long accepted, long rejected)
{
    if (resp->status != 200)
        fprintf(stderr, "want 200, got %ld: %s\n", resp->status,
                resp->body.data ? resp->body.data : "(no body)");
    assert_int_equal(resp->status, 200);
    assert_non_null(resp->json);
    assert_true(json_is_true(json_object_get(resp->json, "success")));
    assert_int_equal(json_int(resp->json, "accepted"), accepted);
    assert_int_equal(json_int(resp->json, "rejected"), rejected);
    assert_int_equal(json_int(resp->json, "duplicates"), 0);
    assert_int_equal(json_int(resp->json, "filtered"), 0);
    assert_true(json_is_array(json_object_get(resp->json, "errors")));
    assert_int_equal(json_array_size(json_object_get(resp->json, "errors")), (size_t)rejected);
}

void it_assert_error(const sup_http_resp_t *resp, long status, const char *code)
{
    if (resp->status != status)
        fprintf(stderr, "want %ld, got %ld: %s\n", status, resp->status,
                resp->body.data ? resp->body.data : "(no body)");
    assert_int_equal(resp->status, status);
    assert_non_null(resp->json);
    assert_true(json_is_false(json_object_get(resp->json, "success")));
    const char *err = json_string_value(json_object_get(resp->json, "error"));
    const char *msg = json_string_value(json_object_get(resp->json, "message"));
    assert_non_null(err);
    assert_non_null(msg);
    assert_true(err[0] != '\0');
    assert_true(msg[0] != '\0');
    if (code) assert_string_equal(err, code);
}

void it_assert_event_error(const sup_http_resp_t *resp, long index, const char *message_id,
                           const char *code)
{
    const json_t *errors = json_object_get(resp->json, "errors");
    assert_true(json_is_array(errors));
    for (size_t i = 0; i < json_array_size(errors); i++) {
        const json_t *x = json_array_get(errors, i);
        if (json_integer_value(json_object_get(x, "index")) != index) continue;
        const char *got = json_string_value(json_object_get(x, "error"));
        if (!got || strcmp(got, code) != 0)
            fprintf(stderr, "event %ld: want error %s, got %s\n", index, code,
                    got ? got : "(none)");
        assert_non_null(got);
        assert_string_equal(got, code);
        if (message_id) {
            const char *id = json_string_value(json_object_get(x, "messageId"));
            assert_non_null(id);
            assert_string_equal(id, message_id);
        }
        return;
    }
    fprintf(stderr, "no errors[] entry for index %ld (want %s) in %s\n", index, code,
            resp->body.data ? resp->body.data : "");
    fail();
}

void it_assert_events_exactly(const sup_env_t *e, const it_ids_t *ids, sup_kmsgs_t *out)
{
    sup_kmsgs_t m;
    assert_int_equal(sup_consume(e->mock.bootstrap, "events", ids->n, 10000, &m), 0);
    if (m.n != ids->n) fprintf(stderr, "events topic: want %zu messages, got %zu\n", ids->n, m.n);
    assert_int_equal(m.n, ids->n);
    for (size_t i = 0; i < ids->n; i++) {
        size_t c = sup_kmsgs_count_id(&m, ids->id[i]);
        if (c != 1) fprintf(stderr, "messageId %s found %zu times\n", ids->id[i], c);
        assert_int_equal(c, 1);
    }
    if (out)
        *out = m;
    else
        sup_kmsgs_free(&m);
}

void it_assert_still_serving(const sup_env_t *e, it_ids_t *ids)
{
    it_post_good(e, "after", 3, ids);
}

int it_run(int argc, char **argv, const char *group, const struct CMUnitTest *tests, size_t n)
{
    if (argc > 1) {
        bool known = false;
        for (size_t i = 0; i < n; i++)
            if (strcmp(tests[i].name, argv[1]) == 0) known = true;
        if (!known) {
            fprintf(stderr, "%s: no test case named %s\n", group, argv[1]);
            return 2;
        }
        cmocka_set_test_filter(argv[1]);
    }
    return _cmocka_run_group_tests(group, tests, n, NULL, NULL);
}

static int rm_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
    (void)st;
    (void)flag;
    (void)ftw;
    return remove(path);
}

void it_assert_refused(const char *config_yaml, const char *const *extra_args, const char *want,
                       base_buf_t *log)
{
    const char *coll = getenv("SLUICE_COLLECTOR");
    assert_non_null(coll);
    char dir[] = "/tmp/sluice-it-refused-XXXXXX";
    assert_non_null(mkdtemp(dir));
    char cfg[128], data[128], out[128];
    snprintf(cfg, sizeof cfg, "%s/sluice.yaml", dir);
    snprintf(data, sizeof data, "%s/data", dir);
    snprintf(out, sizeof out, "%s/stderr", dir);
    FILE *f = fopen(cfg, "w");
    assert_non_null(f);
    fputs(config_yaml, f);
    fclose(f);
    const char *argv[32] = {coll,       "--config",    cfg,
                            "--listen", "127.0.0.1:0", "--data-dir",
                            data,       "--write-key", IT_KEY "=" IT_SOURCE};
    size_t n = 9;
    for (size_t i = 0; extra_args != NULL && extra_args[i] != NULL && n < 31; i++)
        argv[n++] = extra_args[i];
    argv[n] = NULL;
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        int fd = open(out, O_WRONLY | O_CREAT | O_TRUNC, 0600);
        if (fd < 0) _exit(127);
        dup2(fd, 2);
        execv(coll, (char *const *)argv);
        _exit(127);
    }
    int st = 0, done = 0;
    for (int i = 0; i < 200 && !done; i++) { /* 20 s */
        done = waitpid(pid, &st, WNOHANG) == pid;
        if (!done) base_sleep_ms(100);
    }
    if (!done) {
        kill(pid, SIGKILL);
        waitpid(pid, &st, 0);
    }
    base_buf_t err = {0};
    f = fopen(out, "r");
    char chunk[4096];
    size_t got;
    while (f != NULL && (got = fread(chunk, 1, sizeof chunk, f)) > 0)
        assert_int_equal(sup_text_append(&err, chunk, got), 0);
    if (f != NULL) fclose(f);
    if (err.data == NULL) assert_int_equal(sup_text_append(&err, "", 0), 0);
    nftw(dir, rm_entry, 8, FTW_DEPTH | FTW_PHYS);
    bool ok = done && WIFEXITED(st) && WEXITSTATUS(st) != 0 && strstr(err.data, want) != NULL;
    if (!ok)
        fprintf(stderr, "collector %s (status %d), want a refusal with \"%s\"; stderr:\n%s\n",
                done ? "exited" : "still running after 20 s (killed)", st, want, err.data);
    assert_true(ok);
    if (log != NULL) {
        base_buf_free(log);
        *log = err;
    } else {
        base_buf_free(&err);
    }
}
