// CUDA runtime errors as dasgd exceptions (Kokkos' KOKKOS_IMPL_CUDA_SAFE_CALL
// idea): every runtime call goes through DASGD_CUDA_CHECK, which throws
// cuda_error naming the call, the error and where it was made. Plain C++:
// host translation units (the NCCL communicator) use it too.
#pragma once

#include <cuda_runtime_api.h>

#include <string>

#include "../../core/error.hpp"

namespace dasgd {

/// A CUDA runtime call failed (launch failure, out of memory, no device...).
class cuda_error : public error {
 public:
  cuda_error(cudaError_t code, const std::string& what, const char* file, int line)
      : error(what, file, line), code_(code) {}
  cudaError_t code() const noexcept { return code_; }

 private:
  cudaError_t code_;
};

namespace detail {

[[noreturn]] inline void throw_cuda_error(cudaError_t code, const char* call, const char* file,
                                          int line) {
  throw cuda_error(code,
                   concat("CUDA call '", call, "' failed: ", cudaGetErrorName(code), " (",
                          cudaGetErrorString(code), ")"),
                   file, line);
}

}  // namespace detail
}  // namespace dasgd

/// Evaluates a cudaError_t expression once; throws dasgd::cuda_error unless
/// it is cudaSuccess.
#define DASGD_CUDA_CHECK(call)                                                   \
  do {                                                                           \
    const cudaError_t dasgd_cuda_status_ = (call);                               \
    if (dasgd_cuda_status_ != cudaSuccess)                                       \
      ::dasgd::detail::throw_cuda_error(dasgd_cuda_status_, #call, __FILE__, __LINE__); \
  } while (0)

/// After a kernel launch: a bad configuration shows up in cudaGetLastError.
#define DASGD_CUDA_CHECK_LAUNCH(what)                                            \
  do {                                                                           \
    const cudaError_t dasgd_cuda_status_ = cudaGetLastError();                   \
    if (dasgd_cuda_status_ != cudaSuccess)                                       \
      ::dasgd::detail::throw_cuda_error(dasgd_cuda_status_, what, __FILE__, __LINE__); \
  } while (0)
