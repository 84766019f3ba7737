// The whole trainer on the GPU: delayed_averager with the CUDA backend and a
// device communicator (NCCL with one rank, and a device loopback) against
// the same trainer on the host backend, step by step. Plus the NCCL
// communicator on its own: one-rank averages of every storage type,
// stream ordering, argument errors, and the timeout paths (a collective
// stuck behind a kernel that waits for the host).
#include <doctest/doctest.h>

#include <dasgd/adaptors/thrust.hpp>
#include <dasgd/comm/inproc.hpp>
#include <dasgd/core/delayed_averager.hpp>
#include <dasgd/kernels/cuda/cuda_backend.cuh>
#include <dasgd/kernels/cuda/parameter_arena.hpp>
#include <dasgd/merge/additive.hpp>
#include <dasgd/merge/linear.hpp>
#include <dasgd/merge/mix.hpp>
#include <dasgd/optim/adamw.hpp>
#include <dasgd/optim/sgd.hpp>
#include <dasgd/policy/fixed_delay.hpp>

#if defined(DASGD_HAS_NCCL)
#include <dasgd/comm/nccl.hpp>
#endif

#include <thrust/device_vector.h>

#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <memory>
#include <random>
#include <span>
#include <string>
#include <thread>
#include <vector>

#include "cuda/storage_tolerance.hpp"
#include "cuda/trainer_comparison.hpp"

namespace {

using namespace dasgd;
using namespace std::chrono_literals;

/// A one-rank device communicator without NCCL: the "average" is a
/// device-to-device copy ordered on the compute stream, so requests are
/// complete as soon as the stream reaches them.
class device_loopback {
 public:
  using memory_space = device_space;
  struct request_type {
    bool test() { return true; }
    void wait() {}
    collective_agreement agreement() const { return agreed; }
    collective_agreement agreed;
  };
  explicit device_loopback(cudaStream_t s) : stream_(s) {}
  int size() const { return 1; }
  int rank() const { return 0; }
  template <storage_type T>
  request_type iallreduce_average(std::span<const T> send, std::span<T> recv,
                                  const collective_signature& sig) {
    DASGD_REQUIRE(send.size() == recv.size(), size_mismatch_error, "loopback sizes differ");
    if (!send.empty())
      DASGD_CUDA_CHECK(cudaMemcpyAsync(recv.data(), send.data(), send.size_bytes(),
                                       cudaMemcpyDeviceToDevice, stream_));
    request_type r;
    r.agreed.min_proposal = r.agreed.max_proposal = sig.proposal;
    return r;
  }
  template <storage_type T>
  request_type ibroadcast(std::span<const T> send, std::span<T> recv, int,
                          const collective_signature& sig) {
    return iallreduce_average(send, recv, sig);
  }
  std::vector<std::uint64_t> allgather(std::uint64_t v) { return {v}; }

