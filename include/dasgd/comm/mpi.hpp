// MPI communicator: ranks are processes started by mpiexec (link dasgd::mpi).
//
//   int main(int argc, char** argv) {
//     dasgd::comm::mpi_environment env(argc, argv);   // MPI_THREAD_MULTIPLE
//     dasgd::comm::mpi_communicator comm;             // dup of MPI_COMM_WORLD
//     dasgd::delayed_averager trainer(params, std::move(comm), ...);
//   }
//
// The average is an MPI_Iallreduce (MPI_SUM, then a scale by 1/size) on a
// communicator of its own (MPI_Comm_dup, MPI_ERRORS_RETURN), preceded by a
// small signature exchange that turns a size, type or order mismatch
// between ranks into size_mismatch_error / comm_error on every rank (see
// detail/mpi_engine.hpp). Every MPI failure becomes a comm_error carrying
// MPI_Error_string; a wait longer than mpi_options::timeout becomes a
// timeout_error. 16-bit storage (__half, __nv_bfloat16) travels as 16-bit
// words reduced by a user-defined operation that adds in fp32.
//
// Progress. OpenMPI's TCP transport moves large messages only while some
// thread is inside MPI, so a collective left alone while the worker
// computes barely advances:
//  - mpi_progress::thread (default): a progress thread per communicator
//    stages the send buffer, drives the collective with MPI_Test (short
//    growing pauses while one is in flight, asleep on a condition variable
//    otherwise) and writes the scaled result, all off the caller's critical
//    path. Needs MPI_THREAD_MULTIPLE.
//  - mpi_progress::test: nothing runs in the background. The copy-in runs
//    in iallreduce_average(), and progress and the scale pass happen inside
//    test() and wait(). delayed_averager calls test() once per step.
// docs/mpi.md has the measurement behind the default: on an emulated 1 Gbit/s
// link the progress thread hid far more of the allreduce.
//
// Threads: use one communicator (and its requests) from one thread at a time.
// Do not issue your own collectives on native_handle() while dasgd's are in
// flight.
#pragma once

#include "detail/mpi_header.hpp"

#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <optional>
#include <span>
#include <thread>
#include <type_traits>
#include <utility>
#include <vector>

#include "../core/communicator.hpp"
#include "../core/error.hpp"
#include "../core/precision.hpp"
#include "../core/tensor.hpp"
#include "detail/mpi_engine.hpp"
#include "detail/mpi_error.hpp"

namespace dasgd::comm {

/// Who drives MPI progress while an average is in flight.
enum class mpi_progress {
  thread,  ///< a progress thread per communicator (needs MPI_THREAD_MULTIPLE)
  test,    ///< the caller, inside test() and wait()
};

struct mpi_options {
  mpi_progress progress = mpi_progress::thread;
  /// Longest a wait() or allgather() blocks before timeout_error; also how
  /// long destruction waits for collectives still in flight.
  std::chrono::milliseconds timeout{std::chrono::seconds(120)};
  /// Collectives may carry a nonzero scope, compared across ranks like the
  /// rest of the signature. comm/hierarchical_mpi.hpp sets it on the group
  /// communicators it builds; a communicator used alone keeps it false and
  /// rejects scopes it cannot honour.
  bool scoped = false;
};

/// RAII MPI_Init_thread(MPI_THREAD_MULTIPLE) / MPI_Finalize. Does nothing
/// if MPI was already initialized by the caller. MPI_COMM_WORLD keeps the
/// error handler the user chose (dasgd sets MPI_ERRORS_RETURN only on its
/// own duplicated communicators).
///
/// Before finalizing it shuts down communicators that are still alive
/// (waiting, at most their timeout, for their collectives; not at all after
/// one of them timed out). If a collective is then still in MPI's hands (a
/// peer stalled or died and never joined it), MPI_Finalize would wait for
/// it forever: the destructor prints why and calls MPI_Abort instead, which
/// ends every process of the job. So it does when this rank gave up
/// collectives after a failure without starting them (a staging engine
/// whose stream stalled): its peers may be stranded in those. It first
/// waits `abort_grace` (default 1 s): MPI_Abort kills every rank at once,
/// and the peers whose own timeouts fire a moment later would otherwise die
/// before they report their error. Code that finalizes MPI itself can ask
/// stranded_collectives() and skipped_collectives() first and abort the
/// same way.
class mpi_environment {
 public:
  explicit mpi_environment(int& argc, char**& argv,
                           std::chrono::milliseconds abort_grace = std::chrono::seconds(1))
      : abort_grace_(abort_grace) {
    DASGD_REQUIRE(abort_grace.count() >= 0, config_error, "mpi_environment: abort_grace must be >= 0, got ",
                  abort_grace.count(), " ms");
    DASGD_REQUIRE(!detail::mpi_is_finalized(), config_error,
                  "MPI was already finalized; it cannot be initialized again");
    if (detail::mpi_is_initialized()) {
      DASGD_MPI_CHECK(MPI_Query_thread, &level_);
      return;
    }
    DASGD_MPI_CHECK(MPI_Init_thread, &argc, &argv, MPI_THREAD_MULTIPLE, &level_);
    owns_ = true;
  }

