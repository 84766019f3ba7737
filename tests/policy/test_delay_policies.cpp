// Delay policies, the adaptive one driven by a fake clock: on its own, and
// inside a trainer whose communicator needs a known time per average.
#include <doctest/doctest.h>

#include <dasgd/dasgd.hpp>

#include <type_traits>
#include <vector>

#include "support/fake_comm.hpp"

using namespace dasgd;
using K = schedule_event::kind;

static_assert(delay_policy<policy::fixed_delay>);
static_assert(delay_policy<policy::warmup<policy::fixed_delay>>);
static_assert(observing_delay_policy<policy::adaptive_delay<policy::manual_clock>>);
static_assert(observing_delay_policy<policy::warmup<policy::adaptive_delay<>>>);
static_assert(!observing_delay_policy<policy::warmup<policy::fixed_delay>>);

TEST_CASE("fixed and warm-up plans") {
  CHECK(policy::fixed_delay{.tau = 4, .delay = 1}.plan(7) == round_plan{4, 1, false});
  CHECK(policy::synchronous().plan(0) == round_plan{1, 0, false});
  policy::warmup w{.sync_steps = 2, .inner = policy::fixed_delay{4, 3}};
  CHECK(w.plan(0) == round_plan{1, 0, true});
  CHECK(w.plan(1) == round_plan{1, 0, true});
  CHECK(w.plan(2) == round_plan{4, 3, false});
}

// Every policy and merge rule is an aggregate with usable defaults.
static_assert(std::is_aggregate_v<policy::fixed_delay>);
static_assert(std::is_aggregate_v<policy::warmup<>>);
static_assert(std::is_aggregate_v<merge::mix>);
static_assert(std::is_aggregate_v<merge::linear>);
static_assert(std::is_aggregate_v<merge::additive>);
static_assert(std::is_same_v<decltype(policy::warmup{.sync_steps = 1, .inner = policy::adaptive_delay<>{}}),
                             policy::warmup<policy::adaptive_delay<>>>);

TEST_CASE("defaults of the configuration aggregates") {
  const policy::fixed_delay f{};
  CHECK(f.tau == 4);
  CHECK(f.delay == 1);
  CHECK_NOTHROW(f.validate());
  const policy::warmup<> w{};
  CHECK(w.sync_steps == 0);
  CHECK(w.inner.tau == 4);
  CHECK_NOTHROW(w.validate());
  CHECK(merge::mix{}.update_proportion == 0.25);
  CHECK(merge::mix{}.coefficients() == merge_coefficients{0.25, 0.75, 0.0});
  const merge::linear l{};
  CHECK(l.coefficients() == merge_coefficients{1.0, 0.0, 0.0});
  CHECK(l.require_consensus);
  CHECK_NOTHROW(l.validate());
  // Fields not named keep their defaults.
  CHECK(policy::fixed_delay{.tau = 8}.delay == 1);
  CHECK(merge::linear{.a = 0.5, .b = 0.5}.c == 0.0);
}

TEST_CASE("the trainer runs the warm-up's synchronous steps, then the inner policy") {
  std::vector<float> w(4, 0.0f), g(4, 1.0f);
  delayed_averager tr(make_tensor_list(w), test::fake_communicator{},
                      policy::warmup{.sync_steps = 3, .inner = policy::fixed_delay{.tau = 4, .delay = 2}},
                      optim::sgd{.lr = 0.1}, merge::mix{});
  for (int k = 0; k < 3; ++k) {
    const auto r = tr.step(g);
    CHECK(r.launched);
    CHECK(r.merged);  // delay 0: merged in the step that launched it
  }
  CHECK(tr.current_plan() == round_plan{4, 2, false});
  CHECK(tr.steps_taken() == 3);
}

