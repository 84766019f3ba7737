// The machinery behind mpi_communicator: a duplicated MPI communicator, the
// collectives in flight on it, and whatever drives their progress (a
// progress thread, or the caller's own test()/wait() calls).
//
// Every collective starts with a signature exchange: an 8-word
// MPI_Iallgather of (kind, then the signature record of core/collective.hpp:
// purpose, sequence, count, element type, root, proposal, status). Only
// after it has completed and every rank has seen the same table does an
// average (broadcast) start its data MPI_Iallreduce (MPI_Ibcast), so a
// purpose, sequence, size, type or kind mismatch between ranks fails the
// collective on every rank with a message naming both sides. The data
// collective is never issued with mismatched counts: OpenMPI 4.1 answers
// that with a silently wrong result on one rank and MPI_ERR_TRUNCATE, or a
// segfault in the shared-memory transport, on the others.
//
// A collective that a peer never joins times out (timeout_error). From then
// on the engine does not wait for it again: shutdown leaves it stranded
// (its memory is kept alive) and mpi_environment, seeing a stranded
// collective, ends the job with MPI_Abort instead of hanging in
// MPI_Finalize.
//
// Memory safety when a request is dropped early: MPI only ever touches
// memory the engine owns. An average copies `send` into a staging buffer,
// reduces that in place (MPI_SUM), and the scale pass writes
// recv = staging / size. A request destroyed while its collective is still
// in flight (after a timeout, or during unwinding) only stops that last
// write. The engine keeps the staging buffer until MPI is done with it.
// A direct collective (an in-place sum or broadcast on memory MPI must
// reach itself: device memory with a CUDA-aware MPI) skips the staging;
// its caller hands the engine shared ownership of that memory instead, held
// as long as MPI may write it.
//
// Ordering: ops are issued strictly in post order (op k+1's signature
// exchange is not issued before op k's data collective), so the sequence of
// MPI collectives is the same on every rank, whatever the timing.
#pragma once

#include "mpi_header.hpp"

#include <algorithm>
#include <array>
#include <atomic>
#include <chrono>
#include <climits>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <deque>
#include <exception>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <type_traits>
#include <utility>
#include <vector>

#include "../../core/collective.hpp"
#include "../../core/error.hpp"
#include "../../core/precision.hpp"
#include "mpi_error.hpp"

namespace dasgd::comm::detail {

/// One collective on an mpi_engine.
struct mpi_op {
  enum class kind : std::uint32_t { average = 1, gather = 2, broadcast = 3 };
  enum class phase {
    queued,       ///< posted; signature exchange not issued yet
    copying_in,   ///< the driver copies `send` into staging (reads user memory)
    checking,     ///< signature exchange in flight
    reducing,     ///< data MPI_Iallreduce in flight (staging memory only)
    scaling_out,  ///< the driver writes `recv` (writes user memory)
    done,
    failed,
  };

  kind what = kind::average;
  std::uint64_t seq = 0;

  // An average: recv = sum over ranks of send / size. A broadcast: recv =
  // the root's send.
  ::dasgd::collective_signature signature;
  int root = -1;
  const void* send = nullptr;
  void* recv = nullptr;
  std::size_t count = 0;
  std::size_t element_bytes = 0;
  MPI_Datatype type = MPI_DATATYPE_NULL;
  MPI_Op reduce = MPI_SUM;  ///< a user-defined sum for 16-bit types (mpi_sum_in_fp32)
  std::uint32_t type_id = 0;
  const char* type_name = "";
  void (*scale_out)(const void* staging, void* recv, std::size_t count, int size) = nullptr;
  std::unique_ptr<std::byte[]> staging;
  std::size_t staging_bytes = 0;
  /// Direct: MPI works in place on `recv` (no staging, no copy in, no scale
  /// pass); `keep_alive` owns that memory while MPI may touch it.
  bool direct = false;
  std::shared_ptr<void> keep_alive;

  // A gather: every rank's `value`, in rank order.
  std::uint64_t value = 0;
  std::vector<std::uint64_t> gathered;

  // What the ranks' signatures combine to (set once the check passed).
  ::dasgd::collective_agreement agreement;

