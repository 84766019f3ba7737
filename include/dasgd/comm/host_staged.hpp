// Device tensors over a host communicator (MPI, in-process): the snapshot
// is copied to pinned host memory, averaged there by the inner
// communicator, and copied back, all behind the compute stream's back.
// Models dasgd::communicator with memory_space = device_space, so the CUDA
// backend trains with it exactly as with NCCL. This is what clusters
// without NCCL use, and how several processes sharing one GPU train
// together (docs/cuda.md, "Device tensors over MPI").
//
// Ordering (docs/design.md section 4), per collective:
//   compute stream:  ... snapshot pass | E0 ............ wait(E2) | merge pass
//   staging stream:   wait(E0) | D2H -> pinned | E1 ...... H2D | E2
//   staging thread:              poll E1 | inner collective | queue H2D
// The caller's thread only records E0 and queues the device-to-host copy
// (no host synchronization). The staging thread starts the inner
// collective once the copy has landed and waits for it (the inner
// communicator's progress, MPI test mode included, is driven there), then
// queues the host-to-device copy. request::test() is true, and wait()
// returns, once that copy is queued and the compute stream has been told to
// wait for it: the merge queued next reads the complete average.
//
// Every inner call (collectives, allgather) is made by the staging thread,
// one at a time and in issue order, so an MPI communicator in test mode
// needs only MPI_THREAD_SERIALIZED from the user's side.
//
// 16-bit storage travels as 16-bit words; how it is summed is the inner
// communicator's business (MPI: a user op that sums in fp32; in-process:
// in float). A wire_type of the inner communicator is passed on.
//
// Failures, never a hang: a snapshot copy not finished within `timeout`
// (compute stream stalled), an inner timeout, or a CUDA error fails the
// request with timeout_error / comm_error naming the rank, and latches:
// every later call and check_health() throws it (the staging buffers may
// still be in use). A signature mismatch reported by the inner
// communicator fails that collective on every rank and does not latch. A
// dropped request never writes its `recv`.
//
// Not offered: passing device pointers straight to a CUDA-aware MPI. The
// MPI communicator finishes an average on the host (the scale pass, the
// fp32 sum of 16-bit words), which must not touch device memory.
#pragma once

#include <cuda_runtime_api.h>

#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
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
#include "detail/cuda_runtime.hpp"

namespace dasgd::comm {

struct host_staged_options {
  /// Longest the staging waits for a snapshot's device-to-host copy (a
  /// stalled compute stream) before timeout_error. The inner communicator
  /// bounds its own waits; a wait() or allgather() gives up, as a backstop,
  /// twice this long after the collective was posted, so make this at least
  /// the inner communicator's timeout.
  std::chrono::milliseconds timeout{std::chrono::seconds(120)};
  /// How often the staging thread looks at a pending copy.
  std::chrono::microseconds poll_interval{50};
};

namespace detail {

/// A pinned host buffer the staging reuses across rounds, with the event
/// recorded after the last copy that touches it: free again once no job
/// owns it and that copy has finished.
struct pinned_slot {
  void* data = nullptr;
  std::size_t bytes = 0;
  cudaEvent_t copied = nullptr;
  bool owned = false;
};

template <class Inner, class Cuda>
class staging_engine;

/// One collective on its way through the staging.
template <class Inner, class Cuda>
struct staged_job {
  using inner_request = typename Inner::request_type;
  enum class kind { average, broadcast, gather };
  enum class status { queued, running, done, failed };

  kind what = kind::average;
  std::size_t bytes = 0;
  void* device_recv = nullptr;
  pinned_slot* send_slot = nullptr;
  pinned_slot* recv_slot = nullptr;
  std::function<inner_request(Inner&, const void*, void*)> start;
  std::uint64_t gather_value = 0;
  std::vector<std::uint64_t> gathered;

  // Guarded by the engine's mutex.
  status state = status::queued;
  bool compute_waits = false;  ///< the compute stream was told to wait for E2
  bool abandoned = false;      ///< the request was dropped: never write recv
  collective_agreement agreement{};
  ::dasgd::detail::error_record error;
  std::chrono::steady_clock::time_point posted{};
  std::optional<double> inner_seconds;
};

template <class Inner, class Cuda>
class staging_engine {
 public:
  using job = staged_job<Inner, Cuda>;
  using clock = std::chrono::steady_clock;

