// Warm-up: the first `sync_steps` steps are synchronous (each one a round
// with tau = 1, delay = 0, merged by replacement: exact synchronous
// data-parallel steps); then the inner policy takes over, with its own round
// numbering starting from 0. The count is in steps, which for these rounds
// of one step is the same as rounds.
//
// An aggregate: policy::warmup{.sync_steps = 100, .inner = fixed_delay{}}
// (the inner policy type is deduced; Clang before 17 cannot deduce it for
// an aggregate: write warmup<fixed_delay>{...} there). The trainer calls
// validate().
#pragma once

#include <cstdint>
#include <string>

#include "../core/configuration.hpp"
#include "../core/delay_policy.hpp"
#include "../core/error.hpp"
#include "fixed_delay.hpp"

namespace dasgd::policy {

template <delay_policy Inner = fixed_delay>
struct warmup {
  std::int64_t sync_steps = 0;  ///< synchronous steps before the inner policy starts (>= 0)
  Inner inner{};                ///< the schedule after the warm-up

  void validate() const {
    DASGD_REQUIRE(sync_steps >= 0, config_error, "warm-up step count sync_steps must be >= 0, got ",
                  sync_steps);
    if constexpr (requires { inner.validate(); }) inner.validate();
  }

  round_plan plan(std::int64_t round) {
    if (round < sync_steps) return {1, 0, true};
    return inner.plan(round - sync_steps);
  }

  void observe(const schedule_event& e)
    requires observing_delay_policy<Inner>
  {
    inner.observe(e);
  }

  std::string describe() const {
    return ::dasgd::detail::concat("warmup(sync_steps=", sync_steps,
                                   ", inner=", ::dasgd::detail::describe_component(inner), ")");
  }
};

}  // namespace dasgd::policy
