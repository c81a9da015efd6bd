/* model.c — deterministic traffic model; see model.h for what a run sends and why. */
#include "model.h"

#include "base.h"
#include "lt_error.h"

#include <writer.h>

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define DAY_MS 86400000LL

/* ---- kinds ---- */

static const int kind_errs[MODEL_KIND_COUNT] = {0,
#define MODEL_X_ERR(name, err, mp_only, desc) err,
                                                MODEL_KINDS(MODEL_X_ERR)
#undef MODEL_X_ERR
};
static const bool kind_mp_only[MODEL_KIND_COUNT] = {false,
#define MODEL_X_MP(name, err, mp_only, desc) mp_only,
                                                    MODEL_KINDS(MODEL_X_MP)
#undef MODEL_X_MP
};

/* Error value -> code string, from proto.h's table (header only: no link dependency). */
static const char *proto_code_of(int err)
{
    switch (err) {
#define MODEL_X_CODE(name, val, code, msg)                                                         \
    case val:                                                                                      \
        return code;
        PROTO_ERRORS(MODEL_X_CODE)
#undef MODEL_X_CODE
    }
    return NULL;
}

const char *model_kind_name(int kind)
{
    if (kind == MODEL_VALID) return "valid";
    const char *code = model_kind_code(kind);
    return code ? code : "unknown";
}

const char *model_kind_code(int kind)
{
    if (kind <= 0 || kind >= MODEL_KIND_COUNT) return NULL;
    return proto_code_of(kind_errs[kind]);
}

/* ---- randomness: splitmix64, a pure function of its input ---- */

static uint64_t mix64(uint64_t x)
{
    x += 0x9e3779b97f4a7c15ULL;
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
    return x ^ (x >> 31);
}

static uint64_t next64(uint64_t *state)
{
    *state += 0x9e3779b97f4a7c15ULL;
    uint64_t x = *state;
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
    return x ^ (x >> 31);
}

static double unit(uint64_t x)
{
    return (double)(x >> 11) * (1.0 / 9007199254740992.0);
}

static uint64_t below(uint64_t *st, uint64_t n)
{
    return n ? next64(st) % n : 0;
}

/* ---- vocabulary ---- */

typedef struct {
    const char *name;
    unsigned weight;
} vocab_t;

static const vocab_t track_vocab[] = {
    {"Dashboard Viewed", 220},
    {"Report Created", 80},
    {"Report Exported", 30},
    {"Project Created", 40},
    {"File Uploaded", 60},
    {"Search Performed", 120},
    {"Comment Added", 70},
    {"Invite Sent", 25},
    {"Invite Accepted", 15},
    {"Member Invited", 10},
    {"Integration Connected", 8},
    {"Settings Updated", 20},
    {"API Key Created", 5},
    {"Onboarding Step Completed", 30},
    {"Feature Flag Evaluated", 50},
    {"Heartbeat", 150},
    {"Login", 40},
    {"Logout", 20},
    {"Pricing Page Viewed", 6},
    {"Checkout Started", 3},
    {"Plan Upgraded", 1},
    {"Terms Viewed", 2},
    {"Privacy Policy Viewed", 2},
};
#define TRACK_VOCAB_N (sizeof(track_vocab) / sizeof(track_vocab[0]))

static const char *const page_names[] = {"Home",      "Docs",     "Pricing", "Blog",
                                         "Changelog", "Settings", "Billing", "Terms"};
static const char *const screen_names[] = {"Inbox", "Project", "Profile", "Search", "Settings"};
static const char *const plans[] = {"free", "pro", "team", "enterprise"};
static const char *const paths[] = {"/app",        "/app/reports", "/app/projects", "/app/settings",
                                    "/app/search", "/pricing",     "/docs/start"};
#define NELEM(a) (sizeof(a) / sizeof((a)[0]))

/* ---- the PQL script (stream 0, seqs 0..script_len-1) ---- */

typedef struct {
    uint8_t account; /* 0 hot, 1 warm, 2 watching */
    uint8_t group;   /* a group call (else track) */
    uint8_t user;
    uint8_t day; /* days before base_ms */
    const char *event;
} script_step_t;

#define SCRIPT_MAX 64
static const char *const script_tiers[3] = {"hot", "warm", "watching"};

