// What is averaged (core/averaging.hpp): the optimizer state averaged with
// the weights (trainer_options::optimizer_state) and registered buffers
// (register_buffers), pinned against the independent float64 simulator of
// support/reference.hpp, which averages the state and the buffers by the
// same rule. Every comparison also checks that the option changes the
// result (the reference without it is far away), so none passes vacuously.
// Then: the second moment's clamp, the wire type of the state planes, the
// cross-rank and checkpoint checks, and the combinations that are refused.
#include <doctest/doctest.h>

#include <dasgd/dasgd.hpp>
#include <dasgd/merge/outer_sgd.hpp>
#if defined(DASGD_HAS_CUDA_TYPES)
#include <dasgd/comm/wire_format.hpp>
#endif

#include <cmath>
#include <functional>
#include <memory>
#include <span>
#include <sstream>
#include <string>
#include <type_traits>
#include <vector>

#include "support/fake_comm.hpp"
#include "support/problems.hpp"
#include "support/reference.hpp"

using namespace dasgd;
using test::vec;

namespace {

const test::least_squares problem(3, 9, 12, 33);

vec start() {
  vec w(9);
  for (std::size_t i = 0; i < w.size(); ++i) w[i] = 0.1 * static_cast<double>(i) - 0.3;
  return w;
}

using grad_fn = std::function<vec(int, int, const vec&)>;
const grad_fn lsq_grad = [](int i, int, const vec& w) { return problem.gradient(i, w); };

/// Registered buffers of each worker: two tensors of 3 and 2 elements, a
/// running mean of something each worker sees (its weights and its rank),
/// updated before each step as a forward pass would.
const std::vector<std::size_t> buffer_extents = {3, 2};
vec buffers_start(int i) { return {0.5, -0.25, 1.0 + i, 0.125, 2.0 - i}; }
void buffer_update(int i, int, const vec& w, vec& b) {
  for (std::size_t j = 0; j < b.size(); ++j)
    b[j] = 0.9 * b[j] + 0.1 * (w[j % w.size()] + 0.5 * static_cast<double>(i));
}

struct run_setup {
  int workers = 3;
  int steps = 29;
  bool buffers = false;               ///< register the two buffers above
  averaging buffer_mode = averaging::averaged;
  grad_fn grad = lsq_grad;
};

/// A worker's weights, optimizer state (flat, like the reference's) and
/// buffers after the run.
struct lib_run {
  std::vector<vec> w, m, v, buffers;
};

/// In-process workers over two weight tensors (4 and 5 elements).
template <class T, class Optim, class Merge, class Wrap>
lib_run train(const run_setup& su, policy::fixed_delay pol, Optim optim, Merge merge,
              trainer_options options, Wrap wrap) {
  comm::inproc_group group(su.workers);
  const auto N = static_cast<std::size_t>(su.workers);
  lib_run out{std::vector<vec>(N), std::vector<vec>(N), std::vector<vec>(N), std::vector<vec>(N)};
  options.warning = [](const std::string&) {};  // the average left in flight at the end
  comm::run_workers(group, [&](comm::inproc_communicator c) {
    const int r = c.rank();
    const vec w0 = start();
    std::vector<T> wa(w0.begin(), w0.begin() + 4), wb(w0.begin() + 4, w0.end());
    std::vector<T> ga(wa.size()), gb(wb.size());
    const vec b0 = buffers_start(r);
    std::vector<T> ba(b0.begin(), b0.begin() + 3), bb(b0.begin() + 3, b0.end());
    delayed_averager tr(make_tensor_list(wa, wb), wrap(c), pol, optim, merge, options);
    if (su.buffers) tr.register_buffers(make_tensor_list(ba, bb), su.buffer_mode);
    const auto flat = [](const auto& x, const auto& y) {
      vec f(x.begin(), x.end());
      f.insert(f.end(), y.begin(), y.end());
      return f;
    };
    for (int k = 0; k < su.steps; ++k) {
      const vec w = flat(wa, wb);
      if (su.buffers) {
        vec b = flat(ba, bb);
        buffer_update(r, k, w, b);
        for (std::size_t j = 0; j < 3; ++j) ba[j] = static_cast<T>(b[j]);
        for (std::size_t j = 3; j < 5; ++j) bb[j - 3] = static_cast<T>(b[j]);
      }
      const vec g = su.grad(r, k, w);
      for (std::size_t j = 0; j < 4; ++j) ga[j] = static_cast<T>(g[j]);
      for (std::size_t j = 4; j < g.size(); ++j) gb[j - 4] = static_cast<T>(g[j]);
      tr.step(tensor_list<const T>(ga, gb));
    }
    const auto R = static_cast<std::size_t>(r);
    out.w[R] = flat(wa, wb);
    out.buffers[R] = flat(ba, bb);
    const auto state = [&](std::size_t s) {
      const auto arena = tr.optimizer_state(s);
      vec f;
      for (std::size_t t = 0; t < 2; ++t)
        for (std::size_t j = 0; j < tr.parameters().extent(t); ++j)
          f.push_back(static_cast<double>(arena[tr.offsets()[t] + j]));
      return f;
    };
    if (tr.optimizer().state_count() > 0) out.m[R] = state(0);
    if (tr.optimizer().state_count() > 1) out.v[R] = state(1);
  });
  return out;
}

template <class T, class Optim, class Merge>
lib_run train(const run_setup& su, policy::fixed_delay pol, Optim optim, Merge merge,
              trainer_options options = {}) {
  return train<T>(su, pol, optim, merge, std::move(options), [](comm::inproc_communicator c) { return c; });
}

template <class Ref>
test::ref_run reference(const run_setup& su, test::ref_schedule s, const Ref& opt) {
  std::vector<vec> b;
  if (su.buffers) {
    s.buffer_update = buffer_update;
    for (int i = 0; i < su.workers; ++i) b.push_back(buffers_start(i));
  }
  return test::simulate_dasgd_run(su.workers, su.steps, s, opt,
                                  std::vector<vec>(static_cast<std::size_t>(su.workers), start()),
                                  su.grad, b);
}

std::vector<vec> ref_m(const test::ref_run& r) {
  std::vector<vec> m;
  for (const auto& s : r.state) m.push_back(s.m);
  return m;
}
std::vector<vec> ref_v(const test::ref_run& r) {
  std::vector<vec> v;
  for (const auto& s : r.state) v.push_back(s.v);
  return v;
}

double worst(const std::vector<vec>& a, const std::vector<vec>& b) { return test::max_rel_error(a, b); }

bool contains(const std::string& s, const std::string& n) { return s.find(n) != std::string::npos; }

struct merge_case {
  const char* name;
  double a, b, c;
};
const merge_case merges[] = {{"mix", 0.25, 0.75, 0.0}, {"additive", 1.0, 1.0, -1.0}};

/// The library's merge rule of a case.
template <class F>
void with_merge(const merge_case& mc, F&& f) {
  if (mc.c == 0.0) f(merge::mix{mc.a});
  else f(merge::additive{});
}

}  // namespace

