// The CUDA side of comm/cuda_mpi.hpp: the kernels of the direct route (16-bit
// snapshot widened to fp32; average = sum / size in the storage type) and
// the runtime policy that launches them. Include from a .cu file; it
// defines dasgd::comm::cuda_mpi_communicator.
#pragma once

#include <cuda_runtime_api.h>

#include <cstddef>

#include "../../comm/cuda_mpi.hpp"
#include "../../comm/detail/cuda_runtime.hpp"
#include "../../comm/detail/mpi_cuda_support.hpp"
#include "../../core/precision.hpp"

namespace dasgd::kernels {

template <class T>
__global__ void widen_to_fp32(const T* in, float* out, std::size_t n) {
  const std::size_t stride = static_cast<std::size_t>(gridDim.x) * blockDim.x;
  for (std::size_t i = static_cast<std::size_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride)
    out[i] = to_compute<float>(in[i]);
}

/// out[i] = sum[i] * inv, rounded once to the storage type.
template <class T, class W>
__global__ void scale_to_storage(const W* sum, T* out, std::size_t n, W inv) {
  const std::size_t stride = static_cast<std::size_t>(gridDim.x) * blockDim.x;
  for (std::size_t i = static_cast<std::size_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride)
    out[i] = to_storage<T>(sum[i] * inv);
}

/// The runtime policy of comm::basic_cuda_mpi_communicator on a real GPU.
struct cuda_mpi_runtime : comm::detail::cuda_runtime {
  /// Memory-bound passes: enough blocks to fill the device, grid-stride beyond.
  static unsigned blocks_for(std::size_t n, int threads) {
    const std::size_t wanted = (n + threads - 1) / threads;
    return static_cast<unsigned>(wanted < 4096 ? (wanted == 0 ? 1 : wanted) : 4096);
  }

  template <class T>
  static cudaError_t launch_widen(const T* in, float* out, std::size_t n, cudaStream_t s) {
    constexpr int threads = 256;
    widen_to_fp32<T><<<blocks_for(n, threads), threads, 0, s>>>(in, out, n);
    return cudaGetLastError();
  }

  template <class T, class W>
  static cudaError_t launch_scale(const W* sum, T* out, std::size_t n, W inv, cudaStream_t s) {
    constexpr int threads = 256;
    scale_to_storage<T, W><<<blocks_for(n, threads), threads, 0, s>>>(sum, out, n, inv);
    return cudaGetLastError();
  }

  static comm::mpi_cuda_support mpi_support() { return comm::detail::query_mpi_cuda_support(); }
};

}  // namespace dasgd::kernels

namespace dasgd::comm {

/// Device tensors over MPI on a real GPU (comm/cuda_mpi.hpp).
using cuda_mpi_communicator = basic_cuda_mpi_communicator<kernels::cuda_mpi_runtime>;

}  // namespace dasgd::comm
