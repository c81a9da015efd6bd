/*
 * sluice-load — the load and verification harness (SPEC §9).
 * The flags are one table (name, argument, default, doc) from which getopt_long's options and
 * --help are both generated, so the help cannot drift from what is parsed.
 * Exit status: 0 run done (and verified, with --verify); 1 verification failed; 2 usage error;
 * 3 the run itself failed (cannot connect threads, write reports, reach Kafka).
 */
#include "base.h"
#include "client.h"
#include "lt_error.h"
#include "model.h"
#include "proto.h"
#include "report.h"
#include "verify.h"

#include <errno.h>
#include <getopt.h>
#include <netdb.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define FLAGS(X)                                                                                   \
    X(URL, "url", "URL", "",                                                                       \
      "collector base URL: http://HOST:PORT or https://HOST:PORT (path defaults to /v1/batch); "   \
      "repeat it (up to 16, one scheme) to spread the connections round-robin over a fleet")       \
    X(CAFILE, "ca-file", "PATH", "",                                                               \
      "https: PEM file of the CA certificates to trust (e.g. the collector's self-signed "         \
      "certificate); the certificate is always verified, and must name the URL's host (IP "        \
      "SAN for an address); default: the system's store")                                          \
    X(KEY, "write-key", "KEY", "", "write key, sent as the HTTP Basic user name")                  \
    X(RATE, "rate", "N|max", "max",                                                                \
      "events/s over all threads, open loop: batches leave on schedule and latency counts "        \
      "from the scheduled time (coordinated omission corrected); max = each connection sends "     \
      "again as soon as it is answered")                                                           \
    X(DURATION, "duration", "S", "10", "seconds of sending (answers in flight are then awaited)")  \
    X(CONNS, "connections", "C", "16", "keep-alive connections in total, spread over threads")     \
    X(THREADS, "threads", "T", "1", "sending threads, one libuv loop each")                        \
    X(BATCH, "batch", "N", "100", "events per request (POST /v1/batch)")                           \
    X(BODY, "body", "FILE", "",                                                                    \
      "send FILE (a batch in --format, read and checked once) as every request's body instead "    \
      "of the traffic model's batches: a fixed-body benchmark; no --verify")                       \
    X(FORMAT, "format", "msgpack|json", "msgpack", "body format")                                  \
    X(COMPRESS, "compress", "zstd|gzip|none", "",                                                  \
      "body encoding; default zstd for msgpack, gzip for json")                                    \
    X(LEVEL, "level", "N", "1", "zstd / gzip compression level")                                   \
    X(ACCOUNTS, "accounts", "N", "1000", "accounts; sizes follow Zipf (largest has --max-users)")  \
    X(MAXUSERS, "max-users", "N", "200", "users of the largest account")                           \
    X(ZIPF, "zipf", "S", "1.1", "Zipf exponent of account sizes")                                  \
    X(DUP, "dup-rate", "F", "0",                                                                   \
      "fraction of events re-sent with the same messageId, within "                                \
      "and across batches")                                                                        \
    X(INVALID, "invalid-rate", "F", "0",                                                           \
      "fraction of events made invalid, each of one invalid kind of SPEC §2 picked at random "    \
      "(msgpack carries all kinds; JSON all but integer keys and invalid UTF-8)")                  \
    X(SEED, "seed", "N", "1", "seed of the traffic model (same seed, same events)")                \
    X(RUNID, "run-id", "ID", "",                                                                   \
      "tag in every messageId ([A-Za-z0-9_], <= 16); default: random per run")                     \
    X(NOSCRIPT, "no-pql-script", NULL, "", "do not send the accounts scripted to cross PQL tiers") \
    X(TIMEOUT, "timeout-ms", "MS", "10000", "per-request timeout; also the drain deadline")        \
    X(VERIFY, "verify", "BROKERS", "",                                                             \
      "afterwards consume the topics at BROKERS and check every event (exit 1 on mismatch)")       \
    X(VTIMEOUT, "verify-timeout", "S", "60", "deadline for consuming the topics")                  \
    X(VQUIET, "verify-quiet-ms", "MS", "1500",                                                     \
      "stop consuming after the topics' end plus this "                                            \
      "long without a new message")                                                                \
    X(FROMSTART, "verify-from-beginning", NULL, "",                                                \
      "read the topics from their beginning instead of from where they ended when the run "        \
      "started (slower on a busy cluster, and messages the broker already deleted count as "       \
      "pruned)")                                                                                   \
    X(EXPECTPQL, "expect-pql", NULL, "",                                                           \
      "fail unless the scripted accounts are signalled on pql_signals")                            \
    X(TEVENTS, "topic-events", "NAME", "events", "accepted-events topic")                          \
    X(TREJECTED, "topic-rejected", "NAME", "events_rejected", "rejected-events topic")             \
    X(TPQL, "topic-pql", "NAME", "pql_signals", "PQL signal topic")                                \
    X(LEDGERMAX, "ledger-max", "N", "134217728",                                                   \
      "events tracked for --verify (1 byte each, +2 while verifying)")                             \
    X(REPORT, "report", "FILE.json", "", "write the JSON report (SPEC §9 fields, series)")         \
    X(HTML, "html", "FILE.html", "", "write a self-contained HTML report with charts")             \
    X(QUIET, "quiet", NULL, "", "no progress line")                                                \
    X(HELP, "help", NULL, "", "this text")