TEST_CASE_TEMPLATE("averaged SGD momentum matches the reference simulator", T, float, double) {
  const double tol = std::is_same_v<T, float> ? 5e-5 : 1e-12;
  const run_setup su;
  const optim::sgd opt{.lr = 0.05, .momentum = 0.9, .weight_decay = 0.01};
  const test::ref_sgd ref_opt{.lr = 0.05, .momentum = 0.9, .weight_decay = 0.01};
  for (const auto& mc : merges) {
    for (const int d : {0, 1, 2}) {
      const std::string rule_name = mc.name;
      CAPTURE(rule_name);
      CAPTURE(d);
      test::ref_schedule s{.tau = 4, .delay = d, .a = mc.a, .b = mc.b, .c = mc.c};
      s.average_state = true;
      const auto ref = reference(su, s, ref_opt);
      with_merge(mc, [&](auto rule) {
        const auto out = train<T>(su, {.tau = 4, .delay = d}, opt, rule,
                                  {.optimizer_state = averaging::averaged});
        CHECK(worst(out.w, ref.w) <= tol);
        CHECK(worst(out.m, ref_m(ref)) <= tol);
        // Not vacuous: with the state kept local the result is another one.
        s.average_state = false;
        const auto local = reference(su, s, ref_opt);
        CHECK(worst(out.w, local.w) > 100 * tol);
        CHECK(worst(train<T>(su, {.tau = 4, .delay = d}, opt, rule).w, local.w) <= tol);
        s.average_state = true;
      });
    }
  }
}

