// delayed_averager over mpi_communicator with real ranks: the equivalences
// of docs/design.md section 1 against the naive double-precision simulator, the
// same training through the in-process communicator, shape mismatches at
// construction and a timeout surfacing through step().
#include "mpi_test_support.hpp"
#include "support/reference.hpp"

#include <dasgd/comm/inproc.hpp>
#include <dasgd/comm/mpi.hpp>
#include <dasgd/dasgd.hpp>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstddef>
#include <string>
#include <thread>
#include <vector>

using namespace std::chrono_literals;
using dasgd::comm::mpi_communicator;
using dasgd::comm::mpi_progress;
using dasgd::test::all_progress_modes;
using dasgd::test::contains;
using dasgd::test::message_of;
using dasgd::test::name_of;
using dasgd::test::test_options;
using dasgd::test::vec;
using dasgd::test::world_rank;
using dasgd::test::world_size;

namespace {

constexpr int steps = 24;
const std::vector<std::size_t> split = {11, 26};  // two tensors, 37 parameters

std::size_t dimension() { return split[0] + split[1]; }

vec initial_weights() {
  vec w(dimension());
  for (std::size_t j = 0; j < w.size(); ++j) w[j] = 0.5 * std::sin(1.3 * double(j));
  return w;
}

/// Worker i's gradient at step k: a noisy quadratic pulling towards its own
/// target, so that workers disagree and the averaging matters.
vec gradient(int i, int k, const vec& w) {
  vec g(w.size());
  for (std::size_t j = 0; j < w.size(); ++j) {
    const double curvature = 0.5 + 0.1 * double((static_cast<std::size_t>(i) + j) % 5);
    const double target = std::cos(0.3 * double(j) + i);
    const double noise = 0.05 * std::sin(1.7 * k + 0.9 * double(j) + 2.3 * i);
    g[j] = curvature * (w[j] - target) + noise;
  }
  return g;
}

struct schedule {
  std::int64_t tau;
  std::int64_t delay;
};

/// Trains this worker (rank comm.rank()) for `steps` steps; returns its weights.
template <class T, class Comm, class Optim, class Merge>
vec train(Comm comm, schedule s, Optim optim, Merge merge) {
  const int rank = comm.rank();
  const vec w0 = initial_weights();
  std::vector<std::vector<T>> w(split.size()), g(split.size());
  for (std::size_t t = 0, off = 0; t < split.size(); off += split[t], ++t) {
    w[t].resize(split[t]);
    g[t].resize(split[t]);
    for (std::size_t j = 0; j < split[t]; ++j) w[t][j] = static_cast<T>(w0[off + j]);
  }
  dasgd::delayed_averager trainer(dasgd::make_tensor_list(w), std::move(comm),
                                  dasgd::policy::fixed_delay{s.tau, s.delay}, optim, merge);
  dasgd::tensor_list<const T> grads;
  for (auto& t : g) grads.add(t.data(), t.size());
  auto flat = [&] {
    vec out;
    for (auto& t : w) out.insert(out.end(), t.begin(), t.end());
    return out;
  };
  for (int k = 0; k < steps; ++k) {
    const vec gk = gradient(rank, k, flat());
    for (std::size_t t = 0, off = 0; t < split.size(); off += split[t], ++t)
      for (std::size_t j = 0; j < split[t]; ++j) g[t][j] = static_cast<T>(gk[off + j]);
    trainer.step(grads);
  }
  return flat();
}

dasgd::test::ref_sgd reference_of(const dasgd::optim::sgd& o) {
  return {o.lr, o.momentum, o.dampening, o.weight_decay, o.nesterov};
}
dasgd::test::ref_adamw reference_of(const dasgd::optim::adamw& o) {
  return {o.lr, o.beta1, o.beta2, o.eps, o.weight_decay};
}
dasgd::test::ref_schedule reference_of(schedule s, const dasgd::merge::mix& m) {
  return {int(s.tau), int(s.delay), m.update_proportion, 1.0 - m.update_proportion, 0.0};
}
dasgd::test::ref_schedule reference_of(schedule s, const dasgd::merge::additive&) {
  return {int(s.tau), int(s.delay), 1.0, 1.0, -1.0};
}

template <class T>
double tolerance() {
  return std::is_same_v<T, float> ? 1e-5 : 1e-12;
}

/// Largest error relative to max(|want|, floor). The weights are O(1); for
/// float storage the floor is 1, because rounding at O(1) intermediates
/// (w - lr * g, Adam's m / sqrt(v)) leaves ~1e-6 absolute error on weights
/// that happen to end near zero. A wrong merge or scale is off by ~1e-2.
template <class T>
double weights_error(const vec& got, const vec& want) {
  return dasgd::test::max_rel_error(got, want, std::is_same_v<T, float> ? 1.0 : 1e-3);
}

/// The run on this rank vs the reference simulator's worker of this rank.
template <class T, class Optim, class Merge>
void check_against_reference(mpi_progress mode, schedule s, Optim optim, Merge merge) {
  const int n = world_size(), me = world_rank();
  const vec got = train<T>(mpi_communicator(MPI_COMM_WORLD, test_options(mode)), s, optim, merge);
  const auto want = dasgd::test::simulate_dasgd(
      n, steps, reference_of(s, merge), reference_of(optim),
      std::vector<vec>(static_cast<std::size_t>(n), initial_weights()), gradient);
  const double err = weights_error<T>(got, want[static_cast<std::size_t>(me)]);
  CAPTURE(err);
  CHECK(err <= tolerance<T>());
}

}  // namespace

