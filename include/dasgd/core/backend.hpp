// The update backend concept (Kokkos style: one algorithm, a host and a
// device implementation). A backend owns no trainer state; it allocates the
// trainer's arenas in its memory space and runs one fused pass over all
// parameter tensors per call.
#pragma once

#include <concepts>
#include <cstddef>
#include <cstdint>

#include "../kernels/stage.hpp"
#include "tensor_list.hpp"
#include "trainer_options.hpp"

namespace dasgd {

/// Arguments of one fused pass. The trainer keeps optimizer state, snapshot
/// and average in arenas (one contiguous buffer each) that share the layout
/// `offsets`: tensor i occupies [offsets[i], offsets[i] + extent(i)).
/// W is the element type of the snapshot and average arenas (what travels):
/// the storage type, or the compute type when a master copy is kept, so
/// that an average does not round the master weights to 16 bits.
template <class Storage, class C, class Space, class W = Storage>
struct pass_args {
  using wire_type = W;
  static constexpr int max_state = 2;
  const tensor_list<Storage, Space>* weights = nullptr;
  const tensor_list<const Storage, Space>* grads = nullptr;  ///< only for local_step
  const std::size_t* offsets = nullptr;
  /// Optional fp32 (compute type) master copy of the weights, arena layout.
  /// When set it is the source of truth: the pass reads and updates it and
  /// writes the rounded result to the storage weights.
  C* master = nullptr;
  C* state[max_state] = {nullptr, nullptr};
  W* snapshot = nullptr;
  const W* average = nullptr;
  /// stage::average_state: the planes of the snapshot and the average
  /// arenas that hold optimizer state s (same layout `offsets`, type W).
  W* state_snapshot[max_state] = {nullptr, nullptr};
  const W* state_average[max_state] = {nullptr, nullptr};
  kernels::merge_coeffs<C> merge{C(1), C(0), C(0)};
  /// The outer optimizer's state (arena layout; stage::outer_momentum).
  C* outer = nullptr;
  /// Non-finite guard: when set and the stage writes the snapshot, the pass
  /// lowers *nonfinite to the index of the first tensor whose snapshot
  /// holds a NaN or an infinity (it is left alone when all are finite).
  /// Lives in the backend's memory space. Null: no check, no cost.
  std::uint32_t* nonfinite = nullptr;
  /// Parameter groups: one tensor_options per tensor of `weights`, in host
  /// memory (a device backend packs them into its launch). Null: the
  /// element as given applies to every tensor. Needs an element with
  /// for_tensor(lr_scale, decay).
  const tensor_options* per_tensor = nullptr;
};

/// Which backend serves tensors in a memory space (specialized by backends).
template <class Space>
struct default_backend;
template <class Space>
using default_backend_t = typename default_backend<Space>::type;

template <class B>
concept update_backend = std::movable<B> && requires(B& b, std::size_t n, const float* src, float* dst) {
  typename B::memory_space;
  typename B::template buffer<float>;
  { b.template allocate<float>(n) } -> std::same_as<typename B::template buffer<float>>;
  b.copy_to_host(src, dst, n);
  b.copy_from_host(src, dst, n);
  b.fence();
};

}  // namespace dasgd
