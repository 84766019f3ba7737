// basic_cuda_mpi_communicator over the fake CUDA runtime
// (fake_nccl_runtime.hpp) and real MPI ranks, run by mpiexec with 2 and 4
// ranks. The fake's "device" memory is host memory, so an MPI that is not
// CUDA-aware takes its pointers exactly as a CUDA-aware one takes real
// device pointers: the direct route runs end to end, in stream order,
// without a GPU. The fake runtime reports CUDA support as the test sets
// it, and counts the copies by kind and the pinned buffers.
#include <doctest/doctest.h>

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <dasgd/comm/cuda_mpi.hpp>
#include <dasgd/comm/mpi.hpp>
#include <dasgd/core/precision.hpp>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <memory>
#include <random>
#include <span>
#include <string>
#include <thread>
#include <vector>

#include "fake_cuda_mpi_runtime.hpp"
#include "fake_nccl_runtime.hpp"
#include "fake_ranks.hpp"

namespace fk = dasgd_test::fake_nccl;
using namespace std::chrono_literals;
using namespace dasgd_test::fake_ranks;
using dasgd::comm::cuda_mpi_route;
using dasgd::comm::mpi_cuda_support;
using dasgd::comm::mpi_device_pointers;

namespace {

using runtime = dasgd_test::fake_cuda_mpi::runtime;
using comm_type = dasgd::comm::basic_cuda_mpi_communicator<runtime>;

static_assert(dasgd::communicator<comm_type, float>);
static_assert(dasgd::communicator<comm_type, double>);
static_assert(dasgd::communicator<comm_type, __half>);
static_assert(dasgd::communicator<comm_type, __nv_bfloat16>);
static_assert(std::is_same_v<dasgd::comm_memory_space_t<comm_type>, dasgd::device_space>);

int world_rank() {
  int r = 0;
  MPI_Comm_rank(MPI_COMM_WORLD, &r);
  return r;
}
int world_size() {
  int n = 0;
  MPI_Comm_size(MPI_COMM_WORLD, &n);
  return n;
}

dasgd::comm::mpi_communicator mpi(std::chrono::milliseconds timeout = 20s) {
  dasgd::comm::mpi_options o;
  o.timeout = timeout;
  return dasgd::comm::mpi_communicator(MPI_COMM_WORLD, o);
}

dasgd::comm::cuda_mpi_options options(mpi_device_pointers p) {
  dasgd::comm::cuda_mpi_options o;
  o.device_pointers = p;
  o.staging.timeout = 20s;
  o.staging.poll_interval = 100us;
  return o;
}

/// Rank r's element i: small integers, so float and double sums are exact.
double value_of(int r, std::size_t i) { return static_cast<double>(static_cast<int>((i * 7 + r * 13) % 31) - 15 + r); }
double mean_of(std::size_t i, int n) {
  double s = 0;
  for (int r = 0; r < n; ++r) s += value_of(r, i);
  return s / n;
}

/// Averages `count` elements of T three rounds over `c` and checks them
/// against the mean (exact for 2 and 4 ranks). The first round's snapshot
/// is held behind a stream gate (a kernel still running): nothing may be
/// sent before it is written.
template <class T>
void check_averages(comm_type& c, cudaStream_t compute, std::size_t count) {
  const int rank = c.rank();
  const int n = c.size();
  T* send = fk::device_alloc<T>(count);
  T* recv = fk::device_alloc<T>(count);
  auto opened = std::make_shared<std::atomic<bool>>(false);
  fk::enqueue_gate(compute, [opened] { return opened->load(); });
  for (int round = 0; round < 3; ++round) {
    queue_write(compute, send, count, [=](std::size_t i) { return value_of(rank, i) + 64 * round; });
    auto req = c.iallreduce_average(std::span<const T>(send, count), std::span<T>(recv, count),
                                    step_sig(static_cast<std::uint64_t>(round)));
    if (round == 0) {
      std::this_thread::sleep_for(20ms);
      CHECK_FALSE(req.test());
      opened->store(true);
    }
    req.wait();
    const auto got = read_in_stream_order(compute, recv, count);
    bool ok = true;
    for (std::size_t i = 0; i < count; ++i)
      ok = ok && got[i] == static_cast<T>(mean_of(i, n) + 64 * round);
    CHECK(ok);
  }
}

}  // namespace