TEST_CASE_TEMPLATE("averaged AdamW moments match the reference simulator", T, float, double) {
  const double tol = std::is_same_v<T, float> ? 5e-5 : 1e-12;
  const run_setup su;
  const optim::adamw opt{.lr = 0.01, .beta1 = 0.9, .beta2 = 0.99, .eps = 1e-8, .weight_decay = 0.1};
  const test::ref_adamw ref_opt{.lr = 0.01, .beta1 = 0.9, .beta2 = 0.99, .eps = 1e-8, .weight_decay = 0.1};
  for (const auto& mc : merges) {
    for (const int d : {0, 1, 2}) {
      const std::string rule_name = mc.name;
      CAPTURE(rule_name);
      CAPTURE(d);
      test::ref_schedule s{.tau = 3, .delay = d, .a = mc.a, .b = mc.b, .c = mc.c};
      s.average_state = true;
      const auto ref = reference(su, s, ref_opt);
      with_merge(mc, [&](auto rule) {
        const auto out = train<T>(su, {.tau = 3, .delay = d}, opt, rule,
                                  {.optimizer_state = averaging::averaged});
        CHECK(worst(out.w, ref.w) <= tol);
        CHECK(worst(out.m, ref_m(ref)) <= tol);
        CHECK(worst(out.v, ref_v(ref)) <= tol);
        s.average_state = false;
        CHECK(worst(out.w, reference(su, s, ref_opt).w) > 100 * tol);
        s.average_state = true;
      });
    }
  }
}

TEST_CASE("the additive merge keeps AdamW's second moment non-negative") {
  // Worker 0 sees a gradient of 1 for steps 0-2, then 0; worker 1 always 0.
  // tau 4, delay 1: the snapshot after step 3 holds v0 = beta2 * v(2) on
  // worker 0 and 0 on worker 1, so avg = v0 / 2; at the merge (step 4, no
  // gradient) v_local = beta2 * v0 and the additive rule gives
  // (beta2 - 1/2) * v0 < 0 for beta2 = 0.1: clamped to 0. Worker 1 gets v0 / 2.
  run_setup su;
  su.workers = 2;
  su.steps = 5;
  su.grad = [](int i, int k, const vec& w) { return vec(w.size(), i == 0 && k < 3 ? 1.0 : 0.0); };
  const optim::adamw opt{.lr = 0.01, .beta1 = 0.5, .beta2 = 0.1, .eps = 1e-8, .weight_decay = 0.0};
  test::ref_schedule s{.tau = 4, .delay = 1, .a = 1.0, .b = 1.0, .c = -1.0};
  s.average_state = true;
  const auto ref =
      reference(su, s, test::ref_adamw{.lr = 0.01, .beta1 = 0.5, .beta2 = 0.1, .eps = 1e-8, .weight_decay = 0.0});
  const auto out = train<double>(su, {.tau = 4, .delay = 1}, opt, merge::additive{},
                                 {.optimizer_state = averaging::averaged});
  for (const double v : out.v[0]) CHECK(v == 0.0);  // clamped, exactly
  for (const double v : out.v[1]) CHECK(v > 0.0);
  CHECK(worst(out.v, ref_v(ref)) <= 1e-12);
  CHECK(worst(out.w, ref.w) <= 1e-12);
  for (const auto& w : out.w)
    for (const double x : w) CHECK(std::isfinite(x));
}

TEST_CASE("the state merge clamps only the states an optimizer declares non-negative") {
  using E = optim::adamw_element<double>;
  static_assert(kernels::nonnegative_states_of<E>() == 2u);
  static_assert(kernels::nonnegative_states_of<optim::sgd_element<double, true>>() == 0u);
  const kernels::merge_coeffs<double> add{1.0, 1.0, -1.0};
  constexpr auto S = kernels::step_and_correct | kernels::stage::average_state;
  // local 0.1, snapshot 1, average 0.5: 0.1 - 1 + 0.5 = -0.4
  CHECK(kernels::merge_state_value<S, E, 1>(add, 0.1, 0.5, 1.0) == 0.0);
  CHECK(kernels::merge_state_value<S, E, 0>(add, 0.1, 0.5, 1.0) == doctest::Approx(-0.4));
  CHECK(std::isnan(kernels::merge_state_value<S, E, 1>(add, std::nan(""), 0.5, 1.0)));
}

