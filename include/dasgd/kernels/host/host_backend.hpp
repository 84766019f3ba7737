// The host backend: arenas in aligned host memory, one fused loop per
// parameter tensor. It is the reference implementation and the CPU oracle of
// the CUDA backend's tests.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <memory>
#include <new>

#include "../../core/backend.hpp"
#include "fused_loop.hpp"

namespace dasgd {

namespace detail {
/// Zero-initialized, 64-byte aligned host array.
template <class T>
class aligned_buffer {
 public:
  static constexpr std::size_t alignment = 64;
  aligned_buffer() = default;
  explicit aligned_buffer(std::size_t n) : size_(n) {
    if (n == 0) return;
    ptr_.reset(static_cast<T*>(::operator new[](n * sizeof(T), std::align_val_t{alignment})));
    std::memset(static_cast<void*>(ptr_.get()), 0, n * sizeof(T));
  }
  T* data() noexcept { return ptr_.get(); }
  const T* data() const noexcept { return ptr_.get(); }
  std::size_t size() const noexcept { return size_; }

 private:
  struct deleter {
    void operator()(T* p) const { ::operator delete[](p, std::align_val_t{alignment}); }
  };
  std::unique_ptr<T, deleter> ptr_;
  std::size_t size_ = 0;
};
}  // namespace detail

class host_backend {
 public:
  using memory_space = host_space;
  template <class T>
  using buffer = detail::aligned_buffer<T>;

  static constexpr const char* name() { return "host"; }

  template <class T>
  buffer<T> allocate(std::size_t n) const {
    return buffer<T>(n);
  }

  template <class T>
  void copy_to_host(const T* src, T* dst, std::size_t n) const {
    if (n) std::memcpy(static_cast<void*>(dst), src, n * sizeof(T));
  }
  template <class T>
  void copy_from_host(const T* src, T* dst, std::size_t n) const {
    if (n) std::memcpy(static_cast<void*>(dst), src, n * sizeof(T));
  }
  void fence() const {}

  /// One fused pass of stage set S over every tensor of args.weights.
  template <kernels::stage S, optimizer_element E, class Storage, class C, class W>
  void run(const pass_args<Storage, C, host_space, W>& args, const E& elem) const {
    if constexpr (has(S, kernels::stage::write_snapshot)) {
      if (args.nonfinite != nullptr) {
        run_checked<S, true>(args, elem);
        return;
      }
    }
    run_checked<S, false>(args, elem);
  }

 private:
  template <kernels::stage S, bool CheckFinite, class E, class Storage, class C, class W>
  static void run_checked(const pass_args<Storage, C, host_space, W>& args, const E& elem) {
    const auto& w = *args.weights;
    for (std::size_t i = 0; i < w.size(); ++i) {
      const std::size_t off = args.offsets[i];
      const Storage* g = has(S, kernels::stage::local_step) ? args.grads->data(i) : nullptr;
      C* s0 = args.state[0] ? args.state[0] + off : nullptr;
      C* s1 = args.state[1] ? args.state[1] + off : nullptr;
      W* snap = args.snapshot ? args.snapshot + off : nullptr;
      const W* avg = args.average ? args.average + off : nullptr;
      C* outer = args.outer ? args.outer + off : nullptr;
      kernels::host::state_planes<W> planes;
      for (int s = 0; s < 2; ++s) {
        planes.snap[s] = args.state_snapshot[s] ? args.state_snapshot[s] + off : nullptr;
        planes.avg[s] = args.state_average[s] ? args.state_average[s] + off : nullptr;
      }
      const auto loop = [&](const E& e) {
        return args.master
                   ? kernels::host::fused_loop<S, true, CheckFinite>(
                         w.extent(i), w.data(i), args.master + off, g, s0, s1, snap, avg,
                         args.merge, e, outer, planes)
                   : kernels::host::fused_loop<S, false, CheckFinite>(
                         w.extent(i), w.data(i), static_cast<C*>(nullptr), g, s0, s1, snap, avg,
                         args.merge, e, outer, planes);
      };
      bool finite = true;
      if constexpr (per_tensor_element<E> && has(S, kernels::stage::local_step)) {
        if (args.per_tensor != nullptr) {
          const tensor_options& t = args.per_tensor[i];
          finite = loop(elem.for_tensor(C(t.lr_scale), t.weight_decay));
        } else {
          finite = loop(elem);
        }
      } else {
        finite = loop(elem);
      }
      if (!finite && static_cast<std::uint32_t>(i) < *args.nonfinite)
        *args.nonfinite = static_cast<std::uint32_t>(i);
    }
  }
};

template <>
struct default_backend<host_space> {
  using type = host_backend;
};

}  // namespace dasgd
