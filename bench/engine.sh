#!/bin/bash
# The conversion engine before and after a refactor (issue 19), side by side in one run, on
# one generated Qwen1.5-0.5B-shaped model (qgen --preset 0.5b, BF16, the fixtures' tokenizer):
#   rtn-int4    HF folder -> .qpk           --quant int4 --group 128
#   hf-gptq     HF folder -> GPTQ folder    --quant int4 --group 128 --embed-type f16 --to gptq
#   gguf-requant act-order GPTQ folder -> GGUF   --to gguf --requantize
# each with -t $THREADS (default 2), BEFORE then AFTER per job. For every run: wall time, peak
# anonymous memory (RssAnon of /proc/PID/status, sampled every 50 ms: the mapped input's
# file-backed pages are not counted), peak disk use of the output's folder (a fresh empty
# folder per run, every 100 ms: `du -sb` of it, so named staging files count, plus the sizes
# of the files under it that qconvert holds open without a name, /proc/PID/fd's "(deleted)":
# outputs are written to O_TMPFILE files that du cannot see until they are linked at the
# end), and the final output size. Then cmp: rtn-int4 and hf-gptq must be byte-identical between the
# builds; for the GGUFs, every metadata key, tensor info and tensor byte is compared and
# the keys that differ are named (BEFORE run twice: its general.name carried a PID-stamped
# staging file name, so it differs even from itself).
#
# The binaries are copied to WORK_DIR/before and WORK_DIR/after and run from there with the
# same relative paths, so both record the same argv in their provenance. The model
# (AFTER's qgen) and the act-order folder (BEFORE's qconvert, GPTQ --act-order on
# CALIB_SAMPLES x CALIB_LEN random token ids) are made once and kept in WORK_DIR.
#
# Usage: bench/engine.sh BEFORE_BIN_DIR AFTER_BIN_DIR [WORK_DIR]
#   BIN_DIRs hold qconvert (AFTER_BIN_DIR also qgen), e.g. build/tools.
#   env: THREADS (2), CALIB_SAMPLES (4), CALIB_LEN (128), FIXTURES (../shared/fixtures),
#        KEEP=1 keeps the outputs of the last run.
set -eu
[ $# -ge 2 ] || { echo "usage: $0 BEFORE_BIN_DIR AFTER_BIN_DIR [WORK_DIR]" >&2; exit 2; }
bb=$(cd "$1" && pwd) ab=$(cd "$2" && pwd) work=${3:-/tmp/engine-bench}
threads=${THREADS:-2} csamples=${CALIB_SAMPLES:-4} clen=${CALIB_LEN:-128}
fx=${FIXTURES:-$(cd "$(dirname "$0")/.." && pwd)/../shared/fixtures}
mkdir -p "$work/before" "$work/after"
work=$(cd "$work" && pwd)
cp "$bb/qconvert" "$work/before/qconvert"
cp "$ab/qconvert" "$work/after/qconvert"

echo "machine: $(lscpu | sed -n 's/^Model name:[[:space:]]*//p' | head -1), $(nproc) CPUs," \
  "$(awk '/^MemTotal:/ { printf "%.0f GB", $2 / 1048576 }' /proc/meminfo); load average now" \
  "$(cut -d' ' -f1-3 /proc/loadavg)"
echo "before: $bb/qconvert ($(stat -c %y "$bb/qconvert" | cut -d. -f1))"
echo "after:  $ab/qconvert ($(stat -c %y "$ab/qconvert" | cut -d. -f1))"

# Inputs, made once.
if [ ! -f "$work/model/config.json" ]; then
  "$ab/qgen" "$work/model" --preset 0.5b --dtype bf16 -q
fi
for f in tokenizer.json tokenizer_config.json; do
  [ -e "$work/model/$f" ] || cp "$fx/qwen-tiny-a/$f" "$work/model/"
done
if [ ! -f "$work/calib.i32" ]; then  # 4096 random token ids < the 151,936 of the vocabulary
  python3 -c "
import random, struct, sys
r = random.Random(19)
sys.stdout.buffer.write(struct.pack('<4096i', *[r.randrange(151936) for _ in range(4096)]))" \
    >"$work/calib.i32"
fi
if [ ! -f "$work/actorder/config.json" ]; then
  rm -rf "$work/actorder"
  (cd "$work/before" && ./qconvert ../model --quant int4 --group 128 --method gptq --act-order \
    --embed-type f16 --to gptq --calib-tokens ../calib.i32 --calib-samples "$csamples" \
    --calib-len "$clen" -t "$threads" -q -o ../actorder)
fi
echo "model: $(du -sb "$work/model" | awk '{ printf "%.0f MB", $1 / 1e6 }') (HF BF16);" \
  "act-order GPTQ folder: $(du -sb "$work/actorder" | awk '{ printf "%.0f MB", $1 / 1e6 }')" \
  "(BEFORE's qconvert, GPTQ act-order, $csamples x $clen random tokens)"
echo

# measure SIDE JOB OUT ARGS...: runs ./qconvert ARGS in $work/SIDE with a fresh empty
# $work/SIDE/out; sets wall (s), anon (kB), hwm (kB), disk (bytes), final (bytes).
measure() {
  local side=$1 job=$2 out=$3 pid k v rest i=0 d u t0 t1 rc
  shift 3
  rm -rf "$work/$side/out"; mkdir "$work/$side/out"; sync
  anon=0 hwm=0 disk=0
  t0=$EPOCHREALTIME
  (cd "$work/$side" && exec ./qconvert "$@" -t "$threads" -q) 2>"$work/$side/$job.log" &
  pid=$!
  while kill -0 "$pid" 2>/dev/null; do
    while read -r k v rest; do
      case $k in
        RssAnon:) ((v > anon)) && anon=$v ;;
        VmHWM:) ((v > hwm)) && hwm=$v ;;
      esac
    done 2>/dev/null </proc/$pid/status || true
    if ((i++ % 2 == 0)); then
      # Named files (staging ones included) plus the files qconvert holds open that have no
      # name there: O_TMPFILE outputs being written, staging files already unlinked.
      d=$(du -sb "$work/$side/out" 2>/dev/null | cut -f1) || true
      u=$(find "/proc/$pid/fd" -lname "$work/$side/out/* (deleted)" -print0 2>/dev/null |
        xargs -0r stat -L -c %s 2>/dev/null | awk '{ s += $1 } END { print s + 0 }') || true
      d=$((${d:-0} + ${u:-0}))
      ((d > disk)) && disk=$d
    fi
    sleep 0.05
  done
  rc=0; wait "$pid" || rc=$?
  t1=$EPOCHREALTIME
  if [ "$rc" -ne 0 ]; then
    echo "$side $job: qconvert exited $rc:" >&2; cat "$work/$side/$job.log" >&2; exit 1
  fi
  wall=$(echo "$t1 - $t0" | bc)
  final=$(du -sb "$work/$side/out/$out" | cut -f1)
  d=$(du -sb "$work/$side/out" | cut -f1); ((d > disk)) && disk=$d
  return 0
}

