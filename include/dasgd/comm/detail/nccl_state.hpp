// The machinery behind basic_nccl_communicator<Api>: the ncclComm_t, its
// communication stream, the collectives in flight and the threads that
// drive and watch them. Every CUDA/NCCL call goes through Api
// (detail/nccl_runtime.hpp, or a test's fake).
//
// A collective in three steps, issued strictly in post order (collective
// k+1's first NCCL call comes after collective k's last), so the sequence of
// NCCL collectives is the same on every rank whatever the timing:
//  1. post (caller's thread): an event `ready` is recorded on the compute
//     stream, after the snapshot pass queued there.
//  2. signature exchange: an ncclAllGather of 1 + signature_record::words
//     (8) words per rank (kind, then core/collective.hpp's record) on the
//     communication stream, copied into pinned host memory, then an event.
//     Once it fired, the host compares the table: on a mismatch every rank fails this
//     collective with the same error (seen from rank 0), and no rank
//     issues its data collective, so the communicator stays usable. With
//     NCCL, mismatched counts would corrupt memory or hang.
//  3. data: the communication stream waits for `ready`, then a timing
//     event, the ncclAllReduce / ncclBroadcast, and the completion event
//     `done` (also the end of the timing).
// Steps 2 and 3 are issued by whoever drives: the progress thread, or the
// caller inside post/test/wait (both take the driver mutex).
//
// Failure handling, never a hang:
//  - every NCCL call on the comm is made under nccl_mutex_, after checking
//    there that the comm was not aborted (ncclCommAbort frees it), and its
//    message is built there; the abort takes the same mutex, waiting at
//    most abort_grace for a call in progress (a call stuck inside NCCL is
//    unblocked by the abort, so it is not waited for);
//  - ncclInProgress (non-blocking communicators) means "being enqueued":
//    ncclCommGetAsyncError is polled until it resolves, within the timeout;
//  - the watchdog thread aborts when an NCCL call has been running longer
//    than the timeout (the time it started is an atomic), or a collective
//    is still unfinished `timeout` after its post;
//  - an abort makes NCCL's kernels return, so `done` fires over a partial
//    result: a collective is complete only if its event fired while no
//    failure was latched, and the latched failure is thrown by every later
//    call (check_health() included: the trainer asks it before it saves);
//  - destruction drives what is in flight to its end, then finalizes
//    (non-blocking where the comm is), destroys, or aborts on a timeout.
#pragma once

#include <cuda_runtime_api.h>
#include <nccl.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <cstring>
#include <deque>
#include <memory>
#include <mutex>
#include <optional>
#include <source_location>
#include <string>
#include <thread>
#include <type_traits>
#include <utility>
#include <vector>

#include "../../core/collective.hpp"
#include "../../core/error.hpp"
#include "../../kernels/cuda/cuda_error.hpp"
#include "nccl_options.hpp"

namespace dasgd::comm::detail {

template <class Api>
std::string nccl_message(ncclResult_t r, ncclComm_t comm) {
  std::string msg = Api::nccl_error_string(r);
  if (comm != nullptr) {
    const char* last = Api::nccl_last_error(comm);
    if (last != nullptr && *last != '\0') msg += std::string(": ") + last;
  }
  return msg;
}

template <class Api>
void cuda_check(cudaError_t e, const char* call, std::source_location at = std::source_location::current()) {
  if (e == cudaSuccess) return;
  throw cuda_error(e,
                   ::dasgd::detail::concat("CUDA call ", call, " failed: ", Api::error_name(e), " (",
                                           Api::error_string(e), ")"),
                   at.file_name(), static_cast<int>(at.line()));
}

/// Restores the calling thread's current device on scope exit.
template <class Api>
class device_guard {
 public:
  explicit device_guard(int device) {
    cuda_check<Api>(Api::get_device(&previous_), "cudaGetDevice");
    if (previous_ != device) cuda_check<Api>(Api::set_device(device), "cudaSetDevice");
  }
  ~device_guard() {
    int now = previous_;
    if (Api::get_device(&now) == cudaSuccess && now != previous_) (void)Api::set_device(previous_);
  }
  device_guard(const device_guard&) = delete;
  device_guard& operator=(const device_guard&) = delete;

 private:
  int previous_ = 0;
};

/// One collective of an nccl_state.
template <class Api>
struct nccl_op {
  enum class kind : std::uint64_t { average = 1, gather = 2, broadcast = 3 };
  enum class phase {
    queued,    ///< posted; signature exchange not issued yet
    checking,  ///< signature exchange issued
    launched,  ///< data collective issued (the agreement is known)
    done,      ///< `done` fired with no failure latched
    failed,    ///< this collective failed alone (a signature mismatch)
  };
  /// Words per rank in the signature exchange: the kind, then the record.
  static constexpr std::size_t words = 1 + ::dasgd::detail::signature_record::words;