 private:
  cudaStream_t stream_;
};

const std::vector<std::size_t> model_extents{1000, 37, 4097, 1, 130};

/// Deterministic gradient of element i of tensor t at step k.
double gradient(std::size_t t, std::size_t i, int k) {
  return 0.5 * std::sin(0.37 * double(i) + 1.3 * double(t) + 0.71 * double(k));
}

/// Device weights held in thrust::device_vector (the Thrust adaptor).
template <class T>
struct thrust_model {
  std::vector<thrust::device_vector<T>> w, g;
  explicit thrust_model(const std::vector<std::vector<T>>& init) {
    for (const auto& v : init) {
      w.emplace_back(v.begin(), v.end());
      g.emplace_back(v.size());
    }
    DASGD_CUDA_CHECK(cudaDeviceSynchronize());  // the trainer's stream does not wait for Thrust's
  }
  tensor_list<T, device_space> weights() { return make_tensor_list(w); }
  tensor_list<const T, device_space> grads() {
    tensor_list<const T, device_space> out;
    for (auto& x : g) out.add(thrust::raw_pointer_cast(x.data()), x.size());
    return out;
  }
};

/// Device weights in one library-owned arena (aligned views).
template <class T>
struct arena_model {
  device_parameter_arena<T> w, g;
  arena_model(const std::vector<std::vector<T>>& init, cudaStream_t s)
      : w(model_extents, s), g(model_extents, s) {
    for (std::size_t i = 0; i < init.size(); ++i)
      DASGD_CUDA_CHECK(cudaMemcpy(w.view(i).ptr, init[i].data(), init[i].size() * sizeof(T),
                                  cudaMemcpyHostToDevice));
  }
  tensor_list<T, device_space> weights() { return w.tensors(); }
  tensor_list<const T, device_space> grads() { return g.tensors(); }
};

template <class T, class Model, class DeviceComm, class Optim, class Merge>
void compare_trainers(Model& dev_model, std::vector<std::vector<T>> host_w, DeviceComm dcomm,
                      cudaStream_t stream, policy::fixed_delay pol, Optim opt, Merge merge,
                      bool master, int steps) {
  comm::inproc_group group(1);
  trainer_options options{.master_weights = master};
  delayed_averager host(make_tensor_list(host_w), group.communicator(0), pol, opt, merge, options);
  auto dev_w = dev_model.weights();
  delayed_averager dev(dev_w, std::move(dcomm), pol, opt, merge, cuda_backend(stream), options);
  static_assert(std::is_same_v<typename decltype(dev)::backend_type, cuda_backend>);

  // One rank: the broadcast must leave the weights exactly as they are.
  host.broadcast_parameters(0);
  dev.broadcast_parameters(0);

  auto dev_g = dev_model.grads();
  test::run_side_by_side(host, host_w, dev, dev_w, dev_g, stream, steps,
                         [](std::size_t t, std::size_t i, int k) { return gradient(t, i, k); }, "device");
  CHECK_FALSE(dev.average_in_flight());
}

template <class T>
std::vector<std::vector<T>> initial_weights(std::uint32_t seed) {
  std::mt19937 rng(seed);
  std::vector<std::vector<T>> w;
  for (auto n : model_extents) {
    w.emplace_back(n);
    for (auto& x : w.back()) x = test::random_storage<T>(rng, -1.0, 1.0);
  }
  return w;
}

template <class MakeComm>
void trainer_variants(MakeComm make_comm) {
  test::stream_holder s;
  SUBCASE("float, sgd momentum, mix, tau 3 delay 1 (thrust tensors)") {
    auto w0 = initial_weights<float>(1);
    thrust_model<float> m(w0);
    compare_trainers<float>(m, w0, make_comm(s.s), s.s, policy::fixed_delay{3, 1},
                            optim::sgd{.lr = 0.05, .momentum = 0.9}, merge::mix{0.25}, false, 11);
  }
  SUBCASE("bfloat16 + fp32 master, adamw, additive, tau 4 delay 2 (parameter arena)") {
    auto w0 = initial_weights<__nv_bfloat16>(2);
    arena_model<__nv_bfloat16> m(w0, s.s);
    compare_trainers<__nv_bfloat16>(m, w0, make_comm(s.s), s.s, policy::fixed_delay{4, 2},
                                    optim::adamw{.lr = 1e-2}, merge::additive{}, true, 13);
  }
  SUBCASE("half, nesterov, linear merge, tau 2 delay 0 (blocking)") {
    auto w0 = initial_weights<__half>(3);
    thrust_model<__half> m(w0);
    compare_trainers<__half>(m, w0, make_comm(s.s), s.s, policy::fixed_delay{2, 0},
                             optim::sgd{.lr = 0.02, .momentum = 0.8, .weight_decay = 1e-3, .nesterov = true},
                             merge::linear{0.5, 0.7, -0.2}, false, 9);
  }
  SUBCASE("float, plain sgd, synchronous (tau 1 delay 0)") {
    auto w0 = initial_weights<float>(4);
    thrust_model<float> m(w0);
    compare_trainers<float>(m, w0, make_comm(s.s), s.s, policy::synchronous(),
                            optim::sgd{.lr = 0.1}, merge::mix{0.0}, false, 5);
  }
}

}  // namespace

TEST_CASE("trainer on the GPU matches the host trainer (device loopback communicator)") {
  trainer_variants([](cudaStream_t s) { return device_loopback(s); });
}

#if defined(DASGD_HAS_NCCL)

TEST_CASE("trainer on the GPU matches the host trainer (NCCL, one rank)") {
  trainer_variants([](cudaStream_t s) { return comm::nccl_communicator::single_rank(s); });
}

