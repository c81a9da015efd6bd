/* Unit tests for proto/normalize.c: clock-skew correction, clamping, source, account resolution
 * order and the learn callback's order within a batch. */
#include "testutil.h"

#define NOW  1795435200000LL /* 2026-11-23T12:00:00Z */
#define HOUR 3600000LL

/* A tiny user→account map standing in for the collector's bounded one; records every call. */
struct accounts {
    char user[8][32], account[8][32];
    int n;
    char log[512]; /* "L:user=acct;" for learn, "Q:user;" for lookup, in call order */
};

static void log_add(struct accounts *a, const char *what, proto_str_t u, proto_str_t g)
{
    size_t n = strlen(a->log);
    snprintf(a->log + n, sizeof a->log - n, "%s:%.*s%s%.*s;", what, (int)u.len, u.ptr,
             g.ptr ? "=" : "", (int)g.len, g.ptr ? g.ptr : "");
}

static bool lookup_cb(void *ud, proto_str_t user, msgpack_zone *zone, proto_str_t *out)
{
    struct accounts *a = ud;
    log_add(a, "Q", user, (proto_str_t){NULL, 0});
    for (int i = a->n - 1; i >= 0; i--) {
        if (strlen(a->user[i]) == user.len && memcmp(a->user[i], user.ptr, user.len) == 0) {
            size_t len = strlen(a->account[i]);
            char *copy = msgpack_zone_malloc_no_align(zone, len);
            memcpy(copy, a->account[i], len);
            out->ptr = copy;
            out->len = (uint32_t)len;
            return true;
        }
    }
    return false;
}

static void learn_cb(void *ud, proto_str_t user, proto_str_t group)
{
    struct accounts *a = ud;
    log_add(a, "L", user, group);
    assert_true(a->n < 8);
    snprintf(a->user[a->n], 32, "%.*s", (int)user.len, user.ptr);
    snprintf(a->account[a->n], 32, "%.*s", (int)group.len, group.ptr);
    a->n++;
}

static proto_norm_ctx_t ctx_for(struct accounts *a)
{
    proto_norm_ctx_t c = {
        .received_at_ms = NOW,
        .source = {"web", 3},
        .lookup = lookup_cb,
        .learn = learn_cb,
        .lookup_ud = a,
        .max_future_ms = 24 * HOUR,
    };
    return c;
}

static void normalize_json(tu_body_t *t, const char *json, proto_format_t fmt,
                           const proto_norm_ctx_t *c)
{
    assert_int_equal(tu_decode(t, json, fmt, PROTO_T_NONE, NULL), PROTO_OK);
    proto_normalize(&t->b, c);
}

static void test_skew_correction(void **state)
{
    (void)state;
    struct accounts a = {0};
    proto_norm_ctx_t c = ctx_for(&a);
    TU_BOTH({
        tu_body_t t;
        /* The client's clock is 2 h behind: sentAt 10:00, event at 09:30 → 11:30 server time. */
        normalize_json(
            &t,
            "{\"sentAt\":\"2026-11-23T10:00:00Z\",\"batch\":[" TU_EVENT(
                ",\"timestamp\":\"2026-11-"
                "23T09:30:00Z\"") "," TU_EVENT(",\"timestamp\":\"2026-11-23T09:59:00Z\","
                                               "\"sentAt\":\"2026-11-23T09:59:30Z\"") "," TU_EVENT("") "]}",
            fmt, &c);
        proto_event_t *e = t.b.events;
        assert_int_equal(e[0].received_at_ms, NOW);
        assert_int_equal(e[0].norm_timestamp_ms, NOW - 30 * 60000LL);
        assert_false(e[0].clamped);
        /* The event's own sentAt overrides the batch's. */
        assert_int_equal(e[1].norm_timestamp_ms, NOW - 30000LL);
        /* No timestamp: receive time. */
        assert_int_equal(e[2].norm_timestamp_ms, NOW);
        assert_memory_equal(e[0].source.ptr, "web", 3);
        tu_free(&t);
    });
}

