/*
 * support.c — see support.h. Test-only code: clarity over speed, every wait bounded.
 */
#include "support.h"

#include <arpa/inet.h>
#include <curl/curl.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <librdkafka/rdkafka.h>
#include <msgpack.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#include <zlib.h>
#include <zstd.h>

#define SUP_MAX_CHILD 8
#define SUP_LINE_MAX  512

static void fail(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void fail(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fputs("support: ", stderr);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
}

/* ---------- time ---------- */

static int remaining_ms(int64_t deadline)
{
    int64_t r = deadline - base_mono_ms();
    return r < 0 ? 0 : (int)r;
}

/* ---------- text buffers ---------- */

int sup_text_append(base_buf_t *b, const void *p, size_t n)
{
    if (b->data == NULL && b->cap == 0 && b->max == 0) base_buf_init(b, SUP_TEXT_MAX);
    if (n == SIZE_MAX) return BASE_E_TOO_LARGE;
    int rc = base_buf_reserve(b, n + 1); /* + the NUL, kept past len */
    if (rc == BASE_OK) rc = base_buf_append(b, p, n);
    if (rc == BASE_OK) b->data[b->len] = '\0';
    return rc;
}

/* ---------- children ---------- */

/* Every child we started and have not reaped yet; killed at exit whatever happened. */
static pid_t live_children[SUP_MAX_CHILD];
static bool atexit_done;

static void kill_children_at_exit(void)
{
    for (int i = 0; i < SUP_MAX_CHILD; i++) {
        if (live_children[i] > 0) {
            kill(live_children[i], SIGKILL);
            waitpid(live_children[i], NULL, 0);
            live_children[i] = 0;
        }
    }
}

static void install_exit_handler(void)
{
    if (atexit_done) return;
    atexit(kill_children_at_exit);
    /* A write to a dead helper's stdin must fail with EPIPE, not kill the test. */
    signal(SIGPIPE, SIG_IGN);
    atexit_done = true;
}

static int child_track(pid_t pid)
{
    for (int i = 0; i < SUP_MAX_CHILD; i++) {
        if (live_children[i] == 0) {
            live_children[i] = pid;
            return 0;
        }
    }
    return -1;
}

static void child_untrack(pid_t pid)
{
    for (int i = 0; i < SUP_MAX_CHILD; i++)
        if (live_children[i] == pid) live_children[i] = 0;
}

/*
 * fork + exec rather than posix_spawn: only fork lets the child ask for PR_SET_PDEATHSIG, which
 * makes the kernel kill it when the test process dies in any way (including SIGKILL from a ctest
 * timeout, which no atexit handler sees). Only async-signal-safe calls run in the child.
 */
static pid_t spawn(char *const argv[], int in_fd, int out_fd, int err_fd)
{
    install_exit_handler();
    pid_t parent = getpid();
    pid_t pid = fork();
    if (pid < 0) {
        fail("fork: %s", strerror(errno));
        return -1;
    }
    if (pid == 0) {
        struct sigaction sa;
        memset(&sa, 0, sizeof sa);
        sa.sa_handler = SIG_DFL;
        sigaction(SIGPIPE, &sa, NULL);
        sigset_t none;
        sigemptyset(&none);
        sigprocmask(SIG_SETMASK, &none, NULL);
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        if (getppid() != parent) _exit(127);
        if (in_fd >= 0) dup2(in_fd, 0);
        if (out_fd >= 0) dup2(out_fd, 1);
        if (err_fd >= 0) dup2(err_fd, 2);
        execv(argv[0], argv);
        _exit(127);
    }
    if (child_track(pid) != 0) {
        kill(pid, SIGKILL);
        waitpid(pid, NULL, 0);
        fail("too many children");
        return -1;
    }
    return pid;
}

/* Waits for pid up to timeout_ms. Returns exit status, 128+sig, or -1 on timeout. */
static int reap(pid_t pid, int timeout_ms)
{
    int64_t deadline = base_mono_ms() + timeout_ms;
    for (;;) {
        int st = 0;
        pid_t r = waitpid(pid, &st, WNOHANG);
        if (r == pid) {
            child_untrack(pid);
            if (WIFEXITED(st)) return WEXITSTATUS(st);
            if (WIFSIGNALED(st)) return 128 + WTERMSIG(st);
            return -1;
        }
        if (r < 0) {
            child_untrack(pid);
            return -1;
        }
        if (base_mono_ms() >= deadline) return -1;
        base_sleep_ms(10);
    }
}

pid_t sup_child_start(char *const argv[], const char *log_path)
{
    int in = open("/dev/null", O_RDONLY | O_CLOEXEC);
    int out = open(log_path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
    if (in < 0 || out < 0) {
        fail("open %s: %s", log_path, strerror(errno));
        if (in >= 0) close(in);
        if (out >= 0) close(out);
        return -1;
    }
    pid_t pid = spawn(argv, in, out, out);
    close(in);
    close(out);
    return pid;
}

int sup_child_wait(pid_t pid, int timeout_ms)
{
    int st = reap(pid, timeout_ms);
    if (st == -1 && kill(pid, SIGKILL) == 0) {
        fail("child %d still running after %d ms: killed", (int)pid, timeout_ms);
        (void)reap(pid, 5000);
    }
    return st;
}

int sup_child_wait_quiet(pid_t pid, int timeout_ms)
{
    return reap(pid, timeout_ms);
}

long sup_proc_hwm_kb(pid_t pid)
{
    char path[64], line[256];
    snprintf(path, sizeof path, "/proc/%d/status", (int)pid);
    FILE *f = fopen(path, "r");
    if (f == NULL) return -1;
    long kb = -1;
    while (fgets(line, sizeof line, f) != NULL)
        if (strncmp(line, "VmHWM:", 6) == 0) kb = strtol(line + 6, NULL, 10);
    fclose(f);
    return kb;
}

/* Reads one '\n'-terminated line from fd (without the '\n') within timeout_ms. */
static int read_line(int fd, char *line, size_t cap, int timeout_ms)
{
    int64_t deadline = base_mono_ms() + timeout_ms;
    size_t n = 0;
    for (;;) {
        struct pollfd p = {fd, POLLIN, 0};
        int r = poll(&p, 1, remaining_ms(deadline));
        if (r < 0 && errno == EINTR) continue;
        if (r <= 0) return -1;
        char c;
        ssize_t got = read(fd, &c, 1);
        if (got < 0 && errno == EINTR) continue;
        if (got <= 0) return -1;
        if (c == '\n') {
            line[n] = '\0';
            return 0;
        }
        if (n + 1 < cap) line[n++] = c;
    }
}

/* ---------- mock helper ---------- */

int sup_mock_start(sup_mock_t *m, const char *path, int n_brokers, int partitions, int timeout_ms)
{
    memset(m, 0, sizeof *m);
    m->cmd_fd = m->out_fd = -1;
    int in[2], out[2];
    if (pipe2(in, O_CLOEXEC) != 0) return -1;
    if (pipe2(out, O_CLOEXEC) != 0) {
        close(in[0]);
        close(in[1]);
        return -1;
    }
    char nb[16], np[16];
    snprintf(nb, sizeof nb, "%d", n_brokers);
    snprintf(np, sizeof np, "%d", partitions);
    char *argv[] = {(char *)path, nb, np, NULL};
    m->pid = spawn(argv, in[0], out[1], -1);
    close(in[0]);
    close(out[1]);
    m->cmd_fd = in[1];
    m->out_fd = out[0];
    if (m->pid < 0) {
        sup_mock_stop(m);
        return -1;
    }
    if (read_line(m->out_fd, m->bootstrap, sizeof m->bootstrap, timeout_ms) != 0 ||
        m->bootstrap[0] == '\0') {
        fail("mock kafka helper %s printed no bootstrap line", path);
        sup_mock_stop(m);
        return -1;
    }
    return 0;
}

int sup_mock_cmd(sup_mock_t *m, const char *cmd, int timeout_ms)
{
    char line[SUP_LINE_MAX];
    size_t n = strlen(cmd);
    if (n + 2 > sizeof line) return -1;
    memcpy(line, cmd, n);
    line[n++] = '\n';
    if (write(m->cmd_fd, line, n) != (ssize_t)n) {
        fail("mock cmd '%s': write: %s", cmd, strerror(errno));
        return -1;
    }
    if (read_line(m->out_fd, line, sizeof line, timeout_ms) != 0 || strcmp(line, "ok") != 0) {
        fail("mock cmd '%s': no ok", cmd);
        return -1;
    }
    return 0;
}

void sup_mock_stop(sup_mock_t *m)
{
    if (m->pid > 0) {
        if (m->cmd_fd >= 0) {
            ssize_t w = write(m->cmd_fd, "quit\n", 5);
            (void)w;
        }
        if (reap(m->pid, 3000) < 0) {
            kill(m->pid, SIGKILL);
            reap(m->pid, 3000);
        }
    }
    if (m->cmd_fd >= 0) close(m->cmd_fd);
    if (m->out_fd >= 0) close(m->out_fd);
    m->pid = 0;
    m->cmd_fd = m->out_fd = -1;
}

/* ---------- collector ---------- */

static int read_file(const char *path, base_buf_t *out)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return -1;
    char tmp[8192];
    for (;;) {
        ssize_t r = read(fd, tmp, sizeof tmp);
        if (r < 0 && errno == EINTR) continue;
        if (r <= 0) break;
        if (sup_text_append(out, tmp, (size_t)r) != 0) break;
    }
    close(fd);
    return 0;
}

static int write_file(const char *path, const char *text)
{
    FILE *f = fopen(path, "w");
    if (!f) return -1;
    size_t n = strlen(text);
    int ok = fwrite(text, 1, n, f) == n;
    return (fclose(f) == 0 && ok) ? 0 : -1;
}

/* Port from the first log line with "msg":MSG (e.g. "listening"), or 0. */
static int find_listening_port(const char *log, const char *msg)
{
    char needle[64];
    snprintf(needle, sizeof needle, "\"msg\":\"%s\"", msg);
    const char *p = log;
    while ((p = strstr(p, needle)) != NULL) {
        const char *start = p;
        while (start > log && start[-1] != '\n')
            start--;
        const char *end = strchr(p, '\n');
        if (!end) return 0; /* line not complete yet */
        json_t *j = json_loadb(start, (size_t)(end - start), 0, NULL);
        int port = 0;
        if (j) {
            json_t *v = json_object_get(j, "port");
            if (json_is_integer(v))
                port = (int)json_integer_value(v);
            else if (json_is_string(v))
                port = atoi(json_string_value(v));
            json_decref(j);
        }
        if (port > 0) return port;
        p = end;
    }
    return 0;
}

int sup_collector_start(sup_collector_t *c, const char *path, const char *dir, const char *brokers,
                        const char *const *keys, const char *config_yaml, int timeout_ms)
{
    memset(c, 0, sizeof *c);
    char data_dir[512], cfg_path[512];
    snprintf(c->log_path, sizeof c->log_path, "%s/collector.log", dir);
    snprintf(data_dir, sizeof data_dir, "%s/data", dir);
    snprintf(cfg_path, sizeof cfg_path, "%s/sluice.yaml", dir);
    if (config_yaml && write_file(cfg_path, config_yaml) != 0) {
        fail("cannot write %s", cfg_path);
        return -1;
    }
    char *argv[48];
    int a = 0;
    argv[a++] = (char *)path;
    argv[a++] = "--listen";
    argv[a++] = "127.0.0.1:0";
    if (brokers) {
        argv[a++] = "--brokers";
        argv[a++] = (char *)brokers;
    }
    for (size_t i = 0; keys && keys[i] && a < 40; i++) {
        argv[a++] = "--write-key";
        argv[a++] = (char *)keys[i];
    }
    argv[a++] = "--data-dir";
    argv[a++] = data_dir;
    argv[a++] = "--log-level";
    argv[a++] = "debug";
    if (config_yaml) {
        argv[a++] = "--config";
        argv[a++] = cfg_path;
    }
    argv[a] = NULL;

    int log_fd = open(c->log_path, O_WRONLY | O_CREAT | O_TRUNC | O_APPEND | O_CLOEXEC, 0644);
    if (log_fd < 0) {
        fail("cannot open %s: %s", c->log_path, strerror(errno));
        return -1;
    }
    int null_fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
    c->pid = spawn(argv, null_fd, log_fd, log_fd);
    close(log_fd);
    if (null_fd >= 0) close(null_fd);
    if (c->pid < 0) return -1;

    int64_t deadline = base_mono_ms() + timeout_ms;
    for (;;) {
        base_buf_t log = {0};
        read_file(c->log_path, &log);
        int port = log.data ? find_listening_port(log.data, "listening") : 0;
        /* main logs admin_listening before listening */
        int admin_port = port > 0 ? find_listening_port(log.data, "admin_listening") : 0;
        base_buf_free(&log);
        if (port > 0) {
            c->port = port;
            c->admin_port = admin_port;
            return 0;
        }
        int st = 0;
        if (waitpid(c->pid, &st, WNOHANG) == c->pid) {
            child_untrack(c->pid);
            c->pid = 0;
            fail("collector exited before listening (status 0x%x)", st);
            sup_collector_dump_log(c, 4096);
            return -1;
        }
        if (base_mono_ms() >= deadline) break;
        base_sleep_ms(20);
    }
    fail("collector did not log \"listening\" within %d ms", timeout_ms);
    sup_collector_dump_log(c, 4096);
    kill(c->pid, SIGKILL);
    reap(c->pid, 3000);
    c->pid = 0;
    return -1;
}

void sup_collector_signal(sup_collector_t *c, int sig)
{
    if (c->pid > 0) kill(c->pid, sig);
}

int sup_collector_wait(sup_collector_t *c, int timeout_ms)
{
    if (c->pid <= 0) return 0;
    int st = reap(c->pid, timeout_ms);
    if (st >= 0) c->pid = 0;
    return st;
}

int sup_collector_stop(sup_collector_t *c, int timeout_ms)
{
    if (c->pid <= 0) return 0;
    kill(c->pid, SIGTERM);
    int st = reap(c->pid, timeout_ms);
    if (st < 0) {
        fail("collector did not exit within %d ms of SIGTERM: killed", timeout_ms);
        kill(c->pid, SIGKILL);
        reap(c->pid, 3000);
        st = 128 + SIGKILL;
    }
    c->pid = 0;
    return st;
}

void sup_collector_dump_log(const sup_collector_t *c, size_t max_bytes)
{
    base_buf_t log = {0};
    if (read_file(c->log_path, &log) != 0 || !log.data) {
        fprintf(stderr, "(no collector log at %s)\n", c->log_path);
        return;
    }
    size_t from = log.len > max_bytes ? log.len - max_bytes : 0;
    fprintf(stderr, "---- collector log tail (%s) ----\n%s\n---- end ----\n", c->log_path,
            log.data + from);
    base_buf_free(&log);
}

bool sup_collector_log_contains(const sup_collector_t *c, const char *needle)
{
    base_buf_t log = {0};
    bool found = read_file(c->log_path, &log) == 0 && log.data && strstr(log.data, needle);
    base_buf_free(&log);
    return found;
}

/* ---------- env ---------- */

static int rm_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
    (void)st;
    (void)flag;
    (void)ftw;
    return remove(path);
}

