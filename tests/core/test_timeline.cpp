// Which steps launch an average and which merge it, for several (tau, d),
// and what exactly is sent and merged (docs/design.md section 1).
#include <doctest/doctest.h>

#include <dasgd/dasgd.hpp>

#include <vector>

#include "support/fake_comm.hpp"

using namespace dasgd;
using test::fake_communicator;

namespace {

struct timeline {
  std::vector<std::int64_t> launches, merges;
};

template <class Policy>
timeline run_schedule(Policy policy, int steps) {
  std::vector<double> w(5, 1.0), g(5, 0.0);
  delayed_averager tr(make_tensor_list(w), fake_communicator{}, policy, optim::sgd{.lr = 0.1},
                      merge::mix{0.5});
  timeline t;
  for (int k = 0; k < steps; ++k) {
    const auto rep = tr.step(g);
    CHECK(rep.step == k);
    if (rep.launched) t.launches.push_back(k);
    if (rep.merged) t.merges.push_back(k);
  }
  return t;
}

}  // namespace

TEST_CASE("fixed schedule: launch at the end of each round, merge delay steps later") {
  struct param {
    int tau, d;
  };
  for (const param p : {param{1, 0}, param{2, 1}, param{4, 0}, param{4, 1}, param{4, 3},
                        param{3, 2}, param{5, 4}}) {
    CAPTURE(p.tau);
    CAPTURE(p.d);
    const int steps = 23;
    const auto t = run_schedule(policy::fixed_delay{p.tau, p.d}, steps);
    std::vector<std::int64_t> want_launch, want_merge;
    for (int k = 0; k < steps; ++k) {
      if (k % p.tau == p.tau - 1) {
        want_launch.push_back(k);
        if (k + p.d < steps) want_merge.push_back(k + p.d);
      }
    }
    CHECK(t.launches == want_launch);
    CHECK(t.merges == want_merge);
  }
}

TEST_CASE("warm-up: synchronous single-step rounds, then the inner schedule") {
  const auto t = run_schedule(policy::warmup<policy::fixed_delay>(3, {4, 1}), 12);
  CHECK(t.launches == std::vector<std::int64_t>{0, 1, 2, 6, 10});
  CHECK(t.merges == std::vector<std::int64_t>{0, 1, 2, 7, 11});
}

TEST_CASE("the snapshot is the weights after the launch step's update; the merge uses it") {
  // Plain SGD with constant gradient: w_k = 1 - 0.1 * (k + 1) without merges.
  // The fake average is snapshot + 1000, published only when the request
  // completes, so reading it early would show up.
  for (int d : {0, 1, 3}) {
    CAPTURE(d);
    std::vector<double> w(3, 1.0), g(3, 1.0);
    fake_communicator comm({.offset = 1000.0, .ready_after_tests = 1});
    auto log = comm.log_handle();
    delayed_averager tr(make_tensor_list(w), comm, policy::fixed_delay{4, d},
                        optim::sgd{.lr = 0.1}, merge::mix{0.25});
    double expect = 1.0, snap = 0.0;
    for (int k = 0; k < 12; ++k) {
      tr.step(g);
      expect -= 0.1;  // local step
      const bool launch = k % 4 == 3;
      if (k % 4 == (3 + d) % 4 && k >= 3 + d) {  // merge of the previous launch (d > 0)
        if (d > 0) expect = 0.25 * expect + 0.75 * (snap + 1000.0);
      }
      if (launch) {
        snap = expect;
        REQUIRE(log->snapshots.size() == static_cast<std::size_t>(k / 4 + 1));
        CHECK(log->snapshots.back()[0] == doctest::Approx(snap).epsilon(1e-14));
        if (d == 0) expect = 0.25 * expect + 0.75 * (snap + 1000.0);
      }
      CHECK(w[0] == doctest::Approx(expect).epsilon(1e-12));
      const int last_launch = (k + 1) / 4 * 4 - 1;  // -1 before the first launch
      CHECK(tr.average_in_flight() == (d > 0 && last_launch >= 0 && k < last_launch + d));
    }
  }
}

TEST_CASE("the in-flight average is polled every step and awaited only at the merge") {
  fake_communicator comm({.ready_after_tests = 100});  // never completes by polling
  auto log = comm.log_handle();
  std::vector<float> w(4, 0.0f), g(4, 0.0f);
  delayed_averager tr(make_tensor_list(w), comm, policy::fixed_delay{4, 3}, optim::sgd{.lr = 0.1},
                      merge::additive{});
  for (int k = 0; k <= 3; ++k) tr.step(g);  // launch at 3
  CHECK(log->launches == 1);
  CHECK(log->waits == 0);
  tr.step(g);  // 4: poll
  tr.step(g);  // 5: poll
  CHECK(log->tests == 2);
  CHECK(log->waits == 0);
  CHECK(tr.merge_due_at() == 6);
  const auto rep = tr.step(g);  // 6: merge -> wait
  CHECK(rep.merged);
  CHECK(log->waits == 1);
  CHECK_FALSE(tr.average_in_flight());
  CHECK(w[0] == doctest::Approx(1000.0f));  // additive: w + (snap + 1000) - snap
}

TEST_CASE("merge_now and synchronize") {
  fake_communicator comm({.offset = 10.0});
  std::vector<double> w(2, 1.0), g(2, 0.0);
  delayed_averager tr(make_tensor_list(w), comm, policy::fixed_delay{2, 1}, optim::sgd{.lr = 0.1},
                      merge::mix{0.5});
  tr.step(g);
  tr.step(g);  // launch (snapshot 1.0)
  CHECK(tr.average_in_flight());
  tr.merge_now();  // 0.5 * 1 + 0.5 * 11
  CHECK(w[0] == doctest::Approx(6.0));
  CHECK_FALSE(tr.average_in_flight());
  const auto rep = tr.step(g);  // step 2: the merge was done already
  CHECK_FALSE(rep.merged);
  tr.synchronize();  // replaces w by the "average" of w: 6 + 10
  CHECK(w[0] == doctest::Approx(16.0));
}
