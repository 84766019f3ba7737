// The Eigen MLP: analytic gradients against central finite differences,
// evaluate() against the training forward pass, and learning on toy data.
#include <doctest/doctest.h>

#include <cmath>
#include <cstdint>
#include <random>
#include <vector>

#include <dasgd/core/error.hpp>

#include "mlp.hpp"

using fashion_mnist::mlp_tensors;
using fashion_mnist::mlp_workspace;

namespace {

struct toy_batch {
  Eigen::MatrixXf X;
  std::vector<std::uint8_t> y;
};

toy_batch random_batch(int features, int classes, int n, unsigned seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> normal;
  toy_batch b{Eigen::MatrixXf(features, n), std::vector<std::uint8_t>(static_cast<std::size_t>(n))};
  for (Eigen::Index i = 0; i < b.X.size(); ++i) b.X.data()[i] = normal(rng);
  for (auto& label : b.y) label = static_cast<std::uint8_t>(rng() % static_cast<unsigned>(classes));
  return b;
}

float loss_of(const mlp_tensors& p, const toy_batch& b) {
  mlp_tensors scratch = p;
  mlp_workspace ws;
  return fashion_mnist::loss_and_gradients(p, b.X, b.y, scratch, ws);
}

/// The tensors of an mlp_tensors, in a fixed order, as flat views.
std::vector<Eigen::Map<Eigen::VectorXf>> views(mlp_tensors& t) {
  std::vector<Eigen::Map<Eigen::VectorXf>> out;
  for (auto* m : {&t.W1, &t.W2, &t.W3}) out.emplace_back(m->data(), m->size());
  for (auto* v : {&t.b1, &t.b2, &t.b3}) out.emplace_back(v->data(), v->size());
  return out;
}

}  // namespace

TEST_CASE("analytic gradients match central finite differences") {
  // Small layers keep the check exhaustive: every parameter is perturbed.
  mlp_tensors params(7, 6, 5, 4);
  fashion_mnist::initialize(params, 3);
  const auto batch = random_batch(7, 4, 9, 11);
  mlp_tensors grads(7, 6, 5, 4);
  mlp_workspace ws;
  fashion_mnist::loss_and_gradients(params, batch.X, batch.y, grads, ws);

  auto p_views = views(params);
  auto g_views = views(grads);
  const float h = 3e-3f;
  int checked = 0, far = 0;
  double worst = 0.0;
  for (std::size_t t = 0; t < p_views.size(); ++t) {
    for (Eigen::Index i = 0; i < p_views[t].size(); ++i) {
      const float saved = p_views[t](i);
      p_views[t](i) = saved + h;
      const double up = loss_of(params, batch);
      p_views[t](i) = saved - h;
      const double down = loss_of(params, batch);
      p_views[t](i) = saved;
      const double numeric = (up - down) / (2.0 * h);
      const double err = std::abs(numeric - g_views[t](i));
      worst = std::max(worst, err);
      // A perturbation can push a pre-activation across ReLU's kink; allow
      // a few such coordinates but not a systematic mismatch.
      if (err > 2e-3 + 2e-2 * std::abs(numeric)) ++far;
      ++checked;
    }
  }
  INFO("checked ", checked, " parameters, worst absolute error ", worst);
  CHECK(checked == static_cast<int>(params.parameter_count()));
  CHECK(far <= checked / 100);
}

TEST_CASE("a wrong gradient would be caught: perturbing one output moves the loss") {
  // Guards the finite-difference test above against a loss that ignores its
  // parameters (then both sides would be zero and agree).
  mlp_tensors params(7, 6, 5, 4);
  fashion_mnist::initialize(params, 3);
  const auto batch = random_batch(7, 4, 9, 11);
  const float before = loss_of(params, batch);
  params.b3(0) += 0.5f;
  CHECK(loss_of(params, batch) != doctest::Approx(before));
}

TEST_CASE("evaluate() agrees with the training forward pass") {
  mlp_tensors params(fashion_mnist::input_size, 32, 16, 10);
  fashion_mnist::initialize(params, 5);
  const auto data = random_batch(fashion_mnist::input_size, 10, 257, 17);
  mlp_tensors grads = params;
  mlp_workspace ws;
  const float mean_loss = fashion_mnist::loss_and_gradients(params, data.X, data.y, grads, ws);
  std::int64_t correct = 0;
  for (Eigen::Index j = 0; j < data.X.cols(); ++j) {
    Eigen::Index best = 0;
    ws.P.col(j).maxCoeff(&best);  // P holds the softmax after the forward pass
    correct += best == data.y[static_cast<std::size_t>(j)];
  }
  // An odd chunk size exercises the last, partial chunk.
  const auto eval = fashion_mnist::evaluate(params, data.X, data.y, 0, data.X.cols(), 50);
  CHECK(eval.count == 257);
  CHECK(eval.correct == correct);
  CHECK(eval.loss_sum / 257.0 == doctest::Approx(mean_loss).epsilon(1e-5));
  // A sub-range counts only its own samples.
  const auto part = fashion_mnist::evaluate(params, data.X, data.y, 100, 200, 64);
  CHECK(part.count == 100);
  CHECK_THROWS_AS(fashion_mnist::evaluate(params, data.X, data.y, 0, 258), dasgd::size_mismatch_error);
}

TEST_CASE("plain gradient descent fits a small separable problem") {
  // Class = sign pattern of two features: learnable, not linearly trivial.
  std::mt19937 rng(23);
  std::uniform_real_distribution<float> u(-1.0f, 1.0f);
  const int n = 256;
  toy_batch b{Eigen::MatrixXf(8, n), std::vector<std::uint8_t>(n)};
  for (int j = 0; j < n; ++j) {
    for (int i = 0; i < 8; ++i) b.X(i, j) = u(rng);
    b.y[static_cast<std::size_t>(j)] = static_cast<std::uint8_t>((b.X(0, j) > 0) * 2 + (b.X(1, j) > 0));
  }
  mlp_tensors params(8, 32, 16, 4), grads(8, 32, 16, 4);
  fashion_mnist::initialize(params, 9);
  mlp_workspace ws;
  const float first = fashion_mnist::loss_and_gradients(params, b.X, b.y, grads, ws);
  for (int step = 0; step < 600; ++step) {
    fashion_mnist::loss_and_gradients(params, b.X, b.y, grads, ws);
    auto p = views(params);
    auto g = views(grads);
    for (std::size_t t = 0; t < p.size(); ++t) p[t] -= 0.5f * g[t];
  }
  const auto eval = fashion_mnist::evaluate(params, b.X, b.y, 0, n);
  CHECK(eval.loss_sum / n < 0.3 * first);
  CHECK(static_cast<double>(eval.correct) / n > 0.95);
}

TEST_CASE("mismatched batch and labels are rejected") {
  mlp_tensors params(7, 6, 5, 4), grads(7, 6, 5, 4);
  mlp_workspace ws;
  const auto batch = random_batch(7, 4, 9, 1);
  std::vector<std::uint8_t> short_labels(8, 0);
  CHECK_THROWS_AS(fashion_mnist::loss_and_gradients(params, batch.X, short_labels, grads, ws),
                  dasgd::size_mismatch_error);
  const auto wrong_width = random_batch(6, 4, 9, 1);
  CHECK_THROWS_AS(fashion_mnist::loss_and_gradients(params, wrong_width.X, wrong_width.y, grads, ws),
                  dasgd::size_mismatch_error);
}