enum {
#define F_ENUM(id, name, arg, def, doc) F_##id,
    FLAGS(F_ENUM)
#undef F_ENUM
        F_COUNT
};

typedef struct {
    const char *name, *arg, *def, *doc;
} flag_t;

static const flag_t flags[F_COUNT] = {
#define F_TAB(id, name, arg, def, doc) {name, arg, def, doc},
    FLAGS(F_TAB)
#undef F_TAB
};

static const char *val[F_COUNT];
static bool set[F_COUNT];
static const char *urls[CLIENT_MAX_URLS + 1]; /* every --url in order (val[F_URL]: the last) */
static size_t n_urls;

static void usage(FILE *out)
{
    fprintf(out, "usage: sluice-load --url http[s]://HOST:PORT --write-key KEY [options]\n\n"
                 "Sends realistic batched events to a sluice collector, measures throughput "
                 "and latency,\nand with --verify checks in Kafka that nothing was lost or "
                 "duplicated.\n\n");
    for (int i = 0; i < F_COUNT; i++) {
        char head[64];
        snprintf(head, sizeof(head), "--%s%s%s", flags[i].name, flags[i].arg ? " " : "",
                 flags[i].arg ? flags[i].arg : "");
        char doc[512];
        snprintf(doc, sizeof(doc), "%s%s%s%s", flags[i].doc, flags[i].def[0] ? " [" : "",
                 flags[i].def, flags[i].def[0] ? "]" : "");
        fprintf(out, "  %-28s", head);
        /* word-wrap the doc at 100 columns, continuation lines under the doc column */
        const char *p = doc;
        int col = 31;
        while (*p) {
            const char *sp = strchr(p, ' ');
            int wl = sp ? (int)(sp - p) : (int)strlen(p);
            if (col + 1 + wl > 100 && col > 31) {
                fprintf(out, "\n%30s", "");
                col = 31;
            }
            fprintf(out, " %.*s", wl, p);
            col += 1 + wl;
            p += wl;
            while (*p == ' ')
                p++;
        }
        fprintf(out, "\n");
    }
    fprintf(out, "\nExit status: 0 done (and verified), 1 verification failed, 2 usage error, "
                 "3 run failed.\nSee loadtest/README.md for sizing a fleet.\n");
}

static const char *ordinal(size_t i)
{
    static const char *const o[] = {"first", "second", "third"};
    static char buf[16];
    if (i < 3) return o[i];
    snprintf(buf, sizeof(buf), "%zuth", i + 1);
    return buf;
}

static int bad(const char *what, const char *v)
{
    fprintf(stderr, "sluice-load: bad %s: %s (see --help)\n", what, v ? v : "(missing)");
    return 2;
}

