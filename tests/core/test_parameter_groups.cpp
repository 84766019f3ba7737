// Parameter groups (trainer_options::per_tensor): a per-tensor learning-rate
// scale and weight decay on/off, as torch.optim parameter groups, applied
// inside the one fused pass. Pinned against the double reference simulator
// (whose optimizers take the same settings per element), and checked for
// the identity case, validation and the cross-rank / checkpoint checks.
#include <doctest/doctest.h>

#include <dasgd/dasgd.hpp>

#include <cmath>
#include <sstream>
#include <string>
#include <vector>

#include "support/problems.hpp"
#include "support/reference.hpp"

using namespace dasgd;
using test::vec;

namespace {

const test::least_squares problem(3, 9, 12, 17);

vec start() {
  vec w(9);
  for (std::size_t i = 0; i < w.size(); ++i) w[i] = 0.1 * static_cast<double>(i) - 0.3;
  return w;
}

// Three tensors of 4, 3 and 2 elements (a weight, a "bias", a "norm").
const std::vector<std::size_t> extents = {4, 3, 2};

const std::vector<tensor_options> groups = {
    {.lr_scale = 1.0, .weight_decay = true},
    {.lr_scale = 0.5, .weight_decay = false},
    {.lr_scale = 2.0, .weight_decay = false},
};

/// The same settings per element, for the reference.
test::ref_groups ref_groups_of(const std::vector<tensor_options>& g) {
  test::ref_groups r;
  for (std::size_t t = 0; t < extents.size(); ++t)
    for (std::size_t j = 0; j < extents[t]; ++j) {
      r.lr_scale.push_back(g[t].lr_scale);
      r.decay.push_back(g[t].weight_decay ? 1.0 : 0.0);
    }
  return r;
}

/// problem.workers in-process workers over three tensors; returns each
/// worker's final weights.
template <class T, class Optim, class Merge>
std::vector<vec> train(int steps, policy::fixed_delay pol, Optim optim, Merge merge,
                       const trainer_options& options) {
  comm::inproc_group group(problem.workers);
  std::vector<vec> out(static_cast<std::size_t>(problem.workers));
  comm::run_workers(group, [&](comm::inproc_communicator c) {
    const vec w0 = start();
    std::vector<std::vector<T>> w, g;
    std::size_t at = 0;
    for (const std::size_t n : extents) {
      w.emplace_back(w0.begin() + static_cast<std::ptrdiff_t>(at),
                     w0.begin() + static_cast<std::ptrdiff_t>(at + n));
      g.emplace_back(n);
      at += n;
    }
    trainer_options quiet = options;
    quiet.warning = [](const std::string&) {};  // the average left in flight at the end
    delayed_averager tr(make_tensor_list(w[0], w[1], w[2]), c, pol, optim, merge, quiet);
    const auto grads = tensor_list<const T>(g[0], g[1], g[2]);
    const auto flat = [&] {
      vec f;
      for (const auto& t : w) f.insert(f.end(), t.begin(), t.end());
      return f;
    };
    for (int k = 0; k < steps; ++k) {
      const vec gr = problem.gradient(c.rank(), flat());
      std::size_t i = 0;
      for (auto& t : g)
        for (auto& x : t) x = static_cast<T>(gr[i++]);
      tr.step(grads);
    }
    out[static_cast<std::size_t>(c.rank())] = flat();
  });
  return out;
}

double worst(const std::vector<vec>& a, const std::vector<vec>& b) {
  return test::max_rel_error(a, b);
}

auto grad = [](int i, int, const vec& w) { return problem.gradient(i, w); };

bool contains(const std::string& s, const std::string& n) { return s.find(n) != std::string::npos; }

}  // namespace

TEST_CASE_TEMPLATE("parameter groups match the reference simulator", T, float, double) {
  const double tol = std::is_same_v<T, float> ? 2e-5 : 1e-12;
  const int steps = 29;
  const trainer_options opts{.per_tensor = groups};
  SUBCASE("sgd momentum + weight decay, mix") {
    test::ref_sgd r{.lr = 0.05, .momentum = 0.9, .weight_decay = 0.05};
    r.groups = ref_groups_of(groups);
    const auto ref = test::simulate_dasgd(3, steps, {3, 1, 0.25, 0.75, 0.0}, r,
                                          std::vector<vec>(3, start()), grad);
    const auto out = train<T>(steps, {.tau = 3, .delay = 1},
                              optim::sgd{.lr = 0.05, .momentum = 0.9, .weight_decay = 0.05},
                              merge::mix{0.25}, opts);
    CHECK(worst(out, ref) <= tol);
    // Not vacuous: without the groups the result is another one.
    const auto plain = train<T>(steps, {.tau = 3, .delay = 1},
                                optim::sgd{.lr = 0.05, .momentum = 0.9, .weight_decay = 0.05},
                                merge::mix{0.25}, {});
    CHECK(worst(plain, ref) > 100 * tol);
  }
  SUBCASE("adamw, additive, delay 2") {
    test::ref_adamw r{.lr = 0.01, .beta1 = 0.9, .beta2 = 0.99, .eps = 1e-8, .weight_decay = 0.1};
    r.groups = ref_groups_of(groups);
    const auto ref = test::simulate_dasgd(3, steps, {4, 2, 1.0, 1.0, -1.0}, r,
                                          std::vector<vec>(3, start()), grad);
    const auto out = train<T>(
        steps, {.tau = 4, .delay = 2},
        optim::adamw{.lr = 0.01, .beta1 = 0.9, .beta2 = 0.99, .eps = 1e-8, .weight_decay = 0.1},
        merge::additive{}, opts);
    CHECK(worst(out, ref) <= tol);
  }
}

