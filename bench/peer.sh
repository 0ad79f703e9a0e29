#!/bin/bash
# qpk and llama.cpp side by side, in one run, on this machine, on the same generated
# Qwen1.5-0.5B-shaped model (qgen --preset 0.5b, BF16, the fixtures' tokenizer):
#   prefill pp128/pp512 and decode tg64: llama-bench on GGUF F16 / Q8_0 / Q4_0 (made by
#     llama-quantize from qpk's F16 GGUF) against bench_runtime on .qpk bf16 / int8 g32 /
#     int4s g32, the same thread count;
#   RTN quantization: llama-quantize BF16 GGUF -> Q8_0 / Q4_0 against qconvert HF folder ->
#     int8 g32 .qpk / int4s g32 GGUF, paired (A B A B A B), the median of each.
# Prints one table with both figures and their ratio, and the peer's version and build.
# llama.cpp is built by hand outside the repository (never committed), e.g.
#   cmake -S llama.cpp -B llama.cpp/build -DGGML_NATIVE=ON -DLLAMA_CURL=OFF
#   cmake --build llama.cpp/build -j --target llama-bench llama-quantize llama-perplexity
#
# Usage: bench/peer.sh QPK_BUILD_DIR LLAMA_BUILD_DIR WORK_DIR [threads] [fixtures_dir]
set -eu
qb=$(cd "$1" && pwd) lb=$(cd "$2" && pwd) work=$3 threads=${4:-$(nproc)}
fx=${5:-$(cd "$(dirname "$0")/.." && pwd)/../shared/fixtures}
bin=$qb/tools lbin=$lb/bin
mkdir -p "$work"
model=$work/qwen1.5-0.5b-bf16
if [ ! -f "$model/config.json" ]; then
  "$bin/qgen" "$model" --preset 0.5b --dtype bf16 -q
fi
# GGUF carries a tokenizer: the fixtures' is Qwen's, with the same 151,936-row vocabulary.
for f in tokenizer.json tokenizer_config.json; do [ -e "$model/$f" ] || cp "$fx/qwen-tiny-a/$f" "$model/"; done

q() { "$bin/qconvert" "$model" -q "$@"; }
[ -f "$work/m-bf16.qpk" ] || q -o "$work/m-bf16.qpk"
[ -f "$work/m-int8.qpk" ] || q -o "$work/m-int8.qpk" --quant int8 --group 32
[ -f "$work/m-int4s.qpk" ] || q -o "$work/m-int4s.qpk" --quant int4s --group 32
[ -f "$work/m-f16.gguf" ] || q -o "$work/m-f16.gguf" --dtype f16
[ -f "$work/m-bf16.gguf" ] || q -o "$work/m-bf16.gguf"
for t in Q8_0 Q4_0; do
  [ -f "$work/m-$t.gguf" ] || "$lbin/llama-quantize" "$work/m-f16.gguf" "$work/m-$t.gguf" $t "$threads" >/dev/null 2>&1
done

. "$(dirname "$0")/peer_lib.sh" # secs, median, lbench, qbench
declare -A L Q
for pair in "F16 m-f16.gguf m-bf16.qpk bf16" "Q8_0 m-Q8_0.gguf m-int8.qpk int8" "Q4_0 m-Q4_0.gguf m-int4s.qpk int4s"; do
  set -- $pair
  while read -r k v; do L[$1.$k]=$v; done < <(lbench "$work/$2")
  while read -r k v; do Q[$1.$k]=$v; done < <(qbench "$work/$3")
done

# Quantization, paired: each command's wall time, the median of three.
declare -A QL QQ
for t in Q8_0 Q4_0; do
  a=() b=()
  for i in 1 2 3; do
    rm -f "$work/lq.gguf" "$work/qq.out"; sync
    a+=("$(secs "$lbin/llama-quantize" "$work/m-bf16.gguf" "$work/lq.gguf" $t "$threads")")
    rm -f "$work/lq.gguf"; sync
    if [ $t = Q8_0 ]; then
      b+=("$(secs "$bin/qconvert" "$model" -q -t "$threads" -o "$work/qq.out" --quant int8 --group 32)")
    else
      b+=("$(secs "$bin/qconvert" "$model" -q -t "$threads" -o "$work/qq.out" --to gguf --quant int4s --group 32)")
    fi
  done
  QL[$t]=$(median "${a[@]}") QQ[$t]=$(median "${b[@]}")
done
rm -f "$work/lq.gguf" "$work/qq.out"

commit=$(git -C "$lb/.." rev-parse --short HEAD 2>/dev/null || echo "?")
flags=$(grep -E '^(GGML_NATIVE|CMAKE_BUILD_TYPE|GGML_AVX512|GGML_AVX2):' "$lb/CMakeCache.txt" 2>/dev/null | tr '\n' ' ')
cpu=$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')
echo "machine: $cpu, $(nproc) CPUs; $threads threads; $(grep -o -m1 'avx512f' /proc/cpuinfo || echo 'no AVX-512')"
echo "peer: llama.cpp $commit ($flags)"
echo "qpk: $(git -C "$(dirname "$0")" rev-parse --short HEAD 2>/dev/null || echo ?), kernels $("$qb/bench/bench_runtime" "$work/m-int4s.qpk" "$threads" 2>/dev/null | sed -n 's/.*kernels //p' | head -1)"
echo
printf '| %-38s | %10s | %10s | %9s |\n' figure llama.cpp qpk "qpk/peer"
printf '|%s|%s|%s|%s|\n' "$(printf -- '-%.0s' {1..40})" "------------" "------------" "-----------"
row() { printf '| %-38s | %10.1f | %10.1f | %9.2f |\n' "$1" "$2" "$3" "$(echo "$3 / $2" | bc -l)"; }
declare -A names=([F16]="F16 vs bf16" [Q8_0]="Q8_0 vs int8 g32" [Q4_0]="Q4_0 vs int4s g32")
for t in F16 Q8_0 Q4_0; do row "prefill pp512, ${names[$t]} (tok/s)" "${L[$t.pp512]}" "${Q[$t.pp512]}"; done
for t in F16 Q8_0 Q4_0; do row "prefill pp128, ${names[$t]} (tok/s)" "${L[$t.pp128]}" "${Q[$t.pp128]}"; done
for t in F16 Q8_0 Q4_0; do row "decode tg64, ${names[$t]} (tok/s)" "${L[$t.tg64]}" "${Q[$t.tg64]}"; done
rowt() { printf '| %-38s | %10.2f | %10.2f | %9.2f |\n' "$1" "$2" "$3" "$(echo "$3 / $2" | bc -l)"; }
rowt "RTN Q8_0 vs int8 g32 .qpk (s, median 3)" "${QL[Q8_0]}" "${QQ[Q8_0]}"
rowt "RTN Q4_0 vs int4s g32 GGUF (s, median 3)" "${QL[Q4_0]}" "${QQ[Q4_0]}"
echo
echo "Decode and prefill: tokens/s, higher is better (qpk/peer > 1: qpk faster). Quantization: seconds,"
echo "lower is better (qpk/peer < 1: qpk faster). llama-quantize's Q4_0 keeps the head in Q6_K; qpk's"
echo "int4s keeps the tied embedding in int8 (Q8_0): see docs/gguf.md."
