#!/bin/sh
# loadtest_verified_run: a short verified run of sluice-load against the real collector and the
# sluice-mock-kafka helper. Fails if anything is lost, duplicated, unexpected, rejected for the
# wrong reason, or if the run delivered nothing at all (an empty run would verify vacuously).
# Mode "fleet" (loadtest_fleet_verified_run): two collectors on the same cluster, one run with
# `--url A --url B`; the same checks, plus the report's "urls" array (both collectors took
# events, the per-url counts add up to the totals) and the usage errors of a repeated --url
# (a malformed second one, mixed http/https, the same one twice, fewer connections than urls).
# Usage: verified_run.sh SLUICE_LOAD SLUICE_COLLECTOR SLUICE_MOCK_KAFKA [fleet]
set -u
LOAD=$1 COLLECTOR=$2 MOCK=$3 MODE=${4:-single}
DIR=$(mktemp -d /tmp/sluice-lt-XXXXXX)
MOCK_PID= COL_PID= COL2_PID=

cleanup() {
    [ -n "$COL_PID" ] && kill -TERM "$COL_PID" 2>/dev/null && wait "$COL_PID" 2>/dev/null
    [ -n "$COL2_PID" ] && kill -TERM "$COL2_PID" 2>/dev/null && wait "$COL2_PID" 2>/dev/null
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
URLS="--url http://127.0.0.1:$PORT"

if [ "$MODE" = fleet ]; then
    command -v jq >/dev/null 2>&1 || fail "jq is required"
    "$COLLECTOR" --listen 127.0.0.1:0 --brokers "$BOOT" --write-key lt_key=loadtest \
        --data-dir "$DIR/data2" 2>"$DIR/collector2.err" &
    COL2_PID=$!
    wait_for "$DIR/collector2.err" '"msg":"listening"' || fail "collector 2 did not start listening"
    PORT2=$(grep '"msg":"listening"' "$DIR/collector2.err" | head -1 |
        sed 's/.*"port":\([0-9]*\).*/\1/')
    URLS="$URLS --url http://127.0.0.1:$PORT2"
    # usage errors (exit 2) naming the flag and which --url
    usage() { # want-text args...
        want=$1
        shift
        "$LOAD" --write-key lt_key --duration 1 --quiet "$@" >/dev/null 2>"$DIR/usage.out"
        rc=$?
        [ $rc -eq 2 ] && grep -q -- "$want" "$DIR/usage.out" ||
            fail "sluice-load $*: exit $rc (want 2), stderr: $(cat "$DIR/usage.out") (want: $want)"
    }
    usage "bad --url (the second of 2): http//127.0.0.1:1" \
        --url "http://127.0.0.1:$PORT" --url "http//127.0.0.1:1"
    usage "bad --url (the second of 2): http://127.0.0.1:99999" \
        --url "http://127.0.0.1:$PORT" --url "http://127.0.0.1:99999"
    usage "mixing http and https is not supported" \
        --url "http://127.0.0.1:$PORT" --url "https://127.0.0.1:$PORT2"
    usage "bad --url: http://127.0.0.1:$PORT given twice" \
        --url "http://127.0.0.1:$PORT" --url "http://127.0.0.1:$PORT"
    usage "bad --connections (at least --threads and the number of --url)" \
        --url "http://127.0.0.1:$PORT" --url "http://127.0.0.1:$PORT2" --connections 1
fi

# shellcheck disable=SC2086 # URLS is a list of flags
"$LOAD" $URLS --write-key lt_key --duration 3 --rate 3000 \
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
if [ "$MODE" = fleet ]; then
    jn() { jq -r "$1" "$DIR/report.json"; }
    [ "$(jn '.urls | length')" = 2 ] || fail "the report does not list both urls"
    [ "$(jn '.urls[0].url')" = "http://127.0.0.1:$PORT" ] &&
        [ "$(jn '.urls[1].url')" = "http://127.0.0.1:$PORT2" ] || fail "urls: $(jn '.urls')"
    [ "$(jn '.urls[0].events_ok')" -gt 0 ] && [ "$(jn '.urls[1].events_ok')" -gt 0 ] ||
        fail "a collector took no events: $(jn '.urls')"
    [ "$(jn '.urls[0].events_ok + .urls[1].events_ok')" = "$OK" ] &&
        [ "$(jn '.urls[0].requests_sent + .urls[1].requests_sent')" = "$(jn .totals.requests_sent)" ] ||
        fail "per-url counts do not add up: $(jn '.urls')"
    [ "$(jn '.urls[0].connections')" = 2 ] && [ "$(jn '.urls[1].connections')" = 2 ] ||
        fail "connections not spread 2/2: $(jn '.urls')"
    grep -q "url 2 " "$DIR/load.out" || fail "the summary has no per-url line"
    kill -0 "$COL2_PID" 2>/dev/null || fail "collector 2 died"
    echo "PASS (two collectors): $(jn '.urls[0].events_ok') + $(jn '.urls[1].events_ok') events"
fi
echo "PASS: $UNIQUE unique events delivered exactly once, $REJ invalid ones rejected correctly"
