#!/bin/bash
# RTN against calibrated quantization (GPTQ, GPTQ with act-order, AWQ) on the outlier
# fixture, as a markdown table: qverify against the f32 conversion on the fixture's eval
# tokens, -c 128, the first CHUNKS chunks (the CI gates of tests/quality_test.sh use 100).
# Calibration: calib.txt through the model's tokenizer, 32 windows of 512 tokens, seed 0.
#
# Usage: bench/calib_table.sh BIN_DIR FIXTURES_DIR [CHUNKS] [WORK_DIR]
set -eu
bin=$1 fx=$2 chunks=${3:-100} work=${4:-/tmp/qpk-calib-table}
m=qwen-tiny-a-outlier
mkdir -p "$work"
val() { grep -m1 "\"$1\":" | sed -e 's/.*: *//' -e 's/,$//'; }
"$bin/qconvert" -q "$fx/$m" -o "$work/f32.qpk" --dtype f32
echo "| type | G | method | mean KLD | p99 KLD | top-1 % | ppl | ppl f32 | convert s |"
echo "|---|---:|---|---:|---:|---:|---:|---:|---:|"
for cfg in "int4 32" "int4 64" "int4 128" "int4s 32" "int4s 64" "int4s 128" "int8 128"; do
  set -- $cfg
  for method in rtn gptq "gptq --act-order" awq; do
    args=(--quant "$1" --group "$2" --method $method)
    [ "$method" != rtn ] && args+=(--calib "$fx/text/calib.txt" --calib-samples 32 --calib-len 512)
    t0=$(date +%s.%N)
    "$bin/qconvert" -q "$fx/$m" -o "$work/q.qpk" "${args[@]}"
    t1=$(date +%s.%N)
    j=$("$bin/qverify" "$work/q.qpk" --ref "$work/f32.qpk" --tokens "$fx/tokens/eval_public.i32" -c 128 \
         --chunks "$chunks" --json)
    printf "| %s | %s | %s | %.3g | %.3g | %.2f | %.2f | %.2f | %.1f |\n" "$1" "$2" "$method" \
      "$(echo "$j" | val kld_mean)" "$(echo "$j" | val kld_p99)" "$(echo "$j" | val top1_pct)" \
      "$(echo "$j" | val ppl)" "$(echo "$j" | val ppl_ref)" "$(awk -v a="$t0" -v b="$t1" 'BEGIN { print b - a }')"
  done
done
rm -f "$work/q.qpk" "$work/f32.qpk"
