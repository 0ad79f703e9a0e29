#!/bin/bash
# Decode and prefill side by side with llama.cpp, in one run, on the same weights: for each
# type, llama-quantize's GGUF of peer.sh's Qwen1.5-0.5B-shaped model (run peer.sh first: it
# makes WORK_DIR/m-f16.gguf), read by qconvert into a .qpk, so that both runtimes read the same
# bytes. llama-bench against bench_runtime: pp512, pp128 and tg64 with their ratios, then qpk's
# decode as a share of the streaming-read bandwidth bench_runtime measures in its own run (weights
# alone, and weights with the KV cache), and the ceiling qpk's gemv kernels alone set there.
# Usage: bench/peer_decode.sh QPK_BUILD LLAMA_BUILD WORK_DIR [threads]
# TYPES="Q4_0 Q6_K" runs some of the types (default: Q4_0 Q8_0 Q4_K_M Q6_K IQ4_XS).
set -eu
qb=$(cd "$1" && pwd) lb=$(cd "$2" && pwd) work=$3 threads=${4:-$(nproc)}
bin=$qb/tools lbin=$lb/bin types=${TYPES:-Q4_0 Q8_0 Q4_K_M Q6_K IQ4_XS}
[ -f "$work/m-f16.gguf" ] || { echo "run bench/peer.sh first (it makes $work/m-f16.gguf)"; exit 1; }

. "$(dirname "$0")/peer_lib.sh"
declare -A L Q
# shellcheck disable=SC2086 # the list splits into types on purpose
same_weights $types

peer_table 40
for t in $types; do
  peer_row "prefill pp512, $t (tok/s)" "${L[$t.pp512]}" "${Q[$t.pp512]}"
  peer_row "prefill pp128, $t (tok/s)" "${L[$t.pp128]}" "${Q[$t.pp128]}"
  peer_row "decode tg64, $t (tok/s)" "${L[$t.tg64]}" "${Q[$t.tg64]}"
done
echo
for t in $types; do
  echo "$t: qpk's decode reads its weights at ${Q[$t.bw]}% of the measured streaming-read bandwidth" \
    "(weights and KV cache: ${Q[$t.bwkv]}%); its gemv kernels alone, from L2, allow ${Q[$t.ceil]} tok/s," \
    "${Q[$t.ceilbw]}% of the bandwidth floor (llama.cpp's decode: $(echo "100 * ${L[$t.tg64]} / ${Q[$t.ceil]}" | bc)% of that)"
done
echo
echo "Tokens/s: higher is better (qpk/peer > 1: qpk faster). Both read the same bytes; qpk computes"
echo "with f32 activations against the exact weights, llama.cpp quantizes activations to 8 bits."
