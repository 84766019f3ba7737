#!/usr/bin/env bash
# Configures, builds and runs the libtorch adaptor test and the libtorch
# example (its smoke tests, label `torch`) against another libtorch than
# Debian's, e.g. the one inside a PyTorch 2.x wheel, for a GPU machine:
#
#   python3 -m venv /tmp/tv && /tmp/tv/bin/pip install torch
#   scripts/check_torch_wheel.sh "$(/tmp/tv/bin/python -c 'import torch, os; print(os.path.dirname(torch.__file__))')"
#
# Usage: scripts/check_torch_wheel.sh <torch dir> [build dir]
#   <torch dir>  the wheel's torch package folder, or an unpacked libtorch
#                zip: anything with cmake/Torch/TorchConfig.cmake below it
#   [build dir]  default build/torch-wheel (configured from scratch)
# The libstdc++ ABI of dasgd's build follows the wheel's
# (-D_GLIBCXX_USE_CXX11_ABI=0 in older wheels): every target of the build
# gets it, so the example's dataset loader links with the torch code.
# Only the `torch` tests are configured (DASGD_TEST_LABELS=torch).
set -euo pipefail
cd "$(dirname "$0")/.."
if [[ $# -lt 1 || ! -d "$1" ]]; then
  sed -n '2,16p' "$0" | sed 's/^# \{0,1\}//'
  exit 2
fi
torch_dir=$(realpath "$1")
build=${2:-build/torch-wheel}
config=$(find "$torch_dir" -path '*/cmake/Torch/TorchConfig.cmake' -print -quit)
if [[ -z "$config" ]]; then
  echo "error: no cmake/Torch/TorchConfig.cmake under $torch_dir" >&2
  exit 2
fi
torch_cmake=$(dirname "$config")
abi_flags=()
if grep -q '_GLIBCXX_USE_CXX11_ABI=0' "$config"; then
  abi_flags=(-DCMAKE_CXX_FLAGS=-D_GLIBCXX_USE_CXX11_ABI=0)
  echo "note: this libtorch uses the pre-C++11 libstdc++ ABI; building everything with it"
fi
echo "libtorch: $torch_cmake"
rm -rf "$build"
cmake -S . -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release -DDASGD_WERROR=ON \
  -DDASGD_TEST_LABELS=torch -DDASGD_BUILD_BENCHMARKS=OFF -DTorch_DIR="$torch_cmake" \
  "${abi_flags[@]}"
grep -q '^Torch_DIR:PATH='"$torch_cmake"'$' "$build/CMakeCache.txt" || {
  echo "error: the configure did not use $torch_cmake" >&2
  exit 1
}
cmake --build "$build" -j "$(nproc)" --target dasgd.test.adaptors.torch dasgd_libtorch_fashion_mnist
ctest --test-dir "$build" -L torch --output-on-failure
