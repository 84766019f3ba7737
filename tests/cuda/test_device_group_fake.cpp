// basic_device_group over the fake CUDA runtime (fake_nccl_runtime.hpp):
// ranks are threads, device memory is host memory, and the average
// "kernel" is a host closure queued on the communication stream. Checks
// the ordering across ranks' streams, the bits, and every failure path
// without a GPU. test_device_group.cu runs the real kernel.
#include <doctest/doctest.h>

#include <cuda_bf16.h>

#include <dasgd/comm/device_group.hpp>

#include <atomic>
#include <chrono>
#include <cstring>
#include <memory>
#include <span>
#include <string>
#include <thread>
#include <vector>

#include "fake_nccl_runtime.hpp"
#include "fake_ranks.hpp"

namespace fk = dasgd_test::fake_nccl;
using namespace std::chrono_literals;
using namespace dasgd_test::fake_ranks;

namespace {

/// The fake runtime plus what the device group adds: the average as a
/// closure on the stream, and peer access (refused when `no_peers`).
struct group_runtime : fk::runtime {
  static std::atomic<bool>& no_peers() {
    static std::atomic<bool> v{false};
    return v;
  }
  template <class T>
  static cudaError_t launch_average(void* recv, const void* const* sends, int n, std::size_t count, cudaStream_t s) {
    std::vector<const T*> src(static_cast<std::size_t>(n));
    for (int r = 0; r < n; ++r) src[static_cast<std::size_t>(r)] = static_cast<const T*>(sends[r]);
    auto* out = static_cast<T*>(recv);
    fk::enqueue_host(s, [src, out, n, count] {
      for (std::size_t i = 0; i < count; ++i) {
        double acc = 0;
        for (int r = 0; r < n; ++r) acc += dasgd::to_compute<double>(src[static_cast<std::size_t>(r)][i]);
        out[i] = dasgd::to_storage<T>(acc * (1.0 / n));
      }
    });
    return cudaSuccess;
  }
  static cudaError_t device_can_access_peer(int* can, int, int) {
    *can = no_peers() ? 0 : 1;
    return cudaSuccess;
  }
  static cudaError_t device_enable_peer_access(int) { return cudaSuccess; }
};

using group = dasgd::comm::basic_device_group<group_runtime>;
using communicator = dasgd::comm::basic_device_communicator<group_runtime>;
static_assert(dasgd::communicator<communicator, float>);
static_assert(dasgd::communicator<communicator, __nv_bfloat16>);
static_assert(std::is_same_v<dasgd::comm_memory_space_t<communicator>, dasgd::device_space>);

dasgd::comm::device_group_options opts(std::chrono::milliseconds timeout = 2000ms) {
  dasgd::comm::device_group_options o;
  o.timeout = timeout;
  return o;
}

}  // namespace

TEST_CASE("device group: 2 and 4 ranks average after every rank's snapshot, with the host communicator's bits") {
  fresh_fake f;
  for (int n : {2, 4}) {
    CAPTURE(n);
    group g(n, opts());
    constexpr std::size_t count = 777;
    std::vector<held_stream> streams(static_cast<std::size_t>(n));
    auto errors = run_ranks(n, [&](int rank) {
      auto& st = streams[static_cast<std::size_t>(rank)];
      communicator c = g.communicator(rank, st.s);
      CHECK(c.size() == n);
      CHECK(c.compute_stream() == st.s);
      float* send = fk::device_alloc<float>(count);
      float* recv = fk::device_alloc<float>(count);
      // 0.1 * (rank + i): not exact in float, so the rounding is checked too.
      queue_write(st.s, send, count, [=](std::size_t i) { return 0.1f * static_cast<float>(rank + 3 * i); });
      auto req = c.iallreduce_average(std::span<const float>(send, count), std::span<float>(recv, count), step_sig(0));
      req.wait();
      // The last rank's stream opens last: everyone's result must still
      // contain its snapshot.
      if (rank != n - 1) st.open();
      if (rank == 0) {
        std::this_thread::sleep_for(30ms);
        streams[static_cast<std::size_t>(n - 1)].open();
      }
      const auto got = read_in_stream_order(st.s, recv, count);
      bool ok = true;
      for (std::size_t i = 0; i < count; ++i) {
        double acc = 0;
        for (int r = 0; r < n; ++r) acc += static_cast<double>(0.1f * static_cast<float>(r + 3 * i));
        ok = ok && got[i] == static_cast<float>(acc * (1.0 / n));
      }
      CHECK(ok);
      c.check_health();
    });
    require_no_errors(errors);
  }
}

