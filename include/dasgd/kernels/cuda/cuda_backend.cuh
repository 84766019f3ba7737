// The CUDA backend: arenas in device memory and one fused multi-tensor
// kernel launch (or a few, when the tensor list exceeds one chunk table)
// per pass, asynchronous on the backend's compute stream. Models
// dasgd::update_backend for device_space tensors; the host backend
// (kernels/host/host_backend.hpp) is its reference.
//
//   cudaStream_t s = ...;                        // the trainer's compute stream
//   dasgd::cuda_backend backend(s);
//   dasgd::delayed_averager trainer(params, comm, policy, optim, merge, backend);
#pragma once

#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>
#include <limits>
#include <memory>
#include <string>
#include <utility>

#include "../../core/backend.hpp"
#include "../../core/error.hpp"
#include "../../core/local_optimizer.hpp"
#include "../../core/precision.hpp"
#include "../fused_element.hpp"
#include "cuda_error.hpp"
#include "device_buffer.hpp"
#include "fused_update_kernel.cuh"
#include "tuning.hpp"

namespace dasgd {

namespace kernels::cuda {

/// Why a pass cannot run (CUTLASS can_implement style): checked on the host
/// before any launch so that a bad argument is an exception, not a fault.
enum class pass_status {
  ok,
  missing_weights,      ///< args.weights is null
  missing_offsets,      ///< args.offsets is null but there are tensors
  missing_gradients,    ///< a local step without args.grads
  gradient_count,       ///< grads has another number of tensors than weights
  gradient_extent,      ///< grads tensor `index` has another size than weights'
  missing_state,        ///< state arena `index` is null but the optimizer needs it
  missing_snapshot,     ///< the stage writes or reads the snapshot, which is null
  missing_average,      ///< the stage merges, but the average arena is null
  missing_outer,        ///< the stage has an outer momentum, but args.outer is null
  missing_state_plane,  ///< average_state: state plane `index` of the snapshot or average is null
  tensor_too_large,     ///< tensor `index` needs more blocks than one grid holds
};

struct pass_check {
  pass_status status = pass_status::ok;
  std::size_t index = 0;
  std::size_t got = 0;
  std::size_t want = 0;
  explicit operator bool() const noexcept { return status == pass_status::ok; }
};

inline std::string describe(const pass_check& c) {
  using ::dasgd::detail::concat;
  switch (c.status) {
    case pass_status::ok: return "ok";
    case pass_status::missing_weights: return "the pass has no weight list (args.weights is null)";
    case pass_status::missing_offsets:
      return concat("the pass has ", c.got, " tensors but no arena offsets (args.offsets is null)");
    case pass_status::missing_gradients:
      return "the stage runs a local step but args.grads is null";
    case pass_status::gradient_count:
      return concat("the gradient list has ", c.got, " tensors but the weight list has ", c.want);
    case pass_status::gradient_extent:
      return concat("gradient tensor ", c.index, " has ", c.got, " elements but weight tensor ",
                    c.index, " has ", c.want);
    case pass_status::missing_state:
      return concat("the optimizer needs ", c.want, " state arenas but state[", c.index,
                    "] is null");
    case pass_status::missing_snapshot:
      return "the stage writes or reads the snapshot but args.snapshot is null";
    case pass_status::missing_average: return "the stage merges but args.average is null";
    case pass_status::missing_outer:
      return "the stage applies an outer momentum but args.outer is null";
    case pass_status::missing_state_plane:
      return concat("the stage averages the optimizer state but state plane ", c.index,
                    " of the snapshot or the average (args.state_snapshot / state_average) is null");
    case pass_status::tensor_too_large:
      return concat("tensor ", c.index, " has ", c.got, " elements, more than one launch covers (",
                    c.want, ")");
  }
  return "unknown pass status";
}

/// Blocks a single launch may have (gridDim.x limit).
inline constexpr std::size_t max_grid_blocks = std::numeric_limits<std::int32_t>::max();

template <stage S, class E, class Storage, class C, fused_update_policy Policy = default_fused_update_policy,
          class W = Storage>
pass_check can_implement(const pass_args<Storage, C, device_space, W>& a) {
  constexpr fused_update_tuning Tuning = Policy::tuning;
  constexpr bool step = has(S, stage::local_step);
  if (a.weights == nullptr) return {pass_status::missing_weights};
  const auto& w = *a.weights;
  if (!w.empty() && a.offsets == nullptr) return {pass_status::missing_offsets, 0, w.size(), 0};
  if constexpr (step) {
    if (a.grads == nullptr) return {pass_status::missing_gradients};
    if (a.grads->size() != w.size())
      return {pass_status::gradient_count, 0, a.grads->size(), w.size()};
    for (std::size_t i = 0; i < w.size(); ++i)
      if (a.grads->extent(i) != w.extent(i))
        return {pass_status::gradient_extent, i, a.grads->extent(i), w.extent(i)};
  }
  if constexpr (reads_state(S))
    for (int s = 0; s < E::state_count; ++s)
      if (a.state[s] == nullptr)
        return {pass_status::missing_state, static_cast<std::size_t>(s), 0,
                static_cast<std::size_t>(E::state_count)};
  if constexpr (has(S, stage::average_state))
    for (int s = 0; s < E::state_count; ++s) {
      const bool snap_needed = has(S, stage::write_snapshot) || has(S, stage::merge_snapshot);
      if ((snap_needed && a.state_snapshot[s] == nullptr) ||
          (has(S, stage::merge) && a.state_average[s] == nullptr))
        return {pass_status::missing_state_plane, static_cast<std::size_t>(s), 0, 0};
    }
  if constexpr (has(S, stage::write_snapshot) || has(S, stage::merge_snapshot))
    if (a.snapshot == nullptr) return {pass_status::missing_snapshot};
  if constexpr (has(S, stage::merge))
    if (a.average == nullptr) return {pass_status::missing_average};
  if constexpr (has(S, stage::outer_momentum))
    if (a.outer == nullptr) return {pass_status::missing_outer};
  const std::size_t max_elements = max_grid_blocks * Tuning.chunk_elements;
  for (std::size_t i = 0; i < w.size(); ++i)
    if (w.extent(i) > max_elements)
      return {pass_status::tensor_too_large, i, w.extent(i), max_elements};
  return {};
}

/// Packs the non-empty tensors of args.weights into chunk tables of at most
/// max_tensors_per_launch tensors and calls launch(params, blocks) for each
/// full table and the last one. Returns the number of tables.
template <fused_update_policy Policy, stage S, bool UseMaster, class E, class Storage, class C,
          class W, class Launch>
int for_each_chunk_table(const pass_args<Storage, C, device_space, W>& a, const E& elem,
                         Launch&& launch) {
  constexpr fused_update_tuning Tuning = Policy::tuning;
  using params = fused_update_params<Storage, C, E, Tuning.max_tensors_per_launch, W>;
  // 4 KB is the portable limit; up to 32764 bytes needs CUDA 12.1 and sm_70.
  static_assert(sizeof(params) <= 32764, "chunk table exceeds the kernel parameter limit");
  constexpr bool step = has(S, stage::local_step);

  params p{elem};
  p.merge = a.merge;
  p.master = UseMaster ? a.master : nullptr;
  p.state0 = a.state[0];
  p.state1 = a.state[1];
  p.snapshot = a.snapshot;
  p.average = a.average;
  for (int s = 0; s < 2; ++s) {
    p.state_snapshot[s] = a.state_snapshot[s];
    p.state_average[s] = a.state_average[s];
  }
  p.outer = a.outer;
  p.nonfinite = has(S, stage::write_snapshot) ? a.nonfinite : nullptr;
  p.per_tensor = step && a.per_tensor != nullptr;

  const auto& w = *a.weights;
  int tables = 0;
  std::size_t blocks = 0;
  int count = 0;
  auto flush = [&] {
    if (count == 0) return;
    p.tensor_count = count;
    launch(static_cast<const params&>(p), blocks);
    ++tables;
    count = 0;
    blocks = 0;
  };
  for (std::size_t i = 0; i < w.size(); ++i) {
    const std::size_t n = w.extent(i);
    if (n == 0) continue;
    const std::size_t nb = (n + Tuning.chunk_elements - 1) / Tuning.chunk_elements;
    if (count == Tuning.max_tensors_per_launch || blocks + nb > max_grid_blocks) flush();
    p.tensor_index[count] = static_cast<std::uint32_t>(i);
    p.first_block[count] = static_cast<std::uint32_t>(blocks);
    p.weights[count] = w.data(i);
    p.grads[count] = step ? a.grads->data(i) : nullptr;
    p.arena_offset[count] = a.offsets[i];
    p.extent[count] = n;
    if (p.per_tensor) {
      p.lr_scale[count] = C(a.per_tensor[i].lr_scale);
      p.weight_decay[count] = a.per_tensor[i].weight_decay ? 1 : 0;
    }
    blocks += nb;
    ++count;
  }
  flush();
  return tables;
}

/// Launches the fused pass over every tensor of args.weights on `stream`
/// (one launch per chunk table). Returns the number of launches.
template <fused_update_policy Policy, stage S, bool UseMaster, class E, class Storage, class C,
          class W>
int launch_fused_update(const pass_args<Storage, C, device_space, W>& a, const E& elem,
                        cudaStream_t stream) {
  return for_each_chunk_table<Policy, S, UseMaster>(a, elem, [&](const auto& p, std::size_t blocks) {
    fused_update_kernel<Policy, static_cast<unsigned>(S), UseMaster, E, Storage, C, W>
        <<<static_cast<unsigned>(blocks), Policy::tuning.threads_per_block, 0, stream>>>(p);
    DASGD_CUDA_CHECK_LAUNCH("fused_update_kernel launch");
  });
}

}  // namespace kernels::cuda

class cuda_backend {
 public:
  using memory_space = device_space;
  template <class T>
  using buffer = device_buffer<T>;

