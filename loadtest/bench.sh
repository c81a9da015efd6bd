#!/bin/sh
# bench.sh — the standard sluice benchmark (issue 4): starts sluice-mock-kafka and a collector on
# this machine, runs the scenarios below with sluice-load, and prints one table.
#   1. msgpack+zstd, batches of 100, --rate max
#   2. JSON+gzip, batches of 100, --rate max
#   3. msgpack+zstd, batches of 100, open loop at 50% of scenario 1's events/s (latency)
#   4. (VERIFY=1) a short verified run: 3 s at VERIFY_RATE events/s with 1% invalid events,
#      checked in Kafka. Short on purpose: librdkafka's mock cluster keeps only ~5 MiB per
#      partition, so the big scenarios' data cannot all be read back (sluice-load reports that
#      as "pruned" instead of as loss).
# Each scenario's JSON and HTML reports are kept in $OUT.
#
# Usage: loadtest/bench.sh [BUILD_DIR]      (default: ./build; use a Release build)
# Environment: DURATION (s per scenario, 15), CONNECTIONS (32), THREADS (1, harness threads),
#   COLLECTOR_THREADS (2), VERIFY (1: run scenario 4), VERIFY_RATE (20000), OUT (report dir),
#   COLLECTOR_ARGS (extra collector flags), LOAD_ARGS (extra sluice-load flags).
set -u
BUILD=${1:-build}
DURATION=${DURATION:-15}
CONNECTIONS=${CONNECTIONS:-32}
THREADS=${THREADS:-1}
COLLECTOR_THREADS=${COLLECTOR_THREADS:-2}
VERIFY=${VERIFY:-1}
VERIFY_RATE=${VERIFY_RATE:-20000}
OUT=${OUT:-$(mktemp -d /tmp/sluice-bench-XXXXXX)}
LOAD=$BUILD/loadtest/sluice-load
COLLECTOR=$BUILD/collector/sluice-collector
MOCK=$BUILD/tests/support/sluice-mock-kafka
for b in "$LOAD" "$COLLECTOR" "$MOCK"; do
    [ -x "$b" ] || { echo "bench.sh: $b not built (cmake --build $BUILD)" >&2; exit 2; }
done
mkdir -p "$OUT"
MOCK_PID= COL_PID=
cleanup() {
    [ -n "$COL_PID" ] && kill -TERM "$COL_PID" 2>/dev/null && wait "$COL_PID" 2>/dev/null
    exec 3>&- 2>/dev/null
    [ -n "$MOCK_PID" ] && wait "$MOCK_PID" 2>/dev/null
}
trap cleanup EXIT INT TERM
wait_for() {
    i=0
    while [ $i -lt 100 ]; do
        grep -q "$2" "$1" 2>/dev/null && return 0
        sleep 0.1; i=$((i + 1))
    done
    echo "bench.sh: timed out waiting for $2 in $1" >&2; exit 3
}

rm -f "$OUT/mock.in"; mkfifo "$OUT/mock.in"
SLUICE_MOCK_LIFETIME=3600 "$MOCK" 1 3 <"$OUT/mock.in" >"$OUT/mock.out" 2>"$OUT/mock.err" &
MOCK_PID=$!
exec 3>"$OUT/mock.in"
wait_for "$OUT/mock.out" ':'
BOOT=$(head -1 "$OUT/mock.out")
# shellcheck disable=SC2086
"$COLLECTOR" --listen 127.0.0.1:0 --brokers "$BOOT" --threads "$COLLECTOR_THREADS" \
    --write-key bench_key=bench ${COLLECTOR_ARGS:-} 2>"$OUT/collector.err" &
COL_PID=$!
wait_for "$OUT/collector.err" '"msg":"listening"'
PORT=$(grep '"msg":"listening"' "$OUT/collector.err" | head -1 | sed 's/.*"port":\([0-9]*\).*/\1/')
URL=http://127.0.0.1:$PORT

# field FILE PATH: a number from a report (jq when present, else a grep of the indented JSON)
field() {
    if command -v jq >/dev/null 2>&1; then
        jq -r "$2 // \"-\"" "$1"
    else
        key=${2##*.}
        grep -o "\"$key\": [-0-9.a-z]*" "$1" | head -1 | sed 's/.*: //'
    fi
}

run() { # NAME ARGS...
    name=$1; shift
    echo "== $name: sluice-load $*" >&2
    # shellcheck disable=SC2086
    "$LOAD" --url "$URL" --write-key bench_key --duration "$DURATION" \
        --connections "$CONNECTIONS" --threads "$THREADS" --batch 100 --quiet \
        --report "$OUT/$name.json" --html "$OUT/$name.html" ${LOAD_ARGS:-} "$@" \
        >"$OUT/$name.txt" 2>"$OUT/$name.err"
    echo $? >"$OUT/$name.rc"
    cat "$OUT/$name.txt" >&2
}

run msgpack_max --format msgpack --rate max
run json_max --format json --rate max
MAX=$(field "$OUT/msgpack_max.json" .events_per_sec)
HALF=$(awk -v m="$MAX" 'BEGIN { h = int(m / 2); if (h < 100) h = 100; print h }')
run msgpack_half --format msgpack --rate "$HALF"
SCENARIOS="msgpack_max json_max msgpack_half"
if [ "$VERIFY" = 1 ]; then
    run verified --duration 3 --format msgpack --rate "$VERIFY_RATE" --invalid-rate 0.01 \
        --verify "$BOOT" --verify-timeout 60
    SCENARIOS="$SCENARIOS verified"
fi

printf '\n%-14s %12s %10s %9s %9s %9s %9s %9s %10s %s\n' scenario events/s req/s \
    p50_ms p90_ms p99_ms p999_ms max_ms non_200 verify
for s in $SCENARIOS; do
    f=$OUT/$s.json
    [ -s "$f" ] || { printf '%-14s (no report, exit %s)\n' "$s" "$(cat "$OUT/$s.rc")"; continue; }
    ok=$(field "$f" .verify.ok)
    non200=$(field "$f" .totals.responses)
    good=$(field "$f" '.status."200"')
    printf '%-14s %12.0f %10.0f %9.2f %9.2f %9.2f %9.2f %9.2f %10s %s\n' "$s" \
        "$(field "$f" .events_per_sec)" "$(field "$f" .requests_per_sec)" \
        "$(field "$f" .latency_ms.p50)" "$(field "$f" .latency_ms.p90)" \
        "$(field "$f" .latency_ms.p99)" "$(field "$f" .latency_ms.p999)" \
        "$(field "$f" .latency_ms.max)" "$((non200 - ${good:-0}))" "${ok:-null}"
done
echo "(msgpack_half = open loop at $HALF events/s, latency from the intended send time;"
echo " non_200 counts timeouts and connection errors too; reports in $OUT; ${DURATION}s each)"
