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
  /// starts on a 16-byte boundary in every stream).
  std::size_t chunk_elements = 65536;
  /// Tensors per launch: bounds the chunk table, which travels by value as
  /// a kernel parameter, to the classic 4 KB parameter limit.
  int max_tensors_per_launch = 96;
  /// Vector groups each thread loads before computing (1, 2 or 4): more
  /// independent loads in flight per thread.
  int vector_unroll = 1;

  friend constexpr bool operator==(const fused_update_tuning&, const fused_update_tuning&) = default;
  friend std::ostream& operator<<(std::ostream& os, const fused_update_tuning& t) {
    return os << "{threads_per_block=" << t.threads_per_block
              << ", chunk_elements=" << t.chunk_elements
              << ", max_tensors_per_launch=" << t.max_tensors_per_launch
              << ", vector_unroll=" << t.vector_unroll << "}";
  }
};

/// Checks a tuning at compile time.
constexpr bool valid_tuning(const fused_update_tuning& t) {
  return t.threads_per_block >= 32 && t.threads_per_block <= 1024 &&
         t.threads_per_block % 32 == 0 && t.chunk_elements >= 16 && t.chunk_elements % 16 == 0 &&
         t.chunk_elements <= (std::size_t{1} << 30) && t.max_tensors_per_launch >= 1 &&
         (t.vector_unroll == 1 || t.vector_unroll == 2 || t.vector_unroll == 4);
}

/// A type carrying a valid tuning as `static constexpr fused_update_tuning tuning`.
template <class P>
concept fused_update_policy = requires {
  { P::tuning } -> std::convertible_to<fused_update_tuning>;
} && valid_tuning(P::tuning);

/// The policy the backend uses unless told otherwise: the multi_tensor_apply
/// defaults of apex and PyTorch (512 threads, 64Ki-element chunks) with 16
/// bytes per thread per stream per iteration (the vector width).
struct default_fused_update_policy {
  static constexpr fused_update_tuning tuning{};
};

}  // namespace dasgd::kernels::cuda
