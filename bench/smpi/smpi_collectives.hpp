// Non-blocking collectives for the library's MPI engine under SimGrid SMPI.
//
// Why: SMPI 3.32 implements MPI_Iallreduce and MPI_Iallgather by sending
// every rank's whole buffer to every other rank (n(n-1) full-size messages
// and n-1 receive buffers per rank). That is neither what OpenMPI's libnbc
// does nor feasible beyond a few dozen ranks (64 ranks x 4 MiB took 17 GB).
// These replacements are the schedules a real MPI runs, built from
// MPI_Isend/MPI_Irecv that SMPI simulates message by message:
//  - allreduce: ring (reduce-scatter then allgather, 2(n-1) rounds, each
//    rank sends 2(n-1)/n of the buffer), the algorithm docs/scaling.md models
//    and bench/overlap forces on OpenMPI; or Rabenseifner (recursive
//    halving then doubling, 2 log2 n rounds, the same bytes; libnbc has it
//    too), for power-of-two sizes;
//  - allgather (the engine's signature check): Bruck, ceil(log2 n) rounds.
//  - broadcast (the hierarchical communicator's group broadcast): binomial
//    tree, ceil(log2 n) rounds.
// The sums are real (MPI_Reduce_local with the caller's MPI_Op) except on
// shared buffers: set_shared_threshold(b) says that buffers of at least b
// bytes are SMPI_SHARED_MALLOC memory (every rank's buffer is the same
// memory, so contents are meaningless and a reduction would only cost host
// time). Smaller ones (the signature tables, the hierarchical chain's
// status words) carry real data and are reduced.
//
// set_wire_scale(k): every message of a shared buffer's allreduce or
// broadcast carries k times the bytes of its chunk (sent from and received
// into one shared scratch block), so a model of P parameters is simulated
// with P/k in the library's buffers. Simulated time depends on the bytes on
// the wire, not on host work (smpi/simulate-computation:no); host time then
// no longer grows with the model (a 102 MB buffer at 1024 ranks: hours
// unscaled). Real-data collectives are never scaled.
//
// Progress follows libnbc: a round advances only inside MPI_Test on the
// collective's request. The engine's wait() spins on MPI_Test; a spin is
// recognised (the same request tested again with no simulated compute in
// between, see compute_epoch()) and then blocks in MPI_Waitall, so a wait
// costs simulated time, not millions of host-side polls.
//
// Include this header before <dasgd/comm/mpi.hpp>; smpi_redirect.hpp then
// points the engine's MPI_Iallreduce / MPI_Iallgather / MPI_Test at it.
#pragma once

#include <dasgd/core/error.hpp>
#include <mpi.h>
#include <smpi/smpi.h>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <memory>
#include <unordered_set>
#include <vector>

