// tensor_list: the ordered set of parameter (or gradient) tensors a trainer
// works on. Non-owning: it records (pointer, size) per tensor; the user's
// tensors must outlive it and must not be reallocated.
#pragma once

#include <cstddef>
#include <span>
#include <type_traits>
#include <utility>
#include <vector>

#include "error.hpp"
#include "tensor.hpp"

namespace dasgd {

template <class T, class Space = host_space>
class tensor_list {
 public:
  using value_type = T;
  using memory_space = Space;

  tensor_list() = default;

  /// A list of the given tensors, in order.
  template <parameter_buffer... Bs>
    requires(sizeof...(Bs) > 0)
  explicit tensor_list(Bs&... bufs) {
    (add(bufs), ...);
  }

  /// Append one tensor. Its element type and memory space must match.
  template <parameter_buffer B>
  tensor_list& add(B& buf) {
    using V = tensor_value_t<B>;
    static_assert(std::is_same_v<std::remove_const_t<V>, std::remove_const_t<T>>,
                  "tensor element type differs from the list's storage type");
    static_assert(std::is_const_v<T> || !std::is_const_v<V>,
                  "a mutable tensor_list cannot view a const tensor");
    static_assert(std::is_same_v<tensor_space_t<B>, Space>,
                  "tensor lives in a different memory space than the list");
    add(static_cast<T*>(tensor_data(buf)), tensor_size(buf));
    return *this;
  }

  /// Append raw memory.
  tensor_list& add(T* data, std::size_t n) {
    DASGD_REQUIRE(data != nullptr || n == 0, config_error,
                  "tensor ", data_.size(), " has a null data pointer and ", n, " elements");
    data_.push_back(data);
    sizes_.push_back(n);
    total_ += n;
    return *this;
  }

  /// Points tensor i at other memory (no allocation): e.g. gradients that
  /// a framework re-allocates between steps.
  void rebind(std::size_t i, T* data, std::size_t n) {
    DASGD_REQUIRE(i < data_.size(), config_error, "rebind: tensor ", i, " of a list of ",
                  data_.size());
    DASGD_REQUIRE(data != nullptr || n == 0, config_error, "tensor ", i,
                  " has a null data pointer and ", n, " elements");
    total_ = total_ - sizes_[i] + n;
    data_[i] = data;
    sizes_[i] = n;
  }

  /// A const view of the same tensors (gradients are read-only).
  operator tensor_list<const T, Space>() const
    requires(!std::is_const_v<T>)
  {
    tensor_list<const T, Space> out;
    for (std::size_t i = 0; i < data_.size(); ++i) out.add(data_[i], sizes_[i]);
    return out;
  }

  std::size_t size() const noexcept { return data_.size(); }
  bool empty() const noexcept { return data_.empty(); }
  std::size_t total_elements() const noexcept { return total_; }
  T* data(std::size_t i) const { return data_[i]; }
  std::size_t extent(std::size_t i) const { return sizes_[i]; }
  std::span<T> operator[](std::size_t i) const { return {data_[i], sizes_[i]}; }
  const std::vector<std::size_t>& extents() const noexcept { return sizes_; }

 private:
  std::vector<T*> data_;
  std::vector<std::size_t> sizes_;
  std::size_t total_ = 0;
};

namespace detail {
template <class L>
inline constexpr bool is_tensor_list_v = false;
template <class T, class Space>
inline constexpr bool is_tensor_list_v<tensor_list<T, Space>> = true;
}  // namespace detail

template <parameter_buffer B, parameter_buffer... Bs>
tensor_list(B&, Bs&...) -> tensor_list<tensor_value_t<B>, tensor_space_t<B>>;

/// Build a list from tensors: make_tensor_list(W1, b1, W2, b2).
template <parameter_buffer B, parameter_buffer... Bs>
auto make_tensor_list(B& first, Bs&... rest) {
  return tensor_list<tensor_value_t<B>, tensor_space_t<B>>(first, rest...);
}

/// Build a list from a range of tensors (e.g. std::vector<std::vector<float>>).
template <std::ranges::range R>
  requires parameter_buffer<std::ranges::range_value_t<R>>
auto make_tensor_list(R& tensors) {
  using B = std::ranges::range_value_t<R>;
  using V = std::conditional_t<std::is_const_v<std::remove_reference_t<std::ranges::range_reference_t<R>>>,
                               const tensor_value_t<B>, tensor_value_t<B>>;
  tensor_list<V, tensor_space_t<B>> out;
  for (auto& t : tensors) out.add(t);
  return out;
}

/// Throws size_mismatch_error unless `b` has the same tensor count and
/// per-tensor sizes as `a`; `what` names the two lists in the message.
template <class A, class B, class Space>
void require_same_shape(const tensor_list<A, Space>& a, const tensor_list<B, Space>& b,
                        const char* what_a, const char* what_b) {
  DASGD_REQUIRE(a.size() == b.size(), size_mismatch_error, what_b, " has ", b.size(),
                " tensors but ", what_a, " has ", a.size());
  for (std::size_t i = 0; i < a.size(); ++i) {
    DASGD_REQUIRE(a.extent(i) == b.extent(i), size_mismatch_error, what_b, " tensor ", i,
                  " has ", b.extent(i), " elements but ", what_a, " tensor ", i, " has ",
                  a.extent(i));
  }
}

}  // namespace dasgd