# GGUF metadata, tensor infos and data compared; prints a one-line verdict.
gguf_diff() {
  python3 - "$1" "$2" <<'EOF'
import hashlib, struct, sys
def load(path):
    f = open(path, 'rb')
    def rd(fmt): return struct.unpack('<' + fmt, f.read(struct.calcsize('<' + fmt)))[0]
    def s(): return f.read(rd('Q')).decode('utf-8', 'replace')
    sc = {0: 'B', 1: 'b', 2: 'H', 3: 'h', 4: 'I', 5: 'i', 6: 'f', 7: '?', 10: 'Q', 11: 'q', 12: 'd'}
    def val(t):
        if t == 8: return s()
        if t == 9:
            et, n = rd('I'), rd('Q')
            return hashlib.sha1(repr([val(et) for _ in range(n)]).encode()).hexdigest()
        return rd(sc[t])
    assert f.read(4) == b'GGUF'
    rd('I'); nt, nk = rd('Q'), rd('Q')
    kv = {}
    for _ in range(nk):
        k = s(); kv[k] = val(rd('I'))
    ti = []
    for _ in range(nt):
        name = s(); nd = rd('I')
        ti.append((name, tuple(rd('Q') for _ in range(nd)), rd('I'), rd('Q')))
    al = kv.get('general.alignment', 32)
    f.seek((f.tell() + al - 1) // al * al)
    h = hashlib.sha256()
    for b in iter(lambda: f.read(1 << 24), b''): h.update(b)
    return kv, ti, h.hexdigest()
(ka, ta, da), (kb, tb, db) = load(sys.argv[1]), load(sys.argv[2])
keys = sorted(k for k in set(ka) | set(kb) if ka.get(k) != kb.get(k))
out = ['tensor data ' + ('same' if da == db else 'DIFFERS'),
       'tensor infos ' + ('same' if ta == tb else 'DIFFER')]
out.append('metadata same' if not keys else 'metadata differs in ' + ', '.join(
    '%s (%r vs %r)' % (k, ka.get(k), kb.get(k)) for k in keys))
print('; '.join(out))
EOF
}

jobs=(rtn-int4 hf-gptq gguf-requant)
declare -A argv outp
argv[rtn-int4]="../model -o out/out.qpk --quant int4 --group 128"
outp[rtn-int4]=out.qpk
argv[hf-gptq]="../model --quant int4 --group 128 --embed-type f16 --to gptq -o out/gptq"
outp[hf-gptq]=gptq
argv[gguf-requant]="../actorder --to gguf --requantize -o out/out.gguf"
outp[gguf-requant]=out.gguf
declare -A res
notes=()
mb() { echo "$1 / 1000000" | bc -l; }

for job in "${jobs[@]}"; do
  echo "$job: qconvert ${argv[$job]} -t $threads -q" >&2
  for side in before after; do
    # shellcheck disable=SC2086
    measure "$side" "$job" "${outp[$job]}" ${argv[$job]}
    res[$job.$side]="$wall $anon $disk $final $hwm"
    rm -rf "$work/$side/keep.$job"; mv "$work/$side/out" "$work/$side/keep.$job"
  done
  a=$work/before/keep.$job/${outp[$job]} b=$work/after/keep.$job/${outp[$job]}
  case $job in
    gguf-requant)
      notes+=("$job, before vs after: $(gguf_diff "$a" "$b")")
      # BEFORE a second time: its GGUF against itself.
      # shellcheck disable=SC2086
      measure before "$job" "${outp[$job]}" ${argv[$job]}
      notes+=("$job, before vs before (2nd run, ${wall} s): $(gguf_diff "$a" "$work/before/out/${outp[$job]}")")
      rm -rf "$work/before/out" ;;
    *)
      if [ -d "$a" ]; then
        if diff -r -q "$a" "$b" >/dev/null; then r="byte-identical ($(find "$a" -type f | wc -l) files, cmp)"
        else r="DIFFER: $(diff -r -q "$a" "$b" | tr '\n' ' ')"; fi
      else
        if cmp -s "$a" "$b"; then r="byte-identical (cmp)"; else r="DIFFER: $(cmp "$a" "$b" 2>&1 | head -1)"; fi
      fi
      notes+=("$job, before vs after: $r") ;;
  esac
