#!/bin/bash
# GPTQ and AWQ at int4 g128 on the Qwen1.5-0.5B-shaped model with 32 x 512 calibration
# tokens: wall time per phase (from qconvert's summary) and peak memory (max RSS,
# which counts the mapped model's pages too, and the anonymous part, qpk's own).
# Usage: bench/bench_calibrate.sh BIN_DIR MODEL_DIR CALIB_TOKENS.i32 [samples] [len]
set -eu
bin=$1 model=$2 calib=$3 samples=${4:-32} len=${5:-512}
out=$(mktemp -d /tmp/qpk-calib-XXXXXX)
trap 'rm -rf "$out"' EXIT
for method in gptq awq; do
  for extra in "" "--act-order"; do
    [ "$method" = awq ] && [ -n "$extra" ] && continue
    log="$out/log"
    /usr/bin/time -f "%e %M" -o "$out/time" "$bin/qconvert" "$model" -o "$out/q.qpk" --quant int4 --group 128 \
      --method "$method" $extra --calib-tokens "$calib" --calib-samples "$samples" --calib-len "$len" 2> "$log"
    read -r wall rss < "$out/time"
    phases=$(grep -o 'statistics.*' "$log" || true)
    printf "%-5s %-12s wall %7.1f s  max RSS %6.0f MB  (%s)\n" "$method" "${extra:-}" "$wall" \
      "$(awk "BEGIN { print $rss / 1024 }")" "$phases"
  done
done
