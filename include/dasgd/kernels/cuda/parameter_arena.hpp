// device_parameter_arena<T>: one library-owned device allocation holding
// every parameter (or gradient) tensor of a model, each starting on a
// 16-element boundary. Views into it are raw_buffer<T, device_space>, so a
// model can keep using separate tensors while the fused pass always takes
// its 16-byte vector path and the allocator is called once.
//
//   dasgd::device_parameter_arena<float> params({784 * 256, 256, 256 * 10, 10});
//   dasgd::device_parameter_arena<float> grads(params.extents());
//   auto w = params.tensors();     // tensor_list<float, device_space>
//   float* W1 = params.view(0).ptr;
#pragma once

#include <cstddef>
#include <utility>
#include <vector>

#include "../../core/arena_layout.hpp"
#include "../../core/error.hpp"
#include "../../core/tensor.hpp"
#include "../../core/tensor_list.hpp"
#include "device_buffer.hpp"

namespace dasgd {

template <class T>
class device_parameter_arena {
 public:
  /// Elements between tensor starts are padding (zero, never touched by a pass).
  static constexpr std::size_t alignment_elements = detail::arena_alignment_elements;

  explicit device_parameter_arena(std::vector<std::size_t> extents, cudaStream_t stream = nullptr)
      : extents_(std::move(extents)) {
    std::size_t total = 0;
    offsets_ = detail::arena_offsets(extents_, total);
    storage_ = device_buffer<T>(total, stream);
  }

  std::size_t tensor_count() const noexcept { return extents_.size(); }
  const std::vector<std::size_t>& extents() const noexcept { return extents_; }
  const std::vector<std::size_t>& offsets() const noexcept { return offsets_; }
  /// The whole allocation, padding included.
  T* data() noexcept { return storage_.data(); }
  std::size_t allocated_elements() const noexcept { return storage_.size(); }

  raw_buffer<T, device_space> view(std::size_t i) {
    DASGD_REQUIRE(i < extents_.size(), config_error, "parameter arena has ", extents_.size(),
                  " tensors, tensor ", i, " does not exist");
    return {storage_.data() + offsets_[i], extents_[i]};
  }

  /// Every tensor, in order, as a list the trainer accepts.
  tensor_list<T, device_space> tensors() {
    tensor_list<T, device_space> out;
    for (std::size_t i = 0; i < extents_.size(); ++i)
      out.add(extents_[i] ? storage_.data() + offsets_[i] : nullptr, extents_[i]);
    return out;
  }

 private:
  std::vector<std::size_t> extents_;
  std::vector<std::size_t> offsets_;
  device_buffer<T> storage_;
};

}  // namespace dasgd
