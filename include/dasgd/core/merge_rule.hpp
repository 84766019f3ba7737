// The merge rule concept: how the finished average enters the live weights.
// Every rule reduces to three coefficients (docs/design.md section 2):
//   w_new = a * w_local + b * avg + c * snapshot
#pragma once

#include <cmath>
#include <concepts>

#include "error.hpp"

namespace dasgd {

struct merge_coefficients {
  double a = 1.0;
  double b = 0.0;
  double c = 0.0;
  friend bool operator==(const merge_coefficients&, const merge_coefficients&) = default;
};

/// Replacement w = avg (synchronous averaging).
inline constexpr merge_coefficients replace_coefficients{0.0, 1.0, 0.0};

template <class M>
concept merge_rule = std::copy_constructible<M> && requires(const M& m) {
  { m.coefficients() } -> std::convertible_to<merge_coefficients>;
  { m.name() } -> std::convertible_to<const char*>;
};

namespace detail {
inline void validate_coefficients(const merge_coefficients& m, const char* rule) {
  DASGD_REQUIRE(std::isfinite(m.a) && std::isfinite(m.b) && std::isfinite(m.c), config_error,
                "merge rule '", rule, "' has non-finite coefficients a=", m.a, " b=", m.b,
                " c=", m.c);
}
}  // namespace detail

}  // namespace dasgd
