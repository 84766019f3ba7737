// basic_nccl_communicator over the fake runtime (fake_nccl_runtime.hpp):
// ranks are threads, device memory is host memory, and faults are injected
// where a GPU test could not stage them. Needs NCCL's and CUDA's headers,
// neither a GPU nor libnccl.
#include <doctest/doctest.h>

#include <dasgd/comm/nccl.hpp>

#include <atomic>
#include <barrier>
#include <chrono>
#include <condition_variable>
#include <cstring>
#include <exception>
#include <functional>
#include <mutex>
#include <optional>
#include <span>
#include <string>
#include <thread>
#include <vector>

#include "fake_nccl_runtime.hpp"
#include "fake_ranks.hpp"

namespace fk = dasgd_test::fake_nccl;
using namespace std::chrono_literals;
using fake_comm = dasgd::comm::basic_nccl_communicator<fk::runtime>;
using fake_request = dasgd::comm::basic_nccl_request<fk::runtime>;
using dasgd::collective_purpose;
using dasgd::collective_signature;
using namespace dasgd_test::fake_ranks;

static_assert(dasgd::communicator<fake_comm, float>);
static_assert(dasgd::communicator<fake_comm, double>);
static_assert(dasgd::communicator<dasgd::comm::nccl_communicator, float>);
static_assert(std::is_same_v<dasgd::comm::nccl_communicator,
                             dasgd::comm::basic_nccl_communicator<dasgd::comm::detail::nccl_runtime>>);

namespace {

/// Rank 0's bytes to every rank (the bootstrap's broadcast), 5 s at most.
class broadcast_box {
 public:
  void operator()(int rank, void* p, std::size_t n) {
    std::unique_lock lk(m_);
    if (rank == 0) {
      data_.assign(static_cast<const std::byte*>(p), static_cast<const std::byte*>(p) + n);
      set_ = true;
      cv_.notify_all();
      return;
    }
    if (!cv_.wait_for(lk, 5s, [&] { return set_; }))
      throw std::runtime_error("broadcast_box: rank 0 never broadcast");
    std::memcpy(p, data_.data(), n);
  }

 private:
  std::mutex m_;
  std::condition_variable cv_;
  std::vector<std::byte> data_;
  bool set_ = false;
};

dasgd::comm::nccl_options fast_options(std::chrono::milliseconds timeout = 500ms, bool watchdog = true) {
  dasgd::comm::nccl_options o;
  o.timeout = timeout;
  o.watchdog = watchdog;
  o.watchdog_interval = 2ms;
  return o;
}

fake_comm make_rank(broadcast_box& box, int rank, int size, cudaStream_t compute,
                    dasgd::comm::nccl_options o = fast_options()) {
  return fake_comm::bootstrap(
      rank, size, [&box, rank](void* p, std::size_t n) { box(rank, p, n); }, compute, o);
}

bool all_garbage(const void* p, std::size_t bytes) {
  return fk::locked([&](fk::world_t&) {
    const auto* b = static_cast<const unsigned char*>(p);
    for (std::size_t i = 0; i < bytes; ++i)
      if (b[i] != fk::garbage) return false;
    return true;
  });
}


}  // namespace

