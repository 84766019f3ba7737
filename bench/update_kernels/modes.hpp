// Entry points of the two benchmark modes (one translation unit each, so
// the host mode never needs nvcc and the GPU mode can be stubbed out).
#pragma once

#include "options.hpp"

namespace dasgd::bench {

/// Exit codes shared by both modes.
inline constexpr int exit_ok = 0;
inline constexpr int exit_check_failed = 1;
inline constexpr int exit_bad_arguments = 2;
inline constexpr int exit_skipped = 77;  ///< ctest's SKIP_RETURN_CODE in this project

int run_host_mode(const options& o);
/// Returns exit_skipped, after printing "no CUDA device", without a usable GPU
/// (or in a build without CUDA).
int run_gpu_mode(const options& o);

}  // namespace dasgd::bench
