// Two-level schedule for a hierarchical communicator (comm/hierarchical.hpp):
// every round has `tau` local steps; a round's average spans the rank's
// group (the fast link), except every `outer_every`-th round, whose average
// spans every rank (the slow link), so the average across groups happens
// every tau * outer_every steps. Each level has its own delay: group rounds
// `delay` (0: blocking, the fast link barely costs anything), across-groups
// rounds `outer_delay` (hides the slow link behind that many steps).
//
// Round r is across groups iff (r + 1) % outer_every == 0: a pure function
// of the round index, so every rank plans the same level for every round
// (the policy is part of the configuration the trainer compares across
// ranks at construction, and a checkpoint resumes at its saved round), and a
// rank that disagrees anyway meets its group on the group communicator
// with a different scope: a mismatch on every member.
//
// outer_every = 1 is flat DaSGD (fixed_delay{tau, outer_delay}). Both
// delays must be < tau: a round's delay must be smaller than the next
// round's tau (one average in flight at a time).
//
// An aggregate: policy::hierarchical{.tau = 4, .delay = 0, .outer_every = 4, .outer_delay = 2}.
#pragma once

#include <cstdint>
#include <string>

#include "../comm/scopes.hpp"
#include "../core/delay_policy.hpp"
#include "../core/error.hpp"

namespace dasgd::policy {

struct hierarchical {
  std::int64_t tau = 4;          ///< local steps per round (>= 1)
  std::int64_t delay = 0;        ///< delay of group rounds, in [0, tau)
  std::int64_t outer_every = 4;  ///< every outer_every-th round averages across groups (>= 1)
  std::int64_t outer_delay = 1;  ///< delay of those rounds, in [0, tau)

  void validate() const {
    DASGD_REQUIRE(tau >= 1, config_error, "tau (steps per round) must be >= 1, got ", tau);
    DASGD_REQUIRE(delay >= 0 && delay < tau, config_error, "group-round delay ", delay,
                  " is outside [0, tau) = [0, ", tau, ")");
    DASGD_REQUIRE(outer_every >= 1, config_error,
                  "outer_every (rounds per average across groups) must be >= 1, got ", outer_every);
    DASGD_REQUIRE(outer_delay >= 0 && outer_delay < tau, config_error, "across-groups delay ",
                  outer_delay, " is outside [0, tau) = [0, ", tau, ")");
  }

  /// Whether round r averages across groups.
  bool outer(std::int64_t round) const { return (round + 1) % outer_every == 0; }

  round_plan plan(std::int64_t round) const {
    if (outer(round)) return {tau, outer_delay, false, comm::world_scope};
    return {tau, delay, false, comm::group_scope};
  }

  std::string describe() const {
    return ::dasgd::detail::concat("hierarchical(tau=", tau, ", delay=", delay,
                                   ", outer_every=", outer_every, ", outer_delay=", outer_delay,
                                   ")");
  }
};

}  // namespace dasgd::policy
