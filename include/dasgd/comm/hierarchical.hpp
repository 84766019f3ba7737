// Hierarchical communicator: workers form groups (a node, or groups the
// user names); a round's average spans either the rank's group (scope
// comm::group_scope, the fast link) or every rank (scope world_scope, the
// slow link between groups). The delay policy decides per round
// (policy::hierarchical); the communicator routes by the signature's scope.
//
//   hierarchical_communicator<Sub>(world, group, leaders, options)
//
// holds three communicators of one flat type Sub: `world` (every rank: the
// trainer's construction checks, broadcast_parameters), `group` (this
// rank's group; built with scopes enabled, so that a group round and an
// across-groups round that meet on it are a mismatch on every member, not a
// silent pairing) and `leaders` (group rank 0 of every group; absent on the
// other ranks). comm/hierarchical_inproc.hpp and comm/hierarchical_mpi.hpp
// build them (a split of threads; MPI_Comm_split_type / a user colour).
//
// An average across groups (outer_average::chained, the default) is done
// hierarchically, so that each element crosses the slow link once per
// direction and only one rank per group sends over it:
//   1. average over the group (fast link)           -> every member holds its group mean
//   2. the leaders average their group means (slow) -> the world mean (groups of equal size)
//   3. the leader broadcasts it over the group (fast)
// A flat allreduce over the world lets every rank send over the slow link,
// and more in all: with OpenMPI 4.1 and 2 nodes x 2 ranks, 1.5x the bytes
// of the chain (measured, docs/beyond.md). outer_average::world keeps that
// path (to compare, and for groups of different sizes). The chain
// (comm/detail/hierarchical_chain.hpp) runs on a helper thread of this
// communicator by default (chain_progress::helper_thread), so it advances
// while the worker computes: the trainer polls once per step, which would
// leave the slow stage waiting for the next poll. With one average in flight
// at a time (the trainer's invariant) the helper and the caller never use a
// sub-communicator at the same time; every call first waits for the helper
// to be idle. chain_progress::caller runs no thread: the chain advances in
// the request's test() and wait() and in progress(), which a caller may run
// between chunks of its own work (an MPI without MPI_THREAD_MULTIPLE with
// test-mode progress, a simulator that cannot host threads).
//
// Agreement (what the ranks' signatures combine to) spans the collective's
// scope: a group round agrees within the group, an across-groups round
// over every rank, as on a flat communicator: the range of all proposals
// and the status of the lowest world rank that has one. The leaders carry
// their group's result across in their data average's signature, and in a
// second, tiny average only when a group disagrees within itself or has a
// status; a 6-number broadcast takes it back into the group. Ranks are world
// ranks in every agreement and error message.
//
// Errors: a mismatch on a sub-communicator fails that collective on all of
// its ranks, with the group, the world rank and the stage prepended. A
// leader that fails in stage 2 still broadcasts a failure flag in stage 3,
// so its group fails at once instead of waiting for a timeout; ranks of
// other groups fail when their own leaders' stage times out. A bad layout
// (groups of different sizes with the chained average, a leader that is not
// group rank 0, inconsistent leader counts) is a config_error on every rank
// at construction, naming the world rank.
#pragma once

#include <algorithm>
#include <condition_variable>
#include <cstdint>
#include <exception>
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
#include "detail/hierarchical_chain.hpp"
#include "scopes.hpp"

namespace dasgd::comm {

/// How an average across groups travels.
enum class outer_average {
  chained,  ///< group average, leaders average over the slow link, group broadcast (equal group sizes)
  world,    ///< one allreduce over the world communicator
};

inline const char* to_string(outer_average o) {
  return o == outer_average::chained ? "chained" : "world";
}

/// What drives a chained average between the caller's calls.
enum class chain_progress {
  helper_thread,  ///< a thread of the communicator: the slow stage starts as soon as the group's is done
  caller,         ///< no thread: the request's test()/wait() and progress() advance it
};

inline const char* to_string(chain_progress p) {
  return p == chain_progress::helper_thread ? "helper_thread" : "caller";
}

struct hierarchical_options {
  outer_average outer = outer_average::chained;
  chain_progress progress = chain_progress::helper_thread;
};

/// Where every world rank sits; the same on every rank (checked).
struct hierarchy_layout {
  int group = 0;       ///< this rank's group, in [0, groups)
  int groups = 1;      ///< number of groups
  int group_rank = 0;  ///< rank in the group; 0 is the group's leader
  /// members[g][r]: world rank of group g's rank r.
  std::vector<std::vector<int>> members;
};

namespace detail {

/// One across-groups average handed to the helper thread.
struct hier_job {
  std::function<collective_agreement()> run;  ///< the chain; runs on the helper thread
  std::mutex m;
  std::condition_variable cv;
  bool done = false;
  ::dasgd::detail::error_record error;
  collective_agreement agreement;

