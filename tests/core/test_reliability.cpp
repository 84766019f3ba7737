// The attacks of the reliability review, kept as tests: no hang, no silent
// divergence across ranks, nothing half-applied. Each case failed (or hung,
// or passed silently with wrong weights) before the fix it pins down.
#include <doctest/doctest.h>

#include <dasgd/dasgd.hpp>

#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <unistd.h>
#include <limits>
#include <mutex>
#include <new>
#include <sstream>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "support/fake_comm.hpp"

using namespace dasgd;
using namespace std::chrono_literals;

namespace {

/// Runs fn on every rank of an n-rank group; returns each rank's exception
/// message ("" if none) and whether each threw E.
template <class E, class F>
std::vector<std::string> messages_of(int n, F&& fn, std::vector<char>* typed = nullptr,
                                     comm::inproc_options o = {.timeout = 5s}) {
  comm::inproc_group group(n, o);
  std::vector<std::string> msgs(static_cast<std::size_t>(n));
  if (typed) typed->assign(static_cast<std::size_t>(n), false);
  std::vector<std::thread> threads;
  for (int r = 0; r < n; ++r) {
    threads.emplace_back([&, r] {
      try {
        fn(group.communicator(r));
      } catch (const E& e) {
        msgs[static_cast<std::size_t>(r)] = e.what();
        if (typed) (*typed)[static_cast<std::size_t>(r)] = true;
      } catch (const std::exception& e) {
        msgs[static_cast<std::size_t>(r)] = std::string("WRONG TYPE: ") + e.what();
      }
    });
  }
  for (auto& t : threads) t.join();
  return msgs;
}

bool contains(const std::string& s, const std::string& needle) {
  return s.find(needle) != std::string::npos;
}

}  // namespace

TEST_CASE("in-process: a peer that never joins gives timeout_error on every waiting rank") {
  // Before: only the first waiter whose wait expired saw timeout_error, the
  // others a plain comm_error; run_workers then rethrew whichever rank was
  // lowest, so callers saw timeout_error in only some trials.
  for (int trial = 0; trial < 20; ++trial) {
    CAPTURE(trial);
    comm::inproc_group group(4, {.timeout = 150ms});
    bool timeout_seen = false;
    try {
      comm::run_workers(group, [&](comm::inproc_communicator c) {
        if (c.rank() == 3) {
          std::this_thread::sleep_for(400ms);  // never joins in time
          std::vector<float> s(8), r(8);
          c.iallreduce_average(std::span<const float>(s), std::span<float>(r)).wait();
          return;
        }
        std::vector<float> s(8), r(8);
        c.iallreduce_average(std::span<const float>(s), std::span<float>(r)).wait();
      });
    } catch (const timeout_error& e) {
      timeout_seen = true;
      CHECK(contains(e.what(), "never joined"));
    } catch (const std::exception& e) {
      FAIL("wrong exception type: " << e.what());
    }
    CHECK(timeout_seen);
  }
}

TEST_CASE("one rank calling synchronize() while the others step is an error on every rank") {
  // Before: the synchronize silently paired with the others' step average
  // and the ranks ended with different weights, "normally".
  std::vector<char> typed;
  const auto msgs = messages_of<comm_error>(3, [](comm::inproc_communicator c) {
    std::vector<float> w(16, 1.0f + static_cast<float>(c.rank())), g(16, 0.1f);
    delayed_averager tr(make_tensor_list(w), c, policy::fixed_delay{.tau = 2, .delay = 1},
                        optim::sgd{.lr = 0.1}, merge::mix{});
    tr.step(g);
    if (c.rank() == 1) {
      tr.synchronize();
    } else {
      tr.step(g);  // launches the step average
      tr.step(g);  // merges it
    }
  }, &typed);
  for (std::size_t r = 0; r < msgs.size(); ++r) {
    CAPTURE(r);
    CAPTURE(msgs[r]);
    CHECK(typed[r]);
    CHECK(contains(msgs[r], "collectives differ across ranks"));
    CHECK(contains(msgs[r], "synchronize"));
    CHECK(contains(msgs[r], "step average"));
  }
}

