#!/bin/sh
# bench.sh — the standard sluice benchmark (issue 4): starts sluice-mock-kafka and a collector on
# this machine, runs the scenarios below with sluice-load, and prints one table.
#   1. msgpack_max   msgpack+zstd, batches of 100, --rate max
#   2. json_max      JSON+gzip, batches of 100, --rate max
#   3. msgpack_half  msgpack+zstd, batches of 100, open loop at 50% of scenario 1's events/s
#                    (latency from the intended send time)
#   4. json_body     the fixed JSON body (issue 9): $BODY (default loadtest/bodies/track100.json,
#                    100 Segment-style track events as analytics-node sends them, ~38 KB), the
#                    same bytes in every request, uncompressed, closed loop, to a second collector
#                    with dedup off (the body's messageIds repeat); col_us/ev is its CPU
#   5. msgpack_body  the same batch converted to msgpack (zstd), same collector: the formats on
#                    one body
#   json_body_tls, msgpack_body_tls  scenarios 4 and 5 over HTTPS (issue 15): a third collector,
#                    the same as the fixed-body one plus `tls:` with an EC P-256 self-signed
#                    certificate made with `openssl req` into $OUT/tls, sluice-load with
#                    --url https://... --ca-file; run right after 4 and 5 in each round, so
#                    col_us/ev of json_body_tls / json_body is TLS's cost per event
#   6. verified      (VERIFY=1) a short verified run: 3 s at VERIFY_RATE events/s with 1% invalid
#                    events, checked in Kafka. Short on purpose: librdkafka's mock cluster keeps
#                    only ~5 MiB per partition, so the big scenarios' data cannot all be read back
#                    (sluice-load reports that as "pruned" instead of as loss).
# With REPEAT=N every scenario but "verified" runs N times (max scenarios interleaved, so a burst
# of load from something else on the machine hits both formats alike); the table shows the median
# of each column over the runs, and every run's own row is in $OUT/runs.txt. Each run's JSON and
# HTML reports and stderr are kept in $OUT.
#
# Columns: events/s and req/s in 200 answers; latency percentiles in ms; not_ok = requests
# without a 200 (other codes, timeouts, connection errors); unsent = open-loop requests that were
# due but never sent (the rate was not sustained); col_us/ev and load_us/ev = CPU time (user+sys)
# of the collector (from /proc; "-" without it) and of sluice-load (the shell's `times`) per event
# answered 200; verify = the verified run's verdict.
#
# Usage: loadtest/bench.sh [BUILD_DIR]      (default: ./build; use a Release build; needs jq)
# Environment: DURATION (s per run, 15), REPEAT (runs per scenario, 1), CONNECTIONS (32),
#   THREADS (1, harness threads), COLLECTOR_THREADS (2), VERIFY (1: run scenario 4),
#   VERIFY_RATE (20000), HALF_RATE (events/s of scenario 3; default half of scenario 1's median),
#   OUT (report dir), COLLECTOR_ARGS (extra collector flags, e.g. "--config f.yaml" to try
#   kafka.properties), LOAD_ARGS (extra sluice-load flags), BODY (the fixed body's file),
#   ONLY (the scenarios to run, e.g. ONLY="json_body msgpack_body"; default all), COLLECTOR
#   (the collector binary, default BUILD_DIR/collector/sluice-collector: A/B against an older build).
# Exit status: 0 when every run produced a report (and the verified run passed), else 1;
# 2 when a binary is missing, 3 when the mock broker or the collector did not start.
set -u
BUILD=${1:-build}
DURATION=${DURATION:-15}
REPEAT=${REPEAT:-1}
CONNECTIONS=${CONNECTIONS:-32}
THREADS=${THREADS:-1}
COLLECTOR_THREADS=${COLLECTOR_THREADS:-2}
VERIFY=${VERIFY:-1}
VERIFY_RATE=${VERIFY_RATE:-20000}
BODY=${BODY:-$(dirname "$0")/bodies/track100.json}
ONLY=${ONLY:-msgpack_max json_max msgpack_half json_body msgpack_body json_body_tls msgpack_body_tls verified}
want() { case " $ONLY " in *" $1 "*) return 0 ;; esac; return 1; }
HALF_RATE=${HALF_RATE:-}
OUT=${OUT:-$(mktemp -d /tmp/sluice-bench-XXXXXX)}
LOAD=$BUILD/loadtest/sluice-load
COLLECTOR=${COLLECTOR:-$BUILD/collector/sluice-collector}
MOCK=$BUILD/tests/support/sluice-mock-kafka
for b in "$LOAD" "$COLLECTOR" "$MOCK"; do
    [ -x "$b" ] || { echo "bench.sh: $b not built (cmake --build $BUILD)" >&2; exit 2; }