  bool test() {
    std::lock_guard lk(m);
    if (done && error) error.raise();
    return done;
  }
  void wait() {
    std::unique_lock lk(m);
    // Bounded: every stage of the chain waits at most its communicator's timeout.
    cv.wait(lk, [&] { return done; });
    if (error) error.raise();
  }
};

/// Runs one job at a time off the caller's thread.
class hier_helper {
 public:
  hier_helper() : thread_([this] { loop(); }) {}
  ~hier_helper() {
    {
      std::lock_guard lk(m_);
      stop_ = true;
    }
    cv_.notify_all();
    thread_.join();  // a running chain ends within its stages' timeouts
  }
  hier_helper(const hier_helper&) = delete;
  hier_helper& operator=(const hier_helper&) = delete;

  void submit(std::shared_ptr<hier_job> job) {
    std::lock_guard lk(m_);
    next_ = std::move(job);
    busy_ = true;
    cv_.notify_all();
  }
  bool busy() {
    std::lock_guard lk(m_);
    return busy_;
  }
  /// Returns once no job is queued or running.
  void wait_idle() {
    std::unique_lock lk(m_);
    cv_.wait(lk, [&] { return !busy_; });
  }

 private:
  void loop() {
    std::unique_lock lk(m_);
    for (;;) {
      cv_.wait(lk, [&] { return stop_ || next_ != nullptr; });
      if (!next_) return;  // stopping, nothing left
      auto job = std::move(next_);
      next_.reset();
      lk.unlock();
      collective_agreement a;
      ::dasgd::detail::error_record err;
      try {
        a = job->run();
      } catch (...) {
        err = ::dasgd::detail::error_record::from(std::current_exception());
      }
      {
        std::lock_guard jl(job->m);
        job->agreement = a;
        job->error = std::move(err);
        job->done = true;
      }
      job->cv.notify_all();
      job.reset();  // its closure holds spans only; drop it before reporting idle
      lk.lock();
      busy_ = false;
      cv_.notify_all();
    }
  }

  std::mutex m_;
  std::condition_variable cv_;
  std::shared_ptr<hier_job> next_;
  bool busy_ = false;
  bool stop_ = false;
  std::thread thread_;  // last: starts once the rest exists
};

template <class Sub>
struct hier_state {
  hier_state(Sub w, Sub g, std::optional<Sub> l, hierarchical_options o)
      : world(std::move(w)), group(std::move(g)), leaders(std::move(l)), options(o) {}
  Sub world;
  Sub group;
  std::optional<Sub> leaders;
  hierarchical_options options;
  hierarchy_layout layout;
  // chain_progress::caller: the latest chain, kept (even when its request is
  // dropped) until the next one starts, so that it is finished before any
  // other collective and its buffers outlive what its sub-requests write.
  std::shared_ptr<hier_chain_base> current;
  std::unique_ptr<hier_helper> helper;  // chained, helper_thread only; declared last: joined first

  /// Returns once no chain uses the sub-communicators: collectives on them
  /// must be issued in the same order on every rank.
  void wait_idle() {
    if (helper) helper->wait_idle();
    if (current && !current->finished()) {
      try {
        current->poll(true);
      } catch (...) {  // latched: the chain's request raises it
      }
    }
  }
  int world_rank_in_group(int group_rank) const {
    if (group_rank < 0) return -1;
    return layout.members[static_cast<std::size_t>(layout.group)][static_cast<std::size_t>(group_rank)];
  }
};

}  // namespace detail

template <class Sub>
class hierarchical_communicator;

/// Handle to one hierarchical collective: a sub-communicator's request (a
/// group round, a world-level broadcast or average) or a chained average.
template <class Sub>
class hierarchical_request {
 public:
  using inner_request = typename Sub::request_type;

