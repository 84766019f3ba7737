// The model of the libtorch example: two conv-relu-maxpool blocks and a
// linear classifier, for 1 x 28 x 28 images and 10 classes.
//   conv 5x5 (1 -> c1, pad 2) - relu - maxpool 2   28 -> 14
//   conv 5x5 (c1 -> c2, pad 2) - relu - maxpool 2  14 -> 7
//   linear c2 * 7 * 7 -> 10
#pragma once

#include <torch/torch.h>

namespace torch_fashion_mnist {

struct CnnImpl : torch::nn::Module {
  explicit CnnImpl(int c1 = 16, int c2 = 32)
      : conv1(register_module("conv1", torch::nn::Conv2d(torch::nn::Conv2dOptions(1, c1, 5).padding(2)))),
        conv2(register_module("conv2", torch::nn::Conv2d(torch::nn::Conv2dOptions(c1, c2, 5).padding(2)))),
        fc(register_module("fc", torch::nn::Linear(c2 * 7 * 7, 10))) {}

  torch::Tensor forward(torch::Tensor x) {
    x = torch::max_pool2d(torch::relu(conv1->forward(x)), 2);
    x = torch::max_pool2d(torch::relu(conv2->forward(x)), 2);
    return fc->forward(x.flatten(1));
  }

  torch::nn::Conv2d conv1;
  torch::nn::Conv2d conv2;
  torch::nn::Linear fc;
};
TORCH_MODULE(Cnn);

}  // namespace torch_fashion_mnist
