#!/usr/bin/env bash
# The real half of the SMPI validation (docs/scaling.md, "Validation"): the
# same program as the SMPI sweep's val_* runs (dasgd_bench_smpi_real, the
# normal MPI build of bench/smpi/main.cpp) on 2, 4 and 8 OpenMPI ranks over
# TCP on the tbf-limited loopback of scripts/netns_run.sh, at 1 and
# 10 Gbit/s, every algorithm. Appends rows (the sweep's CSV format) to
# <out>/real_runs.csv and the output to <out>/real_runs_log.txt.
#
# usage: bench/smpi/run_real_validation.sh [--build build/default] [--out bench/results/smpi] [--reps 2]
# Needs root (network namespaces) and OpenMPI's mpiexec; about 8 minutes.
# Run it on an otherwise idle machine: real step times include host load.
set -euo pipefail
cd "$(dirname "$0")/../.."
build=build/default
out=bench/results/smpi
reps=2
while [[ $# -gt 0 ]]; do
  case "$1" in
    --build) build=$2; shift 2 ;;
    --out) out=$2; shift 2 ;;
    --reps) reps=$2; shift 2 ;;
    *) sed -n '9,10p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2 ;;
  esac
done
bin=$build/bench/smpi/dasgd_bench_smpi_real
[[ -x $bin ]] || { echo "no $bin: cmake --build $build --target dasgd_bench_smpi_real" >&2; exit 1; }
[[ $EUID -eq 0 ]] || { echo "needs root (network namespaces)" >&2; exit 1; }
mkdir -p "$out"
# TCP on the namespace's loopback; no core binding (progress threads run
# beside sleeping workers); the ring allreduce, as the SMPI runs use.
mpi=(--allow-run-as-root --oversubscribe --bind-to none --mca btl tcp,self --mca btl_tcp_if_include lo
     --mca oob_tcp_if_include lo --mca coll_libnbc_iallreduce_algorithm 1)
algs=compute,sync,local,dasgd-d1,dasgd-d2,dasgd-d3,adaptive
start=$SECONDS
for rep in $(seq "$reps"); do
  for n in 2 4 8; do
    for link in "1gbit 120" "10gbit 25"; do
      read -r rate compute <<< "$link"
      printf '[rep %d] %-6s %d ranks (%d s so far) ... ' "$rep" "$rate" "$n" $((SECONDS - start))
      {
        echo "### $(date -u +%FT%TZ) rep $rep $rate $n ranks, load $(cut -d' ' -f1-3 /proc/loadavg)"
        timeout 600 scripts/netns_run.sh --rate "$rate" -- mpiexec -n "$n" "${mpi[@]}" "$bin" \
          --params 1048576 --compute-ms "$compute" --warmup-steps 8 --steps 16 --algorithms "$algs" \
          --label "val_${rate}_$n" --csv "$out/real_runs.csv"
      } >> "$out/real_runs_log.txt" 2>&1 || { echo "FAILED (log: $out/real_runs_log.txt)"; exit 1; }
      tail -n 2 "$out/real_runs_log.txt" | head -n 1
    done
  done
done
echo "done in $((SECONDS - start)) s: $out/real_runs.csv"
