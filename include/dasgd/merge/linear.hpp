// The general form every merge reduces to: w = a * w_local + b * avg + c * snap.
// Useful for experiments; a + b + c = 1 keeps a consensus point fixed (when
// all workers agree, merging changes nothing), which is checked unless the
// caller opts out.
#pragma once

#include <cmath>

#include "../core/merge_rule.hpp"

namespace dasgd::merge {

struct linear {
  double a = 1.0;
  double b = 0.0;
  double c = 0.0;

  linear() = default;
  linear(double a_, double b_, double c_, bool require_consensus = true) : a(a_), b(b_), c(c_) {
    detail::validate_coefficients({a, b, c}, "linear");
    DASGD_REQUIRE(!require_consensus || std::abs(a + b + c - 1.0) <= 1e-12, config_error,
                  "linear merge coefficients must sum to 1 (a=", a, " b=", b, " c=", c,
                  " sum to ", a + b + c, "); pass require_consensus=false to allow it");
  }
  merge_coefficients coefficients() const { return {a, b, c}; }
  const char* name() const { return "linear"; }
};

}  // namespace dasgd::merge
