/*
 * test_support.c — self-tests of the harness itself (no collector needed): the mock Kafka helper
 * process and its commands, the whole-topic consumer, and the encoders the other cases rely on.
 * If these fail, the other integration results mean nothing.
 */
#include "it_common.h"

#include <librdkafka/rdkafka.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <zlib.h>
#include <zstd.h>

static int mock_teardown(void **state)
{
    sup_mock_t *m = *state;
    if (m) {
        sup_mock_stop(m);
        free(m);
    }
    return 0;
}

static void produce(const char *bootstrap, const char *topic, int n)
{
    char err[512];
    rd_kafka_conf_t *conf = rd_kafka_conf_new();
    assert_int_equal(rd_kafka_conf_set(conf, "bootstrap.servers", bootstrap, err, sizeof err), 0);
    assert_int_equal(rd_kafka_conf_set(conf, "enable.idempotence", "true", err, sizeof err), 0);
    assert_int_equal(rd_kafka_conf_set(conf, "message.timeout.ms", "10000", err, sizeof err), 0);
    rd_kafka_t *rk = rd_kafka_new(RD_KAFKA_PRODUCER, conf, err, sizeof err);
    assert_non_null(rk);
    for (int i = 0; i < n; i++) {
        char key[32], val[64];
        snprintf(key, sizeof key, "k%d", i);
        snprintf(val, sizeof val, "{\"messageId\":\"m%d\"}", i);
        rd_kafka_resp_err_t e = rd_kafka_producev(
            rk, RD_KAFKA_V_TOPIC(topic), RD_KAFKA_V_KEY(key, strlen(key)),
            RD_KAFKA_V_VALUE(val, strlen(val)), RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY),
            RD_KAFKA_V_HEADER("message-id", val, 4), RD_KAFKA_V_END);
        assert_int_equal(e, RD_KAFKA_RESP_ERR_NO_ERROR);
    }
    assert_int_equal(rd_kafka_flush(rk, 10000), RD_KAFKA_RESP_ERR_NO_ERROR);
    assert_int_equal(rd_kafka_outq_len(rk), 0);
    rd_kafka_destroy(rk);
}

static void test_mock_helper_roundtrip(void **state)
{
    sup_mock_t *m = calloc(1, sizeof *m);
    assert_non_null(m);
    *state = m;
    assert_int_equal(sup_mock_start(m, getenv("SLUICE_MOCK_KAFKA"), 1, 3, 10000), 0);
    assert_non_null(strstr(m->bootstrap, "127.0.0.1:"));

    produce(m->bootstrap, "events", 20);
    sup_kmsgs_t got;
    assert_int_equal(sup_consume(m->bootstrap, "events", 20, 10000, &got), 0);
    assert_int_equal(got.n, 20);
    for (int i = 0; i < 20; i++) {
        char id[16];
        snprintf(id, sizeof id, "m%d", i);
        long at = sup_kmsgs_find(&got, id);
        assert_true(at >= 0);
        char key[16];
        snprintf(key, sizeof key, "k%d", i);
        assert_string_equal(got.msgs[at].key, key);
        assert_non_null(sup_kmsg_header(&got.msgs[at], "message-id"));
        assert_int_equal(sup_kmsgs_count_id(&got, id), 1);
    }
    /* Messages land on more than one of the 3 partitions, and all were read. */
    bool other_partition = false;
    for (size_t i = 1; i < got.n; i++)
        if (got.msgs[i].partition != got.msgs[0].partition) other_partition = true;
    assert_true(other_partition);
    sup_kmsgs_free(&got);

    /* An empty topic reads as zero messages once the (short) deadline passes. */
    assert_int_equal(sup_consume(m->bootstrap, "events_rejected", 1, 500, &got), 0);
    assert_int_equal(got.n, 0);
    sup_kmsgs_free(&got);

    assert_int_equal(sup_mock_cmd(m, "down 1", 5000), 0);
    assert_int_equal(sup_mock_cmd(m, "up 1", 5000), 0);
    assert_int_equal(sup_mock_cmd(m, "rtt 1 0", 5000), 0);
    assert_int_not_equal(sup_mock_cmd(m, "sideways 1", 5000), 0);
    assert_int_not_equal(sup_mock_cmd(m, "down x", 5000), 0);

    /* The cluster still serves after the down/up cycle. */
    produce(m->bootstrap, "events", 1);
    assert_int_equal(sup_consume(m->bootstrap, "events", 21, 10000, &got), 0);
    assert_int_equal(got.n, 21);
    sup_kmsgs_free(&got);
}