TEST_CASE("fake NCCL: averages, broadcasts and allgathers on 2 and 4 ranks") {
  for (const bool watchdog : {true, false}) {
    for (const int n : {2, 4}) {
      fresh_fake f;
      INFO(n, " ranks, watchdog ", watchdog);
      broadcast_box box;
      std::barrier done(n);
      auto errors = run_ranks(n, [&](int rank) {
        cudaStream_t s = fk::new_stream();
        auto c = make_rank(box, rank, n, s, fast_options(2000ms, watchdog));
        CHECK(c.size() == n);
        CHECK(c.rank() == rank);
        const std::size_t count = 1000;
        float* send = fk::device_alloc<float>(count);
        float* recv = fk::device_alloc<float>(count);
        // The snapshot is written on the compute stream behind a gate that
        // opens later: the average must be ordered after it.
        std::atomic<bool> open{false};
        fk::enqueue_gate(s, [&] { return open.load(); });
        fk::enqueue_host(s, [=] {
          for (std::size_t i = 0; i < count; ++i) send[i] = static_cast<float>(rank * 10) + static_cast<float>(i);
        });
        auto req = c.iallreduce_average(std::span<const float>(send, count), std::span<float>(recv, count),
                                        step_sig(0, rank));
        std::this_thread::sleep_for(20ms);
        open.store(true);
        req.wait();
        std::vector<float> merged(count);
        fk::enqueue_host(s, [&] { std::memcpy(merged.data(), recv, count * sizeof(float)); });
        REQUIRE(fk::synchronize(s));
        const float mean_rank = static_cast<float>(n - 1) / 2.0f;
        for (std::size_t i = 0; i < count; i += 97) CHECK(merged[i] == doctest::Approx(mean_rank * 10 + i));
        const auto a = req.agreement();
        CHECK(a.min_proposal == 0);
        CHECK(a.max_proposal == n - 1);
        CHECK(a.status_rank == -1);

        // Doubles, and a status word from the last rank.
        double* dsend = fk::device_alloc<double>(17);
        double* drecv = fk::device_alloc<double>(17);
        fill(dsend, 17, 100.0 * rank);
        auto sig = step_sig(1, 5 - rank);
        if (rank == n - 1) {
          sig.status = dasgd::status_code::nonfinite_snapshot;
          sig.status_detail = 3;
        }
        auto dreq = c.iallreduce_average(std::span<const double>(dsend, 17), std::span<double>(drecv, 17), sig);
        dreq.wait();
        REQUIRE(fk::synchronize(s));
        const auto d = host_copy(drecv, 17);
        CHECK(d[4] == doctest::Approx(100.0 * (n - 1) / 2.0 + 4));
        const auto da = dreq.agreement();
        CHECK(da.max_proposal == 5);
        CHECK(da.min_proposal == 5 - (n - 1));
        CHECK(da.status_rank == n - 1);
        CHECK(da.status == dasgd::status_code::nonfinite_snapshot);
        CHECK(da.status_detail == 3);

        // Broadcast from the last rank.
        collective_signature bs;
        bs.purpose = collective_purpose::broadcast;
        bs.sequence = 2;
        fill(send, count, 1000.0f * static_cast<float>(rank));
        auto breq = c.ibroadcast(std::span<const float>(send, count), std::span<float>(recv, count), n - 1, bs);
        breq.wait();
        REQUIRE(fk::synchronize(s));
        CHECK(host_copy(recv, count)[7] == doctest::Approx(1000.0f * static_cast<float>(n - 1) + 7));

        std::vector<std::uint64_t> want;
        for (int r = 0; r < n; ++r) want.push_back(static_cast<std::uint64_t>(r) * 7 + 1);
        CHECK(c.allgather(static_cast<std::uint64_t>(rank) * 7 + 1) == want);
        // A completed request stays complete; an empty average completes.
        CHECK(req.test());
        auto empty = c.iallreduce_average(std::span<const float>(), std::span<float>(), step_sig(3));
        empty.wait();
        REQUIRE(fk::synchronize(s));
        CHECK(empty.test());
        c.check_health();
        done.arrive_and_wait();
      });
      require_no_errors(errors);
      CHECK(fk::locked([](fk::world_t& w) { return w.use_after_free; }) == 0);
      CHECK(fk::locked([](fk::world_t& w) { return w.mismatched_collectives; }) == 0);
    }
  }
}

