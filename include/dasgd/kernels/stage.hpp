// Which streams one fused pass reads and writes, as a compile-time bit set,
// so that a plain local step never pays for the merge (docs/design.md section 2).
#pragma once

#include "../config.hpp"

namespace dasgd::kernels {

enum class stage : unsigned {
  none = 0,
  local_step = 1u << 0,      ///< read g and optimizer state; w = w - lr * dir
  write_snapshot = 1u << 1,  ///< snap = w (after the local step)
  merge = 1u << 2,           ///< read avg; w = a * w + b * avg
  merge_snapshot = 1u << 3,  ///< also read snap; w += c * snap
  /// The outer optimizer's momentum (merge::outer_sgd): read and write the
  /// outer state u; u = mu * u + (snap - avg), w -= lr * mu * (nesterov ?
  /// u_new : u_old). Goes with merge | merge_snapshot.
  outer_momentum = 1u << 4,
  /// The optimizer state travels with the weights
  /// (trainer_options::optimizer_state = averaging::averaged): with
  /// write_snapshot the state values after the local step are also written
  /// to the state planes of the snapshot; with merge the state is merged by
  /// the same coefficients from the state planes of the average (and, with
  /// merge_snapshot, of the snapshot). Reads the state even without a local
  /// step. Never goes with outer_momentum (the trainer rejects the pair).
  average_state = 1u << 5,
};

constexpr stage operator|(stage x, stage y) {
  return static_cast<stage>(static_cast<unsigned>(x) | static_cast<unsigned>(y));
}
constexpr bool has(stage set, stage flag) {
  return (static_cast<unsigned>(set) & static_cast<unsigned>(flag)) != 0;
}
/// The set without the flags of `drop`.
constexpr stage without(stage set, stage drop) {
  return static_cast<stage>(static_cast<unsigned>(set) & ~static_cast<unsigned>(drop));
}
/// Whether a pass of stage set S reads / writes the optimizer state.
constexpr bool reads_state(stage set) {
  return has(set, stage::local_step) || has(set, stage::average_state);
}
constexpr bool writes_state(stage set) {
  return has(set, stage::local_step) || (has(set, stage::average_state) && has(set, stage::merge));
}

/// Stage sets the trainer issues.
inline constexpr stage plain_step = stage::local_step;
inline constexpr stage step_and_snapshot = stage::local_step | stage::write_snapshot;
inline constexpr stage step_and_mix = stage::local_step | stage::merge;
inline constexpr stage step_and_correct = stage::local_step | stage::merge | stage::merge_snapshot;
inline constexpr stage mix_only = stage::merge;
inline constexpr stage correct_only = stage::merge | stage::merge_snapshot;
inline constexpr stage snapshot_only = stage::write_snapshot;
inline constexpr stage step_and_outer = step_and_correct | stage::outer_momentum;
inline constexpr stage outer_only = correct_only | stage::outer_momentum;

/// Merge coefficients in compute precision; the last three are read only
/// by passes with stage::outer_momentum.
template <class C>
struct merge_coeffs {
  C a;
  C b;
  C c;
  C mu = C(0);     ///< outer momentum
  C lr_mu = C(0);  ///< outer learning rate times mu
  bool nesterov = false;
};

}  // namespace dasgd::kernels
