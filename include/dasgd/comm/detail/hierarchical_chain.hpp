// One average across the groups of a hierarchical communicator
// (comm/hierarchical.hpp), as a state machine of three stages:
//   1. average over the group (fast link)           -> every member holds its group mean
//   2. the leaders average their group means (slow) -> the world mean (groups of equal size)
//   3. the leader broadcasts it over the group (fast)
// poll(false) does what can be done without blocking: it tests the stage's
// requests and, when they are done, starts the next stage. poll(true) runs
// to the end. The helper thread of chain_progress::helper_thread calls
// poll(true); with chain_progress::caller the request's test(), wait() and
// the communicator's progress() call it, so no thread is needed (an MPI
// without MPI_THREAD_MULTIPLE, a simulator such as SimGrid SMPI).
//
// Every stage issues only non-blocking collectives, so the chain can wait
// between any two calls. What the ranks agree on travels with the leaders'
// data average: its signature carries the group's largest proposal and its
// status. Where that is not enough (a group whose members proposed
// different values, or a status: the world rank that set it is not in the
// signature), the leader marks its signature, and the leaders then run one
// more, tiny average (five doubles per group: smallest and largest
// proposal, status world rank, status, detail). So the common case costs
// no more slow-link latency than the data average itself.
//
// The first error is latched: every later poll() raises it again. A failed
// chain keeps the requests it still holds: an in-process peer may yet
// write into the chain's own buffers, so whoever owns the chain keeps it
// until the communicator goes (comm/hierarchical.hpp).
#pragma once

#include <algorithm>
#include <array>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <exception>
#include <optional>
#include <span>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include "../../core/collective.hpp"
#include "../../core/error.hpp"

namespace dasgd::comm::detail {

/// Rethrows the exception being handled with `prefix` before its message,
/// keeping its dasgd type (a timeout stays a timeout).
[[noreturn]] inline void rethrow_with_context(const std::string& prefix) {
  using ::dasgd::detail::located_t;
  try {
    throw;
  } catch (const timeout_error& e) {
    throw timeout_error(located_t{}, prefix + e.what(), e.file(), e.line());
  } catch (const comm_error& e) {
    throw comm_error(located_t{}, prefix + e.what(), e.file(), e.line());
  } catch (const size_mismatch_error& e) {
    throw size_mismatch_error(located_t{}, prefix + e.what(), e.file(), e.line());
  } catch (const config_error& e) {
    throw config_error(located_t{}, prefix + e.what(), e.file(), e.line());
  } catch (const state_error& e) {
    throw state_error(located_t{}, prefix + e.what(), e.file(), e.line());
  } catch (const nonfinite_error& e) {
    throw nonfinite_error(located_t{}, prefix + e.what(), e.file(), e.line());
  } catch (const std::exception& e) {
    throw comm_error(prefix + e.what(), __FILE__, __LINE__);
  }
}

/// Error codes of the stage-3 information broadcast.
enum class hier_failure : int { none = 0, comm = 1, timeout = 2, other = 3 };

/// Status a leader sends on the leaders' communicator (internal to the
/// hierarchy) when its group's proposals differ: the leaders then exchange
/// the exact figures.
inline constexpr std::uint32_t hier_group_proposals_differ = 0xFFFFFFFFu;

/// What requests and the communicator hold of a chain, whatever its element type.
class hier_chain_base {
 public:
  hier_chain_base() = default;
  hier_chain_base(const hier_chain_base&) = delete;
  hier_chain_base& operator=(const hier_chain_base&) = delete;
  virtual ~hier_chain_base() = default;

  /// Advances (block: to the end); true once finished. Raises the chain's
  /// error, now and at every later call.
  bool poll(bool block) {
    if (error_) error_.raise();
    if (done_) return true;
    try {
      done_ = advance(block);
    } catch (...) {
      error_ = ::dasgd::detail::error_record::from(std::current_exception());
      done_ = true;
      error_.raise();
    }
    return done_;
  }
  bool finished() const noexcept { return done_; }
  /// What every rank agreed on (world ranks); valid once finished without error.
  const collective_agreement& agreement() const noexcept { return agreement_; }

 protected:
  virtual bool advance(bool block) = 0;
  collective_agreement agreement_;

 private:
  bool done_ = false;
  ::dasgd::detail::error_record error_;
};

/// `State` holds the sub-communicators `group` and `leaders` (an optional,
/// present on group rank 0), `world` and the `layout` (comm/hierarchical.hpp).
template <class State, class V>
class hier_chain final : public hier_chain_base {
  using sub = std::remove_cvref_t<decltype(std::declval<State&>().group)>;
  using request = typename sub::request_type;