  // MPI state: touched only by whoever drives progress.
  static constexpr std::size_t signature_words = 1 + ::dasgd::detail::signature_record::words;
  std::array<std::uint64_t, signature_words> signature_out{};
  std::vector<std::uint64_t> signatures;  // signature_words per rank
  MPI_Request check = MPI_REQUEST_NULL;
  std::vector<MPI_Request> data;

  // Guarded by the engine's mutex.
  phase state = phase::queued;
  bool copied_in = false;
  bool abandoned = false;  ///< its request is gone: do not write `recv`
  std::exception_ptr error;
  std::chrono::steady_clock::time_point posted_at{};

  bool finished() const { return state == phase::done || state == phase::failed; }
  bool mpi_idle() const {
    return check == MPI_REQUEST_NULL &&
           std::all_of(data.begin(), data.end(), [](MPI_Request r) { return r == MPI_REQUEST_NULL; });
  }
};

/// recv[i] = staging[i] / size, in the element type.
template <class T>
void mpi_scale_out(const void* staging, void* recv, std::size_t count, int size) {
  using C = std::conditional_t<std::is_same_v<T, double>, double, float>;
  const C inv = C(1) / static_cast<C>(size);
  const T* in = static_cast<const T*>(staging);
  T* out = static_cast<T*>(recv);
  for (std::size_t i = 0; i < count; ++i) out[i] = to_storage<T>(to_compute<C>(in[i]) * inv);
}

/// MPI_User_function adding 16-bit values (__half, __nv_bfloat16 carried as
/// MPI_UINT16_T) in fp32, rounding each partial sum once.
template <class T>
void mpi_sum_in_fp32(void* in, void* inout, int* len, MPI_Datatype*) {
  const T* a = static_cast<const T*>(in);
  T* b = static_cast<T*>(inout);
  for (int i = 0; i < *len; ++i) b[i] = to_storage<T>(to_compute<float>(a[i]) + to_compute<float>(b[i]));
}

/// The user-defined sums of one process, created once (MPI_Op_create needs
/// MPI initialized) and left to MPI_Finalize.
template <class T>
MPI_Op mpi_fp32_sum_op() {
  static MPI_Op op = [] {
    MPI_Op o = MPI_OP_NULL;
    mpi_check(MPI_Op_create(&mpi_sum_in_fp32<T>, 1, &o), "MPI_Op_create", __FILE__, __LINE__);
    return o;
  }();
  return op;
}

inline std::string describe(const mpi_op& op) {
  if (op.what == mpi_op::kind::gather) return ::dasgd::detail::concat("MPI allgather #", op.seq);
  return ::dasgd::detail::concat(
      op.what == mpi_op::kind::broadcast ? "MPI broadcast #" : "MPI average #", op.seq, " of ",
      op.count, " ", op.type_name, " elements (", ::dasgd::to_string(op.signature.purpose), " #",
      op.signature.sequence, ")");
}

inline const char* kind_name(std::uint64_t k) {
  switch (static_cast<mpi_op::kind>(k)) {
    case mpi_op::kind::average: return "an average";
    case mpi_op::kind::gather: return "an allgather";
    case mpi_op::kind::broadcast: return "a broadcast";
  }
  return "an unknown collective";
}

/// Ops that may still be in MPI's hands when their engine goes away (a
/// peer never joined): kept alive for the rest of the process, so MPI
/// never writes into freed memory.
inline void keep_forever(std::vector<std::shared_ptr<mpi_op>> ops) {
  static std::mutex m;
  static auto* graveyard = new std::vector<std::shared_ptr<mpi_op>>();  // intentionally leaked
  std::lock_guard lk(m);
  for (auto& op : ops) graveyard->push_back(std::move(op));
}

class mpi_engine;

/// Live engines, so that mpi_environment can shut them down (stop their
/// threads, free their communicators) before it finalizes MPI.
class mpi_registry {
 public:
  static mpi_registry& instance() {
    static auto* r = new mpi_registry();  // leaked: usable during static destruction
    return *r;
  }
  void add(mpi_engine* e) {
    std::lock_guard lk(m_);
    engines_.push_back(e);
  }
  void remove(mpi_engine* e) {
    std::lock_guard lk(m_);
    engines_.erase(std::remove(engines_.begin(), engines_.end(), e), engines_.end());
  }
  inline void shutdown_all() noexcept;

