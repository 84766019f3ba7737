// The CUDA runtime calls dasgd's device communicators make, as static
// members of one policy type. The NCCL communicator (nccl_runtime extends
// this) and the host-staged communicator call only these, so a test can
// swap in a host-memory fake (tests/cuda/fake_nccl_runtime.hpp) and run
// their ordering and failure handling without a GPU.
#pragma once

#include <cuda_runtime_api.h>

#include <cstddef>

namespace dasgd::comm::detail {

struct cuda_runtime {
  static cudaError_t event_create(cudaEvent_t* e, unsigned flags) { return cudaEventCreateWithFlags(e, flags); }
  static cudaError_t event_record(cudaEvent_t e, cudaStream_t s) { return cudaEventRecord(e, s); }
  static cudaError_t event_query(cudaEvent_t e) { return cudaEventQuery(e); }
  static cudaError_t event_destroy(cudaEvent_t e) { return cudaEventDestroy(e); }
  static cudaError_t event_elapsed(float* ms, cudaEvent_t start, cudaEvent_t end) {
    return cudaEventElapsedTime(ms, start, end);
  }
  static cudaError_t stream_wait_event(cudaStream_t s, cudaEvent_t e) { return cudaStreamWaitEvent(s, e, 0); }
  static cudaError_t stream_create(cudaStream_t* s, unsigned flags, int priority) {
    return cudaStreamCreateWithPriority(s, flags, priority);
  }
  static cudaError_t stream_destroy(cudaStream_t s) { return cudaStreamDestroy(s); }
  static cudaError_t stream_priority_range(int* least, int* greatest) {
    return cudaDeviceGetStreamPriorityRange(least, greatest);
  }
  static cudaError_t malloc_device(void** p, std::size_t bytes) { return cudaMalloc(p, bytes); }
  static cudaError_t free_device(void* p) { return cudaFree(p); }
  static cudaError_t malloc_host(void** p, std::size_t bytes) { return cudaMallocHost(p, bytes); }
  static cudaError_t free_host(void* p) { return cudaFreeHost(p); }
  static cudaError_t memcpy_async(void* dst, const void* src, std::size_t bytes, cudaMemcpyKind kind,
                                  cudaStream_t s) {
    return cudaMemcpyAsync(dst, src, bytes, kind, s);
  }
  static cudaError_t get_device(int* d) { return cudaGetDevice(d); }
  static cudaError_t set_device(int d) { return cudaSetDevice(d); }
  static cudaError_t pointer_attributes(cudaPointerAttributes* a, const void* p) {
    return cudaPointerGetAttributes(a, p);
  }
  static cudaError_t device_can_access_peer(int* can, int device, int peer) {
    return cudaDeviceCanAccessPeer(can, device, peer);
  }
  /// From the current device to `peer`.
  static cudaError_t device_enable_peer_access(int peer) { return cudaDeviceEnablePeerAccess(peer, 0); }
  static cudaError_t get_last_error() { return cudaGetLastError(); }
  static const char* error_name(cudaError_t e) { return cudaGetErrorName(e); }
  static const char* error_string(cudaError_t e) { return cudaGetErrorString(e); }
};

}  // namespace dasgd::comm::detail
