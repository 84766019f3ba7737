#!/usr/bin/env bash
# Overlap and scaling benchmark end to end (docs/overlap.md, docs/scaling.md).
#
#  1. overlap sweep: 4 MPI ranks over TCP on an emulated 1 Gbit/s and
#     10 Gbit/s link (scripts/netns_run.sh: network namespace, tbf-limited
#     loopback, removed afterwards), every algorithm, compute per step swept
#     as multiples of the measured blocking allreduce time;
#  2. scaling runs: 2 and 8 ranks at a fixed compute time per step, plus
#     blocking allreduce timings of several payloads at 2, 4 and 8 ranks;
#  3. summary CSV and charts (bench/overlap/summarize.py), scaling model fit,
#     validation and prediction (bench/scaling/validate.py).
#
# usage: bench/overlap/run_overlap.sh [--quick] [--build DIR] [--out DIR] [--img DIR] [--reps N]
#   --quick  a 2-3 minute subset (one repetition, fewer points); writes to
#            /tmp/dasgd_overlap_quick unless --out/--img are given
#   --build  build directory holding bench/overlap/dasgd_bench_overlap (default: build)
#   --out    where the CSV files go   (default: bench/results)
#   --img    where the PNG charts go  (default: docs/img)
#   --reps   repetitions per configuration (default 2, quick 1); full runs
#            repeat 10 Gbit/s configurations once more (short steps: more
#            sensitive to other load on the machine)
# Needs root (network namespaces), OpenMPI's mpiexec and /usr/bin/python3
# with matplotlib. Full run: about 11 minutes on a 2-core machine.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
usage() { sed -n '13,24p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2; }

quick=0
build="$root/build"
out=""
img=""
reps=""
while [[ $# -gt 0 ]]; do
  case "$1" in
    --quick) quick=1; shift ;;
    --build) build=${2:?--build needs a directory}; shift 2 ;;
    --out) out=${2:?--out needs a directory}; shift 2 ;;
    --img) img=${2:?--img needs a directory}; shift 2 ;;
    --reps) reps=${2:?--reps needs a number}; shift 2 ;;
    -h|--help) usage ;;
    *) echo "run_overlap.sh: unknown option '$1'" >&2; usage ;;
  esac
done
if [[ $quick -eq 1 ]]; then
  out=${out:-/tmp/dasgd_overlap_quick}
  img=${img:-$out}
  reps=${reps:-1}
else
  out=${out:-$root/bench/results}
  img=${img:-$root/docs/img}
  reps=${reps:-2}
fi
[[ "$reps" =~ ^[1-9][0-9]*$ ]] || { echo "run_overlap.sh: --reps must be a positive integer, got '$reps'" >&2; exit 2; }
reps10=$((quick ? reps : reps + 1))

bench="$build/bench/overlap/dasgd_bench_overlap"
if [[ ! -x "$bench" ]]; then
  echo "run_overlap.sh: $bench is not built; build it with" >&2
  echo "  cmake -S $root -B $build -G Ninja -DCMAKE_BUILD_TYPE=Release && cmake --build $build -j2 --target dasgd_bench_overlap" >&2
  exit 1
fi
[[ $EUID -eq 0 ]] || { echo "run_overlap.sh: needs root (network namespaces)" >&2; exit 1; }
python=/usr/bin/python3
"$python" -c 'import matplotlib, numpy' 2>/dev/null ||
  { echo "run_overlap.sh: $python with matplotlib and numpy is needed for the charts" >&2; exit 1; }
command -v mpiexec >/dev/null || { echo "run_overlap.sh: mpiexec not found" >&2; exit 1; }

# Raw results go to a scratch directory first: a failed run leaves the
# committed results untouched.
scratch=$(mktemp -d /tmp/dasgd_overlap.XXXXXX)
trap 'rm -rf "$scratch"' EXIT
runs="$scratch/overlap_runs.csv"
allreduce="$scratch/scaling_allreduce.csv"

# TCP only, on the namespace's loopback; no core binding, so that progress
# threads may run beside their rank's sleeping worker. The ring allreduce is
# forced (OpenMPI's libnbc picks a binomial tree for in-place averages),
# because that is the algorithm the scaling model describes.
mpi_flags=(--allow-run-as-root --oversubscribe --bind-to none
           --mca btl tcp,self --mca btl_tcp_if_include lo --mca oob_tcp_if_include lo
           --mca coll_libnbc_iallreduce_algorithm 1)
