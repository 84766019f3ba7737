// Tuning of the fused multi-tensor update kernel: a constexpr aggregate held
// by a policy type (CUB style). The kernel is templated on the policy type,
// not on the aggregate itself: nvcc 13 cannot emit host stubs for kernels
// with class-type non-type template arguments.
//
//   struct my_policy {
//     static constexpr dasgd::kernels::cuda::fused_update_tuning tuning{.threads_per_block = 256};
//   };
//   backend.run_tuned<my_policy, dasgd::kernels::plain_step>(args, elem);
#pragma once

#include <concepts>
#include <cstddef>
#include <ostream>

namespace dasgd::kernels::cuda {

struct fused_update_tuning {
  /// Threads of one block; one block walks one chunk of one tensor.
  int threads_per_block = 512;
  /// Elements per chunk (multiple of 16, so every chunk of an aligned tensor
  /// starts on a 16-byte boundary in every stream). Small enough that a
  /// pass has several waves of blocks: the last, partial wave is short.
  std::size_t chunk_elements = 16384;
  /// Tensors per launch: bounds the chunk table, which travels by value as
  /// the kernel parameter. 320 tensors take about 11.5 KB, past the classic
  /// 4 KB limit (CUDA 12.1 and sm_70 or newer allow 32764 bytes): model
  /// lists of a few hundred tensors then need one launch, not several.
  int max_tensors_per_launch = 320;
  /// Vector groups each thread loads before computing (1, 2 or 4): more
  /// independent loads in flight per thread.
  int vector_unroll = 2;
  /// Blocks each multiprocessor must be able to hold at once (the second
  /// argument of __launch_bounds__): above 1 it caps the registers per
  /// thread, trading spills for occupancy.
  int min_blocks_per_sm = 2;

  friend constexpr bool operator==(const fused_update_tuning&, const fused_update_tuning&) = default;
  friend std::ostream& operator<<(std::ostream& os, const fused_update_tuning& t) {
    return os << "{threads_per_block=" << t.threads_per_block
              << ", chunk_elements=" << t.chunk_elements
              << ", max_tensors_per_launch=" << t.max_tensors_per_launch
              << ", vector_unroll=" << t.vector_unroll
              << ", min_blocks_per_sm=" << t.min_blocks_per_sm << "}";
  }
};

/// Checks a tuning at compile time.
constexpr bool valid_tuning(const fused_update_tuning& t) {
  return t.threads_per_block >= 32 && t.threads_per_block <= 1024 &&
         t.threads_per_block % 32 == 0 && t.chunk_elements >= 16 && t.chunk_elements % 16 == 0 &&
         t.chunk_elements <= (std::size_t{1} << 30) && t.max_tensors_per_launch >= 1 &&
         (t.vector_unroll == 1 || t.vector_unroll == 2 || t.vector_unroll == 4) &&
         t.min_blocks_per_sm >= 1 && t.threads_per_block * t.min_blocks_per_sm <= 2048;
}

/// A type carrying a valid tuning as `static constexpr fused_update_tuning tuning`.
template <class P>
concept fused_update_policy = requires {
  { P::tuning } -> std::convertible_to<fused_update_tuning>;
} && valid_tuning(P::tuning);

/// The policy the backend uses unless told otherwise: 512 threads, 16Ki-
/// element chunks, 320 tensors per launch, two vector groups per thread, two
/// blocks per SM. Chosen from two sweeps of up to 13 tunings on an H200
/// (bench/results/h200_sweep, h200_final; `dasgd_bench_update_kernels
/// --tunings all`): the best worst case of step + merge over fp32/bf16 x
/// SGD-momentum/AdamW x 4 layouts, 0.940 of copy bandwidth in fp32 and 0.923
/// in bf16. The first kernel (16 bytes of storage per access, apex's and
/// PyTorch's multi_tensor_apply defaults: 512 threads, 64Ki-element chunks,
/// 96 tensors per launch) gave 0.84 and 0.71 on the 161-tensor ResNet-50 list.
struct default_fused_update_policy {
  static constexpr fused_update_tuning tuning{};
};

}  // namespace dasgd::kernels::cuda