namespace dasgd::bench::smpi {

/// Per-rank state. SMPI privatizes the program's globals (one copy per
/// simulated rank), so each rank has its own.
enum class allreduce_algorithm { ring, rabenseifner };

struct shim_state {
  bool native = false;  ///< pass the collectives to SMPI's own (for comparison)
  std::size_t shared_threshold = 0;  ///< 0: no buffer is shared
  int wire_scale = 1;
  void* wire_scratch = nullptr;  ///< SMPI_SHARED_MALLOC block for scaled messages
  std::size_t wire_scratch_bytes = 0;
  allreduce_algorithm allreduce = allreduce_algorithm::ring;
  std::uint64_t epoch = 0;  ///< bumped by every simulated compute chunk
  int sequence_key = MPI_KEYVAL_INVALID;
  std::unordered_set<const void*> live;
};
inline shim_state& state() {
  static shim_state s;
  return s;
}
inline void set_shared_threshold(std::size_t bytes) { state().shared_threshold = bytes; }
/// Whether a collective's buffer of `bytes` is shared memory (contents meaningless).
inline bool is_shared(std::size_t bytes) {
  const std::size_t t = state().shared_threshold;
  return t != 0 && bytes >= t;
}
inline void set_native(bool native) { state().native = native; }
/// Applies to shared buffers only (see set_shared_threshold).
inline void set_wire_scale(int k) { state().wire_scale = std::max(k, 1); }
/// At least `bytes` of shared scratch (grown, never shrunk; per rank).
inline void* wire_scratch(std::size_t bytes) {
  shim_state& st = state();
  if (bytes > st.wire_scratch_bytes) {
    if (st.wire_scratch != nullptr) SMPI_SHARED_FREE(st.wire_scratch);
    st.wire_scratch = SMPI_SHARED_MALLOC(bytes);
    st.wire_scratch_bytes = bytes;
  }
  return st.wire_scratch;
}
/// Rabenseifner is used for power-of-two sizes only (ring otherwise).
inline void set_allreduce(allreduce_algorithm a) { state().allreduce = a; }
/// Called after each chunk of simulated compute: tests separated by compute
/// are polls, tests without compute in between are a spin.
inline void bump_compute_epoch() { ++state().epoch; }

/// The next collective's number on `comm`, the same on every rank because
/// collectives on a communicator are issued in the same order. Kept as an
/// attribute of the communicator: a handle value may be reused after
/// MPI_Comm_free, an attribute dies with its communicator.
inline int free_sequence(MPI_Comm, int, void* value, void*) {
  delete static_cast<std::uint32_t*>(value);
  return MPI_SUCCESS;
}
inline std::uint32_t next_sequence(MPI_Comm comm) {
  int& key = state().sequence_key;
  if (key == MPI_KEYVAL_INVALID) MPI_Comm_create_keyval(MPI_COMM_NULL_COPY_FN, &free_sequence, &key, nullptr);
  void* value = nullptr;
  int found = 0;
  MPI_Comm_get_attr(comm, key, &value, &found);
  if (!found) {
    value = new std::uint32_t(0);
    MPI_Comm_set_attr(comm, key, value);
  }
  return (*static_cast<std::uint32_t*>(value))++;
}

/// A collective as a list of rounds; each round is one send and one
/// receive, followed by local work.
class schedule {
 public:
  /// `shared`: the buffer is shared memory, so its messages follow set_wire_scale.
  schedule(MPI_Comm comm, int rounds, bool shared = false)
      : comm_(comm), rounds_(rounds), scale_(shared ? state().wire_scale : 1) {
    tag_ = 0x4000 + static_cast<int>(next_sequence(comm) % 0x3000);
  }
  virtual ~schedule() = default;

  /// Advances as far as possible (blocking: to the end). True when done.
  bool advance(bool block) {
    while (round_ < rounds_) {
      if (!posted_) {
        post(round_);
        posted_ = true;
      }
      int flag = 0;
      if (block) {
        MPI_Waitall(2, reqs_, MPI_STATUSES_IGNORE);
        flag = 1;
      } else {
        MPI_Testall(2, reqs_, &flag, MPI_STATUSES_IGNORE);
      }
      if (!flag) return false;
      finish(round_);
      ++round_;
      posted_ = false;
    }
    if (!completed_) {
      complete();
      completed_ = true;
    }
    return true;
  }

  /// Spin detection: true when this request was tested twice already with
  /// no simulated compute since.
  bool spinning() {
    const std::uint64_t e = state().epoch;
    same_epoch_tests_ = e == last_epoch_ ? same_epoch_tests_ + 1 : 0;
    last_epoch_ = e;
    return same_epoch_tests_ >= 2;
  }

 protected:
  virtual void post(int round) = 0;
  virtual void finish(int round) = 0;
  virtual void complete() {}

  /// One round's messages; a null buffer (with 0 bytes) posts nothing on that side.
  void exchange(const void* sbuf, int sbytes, int to, void* rbuf, int rbytes, int from) {
    if (scale_ > 1) {
      const std::size_t longest = static_cast<std::size_t>(std::max(sbytes, rbytes)) * static_cast<std::size_t>(scale_);
      DASGD_REQUIRE(longest <= static_cast<std::size_t>(INT32_MAX), config_error, "--wire-scale ", scale_,
                    ": a message of ", longest, " bytes exceeds an int count");
      void* scratch = wire_scratch(longest);
      if (sbuf != nullptr) sbuf = scratch;
      if (rbuf != nullptr) rbuf = scratch;
      sbytes *= scale_;
      rbytes *= scale_;
    }
    reqs_[0] = reqs_[1] = MPI_REQUEST_NULL;
    if (rbuf != nullptr) MPI_Irecv(rbuf, rbytes, MPI_BYTE, from, tag_, comm_, &reqs_[0]);
    if (sbuf != nullptr) MPI_Isend(sbuf, sbytes, MPI_BYTE, to, tag_, comm_, &reqs_[1]);
  }

  MPI_Comm comm_;
  int rounds_;
  int scale_;
  int tag_ = 0;

