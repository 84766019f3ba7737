// NCCL communicator: averages device buffers with ncclAllReduce(ncclAvg) on
// a dedicated, high-priority communication stream. Models
// dasgd::communicator with memory_space = device_space. Plain C++ over the
// CUDA runtime and NCCL APIs (no kernels): host compilers may include it.
//
// basic_nccl_communicator<Api> makes every CUDA/NCCL call through Api;
// nccl_communicator uses the real runtime (detail/nccl_runtime.hpp), the
// tests a host-memory fake (tests/cuda/fake_nccl_runtime.hpp).
//
// Ordering (docs/design.md section 4): iallreduce_average records an event on the
// compute stream (after the snapshot pass queued there). On the
// communication stream, a signature exchange (ncclAllGather of 8 words per
// rank) comes first; once the host has checked it, the stream waits for the
// event and runs the all-reduce between two timing events.
// request::wait() makes the compute stream wait for the completion event
// (cudaStreamWaitEvent): the merge pass queued afterwards reads a complete
// average, and neither the host nor the compute stream waits for the
// network before that point. (If the data collective is not issued yet,
// wait() first waits on the host for that, within the timeout.)
//
// Signatures: a purpose, sequence, count, type or root mismatch between
// ranks fails that collective on every rank with the same error (no data
// collective is issued, the communicator stays usable); agreement()
// combines every rank's signature (max/min proposal, lowest rank with a
// non-zero status), so policies that agree across ranks see one value.
//
// Failure handling, never a hang (details in detail/nccl_state.hpp):
//  - test()/wait() throw comm_error on an NCCL or device error and
//    timeout_error for an operation unfinished `timeout` after its start;
//    either aborts the communicator (ncclCommAbort) and is latched: every
//    later call, check_health() included, throws it.
//  - a watchdog (on by default) also aborts on a timeout while the host is
//    elsewhere, including a call stuck inside NCCL and collectives already
//    handed to the compute stream by wait(). An abort lets NCCL's kernels
//    return, so the streams drain; the average they leave is partial and
//    is never reported complete: the trainer's check_health() after the
//    merge throws instead of saving those weights.
//  - after an abort a borrowed ncclComm_t is gone (ncclCommAbort frees it):
//    the caller must neither use nor destroy it.
//  - initialization (bootstrap, from_mpi, split) is non-blocking (NCCL >=
//    2.14) and bounded by the timeout; destruction finalizes within it.
#pragma once

#include <cuda_runtime_api.h>
#include <nccl.h>

#if defined(DASGD_HAS_MPI)
#include "detail/mpi_header.hpp"
#endif

#include <algorithm>
#include <array>
#include <chrono>
#include <concepts>
#include <cstdint>
#include <cstring>
#include <functional>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <thread>
#include <type_traits>
#include <utility>
#include <vector>

#include "../core/collective.hpp"
#include "../core/communicator.hpp"
#include "../core/error.hpp"
#include "../core/precision.hpp"
#include "../core/tensor.hpp"
#include "detail/nccl_options.hpp"
#include "detail/nccl_runtime.hpp"
#include "detail/nccl_state.hpp"

static_assert(NCCL_VERSION_CODE >= NCCL_VERSION(2, 10, 0),
              "dasgd's NCCL communicator needs NCCL 2.10 or newer (ncclAvg)");

namespace dasgd::comm {

namespace detail {

template <class T>
constexpr ncclDataType_t nccl_type() {
  if constexpr (std::is_same_v<T, float>) return ncclFloat32;
  else if constexpr (std::is_same_v<T, double>) return ncclFloat64;
  else if constexpr (std::is_same_v<T, std::uint64_t>) return ncclUint64;
#if defined(DASGD_HAS_CUDA_TYPES)
  else if constexpr (std::is_same_v<T, __half>) return ncclFloat16;
  else if constexpr (std::is_same_v<T, __nv_bfloat16>) return ncclBfloat16;
#endif
  else static_assert(sizeof(T) == 0, "no NCCL data type for this element type");
}

/// Polls a communicator being created (non-blocking init or split) until
/// it is ready; aborts it and throws timeout_error after `timeout`.
template <class Api>
void await_nccl_init(ncclComm_t comm, ncclResult_t r, const char* call, int rank, int size,
                     std::chrono::milliseconds timeout) {
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  auto pause = std::chrono::microseconds(20);
  while (r == ncclInProgress) {
    if (std::chrono::steady_clock::now() > deadline) {
      (void)Api::comm_abort(comm);
      DASGD_THROW(timeout_error, call, " on rank ", rank, " of ", size, " did not complete within ",
                  timeout.count(), " ms (a rank may not have joined); its communicator was aborted");
    }
    std::this_thread::sleep_for(pause);
    pause = std::min(pause * 2, std::chrono::microseconds(2000));
    ncclResult_t state = ncclInProgress;
    const ncclResult_t q = Api::comm_get_async_error(comm, &state);
    r = q != ncclSuccess ? q : state;
  }
  if (r != ncclSuccess) {
    const std::string msg = nccl_message<Api>(r, comm);
    if (comm != nullptr) (void)Api::comm_abort(comm);
    DASGD_THROW(comm_error, call, " on rank ", rank, " of ", size, " failed: ", msg);
  }
}

}  // namespace detail

template <class Api>
class basic_nccl_communicator;

/// Handle to one non-blocking NCCL collective. Move-only; dropping it
/// before its data collective is issued waits (within the timeout) until
/// it is, so that every rank issues the same NCCL sequence.
template <class Api = detail::nccl_runtime>
class basic_nccl_request {
 public:
  basic_nccl_request(basic_nccl_request&&) noexcept = default;
  basic_nccl_request& operator=(basic_nccl_request&& other) noexcept {
    if (this != &other) {
      release();
      state_ = std::move(other.state_);
      op_ = std::move(other.op_);
    }
    return *this;
  }
  basic_nccl_request(const basic_nccl_request&) = delete;
  basic_nccl_request& operator=(const basic_nccl_request&) = delete;
  ~basic_nccl_request() { release(); }

