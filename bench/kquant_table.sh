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
mkdir -p "$work"
. "$(dirname "$0")/table_lib.sh"
table_setup "$work/imatrix.dat"

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

table_header
for f in llama-q8_0 qpk-q8_0 llama-q6_k qpk-q6_k llama-q5_k_m qpk-q5_k_m llama-q4_k_m qpk-q4_k_m \
         llama-q4_k_m-imatrix qpk-q4_k_m-imatrix qpk-q4_k_m-awq qpk-q4_k_m-gptq qpk-q4_k_m-awq+gptq; do
  table_row "$f"
done
