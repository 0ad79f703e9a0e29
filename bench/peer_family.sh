#!/bin/bash
# qpk and llama.cpp side by side on the Qwen family (issue 21), in one run, on this machine,
# on the same weights: two generated models (qgen, BF16, the fixtures' tokenizer),
#   moe:   qwen3_moe of about 1B parameters (1.05B, 0.34B active per token with the tied
#          embedding): hidden 1024, 16 layers, 16 heads / 4 KV heads, head_dim 128, 32 experts
#          of 512, top 4 (MOE_ARGS= to change it: qgen's options);
#   dense: Qwen3-0.6B's shape (qgen --preset qwen3-0.6b).
# For each: qconvert writes an F16 GGUF, llama-quantize makes Q8_0 and Q4_K_M from it, and
# qconvert reads those very GGUFs into .qpk files (llama.cpp's types kept), so both runtimes
# read the same bytes; then llama-bench (pp128, pp512, tg64) against bench_runtime (the
# same three figures), the same thread count. Prints the parameter counts (total, experts,
# active per token, from the checkpoint's tensor shapes), one table with both figures and
# their ratio, the peer's commit and build flags, the CPU. A step that fails prints "fail"
# in its cells and its command's last lines of stderr under the table; the others go on.
# llama.cpp is built by hand outside the repository (never committed), e.g.
#   cmake -S llama.cpp -B llama.cpp/build -DGGML_NATIVE=ON -DCMAKE_BUILD_TYPE=Release -DLLAMA_BUILD_TESTS=OFF \
#     -DLLAMA_BUILD_SERVER=OFF -DLLAMA_BUILD_UI=OFF -DLLAMA_OPENSSL=OFF   (2026 trees; older: -DLLAMA_CURL=OFF)
#   cmake --build llama.cpp/build -j --target llama-bench llama-quantize
# (qwen3 and qwen3moe need a llama.cpp of April 2025 or later.) About 5 minutes on 2 cores.
#
# Usage: bench/peer_family.sh QPK_BUILD_DIR LLAMA_BUILD_DIR WORK_DIR [threads] [fixtures_dir]
# MODELS="moe dense" (default) picks the models; a model's files in WORK_DIR are reused.
set -eu
qb=$(cd "$1" && pwd) lb=$(cd "$2" && pwd) work=$3 threads=${4:-$(nproc)}
fx=${5:-$(cd "$(dirname "$0")/.." && pwd)/../shared/fixtures}
bin=$qb/tools lbin=$lb/bin
models=${MODELS:-moe dense}
# Qwen3-30B-A3B's config (head_dim 128, norm_topk_prob, no shared expert), scaled down.
moe_args=${MOE_ARGS:---preset qwen3-30b-a3b --hidden 1024 --layers 16 --heads 16 --kv-heads 4
  --experts 32 --experts-used 4 --moe-intermediate 512 --tied}
mkdir -p "$work"
errs=()
# try NAME CMD...: runs CMD with its stderr kept in WORK/NAME.err; a failure is recorded, not fatal.
try() {
  local name=$1; shift
  "$@" 2>"$work/$name.err" && return 0
  local rc=$?
  errs+=("$name: $* (exit $rc)"$'\n'"$(tail -n 5 "$work/$name.err" | sed 's/^/    /')")
  return 1
}

# Parameter counts from the safetensors headers: total, experts (routed), the embedding.
params() {
  local f n
  for f in "$1"/*.safetensors; do
    n=$(od -An -t u8 -N8 "$f" | tr -d ' ')
    tail -c +9 "$f" | head -c "$n" | grep -o '"[^"]*":{[^}]*}' |
      sed -nE 's/^"([^"]*)":.*"shape":\[([0-9,]*)\].*/\1 \2/p'
  done | awk '{ n = 1; k = split($2, d, ","); for (i = 1; i <= k; i++) n *= d[i]; t += n
                if ($1 ~ /\.experts\./) x += n; if ($1 ~ /embed_tokens/) e += n }
              END { printf "%d %d %d\n", t, x, e }'
}
cfg() { grep -o "\"$2\":[[:space:]]*[0-9]*" "$1/config.json" | grep -o '[0-9]*$' || echo 0; }