static bool parse_double(const char *s, double lo, double hi, double *out)
{
    char *end;
    double d = strtod(s, &end);
    if (end == s || *end || !(d >= lo && d <= hi)) return false;
    *out = d;
    return true;
}

static bool parse_u64(const char *s, uint64_t lo, uint64_t hi, uint64_t *out)
{
    char *end;
    if (*s == '-') return false;
    unsigned long long v = strtoull(s, &end, 10);
    if (end == s || *end || v < lo || v > hi) return false;
    *out = v;
    return true;
}

/* http[s]://HOST:PORT[/path] -> numeric host (resolved here, never on a loop thread); *tls says
 * whether it is https, which also sets cfg->tls_name (HOST without brackets, what the
 * certificate must name). */
static int parse_url(const char *url, client_target_t *cfg, bool *tls)
{
    size_t skip;
    if (strncmp(url, "http://", 7) == 0)
        skip = 7;
    else if (strncmp(url, "https://", 8) == 0)
        skip = 8;
    else
        return -1;
    *tls = skip == 8;
    const char *h = url + skip, *slash = strchr(h, '/');
    size_t hl = slash ? (size_t)(slash - h) : strlen(h);
    if (hl == 0 || hl >= sizeof(cfg->host_header)) return -1;
    memcpy(cfg->host_header, h, hl);
    cfg->host_header[hl] = 0;
    snprintf(cfg->path, sizeof(cfg->path), "%s", slash && slash[1] ? slash : "/v1/batch");
    char host[300];
    snprintf(host, sizeof(host), "%s", cfg->host_header);
    char *port = NULL;
    if (host[0] == '[') {
        char *rb = strchr(host, ']');
        if (!rb) return -1;
        *rb = 0;
        memmove(host, host + 1, strlen(host + 1) + 1);
        port = rb[1] == ':' ? rb + 1 : NULL;
        if (port) port = strchr(host + strlen(host) + 1, ':');
    } else {
        port = strrchr(host, ':');
        if (port) *port = 0;
    }
    if (*tls) {
        size_t nl = strlen(host);
        if (nl == 0 || nl >= sizeof(cfg->tls_name)) return -1;
        memcpy(cfg->tls_name, host, nl + 1);
    }
    cfg->port = *tls ? 443 : 80;
    if (port) {
        uint64_t p;
        if (!parse_u64(port + 1, 1, 65535, &p)) return -1;
        cfg->port = (int)p;
    }
    struct addrinfo hints = {0}, *ai = NULL;
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_flags = AI_NUMERICSERV;
    if (getaddrinfo(host, "80", &hints, &ai) != 0 || !ai) return -1;
    int rc = getnameinfo(ai->ai_addr, ai->ai_addrlen, cfg->host, sizeof(cfg->host), NULL, 0,
                         NI_NUMERICHOST);
    freeaddrinfo(ai);
    return rc == 0 ? 0 : -1;
}

/* --body FILE: the file's bytes, which must be a readable batch of fmt (checked with the
 * collector's own decoder, so a typo fails here and not as 400s); *events = its events.
 * Returns 0, or 2 (usage error: the message is printed). */