  bool test() {
    if (job_) return job_->test();
    if (chain_) return chain_->poll(false);
    try {
      return direct_->test();
    } catch (...) {
      rethrow();
    }
  }
  void wait() {
    if (job_) return job_->wait();
    if (chain_) {
      chain_->poll(true);
      return;
    }
    try {
      direct_->wait();
    } catch (...) {
      rethrow();
    }
  }
  /// What the ranks in the collective's scope agreed on; ranks are world ranks.
  collective_agreement agreement() const {
    if (job_) return job_->agreement;
    if (chain_) return chain_->agreement();
    collective_agreement a = direct_->agreement();
    if (in_group_) a.status_rank = state_->world_rank_in_group(a.status_rank);
    return a;
  }

 private:
  friend class hierarchical_communicator<Sub>;
  hierarchical_request(std::shared_ptr<detail::hier_state<Sub>> s, inner_request r, bool in_group)
      : state_(std::move(s)), direct_(std::move(r)), in_group_(in_group) {}
  hierarchical_request(std::shared_ptr<detail::hier_state<Sub>> s, std::shared_ptr<detail::hier_job> j)
      : state_(std::move(s)), job_(std::move(j)) {}
  hierarchical_request(std::shared_ptr<detail::hier_state<Sub>> s, std::shared_ptr<detail::hier_chain_base> c)
      : state_(std::move(s)), chain_(std::move(c)) {}

  /// A sub-communicator names its own ranks: say which group and world rank.
  [[noreturn]] void rethrow() const {
    detail::rethrow_with_context(::dasgd::detail::concat(
        "hierarchical ", in_group_ ? "group average" : "world collective", " (group ",
        state_->layout.group, ", world rank ", state_->world.rank(), "; group ranks are world ranks ",
        members(), "): "));
  }
  std::string members() const {
    std::string out;
    for (int x : state_->layout.members[static_cast<std::size_t>(state_->layout.group)])
      out += (out.empty() ? "" : ", ") + std::to_string(x);
    return out;
  }

  std::shared_ptr<detail::hier_state<Sub>> state_;  // keeps the sub-communicators alive
  std::optional<inner_request> direct_;
  std::shared_ptr<detail::hier_job> job_;      // chain_progress::helper_thread
  std::shared_ptr<detail::hier_chain_base> chain_;  // chain_progress::caller (the communicator holds it too)
  bool in_group_ = false;
};

/// One rank's view of a two-level hierarchy. Move-only like its Sub (or
/// copyable handles, for in-process ones); constructing it is collective
/// over the world.
template <class Sub>
class hierarchical_communicator {
 public:
  using request_type = hierarchical_request<Sub>;
  using memory_space = comm_memory_space_t<Sub>;
  using sub_communicator = Sub;

  /// `group`: this rank's group, its rank 0 the leader; `leaders`: present
  /// exactly on group rank 0 (one member per group, ordered by group).
  /// Collective over `world`: gathers and checks the layout (config_error on
  /// every rank when it is inconsistent).
  hierarchical_communicator(Sub world, Sub group, std::optional<Sub> leaders,
                            hierarchical_options options = {})
      : state_(std::make_shared<detail::hier_state<Sub>>(std::move(world), std::move(group),
                                                         std::move(leaders), options)) {
    check_layout();
    if (options.outer == outer_average::chained && options.progress == chain_progress::helper_thread)
      state_->helper = std::make_unique<detail::hier_helper>();
  }

  int size() const { return state_->world.size(); }
  int rank() const { return state_->world.rank(); }
  const hierarchy_layout& layout() const noexcept { return state_->layout; }
  int group() const noexcept { return state_->layout.group; }
  int groups() const noexcept { return state_->layout.groups; }
  int group_rank() const noexcept { return state_->layout.group_rank; }
  int group_size() const { return state_->group.size(); }
  bool is_leader() const noexcept { return state_->leaders.has_value(); }
  const hierarchical_options& options() const noexcept { return state_->options; }
  Sub& world_communicator() noexcept { return state_->world; }
  Sub& group_communicator() noexcept { return state_->group; }

