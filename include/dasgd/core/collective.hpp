// What every collective carries across ranks: its purpose, the trainer's
// sequence number, a value to agree on and a status word (the signature),
// and what the signatures of all ranks combine to (the agreement).
//
// Communicators exchange one signature_record per rank before (or with) the
// data of a collective and fail the collective on every rank when the
// records disagree: a rank that calls synchronize() while its peers still
// step, or that is one collective ahead, is an error everywhere instead of
// a silent pairing of unrelated buffers (docs/design.md section 4).
#pragma once

#include <algorithm>
#include <cstdint>
#include <exception>
#include <span>
#include <string>

#include "error.hpp"

namespace dasgd {

/// What a collective is for.
enum class collective_purpose : std::uint32_t {
  step_average = 1,  ///< the delayed average of a round's snapshots
  synchronize = 2,   ///< delayed_averager::synchronize()
  broadcast = 3,     ///< delayed_averager::broadcast_parameters(root)
  check = 4,         ///< construction-time consistency checks
};

inline const char* to_string(collective_purpose p) {
  switch (p) {
    case collective_purpose::step_average: return "step average";
    case collective_purpose::synchronize: return "synchronize";
    case collective_purpose::broadcast: return "broadcast";
    case collective_purpose::check: return "consistency check";
  }
  return "unknown collective";
}

/// Identifies one collective. Every rank must issue collectives with equal
/// purpose, sequence, element count, element type and root, in one order.
struct collective_signature {
  collective_purpose purpose = collective_purpose::step_average;
  std::uint64_t sequence = 0;       ///< the trainer's count of collectives issued before this one
  std::int64_t proposal = 0;        ///< a per-rank value; min and max over ranks are reported
  std::uint32_t status = 0;         ///< per-rank status word (0: ok); see status_code
  std::uint32_t status_detail = 0;  ///< e.g. index of the first tensor with a non-finite value
  /// Which ranks take part: 0 = all of them; a hierarchical communicator
  /// gives other values a meaning (1: this rank's group). Flat
  /// communicators reject anything but 0.
  std::uint32_t scope = 0;
};

/// Status words the trainer puts in a signature.
namespace status_code {
inline constexpr std::uint32_t ok = 0;
inline constexpr std::uint32_t nonfinite_snapshot = 1;  ///< detail: tensor index
}  // namespace status_code

/// What the signatures of all ranks combine to; valid once the collective
/// has completed.
struct collective_agreement {
  std::int64_t min_proposal = 0;
  std::int64_t max_proposal = 0;
  int status_rank = -1;             ///< lowest rank whose status != 0, or -1
  std::uint32_t status = 0;         ///< that rank's status
  std::uint32_t status_detail = 0;  ///< and its detail
};

namespace detail {

/// One rank's contribution to the signature exchange: 7 words on the wire.
struct signature_record {
  collective_purpose purpose = collective_purpose::step_average;
  std::uint64_t sequence = 0;
  std::uint64_t count = 0;
  std::uint32_t type_id = 0;
  std::int32_t root = -1;  ///< broadcast root, -1 otherwise
  std::uint32_t scope = 0;
  std::int64_t proposal = 0;
  std::uint32_t status = 0;
  std::uint32_t status_detail = 0;

  static constexpr std::size_t words = 7;

  static signature_record of(const collective_signature& s, std::uint64_t count,
                             std::uint32_t type_id, int root = -1) {
    return {s.purpose, s.sequence, count, type_id, root, s.scope, s.proposal, s.status, s.status_detail};
  }

