// NCCL communicator: averages device buffers with ncclAllReduce(ncclAvg) on
// a dedicated, high-priority communication stream. Models
// dasgd::communicator with memory_space = device_space. Plain C++ over the
// CUDA runtime and NCCL APIs (no kernels): host compilers may include it.
//
// Ordering (docs/design.md section 4): iallreduce_average records an event on the
// compute stream (after the snapshot pass queued there), makes the
// communication stream wait for it, enqueues the all-reduce there and
// records a completion event. request::wait() makes the compute stream wait
// for that event (cudaStreamWaitEvent): the merge pass queued afterwards
// reads a complete average, and neither the host nor the compute stream
// waits for the network before that point.
//
// Failure handling, never a hang:
//  - request::test() polls the completion event and ncclCommGetAsyncError;
//    an asynchronous NCCL error aborts the communicator (ncclCommAbort) and
//    throws comm_error; an operation still unfinished `timeout` after its
//    launch aborts it and throws timeout_error.
//  - request::wait() does the same checks; by default it does not block the
//    host (the compute stream waits on the device). With host_wait it polls
//    until the operation completes or times out.
//  - a watchdog thread (on by default) keeps polling every operation that
//    has not completed, including those already handed to the compute
//    stream by wait(). On an error or a timeout it aborts the communicator:
//    NCCL's kernels then return, the streams drain, and a host blocked in
//    cudaStreamSynchronize (e.g. the backend's fence) wakes up. The failure
//    is latched: every later call on this communicator throws it.
//  - after an abort a borrowed ncclComm_t is gone (ncclCommAbort frees it):
//    the caller must neither use nor destroy it.
#pragma once

#include <cuda_runtime_api.h>
#include <nccl.h>

#if defined(DASGD_HAS_MPI)
#include "detail/mpi_header.hpp"
#endif

#include <atomic>
#include <chrono>
#include <concepts>
#include <condition_variable>
#include <cstdint>
#include <memory>
#include <mutex>
#include <span>
#include <string>
#include <thread>
#include <type_traits>
#include <utility>
#include <vector>

#include "../core/communicator.hpp"
#include "../core/error.hpp"
#include "../core/precision.hpp"
#include "../core/tensor.hpp"
#include "../kernels/cuda/cuda_error.hpp"

static_assert(NCCL_VERSION_CODE >= NCCL_VERSION(2, 10, 0),
              "dasgd's NCCL communicator needs NCCL 2.10 or newer (ncclAvg)");

namespace dasgd::comm {

struct nccl_options {
  /// Longest an operation may take from its launch before the communicator
  /// is aborted and timeout_error is thrown.
  std::chrono::milliseconds timeout{std::chrono::minutes(10)};
  /// Poll unfinished operations on a background thread (see header).
  bool watchdog = true;
  /// Watchdog polling period.
  std::chrono::milliseconds watchdog_interval{10};
  /// request::wait() also blocks the host until the operation completes
  /// (or times out), instead of only ordering the compute stream after it.
  bool host_wait = false;
  /// Abort the NCCL communicator on an error or a timeout. Turning this off
  /// leaves a hung collective hung; only for callers with their own recovery.
  bool abort_on_failure = true;
};

/// Whether the communicator destroys its ncclComm_t.
enum class nccl_ownership { borrow, own };

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

inline std::string nccl_message(ncclResult_t r, ncclComm_t comm) {
  std::string msg = ncclGetErrorString(r);
  if (comm != nullptr) {
    const char* last = ncclGetLastError(comm);
    if (last != nullptr && *last != '\0') msg += std::string(": ") + last;
  }
  return msg;
}

/// Restores the calling thread's current device on scope exit.
class device_guard {
 public:
  explicit device_guard(int device) {
    DASGD_CUDA_CHECK(cudaGetDevice(&previous_));
    if (previous_ != device) DASGD_CUDA_CHECK(cudaSetDevice(device));
  }
  ~device_guard() {
    int now = previous_;
    if (cudaGetDevice(&now) == cudaSuccess && now != previous_) (void)cudaSetDevice(previous_);
  }
  device_guard(const device_guard&) = delete;
  device_guard& operator=(const device_guard&) = delete;

 private:
  int previous_ = 0;
};

/// One launched collective: its completion event and launch time.
struct nccl_op {
  cudaEvent_t done = nullptr;
  std::chrono::steady_clock::time_point launched{};
  std::uint64_t seq = 0;
  const char* what = "";
  std::atomic<bool> complete{false};