  /// Collectives left in MPI's hands by a shut-down engine (a peer never
  /// joined them). MPI_Finalize would wait for them forever.
  std::size_t stranded() const noexcept { return stranded_.load(); }
  void add_stranded(std::size_t n) noexcept { stranded_ += n; }

  /// Collectives this rank owed its peers and never started: a failure
  /// made a communicator layered on MPI give them up (the staging of
  /// comm/host_staged.hpp, latched by a stalled stream, records them). The
  /// peers may be inside them, so this rank must not go on to MPI_Finalize
  /// either.
  std::size_t skipped() const noexcept { return skipped_.load(); }
  void add_skipped(std::size_t n) noexcept { skipped_ += n; }

 private:
  std::mutex m_;
  std::vector<mpi_engine*> engines_;
  std::atomic<std::size_t> stranded_{0};
  std::atomic<std::size_t> skipped_{0};
};

class mpi_engine {
 public:
  /// Longest pause between two MPI_Test calls of the progress thread while
  /// a collective is in flight; it starts at min_poll_pause and doubles.
  static constexpr std::chrono::microseconds min_poll_pause{10};
  static constexpr std::chrono::microseconds max_poll_pause{200};
  /// Largest count handed to one MPI call (MPI counts are int).
  static constexpr std::size_t max_chunk = std::size_t(1) << 30;

  mpi_engine(MPI_Comm base, bool progress_thread, std::chrono::milliseconds timeout)
      : use_thread_(progress_thread), timeout_(timeout) {
    DASGD_REQUIRE(timeout.count() > 0, config_error, "MPI communicator timeout must be positive, got ",
                  timeout.count(), " ms");
    DASGD_REQUIRE(mpi_is_initialized(), config_error,
                  "MPI is not initialized: create a dasgd::comm::mpi_environment (or call "
                  "MPI_Init_thread) before the MPI communicator");
    DASGD_REQUIRE(!mpi_is_finalized(), config_error,
                  "MPI is already finalized: the MPI communicator cannot be created");
    if (use_thread_) {
      int level = MPI_THREAD_SINGLE;
      DASGD_MPI_CHECK(MPI_Query_thread, &level);
      DASGD_REQUIRE(level == MPI_THREAD_MULTIPLE, config_error,
                    "mpi_progress::thread needs MPI_THREAD_MULTIPLE, but MPI provides ",
                    mpi_thread_level_name(level),
                    "; initialize MPI with MPI_Init_thread(..., MPI_THREAD_MULTIPLE, ...) (as "
                    "mpi_environment does) or choose mpi_progress::test");
    }
    DASGD_REQUIRE(base != MPI_COMM_NULL, config_error, "the base communicator is MPI_COMM_NULL");
    DASGD_MPI_CHECK(MPI_Comm_dup, base, &comm_);
    try {
      DASGD_MPI_CHECK(MPI_Comm_set_errhandler, comm_, MPI_ERRORS_RETURN);
      DASGD_MPI_CHECK(MPI_Comm_size, comm_, &size_);
      DASGD_MPI_CHECK(MPI_Comm_rank, comm_, &rank_);
    } catch (...) {
      MPI_Comm_free(&comm_);
      throw;
    }
    mpi_registry::instance().add(this);
    if (use_thread_) thread_ = std::thread([this] { progress_loop(); });
  }

  ~mpi_engine() {
    mpi_registry::instance().remove(this);
    shutdown();
  }

  mpi_engine(const mpi_engine&) = delete;
  mpi_engine& operator=(const mpi_engine&) = delete;

  int size() const noexcept { return size_; }
  int rank() const noexcept { return rank_; }
  MPI_Comm handle() const noexcept { return comm_; }
  bool uses_progress_thread() const noexcept { return use_thread_; }
  std::chrono::milliseconds timeout() const noexcept { return timeout_; }
  /// Collectives posted and not finished (including dropped requests').
  std::size_t in_flight() {
    std::lock_guard lk(m_);
    return in_flight_;
  }

