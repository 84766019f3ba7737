// Host fused pass: one loop over a tensor that loads each stream once,
// applies the shared element math and stores the results. Streams a stage
// does not use are neither read nor written.
#pragma once

#include <cstddef>
#include <type_traits>

#include "../../core/precision.hpp"
#include "../fused_element.hpp"

namespace dasgd::kernels::host {

/// The state planes of the snapshot and the average (stage::average_state),
/// already advanced to the tensor; null entries are never touched.
template <class W>
struct state_planes {
  W* snap[2] = {nullptr, nullptr};
  const W* avg[2] = {nullptr, nullptr};
};

/// master == nullptr: the storage weights are the source of truth.
/// Otherwise the pass reads and updates the master copy and writes the
/// rounded weights (mixed-precision training with 16-bit storage).
/// W is the snapshot/average type: with a master copy the snapshot is the
/// unrounded master value. `outer`: the outer optimizer's state
/// (stage::outer_momentum only). `planes`: the optimizer state's share of
/// the snapshot and the average (stage::average_state only): written from
/// the state after the local step, or merged into it, in the same loop.
/// CheckFinite: returns false when a snapshot value written (weight or
/// state) is a NaN or an infinity (true otherwise, and always without it).
template <stage S, bool UseMaster, bool CheckFinite = false, optimizer_element E, class Storage,
          class W, class C = typename E::compute_type>
bool fused_loop(std::size_t n, Storage* DASGD_RESTRICT w, C* DASGD_RESTRICT master,
                const Storage* DASGD_RESTRICT g, C* DASGD_RESTRICT s0, C* DASGD_RESTRICT s1,
                W* DASGD_RESTRICT snap, const W* DASGD_RESTRICT avg, const merge_coeffs<C> m,
                const E e, C* DASGD_RESTRICT outer = nullptr, const state_planes<W> planes = {}) {
  constexpr int N = E::state_count;
  constexpr bool step = has(S, stage::local_step);
  constexpr bool writes_w = step || has(S, stage::merge);
  constexpr bool avg_state = has(S, stage::average_state);
  constexpr bool state_in = reads_state(S) && N > 0;
  constexpr bool state_out = writes_state(S) && N > 0;
  W* DASGD_RESTRICT ss0 = planes.snap[0];
  W* DASGD_RESTRICT ss1 = planes.snap[1];
  const W* DASGD_RESTRICT sa0 = planes.avg[0];
  const W* DASGD_RESTRICT sa1 = planes.avg[1];
  unsigned nonfinite = 0;  // OR-reduced without branches, so the loop stays vectorized
  for (std::size_t i = 0; i < n; ++i) {
    C st[N > 0 ? N : 1] = {};
    if constexpr (state_in) st[0] = s0[i];
    if constexpr (state_in && N > 1) st[1] = s1[i];
    C gi = C(0), ai = C(0), si = C(0);
    if constexpr (step) gi = to_compute<C>(g[i]);
    if constexpr (has(S, stage::merge)) ai = to_compute<C>(avg[i]);
    if constexpr (has(S, stage::merge_snapshot)) si = to_compute<C>(snap[i]);
    C w0;
    if constexpr (UseMaster) w0 = master[i];
    else w0 = to_compute<C>(w[i]);
    C wi = fused_element<S>(e, m, w0, gi, st, ai, si);
    if constexpr (has(S, stage::outer_momentum)) wi = outer_momentum_step(m, wi, si, ai, outer[i]);
    if constexpr (avg_state && has(S, stage::merge) && N > 0) {
      const bool corr = has(S, stage::merge_snapshot);
      st[0] = merge_state_value<S, E, 0>(m, st[0], to_compute<C>(sa0[i]),
                                         corr ? to_compute<C>(ss0[i]) : C(0));
      if constexpr (N > 1)
        st[1] = merge_state_value<S, E, 1>(m, st[1], to_compute<C>(sa1[i]),
                                           corr ? to_compute<C>(ss1[i]) : C(0));
    }
    if constexpr (state_out) s0[i] = st[0];
    if constexpr (state_out && N > 1) s1[i] = st[1];
    const Storage ws = to_storage<Storage>(wi);
    if constexpr (UseMaster && writes_w) master[i] = wi;
    if constexpr (writes_w) w[i] = ws;
    if constexpr (has(S, stage::write_snapshot)) {
      // Without a master copy the snapshot is the stored weight itself.
      const W sv = std::is_same_v<W, Storage> ? static_cast<W>(ws) : to_storage<W>(wi);
      snap[i] = sv;
      if constexpr (CheckFinite) nonfinite |= static_cast<unsigned>(!is_finite(to_compute<C>(sv)));
      if constexpr (avg_state && N > 0) {
        const W v0 = to_storage<W>(st[0]);
        ss0[i] = v0;
        if constexpr (CheckFinite) nonfinite |= static_cast<unsigned>(!is_finite(to_compute<C>(v0)));
        if constexpr (N > 1) {
          const W v1 = to_storage<W>(st[1]);
          ss1[i] = v1;
          if constexpr (CheckFinite) nonfinite |= static_cast<unsigned>(!is_finite(to_compute<C>(v1)));
        }
      }
    }
  }
  (void)ss0, (void)ss1, (void)sa0, (void)sa1;  // unused without stage::average_state
  return nonfinite == 0;
}

}  // namespace dasgd::kernels::host
