// The CUDA runtime and NCCL calls the NCCL communicator makes, as static
// members of one policy type. basic_nccl_communicator<Api> calls only
// these, so a test can swap in a host-memory fake (tests/cuda/
// fake_nccl_runtime.hpp) and exercise the failure handling without a GPU.
//
// Calls newer than NCCL 2.10 (the oldest version dasgd accepts) are wrapped
// so the communicator needs no version checks: before 2.14 there is no
// ncclConfig_t (initialization and split are blocking, finalize is a no-op),
// before 2.18 no ncclCommSplit.
#pragma once

#include <cuda_runtime_api.h>
#include <nccl.h>

#include <cstddef>

namespace dasgd::comm::detail {

struct nccl_runtime {
  /// Whether comm_init_rank_nonblocking / comm_split_nonblocking create a
  /// non-blocking communicator (returning ncclInProgress while they run).
  static constexpr bool nonblocking_init = NCCL_VERSION_CODE >= NCCL_VERSION(2, 14, 0);
  static constexpr bool has_split = NCCL_VERSION_CODE >= NCCL_VERSION(2, 18, 0);

  // --- CUDA runtime ---------------------------------------------------------
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
  static cudaError_t get_last_error() { return cudaGetLastError(); }
  static const char* error_name(cudaError_t e) { return cudaGetErrorName(e); }
  static const char* error_string(cudaError_t e) { return cudaGetErrorString(e); }

  // --- NCCL -------------------------------------------------------------------
  static ncclResult_t all_reduce(const void* send, void* recv, std::size_t count, ncclDataType_t type,
                                 ncclRedOp_t op, ncclComm_t comm, cudaStream_t s) {
    return ncclAllReduce(send, recv, count, type, op, comm, s);
  }
  static ncclResult_t broadcast(const void* send, void* recv, std::size_t count, ncclDataType_t type,
                                int root, ncclComm_t comm, cudaStream_t s) {
    return ncclBroadcast(send, recv, count, type, root, comm, s);
  }
  static ncclResult_t all_gather(const void* send, void* recv, std::size_t count, ncclDataType_t type,
                                 ncclComm_t comm, cudaStream_t s) {
    return ncclAllGather(send, recv, count, type, comm, s);
  }
  static ncclResult_t comm_abort(ncclComm_t c) { return ncclCommAbort(c); }
  static ncclResult_t comm_destroy(ncclComm_t c) { return ncclCommDestroy(c); }
  static ncclResult_t comm_finalize([[maybe_unused]] ncclComm_t c) {
#if NCCL_VERSION_CODE >= NCCL_VERSION(2, 14, 0)
    return ncclCommFinalize(c);
#else
    return ncclSuccess;  // ncclCommDestroy flushes by itself
#endif
  }
  static ncclResult_t comm_get_async_error(ncclComm_t c, ncclResult_t* e) { return ncclCommGetAsyncError(c, e); }
  static ncclResult_t get_unique_id(ncclUniqueId* id) { return ncclGetUniqueId(id); }
  /// ncclCommInitRankConfig with config.blocking = 0 (NCCL >= 2.14: returns
  /// ncclInProgress and resolves through ncclCommGetAsyncError).
  static ncclResult_t comm_init_rank_nonblocking(ncclComm_t* c, int size, ncclUniqueId id, int rank) {
#if NCCL_VERSION_CODE >= NCCL_VERSION(2, 14, 0)
    ncclConfig_t config = NCCL_CONFIG_INITIALIZER;
    config.blocking = 0;
    return ncclCommInitRankConfig(c, size, id, rank, &config);
#else
    return ncclCommInitRank(c, size, id, rank);
#endif
  }
  static ncclResult_t comm_init_all(ncclComm_t* comms, int n, const int* devices) {
    return ncclCommInitAll(comms, n, devices);
  }
  /// ncclCommSplit with a non-blocking config (NCCL >= 2.18).
  static ncclResult_t comm_split_nonblocking([[maybe_unused]] ncclComm_t parent, [[maybe_unused]] int color,
                                             [[maybe_unused]] int key, [[maybe_unused]] ncclComm_t* child) {
#if NCCL_VERSION_CODE >= NCCL_VERSION(2, 18, 0)
    ncclConfig_t config = NCCL_CONFIG_INITIALIZER;
    config.blocking = 0;
    return ncclCommSplit(parent, color, key, child, &config);
#else
    return ncclInvalidUsage;
#endif
  }
  static ncclResult_t comm_count(ncclComm_t c, int* n) { return ncclCommCount(c, n); }
  static ncclResult_t comm_user_rank(ncclComm_t c, int* r) { return ncclCommUserRank(c, r); }
  static ncclResult_t comm_cu_device(ncclComm_t c, int* d) { return ncclCommCuDevice(c, d); }
  static const char* nccl_error_string(ncclResult_t r) { return ncclGetErrorString(r); }
  static const char* nccl_last_error([[maybe_unused]] ncclComm_t c) {
#if NCCL_VERSION_CODE >= NCCL_VERSION(2, 13, 0)
    return ncclGetLastError(c);
#else
    return nullptr;
#endif
  }
};

}  // namespace dasgd::comm::detail