  /// True once complete; never blocks. Throws comm_error / timeout_error
  /// (size_mismatch_error for a count or type mismatch across ranks).
  bool test() {
    require_valid();
    return state_->test(*op_);
  }
  /// Orders the compute stream after the collective (host_wait: also
  /// blocks the host until it is complete). Throws like test().
  void wait() {
    require_valid();
    state_->wait(*op_);
  }
  /// What every rank's signature combines to (valid after wait()).
  collective_agreement agreement() const {
    require_valid();
    return state_->agreement(*op_);
  }
  /// How long the collective ran on the communication stream (its timing
  /// events), once it has completed; nullopt before.
  std::optional<double> duration_seconds() const {
    require_valid();
    return state_->duration_seconds(*op_);
  }

 private:
  friend class basic_nccl_communicator<Api>;
  basic_nccl_request(std::shared_ptr<detail::nccl_state<Api>> s, std::shared_ptr<detail::nccl_op<Api>> op)
      : state_(std::move(s)), op_(std::move(op)) {}

  void require_valid() const {
    DASGD_REQUIRE(op_ != nullptr, state_error, "this nccl_request was moved from");
  }
  void release() noexcept {
    if (op_) state_->abandon(*op_);
    op_.reset();
    state_.reset();
  }

  std::shared_ptr<detail::nccl_state<Api>> state_;
  std::shared_ptr<detail::nccl_op<Api>> op_;
};

template <class Api = detail::nccl_runtime>
class basic_nccl_communicator {
 public:
  using request_type = basic_nccl_request<Api>;
  using memory_space = device_space;
  /// broadcast_fn(bytes, n): makes rank 0's n bytes every rank's.
  using broadcast_fn = std::function<void(void*, std::size_t)>;

  /// Wraps an initialized communicator. `compute` is the stream the
  /// snapshot is written and the merge runs on (the backend's stream).
  basic_nccl_communicator(ncclComm_t comm, cudaStream_t compute, nccl_options options = {},
                          nccl_ownership ownership = nccl_ownership::borrow)
      : state_(std::make_shared<detail::nccl_state<Api>>(comm, ownership, compute, options)) {}

  /// A one-rank communicator on the current device (single-GPU runs, tests).
  static basic_nccl_communicator single_rank(cudaStream_t compute, nccl_options options = {}) {
    int device = 0;
    detail::cuda_check<Api>(Api::get_device(&device), "cudaGetDevice");
    ncclComm_t comm = nullptr;
    const ncclResult_t r = Api::comm_init_all(&comm, 1, &device);
    if (r != ncclSuccess)
      DASGD_THROW(comm_error, "ncclCommInitAll for one rank on device ", device,
                  " failed: ", detail::nccl_message<Api>(r, nullptr));
    return basic_nccl_communicator(comm, compute, options, nccl_ownership::own);
  }

