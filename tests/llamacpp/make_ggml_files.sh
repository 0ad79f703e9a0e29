#!/bin/bash
# Development tool (run by hand; its outputs are committed under tests/data/ggml/):
# GGUF files written by llama.cpp's own llama-quantize (built by hand outside the repository:
# b4747 first, 3f545becc since the i-quants, which rewrote the older files byte for byte
# the same), of a tiny generated Qwen2 model whose rows are all 256 wide, so that every
# type is llama.cpp's own choice and layout; and expected.json, the XXH3 of every tensor as
# ggml itself dequantizes it (ggml_hashes.c, linked against that build).
# Usage: tests/llamacpp/make_ggml_files.sh QPK_BIN_DIR LLAMA_DIR
set -eu
bin=$(cd "$1" && pwd) llama=$(cd "$2" && pwd) here=$(cd "$(dirname "$0")" && pwd)
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
# The lower i-quants, with an importance matrix as llama-quantize asks (qpk's own, from a
# calibration run on the fuzz corpus's fixed texts). Relative paths: llama-quantize
# records the imatrix's path (and the imatrix its text's) in the file.
cat "$here"/../fuzz/corpus/tokenizer/{english,code,chinese,unicode}.txt >"$tmp/calib.txt"
(cd "$tmp" && "$bin/qconvert" m --quant q4_k --method imatrix --calib calib.txt --calib-samples 8 --calib-len 32 \
  --save-imatrix imatrix.gguf -o q4_k.gguf -q)
quantize() { # OUT TYPE [OPTIONS]: llama-quantize of the f32 model with the imatrix, its log shown if it fails
  local out=$1 t=$2
  shift 2
  (cd "$tmp" && "$llama/build/bin/llama-quantize" --imatrix imatrix.gguf "$@" f32.gguf "$out" $t 1 >"$t.log" 2>&1) ||
    { cat "$tmp/$t.log"; exit 1; }
}
for t in IQ2_XXS IQ2_XS IQ2_S IQ3_XXS IQ3_S IQ1_S IQ1_M TQ1_0 TQ2_0; do
  quantize "$out/tiny-$t.gguf" $t
done
# A fuzz seed with most of them in one model, a linear of each type (only the embedding may go
# without importance, so IQ3_XXS, the one left, sits where token_embd would need it).
quantize "$here/../fuzz/corpus/gguf/qwen2-tiny-iquants.gguf" TQ2_0 --token-embedding-type tq2_0 \
  --tensor-type attn_q=iq1_m --tensor-type attn_k=iq2_xxs --tensor-type attn_v=iq3_s --tensor-type attn_output=tq1_0 \
  --tensor-type ffn_gate=iq2_s --tensor-type ffn_up=iq2_xs --tensor-type ffn_down=iq1_s
cc -O2 "$here/ggml_hashes.c" -I"$llama/ggml/include" -I"$llama/ggml/src" -L"$llama/build/bin" -lggml-base -lggml -lxxhash \
  -Wl,-rpath,"$llama/build/bin" -o "$tmp/ggml_hashes"
"$tmp/ggml_hashes" "$out"/tiny-*.gguf >"$out/expected.json"
echo "llama.cpp $(git -C "$llama" rev-parse --short HEAD): $(ls "$out" | tr '\n' ' ')"