TEST_CASE("device group: no rank overwrites its snapshot while a peer still reads it") {
  fresh_fake f;
  group g(2, opts());
  constexpr std::size_t count = 64;
  cudaStream_t s0 = fk::new_stream();
  cudaStream_t s1 = fk::new_stream();
  communicator c0 = g.communicator(0, s0);
  communicator c1 = g.communicator(1, s1);
  // Rank 1's communication stream was the last stream created: hold it, as
  // if rank 1's copy engine were still busy.
  cudaStream_t comm1 = fk::locked([](fk::world_t& w) { return reinterpret_cast<cudaStream_t>(w.streams.back().get()); });
  auto comm1_open = std::make_shared<std::atomic<bool>>(false);
  fk::enqueue_gate(comm1, [comm1_open] { return comm1_open->load(); });
  auto errors = run_ranks(2, [&](int rank) {
    cudaStream_t s = rank == 0 ? s0 : s1;
    communicator& c = rank == 0 ? c0 : c1;
    float* send = fk::device_alloc<float>(count);
    float* recv = fk::device_alloc<float>(count);
    queue_write(s, send, count, [=](std::size_t) { return 2.0f * static_cast<float>(rank + 1); });
    auto req = c.iallreduce_average(std::span<const float>(send, count), std::span<float>(recv, count), step_sig(0));
    req.wait();
    if (rank == 0) {
      // Rank 1 has not read rank 0's snapshot yet: rank 0's next one,
      // queued now, must wait until it has.
      queue_write(s, send, count, [](std::size_t) { return 999.0f; });
      std::this_thread::sleep_for(30ms);
      comm1_open->store(true);
    }
    const auto got = read_in_stream_order(s, recv, count);
    CHECK(got[0] == 3.0f);
    CHECK(got[count - 1] == 3.0f);
  });
  require_no_errors(errors);
}

TEST_CASE("device group: bf16 and double averages, broadcast and allgather") {
  fresh_fake f;
  constexpr int n = 3;
  group g(n, opts());
  constexpr std::size_t count = 300;
  auto errors = run_ranks(n, [&](int rank) {
    cudaStream_t s = fk::new_stream();
    communicator c = g.communicator(rank, s);
    CHECK(c.allgather(static_cast<std::uint64_t>(5 * rank)) == std::vector<std::uint64_t>{0, 5, 10});
    auto* h = fk::device_alloc<__nv_bfloat16>(count);
    auto* hr = fk::device_alloc<__nv_bfloat16>(count);
    fk::enqueue_host(s, [=] {
      for (std::size_t i = 0; i < count; ++i) h[i] = __float2bfloat16(static_cast<float>(2 * rank + i % 16));
    });
    auto a = c.iallreduce_average(std::span<const __nv_bfloat16>(h, count), std::span<__nv_bfloat16>(hr, count),
                                  step_sig(1));
    a.wait();
    const auto hg = read_in_stream_order(s, hr, count);
    bool ok = true;
    for (std::size_t i = 0; i < count; ++i) ok = ok && __bfloat162float(hg[i]) == static_cast<float>(2 + i % 16);
    CHECK(ok);
    double* d = fk::device_alloc<double>(count);
    double* dr = fk::device_alloc<double>(count);
    queue_write(s, d, count, [=](std::size_t i) { return 1.0 / 3.0 * rank + static_cast<double>(i); });
    dasgd::collective_signature bsig;
    bsig.purpose = dasgd::collective_purpose::broadcast;
    auto b = c.ibroadcast(std::span<const double>(d, count), std::span<double>(dr, count), 2, bsig);
    b.wait();
    const auto dg = read_in_stream_order(s, dr, count);
    ok = true;
    for (std::size_t i = 0; i < count; ++i) ok = ok && dg[i] == 1.0 / 3.0 * 2 + static_cast<double>(i);
    CHECK(ok);
  });
  require_no_errors(errors);
}

