/*
 * util.c — the small pieces of the wire format that everything else builds on: error tables,
 * event type names, default limits. The output buffer (base_buf_t), UTF-8 and ISO-8601 live in
 * the base layer (base/base.h).
 */
#include "proto.h"

#include <stdlib.h>
#include <string.h>

/* ---- errors ---------------------------------------------------------------------------------- */

static const int err_values[] = {
#define PROTO_X_VAL(name, val, code, msg) val,
    PROTO_ERRORS(PROTO_X_VAL)
#undef PROTO_X_VAL
};
static const char *const err_codes[] = {
#define PROTO_X_CODE(name, val, code, msg) code,
    PROTO_ERRORS(PROTO_X_CODE)
#undef PROTO_X_CODE
};
static const char *const err_messages[] = {
#define PROTO_X_MSG(name, val, code, msg) msg,
    PROTO_ERRORS(PROTO_X_MSG)
#undef PROTO_X_MSG
};

const int PROTO_ERR_COUNT = (int)(sizeof err_values / sizeof err_values[0]);

int proto_err_index(int err)
{
    /* The table is short (~45 entries) and this runs once per rejected event, so a linear scan
     * beats keeping a second, hand-maintained dense map in sync with the X-macro. */
    for (int i = 0; i < PROTO_ERR_COUNT; i++)
        if (err_values[i] == err) return i;
    return -1;
}

int proto_err_at(int i)
{
    if (i < 0 || i >= PROTO_ERR_COUNT) return PROTO_E_MALFORMED;
    return err_values[i];
}

const char *proto_err_code(int err)
{
    int i = proto_err_index(err);
    return i < 0 ? "unknown" : err_codes[i];
}

const char *proto_err_message(int err)
{
    int i = proto_err_index(err);
    return i < 0 ? "unknown error" : err_messages[i];
}

bool proto_err_is_event_level(int err)
{
    return err <= PROTO_E_EVENT_NOT_A_MAP;
}

/* ---- types and limits ------------------------------------------------------------------------ */

static const char *const type_names[] = {"",     "track",  "identify", "group",
                                         "page", "screen", "alias"};

const char *proto_type_name(proto_type_t t)
{
    if ((int)t < 0 || (size_t)t >= sizeof type_names / sizeof type_names[0]) return "";
    return type_names[t];
}

proto_type_t proto_type_parse(const char *s, size_t len)
{
    if (s == NULL) return PROTO_T_NONE;
    for (size_t t = PROTO_T_TRACK; t < sizeof type_names / sizeof type_names[0]; t++) {
        if (strlen(type_names[t]) == len && memcmp(type_names[t], s, len) == 0)
            return (proto_type_t)t;
    }
    return PROTO_T_NONE;
}

proto_limits_t proto_limits_default(void)
{
    proto_limits_t l = {
        .event_bytes = 32 * 1024,
        .body_bytes = 512 * 1024,
        .max_depth = 16,
        .max_events = 10000,
    };
    return l;
}

proto_str_t proto_event_key(const proto_event_t *ev)
{
    if (ev->account_id.ptr != NULL && ev->account_id.len > 0) return ev->account_id;
    if (ev->user_id.ptr != NULL && ev->user_id.len > 0) return ev->user_id;
    if (ev->anonymous_id.ptr != NULL && ev->anonymous_id.len > 0) return ev->anonymous_id;
    proto_str_t none = {NULL, 0};
    return none;
}
