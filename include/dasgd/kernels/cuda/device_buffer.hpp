// device_buffer<T>: an owning, zero-initialized, move-only array in device
// memory (the CUDA backend's arena type). Plain C++ over the runtime API.
//
// By default the memory comes from cudaMalloc and goes back with cudaFree.
// A device_allocator (e.g. PyTorch's caching allocator, see
// dasgd/adaptors/torch_cuda.hpp) replaces both, so that dasgd's arenas come
// out of the same pool as the framework's tensors.
#pragma once

#include <cuda_runtime_api.h>

#include <cstddef>
#include <functional>
#include <memory>
#include <utility>

#include "cuda_error.hpp"

namespace dasgd {

/// User-supplied device memory. allocate(bytes, stream) returns memory
/// usable on `stream` or throws (a null result is a config_error);
/// deallocate(ptr, bytes, stream) takes it back, with the bytes and stream
/// it was allocated with. Both must be set. Before deallocate the buffer
/// synchronizes the device, as cudaFree does, so that no kernel or
/// collective still uses the memory when the allocator hands it out again.
struct device_allocator {
  std::function<void*(std::size_t bytes, cudaStream_t stream)> allocate;
  std::function<void(void* ptr, std::size_t bytes, cudaStream_t stream)> deallocate;
};

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
    zero(stream);
  }

  /// n zero elements from `allocator` (null: cudaMalloc, as above), which
  /// the buffer keeps alive until it has returned the memory.
  device_buffer(std::size_t n, cudaStream_t stream, std::shared_ptr<const device_allocator> allocator)
      : size_(n), stream_(stream), allocator_(std::move(allocator)) {
    if (!allocator_) {
      *this = device_buffer(n, stream);
      return;
    }
    DASGD_REQUIRE(allocator_->allocate && allocator_->deallocate, config_error,
                  "device_allocator: both allocate and deallocate must be set");
    if (n == 0) return;
    void* p = allocator_->allocate(n * sizeof(T), stream);
    if (p == nullptr) {
      size_ = 0;
      DASGD_THROW(config_error, "device_allocator::allocate returned null for ", n * sizeof(T),
                  " bytes");
    }
    ptr_ = static_cast<T*>(p);
    zero(stream);
  }

  device_buffer(const device_buffer&) = delete;
  device_buffer& operator=(const device_buffer&) = delete;
  device_buffer(device_buffer&& o) noexcept
      : ptr_(std::exchange(o.ptr_, nullptr)),
        size_(std::exchange(o.size_, 0)),
        stream_(std::exchange(o.stream_, nullptr)),
        allocator_(std::move(o.allocator_)) {}
  device_buffer& operator=(device_buffer&& o) noexcept {
    if (this != &o) {
      release();
      ptr_ = std::exchange(o.ptr_, nullptr);
      size_ = std::exchange(o.size_, 0);
      stream_ = std::exchange(o.stream_, nullptr);
      allocator_ = std::move(o.allocator_);
    }
    return *this;
  }
  /// cudaFree waits for the device work in flight, so a collective still
  /// writing the buffer finishes before the memory is returned (with a
  /// device_allocator, an explicit cudaDeviceSynchronize does the same).
  ~device_buffer() { release(); }

  T* data() noexcept { return ptr_; }
  const T* data() const noexcept { return ptr_; }
  std::size_t size() const noexcept { return size_; }
  bool empty() const noexcept { return size_ == 0; }

 private:
  /// Zeroes the new allocation (ordered on `stream`, finished on return);
  /// on failure the memory is returned and the error rethrown.
  void zero(cudaStream_t stream) {
    try {
      DASGD_CUDA_CHECK(cudaMemsetAsync(ptr_, 0, size_ * sizeof(T), stream));
      DASGD_CUDA_CHECK(cudaStreamSynchronize(stream));
    } catch (...) {
      release();
      throw;
    }
  }

  void release() noexcept {
    if (ptr_) {
      if (allocator_) {
        // destructors must not throw: errors stay sticky, a throwing
        // deallocate leaks the block rather than terminate
        (void)cudaDeviceSynchronize();
        try {
          allocator_->deallocate(ptr_, size_ * sizeof(T), stream_);
        } catch (...) {
        }
      } else {
        (void)cudaFree(ptr_);  // destructors must not throw; errors stay sticky
      }
    }
    ptr_ = nullptr;
    size_ = 0;
  }

  T* ptr_ = nullptr;
  std::size_t size_ = 0;
  cudaStream_t stream_ = nullptr;  ///< where a device_allocator's block was allocated
  std::shared_ptr<const device_allocator> allocator_;
};

}  // namespace dasgd