  ~mpi_environment() {
    if (!owns_) return;
    auto& registry = detail::mpi_registry::instance();
    registry.shutdown_all();
    if (detail::mpi_is_finalized()) return;
    const std::size_t stranded = registry.stranded();
    const std::size_t skipped = registry.skipped();
    if (stranded != 0 || skipped != 0) {
      int rank = -1;
      MPI_Comm_rank(MPI_COMM_WORLD, &rank);
      std::fprintf(stderr, "dasgd: rank %d: %s%zu collective(s) %s, so the job is aborted "
                   "(MPI_Abort, exit code %d, in %lld ms)\n",
                   rank, stranded != 0 ? "" : "gave up ", stranded != 0 ? stranded : skipped,
                   stranded != 0 ? "never completed (a peer stalled or died); MPI_Finalize would "
                                   "wait for them forever"
                                 : "after a failure (its peers may be waiting in them); "
                                   "MPI_Finalize would meet them there",
                   stranded_exit_code, static_cast<long long>(abort_grace_.count()));
      std::fflush(stderr);
      std::this_thread::sleep_for(abort_grace_);  // the other ranks' own errors first
      MPI_Abort(MPI_COMM_WORLD, stranded_exit_code);
    }
    MPI_Finalize();
  }

  /// Exit code of the MPI_Abort that ends a job with stranded collectives.
  static constexpr int stranded_exit_code = 75;

  /// Collectives that a shut-down communicator left in MPI's hands.
  static std::size_t stranded_collectives() noexcept {
    return detail::mpi_registry::instance().stranded();
  }

  /// Collectives this rank gave up after a failure without starting them
  /// (mpi_communicator::record_skipped_collectives); its peers may be in
  /// them, so the destructor aborts the job for these too.
  static std::size_t skipped_collectives() noexcept {
    return detail::mpi_registry::instance().skipped();
  }

  mpi_environment(const mpi_environment&) = delete;
  mpi_environment& operator=(const mpi_environment&) = delete;

  /// The thread support level MPI provides (MPI_THREAD_MULTIPLE = 3 with
  /// Debian's OpenMPI).
  int thread_level() const noexcept { return level_; }
  /// True if this object initialized MPI (and will finalize it).
  bool owns_mpi() const noexcept { return owns_; }

 private:
  std::chrono::milliseconds abort_grace_;
  int level_ = MPI_THREAD_SINGLE;
  bool owns_ = false;
};

/// True when this process was started by mpiexec/mpirun (OpenMPI, MPICH
/// hydra, PMIx-based launchers), i.e. it has peers to talk to.
inline bool launched_by_mpiexec() {
  for (const char* var : {"OMPI_COMM_WORLD_SIZE", "PMIX_RANK", "PMI_SIZE", "PMI_RANK"})
    if (std::getenv(var) != nullptr) return true;
  return false;
}

/// Handle to one non-blocking MPI average (models dasgd::request). Dropping
/// it while the collective is in flight is safe: the collective completes in
/// the background (other ranks take part in it) and `recv` is not written.
class mpi_request {
 public:
  mpi_request(mpi_request&& other) noexcept = default;
  mpi_request& operator=(mpi_request&& other) noexcept {
    if (this != &other) {
      release();
      engine_ = std::move(other.engine_);
      op_ = std::move(other.op_);
    }
    return *this;
  }
  mpi_request(const mpi_request&) = delete;
  mpi_request& operator=(const mpi_request&) = delete;
  ~mpi_request() { release(); }

  /// Never blocks; in test mode this is where MPI progresses. True once
  /// `recv` holds the average. Throws comm_error / size_mismatch_error.
  bool test() {
    require_valid();
    return engine_->test(*op_);
  }