  nccl_op() = default;
  nccl_op(const nccl_op&) = delete;
  nccl_op& operator=(const nccl_op&) = delete;
  ~nccl_op() {
    if (done != nullptr) (void)cudaEventDestroy(done);  // released once it has fired
  }
};

/// Shared by every copy of a communicator and by its requests.
class nccl_state {
 public:
  nccl_state(ncclComm_t comm, nccl_ownership ownership, cudaStream_t compute, nccl_options o)
      : comm_(comm), owns_(ownership == nccl_ownership::own), compute_(compute), options_(o) {
    DASGD_REQUIRE(comm != nullptr, config_error, "nccl_communicator: the ncclComm_t is null");
    DASGD_REQUIRE(o.timeout.count() > 0, config_error,
                  "nccl_communicator: timeout must be positive, got ", o.timeout.count(), " ms");
    DASGD_REQUIRE(o.watchdog_interval.count() > 0, config_error,
                  "nccl_communicator: watchdog interval must be positive, got ",
                  o.watchdog_interval.count(), " ms");
    try {
      check(ncclCommCount(comm_, &size_), "ncclCommCount");
      check(ncclCommUserRank(comm_, &rank_), "ncclCommUserRank");
      check(ncclCommCuDevice(comm_, &device_), "ncclCommCuDevice");
      device_guard dg(device_);
      int least = 0, greatest = 0;
      DASGD_CUDA_CHECK(cudaDeviceGetStreamPriorityRange(&least, &greatest));
      // Highest priority: the collective's kernels get SMs as soon as they
      // are ready instead of queueing behind the compute stream's work.
      DASGD_CUDA_CHECK(cudaStreamCreateWithPriority(&comm_stream_, cudaStreamNonBlocking, greatest));
      DASGD_CUDA_CHECK(cudaEventCreateWithFlags(&ready_, cudaEventDisableTiming));
      DASGD_CUDA_CHECK(cudaMalloc(&gather_device_, sizeof(std::uint64_t) * (static_cast<std::size_t>(size_) + 1)));
      DASGD_CUDA_CHECK(cudaMallocHost(&gather_host_, sizeof(std::uint64_t) * (static_cast<std::size_t>(size_) + 1)));
    } catch (...) {
      release_cuda();
      if (owns_) (void)ncclCommDestroy(comm_);
      throw;
    }
    if (options_.watchdog) watchdog_ = std::thread([this] { watchdog_loop(); });
  }

  nccl_state(const nccl_state&) = delete;
  nccl_state& operator=(const nccl_state&) = delete;

  /// Stops the watchdog, lets every launched operation finish (aborting
  /// after the timeout instead of hanging) and frees the resources.
  ~nccl_state() {
    {
      std::lock_guard lk(m_);
      stop_ = true;
    }
    cv_.notify_all();
    if (watchdog_.joinable()) watchdog_.join();
    bool drained = true;
    for (const auto& op : pending_ops()) {
      while (!aborted_.load() && cudaEventQuery(op->done) == cudaErrorNotReady) {
        if (std::chrono::steady_clock::now() - op->launched > options_.timeout) {
          drained = false;
          break;
        }
        std::this_thread::sleep_for(std::chrono::microseconds(200));
      }
      if (!drained) break;
    }
    if (!aborted_.load()) {
      if (!drained) {
        if (options_.abort_on_failure) (void)ncclCommAbort(comm_);
      } else if (owns_) {
        (void)ncclCommDestroy(comm_);
      }
    }
    ops_.clear();
    release_cuda();
  }

  int size() const noexcept { return size_; }
  int rank() const noexcept { return rank_; }
  int device() const noexcept { return device_; }
  ncclComm_t native_handle() const noexcept { return comm_; }
  cudaStream_t compute_stream() const noexcept { return compute_; }
  cudaStream_t comm_stream() const noexcept { return comm_stream_; }
  const nccl_options& options() const noexcept { return options_; }
  bool aborted() const noexcept { return aborted_.load(); }