  staging_engine(Inner inner, cudaStream_t compute, host_staged_options options)
      : inner_(std::move(inner)), compute_(compute), options_(options) {
    DASGD_REQUIRE(options_.timeout.count() > 0, config_error,
                  "host-staged communicator: timeout must be positive, got ", options_.timeout.count(), " ms");
    rank_ = static_cast<int>(inner_.rank());
    size_ = static_cast<int>(inner_.size());
    cuda_check(Cuda::get_device(&device_), "cudaGetDevice");
    int least = 0;
    int greatest = 0;
    cuda_check(Cuda::stream_priority_range(&least, &greatest), "cudaDeviceGetStreamPriorityRange");
    // High priority: the copies are short and gate the inner collective.
    cuda_check(Cuda::stream_create(&staging_, cudaStreamNonBlocking, greatest), "cudaStreamCreateWithPriority");
    if (const cudaError_t e = Cuda::event_create(&snapshot_written_, cudaEventDisableTiming); e != cudaSuccess) {
      (void)Cuda::stream_destroy(staging_);
      cuda_check(e, "cudaEventCreateWithFlags");
    }
    worker_ = std::thread([this] { run(); });
  }

  staging_engine(const staging_engine&) = delete;
  staging_engine& operator=(const staging_engine&) = delete;

  ~staging_engine() { shutdown(); }

  int rank() const { return rank_; }
  int size() const { return size_; }
  cudaStream_t compute_stream() const { return compute_; }
  const host_staged_options& options() const { return options_; }

  /// Queues the device-to-host copy of `send` after the work already on the
  /// compute stream and hands the rest to the staging thread.
  std::shared_ptr<job> post(typename job::kind what, const void* send, void* recv, std::size_t bytes,
                            std::function<typename job::inner_request(Inner&, const void*, void*)> start) {
    std::unique_lock lk(m_);
    raise_if_failed_locked();
    auto j = std::make_shared<job>();
    j->what = what;
    j->bytes = bytes;
    j->device_recv = recv;
    j->start = std::move(start);
    j->posted = clock::now();
    j->send_slot = acquire_locked(bytes);
    j->recv_slot = acquire_locked(bytes);
    try {
      // One event serves every round: a stream wait captures the record
      // that precedes it.
      cuda_check(Cuda::event_record(snapshot_written_, compute_), "cudaEventRecord (compute stream)");
      cuda_check(Cuda::stream_wait_event(staging_, snapshot_written_), "cudaStreamWaitEvent (staging stream)");
      if (bytes > 0)
        cuda_check(Cuda::memcpy_async(j->send_slot->data, send, bytes, cudaMemcpyDeviceToHost, staging_),
                   "cudaMemcpyAsync (snapshot to pinned memory)");
      cuda_check(Cuda::event_record(j->send_slot->copied, staging_), "cudaEventRecord (staging stream)");
    } catch (const error& e) {
      latch_locked(::dasgd::detail::error_record::of(e));
      j->send_slot->owned = j->recv_slot->owned = false;
      throw;
    }
    queue_.push_back(j);
    cv_.notify_all();
    return j;
  }

  std::vector<std::uint64_t> allgather(std::uint64_t value) {
    auto j = std::make_shared<job>();
    j->what = job::kind::gather;
    j->gather_value = value;
    j->posted = clock::now();
    {
      std::lock_guard lk(m_);
      raise_if_failed_locked();
      queue_.push_back(j);
      cv_.notify_all();
    }
    wait(*j);
    return j->gathered;
  }

  bool test(job& j) {
    std::lock_guard lk(m_);
    return finished_locked(j);
  }

