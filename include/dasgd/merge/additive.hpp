// Additive correction (CoCoD-SGD / LOSCAR style): w = w + (avg - snapshot).
// Keeps the local progress made since the snapshot and replaces the
// snapshot's own contribution by the average.
#pragma once

#include "../core/merge_rule.hpp"

namespace dasgd::merge {

struct additive {
  merge_coefficients coefficients() const { return {1.0, 1.0, -1.0}; }
  const char* name() const { return "additive"; }
};

}  // namespace dasgd::merge