static int read_fixed_body(const char *path, enc_format_t fmt, char **out, size_t *len,
                           uint32_t *events)
{
    FILE *f = fopen(path, "rb");
    if (f == NULL) {
        fprintf(stderr, "sluice-load: --body %s: %s\n", path, strerror(errno));
        return 2;
    }
    char *buf = malloc(MODEL_BODY_MAX);
    size_t n = buf != NULL ? fread(buf, 1, MODEL_BODY_MAX, f) : 0;
    bool too_big = buf != NULL && n == MODEL_BODY_MAX && fgetc(f) != EOF;
    int read_err = ferror(f);
    fclose(f);
    if (buf == NULL || read_err || too_big || n == 0) {
        fprintf(stderr, "sluice-load: --body %s: %s\n", path,
                buf == NULL ? "out of memory"
                : too_big   ? "larger than 8 MiB"
                : n == 0    ? "empty"
                            : "read error");
        free(buf);
        return 2;
    }
    proto_limits_t lim = proto_limits_default();
    lim.body_bytes = MODEL_BODY_MAX;
    /* A JSON file sent as msgpack is converted once (the same batch, msgpack-encoded), so one
     * body file serves both formats. */
    bool convert = fmt == ENC_MSGPACK && (buf[0] == '{' || buf[0] == ' ' || buf[0] == '\n');
    proto_batch_t b;
    int rc =
        proto_decode(&b, buf, n, fmt == ENC_JSON || convert ? PROTO_FMT_JSON : PROTO_FMT_MSGPACK,
                     PROTO_T_NONE, &lim);
    size_t ne = b.n_events;
    if (rc == PROTO_OK && convert) {
        msgpack_sbuffer sb;
        msgpack_sbuffer_init(&sb);
        msgpack_packer pk;
        msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
        if (msgpack_pack_object(&pk, b.root) != 0 || sb.size > MODEL_BODY_MAX) {
            rc = PROTO_E_NOMEM;
        } else {
            memcpy(buf, sb.data, sb.size);
            n = sb.size;
        }
        msgpack_sbuffer_destroy(&sb);
    }
    proto_batch_free(&b);
    if (rc != PROTO_OK || ne == 0) {
        fprintf(stderr,
                "sluice-load: --body %s: not a readable batch of events for --format %s (%s)\n",
                path, fmt == ENC_JSON ? "json" : "msgpack",
                rc != PROTO_OK ? proto_err_code(rc) : "no events");
        free(buf);
        return 2;
    }
    *out = buf;
    *len = n;
    *events = (uint32_t)ne;
    return 0;
}

static void on_sigint(int sig)
{
    client_request_stop();
}

typedef struct {
    bool quiet;
    uint32_t batch;
} progress_t;

static void progress_cb(const client_second_t *s, const client_result_t *tot, void *ud)
{
    const progress_t *p = ud;
    if (p->quiet) return;
    fprintf(stderr, "[%5.1fs] sent %7llu ev/s | ok %7llu ev/s | %5llu answers/s |", s->t,
            (unsigned long long)s->events_sent, (unsigned long long)s->events_ok,
            (unsigned long long)s->responses);
    int shown = 0;
    for (int c = 0; c < CLIENT_ST_SLOTS && shown < 6; c++)
        if (tot->status[c]) {
            if (c == CLIENT_ST_CONN_ERROR || c == CLIENT_ST_TIMEOUT)
                fprintf(stderr, " %s:%llu", c == CLIENT_ST_TIMEOUT ? "timeout" : "conn_err",
                        (unsigned long long)tot->status[c]);
            else
                fprintf(stderr, " %d:%llu", c, (unsigned long long)tot->status[c]);
            shown++;
        }
    fprintf(stderr, " | p99 %.2f ms\n", (double)s->p99_us / 1000.0);
}

