// The trainer's settings that are not part of the algorithm, and what one
// step() reports.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "averaging.hpp"

namespace dasgd {

/// What one step() did.
struct step_report {
  std::int64_t step = 0;      ///< index of this step (0-based)
  std::int64_t round = 0;     ///< round the step belongs to
  bool launched = false;      ///< an average was launched after this step's update
  bool merged = false;        ///< an average was merged in this step
  double wait_seconds = 0.0;  ///< time blocked waiting for the average (0 when hidden)
  /// The non-finite guard (skip mode) dropped this step's merge: a rank's
  /// snapshot held a NaN or an infinity. Local weights were kept.
  bool merge_skipped = false;
  int nonfinite_rank = -1;     ///< with merge_skipped: the lowest such rank
  int nonfinite_tensor = -1;   ///< and the first such tensor there
};

/// What the trainer does when a snapshot (what a rank is about to send)
/// holds a NaN or an infinity. The check is fused into the pass that writes
/// the snapshot; every rank learns of it through the collective's signature
/// before anything is merged, so no rank merges a poisoned average.
enum class nonfinite_guard {
  off,          ///< no check (no cost)
  throw_error,  ///< nonfinite_error on every rank, naming the rank, tensor and step
  skip_merge,   ///< every rank skips that merge and keeps its local weights
};

inline const char* to_string(nonfinite_guard g) {
  switch (g) {
    case nonfinite_guard::off: return "off";
    case nonfinite_guard::throw_error: return "throw";
    case nonfinite_guard::skip_merge: return "skip";
  }
  return "unknown";
}

/// One tensor's hyper-parameters relative to the optimizer's, as in a
/// torch.optim parameter group: no weight decay on biases and norms, a
/// smaller learning rate for embeddings... Every tensor still goes through
/// the same fused launch: the settings travel in the kernel's chunk table.
struct tensor_options {
  double lr_scale = 1.0;     ///< this tensor's learning rate is lr * lr_scale (>= 0, finite)
  bool weight_decay = true;  ///< false: the optimizer's weight decay is not applied
};

struct trainer_options {
  /// Keep a compute-precision (fp32) master copy of 16-bit weights: the
  /// optimizer and the merge update the master; the user's tensors receive
  /// the rounded values. The snapshot and the average are then kept (and
  /// sent) in the compute type too, so merging does not round the master.
  /// Costs three compute-type arenas.
  bool master_weights = false;
  /// Non-finite values in a snapshot (see nonfinite_guard).
  nonfinite_guard nonfinite = nonfinite_guard::off;
  /// Receives warnings that have no caller to throw to: the destructor
  /// discarding an average still in flight, or an error it swallowed.
  /// Empty: they are written to stderr.
  std::function<void(const std::string&)> warning{};
  /// Per-tensor settings (parameter groups), one per parameter tensor in
  /// list order; empty: every tensor uses the optimizer's own. Part of the
  /// configuration that ranks compare and checkpoints record.
  std::vector<tensor_options> per_tensor{};
  /// The optimizer state (SGD's momentum buffer, AdamW's two moments):
  /// local to each worker (default), or averaged with the weights in the
  /// same collective and merged by the same rule (core/averaging.hpp).
  /// Part of the configuration; not with merge::outer_sgd, nor with an
  /// fp16 wire (whose range cannot hold second moments: use bf16 or fp32).
  averaging optimizer_state = averaging::local;
};

/// How load() treats a checkpoint written by a differently configured
/// trainer (another tau, delay, merge rule, optimizer hyper-parameters...).
struct checkpoint_load_options {
  /// false (default): such a checkpoint is rejected with checkpoint_error
  /// naming the first difference. true: it is accepted; the saved schedule
  /// position (current round, an average in flight and its merge step and
  /// coefficients) is kept as it was, and the new configuration takes
  /// effect from the next round on. Types, shapes, the optimizer kind, the
  /// rank and the communicator size must match in either case.
  bool allow_config_change = false;
};

}  // namespace dasgd
