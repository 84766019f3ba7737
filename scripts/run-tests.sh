#!/usr/bin/env bash
# The whole test suite, as CI runs it:
#  1. Release build of everything (warnings are errors; CUDA code is compiled
#     when nvcc is present), then every ctest test: host, MPI (mpiexec on
#     loopback) and GPU tests (reported as skipped without a device);
#  2. host tests under AddressSanitizer + UndefinedBehaviorSanitizer;
#  3. threaded tests under ThreadSanitizer.
# Usage: scripts/run-tests.sh [--quick]   (--quick: step 1 only)
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
jobs=$(nproc)
# OpenMPI refuses to run as root unless told; the MPI tests need it in CI.
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1

run() { echo "== $*"; "$@"; }
run cmake --preset ci
run cmake --build --preset ci -j "$jobs"
run ctest --preset ci -j "$jobs"
if [ "${1:-}" != "--quick" ]; then
  for preset in asan tsan; do
    run cmake --preset "$preset"
    run cmake --build --preset "$preset" -j "$jobs"
    run ctest --preset "$preset" -j "$jobs"
  done
fi
echo "all test stages passed"
