// In-process GPU ranks with the device group (comm/device_group.hpp and
// its kernel): 2 and 4 threads sharing one GPU, each training with the
// CUDA backend, against the same ranks training on the host over the
// in-process communicator, step by step. Gradients differ by rank, so
// every merge carries the other ranks' weights. (The host-side logic and
// its failure paths: test_device_group_fake.cpp.)
#include <doctest/doctest.h>

#include <dasgd/comm/inproc.hpp>
#include <dasgd/core/delayed_averager.hpp>
#include <dasgd/kernels/cuda/cuda_backend.cuh>
#include <dasgd/kernels/cuda/device_group_runtime.cuh>
#include <dasgd/kernels/cuda/parameter_arena.hpp>
#include <dasgd/merge/additive.hpp>
#include <dasgd/merge/mix.hpp>
#include <dasgd/optim/adamw.hpp>
#include <dasgd/optim/sgd.hpp>
#include <dasgd/policy/fixed_delay.hpp>

#include <cmath>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "cuda/storage_tolerance.hpp"
#include "cuda/trainer_comparison.hpp"

namespace {

using namespace dasgd;

const std::vector<std::size_t> extents{1000, 37, 4097, 1, 130};

double gradient(std::size_t t, std::size_t i, int k, int r) {
  return 0.5 * std::sin(0.37 * double(i) + 1.3 * double(t) + 0.71 * double(k) + 0.9 * double(r));
}

template <class T, class Optim, class Merge>
void rank_pair(int rank, comm::inproc_group& hosts, comm::device_group& devices, policy::fixed_delay pol,
               Optim opt, Merge merge, bool master, int steps) {
  DASGD_CUDA_CHECK(cudaSetDevice(0));
  cudaStream_t s = nullptr;
  DASGD_CUDA_CHECK(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
  {
    std::mt19937 rng(7u + static_cast<unsigned>(rank));
    std::vector<std::vector<T>> host_w;
    for (auto n : extents) {
      host_w.emplace_back(n);
      for (auto& x : host_w.back()) x = test::random_storage<T>(rng, -1.0, 1.0);
    }
    device_parameter_arena<T> dw(extents, s), dg(extents, s);
    for (std::size_t t = 0; t < extents.size(); ++t)
      DASGD_CUDA_CHECK(cudaMemcpy(dw.view(t).ptr, host_w[t].data(), extents[t] * sizeof(T), cudaMemcpyHostToDevice));
    trainer_options options{.master_weights = master};
    delayed_averager host(make_tensor_list(host_w), hosts.communicator(rank), pol, opt, merge, options);
    auto dev_w = dw.tensors();
    delayed_averager dev(dev_w, devices.communicator(rank, s), pol, opt, merge, cuda_backend(s), options);
    host.broadcast_parameters(0);
    dev.broadcast_parameters(0);
    auto dev_g = dg.tensors();
    test::run_side_by_side(host, host_w, dev, dev_w, dev_g, s, steps,
                           [rank](std::size_t t, std::size_t i, int k) { return gradient(t, i, k, rank); },
                           "rank " + std::to_string(rank));
  }
  DASGD_CUDA_CHECK(cudaStreamDestroy(s));
}

template <class T, class Optim, class Merge>
void run_group(int n, policy::fixed_delay pol, Optim opt, Merge merge, bool master, int steps) {
  CAPTURE(n);
  comm::inproc_group hosts(n);
  comm::device_group devices(n);
  std::vector<std::thread> threads;
  std::vector<std::string> errors(static_cast<std::size_t>(n));
  for (int r = 0; r < n; ++r)
    threads.emplace_back([&, r] {
      try {
        rank_pair<T>(r, hosts, devices, pol, opt, merge, master, steps);
      } catch (const std::exception& e) {
        errors[static_cast<std::size_t>(r)] = e.what();
        hosts.abort(e.what());
        devices.abort(e.what());
      }
    });
  for (auto& t : threads) t.join();
  for (int r = 0; r < n; ++r) {
    INFO("rank ", r, ": ", errors[static_cast<std::size_t>(r)]);
    CHECK(errors[static_cast<std::size_t>(r)].empty());
  }
}

}  // namespace

TEST_CASE("device group: GPU ranks sharing one GPU match the host ranks") {
  for (int n : {2, 4}) {
    for (int d = 0; d <= 3; ++d) {
      CAPTURE(d);
      run_group<float>(n, policy::fixed_delay{4, d}, optim::sgd{.lr = 0.05, .momentum = 0.9}, merge::mix{0.25},
                       false, 13);
      run_group<__nv_bfloat16>(n, policy::fixed_delay{4, d}, optim::adamw{.lr = 1e-2}, merge::additive{}, true, 13);
    }
    run_group<float>(n, policy::synchronous(), optim::sgd{.lr = 0.1}, merge::mix{0.0}, false, 5);
  }
}
