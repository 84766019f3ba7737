#!/usr/bin/env bash
# Configures, builds and runs the libtorch adaptor test and the libtorch
# example (its smoke tests, label `torch`) against another libtorch than
# Debian's, e.g. the one inside a PyTorch 2.x wheel, for a GPU machine:
#
#   scripts/check_torch_wheel.sh "$(scripts/fetch_torch_wheel.sh)"    # PyPI's torch 2.11.0
#   scripts/check_torch_wheel.sh "$(python3 -c 'import torch, os; print(os.path.dirname(torch.__file__))')"
#
# Usage: scripts/check_torch_wheel.sh [--configure-only] <torch dir> [build dir]
#   --configure-only  stop after the configure and its checks
#   <torch dir>  the wheel's torch package folder, or an unpacked libtorch
#                zip: anything with cmake/Torch/TorchConfig.cmake below it
#   [build dir]  default build/torch-wheel (configured from scratch)
# The libstdc++ ABI of dasgd's build follows the wheel's
# (-D_GLIBCXX_USE_CXX11_ABI=0 in older wheels): every target of the build
# gets it, so the example's dataset loader links with the torch code.
# Only the `torch` tests are configured (DASGD_TEST_LABELS=torch).
set -euo pipefail
cd "$(dirname "$0")/.."
configure_only=0
if [[ "${1:-}" == "--configure-only" ]]; then
  configure_only=1
  shift
fi
if [[ $# -lt 1 || ! -d "$1" ]]; then
  sed -n '2,17p' "$0" | sed 's/^# \{0,1\}//'
  exit 2
fi
torch_dir=$(realpath "$1")
build=${2:-build/torch-wheel}
# shellcheck source=torch_config.sh
source scripts/torch_config.sh
torch_cmake_args "$torch_dir" || exit
abi_flags=()
if grep -q '_GLIBCXX_USE_CXX11_ABI=0' "$torch_cmake/TorchConfig.cmake"; then
  abi_flags=(-DCMAKE_CXX_FLAGS=-D_GLIBCXX_USE_CXX11_ABI=0)
  echo "note: this libtorch uses the pre-C++11 libstdc++ ABI; building everything with it"
fi
echo "libtorch: $torch_cmake"
rm -rf "$build"
cmake -S . -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release -DDASGD_WERROR=ON \
  -DDASGD_TEST_LABELS=torch -DDASGD_BUILD_BENCHMARKS=OFF "${torch_args[@]}" "${abi_flags[@]}"
torch_check_cache "$build" || exit 1
(( configure_only )) && { echo "configured against $torch_prefix"; exit 0; }
cmake --build "$build" -j "$(nproc)" --target dasgd.test.adaptors.torch dasgd_libtorch_fashion_mnist
# Every c10/torch library the programs load must be the wheel's.
for prog in "$build/tests/adaptors/dasgd.test.adaptors.torch" \
            "$build/examples/libtorch_fashion_mnist/dasgd_libtorch_fashion_mnist"; do
  foreign=$(ldd "$prog" | awk '$1 ~ /^lib(c10|torch)/ && index($3, "'"$torch_prefix"'/") != 1 {print $1 " => " $3}')
  if [[ -n "$foreign" ]]; then
    echo "error: $prog loads libtorch libraries from outside $torch_prefix:" >&2
    echo "$foreign" >&2
    exit 1
  fi
done
ctest --test-dir "$build" -L torch --output-on-failure