 public:
  /// Averages `in` (n elements) into `out`; both stay valid until the chain
  /// is finished or destroyed. Starts stage 1 at the first poll.
  hier_chain(State& s, const V* in, V* out, std::size_t n, collective_signature sig)
      : s_(s), in_(in), out_(out), n_(n), sig_(sig) {}

 private:
  enum class stage { start, group_average, leaders_average, group_broadcast };

  bool advance(bool block) override {
    for (;;) {
      switch (stage_) {
        case stage::start:
          start_group_average();
          break;
        case stage::group_average:
          if (!group_average_done(block)) return false;
          break;
        case stage::leaders_average:
          if (!leaders_done(block)) return false;
          break;
        case stage::group_broadcast:
          if (!broadcast_done(block)) return false;
          finish();
          return true;
      }
    }
  }

  static bool ready(request& r, bool block) {
    if (!block) return r.test();
    r.wait();
    return true;
  }

  std::string where(const char* what) const {
    return ::dasgd::detail::concat("hierarchical average #", sig_.sequence, ", ", what, " (group ",
                                   s_.layout.group, ", world rank ", s_.world.rank(), "): ");
  }
  std::span<V> buf() const { return {out_, n_}; }
  std::span<const V> cbuf() const { return {out_, n_}; }

  // 1. The group mean, on every member (a failure here is seen by the whole group).
  void start_group_average() {
    try {
      r1_.emplace(s_.group.iallreduce_average(std::span<const V>(in_, n_), buf(), sig_));
    } catch (...) {
      rethrow_with_context(where("stage 1, group average"));
    }
    stage_ = stage::group_average;
  }
  bool group_average_done(bool block) {
    try {
      if (!ready(*r1_, block)) return false;
      a1_ = r1_->agreement();
      r1_.reset();
    } catch (...) {
      rethrow_with_context(where("stage 1, group average"));
    }
    if (s_.leaders)
      start_leaders();
    else
      start_broadcast();
    return true;
  }

  // 2. The leaders average the group means over the slow link.
  void start_leaders() {
    try {
      collective_signature data = sig_;
      data.proposal = a1_.max_proposal;
      data.status = a1_.status;
      data.status_detail = a1_.status_detail;
      if (a1_.status_rank < 0 && a1_.min_proposal != a1_.max_proposal) {
        data.status = hier_group_proposals_differ;
        data.status_detail = 0;
      }
      r2_.emplace(s_.leaders->iallreduce_average(cbuf(), buf(), data));
    } catch (...) {
      leader_failed();
      return;
    }
    stage_ = stage::leaders_average;
  }
  static constexpr std::size_t meta_words = 5;  // min, max, status world rank + 1, status, detail
  bool leaders_done(bool block) {
    try {
      if (r2_) {
        if (!ready(*r2_, block)) return false;
        a2_ = r2_->agreement();
        r2_.reset();
        // Every leader sees the same agreement, so all or none take this branch.
        if (a2_.status_rank >= 0) start_meta();
      }
      if (r2_meta_) {
        if (!ready(*r2_meta_, block)) return false;
        r2_meta_.reset();
        meta_done_ = true;
      }
    } catch (...) {
      leader_failed();
      return true;
    }
    if (meta_done_) {
      from_meta();
    } else {  // every group agreed within itself and none has a status
      info_ = {0.0, static_cast<double>(a2_.min_proposal), static_cast<double>(a2_.max_proposal), -1.0, 0.0, 0.0};
    }
    start_broadcast();
    return true;
  }
  /// Every group's exact figures, one slot of meta_words per group.
  void start_meta() {
    const auto groups = static_cast<std::size_t>(s_.leaders->size());
    const auto slot = static_cast<std::size_t>(s_.leaders->rank()) * meta_words;
    meta_.assign(groups * meta_words, 0.0);
    meta_avg_.assign(groups * meta_words, 0.0);
    meta_[slot + 0] = static_cast<double>(a1_.min_proposal);
    meta_[slot + 1] = static_cast<double>(a1_.max_proposal);
    meta_[slot + 2] = static_cast<double>(s_.world_rank_in_group(a1_.status_rank) + 1);
    meta_[slot + 3] = static_cast<double>(a1_.status);
    meta_[slot + 4] = static_cast<double>(a1_.status_detail);
    r2_meta_.emplace(s_.leaders->iallreduce_average(std::span<const double>(meta_), std::span<double>(meta_avg_), sig_));
  }
  /// The flat communicator's agreement over every world rank: smallest and
  /// largest proposal, and the status of the lowest world rank that has one.
  void from_meta() {
    const double groups = static_cast<double>(meta_avg_.size() / meta_words);
    const auto word = [&](std::size_t g, std::size_t i) { return std::round(meta_avg_[g * meta_words + i] * groups); };
    double lo = word(0, 0), hi = word(0, 1), status_rank = -1, status = 0, detail = 0;
    for (std::size_t g = 0; g < meta_avg_.size() / meta_words; ++g) {
      lo = std::min(lo, word(g, 0));
      hi = std::max(hi, word(g, 1));
      const double r = word(g, 2) - 1;
      if (r >= 0 && (status_rank < 0 || r < status_rank)) {
        status_rank = r;
        status = word(g, 3);
        detail = word(g, 4);
      }
    }
    info_ = {0.0, lo, hi, status_rank, status, detail};
  }
  /// In a catch handler: the leader keeps its error and still broadcasts
  /// the failure, so its group fails at once instead of at its timeout.
  /// (A pending leaders' request is kept, not dropped: see the file comment.)
  void leader_failed() {
    leader_error_ = ::dasgd::detail::error_record::from(std::current_exception());
    const auto kind = leader_error_.kind() == ::dasgd::detail::error_record::type::timeout
                          ? hier_failure::timeout
                      : leader_error_.kind() == ::dasgd::detail::error_record::type::comm
                          ? hier_failure::comm
                          : hier_failure::other;
    info_ = {static_cast<double>(kind), 0, 0, -1, 0, 0};
    start_broadcast();
  }

