// In-process communicator: N workers as threads of one process.
//
// A group owns one progress thread. A collective completes when every rank
// has posted its part; the progress thread then reduces in rank order (sums
// in double), so the result does not depend on thread timing, and writes
// every rank's receive buffer while the workers go on computing.
//
// Failure handling: collectives are matched by issue order, and every rank's
// signature (purpose, sequence, size, type, root: core/collective.hpp) is
// compared once all have joined; a mismatch fails the collective on every
// rank with a message naming both sides. A wait that exceeds the group's
// timeout fails it too (naming the ranks that never joined) and aborts the
// group, so that no other rank hangs: every rank then sees timeout_error,
// also for collectives it issues afterwards. abort() lets a dying worker
// release the others at once (run_workers does that for you).
#pragma once

#include <algorithm>
#include <chrono>
#include <concepts>
#include <condition_variable>
#include <cstring>
#include <cstdint>
#include <deque>
#include <exception>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <span>
#include <string>
#include <thread>
#include <type_traits>
#include <utility>
#include <vector>

#include "../core/collective.hpp"
#include "../core/error.hpp"
#include "../core/precision.hpp"
#include "../core/tensor.hpp"

namespace dasgd::comm {

struct inproc_options {
  /// Longest a wait may block before the collective fails with timeout_error.
  std::chrono::milliseconds timeout{std::chrono::seconds(120)};
  /// Emulated network: a collective of B bytes per rank completes no earlier
  /// than latency + B / bandwidth after its last rank joined (0: no emulation).
  std::chrono::microseconds simulated_latency{0};
  double simulated_bandwidth_bytes_per_second = 0.0;
};

namespace detail {

struct inproc_part {
  int kind = 0;  ///< the inproc_op::kind this rank issued
  const void* send = nullptr;
  void* recv = nullptr;
  std::size_t element_bytes = 0;
  ::dasgd::detail::signature_record sig;  ///< count and type_id are the buffer's
  std::uint64_t value = 0;
};

struct inproc_op {
  enum class kind { average, broadcast, gather };
  enum class status { pending, done, failed };
  kind what = kind::average;
  std::uint64_t seq = 0;
  int posted = 0;
  std::vector<inproc_part> parts;
  std::vector<bool> joined;
  status state = status::pending;
  bool reducing = false;  // the progress thread is writing the receive buffers
  ::dasgd::detail::error_record error;
  std::vector<std::uint64_t> gathered;
  collective_agreement agreement;
  void (*reduce)(inproc_op&) = nullptr;
  std::chrono::steady_clock::time_point ready_at{};
};

inline const char* kind_name(inproc_op::kind k) {
  switch (k) {
    case inproc_op::kind::average: return "an average";
    case inproc_op::kind::broadcast: return "a broadcast";
    case inproc_op::kind::gather: return "an allgather";
  }
  return "an unknown collective";
}

/// Every rank's recv = the root's send.
inline void copy_from_root(inproc_op& op) {
  const auto& root = op.parts[static_cast<std::size_t>(op.parts[0].sig.root)];
  const std::size_t bytes = root.sig.count * root.element_bytes;
  for (auto& p : op.parts)
    if (bytes != 0 && p.recv != root.send) std::memcpy(p.recv, root.send, bytes);
}

template <class T>
void reduce_average(inproc_op& op) {
  using acc = double;
  const std::size_t n = op.parts.size();
  const std::size_t count = op.parts[0].sig.count;
  const acc inv = acc(1) / acc(n);
  for (std::size_t i = 0; i < count; ++i) {
    acc s = 0;
    for (std::size_t r = 0; r < n; ++r)
      s += to_compute<acc>(static_cast<const T*>(op.parts[r].send)[i]);
    const T v = to_storage<T>(s * inv);
    for (std::size_t r = 0; r < n; ++r) static_cast<T*>(op.parts[r].recv)[i] = v;
  }
}

class inproc_state {
 public:
  /// `scoped`: collectives may carry a nonzero scope (a group communicator
  /// of comm/hierarchical_inproc.hpp); it is compared like the rest of the
  /// signature.
  inproc_state(int n, inproc_options o, bool scoped = false)
      : n_(n), options_(o), scoped_(scoped), next_seq_(static_cast<std::size_t>(n), 0) {
    worker_ = std::thread([this] { progress_loop(); });
  }
  ~inproc_state() {
    {
      std::lock_guard lk(m_);
      stop_ = true;
    }
    work_cv_.notify_all();
    worker_.join();
  }
  inproc_state(const inproc_state&) = delete;
  inproc_state& operator=(const inproc_state&) = delete;

