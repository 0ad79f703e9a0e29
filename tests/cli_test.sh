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

for t in qconvert qinspect qgen; do
  expect 0 "^Usage: $t" -- "$bin/$t" --help
  expect 2 "unknown option '--bogus'" -- "$bin/$t" --bogus
done
expect 0 "qconvert 0\." -- "$bin/qconvert" --version
expect 2 "missing MODEL_DIR" -- "$bin/qconvert"
expect 2 "missing -o" -- "$bin/qconvert" "$tmp"
expect 2 "expected keep, f32, f16 or bf16" -- "$bin/qconvert" "$tmp" -o x.qpk --dtype q4
expect 2 "thread count" -- "$bin/qconvert" "$tmp" -o x.qpk -t 0
expect 4 "is not a folder" -- "$bin/qconvert" "$tmp/none" -o "$tmp/x.qpk"
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

echo "cli_test: $pass passed, $fail failed"
[ "$fail" -eq 0 ]