TEST_CASE("route choice: what was asked against what the MPI reports") {
  using enum mpi_device_pointers;
  CHECK(dasgd::comm::choose_cuda_mpi_route(never, mpi_cuda_support::yes, 0) == cuda_mpi_route::host_staged);
  CHECK(dasgd::comm::choose_cuda_mpi_route(automatic, mpi_cuda_support::yes, 0) == cuda_mpi_route::device_direct);
  CHECK(dasgd::comm::choose_cuda_mpi_route(automatic, mpi_cuda_support::no, 0) == cuda_mpi_route::host_staged);
  CHECK(dasgd::comm::choose_cuda_mpi_route(automatic, mpi_cuda_support::unknown, 0) == cuda_mpi_route::host_staged);
  CHECK(dasgd::comm::choose_cuda_mpi_route(always, mpi_cuda_support::unknown, 0) == cuda_mpi_route::device_direct);
  CHECK(dasgd::comm::choose_cuda_mpi_route(always, mpi_cuda_support::yes, 0) == cuda_mpi_route::device_direct);
  try {
    (void)dasgd::comm::choose_cuda_mpi_route(always, mpi_cuda_support::no, 3);
    FAIL("always with an MPI that is not CUDA-aware was accepted");
  } catch (const dasgd::config_error& e) {
    const std::string msg = e.what();
    CHECK(msg.find("rank 3") != std::string::npos);
    CHECK(msg.find("not CUDA-aware") != std::string::npos);
  }
}

TEST_CASE("direct route: fp32 and fp64 go to MPI as device pointers, after the snapshot and before the merge") {
  fresh_fake f;
  runtime::support = mpi_cuda_support::yes;
  runtime::reset_counters();
  cudaStream_t compute = fk::new_stream();
  comm_type c(mpi(), compute, options(mpi_device_pointers::automatic));
  CHECK(c.route() == cuda_mpi_route::device_direct);
  CHECK(c.size() == world_size());
  CHECK(c.rank() == world_rank());
  CHECK(c.compute_stream() == compute);
  check_averages<float>(c, compute, 1000);
  check_averages<double>(c, compute, 4097);
  c.check_health();
  // No pinned memory and no host copy: the snapshot went device to device
  // into a buffer MPI summed in place, and a kernel scaled it back.
  CHECK(runtime::pinned_buffers == 0);
  CHECK(runtime::host_copies == 0);
  CHECK(runtime::device_copies == 6);
  CHECK(runtime::scale_launches == 6);
  CHECK(runtime::widen_launches == 0);
}

TEST_CASE("direct route: 16-bit storage is widened to fp32 and rounded once") {
  fresh_fake f;
  runtime::support = mpi_cuda_support::unknown;
  runtime::reset_counters();
  cudaStream_t s = fk::new_stream();
  comm_type c(mpi(), s, options(mpi_device_pointers::always));
  REQUIRE(c.route() == cuda_mpi_route::device_direct);
  const int n = c.size();
  constexpr std::size_t count = 3001;
  // Random values of every rank (each rank draws all ranks' to know the
  // reference): the fp32 sum of n <= 4 of them is exact, so the result is
  // the exact mean rounded once, whatever order MPI sums in.
  auto values = [&](auto tag, int r) {
    using T = decltype(tag);
    std::mt19937 rng(7u + static_cast<unsigned>(r));
    std::uniform_real_distribution<float> u(-4.0f, 4.0f);
    std::vector<T> v(count);
    for (auto& x : v) x = dasgd::to_storage<T>(u(rng));
    return v;
  };
  auto run = [&](auto tag) {
    using T = decltype(tag);
    T* send = fk::device_alloc<T>(count);
    T* recv = fk::device_alloc<T>(count);
    const auto mine = values(tag, c.rank());
    fk::enqueue_host(s, [=] { std::copy(mine.begin(), mine.end(), send); });
    auto req = c.iallreduce_average(std::span<const T>(send, count), std::span<T>(recv, count), step_sig(1));
    req.wait();
    const auto got = read_in_stream_order(s, recv, count);
    std::vector<float> sum(count, 0.0f);
    for (int r = 0; r < n; ++r) {
      const auto v = values(tag, r);
      for (std::size_t i = 0; i < count; ++i) sum[i] += dasgd::to_compute<float>(v[i]);
    }
    bool ok = true;
    for (std::size_t i = 0; i < count; ++i) {
      const T want = dasgd::to_storage<T>(sum[i] * (1.0f / static_cast<float>(n)));
      ok = ok && dasgd::to_compute<float>(got[i]) == dasgd::to_compute<float>(want);
    }
    CHECK(ok);
  };
  run(__nv_bfloat16{});
  run(__half{});
  CHECK(runtime::widen_launches == 2);
  CHECK(runtime::scale_launches == 2);
  CHECK(runtime::pinned_buffers == 0);
}