  std::shared_ptr<nccl_op> allreduce_average(const void* send, void* recv, std::size_t count,
                                             ncclDataType_t type) {
    throw_if_failed();
    device_guard dg(device_);
    auto op = new_op("all-reduce");
    // Order the collective after the work already queued on the compute
    // stream (the snapshot pass), without blocking the host.
    DASGD_CUDA_CHECK(cudaEventRecord(ready_, compute_));
    DASGD_CUDA_CHECK(cudaStreamWaitEvent(comm_stream_, ready_, 0));
    if (count > 0) {
      ncclResult_t r;
      {
        std::lock_guard nl(nccl_mutex_);
        // One rank: the sum of one value is its average, and NCCL runs a
        // one-rank sum as a copy. Its one-rank ncclAvg kernel (NCCL 2.28.9)
        // left the last 3 elements of a 1000003-double out-of-place buffer
        // unwritten on an H200 (tests/cuda/test_trainer.cu caught it).
        const ncclRedOp_t op = size_ == 1 ? ncclSum : ncclAvg;
        r = ncclAllReduce(send, recv, count, type, op, comm_, comm_stream_);
      }
      if (r != ncclSuccess)
        DASGD_THROW(comm_error, "ncclAllReduce of ", count, " elements failed: ", nccl_message(r, comm_));
    }
    launch(op);
    return op;
  }

  std::shared_ptr<nccl_op> broadcast(const void* send, void* recv, std::size_t count,
                                     ncclDataType_t type, int root) {
    throw_if_failed();
    device_guard dg(device_);
    auto op = new_op("broadcast");
    DASGD_CUDA_CHECK(cudaEventRecord(ready_, compute_));
    DASGD_CUDA_CHECK(cudaStreamWaitEvent(comm_stream_, ready_, 0));
    if (count > 0) {
      ncclResult_t r;
      {
        std::lock_guard nl(nccl_mutex_);
        r = ncclBroadcast(send, recv, count, type, root, comm_, comm_stream_);
      }
      if (r != ncclSuccess)
        DASGD_THROW(comm_error, "ncclBroadcast of ", count, " elements failed: ", nccl_message(r, comm_));
    }
    launch(op);
    return op;
  }

  /// Blocking gather of one value per rank, in rank order.
  std::vector<std::uint64_t> allgather(std::uint64_t value) {
    throw_if_failed();
    device_guard dg(device_);
    const auto n = static_cast<std::size_t>(size_);
    auto op = new_op("all-gather");
    gather_host_[n] = value;
    DASGD_CUDA_CHECK(cudaMemcpyAsync(gather_device_ + n, gather_host_ + n, sizeof(std::uint64_t),
                                     cudaMemcpyHostToDevice, comm_stream_));
    ncclResult_t r;
    {
      std::lock_guard nl(nccl_mutex_);
      r = ncclAllGather(gather_device_ + n, gather_device_, 1, ncclUint64, comm_, comm_stream_);
    }
    if (r != ncclSuccess)
      DASGD_THROW(comm_error, "ncclAllGather failed: ", nccl_message(r, comm_));
    DASGD_CUDA_CHECK(cudaMemcpyAsync(gather_host_, gather_device_, n * sizeof(std::uint64_t),
                                     cudaMemcpyDeviceToHost, comm_stream_));
    launch(op);
    wait_on_host(*op);
    return {gather_host_, gather_host_ + n};
  }

  /// True once the operation's results may be consumed. Never blocks.
  bool test(nccl_op& op) {
    throw_if_failed();
    if (op.complete.load()) return true;
    const cudaError_t q = cudaEventQuery(op.done);
    if (q == cudaSuccess) {
      // An abort makes NCCL's kernels return early; the flag is raised
      // before the abort, so checking it after the event rules that out.
      throw_if_failed();
      op.complete.store(true);
      return true;
    }
    if (q != cudaErrorNotReady) {
      (void)cudaGetLastError();
      fail(concat_op(op, " failed on the device: ", cudaGetErrorName(q), " (", cudaGetErrorString(q), ")"), false);
      throw_if_failed();
    }
    check_async_error();
    if (std::chrono::steady_clock::now() - op.launched > options_.timeout) {
      fail(concat_op(op, " did not complete within ", options_.timeout.count(),
                     " ms of its launch (a peer may be gone); the communicator was aborted"),
           true);
      throw_if_failed();
    }
    return false;
  }

  /// Orders the compute stream after the operation (and, with host_wait,
  /// blocks the host until it completes). Throws on failure or timeout.
  void wait(nccl_op& op) {
    if (options_.host_wait) wait_on_host(op);
    else (void)test(op);
    device_guard dg(device_);
    DASGD_CUDA_CHECK(cudaStreamWaitEvent(compute_, op.done, 0));
  }

