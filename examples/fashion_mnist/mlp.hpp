// A 784-256-128-10 multilayer perceptron (ReLU, softmax cross-entropy)
// written with Eigen. The weights are plain Eigen objects; dasgd sees them
// through dasgd/adaptors/eigen.hpp and updates them in place.
//
// Layout: a batch is a matrix with one sample per column, so
//   H1 = relu(W1 X + b1), H2 = relu(W2 H1 + b2), logits = W3 H2 + b3.
#pragma once

#include <cstdint>
#include <span>
#include <vector>

#include <Eigen/Core>

namespace fashion_mnist {

/// Weights and biases (also used, with the same shapes, for gradients).
/// Resizing an object after handing it to a trainer would invalidate the
/// pointers the trainer holds: the shapes are fixed at construction.
struct mlp_tensors {
  Eigen::MatrixXf W1, W2, W3;
  Eigen::VectorXf b1, b2, b3;

  /// Zero-filled tensors for layer sizes in -> h1 -> h2 -> out.
  mlp_tensors(int in, int h1, int h2, int out);

  std::size_t parameter_count() const;
};

/// The default architecture of the example.
inline constexpr int input_size = 784, hidden1_size = 256, hidden2_size = 128, output_size = 10;

/// PyTorch's default Linear initialisation, U(-1/sqrt(fan_in), 1/sqrt(fan_in))
/// for weights and biases, from `seed` (identical on every rank).
void initialize(mlp_tensors& p, std::uint64_t seed);

/// Activations and intermediate gradients, reused from step to step.
struct mlp_workspace {
  Eigen::MatrixXf H1, H2, P, dZ3, dH2, dH1;
};

/// Mean cross-entropy of the batch (columns of X, labels y) and its
/// gradient with respect to every parameter, written into `grads` (whose
/// shapes must equal those of `params`).
float loss_and_gradients(const mlp_tensors& params, const Eigen::Ref<const Eigen::MatrixXf>& X,
                         std::span<const std::uint8_t> y, mlp_tensors& grads, mlp_workspace& ws);

/// Sum of the cross-entropy and number of correct argmax predictions.
struct evaluation {
  double loss_sum = 0.0;
  std::int64_t correct = 0;
  std::int64_t count = 0;
};

/// Evaluates the samples [first, last) of (X, y) in chunks of `chunk` columns.
evaluation evaluate(const mlp_tensors& params, const Eigen::MatrixXf& X,
                    std::span<const std::uint8_t> y, Eigen::Index first, Eigen::Index last,
                    Eigen::Index chunk = 500);

}  // namespace fashion_mnist
