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

# qgen across the family (issue 21): presets of the released shapes, options, refusals.
expect 0 "qwen3-30b-a3b +Qwen3-30B-A3B: 128 experts, top 8, no shared one" -- "$bin/qgen" --help
expect 0 "--experts-used K +num_experts_per_tok" -- "$bin/qgen" --help
# has DIR KEY VALUE: config.json holds "KEY": VALUE (cJSON prints a tab after the colon).
has() { expect 0 "" -- grep -qE "^[[:space:]]*\"$2\":[[:space:]]*$3,?\$" "$1/config.json"; }
lacks() { expect 1 "" -- grep -q "\"$2\"" "$1/config.json"; }
for p in qwen1.5-moe-a2.7b qwen2-57b-a14b qwen2.5-7b-yarn qwen3-0.6b qwen3-8b qwen3-30b-a3b; do
  expect 0 "" -- "$bin/qgen" "$tmp/c-$p" --preset "$p" --config-only
  expect 1 "" -- test -e "$tmp/c-$p/model.safetensors"
done
# The released config.json files' values (each checked against its Hugging Face copy).
c=$tmp/c-qwen1.5-moe-a2.7b
has "$c" model_type '"qwen2_moe"'; has "$c" architectures '\["Qwen2MoeForCausalLM"\]'; has "$c" hidden_size 2048
has "$c" num_hidden_layers 24; has "$c" num_attention_heads 16; has "$c" num_key_value_heads 16
has "$c" intermediate_size 5632; has "$c" num_experts 60; has "$c" num_experts_per_tok 4
has "$c" moe_intermediate_size 1408; has "$c" shared_expert_intermediate_size 5632; has "$c" vocab_size 151936
has "$c" norm_topk_prob false; has "$c" tie_word_embeddings false; has "$c" max_position_embeddings 8192
has "$c" decoder_sparse_step 1; has "$c" mlp_only_layers '\[\]'; lacks "$c" head_dim
c=$tmp/c-qwen2-57b-a14b
has "$c" hidden_size 3584; has "$c" num_hidden_layers 28; has "$c" num_attention_heads 28; has "$c" num_key_value_heads 4
has "$c" intermediate_size 18944; has "$c" num_experts 64; has "$c" num_experts_per_tok 8
has "$c" moe_intermediate_size 2560; has "$c" shared_expert_intermediate_size 20480; has "$c" vocab_size 151936
has "$c" tie_word_embeddings false; has "$c" max_position_embeddings 131072
c=$tmp/c-qwen2.5-7b-yarn
has "$c" model_type '"qwen2"'; has "$c" hidden_size 3584; has "$c" num_key_value_heads 4; has "$c" vocab_size 152064
has "$c" max_position_embeddings 32768; has "$c" type '"yarn"'; has "$c" factor 4
has "$c" original_max_position_embeddings 32768; lacks "$c" attention_factor; lacks "$c" beta_fast
c=$tmp/c-qwen3-0.6b
has "$c" architectures '\["Qwen3ForCausalLM"\]'; has "$c" hidden_size 1024; has "$c" num_hidden_layers 28
has "$c" num_attention_heads 16; has "$c" num_key_value_heads 8; has "$c" head_dim 128; has "$c" intermediate_size 3072
has "$c" tie_word_embeddings true; has "$c" max_position_embeddings 40960; has "$c" rope_theta 1000000
has "$c" attention_bias false
c=$tmp/c-qwen3-8b
has "$c" hidden_size 4096; has "$c" num_hidden_layers 36; has "$c" num_attention_heads 32; has "$c" num_key_value_heads 8
has "$c" head_dim 128; has "$c" intermediate_size 12288; has "$c" tie_word_embeddings false
c=$tmp/c-qwen3-30b-a3b
has "$c" architectures '\["Qwen3MoeForCausalLM"\]'; has "$c" hidden_size 2048; has "$c" num_hidden_layers 48
has "$c" num_attention_heads 32; has "$c" num_key_value_heads 4; has "$c" head_dim 128; has "$c" intermediate_size 6144
has "$c" num_experts 128; has "$c" num_experts_per_tok 8; has "$c" moe_intermediate_size 768
has "$c" norm_topk_prob true; has "$c" tie_word_embeddings false; lacks "$c" shared_expert_intermediate_size
# Options over a preset, and what they refuse (each would be dropped from config.json, or is no model).
expect 0 "" -- "$bin/qgen" "$tmp/o" --config-only --arch qwen3_moe --experts 6 --experts-used 3 --moe-intermediate 40 \
  --norm-topk --sparse-step 2 --mlp-only 0 --head-dim 24 --attention-bias --yarn 2 --yarn-original 4096 --layers 4
