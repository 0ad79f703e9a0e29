#!/bin/sh
# The main job on an embedded default: build qpk, generate a tiny random Qwen2
# checkpoint with qpk's own generator, convert it to .qpk and inspect the result.
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
echo "== qconvert: HF folder -> .qpk"
build/tools/qconvert "$demo/tiny-qwen2" -o "$demo/tiny.qpk"
echo "== qinspect --verify"
build/tools/qinspect "$demo/tiny.qpk" --verify
