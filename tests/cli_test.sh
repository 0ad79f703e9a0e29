#!/bin/bash
# CLI tests: exit codes, messages and outputs of the tools, as a user meets them.
# Usage: cli_test.sh BIN_DIR
set -u
bin=$1
tmp=$(mktemp -d /tmp/qpk-cli-XXXXXX)
trap 'rm -rf "$tmp"' EXIT
pass=0 fail=0

# expect CODE PATTERN -- command...: exit status CODE and PATTERN in stdout+stderr.
expect() {
  local code=$1 pattern=$2
  shift 3
  local out
  out=$("$@" 2>&1)
  local got=$?
  if [ "$got" -eq "$code" ] && grep -qE -- "$pattern" <<<"$out"; then
    pass=$((pass + 1))
  else
    fail=$((fail + 1))
    echo "FAIL: $* -> exit $got (want $code), pattern '$pattern' in:" >&2
    head -5 <<<"$out" >&2
  fi
}

for t in qconvert qinspect qgen qverify qtokenize; do
  expect 0 "^Usage: $t" -- "$bin/$t" --help
  expect 2 "unknown option '--bogus'" -- "$bin/$t" --bogus
done
expect 0 "qconvert 0\." -- "$bin/qconvert" --version
expect 2 "missing MODEL_DIR" -- "$bin/qconvert"
expect 2 "missing -o" -- "$bin/qconvert" "$tmp"
expect 2 "expected keep, f32, f16 or bf16" -- "$bin/qconvert" "$tmp" -o x.qpk --dtype q4
expect 2 "thread count" -- "$bin/qconvert" "$tmp" -o x.qpk -t 0
expect 4 "cannot open .*none.: No such file" -- "$bin/qconvert" "$tmp/none" -o "$tmp/x.qpk"
expect 4 "has no config.json" -- "$bin/qconvert" "$tmp" -o "$tmp/x.qpk"

# A real conversion, then inspection.
expect 0 "" -- "$bin/qgen" "$tmp/m" --preset tiny --untied --shards 2 --dtype f16
expect 0 "wrote" -- "$bin/qconvert" "$tmp/m" -o "$tmp/m.qpk"
expect 0 "tensors +27," -- "$bin/qinspect" "$tmp/m.qpk"
expect 0 "verified +all tensor and file checksums match" -- "$bin/qinspect" "$tmp/m.qpk" --verify
expect 0 '"verified":[[:space:]]*true' -- "$bin/qinspect" "$tmp/m.qpk" --verify --json
expect 0 "lm_head.weight +f16" -- "$bin/qinspect" "$tmp/m.qpk"
expect 0 "embeddings untied" -- "$bin/qinspect" "$tmp/m.qpk" --no-tensors
expect 0 "written by +qconvert .*--preset|qconvert $tmp/m -o" -- "$bin/qinspect" "$tmp/m.qpk" --no-tensors
expect 2 "unexpected argument" -- "$bin/qinspect" "$tmp/m.qpk" other.qpk

# Thread count does not change the file (the output path is part of the recorded command).
"$bin/qconvert" -q "$tmp/m" -o "$tmp/m1.qpk" -t 1 && mv "$tmp/m1.qpk" "$tmp/first.qpk"
"$bin/qconvert" -q "$tmp/m" -o "$tmp/m1.qpk" -t 2
expect 0 "" -- cmp "$tmp/first.qpk" "$tmp/m1.qpk"
expect 4 "cannot create" -- "$bin/qconvert" "$tmp/m" -o "$tmp/no/such/dir.qpk"

# Corrupt inputs: exit 3, a message, no output file.
cp "$tmp/m.qpk" "$tmp/bad.qpk"
printf 'X' | dd of="$tmp/bad.qpk" bs=1 seek=0 conv=notrunc 2>/dev/null
expect 3 "bad magic" -- "$bin/qinspect" "$tmp/bad.qpk"
cp "$tmp/m.qpk" "$tmp/flip.qpk"
printf '\x55' | dd of="$tmp/flip.qpk" bs=1 seek=300 conv=notrunc 2>/dev/null
expect 0 "" -- "$bin/qinspect" "$tmp/flip.qpk"
expect 3 "data checksum" -- "$bin/qinspect" "$tmp/flip.qpk" --verify
head -c 1000 "$tmp/m.qpk" > "$tmp/short.qpk"
expect 3 "truncated" -- "$bin/qinspect" "$tmp/short.qpk"
expect 4 "cannot open" -- "$bin/qinspect" "$tmp/none.qpk"
sed -i 's/"qwen2"/"llama"/' "$tmp/m/config.json"
expect 3 'model_type "llama" is not supported' -- "$bin/qconvert" "$tmp/m" -o "$tmp/llama.qpk"
expect 1 "" -- test -e "$tmp/llama.qpk"