TEST_CASE("device group: a signature mismatch fails every rank; the group stays usable") {
  fresh_fake f;
  group g(2, opts());
  constexpr std::size_t count = 8;
  auto errors = run_ranks(2, [&](int rank) {
    cudaStream_t s = fk::new_stream();
    communicator c = g.communicator(rank, s);
    float* send = fk::device_alloc<float>(count);
    float* recv = fk::device_alloc<float>(count);
    queue_write(s, send, count, [=](std::size_t) { return static_cast<float>(rank); });
    auto bad = c.iallreduce_average(std::span<const float>(send, count), std::span<float>(recv, count),
                                    step_sig(static_cast<std::uint64_t>(10 + rank)));
    CHECK_THROWS_AS(bad.wait(), dasgd::comm_error);
    // An allgather against an average is a mismatch too.
    if (rank == 0) {
      CHECK_THROWS_AS(c.allgather(1), dasgd::comm_error);
    } else {
      auto other = c.iallreduce_average(std::span<const float>(send, count), std::span<float>(recv, count),
                                        step_sig(1));
      CHECK_THROWS_AS(other.wait(), dasgd::comm_error);
    }
    c.check_health();
    auto good = c.iallreduce_average(std::span<const float>(send, count), std::span<float>(recv, count), step_sig(2));
    good.wait();
    CHECK(read_in_stream_order(s, recv, count)[0] == 0.5f);
  });
  require_no_errors(errors);
}

TEST_CASE("device group: a rank that never posts gives timeout_error on the others, and the group is aborted") {
  fresh_fake f;
  constexpr int n = 3;
  group g(n, opts(300ms));
  const auto t0 = clock_type::now();
  std::vector<double> at(n, 0.0);
  auto errors = run_ranks(n, [&](int rank) {
    cudaStream_t s = fk::new_stream();
    communicator c = g.communicator(rank, s);
    float* send = fk::device_alloc<float>(4);
    float* recv = fk::device_alloc<float>(4);
    if (rank == 2) {
      std::this_thread::sleep_for(600ms);  // misses the collective
      CHECK_THROWS_AS(c.check_health(), dasgd::timeout_error);
      CHECK_THROWS_AS(
          c.iallreduce_average(std::span<const float>(send, 4), std::span<float>(recv, 4), step_sig(0)),
          dasgd::timeout_error);
      return;
    }
    auto req = c.iallreduce_average(std::span<const float>(send, 4), std::span<float>(recv, 4), step_sig(0));
    try {
      req.wait();
    } catch (...) {
      at[static_cast<std::size_t>(rank)] = ms_since(t0);
      throw;
    }
  });
  for (int r = 0; r < 2; ++r) {
    CAPTURE(r);
    CHECK(is_a<dasgd::timeout_error>(errors[static_cast<std::size_t>(r)]));
    CHECK(message_of(errors[static_cast<std::size_t>(r)]).find("rank(s) 2 never posted") != std::string::npos);
    CHECK(at[static_cast<std::size_t>(r)] < 2000.0);
  }
  CHECK(!errors[2]);
}

TEST_CASE("device group: bad arguments and refused peer access name the value and the rank") {
  fresh_fake f;
  CHECK_THROWS_AS(group(0), dasgd::config_error);
  CHECK_THROWS_AS(group(dasgd::comm::device_group_max_ranks + 1), dasgd::config_error);
  group g(2, opts());
  cudaStream_t s = fk::new_stream();
  communicator c0 = g.communicator(0, s);
  CHECK_THROWS_WITH_AS(g.communicator(0, s), doctest::Contains("rank 0 already"), dasgd::config_error);
  CHECK_THROWS_AS(g.communicator(2, s), dasgd::config_error);
  float* d = fk::device_alloc<float>(8);
  std::vector<float> host(8);
  CHECK_THROWS_WITH_AS(c0.iallreduce_average(std::span<const float>(host.data(), 8), std::span<float>(d, 8)),
                       doctest::Contains("send buffer is not device memory"), dasgd::config_error);
  CHECK_THROWS_WITH_AS(c0.iallreduce_average(std::span<const float>(d, 8), std::span<float>(d, 7)),
                       doctest::Contains("recv has 7"), dasgd::size_mismatch_error);

  group_runtime::no_peers() = true;
  group g2(2, opts());
  std::thread([&] {
    group_runtime::set_device(0);
    communicator a = g2.communicator(0, s);
    std::thread([&] {
      group_runtime::set_device(1);
      CHECK_THROWS_WITH_AS(g2.communicator(1, s), doctest::Contains("on device 1 cannot access device 0"),
                           dasgd::config_error);
    }).join();
  }).join();
  group_runtime::no_peers() = false;
}