TEST_CASE_TEMPLATE("tau=1, d=0, plain SGD, mix p=0 is synchronous data-parallel SGD", T, float, double) {
  const int n = world_size();
  const dasgd::optim::sgd optim{.lr = 0.05};
  // Data-parallel SGD: one set of weights, stepped with the mean gradient.
  vec want = initial_weights();
  for (int k = 0; k < steps; ++k) {
    vec mean(want.size(), 0.0);
    for (int i = 0; i < n; ++i) {
      const vec g = gradient(i, k, want);
      for (std::size_t j = 0; j < g.size(); ++j) mean[j] += g[j] / n;
    }
    for (std::size_t j = 0; j < want.size(); ++j) want[j] -= optim.lr * mean[j];
  }
  for (auto mode : all_progress_modes) {
    CAPTURE(name_of(mode));
    const vec got = train<T>(mpi_communicator(MPI_COMM_WORLD, test_options(mode)), {1, 0}, optim,
                             dasgd::merge::mix{0.0});
    const double err = weights_error<T>(got, want);
    CAPTURE(err);
    CHECK(err <= (std::is_same_v<T, float> ? 1e-6 : 1e-12));
  }
}

TEST_CASE_TEMPLATE("d=0 is blocking Local SGD", T, float, double) {
  for (auto mode : all_progress_modes) {
    CAPTURE(name_of(mode));
    check_against_reference<T>(mode, {4, 0}, dasgd::optim::sgd{.lr = 0.05, .momentum = 0.9},
                               dasgd::merge::mix{0.25});
  }
}

TEST_CASE_TEMPLATE("DaSGD tau=4, d=1 matches the reference simulator", T, float, double) {
  const schedule s{4, 1};
  const dasgd::optim::sgd momentum{.lr = 0.05, .momentum = 0.9};
  const dasgd::optim::adamw adamw{.lr = 0.01, .weight_decay = 0.01};
  auto each_mode = [](auto&& check) {
    for (auto mode : all_progress_modes) {
      CAPTURE(name_of(mode));
      check(mode);
    }
  };
  SUBCASE("SGD momentum, mix p=0.25") {
    each_mode([&](mpi_progress m) { check_against_reference<T>(m, s, momentum, dasgd::merge::mix{0.25}); });
  }
  SUBCASE("SGD momentum, additive") {
    each_mode([&](mpi_progress m) { check_against_reference<T>(m, s, momentum, dasgd::merge::additive{}); });
  }
  SUBCASE("AdamW, mix p=0.25") {
    each_mode([&](mpi_progress m) { check_against_reference<T>(m, s, adamw, dasgd::merge::mix{0.25}); });
  }
  SUBCASE("AdamW, additive") {
    each_mode([&](mpi_progress m) { check_against_reference<T>(m, s, adamw, dasgd::merge::additive{}); });
  }
}