/*
 * hot: 8 users (team_of_seven 40), activity on 5 days (regular_use 20), Pricing (10), Terms (15)
 * = 85; warm: 7 users (40) + Pricing (10) = 50 (users_velocity may add 20: still warm);
 * watching: 2 users over 5 days (20) + Pricing (10) = 30, below every velocity minimum.
 */
static size_t build_script(script_step_t *s)
{
    size_t n = 0;
    for (uint8_t u = 0; u < 8; u++)
        s[n++] = (script_step_t){0, 1, u, 0, NULL};
    for (uint8_t u = 0; u < 8; u++)
        s[n++] = (script_step_t){0, 0, u, 0, "Dashboard Viewed"};
    for (uint8_t d = 1; d < 5; d++)
        s[n++] = (script_step_t){0, 0, 0, d, "Report Created"};
    s[n++] = (script_step_t){0, 0, 1, 0, "Pricing Page Viewed"};
    s[n++] = (script_step_t){0, 0, 2, 0, "Terms Viewed"};
    for (uint8_t u = 0; u < 7; u++)
        s[n++] = (script_step_t){1, 1, u, 0, NULL};
    for (uint8_t u = 0; u < 7; u++)
        s[n++] = (script_step_t){1, 0, u, 0, "Dashboard Viewed"};
    s[n++] = (script_step_t){1, 0, 0, 0, "Pricing Page Viewed"};
    for (uint8_t u = 0; u < 2; u++)
        s[n++] = (script_step_t){2, 1, u, 0, NULL};
    for (uint8_t d = 0; d < 5; d++)
        s[n++] = (script_step_t){2, 0, (uint8_t)(d & 1), d, "Dashboard Viewed"};
    s[n++] = (script_step_t){2, 0, 0, 0, "Pricing Page Viewed"};
    return n;
}

/* ---- model ---- */

struct model {
    model_config_t cfg;
    double *cdf; /* cumulative traffic share of accounts 1..N, cdf[N-1] == 1 */
    uint32_t *users;
    uint64_t track_total;
    uint8_t allowed[MODEL_KIND_COUNT]; /* invalid kinds this format can carry */
    size_t n_allowed;
    script_step_t script[SCRIPT_MAX];
    size_t script_len;
    char scripted_ids[3][48];
};

void model_config_default(model_config_t *cfg)
{
    memset(cfg, 0, sizeof(*cfg));
    cfg->seed = 1;
    strcpy(cfg->run_id, "run");
    cfg->format = ENC_MSGPACK;
    cfg->batch = 100;
    cfg->accounts = 1000;
    cfg->max_users = 200;
    cfg->zipf_s = 1.1;
    cfg->scripted = true;
}

static bool run_id_ok(const char *s)
{
    size_t n = strnlen(s, MODEL_RUN_ID_MAX + 1);
    if (n == 0 || n > MODEL_RUN_ID_MAX) return false;
    for (size_t i = 0; i < n; i++) {
        char c = s[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '_'))
            return false;
    }
    return true;
}

int model_new(const model_config_t *cfg, model_t **out)
{
    if (!cfg || cfg->batch < 1 || cfg->batch > MODEL_MAX_BATCH || cfg->accounts < 1 ||
        cfg->accounts > MODEL_MAX_ACCOUNTS || cfg->max_users < 1 || !(cfg->zipf_s > 0) ||
        cfg->zipf_s > 4 || !(cfg->dup_rate >= 0 && cfg->dup_rate <= 1) ||
        !(cfg->invalid_rate >= 0 && cfg->invalid_rate <= 1) || !run_id_ok(cfg->run_id) ||
        (cfg->format != ENC_MSGPACK && cfg->format != ENC_JSON))
        return LT_E_INVAL;
    model_t *m = calloc(1, sizeof(*m));
    if (!m) return LT_E_NOMEM;
    m->cfg = *cfg;
    m->cdf = malloc(sizeof(double) * cfg->accounts);
    m->users = malloc(sizeof(uint32_t) * cfg->accounts);
    if (!m->cdf || !m->users) {
        model_free(m);
        return LT_E_NOMEM;
    }
    double total = 0;
    for (uint32_t r = 0; r < cfg->accounts; r++) {
        double u = floor((double)cfg->max_users / pow((double)(r + 1), cfg->zipf_s));
        m->users[r] = u < 1 ? 1 : (uint32_t)u;
        total += m->users[r];
        m->cdf[r] = total;
    }
    for (uint32_t r = 0; r < cfg->accounts; r++)
        m->cdf[r] /= total;
    m->cdf[cfg->accounts - 1] = 1.0;
    for (size_t i = 0; i < TRACK_VOCAB_N; i++)
        m->track_total += track_vocab[i].weight;
    for (int k = 1; k < MODEL_KIND_COUNT; k++)
        if (cfg->format == ENC_MSGPACK || !kind_mp_only[k]) m->allowed[m->n_allowed++] = (uint8_t)k;
    if (cfg->scripted) {
        m->script_len = build_script(m->script);
        for (int i = 0; i < 3; i++)
            snprintf(m->scripted_ids[i], sizeof(m->scripted_ids[i]), "pql-%s-%s", script_tiers[i],
                     cfg->run_id);
    }
    *out = m;
    return 0;
}

