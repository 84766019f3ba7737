// Tuning policies of the fused kernel that GPU mode can time side by side
// (--tunings). "default" is the backend's default_fused_update_policy; the
// others exist only in a build with DASGD_BENCH_TUNING_SWEEP (CMake option
// of the same name), because each one instantiates every kernel again.
#pragma once

#include <string>
#include <string_view>
#include <vector>

#include <dasgd/core/error.hpp>
#include <dasgd/kernels/cuda/tuning.hpp>

namespace dasgd::bench {

// One line per sweep tuning: name, threads per block, elements per chunk,
// tensors per launch, vector unroll, minimum blocks per multiprocessor.
// The list generates the policy types, the name dispatch and --tunings all.
#define DASGD_BENCH_SWEEP_TUNINGS(X)           \
  X(t512_c16k_n96_u1, 512, 16384, 96, 1, 1)    \
  X(t512_c16k_n96_u2, 512, 16384, 96, 2, 1)    \
  X(t512_c64k_n320_u2, 512, 65536, 320, 2, 1)  \
  X(t512_c32k_n320_u2, 512, 32768, 320, 2, 1)  \
  X(t512_c16k_n320_u2, 512, 16384, 320, 2, 1)  \
  X(t256_c16k_n320_u2, 256, 16384, 320, 2, 1)  \
  X(t256_c8k_n320_u4, 256, 8192, 320, 4, 1)    \
  X(t1024_c64k_n320_u1, 1024, 65536, 320, 1, 1) \
  X(t512_c16k_n320_u2_b2, 512, 16384, 320, 2, 2) \
  X(t512_c16k_n320_u1_b2, 512, 16384, 320, 1, 2) \
  X(t256_c16k_n320_u2_b4, 256, 16384, 320, 2, 4) \
  X(t256_c8k_n320_u2_b6, 256, 8192, 320, 2, 6)

namespace tunings {
#define DASGD_BENCH_TUNING_TYPE(id, threads, chunk, tensors, unroll, blocks)             \
  struct id {                                                                           \
    static constexpr kernels::cuda::fused_update_tuning tuning{threads, chunk, tensors, \
                                                               unroll, blocks};         \
  };
DASGD_BENCH_SWEEP_TUNINGS(DASGD_BENCH_TUNING_TYPE)
#undef DASGD_BENCH_TUNING_TYPE
}  // namespace tunings

inline std::vector<std::string> tuning_names() {
  std::vector<std::string> v{"default"};
#if defined(DASGD_BENCH_TUNING_SWEEP)
#define DASGD_BENCH_TUNING_NAME(id, ...) v.emplace_back(#id);
  DASGD_BENCH_SWEEP_TUNINGS(DASGD_BENCH_TUNING_NAME)
#undef DASGD_BENCH_TUNING_NAME
#endif
  return v;
}

inline std::string available_tunings_note() {
  std::string s = " (this build has:";
  for (const auto& n : tuning_names()) s += " " + n;
  return s + "; others need -DDASGD_BENCH_TUNING_SWEEP=ON)";
}

/// Calls f.template operator()<Policy>() for the tuning named `name`.
template <class F>
void with_tuning(std::string_view name, F&& f) {
  if (name == "default") return f.template operator()<kernels::cuda::default_fused_update_policy>();
#if defined(DASGD_BENCH_TUNING_SWEEP)
#define DASGD_BENCH_TUNING_CASE(id, ...) \
  if (name == #id) return f.template operator()<tunings::id>();
  DASGD_BENCH_SWEEP_TUNINGS(DASGD_BENCH_TUNING_CASE)
#undef DASGD_BENCH_TUNING_CASE
#endif
  DASGD_THROW(config_error, "unknown tuning '", name, "'", available_tunings_note());
}

}  // namespace dasgd::bench
