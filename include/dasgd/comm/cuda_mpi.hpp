// Device tensors over MPI, by whichever route the MPI allows:
//  - device_direct (a CUDA-aware MPI): the snapshot is copied, on the
//    device, into a device staging buffer that MPI sums in place
//    (MPI_Iallreduce on the device pointer); a kernel then writes
//    recv = sum / size. No host copy on dasgd's side: the MPI moves device
//    memory itself (GPUDirect RDMA, CUDA IPC, or its own pipelining).
//  - host_staged (any MPI): comm/host_staged.hpp's pinned-memory pipeline.
// Both run on the staging engine of host_staged.hpp: the same ordering
// against the compute stream (E0 on the compute stream, the staging
// stream's copy, the staging thread's wait for it, the inner collective,
// then the copy or kernel back and the event the merge waits on), the same
// failure latching and timeouts, the same guarantee that a dropped request
// never writes its `recv`.
//
// 16-bit storage on the direct route is widened to fp32 on the device and
// summed by MPI as MPI_FLOAT (twice the bytes of the 16-bit words, one
// rounding at the end): an MPI reduction operation of dasgd's own runs on
// the host and must not be handed device memory. On the host route 16-bit
// words travel as they are and are summed in fp32 by that host operation.
//
// The route is chosen at construction from mpi_device_pointers and what
// the MPI reports (detail/mpi_cuda_support.hpp); every rank must arrive at
// the same one (checked: constructing is collective). The direct route's
// staging buffer is shared with the MPI collective that works on it, so
// it outlives a request that is dropped or times out.
//
// Runtime: the CUDA calls of detail/cuda_runtime.hpp plus launch_widen,
// launch_scale and mpi_support(); kernels/cuda/cuda_mpi_runtime.cuh has the
// real one (and the alias comm::cuda_mpi_communicator), the tests a host
// fake.
#pragma once

#include <cuda_runtime_api.h>

#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include "../core/collective.hpp"
#include "../core/communicator.hpp"
#include "../core/error.hpp"
#include "../core/precision.hpp"
#include "../core/tensor.hpp"
#include "detail/mpi_cuda_support.hpp"
#include "host_staged.hpp"
#include "mpi.hpp"

namespace dasgd::comm {

/// Whether device pointers go to MPI.
enum class mpi_device_pointers {
  automatic,  ///< when the MPI reports that it is CUDA-aware; else host staging
  never,      ///< always stage through pinned host memory
  /// Always; for MPIs that cannot be asked (MPICH, MVAPICH, Cray MPICH with
  /// GPU support enabled). Refused where the MPI reports it is not CUDA-aware.
  always,
};

/// How a cuda_mpi_communicator moves device tensors.
enum class cuda_mpi_route { host_staged, device_direct };

inline const char* to_string(cuda_mpi_route r) {
  return r == cuda_mpi_route::device_direct ? "device_direct" : "host_staged";
}

struct cuda_mpi_options {
  /// The staging's copy timeout and poll interval (both routes).
  host_staged_options staging{};
  mpi_device_pointers device_pointers = mpi_device_pointers::automatic;
};

/// The route for what was asked and what the MPI reports, on `rank`.
inline cuda_mpi_route choose_cuda_mpi_route(mpi_device_pointers asked, mpi_cuda_support mpi, int rank) {
  switch (asked) {
    case mpi_device_pointers::never: return cuda_mpi_route::host_staged;
    case mpi_device_pointers::automatic:
      return mpi == mpi_cuda_support::yes ? cuda_mpi_route::device_direct : cuda_mpi_route::host_staged;
    case mpi_device_pointers::always:
      DASGD_REQUIRE(mpi != mpi_cuda_support::no, config_error, "cuda_mpi_communicator (rank ", rank,
                    "): mpi_device_pointers::always asks MPI to take device pointers, but this MPI reports that it "
                    "is not CUDA-aware (MPIX_Query_cuda_support() returned 0), so it would dereference device "
                    "memory on the host. Use mpi_device_pointers::automatic or never, or an MPI built with CUDA "
                    "support");
      return cuda_mpi_route::device_direct;
  }
  DASGD_THROW(config_error, "cuda_mpi_communicator (rank ", rank, "): unknown mpi_device_pointers value ",
              static_cast<int>(asked));
}

namespace detail {

/// The direct route: device staging buffers that MPI works on in place.
template <class Cuda>
struct device_route {
  using job = staged_job<mpi_communicator, Cuda>;

  /// What a storage type travels as: itself, or fp32 for 16-bit words.
  template <class V>
  using wire = std::conditional_t<std::is_same_v<V, float> || std::is_same_v<V, double>, V, float>;

  template <class V>
  static std::shared_ptr<job> average(const V* send, V* recv, std::size_t n, int size,
                                      const collective_signature& sig) {
    using W = wire<V>;
    auto j = std::make_shared<job>();
    j->what = job::kind::average;
    j->bytes = n * sizeof(V);
    j->slot_bytes = n * sizeof(W);
    j->in_place = true;
    if constexpr (std::is_same_v<V, W>) {
      j->stage_in = copy_in(send, j->bytes);
      j->stage_in_call = "cudaMemcpyAsync (snapshot to the device staging buffer)";
    } else {
      j->stage_in = [send, n](void* slot, cudaStream_t s) {
        return Cuda::template launch_widen<V>(send, static_cast<float*>(slot), n, s);
      };
      j->stage_in_call = "the widening kernel (16-bit snapshot to fp32 staging)";
    }
    j->start = [n, sig](mpi_communicator& c, void* slot, void*, const std::shared_ptr<void>& owner) {
      return c.iallreduce_sum_in_place(std::span<W>(static_cast<W*>(slot), n), owner, sig);
    };
    j->stage_out = [recv, n, inv = W(1) / static_cast<W>(size)](const void* slot, cudaStream_t s) {
      return Cuda::template launch_scale<V, W>(static_cast<const W*>(slot), recv, n, inv, s);
    };
    j->stage_out_call = "the scaling kernel (average = sum / size)";
    return j;
  }