  int size() const { return n_; }
  const inproc_options& options() const { return options_; }
  bool scoped() const { return scoped_; }

  std::shared_ptr<inproc_op> post(int rank, inproc_op::kind what, inproc_part part,
                                  void (*reduce)(inproc_op&)) {
    std::unique_lock lk(m_);
    if (abort_error_) abort_error_.raise();
    const std::uint64_t seq = next_seq_[static_cast<std::size_t>(rank)]++;
    auto& slot = ops_[seq];
    if (!slot) {
      slot = std::make_shared<inproc_op>();
      slot->what = what;
      slot->seq = seq;
      slot->parts.resize(static_cast<std::size_t>(n_));
      slot->joined.assign(static_cast<std::size_t>(n_), false);
      slot->reduce = reduce;
    }
    auto op = slot;
    part.kind = static_cast<int>(what);
    op->parts[static_cast<std::size_t>(rank)] = part;
    op->joined[static_cast<std::size_t>(rank)] = true;
    if (++op->posted == n_) {
      ops_.erase(seq);
      if (op->state == inproc_op::status::pending) {
        check_parts(*op);
        if (op->state == inproc_op::status::pending) {
          const auto bytes =
              static_cast<double>(op->parts[0].sig.count * op->parts[0].element_bytes);
          op->ready_at = std::chrono::steady_clock::now() + options_.simulated_latency;
          if (options_.simulated_bandwidth_bytes_per_second > 0.0)
            op->ready_at += std::chrono::duration_cast<std::chrono::steady_clock::duration>(
                std::chrono::duration<double>(bytes / options_.simulated_bandwidth_bytes_per_second));
          queue_.push_back(op);
          work_cv_.notify_all();
        }
      }
    }
    return op;
  }

  bool test(const inproc_op& op) {
    std::lock_guard lk(m_);
    if (op.reducing) return false;  // even if failed: buffers are still being written
    return finished(op);
  }

  void wait(inproc_op& op) {
    std::unique_lock lk(m_);
    if (!done_cv_.wait_for(lk, options_.timeout, [&] { return op.state != inproc_op::status::pending; })) {
      std::string missing;
      for (std::size_t r = 0; r < op.joined.size(); ++r)
        if (!op.joined[r]) missing += (missing.empty() ? "" : ", ") + std::to_string(r);
      const auto ms = options_.timeout.count();
      const std::string msg =
          missing.empty()
              ? ::dasgd::detail::concat("in-process collective #", op.seq, " timed out after ", ms,
                               " ms while reducing")
              : ::dasgd::detail::concat("in-process collective #", op.seq, " timed out after ", ms,
                               " ms: rank(s) ", missing, " never joined");
      // The same exception type for every rank and every collective of
      // the group: the others learn of this timeout as a timeout too.
      fail_locked(op, ::dasgd::detail::error_record::of(timeout_error(msg, __FILE__, __LINE__)));
      abort_locked(::dasgd::detail::error_record::of(
          timeout_error("in-process group was aborted: " + msg, __FILE__, __LINE__)));
      done_cv_.wait(lk, [&] { return !op.reducing; });
      finished(op);  // throws the timeout_error
    }
    // Never hand the buffers back while the progress thread writes them.
    done_cv_.wait(lk, [&] { return !op.reducing; });
    finished(op);  // throws if failed
  }

  void abort(const std::string& reason) {
    std::lock_guard lk(m_);
    abort_locked(::dasgd::detail::error_record::of(comm_error(
        "in-process group was aborted: " + (reason.empty() ? std::string("aborted") : reason),
        __FILE__, __LINE__)));
  }

 private:
  bool finished(const inproc_op& op) const {
    if (op.state == inproc_op::status::failed) op.error.raise();
    return op.state == inproc_op::status::done;
  }