  /// Returns when `recv` holds the average; timeout_error after the
  /// communicator's timeout (the request then stays valid: wait again or
  /// drop it).
  void wait() {
    require_valid();
    engine_->wait(*op_);
  }

  /// What the ranks' signatures combine to (once the request has completed).
  const collective_agreement& agreement() const {
    require_valid();
    return op_->agreement;
  }

 private:
  friend class mpi_communicator;
  mpi_request(std::shared_ptr<detail::mpi_engine> e, std::shared_ptr<detail::mpi_op> op)
      : engine_(std::move(e)), op_(std::move(op)) {}

  void require_valid() const {
    DASGD_REQUIRE(op_ != nullptr, state_error, "this mpi_request was moved from");
  }
  void release() noexcept {
    if (op_) engine_->abandon(*op_);
    op_.reset();
    engine_.reset();
  }

  std::shared_ptr<detail::mpi_engine> engine_;
  std::shared_ptr<detail::mpi_op> op_;
};

/// One rank's communicator (models dasgd::communicator<C, float> and
/// <C, double>). Move-only. It owns a duplicate of the base communicator,
/// freed when the communicator and its last request are gone.
class mpi_communicator {
 public:
  using request_type = mpi_request;
  using memory_space = host_space;

  /// Collective over `base`: MPI_Comm_dup, then MPI_ERRORS_RETURN on the
  /// duplicate. Throws config_error if MPI is not initialized, or if
  /// mpi_progress::thread is asked for without MPI_THREAD_MULTIPLE.
  explicit mpi_communicator(MPI_Comm base = MPI_COMM_WORLD, mpi_options options = {})
      : engine_(std::make_shared<detail::mpi_engine>(base, options.progress == mpi_progress::thread,
                                                     options.timeout)),
        options_(options),
        size_(engine_->size()),
        rank_(engine_->rank()) {}

  mpi_communicator(mpi_communicator&&) noexcept = default;
  mpi_communicator& operator=(mpi_communicator&&) noexcept = default;
  mpi_communicator(const mpi_communicator&) = delete;
  mpi_communicator& operator=(const mpi_communicator&) = delete;
  ~mpi_communicator() = default;

  int size() const noexcept { return size_; }
  int rank() const noexcept { return rank_; }
  const mpi_options& options() const noexcept { return options_; }

  /// Starts recv = (sum over ranks of send) / size and returns at once.
  /// `send` may alias `recv`. Collective: every rank calls it with the same
  /// size, element type and signature, in the same order as the other
  /// collectives (a mismatch fails it on every rank).
  template <storage_type T>
  mpi_request iallreduce_average(std::span<const T> send, std::span<T> recv,
                                 const collective_signature& sig = {}) {
    return post<T>(detail::mpi_op::kind::average, send, recv, -1, sig);
  }

  /// Starts recv = the root's send on every rank (the root copies its own).
  template <storage_type T>
  mpi_request ibroadcast(std::span<const T> send, std::span<T> recv, int root,
                         const collective_signature& sig) {
    DASGD_REQUIRE(root >= 0 && root < size_, config_error, "ibroadcast: root ", root,
                  " is outside [0, ", size_, ")");
    return post<T>(detail::mpi_op::kind::broadcast, send, recv, root, sig);
  }

  /// Starts data = the sum over ranks of data, in place, on memory that MPI
  /// reads and writes itself: no staging copy and no scale pass (divide by
  /// size() yourself). For memory only MPI can reach, such as device memory
  /// with a CUDA-aware MPI (comm/cuda_mpi.hpp builds on it). `owner` keeps
  /// `data` alive as long as MPI may touch it: past a dropped request, and
  /// for the rest of the process if the collective is stranded by a
  /// timeout. float and double only (16-bit words are summed by a host
  /// operation, which must not see such memory). Collective, and checked
  /// across ranks like iallreduce_average (whose data collective it shares,
  /// so ranks may mix the two).
  template <class T>
    requires(std::is_same_v<T, float> || std::is_same_v<T, double>)
  mpi_request iallreduce_sum_in_place(std::span<T> data, std::shared_ptr<void> owner,
                                      const collective_signature& sig = {}) {
    return post<T>(detail::mpi_op::kind::average, data, data, -1, sig, std::move(owner));
  }

