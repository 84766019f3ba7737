// Eigen adaptor: lets Eigen matrices and arrays be dasgd parameter and
// gradient buffers, so a trainer whose math is written with Eigen hands its
// W and b objects to delayed_averager without copying them.
//
// Modelled (host_space, value_type = Scalar):
//  - Eigen::Matrix and Eigen::Array (anything derived from PlainObjectBase):
//    they always own one contiguous block of rows() * cols() scalars;
//  - Eigen::Map of such a type with the default stride (or an explicit inner
//    stride of 1 and the default outer stride): a view of contiguous memory.
//    A map of a const type gives a const value_type (read-only gradients).
// Not modelled: blocks, transposes, strided maps, Ref and other expressions.
// Their elements are not one contiguous run, so they do not satisfy
// dasgd::parameter_buffer and a tensor_list refuses them at compile time;
// copy them into a Matrix first.
//
// The storage order does not matter to dasgd (it sees a flat buffer), but all
// ranks must use the same types, which delayed_averager checks by shape.
#pragma once

#include <concepts>
#include <cstddef>
#include <type_traits>
#include <utility>

#include <Eigen/Core>

#include "../core/tensor.hpp"

namespace dasgd {

namespace detail {

/// A type that owns its coefficients: Eigen::Matrix, Eigen::Array.
template <class T>
concept eigen_plain_object = std::derived_from<T, Eigen::PlainObjectBase<T>>;

template <class T>
struct is_eigen_contiguous_map : std::false_type {};

// Outer stride 0 means "the natural one" (rows or cols of the mapped type);
// inner stride 0 means "1". Anything else, Dynamic included, may leave gaps.
// (InnerStride<N> and OuterStride<N> derive from Stride: read its constants.)
template <class Plain, int Options, class StrideType>
  requires eigen_plain_object<std::remove_const_t<Plain>>
struct is_eigen_contiguous_map<Eigen::Map<Plain, Options, StrideType>>
    : std::bool_constant<StrideType::OuterStrideAtCompileTime == 0 &&
                         (StrideType::InnerStrideAtCompileTime == 0 ||
                          StrideType::InnerStrideAtCompileTime == 1)> {};

/// A contiguous Eigen::Map (default strides).
template <class T>
concept eigen_contiguous_map = is_eigen_contiguous_map<T>::value;

}  // namespace detail

template <detail::eigen_plain_object T>
struct tensor_traits<T> {
  using value_type = typename T::Scalar;
  using memory_space = host_space;
  static value_type* data(T& t) { return t.data(); }
  static std::size_t size(const T& t) { return static_cast<std::size_t>(t.size()); }
};

template <detail::eigen_contiguous_map T>
struct tensor_traits<T> {
  // Map<const M>::data() returns const Scalar*: the element type follows.
  using value_type = std::remove_pointer_t<decltype(std::declval<T&>().data())>;
  using memory_space = host_space;
  static value_type* data(T& t) { return t.data(); }
  static std::size_t size(const T& t) { return static_cast<std::size_t>(t.size()); }
};

}  // namespace dasgd