int main(int argc, char **argv)
{
    struct option opts[F_COUNT + 1];
    for (int i = 0; i < F_COUNT; i++) {
        opts[i] = (struct option){flags[i].name, flags[i].arg ? required_argument : no_argument,
                                  NULL, 1000 + i};
        val[i] = flags[i].def;
    }
    opts[F_COUNT] = (struct option){0, 0, 0, 0};
    int c;
    while ((c = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
        if (c == 'h') {
            usage(stdout);
            return 0;
        }
        if (c < 1000 || c >= 1000 + F_COUNT) {
            usage(stderr);
            return 2;
        }
        val[c - 1000] = optarg ? optarg : "1";
        set[c - 1000] = true;
        if (c - 1000 == F_URL) {
            if (n_urls == CLIENT_MAX_URLS) {
                fprintf(stderr, "sluice-load: bad --url: more than %d given (see --help)\n",
                        CLIENT_MAX_URLS);
                return 2;
            }
            urls[n_urls++] = optarg;
        }
    }
    if (set[F_HELP]) {
        usage(stdout);
        return 0;
    }
    if (optind < argc) return bad("argument", argv[optind]);

    client_config_t cc = {0};
    model_config_t mc;
    model_config_default(&mc);
    if (n_urls == 0) return bad("--url", NULL);
    char url_list[CLIENT_MAX_URLS * 64]; /* "A,B": the report's config.url and the summary */
    url_list[0] = 0;
    for (size_t i = 0; i < n_urls; i++) {
        bool tls = false;
        if (!urls[i][0] || parse_url(urls[i], &cc.targets[i], &tls) != 0) {
            if (n_urls == 1) return bad("--url", urls[i]);
            fprintf(stderr, "sluice-load: bad --url (the %s of %zu): %s (see --help)\n", ordinal(i),
                    n_urls, urls[i]);
            return 2;
        }
        if (i == 0) cc.tls = tls;
        if (tls != cc.tls) {
            fprintf(stderr,
                    "sluice-load: bad --url (the %s of %zu): %s: every --url must use the "
                    "first one's scheme (%s://); mixing http and https is not supported\n",
                    ordinal(i), n_urls, urls[i], cc.tls ? "https" : "http");
            return 2;
        }
        for (size_t j = 0; j < i; j++)
            if (strcmp(urls[j], urls[i]) == 0) {
                fprintf(stderr, "sluice-load: bad --url: %s given twice\n", urls[i]);
                return 2;
            }
        size_t used = strlen(url_list);
        snprintf(url_list + used, sizeof(url_list) - used, "%s%s", i ? "," : "", urls[i]);
    }
    cc.n_targets = (uint32_t)n_urls;
    if (val[F_CAFILE][0]) {
        if (!cc.tls) return bad("--ca-file (needs https:// --url values)", val[F_CAFILE]);
        cc.ca_file = val[F_CAFILE];
    }
    if (cc.tls) {
        char err[300];
        if (client_tls_check(&cc, err, sizeof(err)) != 0) {
            fprintf(stderr, "sluice-load: %s\n", err);
            return 2;
        }
    }
    if (!val[F_KEY][0]) return bad("--write-key", NULL);
    cc.write_key = val[F_KEY];
    uint64_t u;
    double d;
    if (strcmp(val[F_RATE], "max") == 0)
        cc.rate = 0;
    else if (parse_double(val[F_RATE], 1, 1e9, &d))
        cc.rate = d;
    else
        return bad("--rate", val[F_RATE]);
    if (!parse_double(val[F_DURATION], 0.1, CLIENT_MAX_SECONDS, &cc.duration_s))
        return bad("--duration", val[F_DURATION]);
    if (!parse_u64(val[F_THREADS], 1, CLIENT_MAX_THREADS, &u))
        return bad("--threads", val[F_THREADS]);
    cc.threads = (uint32_t)u;
    uint64_t min_conns = cc.threads > cc.n_targets ? cc.threads : cc.n_targets;
    if (!parse_u64(val[F_CONNS], min_conns, CLIENT_MAX_CONNECTIONS, &u))
        return bad("--connections (at least --threads and the number of --url)", val[F_CONNS]);
    cc.connections = (uint32_t)u;
    if (!parse_u64(val[F_BATCH], 1, MODEL_MAX_BATCH, &u)) return bad("--batch", val[F_BATCH]);
    mc.batch = (uint32_t)u;
    if (strcmp(val[F_FORMAT], "msgpack") == 0)
        mc.format = ENC_MSGPACK;
    else if (strcmp(val[F_FORMAT], "json") == 0)
        mc.format = ENC_JSON;
    else
        return bad("--format", val[F_FORMAT]);
    const char *comp =
        val[F_COMPRESS][0] ? val[F_COMPRESS] : (mc.format == ENC_JSON ? "gzip" : "zstd");
    if (strcmp(comp, "zstd") == 0)
        cc.compress = CLIENT_COMPRESS_ZSTD;
    else if (strcmp(comp, "gzip") == 0)
        cc.compress = CLIENT_COMPRESS_GZIP;
    else if (strcmp(comp, "none") == 0)
        cc.compress = CLIENT_COMPRESS_NONE;
    else
        return bad("--compress", comp);
    if (!parse_u64(val[F_LEVEL], 1, cc.compress == CLIENT_COMPRESS_GZIP ? 9 : 19, &u))
        return bad("--level", val[F_LEVEL]);
    cc.level = (int)u;
    if (!parse_u64(val[F_ACCOUNTS], 1, MODEL_MAX_ACCOUNTS, &u))
        return bad("--accounts", val[F_ACCOUNTS]);
    mc.accounts = (uint32_t)u;
    if (!parse_u64(val[F_MAXUSERS], 1, 10000000, &u)) return bad("--max-users", val[F_MAXUSERS]);
    mc.max_users = (uint32_t)u;
    if (!parse_double(val[F_ZIPF], 0.01, 4, &mc.zipf_s)) return bad("--zipf", val[F_ZIPF]);
    if (!parse_double(val[F_DUP], 0, 1, &mc.dup_rate)) return bad("--dup-rate", val[F_DUP]);
    if (!parse_double(val[F_INVALID], 0, 1, &mc.invalid_rate))
        return bad("--invalid-rate", val[F_INVALID]);
    if (!parse_u64(val[F_SEED], 0, UINT64_MAX, &mc.seed)) return bad("--seed", val[F_SEED]);
    if (val[F_RUNID][0]) {
        if (strlen(val[F_RUNID]) > MODEL_RUN_ID_MAX) return bad("--run-id", val[F_RUNID]);
        snprintf(mc.run_id, sizeof(mc.run_id), "%s", val[F_RUNID]);
    } else {
        uint64_t t = (uint64_t)base_wall_ms() * 1000003u ^ base_mono_ns();
        unsigned x = (unsigned)(t ^ (t >> 32) ^ ((uint64_t)getpid() << 20));
        snprintf(mc.run_id, sizeof(mc.run_id), "r%08x", x);
    }
    mc.scripted = !set[F_NOSCRIPT];
    if (!parse_u64(val[F_TIMEOUT], 1, 3600000, &u)) return bad("--timeout-ms", val[F_TIMEOUT]);
    cc.timeout_ms = (uint32_t)u;
    uint64_t ledger_max;
    if (!parse_u64(val[F_LEDGERMAX], 1, UINT64_C(1) << 36, &ledger_max))
        return bad("--ledger-max", val[F_LEDGERMAX]);
    uint64_t vtimeout, vquiet;
    if (!parse_u64(val[F_VTIMEOUT], 1, 86400, &vtimeout))
        return bad("--verify-timeout", val[F_VTIMEOUT]);
    if (!parse_u64(val[F_VQUIET], 0, 600000, &vquiet))
        return bad("--verify-quiet-ms", val[F_VQUIET]);
    bool verify = val[F_VERIFY][0] != 0;
    /* A re-send may go to another collector, whose own dedup has not seen the first copy: on
     * `events` it is then there twice (SPEC §10: exact dedup across collectors is
     * sluice-stream's, on events_deduped). */
    if (verify && cc.n_targets > 1 && mc.dup_rate > 0 && strcmp(val[F_TEVENTS], "events") == 0)
        fprintf(stderr,
                "sluice-load: note: --dup-rate with several --url: a re-send taken by another "
                "collector is on `events` twice and --verify counts it as duplicated; verify "
                "against sluice-stream's output instead (--topic-events events_deduped)\n");
    cc.ledger_max = verify ? ledger_max : 0;
    char *fixed = NULL;
    if (val[F_BODY][0]) {
        if (verify) return bad("--body (a fixed body cannot be verified; drop --verify)", NULL);
        int frc = read_fixed_body(val[F_BODY], mc.format, &fixed, &cc.fixed_len, &cc.fixed_events);
        if (frc != 0) return frc;
        cc.fixed_body = fixed;
    }
    mc.base_ms = base_wall_ms();
    char started[32];
    base_iso8601_format(mc.base_ms, started);

    model_t *model = NULL;
    int rc = model_new(&mc, &model);
    if (rc != 0) {
        fprintf(stderr, "sluice-load: traffic model: %s\n", lt_strerror(rc));
        return 2;
    }
    cc.model = model;
    signal(SIGINT, on_sigint);
    signal(SIGTERM, on_sigint);
    signal(SIGPIPE, SIG_IGN);
    progress_t prog = {set[F_QUIET], mc.batch};
    if (!prog.quiet)
        fprintf(stderr,
                "sluice-load: %s, run %s, %s+%s, batch %u, %u connections, %u threads, "
                "rate %s, %.0f s\n",
                url_list, mc.run_id, val[F_FORMAT], comp, mc.batch, cc.connections, cc.threads,
                val[F_RATE], cc.duration_s);
    verify_config_t vc = {
        .brokers = val[F_VERIFY],
        .topic_events = val[F_TEVENTS],
        .topic_rejected = val[F_TREJECTED],
        .topic_pql = val[F_TPQL],
        .timeout_ms = (uint32_t)(vtimeout * 1000),
        .quiet_ms = (uint32_t)vquiet,
        .expect_pql = set[F_EXPECTPQL],
        .model = model,
    };
    verify_start_t *vstart = NULL;
    if (verify && !set[F_FROMSTART]) {
        vstart = calloc(1, sizeof(*vstart));
        if (!vstart || verify_prepare(&vc, vstart) != 0) {
            fprintf(stderr, "sluice-load: cannot read the topics' offsets at %s\n", vc.brokers);
            free(vstart);
            model_free(model);
            return 3;
        }
        vc.start = vstart;
    }
    client_result_t res;
    rc = client_run(&cc, &res, progress_cb, &prog);
    if (rc != 0) {
        fprintf(stderr, "sluice-load: run failed: %s\n", lt_strerror(rc));
        client_result_free(&res);
        model_free(model);
        free(vstart);
        free(fixed);
        return rc == LT_E_INVAL ? 2 : 3;
    }
    verify_result_t vr;
    int exit_code = 0;
    if (verify) {
        vc.ledgers = res.ledgers;
        vc.ledger_len = res.ledger_len;
        vc.n_ledgers = res.n_ledgers;
        vc.ledger_overflow = res.ledger_overflow;
        if (!prog.quiet) fprintf(stderr, "sluice-load: verifying against %s ...\n", vc.brokers);
        rc = verify_run(&vc, &vr);
        if (rc != 0) {
            fprintf(stderr, "sluice-load: verify failed to run: %s (%s)\n", lt_strerror(rc),
                    vr.first_problem);
            exit_code = 3;
        } else if (!vr.ok) {
            exit_code = 1;
        }
    }
    report_input_t in = {.url = url_list,
                         .urls = urls,
                         .format = val[F_FORMAT],
                         .compress = comp,
                         .started_at = started,
                         .cfg = &cc,
                         .model = &mc,
                         .res = &res,
                         .ver = verify && rc == 0 ? &vr : NULL};
    report_print_summary(&in, stdout);
    if (res.tls_handshake_failures)
        fprintf(stderr, "sluice-load: %llu TLS handshake failures with %s (first: %s)\n",
                (unsigned long long)res.tls_handshake_failures, url_list, res.tls_error);
    if (res.responses == 0) {
        fprintf(stderr, "sluice-load: no request was answered (%llu connection errors)\n",
                (unsigned long long)res.conn_errors);
        exit_code = exit_code ? exit_code : 3;
    }
    if (val[F_REPORT][0] && report_write_json(&in, val[F_REPORT]) != 0) {
        fprintf(stderr, "sluice-load: cannot write %s\n", val[F_REPORT]);
        exit_code = exit_code ? exit_code : 3;
    }
    if (val[F_HTML][0] && report_write_html(&in, val[F_HTML]) != 0) {
        fprintf(stderr, "sluice-load: cannot write %s\n", val[F_HTML]);
        exit_code = exit_code ? exit_code : 3;
    }
    client_result_free(&res);
    model_free(model);
    free(fixed);
    free(vstart);
    return exit_code;
}
