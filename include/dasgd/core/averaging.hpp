// What travels in the step average besides the weights (issue #15, "what is
// averaged"): the optimizer state, and buffers the user registers with the
// trainer (batch-norm running statistics...). Each is `local` (stays on
// its worker, the paper's DaSGD) or `averaged` (docs/beyond.md, "Averaging
// the optimizer state and registered buffers").
//
// `averaged` means: the value is written to the snapshot in the pass that
// writes the weights' snapshot (the snapshot and the average arenas grow by
// one plane per optimizer state and by the averaged buffers), travels in
// the same collective, in the same wire type, and is merged in the pass
// that merges the weights, by the same coefficients:
//   x_new = (a * x_local + c * x_snap) + b * x_avg
// so mix keeps p of the local value, additive adds (avg - snap) to it and
// a synchronous round replaces it. A state the optimizer declares
// non-negative (AdamW's second moment) is clamped at 0 after the merge.
#pragma once

namespace dasgd {

enum class averaging {
  local,     ///< kept by each worker, never sent
  averaged,  ///< sent with the weights' snapshot and merged with their rule
};

inline const char* to_string(averaging a) {
  switch (a) {
    case averaging::local: return "local";
    case averaging::averaged: return "averaged";
  }
  return "unknown";
}

}  // namespace dasgd
