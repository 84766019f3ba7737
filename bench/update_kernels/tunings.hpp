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

namespace tunings {
using kernels::cuda::fused_update_tuning;
// Name: threads per block, elements per chunk, tensors per launch, vector
// unroll (and minimum blocks per multiprocessor: 1 unless _b<N>).
struct t512_c16k_n96_u1 { static constexpr fused_update_tuning tuning{512, 16384, 96, 1, 1}; };
struct t512_c16k_n96_u2 { static constexpr fused_update_tuning tuning{512, 16384, 96, 2, 1}; };
struct t512_c64k_n320_u2 { static constexpr fused_update_tuning tuning{512, 65536, 320, 2, 1}; };
struct t512_c32k_n320_u2 { static constexpr fused_update_tuning tuning{512, 32768, 320, 2, 1}; };
struct t512_c16k_n320_u2 { static constexpr fused_update_tuning tuning{512, 16384, 320, 2, 1}; };
struct t256_c16k_n320_u2 { static constexpr fused_update_tuning tuning{256, 16384, 320, 2, 1}; };
struct t256_c8k_n320_u4 { static constexpr fused_update_tuning tuning{256, 8192, 320, 4, 1}; };
struct t1024_c64k_n320_u1 { static constexpr fused_update_tuning tuning{1024, 65536, 320, 1, 1}; };
// ..._b<N>: at least N blocks per multiprocessor (register cap).
struct t512_c16k_n320_u2_b2 { static constexpr fused_update_tuning tuning{512, 16384, 320, 2, 2}; };
struct t512_c16k_n320_u1_b2 { static constexpr fused_update_tuning tuning{512, 16384, 320, 1, 2}; };
struct t256_c16k_n320_u2_b4 { static constexpr fused_update_tuning tuning{256, 16384, 320, 2, 4}; };
struct t256_c8k_n320_u2_b6 { static constexpr fused_update_tuning tuning{256, 8192, 320, 2, 6}; };
}  // namespace tunings

inline std::vector<std::string> tuning_names() {
  std::vector<std::string> v{"default"};
#if defined(DASGD_BENCH_TUNING_SWEEP)
  for (const char* n : {"t512_c16k_n96_u1", "t512_c16k_n96_u2", "t512_c64k_n320_u2",
                        "t512_c32k_n320_u2", "t512_c16k_n320_u2", "t256_c16k_n320_u2",
                        "t256_c8k_n320_u4", "t1024_c64k_n320_u1", "t512_c16k_n320_u2_b2",
                        "t512_c16k_n320_u1_b2", "t256_c16k_n320_u2_b4", "t256_c8k_n320_u2_b6"})
    v.emplace_back(n);
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
  if (name == "t512_c16k_n96_u1") return f.template operator()<tunings::t512_c16k_n96_u1>();
  if (name == "t512_c16k_n96_u2") return f.template operator()<tunings::t512_c16k_n96_u2>();
  if (name == "t512_c64k_n320_u2") return f.template operator()<tunings::t512_c64k_n320_u2>();
  if (name == "t512_c32k_n320_u2") return f.template operator()<tunings::t512_c32k_n320_u2>();
  if (name == "t512_c16k_n320_u2") return f.template operator()<tunings::t512_c16k_n320_u2>();
  if (name == "t256_c16k_n320_u2") return f.template operator()<tunings::t256_c16k_n320_u2>();
  if (name == "t256_c8k_n320_u4") return f.template operator()<tunings::t256_c8k_n320_u4>();
  if (name == "t1024_c64k_n320_u1") return f.template operator()<tunings::t1024_c64k_n320_u1>();
  if (name == "t512_c16k_n320_u2_b2") return f.template operator()<tunings::t512_c16k_n320_u2_b2>();
  if (name == "t512_c16k_n320_u1_b2") return f.template operator()<tunings::t512_c16k_n320_u1_b2>();
  if (name == "t256_c16k_n320_u2_b4") return f.template operator()<tunings::t256_c16k_n320_u2_b4>();
  if (name == "t256_c8k_n320_u2_b6") return f.template operator()<tunings::t256_c8k_n320_u2_b6>();
#endif
  DASGD_THROW(config_error, "unknown tuning '", name, "'", available_tunings_note());
}

}  // namespace dasgd::bench
