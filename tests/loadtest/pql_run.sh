#!/bin/sh
# loadtest_pql_run: sluice-load's scripted PQL accounts (pql-hot/warm/watching-<run>) against the
# real collector running SPEC §6's example rules, through sluice-mock-kafka. Passes when
# --verify --expect-pql finds each account signalled at exactly its scripted tier, every signal
# naming 1..5 of that account's own users, and every event delivered once.
# Usage: pql_run.sh SLUICE_LOAD SLUICE_COLLECTOR SLUICE_MOCK_KAFKA
set -u
LOAD=$1 COLLECTOR=$2 MOCK=$3
DIR=$(mktemp -d /tmp/sluice-lt-pql-XXXXXX)
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

cat >"$DIR/sluice.yaml" <<'YAML'
pql:
  window: 7d
  tiers: {hot: 80, warm: 50, watching: 30}
  rules:
    - {name: team_of_seven,   metric: active_users,    at_least: 7,     points: 40}
    - {name: heavy_usage,     metric: events,          at_least: 10000, points: 20}
    - {name: surge,           metric: events_velocity, recent: 24h, at_least: 3.0, min_recent: 200, points: 25}
    - {name: new_user_surge,  metric: users_velocity,  recent: 24h, at_least: 2.0, min_recent: 3, points: 20}
    - {name: regular_use,     metric: active_days,     at_least: 5,     points: 20}
    - {name: pricing_interest, metric: event_seen, event: "Pricing Page Viewed", points: 10}
    - {name: legal_review,    metric: event_seen, event: ["Terms Viewed", "Privacy Policy Viewed"], points: 15}
YAML

mkfifo "$DIR/mock.in"
SLUICE_MOCK_LIFETIME=120 "$MOCK" 1 3 <"$DIR/mock.in" >"$DIR/mock.out" 2>"$DIR/mock.err" &
MOCK_PID=$!
exec 3>"$DIR/mock.in"
wait_for "$DIR/mock.out" ':' || fail "sluice-mock-kafka printed no bootstrap"
BOOT=$(head -1 "$DIR/mock.out")

"$COLLECTOR" --config "$DIR/sluice.yaml" --listen 127.0.0.1:0 --brokers "$BOOT" \
    --data-dir "$DIR/data" --write-key lt_key=loadtest 2>"$DIR/collector.err" &
COL_PID=$!
wait_for "$DIR/collector.err" '"msg":"listening"' || fail "collector did not start listening"
PORT=$(grep '"msg":"listening"' "$DIR/collector.err" | head -1 | sed 's/.*"port":\([0-9]*\).*/\1/')

"$LOAD" --url "http://127.0.0.1:$PORT" --write-key lt_key --duration 2 --rate 2000 \
    --connections 4 --batch 50 --dup-rate 0 --seed 11 --expect-pql \
    --verify "$BOOT" --verify-timeout 30 --verify-quiet-ms 1000 --quiet \
    --report "$DIR/report.json" >"$DIR/load.out" 2>"$DIR/load.err"
RC=$?
cat "$DIR/load.out"
[ $RC -eq 0 ] || fail "sluice-load exited $RC (1 = verification mismatch)"
grep -q '"pql_ok": true' "$DIR/report.json" || fail "pql_ok is not true in the report"
echo "PASS: the scripted accounts were signalled at their tiers with their own users"
