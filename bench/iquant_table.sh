#!/bin/bash
# IQ4_XS and IQ4_NL quality side by side with llama-quantize on qwen-tiny-c-outlier (rows of
# 256), as a markdown table, measured as bench/kquant_table.sh measures (qverify's exact KLD
# against the BF16 model; llama-perplexity's KLD against its own F32 run, on the first
# CHUNKS chunks of eval_public at -c 128). Calibration: SAMPLES x 512 tokens of calib.txt.
# Importance matrices both ways: llama-quantize with llama-imatrix's file and with qpk's
# (--save-imatrix of qpk's imatrix run), and qpk with llama-imatrix's file (--imatrix).
#
# Usage: bench/iquant_table.sh QPK_BIN LLAMA_BIN FIXTURES_DIR WORK_DIR [CHUNKS] [SAMPLES]
set -eu
bin=$1 lbin=$2 fx=$3 work=$4 chunks=${5:-100} samples=${6:-32}
m=$fx/qwen-tiny-c-outlier text=$fx/text/eval_public.txt calib=$fx/text/calib.txt
threads=$(nproc)
mkdir -p "$work"
log=$work/log.txt
: > "$log"

"$bin/qconvert" -q "$m" -o "$work/f32.gguf" --dtype f32
"$lbin/llama-perplexity" -m "$work/f32.gguf" -f "$text" -c 128 --chunks "$chunks" -t "$threads" \
  --kl-divergence-base "$work/base.kld" >> "$log" 2>&1
"$lbin/llama-imatrix" -m "$work/f32.gguf" -f "$calib" -c 512 --chunks "$samples" -t "$threads" \
  -o "$work/llama-imatrix.gguf" >> "$log" 2>&1
lq() { "$lbin/llama-quantize" "$@" "$threads" >> "$log" 2>&1; }
qc() { out=$1; shift; "$bin/qconvert" "$m" -o "$out" "$@" 2>> "$log"; }
cal=(--calib "$calib" --calib-samples "$samples" --calib-len 512)

qc "$work/qpk-iq4_xs-imatrix.gguf" --preset iq4_xs --method imatrix "${cal[@]}" --save-imatrix "$work/qpk-imatrix.gguf"
lq "$work/f32.gguf" "$work/llama-iq4_xs.gguf" IQ4_XS
lq --imatrix "$work/llama-imatrix.gguf" "$work/f32.gguf" "$work/llama-iq4_xs-imatrix.gguf" IQ4_XS
lq --imatrix "$work/qpk-imatrix.gguf" "$work/f32.gguf" "$work/llama-iq4_xs-qpk_imatrix.gguf" IQ4_XS
lq "$work/f32.gguf" "$work/llama-iq4_nl.gguf" IQ4_NL
lq --imatrix "$work/llama-imatrix.gguf" "$work/f32.gguf" "$work/llama-iq4_nl-imatrix.gguf" IQ4_NL
qc "$work/qpk-iq4_xs.gguf" --preset iq4_xs
qc "$work/qpk-iq4_xs-llama_imatrix.gguf" --preset iq4_xs --imatrix "$work/llama-imatrix.gguf"
qc "$work/qpk-iq4_xs-awq.gguf" --preset iq4_xs --method awq "${cal[@]}"
qc "$work/qpk-iq4_xs-gptq.gguf" --preset iq4_xs --method gptq "${cal[@]}"
qc "$work/qpk-iq4_xs-awq+gptq.gguf" --preset iq4_xs --method awq+gptq "${cal[@]}"
qc "$work/qpk-iq4_nl.gguf" --preset iq4_nl
qc "$work/qpk-iq4_nl-imatrix.gguf" --preset iq4_nl --method imatrix "${cal[@]}"

echo "llama.cpp $(git -C "$lbin/../.." rev-parse --short HEAD 2>/dev/null || echo ?), qpk $(git -C "$(dirname "$0")" rev-parse --short HEAD 2>/dev/null || echo ?); $threads threads"
echo
echo "| file | file MiB | KLD exact (qverify) | top-1 % | KLD in llama.cpp | top-1 % (llama.cpp) |"
echo "|---|---:|---:|---:|---:|---:|"
for f in llama-iq4_xs qpk-iq4_xs llama-iq4_xs-imatrix llama-iq4_xs-qpk_imatrix qpk-iq4_xs-llama_imatrix \
         qpk-iq4_xs-imatrix qpk-iq4_xs-awq qpk-iq4_xs-gptq qpk-iq4_xs-awq+gptq \
         llama-iq4_nl qpk-iq4_nl llama-iq4_nl-imatrix qpk-iq4_nl-imatrix; do
  g=$work/$f.gguf
  j=$("$bin/qverify" "$g" --ref "$m" --tokens "$fx/tokens/eval_public.i32" -c 128 --chunks "$chunks" --json)
  l=$("$lbin/llama-perplexity" -m "$g" -f "$text" -c 128 --chunks "$chunks" -t "$threads" \
      --kl-divergence-base "$work/base.kld" --kl-divergence 2>&1)
  echo "$l" >> "$log"
  printf "| %s | %.3f | %.3g | %.2f | %s | %s |\n" "$f" "$(echo "$(stat -c %s "$g") / 1048576" | bc -l)" \
    "$(echo "$j" | grep -m1 '"kld_mean"' | sed -e 's/.*: *//' -e 's/,$//')" \
    "$(echo "$j" | grep -m1 '"top1_pct"' | sed -e 's/.*: *//' -e 's/,$//')" \
    "$(echo "$l" | awk '/^Mean +KLD:/ {print $3}')" \
    "$(echo "$l" | awk '/^Same top p:/ {print $4}')"
done
