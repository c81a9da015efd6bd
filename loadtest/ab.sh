#!/bin/sh
# ab.sh — what does a feature cost? Runs the same sluice-load scenario (msgpack+zstd, batches of
# 100, --rate max) against one collector per YAML config, in alternating rounds (A B C A B C ...)
# so a burst of load from elsewhere on the machine hits every config alike, and prints per config
# the median events/s, p99 and collector CPU per event, and the ratio to the first config.
#
# Usage: loadtest/ab.sh BUILD_DIR NAME=CONFIG.yaml[@OTHER_BUILD_DIR] [NAME=CONFIG.yaml[@...] ...]
#   e.g. loadtest/ab.sh build base=base.yaml filters=filters.yaml
#   Two builds of the same config (before/after a change): NAME=CONFIG.yaml@DIR runs DIR's
#   sluice-collector for that name; sluice-load and the mock broker always come from BUILD_DIR.
#   e.g. loadtest/ab.sh build before=base.yaml@/tmp/old/build after=base.yaml
# Environment: DURATION (s per run, 8), ROUNDS (3), CONNECTIONS (32), DUP_RATE (0.01),
#   OUT (report dir). Needs jq. The collectors run with --threads 2 against one
#   sluice-mock-kafka; each config gets a fresh --data-dir. Exit status 0 when every run
#   produced a report, else 1 (2: usage or a missing binary, 3: something did not start).
set -u
[ $# -ge 2 ] || { sed -n '2,16p' "$0" >&2; exit 2; }
BUILD=$1
shift
DURATION=${DURATION:-8}
ROUNDS=${ROUNDS:-3}
CONNECTIONS=${CONNECTIONS:-32}
DUP_RATE=${DUP_RATE:-0.01}
OUT=${OUT:-$(mktemp -d /tmp/sluice-ab-XXXXXX)}
LOAD=$BUILD/loadtest/sluice-load
COLLECTOR=$BUILD/collector/sluice-collector
MOCK=$BUILD/tests/support/sluice-mock-kafka
for b in "$LOAD" "$COLLECTOR" "$MOCK"; do
    [ -x "$b" ] || { echo "ab.sh: $b not built" >&2; exit 2; }
done
command -v jq >/dev/null 2>&1 || { echo "ab.sh: jq is required" >&2; exit 2; }
mkdir -p "$OUT"
PIDS='' MOCK_PID=''
# shellcheck disable=SC2317 # called from the EXIT trap
cleanup() {
    for p in $PIDS; do kill -TERM "$p" 2>/dev/null; done
    for p in $PIDS; do
        i=0
        while kill -0 "$p" 2>/dev/null && [ "$i" -lt 100 ]; do sleep 0.1; i=$((i + 1)); done
        kill -KILL "$p" 2>/dev/null
    done
    [ -n "$MOCK_PID" ] && kill -TERM "$MOCK_PID" 2>/dev/null
    exec 3>&- 2>/dev/null
}
trap cleanup EXIT INT TERM

rm -f "$OUT/mock.in"
mkfifo "$OUT/mock.in"
SLUICE_MOCK_LIFETIME=3600 "$MOCK" 1 4 <"$OUT/mock.in" >"$OUT/mock.out" 2>"$OUT/mock.err" &
MOCK_PID=$!
exec 3>"$OUT/mock.in"
i=0
while ! grep -q : "$OUT/mock.out" 2>/dev/null && [ "$i" -lt 100 ]; do sleep 0.1; i=$((i + 1)); done
BOOT=$(head -n 1 "$OUT/mock.out")
[ -n "$BOOT" ] || { echo "ab.sh: the mock broker did not start" >&2; exit 3; }

NAMES=''
for arg in "$@"; do
    name=${arg%%=*}
    cfg=${arg#*=}
    col=$COLLECTOR
    case $cfg in *@*)
        col=${cfg#*@}/collector/sluice-collector
        cfg=${cfg%%@*}
        ;;
    esac
    [ -f "$cfg" ] || { echo "ab.sh: $cfg: no such file" >&2; exit 2; }
    [ -x "$col" ] || { echo "ab.sh: $col not built" >&2; exit 2; }
    "$col" --config "$cfg" --listen 127.0.0.1:0 --brokers "$BOOT" --threads 2 \
        --write-key ab_key=ab --data-dir "$OUT/data-$name" 2>"$OUT/$name.err" &
    pid=$!
    PIDS="$PIDS $pid"
    i=0
    while ! grep -q '"msg":"listening"' "$OUT/$name.err" && [ "$i" -lt 100 ]; do
        sleep 0.1
        i=$((i + 1))
    done
    port=$(grep '"msg":"listening"' "$OUT/$name.err" | head -n 1 | sed 's/.*"port":\([0-9]*\).*/\1/')
    [ -n "$port" ] || { echo "ab.sh: collector $name did not start:" >&2; tail -3 "$OUT/$name.err" >&2; exit 3; }
    eval "PORT_$name=$port PID_$name=$pid"
    NAMES="$NAMES $name"
done

FAILED=0
hz=$(getconf CLK_TCK)
r=1
while [ "$r" -le "$ROUNDS" ]; do
    for name in $NAMES; do
        eval "port=\$PORT_$name pid=\$PID_$name"
        c0=$(sed 's/.*) //' "/proc/$pid/stat" | awk '{print $12 + $13}')
        "$LOAD" --url "http://127.0.0.1:$port" --write-key ab_key --duration "$DURATION" \
            --connections "$CONNECTIONS" --batch 100 --format msgpack --rate max \
            --dup-rate "$DUP_RATE" --seed "$r" --quiet --report "$OUT/$name-$r.json" \
            >/dev/null 2>"$OUT/$name-$r.log" || FAILED=1
        c1=$(sed 's/.*) //' "/proc/$pid/stat" | awk '{print $12 + $13}')
        if [ -s "$OUT/$name-$r.json" ]; then
            jq -r --arg n "$name" --arg c0 "$c0" --arg c1 "$c1" --arg hz "$hz" \
                --arg load "$(cut -d' ' -f1 /proc/loadavg)" \
                '[$n, .events_per_sec, .latency_ms.p99,
                  (if .totals.events_ok > 0 then (($c1|tonumber) - ($c0|tonumber)) / ($hz|tonumber)
                     * 1e6 / .totals.events_ok else 0 end), $load] | @tsv' \
                "$OUT/$name-$r.json" >>"$OUT/runs.tsv"
        else
            FAILED=1
        fi
    done
    r=$((r + 1))
done

printf '%-12s %10s %8s %10s %8s   (median of %s rounds of %s s; load average per run in %s/runs.tsv)\n' \
    config events/s p99_ms col_us/ev ratio "$ROUNDS" "$DURATION" "$OUT"
base=''
for name in $NAMES; do
    med() { awk -F'\t' -v n="$name" -v c="$1" '$1 == n { print $c }' "$OUT/runs.tsv" | sort -g |
        awk '{ v[NR] = $1 } END { if (NR == 0) print 0; else if (NR % 2) print v[(NR + 1) / 2];
              else print (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
    ev=$(med 2)
    p99=$(med 3)
    cpu=$(med 4)
    [ -n "$base" ] || base=$ev
    awk -v n="$name" -v e="$ev" -v p="$p99" -v c="$cpu" -v b="$base" \
        'BEGIN { printf "%-12s %10.0f %8.2f %10.2f %8.3f\n", n, e, p, c, (b > 0 ? e / b : 0) }'
done
exit $FAILED
