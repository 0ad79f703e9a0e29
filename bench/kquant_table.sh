#!/bin/bash
# K-quant quality side by side with llama-quantize on the fixture whose rows are multiples
# of 256 (qwen-tiny-c-outlier), as a markdown table. Every file is measured twice on the
# first CHUNKS chunks of eval_public at -c 128: exactly, by qverify against the BF16 model,
# and in llama.cpp itself, by llama-perplexity against its own F32 run of the same model
# (its activations are quantized to 8 bits, which adds a floor of its own). Calibrated
# files use SAMPLES x 512 tokens of calib.txt (llama-imatrix: its first SAMPLES chunks of
# 512; qpk: SAMPLES windows drawn with seed 0).
#
# Usage: bench/kquant_table.sh QPK_BIN LLAMA_BIN FIXTURES_DIR WORK_DIR [CHUNKS] [SAMPLES]
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
  -o "$work/imatrix.dat" >> "$log" 2>&1
lq() { "$lbin/llama-quantize" "$@" "$threads" >> "$log" 2>&1; }
qc() { out=$1; shift; "$bin/qconvert" "$m" -o "$out" "$@" 2>> "$log"; }
cal=(--calib "$calib" --calib-samples "$samples" --calib-len 512)

lq "$work/f32.gguf" "$work/llama-q4_k_m.gguf" Q4_K_M
lq --imatrix "$work/imatrix.dat" "$work/f32.gguf" "$work/llama-q4_k_m-imatrix.gguf" Q4_K_M
lq "$work/f32.gguf" "$work/llama-q5_k_m.gguf" Q5_K_M
lq "$work/f32.gguf" "$work/llama-q6_k.gguf" Q6_K
lq "$work/f32.gguf" "$work/llama-q8_0.gguf" Q8_0
qc "$work/qpk-q4_k_m.gguf" --preset q4_k_m
qc "$work/qpk-q4_k_m-imatrix.gguf" --preset q4_k_m --method imatrix "${cal[@]}"
qc "$work/qpk-q4_k_m-awq.gguf" --preset q4_k_m --method awq "${cal[@]}"
qc "$work/qpk-q4_k_m-gptq.gguf" --preset q4_k_m --method gptq "${cal[@]}"
qc "$work/qpk-q4_k_m-awq+gptq.gguf" --preset q4_k_m --method awq+gptq "${cal[@]}"
qc "$work/qpk-q5_k_m.gguf" --preset q5_k_m
qc "$work/qpk-q6_k.gguf" --preset q6_k
qc "$work/qpk-q8_0.gguf" --preset q8_0

echo "| file | MiB | BPW (llama.cpp) | KLD exact (qverify) | top-1 % | KLD in llama.cpp | top-1 % (llama.cpp) |"
echo "|---|---:|---:|---:|---:|---:|---:|"
for f in llama-q8_0 qpk-q8_0 llama-q6_k qpk-q6_k llama-q5_k_m qpk-q5_k_m llama-q4_k_m qpk-q4_k_m \
         llama-q4_k_m-imatrix qpk-q4_k_m-imatrix qpk-q4_k_m-awq qpk-q4_k_m-gptq qpk-q4_k_m-awq+gptq; do
  g=$work/$f.gguf
  j=$("$bin/qverify" "$g" --ref "$m" --tokens "$fx/tokens/eval_public.i32" -c 128 --chunks "$chunks" --json)
  l=$("$lbin/llama-perplexity" -m "$g" -f "$text" -c 128 --chunks "$chunks" -t "$threads" \
      --kl-divergence-base "$work/base.kld" --kl-divergence 2>&1)
  echo "$l" >> "$log"
  size=$(echo "$l" | sed -n 's/.*file size *= *\([0-9.]*\) MiB (\([0-9.]*\) BPW).*/\1 \2/p' | head -1)
  printf "| %s | %s | %s | %.3g | %.2f | %s | %s |\n" "$f" ${size:-? ?} \
    "$(echo "$j" | grep -m1 '"kld_mean"' | sed -e 's/.*: *//' -e 's/,$//')" \
    "$(echo "$j" | grep -m1 '"top1_pct"' | sed -e 's/.*: *//' -e 's/,$//')" \
    "$(echo "$l" | awk '/^Mean +KLD:/ {print $3}')" \
    "$(echo "$l" | awk '/^Same top p:/ {print $4}')"
done
