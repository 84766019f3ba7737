// In-process ranks on GPUs: one thread per rank in one process (one GPU
// each, or several threads sharing one GPU), averaging device buffers on
// the device with no MPI and no NCCL. Models dasgd::communicator with
// memory_space = device_space; the single-node multi-GPU trainer's
// communicator, and the simplest way to run several GPU workers on one GPU.
//
// basic_device_group<Api> makes every CUDA call through Api: the CUDA calls
// of comm/detail/cuda_runtime.hpp plus launch_average<T>() and a
// device-to-device copy. kernels/cuda/device_group_runtime.cuh supplies
// the real one (a kernel; include it from a .cu file) as
// dasgd::comm::device_group; the tests use a host-memory fake.
//
// One collective: each rank records an event on its compute stream after
// its snapshot pass and posts its buffers (host side, under one lock).
// The last rank to post checks every rank's signature. If they agree, it
// queues, on each rank's communication stream, waits for every rank's
// snapshot event, then the average of all ranks' send buffers into that
// rank's recv (summed in double in rank order, then scaled by 1/n: the same
// bits as the in-process host communicator), then a done event.
// request::test() is true, and wait() returns, once that is queued. The
// rank's compute stream then waits for every rank's done event, so no rank
// overwrites its snapshot while a peer still reads it. The host never waits
// for the device.
//
// Ranks on different devices need peer access between them (enabled at
// construction; refused with config_error naming both devices where it is
// impossible). Failures, never a hang: a rank that does not post within
// `timeout` makes the waiting ranks raise timeout_error naming the ranks
// that never came, and aborts the group. Every later call on every rank
// then throws. A signature mismatch fails that collective on every rank,
// and the group stays usable.
#pragma once

#include <cuda_runtime_api.h>

#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <span>
#include <string>
#include <type_traits>
#include <vector>

#include "../core/collective.hpp"
#include "../core/communicator.hpp"
#include "../core/error.hpp"
#include "../core/precision.hpp"
#include "../core/tensor.hpp"

namespace dasgd::comm {

struct device_group_options {
  /// Longest a rank waits for the others to post a collective before
  /// timeout_error (which aborts the group).
  std::chrono::milliseconds timeout{std::chrono::seconds(120)};
};

/// Most ranks one device group holds: the kernel gets every rank's send
/// pointer as a launch parameter.
inline constexpr int device_group_max_ranks = 64;

namespace detail {

/// One rank's part of a collective.
struct device_part {
  const void* send = nullptr;
  void* recv = nullptr;
  ::dasgd::detail::signature_record sig;
  cudaEvent_t snapshot_written = nullptr;  ///< on the rank's compute stream
  cudaEvent_t done = nullptr;              ///< on the rank's communication stream
  bool posted = false;
  bool waits_issued = false;  ///< the compute stream waits for every done event
  bool released = false;      ///< the rank is done with its request
};

struct device_collective {
  enum class kind { average, broadcast, gather };
  kind what = kind::average;
  std::size_t element_bytes = 0;
  std::vector<device_part> parts;
  std::vector<std::uint64_t> gathered;
  int arrived = 0;
  bool launched = false;
  ::dasgd::detail::error_record failure;
  collective_agreement agreement{};
  std::chrono::steady_clock::time_point first_post{};
};

/// Per rank: its device, streams and issue count.
struct device_rank {
  int device = 0;
  cudaStream_t compute = nullptr;
  cudaStream_t comm = nullptr;
  std::uint64_t issued = 0;
  bool joined = false;
};

template <class Api>
class device_group_state {
 public:
  using clock = std::chrono::steady_clock;
  using launch_fn = cudaError_t (*)(void* recv, const void* const* sends, int n, std::size_t count,
                                    cudaStream_t s);

  device_group_state(int n, device_group_options o) : options_(o), ranks_(static_cast<std::size_t>(n)) {}

  ~device_group_state() {
    for (auto& [seq, c] : live_) destroy_events(c);
    for (auto& r : ranks_)
      if (r.comm != nullptr) (void)Api::stream_destroy(r.comm);
  }

  int size() const { return static_cast<int>(ranks_.size()); }