TEST_CASE("adaptive delay from events: the smallest delay that would not have waited") {
  policy::manual_clock clock;
  policy::adaptive_delay<policy::manual_clock> p({.tau = 8, .initial_delay = 1, .window = 2}, clock);
  // step(): enter step() (events at the current time), then 10 ms of the
  // user's compute before the next step.
  auto step = [&](std::int64_t k, bool launch = false) {
    p.observe({K::step_begin, k});
    if (launch) p.observe({K::launch, k});
    clock.advance(0.010);
  };
  for (int k = 0; k < 8; ++k) step(k, k == 7);  // launched after step 7, at t = 70 ms
  // Step 8 (t = 80 ms) is the merge step (delay 1). The average needs 25 ms,
  // so the trainer waits until t = 95 ms: 15 ms blocked.
  p.observe({K::step_begin, 8});
  p.observe({K::poll, 8, false});
  p.observe({K::wait_begin, 8});
  clock.set(0.095);
  p.observe({K::wait_end, 8, true});
  clock.advance(0.010);
  // 15 ms blocked of a 10 ms step: needs 1 + ceil(1.2 * 1.5) = 3 steps.
  CHECK(p.step_seconds() == doctest::Approx(0.010));
  CHECK(p.last_average_seconds() == doctest::Approx(0.025));
  CHECK(p.current_delay() == 3);
  CHECK(p.plan(2).delay == 3);

  // The next averages finish within one step: seen ready by the first poll.
  for (int k = 9; k < 16; ++k) step(k, k == 15);
  p.observe({K::step_begin, 16});
  p.observe({K::poll, 16, true});
  clock.advance(0.010);
  CHECK(p.current_delay() == 3);  // the window still remembers the slow one
  for (int k = 17; k < 24; ++k) step(k, k == 23);
  p.observe({K::step_begin, 24});
  p.observe({K::poll, 24, true});
  CHECK(p.current_delay() == 1);  // a whole window of fast averages
}

TEST_CASE("adaptive delay: a collective's own duration counts where the host never waited") {
  // A stream-ordered (NCCL) wait returns at once: the host sees the average
  // "ready" one step after the launch although the collective ran for 35 ms
  // on the device. Its duration, reported later, must raise the delay.
  policy::manual_clock clock;
  policy::adaptive_delay<policy::manual_clock> p({.tau = 8, .initial_delay = 1, .window = 2}, clock);
  for (int k = 0; k < 8; ++k) {
    p.observe({K::step_begin, k});
    if (k == 7) p.observe({K::launch, k});
    clock.advance(0.010);
  }
  p.observe({K::step_begin, 8});
  p.observe({K::poll, 8, true});  // the host-side test says complete (stream-ordered)
  CHECK(p.current_delay() == 1);
  clock.advance(0.010);
  p.observe({K::collective_time, 9, true, 0.035});
  // 35 ms of a 10 ms step, margin 1.2: ceil(4.2) = 5.
  CHECK(p.current_delay() == 5);
  p.observe({K::collective_time, 10, true, 0.001});  // a fast one does not lower it at once
  CHECK(p.current_delay() == 5);
}

TEST_CASE("adaptive delay stays within [min_delay, tau - 1]") {
  policy::manual_clock clock;
  policy::adaptive_delay<policy::manual_clock> p({.tau = 4, .initial_delay = 1}, clock);
  p.observe({K::step_begin, 0});
  clock.advance(0.001);
  p.observe({K::step_begin, 1});
  p.observe({K::launch, 3});
  p.observe({K::wait_begin, 4});
  clock.advance(10.0);  // a very slow average
  p.observe({K::wait_end, 4, true});
  CHECK(p.current_delay() == 3);
}

TEST_CASE("inside a trainer: the adaptive delay settles where no step waits") {
  // Each step computes 10 ms; an average takes 35 ms. Delay 4 hides it
  // (polled ready at the 4th step after the launch).
  policy::manual_clock clock;
  test::fake_communicator comm({.duration = 0.035}, clock);
  std::vector<float> w(8, 0.0f), g(8, 0.0f);
  delayed_averager tr(make_tensor_list(w), comm,
                      policy::adaptive_delay<policy::manual_clock>({.tau = 8, .initial_delay = 1}, clock),
                      optim::sgd{.lr = 0.1}, merge::mix{0.25});
  int blocked_late = 0;
  for (int k = 0; k < 80; ++k) {
    clock.advance(0.010);  // the user's forward/backward
    const double before = clock.now();
    tr.step(g);
    if (k >= 24 && clock.now() > before) ++blocked_late;  // wait() advanced the clock
  }
  CHECK(tr.policy().current_delay() == 4);
  CHECK(blocked_late == 0);
}
