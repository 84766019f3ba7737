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
// still be in use). The collectives a latched engine gives up without
// starting them are reported to an MPI inner communicator, so that
// mpi_environment aborts the job rather than finalize under peers that
// wait in them. A signature mismatch reported by the inner communicator
// fails that collective on every rank and does not latch. A dropped
// request never writes its `recv`; destruction still runs the collectives
// posted before it (the peers expect them), without the copies back.
//
// The staging engine below is also the direct route of comm/cuda_mpi.hpp:
// there a job's staging buffer is device memory that a CUDA-aware MPI sums
// in place (one buffer, `in_place`), and its stage-in and stage-out are a
// device copy or kernel instead of the copies to and from pinned memory.
// Each job carries its route as closures, set by the communicator.
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

/// Where the staging buffers live: pinned host memory (the inner
/// communicator averages host memory) or device memory (a CUDA-aware MPI
/// works on it directly, comm/cuda_mpi.hpp).
enum class staging_memory { pinned_host, device };

/// A staging buffer reused across rounds, with the event recorded after the
/// last copy or kernel that touches it: free again once no job owns it and
/// that work has finished. `memory` frees the buffer when its last owner
/// lets go; a direct MPI collective on it holds a share.
struct staging_slot {
  std::shared_ptr<void> memory;
  std::size_t bytes = 0;
  cudaEvent_t copied = nullptr;
  bool owned = false;
};

/// Staging buffers that may still be written (a stalled stream, a stranded
/// collective): kept, reachable, for the rest of the process.
inline void keep_slots_forever(std::vector<std::unique_ptr<staging_slot>> slots) {
  static std::mutex m;
  static auto* kept = new std::vector<std::unique_ptr<staging_slot>>();  // intentionally leaked
  std::lock_guard lk(m);
  for (auto& s : slots) kept->push_back(std::move(s));
}

template <class Inner, class Cuda>
class staging_engine;

/// One collective on its way through the staging.
template <class Inner, class Cuda>
struct staged_job {
  using inner_request = typename Inner::request_type;
  enum class kind { average, broadcast, gather };
  enum class status { queued, running, done, failed };

  kind what = kind::average;
  std::size_t bytes = 0;       ///< of the user's buffers (0: stage nothing)
  std::size_t slot_bytes = 0;  ///< of each staging buffer
  bool in_place = false;       ///< one staging buffer, read and written by the inner collective
  // The route (how the buffers get in and out, what the inner collective
  // is), set by the communicator that posts the job. stage_in runs on the
  // staging stream after the compute stream's snapshot; stage_out after
  // the inner collective, unless the request was dropped.
  std::function<cudaError_t(void* slot, cudaStream_t)> stage_in;
  std::function<inner_request(Inner&, void* send_slot, void* recv_slot, const std::shared_ptr<void>& owner)> start;
  std::function<cudaError_t(const void* slot, cudaStream_t)> stage_out;
  const char* stage_in_call = "";
  const char* stage_out_call = "";
  staging_slot* send_slot = nullptr;
  staging_slot* recv_slot = nullptr;
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