  /// Registers rank `rank` on the calling thread's current device.
  void join(int rank, cudaStream_t compute) {
    std::lock_guard lk(m_);
    auto& me = ranks_[static_cast<std::size_t>(rank)];
    DASGD_REQUIRE(!me.joined, config_error, "device group: rank ", rank, " already has a communicator");
    check(Api::get_device(&me.device), "cudaGetDevice", rank);
    for (const auto& other : ranks_) {
      if (!other.joined || other.device == me.device) continue;
      int can = 0;
      check(Api::device_can_access_peer(&can, me.device, other.device), "cudaDeviceCanAccessPeer", rank);
      DASGD_REQUIRE(can != 0, config_error, "device group: rank ", rank, " on device ", me.device,
                    " cannot access device ", other.device, " (no peer access between them)");
      peer_enable(rank, me.device, other.device);
      peer_enable(rank, other.device, me.device);
    }
    int least = 0;
    int greatest = 0;
    check(Api::stream_priority_range(&least, &greatest), "cudaDeviceGetStreamPriorityRange", rank);
    check(Api::stream_create(&me.comm, cudaStreamNonBlocking, greatest), "cudaStreamCreateWithPriority", rank);
    me.compute = compute;
    me.joined = true;
  }

  void leave(int rank) {
    std::lock_guard lk(m_);
    ranks_[static_cast<std::size_t>(rank)].joined = false;
  }

  cudaStream_t compute_stream(int rank) const { return ranks_[static_cast<std::size_t>(rank)].compute; }

  void abort(const std::string& reason) {
    std::lock_guard lk(m_);
    abort_locked(::dasgd::detail::error_record::of(
        comm_error(::dasgd::detail::concat("device group aborted: ", reason), __FILE__, __LINE__)));
  }

  void check_health() {
    std::lock_guard lk(m_);
    if (aborted_) aborted_.raise();
  }

  /// Posts rank's part of its next collective; returns its sequence number.
  std::uint64_t post(int rank, device_collective::kind what, const void* send, void* recv, std::size_t element_bytes,
                     ::dasgd::detail::signature_record sig, launch_fn launch, std::uint64_t gather_value = 0) {
    std::lock_guard lk(m_);
    if (aborted_) aborted_.raise();
    auto& me = ranks_[static_cast<std::size_t>(rank)];
    const std::uint64_t seq = me.issued;
    device_collective& c = live_[seq];
    if (c.parts.empty()) {
      c.parts.resize(ranks_.size());
      c.what = what;
      c.element_bytes = element_bytes;
      c.gathered.resize(ranks_.size());
      c.first_post = clock::now();
    }
    device_part& p = c.parts[static_cast<std::size_t>(rank)];
    p.send = send;
    p.recv = recv;
    p.sig = sig;
    if (what == device_collective::kind::gather) {
      c.gathered[static_cast<std::size_t>(rank)] = gather_value;
    } else {
      check(Api::event_create(&p.snapshot_written, cudaEventDisableTiming), "cudaEventCreateWithFlags", rank);
      check(Api::event_create(&p.done, cudaEventDisableTiming), "cudaEventCreateWithFlags", rank);
      check(Api::event_record(p.snapshot_written, me.compute), "cudaEventRecord (compute stream)", rank);
    }
    p.posted = true;
    ++me.issued;
    if (++c.arrived == size()) complete_locked(c, launch);
    cv_.notify_all();
    return seq;
  }

  /// True once rank's part is queued; then (once) makes its compute stream
  /// wait for every rank's done event. Throws the collective's failure.
  bool test(int rank, std::uint64_t seq) {
    std::lock_guard lk(m_);
    return ready_locked(rank, seq);
  }

  void wait(int rank, std::uint64_t seq) {
    std::unique_lock lk(m_);
    auto it = live_.find(seq);
    DASGD_REQUIRE(it != live_.end(), state_error, "device group: rank ", rank, " waits on a finished collective #",
                  seq);
    const auto deadline = it->second.first_post + options_.timeout;
    while (!ready_locked(rank, seq)) {
      if (cv_.wait_until(lk, deadline) == std::cv_status::timeout && !ready_locked(rank, seq)) {
        const device_collective& c = live_.at(seq);
        std::string missing;
        for (std::size_t r = 0; r < c.parts.size(); ++r)
          if (!c.parts[r].posted) missing += (missing.empty() ? "" : ", ") + std::to_string(r);
        const std::string msg = ::dasgd::detail::concat(
            "device group: collective #", seq, " waited on by rank ", rank, " did not start within ",
            options_.timeout.count(), " ms; rank(s) ", missing, " never posted it");
        abort_locked(::dasgd::detail::error_record::of(timeout_error(msg, __FILE__, __LINE__)));
        aborted_.raise();
      }
    }
  }

  collective_agreement agreement(std::uint64_t seq) {
    std::lock_guard lk(m_);
    auto it = live_.find(seq);
    return it == live_.end() ? collective_agreement{} : it->second.agreement;
  }

