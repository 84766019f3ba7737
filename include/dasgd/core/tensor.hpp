// The parameter_buffer concept: anything that exposes one contiguous block
// of storage-type elements in a known memory space. std::vector, std::span
// and std::array model it directly; Eigen, Thrust and raw device pointers do
// through the adaptors in dasgd/adaptors/ (a specialization of
// tensor_traits is all a new tensor type needs).
#pragma once

#include <concepts>
#include <cstddef>
#include <memory>
#include <ranges>
#include <type_traits>

namespace dasgd {

/// Memory spaces (Kokkos style tags): which backend can touch the data.
struct host_space {
  static constexpr const char* name = "host";
};
struct device_space {
  static constexpr const char* name = "device";
};

namespace detail {
template <class T>
concept host_contiguous = std::ranges::contiguous_range<T> && std::ranges::sized_range<T>;

template <class T>
struct default_tensor_traits {};

template <host_contiguous T>
struct default_tensor_traits<T> {
  using value_type = std::remove_reference_t<std::ranges::range_reference_t<T>>;
  using memory_space = host_space;
  static value_type* data(T& t) { return std::ranges::data(t); }
  static std::size_t size(const T& t) { return static_cast<std::size_t>(std::ranges::size(t)); }
};
}  // namespace detail

/// Customization point. Specialize (partially, with a constraint) for a new
/// tensor type: value_type, memory_space, data(T&), size(const T&).
template <class T>
struct tensor_traits : detail::default_tensor_traits<T> {};

/// A contiguous parameter or gradient buffer.
template <class T>
concept parameter_buffer = requires(std::remove_cvref_t<T>& t) {
  typename tensor_traits<std::remove_cvref_t<T>>::value_type;
  typename tensor_traits<std::remove_cvref_t<T>>::memory_space;
  { tensor_traits<std::remove_cvref_t<T>>::data(t) } -> std::convertible_to<const void*>;
  { tensor_traits<std::remove_cvref_t<T>>::size(t) } -> std::convertible_to<std::size_t>;
};

template <parameter_buffer T>
using tensor_value_t = typename tensor_traits<std::remove_cvref_t<T>>::value_type;

template <parameter_buffer T>
using tensor_space_t = typename tensor_traits<std::remove_cvref_t<T>>::memory_space;

template <parameter_buffer T>
auto tensor_data(T& t) {
  return tensor_traits<std::remove_cvref_t<T>>::data(const_cast<std::remove_cvref_t<T>&>(t));
}

template <parameter_buffer T>
std::size_t tensor_size(const T& t) {
  return tensor_traits<std::remove_cvref_t<T>>::size(t);
}

/// A view of raw memory in a given space: the adaptor for pointers that do
/// not belong to any container (for example cudaMalloc'd gradients).
template <class T, class Space = host_space>
struct raw_buffer {
  T* ptr = nullptr;
  std::size_t count = 0;
};

template <class T, class Space>
struct tensor_traits<raw_buffer<T, Space>> {
  using value_type = T;
  using memory_space = Space;
  static T* data(raw_buffer<T, Space>& b) { return b.ptr; }
  static std::size_t size(const raw_buffer<T, Space>& b) { return b.count; }
};

}  // namespace dasgd
