#!/bin/sh
# make_track100.sh — writes the fixed JSON benchmark body (issue 9) to stdout: {"batch":[...]} of
# 100 Segment-style track events as @segment/analytics-node 6.x sends them (~38 KB), with a
# batch-level sentAt and context. Deterministic: the committed track100.json is its output
# (loadtest/bodies/make_track100.sh > loadtest/bodies/track100.json). Used by loadtest/bench.sh
# (the json_body scenario) and tests/proto/bench_json.c.
set -eu
printf '{"batch":['
i=0
while [ $i -lt 100 ]; do
    [ $i -gt 0 ] && printf ','
    u=$((i % 23))
    printf '{"type":"track","event":"Order Completed","userId":"user-%05d",' "$u"
    printf '"anonymousId":"3f9a1c2e-5b7d-4e8f-a1b2-%012d",' "$u"
    printf '"messageId":"6d1f0c2a-8e4b-4c3d-9f7a-%012d",' "$i"
    printf '"timestamp":"2026-12-01T12:00:%02d.%03dZ",' $((i % 60)) $((i * 7 % 1000))
    printf '"properties":{"orderId":"ord_%06d","total":%d.%02d,"revenue":%d.5,"currency":"USD",' \
        $((40000 + i)) $((20 + i)) $((i % 100)) $((18 + i))
    printf '"coupon":null,"quantity":%d,"category":"Games"},' $((1 + i % 3))
    printf '"context":{"ip":"203.0.113.%d"},' $((i % 250))
    printf '"integrations":{}}'
    i=$((i + 1))
done
printf '],"sentAt":"2026-12-01T12:00:59.000Z","context":{"library":{"name":"analytics-node","version":"6.2.0"}}}'