done
command -v jq >/dev/null 2>&1 || { echo "bench.sh: jq is required to read the reports" >&2; exit 2; }
case $REPEAT in '' | *[!0-9]* | 0) echo "bench.sh: REPEAT must be >= 1" >&2; exit 2 ;; esac
mkdir -p "$OUT"
rm -f "$OUT/runs.txt"
[ -r "$BODY" ] || { echo "bench.sh: BODY $BODY not readable" >&2; exit 2; }
MOCK_PID='' COL_PID='' FIX_PID='' TLS_PID='' FAILED=0
# shellcheck disable=SC2317 # called from the EXIT trap
stop_collector() { # PID
    kill -TERM "$1" 2>/dev/null
    # Bounded: the collector's own shutdown is bounded, but never hang the script on it.
    i=0
    while kill -0 "$1" 2>/dev/null && [ "$i" -lt 100 ]; do sleep 0.1; i=$((i + 1)); done
    kill -KILL "$1" 2>/dev/null
    wait "$1" 2>/dev/null
}
cleanup() {
    [ -n "$COL_PID" ] && stop_collector "$COL_PID"
    [ -n "$FIX_PID" ] && stop_collector "$FIX_PID"
    [ -n "$TLS_PID" ] && stop_collector "$TLS_PID"
    COL_PID='' FIX_PID='' TLS_PID=''
    exec 3>&- # EOF on its stdin ends the mock broker
    [ -n "$MOCK_PID" ] && wait "$MOCK_PID" 2>/dev/null
    MOCK_PID=''
}
trap cleanup EXIT
trap 'exit 130' INT TERM
wait_for() { # FILE PATTERN PID: up to 10 s for PATTERN in FILE while PID lives
    i=0
    while [ $i -lt 100 ]; do
        grep -q "$2" "$1" 2>/dev/null && return 0
        kill -0 "$3" 2>/dev/null || break
        sleep 0.1; i=$((i + 1))
    done
    echo "bench.sh: no \"$2\" in $1 (see it for why)" >&2; exit 3
}

# CPU seconds (user+sys) a live process has used so far; empty when /proc is not there.
HZ=$(getconf CLK_TCK 2>/dev/null || echo 100)
cpu_s() {
    [ -r "/proc/$1/stat" ] || return 0
    # Fields after the ")" that ends the command name: utime is the 12th, stime the 13th.
    sed 's/.*) //' "/proc/$1/stat" | awk -v hz="$HZ" '{ printf "%.3f", ($12 + $13) / hz }'
}

rm -f "$OUT/mock.in"; mkfifo "$OUT/mock.in"
SLUICE_MOCK_LIFETIME=3600 "$MOCK" 1 3 <"$OUT/mock.in" >"$OUT/mock.out" 2>"$OUT/mock.err" &
MOCK_PID=$!
exec 3>"$OUT/mock.in"
wait_for "$OUT/mock.out" ':' "$MOCK_PID"
BOOT=$(head -1 "$OUT/mock.out")
# A fresh data dir: no dedup/PQL snapshot of an earlier run is loaded, none is left in the cwd.
rm -rf "$OUT/data"
# shellcheck disable=SC2086
"$COLLECTOR" --listen 127.0.0.1:0 --brokers "$BOOT" --threads "$COLLECTOR_THREADS" \
    --data-dir "$OUT/data" --write-key bench_key=bench ${COLLECTOR_ARGS:-} 2>"$OUT/collector.err" &
