#!/bin/sh
# sources_listed.sh SOURCE_DIR — sources are listed in CMake, never globbed, so a file that is
# in a folder but not in its CMakeLists.txt would silently not be built or tested. This check
# (ctest build_sources_listed) fails on any such file: every tests/<area>/test_*.c and every .c
# of collector/, proto/, proto/base/, sdk/ and loadtest/ must be named in its folder's
# CMakeLists.txt.
set -u
root=${1:?usage: sources_listed.sh SOURCE_DIR}
missing=0
check() { # check DIR FILE...
    dir=$1
    shift
    for f in "$@"; do
        [ -e "$f" ] || continue
        rel=${f#"$root"/}
        base=$(basename "$f" .c)
        if ! grep -Eq "(^|[^A-Za-z0-9_])$base(\\.c)?([^A-Za-z0-9_.]|$)" "$dir/CMakeLists.txt"; then
            echo "not listed in $dir/CMakeLists.txt: $rel" >&2
            missing=1
        fi
    done
}
for area in base collector integration loadtest proto sdk stream; do
    check "$root/tests/$area" "$root/tests/$area"/test_*.c
done
for d in collector proto proto/base sdk loadtest; do
    check "$root/$d" "$root/$d"/*.c
done
[ "$missing" -eq 0 ] && echo "every source is listed"
exit "$missing"
