// Every bad input is an exception whose message names the bad value; no
// hang, no silent fallback.
#include <doctest/doctest.h>

#include <dasgd/dasgd.hpp>

#include <chrono>
#include <cmath>
#include <limits>
#include <string>
#include <thread>

#include "support/fake_comm.hpp"

using namespace dasgd;
using test::fake_communicator;

namespace {
const double not_a_number = std::numeric_limits<double>::quiet_NaN();
const double infinity = std::numeric_limits<double>::infinity();

/// Runs f, requires it to throw E and the message to contain every needle.
template <class E, class F>
void require_throw(F&& f, std::initializer_list<const char*> needles) {
  try {
    f();
  } catch (const E& e) {
    const std::string msg = e.what();
    for (const char* n : needles) {
      CAPTURE(msg);
      CHECK(msg.find(n) != std::string::npos);
    }
    return;
  } catch (const std::exception& e) {
    FAIL("wrong exception type: " << e.what());
    return;
  }
  FAIL("no exception thrown");
}

template <class Optim = optim::sgd, class Merge = merge::mix, class Policy = policy::fixed_delay>
auto make_trainer(std::vector<float>& w, Optim o = optim::sgd{.lr = 0.1}, Merge m = merge::mix{0.25},
                  Policy p = policy::fixed_delay{4, 1}, test::fake_comm_config cfg = {}) {
  return delayed_averager(make_tensor_list(w), fake_communicator(cfg), p, o, m);
}
}  // namespace

/// A configuration aggregate with a bad value: its validate() and the
/// trainer constructed with it throw E naming the value.
template <class E, class Policy, class Merge = merge::mix>
void require_rejected(Policy p, Merge m, std::initializer_list<const char*> needles) {
  require_throw<E>([&] { p.validate(); m.validate(); }, needles);
  std::vector<float> w(3, 0.0f);
  require_throw<E>([&] { make_trainer(w, optim::sgd{.lr = 0.1}, m, p); }, needles);
}

TEST_CASE("tau and delay out of range") {
  require_rejected<config_error>(policy::fixed_delay{0, 0}, merge::mix{}, {"tau", "got 0"});
  require_rejected<config_error>(policy::fixed_delay{.tau = -3, .delay = 0}, merge::mix{}, {"got -3"});
  require_rejected<config_error>(policy::fixed_delay{4, 4}, merge::mix{}, {"delay 4", "[0, 4)"});
  require_rejected<config_error>(policy::fixed_delay{.delay = -1}, merge::mix{}, {"delay -1"});
  require_rejected<config_error>(policy::fixed_delay{.delay = 4}, merge::mix{}, {"delay 4", "[0, 4)"});
  require_rejected<config_error>(policy::warmup{.sync_steps = -1, .inner = policy::fixed_delay{}},
                                 merge::mix{}, {"sync_steps", "got -1"});
  // The warm-up checks its inner policy too.
  require_rejected<config_error>(policy::warmup{.sync_steps = 2, .inner = policy::fixed_delay{2, 2}},
                                 merge::mix{}, {"delay 2", "[0, 2)"});
  require_throw<config_error>([] { policy::adaptive_delay<>({.tau = 4, .initial_delay = 4}); },
                              {"initial delay 4"});
  require_throw<config_error>([] { policy::adaptive_delay<>({.tau = 0}); }, {"got 0"});
  require_throw<config_error>([] { policy::adaptive_delay<>({.tau = 4, .min_delay = 3, .max_delay = 2}); },
                              {"[3, 2]"});
}

TEST_CASE("a policy that plans a delay the next round cannot hold is rejected") {
  struct bad_policy {
    round_plan plan(std::int64_t r) const { return r == 0 ? round_plan{4, 3} : round_plan{2, 1}; }
  };
  std::vector<float> w(3, 0.0f), g(3, 1.0f);
  delayed_averager tr(make_tensor_list(w), fake_communicator{}, bad_policy{}, optim::sgd{.lr = 0.1},
                      merge::mix{0.25});
  for (int k = 0; k < 3; ++k) tr.step(g);
  const auto before = w;
  require_throw<config_error>([&] { tr.step(g); }, {"delay 3", "[0, 2)"});
  CHECK(w == before);  // the failing step was not applied
  CHECK(tr.steps_taken() == 3);

  struct zero_tau {
    round_plan plan(std::int64_t) const { return {0, 0}; }
  };
  require_throw<config_error>(
      [&] {
        delayed_averager t2(make_tensor_list(w), fake_communicator{}, zero_tau{},
                            optim::sgd{.lr = 0.1}, merge::mix{0.25});
      },
      {"tau 0"});
}

