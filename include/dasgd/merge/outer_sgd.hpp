// The outer optimizer of DiLoCo (Douillard et al., 2023), applied at the
// delayed merge: the pseudo-gradient is snapshot - average, and an outer SGD
// step with (Nesterov) momentum moves the weights by it while keeping the
// local progress made since the snapshot:
//
//   u     = momentum * u + (snap - avg)           (the outer state, one arena)
//   w_new = w_local - lr * (nesterov ? (snap - avg) + momentum * u : u)
//
// The trainer runs it as the linear merge a = 1, b = lr, c = -lr followed by
// the momentum term -lr * momentum * (nesterov ? u_new : u_old), fused into
// the merge pass. With lr = 1 and momentum = 0 the result is bit for bit the
// additive rule w + (avg - snap); lr < 1 moves only part of the way to the
// average (DiLoCo's outer lr 0.7 with Nesterov momentum 0.9).
//
// An aggregate: merge::outer_sgd{.lr = 0.7, .momentum = 0.9, .nesterov = true}.
// The outer state is local to each worker and is saved in checkpoints.
#pragma once

#include <string>

#include "../core/error.hpp"
#include "../core/merge_rule.hpp"
#include "../detail/validate.hpp"

namespace dasgd::merge {

struct outer_sgd {
  double lr = 0.7;          ///< outer learning rate (> 0)
  double momentum = 0.9;    ///< outer momentum, in [0, 1)
  bool nesterov = true;     ///< Nesterov momentum (needs momentum > 0 to matter)

  void validate() const {
    detail::require_positive_finite(lr, "outer_sgd lr");
    detail::require_in_range(momentum, 0.0, 1.0, false, "outer_sgd momentum");
  }
  merge_coefficients coefficients() const {
    validate();
    return {1.0, lr, -lr};
  }
  /// What the trainer's merge pass needs beyond the coefficients.
  struct outer_terms {
    double momentum;
    double lr_momentum;
    bool nesterov;
  };
  outer_terms outer() const { return {momentum, lr * momentum, nesterov}; }
  const char* name() const { return "outer_sgd"; }
  std::string describe() const {
    return ::dasgd::detail::concat("outer_sgd(lr=", lr, ", momentum=", momentum,
                                   ", nesterov=", nesterov ? 1 : 0, ")");
  }
};

}  // namespace dasgd::merge