int sup_env_start(sup_env_t *e, const sup_env_opts_t *opts)
{
    static const char *const default_keys[] = {"wk_test=test", "wk_web=web", NULL};
    sup_env_opts_t o = {0};
    if (opts) o = *opts;
    memset(e, 0, sizeof *e);
    e->mock.cmd_fd = e->mock.out_fd = -1;
    const char *coll = getenv("SLUICE_COLLECTOR");
    const char *mock = getenv("SLUICE_MOCK_KAFKA");
    if (!coll || !mock) {
        fail("SLUICE_COLLECTOR and SLUICE_MOCK_KAFKA must name the binaries");
        return -1;
    }
    snprintf(e->dir, sizeof e->dir, "/tmp/sluice-it-XXXXXX");
    if (!mkdtemp(e->dir)) {
        fail("mkdtemp: %s", strerror(errno));
        e->dir[0] = '\0';
        return -1;
    }
    if (sup_mock_start(&e->mock, mock, o.n_brokers > 0 ? o.n_brokers : 1,
                       o.partitions > 0 ? o.partitions : 3, 10000) != 0)
        return -1;
    if (sup_collector_start(&e->coll, coll, e->dir, e->mock.bootstrap,
                            o.keys ? o.keys : default_keys, o.config_yaml, 30000) != 0) {
        sup_mock_stop(&e->mock);
        return -1;
    }
    return 0;
}

