// The general form every merge reduces to: w = a * w_local + b * avg + c * snap.
// Useful for experiments; a + b + c = 1 keeps a consensus point fixed (when
// all workers agree, merging changes nothing), which is checked unless the
// caller opts out with require_consensus = false.
//
// An aggregate: merge::linear{.a = 0.5, .b = 0.7, .c = -0.2} or
// linear{0.5, 0.7, -0.2}. The default {1, 0, 0} keeps the local weights
// (the average is computed but ignored). The trainer calls validate().
#pragma once

#include <cmath>

#include "../core/merge_rule.hpp"

namespace dasgd::merge {

struct linear {
  double a = 1.0;  ///< weight of the local weights
  double b = 0.0;  ///< weight of the average
  double c = 0.0;  ///< weight of the snapshot the average was launched from
  bool require_consensus = true;  ///< require a + b + c == 1 (within 1e-12)

  void validate() const {
    detail::validate_coefficients({a, b, c}, "linear");
    DASGD_REQUIRE(!require_consensus || std::abs(a + b + c - 1.0) <= 1e-12, config_error,
                  "linear merge coefficients must sum to 1 (a=", a, " b=", b, " c=", c,
                  " sum to ", a + b + c, "); set require_consensus = false to allow it");
  }
  merge_coefficients coefficients() const { return {a, b, c}; }
  const char* name() const { return "linear"; }
};

}  // namespace dasgd::merge
