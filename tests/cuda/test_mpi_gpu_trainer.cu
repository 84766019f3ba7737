// Several GPU workers averaging through MPI, run by mpiexec with 2 and 4
// ranks (label gpu; the ranks may share one GPU). Each rank trains the same
// model twice, step by step: with device tensors, the CUDA backend and the
// host-staged MPI communicator, and with host tensors, the host backend
// and a plain MPI communicator. Gradients differ by rank, so every merged
// average crosses the ranks; the two runs must agree within the storage
// tolerance at every step. Without a device every rank exits with 77
// (skipped). The stall and mismatch paths of the staging are tested on the
// host (test_host_staged_fake.cpp); MPI's own in tests/mpi.
#include <doctest/doctest.h>

#include <dasgd/comm/host_staged.hpp>
#include <dasgd/comm/mpi.hpp>
#include <dasgd/core/delayed_averager.hpp>
#include <dasgd/kernels/cuda/cuda_backend.cuh>
#include <dasgd/kernels/cuda/parameter_arena.hpp>
#include <dasgd/merge/additive.hpp>
#include <dasgd/merge/mix.hpp>
#include <dasgd/optim/adamw.hpp>
#include <dasgd/optim/sgd.hpp>
#include <dasgd/policy/fixed_delay.hpp>

#include <cmath>
#include <cstdint>
#include <random>
#include <string>
#include <vector>

#include "cuda/storage_tolerance.hpp"
#include "cuda/trainer_comparison.hpp"

namespace {

using namespace dasgd;
using staged_mpi = comm::host_staged_communicator<comm::mpi_communicator>;

const std::vector<std::size_t> extents{1000, 37, 4097, 1, 130};

int world_rank() {
  int r = 0;
  MPI_Comm_rank(MPI_COMM_WORLD, &r);
  return r;
}

/// Gradient of element i of tensor t at step k on rank r.
double gradient(std::size_t t, std::size_t i, int k, int r) {
  return 0.5 * std::sin(0.37 * double(i) + 1.3 * double(t) + 0.71 * double(k) + 0.9 * double(r));
}

struct stream_holder {
  cudaStream_t s = nullptr;
  stream_holder() { DASGD_CUDA_CHECK(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking)); }
  ~stream_holder() { (void)cudaStreamDestroy(s); }
  stream_holder(const stream_holder&) = delete;
  stream_holder& operator=(const stream_holder&) = delete;
};

comm::mpi_options mpi_opts() {
  comm::mpi_options o;
  o.timeout = std::chrono::seconds(30);
  return o;
}

comm::host_staged_options staged_opts() {
  comm::host_staged_options o;
  o.timeout = std::chrono::seconds(30);
  return o;
}

template <class T, class Optim, class Merge>
void compare(policy::fixed_delay pol, Optim opt, Merge merge, bool master, int steps) {
  const int rank = world_rank();
  stream_holder s;
  // Different initial weights per rank: broadcast_parameters(0) must make
  // them equal before training, on both paths.
  std::mt19937 rng(100u + static_cast<unsigned>(rank));
  std::vector<std::vector<T>> host_w;
  for (auto n : extents) {
    host_w.emplace_back(n);
    for (auto& x : host_w.back()) x = test::random_storage<T>(rng, -1.0, 1.0);
  }
  device_parameter_arena<T> dw(extents, s.s), dg(extents, s.s);
  for (std::size_t t = 0; t < extents.size(); ++t)
    DASGD_CUDA_CHECK(cudaMemcpy(dw.view(t).ptr, host_w[t].data(), extents[t] * sizeof(T), cudaMemcpyHostToDevice));

  trainer_options options{.master_weights = master};
  delayed_averager host(make_tensor_list(host_w), comm::mpi_communicator(MPI_COMM_WORLD, mpi_opts()), pol, opt, merge,
                        options);
  auto dev_w = dw.tensors();
  delayed_averager dev(dev_w, staged_mpi(comm::mpi_communicator(MPI_COMM_WORLD, mpi_opts()), s.s, staged_opts()), pol,
                       opt, merge, cuda_backend(s.s), options);
  host.broadcast_parameters(0);
  dev.broadcast_parameters(0);

  auto dev_g = dg.tensors();
  std::vector<std::vector<T>> g(extents.size());
  for (int k = 0; k < steps; ++k) {
    for (std::size_t t = 0; t < extents.size(); ++t) {
      g[t].resize(extents[t]);
      for (std::size_t i = 0; i < extents[t]; ++i) g[t][i] = to_storage<T>(gradient(t, i, k, rank));
      DASGD_CUDA_CHECK(cudaMemcpyAsync(const_cast<T*>(dev_g.data(t)), g[t].data(), g[t].size() * sizeof(T),
                                       cudaMemcpyHostToDevice, s.s));
      DASGD_CUDA_CHECK(cudaStreamSynchronize(s.s));  // g[t] is pageable and rewritten next step
    }
    tensor_list<const T, host_space> hg;
    for (auto& v : g) hg.add(v.data(), v.size());
    const step_report hr = host.step(hg);
    const step_report dr = dev.step(dev_g);
    CHECK(hr.launched == dr.launched);
    CHECK(hr.merged == dr.merged);
    if (k == steps - 1) {
      host.synchronize();
      dev.synchronize();
    }
    test::check_weights_close(host_w, dev.backend(), dev_w, k, "rank " + std::to_string(rank));
  }
  CHECK(dev.steps_taken() == steps);
}

template <class T, class Optim, class Merge>
void every_delay(Optim opt, Merge merge, bool master) {
  for (int d = 0; d <= 3; ++d) {
    CAPTURE(d);
    compare<T>(policy::fixed_delay{4, d}, opt, merge, master, 14);
  }
}

}  // namespace

TEST_CASE("GPU workers over host-staged MPI match the host backend: SGD momentum") {
  SUBCASE("fp32, mix") { every_delay<float>(optim::sgd{.lr = 0.05, .momentum = 0.9}, merge::mix{0.25}, false); }
  SUBCASE("fp32, additive") { every_delay<float>(optim::sgd{.lr = 0.05, .momentum = 0.9}, merge::additive{}, false); }
  SUBCASE("bf16 + fp32 master, mix") {
    every_delay<__nv_bfloat16>(optim::sgd{.lr = 0.05, .momentum = 0.9}, merge::mix{0.25}, true);
  }
  SUBCASE("bf16 + fp32 master, additive") {
    every_delay<__nv_bfloat16>(optim::sgd{.lr = 0.05, .momentum = 0.9}, merge::additive{}, true);
  }
  SUBCASE("bf16 storage, mix") {
    every_delay<__nv_bfloat16>(optim::sgd{.lr = 0.05, .momentum = 0.9}, merge::mix{0.25}, false);
  }
}

TEST_CASE("GPU workers over host-staged MPI match the host backend: AdamW") {
  SUBCASE("fp32, mix") { every_delay<float>(optim::adamw{.lr = 1e-2}, merge::mix{0.25}, false); }
  SUBCASE("fp32, additive") { every_delay<float>(optim::adamw{.lr = 1e-2}, merge::additive{}, false); }
  SUBCASE("bf16 + fp32 master, mix") { every_delay<__nv_bfloat16>(optim::adamw{.lr = 1e-2}, merge::mix{0.25}, true); }
  SUBCASE("bf16 + fp32 master, additive") {
    every_delay<__nv_bfloat16>(optim::adamw{.lr = 1e-2}, merge::additive{}, true);
  }
}