static void test_codecs_roundtrip(void **state)
{
    (void)state;
    json_t *j =
        json_pack("{s:s, s:i, s:f, s:b, s:n, s:[i,s,{s:s}], s:{s:{s:i}}}", "s", "héllo", "i", -42,
                  "f", 1.5, "b", 1, "nil", "arr", 1, "two", "k", "v", "nest", "a", "b", 3);
    assert_non_null(j);
    base_buf_t mp = {0};
    assert_int_equal(sup_msgpack_encode(j, &mp), 0);
    assert_true((unsigned char)mp.data[0] >= 0x80 && (unsigned char)mp.data[0] <= 0x8f);
    json_t *back = sup_msgpack_decode(mp.data, mp.len);
    assert_non_null(back);
    assert_true(json_equal(j, back));
    json_decref(back);
    /* Trailing bytes after the value are refused. */
    assert_null(sup_msgpack_decode(mp.data, mp.len - 1));

    base_buf_t txt = {0}, z = {0}, g = {0};
    assert_int_equal(sup_json_dump(j, &txt), 0);
    assert_int_equal(sup_zstd(txt.data, txt.len, &z), 0);
    char out[4096];
    size_t n = ZSTD_decompress(out, sizeof out, z.data, z.len);
    assert_false(ZSTD_isError(n));
    assert_int_equal(n, txt.len);
    assert_memory_equal(out, txt.data, n);

    assert_int_equal(sup_gzip(txt.data, txt.len, &g), 0);
    z_stream zs;
    memset(&zs, 0, sizeof zs);
    assert_int_equal(inflateInit2(&zs, 16 + MAX_WBITS), Z_OK);
    zs.next_in = (Bytef *)g.data;
    zs.avail_in = (uInt)g.len;
    zs.next_out = (Bytef *)out;
    zs.avail_out = sizeof out;
    assert_int_equal(inflate(&zs, Z_FINISH), Z_STREAM_END);
    assert_int_equal(zs.total_out, txt.len);
    assert_memory_equal(out, txt.data, txt.len);
    inflateEnd(&zs);

    /* Bombs: 64 MiB of zeros in a few KiB. */
    base_buf_t zb = {0}, gb = {0};
    assert_int_equal(sup_zstd_zeros((size_t)64 << 20, &zb), 0);
    assert_int_equal(sup_gzip_zeros((size_t)64 << 20, &gb), 0);
    assert_true(zb.len > 0 && zb.len < 64 * 1024);
    assert_true(gb.len > 0 && gb.len < 128 * 1024);
    unsigned long long content = ZSTD_getFrameContentSize(zb.data, zb.len);
    assert_true(content == ZSTD_CONTENTSIZE_UNKNOWN || content == ((unsigned long long)64 << 20));

    int64_t ms = 0;
    char iso[32];
    base_iso8601_format(1795435200123, iso);
    assert_string_equal(iso, "2026-11-23T12:00:00.123Z");
    assert_int_equal(sup_parse_iso8601(iso, &ms), 0);
    assert_int_equal(ms, 1795435200123);

    base_buf_free(&mp);
    base_buf_free(&txt);
    base_buf_free(&z);
    base_buf_free(&g);
    base_buf_free(&zb);
    base_buf_free(&gb);
    json_decref(j);
}

int main(int argc, char **argv)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_teardown(test_mock_helper_roundtrip, mock_teardown),
        cmocka_unit_test(test_codecs_roundtrip),
    };
    return it_run(argc, argv, "support", tests, sizeof tests / sizeof tests[0]);
}
