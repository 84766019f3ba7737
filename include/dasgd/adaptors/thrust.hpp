// Thrust containers as parameter storage: thrust::device_vector lives in
// device_space (the CUDA backend and the NCCL communicator use it),
// thrust::host_vector in host_space. A raw device pointer needs no Thrust:
// wrap it as dasgd::raw_buffer<T, dasgd::device_space>{ptr, n}, or use
// device_view() below for a thrust::device_ptr.
//
//   thrust::device_vector<float> w(n), g(n);
//   auto params = dasgd::make_tensor_list(w);   // tensor_list<float, device_space>
#pragma once

#include <thrust/device_ptr.h>
#include <thrust/device_vector.h>
#include <thrust/host_vector.h>

#include <cstddef>

#include "../core/tensor.hpp"

namespace dasgd {

template <class T, class Alloc>
struct tensor_traits<thrust::device_vector<T, Alloc>> {
  using value_type = T;
  using memory_space = device_space;
  static T* data(thrust::device_vector<T, Alloc>& v) { return thrust::raw_pointer_cast(v.data()); }
  static std::size_t size(const thrust::device_vector<T, Alloc>& v) { return v.size(); }
};

template <class T, class Alloc>
struct tensor_traits<thrust::host_vector<T, Alloc>> {
  using value_type = T;
  using memory_space = host_space;
  static T* data(thrust::host_vector<T, Alloc>& v) { return thrust::raw_pointer_cast(v.data()); }
  static std::size_t size(const thrust::host_vector<T, Alloc>& v) { return v.size(); }
};

/// n elements of device memory starting at p, as a parameter buffer.
template <class T>
raw_buffer<T, device_space> device_view(thrust::device_ptr<T> p, std::size_t n) {
  return {thrust::raw_pointer_cast(p), n};
}

}  // namespace dasgd