TEST_CASE("direct route: broadcast and allgather") {
  fresh_fake f;
  runtime::support = mpi_cuda_support::yes;
  cudaStream_t s = fk::new_stream();
  comm_type c(mpi(), s, options(mpi_device_pointers::automatic));
  const int rank = c.rank();
  std::vector<std::uint64_t> want;
  for (int r = 0; r < c.size(); ++r) want.push_back(static_cast<std::uint64_t>(40 + r));
  CHECK(c.allgather(static_cast<std::uint64_t>(40 + rank)) == want);
  constexpr std::size_t count = 513;
  const int root = c.size() - 1;
  double* send = fk::device_alloc<double>(count);
  double* recv = fk::device_alloc<double>(count);
  queue_write(s, send, count, [=](std::size_t i) { return value_of(rank, i); });
  auto b = c.ibroadcast(std::span<const double>(send, count), std::span<double>(recv, count), root,
                        {.purpose = dasgd::collective_purpose::broadcast});
  b.wait();
  const auto got = read_in_stream_order(s, recv, count);
  bool ok = true;
  for (std::size_t i = 0; i < count; ++i) ok = ok && got[i] == value_of(root, i);
  CHECK(ok);
  CHECK_THROWS_AS(c.ibroadcast(std::span<const double>(send, count), std::span<double>(recv, count), c.size(),
                               {.purpose = dasgd::collective_purpose::broadcast}),
                  dasgd::config_error);
}

TEST_CASE("host route: never, or automatic with an MPI that is not CUDA-aware, stages through pinned memory") {
  for (auto [asked, reported] : {std::pair{mpi_device_pointers::never, mpi_cuda_support::yes},
                                 std::pair{mpi_device_pointers::automatic, mpi_cuda_support::no}}) {
    fresh_fake f;
    runtime::support = reported;
    runtime::reset_counters();
    cudaStream_t compute = fk::new_stream();
    comm_type c(mpi(), compute, options(asked));
    CHECK(c.route() == cuda_mpi_route::host_staged);
    check_averages<float>(c, compute, 777);
    CHECK(runtime::pinned_buffers > 0);
    CHECK(runtime::host_copies == 6);
    CHECK(runtime::device_copies == 0);
    CHECK(runtime::scale_launches == 0);
  }
}

TEST_CASE("a dropped direct request never writes recv; the staging buffer outlives it") {
  fresh_fake f;
  runtime::support = mpi_cuda_support::yes;
  cudaStream_t s = fk::new_stream();
  comm_type c(mpi(), s, options(mpi_device_pointers::automatic));
  const int rank = c.rank();
  constexpr std::size_t count = 50000;
  double* send = fk::device_alloc<double>(count);
  double* recv = fk::device_alloc<double>(count);
  queue_write(s, recv, count, [](std::size_t) { return -7.0; });
  queue_write(s, send, count, [=](std::size_t i) { return value_of(rank, i); });
  const bool late = rank == 0;
  if (late) std::this_thread::sleep_for(300ms);
  {
    auto dropped = c.iallreduce_average(std::span<const double>(send, count), std::span<double>(recv, count),
                                        step_sig(1));
  }
  // The next collective is ordered after it and must be right.
  double* send2 = fk::device_alloc<double>(10);
  double* recv2 = fk::device_alloc<double>(10);
  queue_write(s, send2, 10, [=](std::size_t i) { return value_of(rank, i); });
  auto next = c.iallreduce_average(std::span<const double>(send2, 10), std::span<double>(recv2, 10), step_sig(2));
  next.wait();
  const auto got2 = read_in_stream_order(s, recv2, 10);
  CHECK(got2[3] == mean_of(3, c.size()));
  // (The late rank's dropped average may legitimately have finished first.)
  const auto got = read_in_stream_order(s, recv, count);
  if (!late) CHECK(std::all_of(got.begin(), got.end(), [](double v) { return v == -7.0; }));
  c.check_health();
}

TEST_CASE("ranks whose MPIs disagree on CUDA support get a config_error on every rank, naming the routes") {
  if (world_size() < 2) return;
  fresh_fake f;
  runtime::support = world_rank() == 0 ? mpi_cuda_support::yes : mpi_cuda_support::no;
  cudaStream_t s = fk::new_stream();
  try {
    comm_type c(mpi(), s, options(mpi_device_pointers::automatic));
    FAIL("construction succeeded with different routes");
  } catch (const dasgd::config_error& e) {
    const std::string msg = e.what();
    CHECK(msg.find("rank 0: device_direct") != std::string::npos);
    CHECK(msg.find("rank 1: host_staged") != std::string::npos);
  }
  // `never` agrees everywhere.
  comm_type ok(mpi(), s, options(mpi_device_pointers::never));
  CHECK(ok.route() == cuda_mpi_route::host_staged);
}

TEST_CASE("a moved-from communicator refuses to be used") {
  fresh_fake f;
  runtime::support = mpi_cuda_support::yes;
  cudaStream_t s = fk::new_stream();
  comm_type c(mpi(), s, options(mpi_device_pointers::automatic));
  comm_type moved(std::move(c));
  CHECK(moved.route() == cuda_mpi_route::device_direct);
  float* buf = fk::device_alloc<float>(4);
  CHECK_THROWS_AS(c.size(), dasgd::state_error);  // NOLINT(bugprone-use-after-move): the point
  CHECK_THROWS_AS(c.iallreduce_average(std::span<const float>(buf, 4), std::span<float>(buf, 4)),
                  dasgd::state_error);
  CHECK_THROWS_AS(c.allgather(1), dasgd::state_error);
}