int sup_env_stop(sup_env_t *e)
{
    int st = 0;
    if (e->coll.pid > 0) {
        st = sup_collector_stop(&e->coll, 15000);
        if (st != 0) sup_collector_dump_log(&e->coll, 4096);
    }
    sup_mock_stop(&e->mock);
    if (e->dir[0]) {
        if (!getenv("SLUICE_KEEP_TMP")) nftw(e->dir, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
        e->dir[0] = '\0';
    }
    return st;
}

/* ---------- HTTP ---------- */

struct sup_http {
    CURL *curl;
    int port;
    char cafile[512]; /* "": http://; else https:// trusting this CA file */
};

typedef struct upload {
    const char *p;
    size_t left;
} upload_t;

static size_t body_cb(char *ptr, size_t size, size_t nmemb, void *ud)
{
    base_buf_t *b = ud;
    return sup_text_append(b, ptr, size * nmemb) == 0 ? size * nmemb : 0;
}

static size_t header_cb(char *ptr, size_t size, size_t nmemb, void *ud)
{
    base_buf_t *b = ud;
    size_t n = size * nmemb;
    /* Keep only the final answer's headers (a 100 Continue has its own block). */
    if (n >= 5 && memcmp(ptr, "HTTP/", 5) == 0) b->len = 0;
    return sup_text_append(b, ptr, n) == 0 ? n : 0;
}

static size_t read_cb(char *ptr, size_t size, size_t nmemb, void *ud)
{
    upload_t *u = ud;
    size_t n = size * nmemb;
    if (n > 1024) n = 1024; /* several chunks even for small bodies */
    if (n > u->left) n = u->left;
    memcpy(ptr, u->p, n);
    u->p += n;
    u->left -= n;
    return n;
}

sup_http_t *sup_http_new(int port)
{
    static bool inited;
    if (!inited) {
        curl_global_init(CURL_GLOBAL_DEFAULT);
        inited = true;
    }
    sup_http_t *h = calloc(1, sizeof *h);
    if (!h) return NULL;
    h->curl = curl_easy_init();
    h->port = port;
    if (!h->curl) {
        free(h);
        return NULL;
    }
    return h;
}

void sup_http_set_ca(sup_http_t *h, const char *cafile)
{
    snprintf(h->cafile, sizeof h->cafile, "%s", cafile != NULL ? cafile : "");
}

void sup_http_free(sup_http_t *h)
{
    if (!h) return;
    curl_easy_cleanup(h->curl);
    free(h);
}

int sup_http_do(sup_http_t *h, const sup_http_req_t *req, sup_http_resp_t *resp)
{
    memset(resp, 0, sizeof *resp);
    CURL *c = h->curl;
    curl_easy_reset(c); /* keeps the connection cache: keep-alive survives */
    char url[1024];
    snprintf(url, sizeof url, "%s://127.0.0.1:%d%s", h->cafile[0] ? "https" : "http", h->port,
             req->path);
    const char *method = req->method ? req->method : "POST";
    curl_easy_setopt(c, CURLOPT_URL, url);
    if (h->cafile[0]) {
        curl_easy_setopt(c, CURLOPT_CAINFO, h->cafile);
        curl_easy_setopt(c, CURLOPT_CAPATH, NULL);
        curl_easy_setopt(c, CURLOPT_SSL_VERIFYPEER, 1L);
        curl_easy_setopt(c, CURLOPT_SSL_VERIFYHOST, 2L);
        curl_easy_setopt(c, CURLOPT_HTTP_VERSION, (long)CURL_HTTP_VERSION_1_1);
    }
    curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(c, CURLOPT_TIMEOUT_MS, (long)(req->timeout_ms > 0 ? req->timeout_ms : 15000));
    curl_easy_setopt(c, CURLOPT_CONNECTTIMEOUT_MS, 5000L);
    curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, body_cb);
    curl_easy_setopt(c, CURLOPT_WRITEDATA, &resp->body);
    curl_easy_setopt(c, CURLOPT_HEADERFUNCTION, header_cb);
    curl_easy_setopt(c, CURLOPT_HEADERDATA, &resp->headers);

    struct curl_slist *hl = curl_slist_append(NULL, "Expect:");
    for (size_t i = 0; req->headers && req->headers[i]; i++)
        hl = curl_slist_append(hl, req->headers[i]);
    upload_t up = {req->body, req->body_len};
    if (strcmp(method, "POST") == 0 || strcmp(method, "PUT") == 0) {
        curl_easy_setopt(c, CURLOPT_POST, 1L);
        if (strcmp(method, "POST") != 0) curl_easy_setopt(c, CURLOPT_CUSTOMREQUEST, method);
        if (req->chunked) {
            hl = curl_slist_append(hl, "Transfer-Encoding: chunked");
            curl_easy_setopt(c, CURLOPT_READFUNCTION, read_cb);
            curl_easy_setopt(c, CURLOPT_READDATA, &up);
        } else {
            curl_easy_setopt(c, CURLOPT_POSTFIELDS, req->body ? req->body : "");
            curl_easy_setopt(c, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)req->body_len);
        }
    } else {
        curl_easy_setopt(c, CURLOPT_HTTPGET, 1L);
        if (strcmp(method, "GET") != 0) curl_easy_setopt(c, CURLOPT_CUSTOMREQUEST, method);
    }
    curl_easy_setopt(c, CURLOPT_HTTPHEADER, hl);
    if (req->user) {
        curl_easy_setopt(c, CURLOPT_HTTPAUTH, (long)CURLAUTH_BASIC);
        curl_easy_setopt(c, CURLOPT_USERNAME, req->user);
        curl_easy_setopt(c, CURLOPT_PASSWORD, "");
    }
    CURLcode rc = curl_easy_perform(c);
    curl_slist_free_all(hl);
    if (rc != CURLE_OK) {
        fail("%s %s: %s", method, req->path, curl_easy_strerror(rc));
        resp->status = 0;
        return -1;
    }
    curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &resp->status);
    curl_easy_getinfo(c, CURLINFO_NUM_CONNECTS, &resp->num_connects);
    curl_easy_getinfo(c, CURLINFO_TOTAL_TIME, &resp->seconds);
    if (resp->body.data) resp->json = json_loadb(resp->body.data, resp->body.len, 0, NULL);
    return 0;
}

