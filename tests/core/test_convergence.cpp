// Convergence: 4 in-process workers fit least squares on heterogeneous
// shards and reach the closed-form optimum of the pooled problem.
#include <doctest/doctest.h>

#include <dasgd/dasgd.hpp>

#include <string>

#include "support/problems.hpp"

using namespace dasgd;
using test::vec;

namespace {

template <class Policy, class Merge>
vec fit(const test::least_squares& p, Policy policy, Merge merge, int steps, double lr0) {
  comm::inproc_group group(p.workers);
  vec result;
  comm::run_workers(group, [&](comm::inproc_communicator c) {
    std::vector<float> w(static_cast<std::size_t>(p.dim), 0.0f), g(w.size());
    delayed_averager tr(make_tensor_list(w), c, policy, optim::sgd{.lr = lr0, .momentum = 0.9},
                        merge);
    for (int k = 0; k < steps; ++k) {
      // 1/t decay: the Local SGD fixed point drifts from the optimum by
      // O(lr) on heterogeneous shards, so the step size must shrink.
      tr.set_learning_rate(lr0 / (1.0 + k / 50.0));
      const vec gd = p.gradient(c.rank(), vec(w.begin(), w.end()));
      for (std::size_t j = 0; j < g.size(); ++j) g[j] = static_cast<float>(gd[j]);
      tr.step(g);
    }
    tr.synchronize();
    if (c.rank() == 0) result.assign(w.begin(), w.end());
  });
  return result;
}

}  // namespace

TEST_CASE("DaSGD converges to the least-squares optimum") {
  const test::least_squares p(4, 20, 100, 99, /*heterogeneity=*/1.0);
  const vec opt = p.optimum();
  const double best = p.loss(opt);
  const vec w0(static_cast<std::size_t>(p.dim), 0.0);
  const double start_gap = p.loss(w0) - best;

  struct config {
    const char* name;
    int tau, d;
    bool additive;
  };
  for (const config c : {config{"sync", 1, 0, false}, config{"local sgd", 4, 0, false},
                         config{"dasgd mix", 4, 1, false}, config{"dasgd additive", 4, 2, true}}) {
    const std::string name = c.name;
    CAPTURE(name);
    const vec w = c.additive ? fit(p, policy::fixed_delay{c.tau, c.d}, merge::additive{}, 3000, 0.05)
                             : fit(p, policy::fixed_delay{c.tau, c.d},
                                   merge::mix{c.tau == 1 ? 0.0 : 0.25}, 3000, 0.05);
    // Stated tolerances: weights within 0.2% of the optimum (relative 2-norm)
    // and the objective within 1e-6 of the start-to-optimum gap.
    CHECK(test::norm_rel_error(w, opt) < 2e-3);
    CHECK((p.loss(w) - best) / start_gap < 1e-6);
  }
}
