#!/usr/bin/env bash
# The update benchmark's GPU session, in one go (144-175 s on an H200, most of it torch.compile):
#   1. dasgd_bench_update_kernels --mode gpu      (C++: fused pass vs device copy)
#   2. scripts/bench_pytorch_update.py            (PyTorch fused/foreach/compile, joined with 1)
#   3. scripts/plot_update_kernels.py             (bandwidth against size, per precision)
# Builds nothing: the binary comes from the project's CMake build (target
# dasgd_bench_update_kernels). Writes at most 4 files into OUT_DIR:
#   update_kernels_gpu.csv  update_kernels_pytorch.csv  update_kernels_gpu.png  update_kernels_gpu.log
#
# usage: bench/update_kernels/run_gpu.sh OUT_DIR [BUILD_DIR]
# environment:
#   DASGD_BENCH_BIN      path of the binary (default: found under BUILD_DIR or build*/)
#   BENCH_BUDGET_S       wall-clock seconds for the whole script (default 300): steps 1
#                        and 2 are cut so that the plot is still made (an outer
#                        `timeout` should pass its limit here, minus a few seconds)
#   COMPILE_BUDGET_S     seconds of torch.compile cases to start (default 75)
#   CPP_ARGS, TORCH_ARGS extra arguments for steps 1 and 2 (e.g. TORCH_ARGS="--impls fused,foreach")
#   NCU=1                also profile one step+merge case with Nsight Compute (into the log)
# exit status: that of step 1 (77: no CUDA device, nothing else ran), else
# non-zero when step 2 or 3 failed.
set -u -o pipefail

out=${1:?usage: run_gpu.sh OUT_DIR [BUILD_DIR]}
build=${2:-}
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
mkdir -p "$out"
log="$out/update_kernels_gpu.log"
: >"$log"
say() { echo "$@" | tee -a "$log"; }

# The binary: DASGD_BENCH_BIN, else the one in BUILD_DIR, else the newest under build*/.
bin=${DASGD_BENCH_BIN:-}
if [[ -z "$bin" ]]; then
  if [[ -n "$build" ]]; then
    dirs=("$build")
  else
    dirs=("$root"/build*)
  fi
  bin=$(find "${dirs[@]}" -maxdepth 4 -type f -name dasgd_bench_update_kernels -perm -u+x \
          -printf '%T@ %p\n' 2>/dev/null | sort -rn | head -n1 | cut -d' ' -f2-)
fi
if [[ -z "$bin" || ! -x "$bin" ]]; then
  say "run_gpu.sh: dasgd_bench_update_kernels not found (build target dasgd_bench_update_kernels or set DASGD_BENCH_BIN)"
  exit 2
fi
py=python3
say "run_gpu.sh: binary $bin"
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,driver_version,clocks.max.sm,clocks.max.mem --format=csv,noheader 2>&1 | tee -a "$log"

budget=${BENCH_BUDGET_S:-300}
t0=$SECONDS
cpp_limit=$((budget * 2 / 5 < 180 ? budget * 2 / 5 : 180))

# 1. C++ harness (the full default sweep: 120 cases, 7-8 s on an H200).
start=$SECONDS
# shellcheck disable=SC2086
timeout "$cpp_limit" "$bin" --mode gpu --csv "$out/update_kernels_gpu.csv" ${CPP_ARGS:-} 2>&1 | tee -a "$log"
rc=${PIPESTATUS[0]}
say "run_gpu.sh: C++ harness exit $rc after $((SECONDS - start)) s"
if [[ $rc -eq 77 ]]; then exit 77; fi

# 2. PyTorch sequences, joined with the C++ results of this run; 15 s are
# kept for the plot.
start=$SECONDS
torch_limit=$((budget - (SECONDS - t0) - 15))
((torch_limit < 20)) && torch_limit=20
# shellcheck disable=SC2086
PYTHONUNBUFFERED=1 timeout "$torch_limit" "$py" "$root/scripts/bench_pytorch_update.py" \
  --dasgd-csv "$out/update_kernels_gpu.csv" --csv "$out/update_kernels_pytorch.csv" \
  --compile-budget-s "${COMPILE_BUDGET_S:-75}" ${TORCH_ARGS:-} 2>&1 | tee -a "$log"
trc=${PIPESTATUS[0]}
say "run_gpu.sh: PyTorch comparison exit $trc after $((SECONDS - start)) s"

# 3. Plot whatever CSVs exist.
csvs=()
for f in "$out/update_kernels_gpu.csv" "$out/update_kernels_pytorch.csv"; do
  [[ -s "$f" ]] && csvs+=("$f")
done
prc=0
if [[ ${#csvs[@]} -gt 0 ]]; then
  "$py" "$root/scripts/plot_update_kernels.py" --out "$out/update_kernels_gpu.png" "${csvs[@]}" 2>&1 | tee -a "$log"
  prc=${PIPESTATUS[0]}
fi

# Optional: what limits one step+merge case (memory throughput vs peak).
ncu_limit=$((budget - (SECONDS - t0) - 5))
((ncu_limit > 120)) && ncu_limit=120
if [[ "${NCU:-0}" == 1 ]] && command -v ncu >/dev/null && ((ncu_limit >= 30)); then
  say "run_gpu.sh: ncu on flat_16M/bf16/step_additive/adamw (limit $ncu_limit s)"
  timeout "$ncu_limit" ncu --clock-control none --section SpeedOfLight --section MemoryWorkloadAnalysis \
    --section LaunchStats --section Occupancy -k regex:fused_update -c 1 \
    "$bin" --mode gpu --layouts flat_16M --precisions bf16 --modes step_additive --optimizers adamw \
    --repeats 1 --warmup 0 --no-flush-l2 2>&1 | tail -n 90 | tee -a "$log"
fi

if [[ $rc -ne 0 ]]; then exit "$rc"; fi
if [[ $trc -ne 0 || $prc -ne 0 ]]; then exit 1; fi
exit 0