TEST_CASE_TEMPLATE("the same training gives the same weights over MPI and in-process", T, float, double) {
  const int n = world_size(), me = world_rank();
  const schedule s{4, 1};
  const dasgd::optim::sgd optim{.lr = 0.05, .momentum = 0.9};
  const dasgd::merge::mix merge{0.25};
  // In-process: `n` worker threads in this process, one per MPI rank.
  std::vector<vec> inproc(static_cast<std::size_t>(n));
  dasgd::comm::inproc_group group(n);
  dasgd::comm::run_workers(group, [&](dasgd::comm::inproc_communicator c) {
    const auto r = static_cast<std::size_t>(c.rank());
    inproc[r] = train<T>(c, s, optim, merge);
  });
  for (auto mode : all_progress_modes) {
    CAPTURE(name_of(mode));
    const vec via_mpi = train<T>(mpi_communicator(MPI_COMM_WORLD, test_options(mode)), s, optim, merge);
    // The sums run in a different order (MPI: in T; in-process: in double).
    const double err = weights_error<T>(via_mpi, inproc[static_cast<std::size_t>(me)]);
    CAPTURE(err);
    CHECK(err <= (std::is_same_v<T, float> ? 1e-6 : 1e-13));
  }
}

TEST_CASE("ranks with different parameter counts fail at construction, naming both sizes") {
  if (world_size() < 2) return;
  for (auto mode : all_progress_modes) {
    CAPTURE(name_of(mode));
    const bool odd_one = world_rank() == world_size() - 1;
    std::vector<float> w(odd_one ? 101 : 100);
    const auto msg = message_of<dasgd::size_mismatch_error>([&] {
      dasgd::delayed_averager t(dasgd::make_tensor_list(w), mpi_communicator(MPI_COMM_WORLD, test_options(mode)),
                                dasgd::policy::fixed_delay{4, 1}, dasgd::optim::sgd{}, dasgd::merge::mix{0.25});
    });
    CAPTURE(msg);
    CHECK(contains(msg, "parameter sizes differ across ranks"));
    CHECK(contains(msg, "100 elements"));
    CHECK(contains(msg, "101 elements"));
  }
}

TEST_CASE("ranks with the same total but different tensor splits fail at construction") {
  if (world_size() < 2) return;
  const bool odd_one = world_rank() == world_size() - 1;
  std::vector<double> a(odd_one ? 40 : 50), b(odd_one ? 60 : 50);
  const auto msg = message_of<dasgd::size_mismatch_error>([&] {
    dasgd::delayed_averager t(dasgd::make_tensor_list(a, b),
                              mpi_communicator(MPI_COMM_WORLD, test_options(mpi_progress::thread)),
                              dasgd::policy::fixed_delay{4, 1}, dasgd::optim::sgd{}, dasgd::merge::mix{0.25});
  });
  CAPTURE(msg);
  CHECK(contains(msg, "per-tensor sizes"));
  CHECK(contains(msg, "100 elements in 2 tensors"));
}