namespace {
template <class T>
void check_identity_average(comm::nccl_communicator& c, cudaStream_t s, std::size_t n) {
  INFO("type ", std::string(type_id<T>::name), ", ", n, " elements");
  cuda_backend b(s);
  auto send = b.allocate<T>(n);
  auto recv = b.allocate<T>(n);
  // Pinned source: the upload is truly asynchronous, so an all-reduce that
  // were not ordered after it would read zeros.
  T* pinned = nullptr;
  DASGD_CUDA_CHECK(cudaMallocHost(&pinned, n * sizeof(T)));
  std::mt19937 rng(11);
  for (std::size_t i = 0; i < n; ++i) pinned[i] = test::random_storage<T>(rng, -1.0, 1.0);
  DASGD_CUDA_CHECK(cudaMemcpyAsync(send.data(), pinned, n * sizeof(T), cudaMemcpyHostToDevice, s));
  auto req = c.iallreduce_average(std::span<const T>(send.data(), n), std::span<T>(recv.data(), n));
  req.wait();  // orders the compute stream after the average
  std::vector<T> got(n);
  b.copy_to_host(recv.data(), got.data(), n);  // queued on the compute stream
  std::size_t bad = 0;
  std::string first;  // the first mismatches, to tell a rounding from an ordering fault
  for (std::size_t i = 0; i < n; ++i) {
    if (test::same_bits(got[i], pinned[i])) continue;
    if (++bad <= 4)
      first += ::dasgd::detail::concat(" [", i, "] got ", test::as_double(got[i]), " (0x", std::hex,
                                       test::bits_of(got[i]), std::dec, ") want ",
                                       test::as_double(pinned[i]), ";");
  }
  INFO("mismatches:", first);
  CHECK(bad == 0);
  // A completed request stays complete.
  CHECK(req.test());
  DASGD_CUDA_CHECK(cudaFreeHost(pinned));
}
}  // namespace

TEST_CASE("NCCL one-rank average returns the input for every storage type") {
  test::stream_holder s;
  auto c = comm::nccl_communicator::single_rank(s.s);
  CHECK(c.size() == 1);
  CHECK(c.rank() == 0);
  CHECK(c.allgather(0x1234567890abcdefull) == std::vector<std::uint64_t>{0x1234567890abcdefull});
  check_identity_average<float>(c, s.s, std::size_t{1} << 24);
  check_identity_average<double>(c, s.s, 1000003);
  check_identity_average<__half>(c, s.s, std::size_t{1} << 22);
  check_identity_average<__nv_bfloat16>(c, s.s, 12345);
  // An empty average is allowed and completes.
  auto empty = c.iallreduce_average(std::span<const float>(), std::span<float>());
  empty.wait();
  DASGD_CUDA_CHECK(cudaStreamSynchronize(s.s));
  CHECK(empty.test());
}

TEST_CASE("NCCL communicator rejects bad buffers") {
  test::stream_holder s;
  auto c = comm::nccl_communicator::single_rank(s.s);
  cuda_backend b(s.s);
  auto d = b.allocate<float>(10);
  std::vector<float> host(10);
  CHECK_THROWS_AS(c.iallreduce_average(std::span<const float>(d.data(), 10), std::span<float>(d.data(), 9)),
                  size_mismatch_error);
  try {
    (void)c.iallreduce_average(std::span<const float>(host.data(), 10), std::span<float>(d.data(), 10));
    FAIL("no exception");
  } catch (const config_error& e) {
    CHECK(std::string(e.what()).find("send buffer") != std::string::npos);
    CHECK(std::string(e.what()).find("not device memory") != std::string::npos);
  }
  // Errors in arguments do not poison the communicator.
  CHECK(c.allgather(5) == std::vector<std::uint64_t>{5});
}

#if defined(DASGD_HAS_MPI)
#include <mpi.h>
TEST_CASE("NCCL bootstrap through MPI (singleton rank)") {
  int initialized = 0;
  MPI_Initialized(&initialized);
  if (!initialized) MPI_Init(nullptr, nullptr);
  struct world {
    MPI_Comm native_handle() const { return MPI_COMM_WORLD; }
  };
  test::stream_holder s;
  {
    auto c = comm::nccl_communicator::from_mpi(world{}, s.s);
    int rank = 0, size = 0;
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &size);
    CHECK(c.rank() == rank);
    CHECK(c.size() == size);
    CHECK(c.allgather(7).size() == std::size_t(size));
  }
  MPI_Finalize();
}
#endif

// ---- timeouts: a collective stuck behind a kernel that waits for the host ----