  kind what = kind::average;
  std::uint64_t seq = 0;
  const void* send = nullptr;
  void* recv = nullptr;
  std::size_t count = 0;
  ncclDataType_t type = ncclFloat32;
  int root = -1;
  std::array<std::uint64_t, words> out{};
  cudaEvent_t ready = nullptr;    // compute stream, at post
  cudaEvent_t checked = nullptr;  // signature table copied to the host
  cudaEvent_t start = nullptr;    // timing: the data collective starts
  cudaEvent_t done = nullptr;     // timing end and completion
  std::chrono::steady_clock::time_point posted{};

  // Guarded by the state's m_.
  phase state = phase::queued;
  ::dasgd::detail::error_record error;
  collective_agreement agreement;
  std::vector<std::uint64_t> gathered;
  std::optional<double> seconds;

  nccl_op() = default;
  nccl_op(const nccl_op&) = delete;
  nccl_op& operator=(const nccl_op&) = delete;
  ~nccl_op() {
    // CUDA releases an event still queued once it has fired.
    for (cudaEvent_t e : {ready, checked, start, done})
      if (e != nullptr) (void)Api::event_destroy(e);
  }

  bool finished() const { return state == phase::done || state == phase::failed; }
  bool issued() const { return state != phase::queued && state != phase::checking; }
};

inline const char* nccl_kind_name(std::uint64_t k) {
  switch (k) {
    case 1: return "an average";
    case 2: return "an allgather";
    case 3: return "a broadcast";
  }
  return "an unknown collective";
}

/// Shared by every copy of a communicator and by its requests.
template <class Api>
class nccl_state {
 public:
  using op_type = nccl_op<Api>;
  using clock = std::chrono::steady_clock;
  static constexpr std::size_t words = op_type::words;

  nccl_state(ncclComm_t comm, nccl_ownership ownership, cudaStream_t compute, nccl_options o)
      : comm_(comm), owns_(ownership == nccl_ownership::own), compute_(compute), options_(o) {
    DASGD_REQUIRE(comm != nullptr, config_error, "nccl_communicator: the ncclComm_t is null");
    DASGD_REQUIRE(o.timeout.count() > 0, config_error,
                  "nccl_communicator: timeout must be positive, got ", o.timeout.count(), " ms");
    DASGD_REQUIRE(o.watchdog_interval.count() > 0, config_error,
                  "nccl_communicator: watchdog interval must be positive, got ",
                  o.watchdog_interval.count(), " ms");
    try {
      check_query(Api::comm_count(comm_, &size_), "ncclCommCount");
      check_query(Api::comm_user_rank(comm_, &rank_), "ncclCommUserRank");
      check_query(Api::comm_cu_device(comm_, &device_), "ncclCommCuDevice");
      device_guard<Api> dg(device_);
      int least = 0, greatest = 0;
      cuda_check<Api>(Api::stream_priority_range(&least, &greatest), "cudaDeviceGetStreamPriorityRange");
      // Highest priority: the collective's kernels get SMs as soon as they
      // are ready instead of queueing behind the compute stream's work.
      cuda_check<Api>(Api::stream_create(&comm_stream_, cudaStreamNonBlocking, greatest),
                      "cudaStreamCreateWithPriority");
      const std::size_t table = words * (static_cast<std::size_t>(size_) + 1) * sizeof(std::uint64_t);
      void* p = nullptr;
      cuda_check<Api>(Api::malloc_device(&p, table), "cudaMalloc (signature table)");
      sig_device_ = static_cast<std::uint64_t*>(p);
      p = nullptr;
      cuda_check<Api>(Api::malloc_host(&p, table), "cudaMallocHost (signature table)");
      sig_host_ = static_cast<std::uint64_t*>(p);
    } catch (...) {
      release_cuda();
      if (owns_) (void)Api::comm_destroy(comm_);
      throw;
    }
    if (options_.watchdog) {
      watchdog_ = std::thread([this] { watchdog_loop(); });
      progress_ = std::thread([this] { progress_loop(); });
    }
  }

  nccl_state(const nccl_state&) = delete;
  nccl_state& operator=(const nccl_state&) = delete;

