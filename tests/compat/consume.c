/*
 * sluice-compat-consume — reads a whole Kafka topic with librdkafka (tests/support's
 * sup_consume) and prints one JSON line per message, for the Node side of the conformance suite:
 *
 *   {"partition":P,"offset":O,"key":K|null,"headers":{NAME:VALUE,...},"value":V}
 *
 * V is the record decoded (msgpack or JSON, as sup_kmsg_value reads it); a value that decodes
 * to nothing is printed as null with "raw" holding its bytes as a string.
 *
 * Usage: sluice-compat-consume BOOTSTRAP TOPIC MIN_COUNT TIMEOUT_MS
 * Waits until the topic holds MIN_COUNT messages or TIMEOUT_MS passed, then prints everything up
 * to the high watermarks seen then (so extra or duplicate messages show). Exit 0 when the topic
 * was read (even below MIN_COUNT: the caller compares), 1 when it could not be, 2 on bad usage.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "support.h"

static int parse_count(const char *s, long max, long *out)
{
    char *end = NULL;
    long v = strtol(s, &end, 10);
    if (end == s || *end != '\0' || v < 0 || v > max) return -1;
    *out = v;
    return 0;
}

int main(int argc, char **argv)
{
    long min = 0, timeout = 0;
    if (argc != 5 || parse_count(argv[3], 10000000, &min) != 0 ||
        parse_count(argv[4], 600000, &timeout) != 0) {
        fprintf(stderr, "usage: %s BOOTSTRAP TOPIC MIN_COUNT TIMEOUT_MS (<= 600000)\n", argv[0]);
        return 2;
    }
    sup_kmsgs_t m;
    if (sup_consume(argv[1], argv[2], (size_t)min, (int)timeout, &m) != 0) return 1;
    int rc = 0;
    for (size_t i = 0; i < m.n && rc == 0; i++) {
        const sup_kmsg_t *k = &m.msgs[i];
        json_t *headers = json_object();
        for (size_t h = 0; h < k->n_headers; h++)
            json_object_set_new(headers, k->headers[h].name,
                                json_stringn(k->headers[h].value, k->headers[h].len));
        json_t *v = sup_kmsg_value(k);
        json_t *line = json_pack("{s:i, s:I, s:o, s:o, s:o}", "partition", (int)k->partition,
                                 "offset", (json_int_t)k->offset, "key",
                                 k->key ? json_stringn(k->key, k->key_len) : json_null(), "headers",
                                 headers, "value", v ? v : json_null());
        if (line != NULL && v == NULL)
            json_object_set_new(line, "raw", json_stringn(k->value ? k->value : "", k->value_len));
        char *text = line ? json_dumps(line, JSON_COMPACT) : NULL;
        if (text == NULL || puts(text) == EOF) rc = 1;
        free(text);
        json_decref(line);
    }
    sup_kmsgs_free(&m);
    if (fflush(stdout) != 0) rc = 1;
    return rc;
}
