/*
 * fuzz_auth.c — libFuzzer target for the Authorization header (collector/auth.c): the input is
 * the header value. Checks auth.h's contract: a parsed key fits the buffer and is non-empty, a
 * lookup of it finds only the configured key, masking never overruns and never shows more than
 * four characters of the key.
 * Build: cmake -DSLUICE_FUZZ=ON with CC=clang (see tests/fuzz/CMakeLists.txt).
 */
#include "auth.h"
#include "config.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static auth_t *auth;
static config_t cfg;
static config_write_key_t keys[2] = {{.key = "wk_fuzz_1", .source = "web"},
                                     {.key = "wk_fuzz_2", .source = "ios"}};

static void setup(void)
{
    config_init(&cfg);
    cfg.write_keys = keys;
    cfg.n_write_keys = 2;
    cfg.rate_per_key = 1000;
    if (auth_new(&cfg, &auth) != AUTH_OK) abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (auth == NULL) setup();
    char *value = malloc(size ? size : 1);
    if (value == NULL) abort();
    memcpy(value, data, size);

    char key[AUTH_KEY_MAX];
    size_t klen = 99999;
    int rc = auth_parse_header(value, size, key, sizeof key, &klen);
    if (rc == AUTH_OK) {
        if (klen == 0 || klen > sizeof key) abort();
        const char *source = NULL;
        int idx = -1;
        int lr = auth_lookup(auth, key, klen, &source, &idx);
        if (lr == AUTH_OK) {
            if (idx < 0 || idx > 1 || source == NULL) abort();
            if (klen != strlen(keys[idx].key) || memcmp(key, keys[idx].key, klen) != 0) abort();
            int retry = 0;
            int rr = auth_rate_take(auth, idx, 1, (uint64_t)size * 1000000u, &retry);
            if (rr != AUTH_OK && (rr != AUTH_E_RATE_LIMITED || retry < 1)) abort();
        } else if (lr != AUTH_E_UNKNOWN) {
            abort();
        }
        char masked[16];
        auth_mask(key, klen, masked, sizeof masked);
        if (strnlen(masked, sizeof masked) == sizeof masked) abort();
    } else if (rc != AUTH_E_MISSING && rc != AUTH_E_MALFORMED) {
        abort();
    }
    /* Constant-time compare agrees with memcmp. */
    size_t half = size / 2;
    bool eq = auth_ct_equal(value, half, value + half, size - half);
    if (eq != (half == size - half && memcmp(value, value + half, half) == 0)) abort();
    free(value);
    return 0;
}
