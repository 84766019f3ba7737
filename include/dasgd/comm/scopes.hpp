// The values of collective_signature::scope / round_plan::scope that
// hierarchical communicators (comm/hierarchical.hpp) and hierarchical
// policies (policy/hierarchical.hpp) share. Kept apart so that a policy
// need not include a communicator.
#pragma once

#include <cstdint>

namespace dasgd::comm {

/// Every rank of the world (the only scope a flat communicator accepts).
inline constexpr std::uint32_t world_scope = 0;
/// This rank's group (a node): the fast link.
inline constexpr std::uint32_t group_scope = 1;

}  // namespace dasgd::comm
