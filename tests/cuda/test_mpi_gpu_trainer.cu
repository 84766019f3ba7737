// Several GPU workers averaging through MPI, run by mpiexec with 2 and 4
// ranks (label gpu; the ranks may share one GPU). Each rank trains the same
// model twice, step by step: with device tensors, the CUDA backend and the
// host-staged MPI communicator, and with host tensors, the host backend
// and a plain MPI communicator. Gradients differ by rank, so every merged
// average crosses the ranks; the two runs must agree within the storage
// tolerance at every step. Without a device every rank exits with 77
// (skipped). The stall and mismatch paths of the staging are tested on the
// host (test_host_staged_fake.cpp); MPI's own in tests/mpi. The same
// comparison runs through comm::cuda_mpi_communicator on both of its routes
// (test_cuda_mpi_fake.cpp covers them on the host).
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

/// The device communicator under test, made for the compute stream.
struct staged_factory {
  staged_mpi operator()(cudaStream_t s) const {
    return staged_mpi(comm::mpi_communicator(MPI_COMM_WORLD, mpi_opts()), s, staged_opts());
  }
};

template <class T, class Optim, class Merge, class Factory = staged_factory>
void compare(policy::fixed_delay pol, Optim opt, Merge merge, bool master, int steps, Factory make = {}) {
  const int rank = world_rank();
  test::stream_holder s;
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
  delayed_averager dev(dev_w, make(s.s), pol, opt, merge, cuda_backend(s.s), options);
  host.broadcast_parameters(0);
  dev.broadcast_parameters(0);

  auto dev_g = dg.tensors();
  test::run_side_by_side(host, host_w, dev, dev_w, dev_g, s.s, steps,
                         [rank](std::size_t t, std::size_t i, int k) { return gradient(t, i, k, rank); },
                         "rank " + std::to_string(rank));
}