  /// Once every rank has joined: compares the signatures (all ranks see
  /// the same verdict) and records what they agree on.
  void check_parts(inproc_op& op) {
    bool same_kind = true, any_gather = false;
    for (const auto& p : op.parts) {
      same_kind = same_kind && p.kind == op.parts[0].kind;
      any_gather = any_gather || p.kind == static_cast<int>(inproc_op::kind::gather);
    }
    if (!any_gather) {  // the signatures say best what differs
      std::vector< ::dasgd::detail::signature_record> sigs;
      sigs.reserve(op.parts.size());
      for (const auto& p : op.parts) sigs.push_back(p.sig);
      const char* where = op.what == inproc_op::kind::average ? "in-process average"
                                                               : "in-process broadcast";
      if (auto e = ::dasgd::detail::check_signatures(sigs, 0, where)) {
        fail_locked(op, ::dasgd::detail::error_record::from(e));
        return;
      }
      op.agreement = ::dasgd::detail::combine(sigs);
    }
    if (!same_kind) {
      for (std::size_t r = 1; r < op.parts.size(); ++r) {
        if (op.parts[r].kind == op.parts[0].kind) continue;
        fail_locked(op, ::dasgd::detail::error_record::of(comm_error(
                            ::dasgd::detail::concat(
                                "in-process collective #", op.seq, ": rank 0 issued ",
                                kind_name(static_cast<inproc_op::kind>(op.parts[0].kind)),
                                " but rank ", r, " issued ",
                                kind_name(static_cast<inproc_op::kind>(op.parts[r].kind)),
                                "; collectives must be issued in the same order on every rank"),
                            __FILE__, __LINE__)));
        return;
      }
    }
  }

  void fail_locked(inproc_op& op, ::dasgd::detail::error_record e) {
    if (op.state != inproc_op::status::pending) return;
    op.state = inproc_op::status::failed;
    op.error = std::move(e);
    done_cv_.notify_all();
  }

  /// Fails every pending collective with `e` (and every later post()).
  void abort_locked(::dasgd::detail::error_record e) {
    if (!abort_error_) abort_error_ = std::move(e);
    for (auto& [seq, op] : ops_) fail_locked(*op, abort_error_);
    for (auto& op : queue_) fail_locked(*op, abort_error_);
    ops_.clear();
    queue_.clear();
  }

  void progress_loop() {
    std::unique_lock lk(m_);
    for (;;) {
      work_cv_.wait(lk, [&] { return stop_ || !queue_.empty(); });
      if (stop_) return;
      auto op = queue_.front();
      queue_.pop_front();
      const auto ready_at = op->ready_at;
      op->reducing = true;
      lk.unlock();
      if (op->what != inproc_op::kind::gather) {
        op->reduce(*op);  // buffers are owned by the posting ranks, which must not touch them now
      } else {
        op->gathered.resize(op->parts.size());
        for (std::size_t r = 0; r < op->parts.size(); ++r) op->gathered[r] = op->parts[r].value;
      }
      std::this_thread::sleep_until(ready_at);
      lk.lock();
      op->reducing = false;
      if (op->state == inproc_op::status::pending) op->state = inproc_op::status::done;
      done_cv_.notify_all();
    }
  }

  const int n_;
  const inproc_options options_;
  const bool scoped_;
  std::mutex m_;
  std::condition_variable done_cv_;
  std::condition_variable work_cv_;
  std::vector<std::uint64_t> next_seq_;
  std::map<std::uint64_t, std::shared_ptr<inproc_op>> ops_;
  std::deque<std::shared_ptr<inproc_op>> queue_;
  ::dasgd::detail::error_record abort_error_;
  bool stop_ = false;
  std::thread worker_;
};

}  // namespace detail

/// Handle to one non-blocking in-process collective.
class inproc_request {
 public:
  inproc_request(std::shared_ptr<detail::inproc_state> s, std::shared_ptr<detail::inproc_op> op)
      : state_(std::move(s)), op_(std::move(op)) {}
  bool test() { return state_->test(*op_); }
  void wait() { state_->wait(*op_); }
  /// What the ranks' signatures combine to (once the request has completed).
  const collective_agreement& agreement() const { return op_->agreement; }

 private:
  std::shared_ptr<detail::inproc_state> state_;
  std::shared_ptr<detail::inproc_op> op_;
};

/// One rank's view of an inproc_group. Use each rank's handle from one
/// thread at a time; collectives are matched across ranks by issue order.
class inproc_communicator {
 public:
  using request_type = inproc_request;
  using memory_space = host_space;

  inproc_communicator(std::shared_ptr<detail::inproc_state> s, int rank)
      : state_(std::move(s)), rank_(rank) {}

  int size() const { return state_->size(); }
  int rank() const { return rank_; }

  template <storage_type T>
  inproc_request iallreduce_average(std::span<const T> send, std::span<T> recv,
                                    const collective_signature& sig = {}) {
    DASGD_REQUIRE(send.size() == recv.size(), size_mismatch_error,
                  "iallreduce_average: send has ", send.size(), " elements but recv has ",
                  recv.size());
    return post(detail::inproc_op::kind::average, send, recv, -1, sig,
                &detail::reduce_average<std::remove_cv_t<T>>);
  }