  template <class V>
  static std::shared_ptr<job> broadcast(const V* send, V* recv, std::size_t n, int root,
                                        const collective_signature& sig) {
    auto j = std::make_shared<job>();
    j->what = job::kind::broadcast;
    j->bytes = j->slot_bytes = n * sizeof(V);
    j->in_place = true;
    j->stage_in = copy_in(send, j->bytes);
    j->stage_in_call = "cudaMemcpyAsync (broadcast source to the device staging buffer)";
    j->start = [n, root, sig](mpi_communicator& c, void* slot, void*, const std::shared_ptr<void>& owner) {
      return c.ibroadcast_in_place(std::span<V>(static_cast<V*>(slot), n), root, owner, sig);
    };
    j->stage_out = [recv, bytes = j->bytes](const void* slot, cudaStream_t s) {
      return Cuda::memcpy_async(recv, slot, bytes, cudaMemcpyDeviceToDevice, s);
    };
    j->stage_out_call = "cudaMemcpyAsync (broadcast result to device memory)";
    return j;
  }

 private:
  /// A stage-in that copies `send` into the staging buffer as it is.
  static auto copy_in(const void* send, std::size_t bytes) {
    return [send, bytes](void* slot, cudaStream_t s) {
      return Cuda::memcpy_async(slot, send, bytes, cudaMemcpyDeviceToDevice, s);
    };
  }
};

}  // namespace detail

/// A communicator for device buffers over MPI (models dasgd::communicator
/// with memory_space = device_space). `compute` must be the stream the
/// backend writes snapshots on (the trainer checks it). Constructing it is
/// collective: the ranks compare their routes. Move-only.
template <class Cuda>
class basic_cuda_mpi_communicator {
 public:
  using request_type = basic_host_staged_request<mpi_communicator, Cuda>;
  using memory_space = device_space;

  basic_cuda_mpi_communicator(mpi_communicator inner, cudaStream_t compute, cuda_mpi_options options = {})
      : route_(choose_cuda_mpi_route(options.device_pointers, Cuda::mpi_support(), inner.rank())),
        engine_(std::make_shared<engine_type>(std::move(inner), compute, options.staging,
                                              route_ == cuda_mpi_route::device_direct
                                                  ? detail::staging_memory::device
                                                  : detail::staging_memory::pinned_host,
                                              route_ == cuda_mpi_route::device_direct
                                                  ? "cuda_mpi_communicator (device_direct)"
                                                  : "cuda_mpi_communicator (host_staged)")) {
    require_same_route();
  }

  int size() const { return engine().size(); }
  int rank() const { return engine().rank(); }
  cudaStream_t compute_stream() const { return engine().compute_stream(); }
  cuda_mpi_route route() const noexcept { return route_; }
  /// Throws the latched failure, if any.
  void check_health() { engine().check_health(); }

  template <storage_type T>
  request_type iallreduce_average(std::span<const T> send, std::span<T> recv, const collective_signature& sig = {}) {
    using V = std::remove_cv_t<T>;
    detail::check_staged_average(send.size(), recv.size(), rank());
    if (route_ == cuda_mpi_route::device_direct)
      return post(direct::template average<V>(send.data(), recv.data(), send.size(), size(), sig));
    return post(staged::template average<V>(send.data(), recv.data(), send.size(), sig));
  }

  template <storage_type T>
  request_type ibroadcast(std::span<const T> send, std::span<T> recv, int root, const collective_signature& sig) {
    using V = std::remove_cv_t<T>;
    detail::check_staged_broadcast(send.size(), recv.size(), root, rank(), size());
    if (route_ == cuda_mpi_route::device_direct)
      return post(direct::template broadcast<V>(send.data(), recv.data(), send.size(), root, sig));
    return post(staged::template broadcast<V>(send.data(), recv.data(), send.size(), root, sig));
  }

  std::vector<std::uint64_t> allgather(std::uint64_t value) { return engine().allgather(value); }

 private:
  using engine_type = detail::staging_engine<mpi_communicator, Cuda>;
  using direct = detail::device_route<Cuda>;
  using staged = detail::host_route<mpi_communicator, Cuda>;

  request_type post(std::shared_ptr<typename engine_type::job> j) {
    return request_type(engine_, engine().post(std::move(j)));
  }

  /// A job whose ranks took different routes would fail every 16-bit
  /// average with a type mismatch; say why once, at construction.
  void require_same_route() {
    const auto routes = engine().allgather(static_cast<std::uint64_t>(route_));
    std::string table;
    bool same = true;
    for (std::size_t r = 0; r < routes.size(); ++r) {
      same = same && routes[r] == routes[0];
      table += ::dasgd::detail::concat(r == 0 ? "" : ", ", "rank ", r, ": ",
                                       to_string(static_cast<cuda_mpi_route>(routes[r])));
    }
    DASGD_REQUIRE(same, config_error, "cuda_mpi_communicator (rank ", rank(),
                  "): the ranks chose different routes for device tensors (", table,
                  "); their MPI libraries disagree on CUDA support. Set the same mpi_device_pointers on every rank "
                  "(never works everywhere)");
  }

  engine_type& engine() const {
    DASGD_REQUIRE(engine_ != nullptr, state_error, "this cuda_mpi_communicator was moved from");
    return *engine_;
  }

  cuda_mpi_route route_;
  std::shared_ptr<engine_type> engine_;
};

}  // namespace dasgd::comm
