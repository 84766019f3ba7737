// The algorithms the overlap benchmark compares, named on the command line:
//   compute   no communication at all (the baseline every other row is
//             compared with); the trainer runs the same local update but its
//             round is longer than the run, so it never launches an average
//   sync      synchronous averaging every step (tau = 1, d = 0)
//   local     Local SGD, blocking average every tau steps (d = 0)
//   dasgd-dN  DaSGD, average merged N steps after its launch (1 <= N < tau)
//   adaptive  DaSGD whose delay is chosen online by policy::adaptive_delay
//             (starting at tau - 1)
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

#include <dasgd/core/error.hpp>

namespace dasgd::bench {

enum class algorithm_kind { compute_only, fixed_delay, adaptive_delay };

struct algorithm_spec {
  std::string name;
  algorithm_kind kind = algorithm_kind::fixed_delay;
  std::int64_t tau = 1;
  std::int64_t delay = 0;  ///< fixed delay; for adaptive the initial one

  /// Averages launched per step in steady state: the "allreduces per step"
  /// factor of the communication time (docs/overlap.md).
  double averages_per_step() const {
    return kind == algorithm_kind::compute_only ? 0.0 : 1.0 / static_cast<double>(tau);
  }
};

/// Parses one algorithm name (see the file comment); `tau` is the round
/// length of local, dasgd-dN and adaptive. Throws config_error naming the
/// bad name or delay.
inline algorithm_spec parse_algorithm(std::string_view name, std::int64_t tau) {
  DASGD_REQUIRE(tau >= 1, config_error, "tau must be >= 1, got ", tau);
  const std::string n(name);
  if (n == "compute") return {n, algorithm_kind::compute_only, tau, 0};
  if (n == "sync") return {n, algorithm_kind::fixed_delay, 1, 0};
  if (n == "local") return {n, algorithm_kind::fixed_delay, tau, 0};
  if (n == "adaptive") {
    DASGD_REQUIRE(tau >= 2, config_error, "algorithm 'adaptive' needs tau >= 2 (delays 1..tau-1), got tau ",
                  tau);
    // Starts at the safe end (tau - 1) and shrinks to the smallest delay
    // that hid the recent averages: adapting then never blocks a merge.
    return {n, algorithm_kind::adaptive_delay, tau, tau - 1};
  }
  constexpr std::string_view prefix = "dasgd-d";
  if (n.starts_with(prefix) && n.size() > prefix.size()) {
    std::int64_t d = 0;
    for (char c : n.substr(prefix.size())) {
      DASGD_REQUIRE(c >= '0' && c <= '9', config_error, "algorithm '", n,
                    "': the delay after 'dasgd-d' must be a number");
      d = d * 10 + (c - '0');
      DASGD_REQUIRE(d < 1000000, config_error, "algorithm '", n, "': delay too large");
    }
    DASGD_REQUIRE(d >= 1 && d < tau, config_error, "algorithm '", n, "': delay ", d,
                  " is outside [1, tau) = [1, ", tau, ")");
    return {n, algorithm_kind::fixed_delay, tau, d};
  }
  DASGD_THROW(config_error, "unknown algorithm '", n,
              "' (known: compute, sync, local, dasgd-d<N>, adaptive)");
}

}  // namespace dasgd::bench