  /// Queues `op` (issued in post order) and returns it.
  std::shared_ptr<mpi_op> post(std::shared_ptr<mpi_op> op) {
    {
      std::lock_guard lk(m_);
      DASGD_REQUIRE(!shut_down_, comm_error, "the MPI communicator was shut down (",
                    shutdown_reason_, "); no collective can be started on it");
      if (!poison_.empty()) {
        mpi_registry::instance().add_skipped(1);  // its peers may post it and wait in it
        throw comm_error(::dasgd::detail::concat("the MPI communicator is unusable after an earlier MPI failure: ",
                                                 poison_),
                         __FILE__, __LINE__);
      }
      op->seq = next_seq_++;
      op->posted_at = std::chrono::steady_clock::now();
      if (op->direct) op->copied_in = true;  // nothing to stage: MPI reads `recv` itself
      else if (op->what != mpi_op::kind::gather) take_staging(*op);
      ++in_flight_;
      if (use_thread_) {
        queue_.push_back(op);
        work_cv_.notify_one();
        return op;
      }
      pipeline_.push_back(op);
    }
    advance_pipeline();  // test mode: the caller drives progress
    return op;
  }

  /// Test mode: one pass of the caller-driven progress; thread mode: false.
  bool progress() { return use_thread_ ? false : advance_pipeline(); }

  /// True once `op` is complete; rethrows its failure.
  bool test(mpi_op& op) {
    if (!use_thread_) advance_pipeline();
    std::lock_guard lk(m_);
    return finished_or_throw(op);
  }

  /// Blocks until `op` is complete, at most the timeout.
  void wait(mpi_op& op) {
    const auto start = std::chrono::steady_clock::now();
    const auto deadline = start + timeout_;
    bool complete = false;
    if (use_thread_) {
      std::unique_lock lk(m_);
      complete = done_cv_.wait_until(lk, deadline, [&] { return op.finished(); });
    } else {
      for (;;) {
        advance_pipeline();
        {
          std::lock_guard lk(m_);
          if (op.finished()) {
            complete = true;
            break;
          }
        }
        if (std::chrono::steady_clock::now() >= deadline) break;
        std::this_thread::yield();
      }
    }
    std::lock_guard lk(m_);
    if (complete || op.finished()) {
      finished_or_throw(op);
      return;
    }
    timed_out_ = true;  // shutdown must not wait a second timeout for it
    throw timeout_error(timeout_message(op, start), __FILE__, __LINE__);
  }

  /// The request for `op` is going away: from now on nothing may touch its
  /// user buffers. Its collective still runs (other ranks take part in it).
  void abandon(mpi_op& op) noexcept {
    std::unique_lock lk(m_);
    if (op.finished()) return;
    // The driver reads `send` / writes `recv` outside the lock only in these
    // two phases; both last one memcpy-like pass.
    done_cv_.wait(lk, [&] {
      return op.state != mpi_op::phase::copying_in && op.state != mpi_op::phase::scaling_out;
    });
    if (op.state == mpi_op::phase::queued && op.what != mpi_op::kind::gather && !op.copied_in) {
      copy_in(op);  // the driver has not reached it yet; it skips the copy later
      op.copied_in = true;
    }
    op.abandoned = true;
  }