  std::vector<std::uint64_t> gathered(std::uint64_t seq) {
    std::lock_guard lk(m_);
    return live_.at(seq).gathered;
  }

  /// The rank is done with collective seq (its request went away).
  void release(int rank, std::uint64_t seq) noexcept {
    std::lock_guard lk(m_);
    auto it = live_.find(seq);
    if (it == live_.end()) return;
    device_collective& c = it->second;
    c.parts[static_cast<std::size_t>(rank)].released = true;
    const bool all = std::all_of(c.parts.begin(), c.parts.end(), [](const device_part& p) { return p.released; });
    if (all) {
      destroy_events(c);  // queued waits keep what they captured
      live_.erase(it);
    }
  }

 private:
  void check(cudaError_t e, const char* what, int rank) const {
    if (e != cudaSuccess)
      DASGD_THROW(comm_error, "device group (rank ", rank, " of ", ranks_.size(), "): ", what,
                  " failed: ", Api::error_name(e), " (", Api::error_string(e), ")");
  }

  void peer_enable(int rank, int from, int to) {
    int current = 0;
    check(Api::get_device(&current), "cudaGetDevice", rank);
    check(Api::set_device(from), "cudaSetDevice", rank);
    const cudaError_t e = Api::device_enable_peer_access(to);
    (void)Api::set_device(current);
    if (e == cudaErrorPeerAccessAlreadyEnabled) {
      (void)Api::get_last_error();  // clears the sticky "already enabled"
      return;
    }
    check(e, "cudaDeviceEnablePeerAccess", rank);
  }

  static void destroy_events(device_collective& c) {
    for (auto& p : c.parts) {
      if (p.snapshot_written != nullptr) (void)Api::event_destroy(p.snapshot_written);
      if (p.done != nullptr) (void)Api::event_destroy(p.done);
      p.snapshot_written = p.done = nullptr;
    }
  }

  void abort_locked(::dasgd::detail::error_record r) {
    if (aborted_) return;
    aborted_ = std::move(r);
    for (auto& [seq, c] : live_)
      if (!c.launched && !c.failure) c.failure = aborted_;
    cv_.notify_all();
  }

  /// The last rank has posted: check, then queue every rank's work.
  void complete_locked(device_collective& c, launch_fn launch) {
    std::vector<::dasgd::detail::signature_record> sigs;
    sigs.reserve(c.parts.size());
    for (const auto& p : c.parts) sigs.push_back(p.sig);
    if (auto e = ::dasgd::detail::check_signatures(sigs, 0, "device group")) {
      c.failure = ::dasgd::detail::error_record::from(e);
      return;
    }
    c.agreement = ::dasgd::detail::combine(sigs);
    if (c.what != device_collective::kind::gather) {
      try {
        queue_all_locked(c, launch);
      } catch (const error& e) {
        // Some ranks may have work queued: the group cannot be trusted.
        abort_locked(::dasgd::detail::error_record::of(e));
        c.failure = aborted_;
        return;
      }
    }
    c.launched = true;
  }

  void queue_all_locked(device_collective& c, launch_fn launch) {
    int current = 0;
    check(Api::get_device(&current), "cudaGetDevice", 0);
    const int n = size();
    std::vector<const void*> sends(static_cast<std::size_t>(n));
    for (int r = 0; r < n; ++r) sends[static_cast<std::size_t>(r)] = c.parts[static_cast<std::size_t>(r)].send;
    const std::size_t count = c.parts[0].sig.count;
    struct restore_device {
      int d;
      ~restore_device() { (void)Api::set_device(d); }
    } restore{current};
    for (int r = 0; r < n; ++r) {
      const auto& rk = ranks_[static_cast<std::size_t>(r)];
      auto& p = c.parts[static_cast<std::size_t>(r)];
      check(Api::set_device(rk.device), "cudaSetDevice", r);
      for (const auto& q : c.parts)
        check(Api::stream_wait_event(rk.comm, q.snapshot_written), "cudaStreamWaitEvent (communication stream)", r);
      if (count > 0) {
        if (c.what == device_collective::kind::average) {
          check(launch(p.recv, sends.data(), n, count, rk.comm), "the average kernel launch", r);
        } else {
          const auto root = static_cast<std::size_t>(c.parts[0].sig.root);
          const std::size_t bytes = count * c.element_bytes;
          check(Api::memcpy_async(p.recv, c.parts[root].send, bytes, cudaMemcpyDefault, rk.comm),
                "cudaMemcpyAsync (broadcast)", r);
        }
      }
      check(Api::event_record(p.done, rk.comm), "cudaEventRecord (communication stream)", r);
    }
  }

