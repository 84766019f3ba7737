// Warm-up: the first `rounds` rounds are synchronous (tau = 1, delay = 0,
// merge by replacement, i.e. exact synchronous data-parallel steps); then
// the inner policy takes over with its own round numbering from 0.
#pragma once

#include <cstdint>
#include <utility>

#include "../core/delay_policy.hpp"
#include "../core/error.hpp"

namespace dasgd::policy {

template <delay_policy Inner>
class warmup {
 public:
  warmup(std::int64_t sync_steps, Inner inner) : sync_steps_(sync_steps), inner_(std::move(inner)) {
    DASGD_REQUIRE(sync_steps >= 0, config_error, "warm-up step count must be >= 0, got ",
                  sync_steps);
  }

  round_plan plan(std::int64_t round) {
    if (round < sync_steps_) return {1, 0, true};
    return inner_.plan(round - sync_steps_);
  }

  void observe(const schedule_event& e)
    requires observing_delay_policy<Inner>
  {
    inner_.observe(e);
  }

  std::int64_t sync_steps() const { return sync_steps_; }
  Inner& inner() { return inner_; }
  const Inner& inner() const { return inner_; }

 private:
  std::int64_t sync_steps_;
  Inner inner_;
};

}  // namespace dasgd::policy
