#!/bin/sh
# loadtest_tls_*: sluice-load over HTTPS against the real collector running with `tls:` and a
# self-signed certificate made here by the openssl command (as support_tls.c makes them: EC
# P-256, CN and subjectAltName IP:127.0.0.1), and the sluice-mock-kafka helper. Loopback only;
# every wait is bounded.
#   verified  a verified run over HTTPS with --ca-file the certificate: every unique event sent
#             arrives exactly once, every request answered 200, one handshake per connection at
#             least and none failed.
#   wrong_ca  --ca-file another self-signed certificate: every handshake fails and is counted
#             (report totals.tls, conn_errors), sluice-load exits 3 (no request answered) with
#             a message naming the verify failure, no crash or sanitizer report, and the
#             collector still serves.
# Usage: tls_run.sh MODE SLUICE_LOAD SLUICE_COLLECTOR SLUICE_MOCK_KAFKA
set -u
MODE=$1 LOAD=$2 COLLECTOR=$3 MOCK=$4
DIR=$(mktemp -d /tmp/sluice-lt-tls-XXXXXX)
MOCK_PID= COL_PID=

cleanup() {
    [ -n "$COL_PID" ] && kill -TERM "$COL_PID" 2>/dev/null && wait "$COL_PID" 2>/dev/null
    exec 3>&- 2>/dev/null # EOF on its stdin ends the mock helper
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

make_cert() { # NAME CN
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
        -keyout "$DIR/$1.key" -out "$DIR/$1.crt" -days 2 -subj "/CN=$2" \
        -addext subjectAltName=IP:127.0.0.1 >/dev/null 2>&1 || fail "openssl req failed"
}
make_cert collector sluice-test
make_cert other someone-else
printf 'tls: {cert_file: %s/collector.crt, key_file: %s/collector.key}\n' "$DIR" "$DIR" \
    >"$DIR/tls.yaml"

mkfifo "$DIR/mock.in"
SLUICE_MOCK_LIFETIME=120 "$MOCK" 1 3 <"$DIR/mock.in" >"$DIR/mock.out" 2>"$DIR/mock.err" &
MOCK_PID=$!
exec 3>"$DIR/mock.in"
wait_for "$DIR/mock.out" ':' || fail "sluice-mock-kafka printed no bootstrap"
BOOT=$(head -1 "$DIR/mock.out")

"$COLLECTOR" --config "$DIR/tls.yaml" --listen 127.0.0.1:0 --brokers "$BOOT" \
    --write-key lt_key=loadtest 2>"$DIR/collector.err" &
COL_PID=$!
wait_for "$DIR/collector.err" '"msg":"listening"' || fail "collector did not start listening"
PORT=$(grep '"msg":"listening"' "$DIR/collector.err" | head -1 | sed 's/.*"port":\([0-9]*\).*/\1/')
URL=https://127.0.0.1:$PORT

num() { jq -r "($1) // \"-\"" "$DIR/report.json"; }
command -v jq >/dev/null 2>&1 || fail "jq is required"
sanitizer_clean() {
    ! grep -q -E 'AddressSanitizer|LeakSanitizer|runtime error:' "$DIR/load.err"
}

case $MODE in
verified)
    "$LOAD" --url "$URL" --ca-file "$DIR/collector.crt" --write-key lt_key --duration 3 \
        --rate 3000 --connections 4 --threads 2 --batch 50 --invalid-rate 0.05 --dup-rate 0.01 \
        --seed 7 --verify "$BOOT" --verify-timeout 30 --verify-quiet-ms 1000 --quiet \
        --report "$DIR/report.json" >"$DIR/load.out" 2>"$DIR/load.err"
    RC=$?
    cat "$DIR/load.out"
    sanitizer_clean || fail "sanitizer report in sluice-load's stderr"
    [ $RC -eq 0 ] || fail "sluice-load exited $RC (1 = verification mismatch)"
    SENT=$(num .totals.events_sent) OK=$(num .totals.events_ok)
    UNIQUE=$(num .verify.sent_unique) DELIVERED=$(num .verify.delivered)
    MISSING=$(num .verify.missing) DUPS=$(num .verify.duplicated) REJ=$(num .verify.rejected_ok)
    HS=$(num .totals.tls.handshakes) HSF=$(num .totals.tls.handshake_failures)
    [ "$(num .verify.ok)" = true ] || fail "verify not ok"
    [ "$UNIQUE" -gt 1000 ] || fail "only $UNIQUE unique events were answered 200"
    [ "$SENT" = "$OK" ] || fail "not every request was answered 200 ($OK of $SENT events)"
    [ "$UNIQUE" = "$DELIVERED" ] && [ "$MISSING" = 0 ] && [ "$DUPS" = 0 ] ||
        fail "delivered $DELIVERED of $UNIQUE (missing $MISSING, duplicated $DUPS)"
    [ "$REJ" -gt 0 ] || fail "no invalid event was found rejected with its reason"
    [ "$HS" -ge 4 ] && [ "$HSF" = 0 ] || fail "handshakes $HS (want >= 4), failed $HSF (want 0)"
    [ "$(num .totals.conn_errors)" = 0 ] || fail "connection errors over HTTPS"
    echo "PASS: over HTTPS ($HS handshakes) $UNIQUE unique events delivered exactly once," \
        "$REJ invalid ones rejected correctly"
    ;;