TEST_CASE("ranks that resume from checkpoints of different steps are an error on every rank") {
  // Same purpose, same size: only the sequence numbers tell them apart.
  std::vector<char> typed;
  const auto msgs = messages_of<comm_error>(2, [](comm::inproc_communicator c) {
    std::vector<float> w(4, 1.0f), g(4, 0.1f);
    std::string blob;
    {
      delayed_averager tr(make_tensor_list(w), c, policy::synchronous(), optim::sgd{.lr = 0.1},
                          merge::mix{});
      for (int k = 0; k < 3; ++k) tr.step(g);
      std::ostringstream os;
      tr.save(os);
      blob = os.str();
    }
    delayed_averager tr(make_tensor_list(w), c, policy::synchronous(), optim::sgd{.lr = 0.1},
                        merge::mix{});
    if (c.rank() == 0) {  // rank 0 resumes, rank 1 starts afresh
      std::istringstream is(blob);
      tr.load(is);
    }
    tr.step(g);
  }, &typed);
  for (std::size_t r = 0; r < msgs.size(); ++r) {
    CAPTURE(msgs[r]);
    CHECK(typed[r]);
    CHECK(contains(msgs[r], "collectives differ across ranks"));
    CHECK(contains(msgs[r], "step average #3"));
    CHECK(contains(msgs[r], "step average #0"));
  }
}

namespace {
/// Every rank builds its trainer with `make(rank)`'s configuration; returns
/// the per-rank messages of the expected config_error.
template <class Make>
std::vector<std::string> configuration_mismatch(Make make) {
  std::vector<char> typed;
  auto msgs = messages_of<config_error>(3, [&](comm::inproc_communicator c) { make(c); }, &typed);
  for (std::size_t r = 0; r < msgs.size(); ++r) {
    CAPTURE(msgs[r]);
    CHECK(typed[r]);
    CHECK(contains(msgs[r], "trainer configuration differs across ranks"));
  }
  return msgs;
}
}  // namespace

