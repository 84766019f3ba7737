// basic_host_staged_communicator over the fake CUDA runtime
// (fake_nccl_runtime.hpp) with in-process ranks as the inner communicator:
// the ordering of the copies against the compute stream, 16-bit words,
// and every failure path, without a GPU. The same code with the real
// runtime and MPI runs in tests/cuda/test_mpi_gpu_trainer.cu.
#include <doctest/doctest.h>

#include <cuda_bf16.h>

#include <dasgd/comm/host_staged.hpp>
#include <dasgd/comm/inproc.hpp>

#include <atomic>
#include <chrono>
#include <cstring>
#include <span>
#include <string>
#include <thread>
#include <vector>

#include "fake_nccl_runtime.hpp"
#include "fake_ranks.hpp"

namespace fk = dasgd_test::fake_nccl;
using namespace std::chrono_literals;
using namespace dasgd_test::fake_ranks;
using staged = dasgd::comm::basic_host_staged_communicator<dasgd::comm::inproc_communicator, fk::runtime>;

static_assert(dasgd::communicator<staged, float>);
static_assert(dasgd::communicator<staged, double>);
static_assert(dasgd::communicator<staged, __nv_bfloat16>);
static_assert(std::is_same_v<dasgd::comm_memory_space_t<staged>, dasgd::device_space>);

namespace {

dasgd::comm::host_staged_options staged_options(std::chrono::milliseconds timeout = 2000ms) {
  dasgd::comm::host_staged_options o;
  o.timeout = timeout;
  o.poll_interval = 100us;
  return o;
}

dasgd::comm::inproc_group group_of(int n, std::chrono::milliseconds timeout = 2000ms) {
  dasgd::comm::inproc_options o;
  o.timeout = timeout;
  return dasgd::comm::inproc_group(n, o);
}

}  // namespace

TEST_CASE("host-staged: averages device buffers on 2 and 4 ranks, after the snapshot and before the merge") {
  fresh_fake f;
  for (int n : {2, 4}) {
    CAPTURE(n);
    auto group = group_of(n);
    constexpr std::size_t count = 1000;
    auto errors = run_ranks(n, [&](int rank) {
      held_stream compute;
      staged comm(group.communicator(rank), compute.s, staged_options());
      CHECK(comm.size() == n);
      CHECK(comm.rank() == rank);
      CHECK(comm.compute_stream() == compute.s);
      float* send = fk::device_alloc<float>(count);
      float* recv = fk::device_alloc<float>(count);
      for (int round = 0; round < 3; ++round) {
        // The snapshot is written by work still queued behind a running
        // kernel: the staged copy must wait for it.
        queue_write(compute.s, send, count, [=](std::size_t i) { return 100 * round + rank + static_cast<int>(i); });
        auto req = comm.iallreduce_average(std::span<const float>(send, count), std::span<float>(recv, count),
                                           step_sig(static_cast<std::uint64_t>(round)));
        if (round == 0) {
          std::this_thread::sleep_for(20ms);
          CHECK_FALSE(req.test());  // the stream is still held: nothing was sent
          compute.open();
        }
        req.wait();
        CHECK(req.test());
        CHECK(req.duration_seconds().has_value());
        const auto got = read_in_stream_order(compute.s, recv, count);
        const double mean_rank = (n - 1) / 2.0;
        bool ok = true;
        for (std::size_t i = 0; i < count; ++i)
          ok = ok && got[i] == static_cast<float>(100 * round + mean_rank + static_cast<double>(i));
        CHECK(ok);
      }
      comm.check_health();
    });
    require_no_errors(errors);
  }
}