  /// Waits (at most the timeout) for the collectives in flight, stops the
  /// progress thread and frees the communicator. Idempotent.
  void shutdown(const char* reason = "the communicator was destroyed") noexcept {
    std::lock_guard once(shutdown_m_);
    bool timed_out = false;
    {
      std::lock_guard lk(m_);
      if (shut_down_) return;
      timed_out = timed_out_;
    }
    // After a timeout the collectives in flight wait for a peer that is gone
    // or stalled: waiting a second timeout would only delay the error.
    const auto deadline = std::chrono::steady_clock::now() +
                          (timed_out ? std::chrono::milliseconds(0) : timeout_);
    if (use_thread_) {
      std::unique_lock lk(m_);
      done_cv_.wait_until(lk, deadline, [&] { return in_flight_ == 0; });
      stop_ = true;
      work_cv_.notify_all();
    } else {
      for (;;) {
        try {
          advance_pipeline();
        } catch (...) {
          break;  // what is still in flight is stranded below
        }
        {
          std::lock_guard lk(m_);
          if (in_flight_ == 0 || std::chrono::steady_clock::now() >= deadline) break;
        }
        std::this_thread::yield();
      }
    }
    if (thread_.joinable()) thread_.join();

    std::vector<std::shared_ptr<mpi_op>> stranded;
    {
      std::lock_guard lk(m_);
      shut_down_ = true;
      shutdown_reason_ = reason;
      for (auto* list : {&queue_, &pipeline_}) {
        for (auto& op : *list) {
          if (!op->finished())
            fail(*op, std::make_exception_ptr(comm_error(
                          ::dasgd::detail::concat(describe(*op), " was still in flight when ", reason),
                          __FILE__, __LINE__)));
          if (!op->mpi_idle()) stranded.push_back(op);
        }
        list->clear();
      }
      pool_.clear();
    }
    const bool finalized = mpi_is_finalized();
    if (stranded.empty()) {
      if (!finalized) MPI_Comm_free(&comm_);
    } else {
      // MPI may still write into these ops' staging buffers; the
      // communicator they run on cannot be freed either.
      std::fprintf(stderr,
                   "dasgd: MPI communicator (rank %d of %d) shut down with %zu collective(s) "
                   "still in flight after %lld ms; their buffers and the communicator are kept "
                   "alive (leaked) so that MPI never writes into freed memory\n",
                   rank_, size_, stranded.size(), static_cast<long long>(timeout_.count()));
      mpi_registry::instance().add_stranded(stranded.size());
      keep_forever(std::move(stranded));
    }
  }

  /// True once a wait() on this engine has timed out.
  bool timed_out() {
    std::lock_guard lk(m_);
    return timed_out_;
  }

 private:
  bool finished_or_throw(const mpi_op& op) const {
    if (op.state == mpi_op::phase::failed) std::rethrow_exception(op.error);
    return op.state == mpi_op::phase::done;
  }

  std::string timeout_message(const mpi_op& op, std::chrono::steady_clock::time_point start) const {
    using ms = std::chrono::milliseconds;
    const auto now = std::chrono::steady_clock::now();
    const char* where = op.state == mpi_op::phase::reducing
                            ? "its data transfer is still running"
                            : "not every rank has joined it yet (the size check has not completed)";
    return ::dasgd::detail::concat(
        describe(op), " on rank ", rank_, " of ", size_, " did not complete within the timeout of ",
        timeout_.count(), " ms (this wait: ", std::chrono::duration_cast<ms>(now - start).count(),
        " ms, since the collective started: ",
        std::chrono::duration_cast<ms>(now - op.posted_at).count(), " ms); ", where,
        ". A peer rank may have died, stalled or skipped this collective. The operation stays in "
        "flight and wait() may be called again, but MPI state may be unusable after a timeout");
  }

  // --- staging buffers (called with m_ held) ---------------------------------
  void take_staging(mpi_op& op) {
    const std::size_t bytes = op.count * op.element_bytes;
    auto it = std::find_if(pool_.begin(), pool_.end(),
                           [&](const auto& b) { return b.second >= bytes; });
    if (it != pool_.end()) {
      op.staging = std::move(it->first);
      op.staging_bytes = it->second;
      pool_.erase(it);
    } else {
      op.staging.reset(new std::byte[std::max<std::size_t>(bytes, 1)]);
      op.staging_bytes = bytes;
    }
  }

  void recycle_staging(mpi_op& op) {
    if (!op.staging || !op.mpi_idle()) return;
    pool_.emplace_back(std::move(op.staging), op.staging_bytes);
    // Keep the two largest: one average in flight plus one being posted.
    std::sort(pool_.begin(), pool_.end(), [](const auto& a, const auto& b) { return a.second > b.second; });
    if (pool_.size() > 2) pool_.resize(2);
  }

  static void copy_in(mpi_op& op) {
    if (op.count != 0) std::memcpy(op.staging.get(), op.send, op.count * op.element_bytes);
  }

  // --- state changes (called with m_ held) --------------------------------
  void fail(mpi_op& op, std::exception_ptr e) {
    if (op.finished()) return;
    op.error = std::move(e);
    op.state = mpi_op::phase::failed;
    --in_flight_;
    done_cv_.notify_all();
  }

