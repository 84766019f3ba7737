// What README's trainer snippets assume the user has: a model whose weights
// and gradients are plain vectors, a batch type and a backward pass. Not
// shown in README; it only makes the snippets compile.
#pragma once

#include <cstddef>
#include <vector>

struct Batch {
  std::vector<float> x;
};

struct Model {
  std::vector<float> W1 = std::vector<float>(784 * 256), b1 = std::vector<float>(256);
  std::vector<float> W2 = std::vector<float>(256 * 10), b2 = std::vector<float>(10);
  std::vector<float> dW1 = W1, db1 = b1, dW2 = W2, db2 = b2;
  void forward_backward(const Batch& batch) {
    for (std::size_t i = 0; i < dW1.size(); ++i) dW1[i] = batch.x.empty() ? 0.0f : batch.x[0];
  }
};
