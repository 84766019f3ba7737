// Host fused pass: one loop over a tensor that loads each stream once,
// applies the shared element math and stores the results. Streams a stage
// does not use are neither read nor written.
#pragma once

#include <cstddef>
#include <type_traits>

#include "../../core/precision.hpp"
#include "../fused_element.hpp"

namespace dasgd::kernels::host {

/// master == nullptr: the storage weights are the source of truth.
/// Otherwise the pass reads and updates the master copy and writes the
/// rounded weights (mixed-precision training with 16-bit storage).
/// W is the snapshot/average type: with a master copy the snapshot is the
/// unrounded master value. `outer`: the outer optimizer's state
/// (stage::outer_momentum only). CheckFinite: returns false when a snapshot value
/// written is a NaN or an infinity (true otherwise, and always without it).
template <stage S, bool UseMaster, bool CheckFinite = false, optimizer_element E, class Storage,
          class W, class C = typename E::compute_type>
bool fused_loop(std::size_t n, Storage* DASGD_RESTRICT w, C* DASGD_RESTRICT master,
                const Storage* DASGD_RESTRICT g, C* DASGD_RESTRICT s0, C* DASGD_RESTRICT s1,
                W* DASGD_RESTRICT snap, const W* DASGD_RESTRICT avg, const merge_coeffs<C> m,
                const E e, C* DASGD_RESTRICT outer = nullptr) {
  constexpr int N = E::state_count;
  constexpr bool step = has(S, stage::local_step);
  constexpr bool writes_w = step || has(S, stage::merge);
  unsigned nonfinite = 0;  // OR-reduced without branches, so the loop stays vectorized
  for (std::size_t i = 0; i < n; ++i) {
    C st[N > 0 ? N : 1] = {};
    if constexpr (step && N > 0) st[0] = s0[i];
    if constexpr (step && N > 1) st[1] = s1[i];
    C gi = C(0), ai = C(0), si = C(0);
    if constexpr (step) gi = to_compute<C>(g[i]);
    if constexpr (has(S, stage::merge)) ai = to_compute<C>(avg[i]);
    if constexpr (has(S, stage::merge_snapshot)) si = to_compute<C>(snap[i]);
    C w0;
    if constexpr (UseMaster) w0 = master[i];
    else w0 = to_compute<C>(w[i]);
    C wi = fused_element<S>(e, m, w0, gi, st, ai, si);
    if constexpr (has(S, stage::outer_momentum)) wi = outer_momentum_step(m, wi, si, ai, outer[i]);
    if constexpr (step && N > 0) s0[i] = st[0];
    if constexpr (step && N > 1) s1[i] = st[1];
    const Storage ws = to_storage<Storage>(wi);
    if constexpr (UseMaster && writes_w) master[i] = wi;
    if constexpr (writes_w) w[i] = ws;
    if constexpr (has(S, stage::write_snapshot)) {
      // Without a master copy the snapshot is the stored weight itself.
      const W sv = std::is_same_v<W, Storage> ? static_cast<W>(ws) : to_storage<W>(wi);
      snap[i] = sv;
      if constexpr (CheckFinite) nonfinite |= static_cast<unsigned>(!is_finite(to_compute<C>(sv)));
    }
  }
  return nonfinite == 0;
}

}  // namespace dasgd::kernels::host
