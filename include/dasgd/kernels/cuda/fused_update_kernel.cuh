// The fused delayed-update kernel (docs/design.md section 2): one pass over many
// parameter tensors that applies the local optimizer step, writes the
// snapshot and merges the average, as selected at compile time by the stage
// set S. A plain step reads and writes only w, g and the optimizer state.
//
// Work decomposition (apex/PyTorch multi_tensor_apply, simplified): a launch
// covers up to Policy::tuning.max_tensors_per_launch whole tensors; tensor t owns
// the blocks [first_block[t], first_block[t + 1]), one chunk of
// Policy::tuning.chunk_elements elements per block. The table travels by value as
// the kernel parameter, so a launch needs no device-side metadata and no
// tensor is ever split across launches.
//
// Per chunk, a block takes the vector path (V elements of every stream per
// access, then a scalar tail) when every pointer it touches is aligned to
// its access width at the chunk start, and a scalar path otherwise. Arenas
// are always aligned; user tensors need not be. V is set by the widest
// stream: 16 bytes of it per access. With 16-bit storage and fp32 state
// that is V = 4 (8-byte storage accesses): a warp's accesses then cover
// whole contiguous sectors in every stream. V = 8 would give each thread 32
// bytes of each fp32 stream, split into two half-used accesses per warp,
// which measured 0.74-0.90 of copy bandwidth on an H200 against 0.91-0.99
// for fp32 storage (bench/results, 2026-11-26).
//
// Element math: kernels::fused_element, the same function the host backend
// runs, on values converted to compute precision. The semantics mirror
// kernels::host::fused_loop exactly (see there).
#pragma once

#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>
#include <type_traits>

#include "../../core/precision.hpp"
#include "../fused_element.hpp"
#include "tuning.hpp"

// Unroll hint for the device pass only: the block code also compiles for the
// host (emulation test), where the pragma is unknown.
#if defined(__CUDA_ARCH__)
#define DASGD_UNROLL _Pragma("unroll")
#else
#define DASGD_UNROLL
#endif

