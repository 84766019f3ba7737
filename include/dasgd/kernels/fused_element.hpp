// The element math of the fused delayed update, shared by every backend: the
// host loop and the CUDA kernels call this same function on values already
// converted to compute precision.
//
//   w_local = optimizer(w, g, state)          if local_step
//   snap    = w_local                          if write_snapshot (done by caller)
//   w_new   = (a * w_local + c * snap) + b * avg   if merge (c term if merge_snapshot)
#pragma once

#include "../core/local_optimizer.hpp"
#include "stage.hpp"

namespace dasgd::kernels {

template <stage S, optimizer_element E, class C = typename E::compute_type>
DASGD_HOST_DEVICE C fused_element(const E& opt, const merge_coeffs<C>& m, C w, C g, C* state,
                                  C avg, C snap) {
  if constexpr (has(S, stage::local_step)) {
    w = opt.apply(w, g, state);
  } else {
    (void)opt;
    (void)g;
    (void)state;
  }
  if constexpr (has(S, stage::merge)) {
    // (a*w + c*snap) first: for the additive rule that is the local progress
    // since the snapshot, computed without cancellation against avg.
    C r = m.a * w;
    if constexpr (has(S, stage::merge_snapshot)) r = r + m.c * snap;
    w = r + m.b * avg;
  } else {
    (void)m;
    (void)avg;
  }
  if constexpr (!has(S, stage::merge_snapshot)) (void)snap;
  return w;
}

}  // namespace dasgd::kernels

namespace dasgd::kernels {

/// The outer optimizer's momentum term, after fused_element has applied the
/// linear part w = (w_local - lr * snap) + lr * avg of an outer SGD step
/// with the pseudo-gradient snap - avg: u_new = mu * u + (snap - avg);
/// w -= lr * mu * (nesterov ? u_new : u). With mu = 0 the weight is left
/// exactly as the linear part made it (the additive rule for lr = 1).
template <class C>
DASGD_HOST_DEVICE C outer_momentum_step(const merge_coeffs<C>& m, C w, C snap, C avg, C& u) {
  const C u_new = m.mu * u + (snap - avg);
  const C term = m.nesterov ? u_new : u;
  u = u_new;
  return w - m.lr_mu * term;
}

/// The optimizer states an element declares non-negative (a bit per state:
/// AdamW's second moment), through an optional `nonnegative_states` member;
/// none without it.
template <optimizer_element E>
constexpr unsigned nonnegative_states_of() {
  if constexpr (requires { E::nonnegative_states; }) return static_cast<unsigned>(E::nonnegative_states);
  return 0u;
}

/// State value `Index` merged as the weights are (stage::average_state):
/// s = (a * s_local + c * s_snap) + b * s_avg, in the order fused_element
/// uses for w. A state the element declares non-negative is clamped at 0
/// afterwards: a convex rule (mix, replacement) never goes below 0, but the
/// additive rule s_local + (s_avg - s_snap) can when this worker's second
/// moment decayed below what it sent, and a negative second moment would
/// make sqrt(v) NaN. NaN stays NaN (the comparison is false), so the guard
/// still sees it.
template <stage S, optimizer_element E, int Index, class C>
DASGD_HOST_DEVICE C merge_state_value(const merge_coeffs<C>& m, C local, C avg, C snap) {
  C r = m.a * local;
  if constexpr (has(S, stage::merge_snapshot)) r = r + m.c * snap;
  else (void)snap;
  r = r + m.b * avg;
  if constexpr ((nonnegative_states_of<E>() >> Index) & 1u) r = r < C(0) ? C(0) : r;
  return r;
}

/// Element functor for passes without a local step (merge-only, snapshot-only).
template <class C>
struct no_step_element {
  using compute_type = C;
  static constexpr int state_count = 0;
  DASGD_HOST_DEVICE C apply(C w, C, C*) const { return w; }
};

}  // namespace dasgd::kernels