  static constexpr const char* name() { return "cuda"; }

  /// Every pass, copy and allocation is ordered on `stream` (the default
  /// stream when null). A communicator that consumes the snapshot or feeds
  /// the average must be built on the same stream.
  explicit cuda_backend(cudaStream_t stream = nullptr) noexcept : stream_(stream) {}

  /// The same, with the arenas (snapshot, average, optimizer state...)
  /// taken from `allocator` instead of cudaMalloc: e.g. PyTorch's caching
  /// allocator (dasgd/adaptors/torch_cuda.hpp), so that dasgd and the
  /// framework share one memory pool. Throws config_error unless both
  /// callbacks are set.
  cuda_backend(cudaStream_t stream, device_allocator allocator)
      : stream_(stream),
        allocator_(std::make_shared<const device_allocator>(std::move(allocator))) {
    DASGD_REQUIRE(allocator_->allocate && allocator_->deallocate, config_error,
                  "cuda_backend: the device_allocator needs both allocate and deallocate");
  }

  cudaStream_t stream() const noexcept { return stream_; }
  /// The allocator of the arenas (null: cudaMalloc).
  const device_allocator* allocator() const noexcept { return allocator_.get(); }

  template <class T>
  buffer<T> allocate(std::size_t n) const {
    if (allocator_) return buffer<T>(n, stream_, allocator_);
    return buffer<T>(n, stream_);
  }