log="$scratch/log.txt"

# run_shaped <rate> <ranks> <bench options...>
run_shaped() {
  local rate=$1 ranks=$2
  shift 2
  echo "## $(date +%T) rate $rate, $ranks ranks, load $(cut -d' ' -f1-3 /proc/loadavg): $*" | tee -a "$log"
  # The time limit keeps a hung run from blocking the script; netns_run.sh
  # removes the namespace (and what runs in it) whatever happens.
  if ! timeout 600 "$root/scripts/netns_run.sh" --rate "$rate" -- \
      mpiexec -n "$ranks" "${mpi_flags[@]}" "$bench" --label "$rate" \
      --csv "$runs" --allreduce-csv "$allreduce" "$@" 2>&1 | tee -a "$log"; then
    echo "run_overlap.sh: run failed (rate $rate, $ranks ranks); log: $out/overlap_log.txt" >&2
    mkdir -p "$out" && cp "$log" "$out/overlap_log.txt"
    exit 1
  fi
}

params=$((1 << 20))  # 4 MiB of float parameters: ~210 ms per 4-rank allreduce at 1 Gbit/s
sizes=256,1024,4096  # KiB, blocking allreduce timings for the model's fit
start=$(date +%s)
echo "# $(date -u +%FT%TZ) $(nproc) cores, quick=$quick, reps=$reps" | tee "$log"

if [[ $quick -eq 1 ]]; then
  ratios=0.45,1.2
  run_shaped 1gbit 4 --params $params --compute-ratios $ratios --reps "$reps" \
    --warmup-steps 8 --steps 16 --allreduce-sizes-kib $sizes --allreduce-size-samples 3
  run_shaped 10gbit 4 --params $params --compute-ratios $ratios --reps "$reps10" \
    --warmup-steps 8 --steps 32 --allreduce-sizes-kib $sizes --allreduce-size-samples 3
  for n in 2 8; do
    run_shaped 1gbit $n --params $params --compute-ms 120 --reps "$reps" --warmup-steps 8 --steps 16 \
      --algorithms compute,sync,local,dasgd-d1,dasgd-d2 --allreduce-sizes-kib $sizes --allreduce-size-samples 3
  done
else
  # Compute per step around one allreduce: d * compute below and above it
  # for d = 1, 2, 3 (hiding needs d * compute >= allreduce).
  ratios=0.3,0.45,0.7,1.2
  run_shaped 1gbit 4 --params $params --compute-ratios $ratios --reps "$reps" \
    --warmup-steps 8 --steps 16 --allreduce-sizes-kib $sizes --allreduce-size-samples 5
  run_shaped 10gbit 4 --params $params --compute-ratios $ratios --reps "$reps10" \
    --warmup-steps 8 --steps 32 --allreduce-sizes-kib $sizes --allreduce-size-samples 5
  for n in 2 4 8; do
    run_shaped 1gbit $n --params $params --compute-ms 120 --reps "$reps" --warmup-steps 8 --steps 16 \
      --algorithms compute,sync,local,dasgd-d1,dasgd-d2 --allreduce-sizes-kib $sizes --allreduce-size-samples 5
    run_shaped 10gbit $n --params $params --compute-ms 25 --reps "$reps10" --warmup-steps 8 --steps 32 \
      --algorithms compute,sync,local,dasgd-d1,dasgd-d2 --allreduce-sizes-kib $sizes --allreduce-size-samples 5
  done
fi
echo "# measurements took $(( $(date +%s) - start )) s" | tee -a "$log"

mkdir -p "$out" "$img"
cp "$runs" "$out/overlap_runs.csv"
cp "$allreduce" "$out/scaling_allreduce.csv"
cp "$log" "$out/overlap_log.txt"
"$python" "$here/summarize.py" --runs "$out/overlap_runs.csv" --out "$out" --img "$img"
"$python" "$root/bench/scaling/validate.py" --runs "$out/overlap_runs.csv" \
  --allreduce "$out/scaling_allreduce.csv" --out "$out" --img "$img"
echo "# done in $(( $(date +%s) - start )) s; results in $out, charts in $img"