TEST_CASE_TEMPLATE("registered buffers, averaged or local, match the reference simulator", T, float,
                   double) {
  const double tol = std::is_same_v<T, float> ? 5e-5 : 1e-12;
  // The buffers are rounded to T at every update by the harness, which the
  // reference does not do: float buffers drift a little more.
  const double btol = std::is_same_v<T, float> ? 2e-4 : 1e-12;
  run_setup su;
  su.buffers = true;
  const optim::sgd opt{.lr = 0.05, .momentum = 0.9};
  const test::ref_sgd ref_opt{.lr = 0.05, .momentum = 0.9};
  for (const auto& mc : merges) {
    for (const int d : {0, 1, 2}) {
      const std::string rule_name = mc.name;
      CAPTURE(rule_name);
      CAPTURE(d);
      test::ref_schedule s{.tau = 4, .delay = d, .a = mc.a, .b = mc.b, .c = mc.c};
      with_merge(mc, [&](auto rule) {
        s.average_buffers = true;
        const auto ref_avg = reference(su, s, ref_opt);
        s.average_buffers = false;
        const auto ref_local = reference(su, s, ref_opt);
        su.buffer_mode = averaging::averaged;
        const auto avg = train<T>(su, {.tau = 4, .delay = d}, opt, rule);
        su.buffer_mode = averaging::local;
        const auto local = train<T>(su, {.tau = 4, .delay = d}, opt, rule);
        CHECK(worst(avg.buffers, ref_avg.buffers) <= btol);
        CHECK(worst(local.buffers, ref_local.buffers) <= btol);
        CHECK(worst(avg.buffers, ref_local.buffers) > 100 * btol);  // averaging them matters
        // The buffers do not touch the weights.
        CHECK(worst(avg.w, ref_avg.w) <= tol);
        CHECK(worst(local.w, ref_avg.w) <= tol);
        // And together with the optimizer state, in the same average.
        s.average_buffers = true;
        s.average_state = true;
        su.buffer_mode = averaging::averaged;
        const auto both_ref = reference(su, s, ref_opt);
        const auto both = train<T>(su, {.tau = 4, .delay = d}, opt, rule,
                                   {.optimizer_state = averaging::averaged});
        CHECK(worst(both.w, both_ref.w) <= tol);
        CHECK(worst(both.m, ref_m(both_ref)) <= tol);
        CHECK(worst(both.buffers, both_ref.buffers) <= btol);
        s.average_state = false;
      });
    }
  }
}

TEST_CASE("the snapshot grows by one plane per averaged state and by the averaged buffers") {
  comm::inproc_group group(1);
  std::vector<float> w(5, 1.0f), b(3, 0.5f), c(7, 0.25f), g(5, 0.5f);
  delayed_averager tr(make_tensor_list(w), group.communicator(0), policy::fixed_delay{.tau = 2, .delay = 1},
                      optim::adamw{}, merge::mix{}, trainer_options{.optimizer_state = averaging::averaged});
  CHECK(tr.average_layout().plane == 16);
  CHECK(tr.average_layout().state_planes == 2);
  CHECK(tr.snapshot().size() == 48);
  tr.register_buffers(make_tensor_list(b), averaging::averaged);
  tr.register_buffers(make_tensor_list(c), averaging::local);
  CHECK(tr.snapshot().size() == 64);  // local buffers do not travel
  CHECK(tr.buffers().size() == 2);
  CHECK(contains(tr.configuration().text(), "optimizer_state=averaged; buffers=averaged:3 local:7"));
  tr.step(g);
  tr.step(g);  // launches
  // The state planes hold the state the step wrote (fp32 storage: exact).
  for (std::size_t s = 0; s < 2; ++s)
    for (std::size_t j = 0; j < 5; ++j)
      CHECK(tr.snapshot()[tr.average_layout().state_plane(s) + j] == tr.optimizer_state(s)[j]);
  CHECK(tr.snapshot()[tr.average_layout().buffer_offset()] == 0.5f);
  tr.merge_now();
}

#if defined(DASGD_HAS_CUDA_TYPES)
namespace {
double to_bf16(double x) { return to_compute<double>(to_storage<__nv_bfloat16>(static_cast<float>(x))); }
}  // namespace