has "$tmp/o" num_experts 6; has "$tmp/o" num_experts_per_tok 3; has "$tmp/o" moe_intermediate_size 40
has "$tmp/o" norm_topk_prob true; has "$tmp/o" decoder_sparse_step 2; has "$tmp/o" mlp_only_layers '\[0\]'
has "$tmp/o" head_dim 24; has "$tmp/o" attention_bias true; has "$tmp/o" factor 2
has "$tmp/o" original_max_position_embeddings 4096
expect 0 "" -- "$bin/qgen" "$tmp/o" --config-only --preset tiny-moe --arch qwen2
has "$tmp/o" model_type '"qwen2"'; lacks "$tmp/o" num_experts; lacks "$tmp/o" mlp_only_layers
expect 0 "" -- "$bin/qgen" "$tmp/o" --config-only --preset qwen3-8b --hidden 2048
has "$tmp/o" head_dim 128 # Qwen3's head_dim is stated, not derived
expect 0 "" -- "$bin/qgen" "$tmp/o" --config-only --preset 7b --hidden 2048
lacks "$tmp/o" head_dim # Qwen2's is derived: 2048 / 32
expect 2 "^qgen: --arch takes qwen2, qwen2_moe, qwen3 or qwen3_moe$" -- "$bin/qgen" "$tmp/o" --arch llama
expect 2 "^qgen: unknown preset 'qwen9' \(qgen --help lists them\)$" -- "$bin/qgen" "$tmp/o" --preset qwen9
expect 2 "^qgen: --experts applies to qwen2_moe and qwen3_moe, not qwen2$" -- "$bin/qgen" "$tmp/o" --experts 4
expect 2 "^qgen: --no-norm-topk applies to qwen2_moe and qwen3_moe, not qwen3$" -- "$bin/qgen" "$tmp/o" --preset tiny-qwen3 --no-norm-topk
expect 2 "^qgen: --shared-intermediate applies to qwen2_moe: qwen3_moe has no shared expert$" -- \
  "$bin/qgen" "$tmp/o" --preset tiny-moe --arch qwen3_moe --shared-intermediate 8
expect 2 "^qgen: --attention-bias applies to qwen3 and qwen3_moe" -- "$bin/qgen" "$tmp/o" --preset tiny-moe --attention-bias
expect 2 "^qgen: --mlp-only names layer 5, but the model has 3 layers$" -- "$bin/qgen" "$tmp/o" --preset tiny-moe --mlp-only 1,5
expect 2 "^qgen: --mlp-only takes layer numbers separated by commas" -- "$bin/qgen" "$tmp/o" --preset tiny-moe --mlp-only 1,
expect 2 "^qgen: --yarn takes a factor from 1 to 1024$" -- "$bin/qgen" "$tmp/o" --yarn 0.5
expect 2 "^qgen: --yarn-original goes with --yarn \(or a preset with YaRN\)$" -- "$bin/qgen" "$tmp/o" --yarn-original 4096
expect 2 "^qgen: the options describe no model qpk reads: num_experts_per_tok = 9 is not in \[1, num_experts = 8\]$" -- \
  "$bin/qgen" "$tmp/o" --preset tiny-moe --experts-used 9
expect 2 "^qgen: hidden size 80 is not a multiple of 3 heads: give --head-dim$" -- "$bin/qgen" "$tmp/o" --hidden 80 --heads 3
expect 2 "^qgen: the options describe no model qpk reads: head_dim 15 is odd; RoPE needs pairs$" -- \
  "$bin/qgen" "$tmp/o" --arch qwen3 --head-dim 15
