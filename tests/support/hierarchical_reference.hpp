// Test oracle for hierarchical averaging: a naive float64 simulation of
// two-level DaSGD (group rounds and across-groups rounds, each with its own
// delay), written from the timeline of docs/design.md section 1 and the
// two-level rule, independent of the library. Shared by the in-process and
// the MPI tests.
#pragma once

#include <cmath>
#include <cstddef>
#include <vector>

namespace dasgd::test::hierarchical {

using vec = std::vector<double>;
inline constexpr std::size_t dim = 13;

inline vec initial() {
  vec w(dim);
  for (std::size_t j = 0; j < dim; ++j) w[j] = 0.4 * std::sin(1.1 * double(j));
  return w;
}

/// Worker i pulls towards its own target, with step-dependent noise, so that
/// group means and the world mean differ and the level of each round shows.
inline vec gradient(int i, int k, const vec& w) {
  vec g(w.size());
  for (std::size_t j = 0; j < w.size(); ++j) {
    const double target = std::cos(0.7 * double(j) + 1.9 * i);
    const double noise = 0.05 * std::sin(1.3 * k + 0.5 * double(j) + 2.1 * i);
    g[j] = (0.6 + 0.1 * double((static_cast<std::size_t>(i) + j) % 3)) * (w[j] - target) + noise;
  }
  return g;
}

struct two_level {
  int tau = 3, delay = 1, outer_every = 2, outer_delay = 2;
  double lr = 0.05, momentum = 0.9, p = 0.25;  // SGD with momentum, mix merge
};

/// Naive reference: written from the timeline (docs/design.md section 1)
/// and the two-level rule, not from the library. groups[i]: worker i's
/// group. Round r (steps r*tau .. r*tau + tau - 1) averages over the group,
/// or over everyone when (r + 1) % outer_every == 0; the average launched
/// at the end of a round is merged `delay` (`outer_delay`) steps later by
/// w = p*w + (1-p)*avg, at once when that delay is 0.
inline std::vector<vec> simulate(const std::vector<int>& groups, int steps, const two_level& s,
                          bool flat_inner = false) {
  const std::size_t n = groups.size();
  std::vector<vec> w(n, initial()), m(n, vec(dim, 0.0)), avg(n);
  int merge_at = -1;
  auto merge = [&] {
    for (std::size_t i = 0; i < n; ++i)
      for (std::size_t j = 0; j < dim; ++j) w[i][j] = s.p * w[i][j] + (1 - s.p) * avg[i][j];
  };
  for (int k = 0; k < steps; ++k) {
    for (std::size_t i = 0; i < n; ++i) {
      const vec g = gradient(static_cast<int>(i), k, w[i]);
      for (std::size_t j = 0; j < dim; ++j) {
        m[i][j] = k == 0 ? g[j] : s.momentum * m[i][j] + g[j];
        w[i][j] -= s.lr * m[i][j];
      }
    }
    if (k == merge_at) merge();
    if (k % s.tau == s.tau - 1) {
      const int round = k / s.tau;
      const bool outer = flat_inner || (round + 1) % s.outer_every == 0;
      for (std::size_t i = 0; i < n; ++i) {
        avg[i].assign(dim, 0.0);
        int members = 0;
        for (std::size_t q = 0; q < n; ++q) {
          if (!outer && groups[q] != groups[i]) continue;
          ++members;
          for (std::size_t j = 0; j < dim; ++j) avg[i][j] += w[q][j];
        }
        for (auto& x : avg[i]) x /= members;
      }
      const int d = outer ? s.outer_delay : s.delay;
      if (d == 0) merge();
      else merge_at = k + d;
    }
  }
  return w;
}

}  // namespace dasgd::test::hierarchical
