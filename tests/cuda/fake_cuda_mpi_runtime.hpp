// The runtime policy of comm::basic_cuda_mpi_communicator over the fake
// CUDA runtime (fake_nccl_runtime.hpp), for test_cuda_mpi_fake.cpp and
// cuda_mpi_stall_job.cpp.
#pragma once

#include <cuda_runtime_api.h>

#include <dasgd/comm/detail/mpi_cuda_support.hpp>
#include <dasgd/core/precision.hpp>

#include <atomic>
#include <cstddef>

#include "fake_nccl_runtime.hpp"

namespace dasgd_test::fake_cuda_mpi {

/// The fake CUDA runtime plus what comm/cuda_mpi.hpp adds: the direct
/// route's kernels run as host loops in stream order; the MPI's CUDA
/// support is what `support` says (yes by default: the fake's device
/// memory is host memory, which any MPI reads); copies by kind, pinned
/// buffers and launches are counted.
struct runtime : fake_nccl::runtime {
  static inline std::atomic<dasgd::comm::mpi_cuda_support> support{dasgd::comm::mpi_cuda_support::yes};
  static inline std::atomic<int> pinned_buffers{0};
  static inline std::atomic<int> host_copies{0};    ///< device-to-host and host-to-device
  static inline std::atomic<int> device_copies{0};  ///< device-to-device
  static inline std::atomic<int> widen_launches{0};
  static inline std::atomic<int> scale_launches{0};

  static dasgd::comm::mpi_cuda_support mpi_support() { return support.load(); }

  static cudaError_t malloc_host(void** p, std::size_t bytes) {
    ++pinned_buffers;
    return fake_nccl::runtime::malloc_host(p, bytes);
  }
  static cudaError_t memcpy_async(void* dst, const void* src, std::size_t bytes, cudaMemcpyKind kind,
                                  cudaStream_t s) {
    ++(kind == cudaMemcpyDeviceToDevice ? device_copies : host_copies);
    return fake_nccl::runtime::memcpy_async(dst, src, bytes, kind, s);
  }
  template <class T>
  static cudaError_t launch_widen(const T* in, float* out, std::size_t n, cudaStream_t s) {
    ++widen_launches;
    fake_nccl::enqueue_host(s, [=] {
      for (std::size_t i = 0; i < n; ++i) out[i] = dasgd::to_compute<float>(in[i]);
    });
    return cudaSuccess;
  }
  template <class T, class W>
  static cudaError_t launch_scale(const W* sum, T* out, std::size_t n, W inv, cudaStream_t s) {
    ++scale_launches;
    fake_nccl::enqueue_host(s, [=] {
      for (std::size_t i = 0; i < n; ++i) out[i] = dasgd::to_storage<T>(sum[i] * inv);
    });
    return cudaSuccess;
  }

  static void reset_counters() {
    pinned_buffers = host_copies = device_copies = widen_launches = scale_launches = 0;
  }
};

}  // namespace dasgd_test::fake_cuda_mpi