  bool ready_locked(int rank, std::uint64_t seq) {
    auto it = live_.find(seq);
    DASGD_REQUIRE(it != live_.end(), state_error, "device group: rank ", rank, " tests a finished collective #",
                  seq);
    device_collective& c = it->second;
    if (c.failure) c.failure.raise();
    if (!c.launched) {
      if (clock::now() > c.first_post + options_.timeout && !aborted_) {
        std::string missing;
        for (std::size_t r = 0; r < c.parts.size(); ++r)
          if (!c.parts[r].posted) missing += (missing.empty() ? "" : ", ") + std::to_string(r);
        abort_locked(::dasgd::detail::error_record::of(timeout_error(
            ::dasgd::detail::concat("device group: collective #", seq, " did not start within ",
                                    options_.timeout.count(), " ms; rank(s) ", missing, " never posted it"),
            __FILE__, __LINE__)));
        c.failure.raise();
      }
      return false;
    }
    auto& mine = c.parts[static_cast<std::size_t>(rank)];
    if (c.what != device_collective::kind::gather && !mine.waits_issued) {
      const auto& rk = ranks_[static_cast<std::size_t>(rank)];
      for (const auto& q : c.parts)
        check(Api::stream_wait_event(rk.compute, q.done), "cudaStreamWaitEvent (compute stream)", rank);
      mine.waits_issued = true;
    }
    return true;
  }

  std::mutex m_;
  std::condition_variable cv_;
  device_group_options options_;
  std::vector<device_rank> ranks_;
  std::map<std::uint64_t, device_collective> live_;
  ::dasgd::detail::error_record aborted_;
};

}  // namespace detail

template <class Api>
class basic_device_communicator;

/// Handle to one device-group collective (models dasgd::request).
template <class Api>
class basic_device_request {
 public:
  basic_device_request(basic_device_request&& o) noexcept
      : state_(std::move(o.state_)), rank_(o.rank_), seq_(o.seq_) {}
  basic_device_request& operator=(basic_device_request&& o) noexcept {
    if (this != &o) {
      release();
      state_ = std::move(o.state_);
      rank_ = o.rank_;
      seq_ = o.seq_;
    }
    return *this;
  }
  basic_device_request(const basic_device_request&) = delete;
  basic_device_request& operator=(const basic_device_request&) = delete;
  ~basic_device_request() { release(); }

  bool test() {
    require_valid();
    return state_->test(rank_, seq_);
  }
  void wait() {
    require_valid();
    state_->wait(rank_, seq_);
  }
  collective_agreement agreement() const {
    require_valid();
    return state_->agreement(seq_);
  }

 private:
  friend class basic_device_communicator<Api>;
  basic_device_request(std::shared_ptr<detail::device_group_state<Api>> s, int rank, std::uint64_t seq)
      : state_(std::move(s)), rank_(rank), seq_(seq) {}
  void require_valid() const {
    DASGD_REQUIRE(state_ != nullptr, state_error, "this device-group request was moved from");
  }
  void release() noexcept {
    if (state_) state_->release(rank_, seq_);
    state_.reset();
  }

  std::shared_ptr<detail::device_group_state<Api>> state_;
  int rank_ = 0;
  std::uint64_t seq_ = 0;
};

/// One rank's view of a device group. Construct it on the rank's own thread,
/// with that rank's device current; use it from one thread at a time.
template <class Api>
class basic_device_communicator {
 public:
  using request_type = basic_device_request<Api>;
  using memory_space = device_space;

  basic_device_communicator(std::shared_ptr<detail::device_group_state<Api>> s, int rank, cudaStream_t compute)
      : state_(std::move(s)), rank_(rank) {
    state_->join(rank_, compute);
  }
  basic_device_communicator(basic_device_communicator&& o) noexcept
      : state_(std::move(o.state_)), rank_(o.rank_) {}
  basic_device_communicator& operator=(basic_device_communicator&& o) noexcept {
    if (this != &o) {
      leave();
      state_ = std::move(o.state_);
      rank_ = o.rank_;
    }
    return *this;
  }
  basic_device_communicator(const basic_device_communicator&) = delete;
  basic_device_communicator& operator=(const basic_device_communicator&) = delete;
  ~basic_device_communicator() { leave(); }

  int size() const { return state_->size(); }
  int rank() const { return rank_; }
  cudaStream_t compute_stream() const { return state_->compute_stream(rank_); }
  void check_health() { state_->check_health(); }