static void test_no_sent_at_keeps_timestamp(void **state)
{
    (void)state;
    struct accounts a = {0};
    proto_norm_ctx_t c = ctx_for(&a);
    tu_body_t t;
    normalize_json(&t, "{\"batch\":[" TU_EVENT(",\"timestamp\":1795420800000") "]}",
                   PROTO_FMT_MSGPACK, &c);
    assert_int_equal(t.b.events[0].norm_timestamp_ms, 1795420800000LL);
    assert_false(t.b.events[0].clamped);
    tu_free(&t);
}

static void test_clamp_future(void **state)
{
    (void)state;
    struct accounts a = {0};
    proto_norm_ctx_t c = ctx_for(&a);
    TU_BOTH({
        tu_body_t t;
        /* No sentAt: 2 days ahead is clamped; 23 h ahead is kept. */
        normalize_json(
            &t,
            "{\"batch\":[" TU_EVENT(",\"timestamp\":\"2026-11-25T12:00:00Z\"") "," TU_EVENT(
                ",\"timestamp\":\"2026-11-24T11:00:00Z\"") "," TU_EVENT(",\"timestamp\":\"2026-11-"
                                                                        "24T12:00:00.001Z\"") "]}",
            fmt, &c);
        proto_event_t *e = t.b.events;
        assert_true(e[0].clamped);
        assert_int_equal(e[0].norm_timestamp_ms, NOW);
        assert_int_equal(e[0].original_timestamp_ms, NOW + 48 * HOUR);
        assert_false(e[1].clamped);
        assert_int_equal(e[1].norm_timestamp_ms, NOW + 23 * HOUR);
        assert_true(e[2].clamped); /* 24 h + 1 ms */
        tu_free(&t);
    });
    /* After skew correction: sentAt far in the past relative to timestamp. */
    tu_body_t t;
    normalize_json(&t,
                   "{\"sentAt\":\"2026-01-01T00:00:00Z\",\"batch\":[" TU_EVENT(
                       ",\"timestamp\":\"2026-01-03T00:00:00Z\"") "]}",
                   PROTO_FMT_JSON, &c);
    assert_true(t.b.events[0].clamped);
    assert_int_equal(t.b.events[0].norm_timestamp_ms, NOW);
    tu_free(&t);
    /* max_future_ms <= 0 means the SPEC default of 24 h. */
    c.max_future_ms = 0;
    normalize_json(&t, "{\"batch\":[" TU_EVENT(",\"timestamp\":\"2026-11-24T11:00:00Z\"") "]}",
                   PROTO_FMT_JSON, &c);
    assert_false(t.b.events[0].clamped);
    tu_free(&t);
}

static void test_account_order(void **state)
{
    (void)state;
    struct accounts a = {0};
    strcpy(a.user[0], "u1");
    strcpy(a.account[0], "learned");
    a.n = 1;
    proto_norm_ctx_t c = ctx_for(&a);
    TU_BOTH({
        tu_body_t t;
        a.log[0] = '\0';
        a.n = 1;
        normalize_json(
            &t,
            "{\"batch\":["
            /* 0: group call → its groupId, even with a context.groupId */
            "{\"type\":\"group\",\"messageId\":\"g\",\"userId\":\"zz\",\"groupId\":\"acme\","
            "\"context\":{\"groupId\":\"ctx\"}},"
            /* 1: context.groupId beats the learned account */
            TU_EVENT(",\"context\":{\"groupId\":\"ctx\"}") ","
            /* 2: learned from an earlier group call (lookup) */
            TU_EVENT("") ","
                         /* 3: unknown user → absent */
                         "{\"type\":\"page\",\"messageId\":\"p\",\"userId\":\"nobody\"},"
                         /* 4: anonymous only → no lookup at all */
                         "{\"type\":\"page\",\"messageId\":\"p\",\"anonymousId\":\"anon\"},"
                         /* 5: a groupId on a non-group call is not an account */
                         "{\"type\":\"page\",\"messageId\":\"p5\",\"userId\":\"nobody2\","
                         "\"groupId\":\"notme\"}]}",
            fmt, &c);
        proto_event_t *e = t.b.events;
        for (int i = 0; i < 6; i++)
            assert_int_equal(e[i].error, PROTO_OK);
        assert_memory_equal(e[0].account_id.ptr, "acme", 4);
        assert_memory_equal(e[1].account_id.ptr, "ctx", 3);
        assert_memory_equal(e[2].account_id.ptr, "learned", 7);
        assert_null(e[3].account_id.ptr);
        assert_null(e[4].account_id.ptr);
        assert_memory_equal(proto_event_key(&e[3]).ptr, "nobody", 6);
        assert_memory_equal(proto_event_key(&e[4]).ptr, "anon", 4);
        assert_null(e[5].account_id.ptr);
        assert_string_equal(a.log, "L:zz=acme;Q:u1;Q:nobody;Q:nobody2;");
        tu_free(&t);
    });
}