  /// Starts data = the root's data on every rank, in place on memory MPI
  /// reaches itself (see iallreduce_sum_in_place); any storage type.
  template <storage_type T>
  mpi_request ibroadcast_in_place(std::span<T> data, int root, std::shared_ptr<void> owner,
                                  const collective_signature& sig) {
    DASGD_REQUIRE(root >= 0 && root < size_, config_error, "ibroadcast_in_place: root ", root,
                  " is outside [0, ", size_, ") (rank ", rank_, ")");
    return post<T>(detail::mpi_op::kind::broadcast, data, data, root, sig, std::move(owner));
  }

  /// Blocking gather of one value per rank, in rank order (honours the
  /// timeout like wait()).
  std::vector<std::uint64_t> allgather(std::uint64_t value) {
    require_valid();
    auto op = std::make_shared<detail::mpi_op>();
    op->what = detail::mpi_op::kind::gather;
    op->value = value;
    engine_->post(op);
    engine_->wait(*op);
    return op->gathered;
  }

  /// Test mode: one pass of progress over the collectives in flight, from
  /// the caller (who drives MPI there); true when one of them advanced.
  /// For callers that want progress between chunks of their own work
  /// without holding a request (an MPI without MPI_THREAD_MULTIPLE, a
  /// simulator). Thread mode: nothing to do, false (the thread drives).
  bool progress() {
    require_valid();
    return engine_->progress();
  }

  /// Collectives started on this communicator and not finished yet,
  /// including those whose request was dropped (they still complete).
  std::size_t collectives_in_flight() const {
    require_valid();
    return engine_->in_flight();
  }

  /// For a communicator layered on this one (comm/host_staged.hpp): it
  /// gave up `n` collectives its owner had posted, after a failure and
  /// before handing them to MPI. The peers may be waiting in them, so
  /// mpi_environment ends the job with MPI_Abort rather than meet them in
  /// MPI_Finalize (which, collective, could wait for them forever; and
  /// OpenMPI 4.1's mpiexec can hang or crash when one rank finalizes while
  /// another aborts).
  static void record_skipped_collectives(std::size_t n) noexcept {
    detail::mpi_registry::instance().add_skipped(n);
  }

  /// The duplicated communicator dasgd's collectives run on.
  MPI_Comm native_handle() const {
    require_valid();
    return engine_->handle();
  }

 private:
  /// `direct`: `owner` is set (it may own nothing) and MPI works on `recv`
  /// in place.
  template <class T>
  mpi_request post(detail::mpi_op::kind what, std::span<const T> send, std::span<T> recv,
                   int root, const collective_signature& sig,
                   std::optional<std::shared_ptr<void>> owner = std::nullopt) {
    using V = std::remove_cv_t<T>;
    constexpr bool wide = std::is_same_v<V, float> || std::is_same_v<V, double>;
    require_valid();
    if (!options_.scoped) ::dasgd::detail::require_flat_scope(sig, "mpi_communicator");
    DASGD_REQUIRE(send.size() == recv.size(), size_mismatch_error,
                  what == detail::mpi_op::kind::average ? "iallreduce_average" : "ibroadcast",
                  ": send has ", send.size(), " elements but recv has ", recv.size());
    auto op = std::make_shared<detail::mpi_op>();
    op->what = what;
    op->signature = sig;
    op->root = root;
    op->send = send.data();
    op->recv = recv.data();
    op->count = send.size();
    op->element_bytes = sizeof(V);
    if constexpr (wide) {
      op->type = std::is_same_v<V, float> ? MPI_FLOAT : MPI_DOUBLE;
    } else {
      // 16-bit words summed in fp32 by a user-defined operation.
      static_assert(sizeof(V) == 2, "16-bit storage types only");
      op->type = MPI_UINT16_T;
      op->reduce = detail::mpi_fp32_sum_op<V>();
    }
    op->type_id = type_id<V>::value;
    op->type_name = type_id<V>::name;
    op->scale_out = &detail::mpi_scale_out<V>;
    if (owner) {
      op->direct = true;
      op->keep_alive = std::move(*owner);
    }
    return mpi_request(engine_, engine_->post(std::move(op)));
  }

  void require_valid() const {
    DASGD_REQUIRE(engine_ != nullptr, state_error, "this mpi_communicator was moved from");
  }

  std::shared_ptr<detail::mpi_engine> engine_;
  mpi_options options_;
  int size_ = 0;
  int rank_ = 0;
};

static_assert(communicator<mpi_communicator, float>);
static_assert(communicator<mpi_communicator, double>);

}  // namespace dasgd::comm
