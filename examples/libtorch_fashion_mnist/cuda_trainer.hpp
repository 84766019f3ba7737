// The example's trainer on CUDA tensors: dasgd's delayed_averager over the
// CUDA backend, behind a small virtual interface. The kernels need nvcc and
// libtorch's headers do not all compile under nvcc in C++20, so the two
// live in separate translation units (cuda_trainer.cu: dasgd only;
// libtorch_fashion_mnist.cpp: torch) that share only the types below, as
// dasgd/adaptors/torch_cuda.hpp describes. The interface has the members
// the torch_step / torch_synchronize / torch_broadcast_parameters helpers
// call, so the training loop is the same on CPU and CUDA.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>
#include <memory>
#include <string>

#include <dasgd/core/tensor_list.hpp>
#include <dasgd/core/trainer_options.hpp>
#include <dasgd/kernels/cuda/device_buffer.hpp>

namespace torch_fashion_mnist {

/// What the CPU path passes to delayed_averager, for the CUDA path.
struct cuda_trainer_settings {
  int tau = 4;
  int delay = 1;
  double p = 0.25;
  double lr = 0.05;
  double momentum = 0.9;
};

/// One worker's delayed_averager (SGD with momentum, mix merge, fixed
/// delay) on device tensors.
class cuda_trainer {
 public:
  using params_type = dasgd::tensor_list<float, dasgd::device_space>;
  using grads_type = dasgd::tensor_list<const float, dasgd::device_space>;

  virtual ~cuda_trainer() = default;
  virtual const params_type& parameters() const noexcept = 0;
  virtual dasgd::step_report step(const grads_type& gradients) = 0;
  virtual bool synchronize() = 0;
  virtual void broadcast_parameters(int root) = 0;
  virtual void set_learning_rate(double lr) = 0;
  virtual std::int64_t steps_taken() const noexcept = 0;
};

/// Worker threads of one process on its GPUs (several may share one):
/// comm::device_group, the average computed on the device.
class cuda_thread_group {
 public:
  explicit cuda_thread_group(int workers);
  ~cuda_thread_group();
  cuda_thread_group(const cuda_thread_group&) = delete;
  cuda_thread_group& operator=(const cuda_thread_group&) = delete;

  /// Rank `rank`'s trainer over `params`, every pass and collective on
  /// `stream` (torch's current stream in that worker's thread), its arenas
  /// from `allocator`.
  std::unique_ptr<cuda_trainer> trainer(int rank, const cuda_trainer::params_type& params,
                                        cudaStream_t stream, dasgd::device_allocator allocator,
                                        const cuda_trainer_settings& settings) const;
  /// Fails every rank's pending and later collectives (a worker threw).
  void abort(const std::string& why) const;

 private:
  struct impl;
  std::unique_ptr<impl> impl_;
};

#if DASGD_HAS_MPI
/// One worker per MPI rank: comm::cuda_mpi_communicator over a new
/// mpi_communicator (MPI_COMM_WORLD duplicated; collective over the ranks):
/// device pointers to a CUDA-aware MPI, host staging otherwise.
std::unique_ptr<cuda_trainer> make_mpi_cuda_trainer(const cuda_trainer::params_type& params,
                                                    cudaStream_t stream, dasgd::device_allocator allocator,
                                                    const cuda_trainer_settings& settings);
#endif

}  // namespace torch_fashion_mnist