TEST_CASE("host-staged: broadcast of doubles, bf16 averages and allgather") {
  fresh_fake f;
  constexpr int n = 3;
  auto group = group_of(n);
  constexpr std::size_t count = 257;
  auto errors = run_ranks(n, [&](int rank) {
    cudaStream_t s = fk::new_stream();
    staged comm(group.communicator(rank), s, staged_options());
    CHECK(comm.allgather(static_cast<std::uint64_t>(10 + rank)) == std::vector<std::uint64_t>{10, 11, 12});

    double* bsend = fk::device_alloc<double>(count);
    double* brecv = fk::device_alloc<double>(count);
    queue_write(s, bsend, count, [=](std::size_t i) { return 0.5 * rank + static_cast<double>(i); });
    dasgd::collective_signature sig;
    sig.purpose = dasgd::collective_purpose::broadcast;
    auto b = comm.ibroadcast(std::span<const double>(bsend, count), std::span<double>(brecv, count), 1, sig);
    b.wait();
    const auto got = read_in_stream_order(s, brecv, count);
    bool ok = true;
    for (std::size_t i = 0; i < count; ++i) ok = ok && got[i] == 0.5 + static_cast<double>(i);
    CHECK(ok);

    // bf16 words: ranks 0, 1, 2 send 2r + (i % 8); the mean 2 + (i % 8) is exact.
    auto* hsend = fk::device_alloc<__nv_bfloat16>(count);
    auto* hrecv = fk::device_alloc<__nv_bfloat16>(count);
    fk::enqueue_host(s, [=] {
      for (std::size_t i = 0; i < count; ++i) hsend[i] = __float2bfloat16(static_cast<float>(2 * rank + i % 8));
    });
    auto h = comm.iallreduce_average(std::span<const __nv_bfloat16>(hsend, count),
                                     std::span<__nv_bfloat16>(hrecv, count), step_sig(1));
    h.wait();
    const auto hgot = read_in_stream_order(s, hrecv, count);
    ok = true;
    for (std::size_t i = 0; i < count; ++i) ok = ok && __bfloat162float(hgot[i]) == static_cast<float>(2 + i % 8);
    CHECK(ok);
  });
  require_no_errors(errors);
}

TEST_CASE("host-staged: one rank's stalled compute stream gives timeout_error on every rank, then latches") {
  fresh_fake f;
  constexpr int n = 3;
  auto group = group_of(n, 400ms);
  constexpr std::size_t count = 64;
  std::vector<held_stream> streams(n);
  const auto t0 = clock_type::now();
  std::vector<double> raised_ms(n, 0.0);
  auto errors = run_ranks(n, [&](int rank) {
    staged comm(group.communicator(rank), streams[static_cast<std::size_t>(rank)].s, staged_options(300ms));
    if (rank != 1) streams[static_cast<std::size_t>(rank)].open();  // rank 1's kernel never ends
    float* send = fk::device_alloc<float>(count);
    float* recv = fk::device_alloc<float>(count);
    auto req = comm.iallreduce_average(std::span<const float>(send, count), std::span<float>(recv, count),
                                       step_sig(0));
    try {
      req.wait();
    } catch (...) {
      raised_ms[static_cast<std::size_t>(rank)] = ms_since(t0);
      // Latched: the health check and the next collective say so at once.
      CHECK_THROWS_AS(comm.check_health(), dasgd::timeout_error);
      CHECK_THROWS_AS(comm.iallreduce_average(std::span<const float>(send, count), std::span<float>(recv, count),
                                              step_sig(1)),
                      dasgd::timeout_error);
      throw;
    }
  });
  for (auto& s : streams) s.open();
  for (int r = 0; r < n; ++r) {
    CAPTURE(r);
    INFO(message_of(errors[static_cast<std::size_t>(r)]));
    CHECK(is_a<dasgd::timeout_error>(errors[static_cast<std::size_t>(r)]));
    CHECK(raised_ms[static_cast<std::size_t>(r)] < 3000.0);
  }
  const std::string stalled = message_of(errors[1]);
  CHECK(stalled.find("rank 1") != std::string::npos);
  CHECK(stalled.find("compute stream is stalled") != std::string::npos);
}

TEST_CASE("host-staged: a signature mismatch fails every rank and does not latch") {
  fresh_fake f;
  constexpr int n = 2;
  auto group = group_of(n);
  constexpr std::size_t count = 16;
  auto errors = run_ranks(n, [&](int rank) {
    cudaStream_t s = fk::new_stream();
    staged comm(group.communicator(rank), s, staged_options());
    float* send = fk::device_alloc<float>(count);
    float* recv = fk::device_alloc<float>(count);
    queue_write(s, send, count, [=](std::size_t) { return rank; });
    auto bad = comm.iallreduce_average(std::span<const float>(send, count), std::span<float>(recv, count),
                                       step_sig(static_cast<std::uint64_t>(rank)));  // ranks disagree
    CHECK_THROWS_AS(bad.wait(), dasgd::comm_error);
    comm.check_health();  // the communicator stays usable
    auto good = comm.iallreduce_average(std::span<const float>(send, count), std::span<float>(recv, count),
                                        step_sig(5));
    good.wait();
    const auto got = read_in_stream_order(s, recv, count);
    CHECK(got[0] == 0.5f);
    CHECK(got[count - 1] == 0.5f);
  });
  require_no_errors(errors);
}

