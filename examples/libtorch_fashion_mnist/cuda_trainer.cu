// The CUDA side of the libtorch example (cuda_trainer.hpp): dasgd only, no
// torch headers, compiled by nvcc.
#include "cuda_trainer.hpp"

#include <utility>

#include <dasgd/core/delayed_averager.hpp>
#include <dasgd/kernels/cuda/cuda_backend.cuh>
#include <dasgd/kernels/cuda/device_group_runtime.cuh>
#include <dasgd/merge/mix.hpp>
#include <dasgd/optim/sgd.hpp>
#include <dasgd/policy/fixed_delay.hpp>

#if DASGD_HAS_MPI
#include <dasgd/comm/mpi.hpp>
#include <dasgd/kernels/cuda/cuda_mpi_runtime.cuh>
#endif

namespace torch_fashion_mnist {
namespace {

template <class Comm>
class cuda_trainer_over final : public cuda_trainer {
 public:
  cuda_trainer_over(const params_type& params, Comm comm, cudaStream_t stream, dasgd::device_allocator allocator,
                    const cuda_trainer_settings& s)
      : trainer_(params, std::move(comm), dasgd::policy::fixed_delay{.tau = s.tau, .delay = s.delay},
                 dasgd::optim::sgd{.lr = s.lr, .momentum = s.momentum},
                 dasgd::merge::mix{.update_proportion = s.p}, dasgd::cuda_backend(stream, std::move(allocator))) {}

  const params_type& parameters() const noexcept override { return trainer_.parameters(); }
  dasgd::step_report step(const grads_type& gradients) override { return trainer_.step(gradients); }
  bool synchronize() override { return trainer_.synchronize(); }
  void broadcast_parameters(int root) override { trainer_.broadcast_parameters(root); }
  void set_learning_rate(double lr) override { trainer_.set_learning_rate(lr); }
  std::int64_t steps_taken() const noexcept override { return trainer_.steps_taken(); }

 private:
  dasgd::delayed_averager<float, Comm, dasgd::policy::fixed_delay, dasgd::optim::sgd, dasgd::merge::mix,
                          dasgd::cuda_backend>
      trainer_;
};

}  // namespace

struct cuda_thread_group::impl {
  dasgd::comm::device_group group;
};

cuda_thread_group::cuda_thread_group(int workers) : impl_(new impl{dasgd::comm::device_group(workers)}) {}
cuda_thread_group::~cuda_thread_group() = default;

std::unique_ptr<cuda_trainer> cuda_thread_group::trainer(int rank, const cuda_trainer::params_type& params,
                                                         cudaStream_t stream, dasgd::device_allocator allocator,
                                                         const cuda_trainer_settings& settings) const {
  using comm_type = decltype(impl_->group.communicator(rank, stream));
  return std::make_unique<cuda_trainer_over<comm_type>>(params, impl_->group.communicator(rank, stream), stream,
                                                        std::move(allocator), settings);
}

void cuda_thread_group::abort(const std::string& why) const { impl_->group.abort(why); }

#if DASGD_HAS_MPI
std::unique_ptr<cuda_trainer> make_mpi_cuda_trainer(const cuda_trainer::params_type& params, cudaStream_t stream,
                                                    dasgd::device_allocator allocator,
                                                    const cuda_trainer_settings& settings) {
  using comm_type = dasgd::comm::cuda_mpi_communicator;  // device pointers to a CUDA-aware MPI, else host staging
  return std::make_unique<cuda_trainer_over<comm_type>>(
      params, comm_type(dasgd::comm::mpi_communicator(), stream), stream, std::move(allocator), settings);
}
#endif

}  // namespace torch_fashion_mnist