TEST_CASE("a rank that stalls makes the others' step throw timeout_error; the trainer then refuses to go on") {
  if (world_size() < 2) return;
  const bool late = world_rank() == 0;
  std::vector<float> w(1000, 1.0f), g(1000, 0.5f);
  // The late rank itself waits long enough for its (late) average, however
  // slow the machine; the others give up after 300 ms.
  dasgd::delayed_averager trainer(
      dasgd::make_tensor_list(w),
      mpi_communicator(MPI_COMM_WORLD, test_options(mpi_progress::thread, late ? 30000ms : 300ms)),
      dasgd::policy::synchronous(), dasgd::optim::sgd{.lr = 0.1}, dasgd::merge::mix{0.0});
  if (late) {
    std::this_thread::sleep_for(1200ms);
    trainer.step(g);  // the others' averages were dropped but still took part
    CHECK(w[0] == doctest::Approx(1.0 - 0.1 * 0.5));
  } else {
    const auto msg = message_of<dasgd::timeout_error>([&] { trainer.step(g); });
    CHECK(contains(msg, "did not complete within the timeout of 300 ms"));
    CHECK_THROWS_AS(trainer.step(g), dasgd::state_error);
  }
  // Keep every trainer (and so its communicator) alive until the late rank's
  // collective is through everywhere: the ranks that timed out still drive
  // their (abandoned) collective, and one left in flight at shutdown would
  // end the job in MPI_Abort at finalize.
  MPI_Barrier(MPI_COMM_WORLD);
  const auto until = std::chrono::steady_clock::now() + 30s;
  while (trainer.communicator().collectives_in_flight() != 0 &&
         std::chrono::steady_clock::now() < until)
    std::this_thread::sleep_for(1ms);
  CHECK(trainer.communicator().collectives_in_flight() == 0);
}

TEST_CASE("one rank's synchronize() against the others' step average fails every rank") {
  if (world_size() < 2) return;
  std::vector<float> w(100, 1.0f + static_cast<float>(world_rank())), g(100, 0.5f);
  dasgd::delayed_averager trainer(dasgd::make_tensor_list(w),
                                  mpi_communicator(MPI_COMM_WORLD, test_options(mpi_progress::thread)),
                                  dasgd::policy::fixed_delay{.tau = 2, .delay = 1},
                                  dasgd::optim::sgd{.lr = 0.1}, dasgd::merge::mix{});
  trainer.step(g);
  const auto msg = message_of<dasgd::comm_error>([&] {
    if (world_rank() == 1) {
      trainer.synchronize();
    } else {
      trainer.step(g);
      trainer.step(g);
    }
  });
  CAPTURE(msg);
  CHECK(contains(msg, "collectives differ across ranks"));
  CHECK(contains(msg, "synchronize"));
}

TEST_CASE("a rank with another delay or merge rule fails at construction on every rank") {
  if (world_size() < 2) return;
  std::vector<float> w(10, 1.0f);
  const auto msg = message_of<dasgd::config_error>([&] {
    dasgd::delayed_averager trainer(dasgd::make_tensor_list(w), mpi_communicator(),
                                    dasgd::policy::fixed_delay{.tau = 4, .delay = world_rank() == 1 ? 2 : 1},
                                    dasgd::optim::sgd{.lr = 0.1}, dasgd::merge::mix{});
  });
  CAPTURE(msg);
  CHECK(contains(msg, "trainer configuration differs across ranks"));
  CHECK(contains(msg, world_rank() == 1 ? "delay=2" : "delay=1"));
}

TEST_CASE("broadcast_parameters makes every rank start from the root's weights") {
  std::vector<double> w(333), g(333, 0.25);
  for (std::size_t i = 0; i < w.size(); ++i) w[i] = std::cos(double(i) * (1.0 + world_rank()));
  dasgd::delayed_averager trainer(dasgd::make_tensor_list(w), mpi_communicator(),
                                  dasgd::policy::fixed_delay{}, dasgd::optim::sgd{.lr = 0.1},
                                  dasgd::merge::mix{});
  const int root = world_size() - 1;
  trainer.broadcast_parameters(root);
  for (std::size_t i = 0; i < w.size(); ++i) CHECK(w[i] == std::cos(double(i) * (1.0 + root)));
}