void sup_http_resp_free(sup_http_resp_t *resp)
{
    base_buf_free(&resp->body);
    base_buf_free(&resp->headers);
    if (resp->json) json_decref(resp->json);
    resp->json = NULL;
}

bool sup_http_header(const sup_http_resp_t *resp, const char *name, char *out, size_t outlen)
{
    const char *p = resp->headers.data;
    size_t nl = strlen(name);
    while (p && *p) {
        const char *eol = strstr(p, "\r\n");
        if (!eol) eol = p + strlen(p);
        if ((size_t)(eol - p) > nl && strncasecmp(p, name, nl) == 0 && p[nl] == ':') {
            const char *v = p + nl + 1;
            while (v < eol && (*v == ' ' || *v == '\t'))
                v++;
            size_t n = (size_t)(eol - v);
            if (n + 1 > outlen) n = outlen - 1;
            memcpy(out, v, n);
            out[n] = '\0';
            return true;
        }
        p = *eol ? eol + 2 : eol;
    }
    return false;
}

int sup_http_once(int port, const sup_http_req_t *req, sup_http_resp_t *resp)
{
    sup_http_t *h = sup_http_new(port);
    if (!h) {
        memset(resp, 0, sizeof *resp);
        return -1;
    }
    int rc = sup_http_do(h, req, resp);
    sup_http_free(h);
    return rc;
}