# Each tiny architecture converts, and its .qpk computes the folder's logits bit for bit (F32).
for i in $(seq 0 255); do printf "\\x$(printf %02x $(( (i * 7 + 3) % 256 )))\\x00\\x00\\x00"; done > "$tmp/f.i32"
for p in tiny-moe tiny-qwen3 tiny-qwen3-moe tiny-yarn; do
  expect 0 "" -- "$bin/qgen" -q "$tmp/$p" --preset "$p" --dtype f32
  expect 0 "wrote" -- "$bin/qconvert" "$tmp/$p" -o "$tmp/$p.qpk"
  expect 0 "KL divergence +mean 0;" -- "$bin/qverify" "$tmp/$p.qpk" --ref "$tmp/$p" --tokens "$tmp/f.i32" -c 64 \
    --max-kld 0 --max-abs 0 --min-top1 100 --score-all
done
expect 0 "" -- "$bin/qgen" -q "$tmp/made-moe" --preset tiny --arch qwen3_moe --dtype f32 --shards 3
expect 0 "KL divergence +mean 0;" -- sh -c "\"$bin/qconvert\" -q \"$tmp/made-moe\" -o \"$tmp/made-moe.qpk\" && \
  \"$bin/qverify\" \"$tmp/made-moe.qpk\" --ref \"$tmp/made-moe\" --tokens \"$tmp/f.i32\" -c 64 --max-abs 0"
# The experts' tensors as transformers names and shapes them: a literal few, then the whole set against the
# fixtures' models (written outside qpk, from transformers' definitions), read from the safetensors headers.
header() { # FILE: "name dtype [shape]" per tensor, sorted
  local hl
  hl=$(od -An -tu8 -N8 "$1" | tr -d ' ')
  head -c $((8 + hl)) "$1" | tail -c "$hl" | grep -oE '"[^"]+":\{"dtype":"[A-Z0-9]+","shape":\[[0-9,]*\]' |
    sed -E 's/"([^"]+)":\{"dtype":"([A-Z0-9]+)","shape":\[([0-9,]*)\]/\1 \2 [\3]/' | LC_ALL=C sort
}
header "$tmp/tiny-moe/model.safetensors" > "$tmp/moe-names.txt"
for want in 'model.layers.0.mlp.gate.weight F32 \[8,64\]' 'model.layers.0.mlp.experts.0.gate_proj.weight F32 \[32,64\]' \
  'model.layers.2.mlp.experts.7.up_proj.weight F32 \[32,64\]' 'model.layers.2.mlp.experts.7.down_proj.weight F32 \[64,32\]' \
  'model.layers.0.mlp.shared_expert.gate_proj.weight F32 \[96,64\]' 'model.layers.0.mlp.shared_expert.down_proj.weight F32 \[64,96\]' \
  'model.layers.0.mlp.shared_expert_gate.weight F32 \[1,64\]' 'model.layers.1.mlp.gate_proj.weight F32 \[128,64\]' \
  'lm_head.weight F32 \[2048,64\]'; do
  expect 0 "" -- grep -qx "$want" "$tmp/moe-names.txt"
done
expect 0 "^48$" -- grep -c 'mlp\.experts\.[0-7]\.' "$tmp/moe-names.txt" # 2 sparse layers x 8 experts x 3
expect 1 "" -- grep -q 'layers\.1\.mlp\.experts' "$tmp/moe-names.txt"  # layer 1 is in mlp_only_layers
if [ -d "${QPK_FIXTURES:-}/qwen-tiny-moe" ]; then
  for p in moe qwen3 qwen3-moe yarn; do
    "$bin/qgen" -q "$tmp/fx-$p" --preset "tiny-$p"
    header "$tmp/fx-$p/model.safetensors" > "$tmp/ours.txt"
    header "$QPK_FIXTURES/qwen-tiny-$p/model.safetensors" > "$tmp/theirs.txt"
    expect 0 "" -- diff "$tmp/ours.txt" "$tmp/theirs.txt"
    expect 0 "" -- test -s "$tmp/ours.txt"
  done
