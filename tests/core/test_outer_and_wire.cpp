// The outer optimizer (merge::outer_sgd) and the compressed wire format
// (comm::wire_format) against the independent simulator of
// support/reference.hpp, and their exact special cases.
#include <doctest/doctest.h>

#include <dasgd/comm/wire_format.hpp>
#include <dasgd/dasgd.hpp>
#include <dasgd/merge/outer_sgd.hpp>

#include <cmath>
#include <sstream>
#include <vector>

#include "support/fake_comm.hpp"
#include "support/problems.hpp"

using namespace dasgd;
using test::vec;

namespace {
const test::least_squares problem(4, 9, 20, 21);
vec start() {
  vec w(9);
  for (std::size_t i = 0; i < w.size(); ++i) w[i] = 0.1 * double(i) - 0.3;
  return w;
}
double worst(const std::vector<vec>& a, const std::vector<vec>& b) {
  return test::max_rel_error(a, b);
}
auto grad = [](int i, int, const vec& w) { return problem.gradient(i, w); };
}  // namespace

TEST_CASE("outer SGD with lr 1 and momentum 0 is the additive rule, bit for bit") {
  for (const auto pol : {policy::fixed_delay{.tau = 4, .delay = 1}, policy::fixed_delay{.tau = 3, .delay = 0},
                         policy::fixed_delay{.tau = 4, .delay = 3}}) {
    const optim::sgd opt{.lr = 0.05, .momentum = 0.9};
    const auto additive = test::train_inproc<float>(problem, 29, pol, opt, merge::additive{}, start());
    const auto outer = test::train_inproc<float>(problem, 29, pol, opt,
                                                 merge::outer_sgd{.lr = 1.0, .momentum = 0.0}, start());
    CHECK(outer == additive);
  }
}

TEST_CASE_TEMPLATE("outer SGD (DiLoCo) with Nesterov momentum matches the reference simulator", T, float,
                   double) {
  const double tol = std::is_same_v<T, float> ? 3e-5 : 1e-12;
  for (const bool nesterov : {true, false}) {
    for (const int d : {0, 1, 3}) {
      CAPTURE(nesterov);
      CAPTURE(d);
      test::ref_schedule s{.tau = 4, .delay = d};
      s.outer = true;
      s.outer_lr = 0.7;
      s.outer_mu = 0.9;
      s.outer_nesterov = nesterov;
      const auto ref = test::simulate_dasgd(4, 41, s, test::ref_sgd{.lr = 0.04, .momentum = 0.5},
                                            std::vector<vec>(4, start()), grad);
      const auto out = test::train_inproc<T>(
          problem, 41, policy::fixed_delay{.tau = 4, .delay = d}, optim::sgd{.lr = 0.04, .momentum = 0.5},
          merge::outer_sgd{.lr = 0.7, .momentum = 0.9, .nesterov = nesterov}, start());
      CHECK(worst(out, ref) <= tol);
    }
  }
}

TEST_CASE("the outer optimizer's state survives a checkpoint") {
  auto run = [](int save_at, std::string* blob, bool resume) {
    std::vector<double> w(6, 0.5), g(6, 0.0);
    delayed_averager tr(make_tensor_list(w), test::fake_communicator({.offset = 0.25}),
                        policy::fixed_delay{.tau = 2, .delay = 1}, optim::sgd{.lr = 0.1},
                        merge::outer_sgd{.lr = 0.5, .momentum = 0.8, .nesterov = true});
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
      for (std::size_t i = 0; i < g.size(); ++i) g[i] = std::sin(double(k) + double(i));
      tr.step(g);
    }
    return w;
  };
  for (int save_at : {5, 6, 9}) {
    std::string blob;
    const auto straight = run(save_at, &blob, false);
    CHECK(run(save_at, &blob, true) == straight);
  }
}

namespace {
/// A value as bf16 would carry it (round to nearest even).
double to_bf16(double x) { return to_compute<double>(to_storage<__nv_bfloat16>(static_cast<float>(x))); }
double to_fp16(double x) { return to_compute<double>(to_storage<__half>(static_cast<float>(x))); }
}  // namespace

TEST_CASE("a bf16 or fp16 wire matches the simulator that rounds what is sent and received") {
  for (const int d : {0, 1, 2}) {
    CAPTURE(d);
    test::ref_schedule s{.tau = 4, .delay = d, .a = 0.25, .b = 0.75, .c = 0.0};
    const optim::sgd opt{.lr = 0.05, .momentum = 0.9};
    const policy::fixed_delay pol{.tau = 4, .delay = d};
    s.wire = to_bf16;
    const auto ref = test::simulate_dasgd(4, 37, s, test::ref_sgd{.lr = 0.05, .momentum = 0.9},
                                          std::vector<vec>(4, start()), grad);
    const auto out = test::train_inproc<float>(problem, 37, pol, opt, merge::mix{}, start(), [](auto c) {
      return comm::wire_format<__nv_bfloat16, comm::inproc_communicator>(c);
    });
    CHECK(worst(out, ref) <= 2e-5);
    // And it differs from the fp32 wire by about bf16's rounding, not by nothing.
    const auto fp32 = test::train_inproc<float>(problem, 37, pol, opt, merge::mix{}, start());
    CHECK(worst(out, fp32) > 1e-4);
    s.wire = to_fp16;
    const auto ref16 = test::simulate_dasgd(4, 37, s, test::ref_sgd{.lr = 0.05, .momentum = 0.9},
                                            std::vector<vec>(4, start()), grad);
    const auto out16 = test::train_inproc<float>(problem, 37, pol, opt, merge::mix{}, start(), [](auto c) {
      return comm::wire_format<__half, comm::inproc_communicator>(c);
    });
    CHECK(worst(out16, ref16) <= 2e-5);
  }
}

TEST_CASE("with a wire format the arenas are in the wire type and the snapshot write converts") {
  std::vector<float> w(33, 1.0f / 3.0f), g(33, 0.0f);
  comm::inproc_group group(1);
  delayed_averager tr(make_tensor_list(w),
                      comm::wire_format<__nv_bfloat16, comm::inproc_communicator>(group.communicator(0)),
                      policy::fixed_delay{.tau = 1, .delay = 0}, optim::sgd{.lr = 0.1}, merge::mix{});
  static_assert(std::is_same_v<decltype(tr)::fixed_wire_type, __nv_bfloat16>);
  CHECK(tr.snapshot().empty());
  tr.step(g);
  const auto snap = tr.snapshot_wire();
  REQUIRE(snap.size() >= w.size());
  CHECK(to_compute<float>(snap[0]) == to_compute<float>(to_storage<__nv_bfloat16>(1.0f / 3.0f)));
  CHECK(tr.configuration().text().find("wire=bfloat16") != std::string::npos);
}