  /// Aborts the communicator (once) and latches `reason` for every later call.
  void abort(const std::string& reason) { fail(reason, false); }

 private:
  template <class... A>
  static std::string concat_op(const nccl_op& op, A&&... a) {
    return ::dasgd::detail::concat("NCCL ", op.what, " #", op.seq, std::forward<A>(a)...);
  }

  void check(ncclResult_t r, const char* call) {
    if (r != ncclSuccess) DASGD_THROW(comm_error, call, " failed: ", nccl_message(r, comm_));
  }

  std::shared_ptr<nccl_op> new_op(const char* what) {
    auto op = std::make_shared<nccl_op>();
    op->what = what;
    DASGD_CUDA_CHECK(cudaEventCreateWithFlags(&op->done, cudaEventDisableTiming));
    return op;
  }

  void launch(const std::shared_ptr<nccl_op>& op) {
    DASGD_CUDA_CHECK(cudaEventRecord(op->done, comm_stream_));
    op->launched = std::chrono::steady_clock::now();
    {
      std::lock_guard lk(m_);
      op->seq = next_seq_++;
      // Forget operations that finished; keep the rest for the watchdog
      // and the destructor.
      std::erase_if(ops_, [](const std::shared_ptr<nccl_op>& o) {
        return o->complete.load() || cudaEventQuery(o->done) != cudaErrorNotReady;
      });
      ops_.push_back(op);
    }
    cv_.notify_all();
  }

  void wait_on_host(nccl_op& op) {
    auto sleep = std::chrono::microseconds(5);
    while (!test(op)) {
      std::this_thread::sleep_for(sleep);
      if (sleep < std::chrono::microseconds(500)) sleep *= 2;
    }
  }

  void check_async_error() {
    ncclResult_t async = ncclSuccess;
    ncclResult_t r;
    {
      std::lock_guard nl(nccl_mutex_);
      if (aborted_.load()) return;
      r = ncclCommGetAsyncError(comm_, &async);
    }
    if (r != ncclSuccess) async = r;
    if (async != ncclSuccess && async != ncclInProgress) {
      fail(::dasgd::detail::concat("NCCL reported an asynchronous error on rank ", rank_, ": ",
                                   nccl_message(async, comm_), "; the communicator was aborted"),
           false);
      throw_if_failed();
    }
  }

  /// Latches the first failure and aborts the communicator. Safe from the
  /// watchdog and from the caller's thread.
  void fail(const std::string& reason, bool timed_out) {
    {
      std::lock_guard lk(m_);
      if (!failure_.empty()) return;
      failure_ = reason;
      failure_is_timeout_ = timed_out;
      failed_.store(true);
    }
    if (!options_.abort_on_failure) return;
    // Wait for an NCCL call in progress on the caller's thread, unless it
    // is itself stuck (a peer that never connects): then abort anyway,
    // which is what unblocks it.
    std::unique_lock nl(nccl_mutex_, std::defer_lock);
    (void)nl.try_lock_for(options_.timeout);
    if (!aborted_.exchange(true)) (void)ncclCommAbort(comm_);
  }

  void throw_if_failed() {
    if (!failed_.load()) return;
    std::string msg;
    bool timed_out = false;
    {
      std::lock_guard lk(m_);
      msg = failure_;
      timed_out = failure_is_timeout_;
    }
    if (timed_out) throw timeout_error(msg, __FILE__, __LINE__);
    throw comm_error(msg, __FILE__, __LINE__);
  }

  std::vector<std::shared_ptr<nccl_op>> pending_ops() {
    std::lock_guard lk(m_);
    return ops_;
  }

  void watchdog_loop() {
    std::unique_lock lk(m_);
    for (;;) {
      cv_.wait(lk, [&] { return stop_ || (!ops_.empty() && failure_.empty()); });
      if (stop_) return;
      auto ops = ops_;
      lk.unlock();
      try {
        device_guard dg(device_);
        for (const auto& op : ops)
          if (!op->complete.load()) (void)test(*op);
      } catch (...) {
        // Latched by test(): the caller's thread sees it at its next call.
      }
      lk.lock();
      std::erase_if(ops_, [](const std::shared_ptr<nccl_op>& o) { return o->complete.load(); });
      cv_.wait_for(lk, options_.watchdog_interval, [&] { return stop_; });
    }
  }