/* ---------- raw TCP ---------- */

int sup_tcp_connect(int port, int timeout_ms)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    if (fd < 0) return -1;
    struct sockaddr_in sa;
    memset(&sa, 0, sizeof sa);
    sa.sin_family = AF_INET;
    sa.sin_port = htons((uint16_t)port);
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (connect(fd, (struct sockaddr *)&sa, sizeof sa) != 0) {
        if (errno != EINPROGRESS) {
            close(fd);
            return -1;
        }
        struct pollfd p = {fd, POLLOUT, 0};
        int err = 0;
        socklen_t el = sizeof err;
        if (poll(&p, 1, timeout_ms) != 1 || getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &el) != 0 ||
            err != 0) {
            close(fd);
            return -1;
        }
    }
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    return fd;
}

int sup_tcp_send(int fd, const void *p, size_t n, int timeout_ms)
{
    int64_t deadline = base_mono_ms() + timeout_ms;
    const char *c = p;
    while (n > 0) {
        ssize_t w = send(fd, c, n, MSG_NOSIGNAL);
        if (w > 0) {
            c += w;
            n -= (size_t)w;
            continue;
        }
        if (w < 0 && errno == EINTR) continue;
        if (w < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            struct pollfd pf = {fd, POLLOUT, 0};
            if (poll(&pf, 1, remaining_ms(deadline)) <= 0) return -1;
            continue;
        }
        return -1;
    }
    return 0;
}

