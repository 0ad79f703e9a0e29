#!/bin/bash
# Conversion at scale: on a model folder (e.g. qgen --preset 7b, 15 GB of BF16), qconvert
# --dtype keep, RTN int4 g128, and GPTQ int4 g128 on N windows of 512 tokens: wall time,
# peak anonymous memory (what qconvert allocates) and peak RSS (VmHWM: it also counts
# the mapped model's pages), both sampled every 20 ms from /proc/PID/status.
# Usage: bench/scale.sh BIN_DIR MODEL_DIR CALIB.i32 WORK_DIR [windows]
set -eu
bin=$1 model=$2 calib=$3 work=$4 windows=${5:-4}
mkdir -p "$work"
run() {
  local what=$1 peak_anon=0 peak_rss=0 kb rss t0 t1
  shift
  rm -f "$work/out.qpk"; sync
  t0=$(date +%s.%N)
  "$bin/qconvert" "$model" -o "$work/out.qpk" -q "$@" 2>"$work/log" &
  local pid=$!
  while kill -0 $pid 2>/dev/null; do
    read -r kb rss < <(awk '/^RssAnon:/ { a = $2 } /^VmHWM:/ { h = $2 } END { print a + 0, h + 0 }' \
      /proc/$pid/status 2>/dev/null || echo "0 0")
    [ "${kb:-0}" -gt "$peak_anon" ] && peak_anon=$kb
    [ "${rss:-0}" -gt "$peak_rss" ] && peak_rss=$rss
    sleep 0.02
  done
  wait $pid
  t1=$(date +%s.%N)
  printf '%-36s wall %8.1f s  peak anon %7.0f MB  peak RSS %7.0f MB  output %7.0f MB\n' "$what" \
    "$(echo "$t1 - $t0" | bc)" "$(echo "$peak_anon / 1024" | bc -l)" "$(echo "$peak_rss / 1024" | bc -l)" \
    "$(echo "$(stat -c %s "$work/out.qpk") / 1000000" | bc -l)"
  grep -h 'calibrated on' "$work/log" | sed 's/^qconvert: /    /' || true
}
echo "model $model: $(du -sh --apparent-size "$model" | cut -f1) of safetensors; $(nproc) CPUs"
run "--dtype keep"
run "RTN int4 g128" --quant int4 --group 128
run "GPTQ int4 g128, $windows x 512 tokens" --quant int4 --group 128 --method gptq --calib-tokens "$calib" \
  --calib-samples "$windows" --calib-len 512
rm -f "$work/out.qpk" "$work/log"