  void complete(mpi_op& op) {
    op.state = mpi_op::phase::done;
    --in_flight_;
    done_cv_.notify_all();
  }

  void set_phase(mpi_op& op, mpi_op::phase p) {
    op.state = p;
    done_cv_.notify_all();
  }

  /// Fails every pending op with `e` and refuses new ones (m_ held).
  void fail_everything(std::exception_ptr e) {
    std::string what = "unknown exception";
    try {
      std::rethrow_exception(e);
    } catch (const std::exception& x) {
      what = x.what();
    } catch (...) {
    }
    if (poison_.empty()) poison_ = "the MPI progress thread failed: " + what;
    std::size_t given_up = 0;
    for (auto* list : {&queue_, &pipeline_})
      for (auto& op : *list) {
        if (!op->finished() && op->mpi_idle()) ++given_up;  // the others are stranded at shutdown
        fail(*op, e);
      }
    if (given_up != 0) mpi_registry::instance().add_skipped(given_up);
  }

  /// An MPI call failed on `op`. Nothing is started on MPI after that: the
  /// collectives queued behind it fail unstarted, and every collective this
  /// rank gives up without an MPI request of its own is reported to the
  /// registry (its peers may be waiting in it, so mpi_environment aborts
  /// instead of finalizing). One still holding a request is stranded at
  /// shutdown instead.
  void fail_mpi(mpi_op& op, int code, const char* call) {
    auto e = mpi_failure(code, call, __FILE__, __LINE__);
    if (poison_.empty()) poison_ = ::dasgd::detail::concat(describe(op), ": ", e.what());
    if (!op.finished() && op.mpi_idle()) mpi_registry::instance().add_skipped(1);
    fail(op, std::make_exception_ptr(e));
    for (auto* list : {&queue_, &pipeline_})
      for (auto& other : *list)
        if (other->state == mpi_op::phase::queued) give_up_unstarted(*other);
  }

  /// Fails `op`, which never reached MPI, after the poisoning failure, and
  /// reports it to the registry as a collective this rank gave up.
  void give_up_unstarted(mpi_op& op) {
    fail(op, std::make_exception_ptr(comm_error(
                 ::dasgd::detail::concat(describe(op), " on rank ", rank_,
                                         " was not started: an earlier MPI call on this communicator failed (",
                                         poison_, ")"),
                 __FILE__, __LINE__)));
    mpi_registry::instance().add_skipped(1);
  }

  // --- progress (only the driving thread runs these) ------------------------
  /// One pass over the collectives in flight, in post order. Returns true
  /// when one of them changed phase.
  bool advance_pipeline() {
    bool changed = false;
    bool may_issue = true;  // false once an earlier op has not issued its data collective
    for (auto& op : pipeline_) {
      mpi_op::phase p = phase_of(*op);
      if (p == mpi_op::phase::queued) {
        if (!may_issue) break;
        start(*op);
        changed = true;
        p = phase_of(*op);
      }
      if (p == mpi_op::phase::checking) {
        changed |= test_check(*op);
        p = phase_of(*op);
      }
      if (p == mpi_op::phase::queued || p == mpi_op::phase::checking) may_issue = false;
      if (p == mpi_op::phase::reducing) changed |= test_data(*op);
    }
    std::lock_guard lk(m_);
    for (auto it = pipeline_.begin(); it != pipeline_.end();) {
      if ((*it)->finished() && (*it)->mpi_idle()) {
        recycle_staging(**it);
        it = pipeline_.erase(it);
      } else {
        ++it;
      }
    }
    return changed;
  }

  mpi_op::phase phase_of(const mpi_op& op) {
    std::lock_guard lk(m_);
    return op.state;
  }

