// wire_format<W, Inner>: send and average the snapshots as W (e.g.
// __nv_bfloat16 or __half: half the bytes of fp32) over any communicator.
//
//   using comm_t = dasgd::comm::wire_format<__nv_bfloat16, dasgd::comm::mpi_communicator>;
//   dasgd::delayed_averager trainer(params, comm_t(dasgd::comm::mpi_communicator()), ...);
//
// The trainer keeps its snapshot and average arenas in W: the conversion
// to W is fused into the pass that writes the snapshot (no extra pass over
// memory), and the merge reads W. The inner communicator reduces W in fp32
// where it can: in-process in double; MPI with a user-defined operation on
// 16-bit words that adds in fp32 and rounds once per partial sum (an
// allreduce over n ranks rounds up to n - 1 times); NCCL natively.
//
// The adaptor itself forwards every call; only its wire_type is read by
// the trainer (docs/design.md section 6).
#pragma once

#include <optional>
#include <span>
#include <type_traits>
#include <utility>
#include <vector>

#include "../core/communicator.hpp"
#include "../core/precision.hpp"

namespace dasgd::comm {

template <class W, class Inner>
  requires storage_type<W>
class wire_format {
 public:
  using wire_type = W;
  using inner_type = Inner;
  using request_type = typename Inner::request_type;
  using memory_space = comm_memory_space_t<Inner>;

  explicit wire_format(Inner inner) : inner_(std::move(inner)) {}

  int size() const { return inner_.size(); }
  int rank() const { return inner_.rank(); }

  template <storage_type T>
  request_type iallreduce_average(std::span<const T> send, std::span<T> recv,
                                  const collective_signature& sig = {}) {
    return inner_.iallreduce_average(send, recv, sig);
  }
  template <storage_type T>
  request_type ibroadcast(std::span<const T> send, std::span<T> recv, int root,
                          const collective_signature& sig) {
    return inner_.ibroadcast(send, recv, root, sig);
  }
  std::vector<std::uint64_t> allgather(std::uint64_t v) { return inner_.allgather(v); }

  void check_health()
    requires requires(Inner& i) { i.check_health(); }
  {
    inner_.check_health();
  }
  auto compute_stream() const
    requires requires(const Inner& i) { i.compute_stream(); }
  {
    return inner_.compute_stream();
  }

  Inner& inner() noexcept { return inner_; }
  const Inner& inner() const noexcept { return inner_; }

 private:
  Inner inner_;
};

}  // namespace dasgd::comm
