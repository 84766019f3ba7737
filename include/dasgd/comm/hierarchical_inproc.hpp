// In-process hierarchy: the threads of one process split into groups.
//
//   dasgd::comm::inproc_hierarchy h({0, 0, 1, 1});   // world rank -> group colour
//   dasgd::comm::run_workers(h, [&](auto comm) { ... delayed_averager(params, std::move(comm), policy::hierarchical{...}, ...) });
//
// One flat in-process group spans the world (construction checks,
// broadcasts), one per group (scopes enabled: a group round and an
// across-groups round meeting there are a mismatch) and one the leaders
// (group rank 0 of each group). Groups are ordered by their lowest world
// rank, members by world rank. communicator(rank) is collective (it checks
// the layout over the world): run_workers calls it on each rank's thread.
// abort() aborts every level, so a worker that fails releases the ranks
// waiting in any group (run_workers calls it). A timeout aborts the level it
// happened on; the other levels learn of it when the failing worker's
// exception reaches run_workers.
#pragma once

#include <algorithm>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "../core/error.hpp"
#include "hierarchical.hpp"
#include "inproc.hpp"

namespace dasgd::comm {

class inproc_hierarchy {
 public:
  using communicator_type = hierarchical_communicator<inproc_communicator>;

  /// colour_of_rank[r]: the group of world rank r (ranks with equal colours
  /// form a group).
  explicit inproc_hierarchy(std::vector<int> colour_of_rank, inproc_options options = {},
                            hierarchical_options hierarchy = {})
      : world_(static_cast<int>(colour_of_rank.size()), options), hierarchy_(hierarchy) {
    const int n = static_cast<int>(colour_of_rank.size());
    std::map<int, int> first;  // colour -> lowest world rank
    for (int r = n - 1; r >= 0; --r) first[colour_of_rank[static_cast<std::size_t>(r)]] = r;
    std::vector<std::pair<int, int>> order;  // (lowest rank, colour)
    for (auto [c, r] : first) order.emplace_back(r, c);
    std::sort(order.begin(), order.end());
    std::map<int, int> index;
    for (std::size_t g = 0; g < order.size(); ++g) index[order[g].second] = static_cast<int>(g);
    members_.resize(order.size());
    place_.resize(static_cast<std::size_t>(n));
    for (int r = 0; r < n; ++r) {
      const int g = index[colour_of_rank[static_cast<std::size_t>(r)]];
      place_[static_cast<std::size_t>(r)] = {g, static_cast<int>(members_[static_cast<std::size_t>(g)].size())};
      members_[static_cast<std::size_t>(g)].push_back(r);
    }
    for (const auto& m : members_)
      groups_.push_back(std::make_shared<detail::inproc_state>(static_cast<int>(m.size()), options, true));
    leaders_ = std::make_shared<detail::inproc_state>(static_cast<int>(members_.size()), options);
  }

  /// `groups` groups of consecutive ranks, `size / groups` each.
  static inproc_hierarchy blocks(int size, int groups, inproc_options options = {},
                                 hierarchical_options hierarchy = {}) {
    DASGD_REQUIRE(groups >= 1 && size >= 1 && size % groups == 0, config_error,
                  "in-process hierarchy: ", size, " ranks cannot form ", groups,
                  " groups of equal size");
    std::vector<int> colours(static_cast<std::size_t>(size));
    for (int r = 0; r < size; ++r) colours[static_cast<std::size_t>(r)] = r / (size / groups);
    return inproc_hierarchy(std::move(colours), options, hierarchy);
  }

  int size() const { return world_.size(); }
  int groups() const { return static_cast<int>(members_.size()); }
  const std::vector<std::vector<int>>& members() const noexcept { return members_; }

  /// World rank `rank`'s communicator. Collective: call it on every rank.
  communicator_type communicator(int rank) const {
    auto world = world_.communicator(rank);
    const auto [g, gr] = place_.at(static_cast<std::size_t>(rank));
    inproc_communicator group(groups_[static_cast<std::size_t>(g)], gr);
    std::optional<inproc_communicator> leaders;
    if (gr == 0) leaders.emplace(leaders_, g);
    return communicator_type(std::move(world), std::move(group), std::move(leaders), hierarchy_);
  }

  /// Fails every pending and future collective on every level.
  void abort(const std::string& reason) {
    world_.abort(reason);
    for (auto& g : groups_) g->abort(reason);
    leaders_->abort(reason);
  }

 private:
  struct place {
    int group, rank;
  };
  inproc_group world_;
  hierarchical_options hierarchy_;
  std::vector<std::vector<int>> members_;
  std::vector<place> place_;
  std::vector<std::shared_ptr<detail::inproc_state>> groups_;
  std::shared_ptr<detail::inproc_state> leaders_;
};

static_assert(communicator<hierarchical_communicator<inproc_communicator>, float>);
static_assert(communicator<hierarchical_communicator<inproc_communicator>, double>);

}  // namespace dasgd::comm