TEST_CASE("averaged state on a bf16 wire matches the simulator that rounds what is sent") {
  const run_setup su;
  const auto bf16 = [](comm::inproc_communicator c) {
    return comm::wire_format<__nv_bfloat16, comm::inproc_communicator>(c);
  };
  for (const int d : {0, 1, 2}) {
    CAPTURE(d);
    test::ref_schedule s{.tau = 4, .delay = d, .a = 0.25, .b = 0.75, .c = 0.0};
    s.wire = to_bf16;
    s.average_state = true;
    const auto ref = reference(su, s, test::ref_sgd{.lr = 0.05, .momentum = 0.9});
    const auto out = train<float>(su, {.tau = 4, .delay = d}, optim::sgd{.lr = 0.05, .momentum = 0.9},
                                  merge::mix{}, {.optimizer_state = averaging::averaged}, bf16);
    CHECK(worst(out.w, ref.w) <= 2e-5);
    CHECK(worst(out.m, ref_m(ref)) <= 2e-5);
    // The state's rounding to bf16 is seen: unrounded state is another run.
    s.wire = {};
    CHECK(worst(out.m, ref_m(reference(su, s, test::ref_sgd{.lr = 0.05, .momentum = 0.9}))) > 1e-4);
  }
}

TEST_CASE("the state planes travel in the wire type: rounded with 16-bit storage, fp32 with master weights") {
  comm::inproc_group group(1);
  std::vector<__nv_bfloat16> w(5, to_storage<__nv_bfloat16>(1.0f)), g(5, to_storage<__nv_bfloat16>(0.3f));
  for (const bool master : {false, true}) {
    CAPTURE(master);
    delayed_averager tr(make_tensor_list(w), group.communicator(0),
                        policy::fixed_delay{.tau = 2, .delay = 1}, optim::adamw{.lr = 0.01}, merge::mix{},
                        trainer_options{.master_weights = master, .optimizer_state = averaging::averaged});
    tr.step(g);
    tr.step(g);  // launches
    for (std::size_t s = 0; s < 2; ++s) {
      const float state = tr.optimizer_state(s)[0];
      const std::size_t at = tr.average_layout().state_plane(s);
      if (master) {
        CHECK(tr.snapshot_compute()[at] == state);
      } else {
        CHECK(to_compute<float>(tr.snapshot()[at]) == to_compute<float>(to_storage<__nv_bfloat16>(state)));
        CHECK(to_compute<float>(tr.snapshot()[at]) != state);  // rounded
      }
    }
    tr.merge_now();
  }
}

TEST_CASE("averaged state with an fp16 wire is refused, naming it") {
  comm::inproc_group group(1);
  std::vector<float> w(4, 1.0f);
  CHECK_THROWS_WITH_AS(
      delayed_averager(make_tensor_list(w), comm::wire_format<__half, comm::inproc_communicator>(group.communicator(0)),
                       policy::fixed_delay{}, optim::adamw{}, merge::mix{},
                       trainer_options{.optimizer_state = averaging::averaged}),
      doctest::Contains("fp16"), config_error);
}
#endif

TEST_CASE("averaged state or buffers with the outer optimizer are refused") {
  comm::inproc_group group(1);
  std::vector<float> w(4, 1.0f), b(2, 0.0f);
  CHECK_THROWS_WITH_AS(delayed_averager(make_tensor_list(w), group.communicator(0), policy::fixed_delay{},
                                        optim::sgd{.momentum = 0.9}, merge::outer_sgd{},
                                        trainer_options{.optimizer_state = averaging::averaged}),
                       doctest::Contains("outer_sgd"), config_error);
  delayed_averager tr(make_tensor_list(w), group.communicator(0), policy::fixed_delay{},
                      optim::sgd{.momentum = 0.9}, merge::outer_sgd{});
  CHECK_THROWS_WITH_AS(tr.register_buffers(make_tensor_list(b), averaging::averaged),
                       doctest::Contains("outer_sgd"), config_error);
  tr.register_buffers(make_tensor_list(b), averaging::local);  // kept local: fine
  CHECK(tr.buffers().size() == 1);
}