void model_free(model_t *m)
{
    if (!m) return;
    free(m->cdf);
    free(m->users);
    free(m);
}

const model_config_t *model_config(const model_t *m)
{
    return &m->cfg;
}

size_t model_scripted_count(const model_t *m)
{
    return m->cfg.scripted ? 3 : 0;
}

void model_scripted(const model_t *m, size_t i, const char **account_id, const char **tier)
{
    *account_id = m->scripted_ids[i];
    *tier = script_tiers[i];
}

bool model_parse_message_id(const model_t *m, const char *id, size_t len, uint32_t *stream,
                            uint64_t *seq)
{
    size_t rl = strlen(m->cfg.run_id);
    if (len < rl + 4 || memcmp(id, m->cfg.run_id, rl) != 0 || id[rl] != '-') return false;
    size_t i = rl + 1;
    uint64_t st = 0, sq = 0;
    size_t d = 0;
    for (; i < len && id[i] >= '0' && id[i] <= '9' && d < 10; i++, d++)
        st = st * 10 + (uint64_t)(id[i] - '0');
    if (d == 0 || i >= len || id[i] != '-' || st > UINT32_MAX) return false;
    i++;
    d = 0;
    for (; i < len && id[i] >= '0' && id[i] <= '9' && d < 19; i++, d++)
        sq = sq * 10 + (uint64_t)(id[i] - '0');
    if (d == 0 || (i < len && id[i] != '-')) return false;
    *stream = (uint32_t)st;
    *seq = sq;
    return true;
}

/* ---- one event ---- */

typedef enum { P_NONE, P_TRACK, P_PAGE, P_STRING, P_DEEP, P_UTF8, P_LARGE, P_INTKEY } props_t;
typedef enum { T_NONE, T_USER, T_GROUP, T_ARRAY } traits_t;
typedef enum { C_NORMAL, C_INT, C_LDID } ctx_t;

/* Every field of an event the writer may emit; NULL / 0 means absent. */
typedef struct {
    const char *type;
    const char *message_id;
    size_t message_id_len;
    bool message_id_number; /* messageId sent as the number 12345 instead (invalid) */
    const char *user_id;
    size_t user_id_len;
    const char *anonymous_id;
    const char *event;
    size_t event_len;
    const char *name;
    const char *group_id;
    const char *previous_id;
    const char *bad_timestamp; /* a string that is not a timestamp */
    int64_t timestamp_ms;
    bool bad_sent_at;
    props_t props;
    traits_t traits;
    ctx_t ctx;
    const char *ctx_group; /* context.groupId */
    uint64_t r;            /* randomness for property values */
} ev_t;

struct model_stream {
    const model_t *m;
    uint32_t id;
    uint64_t next_seq;
    uint64_t rng;
    enc_t enc;
    enc_t sub; /* scratch: properties/traits/context of one event for writer_event() */
    model_item_t *items;
    model_item_t ring[MODEL_DUP_RING];
    size_t ring_n, ring_pos;
    char big[34000]; /* scratch for oversized strings, filled once */
};