# qverify: perplexity, comparisons, gates, JSON.
"$bin/qgen" -q "$tmp/v" --preset tiny --dtype f32
"$bin/qconvert" -q "$tmp/v" -o "$tmp/v32.qpk"
"$bin/qconvert" -q "$tmp/v" -o "$tmp/v16.qpk" --dtype f16
for i in $(seq 0 255); do printf "\\x$(printf %02x $(( (i * 7 + 3) % 256 )))\\x00\\x00\\x00"; done > "$tmp/t.i32"
printf '\x01\x02\x03' > "$tmp/odd.i32"
printf '\x0f\x27\x00\x00\x01\x00\x00\x00' > "$tmp/big.i32"
expect 0 "^Usage: qverify" -- "$bin/qverify" --help
expect 0 "perplexity +[0-9.]+ \+/- [0-9.]+" -- "$bin/qverify" "$tmp/v32.qpk" --tokens "$tmp/t.i32" -c 64
expect 0 "^\[1\][0-9.]+,\[2\][0-9.]+" -- "$bin/qverify" "$tmp/v32.qpk" --tokens "$tmp/t.i32" -c 64 --chunks 2
expect 0 "top-1 +100.000% agreement" -- "$bin/qverify" "$tmp/v32.qpk" --ref "$tmp/v32.qpk" --tokens "$tmp/t.i32" -c 64
# The HF folder (F32) and its f32 conversion compute the same bits: every gate at its tightest passes.
expect 0 "KL divergence +mean 0;" -- "$bin/qverify" "$tmp/v32.qpk" --ref "$tmp/v" --tokens "$tmp/t.i32" -c 64 \
  --max-kld 0 --max-abs 0 --min-top1 100 --max-dppl 0 --score-all
expect 1 "gate failed: --max-kld 0 " -- "$bin/qverify" "$tmp/v16.qpk" --ref "$tmp/v32.qpk" --tokens "$tmp/t.i32" -c 64 --max-kld 0
expect 1 "gate failed: --max-abs 0 " -- "$bin/qverify" "$tmp/v16.qpk" --ref "$tmp/v32.qpk" --tokens "$tmp/t.i32" -c 64 --max-abs 0
expect 1 "gate failed: --min-top1 100.5" -- "$bin/qverify" "$tmp/v16.qpk" --ref "$tmp/v32.qpk" --tokens "$tmp/t.i32" -c 64 --min-top1 100.5
expect 1 "gate failed: --max-dppl 0 " -- "$bin/qverify" "$tmp/v16.qpk" --ref "$tmp/v32.qpk" --tokens "$tmp/t.i32" -c 64 --max-dppl 0
expect 1 "gate failed: --max-ppl 1 " -- "$bin/qverify" "$tmp/v32.qpk" --tokens "$tmp/t.i32" -c 64 --max-ppl 1
expect 0 "" -- "$bin/qverify" "$tmp/v16.qpk" --ref "$tmp/v32.qpk" --tokens "$tmp/t.i32" -c 64 --max-kld 1 --min-top1 50 --max-abs 10 --max-dppl 0.5
json=$("$bin/qverify" "$tmp/v16.qpk" --ref "$tmp/v32.qpk" --tokens "$tmp/t.i32" -c 64 --json --max-kld 0 2>/dev/null)
for key in n_tokens n_scored ppl ppl_stderr ppl_ref max_abs_diff mean_abs_diff top1_pct kld_mean kld_p50 \
           kld_p90 kld_p99 kld_p999 kld_max dp_mean; do
  expect 0 "\"$key\":[[:space:]]*[-0-9]" -- echo "$json"