TEST_CASE("bad buffer registrations are errors and register nothing") {
  comm::inproc_group group(1);
  std::vector<float> w(8, 1.0f), b(2, 0.0f), g(8, 0.1f);
  delayed_averager tr(make_tensor_list(w), group.communicator(0), policy::fixed_delay{},
                      optim::sgd{}, merge::mix{}, trainer_options{.warning = [](const std::string&) {}});
  CHECK_THROWS_WITH_AS(tr.register_buffers(tensor_list<float>{}, averaging::averaged),
                       doctest::Contains("empty"), config_error);
  std::span<float> inside(w.data() + 2, 3);  // overlaps the parameter
  CHECK_THROWS_WITH_AS(tr.register_buffers(make_tensor_list(inside), averaging::averaged),
                       doctest::Contains("share memory"), config_error);
  CHECK_THROWS_WITH_AS(tr.register_buffers(make_tensor_list(b, b), averaging::local),
                       doctest::Contains("share memory"), config_error);
  CHECK(tr.buffers().empty());
  CHECK(tr.snapshot().size() == 16);
  tr.step(g);
  CHECK_THROWS_WITH_AS(tr.register_buffers(make_tensor_list(b), averaging::averaged),
                       doctest::Contains("before any step()"), state_error);
}

TEST_CASE("ranks with a different optimizer_state or buffers fail, naming the value and the rank") {
  SUBCASE("optimizer_state") {
    comm::inproc_group group(2);
    std::vector<std::string> msgs(2);
    comm::run_workers(group, [&](comm::inproc_communicator c) {
      std::vector<float> w(4, 1.0f);
      try {
        delayed_averager tr(make_tensor_list(w), c, policy::fixed_delay{}, optim::sgd{.momentum = 0.9},
                            merge::mix{},
                            trainer_options{.optimizer_state = c.rank() == 1 ? averaging::averaged
                                                                             : averaging::local});
      } catch (const config_error& e) {
        msgs[static_cast<std::size_t>(c.rank())] = e.what();
      }
    });
    CHECK(contains(msgs[0], "rank 0 has optimizer_state=local but rank 1 has optimizer_state=averaged"));
    CHECK(contains(msgs[1], "rank 1 has optimizer_state=averaged but rank 0 has optimizer_state=local"));
  }
  SUBCASE("buffers") {
    comm::inproc_group group(2);
    std::vector<std::string> msgs(2);
    std::vector<std::size_t> registered(2, 99);
    comm::run_workers(group, [&](comm::inproc_communicator c) {
      std::vector<float> w(4, 1.0f), b(3, 0.0f);
      delayed_averager tr(make_tensor_list(w), c, policy::fixed_delay{}, optim::sgd{}, merge::mix{});
      try {
        tr.register_buffers(make_tensor_list(b), c.rank() == 1 ? averaging::local : averaging::averaged);
      } catch (const config_error& e) {
        msgs[static_cast<std::size_t>(c.rank())] = e.what();
      }
      registered[static_cast<std::size_t>(c.rank())] = tr.buffers().size();
    });
    CHECK(registered == std::vector<std::size_t>{0, 0});  // nothing registered on either rank
    CHECK(contains(msgs[0], "rank 0 has buffers=averaged:3 but rank 1 has buffers=local:3"));
    CHECK(contains(msgs[1], "rank 1 has buffers=local:3"));
  }
}

TEST_CASE("synchronize() averages the state and the averaged buffers too") {
  for (const auto mode : {averaging::local, averaging::averaged}) {
    CAPTURE(to_string(mode));
    comm::inproc_group group(2);
    std::vector<std::vector<float>> m(2), bufs(2);
    comm::run_workers(group, [&](comm::inproc_communicator c) {
      const auto r = static_cast<std::size_t>(c.rank());
      std::vector<float> w(4, 1.0f), b(3, static_cast<float>(r)), g(4, 0.1f * static_cast<float>(r + 1));
      delayed_averager tr(make_tensor_list(w), c, policy::fixed_delay{.tau = 8, .delay = 1},
                          optim::sgd{.lr = 0.1, .momentum = 0.9}, merge::mix{},
                          trainer_options{.optimizer_state = mode});
      tr.register_buffers(make_tensor_list(b), mode);
      for (int k = 0; k < 3; ++k) tr.step(g);
      tr.synchronize();
      m[r].assign(tr.optimizer_state(0).begin(), tr.optimizer_state(0).begin() + 4);
      bufs[r] = b;
    });
    if (mode == averaging::averaged) {
      CHECK(m[0] == m[1]);
      CHECK(bufs[0] == bufs[1]);
      CHECK(bufs[0][0] == 0.5f);
    } else {
      CHECK(m[0] != m[1]);
      CHECK(bufs[0] != bufs[1]);
    }
  }
}

