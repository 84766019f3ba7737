# Sourced by scripts/check_torch_wheel.sh and scripts/gpu_check.sh: how to
# configure dasgd against a libtorch other than Debian's (a PyTorch wheel's
# torch folder, or an unpacked libtorch zip).
#
# TorchConfig finds Caffe2 and libc10 with PATHS next to it, which CMake
# searches only after the system folders: with Debian's libtorch-dev
# installed it would mix the two (a 2.x libtorch with 1.13's libc10 aborts
# at load). So the wheel's prefix goes first in CMAKE_PREFIX_PATH, Caffe2 is
# named, and torch_check_cache refuses a configure that still mixed them.

# torch_cmake_args DIR: sets torch_cmake, torch_prefix, caffe2_cmake and the
# array torch_args (the cmake arguments); returns 2, saying why, when DIR
# holds no usable libtorch.
torch_cmake_args() {
  local config
  config=$(find "$1" -path '*/cmake/Torch/TorchConfig.cmake' -print -quit)
  if [[ -z "$config" ]]; then
    echo "error: no cmake/Torch/TorchConfig.cmake under $1" >&2
    return 2
  fi
  torch_cmake=$(dirname "$config")
  torch_prefix=$(realpath -m "$torch_cmake/../../..")
  caffe2_cmake=$(realpath -m "$torch_cmake/../Caffe2")
  if [[ ! -f "$caffe2_cmake/Caffe2Config.cmake" ]]; then
    echo "error: no Caffe2Config.cmake next to $torch_cmake" >&2
    return 2
  fi
  torch_args=(-DTorch_DIR:PATH="$torch_cmake" -DCaffe2_DIR:PATH="$caffe2_cmake" -DCMAKE_PREFIX_PATH="$torch_prefix")
}

# torch_check_cache BUILD: returns 1, saying why, unless the configure in
# BUILD used the Torch, Caffe2 and libc10 of torch_cmake_args' tree.
torch_check_cache() {
  local pkg c10
  for pkg in Torch:"$torch_cmake" Caffe2:"$caffe2_cmake"; do
    if ! grep -qx "${pkg%%:*}_DIR:PATH=${pkg#*:}" "$1/CMakeCache.txt"; then
      echo "error: the configure did not use ${pkg#*:} for ${pkg%%:*}" >&2
      return 1
    fi
  done
  c10=$(sed -n 's/^C10_LIBRARY:[A-Z]*=//p' "$1/CMakeCache.txt" | head -n1)
  if [[ -n "$c10" && "$(realpath -m "$c10")" != "$torch_prefix"/* ]]; then
    echo "error: the configure found libc10 at $c10, outside $torch_prefix" >&2
    return 1
  fi
}