 private:
  int round_ = 0;
  bool posted_ = false;
  bool completed_ = false;
  MPI_Request reqs_[2] = {MPI_REQUEST_NULL, MPI_REQUEST_NULL};
  std::uint64_t last_epoch_ = ~std::uint64_t(0);
  int same_epoch_tests_ = 0;
};

/// In-place ring allreduce of `count` elements.
/// Bytes per element of an MPI datatype.
inline std::size_t element_bytes(MPI_Datatype type) {
  int bytes = 0;
  MPI_Type_size(type, &bytes);
  return static_cast<std::size_t>(bytes);
}

/// Where each of `parts` near-equal chunks of `count` elements starts
/// (parts + 1 offsets, the last one `count`).
inline std::vector<std::size_t> chunk_offsets(int count, int parts) {
  const auto n = static_cast<std::size_t>(parts);
  const auto c = static_cast<std::size_t>(count);
  std::vector<std::size_t> offsets;
  offsets.reserve(n + 1);
  for (std::size_t i = 0; i <= n; ++i) offsets.push_back(c * i / n);
  return offsets;
}

class ring_allreduce final : public schedule {
 public:
  ring_allreduce(void* buf, int count, MPI_Datatype type, MPI_Op op, MPI_Comm comm, int rank, int size)
      : schedule(comm, size > 1 ? 2 * (size - 1) : 0, is_shared(static_cast<std::size_t>(count) * element_bytes(type))),
        buf_(static_cast<std::byte*>(buf)),
        type_(type),
        op_(op),
        rank_(rank),
        size_(size),
        elem_(element_bytes(type)),
        shared_(is_shared(static_cast<std::size_t>(count) * elem_)),
        offset_(chunk_offsets(count, size)) {
    const auto n = static_cast<std::size_t>(size);
    std::size_t longest = 0;
    for (std::size_t i = 0; i < n; ++i) longest = std::max(longest, offset_[i + 1] - offset_[i]);
    tmp_.resize(std::max<std::size_t>(longest * elem_, 1));
  }

 private:
  int chunk(int k) const { return ((k % size_) + size_) % size_; }
  std::byte* at(int k) { return buf_ + offset_[static_cast<std::size_t>(chunk(k))] * elem_; }
  int len(int k) const {
    const auto i = static_cast<std::size_t>(chunk(k));
    return static_cast<int>(offset_[i + 1] - offset_[i]);
  }
  int right() const { return (rank_ + 1) % size_; }
  int left() const { return (rank_ + size_ - 1) % size_; }

  void post(int r) override {
    const int bytes_of = static_cast<int>(elem_);
    if (r < size_ - 1) {  // reduce-scatter: send chunk rank-r, receive chunk rank-r-1 to add
      exchange(at(rank_ - r), len(rank_ - r) * bytes_of, right(), tmp_.data(), len(rank_ - r - 1) * bytes_of,
               left());
    } else {  // allgather: pass the finished chunks around
      const int s = r - (size_ - 1);
      exchange(at(rank_ + 1 - s), len(rank_ + 1 - s) * bytes_of, right(), at(rank_ - s), len(rank_ - s) * bytes_of,
               left());
    }
  }
  void finish(int r) override {
    if (r >= size_ - 1 || shared_) return;
    int n = len(rank_ - r - 1);
    if (n > 0) MPI_Reduce_local(tmp_.data(), at(rank_ - r - 1), n, type_, op_);
  }

  std::byte* buf_;
  MPI_Datatype type_;
  MPI_Op op_;
  int rank_, size_;
  std::size_t elem_ = 1;
  bool shared_ = false;
  std::vector<std::size_t> offset_;
  std::vector<std::byte> tmp_;
};

/// In-place Rabenseifner allreduce for a power-of-two size: reduce-scatter
/// by recursive halving (partner rank ^ n/2, ^ n/4, ...; each round halves
/// the chunk window a rank is responsible for), then allgather by recursive
/// doubling in the reverse order. After the halving, rank r holds chunk r.
class rabenseifner_allreduce final : public schedule {
 public:
  rabenseifner_allreduce(void* buf, int count, MPI_Datatype type, MPI_Op op, MPI_Comm comm, int rank, int size)
      : schedule(comm, 2 * log2_of(size), is_shared(static_cast<std::size_t>(count) * element_bytes(type))),
        buf_(static_cast<std::byte*>(buf)),
        type_(type),
        op_(op),
        rank_(rank),
        size_(size),
        steps_(log2_of(size)),
        hi_(size),
        elem_(element_bytes(type)),
        shared_(is_shared(static_cast<std::size_t>(count) * elem_)),
        offset_(chunk_offsets(count, size)) {
    const auto c = static_cast<std::size_t>(count);
    tmp_.resize(std::max<std::size_t>((c / 2 + 1) * elem_, 1));  // the first (largest) half
  }
  static int log2_of(int n) {
    int r = 0;
    while ((1 << r) < n) ++r;
    return r;
  }