  template <storage_type T>
  request_type iallreduce_average(std::span<const T> send, std::span<T> recv, const collective_signature& sig = {}) {
    using V = std::remove_cv_t<T>;
    DASGD_REQUIRE(send.size() == recv.size(), size_mismatch_error, "iallreduce_average: send has ", send.size(),
                  " elements but recv has ", recv.size(), " (rank ", rank_, ")");
    require_device(send.data(), "send");
    require_device(recv.data(), "recv");
    ::dasgd::detail::require_flat_scope(sig, "the device group");
    const auto rec = ::dasgd::detail::signature_record::of(sig, send.size(), type_id<V>::value, -1);
    return {state_, rank_,
            state_->post(rank_, detail::device_collective::kind::average, send.data(), recv.data(), sizeof(V), rec,
                         &Api::template launch_average<V>)};
  }

  template <storage_type T>
  request_type ibroadcast(std::span<const T> send, std::span<T> recv, int root, const collective_signature& sig) {
    using V = std::remove_cv_t<T>;
    DASGD_REQUIRE(send.size() == recv.size(), size_mismatch_error, "ibroadcast: send has ", send.size(),
                  " elements but recv has ", recv.size(), " (rank ", rank_, ")");
    DASGD_REQUIRE(root >= 0 && root < size(), config_error, "ibroadcast: root ", root, " is outside [0, ", size(),
                  ") (rank ", rank_, ")");
    require_device(send.data(), "send");
    require_device(recv.data(), "recv");
    ::dasgd::detail::require_flat_scope(sig, "the device group");
    const auto rec = ::dasgd::detail::signature_record::of(sig, send.size(), type_id<V>::value, root);
    return {state_, rank_,
            state_->post(rank_, detail::device_collective::kind::broadcast, send.data(), recv.data(), sizeof(V), rec,
                         nullptr)};
  }

  std::vector<std::uint64_t> allgather(std::uint64_t value) {
    collective_signature sig;
    sig.purpose = collective_purpose::check;
    auto rec = ::dasgd::detail::signature_record::of(sig, 1, 0, -1);
    rec.scope = gather_scope;  // never equal to an average's or a broadcast's: a mix-up is a mismatch
    request_type r{state_, rank_,
                   state_->post(rank_, detail::device_collective::kind::gather, nullptr, nullptr, 0, rec, nullptr,
                                value)};
    r.wait();
    return state_->gathered(r.seq_);
  }

  /// Fails every pending and future collective of the group.
  void abort(const std::string& reason) { state_->abort(reason); }

 private:
  void require_device(const void* p, const char* which) const {
    if (p == nullptr) return;  // empty spans
    cudaPointerAttributes a{};
    const cudaError_t e = Api::pointer_attributes(&a, p);
    DASGD_REQUIRE(e == cudaSuccess && (a.type == cudaMemoryTypeDevice || a.type == cudaMemoryTypeManaged),
                  config_error, "device group (rank ", rank_, "): the ", which,
                  " buffer is not device memory; use a host communicator for host buffers");
  }
  void leave() noexcept {
    if (state_) state_->leave(rank_);
    state_.reset();
  }

  static constexpr std::uint32_t gather_scope = 0xFFFFFFFFu;

  std::shared_ptr<detail::device_group_state<Api>> state_;
  int rank_ = 0;
};

/// N in-process ranks on GPUs. communicator(rank, stream) on each rank's
/// thread, with that rank's device current.
template <class Api>
class basic_device_group {
 public:
  explicit basic_device_group(int size, device_group_options options = {}) {
    DASGD_REQUIRE(size >= 1 && size <= device_group_max_ranks, config_error, "device group size must be in [1, ",
                  device_group_max_ranks, "], got ", size);
    DASGD_REQUIRE(options.timeout.count() > 0, config_error, "device group timeout must be positive, got ",
                  options.timeout.count(), " ms");
    state_ = std::make_shared<detail::device_group_state<Api>>(size, options);
  }
  int size() const { return state_->size(); }
  basic_device_communicator<Api> communicator(int rank, cudaStream_t compute) const {
    DASGD_REQUIRE(rank >= 0 && rank < state_->size(), config_error, "device group: rank ", rank,
                  " is outside [0, ", state_->size(), ")");
    return {state_, rank, compute};
  }
  void abort(const std::string& reason) { state_->abort(reason); }

 private:
  std::shared_ptr<detail::device_group_state<Api>> state_;
};

}  // namespace dasgd::comm