  /// Issues the signature exchange and stages the send buffer.
  void start(mpi_op& op) {
    const bool data = op.what != mpi_op::kind::gather;
    op.signature_out.fill(0);
    op.signature_out[0] = static_cast<std::uint64_t>(op.what);
    if (data)
      ::dasgd::detail::signature_record::of(op.signature, op.count, op.type_id, op.root)
          .pack(op.signature_out.data() + 1);
    else
      op.signature_out[1] = op.value;
    op.signatures.assign(mpi_op::signature_words * static_cast<std::size_t>(size_), 0);
    // A broadcast reads `send` only on its root.
    const bool reads_send = op.what == mpi_op::kind::average ||
                            (op.what == mpi_op::kind::broadcast && op.root == rank_);
    bool copy = false;
    {
      std::lock_guard lk(m_);
      copy = reads_send && !op.copied_in;
      set_phase(op, copy ? mpi_op::phase::copying_in : mpi_op::phase::checking);
    }
    const int rc = MPI_Iallgather(op.signature_out.data(), static_cast<int>(mpi_op::signature_words),
                                  MPI_UINT64_T, op.signatures.data(),
                                  static_cast<int>(mpi_op::signature_words), MPI_UINT64_T, comm_,
                                  &op.check);
    if (copy) copy_in(op);  // overlaps the signature exchange
    std::lock_guard lk(m_);
    op.copied_in = op.copied_in || copy;
    if (rc != MPI_SUCCESS) {
      op.check = MPI_REQUEST_NULL;
      fail_mpi(op, rc, "MPI_Iallgather (signature check)");
      return;
    }
    set_phase(op, mpi_op::phase::checking);
  }

  /// Tests the signature exchange; once complete, validates it and starts
  /// the data collective. Every rank sees the same table, so every rank
  /// takes the same branch and the collective sequence stays aligned.
  bool test_check(mpi_op& op) {
    int flag = 0;
    const int rc = MPI_Test(&op.check, &flag, MPI_STATUS_IGNORE);
    if (rc != MPI_SUCCESS) {
      op.check = MPI_REQUEST_NULL;
      std::lock_guard lk(m_);
      fail_mpi(op, rc, "MPI_Test (size check)");
      return true;
    }
    if (!flag) return false;

    {
      std::lock_guard lk(m_);
      if (!poison_.empty()) {  // an earlier collective failed: start nothing new on MPI
        give_up_unstarted(op);
        return true;
      }
    }
    if (auto e = signature_mismatch(op)) {
      std::lock_guard lk(m_);
      fail(op, e);
      return true;
    }
    const auto word = [&](std::size_t r, std::size_t i) {
      return op.signatures[mpi_op::signature_words * r + i];
    };
    if (op.what == mpi_op::kind::gather) {
      op.gathered.resize(static_cast<std::size_t>(size_));
      for (std::size_t r = 0; r < op.gathered.size(); ++r) op.gathered[r] = word(r, 1);
      std::lock_guard lk(m_);
      complete(op);
      return true;
    }
    for (std::size_t first = 0; first < op.count; first += max_chunk) {
      const int n = static_cast<int>(std::min(max_chunk, op.count - first));
      MPI_Request req = MPI_REQUEST_NULL;
      std::byte* base = op.direct ? static_cast<std::byte*>(op.recv) : op.staging.get();
      std::byte* chunk = base + first * op.element_bytes;
      const int rc2 = op.what == mpi_op::kind::average
                          ? MPI_Iallreduce(MPI_IN_PLACE, chunk, n, op.type, op.reduce, comm_, &req)
                          : MPI_Ibcast(chunk, n, op.type, op.root, comm_, &req);
      if (rc2 != MPI_SUCCESS) {
        std::lock_guard lk(m_);
        fail_mpi(op, rc2, op.what == mpi_op::kind::average ? "MPI_Iallreduce" : "MPI_Ibcast");
        return true;
      }
      op.data.push_back(req);
    }
    std::lock_guard lk(m_);
    set_phase(op, mpi_op::phase::reducing);
    return true;
  }

