#include "mlp.hpp"

#include <algorithm>
#include <cmath>
#include <random>

#include <dasgd/core/error.hpp>

namespace fashion_mnist {

namespace {

/// Column-wise softmax of logits in place; returns the summed cross-entropy
/// of the labelled classes.
double softmax_cross_entropy(Eigen::MatrixXf& logits, std::span<const std::uint8_t> y) {
  double loss = 0.0;
  for (Eigen::Index j = 0; j < logits.cols(); ++j) {
    auto col = logits.col(j);
    const float max = col.maxCoeff();  // shift so that exp() cannot overflow
    const float shifted_label = col(y[static_cast<std::size_t>(j)]) - max;
    col.array() = (col.array() - max).exp();
    const float sum = col.sum();  // >= 1: the maximum contributes exp(0)
    col /= sum;
    // -log p_y from the logits rather than from p_y, which may underflow to 0.
    loss += static_cast<double>(std::log(sum) - shifted_label);
  }
  return loss;
}

void forward(const mlp_tensors& p, const Eigen::Ref<const Eigen::MatrixXf>& X, mlp_workspace& ws) {
  ws.H1.noalias() = p.W1 * X;
  ws.H1.colwise() += p.b1;
  ws.H1 = ws.H1.cwiseMax(0.0f);
  ws.H2.noalias() = p.W2 * ws.H1;
  ws.H2.colwise() += p.b2;
  ws.H2 = ws.H2.cwiseMax(0.0f);
  ws.P.noalias() = p.W3 * ws.H2;
  ws.P.colwise() += p.b3;
}

void uniform_fill(Eigen::Ref<Eigen::MatrixXf> m, float bound, std::mt19937_64& rng) {
  std::uniform_real_distribution<float> dist(-bound, bound);
  for (Eigen::Index i = 0; i < m.size(); ++i) m.data()[i] = dist(rng);
}

}  // namespace

mlp_tensors::mlp_tensors(int in, int h1, int h2, int out)
    : W1(Eigen::MatrixXf::Zero(h1, in)),
      W2(Eigen::MatrixXf::Zero(h2, h1)),
      W3(Eigen::MatrixXf::Zero(out, h2)),
      b1(Eigen::VectorXf::Zero(h1)),
      b2(Eigen::VectorXf::Zero(h2)),
      b3(Eigen::VectorXf::Zero(out)) {}

std::size_t mlp_tensors::parameter_count() const {
  return static_cast<std::size_t>(W1.size() + W2.size() + W3.size() + b1.size() + b2.size() +
                                  b3.size());
}

void initialize(mlp_tensors& p, std::uint64_t seed) {
  std::mt19937_64 rng(seed);
  const auto bound = [](const Eigen::MatrixXf& w) {
    return 1.0f / std::sqrt(static_cast<float>(w.cols()));
  };
  uniform_fill(p.W1, bound(p.W1), rng);
  uniform_fill(p.b1, bound(p.W1), rng);
  uniform_fill(p.W2, bound(p.W2), rng);
  uniform_fill(p.b2, bound(p.W2), rng);
  uniform_fill(p.W3, bound(p.W3), rng);
  uniform_fill(p.b3, bound(p.W3), rng);
}

float loss_and_gradients(const mlp_tensors& p, const Eigen::Ref<const Eigen::MatrixXf>& X,
                         std::span<const std::uint8_t> y, mlp_tensors& g, mlp_workspace& ws) {
  const Eigen::Index batch = X.cols();
  DASGD_REQUIRE(batch > 0 && static_cast<std::size_t>(batch) == y.size(),
                dasgd::size_mismatch_error, "batch has ", batch, " samples but ", y.size(),
                " labels");
  DASGD_REQUIRE(X.rows() == p.W1.cols(), dasgd::size_mismatch_error, "samples have ", X.rows(),
                " features, the first layer expects ", p.W1.cols());
  forward(p, X, ws);
  const double loss = softmax_cross_entropy(ws.P, y);

  // d(mean loss)/d(logits) = (softmax - onehot) / batch.
  ws.dZ3 = ws.P;
  for (Eigen::Index j = 0; j < batch; ++j) ws.dZ3(y[static_cast<std::size_t>(j)], j) -= 1.0f;
  ws.dZ3 *= 1.0f / static_cast<float>(batch);

  // Assignments into g keep their sizes: the trainer's pointers stay valid.
  g.W3.noalias() = ws.dZ3 * ws.H2.transpose();
  g.b3 = ws.dZ3.rowwise().sum();
  ws.dH2.noalias() = p.W3.transpose() * ws.dZ3;
  ws.dH2 = (ws.H2.array() > 0.0f).select(ws.dH2, 0.0f);
  g.W2.noalias() = ws.dH2 * ws.H1.transpose();
  g.b2 = ws.dH2.rowwise().sum();
  ws.dH1.noalias() = p.W2.transpose() * ws.dH2;
  ws.dH1 = (ws.H1.array() > 0.0f).select(ws.dH1, 0.0f);
  g.W1.noalias() = ws.dH1 * X.transpose();
  g.b1 = ws.dH1.rowwise().sum();
  return static_cast<float>(loss / static_cast<double>(batch));
}

evaluation evaluate(const mlp_tensors& p, const Eigen::MatrixXf& X,
                    std::span<const std::uint8_t> y, Eigen::Index first, Eigen::Index last,
                    Eigen::Index chunk) {
  DASGD_REQUIRE(0 <= first && first <= last && last <= X.cols() &&
                    static_cast<std::size_t>(X.cols()) == y.size() && chunk > 0,
                dasgd::size_mismatch_error, "evaluation range [", first, ", ", last,
                ") does not fit ", X.cols(), " samples with ", y.size(), " labels (chunk ",
                chunk, ")");
  evaluation out;
  mlp_workspace ws;
  for (Eigen::Index begin = first; begin < last; begin += chunk) {
    const Eigen::Index n = std::min(chunk, last - begin);
    const auto labels = y.subspan(static_cast<std::size_t>(begin), static_cast<std::size_t>(n));
    forward(p, X.middleCols(begin, n), ws);
    for (Eigen::Index j = 0; j < n; ++j) {
      Eigen::Index predicted = 0;
      ws.P.col(j).maxCoeff(&predicted);
      out.correct += predicted == labels[static_cast<std::size_t>(j)] ? 1 : 0;
    }
    out.loss_sum += softmax_cross_entropy(ws.P, labels);
    out.count += n;
  }
  return out;
}

}  // namespace fashion_mnist
