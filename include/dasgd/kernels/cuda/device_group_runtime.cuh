// The CUDA side of comm/device_group.hpp: the kernel that averages every
// rank's send buffer into one rank's recv, and the runtime policy that
// launches it. Include from a .cu file; it defines dasgd::comm::device_group
// and device_communicator.
#pragma once

#include <cuda_runtime_api.h>

#include <cstddef>
#include <cstdint>

#include "../../comm/detail/cuda_runtime.hpp"
#include "../../comm/device_group.hpp"
#include "../../core/precision.hpp"

namespace dasgd::kernels {

/// Every rank's send pointer, by value (a launch parameter, no upload).
template <class T>
struct device_group_sources {
  const T* send[comm::device_group_max_ranks];
};

/// recv[i] = (sum over ranks r, in rank order, of send_r[i]) * (1 / n),
/// summed in double: the bits of the in-process host communicator.
template <class T>
__global__ void device_group_average(device_group_sources<T> src, T* recv, int n, std::size_t count, double inv) {
  const std::size_t stride = static_cast<std::size_t>(gridDim.x) * blockDim.x;
  for (std::size_t i = static_cast<std::size_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < count; i += stride) {
    double s = 0;
    for (int r = 0; r < n; ++r) s += to_compute<double>(src.send[r][i]);
    recv[i] = to_storage<T>(s * inv);
  }
}

/// The runtime policy of comm::basic_device_group on a real GPU.
struct device_group_runtime : comm::detail::cuda_runtime {
  template <class T>
  static cudaError_t launch_average(void* recv, const void* const* sends, int n, std::size_t count,
                                    cudaStream_t s) {
    device_group_sources<T> src{};
    for (int r = 0; r < n; ++r) src.send[r] = static_cast<const T*>(sends[r]);
    // A memory-bound pass: enough blocks to fill the device, grid-stride beyond.
    constexpr int threads = 256;
    const std::size_t wanted = (count + threads - 1) / threads;
    const unsigned blocks = static_cast<unsigned>(wanted < 4096 ? (wanted == 0 ? 1 : wanted) : 4096);
    device_group_average<T><<<blocks, threads, 0, s>>>(src, static_cast<T*>(recv), n, count, 1.0 / n);
    return cudaGetLastError();
  }
};

}  // namespace dasgd::kernels

namespace dasgd::comm {

/// In-process ranks on GPUs, averaging on the device.
using device_group = basic_device_group<kernels::device_group_runtime>;
using device_communicator = basic_device_communicator<kernels::device_group_runtime>;

}  // namespace dasgd::comm
