#!/usr/bin/env bash
# Builds the libFuzzer targets (clang, -DSLUICE_FUZZ=ON), replays every seed corpus, then fuzzes
# each target for FUZZ_SECONDS (default 20) starting from its seeds. New inputs go to a scratch
# corpus under the build tree, never into the repository; a crash leaves its reproducer there
# (crash-*) and fails the run.
#   tests/fuzz/run.sh [BUILD_DIR]        (default ./build-fuzz)
#   FUZZ_SECONDS=600 tests/fuzz/run.sh   (a longer run; one target at a time, one core)
#   FUZZ_TARGETS="body http" ...         (a subset)
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
dir=${1:-$root/build-fuzz}
secs=${FUZZ_SECONDS:-20}
targets=${FUZZ_TARGETS:-proto_decode body auth config http spool dedup_snapshot pql_snapshot stream_dedup_restore}
jobs=${JOBS:-$(nproc)}
export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=0}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}

CC=clang CXX=clang++ cmake -S "$root" -B "$dir" -DCMAKE_BUILD_TYPE=Release -DSLUICE_FUZZ=ON \
  -DSLUICE_WERROR=ON >/dev/null
bins=()
for t in $targets; do bins+=("fuzz_$t"); done
cmake --build "$dir" -j"$jobs" --target "${bins[@]}"

failed=0
for t in $targets; do
  bin=$dir/tests/fuzz/fuzz_$t
  seeds=$root/tests/fuzz/corpus/$t
  work=$dir/fuzz-work/$t
  mkdir -p "$work"
  echo "==== fuzz_$t: replay $(find "$seeds" -type f | wc -l) seeds"
  if ! "$bin" -runs=0 "$seeds" >"$work/replay.log" 2>&1; then
    tail -40 "$work/replay.log"
    failed=1
    continue
  fi
  echo "==== fuzz_$t: fuzz ${secs}s"
  # -rss_limit_mb: a target that grows without bound fails the run too.
  dict=()
  if [ -f "$root/tests/fuzz/$t.dict" ]; then dict=(-dict="$root/tests/fuzz/$t.dict"); fi
  if "$bin" -max_total_time="$secs" -rss_limit_mb=2048 -timeout=20 -max_len=65536 "${dict[@]}" \
    -artifact_prefix="$work/" "$work" "$seeds" >"$work/fuzz.log" 2>&1; then
    grep -E '^#[0-9]+.*(DONE|pulse)' "$work/fuzz.log" | tail -1 || true
  else
    tail -60 "$work/fuzz.log"
    failed=1
  fi
done
exit $failed