  void wait(job& j) {
    std::unique_lock lk(m_);
    const auto deadline = j.posted + 2 * options_.timeout;
    while (!finished_locked(j)) {
      if (done_cv_.wait_until(lk, deadline) == std::cv_status::timeout && !finished_locked(j)) {
        const std::string msg = ::dasgd::detail::concat(
            "host-staged communicator (rank ", rank_, " of ", size_, "): a ", what_name(j.what),
            " did not finish within ", 2 * options_.timeout.count(), " ms of being posted");
        latch_locked(::dasgd::detail::error_record::of(timeout_error(msg, __FILE__, __LINE__)));
        failed_.raise();
      }
    }
  }

  void abandon(job& j) {
    std::lock_guard lk(m_);
    j.abandoned = true;
    if (j.state == job::status::done && !j.compute_waits && j.recv_slot != nullptr) j.recv_slot->owned = false;
  }

  std::optional<double> inner_seconds(const job& j) {
    std::lock_guard lk(m_);
    return j.inner_seconds;
  }

  void check_health() {
    std::lock_guard lk(m_);
    raise_if_failed_locked();
  }

 private:
  static const char* what_name(typename job::kind k) {
    switch (k) {
      case job::kind::average: return "average";
      case job::kind::broadcast: return "broadcast";
      case job::kind::gather: return "allgather";
    }
    return "collective";
  }

  void cuda_check(cudaError_t e, const char* what) const {
    if (e != cudaSuccess)
      DASGD_THROW(comm_error, "host-staged communicator (rank ", rank_, " of ", size_, "): ", what,
                  " failed: ", Cuda::error_name(e), " (", Cuda::error_string(e), ")");
  }

  void raise_if_failed_locked() const {
    if (failed_) failed_.raise();
  }

  void latch_locked(::dasgd::detail::error_record r) {
    if (!failed_) failed_ = std::move(r);
  }

  /// True once j's result may be consumed; throws its failure. The first
  /// time, makes the compute stream wait for the copy back (lock held).
  bool finished_locked(job& j) {
    if (j.state == job::status::failed) j.error.raise();
    if (j.state != job::status::done) return false;
    if (!j.compute_waits && j.what != job::kind::gather) {
      cuda_check(Cuda::stream_wait_event(compute_, j.recv_slot->copied), "cudaStreamWaitEvent (compute stream)");
      j.compute_waits = true;
      j.recv_slot->owned = false;  // reusable once the copy back has run
    }
    return true;
  }

  /// A free pinned buffer of at least `bytes` (lock held). Allocation only
  /// happens the first rounds: slots are reused once their copies are done.
  pinned_slot* acquire_locked(std::size_t bytes) {
    pinned_slot* best = nullptr;
    for (auto& s : slots_) {
      if (s->owned || s->bytes < bytes) continue;
      if (Cuda::event_query(s->copied) != cudaSuccess) continue;  // a never-recorded event is complete
      if (best == nullptr || s->bytes < best->bytes) best = s.get();
    }
    if (best == nullptr) {
      auto s = std::make_unique<pinned_slot>();
      s->bytes = bytes;
      cuda_check(Cuda::event_create(&s->copied, cudaEventDisableTiming), "cudaEventCreateWithFlags");
      if (const cudaError_t e = Cuda::malloc_host(&s->data, std::max<std::size_t>(bytes, 1)); e != cudaSuccess) {
        (void)Cuda::event_destroy(s->copied);
        cuda_check(e, "cudaMallocHost");
      }
      slots_.push_back(std::move(s));
      best = slots_.back().get();
    }
    best->owned = true;
    return best;
  }