done

echo
printf '| %-12s | %8s | %8s | %5s | %9s | %9s | %9s | %9s | %9s |\n' job "before s" "after s" ratio \
  "bef anon" "aft anon" "bef disk" "aft disk" "output"
printf '| %-12s | %8s | %8s | %5s | %9s | %9s | %9s | %9s | %9s |\n' "" "wall" "wall" "a/b" "peak MB" \
  "peak MB" "peak MB" "peak MB" "MB"
echo '|--------------|----------|----------|-------|-----------|-----------|-----------|-----------|-----------|'
for job in "${jobs[@]}"; do
  read -r w0 a0 d0 f0 h0 <<<"${res[$job.before]}"
  read -r w1 a1 d1 f1 h1 <<<"${res[$job.after]}"
  printf '| %-12s | %8.2f | %8.2f | %5.2f | %9.0f | %9.0f | %9.0f | %9.0f | %9.0f |\n' "$job" "$w0" "$w1" \
    "$(echo "$w1 / $w0" | bc -l)" "$(echo "$a0 / 1024" | bc -l)" "$(echo "$a1 / 1024" | bc -l)" \
    "$(mb "$d0")" "$(mb "$d1")" "$(mb "$f1")"
done
echo
echo "anon = peak RssAnon, MiB (every 50 ms); disk = peak of du -sb of the output's fresh folder plus"
echo "the unnamed files under it qconvert holds open (every 100 ms), MB = 10^6 bytes; output = AFTER's"
echo "final output. Final sizes and peak RSS:"
for job in "${jobs[@]}"; do
  read -r _ _ _ f0 h0 <<<"${res[$job.before]}"; read -r _ _ _ f1 h1 <<<"${res[$job.after]}"
  printf '  %-12s before %s B, after %s B; peak RSS (VmHWM, mapped input included) %.0f / %.0f MiB\n' \
    "$job" "$f0" "$f1" "$(echo "$h0 / 1024" | bc -l)" "$(echo "$h1 / 1024" | bc -l)"
done
for n in "${notes[@]}"; do echo "$n"; done
echo "load average after: $(cut -d' ' -f1-3 /proc/loadavg)"
if [ "${KEEP:-0}" != 1 ]; then rm -rf "$work"/before/keep.* "$work"/after/keep.*; fi
