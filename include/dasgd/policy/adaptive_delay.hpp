// Adaptive delay: keeps tau fixed and picks, round by round, the smallest
// delay that would have hidden the recent averages completely, measured
// online. Each average yields a "needed delay":
//  - completed before its merge: the first step j after the launch at which
//    the trainer's poll saw it complete (a delay of j would not have waited);
//  - still running at its merge step d: d + ceil(margin * blocked / t_step),
//    where blocked is the time the merge waited and t_step the mean compute
//    time of a step (time between step() calls, blocking excluded).
// The plan uses the maximum needed delay over the last `window` averages,
// clamped to [min_delay, tau - 1]: it grows at once when a merge blocks and
// shrinks only after a whole window of faster averages, so a single fast
// round does not make the next one block.
//
// Ranks measure different times, so they may plan different delays; the
// policy declares agree_on_max_delay and the trainer makes every rank use
// the largest delay planned by any rank (exchanged in the signature of the
// average before). Where the host never blocks on a collective (NCCL waits
// are stream-ordered), the trainer reports the collective's own duration
// (collective_time events) and the needed delay includes
// ceil(margin * duration / t_step).
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <deque>
#include <string>

#include "../core/delay_policy.hpp"
#include "../core/error.hpp"
#include "clock.hpp"

namespace dasgd::policy {

struct adaptive_delay_options {
  std::int64_t tau = 4;
  std::int64_t initial_delay = 1;
  std::int64_t min_delay = 1;
  std::int64_t max_delay = -1;  ///< -1: tau - 1
  int window = 8;               ///< averages remembered
  double margin = 1.2;          ///< safety factor on the blocked time
  double smoothing = 0.2;       ///< EWMA weight of the newest step time
};

template <clock_source Clock = steady_clock_source>
class adaptive_delay {
 public:
  explicit adaptive_delay(adaptive_delay_options o = {}, Clock clock = {})
      : o_(o), clock_(std::move(clock)) {
    if (o_.max_delay < 0) o_.max_delay = o_.tau - 1;
    DASGD_REQUIRE(o_.tau >= 1, config_error, "tau (steps per round) must be >= 1, got ", o_.tau);
    DASGD_REQUIRE(o_.min_delay >= 0 && o_.min_delay <= o_.max_delay && o_.max_delay < o_.tau,
                  config_error, "adaptive delay bounds [", o_.min_delay, ", ", o_.max_delay,
                  "] must satisfy 0 <= min <= max < tau = ", o_.tau);
    DASGD_REQUIRE(o_.initial_delay >= o_.min_delay && o_.initial_delay <= o_.max_delay,
                  config_error, "initial delay ", o_.initial_delay, " is outside [",
                  o_.min_delay, ", ", o_.max_delay, "]");
    DASGD_REQUIRE(o_.window >= 1, config_error, "adaptive delay window must be >= 1, got ",
                  o_.window);
    DASGD_REQUIRE(std::isfinite(o_.margin) && o_.margin >= 1.0, config_error,
                  "adaptive delay margin must be >= 1, got ", o_.margin);
    DASGD_REQUIRE(o_.smoothing > 0.0 && o_.smoothing <= 1.0, config_error,
                  "adaptive delay smoothing must be in (0, 1], got ", o_.smoothing);
    delay_ = o_.initial_delay;
  }

  static constexpr bool agree_on_max_delay = true;

  round_plan plan(std::int64_t) { return {o_.tau, delay_, false}; }

  std::string describe() const {
    return ::dasgd::detail::concat("adaptive_delay(tau=", o_.tau, ", initial_delay=", o_.initial_delay,
                                   ", min_delay=", o_.min_delay, ", max_delay=", o_.max_delay,
                                   ", window=", o_.window, ", margin=", o_.margin,
                                   ", smoothing=", o_.smoothing, ")");
  }

  void observe(const schedule_event& e) {
    const double t = clock_.now();
    using K = schedule_event::kind;
    switch (e.what) {
      case K::step_begin:
        if (last_step_begin_ >= 0.0) {
          const double dt = std::max(0.0, t - last_step_begin_ - blocked_since_last_step_);
          step_seconds_ = step_seconds_ < 0.0 ? dt
                                              : (1.0 - o_.smoothing) * step_seconds_ +
                                                    o_.smoothing * dt;
        }
        last_step_begin_ = t;
        blocked_since_last_step_ = 0.0;
        break;
      case K::launch:
        launch_step_ = e.step;
        launch_time_ = t;
        in_flight_ = true;
        break;
      case K::poll:
        if (in_flight_ && e.ready) complete(static_cast<double>(e.step - launch_step_), t);
        break;
      case K::wait_begin:
        wait_begin_ = t;
        break;
      case K::wait_end:
        if (in_flight_) {
          const double blocked = std::max(0.0, t - wait_begin_);
          blocked_since_last_step_ += blocked;
          const double extra =
              step_seconds_ > 0.0 ? std::ceil(o_.margin * blocked / step_seconds_) : 1.0;
          complete(static_cast<double>(e.step - launch_step_) + std::max(1.0, extra), t);
        }
        break;
      case K::merge:
        break;
      case K::collective_time:
        // The host did not see this collective's time (it never blocked on
        // it): what it would have needed, from its measured duration.
        if (e.seconds >= 0.0 && step_seconds_ > 0.0 && !needed_.empty()) {
          const auto from_time =
              static_cast<std::int64_t>(std::ceil(o_.margin * e.seconds / step_seconds_));
          needed_.back() = std::max(needed_.back(), from_time);
          const std::int64_t worst = *std::max_element(needed_.begin(), needed_.end());
          delay_ = std::clamp(worst, o_.min_delay, o_.max_delay);
        }
        break;
    }
  }

  std::int64_t current_delay() const { return delay_; }
  /// Mean compute time per step (seconds), or a negative value before two steps.
  double step_seconds() const { return step_seconds_; }
  /// Duration of the last average from launch until it was seen complete.
  double last_average_seconds() const { return last_average_seconds_; }
  const adaptive_delay_options& options() const { return o_; }

 private:
  void complete(double needed, double t) {
    in_flight_ = false;
    last_average_seconds_ = t - launch_time_;
    needed_.push_back(static_cast<std::int64_t>(needed));
    while (static_cast<int>(needed_.size()) > o_.window) needed_.pop_front();
    const std::int64_t worst = *std::max_element(needed_.begin(), needed_.end());
    delay_ = std::clamp(worst, o_.min_delay, o_.max_delay);
  }

  adaptive_delay_options o_;
  Clock clock_;
  std::int64_t delay_ = 1;
  std::deque<std::int64_t> needed_;
  double step_seconds_ = -1.0;
  double last_step_begin_ = -1.0;
  double blocked_since_last_step_ = 0.0;
  std::int64_t launch_step_ = 0;
  double launch_time_ = 0.0;
  double wait_begin_ = 0.0;
  double last_average_seconds_ = -1.0;
  bool in_flight_ = false;
};

}  // namespace dasgd::policy
