#!/bin/bash
# Development tool (run by hand; its output is committed as tests/data/ggml/mix-896.json):
# the type llama.cpp's llama-quantize gives every tensor under IQ4_XS and IQ4_NL, without
# and with an importance matrix, on a generated Qwen2 model with Qwen2.5-0.5B's 896-wide
# rows and query/key heads (14 of 64, 2 key heads) and 8 layers (so that the first eighth
# is one layer): the fallback table (IQ4_XS -> IQ4_NL, Q5_K -> Q5_1, Q6_K -> Q8_0 for rows
# not of 256) and the mix's rules, for test_gguf to hold qpk's presets to.
# Usage: tests/llamacpp/make_mix_896.sh QPK_BIN_DIR LLAMA_DIR FIXTURES_DIR
set -eu
bin=$1 llama=$2 fx=$3 here=$(cd "$(dirname "$0")" && pwd)
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
export LD_LIBRARY_PATH=$llama/build/bin
"$bin/qgen" "$tmp/m" --hidden 896 --intermediate 256 --layers 8 --heads 14 --kv-heads 2 --vocab 320 --dtype f32 -q
cp "$here/../data/tiny256/tokenizer.json" "$here/../data/tiny256/tokenizer_config.json" "$tmp/m/"
"$bin/qconvert" "$tmp/m" --dtype f32 -o "$tmp/f32.gguf" -q
# Any importance matrix does: llama-quantize's choices depend on whether it has one.
"$bin/qconvert" "$tmp/m" -q -o "$tmp/q8.gguf" --preset q8_0 --method imatrix --calib "$fx/text/calib.txt" \
  --calib-samples 2 --calib-len 64 --save-imatrix "$tmp/imatrix.gguf"
types() { "$bin/qinspect" "$1" --json | python3 -c '
import json, sys
print(json.dumps({t["name"]: t["type"] for t in json.load(sys.stdin)["tensors"] if t["type"] != "F32"}, sort_keys=True))'; }
{
  echo "{\"llama.cpp\": \"$(git -C "$llama" rev-parse --short HEAD)\","
  sep=
  for t in IQ4_XS IQ4_NL; do
    "$llama/build/bin/llama-quantize" "$tmp/f32.gguf" "$tmp/$t.gguf" $t 1 >/dev/null 2>&1
    "$llama/build/bin/llama-quantize" --imatrix "$tmp/imatrix.gguf" "$tmp/f32.gguf" "$tmp/$t-imatrix.gguf" $t 1 \
      >/dev/null 2>&1
    printf '%s "%s": %s,\n "%s+imatrix": %s' "$sep" $t "$(types "$tmp/$t.gguf")" $t "$(types "$tmp/$t-imatrix.gguf")"
    sep=,
  done
  echo "}"
} > "$here/../data/ggml/mix-896.json"