/* The value of "properties" (the caller writes the key when ev->props != P_NONE). */
static void write_props_value(enc_t *e, const ev_t *ev, const char *blob)
{
    uint64_t r = ev->r;
    switch (ev->props) {
    case P_NONE:
        return;
    case P_TRACK:
        enc_map(e, 5);
        enc_key(e, "plan");
        enc_str(e, plans[below(&r, NELEM(plans))]);
        enc_key(e, "path");
        enc_str(e, paths[below(&r, NELEM(paths))]);
        enc_key(e, "value");
        enc_int(e, (int64_t)below(&r, 10000));
        enc_key(e, "duration_ms");
        enc_double(e, (double)below(&r, 100000) / 7.0);
        enc_key(e, "first_time");
        enc_bool(e, below(&r, 10) == 0);
        enc_end(e, true);
        return;
    case P_PAGE:
        enc_map(e, 3);
        enc_key(e, "path");
        enc_str(e, paths[below(&r, NELEM(paths))]);
        enc_key(e, "referrer");
        enc_str(e, below(&r, 2) ? "https://www.google.com/" : "");
        enc_key(e, "title");
        enc_str(e, ev->name ? ev->name : "Page");
        enc_end(e, true);
        return;
    case P_STRING:
        enc_str(e, "not a map");
        return;
    case P_DEEP:
        for (int d = 0; d < 20; d++) {
            enc_map(e, 1);
            enc_key(e, "nested");
        }
        enc_int(e, 1);
        for (int d = 0; d < 20; d++)
            enc_end(e, true);
        return;
    case P_UTF8:
        enc_map(e, 1);
        enc_key(e, "name");
        enc_strn(e, "caf\xc3\x28", 5);
        enc_end(e, true);
        return;
    case P_LARGE:
        enc_map(e, 1);
        enc_key(e, "blob");
        enc_strn(e, blob, 33000);
        enc_end(e, true);
        return;
    case P_INTKEY:
        enc_map(e, 1);
        enc_int_key(e, 1);
        enc_str(e, "integer key");
        enc_end(e, true);
        return;
    }
}

/* The value of "traits" (the caller writes the key when ev->traits != T_NONE). */
static void write_traits_value(enc_t *e, const ev_t *ev)
{
    uint64_t r = ev->r ^ 0x5bd1e995;
    switch (ev->traits) {
    case T_NONE:
        break;
    case T_USER: {
        char email[64];
        snprintf(email, sizeof(email), "%s@example.com", ev->user_id ? ev->user_id : "x");
        enc_map(e, 3);
        enc_key(e, "email");
        enc_str(e, email);
        enc_key(e, "plan");
        enc_str(e, plans[below(&r, NELEM(plans))]);
        enc_key(e, "logins");
        enc_int(e, (int64_t)below(&r, 500));
        enc_end(e, true);
        break;
    }
    case T_GROUP:
        enc_map(e, 2);
        enc_key(e, "name");
        enc_str(e, ev->group_id ? ev->group_id : "");
        enc_key(e, "employees");
        enc_int(e, (int64_t)below(&r, 5000) + 1);
        enc_end(e, true);
        break;
    case T_ARRAY:
        enc_array(e, 2);
        enc_int(e, 1);
        enc_int(e, 2);
        enc_end(e, false);
        break;
    }
}

/* The value of "context". */
static void write_context_value(enc_t *e, const ev_t *ev, const char *ld_id)
{
    if (ev->ctx == C_INT) {
        enc_int(e, 5);
        return;
    }
    enc_map(e, 1 + (ev->ctx_group != NULL) + (ev->ctx == C_LDID));
    enc_key(e, "library");
    enc_map(e, 2);
    enc_key(e, "name");
    enc_str(e, "sluice-load");
    enc_key(e, "version");
    enc_str(e, SLUICE_VERSION);
    enc_end(e, true);
    if (ev->ctx_group) {
        enc_key(e, "groupId");
        enc_str(e, ev->ctx_group);
    }
    if (ev->ctx == C_LDID) {
        enc_key(e, "ld_id");
        enc_str(e, ld_id);
    }
    enc_end(e, true);
}

/*
 * A valid msgpack event through the shared encoder (proto/writer.h): properties, traits and
 * context are encoded into the stream's scratch buffer first, then writer_event() writes the
 * event straight into the body.
 */
