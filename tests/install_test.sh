#!/bin/bash
# cmake --install, then a program outside the tree built against the installed package,
# with pkg-config and with find_package (shared and static), opens the fixture model's
# .qpk, lists its tensors and runs one forward pass whose logits must match the fixture's
# reference logits within 1e-4 (the runtime's measured gap is 6.7e-6; README).
# Usage: install_test.sh BUILD_DIR SOURCE_DIR   (QPK_FIXTURES locates the fixtures)
set -u
build=$1 src=$2 fx=${QPK_FIXTURES:-}
if [ ! -d "$fx/qwen-tiny-a" ]; then
  echo "fixtures not found at '$fx'"
  [ "${CI:-}" = true ] && exit 1 || exit 77
fi
tmp=$(mktemp -d /tmp/qpk-install-XXXXXX)
trap 'rm -rf "$tmp"' EXIT
fail=0
check() { # check NAME CONSUMER...
  local name=$1; shift
  if ! "$@" "$tmp/a.qpk" "$fx/qwen-tiny-a/ref-parity.safetensors" > "$tmp/out.txt" 2>&1; then
    echo "FAIL: $name"; cat "$tmp/out.txt"; fail=1; return
  fi
  local n; n=$(grep -c '^tensor ' "$tmp/out.txt")
  if [ "$n" != 50 ]; then echo "FAIL: $name lists $n tensors, the fixture has 50"; fail=1; return; fi
  echo "pass: $name ($(grep '^forward' "$tmp/out.txt"))"
}
cmake --install "$build" --prefix "$tmp/prefix" > "$tmp/install.log" || { cat "$tmp/install.log"; exit 1; }
"$tmp/prefix/bin/qconvert" -q "$fx/qwen-tiny-a" -o "$tmp/a.qpk" || exit 1

# pkg-config, shared library.
export PKG_CONFIG_PATH="$tmp/prefix/lib/pkgconfig"
cc -std=c11 -Wall -Werror "$src/tests/consumer/consumer.c" -o "$tmp/pc_consumer" $(pkg-config --cflags --libs qpk) -lm ||
  { echo "FAIL: build with pkg-config"; exit 1; }
check "pkg-config (libqpk.so)" env LD_LIBRARY_PATH="$tmp/prefix/lib" "$tmp/pc_consumer"

# find_package, both targets.
cmake -S "$src/tests/consumer" -B "$tmp/cbuild" -DCMAKE_PREFIX_PATH="$tmp/prefix" > "$tmp/cmake.log" 2>&1 &&
  cmake --build "$tmp/cbuild" > "$tmp/cbuild.log" 2>&1 ||
  { cat "$tmp/cmake.log" "$tmp/cbuild.log"; echo "FAIL: build with find_package"; exit 1; }
check "find_package qpk::qpk" "$tmp/cbuild/consumer_shared"
check "find_package qpk::qpk_static" "$tmp/cbuild/consumer_static"
exit $fail