TEST_CASE("every setting that must agree across ranks is checked at construction, naming both sides") {
  // Before: only shapes and the storage type were compared; ranks with
  // another tau, delay, merge rule, optimizer or master-weights flag
  // trained on, averaging snapshots taken at different steps.
  std::vector<float> w0(8, 1.0f);
  SUBCASE("tau") {
    const auto m = configuration_mismatch([&](comm::inproc_communicator c) {
      std::vector<float> w(8, 1.0f);
      delayed_averager tr(make_tensor_list(w), c,
                          policy::fixed_delay{.tau = c.rank() == 2 ? 8 : 4, .delay = 1},
                          optim::sgd{.lr = 0.1}, merge::mix{});
    });
    CHECK(contains(m[0], "fixed_delay(tau=4, delay=1)"));
    CHECK(contains(m[0], "fixed_delay(tau=8, delay=1)"));
    CHECK(contains(m[0], "rank 2"));
  }
  SUBCASE("delay") {
    const auto m = configuration_mismatch([&](comm::inproc_communicator c) {
      std::vector<float> w(8, 1.0f);
      delayed_averager tr(make_tensor_list(w), c,
                          policy::fixed_delay{.tau = 4, .delay = c.rank() == 1 ? 2 : 1},
                          optim::sgd{.lr = 0.1}, merge::mix{});
    });
    CHECK(contains(m[1], "delay=2"));
  }
  SUBCASE("merge coefficients") {
    const auto m = configuration_mismatch([&](comm::inproc_communicator c) {
      std::vector<float> w(8, 1.0f);
      delayed_averager tr(make_tensor_list(w), c, policy::fixed_delay{}, optim::sgd{.lr = 0.1},
                          merge::mix{.update_proportion = c.rank() == 0 ? 0.5 : 0.25});
    });
    CHECK(contains(m[2], "mix(a=0.25"));
    CHECK(contains(m[2], "mix(a=0.5"));
  }
  SUBCASE("merge rule") {
    configuration_mismatch([&](comm::inproc_communicator c) {
      std::vector<float> w(8, 1.0f);
      if (c.rank() == 0) {
        delayed_averager tr(make_tensor_list(w), c, policy::fixed_delay{}, optim::sgd{.lr = 0.1},
                            merge::linear{.a = 1, .b = 1, .c = -1});
      } else {
        delayed_averager tr(make_tensor_list(w), c, policy::fixed_delay{}, optim::sgd{.lr = 0.1},
                            merge::additive{});
      }
    });
  }
  SUBCASE("optimizer hyper-parameters and learning rate") {
    configuration_mismatch([&](comm::inproc_communicator c) {
      std::vector<float> w(8, 1.0f);
      delayed_averager tr(make_tensor_list(w), c, policy::fixed_delay{},
                          optim::sgd{.lr = 0.1, .momentum = c.rank() == 1 ? 0.9 : 0.8},
                          merge::mix{});
    });
    const auto m = configuration_mismatch([&](comm::inproc_communicator c) {
      std::vector<float> w(8, 1.0f);
      delayed_averager tr(make_tensor_list(w), c, policy::fixed_delay{},
                          optim::sgd{.lr = c.rank() == 1 ? 0.2 : 0.1}, merge::mix{});
    });
    CHECK(contains(m[0], "learning_rate=0.1"));
    CHECK(contains(m[0], "learning_rate=0.2"));
  }
  SUBCASE("optimizer kind") {
    configuration_mismatch([&](comm::inproc_communicator c) {
      std::vector<float> w(8, 1.0f);
      if (c.rank() == 2) {
        delayed_averager tr(make_tensor_list(w), c, policy::fixed_delay{}, optim::adamw{.lr = 0.1},
                            merge::mix{});
      } else {
        delayed_averager tr(make_tensor_list(w), c, policy::fixed_delay{}, optim::sgd{.lr = 0.1},
                            merge::mix{});
      }
    });
  }
  SUBCASE("compute type") {
    const auto m = configuration_mismatch([&](comm::inproc_communicator c) {
      std::vector<float> w(8, 1.0f);
      if (c.rank() == 1) {
        delayed_averager<float, comm::inproc_communicator, policy::fixed_delay, optim::sgd,
                         merge::mix, host_backend, double>
            tr(make_tensor_list(w), c, policy::fixed_delay{}, optim::sgd{.lr = 0.1}, merge::mix{});
      } else {
        delayed_averager tr(make_tensor_list(w), c, policy::fixed_delay{}, optim::sgd{.lr = 0.1},
                            merge::mix{});
      }
    });
    CHECK(contains(m[0], "compute=double"));
  }
  SUBCASE("master weights and the non-finite guard") {
    configuration_mismatch([&](comm::inproc_communicator c) {
      std::vector<float> w(8, 1.0f);
      delayed_averager tr(make_tensor_list(w), c, policy::fixed_delay{}, optim::sgd{.lr = 0.1},
                          merge::mix{}, trainer_options{.master_weights = c.rank() == 0});
    });
    configuration_mismatch([&](comm::inproc_communicator c) {
      std::vector<float> w(8, 1.0f);
      delayed_averager tr(
          make_tensor_list(w), c, policy::fixed_delay{}, optim::sgd{.lr = 0.1}, merge::mix{},
          trainer_options{.nonfinite = c.rank() == 0 ? nonfinite_guard::off : nonfinite_guard::skip_merge});
    });
  }
  SUBCASE("warm-up length") {
    configuration_mismatch([&](comm::inproc_communicator c) {
      std::vector<float> w(8, 1.0f);
      delayed_averager tr(make_tensor_list(w), c,
                          policy::warmup{.sync_steps = c.rank() == 0 ? 10 : 20, .inner = policy::fixed_delay{}},
                          optim::sgd{.lr = 0.1}, merge::mix{});
    });
  }
  SUBCASE("equal configurations pass") {
    const auto m = messages_of<config_error>(3, [&](comm::inproc_communicator c) {
      std::vector<float> w(8, 1.0f);
      delayed_averager tr(make_tensor_list(w), c, policy::fixed_delay{}, optim::sgd{.lr = 0.1},
                          merge::mix{});
    });
    for (const auto& s : m) CHECK(s.empty());
  }
}