static void write_event_shared(model_stream_t *s, const ev_t *ev, const char *ld_id)
{
    enc_t *sub = &s->sub, *e = &s->enc;
    enc_reset(sub);
    size_t po = 0, pl = 0, to = 0, tl = 0, co, cl;
    if (ev->props != P_NONE) {
        po = sub->buf.len;
        write_props_value(sub, ev, s->big);
        pl = sub->buf.len - po;
    }
    if (ev->traits != T_NONE) {
        to = sub->buf.len;
        write_traits_value(sub, ev);
        tl = sub->buf.len - to;
    }
    co = sub->buf.len;
    write_context_value(sub, ev, ld_id);
    cl = sub->buf.len - co;
    if (sub->err) {
        e->err = sub->err;
        return;
    }
    writer_event_t w = {
        .type = ev->type,
        .message_id = ev->message_id,
        .user_id = ev->user_id,
        .anonymous_id = ev->anonymous_id,
        .event = ev->event,
        .name = ev->name,
        .group_id = ev->group_id,
        .previous_id = ev->previous_id,
        .has_timestamp = true,
        .timestamp_ms = ev->timestamp_ms,
        .properties = pl ? sub->buf.data + po : NULL,
        .properties_len = pl,
        .traits = tl ? sub->buf.data + to : NULL,
        .traits_len = tl,
        .context = sub->buf.data + co,
        .context_len = cl,
    };
    size_t need = writer_event_size(&w);
    char *dst = enc_claim(e, need);
    if (!dst) return;
    base_buf_t wb;
    base_buf_init_fixed(&wb, dst, need);
    int rc = writer_event(&wb, &w);
    if (rc != 0 || wb.len != need) e->err = rc != 0 ? rc : BASE_E_INVAL; /* size disagrees: a bug */
}

/* Writes one event map. Valid msgpack events go through the shared encoder; invalid ones and
 * JSON bodies through enc.h (see there for what writer.h cannot express). */
static void write_event(model_stream_t *s, const ev_t *ev, const char *ld_id, bool valid)
{
    if (valid && s->m->cfg.format == ENC_MSGPACK) {
        write_event_shared(s, ev, ld_id);
        return;
    }
    enc_t *e = &s->enc;
    const model_config_t *cfg = &s->m->cfg;
    uint32_t n = 2; /* timestamp, context */
    n += ev->type != NULL;
    n += ev->message_id != NULL || ev->message_id_number;
    n += ev->user_id != NULL;
    n += ev->anonymous_id != NULL;
    n += ev->event != NULL;
    n += ev->name != NULL;
    n += ev->group_id != NULL;
    n += ev->previous_id != NULL;
    n += ev->bad_sent_at;
    n += ev->props != P_NONE;
    n += ev->traits != T_NONE;
    enc_map(e, n);
    if (ev->type) {
        enc_key(e, "type");
        enc_str(e, ev->type);
    }
    if (ev->message_id_number) {
        enc_key(e, "messageId");
        enc_int(e, 12345);
    } else if (ev->message_id) {
        enc_key(e, "messageId");
        enc_strn(e, ev->message_id, ev->message_id_len);
    }
    if (ev->user_id) {
        enc_key(e, "userId");
        enc_strn(e, ev->user_id, ev->user_id_len);
    }
    if (ev->anonymous_id) {
        enc_key(e, "anonymousId");
        enc_str(e, ev->anonymous_id);
    }
    if (ev->event) {
        enc_key(e, "event");
        enc_strn(e, ev->event, ev->event_len);
    }
    if (ev->name) {
        enc_key(e, "name");
        enc_str(e, ev->name);
    }
    if (ev->group_id) {
        enc_key(e, "groupId");
        enc_str(e, ev->group_id);
    }
    if (ev->previous_id) {
        enc_key(e, "previousId");
        enc_str(e, ev->previous_id);
    }
    enc_key(e, "timestamp");
    if (ev->bad_timestamp) {
        enc_str(e, ev->bad_timestamp);
    } else if (cfg->format == ENC_JSON) {
        char iso[32];
        enc_strn(e, iso, base_iso8601_format(ev->timestamp_ms, iso));
    } else {
        enc_int(e, ev->timestamp_ms);
    }
    if (ev->bad_sent_at) {
        enc_key(e, "sentAt");
        enc_str(e, "soon");
    }
    if (ev->props != P_NONE) {
        enc_key(e, "properties");
        write_props_value(e, ev, s->big);
    }
    if (ev->traits != T_NONE) {
        enc_key(e, "traits");
        write_traits_value(e, ev);
    }
    enc_key(e, "context");
    write_context_value(e, ev, ld_id);
    enc_end(e, true);
}

