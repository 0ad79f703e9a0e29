#!/bin/bash
# The dependency direction of docs/architecture.md, checked on the objects themselves:
# every symbol a folder library uses that any folder defines (qpk_ or not) must be
# defined in that folder or in one below it (format <- tokenizer, quant <- model <- runtime <- convert, verify).
# Usage: layering_test.sh BUILD_DIR
set -u
build=$1
declare -A below=(
  [format]="format"
  [tokenizer]="tokenizer format"
  [quant]="quant format"
  [model]="model quant tokenizer format"
  [runtime]="runtime model quant tokenizer format"
  [convert]="convert runtime model quant tokenizer format"
  [verify]="verify runtime model quant tokenizer format"
)
tmp=$(mktemp -d /tmp/qpk-layers-XXXXXX)
trap 'rm -rf "$tmp"' EXIT
for layer in "${!below[@]}"; do
  find "$build/$layer" -name '*.o' -path '*CMakeFiles/qpk_*' | xargs -r nm --defined-only 2>/dev/null |
    awk '$2 ~ /^[TDRB]$/ {print $3}' | sort -u > "$tmp/$layer.def"
done
cat "$tmp"/*.def | sort -u > "$tmp/ours"
fail=0
for layer in "${!below[@]}"; do
  : > "$tmp/allowed"
  for l in ${below[$layer]}; do cat "$tmp/$l.def" >> "$tmp/allowed"; done
  sort -u -o "$tmp/allowed" "$tmp/allowed"
  find "$build/$layer" -name '*.o' -path '*CMakeFiles/qpk_*' | xargs -r nm --undefined-only 2>/dev/null |
    awk '$1 == "U" {print $2}' | sort -u | comm -12 - "$tmp/ours" > "$tmp/used"
  bad=$(comm -23 "$tmp/used" "$tmp/allowed")
  if [ -n "$bad" ]; then
    echo "FAIL: $layer uses symbols from above it: $(echo $bad)"; fail=1
  else
    echo "pass: $layer uses only ${below[$layer]} ($(wc -l < "$tmp/used") of the tree's symbols)"
  fi
done
exit $fail
