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

#include "cuda_runtime.hpp"

namespace dasgd::comm::detail {

/// The CUDA calls come from cuda_runtime (shared with the host-staged
/// communicator); the NCCL calls are added here.
struct nccl_runtime : cuda_runtime {
  /// Whether comm_init_rank_nonblocking / comm_split_nonblocking create a
  /// non-blocking communicator (returning ncclInProgress while they run).
  static constexpr bool nonblocking_init = NCCL_VERSION_CODE >= NCCL_VERSION(2, 14, 0);
  static constexpr bool has_split = NCCL_VERSION_CODE >= NCCL_VERSION(2, 18, 0);

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