  /// recv = the average of `send` over the signature's scope: this rank's
  /// group (group_scope) or every rank (world_scope).
  template <storage_type T>
  request_type iallreduce_average(std::span<const T> send, std::span<T> recv,
                                  const collective_signature& sig = {}) {
    DASGD_REQUIRE(send.size() == recv.size(), size_mismatch_error,
                  "hierarchical iallreduce_average: send has ", send.size(),
                  " elements but recv has ", recv.size());
    auto& s = *state_;
    s.wait_idle();  // the previous chain no longer uses the sub-communicators
    if (sig.scope == group_scope)
      return request_type(state_, guarded("group average", [&] { return s.group.iallreduce_average(send, recv, sig); }), true);
    DASGD_REQUIRE(sig.scope == world_scope, config_error, "hierarchical communicator (world rank ",
                  rank(), "): a collective asks for scope ", sig.scope,
                  "; only ", world_scope, " (every rank) and ", group_scope,
                  " (this rank's group) exist");
    if (s.options.outer == outer_average::world)
      return request_type(state_, s.world.iallreduce_average(send, recv, sig), false);
    using V = std::remove_cv_t<T>;
    // The chain refers to the state (the request keeps it alive), not owns it.
    auto chain = std::make_shared<detail::hier_chain<detail::hier_state<Sub>, V>>(s, send.data(), recv.data(),
                                                                                 send.size(), sig);
    if (!s.helper) {
      s.current = chain;
      chain->poll(false);  // starts the group average now; a failure to start is thrown here
      return request_type(state_, std::shared_ptr<detail::hier_chain_base>(std::move(chain)));
    }
    auto job = std::make_shared<detail::hier_job>();
    job->run = [chain] {
      chain->poll(true);
      return chain->agreement();
    };
    s.helper->submit(job);
    return request_type(state_, std::move(job));
  }

  /// One pass of progress without blocking: the chained average in flight
  /// (chain_progress::caller) and the sub-communicators' own progress()
  /// where they have one (mpi_communicator in test mode). True when
  /// something advanced. A chain's failure is raised by its request. With
  /// the helper thread it does nothing (the thread drives the chain, and
  /// the sub-communicators are its own while a chain runs).
  bool progress() {
    auto& s = *state_;
    bool moved = false;
    if (s.helper) return false;
    if (s.current && !s.current->finished()) {
      try {
        moved = s.current->poll(false);
      } catch (...) {  // latched: the chain's request raises it
        moved = true;
      }
    }
    if constexpr (requires(Sub& x) { x.progress(); }) {
      moved = s.world.progress() || moved;
      moved = s.group.progress() || moved;
      if (s.leaders) moved = s.leaders->progress() || moved;
    }
    return moved;
  }

  /// Collectives in flight on the sub-communicators, plus an unfinished
  /// chained average (which may be between two stages, with none of its own
  /// in flight).
  std::size_t collectives_in_flight() const
    requires requires(const Sub& x) { x.collectives_in_flight(); }
  {
    const auto& s = *state_;
    std::size_t n = s.world.collectives_in_flight() + s.group.collectives_in_flight();
    if (s.leaders) n += s.leaders->collectives_in_flight();
    if (s.current && !s.current->finished()) ++n;
    if (s.helper && s.helper->busy()) ++n;
    return n;
  }

  /// recv = world rank `root`'s send on every rank. Only world_scope.
  template <storage_type T>
  request_type ibroadcast(std::span<const T> send, std::span<T> recv, int root,
                          const collective_signature& sig) {
    DASGD_REQUIRE(sig.scope == world_scope, config_error, "hierarchical ibroadcast (world rank ",
                  rank(), "): scope ", sig.scope, " is not supported; broadcasts span every rank");
    state_->wait_idle();
    return request_type(state_, state_->world.ibroadcast(send, recv, root, sig), false);
  }

  std::vector<std::uint64_t> allgather(std::uint64_t value) {
    state_->wait_idle();
    return state_->world.allgather(value);
  }

 private:
  template <class F>
  auto guarded(const char* stage, F&& f) {
    try {
      return f();
    } catch (...) {
      detail::rethrow_with_context(::dasgd::detail::concat(
          "hierarchical ", stage, " (group ", group(), ", world rank ", rank(), "): "));
    }
  }

