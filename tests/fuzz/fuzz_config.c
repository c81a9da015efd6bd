/*
 * fuzz_config.c — libFuzzer target for the YAML config loader (collector/config.c, libyaml):
 * the input is a config file. Each input is written to a private temporary file and loaded as
 * sluice-collector loads its --config; a load that succeeds is validated and freed, one that
 * fails must say why (a non-empty error naming the file). Either way nothing leaks (ASan).
 * Build: cmake -DSLUICE_FUZZ=ON with CC=clang (see tests/fuzz/CMakeLists.txt).
 */
#include "config.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static char path[64];

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (path[0] == '\0') snprintf(path, sizeof path, "/tmp/sluice-fuzz-config-%d.yaml", getpid());
    FILE *f = fopen(path, "wb");
    if (f == NULL) abort();
    if (size > 0 && fwrite(data, 1, size, f) != size) abort();
    fclose(f);

    config_t c;
    config_init(&c);
    char err[512] = "";
    int rc = config_load_file(&c, path, err, sizeof err);
    if (rc == 0) {
        err[0] = '\0';
        if (config_validate(&c, err, sizeof err) != 0 && err[0] == '\0') abort();
    } else if (err[0] == '\0') {
        abort(); /* every refusal says why */
    }
    config_free(&c);
    return 0;
}