  void pack(std::uint64_t* out) const {
    out[0] = static_cast<std::uint64_t>(purpose);
    out[1] = sequence;
    out[2] = count;
    out[3] = type_id;
    out[4] = (static_cast<std::uint64_t>(scope) << 32) | static_cast<std::uint32_t>(root);
    out[5] = static_cast<std::uint64_t>(proposal);
    out[6] = (static_cast<std::uint64_t>(status) << 32) | status_detail;
  }
  static signature_record unpack(const std::uint64_t* in) {
    signature_record r;
    r.purpose = static_cast<collective_purpose>(in[0]);
    r.sequence = in[1];
    r.count = in[2];
    r.type_id = static_cast<std::uint32_t>(in[3]);
    r.root = static_cast<std::int32_t>(static_cast<std::uint32_t>(in[4] & 0xFFFFFFFFu));
    r.scope = static_cast<std::uint32_t>(in[4] >> 32);
    r.proposal = static_cast<std::int64_t>(in[5]);
    r.status = static_cast<std::uint32_t>(in[6] >> 32);
    r.status_detail = static_cast<std::uint32_t>(in[6] & 0xFFFFFFFFu);
    return r;
  }
};

inline const char* element_type_name(std::uint32_t id) {
  switch (id) {
    case 1: return "float";
    case 2: return "double";
    case 3: return "half";
    case 4: return "bfloat16";
    default: return "other-type";
  }
}

inline std::string describe(const signature_record& r) {
  std::string s = concat(to_string(r.purpose), " #", r.sequence, " of ", r.count, " ",
                         element_type_name(r.type_id), " elements");
  if (r.purpose == collective_purpose::broadcast) s += concat(" from root ", r.root);
  if (r.scope != 0) s += concat(" in scope ", r.scope);
  return s;
}

/// The error this rank raises when the records disagree (comm_error, or
/// size_mismatch_error when only counts or element types differ), naming
/// both ranks and what each issued; nullptr when they agree. Every rank
/// sees the same records, so every rank reaches the same verdict.
inline std::exception_ptr check_signatures(std::span<const signature_record> all, int me,
                                           const char* where) {
  const auto& mine = all[static_cast<std::size_t>(me)];
  for (std::size_t r = 0; r < all.size(); ++r) {
    const auto& other = all[r];
    const bool same_op = other.purpose == mine.purpose && other.sequence == mine.sequence &&
                         other.root == mine.root && other.scope == mine.scope;
    const bool same_data = other.count == mine.count && other.type_id == mine.type_id;
    if (same_op && same_data) continue;
    if (same_op)
      return std::make_exception_ptr(size_mismatch_error(
          concat(where, " #", mine.sequence, " (", to_string(mine.purpose),
                 "): buffer sizes or element types differ across ranks: rank ", me, " sent ",
                 mine.count, " ", element_type_name(mine.type_id), " elements, rank ", r,
                 " sent ", other.count, " ", element_type_name(other.type_id), " elements"),
          __FILE__, __LINE__));
    return std::make_exception_ptr(comm_error(
        concat(where, ": collectives differ across ranks: rank ", me, " issued ", describe(mine),
               ", rank ", r, " issued ", describe(other),
               "; every rank must issue the same collectives in the same order"),
        __FILE__, __LINE__));
  }
  for (std::size_t r = 0; r < all.size(); ++r) {
    if (all[r].root != -1 && (all[r].root < 0 || all[r].root >= static_cast<int>(all.size())))
      return std::make_exception_ptr(config_error(
          concat(where, ": broadcast root ", all[r].root, " is outside [0, ", all.size(), ")"),
          __FILE__, __LINE__));
  }
  return nullptr;
}

/// Flat communicators: every collective spans all ranks.
inline void require_flat_scope(const collective_signature& s, const char* communicator) {
  DASGD_REQUIRE(s.scope == 0, config_error, communicator, " has a single level, but a collective ",
                "asks for scope ", s.scope,
                "; group scopes need a hierarchical communicator (comm/hierarchical.hpp)");
}

inline collective_agreement combine(std::span<const signature_record> all) {
  collective_agreement a;
  if (all.empty()) return a;
  a.min_proposal = a.max_proposal = all[0].proposal;
  for (std::size_t r = 0; r < all.size(); ++r) {
    a.min_proposal = std::min(a.min_proposal, all[r].proposal);
    a.max_proposal = std::max(a.max_proposal, all[r].proposal);
    if (a.status_rank < 0 && all[r].status != status_code::ok) {
      a.status_rank = static_cast<int>(r);
      a.status = all[r].status;
      a.status_detail = all[r].status_detail;
    }
  }
  return a;
}

}  // namespace detail
}  // namespace dasgd
