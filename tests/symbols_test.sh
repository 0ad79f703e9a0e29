#!/bin/bash
# The exported API is the documented API: the dynamic symbols libqpk.so defines are
# exactly the functions its installed headers declare with QPK_API (outside their
# QPK_STATIC_LINKING_ONLY sections), nothing more and nothing less.
# Usage: symbols_test.sh BUILD_DIR SOURCE_DIR
set -u
build=$1 src=$2
lib=$(ls "$build"/libqpk.so.*.*.* 2>/dev/null | head -1)
[ -n "$lib" ] || { echo "FAIL: no libqpk.so in $build"; exit 1; }
tmp=$(mktemp -d /tmp/qpk-symbols-XXXXXX)
trap 'rm -rf "$tmp"' EXIT
nm -D --defined-only "$lib" | awk '$2 ~ /^[TDRBWV]$/ {print $3}' | sort -u > "$tmp/exported"
# Each header as a user sees it (no experimental section), declarations marked.
for h in "$src"/include/qpk/*.h; do
  ${CC:-cc} -E -P -DQPK_API=@QPK_API@ -I"$src/include" "$h" || { echo "FAIL: $h does not preprocess"; exit 1; }
done | tr '\n' ' ' | grep -o '@QPK_API@[^;{]*' | sed -E 's/\(.*//' | grep -oE '[A-Za-z_][A-Za-z0-9_]*$' |
  sort -u > "$tmp/declared"
extra=$(comm -23 "$tmp/exported" "$tmp/declared")
missing=$(comm -13 "$tmp/exported" "$tmp/declared")
fail=0
[ -z "$extra" ] || { echo "FAIL: exported but declared in no installed header: $(echo $extra)"; fail=1; }
[ -z "$missing" ] || { echo "FAIL: declared QPK_API but not exported: $(echo $missing)"; fail=1; }
n=$(wc -l < "$tmp/declared")
[ "$n" -gt 100 ] || { echo "FAIL: only $n declarations found: the header scan is broken"; fail=1; }
if [ $fail = 0 ]; then echo "1 passed, 0 failed ($n symbols exported, each declared)"; else echo "0 passed, 1 failed"; fi
exit $fail