namespace {

__global__ void spin_until_set(const volatile int* flag) {
  while (*flag == 0) __nanosleep(1000);
}

/// A host-mapped flag and a kernel spinning on it, released by a helper
/// thread after `release_after` at the latest (so that nothing can hang even
/// if NCCL's abort waited for the stream).
class stuck_stream {
 public:
  stuck_stream(cudaStream_t s, std::chrono::milliseconds release_after) {
    DASGD_CUDA_CHECK(cudaHostAlloc(reinterpret_cast<void**>(&flag_), sizeof(int), cudaHostAllocMapped));
    *flag_ = 0;
    int* dflag = nullptr;
    DASGD_CUDA_CHECK(cudaHostGetDevicePointer(reinterpret_cast<void**>(&dflag), flag_, 0));
    spin_until_set<<<1, 1, 0, s>>>(dflag);
    DASGD_CUDA_CHECK_LAUNCH("spin_until_set");
    releaser_ = std::thread([this, release_after] {
      const auto until = std::chrono::steady_clock::now() + release_after;
      while (!released_.load() && std::chrono::steady_clock::now() < until)
        std::this_thread::sleep_for(5ms);
      release();
    });
  }
  void release() {
    released_.store(true);
    *reinterpret_cast<volatile int*>(flag_) = 1;
  }
  ~stuck_stream() {
    release();
    releaser_.join();
    (void)cudaDeviceSynchronize();
    (void)cudaFreeHost(flag_);
  }
  stuck_stream(const stuck_stream&) = delete;
  stuck_stream& operator=(const stuck_stream&) = delete;

 private:
  int* flag_ = nullptr;
  std::atomic<bool> released_{false};
  std::thread releaser_;
};

}  // namespace

TEST_CASE("NCCL timeout: test() and a host-blocking wait() throw timeout_error") {
  test::stream_holder s;
  cuda_backend b(s.s);
  auto send = b.allocate<float>(1024), recv = b.allocate<float>(1024);
  comm::nccl_options o;
  o.timeout = 300ms;
  o.watchdog = false;
  o.host_wait = true;
  auto c = comm::nccl_communicator::single_rank(s.s, o);
  {
    stuck_stream stuck(c.comm_stream(), 1500ms);
    auto req = c.iallreduce_average(std::span<const float>(send.data(), 1024),
                                    std::span<float>(recv.data(), 1024));
    CHECK_FALSE(req.test());
    const auto t0 = std::chrono::steady_clock::now();
    CHECK_THROWS_AS(req.wait(), timeout_error);
    const auto waited = std::chrono::steady_clock::now() - t0;
    CHECK(waited >= 200ms);
    CHECK(waited < 4000ms);
    CHECK(c.aborted());
    // The failure is latched: every later call reports it.
    CHECK_THROWS_AS(c.allgather(1), timeout_error);
    CHECK_THROWS_AS(req.test(), timeout_error);
    stuck.release();
  }
}

TEST_CASE("NCCL timeout: the watchdog aborts an average the compute stream waits for") {
  test::stream_holder s;
  cuda_backend b(s.s);
  auto send = b.allocate<float>(1024), recv = b.allocate<float>(1024);
  comm::nccl_options o;
  o.timeout = 300ms;
  o.watchdog = true;
  o.watchdog_interval = 5ms;
  auto c = comm::nccl_communicator::single_rank(s.s, o);
  {
    // The compute stream is stuck before the snapshot is "written": the
    // signature exchange (on the communication stream) goes through, the
    // data collective waits for the compute stream on the device.
    stuck_stream stuck(s.s, 1500ms);
    auto req = c.iallreduce_average(std::span<const float>(send.data(), 1024),
                                    std::span<float>(recv.data(), 1024));
    req.wait();  // not timed out yet: the compute stream now waits on the device
    const auto t0 = std::chrono::steady_clock::now();
    while (!c.aborted() && std::chrono::steady_clock::now() - t0 < 3000ms) std::this_thread::sleep_for(5ms);
    CHECK(c.aborted());
    CHECK_THROWS_AS(c.iallreduce_average(std::span<const float>(send.data(), 1024),
                                         std::span<float>(recv.data(), 1024)),
                    timeout_error);
    stuck.release();
  }
  // The compute stream drains once the stuck work is released: no hang.
  DASGD_CUDA_CHECK(cudaStreamSynchronize(s.s));
}

TEST_CASE("NCCL timeout: a stuck communication stream holds up the signature exchange; wait() throws in time") {
  test::stream_holder s;
  cuda_backend b(s.s);
  auto send = b.allocate<float>(1024), recv = b.allocate<float>(1024);
  comm::nccl_options o;
  o.timeout = 300ms;
  auto c = comm::nccl_communicator::single_rank(s.s, o);
  {
    stuck_stream stuck(c.comm_stream(), 1500ms);
    auto req = c.iallreduce_average(std::span<const float>(send.data(), 1024),
                                    std::span<float>(recv.data(), 1024));
    const auto t0 = std::chrono::steady_clock::now();
    CHECK_THROWS_AS(req.wait(), timeout_error);
    CHECK(std::chrono::steady_clock::now() - t0 < 1200ms);
    stuck.release();
  }
  DASGD_CUDA_CHECK(cudaStreamSynchronize(s.s));
}

#endif  // DASGD_HAS_NCCL