  /// The error every rank raises when the signatures differ (all ranks see
  /// the same table), or nullptr. Also records the agreement.
  std::exception_ptr signature_mismatch(mpi_op& op) const {
    const auto me = static_cast<std::size_t>(rank_);
    const auto word = [&](std::size_t r, std::size_t i) {
      return op.signatures[mpi_op::signature_words * r + i];
    };
    for (std::size_t r = 0; r < static_cast<std::size_t>(size_); ++r) {
      if (word(r, 0) != word(me, 0)) {
        return std::make_exception_ptr(comm_error(
            ::dasgd::detail::concat("MPI collective #", op.seq, ": rank ", me, " issued ",
                                    kind_name(word(me, 0)), " but rank ", r, " issued ",
                                    kind_name(word(r, 0)),
                                    "; collectives must be issued in the same order on every rank"),
            __FILE__, __LINE__));
      }
    }
    if (op.what == mpi_op::kind::gather) return nullptr;
    std::vector< ::dasgd::detail::signature_record> records;
    records.reserve(static_cast<std::size_t>(size_));
    for (std::size_t r = 0; r < static_cast<std::size_t>(size_); ++r)
      records.push_back(::dasgd::detail::signature_record::unpack(
          op.signatures.data() + mpi_op::signature_words * r + 1));
    const char* where = op.what == mpi_op::kind::average ? "MPI average" : "MPI broadcast";
    if (auto e = ::dasgd::detail::check_signatures(records, rank_, where)) return e;
    op.agreement = ::dasgd::detail::combine(records);
    return nullptr;
  }

  /// Tests the data collective; once complete, writes recv = sum / size.
  bool test_data(mpi_op& op) {
    for (auto& req : op.data) {
      if (req == MPI_REQUEST_NULL) continue;
      int flag = 0;
      const int rc = MPI_Test(&req, &flag, MPI_STATUS_IGNORE);
      if (rc != MPI_SUCCESS) {
        req = MPI_REQUEST_NULL;
        std::lock_guard lk(m_);
        fail_mpi(op, rc, "MPI_Test (average)");
        return true;
      }
      if (!flag) return false;
    }
    bool write = false;
    {
      std::lock_guard lk(m_);
      write = !op.abandoned && !op.direct;  // a direct result is already in place
      if (write) set_phase(op, mpi_op::phase::scaling_out);
    }
    if (write) {
      if (op.what == mpi_op::kind::average)
        op.scale_out(op.staging.get(), op.recv, op.count, size_);
      else if (op.count != 0)
        std::memcpy(op.recv, op.staging.get(), op.count * op.element_bytes);
    }
    std::lock_guard lk(m_);
    complete(op);
    return true;
  }

  void progress_loop() {
    auto pause = min_poll_pause;
    std::unique_lock lk(m_);
    for (;;) {
      // Asleep while idle: no polling without a collective in flight.
      work_cv_.wait(lk, [&] { return stop_ || !queue_.empty() || !pipeline_.empty(); });
      if (stop_) return;
      while (!queue_.empty()) {
        pipeline_.push_back(std::move(queue_.front()));
        queue_.pop_front();
      }
      lk.unlock();
      bool changed = true;
      try {
        changed = advance_pipeline();
      } catch (...) {  // e.g. bad_alloc: fail what is pending rather than terminate
        lk.lock();
        fail_everything(std::current_exception());
        continue;
      }
      lk.lock();
      if (changed || pipeline_.empty()) {
        pause = min_poll_pause;
      } else if (queue_.empty()) {
        work_cv_.wait_for(lk, pause, [&] { return stop_ || !queue_.empty(); });
        pause = std::min(pause * 2, max_poll_pause);
      }
    }
  }

  const bool use_thread_;
  const std::chrono::milliseconds timeout_;
  MPI_Comm comm_ = MPI_COMM_NULL;
  int size_ = 0;
  int rank_ = 0;

  std::mutex m_;
  std::condition_variable work_cv_;  // progress thread: new work or stop
  std::condition_variable done_cv_;  // waiters: an op changed phase
  std::deque<std::shared_ptr<mpi_op>> queue_;     // posted, not yet seen by the progress thread
  std::deque<std::shared_ptr<mpi_op>> pipeline_;  // in post order; only the driver touches it
  std::vector<std::pair<std::unique_ptr<std::byte[]>, std::size_t>> pool_;
  std::uint64_t next_seq_ = 0;
  std::size_t in_flight_ = 0;
  bool timed_out_ = false;
  std::string poison_;
  bool stop_ = false;
  bool shut_down_ = false;
  std::string shutdown_reason_;
  std::mutex shutdown_m_;
  std::thread thread_;
};

inline void mpi_registry::shutdown_all() noexcept {
  std::lock_guard lk(m_);
  for (auto* e : engines_) e->shutdown("MPI was finalized");
  engines_.clear();
}

}  // namespace dasgd::comm::detail
