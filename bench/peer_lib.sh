# Shared by the side-by-side scripts (sourced, not run): timing, llama-bench's and
# bench_runtime's figures, and the provenance lines every table starts with. The caller
# sets lbin (llama.cpp's bin folder), lb (its build folder), qb (qpk's build folder) and threads.

# A command's wall time in seconds (its output discarded).
secs() { local t0 t1; t0=$(date +%s.%N); "$@" >/dev/null 2>&1; t1=$(date +%s.%N); echo "$t1 - $t0" | bc; }
# The middle of three numbers.
median() { printf '%s\n' "$@" | sort -g | sed -n 2p; }
# llama-bench: avg tokens/s of pp128, pp512, tg64 (csv columns by name), as "pp128 V" lines.
lbench() {
  "$lbin/llama-bench" -m "$1" -p 128,512 -n 64 -t "$threads" -o csv 2>/dev/null |
    awk -F, 'NR == 1 { for (i = 1; i <= NF; i++) { gsub(/"/, "", $i); col[$i] = i } next }
             { gsub(/"/, ""); p = $col["n_prompt"]; g = $col["n_gen"]; v = $col["avg_ts"];
               if (g == 0) print "pp" p, v; else print "tg" g, v }'
}
# bench_runtime: the same three figures, "bw N": decode's weight reads as N% of the bandwidth it measured,
# "bwkv N": its weight and KV-cache reads, "ceil N": the tokens/s its gemv kernels alone allow,
# "ceilbw N": that ceiling as N% of the bandwidth floor.
qbench() {
  "$qb/bench/bench_runtime" "$1" "$threads" |
    awk '/^prefill pp/ { print $2, $3 }
         /^decode tg/ { print $2, $3; if (match($0, /-> [0-9]+%/)) print "bw", substr($0, RSTART + 3, RLENGTH - 4) }
         /^decode reads/ { if (match($0, /= [0-9]+%/)) print "bwkv", substr($0, RSTART + 2, RLENGTH - 3) }
         /^decode ceiling/ { print "ceil", $3
                             if (match($0, /= [0-9]+%/)) print "ceilbw", substr($0, RSTART + 2, RLENGTH - 3) }'
}
# The machine, the peer's commit and build flags, qpk's commit.
provenance() {
  local commit flags
  commit=$(git -C "$lb/.." rev-parse --short HEAD 2>/dev/null || echo "?")
  flags=$(grep -E '^(GGML_NATIVE|CMAKE_BUILD_TYPE|GGML_AVX512|GGML_AVX2):' "$lb/CMakeCache.txt" 2>/dev/null | tr '\n' ' ')
  echo "machine: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//'), $(nproc) CPUs; $threads threads;" \
    "$(grep -o -m1 'avx512f' /proc/cpuinfo || echo 'no AVX-512')"
  echo "peer: llama.cpp $commit ($flags); qpk $(git -C "$(dirname "${BASH_SOURCE[0]}")" rev-parse --short HEAD 2>/dev/null || echo ?)"
}

# For each TYPE: llama-quantize's file of work/m-f16.gguf (made once), the .qpk qconvert reads
# from it, and both runtimes' figures on those same weights, into L[TYPE.pp128] ... and
# Q[TYPE.pp128] ... (associative arrays the caller declares). Needs bin and work too.
same_weights() {
  local t k v
  for t in "$@"; do
    [ -f "$work/m-$t.gguf" ] || "$lbin/llama-quantize" "$work/m-f16.gguf" "$work/m-$t.gguf" "$t" "$threads" >/dev/null 2>&1
    "$bin/qconvert" -q "$work/m-$t.gguf" -o "$work/m-$t.qpk"
    while read -r k v; do L[$t.$k]=$v; done < <(lbench "$work/m-$t.gguf")
    while read -r k v; do Q[$t.$k]=$v; done < <(qbench "$work/m-$t.qpk")
  done
}

# The provenance and a table's head, its figure column WIDTH wide; then peer_row FIGURE PEER QPK [DECIMALS].
peer_table() {
  peer_width=$1
  provenance
  echo
  printf "| %-${peer_width}s | %10s | %10s | %9s |\n" figure llama.cpp qpk "qpk/peer"
  printf '|%s|%s|%s|%s|\n' "$(printf -- '-%.0s' $(seq 1 $((peer_width + 2))))" "------------" "------------" "-----------"
}
peer_row() {
  printf "| %-${peer_width}s | %10.${4:-1}f | %10.${4:-1}f | %9.2f |\n" "$1" "$2" "$3" "$(echo "$3 / $2" | bc -l)"
}