lbench() (
  set -o pipefail
  "$lbin/llama-bench" -m "$1" -p 128,512 -n 64 -t "$threads" -o csv |
    awk -F, 'NR == 1 { for (i = 1; i <= NF; i++) { gsub(/"/, "", $i); col[$i] = i } next }
             { gsub(/"/, ""); p = $col["n_prompt"]; g = $col["n_gen"]; v = $col["avg_ts"];
               if (g == 0) print "pp" p, v; else print "tg" g, v }'
)
qbench() (
  set -o pipefail
  "$qb/bench/bench_runtime" "$1" "$threads" | tee "$1.bench" |
    awk '/^prefill pp/ { print $2, $3 } /^decode tg/ { print $2, $3 }'
)

declare -A L Q P
for m in $models; do
  d=$work/$m
  if [ ! -f "$d/config.json" ]; then
    if [ "$m" = moe ]; then
      # shellcheck disable=SC2086
      try "$m-qgen" "$bin/qgen" "$d" $moe_args --dtype bf16 -q || continue
    else
      try "$m-qgen" "$bin/qgen" "$d" --preset qwen3-0.6b --dtype bf16 -q || continue
    fi
  fi
  # GGUF carries a tokenizer: the fixtures' is Qwen's, with the same 151,936-row vocabulary.
  for f in tokenizer.json tokenizer_config.json; do [ -e "$d/$f" ] || cp "$fx/qwen-tiny-a/$f" "$d/"; done
  read -r t x e < <(params "$d")
  E=$(cfg "$d" num_experts) K=$(cfg "$d" num_experts_per_tok)
  a=$t; [ "$E" -gt 0 ] && a=$((t - x + x * K / E))
  tie=untied; grep -q '"tie_word_embeddings":[[:space:]]*true' "$d/config.json" && tie=tied
  P[$m]="$t $x $e $a $E $K $tie"
  [ -f "$work/$m-F16.gguf" ] || try "$m-f16" "$bin/qconvert" "$d" -q -o "$work/$m-F16.gguf" --dtype f16 || continue
  for ty in Q8_0 Q4_K_M; do
    g=$work/$m-$ty.gguf
    [ -f "$g" ] || try "$m-$ty-quantize" "$lbin/llama-quantize" "$work/$m-F16.gguf" "$g" $ty "$threads" >/dev/null || continue
    if try "$m-$ty-llama-bench" lbench "$g" >"$work/$m-$ty.figures"; then
      while read -r k v; do L[$m.$ty.$k]=$v; done <"$work/$m-$ty.figures"
    fi
    [ -f "$work/$m-$ty.qpk" ] || try "$m-$ty-qconvert" "$bin/qconvert" -q "$g" -o "$work/$m-$ty.qpk" || continue
    if try "$m-$ty-bench_runtime" qbench "$work/$m-$ty.qpk" >"$work/$m-$ty.qpk.figures"; then
      while read -r k v; do Q[$m.$ty.$k]=$v; done <"$work/$m-$ty.qpk.figures"
    fi
  done
done

commit=$(git -C "$lb/.." rev-parse --short HEAD 2>/dev/null || echo "?")
flags=$(grep -E '^(GGML_NATIVE|CMAKE_BUILD_TYPE|GGML_OPENMP|GGML_AVX512|GGML_AVX2):' "$lb/CMakeCache.txt" 2>/dev/null | tr '\n' ' ')
cpu=$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')
echo "machine: $cpu, $(nproc) CPUs; $threads threads; $(grep -o -m1 'avx512f' /proc/cpuinfo || echo 'no AVX-512')"
echo "peer: llama.cpp $commit ($flags)"
kern=$(cat "$work"/*.qpk.bench 2>/dev/null | sed -n 's/.*kernels //p' | head -1)
echo "qpk: $(git -C "$(dirname "$0")" rev-parse --short HEAD 2>/dev/null || echo ?), kernels ${kern:-?}"
declare -A names=([moe]="qwen3_moe ~1B" [dense]="Qwen3-0.6B")
for m in $models; do
  [ -n "${P[$m]:-}" ] || continue
  read -r t x e a E K tie <<<"${P[$m]}"
  if [ "$E" -gt 0 ]; then
    printf '%s: %.3fB parameters (embedding %.1fM, %s; routed experts %.1fM, %d per layer);' "${names[$m]}" \
      "$(echo "$t / 10^9" | bc -l)" "$(echo "$e / 10^6" | bc -l)" "$tie" "$(echo "$x / 10^6" | bc -l)" "$E"
    printf ' active per token (top %d): %.3fB, %.3fB without the embedding\n' "$K" \
      "$(echo "$a / 10^9" | bc -l)" "$(echo "($a - $e) / 10^9" | bc -l)"
  else
    printf '%s: %.3fB parameters (embedding %.1fM, %s), %.3fB without the embedding\n' "${names[$m]}" \
      "$(echo "$t / 10^9" | bc -l)" "$(echo "$e / 10^6" | bc -l)" "$tie" "$(echo "($t - $e) / 10^9" | bc -l)"
  fi
done
echo
printf '| %-40s | %10s | %10s | %9s |\n' "figure (tokens/s)" llama.cpp qpk "qpk/peer"
printf '|%s|%s|%s|%s|\n' "$(printf -- '-%.0s' {1..42})" "------------" "------------" "-----------"
cell() { [ -n "$1" ] && printf '%10.1f' "$1" || printf '%10s' fail; }
row() {
  local r=fail
  [ -n "$2" ] && [ -n "$3" ] && r=$(printf '%.2f' "$(echo "$3 / $2" | bc -l)")
  printf '| %-40s | %s | %s | %9s |\n' "$1" "$(cell "$2")" "$(cell "$3")" "$r"
}
for m in $models; do
  for k in pp512 pp128 tg64; do
    for ty in Q8_0 Q4_K_M; do
      row "${names[$m]}, $ty, $k" "${L[$m.$ty.$k]:-}" "${Q[$m.$ty.$k]:-}"
    done
  done
done
echo
echo "Tokens/s, higher is better (qpk/peer > 1: qpk faster); pp: prefill of a 128/512-token prompt,"
echo "tg64: decode of 64 tokens. Both read the same GGUF weights (qpk through qconvert GGUF -> .qpk);"
echo "qpk computes with f32 activations against the exact weights, llama.cpp quantizes activations."
if [ ${#errs[@]} -gt 0 ]; then
  echo
  echo "failures:"
  printf '%s\n' "${errs[@]}"
fi