TEST_CASE("fake NCCL: a signature mismatch fails every rank with the same error; the communicator stays usable") {
  for (const int n : {2, 4}) {
    fresh_fake f;
    INFO(n, " ranks");
    broadcast_box box;
    std::barrier sync(n);
    std::vector<std::string> purpose_msgs(static_cast<std::size_t>(n)), count_msgs(static_cast<std::size_t>(n));
    std::vector<int> purpose_ok(static_cast<std::size_t>(n)), count_ok(static_cast<std::size_t>(n));
    auto errors = run_ranks(n, [&](int rank) {
      cudaStream_t s = fk::new_stream();
      auto c = make_rank(box, rank, n, s);
      float* send = fk::device_alloc<float>(64);
      float* recv = fk::device_alloc<float>(64);
      fill(send, 64, 1.0f);
      // Rank 1 calls synchronize() while the others still step.
      auto sig = step_sig(0);
      if (rank == 1) sig.purpose = collective_purpose::synchronize;
      auto req = c.iallreduce_average(std::span<const float>(send, 64), std::span<float>(recv, 64), sig);
      try {
        req.wait();
      } catch (const dasgd::comm_error& e) {
        purpose_ok[static_cast<std::size_t>(rank)] = 1;
        purpose_msgs[static_cast<std::size_t>(rank)] = e.what();
      }
      // Different counts: no data collective may be issued with them.
      const std::size_t count = rank == 0 ? 60 : 64;
      auto req2 = c.iallreduce_average(std::span<const float>(send, count), std::span<float>(recv, count),
                                       step_sig(1));
      try {
        req2.wait();
      } catch (const dasgd::size_mismatch_error& e) {
        count_ok[static_cast<std::size_t>(rank)] = 1;
        count_msgs[static_cast<std::size_t>(rank)] = e.what();
      }
      // Still usable.
      c.check_health();
      auto req3 = c.iallreduce_average(std::span<const float>(send, 64), std::span<float>(recv, 64), step_sig(2));
      req3.wait();
      REQUIRE(fk::synchronize(s));
      CHECK(host_copy(recv, 64)[5] == doctest::Approx(6.0f));
      CHECK_FALSE(c.aborted());
      sync.arrive_and_wait();
    });
    require_no_errors(errors);
    for (int r = 0; r < n; ++r) {
      INFO("rank ", r, ": ", purpose_msgs[static_cast<std::size_t>(r)], " / ", count_msgs[static_cast<std::size_t>(r)]);
      CHECK(purpose_ok[static_cast<std::size_t>(r)] == 1);
      CHECK(count_ok[static_cast<std::size_t>(r)] == 1);
      CHECK(purpose_msgs[static_cast<std::size_t>(r)] == purpose_msgs[0]);
      CHECK(count_msgs[static_cast<std::size_t>(r)] == count_msgs[0]);
    }
    CHECK(purpose_msgs[0].find("rank 1 issued synchronize") != std::string::npos);
    CHECK(count_msgs[0].find("rank 0 sent 60") != std::string::npos);
    CHECK(fk::locked([](fk::world_t& w) { return w.mismatched_collectives; }) == 0);
    CHECK(fk::locked([](fk::world_t& w) { return w.aborts; }) == 0);
  }
}

TEST_CASE("fake NCCL: an allgather against an average is a mismatch on every rank") {
  fresh_fake f;
  broadcast_box box;
  std::barrier sync(2);
  std::vector<int> ok(2);
  auto errors = run_ranks(2, [&](int rank) {
    cudaStream_t s = fk::new_stream();
    auto c = make_rank(box, rank, 2, s);
    float* buf = fk::device_alloc<float>(8);
    try {
      if (rank == 0) {
        (void)c.allgather(1);
      } else {
        auto r = c.iallreduce_average(std::span<const float>(buf, 8), std::span<float>(buf, 8), step_sig(0));
        r.wait();
      }
    } catch (const dasgd::comm_error& e) {
      ok[static_cast<std::size_t>(rank)] = std::string(e.what()).find("rank 0 issued an allgather but rank 1 "
                                                                      "issued an average") != std::string::npos;
    }
    CHECK(c.allgather(static_cast<std::uint64_t>(rank)) == std::vector<std::uint64_t>{0, 1});
    sync.arrive_and_wait();
  });
  require_no_errors(errors);
  CHECK(ok == std::vector<int>{1, 1});
}