TEST_CASE("adaptive delay: all ranks merge at the same steps, with the largest delay any rank planned") {
  // Before: each rank chose its delay from its own measurements, so ranks
  // merged at different steps.
  constexpr int n = 3, steps = 60;
  std::vector<std::vector<std::int64_t>> merges(n), delays(n);
  // A slow link (latency 25 ms) and per-rank step costs of 2, 6 and 12 ms.
  comm::inproc_group group(n, {.timeout = 10s, .simulated_latency = 25ms});
  comm::run_workers(group, [&](comm::inproc_communicator c) {
    const auto r = static_cast<std::size_t>(c.rank());
    std::vector<float> w(64, 1.0f), g(64, 0.01f);
    policy::adaptive_delay<> pol({.tau = 8, .initial_delay = 1, .min_delay = 1, .window = 2});
    delayed_averager tr(make_tensor_list(w), c, pol, optim::sgd{.lr = 0.01}, merge::mix{});
    for (int k = 0; k < steps; ++k) {
      std::this_thread::sleep_for(std::chrono::milliseconds(2 + 5 * c.rank() * c.rank() / 2));
      const auto rep = tr.step(g);
      if (rep.merged) merges[r].push_back(rep.step);
      if (rep.launched) delays[r].push_back(tr.current_plan().delay);
    }
    tr.synchronize();
  });
  for (int r = 1; r < n; ++r) {
    CHECK(merges[static_cast<std::size_t>(r)] == merges[0]);
  }
  REQUIRE(merges[0].size() >= 5);
}

TEST_CASE("ranks that plan different delays with a policy that does not agree are an error everywhere") {
  struct rank_delay {
    int rank = 0;
    round_plan plan(std::int64_t r) const { return {4, r == 0 ? 1 : (rank == 1 ? 2 : 1), false}; }
  };
  std::vector<char> typed;
  const auto msgs = messages_of<config_error>(2, [&](comm::inproc_communicator c) {
    std::vector<float> w(4, 1.0f), g(4, 0.1f);
    delayed_averager tr(make_tensor_list(w), c, rank_delay{c.rank()}, optim::sgd{.lr = 0.1},
                        merge::mix{});
    for (int k = 0; k < 12; ++k) tr.step(g);
  }, &typed);
  for (const auto& m : msgs) {
    CAPTURE(m);
    CHECK(contains(m, "ranks planned different delays"));
  }
}

static_assert(agrees_on_max_delay<policy::adaptive_delay<>>());
static_assert(agrees_on_max_delay<policy::warmup<policy::adaptive_delay<>>>());
static_assert(!agrees_on_max_delay<policy::fixed_delay>());
static_assert(!agrees_on_max_delay<policy::warmup<>>());

TEST_CASE("a tensor listed twice or overlapping views are rejected") {
  std::vector<float> a(16, 1.0f), b(8, 1.0f);
  auto make = [](tensor_list<float> list) {
    return delayed_averager(std::move(list), test::fake_communicator{}, policy::fixed_delay{},
                            optim::sgd{.lr = 0.1}, merge::mix{});
  };
  CHECK_THROWS_WITH_AS(make(make_tensor_list(a, b, a)),
                       doctest::Contains("parameter tensors 0 and 2 share memory"), config_error);
  tensor_list<float> views;
  views.add(a.data(), 10).add(a.data() + 8, 8);  // elements 8 and 9 in both
  CHECK_THROWS_WITH_AS(make(views), doctest::Contains("share memory"), config_error);
  tensor_list<float> adjacent;
  adjacent.add(a.data(), 8).add(a.data() + 8, 8);  // touching, not overlapping
  CHECK_NOTHROW(make(adjacent));
}

namespace {
/// A communicator that reports a rank outside [0, size).
struct bad_rank_comm : test::fake_communicator {
  bad_rank_comm() : test::fake_communicator() {}
  int rank() const { return 3; }
};
}  // namespace

TEST_CASE("a communicator reporting rank >= size is rejected before anything reads per-rank data") {
  std::vector<float> w(4, 1.0f);
  CHECK_THROWS_WITH_AS(delayed_averager(make_tensor_list(w), bad_rank_comm{}, policy::fixed_delay{},
                                        optim::sgd{.lr = 0.1}, merge::mix{}),
                       doctest::Contains("rank 3 outside [0, 1)"), config_error);
}

