#!/bin/bash
# Quality gates, as CI runs them: quantized conversions of the fixture model against its
# f32 conversion on the fixture's eval tokens (-c 128, llama.cpp's second-half scoring),
# through the tools a user runs. Margins over the values measured when the gates were
# set are given beside each (the note of issue 5 has the full table).
# Usage: quality_test.sh BIN_DIR   (QPK_FIXTURES locates the fixtures; QPK_PPL_CHUNKS
# limits the chunks, for sanitizer builds)
set -u
bin=$1
fx=${QPK_FIXTURES:-}
if [ ! -d "$fx/qwen-tiny-a" ]; then
  echo "fixtures not found at '$fx'"
  [ "${CI:-}" = true ] && exit 1 || exit 77
fi
tmp=$(mktemp -d /tmp/qpk-quality-XXXXXX)
trap 'rm -rf "$tmp"' EXIT
chunks=()
[ -n "${QPK_PPL_CHUNKS:-}" ] && chunks=(--chunks "$QPK_PPL_CHUNKS")
fail=0

model=qwen-tiny-a
gate() { # gate NAME QCONVERT-ARGS... -- QVERIFY-GATES...   (on $model, against $tmp/f32.qpk)
  local name=$1 conv=() gates=()
  shift
  while [ "$1" != "--" ]; do conv+=("$1"); shift; done
  shift
  gates=("$@")
  "$bin/qconvert" -q "$fx/$model" -o "$tmp/q.qpk" "${conv[@]}" || { fail=1; return; }
  if "$bin/qverify" "$tmp/q.qpk" --ref "$tmp/f32.qpk" --tokens "$fx/tokens/eval_public.i32" -c 128 -q \
       "${chunks[@]}" "${gates[@]}" > "$tmp/out.txt" 2>&1; then
    echo "pass: $name ($(grep -E 'top-1|KL' "$tmp/out.txt" | tr -s ' ' | tr '\n' ';'))"
  else
    echo "FAIL: $name"; cat "$tmp/out.txt"; fail=1
  fi
}

"$bin/qconvert" -q "$fx/qwen-tiny-a" -o "$tmp/f32.qpk" --dtype f32 || exit 1
# int8 at every group size keeps top-1 at 99% or more (the issue's gate); measured 99.77% and
# KLD 1.0e-5 at g32, so the KLD gate has a 5x margin.
for g in 32 64 128; do
  gate "int8 g$g" --quant int8 --group $g -- --min-top1 99 --max-kld 5e-5
done
# int4 and int4s at g32 against regressions in the rules that choose scales: measured KLD
# about 2.0e-4 (int4) and 1.6e-4 (int4s), top-1 about 99%.
gate "int4 g32" --quant int4 --group 32 -- --max-kld 4e-4 --min-top1 98
gate "int4s g32" --quant int4s --group 32 -- --max-kld 3.2e-4 --min-top1 98

# Calibration on the outlier model (planted activation outliers; fixtures README), int4
# g32 and g128, 32 windows of 512 tokens of calib.txt tokenized by qconvert itself.
# Measured on the first 100 chunks (bench/calib_table.sh; the notes of issues 6 and 7):
#   g32:  RTN KLD 5.6e-3 (top-1 93.3%), GPTQ 1.0e-3 (97.9%), AWQ 2.3e-4 (99.1%)
#   g128: RTN KLD 5.9e-3 (top-1 93.3%), GPTQ 1.1e-3 (97.4%), AWQ 4.8e-4 (97.7%)
#   AWQ since it passes the float layer's outputs on (issue 24): g32 2.0e-4 (99.1%), g128
#   5.0e-4 (97.4%), under the same gates
#   AWQ+GPTQ (issue 15): g32 5.2e-5 (99.3%), g128 9.6e-5 (99.1%); passing the float layer's
#   outputs on (issue 24): g32 5.3e-5 (99.4%), g128 9.4e-5 (99.1%)
# The gates leave 2x margins and still demand that each method cut RTN's divergence at
# least 2.5x, and that AWQ+GPTQ beat both AWQ and GPTQ as measured; RTN's own gates only
# guard against regressions.
model=qwen-tiny-a-outlier
[ -n "${QPK_PPL_CHUNKS:-}" ] || chunks=(--chunks 100)
"$bin/qconvert" -q "$fx/$model" -o "$tmp/f32.qpk" --dtype f32 || exit 1
calib=(--quant int4 --calib "$fx/text/calib.txt" --calib-samples 32 --calib-len 512)
if [ -z "${QPK_PPL_CHUNKS:-}" ]; then
  gate "outlier int4 g32 rtn" --quant int4 --group 32 -- --max-kld 8e-3
  gate "outlier int4 g32 gptq" "${calib[@]}" --group 32 --method gptq -- --max-kld 2e-3 --min-top1 96.5
  gate "outlier int4 g32 awq" "${calib[@]}" --group 32 --method awq -- --max-kld 5e-4 --min-top1 98
  gate "outlier int4 g128 rtn" --quant int4 --group 128 -- --max-kld 8e-3
  gate "outlier int4 g128 gptq" "${calib[@]}" --group 128 --method gptq -- --max-kld 2.2e-3 --min-top1 96
  gate "outlier int4 g128 awq" "${calib[@]}" --group 128 --method awq -- --max-kld 1e-3 --min-top1 96.5
  gate "outlier int4 g32 awq+gptq" "${calib[@]}" --group 32 --method awq+gptq -- --max-kld 1.1e-4 --min-top1 98.5
  gate "outlier int4 g128 awq+gptq" "${calib[@]}" --group 128 --method awq+gptq -- --max-kld 2e-4 --min-top1 98
else # sanitizer builds: the same path on a small calibration, gated loosely
  calib=(--quant int4 --group 128 --calib "$fx/text/calib.txt" --calib-samples 4 --calib-len 128)
  gate "outlier int4 g128 gptq (small)" "${calib[@]}" --method gptq -- --max-kld 5e-3
  gate "outlier int4 g128 awq (small)" "${calib[@]}" --method awq -- --max-kld 5e-3
  gate "outlier int4 g128 awq+gptq (small)" "${calib[@]}" --method awq+gptq -- --max-kld 5e-3
fi
exit $fail