  /// Drives what is in flight to its end (aborting after the timeout), then
  /// finalizes and destroys an owned comm. Ends within about one timeout
  /// for the collectives plus one for the finalization.
  ~nccl_state() {
    {
      std::lock_guard lk(m_);
      stop_progress_ = true;
    }
    cv_.notify_all();
    // The watchdog still runs: it aborts a call the progress thread is stuck in.
    if (progress_.joinable()) progress_.join();
    try {
      device_guard<Api> dg(device_);
      drain();
      if (!aborted_.load()) {
        if (failed_.load() || !pipeline_idle()) {
          if (options_.abort_on_failure) abort_now();
        } else if (owns_) {
          finalize_and_destroy();
        }
      }
    } catch (...) {
      // Destruction must not throw; an abort is the safe end.
      if (!aborted_.load() && options_.abort_on_failure) abort_now();
    }
    {
      std::lock_guard lk(m_);
      stop_watchdog_ = true;
    }
    cv_.notify_all();
    if (watchdog_.joinable()) watchdog_.join();
    pipeline_.clear();
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

  /// Longest fail() waits for an NCCL call in progress before aborting
  /// anyway (the abort is what unblocks a call stuck inside NCCL).
  std::chrono::milliseconds abort_grace() const {
    return std::min(options_.timeout, std::chrono::milliseconds(100));
  }

  std::shared_ptr<op_type> post_average(const void* send, void* recv, std::size_t count, ncclDataType_t type,
                                        std::uint32_t type_id, const collective_signature& sig) {
    auto op = make_op(op_type::kind::average, send, recv, count, type, -1);
    ::dasgd::detail::signature_record::of(sig, count, type_id).pack(op->out.data() + 1);
    return post(std::move(op));
  }

  std::shared_ptr<op_type> post_broadcast(const void* send, void* recv, std::size_t count, ncclDataType_t type,
                                          std::uint32_t type_id, int root, const collective_signature& sig) {
    auto op = make_op(op_type::kind::broadcast, send, recv, count, type, root);
    ::dasgd::detail::signature_record::of(sig, count, type_id, root).pack(op->out.data() + 1);
    return post(std::move(op));
  }

  /// Blocking gather of one value per rank, in rank order (through the
  /// signature exchange: the gathered word is the value).
  std::vector<std::uint64_t> allgather(std::uint64_t value) {
    auto op = make_op(op_type::kind::gather, nullptr, nullptr, 0, ncclUint64, -1);
    op->out[1] = value;
    post(op);
    wait_on_host(*op);
    std::lock_guard lk(m_);
    return op->gathered;
  }

  /// True once the collective's result may be consumed. Never blocks.
  bool test(op_type& op) {
    throw_if_failed();
    {
      std::lock_guard lk(m_);
      if (op.state == op_type::phase::failed) op.error.raise();
      if (op.state == op_type::phase::done) return true;
    }
    drive_if_free();
    // The progress thread may hold the driver: poll this one's event here,
    // so that a collective done on the device is never reported pending.
    if (phase_of(op) == op_type::phase::launched) poll_done(op);
    check_deadlines();
    throw_if_failed();
    std::lock_guard lk(m_);
    if (op.state == op_type::phase::failed) op.error.raise();
    return op.state == op_type::phase::done;
  }

  /// Waits on the host (bounded by the timeout) until the data collective
  /// is issued, then orders the compute stream after it (host_wait: also
  /// blocks until it completes). Throws on failure or timeout.
  void wait(op_type& op) {
    auto pause = std::chrono::microseconds(5);
    while (!test(op)) {
      {
        std::lock_guard lk(m_);
        if (op.issued() && !options_.host_wait) break;
      }
      std::unique_lock lk(m_);
      cv_.wait_for(lk, pause);
      pause = std::min(pause * 2, std::chrono::microseconds(500));
    }
    device_guard<Api> dg(device_);
    // Never on an event that is not recorded yet: `done` is recorded when
    // the data collective is issued, which happened above.
    cuda_check<Api>(Api::stream_wait_event(compute_, op.done), "cudaStreamWaitEvent (compute stream)");
  }

  /// What the signatures combine to (valid once the data collective is
  /// issued: after wait()).
  collective_agreement agreement(const op_type& op) {
    std::lock_guard lk(m_);
    return op.agreement;
  }

  /// How long the data collective ran on the communication stream, once
  /// its completion event fired (nullopt before, or after a failure).
  std::optional<double> duration_seconds(op_type& op) {
    {
      std::lock_guard lk(m_);
      if (op.seconds || failed_.load()) return op.seconds;
      if (op.state != op_type::phase::done) return std::nullopt;
    }
    float ms = 0.0f;
    if (Api::event_elapsed(&ms, op.start, op.done) != cudaSuccess) {
      (void)Api::get_last_error();
      return std::nullopt;
    }
    std::lock_guard lk(m_);
    op.seconds = static_cast<double>(ms) * 1e-3;
    return op.seconds;
  }

  /// The request for `op` goes away: wait (bounded by the timeout) until
  /// its data collective is issued, so that NCCL's sequence stays the same
  /// on every rank and nothing reads the user's buffers later.
  void abandon(op_type& op) noexcept {
    try {
      auto pause = std::chrono::microseconds(5);
      for (;;) {
        {
          std::lock_guard lk(m_);
          if (op.issued() || failed_.load()) return;
        }
        drive_if_free();
        check_deadlines();
        std::unique_lock lk(m_);
        cv_.wait_for(lk, pause);
        pause = std::min(pause * 2, std::chrono::microseconds(500));
      }
    } catch (...) {
    }
  }

  /// Throws the latched failure, if any (polls for an asynchronous NCCL
  /// error first: the progress thread polls only while collectives run).
  void check_health() {
    if (!failed_.load()) poll_async_error(false);
    throw_if_failed();
  }

  /// Aborts the communicator (once) and latches `reason` for every later call.
  void abort(const std::string& reason) { fail(reason, false); }

 private:
  // --- posting ------------------------------------------------------------
  std::shared_ptr<op_type> make_op(typename op_type::kind what, const void* send, void* recv, std::size_t count,
                                   ncclDataType_t type, int root) {
    throw_if_failed();
    auto op = std::make_shared<op_type>();
    op->what = what;
    op->send = send;
    op->recv = recv;
    op->count = count;
    op->type = type;
    op->root = root;
    op->out[0] = static_cast<std::uint64_t>(what);
    return op;
  }

  std::shared_ptr<op_type> post(std::shared_ptr<op_type> op) {
    device_guard<Api> dg(device_);
    cuda_check<Api>(Api::event_create(&op->ready, cudaEventDisableTiming), "cudaEventCreateWithFlags");
    cuda_check<Api>(Api::event_create(&op->checked, cudaEventDisableTiming), "cudaEventCreateWithFlags");
    cuda_check<Api>(Api::event_create(&op->start, cudaEventDefault), "cudaEventCreateWithFlags");
    cuda_check<Api>(Api::event_create(&op->done, cudaEventDefault), "cudaEventCreateWithFlags");
    // Order the collective after the work already queued on the compute
    // stream (the snapshot pass), without blocking the host.
    cuda_check<Api>(Api::event_record(op->ready, compute_), "cudaEventRecord (compute stream)");
    {
      std::lock_guard lk(m_);
      op->seq = next_seq_++;
      op->posted = clock::now();
      pipeline_.push_back(op);
    }
    cv_.notify_all();
    // Issue the signature exchange at once when nothing is ahead of it.
    drive_if_free();
    throw_if_failed();
    return op;
  }

  // --- driving (the progress thread, or the caller) -------------------------
  void drive_if_free() {
    std::unique_lock dl(drive_m_, std::try_to_lock);
    if (dl.owns_lock()) advance();
  }

  /// One pass over the collectives in flight, in post order.
  void advance() {
    if (failed_.load()) return;
    try {
      std::vector<std::shared_ptr<op_type>> ops;
      {
        std::lock_guard lk(m_);
        ops.assign(pipeline_.begin(), pipeline_.end());
      }
      bool may_issue = true;  // false once an earlier op has not issued its data collective
      bool in_flight = false;
      for (const auto& op : ops) {
        if (failed_.load()) return;
        auto p = phase_of(*op);
        if (p == op_type::phase::queued) {
          if (!may_issue) break;
          start_check(*op);
          p = phase_of(*op);
        }
        if (p == op_type::phase::checking) {
          poll_check(*op);
          p = phase_of(*op);
        }
        if (p == op_type::phase::queued || p == op_type::phase::checking) may_issue = false;
        if (p == op_type::phase::launched) poll_done(*op);
        in_flight = true;
      }
      {
        std::lock_guard lk(m_);
        std::erase_if(pipeline_, [](const std::shared_ptr<op_type>& o) { return o->finished(); });
      }
      if (in_flight) poll_async_error(true);
    } catch (const std::exception& e) {
      fail(::dasgd::detail::concat("NCCL communicator on rank ", rank_, " of ", size_, ": ", e.what()), false);
    }
  }

  typename op_type::phase phase_of(const op_type& op) {
    std::lock_guard lk(m_);
    return op.state;
  }

  void set_phase(op_type& op, typename op_type::phase p) {
    {
      std::lock_guard lk(m_);
      op.state = p;
      ++phase_changes_;
    }
    cv_.notify_all();
  }

  /// Issues the signature exchange of `op`. The host slots are free: the
  /// previous op's table was read before this op could start.
  void start_check(op_type& op) {
    const auto n = static_cast<std::size_t>(size_);
    std::uint64_t* out_host = sig_host_ + n * words;
    std::uint64_t* out_device = sig_device_ + n * words;
    std::memcpy(out_host, op.out.data(), words * sizeof(std::uint64_t));
    cuda_check<Api>(Api::memcpy_async(out_device, out_host, words * sizeof(std::uint64_t), cudaMemcpyHostToDevice,
                                      comm_stream_),
                    "cudaMemcpyAsync (signature)");
    if (!nccl_call("ncclAllGather (signature exchange)", op, [&] {
          return Api::all_gather(out_device, sig_device_, words, ncclUint64, comm_, comm_stream_);
        }))
      return;
    cuda_check<Api>(Api::memcpy_async(sig_host_, sig_device_, n * words * sizeof(std::uint64_t),
                                      cudaMemcpyDeviceToHost, comm_stream_),
                    "cudaMemcpyAsync (signature table)");
    cuda_check<Api>(Api::event_record(op.checked, comm_stream_), "cudaEventRecord (signature table)");
    set_phase(op, op_type::phase::checking);
  }

  /// Once the table is on the host: checks it, then issues the data
  /// collective. Every rank sees the same table and takes the same branch.
  void poll_check(op_type& op) {
    const cudaError_t q = Api::event_query(op.checked);
    if (q == cudaErrorNotReady) return;
    if (q != cudaSuccess) {
      device_failure(op, q);
      return;
    }
    if (failed_.load()) return;  // an abort fired the event over a partial table
    const auto n = static_cast<std::size_t>(size_);
    std::vector<std::uint64_t> table(sig_host_, sig_host_ + n * words);
    const auto word = [&](std::size_t r, std::size_t i) { return table[words * r + i]; };

    ::dasgd::detail::error_record mismatch;
    for (std::size_t r = 1; r < n && !mismatch; ++r)
      if (word(r, 0) != word(0, 0))
        mismatch = ::dasgd::detail::error_record::of(comm_error(
            ::dasgd::detail::concat("NCCL collective #", op.seq, ": rank 0 issued ", nccl_kind_name(word(0, 0)),
                                    " but rank ", r, " issued ", nccl_kind_name(word(r, 0)),
                                    "; collectives must be issued in the same order on every rank"),
            __FILE__, __LINE__));
    if (!mismatch && op.what == op_type::kind::gather) {
      std::lock_guard lk(m_);
      op.gathered.resize(n);
      for (std::size_t r = 0; r < n; ++r) op.gathered[r] = word(r, 1);
      op.state = op_type::phase::done;
      ++phase_changes_;
    } else if (!mismatch) {
      std::vector<::dasgd::detail::signature_record> records;
      records.reserve(n);
      for (std::size_t r = 0; r < n; ++r)
        records.push_back(::dasgd::detail::signature_record::unpack(table.data() + words * r + 1));
      // Seen from rank 0, so that every rank raises the same message.
      const char* where = op.what == op_type::kind::average ? "NCCL average" : "NCCL broadcast";
      if (auto e = ::dasgd::detail::check_signatures(records, 0, where)) {
        mismatch = ::dasgd::detail::error_record::from(e);
      } else {
        {
          std::lock_guard lk(m_);
          op.agreement = ::dasgd::detail::combine(records);
        }
        launch_data(op);
        return;
      }
    }
    if (mismatch) {
      std::lock_guard lk(m_);
      op.error = std::move(mismatch);
      op.state = op_type::phase::failed;
      ++phase_changes_;
    }
    cv_.notify_all();
  }

  void launch_data(op_type& op) {
    cuda_check<Api>(Api::stream_wait_event(comm_stream_, op.ready), "cudaStreamWaitEvent (communication stream)");
    cuda_check<Api>(Api::event_record(op.start, comm_stream_), "cudaEventRecord (collective start)");
    if (op.count > 0) {
      const bool ok = op.what == op_type::kind::average
                          ? nccl_call("ncclAllReduce", op,
                                      [&] {
                                        // One rank: the sum of one value is its average, and
                                        // NCCL runs a one-rank sum as a copy. Its one-rank
                                        // ncclAvg kernel (NCCL 2.28.9) left the last 3
                                        // elements of a 1000003-double out-of-place buffer
                                        // unwritten on an H200 (tests/cuda/test_trainer.cu
                                        // caught it).
                                        const ncclRedOp_t red = size_ == 1 ? ncclSum : ncclAvg;
                                        return Api::all_reduce(op.send, op.recv, op.count, op.type, red,
                                                               comm_, comm_stream_);
                                      })
                          : nccl_call("ncclBroadcast", op, [&] {
                              return Api::broadcast(op.send, op.recv, op.count, op.type, op.root, comm_,
                                                    comm_stream_);
                            });
      if (!ok) return;
    }
    cuda_check<Api>(Api::event_record(op.done, comm_stream_), "cudaEventRecord (collective end)");
    set_phase(op, op_type::phase::launched);
  }

  void poll_done(op_type& op) {
    const cudaError_t q = Api::event_query(op.done);
    if (q == cudaErrorNotReady) return;
    if (q != cudaSuccess) {
      device_failure(op, q);
      return;
    }
    // An abort makes NCCL's kernels return early; the failure is latched
    // before the abort, so checking it after the event rules that out.
    if (failed_.load()) return;
    set_phase(op, op_type::phase::done);
  }

  void device_failure(const op_type& op, cudaError_t q) {
    (void)Api::get_last_error();
    fail(::dasgd::detail::concat(describe(op), " failed on the device: ", Api::error_name(q), " (",
                                 Api::error_string(q), ")"),
         false);
  }

  /// Makes one NCCL call on comm_ under nccl_mutex_, after checking there
  /// that the comm is alive; resolves ncclInProgress. False (with the
  /// failure latched) if it failed or the comm is gone.
  template <class F>
  bool nccl_call(const char* name, const op_type& op, F&& call) {
    ncclResult_t r = ncclSuccess;
    std::string msg;
    const auto started = clock::now();
    {
      std::lock_guard nl(nccl_mutex_);
      if (aborted_.load() || failed_.load()) return false;
      begin_call(name, started);
      r = call();
      if (r != ncclSuccess && r != ncclInProgress) msg = message_under_lock(r, started);
    }
    if (r == ncclInProgress) r = resolve_in_progress(name, started, msg);
    end_call();
    if (r == ncclSuccess) return true;
    if (aborted_.load() || failed_.load()) return false;  // latched: the abort ended the call
    fail(::dasgd::detail::concat(name, " for ", describe(op), " failed: ", msg), false);
    return false;
  }

  /// Polls ncclCommGetAsyncError until it is not ncclInProgress, at most
  /// until `started` + timeout (then fails with a timeout).
  ncclResult_t resolve_in_progress(const char* name, clock::time_point started, std::string& msg) {
    auto pause = std::chrono::microseconds(10);
    for (;;) {
      ncclResult_t state = ncclInProgress;
      {
        std::lock_guard nl(nccl_mutex_);
        if (aborted_.load()) return ncclInternalError;
        const auto polled = clock::now();
        const ncclResult_t q = Api::comm_get_async_error(comm_, &state);
        if (q != ncclSuccess) state = q;
        if (state != ncclSuccess && state != ncclInProgress) msg = message_under_lock(state, polled);
      }
      if (state != ncclInProgress) return state;
      if (clock::now() - started > options_.timeout) {
        fail(::dasgd::detail::concat(name, " on rank ", rank_, " of ", size_,
                                     " was still in progress (ncclInProgress) ", options_.timeout.count(),
                                     " ms after it was called; the communicator was aborted"),
             true);
        return ncclInProgress;
      }
      std::this_thread::sleep_for(pause);
      pause = std::min(pause * 2, std::chrono::microseconds(1000));
    }
  }

  /// The message for `r` from a call that started at `started`, with
  /// nccl_mutex_ held. ncclGetLastError reads the comm, so only while it is
  /// certainly alive: not aborted, and the call shorter than abort_grace
  /// (an abort skips the mutex only for a call held longer than that).
  std::string message_under_lock(ncclResult_t r, clock::time_point started) {
    if (aborted_.load() || clock::now() - started >= abort_grace()) return Api::nccl_error_string(r);
    return nccl_message<Api>(r, comm_);
  }

  void begin_call(const char* name, clock::time_point started) {
    call_name_.store(name);
    call_started_.store(started.time_since_epoch().count() + 1);  // never 0 while a call runs
  }
  void end_call() { call_started_.store(0); }

  /// Latches an asynchronous NCCL error (and aborts). `wait_for_lock`:
  /// false only where the caller must not block (check_health).
  void poll_async_error(bool wait_for_lock) {
    ncclResult_t async = ncclSuccess;
    std::string msg;
    {
      std::unique_lock nl(nccl_mutex_, std::defer_lock);
      if (wait_for_lock) nl.lock();
      else if (!nl.try_lock()) return;
      if (aborted_.load()) return;
      const auto polled = clock::now();
      const ncclResult_t r = Api::comm_get_async_error(comm_, &async);
      if (r != ncclSuccess) async = r;
      if (async != ncclSuccess && async != ncclInProgress) msg = message_under_lock(async, polled);
    }
    if (async != ncclSuccess && async != ncclInProgress)
      fail(::dasgd::detail::concat("NCCL reported an asynchronous error on rank ", rank_, " of ", size_, ": ",
                                   msg, "; the communicator was aborted"),
           false);
  }

  // --- watching ---------------------------------------------------------------
  /// Fails on an NCCL call running longer than the timeout, or a
  /// collective unfinished `timeout` after its post. Takes no NCCL lock.
  void check_deadlines() {
    if (failed_.load()) return;
    const auto now = clock::now();
    const auto started = call_started_.load();
    if (started != 0) {
      const auto running = now - clock::time_point(clock::duration(started - 1));
      if (running > options_.timeout) {
        fail(::dasgd::detail::concat(call_name_.load(), " on rank ", rank_, " of ", size_,
                                     " has not returned ",
                                     std::chrono::duration_cast<std::chrono::milliseconds>(running).count(),
                                     " ms after it was called (timeout ", options_.timeout.count(),
                                     " ms; a peer may be gone); the communicator was aborted"),
             true);
        return;
      }
    }
    std::string late;
    {
      std::lock_guard lk(m_);
      for (const auto& op : pipeline_) {
        if (op->finished() || now - op->posted <= options_.timeout) continue;
        const std::string where =
            started != 0 ? ::dasgd::detail::concat(call_name_.load(), " has not returned yet")
            : op->issued() ? std::string("its data transfer is still running")
                           : std::string("not every rank has joined its signature exchange");
        late = ::dasgd::detail::concat(describe(*op), " did not complete within ", options_.timeout.count(),
                                       " ms of its start (", where,
                                       "; a peer may be gone or have issued other collectives); the "
                                       "communicator was aborted");
        break;
      }
    }
    if (!late.empty()) fail(late, true);
  }

  /// Latches the first failure and aborts the communicator. Safe from any
  /// thread that holds no NCCL lock.
  void fail(const std::string& reason, bool timed_out) {
    {
      std::lock_guard lk(m_);
      if (failure_) return;
      failure_ = timed_out ? ::dasgd::detail::error_record::of(timeout_error(reason, __FILE__, __LINE__))
                           : ::dasgd::detail::error_record::of(comm_error(reason, __FILE__, __LINE__));
      failed_.store(true);
    }
    cv_.notify_all();
    if (options_.abort_on_failure) abort_now();
  }

  /// ncclCommAbort, once, under nccl_mutex_ unless a call holds it longer
  /// than abort_grace (stuck inside NCCL: the abort is what unblocks it).
  void abort_now() {
    // Polled try_lock rather than a timed mutex: ThreadSanitizer does not
    // follow pthread_mutex_clocklock and would report every unlock.
    std::unique_lock nl(nccl_mutex_, std::defer_lock);
    const auto until = clock::now() + abort_grace();
    while (!nl.try_lock() && clock::now() < until) std::this_thread::sleep_for(std::chrono::microseconds(200));
    if (!aborted_.exchange(true)) (void)Api::comm_abort(comm_);
    { std::lock_guard lk(m_); }  // a waiter in throw_if_failed is either asleep or sees the flag
    cv_.notify_all();
  }

  void throw_if_failed() {
    if (!failed_.load()) return;
    ::dasgd::detail::error_record r;
    {
      std::unique_lock lk(m_);
      // The thread that latched it may still be aborting: report the failure
      // once the abort is done (aborted() is then true), a bounded wait.
      if (options_.abort_on_failure)
        cv_.wait_for(lk, abort_grace() + std::chrono::milliseconds(100), [&] { return aborted_.load(); });
      r = failure_;
    }
    r.raise();
  }

  std::string describe(const op_type& op) const {
    const char* what = op.what == op_type::kind::average     ? "average"
                       : op.what == op_type::kind::broadcast ? "broadcast"
                                                             : "allgather";
    return ::dasgd::detail::concat("NCCL ", what, " #", op.seq, " of ", op.count, " elements on rank ", rank_,
                                   " of ", size_);
  }

  void check_query(ncclResult_t r, const char* call) {
    if (r != ncclSuccess) DASGD_THROW(comm_error, call, " failed: ", nccl_message<Api>(r, comm_));
  }

  void wait_on_host(op_type& op) {
    auto pause = std::chrono::microseconds(5);
    while (!test(op)) {
      std::unique_lock lk(m_);
      cv_.wait_for(lk, pause);
      pause = std::min(pause * 2, std::chrono::microseconds(500));
    }
  }

  bool pipeline_idle() {
    std::lock_guard lk(m_);
    return std::all_of(pipeline_.begin(), pipeline_.end(), [](const auto& o) { return o->finished(); });
  }

  /// Destruction: drives the pipeline until it is idle, a failure is
  /// latched, or the collectives' timeouts pass (then they fail).
  void drain() {
    auto pause = std::chrono::microseconds(10);
    while (!failed_.load() && !pipeline_idle()) {
      {
        std::lock_guard dl(drive_m_);
        advance();
      }
      check_deadlines();
      std::this_thread::sleep_for(pause);
      pause = std::min(pause * 2, std::chrono::microseconds(500));
    }
  }

  /// ncclCommFinalize, polled within the timeout, then ncclCommDestroy; an
  /// abort instead when it does not finish (a blocking finalize stuck in
  /// the call is aborted by the watchdog, which sees the call's start).
  void finalize_and_destroy() {
    const auto started = clock::now();
    ncclResult_t r;
    {
      std::lock_guard nl(nccl_mutex_);
      if (aborted_.load()) return;
      begin_call("ncclCommFinalize", started);
      r = Api::comm_finalize(comm_);
    }
    std::string msg;
    if (r == ncclInProgress) r = resolve_in_progress("ncclCommFinalize", started, msg);
    end_call();
    std::lock_guard nl(nccl_mutex_);
    if (aborted_.load()) return;
    aborted_.store(true);  // gone either way from here
    if (r == ncclSuccess) (void)Api::comm_destroy(comm_);
    else (void)Api::comm_abort(comm_);
  }

  void watchdog_loop() {
    std::unique_lock lk(m_);
    while (!stop_watchdog_) {
      cv_.wait_for(lk, options_.watchdog_interval, [&] { return stop_watchdog_; });
      if (stop_watchdog_) return;
      lk.unlock();
      check_deadlines();
      lk.lock();
    }
  }

  void progress_loop() {
    (void)Api::set_device(device_);
    auto pause = std::chrono::microseconds(10);
    const auto max_pause =
        std::min<std::chrono::microseconds>(options_.watchdog_interval, std::chrono::microseconds(1000));
    std::unique_lock lk(m_);
    for (;;) {
      // Asleep while idle: no polling without a collective in flight.
      cv_.wait(lk, [&] { return stop_progress_ || (!pipeline_.empty() && !failed_.load()); });
      if (stop_progress_) return;
      const std::uint64_t before = phase_changes_;
      lk.unlock();
      {
        std::lock_guard dl(drive_m_);
        advance();
      }
      lk.lock();
      // Short pauses right after progress (the next phase is often ready
      // soon), growing while nothing moves.
      if (phase_changes_ != before || pipeline_.empty()) pause = std::chrono::microseconds(10);
      cv_.wait_for(lk, pause, [&] { return stop_progress_; });
      pause = std::min(pause * 2, max_pause);
    }
  }

  void release_cuda() noexcept {
    if (sig_host_ != nullptr) (void)Api::free_host(sig_host_);
    if (sig_device_ != nullptr) (void)Api::free_device(sig_device_);
    if (comm_stream_ != nullptr) (void)Api::stream_destroy(comm_stream_);
    sig_host_ = nullptr;
    sig_device_ = nullptr;
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
  std::uint64_t* sig_device_ = nullptr;  // size + 1 slots of `words`: the table, then this rank's
  std::uint64_t* sig_host_ = nullptr;    // pinned, same layout

  std::mutex nccl_mutex_;  // held around every NCCL call on comm_ (and the abort)
  std::mutex drive_m_;           // whoever issues NCCL calls for the pipeline
  std::mutex m_;                 // op phases, pipeline_, failure_, stop flags
  std::condition_variable cv_;
  std::deque<std::shared_ptr<op_type>> pipeline_;
  std::uint64_t next_seq_ = 0;
  std::uint64_t phase_changes_ = 0;  // the progress thread's pause restarts after one
  ::dasgd::detail::error_record failure_;
  std::atomic<bool> failed_{false};
  std::atomic<bool> aborted_{false};
  std::atomic<clock::rep> call_started_{0};  // 1 + start of the NCCL call in progress, 0 if none
  std::atomic<const char*> call_name_{""};
  bool stop_progress_ = false;
  bool stop_watchdog_ = false;
  std::thread watchdog_;
  std::thread progress_;
};

}  // namespace dasgd::comm::detail