namespace {
/// 4 workers, tau 2, delay 1; rank 2's gradient holds one NaN at step 3
/// (a launch step). Returns each rank's weights and messages.
struct nan_run {
  std::vector<std::vector<float>> weights;
  std::vector<std::string> errors;
  std::vector<int> skipped_at;
};
nan_run run_with_nan(nonfinite_guard guard, bool then_synchronize) {
  constexpr int n = 4;
  nan_run out;
  out.weights.resize(n);
  out.errors.resize(n);
  out.skipped_at.assign(n, -1);
  comm::inproc_group group(n, {.timeout = 5s});
  std::vector<std::thread> threads;
  for (int rank = 0; rank < n; ++rank) {
    threads.emplace_back([&, rank] {
      const auto r = static_cast<std::size_t>(rank);
      std::vector<float> w1(10, 1.0f), w2(6, -1.0f), g1(10, 0.1f), g2(6, 0.2f);
      try {
        delayed_averager tr(make_tensor_list(w1, w2), group.communicator(rank),
                            policy::fixed_delay{.tau = 2, .delay = 1}, optim::sgd{.lr = 0.1},
                            merge::mix{}, trainer_options{.nonfinite = guard});
        for (int k = 0; k < 8; ++k) {
          g2[3] = (rank == 2 && k == 3) ? std::numeric_limits<float>::quiet_NaN() : 0.2f;
          const auto rep = tr.step(tensor_list<const float>(g1, g2));
          if (rep.merge_skipped && out.skipped_at[r] < 0) {
            out.skipped_at[r] = static_cast<int>(rep.step);
            CHECK(rep.nonfinite_rank == 2);
            CHECK(rep.nonfinite_tensor == 1);
          }
        }
        if (then_synchronize) tr.synchronize();
      } catch (const nonfinite_error& e) {
        out.errors[r] = e.what();
      } catch (const std::exception& e) {
        out.errors[r] = std::string("WRONG TYPE: ") + e.what();
      }
      out.weights[r] = w1;
      out.weights[r].insert(out.weights[r].end(), w2.begin(), w2.end());
    });
  }
  for (auto& t : threads) t.join();
  return out;
}
bool all_finite(const std::vector<float>& v) {
  for (float x : v)
    if (!std::isfinite(x)) return false;
  return true;
}
}  // namespace

TEST_CASE("non-finite guard: one NaN on one of four workers") {
  SUBCASE("off: the NaN reaches every rank (what the guard prevents)") {
    const auto r = run_with_nan(nonfinite_guard::off, true);
    for (std::size_t k = 0; k < 4; ++k) CHECK_FALSE(all_finite(r.weights[k]));
  }
  SUBCASE("throw: nonfinite_error on every rank naming rank 2 and tensor 1; healthy ranks stay finite") {
    const auto r = run_with_nan(nonfinite_guard::throw_error, true);
    for (std::size_t k = 0; k < 4; ++k) {
      CAPTURE(k);
      CAPTURE(r.errors[k]);
      CHECK(contains(r.errors[k], "rank 2"));
      CHECK(contains(r.errors[k], "tensor 1"));
      if (k != 2) CHECK(all_finite(r.weights[k]));
    }
  }
  SUBCASE("skip: every rank skips that merge, healthy ranks stay finite, also through synchronize()") {
    const auto r = run_with_nan(nonfinite_guard::skip_merge, true);
    for (std::size_t k = 0; k < 4; ++k) {
      CAPTURE(k);
      CHECK(r.errors[k].empty());
      CHECK(r.skipped_at[k] == 4);  // the merge of the average launched at step 3
      if (k != 2) CHECK(all_finite(r.weights[k]));
    }
  }
}

