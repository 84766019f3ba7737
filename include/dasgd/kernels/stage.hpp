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
};

constexpr stage operator|(stage x, stage y) {
  return static_cast<stage>(static_cast<unsigned>(x) | static_cast<unsigned>(y));
}
constexpr bool has(stage set, stage flag) {
  return (static_cast<unsigned>(set) & static_cast<unsigned>(flag)) != 0;
}

/// Stage sets the trainer issues.
inline constexpr stage plain_step = stage::local_step;
inline constexpr stage step_and_snapshot = stage::local_step | stage::write_snapshot;
inline constexpr stage step_and_mix = stage::local_step | stage::merge;
inline constexpr stage step_and_correct = stage::local_step | stage::merge | stage::merge_snapshot;
inline constexpr stage mix_only = stage::merge;
inline constexpr stage correct_only = stage::merge | stage::merge_snapshot;
inline constexpr stage snapshot_only = stage::write_snapshot;

/// Merge coefficients in compute precision.
template <class C>
struct merge_coeffs {
  C a;
  C b;
  C c;
};

}  // namespace dasgd::kernels