  /// Collective over `size` ranks: rank 0 creates the NCCL unique id and
  /// `broadcast` hands it (with rank 0's status, so that a failure there is
  /// an error on every rank, not a hang) to the others; each then joins
  /// with a non-blocking ncclCommInitRankConfig, polled within
  /// options.timeout. Call after selecting this rank's device.
  static basic_nccl_communicator bootstrap(int rank, int size, const broadcast_fn& broadcast,
                                           cudaStream_t compute, nccl_options options = {}) {
    DASGD_REQUIRE(size >= 1 && rank >= 0 && rank < size, config_error, "nccl bootstrap: rank ", rank,
                  " is outside [0, ", size, ")");
    DASGD_REQUIRE(options.timeout.count() > 0, config_error,
                  "nccl bootstrap: timeout must be positive, got ", options.timeout.count(), " ms");
    // Word 0: rank 0's ncclGetUniqueId result; then the id.
    std::array<std::uint64_t, 1 + (sizeof(ncclUniqueId) + 7) / 8> message{};
    ncclUniqueId id{};
    if (rank == 0) {
      const ncclResult_t r = Api::get_unique_id(&id);
      message[0] = static_cast<std::uint64_t>(r);
      if (r == ncclSuccess) std::memcpy(message.data() + 1, &id, sizeof id);
    }
    broadcast(message.data(), sizeof message);
    const auto status = static_cast<ncclResult_t>(message[0]);
    if (status != ncclSuccess)
      DASGD_THROW(comm_error, "nccl bootstrap (rank ", rank, " of ", size,
                  "): ncclGetUniqueId failed on rank 0: ", Api::nccl_error_string(status));
    std::memcpy(&id, message.data() + 1, sizeof id);
    ncclComm_t comm = nullptr;
    const ncclResult_t r = Api::comm_init_rank_nonblocking(&comm, size, id, rank);
    detail::await_nccl_init<Api>(comm, r, "ncclCommInitRankConfig", rank, size, options.timeout);
    return basic_nccl_communicator(comm, compute, options, nccl_ownership::own);
  }

  /// A dedicated communicator split off `parent` (ncclCommSplit, NCCL >=
  /// 2.18; collective over the parent's ranks, same ranks): dasgd's averages
  /// then do not serialize with the model's own collectives on `parent`.
  /// The child is owned; the parent stays the caller's.
  static basic_nccl_communicator split(ncclComm_t parent, cudaStream_t compute, nccl_options options = {}) {
    DASGD_REQUIRE(parent != nullptr, config_error, "nccl_communicator::split: the parent ncclComm_t is null");
    DASGD_REQUIRE(Api::has_split, config_error,
                  "nccl_communicator::split needs NCCL 2.18 or newer (ncclCommSplit)");
    DASGD_REQUIRE(options.timeout.count() > 0, config_error,
                  "nccl_communicator::split: timeout must be positive, got ", options.timeout.count(), " ms");
    int rank = 0, size = 0;
    if (Api::comm_user_rank(parent, &rank) != ncclSuccess || Api::comm_count(parent, &size) != ncclSuccess)
      DASGD_THROW(comm_error, "nccl_communicator::split: cannot query the parent communicator");
    ncclComm_t child = nullptr;
    const ncclResult_t r = Api::comm_split_nonblocking(parent, 0, rank, &child);
    if (r != ncclSuccess && r != ncclInProgress)
      DASGD_THROW(comm_error, "ncclCommSplit on rank ", rank, " of ", size,
                  " failed: ", detail::nccl_message<Api>(r, parent));
    detail::await_nccl_init<Api>(child, r, "ncclCommSplit", rank, size, options.timeout);
    return basic_nccl_communicator(child, compute, options, nccl_ownership::own);
  }

#if defined(DASGD_HAS_MPI)
  /// bootstrap() over `mpi` (MPI_Bcast of the id on `mpi` itself): for a
  /// communicator of the caller's, not one that dasgd's MPI progress
  /// thread drives (pass the mpi_communicator itself for that).
  static basic_nccl_communicator from_mpi(MPI_Comm mpi, cudaStream_t compute, nccl_options options = {}) {
    int rank = 0, size = 0;
    DASGD_REQUIRE(MPI_Comm_rank(mpi, &rank) == MPI_SUCCESS && MPI_Comm_size(mpi, &size) == MPI_SUCCESS,
                  comm_error, "nccl_communicator::from_mpi: cannot query the MPI communicator");
    return bootstrap(
        rank, size,
        [&](void* bytes, std::size_t n) {
          const int rc = MPI_Bcast(bytes, static_cast<int>(n), MPI_BYTE, 0, mpi);
          DASGD_REQUIRE(rc == MPI_SUCCESS, comm_error, "nccl_communicator::from_mpi: MPI_Bcast of the NCCL ",
                        "unique id failed with code ", rc, " on rank ", rank);
        },
        compute, options);
  }

  /// bootstrap() through a dasgd MPI communicator's own collectives (its
  /// ibroadcast, so the id does not race the collectives its progress
  /// thread drives on native_handle()).
  template <class M>
    requires requires(M& m, std::span<const double> s, std::span<double> r, const collective_signature& sig) {
      { m.rank() } -> std::convertible_to<int>;
      { m.size() } -> std::convertible_to<int>;
      m.ibroadcast(s, r, 0, sig).wait();
    }
  static basic_nccl_communicator from_mpi(M& mpi, cudaStream_t compute, nccl_options options = {}) {
    return bootstrap(
        mpi.rank(), mpi.size(),
        [&](void* bytes, std::size_t n) {
          // Bytes carried as doubles: a broadcast copies them unchanged.
          std::vector<double> buf((n + sizeof(double) - 1) / sizeof(double), 0.0);
          std::memcpy(buf.data(), bytes, n);
          collective_signature sig;
          sig.purpose = collective_purpose::check;
          mpi.ibroadcast(std::span<const double>(buf), std::span<double>(buf), 0, sig).wait();
          std::memcpy(bytes, buf.data(), n);
        },
        compute, options);
  }