static uint64_t event_hash(const model_stream_t *s, uint64_t seq, uint64_t salt)
{
    return mix64(s->m->cfg.seed ^ mix64(((uint64_t)s->id << 40) ^ seq ^ (salt << 56)));
}

static int kind_of(const model_stream_t *s, uint64_t seq)
{
    const model_t *m = s->m;
    if (s->id == 0 && seq < m->script_len) return MODEL_VALID;
    if (m->cfg.invalid_rate <= 0 || m->n_allowed == 0) return MODEL_VALID;
    uint64_t h = event_hash(s, seq, 1);
    if (unit(h) >= m->cfg.invalid_rate) return MODEL_VALID;
    return m->allowed[mix64(h) % m->n_allowed];
}

static uint32_t pick_account(const model_t *m, double u)
{
    uint32_t lo = 0, hi = m->cfg.accounts - 1;
    while (lo < hi) {
        uint32_t mid = lo + (hi - lo) / 2;
        if (m->cdf[mid] < u)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo;
}

static const char *pick_track(const model_t *m, uint64_t *r)
{
    uint64_t x = below(r, m->track_total);
    for (size_t i = 0; i < TRACK_VOCAB_N; i++) {
        if (x < track_vocab[i].weight) return track_vocab[i].name;
        x -= track_vocab[i].weight;
    }
    return track_vocab[0].name;
}

/* printf-free id text for the per-event ids (issue 11: libc's printf family was ~12% of
 * sluice-load's JSON profile). Each appends at p and returns the new end, without a NUL; the
 * callers' buffers are sized for the longest text. */
static char *put_str(char *p, const char *str)
{
    size_t n = strlen(str);
    memcpy(p, str, n);
    return p + n;
}

static char *put_u64(char *p, uint64_t u)
{
    char d[20];
    size_t n = 0;
    do {
        d[n++] = (char)('0' + u % 10);
        u /= 10;
    } while (u != 0);
    while (n > 0)
        *p++ = d[--n];
    return p;
}

/* Writes event seq of stream s (a pure function of config, stream and seq). */
static void gen_event(model_stream_t *s, uint64_t seq, int kind)
{
    const model_t *m = s->m;
    const model_config_t *cfg = &m->cfg;
    char mid[160], uid[300], anon[40], acct[64], prev[64], evname[256], aid[300];
    /* "RUNID-STREAM-SEQ": run_id holds at most MODEL_RUN_ID_MAX (16) characters: at most 49. */
    char *q = put_str(mid, cfg->run_id);
    *q++ = '-';
    q = put_u64(q, s->id);
    *q++ = '-';
    q = put_u64(q, seq);
    *q = '\0';
    int midn = (int)(q - mid);
    uint64_t r = event_hash(s, seq, 2);
    ev_t ev = {0};
    ev.message_id = mid;
    ev.message_id_len = (size_t)midn;
    ev.r = next64(&r);
    ev.timestamp_ms = cfg->base_ms - (int64_t)below(&r, 60000);
    ev.ctx = C_NORMAL;

    if (kind == MODEL_INV_NOT_A_MAP) {
        enc_strn(&s->enc, mid, (size_t)midn);
        return;
    }
    if (s->id == 0 && seq < m->script_len) {
        const script_step_t *st = &m->script[seq];
        snprintf(uid, sizeof(uid), "u-%s-%u", m->scripted_ids[st->account], st->user);
        ev.user_id = uid;
        ev.user_id_len = strlen(uid);
        ev.timestamp_ms -= st->day * DAY_MS;
        if (st->group) {
            ev.type = "group";
            ev.group_id = m->scripted_ids[st->account];
            ev.traits = T_GROUP;
        } else {
            ev.type = "track";
            ev.event = st->event;
            ev.event_len = strlen(st->event);
            ev.props = P_TRACK;
            ev.ctx_group = m->scripted_ids[st->account];
        }
        write_event(s, &ev, mid, true);
        return;
    }

    uint32_t a = pick_account(m, unit(next64(&r)));
    uint32_t user = (uint32_t)below(&r, m->users[a]);
    *put_u64(put_str(acct, "acct-"), (uint64_t)a + 1) = '\0';
    uid[0] = 'u';
    q = put_u64(uid + 1, (uint64_t)a + 1);
    *q++ = '-';
    q = put_u64(q, user);
    *q = '\0';
    ev.user_id = uid;
    ev.user_id_len = (size_t)(q - uid);
    uint64_t t = below(&r, 1000);
    if (kind != MODEL_VALID) /* invalid kinds are built on a track or the type they need */
        t = 0;
    if (t < 700) {
        ev.type = "track";
        ev.event = pick_track(m, &r);
        ev.event_len = strlen(ev.event);
        ev.props = P_TRACK;
        ev.ctx_group = acct;
    } else if (t < 860) {
        bool page = t < 820;
        ev.type = page ? "page" : "screen";
        ev.name = page ? page_names[below(&r, NELEM(page_names))]
                       : screen_names[below(&r, NELEM(screen_names))];
        ev.props = P_PAGE;
        ev.ctx_group = acct;
        if (page && below(&r, 10) < 3) {
            snprintf(anon, sizeof(anon), "anon-%016llx", (unsigned long long)next64(&r));
            ev.anonymous_id = anon;
            ev.user_id = NULL;
        }
    } else if (t < 920) {
        ev.type = "identify";
        ev.traits = T_USER;
    } else if (t < 990) {
        ev.type = "group";
        ev.group_id = acct;
        ev.traits = T_GROUP;
    } else {
        ev.type = "alias";
        snprintf(prev, sizeof(prev), "anon-%016llx", (unsigned long long)next64(&r));
        ev.previous_id = prev;
    }

    switch (kind) {
    case MODEL_INV_MISSING_TYPE:
        ev.type = NULL;
        break;
    case MODEL_INV_BAD_TYPE:
        ev.type = "purchase";
        break;
    case MODEL_INV_NUMERIC_MESSAGE_ID:
        ev.message_id = NULL;
        ev.message_id_number = true;
        ev.ctx = C_LDID;
        break;
    case MODEL_INV_BAD_MESSAGE_ID:
        /* "<id>-xxxx..." to 101 bytes: model_parse_message_id() still finds the id. */
        mid[midn++] = '-';
        while (midn < 101)
            mid[midn++] = 'x';
        mid[midn] = 0;
        ev.message_id_len = 101;
        break;
    case MODEL_INV_MISSING_USER:
        ev.user_id = NULL;
        break;
    case MODEL_INV_BAD_USER_ID:
        memset(uid, 'u', 256);
        uid[256] = 0;
        ev.user_id_len = 256;
        break;
    case MODEL_INV_BAD_ANONYMOUS_ID:
        memset(aid, 'a', 256);
        aid[256] = 0;
        ev.anonymous_id = aid;
        break;
    case MODEL_INV_MISSING_EVENT:
        ev.event = NULL;
        break;
    case MODEL_INV_BAD_EVENT:
        memset(evname, 'e', 201);
        evname[201] = 0;
        ev.event = evname;
        ev.event_len = 201;
        break;
    case MODEL_INV_MISSING_GROUP_ID:
    case MODEL_INV_BAD_GROUP_ID:
        ev.type = "group";
        ev.event = NULL;
        ev.props = P_NONE;
        ev.ctx_group = NULL;
        ev.traits = T_GROUP;
        ev.group_id = kind == MODEL_INV_BAD_GROUP_ID ? "" : NULL;
        break;
    case MODEL_INV_BAD_TIMESTAMP:
        ev.bad_timestamp = "yesterday";
        break;
    case MODEL_INV_BAD_PROPERTIES:
        ev.props = P_STRING;
        break;
    case MODEL_INV_BAD_TRAITS:
        ev.type = "identify";
        ev.event = NULL;
        ev.props = P_NONE;
        ev.ctx_group = NULL;
        ev.traits = T_ARRAY;
        break;
    case MODEL_INV_BAD_CONTEXT:
        ev.ctx = C_INT;
        break;
    case MODEL_INV_TOO_DEEP:
        ev.props = P_DEEP;
        break;
    case MODEL_INV_BAD_UTF8:
        ev.props = P_UTF8;
        break;
    case MODEL_INV_TOO_LARGE:
        ev.props = P_LARGE;
        break;
    case MODEL_INV_BAD_SENT_AT:
        ev.bad_sent_at = true;
        break;
    case MODEL_INV_BAD_KEY:
        ev.props = P_INTKEY;
        break;
    default:
        break;
    }
    write_event(s, &ev, mid, kind == MODEL_VALID);
}

int model_stream_new(const model_t *m, uint32_t id, model_stream_t **out)
{
    model_stream_t *s = calloc(1, sizeof(*s));
    if (!s) return LT_E_NOMEM;
    s->items = malloc(sizeof(model_item_t) * m->cfg.batch);
    if (!s->items) {
        free(s);
        return LT_E_NOMEM;
    }
    s->m = m;
    s->id = id;
    s->rng = mix64(m->cfg.seed ^ mix64(0xd1b54a32d192ed03ULL + id));
    enc_init(&s->enc, m->cfg.format, MODEL_BODY_MAX);
    enc_init(&s->sub, ENC_MSGPACK, 1u << 20);
    memset(s->big, 'a', sizeof(s->big));
    *out = s;
    return 0;
}

void model_stream_free(model_stream_t *s)
{
    if (!s) return;
    enc_free(&s->enc);
    enc_free(&s->sub);
    free(s->items);
    free(s);
}

uint64_t model_stream_seqs(const model_stream_t *s)
{
    return s->next_seq;
}

int model_stream_next(model_stream_t *s, int64_t sent_at_ms, const char **body, size_t *len,
                      const model_item_t **items, size_t *n_items)
{
    const model_config_t *cfg = &s->m->cfg;
    enc_t *e = &s->enc;
    enc_reset(e);
    if (cfg->format == ENC_MSGPACK) {
        /* {"sentAt":..,"batch":[ from the shared encoder; the events follow */
        size_t need = writer_batch_overhead(cfg->batch, sent_at_ms, NULL, 0);
        char *dst = enc_claim(e, need);
        base_buf_t wb;
        if (dst) {
            base_buf_init_fixed(&wb, dst, need);
            int rc = writer_batch_begin(&wb, cfg->batch, sent_at_ms, NULL, NULL, 0);
            if (rc != 0 || wb.len != need) e->err = rc != 0 ? rc : BASE_E_INVAL;
        }
    } else {
        enc_map(e, 2);
        enc_key(e, "batch");
        enc_array(e, cfg->batch);
    }
    for (uint32_t i = 0; i < cfg->batch; i++) {
        model_item_t it = {0};
        bool dup = cfg->dup_rate > 0 && unit(next64(&s->rng)) < cfg->dup_rate;
        bool within = next64(&s->rng) & 1;
        if (dup && within && i > 0) {
            it = s->items[below(&s->rng, i)];
            it.dup = true;
        } else if (dup && s->ring_n > 0) {
            it = s->ring[below(&s->rng, s->ring_n)];
            it.dup = true;
        } else {
            it.seq = s->next_seq++;
            it.kind = (uint8_t)kind_of(s, it.seq);
        }
        s->items[i] = it;
        gen_event(s, it.seq, it.kind);
    }
    if (cfg->format == ENC_JSON) {
        enc_end(e, false);
        enc_key(e, "sentAt");
        char iso[32];
        enc_strn(e, iso, base_iso8601_format(sent_at_ms, iso));
        enc_end(e, true);
    }
    if (e->err) return LT_E_TOO_LARGE;
    for (uint32_t i = 0; i < cfg->batch; i++) {
        if (s->items[i].dup) continue;
        s->ring[s->ring_pos] = s->items[i];
        s->ring[s->ring_pos].dup = false;
        s->ring_pos = (s->ring_pos + 1) % MODEL_DUP_RING;
        if (s->ring_n < MODEL_DUP_RING) s->ring_n++;
    }
    *body = e->buf.data;
    *len = e->buf.len;
    *items = s->items;
    *n_items = cfg->batch;
    return 0;
}
