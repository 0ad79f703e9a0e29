#!/bin/sh
# The test suite, as CI runs it: a -Werror build with every test, and the same suite under
# AddressSanitizer and UndefinedBehaviorSanitizer.
set -e
cd "$(dirname "$0")/.."
tools/deps.sh
jobs=$(nproc)
cmake -S . -B build-test -DCMAKE_BUILD_TYPE=RelWithDebInfo -DQPK_WERROR=ON >/dev/null
cmake -S . -B build-asan -DCMAKE_BUILD_TYPE=RelWithDebInfo -DQPK_WERROR=ON -DQPK_SANITIZE=ON >/dev/null
cmake --build build-test -j"$jobs"
# The sanitized build and suite run beside the plain suite at the lowest priority: they take
# the cycles its tests leave idle (llama.cpp's waits, single-threaded steps, the tail where
# one test runs alone), and the whole core once it is done. Their output follows its own.
# Instrumented, the full 410-chunk perplexity would take many minutes: there it runs on the
# first chunks, against the reference's per-chunk values.
(nice -n 19 cmake --build build-asan -j"$jobs" &&
  cd build-asan && QPK_PPL_CHUNKS=6 nice -n 19 ctest --output-on-failure -j"$jobs") >build-asan/suite.log 2>&1 &
sanitized=$!
status=0
(cd build-test && ctest --output-on-failure -j"$jobs") || status=$?
echo "The sanitized build and suite (build-asan/suite.log):"
sanitized_status=0
wait $sanitized || sanitized_status=$?
cat build-asan/suite.log
[ "$status" -eq 0 ] || exit "$status"
exit "$sanitized_status"
