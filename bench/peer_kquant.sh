#!/bin/bash
# K-quants side by side with llama.cpp, in one run, on this machine, on the generated
# Qwen1.5-0.5B-shaped model of bench/peer.sh (run that first: it makes the model and its
# F16/BF16 GGUFs in WORK_DIR):
#   RTN Q4_K_M: llama-quantize (BF16 GGUF -> Q4_K_M) against qconvert --preset q4_k_m
#     (HF folder -> GGUF), paired, the median of three;
#   calibrated Q4_K_M on SAMPLES x 512 tokens of calib.txt: llama-imatrix + llama-quantize
#     --imatrix against qconvert --method imatrix and --method awq, once each;
#   runtime on the same weights: llama-bench on llama-quantize's Q4_K_M and Q6_K files
#     against bench_runtime on .qpk files read from those very GGUFs.
# Usage: bench/peer_kquant.sh QPK_BUILD_DIR LLAMA_BUILD_DIR WORK_DIR [threads] [fixtures_dir] [samples]
# RUNTIME_ONLY=1 skips the quantization timings (the runtime rows alone take a few minutes);
# CALIB_ONLY=1 keeps only the calibrated rows (also --method awq+gptq).
set -eu
qb=$(cd "$1" && pwd) lb=$(cd "$2" && pwd) work=$3 threads=${4:-$(nproc)}
fx=${5:-$(cd "$(dirname "$0")/.." && pwd)/../shared/fixtures} samples=${6:-32}
bin=$qb/tools lbin=$lb/bin model=$work/qwen1.5-0.5b-bf16 calib=$fx/text/calib.txt
[ -f "$work/m-bf16.gguf" ] || { echo "run bench/peer.sh first (it makes $work/m-bf16.gguf)"; exit 1; }

. "$(dirname "$0")/peer_lib.sh"
rtn_l=0 rtn_q=0 imx_l=0 imx_q=0 awq_q=0 awqg_q=0
if [ -z "${RUNTIME_ONLY:-}" ]; then
a=() b=()
for i in $([ -z "${CALIB_ONLY:-}" ] && echo 1 2 3); do
  rm -f "$work/lq.gguf" "$work/qq.gguf"; sync
  a+=("$(secs "$lbin/llama-quantize" "$work/m-bf16.gguf" "$work/lq.gguf" Q4_K_M "$threads")")
  rm -f "$work/lq.gguf"; sync
  b+=("$(secs "$bin/qconvert" "$model" -q -t "$threads" -o "$work/qq.gguf" --preset q4_k_m)")
done
[ -z "${CALIB_ONLY:-}" ] && rtn_l=$(median "${a[@]}") rtn_q=$(median "${b[@]}")
rm -f "$work/qq.gguf"
cal=(--calib "$calib" --calib-samples "$samples" --calib-len 512)
imx_l=$(echo "$(secs "$lbin/llama-imatrix" -m "$work/m-f16.gguf" -f "$calib" -c 512 --chunks "$samples" -t "$threads" \
  -o "$work/imatrix.dat") + $(secs "$lbin/llama-quantize" --imatrix "$work/imatrix.dat" "$work/m-bf16.gguf" "$work/lq.gguf" \
  Q4_K_M "$threads")" | bc)
imx_q=$(secs "$bin/qconvert" "$model" -q -t "$threads" -o "$work/qq.gguf" --preset q4_k_m --method imatrix "${cal[@]}")
awq_q=$(secs "$bin/qconvert" "$model" -q -t "$threads" -o "$work/qq.gguf" --preset q4_k_m --method awq "${cal[@]}")
[ -n "${CALIB_ONLY:-}" ] &&
  awqg_q=$(secs "$bin/qconvert" "$model" -q -t "$threads" -o "$work/qq.gguf" --preset q4_k_m --method awq+gptq "${cal[@]}")
rm -f "$work/lq.gguf" "$work/qq.gguf"
fi

declare -A L Q
[ -z "${CALIB_ONLY:-}" ] && same_weights Q4_K_M Q6_K

peer_table 52
if [ -z "${RUNTIME_ONLY:-}" ]; then
  [ -z "${CALIB_ONLY:-}" ] && peer_row "RTN Q4_K_M from BF16 (s, median 3)" "$rtn_l" "$rtn_q" 2
  peer_row "imatrix Q4_K_M, $samples x 512 (s; llama: imatrix + quantize)" "$imx_l" "$imx_q" 2
  peer_row "AWQ Q4_K_M, $samples x 512 (s) vs llama's imatrix Q4_K_M" "$imx_l" "$awq_q" 2
  [ -n "${CALIB_ONLY:-}" ] && peer_row "AWQ+GPTQ Q4_K_M, $samples x 512 (s) vs llama's imatrix Q4_K_M" "$imx_l" "$awqg_q" 2
fi
for t in $([ -z "${CALIB_ONLY:-}" ] && echo Q4_K_M Q6_K); do
  peer_row "prefill pp512, $t, the same weights (tok/s)" "${L[$t.pp512]}" "${Q[$t.pp512]}"
  peer_row "prefill pp128, $t (tok/s)" "${L[$t.pp128]}" "${Q[$t.pp128]}"
  peer_row "decode tg64, $t (tok/s)" "${L[$t.tg64]}" "${Q[$t.tg64]}"
done
echo
echo "Seconds: lower is better (qpk/peer < 1: qpk faster). Tokens/s: higher is better. qpk computes"
echo "with f32 activations against the exact weights; llama.cpp quantizes activations to 8 bits."
