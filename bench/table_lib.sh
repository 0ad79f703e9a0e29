# Shared by the quality tables (sourced, not run): the F32 GGUF, llama.cpp's own KLD base
# and importance matrix, the commands that quantize, and one row per file. The caller sets
# bin (qpk's tools), lbin (llama.cpp's bin folder), m (the fixture model), fx, work, chunks,
# samples, text and calib, and makes work.
threads=$(nproc)
log=$work/log.txt
: > "$log"
cal=(--calib "$calib" --calib-samples "$samples" --calib-len 512)
lq() { "$lbin/llama-quantize" "$@" "$threads" >> "$log" 2>&1; }
qc() { local out=$1; shift; "$bin/qconvert" "$m" -o "$out" "$@" 2>> "$log"; }

# f32.gguf, base.kld (llama-perplexity's F32 logits) and the llama-imatrix file IMATRIX.
table_setup() {
  "$bin/qconvert" -q "$m" -o "$work/f32.gguf" --dtype f32
  "$lbin/llama-perplexity" -m "$work/f32.gguf" -f "$text" -c 128 --chunks "$chunks" -t "$threads" \
    --kl-divergence-base "$work/base.kld" >> "$log" 2>&1
  "$lbin/llama-imatrix" -m "$work/f32.gguf" -f "$calib" -c 512 --chunks "$samples" -t "$threads" -o "$1" >> "$log" 2>&1
}

table_header() {
  echo "llama.cpp $(git -C "$lbin/../.." rev-parse --short HEAD 2>/dev/null || echo ?)," \
    "qpk $(git -C "$(dirname "${BASH_SOURCE[0]}")" rev-parse --short HEAD 2>/dev/null || echo ?); $threads threads"
  echo
  echo "| file | file MiB | KLD exact (qverify) | top-1 % | KLD in llama.cpp | top-1 % (llama.cpp) |"
  echo "|---|---:|---:|---:|---:|---:|"
}

# One file, work/NAME.gguf: qverify's exact KLD against the model, llama-perplexity's against its F32 run.
table_row() {
  local g=$work/$1.gguf j l
  j=$("$bin/qverify" "$g" --ref "$m" --tokens "$fx/tokens/eval_public.i32" -c 128 --chunks "$chunks" --json)
  l=$("$lbin/llama-perplexity" -m "$g" -f "$text" -c 128 --chunks "$chunks" -t "$threads" \
      --kl-divergence-base "$work/base.kld" --kl-divergence 2>&1)
  echo "$l" >> "$log"
  printf "| %s | %.3f | %.3g | %.2f | %s | %s |\n" "$1" "$(echo "$(stat -c %s "$g") / 1048576" | bc -l)" \
    "$(echo "$j" | grep -m1 '"kld_mean"' | sed -e 's/.*: *//' -e 's/,$//')" \
    "$(echo "$j" | grep -m1 '"top1_pct"' | sed -e 's/.*: *//' -e 's/,$//')" \
    "$(echo "$l" | awk '/^Mean +KLD:/ {print $3}')" \
    "$(echo "$l" | awk '/^Same top p:/ {print $4}')"
}
