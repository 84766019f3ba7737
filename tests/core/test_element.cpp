// The fused element math (host backend) against the naive double reference,
// for every optimizer x stage set x merge rule x precision.
#include <doctest/doctest.h>

#include <dasgd/dasgd.hpp>

#include <random>
#include <string>
#include <variant>
#include <vector>

#include "support/reference.hpp"

namespace {

using namespace dasgd;
using test::vec;

struct case_sgd {
  const char* name;
  optim::sgd lib;
  test::ref_sgd ref;
};
struct case_adamw {
  const char* name;
  optim::adamw lib;
  test::ref_adamw ref;
};
using optimizer_case = std::variant<case_sgd, case_adamw>;

std::vector<optimizer_case> optimizer_cases() {
  return {
      case_sgd{"sgd", {.lr = 0.1}, {.lr = 0.1}},
      case_sgd{"sgd+wd", {.lr = 0.05, .weight_decay = 0.01}, {.lr = 0.05, .weight_decay = 0.01}},
      case_sgd{"momentum", {.lr = 0.1, .momentum = 0.9, .dampening = 0.1},
               {.lr = 0.1, .momentum = 0.9, .dampening = 0.1}},
      case_sgd{"nesterov+wd", {.lr = 0.1, .momentum = 0.8, .weight_decay = 1e-3, .nesterov = true},
               {.lr = 0.1, .momentum = 0.8, .weight_decay = 1e-3, .nesterov = true}},
      case_adamw{"adamw", {.lr = 1e-2, .beta1 = 0.9, .beta2 = 0.99, .eps = 1e-6, .weight_decay = 0.1},
                 {.lr = 1e-2, .beta1 = 0.9, .beta2 = 0.99, .eps = 1e-6, .weight_decay = 0.1}},
  };
}

struct stage_case {
  const char* name;
  kernels::stage set;
};

const stage_case stage_cases[] = {
    {"plain", kernels::plain_step},        {"step+snapshot", kernels::step_and_snapshot},
    {"step+mix", kernels::step_and_mix},   {"step+correct", kernels::step_and_correct},
    {"mix only", kernels::mix_only},       {"correct only", kernels::correct_only},
    {"snapshot only", kernels::snapshot_only},
};

const merge_coefficients merge_cases[] = {
    merge::mix{0.25}.coefficients(),
    merge::additive{}.coefficients(),
    merge::linear{0.5, 0.7, -0.2}.coefficients(),
    merge::mix{0.0}.coefficients(),
};

template <kernels::stage S, class T, class Optim>
void run_host(const Optim& opt, std::int64_t k, std::vector<T>& w, const std::vector<T>& g,
              std::vector<std::vector<typename default_compute<T>::type>>& state,
              std::vector<T>& snap, const std::vector<T>& avg, const merge_coefficients& mc) {
  using C = default_compute_t<T>;
  tensor_list<T> wl;
  wl.add(w.data(), w.size());
  tensor_list<const T> gl;
  gl.add(g.data(), g.size());
  const std::size_t off[1] = {0};
  pass_args<T, C, host_space> a;
  a.weights = &wl;
  a.grads = &gl;
  a.offsets = off;
  for (std::size_t s = 0; s < state.size(); ++s) a.state[s] = state[s].data();
  a.snapshot = snap.data();
  a.average = avg.data();
  a.merge = {C(mc.a), C(mc.b), C(mc.c)};
  host_backend be;
  if constexpr (has(S, kernels::stage::local_step))
    opt.template visit_element<C>(k, [&](const auto& e) { be.run<S>(a, e); });
  else
    be.run<S>(a, kernels::no_step_element<C>{});
}

template <class T, class Optim>
void dispatch(kernels::stage s, const Optim& opt, std::int64_t k, std::vector<T>& w,
              const std::vector<T>& g, std::vector<std::vector<default_compute_t<T>>>& state,
              std::vector<T>& snap, const std::vector<T>& avg, const merge_coefficients& mc) {
  using namespace kernels;
  switch (static_cast<unsigned>(s)) {
    case static_cast<unsigned>(plain_step): return run_host<plain_step>(opt, k, w, g, state, snap, avg, mc);
    case static_cast<unsigned>(step_and_snapshot): return run_host<step_and_snapshot>(opt, k, w, g, state, snap, avg, mc);
    case static_cast<unsigned>(step_and_mix): return run_host<step_and_mix>(opt, k, w, g, state, snap, avg, mc);
    case static_cast<unsigned>(step_and_correct): return run_host<step_and_correct>(opt, k, w, g, state, snap, avg, mc);
    case static_cast<unsigned>(mix_only): return run_host<mix_only>(opt, k, w, g, state, snap, avg, mc);
    case static_cast<unsigned>(correct_only): return run_host<correct_only>(opt, k, w, g, state, snap, avg, mc);
    case static_cast<unsigned>(snapshot_only): return run_host<snapshot_only>(opt, k, w, g, state, snap, avg, mc);
    default: FAIL("unknown stage set");
  }
}

}  // namespace