TEST_CASE("host-staged: a dropped request never writes recv; the next collective is unaffected") {
  fresh_fake f;
  constexpr int n = 2;
  auto group = group_of(n);
  constexpr std::size_t count = 32;
  auto errors = run_ranks(n, [&](int rank) {
    held_stream compute;
    staged comm(group.communicator(rank), compute.s, staged_options());
    float* send = fk::device_alloc<float>(count);
    float* recv = fk::device_alloc<float>(count);
    queue_write(compute.s, recv, count, [](std::size_t) { return -7.0f; });
    queue_write(compute.s, send, count, [=](std::size_t) { return 2.0f * static_cast<float>(rank); });
    {
      auto dropped = comm.iallreduce_average(std::span<const float>(send, count), std::span<float>(recv, count),
                                             step_sig(0));
    }
    compute.open();
    // The dropped average still takes place (the peer takes part), one at a
    // time in issue order; its result must not reach recv.
    float* recv2 = fk::device_alloc<float>(count);
    auto next = comm.iallreduce_average(std::span<const float>(send, count), std::span<float>(recv2, count),
                                        step_sig(1));
    next.wait();
    const auto untouched = read_in_stream_order(compute.s, recv, count);
    const auto got = read_in_stream_order(compute.s, recv2, count);
    CHECK(untouched[0] == -7.0f);
    CHECK(untouched[count - 1] == -7.0f);
    CHECK(got[0] == 1.0f);
  });
  require_no_errors(errors);
}

TEST_CASE("host-staged: destruction with a collective stuck behind a stalled stream is bounded") {
  fresh_fake f;
  auto group = group_of(1, 300ms);
  held_stream compute;
  float* send = fk::device_alloc<float>(8);
  float* recv = fk::device_alloc<float>(8);
  const auto t0 = clock_type::now();
  {
    staged comm(group.communicator(0), compute.s, staged_options(250ms));
    auto req = comm.iallreduce_average(std::span<const float>(send, 8), std::span<float>(recv, 8), step_sig(0));
    // Neither waited on nor completed: the communicator goes first.
  }
  CHECK(ms_since(t0) < 2000.0);
  compute.open();
  REQUIRE(fk::synchronize(compute.s));
}

TEST_CASE("host-staged: destruction still runs a posted collective, so the peer waiting in it completes") {
  fresh_fake f;
  constexpr int n = 2;
  auto group = group_of(n);
  constexpr std::size_t count = 16;
  std::vector<float> rank0_recv;
  auto errors = run_ranks(n, [&](int rank) {
    held_stream compute;
    float* send = fk::device_alloc<float>(count);
    float* recv = fk::device_alloc<float>(count);
    queue_write(compute.s, recv, count, [](std::size_t) { return -7.0f; });
    queue_write(compute.s, send, count, [=](std::size_t) { return 2.0f * static_cast<float>(rank); });
    if (rank == 0) {
      // The snapshot is still behind a running kernel when rank 0 drops
      // its request and destroys the communicator; the kernel ends while
      // the destructor runs.
      std::thread opener([&] {
        std::this_thread::sleep_for(100ms);
        compute.open();
      });
      {
        staged comm(group.communicator(rank), compute.s, staged_options());
        auto dropped = comm.iallreduce_average(std::span<const float>(send, count), std::span<float>(recv, count),
                                               step_sig(0));
      }
      opener.join();
      rank0_recv = read_in_stream_order(compute.s, recv, count);
    } else {
      compute.open();
      staged comm(group.communicator(rank), compute.s, staged_options());
      auto req = comm.iallreduce_average(std::span<const float>(send, count), std::span<float>(recv, count),
                                         step_sig(0));
      req.wait();
      const auto got = read_in_stream_order(compute.s, recv, count);
      CHECK(got[0] == 1.0f);
      CHECK(got[count - 1] == 1.0f);
    }
  });
  require_no_errors(errors);
  REQUIRE(rank0_recv.size() == count);
  CHECK(rank0_recv[0] == -7.0f);  // dropped: nothing was copied back
}