done
expect 0 '"gates_failed":[[:space:]]*\["max-kld"\]' -- echo "$json"
expect 0 '"ppl_ref":[[:space:]]*null' -- "$bin/qverify" "$tmp/v32.qpk" --tokens "$tmp/t.i32" -c 64 --json
expect 2 "nothing to measure" -- "$bin/qverify" "$tmp/v32.qpk"
expect 2 "--max-kld needs --ref" -- "$bin/qverify" "$tmp/v32.qpk" --tokens "$tmp/t.i32" --max-kld 1
expect 2 "needs --tokens" -- "$bin/qverify" "$tmp/v32.qpk" --ref "$tmp/v16.qpk"
expect 3 "not a whole number of int32" -- "$bin/qverify" "$tmp/v32.qpk" --tokens "$tmp/odd.i32" -c 2
expect 3 "token id 9999" -- "$bin/qverify" "$tmp/v32.qpk" --tokens "$tmp/big.i32" -c 2
expect 2 "chunk length of at least 2" -- "$bin/qverify" "$tmp/v32.qpk" --tokens "$tmp/big.i32" -c 1
expect 3 "odd.i32. is a file of an unknown kind; expected a .qpk file" -- "$bin/qverify" "$tmp/v32.qpk" --ref "$tmp/odd.i32"
expect 4 "cannot open" -- "$bin/qverify" "$tmp/none.qpk" --tokens "$tmp/t.i32"

# Calibrated quantization: usage errors, and the same bytes for any thread count.
expect 2 "needs --quant" -- "$bin/qconvert" "$tmp/v" -o "$tmp/c.qpk" --method gptq --calib-tokens "$tmp/t.i32"
expect 2 "needs calibration data" -- "$bin/qconvert" "$tmp/v" -o "$tmp/c.qpk" --method awq --quant int4
expect 2 "rtn, gptq, awq, awq\+gptq or imatrix" -- "$bin/qconvert" "$tmp/v" -o "$tmp/c.qpk" --method hqq
expect 2 "needs a number in" -- "$bin/qconvert" "$tmp/v" -o "$tmp/c.qpk" --damp -1
expect 3 "calibration needs at least 512 tokens" -- "$bin/qconvert" "$tmp/v" -o "$tmp/c.qpk" --quant int4 \
  --group 32 --method gptq --calib-tokens "$tmp/big.i32"
for m in gptq awq; do
  "$bin/qconvert" -q "$tmp/v" -o "$tmp/c1.qpk" --quant int4 --group 32 --method $m --calib-tokens "$tmp/t.i32" \
    --calib-samples 4 --calib-len 64 -t 1 && mv "$tmp/c1.qpk" "$tmp/first.qpk"
  "$bin/qconvert" -q "$tmp/v" -o "$tmp/c1.qpk" --quant int4 --group 32 --method $m --calib-tokens "$tmp/t.i32" \
    --calib-samples 4 --calib-len 64 -t 2
  expect 0 "" -- cmp "$tmp/first.qpk" "$tmp/c1.qpk"
  expect 0 "\"method\":\"$m\"" -- "$bin/qinspect" "$tmp/c1.qpk" --no-tensors
done

