#!/usr/bin/env bash
# The README's test command, and what CI runs: every check a change must pass.
#   1. gcc, Release: build everything, run every ctest test (unit, integration, ...)
#   2. clang, -Werror: build everything, proving the tree is warning-free with clang too
#   3. gcc, Debug = ASan+UBSan: build everything, run every ctest test again
#   4. gcc, Debug + ThreadSanitizer: build and run the tests known TSan-clean ($tsan_tests
#      minus $tsan_exclude: the SDK's, and the collector unit tests that do not start
#      librdkafka's mock cluster, whose uninstrumented threads crash under TSan)
#   5. clang-format --dry-run --Werror over our .c/.h files
#   6. clang libFuzzer (tests/fuzz/run.sh): build the fuzz targets, replay every seed corpus,
#      fuzz each target for $FUZZ_SECONDS (default 20) seconds
# Every step runs even when an earlier one failed; the script ends with a summary and exits
# non-zero if any step failed. Build trees go to $SLUICE_BUILD_ROOT (default ./build-ci).
# JOBS sets build and test parallelism (default: the number of CPUs).
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
out=${SLUICE_BUILD_ROOT:-$root/build-ci}
jobs=${JOBS:-$(nproc)}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}
export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=0}

summary=()
failed=0
start=$(date +%s)

step() {
  local name=$1
  shift
  local t0
  t0=$(date +%s)
  printf '\n==== %s\n' "$name"
  if "$@"; then
    summary+=("PASS  $name ($(($(date +%s) - t0)) s)")
  else
    summary+=("FAIL  $name ($(($(date +%s) - t0)) s)")
    failed=1
  fi
}

build_and_test() { # compiler build-type dir [test]
  local cc=$1 type=$2 dir=$3 run_tests=${4:-}
  CC=$cc CXX=$([ "$cc" = clang ] && echo clang++ || echo g++) cmake -S "$root" -B "$dir" -DCMAKE_BUILD_TYPE="$type" -DSLUICE_WERROR=ON >/dev/null &&
    cmake --build "$dir" -j"$jobs" || return 1
  if [ -n "$run_tests" ]; then
    # ctest's own summary ("100% tests passed, 0 tests failed out of N") is the result line.
    ctest --test-dir "$dir" --output-on-failure -j"$jobs" --timeout 300
  fi
}

# Tests run under TSan; each test's name is its executable's target name.
tsan_tests='^(sdk_|collector_test_)'
tsan_exclude='^collector_test_(kafka_out|ingest|http_conn|server|spool)$'

tsan_build_and_test() { # dir
  local dir=$1 targets
  CC=gcc cmake -S "$root" -B "$dir" -DCMAKE_BUILD_TYPE=Debug -DSLUICE_TSAN=ON \
    -DSLUICE_WERROR=ON >/dev/null || return 1
  # Only the executables of the selected tests are built.
  mapfile -t targets < <(ctest --test-dir "$dir" -N -R "$tsan_tests" -E "$tsan_exclude" 2>/dev/null |
    sed -n 's/^ *Test *#[0-9]*: *//p')
  if [ ${#targets[@]} -eq 0 ]; then
    echo "no test matches $tsan_tests"
    return 1
  fi
  echo "TSan targets: ${targets[*]}"
  cmake --build "$dir" -j"$jobs" --target "${targets[@]}" || return 1
  TSAN_OPTIONS=${TSAN_OPTIONS:-halt_on_error=1:second_deadlock_stack=1} \
    ctest --test-dir "$dir" --output-on-failure -j"$jobs" --timeout 300 -R "$tsan_tests" \
    -E "$tsan_exclude"
}

check_format() {
  local files
  mapfile -t files < <(cd "$root" && find include proto collector sdk loadtest tests \
    \( -name '*.c' -o -name '*.h' \) -print 2>/dev/null | sort)
  echo "clang-format: ${#files[@]} files"
  (cd "$root" && clang-format --dry-run --Werror "${files[@]}")
}

step "gcc Release: build + ctest" build_and_test gcc Release "$out/gcc-release" test
step "clang Release: build with -Werror" build_and_test clang Release "$out/clang-release"
step "gcc Debug (ASan+UBSan): build + ctest" build_and_test gcc Debug "$out/gcc-debug" test
step "gcc TSan: build + concurrency tests" tsan_build_and_test "$out/gcc-tsan"
step "clang-format --dry-run --Werror" check_format
step "clang libFuzzer: replay corpora + ${FUZZ_SECONDS:-20} s per target" \
  env JOBS="$jobs" "$root/tests/fuzz/run.sh" "$out/clang-fuzz"

printf '\n==== summary (%d s)\n' "$(($(date +%s) - start))"
printf '%s\n' "${summary[@]}"
exit $failed