  void run() {
    (void)Cuda::set_device(device_);  // the staging thread's calls target the caller's device
    std::unique_lock lk(m_);
    for (;;) {
      cv_.wait(lk, [&] { return stopping_ || !queue_.empty(); });
      if (queue_.empty()) return;  // stopping, nothing left
      std::shared_ptr<job> j = queue_.front();
      queue_.pop_front();
      if (stopping_ || failed_) {
        j->error = failed_ ? failed_
                           : ::dasgd::detail::error_record::of(comm_error(
                                 ::dasgd::detail::concat("host-staged communicator (rank ", rank_,
                                                         "): destroyed with a ", what_name(j->what),
                                                         " not yet started"),
                                 __FILE__, __LINE__));
        finish_locked(*j, job::status::failed);
        continue;
      }
      j->state = job::status::running;
      lk.unlock();
      ::dasgd::detail::error_record failure;
      bool latch = false;
      try {
        if (j->what == job::kind::gather) {
          auto gathered = inner_.allgather(j->gather_value);
          lk.lock();
          j->gathered = std::move(gathered);
          finish_locked(*j, job::status::done);
          continue;
        }
        wait_for_copy(*j);
        const auto t0 = clock::now();
        typename job::inner_request r = j->start(inner_, j->send_slot->data, j->recv_slot->data);
        try {
          r.wait();
        } catch (const timeout_error&) {
          latch = true;  // the inner collective may still read and write the slots
          throw;
        }
        const double seconds = std::chrono::duration<double>(clock::now() - t0).count();
        const collective_agreement agreement = r.agreement();
        lk.lock();
        j->inner_seconds = seconds;
        j->agreement = agreement;
        j->send_slot->owned = false;
        if (failed_ || stopping_) {
          // A wait() that timed out, or the owner going away: the device
          // buffer may be gone, so nothing is copied back.
          j->error = failed_ ? failed_
                             : ::dasgd::detail::error_record::of(comm_error(
                                   ::dasgd::detail::concat("host-staged communicator (rank ", rank_,
                                                           "): destroyed with a ", what_name(j->what), " in flight"),
                                   __FILE__, __LINE__));
          j->recv_slot->owned = false;
          finish_locked(*j, job::status::failed);
          continue;
        }
        if (!j->abandoned) {
          lk.unlock();
          queue_copy_back(*j);
          lk.lock();
        }
        if (j->abandoned) j->recv_slot->owned = false;  // else once the compute stream waits for it
        finish_locked(*j, job::status::done);
        continue;
      } catch (const timeout_error& e) {
        failure = ::dasgd::detail::error_record::of(e);
        latch = true;
      } catch (const comm_error& e) {
        failure = ::dasgd::detail::error_record::of(e);
        latch = latch || cuda_failure_;
      } catch (...) {
        failure = ::dasgd::detail::error_record::from(std::current_exception());
      }
      if (!lk.owns_lock()) lk.lock();
      cuda_failure_ = false;
      if (latch) {
        latch_locked(failure);
      } else if (j->what != job::kind::gather) {
        // The inner collective failed without touching the slots again.
        j->send_slot->owned = false;
        j->recv_slot->owned = false;
      }
      j->error = std::move(failure);
      finish_locked(*j, job::status::failed);
    }
  }

  /// Waits (staging thread, no lock) until the snapshot copy has landed.
  void wait_for_copy(job& j) {
    const auto deadline = j.posted + options_.timeout;
    for (;;) {
      const cudaError_t e = Cuda::event_query(j.send_slot->copied);
      if (e == cudaSuccess) return;
      if (e != cudaErrorNotReady) {
        cuda_failure_ = true;
        cuda_check(e, "cudaEventQuery (snapshot copy)");
      }
      if (clock::now() > deadline)
        DASGD_THROW(timeout_error, "host-staged communicator (rank ", rank_, " of ", size_,
                    "): the snapshot's copy to host memory did not finish within ", options_.timeout.count(),
                    " ms (the compute stream is stalled or far behind)");
      {
        std::unique_lock lk(m_);
        if (cv_.wait_for(lk, options_.poll_interval, [&] { return stopping_; }))
          DASGD_THROW(comm_error, "host-staged communicator (rank ", rank_,
                      "): destroyed while a snapshot was being staged");
      }
    }
  }

  void queue_copy_back(job& j) {
    try {
      if (j.bytes > 0)
        cuda_check(Cuda::memcpy_async(j.device_recv, j.recv_slot->data, j.bytes, cudaMemcpyHostToDevice, staging_),
                   "cudaMemcpyAsync (average to device memory)");
      cuda_check(Cuda::event_record(j.recv_slot->copied, staging_), "cudaEventRecord (staging stream)");
    } catch (...) {
      cuda_failure_ = true;
      throw;
    }
  }