  /// `name` (a literal) introduces its error messages.
  staging_engine(Inner inner, cudaStream_t compute, host_staged_options options,
                 staging_memory memory = staging_memory::pinned_host, const char* name = "host-staged communicator")
      : inner_(std::move(inner)), compute_(compute), options_(options), memory_(memory), name_(name) {
    DASGD_REQUIRE(options_.timeout.count() > 0, config_error, name_, ": timeout must be positive, got ",
                  options_.timeout.count(), " ms");
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

  /// Queues `j`'s stage_in after the work already on the compute stream
  /// and hands the rest to the staging thread.
  std::shared_ptr<job> post(std::shared_ptr<job> j) {
    std::unique_lock lk(m_);
    refuse_if_failed_locked();
    j->posted = clock::now();
    j->send_slot = acquire_locked(j->slot_bytes);
    j->recv_slot = j->in_place ? j->send_slot : acquire_locked(j->slot_bytes);
    try {
      // One event serves every round: a stream wait captures the record
      // that precedes it.
      cuda_check(Cuda::event_record(snapshot_written_, compute_), "cudaEventRecord (compute stream)");
      cuda_check(Cuda::stream_wait_event(staging_, snapshot_written_), "cudaStreamWaitEvent (staging stream)");
      if (j->bytes > 0) cuda_check(j->stage_in(j->send_slot->memory.get(), staging_), j->stage_in_call);
      cuda_check(Cuda::event_record(j->send_slot->copied, staging_), "cudaEventRecord (staging stream)");
    } catch (const error& e) {
      latch_locked(::dasgd::detail::error_record::of(e));
      j->send_slot->owned = j->recv_slot->owned = false;
      record_skipped(1);
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
      refuse_if_failed_locked();
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
            name_, " (rank ", rank_, " of ", size_, "): a ", what_name(j.what),
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
      DASGD_THROW(comm_error, name_, " (rank ", rank_, " of ", size_, "): ", what,
                  " failed: ", Cuda::error_name(e), " (", Cuda::error_string(e), ")");
  }

  void raise_if_failed_locked() const {
    if (failed_) failed_.raise();
  }

  /// A collective asked for after the latch is one this rank skips.
  void refuse_if_failed_locked() {
    if (!failed_) return;
    record_skipped(1);
    failed_.raise();
  }

  /// This rank gives up `n` collectives its peers may be waiting in; an MPI
  /// inner communicator passes that on to mpi_environment, which then ends
  /// the job with MPI_Abort instead of meeting them in MPI_Finalize.
  void record_skipped(std::size_t n) noexcept {
    if constexpr (requires { inner_.record_skipped_collectives(n); }) inner_.record_skipped_collectives(n);
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

  /// A free staging buffer of at least `bytes` (lock held). Allocation only
  /// happens the first rounds: slots are reused once their copies are done.
  staging_slot* acquire_locked(std::size_t bytes) {
    staging_slot* best = nullptr;
    for (auto& s : slots_) {
      if (s->owned || s->bytes < bytes) continue;
      if (Cuda::event_query(s->copied) != cudaSuccess) continue;  // a never-recorded event is complete
      if (best == nullptr || s->bytes < best->bytes) best = s.get();
    }
    if (best == nullptr) {
      auto s = std::make_unique<staging_slot>();
      s->bytes = bytes;
      cuda_check(Cuda::event_create(&s->copied, cudaEventDisableTiming), "cudaEventCreateWithFlags");
      const bool on_device = memory_ == staging_memory::device;
      const std::size_t size = std::max<std::size_t>(bytes, 1);
      void* p = nullptr;
      if (const cudaError_t e = on_device ? Cuda::malloc_device(&p, size) : Cuda::malloc_host(&p, size);
          e != cudaSuccess) {
        (void)Cuda::event_destroy(s->copied);
        cuda_check(e, on_device ? "cudaMalloc (staging buffer)" : "cudaMallocHost");
      }
      if (on_device)
        s->memory = std::shared_ptr<void>(p, [](void* q) { (void)Cuda::free_device(q); });
      else
        s->memory = std::shared_ptr<void>(p, [](void* q) { (void)Cuda::free_host(q); });
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
      // Destruction does not drop the collectives already posted: the peers
      // take part in them too, so they still run (bounded by the timeouts)
      // and only the copy back is left out. After a failure they cannot.
      if (failed_) {
        j->error = failed_;
        record_skipped(1);
        finish_locked(*j, job::status::failed);
        continue;
      }
      j->state = job::status::running;
      lk.unlock();
      ::dasgd::detail::error_record failure;
      bool latch = false;
      bool started = false;  // handed to the inner communicator
      try {
        if (j->what == job::kind::gather) {
          started = true;
          auto gathered = inner_.allgather(j->gather_value);
          lk.lock();
          j->gathered = std::move(gathered);
          finish_locked(*j, job::status::done);
          continue;
        }
        wait_for_copy(*j);
        const auto t0 = clock::now();
        started = true;
        typename job::inner_request r = j->start(inner_, j->send_slot->memory.get(), j->recv_slot->memory.get(), j->send_slot->memory);
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
        if (!j->in_place) j->send_slot->owned = false;  // an in-place slot is still to be read
        if (failed_ || stopping_) {
          // A wait() that timed out, or the owner going away: the device
          // buffer may be gone, so nothing is copied back.
          j->error = failed_ ? failed_
                             : ::dasgd::detail::error_record::of(comm_error(
                                   ::dasgd::detail::concat(name_, " (rank ", rank_,
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
      if (!started) record_skipped(1);
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
        DASGD_THROW(timeout_error, name_, " (rank ", rank_, " of ", size_,
                    "): the snapshot's copy to ",
                    memory_ == staging_memory::device ? "the device staging buffer" : "host memory",
                    " did not finish within ", options_.timeout.count(),
                    " ms (the compute stream is stalled or far behind)");
      // Not cut short by destruction: the peers wait for this collective.
      std::this_thread::sleep_for(options_.poll_interval);
    }
  }

  void queue_copy_back(job& j) {
    try {
      if (j.bytes > 0) cuda_check(j.stage_out(j.recv_slot->memory.get(), staging_), j.stage_out_call);
      cuda_check(Cuda::event_record(j.recv_slot->copied, staging_), "cudaEventRecord (staging stream)");
    } catch (...) {
      cuda_failure_ = true;
      throw;
    }
  }

  void finish_locked(job& j, typename job::status s) {
    j.state = s;
    j.stage_in = nullptr;  // drop what the closures captured
    j.start = nullptr;
    j.stage_out = nullptr;
    done_cv_.notify_all();
  }

  /// Stops the staging thread once it has run the collectives already
  /// posted (the peers take part in them; the timeouts bound each, and
  /// nothing is copied back) and frees the staging buffers once no copy can
  /// touch them any more. After a failure a stream may never drain: the
  /// buffers are then kept rather than freed under a copy.
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
      for (auto& s : slots_) (void)Cuda::event_destroy(s->copied);
      slots_.clear();  // frees each buffer once no direct collective holds it
    } else {
      keep_slots_forever(std::move(slots_));
    }
    (void)Cuda::event_destroy(snapshot_written_);
    (void)Cuda::stream_destroy(staging_);
  }

  Inner inner_;
  cudaStream_t compute_;
  cudaStream_t staging_ = nullptr;
  host_staged_options options_;
  staging_memory memory_;
  const char* name_;
  int rank_ = 0;
  int size_ = 1;
  int device_ = 0;

  std::mutex m_;
  std::condition_variable cv_;       // the staging thread: work or stop
  std::condition_variable done_cv_;  // waiters: a job finished
  std::deque<std::shared_ptr<job>> queue_;
  std::vector<std::unique_ptr<staging_slot>> slots_;
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

/// The host route: the snapshot is copied to pinned memory, `Inner` (a host
/// communicator) averages it into a second pinned buffer, and the result is
/// copied back.
template <class Inner, class Cuda>
struct host_route {
  using job = staged_job<Inner, Cuda>;

  template <class V>
  static std::shared_ptr<job> average(const V* send, V* recv, std::size_t n, const collective_signature& sig) {
    auto j = copies(job::kind::average, send, recv, n * sizeof(V));
    j->start = [n, sig](Inner& c, void* s, void* r, const std::shared_ptr<void>&) {
      return c.iallreduce_average(std::span<const V>(static_cast<const V*>(s), n), std::span<V>(static_cast<V*>(r), n),
                                  sig);
    };
    return j;
  }

  template <class V>
  static std::shared_ptr<job> broadcast(const V* send, V* recv, std::size_t n, int root,
                                        const collective_signature& sig) {
    auto j = copies(job::kind::broadcast, send, recv, n * sizeof(V));
    j->start = [n, root, sig](Inner& c, void* s, void* r, const std::shared_ptr<void>&) {
      return c.ibroadcast(std::span<const V>(static_cast<const V*>(s), n), std::span<V>(static_cast<V*>(r), n), root,
                          sig);
    };
    return j;
  }

 private:
  static std::shared_ptr<job> copies(typename job::kind what, const void* send, void* recv, std::size_t bytes) {
    auto j = std::make_shared<job>();
    j->what = what;
    j->bytes = j->slot_bytes = bytes;
    j->stage_in = [send, bytes](void* slot, cudaStream_t s) {
      return Cuda::memcpy_async(slot, send, bytes, cudaMemcpyDeviceToHost, s);
    };
    j->stage_in_call = "cudaMemcpyAsync (snapshot to pinned memory)";
    j->stage_out = [recv, bytes](const void* slot, cudaStream_t s) {
      return Cuda::memcpy_async(recv, slot, bytes, cudaMemcpyHostToDevice, s);
    };
    j->stage_out_call = "cudaMemcpyAsync (average to device memory)";
    return j;
  }
};

inline void check_staged_average(std::size_t send, std::size_t recv, int rank) {
  DASGD_REQUIRE(send == recv, size_mismatch_error, "iallreduce_average: send has ", send, " elements but recv has ",
                recv, " (rank ", rank, ")");
}

inline void check_staged_broadcast(std::size_t send, std::size_t recv, int root, int rank, int size) {
  DASGD_REQUIRE(send == recv, size_mismatch_error, "ibroadcast: send has ", send, " elements but recv has ", recv,
                " (rank ", rank, ")");
  DASGD_REQUIRE(root >= 0 && root < size, config_error, "ibroadcast: root ", root, " is outside [0, ", size,
                ") (rank ", rank, ")");
}

}  // namespace detail

/// Handle to one staged collective (models dasgd::request). Dropping it
/// while the collective is in flight is safe: the inner collective
/// completes (the other ranks take part in it) and `recv` is not written.
template <class Inner, class Cuda = detail::cuda_runtime>
class basic_host_staged_request {
 public:
  using engine_type = detail::staging_engine<Inner, Cuda>;
  /// Made by the staged communicators (this one, comm/cuda_mpi.hpp).
  basic_host_staged_request(std::shared_ptr<engine_type> e, std::shared_ptr<typename engine_type::job> j)
      : engine_(std::move(e)), job_(std::move(j)) {}

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

  int size() const { return engine().size(); }
  int rank() const { return engine().rank(); }
  cudaStream_t compute_stream() const { return engine().compute_stream(); }
  /// Throws the latched failure, if any.
  void check_health() { engine().check_health(); }

  template <storage_type T>
  request_type iallreduce_average(std::span<const T> send, std::span<T> recv, const collective_signature& sig = {}) {
    detail::check_staged_average(send.size(), recv.size(), rank());
    return post(route::template average<std::remove_cv_t<T>>(send.data(), recv.data(), send.size(), sig));
  }

  template <storage_type T>
  request_type ibroadcast(std::span<const T> send, std::span<T> recv, int root, const collective_signature& sig) {
    detail::check_staged_broadcast(send.size(), recv.size(), root, rank(), size());
    return post(route::template broadcast<std::remove_cv_t<T>>(send.data(), recv.data(), send.size(), root, sig));
  }

  std::vector<std::uint64_t> allgather(std::uint64_t value) { return engine().allgather(value); }

 private:
  using engine_type = detail::staging_engine<Inner, Cuda>;
  using route = detail::host_route<Inner, Cuda>;

  request_type post(std::shared_ptr<typename engine_type::job> j) {
    return request_type(engine_, engine().post(std::move(j)));
  }

  engine_type& engine() const {
    DASGD_REQUIRE(engine_ != nullptr, state_error, "this host-staged communicator was moved from");
    return *engine_;
  }

  std::shared_ptr<engine_type> engine_;
};

/// The host-staged communicator over the real CUDA runtime.
template <class Inner>
using host_staged_communicator = basic_host_staged_communicator<Inner, detail::cuda_runtime>;

}  // namespace dasgd::comm
