#!/usr/bin/env bash
# Thread vs test progress on an emulated slow link (docs/mpi.md): runs
# dasgd.mpi_progress_probe with 4 ranks over TCP inside scripts/netns_run.sh,
# for 4 MB and 16 MB buffers, compute split into 32 steps (test() after each)
# or 1 step (DaSGD with delay 1: no MPI call between launch and merge), on
# idle cores (sleep: a host thread waiting for a GPU) or busy ones (spin).
#
# usage: tests/mpi/run_progress_probe.sh <build-dir> [reps=5] [rate=1gbit]
# Needs root. Prints the probe's lines; ~4 minutes at 1gbit with 5 reps.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
build=${1:?usage: run_progress_probe.sh <build-dir> [reps] [rate]}
reps=${2:-5}
rate=${3:-1gbit}
probe="$build/tests/mpi/dasgd.mpi_progress_probe"
[[ -x "$probe" ]] || { echo "run_progress_probe.sh: $probe not built" >&2; exit 1; }

# TCP only (no shared memory), on the namespace's loopback. No binding, so
# that a progress thread may run on another core than its rank's compute.
mpi=(mpiexec -n 4 --allow-run-as-root --oversubscribe --bind-to none
     --mca btl tcp,self --mca btl_tcp_if_include lo --mca oob_tcp_if_include lo)
echo "# $(date -u +%FT%TZ) $(nproc) cores, load: $(cut -d' ' -f1-3 /proc/loadavg), rate $rate"
for mb in 4 16; do
  for steps in 32 1; do
    for compute in sleep spin; do
      "$root/scripts/netns_run.sh" --rate "$rate" -- "${mpi[@]}" "$probe" \
        --mb "$mb" --steps "$steps" --compute "$compute" --reps "$reps" 2>/dev/null
    done
  done
done