COL_PID=$!
wait_for "$OUT/collector.err" '"msg":"listening"' "$COL_PID"
PORT=$(grep '"msg":"listening"' "$OUT/collector.err" | head -1 | sed 's/.*"port":\([0-9]*\).*/\1/')
URL=http://127.0.0.1:$PORT
echo "bench.sh: collector pid $COL_PID on $URL, mock broker $BOOT, reports in $OUT" >&2
# The fixed-body scenarios' collector: the same but dedup off (the body's messageIds repeat).
if want json_body || want msgpack_body; then
    printf 'dedup:\n  window: 0s\n' >"$OUT/nodedup.yaml"
    rm -rf "$OUT/data-fixed"
    # shellcheck disable=SC2086
    "$COLLECTOR" --config "$OUT/nodedup.yaml" --listen 127.0.0.1:0 --brokers "$BOOT" \
        --threads "$COLLECTOR_THREADS" --data-dir "$OUT/data-fixed" --write-key bench_key=bench \
        ${COLLECTOR_ARGS:-} 2>"$OUT/collector-fixed.err" &
    FIX_PID=$!
    wait_for "$OUT/collector-fixed.err" '"msg":"listening"' "$FIX_PID"
    FIX_URL=http://127.0.0.1:$(grep '"msg":"listening"' "$OUT/collector-fixed.err" | head -1 |
        sed 's/.*"port":\([0-9]*\).*/\1/')
    echo "bench.sh: fixed-body collector pid $FIX_PID on $FIX_URL (dedup off), body $BODY" >&2
fi
# The HTTPS fixed-body scenarios' collector: the fixed-body one plus tls, on a fresh certificate.
if want json_body_tls || want msgpack_body_tls; then
    command -v openssl >/dev/null 2>&1 || { echo "bench.sh: openssl is required for *_tls" >&2; exit 2; }
    mkdir -p "$OUT/tls"
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
        -keyout "$OUT/tls/key.pem" -out "$OUT/tls/cert.pem" -days 2 -subj /CN=sluice-bench \
        -addext subjectAltName=IP:127.0.0.1 >"$OUT/tls/openssl.err" 2>&1 ||
        { echo "bench.sh: openssl req failed (see $OUT/tls/openssl.err)" >&2; exit 3; }
    printf 'dedup:\n  window: 0s\ntls: {cert_file: %s, key_file: %s}\n' "$OUT/tls/cert.pem" \
        "$OUT/tls/key.pem" >"$OUT/nodedup-tls.yaml"
    rm -rf "$OUT/data-tls"
    # shellcheck disable=SC2086
    "$COLLECTOR" --config "$OUT/nodedup-tls.yaml" --listen 127.0.0.1:0 --brokers "$BOOT" \
        --threads "$COLLECTOR_THREADS" --data-dir "$OUT/data-tls" --write-key bench_key=bench \
        ${COLLECTOR_ARGS:-} 2>"$OUT/collector-tls.err" &
    TLS_PID=$!
    wait_for "$OUT/collector-tls.err" '"msg":"listening"' "$TLS_PID"
    TLS_URL=https://127.0.0.1:$(grep '"msg":"listening"' "$OUT/collector-tls.err" | head -1 |
        sed 's/.*"port":\([0-9]*\).*/\1/')
    echo "bench.sh: HTTPS fixed-body collector pid $TLS_PID on $TLS_URL (dedup off)" >&2
fi
LOAD_BEFORE=$(cut -d' ' -f1-3 /proc/loadavg 2>/dev/null || echo -)

num() { # FILE JQ_PATH: the number there, or "-"
    v=$(jq -r "($2) // \"-\"" "$1" 2>/dev/null)
    case $v in '' | null) echo - ;; *) echo "$v" ;; esac
}

