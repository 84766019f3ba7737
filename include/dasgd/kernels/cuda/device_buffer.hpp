// device_buffer<T>: an owning, zero-initialized, move-only array in device
// memory (the CUDA backend's arena type). Plain C++ over the runtime API.
#pragma once

#include <cuda_runtime_api.h>

#include <cstddef>
#include <utility>

#include "cuda_error.hpp"

namespace dasgd {

template <class T>
class device_buffer {
 public:
  device_buffer() = default;

  /// n zero elements; the memset is ordered on `stream` and finished on
  /// return, so any stream may use the buffer afterwards.
  explicit device_buffer(std::size_t n, cudaStream_t stream = nullptr) : size_(n) {
    if (n == 0) return;
    void* p = nullptr;
    DASGD_CUDA_CHECK(cudaMalloc(&p, n * sizeof(T)));
    ptr_ = static_cast<T*>(p);
    try {
      DASGD_CUDA_CHECK(cudaMemsetAsync(p, 0, n * sizeof(T), stream));
      DASGD_CUDA_CHECK(cudaStreamSynchronize(stream));
    } catch (...) {
      release();
      throw;
    }
  }

  device_buffer(const device_buffer&) = delete;
  device_buffer& operator=(const device_buffer&) = delete;
  device_buffer(device_buffer&& o) noexcept
      : ptr_(std::exchange(o.ptr_, nullptr)), size_(std::exchange(o.size_, 0)) {}
  device_buffer& operator=(device_buffer&& o) noexcept {
    if (this != &o) {
      release();
      ptr_ = std::exchange(o.ptr_, nullptr);
      size_ = std::exchange(o.size_, 0);
    }
    return *this;
  }
  /// cudaFree waits for the device work in flight, so a collective still
  /// writing the buffer finishes before the memory is returned.
  ~device_buffer() { release(); }

  T* data() noexcept { return ptr_; }
  const T* data() const noexcept { return ptr_; }
  std::size_t size() const noexcept { return size_; }
  bool empty() const noexcept { return size_ == 0; }

 private:
  void release() noexcept {
    if (ptr_) (void)cudaFree(ptr_);  // destructors must not throw; errors stay sticky
    ptr_ = nullptr;
    size_ = 0;
  }

  T* ptr_ = nullptr;
  std::size_t size_ = 0;
};

}  // namespace dasgd