  void release_cuda() noexcept {
    if (gather_host_ != nullptr) (void)cudaFreeHost(gather_host_);
    if (gather_device_ != nullptr) (void)cudaFree(gather_device_);
    if (ready_ != nullptr) (void)cudaEventDestroy(ready_);
    if (comm_stream_ != nullptr) (void)cudaStreamDestroy(comm_stream_);
    gather_host_ = nullptr;
    gather_device_ = nullptr;
    ready_ = nullptr;
    comm_stream_ = nullptr;
  }

  ncclComm_t comm_ = nullptr;
  bool owns_ = false;
  cudaStream_t compute_ = nullptr;
  nccl_options options_;
  int size_ = 0;
  int rank_ = 0;
  int device_ = 0;
  cudaStream_t comm_stream_ = nullptr;
  cudaEvent_t ready_ = nullptr;
  std::uint64_t* gather_device_ = nullptr;
  std::uint64_t* gather_host_ = nullptr;

  std::timed_mutex nccl_mutex_;  // held around NCCL calls on comm_
  std::mutex m_;                 // ops_, failure_, stop_, next_seq_
  std::condition_variable cv_;
  std::vector<std::shared_ptr<nccl_op>> ops_;
  std::uint64_t next_seq_ = 0;
  std::string failure_;
  bool failure_is_timeout_ = false;
  std::atomic<bool> failed_{false};
  std::atomic<bool> aborted_{false};
  bool stop_ = false;
  std::thread watchdog_;
};

}  // namespace detail

/// Handle to one non-blocking NCCL average (see the header comment).
class nccl_request {
 public:
  nccl_request(std::shared_ptr<detail::nccl_state> s, std::shared_ptr<detail::nccl_op> op)
      : state_(std::move(s)), op_(std::move(op)) {}
  /// True once complete; never blocks. Throws comm_error / timeout_error.
  bool test() { return state_->test(*op_); }
  /// Orders the compute stream after the average (host_wait: also blocks
  /// the host until it is complete). Throws comm_error / timeout_error.
  void wait() { state_->wait(*op_); }
  /// This rank's own signature only: the NCCL communicator does not
  /// exchange signatures yet (ranks are not cross-checked).
  const collective_agreement& agreement() const { return agreement_; }

 private:
  friend class nccl_communicator;
  std::shared_ptr<detail::nccl_state> state_;
  std::shared_ptr<detail::nccl_op> op_;
  collective_agreement agreement_;
};

class nccl_communicator {
 public:
  using request_type = nccl_request;
  using memory_space = device_space;

  /// Wraps an initialized communicator. `compute` is the stream the
  /// snapshot is written and the merge runs on (the backend's stream).
  nccl_communicator(ncclComm_t comm, cudaStream_t compute, nccl_options options = {},
                    nccl_ownership ownership = nccl_ownership::borrow)
      : state_(std::make_shared<detail::nccl_state>(comm, ownership, compute, options)) {}

  /// A one-rank communicator on the current device (single-GPU runs, tests).
  static nccl_communicator single_rank(cudaStream_t compute, nccl_options options = {}) {
    int device = 0;
    DASGD_CUDA_CHECK(cudaGetDevice(&device));
    ncclComm_t comm = nullptr;
    const ncclResult_t r = ncclCommInitAll(&comm, 1, &device);
    if (r != ncclSuccess)
      DASGD_THROW(comm_error, "ncclCommInitAll for one rank on device ", device,
                  " failed: ", detail::nccl_message(r, nullptr));
    return nccl_communicator(comm, compute, options, nccl_ownership::own);
  }

#if defined(DASGD_HAS_MPI)
  /// Collective over `mpi`: rank 0 creates the NCCL unique id, MPI_Bcast
  /// hands it to every rank, each joins with its MPI rank. Call after
  /// selecting this rank's device (cudaSetDevice). ncclCommInitRank blocks
  /// until every rank has joined.
  static nccl_communicator from_mpi(MPI_Comm mpi, cudaStream_t compute, nccl_options options = {}) {
    int rank = 0, size = 0;
    DASGD_REQUIRE(MPI_Comm_rank(mpi, &rank) == MPI_SUCCESS && MPI_Comm_size(mpi, &size) == MPI_SUCCESS,
                  comm_error, "nccl_communicator::from_mpi: cannot query the MPI communicator");
    ncclUniqueId id{};
    if (rank == 0) {
      const ncclResult_t r = ncclGetUniqueId(&id);
      if (r != ncclSuccess)
        DASGD_THROW(comm_error, "ncclGetUniqueId failed: ", detail::nccl_message(r, nullptr));
    }
    const int rc = MPI_Bcast(&id, static_cast<int>(sizeof id), MPI_BYTE, 0, mpi);
    DASGD_REQUIRE(rc == MPI_SUCCESS, comm_error,
                  "nccl_communicator::from_mpi: MPI_Bcast of the NCCL unique id failed with code ", rc);
    ncclComm_t comm = nullptr;
    const ncclResult_t r = ncclCommInitRank(&comm, size, id, rank);
    if (r != ncclSuccess)
      DASGD_THROW(comm_error, "ncclCommInitRank (rank ", rank, " of ", size,
                  ") failed: ", detail::nccl_message(r, nullptr));
    return nccl_communicator(comm, compute, options, nccl_ownership::own);
  }

