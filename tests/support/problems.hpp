// Small deterministic training problems shared by the tests: per-worker
// least-squares shards with a known optimum, and a helper that trains n
// in-process workers with a given configuration.
#pragma once

#include <dasgd/dasgd.hpp>

#include <cmath>
#include <functional>
#include <random>
#include <vector>

#include "reference.hpp"

namespace dasgd::test {

/// Worker i holds rows A_i (m x dim, row-major) and targets b_i.
struct least_squares {
  int workers = 4, dim = 8, rows = 16;
  std::vector<vec> A, b;

  least_squares(int n, int d, int m, unsigned seed, double heterogeneity = 0.5)
      : workers(n), dim(d), rows(m), A(static_cast<std::size_t>(n)), b(static_cast<std::size_t>(n)) {
    std::mt19937 rng(seed);
    std::normal_distribution<double> nd;
    vec truth(static_cast<std::size_t>(d));
    for (auto& x : truth) x = nd(rng);
    for (int i = 0; i < n; ++i) {
      auto& Ai = A[static_cast<std::size_t>(i)];
      auto& bi = b[static_cast<std::size_t>(i)];
      Ai.resize(static_cast<std::size_t>(m * d));
      bi.resize(static_cast<std::size_t>(m));
      for (auto& x : Ai) x = nd(rng);
      for (int r = 0; r < m; ++r) {
        double s = 0;
        for (int j = 0; j < d; ++j) s += Ai[static_cast<std::size_t>(r * d + j)] * truth[static_cast<std::size_t>(j)];
        bi[static_cast<std::size_t>(r)] = s + heterogeneity * nd(rng);
      }
    }
  }

  /// Gradient of (1/2m) ||A_i w - b_i||^2.
  vec gradient(int i, const vec& w) const {
    const auto& Ai = A[static_cast<std::size_t>(i)];
    const auto& bi = b[static_cast<std::size_t>(i)];
    vec g(static_cast<std::size_t>(dim), 0.0);
    for (int r = 0; r < rows; ++r) {
      double e = -bi[static_cast<std::size_t>(r)];
      for (int j = 0; j < dim; ++j) e += Ai[static_cast<std::size_t>(r * dim + j)] * w[static_cast<std::size_t>(j)];
      for (int j = 0; j < dim; ++j) g[static_cast<std::size_t>(j)] += e * Ai[static_cast<std::size_t>(r * dim + j)] / rows;
    }
    return g;
  }

  /// Minimizer of the summed objective over all workers (normal equations,
  /// Gaussian elimination with partial pivoting).
  vec optimum() const {
    const auto d = static_cast<std::size_t>(dim);
    std::vector<vec> M(d, vec(d + 1, 0.0));
    for (int i = 0; i < workers; ++i)
      for (int r = 0; r < rows; ++r)
        for (std::size_t j = 0; j < d; ++j) {
          const double arj = A[static_cast<std::size_t>(i)][static_cast<std::size_t>(r) * d + j];
          for (std::size_t l = 0; l < d; ++l)
            M[j][l] += arj * A[static_cast<std::size_t>(i)][static_cast<std::size_t>(r) * d + l];
          M[j][d] += arj * b[static_cast<std::size_t>(i)][static_cast<std::size_t>(r)];
        }
    for (std::size_t c = 0; c < d; ++c) {
      std::size_t p = c;
      for (std::size_t r = c + 1; r < d; ++r)
        if (std::abs(M[r][c]) > std::abs(M[p][c])) p = r;
      std::swap(M[c], M[p]);
      for (std::size_t r = 0; r < d; ++r) {
        if (r == c) continue;
        const double f = M[r][c] / M[c][c];
        for (std::size_t l = c; l <= d; ++l) M[r][l] -= f * M[c][l];
      }
    }
    vec x(d);
    for (std::size_t j = 0; j < d; ++j) x[j] = M[j][d] / M[j][j];
    return x;
  }

  /// Mean objective over all workers.
  double loss(const vec& w) const {
    double s = 0;
    for (int i = 0; i < workers; ++i)
      for (int r = 0; r < rows; ++r) {
        double e = -b[static_cast<std::size_t>(i)][static_cast<std::size_t>(r)];
        for (int j = 0; j < dim; ++j)
          e += A[static_cast<std::size_t>(i)][static_cast<std::size_t>(r * dim + j)] * w[static_cast<std::size_t>(j)];
        s += 0.5 * e * e;
      }
    return s / (workers * rows);
  }
};

/// Trains problem.workers in-process workers for `steps` steps with storage
/// T and returns each worker's final weights (in double). The weights are
/// split into two tensors to exercise multi-tensor arenas.
template <class T, class Policy, class Optim, class Merge>
std::vector<vec> train_inproc(const least_squares& problem, int steps, Policy policy, Optim optim,
                              Merge merge, const vec& w0) {
  return train_inproc<T>(problem, steps, policy, optim, merge, w0,
                         [](comm::inproc_communicator c) { return c; });
}

/// The same, over the communicator wrap(c) makes of each rank's in-process
/// communicator (e.g. comm::wire_format).
template <class T, class Policy, class Optim, class Merge, class Wrap>
std::vector<vec> train_inproc(const least_squares& problem, int steps, Policy policy, Optim optim,
                              Merge merge, const vec& w0, Wrap wrap) {
  comm::inproc_group group(problem.workers);
  std::vector<vec> out(static_cast<std::size_t>(problem.workers));
  comm::run_workers(group, [&](comm::inproc_communicator c) {
    const int r = c.rank();
    const std::size_t split = w0.size() / 3;
    std::vector<T> wa(w0.begin(), w0.begin() + static_cast<std::ptrdiff_t>(split));
    std::vector<T> wb(w0.begin() + static_cast<std::ptrdiff_t>(split), w0.end());
    std::vector<T> ga(wa.size()), gb(wb.size());
    delayed_averager tr(make_tensor_list(wa, wb), wrap(c), policy, optim, merge);
    const auto grads = tensor_list<const T>(ga, gb);
    for (int k = 0; k < steps; ++k) {
      vec w(wa.begin(), wa.end());
      w.insert(w.end(), wb.begin(), wb.end());
      const vec g = problem.gradient(r, w);
      for (std::size_t j = 0; j < split; ++j) ga[j] = static_cast<T>(g[j]);
      for (std::size_t j = split; j < g.size(); ++j) gb[j - split] = static_cast<T>(g[j]);
      tr.step(grads);
    }
    vec w(wa.begin(), wa.end());
    w.insert(w.end(), wb.begin(), wb.end());
    out[static_cast<std::size_t>(r)] = w;
  });
  return out;
}

}  // namespace dasgd::test
