// Range checks shared by the configuration types; each names the bad value.
#pragma once

#include <cmath>

#include "../core/error.hpp"

namespace dasgd::detail {

inline void require_positive_finite(double v, const char* what) {
  DASGD_REQUIRE(std::isfinite(v) && v > 0.0, config_error, what,
                " must be positive and finite, got ", v);
}

inline void require_nonnegative_finite(double v, const char* what) {
  DASGD_REQUIRE(std::isfinite(v) && v >= 0.0, config_error, what,
                " must be non-negative and finite, got ", v);
}

/// lo <= v <= hi (closed) or lo <= v < hi (half open).
inline void require_in_range(double v, double lo, double hi, bool closed, const char* what) {
  const bool ok = std::isfinite(v) && v >= lo && (closed ? v <= hi : v < hi);
  DASGD_REQUIRE(ok, config_error, what, " must be in [", lo, ", ", hi, closed ? "]" : ")",
                ", got ", v);
}

}  // namespace dasgd::detail
