#!/bin/bash
# GGUF split sets against llama.cpp's own gguf-split (a hand-built llama.cpp; CI has none, so this is a
# bench script, not a test): qpk's set is the file gguf-split makes of qpk's single GGUF, byte for byte
# (by tensor count and by size); gguf-split --merge of qpk's set gives a file qpk reads to the single
# file's logits bit for bit; gguf-split's own set reads in qpk to the same logits.
# Usage: bench/gguf_split_crosscheck.sh BIN_DIR LLAMA_BIN_DIR FIXTURES_DIR
set -u
bin=$1 lbin=$2 fx=$3
split=$lbin/llama-gguf-split
[ -x "$split" ] || { echo "no $split (cmake --build LLAMA_BUILD --target llama-gguf-split)"; exit 77; }
tmp=$(mktemp -d /tmp/qpk-split-XXXXXX)
trap 'rm -rf "$tmp"' EXIT
tokens=$fx/tokens/eval_public.i32 fail=0
"$bin/qconvert" "$fx/qwen-tiny-a" --quant int4 -o "$tmp/single.gguf" -q || exit 1
same() { # label A B
  if cmp -s "$2" "$3"; then echo "$1: identical"; else echo "FAIL: $1: $2 and $3 differ"; fail=$((fail + 1)); fi
}
exact() { # label MODEL
  if "$bin/qverify" "$2" --ref "$tmp/single.gguf" --tokens "$tokens" -q --max-kld 0 --min-top1 100 >"$tmp/v" 2>&1 &&
    grep -q 'max |diff| 0,' "$tmp/v"; then echo "$1: logits bit for bit the single file's"
  else echo "FAIL: $1:"; cat "$tmp/v"; fail=$((fail + 1)); fi
}
# by tensors (5 shards) and by size (21 MB: the embedding alone, then the rest)
"$bin/qconvert" "$fx/qwen-tiny-a" --quant int4 --split-max-tensors 10 -o "$tmp/qt.gguf" -q
"$split" --split --split-max-tensors 10 "$tmp/single.gguf" "$tmp/gt" >/dev/null 2>&1
for i in 1 2 3 4 5; do same "split by tensors, shard $i" "$tmp/qt-0000$i-of-00005.gguf" "$tmp/gt-0000$i-of-00005.gguf"; done
"$bin/qconvert" "$fx/qwen-tiny-a" --quant int4 --split-max-size 21MB -o "$tmp/qs.gguf" -q
"$split" --split --split-max-size 21M "$tmp/single.gguf" "$tmp/gs" >/dev/null 2>&1
for i in 1 2; do same "split by size, shard $i" "$tmp/qs-0000$i-of-00002.gguf" "$tmp/gs-0000$i-of-00002.gguf"; done
"$split" --merge "$tmp/qt-00001-of-00005.gguf" "$tmp/merged.gguf" >/dev/null 2>&1
exact "gguf-split --merge of qpk's set" "$tmp/merged.gguf"
exact "gguf-split's set read by qpk" "$tmp/gt-00001-of-00005.gguf"
exact "qpk's set" "$tmp/qt-00001-of-00005.gguf"
echo "gguf_split_crosscheck: $fail failed"
[ "$fail" -eq 0 ]
