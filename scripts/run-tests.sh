#!/usr/bin/env bash
# The whole test suite, as CI runs it. Every stage runs, whatever an earlier
# one did; a summary table at the end lists each stage's result and time,
# and the exit status is non-zero when any stage failed.
#   deps        scripts/install-deps.sh (missing Debian packages)
#   ci          Release build of everything (warnings are errors; CUDA code
#               is compiled when nvcc is present), then every ctest test:
#               host, MPI (mpiexec on loopback), GPU (skipped without a device)
#   asan        host tests under AddressSanitizer + UndefinedBehaviorSanitizer
#   tsan        threaded tests under ThreadSanitizer
#   fuzz        the checkpoint loader under libFuzzer + ASan/UBSan, two
#               variants of 30 s each (scripts/run-fuzz.sh)
# Each build stage is configure, build and ctest; a failed configure skips
# that stage's build and test, a failed build still runs its tests (the
# ones that were built report their results).
# Usage: scripts/run-tests.sh [--quick]   (--quick: deps and ci only)
set -uo pipefail
cd "$(dirname "$0")/.."
jobs=$(nproc)
# OpenMPI refuses to run as root unless told; the MPI tests need it in CI.
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1

names=() results=() seconds=()
# step <name> <command...>: runs one step, records its result.
step() {
  local name=$1; shift
  echo "== [$name] $*"
  local t0=$SECONDS rc=0
  "$@" || rc=$?
  names+=("$name") seconds+=($((SECONDS - t0)))
  if ((rc == 0)); then results+=("passed"); else results+=("FAILED (exit $rc)"); fi
  return "$rc"
}
skip() {
  names+=("$1") seconds+=(0) results+=("not run: $2")
}
# preset <name>: configure, build and test one CMake preset.
preset() {
  local p=$1
  if step "$p configure" cmake --preset "$p"; then
    step "$p build" cmake --build --preset "$p" -j "$jobs"
    step "$p ctest" ctest --preset "$p" -j "$jobs"
  else
    skip "$p build" "configure failed"
    skip "$p ctest" "configure failed"
  fi
}

step deps scripts/install-deps.sh
stages=(ci)
[[ "${1:-}" == "--quick" ]] || stages+=(asan tsan)
for s in "${stages[@]}"; do preset "$s"; done
[[ "${1:-}" == "--quick" ]] || step fuzz scripts/run-fuzz.sh 30

failed=0 not_run=0
echo
echo "== summary"
printf '%-18s %-28s %8s\n' step result seconds
for i in "${!names[@]}"; do
  printf '%-18s %-28s %8s\n' "${names[$i]}" "${results[$i]}" "${seconds[$i]}"
  case "${results[$i]}" in
    passed) ;;
    not\ run*) not_run=$((not_run + 1)) ;;
    *) failed=$((failed + 1)) ;;
  esac
done
if ((failed)); then
  echo "$failed of ${#names[@]} steps FAILED, $not_run not run"
  exit 1
fi
echo "all ${#names[@]} steps passed"
