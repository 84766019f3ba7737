// Fixed schedule: every round has tau local steps and its average is merged
// `delay` steps after the launch. tau = 1, delay = 0 is synchronous
// averaging; delay = 0 is classic (blocking) Local SGD.
//
// An aggregate: policy::fixed_delay{}, fixed_delay{.tau = 8, .delay = 2} or
// fixed_delay{8, 2}. The trainer calls validate() when it is constructed.
#pragma once

#include <cstdint>
#include <string>

#include "../core/delay_policy.hpp"
#include "../core/error.hpp"

namespace dasgd::policy {

struct fixed_delay {
  std::int64_t tau = 4;    ///< local steps per round (>= 1)
  std::int64_t delay = 1;  ///< steps between a round's launch and its merge, in [0, tau)

  void validate() const {
    DASGD_REQUIRE(tau >= 1, config_error, "tau (steps per round) must be >= 1, got ", tau);
    DASGD_REQUIRE(delay >= 0 && delay < tau, config_error, "delay ", delay,
                  " is outside [0, tau) = [0, ", tau, ")");
  }
  round_plan plan(std::int64_t) const { return {tau, delay, false}; }
  std::string describe() const {
    return ::dasgd::detail::concat("fixed_delay(tau=", tau, ", delay=", delay, ")");
  }
};

/// Synchronous data-parallel averaging: tau = 1, delay = 0.
inline constexpr fixed_delay synchronous() { return {.tau = 1, .delay = 0}; }

}  // namespace dasgd::policy
