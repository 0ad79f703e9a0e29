#!/bin/bash
# One kernel table against another revision's, call by call in one process (bench/kernels_ab.c):
# REV's quant/kernels_avx2.c is compiled beside QPK_BUILD's library with its tables renamed.
# Needs a REV whose kernels_avx2.c builds against this tree's quant headers (a nearby one).
# Usage: bench/kernels_ab.sh QPK_BUILD [REV (default HEAD)] [reps (default 40)]
set -eu
qb=$(cd "$1" && pwd) rev=${2:-HEAD} reps=${3:-40}
src=$(cd "$(dirname "$0")/.." && pwd)
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
git -C "$src" show "$rev:quant/kernels_avx2.c" > "$tmp/kernels_rev.c"
flags=(-O2 -std=c11 -DNDEBUG -DQPK_STATIC_LINKING_ONLY -D_GNU_SOURCE -I"$src/include" -I"$src/format" -I"$src/quant")
cc "${flags[@]}" -mavx2 -mfma -mf16c -Dqpk_kernels_avx2_table=qpk_kernels_avx2_table_ab \
  -Dqpk_kernels_avx512_table=qpk_kernels_avx512_table_ab \
  -Dqpk_kernels_avx512vbmi_table=qpk_kernels_avx512vbmi_table_ab -c "$tmp/kernels_rev.c" -o "$tmp/rev.o"
cc "${flags[@]}" -I"$src/bench" "$src/bench/kernels_ab.c" "$src/bench/limits.c" "$tmp/rev.o" "$qb/libqpk.a" \
  -lz -lcjson -lxxhash -lm -lpthread -o "$tmp/kernels_ab"
changes=$(git -C "$src" diff --quiet HEAD -- quant || echo " with uncommitted changes")
echo "machine: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')"
echo "this: $(git -C "$src" rev-parse --short HEAD)$changes (QPK_BUILD's library);" \
  "other: $(git -C "$src" rev-parse --short "$rev")"
"$tmp/kernels_ab" "$reps"