namespace dasgd::kernels::cuda {

/// Everything one launch needs; passed by value as the kernel parameter.
/// Arena pointers are bases: tensor t's slice starts at arena_offset[t].
/// W is the snapshot/average (wire) type. nonfinite, when set, receives
/// (atomicMin) the list index of a tensor whose snapshot is not finite.
template <class Storage, class C, class E, int MaxTensors, class W = Storage>
struct fused_update_params {
  E element;
  merge_coeffs<C> merge{C(1), C(0), C(0)};
  C* master = nullptr;
  C* state0 = nullptr;
  C* state1 = nullptr;
  W* snapshot = nullptr;
  const W* average = nullptr;
  /// stage::average_state: optimizer state s's planes of the snapshot and
  /// the average arenas (bases, arena layout).
  W* state_snapshot[2] = {nullptr, nullptr};
  const W* state_average[2] = {nullptr, nullptr};
  C* outer = nullptr;
  std::uint32_t* nonfinite = nullptr;
  int tensor_count = 0;
  std::uint32_t tensor_index[MaxTensors] = {};
  std::uint32_t first_block[MaxTensors] = {};
  Storage* weights[MaxTensors] = {};
  const Storage* grads[MaxTensors] = {};
  std::uint64_t arena_offset[MaxTensors] = {};
  std::uint64_t extent[MaxTensors] = {};
  /// Parameter groups (tensor_options of the table's tensors), when
  /// per_tensor is set.
  bool per_tensor = false;
  C lr_scale[MaxTensors] = {};
  std::uint8_t weight_decay[MaxTensors] = {};
};

/// Tensor t's element: the launch's, or its parameter group's.
template <class Storage, class C, class E, int MaxTensors, class W>
DASGD_HOST_DEVICE E element_of_tensor(const fused_update_params<Storage, C, E, MaxTensors, W>& p,
                                      int t) {
  if constexpr (per_tensor_element<E>) {
    if (p.per_tensor) return p.element.for_tensor(p.lr_scale[t], p.weight_decay[t] != 0);
  }
  return p.element;
}

/// Which streams a pass touches, from the stage set, the optimizer's state
/// count and whether a master copy is the source of truth.
template <stage S, bool UseMaster, int StateCount>
struct stream_use {
  static constexpr bool step = has(S, stage::local_step);
  static constexpr bool merge = has(S, stage::merge);
  static constexpr bool writes_w = step || merge;
  static constexpr bool reads_w = !UseMaster;
  static constexpr bool touches_w = reads_w || writes_w;
  static constexpr bool reads_g = step;
  static constexpr int states = reads_state(S) ? StateCount : 0;  ///< state streams read
  static constexpr int states_out = writes_state(S) ? StateCount : 0;  ///< and written
  static constexpr bool avg_state = has(S, stage::average_state);
  /// State planes of the snapshot written / read, and of the average read.
  static constexpr int state_snap_out = avg_state && has(S, stage::write_snapshot) ? StateCount : 0;
  static constexpr int state_snap_in = avg_state && has(S, stage::merge_snapshot) ? StateCount : 0;
  static constexpr int state_avg_in = avg_state && merge ? StateCount : 0;
  static constexpr bool reads_avg = merge;
  static constexpr bool reads_snap = has(S, stage::merge_snapshot);
  static constexpr bool writes_snap = has(S, stage::write_snapshot);
  static constexpr bool touches_snap = reads_snap || writes_snap;
  static constexpr bool outer = has(S, stage::outer_momentum);
};

namespace detail {

/// V elements of T moved as one (16-byte aligned when that large) access.
template <class T, int V>
struct alignas(sizeof(T) * V >= 16 ? 16 : sizeof(T) * V) packed {
  T v[V];
};

template <class C, class T, int V>
DASGD_HOST_DEVICE void load_vector(const T* p, C (&out)[V]) {
  const packed<T, V> x = *reinterpret_cast<const packed<T, V>*>(p);
DASGD_UNROLL
  for (int k = 0; k < V; ++k) out[k] = to_compute<C>(x.v[k]);
}

/// Stores V values of the stream's own type (no conversion).
template <class T, int V>
DASGD_HOST_DEVICE void store_vector(T* p, const T (&in)[V]) {
  packed<T, V> x;
DASGD_UNROLL
  for (int k = 0; k < V; ++k) x.v[k] = in[k];
  *reinterpret_cast<packed<T, V>*>(p) = x;
}

template <std::size_t Bytes>
DASGD_HOST_DEVICE bool aligned_to(const void* p) {
  return (reinterpret_cast<std::uintptr_t>(p) & (Bytes - 1)) == 0;
}

/// One chunk's streams, already advanced to the chunk start. Pointers of
/// streams the pass does not touch stay null and are never dereferenced.
/// check_finite: the snapshot values written are tested (guard on).
template <class Storage, class C, class W = Storage>
struct chunk_streams {
  Storage* DASGD_RESTRICT w = nullptr;
  C* DASGD_RESTRICT master = nullptr;
  const Storage* DASGD_RESTRICT g = nullptr;
  C* DASGD_RESTRICT s0 = nullptr;
  C* DASGD_RESTRICT s1 = nullptr;
  W* DASGD_RESTRICT snap = nullptr;
  const W* DASGD_RESTRICT avg = nullptr;
  C* DASGD_RESTRICT outer = nullptr;
  W* DASGD_RESTRICT ss0 = nullptr;  ///< state planes of the snapshot (average_state)
  W* DASGD_RESTRICT ss1 = nullptr;
  const W* DASGD_RESTRICT sa0 = nullptr;  ///< and of the average
  const W* DASGD_RESTRICT sa1 = nullptr;
  bool check_finite = false;
};

/// The value a snapshot stores for weight wi (rounded to storage ws): the
/// stored weight itself, or the unrounded value when W is wider.
template <class W, class Storage, class C>
DASGD_HOST_DEVICE W snapshot_value(C wi, Storage ws) {
  if constexpr (std::is_same_v<W, Storage>) {
    (void)wi;
    return ws;
  } else {
    (void)ws;
    return to_storage<W>(wi);
  }
}

/// The state planes of V elements in registers (stage::average_state):
/// the snapshot's (read by a correcting merge) and the average's.
template <class C, int V>
struct state_plane_values {
  C ss0[V] = {}, ss1[V] = {}, sa0[V] = {}, sa1[V] = {};
};

/// V elements already in registers: the element math and the rounding to
/// storage. ws receives the storage value written to w and the snapshot.
/// With stage::average_state and a merge, the state is merged too, from
/// `planes` (the caller writes the state planes of a snapshot from s0, s1).
template <stage S, class E, class Storage, class C, int V>
DASGD_HOST_DEVICE void compute_fragment(const E& e, const merge_coeffs<C>& m, C (&w)[V],
                                                 const C (&g)[V], C (&s0)[V], C (&s1)[V],
                                                 const C (&avg)[V], const C (&snap)[V],
                                                 C (&outer)[V], const state_plane_values<C, V>& planes,
                                                 Storage (&ws)[V]) {
  constexpr int N = E::state_count;
DASGD_UNROLL
  for (int k = 0; k < V; ++k) {
    C st[N > 0 ? N : 1] = {};
    if constexpr (N > 0) st[0] = s0[k];
    if constexpr (N > 1) st[1] = s1[k];
    C wi = fused_element<S>(e, m, w[k], g[k], st, avg[k], snap[k]);
    if constexpr (has(S, stage::outer_momentum)) wi = outer_momentum_step(m, wi, snap[k], avg[k], outer[k]);
    else (void)outer;
    if constexpr (has(S, stage::average_state) && has(S, stage::merge) && N > 0) {
      st[0] = merge_state_value<S, E, 0>(m, st[0], planes.sa0[k], planes.ss0[k]);
      if constexpr (N > 1) st[1] = merge_state_value<S, E, 1>(m, st[1], planes.sa1[k], planes.ss1[k]);
    } else {
      (void)planes;
    }
    if constexpr (N > 0) s0[k] = st[0];
    if constexpr (N > 1) s1[k] = st[1];
    w[k] = wi;
    // Round once; the storage weights and the snapshot get the same value.
    ws[k] = to_storage<Storage>(wi);
  }
}

/// Stores V state values into a state plane of the snapshot, converted to
/// the wire type W; returns 1 when check and a stored value is not finite.
template <class C, class W, int V>
DASGD_HOST_DEVICE unsigned store_state_plane(W* p, const C (&state)[V], bool check) {
  W v[V];
  unsigned bad = 0;
DASGD_UNROLL
  for (int k = 0; k < V; ++k) {
    v[k] = to_storage<W>(state[k]);
    bad |= static_cast<unsigned>(!is_finite(to_compute<C>(v[k])));
  }
  store_vector(p, v);
  return check ? bad : 0u;
}

/// Vector path: elements [0, groups * V) of an aligned chunk, V elements
/// of every stream per thread and access. Each iteration loads U groups
/// (strided by the block size, so a warp's accesses stay contiguous) before
/// computing any: more independent loads in flight per thread.
/// Returns false when a snapshot value it wrote is not finite (and
/// p.check_finite is set).
template <stage S, bool UseMaster, int V, int U, class E, class Storage, class C, class W>
DASGD_HOST_DEVICE bool chunk_vector(const chunk_streams<Storage, C, W>& p, std::uint32_t groups,
                                    const E& e, const merge_coeffs<C>& m, std::uint32_t thread,
                                    std::uint32_t threads) {
  using use = stream_use<S, UseMaster, E::state_count>;
  unsigned nonfinite = 0;  // OR-reduced, no branches
  for (std::uint32_t base = thread; base < groups; base += threads * U) {
    C w[U][V] = {}, g[U][V] = {}, s0[U][V] = {}, s1[U][V] = {}, avg[U][V] = {}, snap[U][V] = {},
      outer[U][V] = {};
    state_plane_values<C, V> planes[U];
    Storage ws[U][V];
    bool in[U];
DASGD_UNROLL
    for (int u = 0; u < U; ++u) {
      // 64-bit: base + u * threads may pass 2^32 only past `groups`.
      const std::uint64_t i = base + static_cast<std::uint64_t>(u) * threads;
      in[u] = i < groups;
      if (!in[u]) continue;
      const std::size_t j = static_cast<std::size_t>(i) * V;
      if constexpr (UseMaster) load_vector(p.master + j, w[u]);
      else load_vector(p.w + j, w[u]);
      if constexpr (use::reads_g) load_vector(p.g + j, g[u]);
      if constexpr (use::states > 0) load_vector(p.s0 + j, s0[u]);
      if constexpr (use::states > 1) load_vector(p.s1 + j, s1[u]);
      if constexpr (use::reads_avg) load_vector(p.avg + j, avg[u]);
      if constexpr (use::reads_snap) load_vector(p.snap + j, snap[u]);
      if constexpr (use::outer) load_vector(p.outer + j, outer[u]);
      if constexpr (use::state_snap_in > 0) load_vector(p.ss0 + j, planes[u].ss0);
      if constexpr (use::state_snap_in > 1) load_vector(p.ss1 + j, planes[u].ss1);
      if constexpr (use::state_avg_in > 0) load_vector(p.sa0 + j, planes[u].sa0);
      if constexpr (use::state_avg_in > 1) load_vector(p.sa1 + j, planes[u].sa1);
    }
DASGD_UNROLL
    for (int u = 0; u < U; ++u) {
      if (!in[u]) continue;
      compute_fragment<S, E, Storage>(e, m, w[u], g[u], s0[u], s1[u], avg[u], snap[u], outer[u],
                                      planes[u], ws[u]);
      const std::size_t j = static_cast<std::size_t>(base + static_cast<std::uint64_t>(u) * threads) * V;
      if constexpr (use::outer) store_vector(p.outer + j, outer[u]);
      if constexpr (use::states_out > 0) store_vector(p.s0 + j, s0[u]);
      if constexpr (use::states_out > 1) store_vector(p.s1 + j, s1[u]);
      if constexpr (use::state_snap_out > 0) nonfinite |= store_state_plane<C>(p.ss0 + j, s0[u], p.check_finite);
      if constexpr (use::state_snap_out > 1) nonfinite |= store_state_plane<C>(p.ss1 + j, s1[u], p.check_finite);
      if constexpr (UseMaster && use::writes_w) store_vector(p.master + j, w[u]);
      if constexpr (use::writes_w) store_vector(p.w + j, ws[u]);
      if constexpr (use::writes_snap) {
        W sv[V];
DASGD_UNROLL
        for (int k = 0; k < V; ++k) sv[k] = snapshot_value<W>(w[u][k], ws[u][k]);
        store_vector(p.snap + j, sv);
        if (p.check_finite)
DASGD_UNROLL
          for (int k = 0; k < V; ++k) nonfinite |= static_cast<unsigned>(!is_finite(to_compute<C>(sv[k])));
      }
    }
  }
  return nonfinite == 0;
}

/// Scalar path: elements [begin, end) of a chunk, Unroll elements per thread
/// and iteration (strided by the block size, so accesses stay coalesced).
template <stage S, bool UseMaster, int Unroll, class E, class Storage, class C, class W>
DASGD_HOST_DEVICE bool chunk_scalar(const chunk_streams<Storage, C, W>& p, std::uint32_t begin,
                                    std::uint32_t end, const E& e, const merge_coeffs<C>& m,
                                    std::uint32_t thread, std::uint32_t threads) {
  using use = stream_use<S, UseMaster, E::state_count>;
  const std::uint32_t stride = threads;
  unsigned nonfinite = 0;
  for (std::uint32_t base = begin + thread; base < end; base += stride * Unroll) {
    C w[Unroll] = {}, g[Unroll] = {}, s0[Unroll] = {}, s1[Unroll] = {}, avg[Unroll] = {},
      snap[Unroll] = {}, outer[Unroll] = {};
    state_plane_values<C, Unroll> planes;
    Storage ws[Unroll];
    bool in[Unroll];
DASGD_UNROLL
    for (int k = 0; k < Unroll; ++k) {
      // 64-bit index: base + k * stride may pass 2^32 only past `end`, but
      // the comparison must not wrap.
      const std::uint64_t j = base + static_cast<std::uint64_t>(k) * stride;
      in[k] = j < end;
      if (!in[k]) continue;
      if constexpr (UseMaster) w[k] = p.master[j];
      else w[k] = to_compute<C>(p.w[j]);
      if constexpr (use::reads_g) g[k] = to_compute<C>(p.g[j]);
      if constexpr (use::states > 0) s0[k] = p.s0[j];
      if constexpr (use::states > 1) s1[k] = p.s1[j];
      if constexpr (use::reads_avg) avg[k] = to_compute<C>(p.avg[j]);
      if constexpr (use::reads_snap) snap[k] = to_compute<C>(p.snap[j]);
      if constexpr (use::outer) outer[k] = p.outer[j];
      if constexpr (use::state_snap_in > 0) planes.ss0[k] = to_compute<C>(p.ss0[j]);
      if constexpr (use::state_snap_in > 1) planes.ss1[k] = to_compute<C>(p.ss1[j]);
      if constexpr (use::state_avg_in > 0) planes.sa0[k] = to_compute<C>(p.sa0[j]);
      if constexpr (use::state_avg_in > 1) planes.sa1[k] = to_compute<C>(p.sa1[j]);
    }
    compute_fragment<S, E, Storage>(e, m, w, g, s0, s1, avg, snap, outer, planes, ws);
DASGD_UNROLL
    for (int k = 0; k < Unroll; ++k) {
      if (!in[k]) continue;
      const std::uint64_t j = base + static_cast<std::uint64_t>(k) * stride;
      if constexpr (use::outer) p.outer[j] = outer[k];
      if constexpr (use::states_out > 0) p.s0[j] = s0[k];
      if constexpr (use::states_out > 1) p.s1[j] = s1[k];
      if constexpr (use::state_snap_out > 0) {
        const W v = to_storage<W>(s0[k]);
        p.ss0[j] = v;
        if (p.check_finite) nonfinite |= static_cast<unsigned>(!is_finite(to_compute<C>(v)));
      }
      if constexpr (use::state_snap_out > 1) {
        const W v = to_storage<W>(s1[k]);
        p.ss1[j] = v;
        if (p.check_finite) nonfinite |= static_cast<unsigned>(!is_finite(to_compute<C>(v)));
      }
      if constexpr (UseMaster && use::writes_w) p.master[j] = w[k];
      if constexpr (use::writes_w) p.w[j] = ws[k];
      if constexpr (use::writes_snap) {
        const W sv = snapshot_value<W>(w[k], ws[k]);
        p.snap[j] = sv;
        if (p.check_finite) nonfinite |= static_cast<unsigned>(!is_finite(to_compute<C>(sv)));
      }
    }
  }
  return nonfinite == 0;
}

/// The tensor slot that owns `block`: the last t with first_block[t] <= block.
template <class P>
DASGD_HOST_DEVICE int tensor_of_block(const P& p, std::uint32_t block) {
  int lo = 0, hi = p.tensor_count - 1;
  while (lo < hi) {
    const int mid = (lo + hi + 1) / 2;
    if (p.first_block[mid] <= block) lo = mid;
    else hi = mid - 1;
  }
  return lo;
}

/// The work of thread `thread` (of `threads`) of block `block`. Threads
/// share nothing, so a host loop over every (block, thread) pair runs a
/// launch exactly (the host emulation test does that).
/// Returns false when the guard is on and a snapshot value the thread
/// wrote is not finite.
template <class Policy, stage S, bool UseMaster, class E, class Storage, class C, int MaxTensors,
          class W>
DASGD_HOST_DEVICE bool update_block(const fused_update_params<Storage, C, E, MaxTensors, W>& p,
                                    std::uint32_t block, std::uint32_t thread,
                                    std::uint32_t threads) {
  static_assert(fused_update_policy<Policy>, "invalid fused_update_tuning");
  static_assert(16 % sizeof(Storage) == 0, "storage type size must divide 16 bytes");
  static_assert(16 % sizeof(C) == 0, "compute type size must divide 16 bytes");
  static_assert(16 % sizeof(W) == 0, "snapshot type size must divide 16 bytes");
  constexpr fused_update_tuning Tuning = Policy::tuning;
  using use = stream_use<S, UseMaster, E::state_count>;
  // 16 bytes of the widest stream per access (see the file comment).
  constexpr bool compute_streams = UseMaster || use::states > 0 || use::outer;
  constexpr std::size_t narrow_widest =
      compute_streams && sizeof(C) > sizeof(Storage) ? sizeof(C) : sizeof(Storage);
  constexpr bool wire_streams = use::touches_snap || use::reads_avg;
  constexpr std::size_t widest =
      wire_streams && sizeof(W) > narrow_widest ? sizeof(W) : narrow_widest;
  constexpr int V = static_cast<int>(16 / widest);
  constexpr std::size_t storage_align = V * sizeof(Storage), compute_align = V * sizeof(C),
                        wire_align = V * sizeof(W);

  const int t = tensor_of_block(p, block);
  const std::size_t begin = static_cast<std::size_t>(block - p.first_block[t]) * Tuning.chunk_elements;
  const std::size_t remaining = p.extent[t] - begin;
  const auto len = static_cast<std::uint32_t>(
      remaining < Tuning.chunk_elements ? remaining : Tuning.chunk_elements);
  const std::size_t off = p.arena_offset[t] + begin;
  const E e = element_of_tensor(p, t);

  chunk_streams<Storage, C, W> s;
  s.check_finite = use::writes_snap && p.nonfinite != nullptr;
  bool aligned = true;
  if constexpr (use::touches_w) {
    s.w = p.weights[t] + begin;
    aligned = aligned && aligned_to<storage_align>(s.w);
  }
  if constexpr (UseMaster) {
    s.master = p.master + off;
    aligned = aligned && aligned_to<compute_align>(s.master);
  }
  if constexpr (use::reads_g) {
    s.g = p.grads[t] + begin;
    aligned = aligned && aligned_to<storage_align>(s.g);
  }
  if constexpr (use::states > 0) {
    s.s0 = p.state0 + off;
    aligned = aligned && aligned_to<compute_align>(s.s0);
  }
  if constexpr (use::states > 1) {
    s.s1 = p.state1 + off;
    aligned = aligned && aligned_to<compute_align>(s.s1);
  }
  if constexpr (use::touches_snap) {
    s.snap = p.snapshot + off;
    aligned = aligned && aligned_to<wire_align>(s.snap);
  }
  if constexpr (use::reads_avg) {
    s.avg = p.average + off;
    aligned = aligned && aligned_to<wire_align>(s.avg);
  }
  if constexpr (use::outer) {
    s.outer = p.outer + off;
    aligned = aligned && aligned_to<compute_align>(s.outer);
  }
  // State planes: slices of the (aligned) snapshot and average arenas.
  if constexpr (use::state_snap_out > 0 || use::state_snap_in > 0) {
    s.ss0 = p.state_snapshot[0] + off;
    aligned = aligned && aligned_to<wire_align>(s.ss0);
  }
  if constexpr (use::state_snap_out > 1 || use::state_snap_in > 1) {
    s.ss1 = p.state_snapshot[1] + off;
    aligned = aligned && aligned_to<wire_align>(s.ss1);
  }
  if constexpr (use::state_avg_in > 0) {
    s.sa0 = p.state_average[0] + off;
    aligned = aligned && aligned_to<wire_align>(s.sa0);
  }
  if constexpr (use::state_avg_in > 1) {
    s.sa1 = p.state_average[1] + off;
    aligned = aligned && aligned_to<wire_align>(s.sa1);
  }

  if (aligned) {
    const std::uint32_t groups = len / V;
    const bool a = chunk_vector<S, UseMaster, V, Tuning.vector_unroll>(s, groups, e,
                                                                      p.merge, thread, threads);
    const bool b = chunk_scalar<S, UseMaster, 1>(s, groups * V, len, e, p.merge, thread,
                                                threads);
    return a && b;
  }
  return chunk_scalar<S, UseMaster, 4>(s, 0, len, e, p.merge, thread, threads);
}

}  // namespace detail

/// StageBits is the stage set as an integer: nvcc 13's host stubs cannot
/// spell a scoped-enum template argument that names no single enumerator.
template <class Policy, unsigned StageBits, bool UseMaster, class E, class Storage, class C,
          class W = Storage>
__global__ void __launch_bounds__(Policy::tuning.threads_per_block, Policy::tuning.min_blocks_per_sm)
    fused_update_kernel(
        const fused_update_params<Storage, C, E, Policy::tuning.max_tensors_per_launch, W> p) {
  const bool finite = detail::update_block<Policy, static_cast<stage>(StageBits), UseMaster>(
      p, blockIdx.x, threadIdx.x, blockDim.x);
  if (!finite) {
    const int t = detail::tensor_of_block(p, blockIdx.x);
    atomicMin(p.nonfinite, p.tensor_index[t]);
  }
}

}  // namespace dasgd::kernels::cuda
