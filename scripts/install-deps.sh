#!/usr/bin/env bash
# Installs the Debian packages dasgd's build, tests, examples and their
# plots need, if any is missing (a fresh Debian 12 machine has none of them).
# Usage: scripts/install-deps.sh [--list] [extra packages...]
#   --list   print the package names and exit (tests/tools/check_deps.py
#            uses it to check that everything the suite runs comes from here)
set -euo pipefail
list_only=0
if [[ "${1:-}" == "--list" ]]; then list_only=1; shift; fi
packages=(
  # build
  cmake ninja-build g++ pkg-config
  # tests and the libraries the library's optional parts and examples use
  doctest-dev libopenmpi-dev openmpi-bin libeigen3-dev libcli11-dev zlib1g-dev
  # the libtorch adaptor and example (CPU build of libtorch)
  libtorch-dev
  # SimGrid SMPI: the simulated-cluster scale-up benchmark and its smoke test
  libsimgrid-dev
  # the checkpoint fuzz target (libFuzzer + ASan/UBSan runtimes)
  clang-14 libclang-rt-14-dev
  # data, Python for the benchmark summaries, the scaling model and the plots
  dataset-fashion-mnist python3 python3-numpy python3-matplotlib
  # emulated slow links (ip netns, tc) for the overlap benchmarks
  iproute2
  "$@")
if (( list_only )); then
  printf '%s\n' "${packages[@]}"
  exit 0
fi
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0
echo "installing missing Debian packages: ${missing[*]}"
sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"
export DEBIAN_FRONTEND=noninteractive
if ! $sudo apt-get install -y --no-install-recommends "${missing[@]}"; then
  $sudo apt-get update
  $sudo apt-get install -y --no-install-recommends "${missing[@]}"
fi