# GGUF for llama.cpp: refusals, then (with the fixtures' tokenizer) export, re-pack and inspection.
"$bin/qgen" "$tmp/g" --preset tiny >/dev/null
expect 3 "no tokenizer.json" -- "$bin/qconvert" "$tmp/g" -o "$tmp/m.gguf"
expect 2 "groups of 32: leave out --group" -- "$bin/qconvert" "$tmp/g" -o "$tmp/m.gguf" --quant int8 --group 128
expect 2 "qpk, gguf, gptq or awq" -- "$bin/qconvert" "$tmp/g" -o "$tmp/m.gguf" --to ggml
expect 2 "already a .qpk" -- "$bin/qconvert" "$tmp/m.qpk" -o "$tmp/again.qpk"
expect 2 "re-packed with its tensors as they are" -- "$bin/qconvert" "$tmp/m.qpk" -o "$tmp/m.gguf" --quant int8
expect 3 "embeds no tokenizer.json" -- "$bin/qconvert" "$tmp/m.qpk" -o "$tmp/m.gguf"
expect 1 "" -- test -e "$tmp/m.gguf"
expect 0 "test.strings +\\[string x 4\\]" -- "$bin/qinspect" "$(dirname "$0")/fuzz/corpus/gguf/all-types.gguf"
expect 3 "no general.architecture" -- "$bin/qinspect" "$(dirname "$0")/fuzz/corpus/gguf/all-types.gguf" --verify
a=${QPK_FIXTURES:-}/qwen-tiny-a
if [ -d "$a" ]; then
  expect 0 "wrote" -- "$bin/qconvert" "$a" -o "$tmp/a.gguf" --quant int4s
  expect 0 "check +qwen2 tensors and shapes complete" -- "$bin/qinspect" "$tmp/a.gguf" --verify
  expect 0 "blk.3.ffn_down.weight +Q4_0 +\\[384, 128\\]" -- "$bin/qinspect" "$tmp/a.gguf"
  expect 0 '"format":[[:space:]]*"gguf"' -- "$bin/qinspect" "$tmp/a.gguf" --json --no-tensors
  expect 0 "wrote" -- "$bin/qconvert" "$a" -o "$tmp/a4.qpk" --quant int4 --group 32
  expect 0 "Q4_1: [0-9]+ of [0-9]+ blocks" -- "$bin/qconvert" "$tmp/a4.qpk" -o "$tmp/a4.bin" --to gguf
  expect 0 "blk.0.attn_q.weight +Q4_1" -- "$bin/qinspect" "$tmp/a4.bin"
  expect 0 "wrote" -- "$bin/qconvert" "$a" -o "$tmp/a128.qpk" --quant int8
  # A group of 128 is four Q8_0 blocks sharing its scale: exact, no requantization.
  expect 0 "wrote" -- "$bin/qconvert" "$tmp/a128.qpk" -o "$tmp/a128.gguf"
  expect 0 "blk.0.attn_q.weight +Q8_0" -- "$bin/qinspect" "$tmp/a128.gguf"
  head -c 4000 "$tmp/a.gguf" >"$tmp/trunc.gguf"
  expect 3 "runs past the end of the file" -- "$bin/qinspect" "$tmp/trunc.gguf"
  cp "$tmp/a.gguf" "$tmp/v9.gguf"
  printf '\x09' | dd of="$tmp/v9.gguf" bs=1 seek=4 conv=notrunc 2>/dev/null
  expect 3 "GGUF version 9" -- "$bin/qinspect" "$tmp/v9.gguf"
  # qtokenize: the fixture README's example, through a folder, a .qpk and a link file.
  printf 'Hello, my dog is cute' >"$tmp/hello.txt"
  expect 0 "^9707 11 847 5562 374 18838$" -- "$bin/qtokenize" "$a" "$tmp/hello.txt"
  expect 0 "^9707 11 847 5562 374 18838$" -- "$bin/qtokenize" "$tmp/a4.qpk" "$tmp/hello.txt"
  expect 0 "^9707 11 847 5562 374 18838$" -- "$bin/qtokenize" "$a-outlier/tokenizer.json" "$tmp/hello.txt"
  printf '9707, 11 847\n5562 374 18838 151643\n' >"$tmp/ids.txt"
  expect 0 "^Hello, my dog is cute$" -- "$bin/qtokenize" "$a" --decode --skip-special "$tmp/ids.txt"
  printf '9707 999999\n' >"$tmp/bad-ids.txt"
  expect 3 "999999" -- "$bin/qtokenize" "$a" --decode "$tmp/bad-ids.txt"
  # Text in: qverify --text tokenizes with the model's own tokenizer (the .qpk's embedded
  # copy) to the fixture's ids, so the perplexity is the one --tokens gives.
  fx=$QPK_FIXTURES
  p1=$("$bin/qverify" "$tmp/a4.qpk" --tokens "$fx/tokens/eval_public.i32" -c 64 --chunks 3 -q | grep '^perplexity')
  p2=$("$bin/qverify" "$tmp/a4.qpk" --text "$fx/text/eval_public.txt" -c 64 --chunks 3 -q | grep '^perplexity')
  expect 0 "" -- test -n "$p1" -a "$p1" = "$p2"
  expect 2 "not both" -- "$bin/qverify" "$tmp/a4.qpk" --text "$fx/text/eval_public.txt" --tokens "$fx/tokens/eval_public.i32"
  expect 2 "goes with --method gptq or awq" -- "$bin/qconvert" "$a" -o "$tmp/c.qpk" --quant int4 --calib "$fx/text/calib.txt"
  expect 2 "one of --calib and --calib-tokens" -- "$bin/qconvert" "$a" -o "$tmp/c.qpk" --quant int4 --method gptq \
    --calib "$fx/text/calib.txt" --calib-tokens "$tmp/t.i32"
  expect 0 '"format":"text"' -- sh -c "\"$bin/qconvert\" -q \"$a\" -o \"$tmp/c.qpk\" --quant int4s --group 32 \
    --method awq --calib \"$fx/text/calib.txt\" --calib-samples 2 --calib-len 64 && \"$bin/qinspect\" \"$tmp/c.qpk\" --no-tensors"
  # awq+gptq takes GPTQ's options and records both methods' parameters.
  expect 0 '"method":"awq\+gptq".*"damp":0.02,"act_order":false,"alpha_grid":20' -- sh -c "\"$bin/qconvert\" -q \"$a\" -o \"$tmp/c2.qpk\" \
    --quant int4 --group 32 --method awq+gptq --damp 0.02 --calib \"$fx/text/calib.txt\" --calib-samples 2 --calib-len 64 && \
    \"$bin/qinspect\" \"$tmp/c2.qpk\" --no-tensors"
  expect 2 "--method takes rtn, gptq, awq, awq\+gptq or imatrix" -- "$bin/qconvert" "$a" -o "$tmp/c.qpk" --quant int4 --method gptq+awq
  # imatrix steers ggml's block fits only: on a grid type it would change nothing, so it is refused.
  expect 2 "int4 is quantized by its grid's rule, which takes no importance" -- "$bin/qconvert" "$a" -o "$tmp/i.qpk" \
    --quant int4 --method imatrix --calib-tokens "$fx/tokens/eval_public.i32" --calib-samples 2 --calib-len 64
  expect 1 "" -- test -e "$tmp/i.qpk" # nothing written
  # ... and exports to GGUF as Q4_0 through the same path
  expect 0 "blk.0.ffn_up.weight +Q4_0" -- sh -c "\"$bin/qconvert\" -q \"$tmp/c.qpk\" --to gguf -o \"$tmp/c.gguf\" && \"$bin/qinspect\" \"$tmp/c.gguf\""
  # GPTQ/AWQ checkpoints: imported with their source recorded, exported, refused where a layout cannot hold them.
  g=$fx/qwen-tiny-a-gptq-int4-actorder
  expect 0 '"method":"imported","source":\{"format":"gptq","layout":"gptq","bits":4,"group_size":32,"sym":false,"desc_act":true' \
    -- sh -c "\"$bin/qconvert\" -q \"$g\" -o \"$tmp/g.qpk\" && \"$bin/qinspect\" \"$tmp/g.qpk\" --no-tensors"
  expect 0 "format +qpk v2" -- "$bin/qinspect" "$tmp/g.qpk" --no-tensors
  expect 2 "already quantized \(gptq\)" -- "$bin/qconvert" "$g" -o "$tmp/x.qpk" --quant int4
  expect 3 "act-order .*--requantize" -- "$bin/qconvert" "$g" -o "$tmp/g.gguf"
  expect 0 "28 linears requantized to groups of 32 .*KLD mean" -- "$bin/qconvert" "$g" -o "$tmp/g.gguf" --requantize
  expect 0 "desc_act.:[[:space:]]+true" -- sh -c "\"$bin/qconvert\" -q \"$tmp/g.qpk\" --to gptq -o \"$tmp/g-out\" && cat \"$tmp/g-out/config.json\""
  expect 3 "takes its input permuted" -- "$bin/qconvert" "$tmp/g.qpk" --to awq -o "$tmp/g-awq"
  expect 0 "" -- test ! -e "$tmp/g-awq"
  expect 2 "go with --to gptq or awq" -- "$bin/qconvert" "$g" -o "$tmp/x.qpk" --shard-size 1GB
  expect 2 "--shard-size takes a whole number of bytes" -- "$bin/qconvert" "$a" --to gptq -o "$tmp/x" --quant int4 --shard-size 4XB
  expect 2 "--gptq-format goes with --to gptq" -- "$bin/qconvert" "$a" --to awq -o "$tmp/x" --quant int4 --gptq-format v2
  expect 2 "it goes with --to gguf" -- "$bin/qconvert" "$g" --to awq -o "$tmp/x" --requantize
else
  echo "cli_test: no fixtures at '${QPK_FIXTURES:-}': GGUF export checks skipped" >&2
fi

echo "cli_test: $pass passed, $fail failed"
[ "$fail" -eq 0 ]
