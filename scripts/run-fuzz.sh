#!/usr/bin/env bash
# Bounded fuzzing of the checkpoint loader with libFuzzer (clang-14) under
# AddressSanitizer + UndefinedBehaviorSanitizer: two variants, raw bytes and
# bytes whose CRCs are recomputed (so mutations reach the field checks),
# each for FUZZ_SECONDS (default 30, both at once), starting from tests/fuzz/corpus (not
# modified: the run works on a copy). A crash, a sanitizer report or a
# leak fails the run and leaves the input under build/fuzz/.
# Usage: scripts/run-fuzz.sh [seconds-per-variant]
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-${FUZZ_SECONDS:-30}}
cxx=${FUZZ_CXX:-clang++-14}
command -v "$cxx" >/dev/null || { echo "run-fuzz.sh: $cxx not found (scripts/install-deps.sh installs clang-14)" >&2; exit 1; }
out=build/fuzz
mkdir -p "$out"
flags=(-std=c++20 -O1 -g -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=all
       -fno-omit-frame-pointer -Iinclude -Itests)
# The two variants build side by side (one core each on a 2-core runner).
pids=()
for variant in raw fixcrc; do
  defs=()
  [[ $variant == fixcrc ]] && defs=(-DDASGD_FUZZ_FIX_CRC=1)
  "$cxx" "${flags[@]}" "${defs[@]}" tests/fuzz/checkpoint_fuzz.cpp -o "$out/checkpoint_fuzz_$variant" &
  pids+=($!)
done
for pid in "${pids[@]}"; do wait "$pid"; done
# They also fuzz side by side, one core each; their reports are printed in
# turn once both have finished.
pids=()
for variant in raw fixcrc; do
  work="$out/corpus_$variant"
  rm -rf "$work" && mkdir -p "$work" && cp tests/fuzz/corpus/* "$work/"
  ( cd "$out" && UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1 \
      "./checkpoint_fuzz_$variant" -max_total_time="$seconds" -max_len=8192 -timeout=10 \
      -rss_limit_mb=2048 -print_final_stats=1 "corpus_$variant" ) >"$out/fuzz_$variant.log" 2>&1 &
  pids+=($!)
done
status=0 i=0
for variant in raw fixcrc; do
  wait "${pids[$i]}" || status=1
  i=$((i + 1))
  echo "== fuzzing the checkpoint loader ($variant) for $seconds s"
  tail -n 15 "$out/fuzz_$variant.log"
done
exit $status