 private:
  std::byte* at(int chunk) { return buf_ + offset_[static_cast<std::size_t>(chunk)] * elem_; }
  int span(int lo, int hi) const {
    return static_cast<int>(offset_[static_cast<std::size_t>(hi)] - offset_[static_cast<std::size_t>(lo)]);
  }

  void post(int r) override {
    const int b = static_cast<int>(elem_);
    if (r < steps_) {  // halving: dist = n/2, n/4, ..., 1
      const int dist = size_ >> (r + 1);
      const int mid = lo_ + (hi_ - lo_) / 2;
      const bool lower = (rank_ & dist) == 0;
      keep_lo_ = lower ? lo_ : mid;
      keep_hi_ = lower ? mid : hi_;
      const int send_lo = lower ? mid : lo_, send_hi = lower ? hi_ : mid;
      exchange(at(send_lo), span(send_lo, send_hi) * b, rank_ ^ dist, tmp_.data(), span(keep_lo_, keep_hi_) * b,
               rank_ ^ dist);
    } else {  // doubling: dist = 1, 2, ..., n/2; the partner's window is next to mine
      const int dist = 1 << (r - steps_);
      const int width = hi_ - lo_;
      const bool lower = (rank_ & dist) == 0;
      other_lo_ = lower ? hi_ : lo_ - width;
      other_hi_ = other_lo_ + width;
      exchange(at(lo_), span(lo_, hi_) * b, rank_ ^ dist, at(other_lo_), span(other_lo_, other_hi_) * b,
               rank_ ^ dist);
    }
  }
  void finish(int r) override {
    if (r < steps_) {
      const int n = span(keep_lo_, keep_hi_);
      if (n > 0 && !shared_) MPI_Reduce_local(tmp_.data(), at(keep_lo_), n, type_, op_);
      lo_ = keep_lo_;
      hi_ = keep_hi_;
    } else {
      lo_ = std::min(lo_, other_lo_);
      hi_ = std::max(hi_, other_hi_);
    }
  }

  std::byte* buf_;
  MPI_Datatype type_;
  MPI_Op op_;
  int rank_, size_, steps_;
  int lo_ = 0, hi_;  // the chunk window this rank holds reduced
  int keep_lo_ = 0, keep_hi_ = 0, other_lo_ = 0, other_hi_ = 0;
  std::size_t elem_ = 1;
  bool shared_ = false;
  std::vector<std::size_t> offset_;
  std::vector<std::byte> tmp_;
};

/// Bruck allgather of `bytes` per rank.
class bruck_allgather final : public schedule {
 public:
  bruck_allgather(const void* send, void* recv, std::size_t bytes, MPI_Comm comm, int rank, int size)
      : schedule(comm, rounds_for(size)),
        recv_(static_cast<std::byte*>(recv)),
        bytes_(bytes),
        rank_(rank),
        size_(size),
        tmp_(std::max<std::size_t>(bytes * static_cast<std::size_t>(size), 1)) {
    if (bytes != 0) std::memcpy(tmp_.data(), send, bytes);
  }

 private:
  static int rounds_for(int n) {
    int r = 0;
    while ((1 << r) < n) ++r;
    return r;
  }
  void post(int r) override {
    const int dist = 1 << r;
    const auto cnt = static_cast<std::size_t>(std::min(dist, size_ - dist));
    const int b = static_cast<int>(cnt * bytes_);
    exchange(tmp_.data(), b, (rank_ - dist + size_) % size_, tmp_.data() + static_cast<std::size_t>(dist) * bytes_,
             b, (rank_ + dist) % size_);
  }
  void finish(int) override {}
  void complete() override {
    for (int i = 0; i < size_; ++i)
      if (bytes_ != 0)
        std::memcpy(recv_ + static_cast<std::size_t>((rank_ + i) % size_) * bytes_,
                    tmp_.data() + static_cast<std::size_t>(i) * bytes_, bytes_);
  }