TEST_CASE("update proportion outside [0, 1]") {
  const policy::fixed_delay fd{};
  require_rejected<config_error>(fd, merge::mix{1.5}, {"update_proportion", "1.5"});
  require_rejected<config_error>(fd, merge::mix{.update_proportion = -0.25}, {"-0.25"});
  require_rejected<config_error>(fd, merge::mix{not_a_number}, {"nan"});
  require_rejected<config_error>(fd, merge::linear{1.0, 1.0, 1.0}, {"sum to 3"});
  require_rejected<config_error>(
      fd, merge::linear{.a = infinity, .b = 0.0, .c = 0.0, .require_consensus = false}, {"inf"});
  // Without the consensus requirement any finite coefficients are accepted.
  CHECK_NOTHROW(merge::linear{.a = 1.0, .b = 1.0, .c = 1.0, .require_consensus = false}.validate());
  // A rule mutated after construction is re-checked when the trainer reads it.
  std::vector<float> w(2);
  merge::mix m;
  m.update_proportion = 2.0;
  require_throw<config_error>([&] { make_trainer(w, optim::sgd{.lr = 0.1}, m); }, {"got 2"});
}

TEST_CASE("learning rate must be positive and finite") {
  std::vector<float> w(2);
  for (double lr : {0.0, -0.1, not_a_number, infinity}) {
    CAPTURE(lr);
    require_throw<config_error>([&] { make_trainer(w, optim::sgd{.lr = lr}); }, {"learning rate"});
    require_throw<config_error>([&] { make_trainer(w, optim::adamw{.lr = lr}); }, {"learning rate"});
  }
  require_throw<config_error>([&] { make_trainer(w, optim::sgd{.lr = -2.5}); }, {"-2.5"});
  auto tr = make_trainer(w);
  require_throw<config_error>([&] { tr.set_learning_rate(not_a_number); }, {"nan"});
  require_throw<config_error>([&] { tr.set_learning_rate(-1.0); }, {"-1"});
  CHECK(tr.learning_rate() == 0.1);  // unchanged
}

TEST_CASE("other optimizer hyper-parameters") {
  std::vector<float> w(2);
  require_throw<config_error>([&] { make_trainer(w, optim::sgd{.lr = 0.1, .momentum = 1.5}); }, {"momentum", "1.5"});
  require_throw<config_error>([&] { make_trainer(w, optim::sgd{.lr = 0.1, .nesterov = true}); }, {"nesterov"});
  require_throw<config_error>([&] { make_trainer(w, optim::sgd{.lr = 0.1, .weight_decay = -1.0}); }, {"weight_decay"});
  require_throw<config_error>([&] { make_trainer(w, optim::adamw{.beta1 = 1.0}); }, {"beta1", "got 1"});
  require_throw<config_error>([&] { make_trainer(w, optim::adamw{.eps = 0.0}); }, {"eps"});
}

TEST_CASE("buffers of different sizes") {
  std::vector<float> w(10), w2(4);
  auto tr = delayed_averager(make_tensor_list(w, w2), fake_communicator{}, policy::fixed_delay{4, 1},
                             optim::sgd{.lr = 0.1}, merge::mix{0.25});
  std::vector<float> g(10), g2(5);
  require_throw<size_mismatch_error>([&] { tr.step(tensor_list<const float>(g, g2)); },
                                     {"gradients tensor 1 has 5", "parameters tensor 1 has 4"});
  require_throw<size_mismatch_error>([&] { tr.step(g); }, {"gradients has 1 tensors", "parameters has 2"});
  CHECK(tr.steps_taken() == 0);
  CHECK(w == std::vector<float>(10, 0.0f));  // nothing happened

  require_throw<config_error>([&] {
    std::vector<std::vector<float>> none;
    delayed_averager t(make_tensor_list(none), fake_communicator{}, policy::fixed_delay{4, 1},
                       optim::sgd{.lr = 0.1}, merge::mix{0.25});
  }, {"empty"});
}