TEST_CASE("fake NCCL: the aborted flag is checked under the lock of the NCCL call (no use after free)") {
  fresh_fake f;
  cudaStream_t s = fk::new_stream();
  auto c = fake_comm::single_rank(s, fast_options());
  float* buf = fk::device_alloc<float>(16);
  // The abort lands between the caller's health check and its NCCL call
  // (inside the event record on the compute stream).
  fake_comm* target = &c;
  std::atomic<bool> fired{false};
  const auto me = std::this_thread::get_id();
  fk::locked([&](fk::world_t& w) {
    w.hook = [&, target, me](const char* call) {
      if (std::this_thread::get_id() == me && std::string(call) == "cudaEventRecord" && !fired.exchange(true))
        target->abort("injected abort");
    };
    return 0;
  });
  CHECK_THROWS_AS((void)c.iallreduce_average(std::span<const float>(buf, 16), std::span<float>(buf, 16), step_sig(0)),
                  dasgd::comm_error);
  fk::locked([](fk::world_t& w) {
    w.hook = nullptr;
    return 0;
  });
  CHECK(fired.load());
  CHECK(c.aborted());
  CHECK_THROWS_AS(c.check_health(), dasgd::comm_error);
  CHECK(fk::locked([](fk::world_t& w) { return w.use_after_free; }) == 0);
  CHECK(fk::locked([](fk::world_t& w) { return w.allreduce_calls; }) == 0);
}

TEST_CASE("fake NCCL: ncclGetUniqueId failing on rank 0 fails every rank instead of hanging") {
  fresh_fake f;
  fk::locked([](fk::world_t& w) { return w.fail_unique_id = true; });
  broadcast_box box;
  const auto t0 = clock_type::now();
  auto errors = run_ranks(4, [&](int rank) { (void)make_rank(box, rank, 4, fk::new_stream()); });
  CHECK(ms_since(t0) < 2000);
  for (int r = 0; r < 4; ++r) {
    const auto msg = message_of(errors[static_cast<std::size_t>(r)]);
    INFO("rank ", r, ": ", msg);
    CHECK(is_a<dasgd::comm_error>(errors[static_cast<std::size_t>(r)]));
    CHECK(msg.find("ncclGetUniqueId failed on rank 0") != std::string::npos);
    CHECK(msg.find(dasgd::detail::concat("rank ", r, " of 4")) != std::string::npos);
  }
}

TEST_CASE("fake NCCL: an initialization that never finishes times out and is aborted") {
  fresh_fake f;
  // Rank 1 never joins: rank 0's non-blocking init stays in progress.
  broadcast_box box;
  const auto t0 = clock_type::now();
  auto errors = run_ranks(1, [&](int rank) { (void)make_rank(box, rank, 2, fk::new_stream(), fast_options(300ms)); });
  const double elapsed = ms_since(t0);
  CHECK(elapsed >= 250);
  CHECK(elapsed < 1500);
  const auto msg = message_of(errors[0]);
  INFO(msg);
  CHECK(is_a<dasgd::timeout_error>(errors[0]));
  CHECK(msg.find("rank 0 of 2") != std::string::npos);
  CHECK(fk::locked([](fk::world_t& w) { return w.aborts; }) == 1);

  // All ranks join, but rank 1's initialization never completes.
  fresh_fake g;
  fk::locked([](fk::world_t& w) {
    w.init_never_ranks = {1};
    return 0;
  });
  broadcast_box box2;
  auto errors2 = run_ranks(2, [&](int rank) {
    auto c = make_rank(box2, rank, 2, fk::new_stream(), fast_options(300ms));
    // Rank 0 got in; its first collective then waits for rank 1 in vain.
    float* b = fk::device_alloc<float>(4);
    auto r = c.iallreduce_average(std::span<const float>(b, 4), std::span<float>(b, 4), step_sig(0));
    r.wait();
  });
  CHECK(is_a<dasgd::timeout_error>(errors2[0]));
  CHECK(is_a<dasgd::timeout_error>(errors2[1]));
  CHECK(message_of(errors2[1]).find("ncclCommInitRankConfig on rank 1 of 2") != std::string::npos);
}

