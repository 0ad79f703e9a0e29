#!/bin/bash
# Quality of every quantized type and group size on the fixture models, against their
# f32 conversions, as a markdown table: qverify on the fixture's eval tokens with -c 128
# (llama.cpp's convention: the second half of each chunk scored, full vocabulary KLD).
#
# Usage: bench/quality_table.sh BIN_DIR FIXTURES_DIR [WORK_DIR] [extra qconvert args...]
set -eu
bin=$1 fx=$2 work=${3:-/tmp/qpk-quality}
shift 3 2>/dev/null || shift $#
mkdir -p "$work"
val() { grep -m1 "\"$1\":" | sed -e 's/.*: *//' -e 's/,$//'; }
echo "| model | type | G | mean KLD | p99 KLD | top-1 % | ppl | ppl f32 | change | file MB | bpw |"
echo "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
for m in qwen-tiny-a qwen-tiny-a-outlier; do
  "$bin/qconvert" -q "$fx/$m" -o "$work/$m-f32.qpk" --dtype f32
  for t in int8 int4 int4s; do
    for g in 32 64 128; do
      out="$work/$m-$t-g$g.qpk"
      "$bin/qconvert" -q "$fx/$m" -o "$out" --quant "$t" --group "$g" "$@"
      j=$("$bin/qverify" "$out" --ref "$work/$m-f32.qpk" --tokens "$fx/tokens/eval_public.i32" -c 128 --json)
      size=$(stat -c %s "$out")
      # Bits per weight of the whole file's tensors: 8 x tensor bytes / weights (qinspect's table rows).
      bpw=$("$bin/qinspect" "$out" | awk '/^[0-9]+ / && match($0, /\[[0-9, ]+\]/) {
               n = split(substr($0, RSTART + 1, RLENGTH - 2), d, ", "); p = 1; for (i = 1; i <= n; i++) p *= d[i];
               w += p; b += $(NF - 1) } END { printf "%.3f", 8 * b / w }')
      printf "| %s | %s | %s | %.3g | %.3g | %.2f | %.2f | %.2f | %+.3f%% | %.2f | %.3f |\n" "$m" "$t" "$g" \
        "$(echo "$j" | val kld_mean)" "$(echo "$j" | val kld_p99)" "$(echo "$j" | val top1_pct)" \
        "$(echo "$j" | val ppl)" "$(echo "$j" | val ppl_ref)" "$(echo "$j" | awk -F': *' '/"dppl_rel"/ {gsub(",", "", $2); print 100 * $2}')" \
        "$(awk -v s="$size" 'BEGIN { print s / 1e6 }')" "$bpw"
      rm -f "$out"
    done
  done
done