run() { # NAME TAG ARGS...: one sluice-load run against $COL_PID at $URL, one line in runs.txt
    name=$1; tag=$2; shift 2
    want "$name" || return 0
    if ! kill -0 "$COL_PID" 2>/dev/null; then
        echo "bench.sh: the collector is gone before $tag (see $OUT/collector.err)" >&2
        FAILED=1
        echo "$name $tag - - - - - - - - - - - -" >>"$OUT/runs.txt"
        return
    fi
    echo "== $tag: sluice-load $*" >&2
    c0=$(cpu_s "$COL_PID")
    # The subshell's `times` gives sluice-load's CPU (its children's line).
    # shellcheck disable=SC2086
    (
        "$LOAD" --url "$URL" --write-key bench_key --duration "$DURATION" \
            --connections "$CONNECTIONS" --threads "$THREADS" --batch 100 --quiet \
            --report "$OUT/$tag.json" --html "$OUT/$tag.html" ${LOAD_ARGS:-} "$@" \
            >"$OUT/$tag.txt" 2>"$OUT/$tag.err"
        rc=$?
        times >"$OUT/$tag.times"
        exit $rc
    )
    rc=$?
    c1=$(cpu_s "$COL_PID")
    cat "$OUT/$tag.txt" >&2
    f=$OUT/$tag.json
    if [ ! -s "$f" ]; then
        echo "bench.sh: $tag wrote no report (exit $rc, see $OUT/$tag.err)" >&2
        FAILED=1
        echo "$name $tag - - - - - - - - - - - -" >>"$OUT/runs.txt"
        return
    fi
    ok=$(num "$f" '.status."200"')
    [ "$ok" = - ] && ok=0
    events=$(num "$f" '.totals.events_ok')
    lcpu=$(tail -1 "$OUT/$tag.times" 2>/dev/null |
        awk '{ s = 0; for (i = 1; i <= 2; i++) { split($i, a, "m"); s += a[1] * 60 + a[2] } print s }')
    per_event() { # CPU_SECONDS: microseconds per event answered 200
        awk -v c="$1" -v e="$events" 'BEGIN { if (c == "" || e == "-" || e <= 0) print "-";
            else printf "%.2f", c * 1e6 / e }'
    }
    col_us=-
    [ -n "$c0" ] && [ -n "$c1" ] && col_us=$(per_event "$(awk -v a="$c0" -v b="$c1" 'BEGIN { print b - a }')")
    load_us=$(per_event "${lcpu:-}")
    verify=$(jq -r 'if .verify == null then "-" else (.verify.ok | tostring) end' "$f")
    [ "$verify" = false ] && FAILED=1
    echo "$name $tag $(num "$f" .events_per_sec) $(num "$f" .requests_per_sec)" \
        "$(num "$f" .latency_ms.p50) $(num "$f" .latency_ms.p90) $(num "$f" .latency_ms.p99)" \
        "$(num "$f" .latency_ms.p999) $(num "$f" .latency_ms.max)" \
        "$(awk -v a="$(num "$f" .totals.requests_sent)" -v b="$ok" \
            'BEGIN { if (a == "-") print "-"; else print a - b }')" \
        "$(num "$f" .totals.backlog_at_end)" \
        "$col_us $load_us $verify" >>"$OUT/runs.txt"
}

# median SCENARIO COLUMN: the median of that column over the scenario's runs ("-" if none).
median() {
    awk -v s="$1" -v c="$2" '$1 == s && $c != "-" { print $c }' "$OUT/runs.txt" | sort -g |
        awk '{ v[NR] = $1 } END { if (NR == 0) print "-";
            else if (NR % 2) print v[(NR + 1) / 2]; else print (v[NR / 2] + v[NR / 2 + 1]) / 2 }'
}

r=1
while [ $r -le "$REPEAT" ]; do
    run msgpack_max "msgpack_max.$r" --format msgpack --rate max
    run json_max "json_max.$r" --format json --rate max
    r=$((r + 1))
