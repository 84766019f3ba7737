// The special cases of docs/design.md section 1 and the general timeline, with 4
// in-process workers, against independent double-precision references.
#include <doctest/doctest.h>

#include <dasgd/dasgd.hpp>

#include "support/problems.hpp"
#include "support/reference.hpp"

using namespace dasgd;
using test::vec;

namespace {
const test::least_squares problem(4, 9, 16, 1234);
vec start() { return vec(9, 0.1); }
double worst(const std::vector<vec>& a, const std::vector<vec>& b, double floor = 1e-2) {
  return test::max_rel_error(a, b, floor);
}
}  // namespace

TEST_CASE_TEMPLATE("tau=1, d=0, plain SGD, p=0 is synchronous data-parallel SGD", T, float, double) {
  const int steps = 60;
  const double lr = 0.1;
  // Synchronous SGD: one model, the averaged gradient of all workers.
  vec w = start();
  for (int k = 0; k < steps; ++k) {
    vec g(w.size(), 0.0);
    for (int i = 0; i < problem.workers; ++i) {
      const vec gi = problem.gradient(i, w);
      for (std::size_t j = 0; j < w.size(); ++j) g[j] += gi[j] / problem.workers;
    }
    for (std::size_t j = 0; j < w.size(); ++j) w[j] -= lr * g[j];
  }
  // Relative error of the weight vector (2-norm); float storage rounds every
  // step, double storage is exact to a few ulps.
  const double tol = std::is_same_v<T, float> ? 1e-6 : 1e-13;
  SUBCASE("mix p = 0") {
    const auto out = test::train_inproc<T>(problem, steps, policy::fixed_delay{1, 0},
                                           optim::sgd{.lr = lr}, merge::mix{0.0}, start());
    for (const auto& wi : out) CHECK(test::norm_rel_error(wi, w) <= tol);
    CHECK(out[0] == out[3]);  // replicas identical, bit for bit
  }
  SUBCASE("additive correction") {
    const auto out = test::train_inproc<T>(problem, steps, policy::synchronous(),
                                           optim::sgd{.lr = lr}, merge::additive{}, start());
    for (const auto& wi : out) CHECK(test::norm_rel_error(wi, w) <= tol);
    CHECK(out[0] == out[3]);
  }
}

TEST_CASE_TEMPLATE("d = 0 is blocking Local SGD", T, float, double) {
  // Textbook Local SGD: tau local steps, then every replica := the average.
  const int steps = 40, tau = 4;
  const double lr = 0.05;
  std::vector<vec> w(4, start());
  for (int k = 0; k < steps; ++k) {
    for (int i = 0; i < 4; ++i) {
      const vec g = problem.gradient(i, w[static_cast<std::size_t>(i)]);
      for (std::size_t j = 0; j < g.size(); ++j) w[static_cast<std::size_t>(i)][j] -= lr * g[j];
    }
    if (k % tau == tau - 1) {
      vec avg(w[0].size(), 0.0);
      for (const auto& wi : w)
        for (std::size_t j = 0; j < avg.size(); ++j) avg[j] += wi[j] / 4;
      for (auto& wi : w) wi = avg;
    }
  }
  const auto out = test::train_inproc<T>(problem, steps, policy::fixed_delay{tau, 0},
                                         optim::sgd{.lr = lr}, merge::mix{0.0}, start());
  CHECK(worst(out, w) <= (std::is_same_v<T, float> ? 1e-6 : 1e-13));
}

TEST_CASE_TEMPLATE("DaSGD matches the reference simulator", T, float, double) {
  const double tol = std::is_same_v<T, float> ? 2e-5 : 1e-12;
  const int steps = 37;  // ends inside a round with an average in flight
  auto grad = [](int i, int, const vec& w) { return problem.gradient(i, w); };
  struct sched {
    int tau, d;
  };
  for (const sched s : {sched{4, 1}, sched{4, 3}, sched{3, 2}, sched{2, 1}, sched{4, 0}}) {
    CAPTURE(s.tau);
    CAPTURE(s.d);
    const policy::fixed_delay pol{s.tau, s.d};
    SUBCASE("sgd momentum, mix p = 0.25") {
      const auto ref = test::simulate_dasgd(4, steps, {s.tau, s.d, 0.25, 0.75, 0.0},
                                            test::ref_sgd{.lr = 0.05, .momentum = 0.9}, std::vector<vec>(4, start()), grad);
      const auto out = test::train_inproc<T>(problem, steps, pol, optim::sgd{.lr = 0.05, .momentum = 0.9},
                                             merge::mix{0.25}, start());
      CHECK(worst(out, ref) <= tol);
    }
    SUBCASE("nesterov with weight decay, additive") {
      const test::ref_sgd r{.lr = 0.03, .momentum = 0.8, .weight_decay = 1e-2, .nesterov = true};
      const auto ref = test::simulate_dasgd(4, steps, {s.tau, s.d, 1.0, 1.0, -1.0}, r,
                                            std::vector<vec>(4, start()), grad);
      const auto out = test::train_inproc<T>(
          problem, steps, pol,
          optim::sgd{.lr = 0.03, .momentum = 0.8, .weight_decay = 1e-2, .nesterov = true},
          merge::additive{}, start());
      CHECK(worst(out, ref) <= tol);
    }
    SUBCASE("adamw, general linear merge") {
      const test::ref_adamw r{.lr = 0.01, .beta1 = 0.9, .beta2 = 0.99, .eps = 1e-8, .weight_decay = 0.01};
      const auto ref = test::simulate_dasgd(4, steps, {s.tau, s.d, 0.5, 0.7, -0.2}, r,
                                            std::vector<vec>(4, start()), grad);
      const auto out = test::train_inproc<T>(
          problem, steps, pol,
          optim::adamw{.lr = 0.01, .beta1 = 0.9, .beta2 = 0.99, .eps = 1e-8, .weight_decay = 0.01},
          merge::linear{0.5, 0.7, -0.2}, start());
      CHECK(worst(out, ref) <= tol * 5);  // Adam divides by sqrt(v): a few more roundings
    }
  }
}

TEST_CASE("in-process results do not depend on thread timing") {
  const auto a = test::train_inproc<float>(problem, 30, policy::fixed_delay{4, 2},
                                           optim::sgd{.lr = 0.05, .momentum = 0.9}, merge::mix{0.25}, start());
  for (int rep = 0; rep < 5; ++rep) {
    const auto b = test::train_inproc<float>(problem, 30, policy::fixed_delay{4, 2},
                                             optim::sgd{.lr = 0.05, .momentum = 0.9}, merge::mix{0.25}, start());
    CHECK(a == b);  // bitwise
  }
}