TEST_CASE("fake NCCL: ncclInProgress from a non-blocking communicator means 'being enqueued', not failure") {
  fresh_fake f;
  fk::locked([](fk::world_t& w) { return w.init_inprogress_polls = 3; });
  broadcast_box box;
  std::barrier sync(2);
  auto errors = run_ranks(2, [&](int rank) {
    cudaStream_t s = fk::new_stream();
    auto c = make_rank(box, rank, 2, s);
    float* send = fk::device_alloc<float>(32);
    float* recv = fk::device_alloc<float>(32);
    fill(send, 32, 2.0f * static_cast<float>(rank));
    for (std::uint64_t k = 0; k < 3; ++k) {
      auto req = c.iallreduce_average(std::span<const float>(send, 32), std::span<float>(recv, 32), step_sig(k));
      req.wait();
      REQUIRE(fk::synchronize(s));
      CHECK(host_copy(recv, 32)[3] == doctest::Approx(1.0f + 3));
    }
    CHECK(c.allgather(9) == std::vector<std::uint64_t>{9, 9});
    c.check_health();
    sync.arrive_and_wait();
  });
  require_no_errors(errors);
}

TEST_CASE("fake NCCL: an abort after wait() handed the average to the compute stream is never complete-OK") {
  fresh_fake f;
  broadcast_box box;
  std::barrier sync(2);
  auto errors = run_ranks(2, [&](int rank) {
    cudaStream_t s = fk::new_stream();
    auto c = make_rank(box, rank, 2, s, fast_options(300ms));
    // The peer is gone in the middle of the data transfer.
    fk::configure(c.native_handle(), [](fk::comm_obj& o) { o.hang_allreduce = true; });
    const std::size_t count = 256;
    float* send = fk::device_alloc<float>(count);
    float* recv = fk::device_alloc<float>(count);
    fill(send, count, 1.0f);
    auto req = c.iallreduce_average(std::span<const float>(send, count), std::span<float>(recv, count), step_sig(0));
    req.wait();  // not timed out yet: the compute stream now waits on the device
    c.check_health();
    std::vector<float> merged(count);
    fk::enqueue_host(s, [&] { std::memcpy(merged.data(), recv, count * sizeof(float)); });  // the merge pass
    const auto t0 = clock_type::now();
    while (!c.aborted() && ms_since(t0) < 3000) std::this_thread::sleep_for(2ms);
    CHECK(c.aborted());
    // The streams drain (no hang), over a partial average...
    CHECK(fk::synchronize(s));
    CHECK(all_garbage(merged.data(), count * sizeof(float)));
    // ...which is never reported as complete.
    CHECK_THROWS_AS(c.check_health(), dasgd::timeout_error);
    CHECK_THROWS_AS((void)req.test(), dasgd::timeout_error);
    CHECK_FALSE(req.duration_seconds().has_value());
    CHECK_THROWS_AS((void)c.allgather(1), dasgd::timeout_error);
    sync.arrive_and_wait();
  });
  require_no_errors(errors);
  CHECK(fk::locked([](fk::world_t& w) { return w.use_after_free; }) == 0);
}