namespace {
/// One worker whose "average" is its snapshot + 0.25 (so every merge
/// changes the weights, the state and the buffers), saving before step
/// `save_at` or resuming from that checkpoint.
std::vector<float> run_with_checkpoint(int save_at, std::string* blob, bool resume,
                                       std::vector<float>* buffers_out = nullptr) {
  std::vector<float> w(6, 0.5f), g(6, 0.0f), b(3, 1.0f), l(2, 2.0f);
  delayed_averager tr(make_tensor_list(w), test::fake_communicator({.offset = 0.25}),
                      policy::fixed_delay{.tau = 3, .delay = 2}, optim::adamw{.lr = 0.05},
                      merge::additive{}, trainer_options{.optimizer_state = averaging::averaged});
  tr.register_buffers(make_tensor_list(b), averaging::averaged);
  tr.register_buffers(make_tensor_list(l), averaging::local);
  int k = 0;
  if (resume) {
    std::istringstream is(*blob);
    tr.load(is);
    k = static_cast<int>(tr.steps_taken());
  }
  for (; k < 17; ++k) {
    if (!resume && k == save_at) {
      std::ostringstream os;
      tr.save(os);
      *blob = os.str();
    }
    for (std::size_t i = 0; i < g.size(); ++i) g[i] = static_cast<float>(std::sin(double(k) + double(i)));
    for (auto& x : b) x = 0.5f * x + 0.25f * static_cast<float>(k);
    for (auto& x : l) x += 1.0f;
    tr.step(g);
  }
  tr.synchronize();
  if (buffers_out) {
    *buffers_out = b;
    buffers_out->insert(buffers_out->end(), l.begin(), l.end());
  }
  std::vector<float> out = w;
  for (std::size_t s = 0; s < 2; ++s) out.insert(out.end(), tr.optimizer_state(s).begin(), tr.optimizer_state(s).end());
  return out;
}
}  // namespace

TEST_CASE("a checkpoint keeps the averaged state, the buffers and an average in flight, bit for bit") {
  for (const int save_at : {2, 4, 7}) {  // 4, 7: an average in flight
    CAPTURE(save_at);
    std::string blob;
    std::vector<float> b1, b2;
    const auto straight = run_with_checkpoint(save_at, &blob, false, &b1);
    CHECK(run_with_checkpoint(save_at, &blob, true, &b2) == straight);
    CHECK(b1 == b2);
  }
}

TEST_CASE("a checkpoint with other buffers or, in flight, another optimizer_state is rejected") {
  std::string blob;
  run_with_checkpoint(4, &blob, false);  // saved with an average in flight
  std::vector<float> w(6, 0.5f), b(3, 1.0f), l(2, 2.0f);
  const auto make = [&](averaging state) {
    return std::make_unique<delayed_averager<float, test::fake_communicator, policy::fixed_delay, optim::adamw,
                                             merge::additive>>(
        make_tensor_list(w), test::fake_communicator({.offset = 0.25}), policy::fixed_delay{.tau = 3, .delay = 2},
        optim::adamw{.lr = 0.05}, merge::additive{},
        trainer_options{.warning = [](const std::string&) {}, .optimizer_state = state});
  };
  {
    auto tr = make(averaging::averaged);  // no buffers registered
    std::istringstream is(blob);
    CHECK_THROWS_WITH_AS(tr->load(is, {.allow_config_change = true}),
                         doctest::Contains("registered buffers averaged:3 local:2"), checkpoint_error);
    CHECK(tr->steps_taken() == 0);
  }
  {
    auto tr = make(averaging::local);
    tr->register_buffers(make_tensor_list(b), averaging::averaged);
    tr->register_buffers(make_tensor_list(l), averaging::local);
    std::istringstream is(blob);
    CHECK_THROWS_WITH_AS(tr->load(is), doctest::Contains("optimizer_state=averaged"), checkpoint_error);
    std::istringstream again(blob);
    CHECK_THROWS_WITH_AS(tr->load(again, {.allow_config_change = true}),
                         doctest::Contains("in flight with optimizer_state=averaged"), checkpoint_error);
  }
  {
    auto tr = make(averaging::averaged);
    tr->register_buffers(make_tensor_list(b), averaging::averaged);
    tr->register_buffers(make_tensor_list(l), averaging::local);
    std::istringstream is(blob);
    tr->load(is);
    CHECK(tr->steps_taken() == 4);
    CHECK(tr->average_in_flight());
    CHECK_THROWS_AS(tr->register_buffers(make_tensor_list(b), averaging::local), state_error);
  }
}