  /// from_mpi for any communicator object exposing native_handle() -> MPI_Comm
  /// (dasgd::comm::mpi_communicator).
  template <class M>
    requires requires(const M& m) {
      { m.native_handle() } -> std::convertible_to<MPI_Comm>;
    }
  static nccl_communicator from_mpi(const M& mpi, cudaStream_t compute, nccl_options options = {}) {
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

  /// Starts an out-of-place average of the device buffer `send` into the
  /// device buffer `recv` (see the header comment for the ordering).
  template <storage_type T>
  nccl_request iallreduce_average(std::span<const T> send, std::span<T> recv,
                                  const collective_signature& sig = {}) {
    DASGD_REQUIRE(send.size() == recv.size(), size_mismatch_error,
                  "iallreduce_average: send has ", send.size(), " elements but recv has ",
                  recv.size());
    if (!send.empty()) {
      require_device_pointer(send.data(), "send");
      require_device_pointer(recv.data(), "recv");
    }
    nccl_request req{state_, state_->allreduce_average(send.data(), recv.data(), send.size(),
                                                       detail::nccl_type<T>())};
    req.agreement_ = own_agreement(sig);
    return req;
  }

  /// Every rank's recv receives the root's send (ncclBroadcast).
  template <storage_type T>
  nccl_request ibroadcast(std::span<const T> send, std::span<T> recv, int root,
                          const collective_signature& sig) {
    DASGD_REQUIRE(send.size() == recv.size(), size_mismatch_error, "ibroadcast: send has ",
                  send.size(), " elements but recv has ", recv.size());
    DASGD_REQUIRE(root >= 0 && root < size(), config_error, "ibroadcast: root ", root,
                  " is outside [0, ", size(), ")");
    if (!send.empty()) {
      require_device_pointer(send.data(), "send");
      require_device_pointer(recv.data(), "recv");
    }
    nccl_request req{state_, state_->broadcast(send.data(), recv.data(), send.size(),
                                               detail::nccl_type<T>(), root)};
    req.agreement_ = own_agreement(sig);
    return req;
  }

  std::vector<std::uint64_t> allgather(std::uint64_t value) { return state_->allgather(value); }

  /// Aborts the NCCL communicator; every later call throws comm_error.
  void abort(const std::string& reason) { state_->abort(reason); }

 private:
  static collective_agreement own_agreement(const collective_signature& sig) {
    collective_agreement a;
    a.min_proposal = a.max_proposal = sig.proposal;
    if (sig.status != 0) {
      a.status_rank = 0;
      a.status = sig.status;
      a.status_detail = sig.status_detail;
    }
    return a;
  }

  static void require_device_pointer(const void* p, const char* what) {
    cudaPointerAttributes attr{};
    const cudaError_t e = cudaPointerGetAttributes(&attr, p);
    if (e != cudaSuccess) (void)cudaGetLastError();
    DASGD_REQUIRE(e == cudaSuccess &&
                      (attr.type == cudaMemoryTypeDevice || attr.type == cudaMemoryTypeManaged),
                  config_error, "nccl_communicator: the ", what, " buffer at ", p,
                  " is not device memory");
  }

  std::shared_ptr<detail::nccl_state> state_;
};

}  // namespace dasgd::comm
