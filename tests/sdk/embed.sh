#!/usr/bin/env bash
# embed.sh MODE BUILD_DIR WORK_DIR: builds sdk/examples the way an application would, into
# WORK_DIR/example (and WORK_DIR/example-cc for pkg-config); prints their paths, one a line;
# test_embed.c then runs each against the real collector. MODE:
#   pkg-config    cmake --install BUILD_DIR into a temp prefix; cc with `pkg-config --cflags
#                 --libs sluice`, and the example's CMake project with SLUICE_LINK=pkg-config
#   find_package  install; both libraries must define only sluice_* globals (nm) and need no
#                 msgpack-c; the example's CMake project with find_package(sluice)
#   static        install, remove libsluice.so* (a static-only install); cc with
#                 `pkg-config --static --cflags --libs sluice`; the result must not need libsluice.so
#   subdirectory  the example's project with add_subdirectory(<repository root>)
#   sdk-only      configure the repository with -DSLUICE_SDK_ONLY=ON in a fresh build dir: no
#                 package other than curl, zstd, zlib (and pthreads) may be looked up; build,
#                 install, then the example with find_package
# Environment: CC (compiler), SAN_FLAGS (sanitizer flags of BUILD_DIR, also used for the example).
set -euo pipefail
mode=$1 build=$2 work=$3
src=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cc=${CC:-cc}
san=${SAN_FLAGS:-}
rm -rf "$work"
mkdir -p "$work"
prefix=$work/prefix
example=$src/sdk/examples

install_into() { cmake --install "$1" --prefix "$prefix" >"$work/install.log"; }
pcpath() { find "$prefix" -name sluice.pc -printf '%h\n' | head -1; }
cmake_example() {
  cmake -S "$example" -B "$work/app" -DCMAKE_C_COMPILER="$cc" -DCMAKE_C_FLAGS="$san" \
    -DCMAKE_EXE_LINKER_FLAGS="$san" -DCMAKE_BUILD_TYPE=Release "$@" >"$work/app-configure.log"
  cmake --build "$work/app" -j2 >"$work/app-build.log"
  cp "$work/app/example" "$work/example"
}

case $mode in
pkg-config)
  install_into "$build"
  export PKG_CONFIG_PATH=$(pcpath)
  # shellcheck disable=SC2046
  $cc $san -o "$work/example-cc" "$example/example.c" $(pkg-config --cflags --libs sluice) \
    -Wl,-rpath,"$(pkg-config --variable=libdir sluice)"
  cmake_example -DSLUICE_LINK=pkg-config
  ;;
find_package)
  install_into "$build"
  # Both installed libraries define only sluice_* globals and need nothing of msgpack-c.
  lib=$(dirname "$(find "$prefix" -name 'libsluice.a' | head -1)")
  if nm -g --defined-only "$lib/libsluice.a" | grep -E '^[0-9a-f]+ [A-Z] ' | grep -v ' sluice_' ||
    nm -D --defined-only "$lib/libsluice.so" | grep -E '^[0-9a-f]+ [A-Z] ' | grep -v ' sluice_' ||
    nm -u "$lib/libsluice.a" | grep -i msgpack ||
    readelf -d "$lib/libsluice.so" | grep -i 'NEEDED.*msgpack'; then
    echo "embed.sh: libsluice exports or needs more than sluice_* (above)" >&2
    exit 1
  fi
  cmake_example -DSLUICE_LINK=find_package -DCMAKE_PREFIX_PATH="$prefix"
  ;;
static)
  install_into "$build"
  find "$prefix" -name 'libsluice.so*' -delete
  export PKG_CONFIG_PATH=$(pcpath)
  # shellcheck disable=SC2046
  $cc $san -o "$work/example" "$example/example.c" $(pkg-config --static --cflags --libs sluice)
  if readelf -d "$work/example" | grep -q 'libsluice'; then
    echo "embed.sh: the static build still needs libsluice.so" >&2
    exit 1
  fi
  ;;
subdirectory)
  cmake_example -DSLUICE_LINK=subdirectory -DSLUICE_SOURCE_DIR="$src"
  ;;
sdk-only)
  cmake -S "$src" -B "$work/sdk" -DCMAKE_C_COMPILER="$cc" -DSLUICE_SDK_ONLY=ON \
    -DCMAKE_BUILD_TYPE=Release >"$work/sdk-configure.log"
  # Only the SDK's packages were looked up: nothing of the collector's or the tests'.
  for var in LIBUV RDKAFKA MSGPACK YAML XXHASH JANSSON CMOCKA LLHTTP; do
    if grep -q "^${var}_" "$work/sdk/CMakeCache.txt"; then
      echo "embed.sh: SDK-only configure looked up $var" >&2
      exit 1
    fi
  done
  cmake --build "$work/sdk" -j2 >"$work/sdk-build.log"
  if [ -e "$work/sdk/collector" ] || [ -e "$work/sdk/tests" ]; then
    echo "embed.sh: SDK-only build configured more than the SDK" >&2
    exit 1
  fi
  install_into "$work/sdk"
  san=""
  cmake_example -DSLUICE_LINK=find_package -DCMAKE_PREFIX_PATH="$prefix"
  ;;
*)
  echo "embed.sh: unknown mode $mode" >&2
  exit 2
  ;;
esac
ls "$work"/example*