int sup_tcp_read_until_close(int fd, base_buf_t *out, size_t max, int timeout_ms)
{
    int64_t deadline = base_mono_ms() + timeout_ms;
    char tmp[4096];
    while (out->len < max) {
        struct pollfd pf = {fd, POLLIN, 0};
        int r = poll(&pf, 1, remaining_ms(deadline));
        if (r < 0 && errno == EINTR) continue;
        if (r <= 0) return 0;
        ssize_t got = recv(fd, tmp, sizeof tmp, 0);
        if (got < 0 && (errno == EINTR || errno == EAGAIN)) continue;
        if (got <= 0) return 1; /* EOF or reset: closed by the peer */
        if (sup_text_append(out, tmp, (size_t)got) != 0) return 0;
    }
    return 0;
}

int sup_tcp_read_answer(int fd, base_buf_t *out, int timeout_ms)
{
    int64_t deadline = base_mono_ms() + timeout_ms;
    char tmp[4096];
    for (;;) {
        if (out->data) {
            const char *eoh = strstr(out->data, "\r\n\r\n");
            if (eoh) {
                size_t head = (size_t)(eoh + 4 - out->data);
                long clen = 0;
                const char *p = out->data;
                while (p < eoh) {
                    const char *eol = strstr(p, "\r\n");
                    if (strncasecmp(p, "Content-Length:", 15) == 0) clen = atol(p + 15);
                    p = eol + 2;
                }
                if (out->len >= head + (size_t)clen) break;
            }
        }
        struct pollfd pf = {fd, POLLIN, 0};
        int r = poll(&pf, 1, remaining_ms(deadline));
        if (r < 0 && errno == EINTR) continue;
        if (r <= 0) break;
        ssize_t got = recv(fd, tmp, sizeof tmp, 0);
        if (got < 0 && (errno == EINTR || errno == EAGAIN)) continue;
        if (got <= 0) break;
        if (sup_text_append(out, tmp, (size_t)got) != 0) break;
    }
    int status = -1;
    if (out->data && sscanf(out->data, "HTTP/1.%*d %d", &status) != 1) status = -1;
    return status;
}

/* ---------- builders ---------- */

void sup_message_id(char *out, size_t outlen, const char *prefix)
{
    static unsigned long counter;
    snprintf(out, outlen, "%s-%d-%lu", prefix, (int)getpid(), ++counter);
}

json_t *sup_track(const char *message_id, const char *user_id, const char *event, int i)
{
    return json_pack("{s:s, s:s, s:s, s:s, s:{s:i}}", "type", "track", "messageId", message_id,
                     "userId", user_id, "event", event, "properties", "i", i);
}

int sup_parse_iso8601(const char *s, int64_t *ms)
{
    size_t n = s != NULL ? strlen(s) : 0;
    /* The collector's shape exactly (base_iso8601_parse alone accepts more). */
    if (n != BASE_ISO8601_LEN || s[10] != 'T' || s[19] != '.' || s[23] != 'Z') return -1;
    return base_iso8601_parse(s, n, ms) ? 0 : -1;
}

json_t *sup_batch(json_t *events)
{
    char now[32];
    base_iso8601_format(base_wall_ms(), now);
    return json_pack("{s:o, s:s}", "batch", events, "sentAt", now);
}

static int dump_cb(const char *p, size_t n, void *ud)
{
    return sup_text_append(ud, p, n);
}

int sup_json_dump(const json_t *j, base_buf_t *out)
{
    return json_dump_callback(j, dump_cb, out, JSON_COMPACT);
}

static int mp_write(void *ud, const char *p, size_t n)
{
    return sup_text_append(ud, p, n);
}