  void finish_locked(job& j, typename job::status s) {
    j.state = s;
    j.start = nullptr;  // drops what the closure captured
    done_cv_.notify_all();
  }

  /// Stops the staging thread (it finishes the collective it is in, which
  /// its own timeouts bound) and frees the pinned memory once no copy can
  /// touch it any more. After a failure a stream may never drain: the
  /// buffers are then left allocated rather than freed under a copy.
  void shutdown() noexcept {
    {
      std::lock_guard lk(m_);
      stopping_ = true;
      cv_.notify_all();
    }
    if (worker_.joinable()) worker_.join();
    bool drained = !failed_;
    if (drained) {
      cudaEvent_t last = nullptr;
      drained = Cuda::event_create(&last, cudaEventDisableTiming) == cudaSuccess &&
                Cuda::event_record(last, staging_) == cudaSuccess;
      const auto deadline = clock::now() + options_.timeout;
      while (drained) {
        const cudaError_t e = Cuda::event_query(last);
        if (e == cudaSuccess) break;
        if (e != cudaErrorNotReady || clock::now() > deadline) drained = false;
        else std::this_thread::sleep_for(options_.poll_interval);
      }
      if (last != nullptr) (void)Cuda::event_destroy(last);
    }
    if (drained) {
      for (auto& s : slots_) {
        (void)Cuda::free_host(s->data);
        (void)Cuda::event_destroy(s->copied);
      }
    }
    (void)Cuda::event_destroy(snapshot_written_);
    (void)Cuda::stream_destroy(staging_);
  }

  Inner inner_;
  cudaStream_t compute_;
  cudaStream_t staging_ = nullptr;
  host_staged_options options_;
  int rank_ = 0;
  int size_ = 1;
  int device_ = 0;

  std::mutex m_;
  std::condition_variable cv_;       // the staging thread: work or stop
  std::condition_variable done_cv_;  // waiters: a job finished
  std::deque<std::shared_ptr<job>> queue_;
  std::vector<std::unique_ptr<pinned_slot>> slots_;
  cudaEvent_t snapshot_written_ = nullptr;  // recorded on the compute stream, E0
  ::dasgd::detail::error_record failed_;
  bool stopping_ = false;
  bool cuda_failure_ = false;  // staging thread only
  std::thread worker_;
};

template <class Inner>
struct staged_wire_type {};
template <class Inner>
  requires requires { typename Inner::wire_type; }
struct staged_wire_type<Inner> {
  using wire_type = typename Inner::wire_type;
};

}  // namespace detail

template <class Inner, class Cuda>
class basic_host_staged_communicator;

/// Handle to one staged collective (models dasgd::request). Dropping it
/// while the collective is in flight is safe: the inner collective
/// completes (the other ranks take part in it) and `recv` is not written.
template <class Inner, class Cuda = detail::cuda_runtime>
class basic_host_staged_request {
 public:
  basic_host_staged_request(basic_host_staged_request&&) noexcept = default;
  basic_host_staged_request& operator=(basic_host_staged_request&& other) noexcept {
    if (this != &other) {
      release();
      engine_ = std::move(other.engine_);
      job_ = std::move(other.job_);
    }
    return *this;
  }
  basic_host_staged_request(const basic_host_staged_request&) = delete;
  basic_host_staged_request& operator=(const basic_host_staged_request&) = delete;
  ~basic_host_staged_request() { release(); }

  /// Never blocks. True once work queued on the compute stream after this
  /// call sees the average.
  bool test() {
    require_valid();
    return engine_->test(*job_);
  }
  /// Blocks the host until the inner collective is done and the copy back
  /// is queued (the compute stream waits for it, not the host).
  void wait() {
    require_valid();
    engine_->wait(*job_);
  }
  const collective_agreement& agreement() const {
    require_valid();
    return job_->agreement;
  }
  /// How long the inner collective took (host clock, staging excluded).
  std::optional<double> duration_seconds() const {
    require_valid();
    return engine_->inner_seconds(*job_);
  }

