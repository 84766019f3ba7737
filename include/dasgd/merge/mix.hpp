// The paper's merge (released DaSGD code): w = p * w + (1 - p) * avg, with
// p = update_proportion (the authors used p = 0.25).
//
// An aggregate: merge::mix{}, mix{.update_proportion = 0.5} or mix{0.5}.
// The trainer calls validate() at construction, and coefficients() checks
// again, so a value changed later is caught when the trainer reads it.
#pragma once

#include "../core/merge_rule.hpp"
#include "../detail/validate.hpp"

namespace dasgd::merge {

struct mix {
  double update_proportion = 0.25;  ///< p in [0, 1]: the share of the local weights kept

  void validate() const {
    detail::require_in_range(update_proportion, 0.0, 1.0, true, "mix update_proportion p");
  }
  merge_coefficients coefficients() const {
    validate();
    return {update_proportion, 1.0 - update_proportion, 0.0};
  }
  const char* name() const { return "mix"; }
};

}  // namespace dasgd::merge