  // 3. The leader's result (or its failure) to the whole group.
  void start_broadcast() {
    try {
      rb_.emplace(s_.group.ibroadcast(cbuf(), buf(), 0, sig_));
      rq_.emplace(s_.group.ibroadcast(std::span<const double>(info_.data(), info_.size()),
                                      std::span<double>(info_.data(), info_.size()), 0, sig_));
    } catch (...) {
      raise_broadcast_error();
    }
    stage_ = stage::group_broadcast;
  }
  bool broadcast_done(bool block) {
    try {
      if (rb_) {
        if (!ready(*rb_, block)) return false;
        rb_.reset();
      }
      if (rq_) {
        if (!ready(*rq_, block)) return false;
        rq_.reset();
      }
    } catch (...) {
      raise_broadcast_error();
    }
    return true;
  }
  /// In a catch handler: a leader's own stage-2 error names the cause better.
  [[noreturn]] void raise_broadcast_error() {
    if (leader_error_) raise_leader_error();
    rethrow_with_context(where("stage 3, group broadcast"));
  }
  [[noreturn]] void raise_leader_error() {
    try {
      leader_error_.raise();
    } catch (...) {
      rethrow_with_context(where("stage 2, leaders' average"));
    }
  }

  void finish() {
    if (leader_error_) raise_leader_error();
    const auto failure = static_cast<hier_failure>(static_cast<int>(info_[0]));
    if (failure != hier_failure::none) {
      const auto& L = s_.layout;
      const std::string msg = ::dasgd::detail::concat(
          where("stage 2, leaders' average"), "the leader of group ", L.group, " (world rank ",
          L.members[static_cast<std::size_t>(L.group)][0],
          ") failed to average across groups; its own error names the cause");
      if (failure == hier_failure::timeout) throw timeout_error(msg, __FILE__, __LINE__);
      throw comm_error(msg, __FILE__, __LINE__);
    }
    agreement_.min_proposal = static_cast<std::int64_t>(info_[1]);
    agreement_.max_proposal = static_cast<std::int64_t>(info_[2]);
    agreement_.status_rank = static_cast<int>(info_[3]);
    agreement_.status = static_cast<std::uint32_t>(info_[4]);
    agreement_.status_detail = static_cast<std::uint32_t>(info_[5]);
  }

  State& s_;
  const V* in_;
  V* out_;
  std::size_t n_;
  collective_signature sig_;
  stage stage_ = stage::start;
  std::optional<request> r1_, r2_, r2_meta_, rb_, rq_;
  collective_agreement a1_, a2_;
  bool meta_done_ = false;
  std::vector<double> meta_, meta_avg_;
  // failure, min proposal, max proposal, status world rank, status, detail
  std::array<double, 6> info_{};
  ::dasgd::detail::error_record leader_error_;
};

}  // namespace dasgd::comm::detail