template <class T, class Optim, class Merge, class Factory = staged_factory>
void every_delay(Optim opt, Merge merge, bool master, Factory make = {}) {
  for (int d = 0; d <= 3; ++d) {
    CAPTURE(d);
    compare<T>(policy::fixed_delay{4, d}, opt, merge, master, 14, make);
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

// --- comm::cuda_mpi_communicator ---------------------------------------------
#include <dasgd/kernels/cuda/cuda_mpi_runtime.cuh>

namespace {

/// The direct route with staging buffers in managed memory, which the host
/// can read: an MPI that is not CUDA-aware (the test machine's) then works
/// on them as a CUDA-aware one works on device memory, so the route's
/// copies, kernels and ordering run on the GPU. (The real route allocates
/// with cudaMalloc.)
struct managed_staging_runtime : kernels::cuda_mpi_runtime {
  static cudaError_t malloc_device(void** p, std::size_t bytes) { return cudaMallocManaged(p, bytes); }
  static comm::mpi_cuda_support mpi_support() { return comm::mpi_cuda_support::yes; }
};

comm::cuda_mpi_options cuda_mpi_opts(comm::mpi_device_pointers p) {
  comm::cuda_mpi_options o;
  o.staging = staged_opts();
  o.device_pointers = p;
  return o;
}

template <class Runtime>
struct cuda_mpi_factory {
  comm::mpi_device_pointers pointers = comm::mpi_device_pointers::automatic;
  comm::basic_cuda_mpi_communicator<Runtime> operator()(cudaStream_t s) const {
    return comm::basic_cuda_mpi_communicator<Runtime>(comm::mpi_communicator(MPI_COMM_WORLD, mpi_opts()), s,
                                                      cuda_mpi_opts(pointers));
  }
};

template <class T>
void check_route_kernels(std::size_t n) {
  CAPTURE(n);
  test::stream_holder s;
  std::mt19937 rng(5);
  std::vector<T> in(n);
  for (auto& x : in) x = test::random_storage<T>(rng, -3.0, 3.0);
  cuda_backend b(s.s);
  auto d_in = b.allocate<T>(n);
  auto d_wide = b.allocate<float>(n);
  auto d_out = b.allocate<T>(n);
  DASGD_CUDA_CHECK(cudaMemcpy(d_in.data(), in.data(), n * sizeof(T), cudaMemcpyHostToDevice));
  DASGD_CUDA_CHECK(kernels::cuda_mpi_runtime::launch_widen<T>(d_in.data(), d_wide.data(), n, s.s));
  DASGD_CUDA_CHECK((kernels::cuda_mpi_runtime::launch_scale<T, float>(d_wide.data(), d_out.data(), n, 0.25f, s.s)));
  DASGD_CUDA_CHECK(cudaStreamSynchronize(s.s));
  std::vector<float> wide(n);
  std::vector<T> out(n);
  DASGD_CUDA_CHECK(cudaMemcpy(wide.data(), d_wide.data(), n * sizeof(float), cudaMemcpyDeviceToHost));
  DASGD_CUDA_CHECK(cudaMemcpy(out.data(), d_out.data(), n * sizeof(T), cudaMemcpyDeviceToHost));
  bool ok = true;
  for (std::size_t i = 0; i < n; ++i) {
    ok = ok && wide[i] == to_compute<float>(in[i]);
    ok = ok && to_compute<float>(out[i]) == to_compute<float>(to_storage<T>(to_compute<float>(in[i]) * 0.25f));
  }
  CHECK(ok);
}

}  // namespace

TEST_CASE("cuda_mpi: the direct route's kernels (widen to fp32, scale to storage) match the host") {
  for (std::size_t n : {std::size_t(1), std::size_t(1000), std::size_t(3) << 20}) {
    check_route_kernels<__nv_bfloat16>(n);
    check_route_kernels<__half>(n);
  }
}

TEST_CASE("GPU workers over cuda_mpi_communicator match the host backend, on each route") {
  const auto support = comm::detail::query_mpi_cuda_support();
  MESSAGE("rank ", world_rank(), ": this MPI reports CUDA support: ", comm::to_string(support));
  {
    // automatic: the direct route where the MPI is CUDA-aware, host staging otherwise.
    test::stream_holder s;
    auto probe = cuda_mpi_factory<kernels::cuda_mpi_runtime>{}(s.s);
    MESSAGE("automatic route: ", comm::to_string(probe.route()));
    CHECK(probe.route() == (support == comm::mpi_cuda_support::yes ? comm::cuda_mpi_route::device_direct
                                                                    : comm::cuda_mpi_route::host_staged));
  }
  every_delay<float>(optim::sgd{.lr = 0.05, .momentum = 0.9}, merge::mix{0.25}, false,
                     cuda_mpi_factory<kernels::cuda_mpi_runtime>{});
  // The direct route on the GPU, its staging in managed memory. MPI reads
  // it on the host while other kernels run, which needs concurrent managed
  // access (every rank asks the same device model, so all skip or none).
  int device = 0;
  int concurrent = 0;
  DASGD_CUDA_CHECK(cudaGetDevice(&device));
  DASGD_CUDA_CHECK(cudaDeviceGetAttribute(&concurrent, cudaDevAttrConcurrentManagedAccess, device));
  if (concurrent != 0) {
    cuda_mpi_factory<managed_staging_runtime> managed{comm::mpi_device_pointers::always};
    every_delay<float>(optim::sgd{.lr = 0.05, .momentum = 0.9}, merge::mix{0.25}, false, managed);
    every_delay<float>(optim::adamw{.lr = 1e-2}, merge::additive{}, false, managed);
    every_delay<__nv_bfloat16>(optim::sgd{.lr = 0.05, .momentum = 0.9}, merge::mix{0.25}, true, managed);
    every_delay<__nv_bfloat16>(optim::adamw{.lr = 1e-2}, merge::additive{}, false, managed);
    MESSAGE("direct route with managed staging: ran");
  } else {
    MESSAGE("direct route with managed staging: skipped (no concurrent managed access on this device)");
  }
  if (support == comm::mpi_cuda_support::yes) {
    // A CUDA-aware MPI: device pointers straight from cudaMalloc.
    cuda_mpi_factory<kernels::cuda_mpi_runtime> direct{comm::mpi_device_pointers::always};
    every_delay<float>(optim::adamw{.lr = 1e-2}, merge::mix{0.25}, false, direct);
    every_delay<__nv_bfloat16>(optim::sgd{.lr = 0.05, .momentum = 0.9}, merge::additive{}, true, direct);
  }
}

#if defined(DASGD_HAS_NCCL)
#include <dasgd/comm/nccl.hpp>

#include <cstdlib>
#include <thread>

namespace {

/// NCCL refuses two ranks on one GPU ("Duplicate GPU detected") unless they
/// look like separate hosts: each rank gets its own NCCL_HOSTID (read by
/// NCCL at its first initialization), and the socket transport joins them.
/// Returns whether every rank's initialization succeeded; the reason when not.
bool nccl_accepts_shared_gpu(std::string& why) {
  const std::string host_id = "dasgd-test-rank-" + std::to_string(world_rank());
  setenv("NCCL_HOSTID", host_id.c_str(), 1);
  int ok = 1;
  try {
    test::stream_holder s;
    comm::nccl_options o;
    o.timeout = std::chrono::seconds(60);
    auto c = comm::nccl_communicator::from_mpi(MPI_COMM_WORLD, s.s, o);
  } catch (const std::exception& e) {
    ok = 0;
    why = e.what();
  }
  int all = 0;
  MPI_Allreduce(&ok, &all, 1, MPI_INT, MPI_MIN, MPI_COMM_WORLD);
  return all == 1;
}

struct nccl_factory {
  comm::nccl_communicator operator()(cudaStream_t s) const {
    comm::nccl_options o;
    o.timeout = std::chrono::seconds(60);
    return comm::nccl_communicator::from_mpi(MPI_COMM_WORLD, s, o);
  }
};

}  // namespace

TEST_CASE("GPU workers over NCCL (ranks sharing one GPU, one NCCL_HOSTID each) match the host backend") {
  std::string why;
  if (!nccl_accepts_shared_gpu(why)) {
    MESSAGE("NCCL refused several ranks on one GPU even with distinct NCCL_HOSTID: ", why);
    return;
  }
  MESSAGE("NCCL accepted ranks sharing one GPU with distinct NCCL_HOSTID (rank ", world_rank(), ")");
  every_delay<float>(optim::sgd{.lr = 0.05, .momentum = 0.9}, merge::mix{0.25}, false, nccl_factory{});
  every_delay<__nv_bfloat16>(optim::adamw{.lr = 1e-2}, merge::additive{}, true, nccl_factory{});

  // One rank stalls (its compute stream is held by a host function past
  // the timeout): every rank gets timeout_error, within the timeout, and the
  // communicator is latched.
  test::stream_holder s;
  comm::nccl_options o;
  o.timeout = std::chrono::milliseconds(1500);
  auto c = comm::nccl_communicator::from_mpi(MPI_COMM_WORLD, s.s, o);
  cuda_backend b(s.s);
  auto send = b.allocate<float>(1 << 16);
  auto recv = b.allocate<float>(1 << 16);
  if (world_rank() == 1)
    DASGD_CUDA_CHECK(cudaLaunchHostFunc(
        s.s, [](void*) { std::this_thread::sleep_for(std::chrono::milliseconds(5000)); }, nullptr));
  const auto t0 = std::chrono::steady_clock::now();
  bool timed_out = false;
  try {
    auto r = c.iallreduce_average(std::span<const float>(send.data(), 1 << 16), std::span<float>(recv.data(), 1 << 16));
    r.wait();
    DASGD_CUDA_CHECK(cudaStreamSynchronize(s.s));
    c.check_health();
  } catch (const timeout_error&) {
    timed_out = true;
  }
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  CHECK(timed_out);
  CHECK(seconds < 8.0);
  CHECK_THROWS_AS(c.check_health(), comm_error);
  (void)cudaStreamSynchronize(s.s);
  MPI_Barrier(MPI_COMM_WORLD);
}
#endif