/* learn() runs in batch order, before later events are normalized: "group then track" in one
 * batch resolves, "track then group" does not (the track came first). */
static void test_learn_order(void **state)
{
    (void)state;
    struct accounts a = {0};
    proto_norm_ctx_t c = ctx_for(&a);
    tu_body_t t;
    normalize_json(
        &t,
        "{\"batch\":["
        "{\"type\":\"track\",\"messageId\":\"1\",\"userId\":\"bob\",\"event\":\"A\"},"
        "{\"type\":\"group\",\"messageId\":\"2\",\"userId\":\"bob\",\"groupId\":\"g1\"},"
        "{\"type\":\"track\",\"messageId\":\"3\",\"userId\":\"bob\",\"event\":\"B\"},"
        "{\"type\":\"group\",\"messageId\":\"4\",\"userId\":\"bob\",\"groupId\":\"g2\"},"
        "{\"type\":\"track\",\"messageId\":\"5\",\"userId\":\"bob\",\"event\":\"C\"},"
        /* invalid group (a numeric messageId) and anonymous group: never learned */
        "{\"type\":\"group\",\"messageId\":6,\"userId\":\"bob\",\"groupId\":\"bad\"},"
        "{\"type\":\"group\",\"messageId\":\"7\",\"anonymousId\":\"x\",\"groupId\":\"g3\"},"
        "{\"type\":\"track\",\"messageId\":\"8\",\"userId\":\"bob\",\"event\":\"D\"}"
        "]}",
        PROTO_FMT_JSON, &c);
    proto_event_t *e = t.b.events;
    assert_null(e[0].account_id.ptr);
    assert_memory_equal(e[2].account_id.ptr, "g1", 2);
    assert_memory_equal(e[4].account_id.ptr, "g2", 2);
    assert_int_equal(e[5].error, PROTO_E_BAD_MESSAGE_ID);
    assert_null(e[5].account_id.ptr);
    assert_memory_equal(e[6].account_id.ptr, "g3", 2);
    assert_memory_equal(e[7].account_id.ptr, "g2", 2);
    assert_string_equal(a.log, "Q:bob;L:bob=g1;Q:bob;L:bob=g2;Q:bob;Q:bob;");
    tu_free(&t);

    /* NULL callbacks are allowed. */
    c.lookup = NULL;
    c.learn = NULL;
    normalize_json(&t, "{\"batch\":[" TU_EVENT("") "]}", PROTO_FMT_JSON, &c);
    assert_null(t.b.events[0].account_id.ptr);
    tu_free(&t);
}

/* Invalid events get receivedAt and source (for the rejected record), nothing else. */
static void test_invalid_events(void **state)
{
    (void)state;
    struct accounts a = {0};
    proto_norm_ctx_t c = ctx_for(&a);
    tu_body_t t;
    normalize_json(
        &t, "{\"batch\":[{\"type\":\"group\",\"messageId\":5,\"userId\":\"u\",\"groupId\":\"g\"}]}",
        PROTO_FMT_JSON, &c);
    proto_event_t *e = &t.b.events[0];
    assert_int_equal(e->error, PROTO_E_BAD_MESSAGE_ID);
    assert_null(e->message_id.ptr); /* none generated for a rejected event */
    assert_int_equal(e->received_at_ms, NOW);
    assert_memory_equal(e->source.ptr, "web", 3);
    assert_null(e->account_id.ptr);
    assert_string_equal(a.log, "");
    tu_free(&t);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_skew_correction), cmocka_unit_test(test_no_sent_at_keeps_timestamp),
        cmocka_unit_test(test_clamp_future),    cmocka_unit_test(test_account_order),
        cmocka_unit_test(test_learn_order),     cmocka_unit_test(test_invalid_events),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