  /// Every rank's `recv` receives the root's `send` (the root copies its own).
  template <storage_type T>
  inproc_request ibroadcast(std::span<const T> send, std::span<T> recv, int root,
                            const collective_signature& sig) {
    DASGD_REQUIRE(send.size() == recv.size(), size_mismatch_error, "ibroadcast: send has ",
                  send.size(), " elements but recv has ", recv.size());
    DASGD_REQUIRE(root >= 0 && root < size(), config_error, "ibroadcast: root ", root,
                  " is outside [0, ", size(), ")");
    return post(detail::inproc_op::kind::broadcast, send, recv, root, sig,
                &detail::copy_from_root);
  }

  std::vector<std::uint64_t> allgather(std::uint64_t value) {
    detail::inproc_part part;
    part.value = value;
    auto op = state_->post(rank_, detail::inproc_op::kind::gather, part, nullptr);
    state_->wait(*op);
    return op->gathered;
  }

  /// Fails every pending and future collective of the group.
  void abort(const std::string& reason) { state_->abort(reason); }

 private:
  template <class T>
  inproc_request post(detail::inproc_op::kind what, std::span<const T> send, std::span<T> recv,
                      int root, const collective_signature& sig,
                      void (*reduce)(detail::inproc_op&)) {
    using V = std::remove_cv_t<T>;
    if (!state_->scoped()) ::dasgd::detail::require_flat_scope(sig, "the in-process communicator");
    detail::inproc_part part;
    part.send = send.data();
    part.recv = recv.data();
    part.element_bytes = sizeof(V);
    part.sig = ::dasgd::detail::signature_record::of(sig, send.size(), type_id<V>::value, root);
    return {state_, state_->post(rank_, what, part, reduce)};
  }

  std::shared_ptr<detail::inproc_state> state_;
  int rank_;
};

/// A set of N in-process ranks sharing one progress thread.
class inproc_group {
 public:
  explicit inproc_group(int size, inproc_options options = {}) {
    DASGD_REQUIRE(size >= 1, config_error, "in-process group size must be >= 1, got ", size);
    DASGD_REQUIRE(options.timeout.count() > 0, config_error,
                  "in-process timeout must be positive, got ", options.timeout.count(), " ms");
    DASGD_REQUIRE(options.simulated_bandwidth_bytes_per_second >= 0.0, config_error,
                  "simulated bandwidth must be >= 0, got ",
                  options.simulated_bandwidth_bytes_per_second);
    state_ = std::make_shared<detail::inproc_state>(size, options);
  }

  int size() const { return state_->size(); }

  inproc_communicator communicator(int rank) const {
    DASGD_REQUIRE(rank >= 0 && rank < state_->size(), config_error, "rank ", rank,
                  " is outside [0, ", state_->size(), ")");
    return {state_, rank};
  }

  void abort(const std::string& reason) { state_->abort(reason); }

 private:
  std::shared_ptr<detail::inproc_state> state_;
};

/// Runs fn(communicator) on one thread per rank and joins them. If a worker
/// throws, the group is aborted so that the others fail fast instead of
/// waiting for a peer that will never come, and the first exception (by
/// rank) is rethrown here. `group` is an inproc_group or anything with the
/// same size() / communicator(rank) / abort(reason) (inproc_hierarchy);
/// communicator(rank) is called on the rank's own thread, so it may be
/// collective.
template <class Group, class F>
  requires requires(Group& g, int r, const std::string& why) {
    { g.size() } -> std::convertible_to<int>;
    g.communicator(r);
    g.abort(why);
  }
void run_workers(Group& group, F&& fn) {
  const int n = group.size();
  std::vector<std::exception_ptr> errors(static_cast<std::size_t>(n));
  std::vector<std::thread> threads;
  threads.reserve(static_cast<std::size_t>(n));
  for (int r = 0; r < n; ++r) {
    threads.emplace_back([&, r] {
      try {
        fn(group.communicator(r));
      } catch (const std::exception& e) {
        errors[static_cast<std::size_t>(r)] = std::current_exception();
        group.abort(::dasgd::detail::concat("rank ", r, " failed: ", e.what()));
      } catch (...) {
        errors[static_cast<std::size_t>(r)] = std::current_exception();
        group.abort(::dasgd::detail::concat("rank ", r, " failed"));
      }
    });
  }
  for (auto& t : threads) t.join();
  // Prefer the root cause over the aborts it triggered on the other ranks.
  std::exception_ptr first;
  for (auto& e : errors) {
    if (!e) continue;
    try {
      std::rethrow_exception(e);
    } catch (const comm_error&) {
      if (!first) first = e;
    } catch (...) {
      std::rethrow_exception(e);
    }
  }
  if (first) std::rethrow_exception(first);
}

}  // namespace dasgd::comm
