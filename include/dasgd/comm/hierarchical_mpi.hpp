// MPI hierarchy (link dasgd::mpi): groups by shared-memory node
// (MPI_Comm_split_type(MPI_COMM_TYPE_SHARED)) or by a colour the caller
// gives, e.g. to fake two "nodes" on one machine in tests and benchmarks:
//
//   auto comm = dasgd::comm::mpi_hierarchy_by_node();                   // real nodes
//   auto comm = dasgd::comm::mpi_hierarchy_by_colour(rank / 2);         // 2 ranks per group
//
// Both are collective over `base`. They build three mpi_communicators (each
// a duplicate with its own progress thread, mpi_options applying to all):
// the world (a dup of base), the group (scopes enabled) and, on group rank 0
// only, the leaders (MPI_Comm_split of the group ranks 0, ordered by base
// rank). Groups are ordered by their lowest base rank.
#pragma once

#include "detail/mpi_header.hpp"

#include <optional>
#include <utility>

#include "../core/error.hpp"
#include "detail/mpi_error.hpp"
#include "hierarchical.hpp"
#include "mpi.hpp"

namespace dasgd::comm {

using mpi_hierarchical_communicator = hierarchical_communicator<mpi_communicator>;

namespace detail {

/// Builds the hierarchy from `group` (freed here), this rank's group of base.
inline mpi_hierarchical_communicator mpi_hierarchy_from(MPI_Comm base, MPI_Comm group,
                                                        mpi_options options,
                                                        hierarchical_options hierarchy) {
  struct freer {
    MPI_Comm c;
    ~freer() {
      if (c != MPI_COMM_NULL) MPI_Comm_free(&c);
    }
  } g{group}, l{MPI_COMM_NULL};
  int base_rank = 0, group_rank = 0;
  DASGD_MPI_CHECK(MPI_Comm_rank, base, &base_rank);
  DASGD_MPI_CHECK(MPI_Comm_rank, group, &group_rank);
  // Order the groups by their lowest base rank: the leaders split's key.
  int lowest = base_rank;
  DASGD_MPI_CHECK(MPI_Allreduce, MPI_IN_PLACE, &lowest, 1, MPI_INT, MPI_MIN, group);
  DASGD_MPI_CHECK(MPI_Comm_split, base, group_rank == 0 ? 0 : MPI_UNDEFINED, lowest, &l.c);
  mpi_options scoped = options;
  scoped.scoped = true;
  mpi_communicator world(base, options);
  mpi_communicator mine(group, scoped);
  std::optional<mpi_communicator> leaders;
  if (l.c != MPI_COMM_NULL) leaders.emplace(l.c, options);
  return mpi_hierarchical_communicator(std::move(world), std::move(mine), std::move(leaders),
                                       hierarchy);
}

}  // namespace detail

/// Groups of the ranks of `base` that share a node's memory.
inline mpi_hierarchical_communicator mpi_hierarchy_by_node(MPI_Comm base = MPI_COMM_WORLD,
                                                           mpi_options options = {},
                                                           hierarchical_options hierarchy = {}) {
  DASGD_REQUIRE(detail::mpi_is_initialized() && !detail::mpi_is_finalized(), config_error,
                "MPI is not initialized (create a dasgd::comm::mpi_environment first)");
  int rank = 0;
  DASGD_MPI_CHECK(MPI_Comm_rank, base, &rank);
  MPI_Comm group = MPI_COMM_NULL;
  DASGD_MPI_CHECK(MPI_Comm_split_type, base, MPI_COMM_TYPE_SHARED, rank, MPI_INFO_NULL, &group);
  return detail::mpi_hierarchy_from(base, group, options, hierarchy);
}

/// Groups of the ranks of `base` that pass the same colour (>= 0).
inline mpi_hierarchical_communicator mpi_hierarchy_by_colour(int colour,
                                                             MPI_Comm base = MPI_COMM_WORLD,
                                                             mpi_options options = {},
                                                             hierarchical_options hierarchy = {}) {
  DASGD_REQUIRE(detail::mpi_is_initialized() && !detail::mpi_is_finalized(), config_error,
                "MPI is not initialized (create a dasgd::comm::mpi_environment first)");
  // A negative colour would be MPI_UNDEFINED on some ranks: no group at all.
  DASGD_REQUIRE(colour >= 0, config_error, "hierarchy colour must be >= 0, got ", colour);
  int rank = 0;
  DASGD_MPI_CHECK(MPI_Comm_rank, base, &rank);
  MPI_Comm group = MPI_COMM_NULL;
  DASGD_MPI_CHECK(MPI_Comm_split, base, colour, rank, &group);
  return detail::mpi_hierarchy_from(base, group, options, hierarchy);
}

static_assert(communicator<mpi_hierarchical_communicator, float>);
static_assert(communicator<mpi_hierarchical_communicator, double>);

}  // namespace dasgd::comm
