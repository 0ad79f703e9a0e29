#!/bin/bash
# Development tool (run by hand; its outputs are committed under tests/data/ggml/):
# GGUF files written by llama.cpp's own llama-quantize (b4747, built by hand outside the
# repository), of a tiny generated Qwen2 model whose rows are all 256 wide, so that every
# type is llama.cpp's own choice and layout; and expected.json, the XXH3 of every tensor as
# ggml itself dequantizes it (ggml_hashes.c, linked against that build).
# Usage: tests/llamacpp/make_ggml_files.sh QPK_BIN_DIR LLAMA_DIR
set -eu
bin=$1 llama=$2 here=$(cd "$(dirname "$0")" && pwd)
out=$here/../data/ggml
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
"$bin/qgen" "$tmp/m" --hidden 256 --intermediate 256 --layers 1 --heads 4 --kv-heads 2 --vocab 320 --dtype f32 -q
cp "$here/../data/tiny256/tokenizer.json" "$here/../data/tiny256/tokenizer_config.json" "$tmp/m/"
"$bin/qconvert" "$tmp/m" --dtype f32 -o "$tmp/f32.gguf" -q
mkdir -p "$out"
for t in Q2_K Q3_K_M Q4_K_M Q5_K_M Q6_K Q4_1 Q5_0 Q5_1 IQ4_NL IQ4_XS; do
  "$llama/build/bin/llama-quantize" "$tmp/f32.gguf" "$out/tiny-$t.gguf" $t 1 >/dev/null 2>&1
done
cc -O2 "$here/ggml_hashes.c" -I"$llama/ggml/include" -L"$llama/build/bin" -lggml-base -lggml -lxxhash \
  -Wl,-rpath,"$llama/build/bin" -o "$tmp/ggml_hashes"
"$tmp/ggml_hashes" "$out"/tiny-*.gguf >"$out/expected.json"
echo "llama.cpp $(git -C "$llama" rev-parse --short HEAD): $(ls "$out" | tr '\n' ' ')"