static int mp_pack(msgpack_packer *pk, const json_t *j, int depth)
{
    if (depth > 10000) return -1;
    switch (json_typeof(j)) {
    case JSON_OBJECT: {
        if (msgpack_pack_map(pk, json_object_size(j)) != 0) return -1;
        const char *k;
        json_t *v;
        json_object_foreach((json_t *)j, k, v)
        {
            size_t kl = strlen(k);
            if (msgpack_pack_str(pk, kl) || msgpack_pack_str_body(pk, k, kl) ||
                mp_pack(pk, v, depth + 1))
                return -1;
        }
        return 0;
    }
    case JSON_ARRAY: {
        if (msgpack_pack_array(pk, json_array_size(j)) != 0) return -1;
        for (size_t i = 0; i < json_array_size(j); i++)
            if (mp_pack(pk, json_array_get(j, i), depth + 1)) return -1;
        return 0;
    }
    case JSON_STRING: {
        size_t n = json_string_length(j);
        return msgpack_pack_str(pk, n) || msgpack_pack_str_body(pk, json_string_value(j), n);
    }
    case JSON_INTEGER:
        return msgpack_pack_int64(pk, json_integer_value(j));
    case JSON_REAL:
        return msgpack_pack_double(pk, json_real_value(j));
    case JSON_TRUE:
        return msgpack_pack_true(pk);
    case JSON_FALSE:
        return msgpack_pack_false(pk);
    case JSON_NULL:
        return msgpack_pack_nil(pk);
    }
    return -1;
}

int sup_msgpack_encode(const json_t *j, base_buf_t *out)
{
    msgpack_packer pk;
    msgpack_packer_init(&pk, out, mp_write);
    return mp_pack(&pk, j, 0) == 0 ? 0 : -1;
}

static json_t *mp_to_json(const msgpack_object *o)
{
    switch (o->type) {
    case MSGPACK_OBJECT_NIL:
        return json_null();
    case MSGPACK_OBJECT_BOOLEAN:
        return json_boolean(o->via.boolean);
    case MSGPACK_OBJECT_POSITIVE_INTEGER:
        return json_integer((json_int_t)o->via.u64);
    case MSGPACK_OBJECT_NEGATIVE_INTEGER:
        return json_integer((json_int_t)o->via.i64);
    case MSGPACK_OBJECT_FLOAT32:
    case MSGPACK_OBJECT_FLOAT64:
        return json_real(o->via.f64);
    case MSGPACK_OBJECT_STR:
        return json_stringn_nocheck(o->via.str.ptr, o->via.str.size);
    case MSGPACK_OBJECT_BIN:
        return json_stringn_nocheck(o->via.bin.ptr, o->via.bin.size);
    case MSGPACK_OBJECT_ARRAY: {
        json_t *a = json_array();
        for (uint32_t i = 0; a && i < o->via.array.size; i++)
            json_array_append_new(a, mp_to_json(&o->via.array.ptr[i]));
        return a;
    }
    case MSGPACK_OBJECT_MAP: {
        json_t *m = json_object();
        for (uint32_t i = 0; m && i < o->via.map.size; i++) {
            const msgpack_object_kv *kv = &o->via.map.ptr[i];
            char key[512];
            if (kv->key.type == MSGPACK_OBJECT_STR) {
                size_t n =
                    kv->key.via.str.size < sizeof key - 1 ? kv->key.via.str.size : sizeof key - 1;
                memcpy(key, kv->key.via.str.ptr, n);
                key[n] = '\0';
            } else {
                snprintf(key, sizeof key, "(non-string key %u)", i);
            }
            json_object_set_new_nocheck(m, key, mp_to_json(&kv->val));
        }
        return m;
    }
    default:
        return json_null();
    }
}

json_t *sup_msgpack_decode(const void *p, size_t n)
{
    msgpack_unpacked u;
    msgpack_unpacked_init(&u);
    size_t off = 0;
    json_t *j = NULL;
    if (msgpack_unpack_next(&u, p, n, &off) == MSGPACK_UNPACK_SUCCESS && off == n)
        j = mp_to_json(&u.data);
    msgpack_unpacked_destroy(&u);
    return j;
}

int sup_zstd(const void *p, size_t n, base_buf_t *out)
{
    size_t bound = ZSTD_compressBound(n);
    char *tmp = malloc(bound);
    if (!tmp) return -1;
    size_t r = ZSTD_compress(tmp, bound, p, n, 3);
    int rc = ZSTD_isError(r) ? -1 : sup_text_append(out, tmp, r);
    free(tmp);
    return rc;
}

