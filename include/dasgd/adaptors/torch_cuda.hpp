// libtorch on CUDA: the stream and the memory pool of PyTorch for dasgd's
// CUDA backend. Plain C++ (needs a CUDA build of libtorch: c10_cuda, and
// the CUDA runtime headers), no nvcc.
//
// The CUDA backend's kernels are compiled by nvcc, and libtorch's headers
// do not all compile under nvcc in C++20 mode (libtorch 1.13's do not:
// std::vector of an incomplete c10::IValue). So keep libtorch and the
// trainer in two translation units that share only dasgd types:
//
//   // model.cpp (host compiler, libtorch)
//   model->to(torch::kCUDA);                                  // before anything below
//   dasgd::torch_parameters<float, dasgd::device_space> params(*model);
//   cudaStream_t stream = dasgd::torch_cuda::current_stream(params.device().index());
//   auto trainer = make_cuda_trainer(params.list(), stream, dasgd::torch_cuda::caching_allocator());
//   ... per step: trainer->step(params.gradients()); params.mark_updated();
//
//   // trainer.cu (nvcc, dasgd only)
//   std::unique_ptr<my_trainer> make_cuda_trainer(dasgd::tensor_list<float, dasgd::device_space> p,
//                                                 cudaStream_t s, dasgd::device_allocator a) {
//     auto comm = dasgd::comm::nccl_communicator::from_mpi(MPI_COMM_WORLD, s);
//     return std::make_unique<my_trainer>(std::move(p), std::move(comm), policy, optim, merge,
//                                         dasgd::cuda_backend(s, std::move(a)));
//   }
//
// The fused pass then runs on the stream that was current when it was
// taken, ordered after the backward() that produced the gradients and
// before the next forward() on it: keep torch on that stream for the whole
// training (c10::cuda::CUDAStreamGuard).
#pragma once

#include <cstddef>

#include <c10/cuda/CUDACachingAllocator.h>
#include <c10/cuda/CUDAStream.h>

#include "../kernels/cuda/device_buffer.hpp"
#include "torch.hpp"

namespace dasgd::torch_cuda {

/// torch's current CUDA stream on `device` (-1: the current device).
inline cudaStream_t current_stream(c10::DeviceIndex device = -1) {
  return c10::cuda::getCurrentCUDAStream(device).stream();
}

/// dasgd's device buffers from PyTorch's caching allocator, so the two do
/// not compete for device memory (torch's memory statistics count dasgd's
/// arenas too, and its cache can hand their memory to tensors once the
/// trainer is gone). For cuda_backend(stream, allocator).
inline device_allocator caching_allocator() {
  return device_allocator{
      [](std::size_t bytes, cudaStream_t stream) -> void* {
        return c10::cuda::CUDACachingAllocator::raw_alloc_with_stream(bytes, stream);
      },
      [](void* ptr, std::size_t, cudaStream_t) { c10::cuda::CUDACachingAllocator::raw_delete(ptr); }};
}

}  // namespace dasgd::torch_cuda
