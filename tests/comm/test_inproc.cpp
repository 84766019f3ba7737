// The in-process communicator: deterministic, truly asynchronous, and it
// fails loudly (mismatch, timeout, abort) instead of hanging.
#include <doctest/doctest.h>

#include <dasgd/comm/inproc.hpp>
#include <dasgd/core/communicator.hpp>

#include <chrono>
#include <random>
#include <string>
#include <thread>
#include <vector>

using namespace dasgd;
using namespace std::chrono_literals;

static_assert(communicator<comm::inproc_communicator, float>);
static_assert(communicator<comm::inproc_communicator, double>);
static_assert(request<comm::inproc_request>);

TEST_CASE("the average is the rank-order mean, identical on every rank, whatever the timing") {
  const int n = 5;
  const std::size_t len = 1001;
  std::vector<std::vector<float>> send(n, std::vector<float>(len));
  std::mt19937 rng(3);
  std::uniform_real_distribution<float> ud(-1e3f, 1e3f);
  for (auto& s : send)
    for (auto& x : s) x = ud(rng);
  std::vector<float> expect(len);
  for (std::size_t i = 0; i < len; ++i) {
    double acc = 0;
    for (int r = 0; r < n; ++r) acc += send[static_cast<std::size_t>(r)][i];
    expect[i] = static_cast<float>(acc / n);
  }
  for (int rep = 0; rep < 10; ++rep) {
    comm::inproc_group group(n);
    std::vector<std::vector<float>> recv(n, std::vector<float>(len, -1.0f));
    comm::run_workers(group, [&](comm::inproc_communicator c) {
      const auto r = static_cast<std::size_t>(c.rank());
      std::this_thread::sleep_for(std::chrono::microseconds((r * 7919 + static_cast<std::size_t>(rep) * 104729) % 3000));
      auto req = c.iallreduce_average(std::span<const float>(send[r]), std::span<float>(recv[r]));
      req.wait();
    });
    for (int r = 0; r < n; ++r) CHECK(recv[static_cast<std::size_t>(r)] == expect);
  }
}

TEST_CASE("the average makes progress while the ranks do not call into the communicator") {
  // Emulated link: 30 ms latency. The launch returns at once; the result
  // arrives while the ranks sleep; nobody calls wait().
  comm::inproc_group group(2, {.simulated_latency = 30ms});
  comm::run_workers(group, [&](comm::inproc_communicator c) {
    std::vector<double> s(1000, c.rank() + 1.0), r(1000, 0.0);
    const auto t0 = std::chrono::steady_clock::now();
    auto req = c.iallreduce_average(std::span<const double>(s), std::span<double>(r));
    CHECK(std::chrono::steady_clock::now() - t0 < 20ms);
    CHECK_FALSE(req.test());
    std::this_thread::sleep_for(200ms);
    CHECK(req.test());
    CHECK(r[999] == 1.5);
  });
}

TEST_CASE("emulated bandwidth delays completion by bytes / bandwidth") {
  comm::inproc_group group(2, {.simulated_bandwidth_bytes_per_second = 4e6});  // 4 MB/s
  comm::run_workers(group, [&](comm::inproc_communicator c) {
    std::vector<float> s(100000, 1.0f), r(100000);  // 400 kB -> 100 ms
    const auto t0 = std::chrono::steady_clock::now();
    auto req = c.iallreduce_average(std::span<const float>(s), std::span<float>(r));
    req.wait();
    const double dt = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    CHECK(dt >= 0.095);
    CHECK(dt < 5.0);
  });
}

TEST_CASE("sizes or types that differ across ranks fail the collective on every rank") {
  comm::inproc_group group(3);
  std::vector<std::string> msg(3);
  comm::run_workers(group, [&](comm::inproc_communicator c) {
    const std::size_t len = c.rank() == 1 ? 9 : 8;
    std::vector<float> s(len), r(len);
    auto req = c.iallreduce_average(std::span<const float>(s), std::span<float>(r));
    try {
      req.wait();
    } catch (const size_mismatch_error& e) {
      msg[static_cast<std::size_t>(c.rank())] = e.what();
    }
  });
  for (const auto& m : msg) {
    CAPTURE(m);
    CHECK(m.find("rank 0 sent 8 float") != std::string::npos);
    CHECK(m.find("rank 1 sent 9 float") != std::string::npos);
  }
  comm::inproc_group g2(2);
  CHECK_THROWS_AS(comm::run_workers(g2, [&](comm::inproc_communicator c) {
                    std::vector<float> sf(4), rf(4);
                    std::vector<double> sd(4), rd(4);
                    auto req = c.rank() == 0
                                   ? c.iallreduce_average(std::span<const float>(sf), std::span<float>(rf))
                                   : c.iallreduce_average(std::span<const double>(sd), std::span<double>(rd));
                    req.wait();
                  }),
                  size_mismatch_error);
}

TEST_CASE("send and recv of different lengths are rejected locally") {
  comm::inproc_group group(1);
  auto c = group.communicator(0);
  std::vector<float> s(4), r(5);
  CHECK_THROWS_WITH_AS(c.iallreduce_average(std::span<const float>(s), std::span<float>(r)),
                       doctest::Contains("send has 4 elements but recv has 5"), size_mismatch_error);
}

TEST_CASE("a rank that never joins makes the others time out, then the group is aborted") {
  comm::inproc_group group(3, {.timeout = 150ms});
  auto c0 = group.communicator(0), c2 = group.communicator(2);
  std::vector<float> s(4), r(4);
  auto q0 = c0.iallreduce_average(std::span<const float>(s), std::span<float>(r));
  const auto t0 = std::chrono::steady_clock::now();
  CHECK_THROWS_WITH_AS(q0.wait(), doctest::Contains("rank(s) 1, 2 never joined"), timeout_error);
  CHECK(std::chrono::steady_clock::now() - t0 < 2s);
  // The group is aborted: rank 2 learns at once instead of timing out too.
  CHECK_THROWS_WITH_AS(c2.iallreduce_average(std::span<const float>(s), std::span<float>(r)),
                       doctest::Contains("aborted"), comm_error);
}

TEST_CASE("abort fails pending collectives immediately") {
  comm::inproc_group group(2, {.timeout = 60s});
  auto c0 = group.communicator(0);
  std::vector<float> s(4), r(4);
  auto q = c0.iallreduce_average(std::span<const float>(s), std::span<float>(r));
  std::thread t([&] {
    std::this_thread::sleep_for(50ms);
    group.abort("rank 1 lost its GPU");
  });
  const auto t0 = std::chrono::steady_clock::now();
  CHECK_THROWS_WITH_AS(q.wait(), doctest::Contains("rank 1 lost its GPU"), comm_error);
  CHECK(std::chrono::steady_clock::now() - t0 < 5s);
  t.join();
}

TEST_CASE("allgather returns one value per rank in rank order") {
  comm::inproc_group group(4);
  std::vector<std::vector<std::uint64_t>> got(4);
  comm::run_workers(group, [&](comm::inproc_communicator c) {
    got[static_cast<std::size_t>(c.rank())] = c.allgather(static_cast<std::uint64_t>(10 + c.rank()));
  });
  for (const auto& g : got) CHECK(g == std::vector<std::uint64_t>{10, 11, 12, 13});
}