fi

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
expect 2 "qpk, gguf, gptq, awq, compressed-tensors or mlx" -- "$bin/qconvert" "$tmp/g" -o "$tmp/m.gguf" --to ggml
expect 2 "already a .qpk" -- "$bin/qconvert" "$tmp/m.qpk" -o "$tmp/again.qpk"
expect 2 "pad-intermediate takes a multiple in 1..1048576" -- "$bin/qconvert" "$tmp/m.qpk" -o "$tmp/again.qpk" --pad-intermediate 0
expect 2 "pad-intermediate takes a multiple in 1..1048576" -- "$bin/qconvert" "$tmp/m.qpk" -o "$tmp/again.qpk" --pad-intermediate -8
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
  expect 0 "wrote" -- "$bin/qconvert" "$a" -o "$tmp/a-pad.gguf" --quant int4s --pad-intermediate 256
  expect 0 "blk.3.ffn_down.weight +Q4_0 +\\[512, 128\\]" -- "$bin/qinspect" "$tmp/a-pad.gguf"
  expect 3 "int4s in groups of 32: padding intermediate_size 384 to 385 adds 1 column" -- "$bin/qconvert" "$a" -o "$tmp/a-pad5.gguf" --quant int4s --pad-intermediate 5
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
  # compressed-tensors: out with actorder group, and read back as the source format it is.
  expect 0 'actorder.:[[:space:]]+"group"' -- sh -c "\"$bin/qconvert\" -q \"$g\" --to compressed-tensors -o \"$tmp/g-ct\" && cat \"$tmp/g-ct/config.json\""
  expect 0 '"source":\{"format":"compressed-tensors","layout":"pack-quantized"' \
    -- sh -c "\"$bin/qconvert\" -q \"$tmp/g-ct\" -o \"$tmp/g-ct.qpk\" && \"$bin/qinspect\" \"$tmp/g-ct.qpk\" --no-tensors"
  expect 2 "qpk, gguf, gptq, awq, compressed-tensors or mlx" -- "$bin/qconvert" "$g" --to ct -o "$tmp/x"
  expect 2 "go with --to gptq, awq, compressed-tensors or mlx" -- "$bin/qconvert" "$g" -o "$tmp/x.qpk" --shard-size 1GB
  expect 2 "--shard-size takes a whole number of bytes" -- "$bin/qconvert" "$a" --to gptq -o "$tmp/x" --quant int4 --shard-size 4XB
  expect 2 "--gptq-format goes with --to gptq" -- "$bin/qconvert" "$a" --to awq -o "$tmp/x" --quant int4 --gptq-format v2
  expect 2 "it goes with --to gguf" -- "$bin/qconvert" "$g" --to awq -o "$tmp/x" --requantize
  # GGUF split sets: written as gguf-split names them, read from the first shard, a later one named
  expect 2 "split a GGUF into a set: they go with --to gguf" -- "$bin/qconvert" "$a" -o "$tmp/x.qpk" --split-max-tensors 9
  expect 2 "--split-max-size takes a whole number of bytes" -- "$bin/qconvert" "$a" -o "$tmp/x.gguf" --split-max-size 2XB
  expect 2 "--split-max-tensors takes a whole number" -- "$bin/qconvert" "$a" -o "$tmp/x.gguf" --split-max-tensors 0
  expect 0 "wrote .*/s-00001-of-00005.gguf" -- "$bin/qconvert" "$a" --quant int4 -o "$tmp/s.gguf" --split-max-tensors 10
  expect 0 "" -- test ! -e "$tmp/s.gguf"
  expect 0 "in 5 files \(a split set\)" -- "$bin/qinspect" "$tmp/s-00001-of-00005.gguf" --verify --no-tensors
  expect 2 "is shard 2 of 5 of a split set: give the first, .*/s-00001-of-00005.gguf" \
    -- "$bin/qinspect" "$tmp/s-00002-of-00005.gguf"
else
  echo "cli_test: no fixtures at '${QPK_FIXTURES:-}': GGUF export checks skipped" >&2
fi

echo "cli_test: $pass passed, $fail failed"
[ "$fail" -eq 0 ]
