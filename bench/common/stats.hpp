// Sample statistics and wall-clock helpers shared by the benchmarks and the
// MPI progress probe (tests/mpi), so every reported median means the same.
#pragma once

#include <algorithm>
#include <chrono>
#include <vector>

#include <dasgd/core/error.hpp>

namespace dasgd::bench {

using bench_clock = std::chrono::steady_clock;

/// Median of the samples (mean of the two middle ones for an even count).
inline double median(std::vector<double> v) {
  DASGD_REQUIRE(!v.empty(), state_error, "median of an empty sample set");
  std::sort(v.begin(), v.end());
  const std::size_t n = v.size();
  return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

/// Seconds from t0 to now.
inline double seconds_since(bench_clock::time_point t0) {
  return std::chrono::duration<double>(bench_clock::now() - t0).count();
}

}  // namespace dasgd::bench