namespace {

/// An inner communicator that counts the collectives a staging engine says
/// it gave up (mpi_communicator passes them to mpi_environment).
struct skip_counting_inproc : dasgd::comm::inproc_communicator {
  explicit skip_counting_inproc(dasgd::comm::inproc_communicator c) : inproc_communicator(std::move(c)) {}
  static inline std::atomic<std::size_t> skipped{0};
  static void record_skipped_collectives(std::size_t k) noexcept { skipped += k; }
};

}  // namespace

TEST_CASE("host-staged: the collectives a latched engine gives up are reported to the inner communicator") {
  using counting = dasgd::comm::basic_host_staged_communicator<skip_counting_inproc, fk::runtime>;
  fresh_fake f;
  auto group = group_of(1, 300ms);
  float* send = fk::device_alloc<float>(8);
  float* recv = fk::device_alloc<float>(8);
  skip_counting_inproc::skipped = 0;
  {
    // Healthy: every collective is started, also one posted just before
    // destruction.
    cudaStream_t s = fk::new_stream();
    counting comm(skip_counting_inproc(group.communicator(0)), s, staged_options(250ms));
    comm.iallreduce_average(std::span<const float>(send, 8), std::span<float>(recv, 8), step_sig(0)).wait();
    CHECK(comm.allgather(3) == std::vector<std::uint64_t>{3});
    auto last = comm.iallreduce_average(std::span<const float>(send, 8), std::span<float>(recv, 8), step_sig(1));
  }
  CHECK(skip_counting_inproc::skipped == 0);
  held_stream stalled;
  {
    counting comm(skip_counting_inproc(group.communicator(0)), stalled.s, staged_options(250ms));
    auto first = comm.iallreduce_average(std::span<const float>(send, 8), std::span<float>(recv, 8), step_sig(2));
    auto second = comm.iallreduce_average(std::span<const float>(send, 8), std::span<float>(recv, 8), step_sig(3));
    CHECK_THROWS_AS(first.wait(), dasgd::timeout_error);  // never started: skipped
    CHECK_THROWS_AS(second.wait(), dasgd::timeout_error);  // behind the latch: skipped
    CHECK(skip_counting_inproc::skipped == 2);
    CHECK_THROWS_AS(comm.iallreduce_average(std::span<const float>(send, 8), std::span<float>(recv, 8), step_sig(4)),
                    dasgd::timeout_error);
    CHECK_THROWS_AS(comm.allgather(1), dasgd::timeout_error);
    CHECK(skip_counting_inproc::skipped == 4);
    CHECK_THROWS_AS(comm.check_health(), dasgd::timeout_error);  // not a collective: not counted
    CHECK(skip_counting_inproc::skipped == 4);
  }
  stalled.open();
}

TEST_CASE("host-staged: bad arguments name the value and the rank") {
  fresh_fake f;
  auto group = group_of(1);
  cudaStream_t s = fk::new_stream();
  staged comm(group.communicator(0), s, staged_options());
  float* a = fk::device_alloc<float>(8);
  CHECK_THROWS_WITH_AS(comm.iallreduce_average(std::span<const float>(a, 8), std::span<float>(a, 7), step_sig(0)),
                       doctest::Contains("recv has 7"), dasgd::size_mismatch_error);
  CHECK_THROWS_WITH_AS(comm.ibroadcast(std::span<const float>(a, 8), std::span<float>(a, 8), 3, step_sig(0)),
                       doctest::Contains("root 3"), dasgd::config_error);
  dasgd::comm::host_staged_options bad;
  bad.timeout = 0ms;
  CHECK_THROWS_AS(staged(group.communicator(0), s, bad), dasgd::config_error);
}

TEST_CASE("host-staged: a moved-from communicator refuses to be used") {
  fresh_fake f;
  auto group = group_of(1);
  cudaStream_t s = fk::new_stream();
  staged comm(group.communicator(0), s, staged_options());
  staged moved(std::move(comm));
  CHECK(moved.size() == 1);
  float* buf = fk::device_alloc<float>(4);
  CHECK_THROWS_AS(comm.rank(), dasgd::state_error);  // NOLINT(bugprone-use-after-move): the point
  CHECK_THROWS_AS(comm.iallreduce_average(std::span<const float>(buf, 4), std::span<float>(buf, 4)),
                  dasgd::state_error);
  CHECK_THROWS_AS(comm.check_health(), dasgd::state_error);
}