TEST_CASE("default groups are bit for bit the trainer without groups") {
  const std::vector<tensor_options> defaults(3);
  const auto sgd = optim::sgd{.lr = 0.05, .momentum = 0.9, .weight_decay = 0.05};
  const auto adamw = optim::adamw{.lr = 0.01, .weight_decay = 0.1};
  CHECK(train<float>(13, {}, sgd, merge::mix{}, {.per_tensor = defaults}) ==
        train<float>(13, {}, sgd, merge::mix{}, {}));
  CHECK(train<float>(13, {}, adamw, merge::mix{}, {.per_tensor = defaults}) ==
        train<float>(13, {}, adamw, merge::mix{}, {}));
}

TEST_CASE("a tensor with lr_scale 0 and no decay does not move locally") {
  std::vector<float> w(5, 1.0f), b(3, 2.0f), gw(5, 0.5f), gb(3, 0.5f);
  comm::inproc_group group(1);
  delayed_averager tr(make_tensor_list(w, b), group.communicator(0), policy::synchronous(),
                      optim::sgd{.lr = 0.1, .momentum = 0.9, .weight_decay = 0.1}, merge::mix{0.0},
                      trainer_options{.per_tensor = {{}, {.lr_scale = 0.0, .weight_decay = false}}});
  for (int k = 0; k < 5; ++k) tr.step(tensor_list<const float>(gw, gb));
  CHECK(b == std::vector<float>(3, 2.0f));
  CHECK(w[0] < 1.0f);
}

TEST_CASE("bad parameter groups are configuration errors naming the value") {
  std::vector<float> w(4, 1.0f), b(2, 1.0f);
  comm::inproc_group group(1);
  const auto make = [&](std::vector<tensor_options> pt) {
    delayed_averager tr(make_tensor_list(w, b), group.communicator(0), policy::fixed_delay{},
                        optim::sgd{.lr = 0.1}, merge::mix{}, trainer_options{.per_tensor = pt});
  };
  CHECK_THROWS_WITH_AS(make({{}}), doctest::Contains("per_tensor has 1 entries but the parameter list has 2"),
                       config_error);
  CHECK_THROWS_WITH_AS(make({{}, {.lr_scale = -1.0}}), doctest::Contains("per_tensor[1].lr_scale is -1"),
                       config_error);
  CHECK_THROWS_WITH_AS(make({{.lr_scale = std::nan("")}, {}}),
                       doctest::Contains("per_tensor[0].lr_scale is nan"), config_error);
}

TEST_CASE("ranks with different parameter groups fail at construction, naming the setting") {
  comm::inproc_group group(2);
  std::vector<std::string> msgs(2);
  comm::run_workers(group, [&](comm::inproc_communicator c) {
    std::vector<float> w(4, 1.0f), b(2, 1.0f);
    std::vector<tensor_options> pt(2);
    if (c.rank() == 1) pt[1].weight_decay = false;
    try {
      delayed_averager tr(make_tensor_list(w, b), c, policy::fixed_delay{}, optim::sgd{.lr = 0.1},
                          merge::mix{}, trainer_options{.per_tensor = pt});
    } catch (const config_error& e) {
      msgs[static_cast<std::size_t>(c.rank())] = e.what();
    }
  });
  for (const auto& m : msgs) {
    CAPTURE(m);
    CHECK(contains(m, "per_tensor"));
  }
}

TEST_CASE("a checkpoint written with other parameter groups is rejected unless allowed") {
  std::vector<float> w(4, 1.0f), b(2, 1.0f), gw(4, 0.5f), gb(2, 0.5f);
  comm::inproc_group group(1);
  std::stringstream file;
  {
    delayed_averager tr(make_tensor_list(w, b), group.communicator(0), policy::fixed_delay{},
                        optim::sgd{.lr = 0.1}, merge::mix{});
    for (int k = 0; k < 2; ++k) tr.step(tensor_list<const float>(gw, gb));
    tr.save(file);
  }
  delayed_averager other(make_tensor_list(w, b), group.communicator(0), policy::fixed_delay{},
                         optim::sgd{.lr = 0.1}, merge::mix{},
                         trainer_options{.per_tensor = {{}, {.weight_decay = false}}});
  const std::string blob = file.str();
  std::istringstream in(blob);
  CHECK_THROWS_WITH_AS(other.load(in), doctest::Contains("per_tensor"), checkpoint_error);
  std::istringstream again(blob);
  other.load(again, {.allow_config_change = true});
  CHECK(other.steps_taken() == 2);
}