TEST_CASE_TEMPLATE("fused element matches the naive reference", T, float, double) {
  // One rounding of each operation in compute precision, a handful of them.
  const double tol = std::is_same_v<T, float> ? 2e-6 : 1e-14;
  constexpr std::size_t n = 37;  // odd: no accidental vector-width multiple
  std::mt19937 rng(42);
  std::normal_distribution<double> nd;
  auto randv = [&](double scale) {
    vec v(n);
    for (auto& x : v) x = scale * nd(rng);
    return v;
  };

  for (const auto& oc : optimizer_cases()) {
    for (const auto& sc : stage_cases) {
      for (const auto& mc : merge_cases) {
        for (std::int64_t k : {0, 3}) {
          const vec w0 = randv(1.0), g0 = randv(0.5), snap0 = randv(1.0), avg0 = randv(1.0);
          vec m0 = randv(0.1), v0 = randv(0.01);
          for (auto& x : v0) x = std::abs(x);  // second moments are non-negative

          // Library, storage T, starting from the T-rounded inputs.
          auto cast = [](const vec& v) { return std::vector<T>(v.begin(), v.end()); };
          auto back = [](const std::vector<T>& v) { return vec(v.begin(), v.end()); };
          std::vector<T> w = cast(w0), g = cast(g0), snap = cast(snap0), avg = cast(avg0);
          std::vector<std::vector<T>> state;

          // Reference, in double, from the same rounded inputs.
          vec rw = back(w), rsnap = back(snap);
          const vec rg = back(g), ravg = back(avg);
          test::ref_state rs;
          rs.t = k;
          std::string label;
          std::visit(
              [&](const auto& c) {
                label = c.name;
                state.resize(c.lib.state_count());
                if (!state.empty()) state[0] = cast(m0);
                if (state.size() > 1) state[1] = cast(v0);
                rs.m = state.empty() ? vec(n, 0.0) : back(state[0]);
                rs.v = state.size() > 1 ? back(state[1]) : vec(n, 0.0);
                dispatch<T>(sc.set, c.lib, k, w, g, state, snap, avg, mc);
                if (has(sc.set, kernels::stage::local_step)) test::ref_step(c.ref, rw, rg, rs);
              },
              oc);
          if (has(sc.set, kernels::stage::merge)) {
            for (std::size_t i = 0; i < n; ++i)
              rw[i] = mc.a * rw[i] + mc.b * ravg[i] +
                      (has(sc.set, kernels::stage::merge_snapshot) ? mc.c * rsnap[i] : 0.0);
          }
          if (has(sc.set, kernels::stage::write_snapshot)) rsnap = rw;

          CAPTURE(label);
          CAPTURE(sc.name);
          CAPTURE(mc.a);
          CAPTURE(mc.b);
          CAPTURE(mc.c);
          CAPTURE(k);
          CHECK(test::max_rel_error(back(w), rw, 1.0) <= tol);
          CHECK(test::max_rel_error(back(snap), rsnap, 1.0) <= tol);
          if (has(sc.set, kernels::stage::local_step) && !state.empty())
            CHECK(test::max_rel_error(back(state[0]), rs.m, 1.0) <= tol);
          if (has(sc.set, kernels::stage::local_step) && state.size() > 1)
            CHECK(test::max_rel_error(back(state[1]), rs.v, 1e-3) <= tol * 10);
          if (!has(sc.set, kernels::stage::local_step) && !state.empty())
            CHECK(back(state[0]) == back(cast(m0)));  // untouched without a step
        }
      }
    }
  }
}

TEST_CASE("stages that do not write a stream leave it untouched") {
  std::vector<float> w(19, 1.5f), g(19, 0.25f), snap(19, 7.0f), avg(19, 9.0f);
  std::vector<std::vector<float>> state;
  const auto mc = merge::mix{0.5}.coefficients();
  dispatch<float>(kernels::plain_step, optim::sgd{.lr = 1.0}, 0, w, g, state, snap, avg, mc);
  CHECK(w[0] == doctest::Approx(1.25));
  CHECK(snap == std::vector<float>(19, 7.0f));
  CHECK(avg == std::vector<float>(19, 9.0f));
  dispatch<float>(kernels::snapshot_only, optim::sgd{.lr = 1.0}, 0, w, g, state, snap, avg, mc);
  CHECK(snap == std::vector<float>(19, 1.25f));
  CHECK(w == std::vector<float>(19, 1.25f));
  dispatch<float>(kernels::mix_only, optim::sgd{.lr = 1.0}, 0, w, g, state, snap, avg, mc);
  CHECK(w == std::vector<float>(19, 0.5f * 1.25f + 0.5f * 9.0f));
  CHECK(snap == std::vector<float>(19, 1.25f));
}

TEST_CASE("additive correction right after the snapshot yields the average exactly") {
  // (w - snap) + avg with w == snap: no cancellation error, whatever the scale.
  std::vector<float> w = {1e6f, -3.0f, 1e-6f}, g(3, 0.0f), snap = w, avg = {1.0f, 2e7f, -5.0f};
  std::vector<std::vector<float>> state;
  dispatch<float>(kernels::correct_only, optim::sgd{.lr = 1.0}, 0, w, g, state, snap, avg,
                  merge::additive{}.coefficients());
  CHECK(w == avg);
}

TEST_CASE("master weights keep the compute-precision value") {
  // With a master copy the update accumulates in compute precision; without
  // it, tiny updates would be lost to rounding of the stored weights.
  std::vector<float> w(4, 1.0f), g(4, 1e-9f), snap(4), avg(4);
  std::vector<double> master(4, 1.0);
  tensor_list<float> wl;
  wl.add(w.data(), 4);
  tensor_list<const float> gl;
  gl.add(g.data(), 4);
  const std::size_t off[1] = {0};
  pass_args<float, double, host_space> a;
  a.weights = &wl;
  a.grads = &gl;
  a.offsets = off;
  a.master = master.data();
  a.snapshot = snap.data();
  a.average = avg.data();
  host_backend be;
  for (int i = 0; i < 100; ++i)
    optim::sgd{.lr = 1.0}.visit_element<double>(i, [&](const auto& e) { be.run<kernels::plain_step>(a, e); });
  CHECK(master[0] == doctest::Approx(1.0 - 1e-7).epsilon(1e-12));
  CHECK(w[0] == static_cast<float>(master[0]));
}
