#!/bin/bash
# IQ4_XS side by side with llama.cpp, in one run, on this machine, on the generated
# Qwen1.5-0.5B-shaped model of bench/peer.sh (made here too if absent):
#   RTN IQ4_XS: llama-quantize (BF16 GGUF -> IQ4_XS) against qconvert --preset iq4_xs (HF
#     folder -> GGUF), paired, the median of three;
#   IQ4_XS with an importance matrix: the same, both given llama-imatrix's file of SAMPLES x
#     512 tokens of calib.txt (qconvert --imatrix), then the whole calibrated path: llama-imatrix
#     + llama-quantize against qconvert --method imatrix;
#   runtime on the same weights: llama-bench on llama-quantize's IQ4_XS file against
#     bench_runtime on the .qpk read from it, and qpk's IQ4_XS against its Q4_K_M (same weights
#     as llama-quantize's Q4_K_M) for the prefill it must match.
# Usage: bench/peer_iquant.sh QPK_BUILD_DIR LLAMA_BUILD_DIR WORK_DIR [threads] [fixtures_dir] [samples]
# RUNTIME_ONLY=1 skips the quantization timings (the runtime rows alone take a few minutes).
set -eu
qb=$(cd "$1" && pwd) lb=$(cd "$2" && pwd) work=$3 threads=${4:-$(nproc)}
fx=${5:-$(cd "$(dirname "$0")/.." && pwd)/../shared/fixtures} samples=${6:-32}
bin=$qb/tools lbin=$lb/bin model=$work/qwen1.5-0.5b-bf16 calib=$fx/text/calib.txt
mkdir -p "$work"
[ -f "$model/config.json" ] || "$bin/qgen" "$model" --preset 0.5b --dtype bf16 -q
for f in tokenizer.json tokenizer_config.json; do [ -e "$model/$f" ] || cp "$fx/qwen-tiny-a/$f" "$model/"; done
[ -f "$work/m-f16.gguf" ] || "$bin/qconvert" "$model" -q -o "$work/m-f16.gguf" --dtype f16
[ -f "$work/m-bf16.gguf" ] || "$bin/qconvert" "$model" -q -o "$work/m-bf16.gguf"

. "$(dirname "$0")/peer_lib.sh"
rtn_l=0 rtn_q=0 imq_l=0 imq_q=0 cal_l=0 cal_q=0
if [ -z "${RUNTIME_ONLY:-}" ]; then
  a=() b=() c=() d=()
  "$lbin/llama-imatrix" -m "$work/m-f16.gguf" -f "$calib" -c 512 --chunks "$samples" -t "$threads" \
    -o "$work/imatrix.gguf" >/dev/null 2>&1
  for i in 1 2 3; do
    rm -f "$work/lq.gguf" "$work/qq.gguf"; sync
    a+=("$(secs "$lbin/llama-quantize" "$work/m-bf16.gguf" "$work/lq.gguf" IQ4_XS "$threads")")
    b+=("$(secs "$bin/qconvert" "$model" -q -t "$threads" -o "$work/qq.gguf" --preset iq4_xs)")
    rm -f "$work/lq.gguf" "$work/qq.gguf"; sync
    c+=("$(secs "$lbin/llama-quantize" --imatrix "$work/imatrix.gguf" "$work/m-bf16.gguf" "$work/lq.gguf" IQ4_XS "$threads")")
    d+=("$(secs "$bin/qconvert" "$model" -q -t "$threads" -o "$work/qq.gguf" --preset iq4_xs --imatrix "$work/imatrix.gguf")")
  done
  rtn_l=$(median "${a[@]}") rtn_q=$(median "${b[@]}") imq_l=$(median "${c[@]}") imq_q=$(median "${d[@]}")
  cal_l=$(echo "$(secs "$lbin/llama-imatrix" -m "$work/m-f16.gguf" -f "$calib" -c 512 --chunks "$samples" -t "$threads" \
    -o "$work/imatrix2.gguf") + $(secs "$lbin/llama-quantize" --imatrix "$work/imatrix2.gguf" "$work/m-bf16.gguf" \
    "$work/lq.gguf" IQ4_XS "$threads")" | bc)
  cal_q=$(secs "$bin/qconvert" "$model" -q -t "$threads" -o "$work/qq.gguf" --preset iq4_xs --method imatrix \
    --calib "$calib" --calib-samples "$samples" --calib-len 512)
  rm -f "$work/lq.gguf" "$work/qq.gguf" "$work/imatrix2.gguf"
fi

declare -A L Q
same_weights IQ4_XS Q4_K_M

peer_table 58
if [ -z "${RUNTIME_ONLY:-}" ]; then
  peer_row "RTN IQ4_XS from BF16 (s, median 3)" "$rtn_l" "$rtn_q" 2
  peer_row "IQ4_XS with llama-imatrix's file (s, median 3)" "$imq_l" "$imq_q" 2
  peer_row "calibrated IQ4_XS, $samples x 512 (s; llama: imatrix + quantize)" "$cal_l" "$cal_q" 2
fi
peer_row "prefill pp512, IQ4_XS, the same weights (tok/s)" "${L[IQ4_XS.pp512]}" "${Q[IQ4_XS.pp512]}"
peer_row "prefill pp128, IQ4_XS (tok/s)" "${L[IQ4_XS.pp128]}" "${Q[IQ4_XS.pp128]}"
peer_row "decode tg64, IQ4_XS (tok/s)" "${L[IQ4_XS.tg64]}" "${Q[IQ4_XS.tg64]}"
peer_row "prefill pp512, Q4_K_M, the same weights (tok/s)" "${L[Q4_K_M.pp512]}" "${Q[Q4_K_M.pp512]}"
peer_row "prefill pp128, Q4_K_M (tok/s)" "${L[Q4_K_M.pp128]}" "${Q[Q4_K_M.pp128]}"
peer_row "decode tg64, Q4_K_M (tok/s)" "${L[Q4_K_M.tg64]}" "${Q[Q4_K_M.tg64]}"
echo
echo "qpk's IQ4_XS against its Q4_K_M (both llama-quantize's weights): prefill pp512 $(echo "${Q[IQ4_XS.pp512]} / ${Q[Q4_K_M.pp512]}" | bc -l | cut -c1-4)x," \
  "pp128 $(echo "${Q[IQ4_XS.pp128]} / ${Q[Q4_K_M.pp128]}" | bc -l | cut -c1-4)x, decode $(echo "${Q[IQ4_XS.tg64]} / ${Q[Q4_K_M.tg64]}" | bc -l | cut -c1-4)x"
echo "Seconds: lower is better (qpk/peer < 1: qpk faster). Tokens/s: higher is better. qpk computes"
echo "with f32 activations against the exact weights; llama.cpp quantizes activations to 8 bits."
