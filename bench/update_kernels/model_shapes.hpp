// Parameter tensor lists of two real models, generated from their
// architecture definitions (no download): the many-tensor workloads of the
// update benchmark. Element counts only; the benchmark needs no layout.
//
//   ResNet-50 (torchvision layout, trainable parameters only: convolution
//   weights, batch-norm weight and bias, classifier weight and bias):
//   161 tensors, 25,557,032 parameters.
//   GPT-2 small (Hugging Face GPT2LMHeadModel, lm_head tied to wte):
//   148 tensors, 124,439,808 parameters.
// The benchmark checks both totals against these published figures before it
// runs (check_model_totals in bench_case.hpp), so a wrong block count cannot
// slip through.
#pragma once

#include <cstddef>
#include <string>
#include <vector>

namespace dasgd::bench {

struct named_tensor {
  std::string name;
  std::size_t elements;
};

namespace detail {
inline void conv(std::vector<named_tensor>& out, const std::string& name, std::size_t in,
                 std::size_t out_ch, std::size_t k) {
  out.push_back({name + ".weight", out_ch * in * k * k});
}
inline void batch_norm(std::vector<named_tensor>& out, const std::string& name, std::size_t ch) {
  out.push_back({name + ".weight", ch});
  out.push_back({name + ".bias", ch});
}
inline void linear(std::vector<named_tensor>& out, const std::string& name, std::size_t in,
                   std::size_t out_features, bool bias = true) {
  out.push_back({name + ".weight", out_features * in});
  if (bias) out.push_back({name + ".bias", out_features});
}
}  // namespace detail

/// ResNet-50: stem, four stages of bottleneck blocks (3, 4, 6, 3 blocks of
/// widths 64, 128, 256, 512, expansion 4; the first block of each stage has
/// a 1x1 projection shortcut), global pooling, 1000-way classifier.
inline std::vector<named_tensor> resnet50_parameters() {
  std::vector<named_tensor> p;
  detail::conv(p, "conv1", 3, 64, 7);
  detail::batch_norm(p, "bn1", 64);
  const std::size_t blocks[4] = {3, 4, 6, 3};
  const std::size_t widths[4] = {64, 128, 256, 512};
  constexpr std::size_t expansion = 4;
  std::size_t in = 64;
  for (int s = 0; s < 4; ++s) {
    const std::size_t w = widths[s], out = w * expansion;
    for (std::size_t b = 0; b < blocks[s]; ++b) {
      const std::string n = "layer" + std::to_string(s + 1) + "." + std::to_string(b);
      detail::conv(p, n + ".conv1", in, w, 1);
      detail::batch_norm(p, n + ".bn1", w);
      detail::conv(p, n + ".conv2", w, w, 3);
      detail::batch_norm(p, n + ".bn2", w);
      detail::conv(p, n + ".conv3", w, out, 1);
      detail::batch_norm(p, n + ".bn3", out);
      if (b == 0) {
        detail::conv(p, n + ".downsample.0", in, out, 1);
        detail::batch_norm(p, n + ".downsample.1", out);
      }
      in = out;
    }
  }
  detail::linear(p, "fc", in, 1000);
  return p;
}

/// GPT-2 small: vocabulary 50257, context 1024, 12 layers, width 768, MLP
/// width 3072. Per layer: ln_1, attention c_attn (fused qkv) and c_proj,
/// ln_2, MLP c_fc and c_proj; final ln_f. The output head shares wte.
inline std::vector<named_tensor> gpt2_small_parameters() {
  constexpr std::size_t vocab = 50257, context = 1024, layers = 12, d = 768, mlp = 4 * d;
  std::vector<named_tensor> p;
  p.push_back({"wte.weight", vocab * d});
  p.push_back({"wpe.weight", context * d});
  for (std::size_t l = 0; l < layers; ++l) {
    const std::string n = "h." + std::to_string(l);
    detail::batch_norm(p, n + ".ln_1", d);  // LayerNorm: weight and bias, like batch norm
    detail::linear(p, n + ".attn.c_attn", d, 3 * d);
    detail::linear(p, n + ".attn.c_proj", d, d);
    detail::batch_norm(p, n + ".ln_2", d);
    detail::linear(p, n + ".mlp.c_fc", d, mlp);
    detail::linear(p, n + ".mlp.c_proj", mlp, d);
  }
  detail::batch_norm(p, "ln_f", d);
  return p;
}

inline std::vector<std::size_t> extents_of(const std::vector<named_tensor>& tensors) {
  std::vector<std::size_t> e;
  e.reserve(tensors.size());
  for (const auto& t : tensors) e.push_back(t.elements);
  return e;
}

inline std::size_t total_elements(const std::vector<std::size_t>& extents) {
  std::size_t n = 0;
  for (auto e : extents) n += e;
  return n;
}

}  // namespace dasgd::bench
