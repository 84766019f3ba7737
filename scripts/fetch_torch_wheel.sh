#!/usr/bin/env bash
# Downloads a PyTorch wheel from PyPI and unpacks it as pip would lay it out
# (DEST/torch, DEST/nvidia/...), with the CUDA libraries its libtorch_cuda
# needs that this machine's CUDA toolkit lacks (cuFile, cuSPARSELt,
# NVSHMEM). No pip install and no virtual environment: the C++ programs only
# need torch's lib/, include/ and share/cmake/. Prints the torch folder, for
# scripts/check_torch_wheel.sh and TORCH_DIR of scripts/gpu_check.sh --prepare.
#
#   scripts/fetch_torch_wheel.sh [DEST]     default /tmp/torch-wheel
# Environment: TORCH_VERSION (default 2.11.0, the GPU image's), and
# TORCH_EXTRA_WHEELS (the extra libraries' pins, default those of 2.11.0+cu130).
# About 830 MB of downloads.
set -euo pipefail
dest=${1:-/tmp/torch-wheel}
version=${TORCH_VERSION:-2.11.0}
extra=${TORCH_EXTRA_WHEELS:-"nvidia-cusparselt-cu13==0.8.0 nvidia-nvshmem-cu13==3.4.5 nvidia-cufile==1.15.1.6.*"}
mkdir -p "$dest/.wheels"
# shellcheck disable=SC2086
python3 -m pip download -q --no-deps --only-binary=:all: -d "$dest/.wheels" "torch==$version" $extra >&2
for w in "$dest"/.wheels/*.whl; do
  python3 -m zipfile -e "$w" "$dest"
done
rm -rf "$dest/.wheels"
[[ -f "$dest/torch/share/cmake/Torch/TorchConfig.cmake" ]] || { echo "no TorchConfig.cmake in the wheel" >&2; exit 1; }
# zipfile drops the executable bits; the shared libraries do not need them.
missing=$(ldd "$dest/torch/lib/libtorch_cuda.so" 2>/dev/null | awk '/not found/ {print $1}' | tr '\n' ' ')
[[ -z "$missing" ]] || echo "note: libtorch_cuda.so still misses: $missing" >&2
echo "$dest/torch"