TEST_CASE("fake NCCL: a call stuck inside ncclAllReduce is aborted within the timeout") {
  for (const bool host_wait : {false, true}) {
    fresh_fake f;
    INFO("host_wait ", host_wait);
    broadcast_box box;
    std::barrier sync(2);
    std::vector<double> elapsed(2);
    auto errors = run_ranks(2, [&](int rank) {
      cudaStream_t s = fk::new_stream();
      auto o = fast_options(1000ms);
      o.host_wait = host_wait;
      auto c = make_rank(box, rank, 2, s, o);
      if (rank == 0) fk::configure(c.native_handle(), [](fk::comm_obj& x) { x.block_allreduce_call = true; });
      float* b = fk::device_alloc<float>(64);
      sync.arrive_and_wait();
      const auto t0 = clock_type::now();
      try {
        auto req = c.iallreduce_average(std::span<const float>(b, 64), std::span<float>(b, 64), step_sig(0));
        req.wait();
        while (!req.test()) std::this_thread::sleep_for(1ms);
      } catch (...) {
        elapsed[static_cast<std::size_t>(rank)] = ms_since(t0);
        sync.arrive_and_wait();
        throw;
      }
      elapsed[static_cast<std::size_t>(rank)] = ms_since(t0);
      sync.arrive_and_wait();
    });
    for (int r = 0; r < 2; ++r) {
      INFO("rank ", r, ": ", message_of(errors[static_cast<std::size_t>(r)]), " after ",
           elapsed[static_cast<std::size_t>(r)], " ms");
      CHECK(is_a<dasgd::timeout_error>(errors[static_cast<std::size_t>(r)]));
      // One timeout plus slack: the abort is not held up behind the stuck
      // call for a second timeout.
      CHECK(elapsed[static_cast<std::size_t>(r)] < 1700);
    }
    CHECK(message_of(errors[0]).find("ncclAllReduce") != std::string::npos);
    CHECK(fk::locked([](fk::world_t& w) { return w.use_after_free; }) == 0);
  }
}

TEST_CASE("fake NCCL: a peer that never joins the signature exchange times out (watchdog on and off)") {
  for (const bool watchdog : {true, false}) {
    fresh_fake f;
    INFO("watchdog ", watchdog);
    broadcast_box box;
    std::barrier sync(2);
    auto errors = run_ranks(2, [&](int rank) {
      cudaStream_t s = fk::new_stream();
      auto c = make_rank(box, rank, 2, s, fast_options(300ms, watchdog));
      float* b = fk::device_alloc<float>(8);
      if (rank == 0) {
        const auto t0 = clock_type::now();
        auto req = c.iallreduce_average(std::span<const float>(b, 8), std::span<float>(b, 8), step_sig(0));
        try {
          req.wait();
          FAIL("no timeout");
        } catch (const dasgd::timeout_error& e) {
          CHECK(std::string(e.what()).find("signature exchange") != std::string::npos);
          CHECK(std::string(e.what()).find("rank 0 of 2") != std::string::npos);
        }
        CHECK(ms_since(t0) >= 250);
        CHECK(ms_since(t0) < 1500);
        CHECK(c.aborted());
      }
      sync.arrive_and_wait();
    });
    require_no_errors(errors);
  }
}

TEST_CASE("fake NCCL: an asynchronous NCCL error aborts and is latched") {
  for (const bool watchdog : {true, false}) {
    fresh_fake f;
    INFO("watchdog ", watchdog);
    cudaStream_t s = fk::new_stream();
    auto c = fake_comm::single_rank(s, fast_options(5000ms, watchdog));
    float* b = fk::device_alloc<float>(8);
    auto req = c.iallreduce_average(std::span<const float>(b, 8), std::span<float>(b, 8), step_sig(0));
    req.wait();
    REQUIRE(fk::synchronize(s));
    CHECK(req.test());
    fk::configure(c.native_handle(), [](fk::comm_obj& o) { o.async_error_at = fk::clock::now() + 30ms; });
    const auto t0 = clock_type::now();
    bool thrown = false;
    while (!thrown && ms_since(t0) < 3000) {
      try {
        c.check_health();
        std::this_thread::sleep_for(2ms);
      } catch (const dasgd::comm_error& e) {
        thrown = true;
        CHECK(std::string(e.what()).find("asynchronous error on rank 0") != std::string::npos);
      }
    }
    CHECK(thrown);
    CHECK(ms_since(t0) < 1500);
    CHECK(c.aborted());
    CHECK_THROWS_AS((void)c.allgather(1), dasgd::comm_error);
    CHECK(fk::locked([](fk::world_t& w) { return w.use_after_free; }) == 0);
  }
}

