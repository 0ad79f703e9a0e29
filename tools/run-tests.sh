#!/bin/sh
# The test suite, as CI runs it: a -Werror build with every test, then the same
# suite under AddressSanitizer and UndefinedBehaviorSanitizer.
set -e
cd "$(dirname "$0")/.."
tools/deps.sh
jobs=$(nproc)
cmake -S . -B build-test -DCMAKE_BUILD_TYPE=RelWithDebInfo -DQPK_WERROR=ON >/dev/null
cmake --build build-test -j"$jobs"
(cd build-test && ctest --output-on-failure -j"$jobs")
cmake -S . -B build-asan -DCMAKE_BUILD_TYPE=RelWithDebInfo -DQPK_WERROR=ON -DQPK_SANITIZE=ON >/dev/null
cmake --build build-asan -j"$jobs"
# Instrumented, the full 410-chunk perplexity would take many minutes: here it runs on
# the first chunks, against the reference's per-chunk values.
(cd build-asan && QPK_PPL_CHUNKS=6 ctest --output-on-failure -j"$jobs")
