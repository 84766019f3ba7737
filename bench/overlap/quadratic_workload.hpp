// The training problem of the overlap benchmark: real float buffers of the
// chosen parameter count, with a gradient cheap enough that 4-8 ranks on a
// 2-core machine do not measure CPU contention (the step's "accelerator"
// time is emulated by the driver, see docs/overlap.md).
//
// Rank r minimises L_r(w) = mean_i 0.5 * h_ri * (w_i - t_ri)^2 with its own
// curvature h_ri in [0.5, 1.5] and target t_ri = s_i + 0.5 u_ri, a shared
// part s_i in [-1, 1] plus the rank's own u_ri in [-1, 1] (heterogeneous
// data, so averaging matters). The gradient fed to the trainer is the
// per-coordinate one, h_ri * (w_i - t_ri), plus Gaussian noise (a
// stochastic gradient). The global objective is the mean of L_r over ranks;
// its minimiser is w*_i = sum_r h_ri t_ri / sum_r h_ri.
#pragma once

#include <cstddef>
#include <cstdint>
#include <random>
#include <span>
#include <vector>

#include <dasgd/core/error.hpp>

namespace dasgd::bench {

/// A value in [0, 1) from (seed, index): SplitMix64, so every rank can
/// rebuild any rank's problem without communication.
inline double unit_hash(std::uint64_t seed, std::uint64_t index) {
  std::uint64_t z = seed * 0x9E3779B97F4A7C15ull + index + 0x632BE59BD9B4E019ull;
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  z ^= z >> 31;
  return static_cast<double>(z >> 11) * 0x1.0p-53;
}

class quadratic_workload {
 public:
  /// Noise is drawn once; step k reads it at a shifted offset, so a step's
  /// gradient costs one streaming pass and no random number generation.
  static constexpr std::size_t noise_period = 4099;
  static constexpr std::uint64_t shared_seed = 0xDA5Cull;

  quadratic_workload(std::size_t params, int rank, double noise_stddev = 0.5)
      : curvature_(params), target_(params), noise_(params + noise_period), rank_(rank) {
    DASGD_REQUIRE(params >= 1, config_error, "the workload needs at least 1 parameter, got ", params);
    DASGD_REQUIRE(rank >= 0, config_error, "rank must be >= 0, got ", rank);
    DASGD_REQUIRE(noise_stddev >= 0.0, config_error, "noise stddev must be >= 0, got ", noise_stddev);
    for (std::size_t i = 0; i < params; ++i) {
      curvature_[i] = static_cast<float>(curvature(rank, i));
      target_[i] = static_cast<float>(target(rank, i));
    }
    std::mt19937_64 rng(0x5EEDull + static_cast<std::uint64_t>(rank));
    std::normal_distribution<float> normal(0.0f, static_cast<float>(noise_stddev));
    for (auto& v : noise_) v = normal(rng);
  }

  std::size_t size() const noexcept { return curvature_.size(); }

  /// Rank r's curvature and target of coordinate i (any rank may ask).
  static double curvature(int r, std::size_t i) { return 0.5 + unit_hash(2 * static_cast<std::uint64_t>(r), i); }
  /// A part shared by all ranks plus a rank's own part: the data differ,
  /// but the ranks still learn something in common.
  static double target(int r, std::size_t i) {
    const double shared = 2.0 * unit_hash(shared_seed, i) - 1.0;
    const double own = 2.0 * unit_hash(2 * static_cast<std::uint64_t>(r) + 1, i) - 1.0;
    return shared + 0.5 * own;
  }

  /// grad = h * (w - t) + noise(step): the stochastic gradient of step `step`.
  void gradient(std::span<const float> w, std::span<float> grad, std::int64_t step) const {
    DASGD_REQUIRE(w.size() == size() && grad.size() == size(), size_mismatch_error,
                  "workload has ", size(), " parameters, got weights of ", w.size(),
                  " and a gradient of ", grad.size());
    const std::size_t shift =
        static_cast<std::size_t>(step * 977 + static_cast<std::int64_t>(rank_) * 131) % noise_period;
    const float* noise = noise_.data() + shift;
    for (std::size_t i = 0; i < w.size(); ++i)
      grad[i] = curvature_[i] * (w[i] - target_[i]) + noise[i];
  }

  /// This rank's L_r(w) (no noise), accumulated in double.
  double loss(std::span<const float> w) const {
    DASGD_REQUIRE(w.size() == size(), size_mismatch_error, "workload has ", size(),
                  " parameters, got weights of ", w.size());
    double s = 0.0;
    for (std::size_t i = 0; i < w.size(); ++i) {
      const double e = static_cast<double>(w[i]) - target_[i];
      s += 0.5 * curvature_[i] * e * e;
    }
    return s / static_cast<double>(w.size());
  }

 private:
  std::vector<float> curvature_;
  std::vector<float> target_;
  std::vector<float> noise_;
  int rank_;
};

}  // namespace dasgd::bench