TEST_CASE("fake NCCL: wait() orders the merge after a data collective issued late (peer posts late)") {
  fresh_fake f;
  broadcast_box box;
  std::barrier sync(2);
  auto errors = run_ranks(2, [&](int rank) {
    cudaStream_t s = fk::new_stream();
    auto c = make_rank(box, rank, 2, s, fast_options(2000ms));
    float* send = fk::device_alloc<float>(16);
    float* recv = fk::device_alloc<float>(16);
    fill(send, 16, 4.0f * static_cast<float>(rank));
    fill(recv, 16, -1.0f);
    if (rank == 1) std::this_thread::sleep_for(150ms);
    const auto t0 = clock_type::now();
    auto req = c.iallreduce_average(std::span<const float>(send, 16), std::span<float>(recv, 16), step_sig(0, rank));
    req.wait();
    // The agreement is known once wait() returned.
    CHECK(req.agreement().max_proposal == 1);
    if (rank == 0) CHECK(ms_since(t0) >= 100);
    std::vector<float> merged(16);
    fk::enqueue_host(s, [&] { std::memcpy(merged.data(), recv, sizeof(float) * 16); });
    REQUIRE(fk::synchronize(s));
    CHECK(merged[2] == doctest::Approx(2.0f + 2));
    sync.arrive_and_wait();
  });
  require_no_errors(errors);
}

TEST_CASE("fake NCCL: duration_seconds() reports the data collective's time on the stream") {
  fresh_fake f;
  broadcast_box box;
  std::barrier sync(2);
  auto errors = run_ranks(2, [&](int rank) {
    cudaStream_t s = fk::new_stream();
    auto c = make_rank(box, rank, 2, s, fast_options(3000ms));
    fk::configure(c.native_handle(), [](fk::comm_obj& o) { o.data_delay = 200ms; });
    float* b = fk::device_alloc<float>(32);
    auto req = c.iallreduce_average(std::span<const float>(b, 32), std::span<float>(b, 32), step_sig(0));
    req.wait();  // returns before the transfer: the host-measured wait shows nothing of it
    CHECK_FALSE(req.duration_seconds().has_value());
    while (!req.test()) std::this_thread::sleep_for(1ms);
    const auto d = req.duration_seconds();
    REQUIRE(d.has_value());
    CHECK(*d >= 0.19);
    CHECK(*d < 2.0);
    sync.arrive_and_wait();
  });
  require_no_errors(errors);
}

TEST_CASE("fake NCCL: destruction finalizes then destroys; a finalize that never finishes is aborted") {
  {
    fresh_fake f;
    broadcast_box box;
    std::barrier sync(2);
    auto errors = run_ranks(2, [&](int rank) {
      cudaStream_t s = fk::new_stream();
      auto c = make_rank(box, rank, 2, s);
      CHECK(c.allgather(1).size() == 2);
      sync.arrive_and_wait();
    });
    require_no_errors(errors);
    CHECK(fk::locked([](fk::world_t& w) { return w.finalizes; }) == 2);
    CHECK(fk::locked([](fk::world_t& w) { return w.destroys; }) == 2);
    CHECK(fk::locked([](fk::world_t& w) { return w.aborts; }) == 0);
  }
  for (const bool blocking : {false, true}) {
    fresh_fake f;
    INFO("blocking communicator (single_rank): ", blocking);
    broadcast_box box;
    cudaStream_t s = fk::new_stream();
    std::optional<fake_comm> c;
    if (blocking) c.emplace(fake_comm::single_rank(s, fast_options(300ms)));
    else c.emplace(make_rank(box, 0, 1, s, fast_options(300ms)));
    CHECK(c->allgather(3) == std::vector<std::uint64_t>{3});
    fk::configure(c->native_handle(), [](fk::comm_obj& o) { o.finalize_never = true; });
    const auto t0 = clock_type::now();
    c.reset();
    const double elapsed = ms_since(t0);
    CHECK(elapsed >= 250);
    CHECK(elapsed < 1500);
    CHECK(fk::locked([](fk::world_t& w) { return w.finalizes; }) == 1);
    CHECK(fk::locked([](fk::world_t& w) { return w.aborts; }) == 1);
    CHECK(fk::locked([](fk::world_t& w) { return w.destroys; }) == 0);
    CHECK(fk::locked([](fk::world_t& w) { return w.use_after_free; }) == 0);
  }
}