  /// Gathers every rank's place and checks it; every rank sees the same
  /// table and so throws the same config_error.
  void check_layout() {
    auto& s = *state_;
    const int n = s.world.size();
    const int gsize = s.group.size();
    const int grank = s.group.rank();
    DASGD_REQUIRE(n < 0xFFFF, config_error, "hierarchical communicator: ", n,
                  " ranks; at most 65534 are supported");
    // This group's index: its rank 0's rank among the leaders (0: none).
    const std::uint64_t mine_leader =
        s.leaders ? static_cast<std::uint64_t>(s.leaders->rank() + 1) : 0;
    const auto in_group = s.group.allgather(mine_leader);
    const std::uint64_t leaders_size = s.leaders ? static_cast<std::uint64_t>(s.leaders->size()) : 0;
    const std::uint64_t word = (in_group[0] & 0xFFFF) | (static_cast<std::uint64_t>(grank) << 16) |
                               (static_cast<std::uint64_t>(gsize) << 32) |
                               ((leaders_size & 0x7FFF) << 48) |
                               (std::uint64_t{s.leaders.has_value()} << 63);
    const auto all = s.world.allgather(word);
    struct place {
      int group, rank, size, leaders;
      bool leader;
    };
    std::vector<place> p(static_cast<std::size_t>(n));
    int groups = -1;
    for (int r = 0; r < n; ++r) {
      const auto w = all[static_cast<std::size_t>(r)];
      auto& q = p[static_cast<std::size_t>(r)];
      q = {static_cast<int>(w & 0xFFFF) - 1, static_cast<int>((w >> 16) & 0xFFFF),
           static_cast<int>((w >> 32) & 0xFFFF), static_cast<int>((w >> 48) & 0x7FFF),
           (w >> 63) != 0};
      DASGD_REQUIRE(q.leader == (q.rank == 0), config_error, "hierarchical communicator: world rank ",
                    r, " is rank ", q.rank, " of its group but ",
                    q.leader ? "holds" : "does not hold",
                    " a leaders' communicator; exactly group rank 0 must hold one");
      DASGD_REQUIRE(q.group >= 0, config_error, "hierarchical communicator: world rank ", r,
                    ": its group's rank 0 holds no leaders' communicator");
      if (q.leader) {
        DASGD_REQUIRE(groups < 0 || groups == q.leaders, config_error,
                      "hierarchical communicator: world rank ", r, " sees ", q.leaders,
                      " group leaders but another leader sees ", groups);
        groups = q.leaders;
      }
    }
    DASGD_REQUIRE(groups >= 1, config_error, "hierarchical communicator: no group has a leader");
    std::vector<std::vector<int>> members(static_cast<std::size_t>(groups));
    for (int r = 0; r < n; ++r) {
      const auto& q = p[static_cast<std::size_t>(r)];
      DASGD_REQUIRE(q.group < groups, config_error, "hierarchical communicator: world rank ", r,
                    " is in group ", q.group, ", outside [0, ", groups, ")");
      auto& m = members[static_cast<std::size_t>(q.group)];
      if (m.size() < static_cast<std::size_t>(q.size)) m.resize(static_cast<std::size_t>(q.size), -1);
      DASGD_REQUIRE(q.rank < q.size && static_cast<std::size_t>(q.size) == m.size() &&
                        m[static_cast<std::size_t>(q.rank)] < 0,
                    config_error, "hierarchical communicator: world rank ", r, " claims rank ",
                    q.rank, " of group ", q.group, " of size ", q.size,
                    ", which disagrees with the group's other members");
      m[static_cast<std::size_t>(q.rank)] = r;
    }
    for (int g = 0; g < groups; ++g) {
      const auto& m = members[static_cast<std::size_t>(g)];
      DASGD_REQUIRE(!m.empty() && std::find(m.begin(), m.end(), -1) == m.end(), config_error,
                    "hierarchical communicator: group ", g, " is missing members");
      if (s.options.outer == outer_average::chained)
        DASGD_REQUIRE(m.size() == members[0].size(), config_error,
                      "hierarchical communicator: group ", g, " has ", m.size(),
                      " ranks (world ranks ", list(m), ") but group 0 has ", members[0].size(),
                      " (world ranks ", list(members[0]),
                      "); the chained average across groups averages group means and needs "
                      "groups of equal size (use outer_average::world)");
    }
    s.layout.group = p[static_cast<std::size_t>(s.world.rank())].group;
    s.layout.groups = groups;
    s.layout.group_rank = grank;
    s.layout.members = std::move(members);
  }

  static std::string list(const std::vector<int>& v) {
    std::string out;
    for (int x : v) out += (out.empty() ? "" : ", ") + std::to_string(x);
    return out;
  }

  std::shared_ptr<detail::hier_state<Sub>> state_;
};

}  // namespace dasgd::comm