namespace {
/// A fake whose wait() fails once, at the first blocking (d = 0) await.
struct failing_wait_comm : test::fake_communicator {
  std::shared_ptr<int> waits_left = std::make_shared<int>(0);
  struct request {
    test::fake_request inner;
    std::shared_ptr<int> left;
    bool test() { return false; }
    void wait() {
      if ((*left)-- == 0) throw comm_error("injected wait failure", __FILE__, __LINE__);
      inner.wait();
    }
    collective_agreement agreement() const { return inner.agreement(); }
  };
  using request_type = request;
  template <class T>
  request iallreduce_average(std::span<const T> s, std::span<T> r, const collective_signature& sig) {
    return {test::fake_communicator::iallreduce_average(s, r, sig), waits_left};
  }
  template <class T>
  request ibroadcast(std::span<const T> s, std::span<T> r, int root, const collective_signature& sig) {
    return {test::fake_communicator::ibroadcast(s, r, root, sig), waits_left};
  }
};
}  // namespace

TEST_CASE("d = 0: a failure after the step's update poisons the trainer; a retry cannot step twice") {
  // Before: the round state was committed before the merge and the throw
  // did not poison, so a retried step applied the gradient twice.
  std::vector<float> w(4, 1.0f), g(4, 1.0f);
  failing_wait_comm comm;
  delayed_averager tr(make_tensor_list(w), comm, policy::fixed_delay{.tau = 1, .delay = 0},
                      optim::sgd{.lr = 0.5}, merge::mix{});
  CHECK_THROWS_WITH_AS(tr.step(g), doctest::Contains("injected wait failure"), comm_error);
  const auto after_failure = w;
  CHECK_THROWS_WITH_AS(tr.step(g), doctest::Contains("unusable after an earlier failure"), state_error);
  CHECK(w == after_failure);
  CHECK_FALSE(tr.failure().empty());
  CHECK_THROWS_AS(tr.synchronize(), state_error);
  std::ostringstream os;
  CHECK_THROWS_AS(tr.save(os), state_error);
}

// The counting replacement of operator new below pairs malloc with free,
// which GCC cannot see through.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wmismatched-new-delete"
#endif

namespace {
std::atomic<long> allocations{0};
std::atomic<std::size_t> largest_allocation{0};
std::atomic<bool> counting{false};
}  // namespace

void* operator new(std::size_t n) {
  if (counting.load()) {
    ++allocations;
    std::size_t seen = largest_allocation.load();
    while (n > seen && !largest_allocation.compare_exchange_weak(seen, n)) {
    }
  }
  if (void* p = std::malloc(n ? n : 1)) return p;
  throw std::bad_alloc();
}
void operator delete(void* p) noexcept { std::free(p); }
void operator delete(void* p, std::size_t) noexcept { std::free(p); }

TEST_CASE("the single-tensor step allocates nothing") {
  // Before: it built a gradient list (two vectors) on every call.
  std::vector<float> w(32, 1.0f), g(32, 0.1f);
  delayed_averager tr(make_tensor_list(w), test::fake_communicator{},
                      policy::fixed_delay{.tau = 1000, .delay = 1}, optim::sgd{.lr = 0.1},
                      merge::mix{});
  tr.step(g);
  allocations = 0;
  counting = true;
  for (int k = 0; k < 100; ++k) tr.step(g);
  counting = false;
  CHECK(allocations.load() == 0);
  std::vector<float> wrong(31, 0.1f);
  CHECK_THROWS_AS(tr.step(wrong), size_mismatch_error);
}

TEST_CASE("broadcast_parameters: every rank gets the root's weights exactly") {
  constexpr int n = 3;
  std::vector<std::vector<double>> out(n);
  comm::inproc_group group(n);
  comm::run_workers(group, [&](comm::inproc_communicator c) {
    const auto r = static_cast<std::size_t>(c.rank());
    std::vector<double> w(21), g(21, 0.5);
    for (std::size_t i = 0; i < w.size(); ++i) w[i] = std::sin(double(i) + 10.0 * double(r));
    delayed_averager tr(make_tensor_list(w), c, policy::fixed_delay{.tau = 2, .delay = 1},
                        optim::sgd{.lr = 0.1, .momentum = 0.9}, merge::mix{});
    tr.broadcast_parameters(1);
    out[r] = w;
    tr.step(g);
    tr.step(g);  // launches
    CHECK_THROWS_WITH_AS(tr.broadcast_parameters(0), doctest::Contains("in flight"), state_error);
    tr.step(g);  // merges
    tr.synchronize();
  });
  std::vector<double> root(21);
  for (std::size_t i = 0; i < root.size(); ++i) root[i] = std::sin(double(i) + 10.0);
  for (const auto& w : out) CHECK(w == root);
}