  std::byte* recv_;
  std::size_t bytes_;
  int rank_, size_;
  std::vector<std::byte> tmp_;
};

/// Binomial-tree broadcast of `bytes` from `root`: in round r, the ranks
/// that have the data (relative rank < 2^r) send to relative rank + 2^r.
class binomial_bcast final : public schedule {
 public:
  binomial_bcast(void* buf, std::size_t bytes, int root, MPI_Comm comm, int rank, int size)
      : schedule(comm, rounds_for(size), is_shared(bytes)),
        buf_(buf),
        bytes_(static_cast<int>(bytes)),
        size_(size),
        root_(root),
        me_((rank - root + size) % size) {}

 private:
  static int rounds_for(int n) {
    int r = 0;
    while ((1 << r) < n) ++r;
    return r;
  }
  int real(int relative) const { return (relative + root_) % size_; }
  void post(int r) override {
    const int dist = 1 << r;
    if (me_ < dist && me_ + dist < size_)
      exchange(buf_, bytes_, real(me_ + dist), nullptr, 0, 0);
    else if (me_ >= dist && me_ < 2 * dist)
      exchange(nullptr, 0, 0, buf_, bytes_, real(me_ - dist));
    else
      exchange(nullptr, 0, 0, nullptr, 0, 0);
  }
  void finish(int) override {}

  void* buf_;
  int bytes_;
  int size_, root_, me_;
};

inline MPI_Request to_request(schedule* s) {
  state().live.insert(s);
  return reinterpret_cast<MPI_Request>(s);
}

inline int iallreduce(const void* send, void* recv, int count, MPI_Datatype type, MPI_Op op, MPI_Comm comm,
                      MPI_Request* req) {
  if (state().native) return MPI_Iallreduce(send, recv, count, type, op, comm, req);
  int rank = 0, size = 0;
  MPI_Comm_rank(comm, &rank);
  MPI_Comm_size(comm, &size);
  if (send != MPI_IN_PLACE)  // the engine always reduces its staging buffer in place
    std::memmove(recv, send, static_cast<std::size_t>(count) * element_bytes(type));
  const bool pow2 = (size & (size - 1)) == 0;
  schedule* s = nullptr;
  if (pow2 && state().allreduce == allreduce_algorithm::rabenseifner)
    s = new rabenseifner_allreduce(recv, count, type, op, comm, rank, size);
  else
    s = new ring_allreduce(recv, count, type, op, comm, rank, size);
  *req = to_request(s);
  s->advance(false);  // posts round 0 now, as libnbc does at the call
  return MPI_SUCCESS;
}

inline int iallgather(const void* send, int scount, MPI_Datatype stype, void* recv, int rcount, MPI_Datatype rtype,
                      MPI_Comm comm, MPI_Request* req) {
  if (state().native) return MPI_Iallgather(send, scount, stype, recv, rcount, rtype, comm, req);
  int rank = 0, size = 0;
  MPI_Comm_rank(comm, &rank);
  MPI_Comm_size(comm, &size);
  const std::size_t block = static_cast<std::size_t>(scount) * element_bytes(stype);
  const void* mine = send == MPI_IN_PLACE ? static_cast<const std::byte*>(recv) + block * static_cast<std::size_t>(rank)
                                          : send;
  auto* s = new bruck_allgather(mine, recv, block, comm, rank, size);
  *req = to_request(s);
  s->advance(false);
  return MPI_SUCCESS;
}

inline int ibcast(void* buf, int count, MPI_Datatype type, int root, MPI_Comm comm, MPI_Request* req) {
  if (state().native) return MPI_Ibcast(buf, count, type, root, comm, req);
  int rank = 0, size = 0;
  MPI_Comm_rank(comm, &rank);
  MPI_Comm_size(comm, &size);
  auto* s = new binomial_bcast(buf, static_cast<std::size_t>(count) * element_bytes(type), root, comm, rank, size);
  *req = to_request(s);
  s->advance(false);
  return MPI_SUCCESS;
}

inline int test(MPI_Request* req, int* flag, MPI_Status* status) {
  auto& live = state().live;
  const auto it = live.find(reinterpret_cast<const void*>(*req));
  if (it == live.end()) return MPI_Test(req, flag, status);  // a native request
  auto* s = reinterpret_cast<schedule*>(*req);
  if (!s->advance(s->spinning())) {
    *flag = 0;
    return MPI_SUCCESS;
  }
  live.erase(it);
  delete s;
  *req = MPI_REQUEST_NULL;
  *flag = 1;
  if (status != MPI_STATUS_IGNORE) std::memset(static_cast<void*>(status), 0, sizeof(MPI_Status));
  return MPI_SUCCESS;
}

}  // namespace dasgd::bench::smpi
