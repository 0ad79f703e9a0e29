#!/bin/sh
# The main job on an embedded default: build qpk, generate a tiny random Qwen2
# checkpoint with qpk's own generator, convert it to .qpk unquantized, int8 and int4,
# inspect the results, and measure the quantized files against the original.
set -e
cd "$(dirname "$0")/.."
tools/deps.sh
cmake -S . -B build -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build build -j"$(nproc)" >/dev/null
demo=build/demo
rm -rf "$demo" && mkdir -p "$demo"
echo "== qgen: a tiny random Qwen2 checkpoint (GQA, tied embeddings, BF16)"
build/tools/qgen "$demo/tiny-qwen2" --preset tiny
ls -l "$demo/tiny-qwen2"
echo "== qconvert: HF folder -> .qpk (as stored, int8, int4; groups of 32)"
build/tools/qconvert "$demo/tiny-qwen2" -o "$demo/tiny.qpk"
build/tools/qconvert "$demo/tiny-qwen2" -o "$demo/tiny-int8.qpk" --quant int8 --group 32
build/tools/qconvert "$demo/tiny-qwen2" -o "$demo/tiny-int4.qpk" --quant int4 --group 32
echo "== qinspect --verify"
build/tools/qinspect "$demo/tiny.qpk" --verify --no-tensors
build/tools/qinspect "$demo/tiny-int4.qpk" --no-tensors | grep -E "quantization|tensors"
# 4096 pseudo-random token ids (the model is random: any tokens will do).
i=0; seed=7
while [ $i -lt 4096 ]; do
  seed=$(( (seed * 1103515245 + 12345) % 2147483648 )); id=$(( seed % 512 ))
  printf "\\$(printf %03o $((id % 256)))\\$(printf %03o $((id / 256)))\\000\\000"
  i=$((i + 1))
done > "$demo/tokens.i32"
for q in int8 int4; do
  echo "== qverify: $q against the original HF folder (chunks of 128 tokens)"
  build/tools/qverify "$demo/tiny-$q.qpk" --ref "$demo/tiny-qwen2" --tokens "$demo/tokens.i32" -c 128 -q
done