done
MAX=$(median msgpack_max 3)
if [ -z "$HALF_RATE" ]; then
    HALF_RATE=$(awk -v m="$MAX" 'BEGIN { h = int(m / 2); if (m == "-" || h < 100) h = 100; print h }')
fi
r=1
while [ $r -le "$REPEAT" ]; do
    run msgpack_half "msgpack_half.$r" --format msgpack --rate "$HALF_RATE"
    r=$((r + 1))
done
if [ -n "$FIX_PID" ] || [ -n "$TLS_PID" ]; then
    MAIN_PID=$COL_PID MAIN_URL=$URL
    r=1
    while [ $r -le "$REPEAT" ]; do
        if [ -n "$FIX_PID" ]; then
            COL_PID=$FIX_PID URL=$FIX_URL
            run json_body "json_body.$r" --format json --compress none --body "$BODY" --rate max
            run msgpack_body "msgpack_body.$r" --format msgpack --compress zstd --body "$BODY" \
                --rate max
        fi
        if [ -n "$TLS_PID" ]; then
            COL_PID=$TLS_PID URL=$TLS_URL
            run json_body_tls "json_body_tls.$r" --format json --compress none --body "$BODY" \
                --rate max --ca-file "$OUT/tls/cert.pem"
            run msgpack_body_tls "msgpack_body_tls.$r" --format msgpack --compress zstd \
                --body "$BODY" --rate max --ca-file "$OUT/tls/cert.pem"
        fi
        r=$((r + 1))
    done
    COL_PID=$MAIN_PID URL=$MAIN_URL
fi
SCENARIOS=
for s in msgpack_max json_max msgpack_half json_body msgpack_body json_body_tls msgpack_body_tls; do
    want "$s" && SCENARIOS="$SCENARIOS $s"
done
if [ "$VERIFY" = 1 ] && want verified; then
    run verified verified.1 --duration 3 --format msgpack --rate "$VERIFY_RATE" \
        --invalid-rate 0.01 --verify "$BOOT" --verify-timeout 60
    SCENARIOS="$SCENARIOS verified"
fi
LOAD_AFTER=$(cut -d' ' -f1-3 /proc/loadavg 2>/dev/null || echo -)

fmt_row() { # values as in runs.txt minus the tag
    awk -v OFS=' ' '{
        printf "%-16s", $1
        printf (($2 == "-") ? " %10s" : " %10.0f"), $2
        printf (($3 == "-") ? " %8s" : " %8.0f"), $3
        for (i = 4; i <= 8; i++) printf (($i == "-") ? " %8s" : " %8.2f"), $i
        printf " %7s %7s", $9, $10
        for (i = 11; i <= 12; i++) printf (($i == "-") ? " %9s" : " %9.2f"), $i
        printf " %s\n", $13 }'
}
{
    printf '\n%-16s %10s %8s %8s %8s %8s %8s %8s %7s %7s %9s %9s %s\n' scenario events/s req/s \
        p50_ms p90_ms p99_ms p999_ms max_ms not_ok unsent col_us/ev load_us/ev verify
    for s in $SCENARIOS; do
        row=$s
        for c in 3 4 5 6 7 8 9 10 11 12 13; do
            row="$row $(median "$s" "$c")"
        done
        # verify is not a number: the last run's verdict
        v=$(awk -v s="$s" '$1 == s { v = $14 } END { print (v == "" ? "-" : v) }' "$OUT/runs.txt")
        echo "$row" | awk -v v="$v" '{ $13 = v; print }' | fmt_row
    done
    n=$REPEAT
    [ "$n" -gt 1 ] && echo "(median of $n runs per scenario, each run in $OUT/runs.txt; verified: 1 run)"
    echo "(msgpack_half = open loop at $HALF_RATE events/s; ${DURATION}s per run; load average" \
        "before $LOAD_BEFORE, after $LOAD_AFTER; reports in $OUT)"
}
exit $FAILED