wrong_ca)
    "$LOAD" --url "$URL" --ca-file "$DIR/other.crt" --write-key lt_key --duration 2 \
        --connections 2 --quiet --report "$DIR/report.json" >"$DIR/load.out" 2>"$DIR/load.err"
    RC=$?
    cat "$DIR/load.out" "$DIR/load.err"
    sanitizer_clean || fail "sanitizer report in sluice-load's stderr"
    [ $RC -eq 3 ] || fail "sluice-load exited $RC (want 3: no request answered)"
    grep -q 'TLS handshake failures with https://127.0.0.1:.* (first: certificate verify failed' \
        "$DIR/load.err" || fail "no clear handshake failure message"
    HS=$(num .totals.tls.handshakes) HSF=$(num .totals.tls.handshake_failures)
    CE=$(num .totals.conn_errors)
    [ "$HS" = 0 ] || fail "$HS handshakes succeeded with the wrong CA"
    [ "$HSF" -ge 2 ] && [ "$CE" -ge "$HSF" ] ||
        fail "handshake failures $HSF (want >= 2), connection errors $CE (want >= failures)"
    case $(num .totals.tls.first_error) in
    "certificate verify failed: "*) ;;
    *) fail "first_error: $(num .totals.tls.first_error)" ;;
    esac
    [ "$(num .totals.requests_sent)" = 0 ] || fail "requests were sent without a handshake"
    # A plain http:// URL with --ca-file is a usage error (2), a missing CA file too.
    "$LOAD" --url "http://127.0.0.1:$PORT" --ca-file "$DIR/other.crt" --write-key lt_key \
        --duration 1 --quiet >/dev/null 2>"$DIR/usage.err"
    [ $? -eq 2 ] || fail "--ca-file with http:// is not a usage error"
    "$LOAD" --url "$URL" --ca-file "$DIR/none.crt" --write-key lt_key --duration 1 --quiet \
        >/dev/null 2>"$DIR/usage.err"
    RC=$?
    [ $RC -eq 2 ] && grep -q "none.crt: cannot load trusted certificates" "$DIR/usage.err" ||
        fail "missing --ca-file: exit $RC, $(cat "$DIR/usage.err")"
    kill -0 "$COL_PID" 2>/dev/null || fail "the collector died"
    echo "PASS: wrong CA: $HSF handshake failures counted ($CE connection errors), exit 3," \
        "message: $(grep 'TLS handshake failures' "$DIR/load.err")"
    ;;
*)
    fail "unknown mode $MODE"
    ;;
esac
