// The communicator concept (Aluminum style: a backend type with a nested
// request type, non-blocking collectives and explicit test/wait).
//
// iallreduce_average(send, recv, signature) starts an out-of-place average
// of `send` across all ranks into `recv` and returns at once; ibroadcast
// (send, recv, root, signature) copies the root's `send` into every rank's
// `recv`. The caller must not modify `send` nor read `recv` until the
// request completes. Collectives must be issued in the same order on every
// rank, and each carries a signature (core/collective.hpp) that the
// communicator compares across ranks: a mismatch fails the collective on
// every rank. A communicator whose buffers live on a device must order the
// collective after the work already queued on the compute stream (the
// trainer does not synchronize the host).
//
// Optional members the trainer uses when present:
//  - check_health(): throws the communicator's latched failure, if any (a
//    device communicator aborted after a wait was handed to the stream);
//  - compute_stream(): must equal the backend's stream() (checked).
//  - request::duration_seconds() -> std::optional<double>: how long the
//    collective itself took, where a host wait does not show it.
#pragma once

#include <concepts>
#include <cstdint>
#include <span>
#include <type_traits>
#include <vector>

#include "collective.hpp"
#include "tensor.hpp"

namespace dasgd {

/// A handle to one non-blocking operation.
///  - test(): never blocks; drives progress where the backend needs it;
///    true once the result may be consumed. Throws comm_error on failure.
///  - wait(): returns when the result may be consumed (for device
///    communicators: when work queued after it on the compute stream will
///    see it). Throws timeout_error/comm_error instead of hanging.
///  - agreement(): what the ranks' signatures combine to (valid once the
///    request has completed).
template <class R>
concept request = std::movable<R> && requires(R& r) {
  { r.test() } -> std::convertible_to<bool>;
  r.wait();
  { r.agreement() } -> std::convertible_to<collective_agreement>;
};

namespace detail {
template <class C>
struct comm_memory_space { using type = host_space; };
template <class C>
  requires requires { typename C::memory_space; }
struct comm_memory_space<C> { using type = typename C::memory_space; };
}  // namespace detail

/// Where a communicator's buffers must live (host_space unless it says).
template <class C>
using comm_memory_space_t = typename detail::comm_memory_space<C>::type;

namespace detail {
template <class C>
struct comm_wire_type {
  using type = void;
};
template <class C>
  requires requires { typename C::wire_type; }
struct comm_wire_type<C> {
  using type = typename C::wire_type;
};
}  // namespace detail

/// The element type a communicator wants the snapshots sent in
/// (comm::wire_format), or void: the trainer then sends the storage type
/// (the compute type with master weights).
template <class C>
using comm_wire_type_t = typename detail::comm_wire_type<C>::type;

/// A group of ranks that can average buffers of element type T.
template <class C, class T = float>
concept communicator =
    std::movable<C> &&
    requires(C& c, const C& cc, std::span<const T> send, std::span<T> recv, std::uint64_t v,
             const collective_signature& sig, int root) {
      typename C::request_type;
      requires request<typename C::request_type>;
      { cc.size() } -> std::convertible_to<int>;
      { cc.rank() } -> std::convertible_to<int>;
      { c.iallreduce_average(send, recv, sig) } -> std::same_as<typename C::request_type>;
      { c.ibroadcast(send, recv, root, sig) } -> std::same_as<typename C::request_type>;
      // Blocking gather of one value from every rank, in rank order: used to
      // check that all ranks agree on parameter shapes before training.
      { c.allgather(v) } -> std::same_as<std::vector<std::uint64_t>>;
    };

}  // namespace dasgd
