// Pieces of a training run that both Fashion-MNIST trainers use (this MLP
// example and examples/libtorch_fashion_mnist): the cosine learning-rate
// schedule and the sum of per-rank statistics.
#pragma once

#include <cmath>
#include <cstdint>
#include <numbers>
#include <span>
#include <vector>

namespace fashion_mnist {

/// Cosine annealing from `peak` at step 0 to 1% of it at step `total` (an lr
/// of exactly 0 is rejected by the optimizers).
inline double cosine_lr(double peak, std::int64_t step, std::int64_t total) {
  const double progress = static_cast<double>(step) / static_cast<double>(total);
  return peak * (0.01 + 0.99 * 0.5 * (1.0 + std::cos(std::numbers::pi * progress)));
}

/// Sums `values` over all ranks (an average collective times the rank count;
/// the values are small counts, sums of losses and times, so the rounding is
/// harmless).
template <class Comm>
std::vector<double> sum_over_ranks(Comm& comm, const std::vector<double>& values) {
  std::vector<double> out(values.size());
  auto request = comm.iallreduce_average(std::span<const double>(values), std::span<double>(out));
  request.wait();
  for (auto& v : out) v *= comm.size();
  return out;
}

}  // namespace fashion_mnist