static int gzip_stream(const void *p, size_t n, size_t zeros, base_buf_t *out)
{
    z_stream z;
    memset(&z, 0, sizeof z);
    if (deflateInit2(&z, 9, Z_DEFLATED, 15 + 16, 9, Z_DEFAULT_STRATEGY) != Z_OK) return -1;
    static const unsigned char zero_block[65536];
    unsigned char tmp[65536];
    int rc = 0;
    size_t left = p ? n : zeros;
    const unsigned char *src = p;
    for (;;) {
        size_t chunk = left < sizeof zero_block ? left : sizeof zero_block;
        z.next_in = (Bytef *)(p ? src : zero_block);
        z.avail_in = (uInt)chunk;
        int flush = chunk == left ? Z_FINISH : Z_NO_FLUSH;
        int zr;
        do {
            z.next_out = tmp;
            z.avail_out = sizeof tmp;
            zr = deflate(&z, flush);
            if (zr == Z_STREAM_ERROR || sup_text_append(out, tmp, sizeof tmp - z.avail_out) != 0) {
                rc = -1;
                goto done;
            }
        } while (z.avail_out == 0);
        if (p) src += chunk;
        left -= chunk;
        if (flush == Z_FINISH) break;
    }
done:
    deflateEnd(&z);
    return rc;
}

int sup_gzip(const void *p, size_t n, base_buf_t *out)
{
    return gzip_stream(p ? p : "", n, 0, out);
}

int sup_gzip_zeros(size_t zero_bytes, base_buf_t *out)
{
    return gzip_stream(NULL, 0, zero_bytes, out);
}

int sup_zstd_zeros(size_t zero_bytes, base_buf_t *out)
{
    ZSTD_CCtx *cc = ZSTD_createCCtx();
    if (!cc) return -1;
    static const char zero_block[65536];
    char tmp[65536];
    int rc = 0;
    size_t left = zero_bytes;
    for (;;) {
        size_t chunk = left < sizeof zero_block ? left : sizeof zero_block;
        ZSTD_inBuffer in = {zero_block, chunk, 0};
        ZSTD_EndDirective mode = chunk == left ? ZSTD_e_end : ZSTD_e_continue;
        size_t pending;
        do {
            ZSTD_outBuffer o = {tmp, sizeof tmp, 0};
            pending = ZSTD_compressStream2(cc, &o, &in, mode);
            if (ZSTD_isError(pending) || sup_text_append(out, tmp, o.pos) != 0) {
                rc = -1;
                goto done;
            }
        } while (mode == ZSTD_e_end ? pending != 0 : in.pos < in.size);
        left -= chunk;
        if (mode == ZSTD_e_end) break;
    }
done:
    ZSTD_freeCCtx(cc);
    return rc;
}

/* ---------- Kafka consumer ---------- */

static rd_kafka_t *consumer_new(const char *bootstrap)
{
    char err[512];
    rd_kafka_conf_t *conf = rd_kafka_conf_new();
    /* No group: sup_kafka_read uses the simple consumer, which commits nothing. */
    if (rd_kafka_conf_set(conf, "bootstrap.servers", bootstrap, err, sizeof err) ||
        rd_kafka_conf_set(conf, "log_level", "3", err, sizeof err)) {
        fail("consumer conf: %s", err);
        rd_kafka_conf_destroy(conf);
        return NULL;
    }
    rd_kafka_t *rk = rd_kafka_new(RD_KAFKA_CONSUMER, conf, err, sizeof err);
    if (!rk) {
        fail("consumer: %s", err);
        rd_kafka_conf_destroy(conf);
    }
    return rk;
}

int sup_consume(const char *bootstrap, const char *topic, size_t min_count, int timeout_ms,
                sup_kmsgs_t *out)
{
    rd_kafka_t *rk = consumer_new(bootstrap);
    if (!rk) {
        memset(out, 0, sizeof *out);
        return -1;
    }
    int rc = sup_kafka_read(rk, topic, min_count, timeout_ms, out);
    rd_kafka_destroy(rk);
    return rc;
}

json_t *sup_kmsg_value(const sup_kmsg_t *m)
{
    if (m->value_len == 0) return NULL;
    unsigned char c = (unsigned char)m->value[0];
    if ((c >= 0x80 && c <= 0x8f) || c == 0xde || c == 0xdf)
        return sup_msgpack_decode(m->value, m->value_len);
    return json_loadb(m->value, m->value_len, 0, NULL);
}

static const char *value_message_id(const json_t *v)
{
    const char *id = json_string_value(json_object_get(v, "messageId"));
    if (!id) id = json_string_value(json_object_get(json_object_get(v, "raw"), "messageId"));
    return id;
}

long sup_kmsgs_find(const sup_kmsgs_t *m, const char *message_id)
{
    for (size_t i = 0; i < m->n; i++) {
        json_t *v = sup_kmsg_value(&m->msgs[i]);
        const char *id = v ? value_message_id(v) : NULL;
        bool hit = id && strcmp(id, message_id) == 0;
        if (v) json_decref(v);
        if (hit) return (long)i;
    }
    return -1;
}

size_t sup_kmsgs_count_id(const sup_kmsgs_t *m, const char *message_id)
{
    size_t n = 0;
    for (size_t i = 0; i < m->n; i++) {
        json_t *v = sup_kmsg_value(&m->msgs[i]);
        const char *id = v ? value_message_id(v) : NULL;
        if (id && strcmp(id, message_id) == 0) n++;
        if (v) json_decref(v);
    }
    return n;
}