TEST_CASE("fake NCCL: split() gives a dedicated communicator that owns its child") {
  fresh_fake f;
  broadcast_box box;
  std::barrier sync(2);
  auto errors = run_ranks(2, [&](int rank) {
    cudaStream_t s = fk::new_stream();
    auto parent = make_rank(box, rank, 2, s);
    {
      auto child = fake_comm::split(parent.native_handle(), s, fast_options());
      CHECK(child.native_handle() != parent.native_handle());
      CHECK(child.rank() == rank);
      CHECK(child.size() == 2);
      float* b = fk::device_alloc<float>(8);
      fill(b, 8, static_cast<float>(rank) * 2.0f);
      auto r1 = child.iallreduce_average(std::span<const float>(b, 8), std::span<float>(b, 8), step_sig(0));
      CHECK(parent.allgather(5) == std::vector<std::uint64_t>{5, 5});  // the parent works meanwhile
      r1.wait();
      REQUIRE(fk::synchronize(s));
      CHECK(host_copy(b, 8)[1] == doctest::Approx(2.0f));
    }
    sync.arrive_and_wait();
    CHECK(fk::locked([](fk::world_t& w) { return w.destroys; }) == 2);  // both children, not the parents
    CHECK(parent.allgather(6) == std::vector<std::uint64_t>{6, 6});
    sync.arrive_and_wait();
  });
  require_no_errors(errors);
}

TEST_CASE("fake NCCL: one rank averages with ncclSum; host buffers and bad arguments are rejected") {
  fresh_fake f;
  cudaStream_t s = fk::new_stream();
  auto c = fake_comm::single_rank(s, fast_options());
  float* d = fk::device_alloc<float>(10);
  fill(d, 10, 3.0f);
  float* r = fk::device_alloc<float>(10);
  auto req = c.iallreduce_average(std::span<const float>(d, 10), std::span<float>(r, 10), step_sig(0));
  req.wait();
  REQUIRE(fk::synchronize(s));
  CHECK(host_copy(r, 10)[9] == 12.0f);
  CHECK(fk::locked([](fk::world_t& w) { return w.last_reduce_op; }) == ncclSum);
  std::vector<float> host(10);
  CHECK_THROWS_AS((void)c.iallreduce_average(std::span<const float>(d, 10), std::span<float>(r, 9)),
                  dasgd::size_mismatch_error);
  try {
    (void)c.iallreduce_average(std::span<const float>(host.data(), 10), std::span<float>(r, 10));
    FAIL("no exception");
  } catch (const dasgd::config_error& e) {
    CHECK(std::string(e.what()).find("send buffer") != std::string::npos);
    CHECK(std::string(e.what()).find("not device memory") != std::string::npos);
  }
  collective_signature grouped;
  grouped.scope = 1;
  CHECK_THROWS_AS((void)c.iallreduce_average(std::span<const float>(d, 10), std::span<float>(r, 10), grouped),
                  dasgd::config_error);
  // Errors in arguments do not poison the communicator.
  CHECK(c.allgather(5) == std::vector<std::uint64_t>{5});
  // A moved-from request says so.
  fake_request moved = std::move(req);
  CHECK(moved.test());
  CHECK_THROWS_AS((void)req.test(), dasgd::state_error);  // NOLINT(bugprone-use-after-move)
}