 private:
  friend class basic_host_staged_communicator<Inner, Cuda>;
  using engine_type = detail::staging_engine<Inner, Cuda>;
  basic_host_staged_request(std::shared_ptr<engine_type> e, std::shared_ptr<typename engine_type::job> j)
      : engine_(std::move(e)), job_(std::move(j)) {}

  void require_valid() const {
    DASGD_REQUIRE(job_ != nullptr, state_error, "this host-staged request was moved from");
  }
  void release() noexcept {
    if (job_) engine_->abandon(*job_);
    job_.reset();
    engine_.reset();
  }

  std::shared_ptr<engine_type> engine_;
  std::shared_ptr<typename engine_type::job> job_;
};

/// A communicator for device buffers that averages them through `Inner`, a
/// host communicator (mpi_communicator, inproc_communicator), staging
/// through pinned host memory on its own stream. `compute` must be the
/// stream the backend writes snapshots on (the trainer checks it). Move-only.
template <class Inner, class Cuda = detail::cuda_runtime>
class basic_host_staged_communicator : public detail::staged_wire_type<Inner> {
  static_assert(std::is_same_v<comm_memory_space_t<Inner>, host_space>,
                "the inner communicator of a host-staged communicator must average host memory");

 public:
  using request_type = basic_host_staged_request<Inner, Cuda>;
  using memory_space = device_space;
  using inner_type = Inner;

  basic_host_staged_communicator(Inner inner, cudaStream_t compute, host_staged_options options = {})
      : engine_(std::make_shared<engine_type>(std::move(inner), compute, options)) {}

  int size() const { return engine_->size(); }
  int rank() const { return engine_->rank(); }
  cudaStream_t compute_stream() const { return engine_->compute_stream(); }
  /// Throws the latched failure, if any.
  void check_health() { engine_->check_health(); }

  template <storage_type T>
  request_type iallreduce_average(std::span<const T> send, std::span<T> recv, const collective_signature& sig = {}) {
    using V = std::remove_cv_t<T>;
    DASGD_REQUIRE(send.size() == recv.size(), size_mismatch_error, "iallreduce_average: send has ", send.size(),
                  " elements but recv has ", recv.size(), " (rank ", rank(), ")");
    const std::size_t n = send.size();
    return post(engine_type::job::kind::average, send.data(), recv.data(), n * sizeof(V),
                [n, sig](Inner& c, const void* s, void* r) {
                  return c.iallreduce_average(std::span<const V>(static_cast<const V*>(s), n),
                                              std::span<V>(static_cast<V*>(r), n), sig);
                });
  }

  template <storage_type T>
  request_type ibroadcast(std::span<const T> send, std::span<T> recv, int root, const collective_signature& sig) {
    using V = std::remove_cv_t<T>;
    DASGD_REQUIRE(send.size() == recv.size(), size_mismatch_error, "ibroadcast: send has ", send.size(),
                  " elements but recv has ", recv.size(), " (rank ", rank(), ")");
    DASGD_REQUIRE(root >= 0 && root < size(), config_error, "ibroadcast: root ", root, " is outside [0, ", size(),
                  ") (rank ", rank(), ")");
    const std::size_t n = send.size();
    return post(engine_type::job::kind::broadcast, send.data(), recv.data(), n * sizeof(V),
                [n, root, sig](Inner& c, const void* s, void* r) {
                  return c.ibroadcast(std::span<const V>(static_cast<const V*>(s), n),
                                      std::span<V>(static_cast<V*>(r), n), root, sig);
                });
  }

  std::vector<std::uint64_t> allgather(std::uint64_t value) { return engine_->allgather(value); }

 private:
  using engine_type = detail::staging_engine<Inner, Cuda>;

  template <class F>
  request_type post(typename engine_type::job::kind what, const void* send, void* recv, std::size_t bytes, F start) {
    return request_type(engine_, engine_->post(what, send, recv, bytes, std::move(start)));
  }

  std::shared_ptr<engine_type> engine_;
};

/// The host-staged communicator over the real CUDA runtime.
template <class Inner>
using host_staged_communicator = basic_host_staged_communicator<Inner, detail::cuda_runtime>;

}  // namespace dasgd::comm