  /// Synchronous with respect to the host; ordered after the passes queued
  /// on the stream.
  template <class T>
  void copy_to_host(const T* src, T* dst, std::size_t n) const {
    if (n == 0) return;
    DASGD_CUDA_CHECK(cudaMemcpyAsync(dst, src, n * sizeof(T), cudaMemcpyDeviceToHost, stream_));
    DASGD_CUDA_CHECK(cudaStreamSynchronize(stream_));
  }
  template <class T>
  void copy_from_host(const T* src, T* dst, std::size_t n) const {
    if (n == 0) return;
    DASGD_CUDA_CHECK(cudaMemcpyAsync(dst, src, n * sizeof(T), cudaMemcpyHostToDevice, stream_));
    DASGD_CUDA_CHECK(cudaStreamSynchronize(stream_));  // the source may be freed on return
  }

  /// Blocks the host until every pass queued so far has finished. Only
  /// where the host must see results; passes themselves never block.
  void fence() const { DASGD_CUDA_CHECK(cudaStreamSynchronize(stream_)); }

  /// One fused pass of stage set S over every tensor of args.weights, with
  /// the default tuning. Asynchronous on stream(); throws config_error or
  /// size_mismatch_error (before launching) for invalid arguments.
  template <kernels::stage S, optimizer_element E, class Storage, class C, class W>
  void run(const pass_args<Storage, C, device_space, W>& args, const E& elem) const {
    run_tuned<kernels::cuda::default_fused_update_policy, S>(args, elem);
  }

  /// run() with an explicit tuning policy (benchmarks, other
  /// architectures); returns the number of kernel launches it made.
  template <kernels::cuda::fused_update_policy Policy, kernels::stage S, optimizer_element E,
            class Storage, class C, class W>
  int run_tuned(const pass_args<Storage, C, device_space, W>& args, const E& elem) const {
    static_assert(std::is_same_v<typename E::compute_type, C>,
                  "the element functor computes in another type than the pass");
    static_assert(E::state_count <= pass_args<Storage, C, device_space, W>::max_state,
                  "the optimizer needs more state arenas than pass_args carries");
    namespace kc = kernels::cuda;
    const kc::pass_check check = kc::can_implement<S, E, Storage, C, Policy, W>(args);
    if (!check) {
      const std::string msg = "cuda_backend: " + kc::describe(check);
      if (check.status == kc::pass_status::gradient_count ||
          check.status == kc::pass_status::gradient_extent)
        throw size_mismatch_error(msg, __FILE__, __LINE__);
      throw config_error(msg, __FILE__, __LINE__);
    }
    if (args.master)
      return kc::launch_fused_update<Policy, S, true>(args, elem, stream_);
    return kc::launch_fused_update<Policy, S, false>(args, elem, stream_);
  }

 private:
  cudaStream_t stream_ = nullptr;
  std::shared_ptr<const device_allocator> allocator_;  ///< null: cudaMalloc
};

template <>
struct default_backend<device_space> {
  using type = cuda_backend;
};

}  // namespace dasgd
