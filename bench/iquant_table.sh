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
mkdir -p "$work"
. "$(dirname "$0")/table_lib.sh"
table_setup "$work/llama-imatrix.gguf"

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

table_header
for f in llama-iq4_xs qpk-iq4_xs llama-iq4_xs-imatrix llama-iq4_xs-qpk_imatrix qpk-iq4_xs-llama_imatrix \
         qpk-iq4_xs-imatrix qpk-iq4_xs-awq qpk-iq4_xs-gptq qpk-iq4_xs-awq+gptq \
         llama-iq4_nl qpk-iq4_nl llama-iq4_nl-imatrix qpk-iq4_nl-imatrix; do
  table_row "$f"
done
