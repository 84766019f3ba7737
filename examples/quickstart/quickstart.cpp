// Quickstart: 4 in-process workers fit a linear model y = X w with DaSGD
// (tau = 4, delay = 1, the paper's mix merge with p = 0.25). Each worker
// owns a shard of the data; communication runs on the group's progress
// thread while the workers compute.
#include <dasgd/dasgd.hpp>

#include <cmath>
#include <cstdio>
#include <random>
#include <vector>

int main() {
  constexpr int workers = 4, dim = 32, rows = 256, steps = 400;
  std::mt19937 rng(7);
  std::normal_distribution<double> normal;
  std::vector<double> truth(dim);
  for (auto& v : truth) v = normal(rng);

  // Worker shards: X (rows x dim, row-major) and y = X * truth + noise.
  std::vector<std::vector<double>> X(workers), y(workers);
  for (int r = 0; r < workers; ++r) {
    X[r].resize(rows * dim);
    y[r].resize(rows);
    for (auto& v : X[r]) v = normal(rng);
    for (int i = 0; i < rows; ++i) {
      double s = 0;
      for (int j = 0; j < dim; ++j) s += X[r][i * dim + j] * truth[j];
      y[r][i] = s + 0.01 * normal(rng);
    }
  }

  dasgd::comm::inproc_group group(workers);
  std::vector<double> error(workers);
  dasgd::comm::run_workers(group, [&](dasgd::comm::inproc_communicator comm) {
    const int r = comm.rank();
    std::vector<float> w(dim, 0.0f), grad(dim);
    dasgd::delayed_averager trainer(dasgd::make_tensor_list(w), comm,
                                    dasgd::policy::fixed_delay{.tau = 4, .delay = 1},
                                    dasgd::optim::sgd{.lr = 0.05, .momentum = 0.9},
                                    dasgd::merge::mix{.update_proportion = 0.25});
    for (int k = 0; k < steps; ++k) {
      // Gradient of the mean squared error on this worker's shard.
      std::fill(grad.begin(), grad.end(), 0.0f);
      for (int i = 0; i < rows; ++i) {
        double e = -y[r][i];
        for (int j = 0; j < dim; ++j) e += X[r][i * dim + j] * w[j];
        for (int j = 0; j < dim; ++j) grad[j] += static_cast<float>(e * X[r][i * dim + j] / rows);
      }
      trainer.step(grad);
    }
    trainer.synchronize();  // all workers now hold the same averaged weights
    double num = 0, den = 0;
    for (int j = 0; j < dim; ++j) {
      num += (w[j] - truth[j]) * (w[j] - truth[j]);
      den += truth[j] * truth[j];
    }
    error[r] = std::sqrt(num / den);
  });
  const bool agree = error[0] == error[1] && error[1] == error[2] && error[2] == error[3];
  std::printf("relative error of the fitted weights after %d steps: %.2e (all %d workers agree: %s)\n",
              steps, error[0], workers, agree ? "yes" : "no");
  return error[0] < 1e-2 && agree ? 0 : 1;
}