  /// from_mpi for an object exposing only native_handle() -> MPI_Comm.
  template <class M>
    requires requires(const M& m) {
      { m.native_handle() } -> std::convertible_to<MPI_Comm>;
    } && (!requires(M& m, std::span<const double> s, std::span<double> r, const collective_signature& sig) {
      m.ibroadcast(s, r, 0, sig);
    })
  static basic_nccl_communicator from_mpi(const M& mpi, cudaStream_t compute, nccl_options options = {}) {
    return from_mpi(static_cast<MPI_Comm>(mpi.native_handle()), compute, options);
  }
#endif

  int size() const { return state_->size(); }
  int rank() const { return state_->rank(); }
  int device() const { return state_->device(); }
  ncclComm_t native_handle() const { return state_->native_handle(); }
  cudaStream_t compute_stream() const { return state_->compute_stream(); }
  /// The stream collectives run on (tests use it to stage a slow peer).
  cudaStream_t comm_stream() const { return state_->comm_stream(); }
  const nccl_options& options() const { return state_->options(); }
  /// True once a failure aborted the NCCL communicator.
  bool aborted() const { return state_->aborted(); }
  /// Throws the latched failure (comm_error / timeout_error), if any: an
  /// abort after wait() handed a collective to the compute stream means
  /// the merge queued there read a partial result.
  void check_health() { state_->check_health(); }

  /// Starts an out-of-place average of the device buffer `send` into the
  /// device buffer `recv` (see the header comment for the ordering).
  template <storage_type T>
  request_type iallreduce_average(std::span<const T> send, std::span<T> recv, const collective_signature& sig = {}) {
    using V = std::remove_cv_t<T>;
    ::dasgd::detail::require_flat_scope(sig, "nccl_communicator");
    DASGD_REQUIRE(send.size() == recv.size(), size_mismatch_error, "iallreduce_average: send has ", send.size(),
                  " elements but recv has ", recv.size());
    if (!send.empty()) {
      require_device_pointer(send.data(), "send");
      require_device_pointer(recv.data(), "recv");
    }
    return request_type{state_, state_->post_average(send.data(), recv.data(), send.size(), detail::nccl_type<V>(),
                                                     type_id<V>::value, sig)};
  }

  /// Every rank's recv receives the root's send (ncclBroadcast).
  template <storage_type T>
  request_type ibroadcast(std::span<const T> send, std::span<T> recv, int root, const collective_signature& sig) {
    using V = std::remove_cv_t<T>;
    ::dasgd::detail::require_flat_scope(sig, "nccl_communicator");
    DASGD_REQUIRE(send.size() == recv.size(), size_mismatch_error, "ibroadcast: send has ", send.size(),
                  " elements but recv has ", recv.size());
    DASGD_REQUIRE(root >= 0 && root < size(), config_error, "ibroadcast: root ", root, " is outside [0, ", size(),
                  ")");
    if (!send.empty()) {
      require_device_pointer(send.data(), "send");
      require_device_pointer(recv.data(), "recv");
    }
    return request_type{state_, state_->post_broadcast(send.data(), recv.data(), send.size(),
                                                       detail::nccl_type<V>(), type_id<V>::value, root, sig)};
  }

  /// Blocking gather of one value per rank, in rank order (within the timeout).
  std::vector<std::uint64_t> allgather(std::uint64_t value) { return state_->allgather(value); }

  /// Aborts the NCCL communicator; every later call throws comm_error.
  void abort(const std::string& reason) { state_->abort(reason); }

 private:
  void require_device_pointer(const void* p, const char* what) const {
    cudaPointerAttributes attr{};
    const cudaError_t e = Api::pointer_attributes(&attr, p);
    if (e != cudaSuccess) (void)Api::get_last_error();
    DASGD_REQUIRE(e == cudaSuccess && (attr.type == cudaMemoryTypeDevice || attr.type == cudaMemoryTypeManaged),
                  config_error, "nccl_communicator (rank ", rank(), "): the ", what, " buffer at ", p,
                  " is not device memory");
  }

  std::shared_ptr<detail::nccl_state<Api>> state_;
};

using nccl_request = basic_nccl_request<>;
using nccl_communicator = basic_nccl_communicator<>;

}  // namespace dasgd::comm