TEST_CASE("communicator of size 0") {
  require_throw<config_error>([] { comm::inproc_group g(0); }, {"size must be >= 1, got 0"});
  std::vector<float> w(2);
  require_throw<config_error>([&] { make_trainer(w, optim::sgd{.lr = 0.1}, merge::mix{0.25}, policy::fixed_delay{4, 1}, {.size = 0}); },
                              {"communicator has size 0"});
  comm::inproc_group g(2);
  require_throw<config_error>([&] { (void)g.communicator(2); }, {"rank 2"});
}

TEST_CASE("a merge with no average in flight") {
  std::vector<float> w(2), g(2);
  auto tr = make_trainer(w);
  require_throw<state_error>([&] { tr.merge_now(); }, {"step 0", "no average is in flight", "none has been launched"});
  for (int k = 0; k < 5; ++k) tr.step(g);  // launched at 3, merged at 4
  require_throw<state_error>([&] { tr.merge_now(); }, {"step 5", "launched at step 3", "already merged"});
}

TEST_CASE("parameter shapes must agree across ranks") {
  comm::inproc_group group(3);
  std::vector<std::string> messages(3);
  std::thread t[3];
  for (int r = 0; r < 3; ++r) {
    t[r] = std::thread([&, r] {
      std::vector<float> w(r == 2 ? 11 : 10);
      try {
        delayed_averager tr(make_tensor_list(w), group.communicator(r), policy::fixed_delay{4, 1},
                            optim::sgd{.lr = 0.1}, merge::mix{0.25});
      } catch (const size_mismatch_error& e) {
        messages[static_cast<std::size_t>(r)] = e.what();
      }
    });
  }
  for (auto& th : t) th.join();
  for (int r = 0; r < 3; ++r) {
    CAPTURE(messages[static_cast<std::size_t>(r)]);
    CHECK(messages[static_cast<std::size_t>(r)].find("has 11 elements") != std::string::npos);
    CHECK(messages[static_cast<std::size_t>(r)].find("has 10 elements") != std::string::npos);
  }

  // Same total, different split into tensors.
  comm::inproc_group group2(2);
  CHECK_THROWS_AS(comm::run_workers(group2, [](comm::inproc_communicator c) {
                    std::vector<float> a(c.rank() == 0 ? 6 : 4), b(c.rank() == 0 ? 4 : 6);
                    delayed_averager tr(make_tensor_list(a, b), c, policy::fixed_delay{4, 1},
                                        optim::sgd{.lr = 0.1}, merge::mix{0.25});
                  }),
                  size_mismatch_error);
}

TEST_CASE("a communicator timeout fails the step and poisons the trainer") {
  using namespace std::chrono_literals;
  comm::inproc_group group(2, {.timeout = 200ms});
  std::string msg0, after;
  std::thread late([&] {
    // Rank 1 joins the shape check, then never launches its average.
    std::vector<float> w(4), g(4);
    delayed_averager tr(make_tensor_list(w), group.communicator(1), policy::fixed_delay{1, 0},
                        optim::sgd{.lr = 0.1}, merge::mix{0.0});
  });
  std::vector<float> w(4), g(4);
  delayed_averager tr(make_tensor_list(w), group.communicator(0), policy::fixed_delay{1, 0},
                      optim::sgd{.lr = 0.1}, merge::mix{0.0});
  late.join();
  const auto t0 = std::chrono::steady_clock::now();
  try {
    tr.step(g);
  } catch (const timeout_error& e) {
    msg0 = e.what();
  }
  CHECK(std::chrono::steady_clock::now() - t0 < 5s);
  CHECK(msg0.find("rank(s) 1 never joined") != std::string::npos);
  require_throw<state_error>([&] { tr.step(g); }, {"unusable", "never joined"});
}

TEST_CASE("a failing worker releases the others at once") {
  using namespace std::chrono_literals;
  comm::inproc_group group(3, {.timeout = 60s});
  const auto t0 = std::chrono::steady_clock::now();
  require_throw<std::runtime_error>(
      [&] {
        comm::run_workers(group, [](comm::inproc_communicator c) {
          std::vector<float> w(4), g(4);
          delayed_averager tr(make_tensor_list(w), c, policy::fixed_delay{2, 1},
                              optim::sgd{.lr = 0.1}, merge::mix{0.25});
          for (int k = 0; k < 10; ++k) {
            if (c.rank() == 1 && k == 5) throw std::runtime_error("worker 1 ran out of data");
            tr.step(g);
          }
        });
      },
      {"worker 1 ran out of data"});
  CHECK(std::chrono::steady_clock::now() - t0 < 10s);  // far below the 60 s timeout
}