TEST_CASE("broadcast_parameters with different roots is an error on every rank") {
  std::vector<char> typed;
  const auto msgs = messages_of<comm_error>(3, [](comm::inproc_communicator c) {
    std::vector<float> w(4, 1.0f);
    delayed_averager tr(make_tensor_list(w), c, policy::fixed_delay{}, optim::sgd{.lr = 0.1},
                        merge::mix{});
    tr.broadcast_parameters(c.rank() == 2 ? 1 : 0);
  }, &typed);
  for (const auto& m : msgs) {
    CAPTURE(m);
    CHECK(contains(m, "from root 1"));
    CHECK(contains(m, "from root 0"));
  }
  comm::inproc_group g1(1);
  std::vector<float> w(4, 1.0f);
  delayed_averager tr(make_tensor_list(w), g1.communicator(0), policy::fixed_delay{},
                      optim::sgd{.lr = 0.1}, merge::mix{});
  CHECK_THROWS_WITH_AS(tr.broadcast_parameters(1), doctest::Contains("root 1 is outside [0, 1)"),
                       config_error);
}

TEST_CASE("the destructor discards an average in flight and says so") {
  std::vector<std::string> warnings;
  {
    std::vector<float> w(4, 1.0f), g(4, 0.1f);
    delayed_averager tr(make_tensor_list(w), test::fake_communicator{},
                        policy::fixed_delay{.tau = 2, .delay = 1}, optim::sgd{.lr = 0.1},
                        merge::mix{},
                        trainer_options{.warning = [&](const std::string& m) { warnings.push_back(m); }});
    tr.step(g);
    tr.step(g);  // launches; its merge would be at step 2
  }
  REQUIRE(warnings.size() == 1);
  CHECK(contains(warnings[0], "launched at step 1"));
  CHECK(contains(warnings[0], "discarded"));
  warnings.clear();
  {
    std::vector<float> w(4, 1.0f), g(4, 0.1f);
    delayed_averager tr(make_tensor_list(w), test::fake_communicator{},
                        policy::fixed_delay{.tau = 2, .delay = 1}, optim::sgd{.lr = 0.1},
                        merge::mix{},
                        trainer_options{.warning = [&](const std::string& m) { warnings.push_back(m); }});
    tr.step(g);
    tr.step(g);
    tr.merge_now();
  }
  CHECK(warnings.empty());
}

TEST_CASE("saving and loading a large model holds only bounded pieces in host memory") {
  // Before: save() built the whole file in memory and load() read the whole
  // stream into a byte vector before looking at it.
  constexpr std::size_t n = std::size_t(6) << 20;  // 24 MiB of weights, 24 MiB of momentum
  std::vector<float> w(n, 0.5f), g(n, 0.25f);
  delayed_averager tr(make_tensor_list(w), test::fake_communicator{},
                      policy::fixed_delay{.tau = 2, .delay = 1},
                      optim::sgd{.lr = 0.1, .momentum = 0.9}, merge::mix{});
  tr.step(g);
  tr.step(g);  // an average in flight: snapshot and average are saved too
  const std::string path = "dasgd-bounded-" + std::to_string(::getpid()) + ".ckpt";
  largest_allocation = 0;
  counting = true;
  tr.save_file(path);
  counting = false;
  const std::size_t while_saving = largest_allocation.load();
  std::fill(w.begin(), w.end(), 0.0f);
  largest_allocation = 0;
  counting = true;
  tr.load_file(path);
  counting = false;
  const std::size_t while_loading = largest_allocation.load();
  std::remove(path.c_str());
  CHECK(w[n - 1] != 0.0f);
  CAPTURE(while_saving);
  CAPTURE(while_loading);
  CHECK(while_saving <= detail::checkpoint_chunk_bytes + 4096);
  CHECK(while_loading <= detail::checkpoint_chunk_bytes + 4096);
}
