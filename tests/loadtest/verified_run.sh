#!/bin/sh
# loadtest_verified_run: a short verified run of sluice-load against the real collector and the
# sluice-mock-kafka helper. Fails if anything is lost, duplicated, unexpected, rejected for the
# wrong reason, or if the run delivered nothing at all (an empty run would verify vacuously).
# Usage: verified_run.sh SLUICE_LOAD SLUICE_COLLECTOR SLUICE_MOCK_KAFKA
set -u
LOAD=$1 COLLECTOR=$2 MOCK=$3
DIR=$(mktemp -d /tmp/sluice-lt-XXXXXX)
MOCK_PID= COL_PID=

cleanup() {
    [ -n "$COL_PID" ] && kill -TERM "$COL_PID" 2>/dev/null && wait "$COL_PID" 2>/dev/null
    exec 3>&- 2>/dev/null            # EOF on its stdin ends the mock helper
    [ -n "$MOCK_PID" ] && wait "$MOCK_PID" 2>/dev/null
    rm -rf "$DIR"
}
trap cleanup EXIT INT TERM
fail() { echo "FAIL: $*" >&2; for f in "$DIR"/*.err; do echo "--- $f" >&2; tail -20 "$f" >&2; done; exit 1; }

# waits up to 10 s for a line matching $2 in file $1
wait_for() {
    i=0
    while [ $i -lt 100 ]; do
        grep -q "$2" "$1" 2>/dev/null && return 0
        sleep 0.1; i=$((i + 1))
    done
    return 1
}

mkfifo "$DIR/mock.in"
SLUICE_MOCK_LIFETIME=120 "$MOCK" 1 3 <"$DIR/mock.in" >"$DIR/mock.out" 2>"$DIR/mock.err" &
MOCK_PID=$!
exec 3>"$DIR/mock.in"
wait_for "$DIR/mock.out" ':' || fail "sluice-mock-kafka printed no bootstrap"
BOOT=$(head -1 "$DIR/mock.out")

"$COLLECTOR" --listen 127.0.0.1:0 --brokers "$BOOT" --write-key lt_key=loadtest \
    2>"$DIR/collector.err" &
COL_PID=$!
wait_for "$DIR/collector.err" '"msg":"listening"' || fail "collector did not start listening"
PORT=$(grep '"msg":"listening"' "$DIR/collector.err" | head -1 | sed 's/.*"port":\([0-9]*\).*/\1/')

"$LOAD" --url "http://127.0.0.1:$PORT" --write-key lt_key --duration 3 --rate 3000 \
    --connections 4 --threads 2 --batch 50 --invalid-rate 0.05 --dup-rate 0 --seed 7 \
    --verify "$BOOT" --verify-timeout 30 --verify-quiet-ms 1000 --quiet \
    --report "$DIR/report.json" >"$DIR/load.out" 2>"$DIR/load.err"
RC=$?
cat "$DIR/load.out"
[ $RC -eq 0 ] || fail "sluice-load exited $RC (1 = verification mismatch)"

num() { grep -o "\"$1\": [0-9]*" "$DIR/report.json" | head -1 | sed 's/.*: //'; }
SENT=$(num events_sent) OK=$(num events_ok) UNIQUE=$(num sent_unique) DELIVERED=$(num delivered)
REJ=$(num rejected_ok)
[ "${UNIQUE:-0}" -gt 1000 ] || fail "only ${UNIQUE:-0} unique events were answered 200"
[ "$SENT" = "$OK" ] || fail "not every request was answered 200 ($OK of $SENT events)"
[ "$UNIQUE" = "$DELIVERED" ] || fail "delivered $DELIVERED of $UNIQUE"
[ "${REJ:-0}" -gt 0 ] || fail "no invalid event was found rejected with its reason"
echo "PASS: $UNIQUE unique events delivered exactly once, $REJ invalid ones rejected correctly"
