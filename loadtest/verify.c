/* verify.c — post-run consumer and accounting; the rules are in verify.h. */
#include "verify.h"

#include "base.h"
#include "client.h"
#include "lt_error.h"

#include <jansson.h>
#include <librdkafka/rdkafka.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define MAX_PARTS  VERIFY_MAX_PARTS
#define COUNT_MASK 0x7f /* rejected counts: low 7 bits (saturating), 0x80 = a wrong code */
#define WRONG_CODE 0x80

typedef struct part {
    int topic; /* 0 events, 1 rejected, 2 pql */
    int32_t partition;
    bool at_end;
} part_t;

typedef struct vstate {
    const verify_config_t *cfg;
    verify_result_t *res;
    uint8_t **cnt_ev, **cnt_rej; /* per stream, per seq */
    size_t run_id_len;
    int pql_tier[3];       /* highest tier signalled per scripted account: 0 none, 1..3 */
    bool pql_bad_users[3]; /* a signal whose userIds were empty or not the account's users */
    part_t parts[MAX_PARTS];
    int n_parts;
} vstate_t;

static void problem(vstate_t *v, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void problem(vstate_t *v, const char *fmt, ...)
{
    if (v->res->first_problem[0]) return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(v->res->first_problem, sizeof(v->res->first_problem), fmt, ap);
    va_end(ap);
}

static bool lookup(vstate_t *v, const char *id, size_t len, uint32_t *st, uint64_t *seq)
{
    if (!model_parse_message_id(v->cfg->model, id, len, st, seq)) return false;
    return *st < v->cfg->n_ledgers && *seq < v->cfg->ledger_len[*st];
}

static void inc(uint8_t *c)
{
    if ((*c & COUNT_MASK) != COUNT_MASK) (*c)++;
}

static void on_event(vstate_t *v, const rd_kafka_message_t *m)
{
    rd_kafka_headers_t *hdrs = NULL;
    const void *val = NULL;
    size_t size = 0;
    if (rd_kafka_message_headers(m, &hdrs) != RD_KAFKA_RESP_ERR_NO_ERROR ||
        rd_kafka_header_get_last(hdrs, "message-id", &val, &size) != RD_KAFKA_RESP_ERR_NO_ERROR ||
        !val) {
        v->res->unexpected++;
        problem(v, "a message on %s has no message-id header", v->cfg->topic_events);
        return;
    }
    const char *id = val;
    uint32_t st;
    uint64_t seq;
    if (lookup(v, id, size, &st, &seq)) {
        v->res->delivered++;
        inc(&v->cnt_ev[st][seq]);
        return;
    }
    size_t rl = v->run_id_len;
    if (size > rl && memcmp(id, model_config(v->cfg->model)->run_id, rl) == 0 && id[rl] == '-') {
        v->res->unexpected++;
        problem(v, "message-id %.*s on %s was never sent by this run", (int)size, id,
                v->cfg->topic_events);
    } else {
        v->res->other_runs++;
    }
}

/* Finds `"<run_id>-` in a rejected record and parses the id after the quote. */
static bool find_id(vstate_t *v, const char *p, size_t n, uint32_t *st, uint64_t *seq)
{
    const char *run = model_config(v->cfg->model)->run_id;
    size_t rl = v->run_id_len;
    const char *end = p + n;
    while (p < end) {
        const char *q = memchr(p, '"', (size_t)(end - p));
        if (!q) return false;
        q++;
        if ((size_t)(end - q) > rl && memcmp(q, run, rl) == 0 && q[rl] == '-') {
            const char *e = memchr(q, '"', (size_t)(end - q));
            if (e && lookup(v, q, (size_t)(e - q), st, seq)) return true;
        }
        p = q;
    }
    return false;
}

static void on_rejected(vstate_t *v, const rd_kafka_message_t *m)
{
    v->res->rejected_messages++;
    const char *p = m->payload;
    size_t n = m->len;
    uint32_t st;
    uint64_t seq;
    if (!p || !find_id(v, p, n, &st, &seq)) {
        v->res->other_runs++;
        return;
    }
    /* The code: from the JSON when it parses; raw events may hold bytes jansson refuses
     * (invalid UTF-8 kept as received), so fall back to scanning for "error":"...". */
    char code[64] = "";
    json_error_t jerr;
    json_t *j = json_loadb(p, n, JSON_DISABLE_EOF_CHECK, &jerr);
    const char *c = j ? json_string_value(json_object_get(j, "error")) : NULL;
    if (c) {
        snprintf(code, sizeof(code), "%s", c);
    } else {
        static const char key[] = "\"error\":\"";
        const char *k = memmem(p, n, key, sizeof(key) - 1);
        if (k) {
            k += sizeof(key) - 1;
            const char *e = memchr(k, '"', (size_t)(p + n - k));
            if (e && (size_t)(e - k) < sizeof(code)) {
                memcpy(code, k, (size_t)(e - k));
                code[e - k] = 0;
            }
        }
    }
    json_decref(j);
    uint8_t kind = v->cfg->ledgers[st][seq] & LEDGER_KIND_MASK;
    const char *want = model_kind_code(kind);
    inc(&v->cnt_rej[st][seq]);
    if (want && strcmp(want, code) != 0) {
        v->cnt_rej[st][seq] |= WRONG_CODE;
        problem(v, "event %s-%u-%llu (%s) rejected as \"%s\", expected \"%s\"",
                model_config(v->cfg->model)->run_id, st, (unsigned long long)seq,
                model_kind_name(kind), code, want);
    }
}

static int tier_rank(const char *t)
{
    if (!t) return 0;
    if (strcmp(t, "watching") == 0) return 1;
    if (strcmp(t, "warm") == 0) return 2;
    if (strcmp(t, "hot") == 0) return 3;
    return 0;
}

static void on_pql(vstate_t *v, const rd_kafka_message_t *m)
{
    v->res->pql_messages++;
    json_error_t jerr;
    json_t *j = json_loadb(m->payload, m->len, 0, &jerr);
    if (!j) return;
    const char *acct = json_string_value(json_object_get(j, "accountId"));
    int rank = tier_rank(json_string_value(json_object_get(j, "tier")));
    for (size_t i = 0; acct && i < model_scripted_count(v->cfg->model); i++) {
        const char *id, *tier;
        model_scripted(v->cfg->model, i, &id, &tier);
        if (strcmp(id, acct) != 0) continue;
        if (rank > v->pql_tier[i]) v->pql_tier[i] = rank;
        /* The people sales should call: the scripted account's own users ("u-<id>-N"). */
        json_t *users = json_object_get(j, "userIds");
        char prefix[64];
        int pl = snprintf(prefix, sizeof(prefix), "u-%s-", id);
        size_t k, nu = json_array_size(users);
        json_t *u;
        if (nu == 0 || nu > 5) v->pql_bad_users[i] = true;
        json_array_foreach(users, k, u)
        {
            const char *s = json_string_value(u);
            if (!s || strncmp(s, prefix, (size_t)pl) != 0) v->pql_bad_users[i] = true;
        }
    }
    json_decref(j);
}

/* A consumer handle for cfg->brokers, or NULL with errstr set. */
static rd_kafka_t *new_consumer(const verify_config_t *cfg, char *errstr, size_t n)
{
    rd_kafka_conf_t *conf = rd_kafka_conf_new();
    char group[64];
    snprintf(group, sizeof(group), "sluice-load-verify-%d", (int)getpid());
    if (rd_kafka_conf_set(conf, "bootstrap.servers", cfg->brokers, errstr, n) ||
        rd_kafka_conf_set(conf, "group.id", group, errstr, n) ||
        rd_kafka_conf_set(conf, "enable.auto.commit", "false", errstr, n) ||
        rd_kafka_conf_set(conf, "enable.partition.eof", "true", errstr, n) ||
        rd_kafka_conf_set(conf, "auto.offset.reset", "earliest", errstr, n)) {
        rd_kafka_conf_destroy(conf);
        return NULL;
    }
    return rd_kafka_new(RD_KAFKA_CONSUMER, conf, errstr, n); /* owns conf on success */
}

/* Calls fn for every partition of topic name (none when the topic does not exist). */
static void for_partitions(rd_kafka_t *rk, const char *name,
                           void (*fn)(void *ud, rd_kafka_t *rk, int32_t id), void *ud)
{
    rd_kafka_topic_t *t = rd_kafka_topic_new(rk, name, NULL);
    if (!t) return;
    const struct rd_kafka_metadata *md = NULL;
    if (rd_kafka_metadata(rk, 0, t, &md, 5000) == RD_KAFKA_RESP_ERR_NO_ERROR && md) {
        for (int i = 0; i < md->topic_cnt; i++) {
            const struct rd_kafka_metadata_topic *mt = &md->topics[i];
            if (mt->err || strcmp(mt->topic, name) != 0) continue;
            for (int p = 0; p < mt->partition_cnt; p++)
                fn(ud, rk, mt->partitions[p].id);
        }
    }
    if (md) rd_kafka_metadata_destroy(md);
    rd_kafka_topic_destroy(t);
}

typedef struct {
    verify_start_t *start;
    int topic;
    const char *name;
} prep_t;

static void prep_one(void *ud, rd_kafka_t *rk, int32_t id)
{
    prep_t *p = ud;
    int64_t lo = 0, hi = 0;
    if (p->start->n >= VERIFY_MAX_PARTS ||
        rd_kafka_query_watermark_offsets(rk, p->name, id, &lo, &hi, 5000) != 0)
        return;
    p->start->p[p->start->n].topic = p->topic;
    p->start->p[p->start->n].partition = id;
    p->start->p[p->start->n].offset = hi;
    p->start->n++;
}

int verify_prepare(const verify_config_t *cfg, verify_start_t *start)
{
    start->n = 0;
    char errstr[512];
    rd_kafka_t *rk = new_consumer(cfg, errstr, sizeof(errstr));
    if (!rk) return LT_E_KAFKA;
    const char *names[3] = {cfg->topic_events, cfg->topic_rejected, cfg->topic_pql};
    for (int i = 0; i < 3; i++) {
        prep_t p = {start, i, names[i]};
        for_partitions(rk, names[i], prep_one, &p);
    }
    rd_kafka_destroy(rk);
    return 0;
}

typedef struct {
    vstate_t *v;
    int topic;
    const char *name;
    rd_kafka_topic_partition_list_t *list;
} add_t;

/* Assigns one partition from where it ended before the run (or its beginning), noting messages
 * the broker deleted inside that range. */
static void add_one(void *ud, rd_kafka_t *rk, int32_t id)
{
    add_t *a = ud;
    vstate_t *v = a->v;
    if (v->n_parts >= MAX_PARTS) return;
    int64_t lo = 0, hi = 0, from = 0;
    bool have_start = false;
    for (int i = 0; v->cfg->start && i < v->cfg->start->n; i++)
        if (v->cfg->start->p[i].topic == a->topic && v->cfg->start->p[i].partition == id) {
            from = v->cfg->start->p[i].offset;
            have_start = true;
        }
    rd_kafka_query_watermark_offsets(rk, a->name, id, &lo, &hi, 5000);
    if (lo > from && a->topic != 2) {
        v->res->pruned += (uint64_t)(lo - from);
        from = lo;
    }
    part_t *pp = &v->parts[v->n_parts++];
    pp->topic = a->topic;
    pp->partition = id;
    pp->at_end = hi <= from;
    rd_kafka_topic_partition_list_add(a->list, a->name, id)->offset =
        have_start ? from : RD_KAFKA_OFFSET_BEGINNING;
}

static void add_topic(vstate_t *v, rd_kafka_t *rk, int ti, const char *name,
                      rd_kafka_topic_partition_list_t *list)
{
    add_t a = {v, ti, name, list};
    for_partitions(rk, name, add_one, &a);
}

static part_t *find_part(vstate_t *v, int ti, int32_t partition)
{
    for (int i = 0; i < v->n_parts; i++)
        if (v->parts[i].topic == ti && v->parts[i].partition == partition) return &v->parts[i];
    return NULL;
}

static int consume(vstate_t *v)
{
    const verify_config_t *cfg = v->cfg;
    char errstr[512];
    rd_kafka_t *rk = new_consumer(cfg, errstr, sizeof(errstr));
    if (!rk) {
        problem(v, "consumer: %s", errstr);
        return LT_E_KAFKA;
    }
    rd_kafka_poll_set_consumer(rk);
    rd_kafka_topic_partition_list_t *list = rd_kafka_topic_partition_list_new(16);
    const char *names[3] = {cfg->topic_events, cfg->topic_rejected, cfg->topic_pql};
    for (int i = 0; i < 3; i++)
        add_topic(v, rk, i, names[i], list);
    int rc = 0;
    if (list->cnt == 0) {
        problem(v, "no partitions found for %s/%s/%s at %s", names[0], names[1], names[2],
                cfg->brokers);
    } else if (rd_kafka_assign(rk, list) != RD_KAFKA_RESP_ERR_NO_ERROR) {
        problem(v, "cannot assign partitions");
        rc = LT_E_KAFKA;
    }
    rd_kafka_topic_partition_list_destroy(list);
    double t0 = ((double)base_mono_ns() / 1e9), deadline = t0 + cfg->timeout_ms / 1000.0,
           last_msg = t0;
    while (rc == 0 && v->n_parts > 0) {
        double now = ((double)base_mono_ns() / 1e9);
        bool all_end = true;
        for (int i = 0; i < v->n_parts; i++)
            all_end &= v->parts[i].at_end;
        if (all_end && now - last_msg >= cfg->quiet_ms / 1000.0) {
            v->res->complete = true;
            break;
        }
        if (now >= deadline) {
            problem(v, "consuming did not reach the end of the topics within %u ms",
                    cfg->timeout_ms);
            break;
        }
        rd_kafka_message_t *m = rd_kafka_consumer_poll(rk, 100);
        if (!m) continue;
        const char *tn = m->rkt ? rd_kafka_topic_name(m->rkt) : "";
        int ti = strcmp(tn, names[0]) == 0 ? 0 : strcmp(tn, names[1]) == 0 ? 1 : 2;
        part_t *pp = find_part(v, ti, m->partition);
        if (m->err == RD_KAFKA_RESP_ERR__PARTITION_EOF) {
            if (pp) pp->at_end = true;
        } else if (m->err) {
            /* transient broker errors: librdkafka retries; the deadline bounds us */
        } else {
            last_msg = ((double)base_mono_ns() / 1e9);
            if (pp) pp->at_end = false;
            if (ti == 0)
                on_event(v, m);
            else if (ti == 1)
                on_rejected(v, m);
            else
                on_pql(v, m);
        }
        rd_kafka_message_destroy(m);
    }
    if (v->n_parts == 0)
        v->res->complete = true; /* nothing to read; the accounting below reports the loss */
    rd_kafka_consumer_close(rk);
    rd_kafka_destroy(rk);
    v->res->consume_s = ((double)base_mono_ns() / 1e9) - t0;
    return rc;
}

static void account(vstate_t *v)
{
    const verify_config_t *cfg = v->cfg;
    verify_result_t *r = v->res;
    const char *run = model_config(cfg->model)->run_id;
    for (uint32_t s = 0; s < cfg->n_ledgers; s++) {
        for (uint64_t q = 0; q < cfg->ledger_len[s]; q++) {
            uint8_t b = cfg->ledgers[s][q];
            int kind = b & LEDGER_KIND_MASK;
            bool acked = b & LEDGER_ACKED, unsure = b & LEDGER_UNSURE;
            unsigned ce = v->cnt_ev[s][q] & COUNT_MASK;
            unsigned cr = v->cnt_rej[s][q] & COUNT_MASK;
            bool wrong = v->cnt_rej[s][q] & WRONG_CODE;
            if (kind == MODEL_VALID) {
                if (acked) {
                    r->sent_unique++;
                    if (ce == 0) {
                        r->missing++;
                        problem(v, "event %s-%u-%llu was answered 200 but never arrived", run, s,
                                (unsigned long long)q);
                    }
                    if (cr > 0) {
                        r->valid_rejected++;
                        problem(v, "valid event %s-%u-%llu is on %s", run, s, (unsigned long long)q,
                                cfg->topic_rejected);
                    }
                } else if (unsure) {
                    r->sent_unsure++;
                    r->unsure_delivered += ce == 1;
                } else if (ce > 0) {
                    r->unexpected++;
                    problem(v, "event %s-%u-%llu was refused but arrived", run, s,
                            (unsigned long long)q);
                }
                if (ce > 1) {
                    r->duplicated++;
                    problem(v, "event %s-%u-%llu arrived %u times", run, s, (unsigned long long)q,
                            ce);
                }
            } else {
                if (ce > 0) {
                    r->invalid_delivered++;
                    problem(v, "invalid event %s-%u-%llu (%s) is on %s", run, s,
                            (unsigned long long)q, model_kind_name(kind), cfg->topic_events);
                }
                if (acked) {
                    r->invalid_sent++;
                    if (cr == 0) {
                        r->rejected_missing++;
                        problem(v, "invalid event %s-%u-%llu (%s) is not on %s", run, s,
                                (unsigned long long)q, model_kind_name(kind), cfg->topic_rejected);
                    } else if (wrong) {
                        r->rejected_wrong++;
                    } else {
                        r->rejected_ok++;
                    }
                } else if (!unsure && cr > 0) {
                    r->unexpected++;
                }
            }
        }
    }
    size_t ns = model_scripted_count(cfg->model);
    bool any = false;
    for (size_t i = 0; i < ns; i++)
        any |= v->pql_tier[i] > 0;
    if (ns == 0) {
        r->pql_state = -1;
        snprintf(r->pql_note, sizeof(r->pql_note), "no scripted accounts (--no-pql-script)");
    } else if (!any && !cfg->expect_pql) {
        r->pql_state = -1;
        snprintf(r->pql_note, sizeof(r->pql_note),
                 "%s has no signal for this run's scripted accounts (%llu messages in all) "
                 "and --expect-pql was not given (does the collector run with SPEC 6's pql rules?)",
                 cfg->topic_pql, (unsigned long long)r->pql_messages);
    } else {
        r->pql_state = 1;
        for (size_t i = 0; i < ns; i++) {
            const char *id, *tier;
            model_scripted(cfg->model, i, &id, &tier);
            if (v->pql_tier[i] != tier_rank(tier)) {
                r->pql_state = 0;
                snprintf(r->pql_note, sizeof(r->pql_note),
                         "account %s should reach tier %s; highest signalled: %s", id, tier,
                         v->pql_tier[i] == 0   ? "none"
                         : v->pql_tier[i] == 1 ? "watching"
                         : v->pql_tier[i] == 2 ? "warm"
                                               : "hot");
                break;
            }
        }
        for (size_t i = 0; i < ns && r->pql_state == 1; i++) {
            const char *id, *tier;
            model_scripted(cfg->model, i, &id, &tier);
            if (v->pql_bad_users[i]) {
                r->pql_state = 0;
                snprintf(r->pql_note, sizeof(r->pql_note),
                         "a signal for %s named no users, more than 5, or users of another "
                         "account",
                         id);
            }
        }
        if (r->pql_state == 1)
            snprintf(r->pql_note, sizeof(r->pql_note),
                     "all %zu scripted accounts signalled at their tiers, with their own users",
                     ns);
    }
    if (r->pruned)
        snprintf(r->first_problem, sizeof(r->first_problem),
                 "the broker already deleted %llu messages of this run (retention; librdkafka's "
                 "mock cluster keeps ~5 MiB per partition): verification impossible, use a "
                 "shorter run or a real broker",
                 (unsigned long long)r->pruned);
    r->ok = r->complete && r->pruned == 0 && !cfg->ledger_overflow && r->missing == 0 &&
            r->duplicated == 0 && r->unexpected == 0 && r->invalid_delivered == 0 &&
            r->valid_rejected == 0 && r->rejected_missing == 0 && r->rejected_wrong == 0 &&
            r->pql_state != 0;
    if (cfg->ledger_overflow)
        problem(v, "the run sent more events than the ledger holds (--ledger-max)");
}

int verify_run(const verify_config_t *cfg, verify_result_t *res)
{
    memset(res, 0, sizeof(*res));
    if (!cfg->brokers || !cfg->model || !cfg->topic_events || !cfg->topic_rejected ||
        !cfg->topic_pql || (cfg->n_ledgers && (!cfg->ledgers || !cfg->ledger_len)))
        return LT_E_INVAL;
    vstate_t *v = calloc(1, sizeof(*v));
    if (!v) return LT_E_NOMEM;
    v->cfg = cfg;
    v->res = res;
    v->run_id_len = strlen(model_config(cfg->model)->run_id);
    int rc = 0;
    v->cnt_ev = calloc(cfg->n_ledgers + 1, sizeof(uint8_t *));
    v->cnt_rej = calloc(cfg->n_ledgers + 1, sizeof(uint8_t *));
    if (!v->cnt_ev || !v->cnt_rej) rc = LT_E_NOMEM;
    for (uint32_t s = 0; rc == 0 && s < cfg->n_ledgers; s++) {
        v->cnt_ev[s] = calloc(cfg->ledger_len[s] + 1, 1);
        v->cnt_rej[s] = calloc(cfg->ledger_len[s] + 1, 1);
        if (!v->cnt_ev[s] || !v->cnt_rej[s]) rc = LT_E_NOMEM;
    }
    if (rc == 0) rc = consume(v);
    if (rc == 0) account(v);
    for (uint32_t s = 0; v->cnt_ev && v->cnt_rej && s < cfg->n_ledgers; s++) {
        free(v->cnt_ev[s]);
        free(v->cnt_rej[s]);
    }
    free(v->cnt_ev);
    free(v->cnt_rej);
    free(v);
    return rc;
}
