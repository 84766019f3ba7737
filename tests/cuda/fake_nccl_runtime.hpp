// A host-memory stand-in for the CUDA runtime and NCCL calls that
// basic_nccl_communicator<Api> makes (the policy of
// include/dasgd/comm/detail/nccl_runtime.hpp), so that its failure
// handling runs without a GPU: ranks are threads, "device" memory is host
// memory, and handles are pointers to the fake objects below.
//
// Streams run in order: each is a FIFO of items (a copy, a host gate, an
// event record, a wait for an event, a collective). Items run whenever any
// thread makes a fake call (pump). A collective item completes when every
// rank of its clique has it at the head of its stream (then the result is
// computed in host memory), or when its communicator was aborted (then the
// receive buffer is filled with `garbage`: the partial result a real abort
// leaves). One global mutex guards everything.
//
// Fault injection (per communicator, or for the next initialization):
// collectives that never complete, ncclInProgress from every call of a
// non-blocking communicator, ncclGetUniqueId failing, an initialization that
// never finishes, an asynchronous error after a delay, an ncclAllReduce
// call that blocks until the communicator is aborted, a finalize that never
// finishes, and a hook that runs before every fake call (outside the lock).
// Every call on a communicator already aborted or destroyed is counted in
// use_after_free: NCCL frees the communicator there.
#pragma once

#include <cuda_runtime_api.h>
#include <nccl.h>

#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <new>
#include <optional>
#include <set>
#include <utility>
#include <vector>

namespace dasgd_test::fake_nccl {

using clock = std::chrono::steady_clock;

/// What an aborted collective leaves in its receive buffer (every byte).
inline constexpr unsigned char garbage = 0xA5;

struct event_obj {
  std::uint64_t enqueued = 0;  // records queued
  std::uint64_t ran = 0;       // records that ran
  clock::time_point at{};
};

struct comm_obj;

struct item {
  enum class kind { closure, gate, record, wait, collective } what = kind::closure;
  std::function<void()> fn;
  std::function<bool()> ready;
  event_obj* event = nullptr;
  std::uint64_t target = 0;
  comm_obj* comm = nullptr;
  std::uint64_t seq = 0;
};

struct stream_obj {
  std::deque<item> items;
  bool destroyed = false;
};

enum class coll_kind { reduce, broadcast, gather };

struct part {
  const void* send = nullptr;
  void* recv = nullptr;
  bool posted = false;
  bool at_head = false;
  bool done = false;
  bool gone = false;  ///< its rank aborted or dropped it: it never takes part
};

struct group {
  bool specified = false;
  coll_kind kind = coll_kind::reduce;
  std::size_t count = 0;
  ncclDataType_t type = ncclFloat32;
  ncclRedOp_t op = ncclSum;
  int root = -1;
  std::vector<part> parts;
  bool computed = false;
  bool mismatched = false;
  std::optional<clock::time_point> all_at;
};

struct clique_obj {
  int size = 0;
  int joined = 0;
  std::map<std::uint64_t, group> groups;
  std::vector<comm_obj*> members;
};

struct comm_obj {
  clique_obj* clique = nullptr;
  int rank = 0;
  int size = 0;
  int device = 0;
  bool blocking = true;
  bool ready = false;
  bool aborted = false;
  bool freed = false;
  bool finalizing = false;
  std::uint64_t next_seq = 0;
  int pending_items = 0;
  int pending_polls = 0;
  // knobs
  bool init_never = false;           ///< initialization stays ncclInProgress
  int inprogress_polls = 0;          ///< non-blocking: each call returns ncclInProgress for this many polls
  bool hang_allreduce = false;       ///< its all-reduces never complete (a peer that is gone)
  bool block_allreduce_call = false; ///< ncclAllReduce blocks inside the call until the abort
  bool finalize_never = false;       ///< ncclCommFinalize never finishes
  std::optional<clock::time_point> async_error_at;
  ncclResult_t async_error = ncclRemoteError;
  std::chrono::microseconds data_delay{0};  ///< an all-reduce/broadcast takes at least this long
};

struct world_t {
  std::mutex m;
  std::condition_variable cv;
  std::deque<std::unique_ptr<stream_obj>> streams;
  std::deque<std::unique_ptr<event_obj>> events;
  std::deque<std::unique_ptr<comm_obj>> comms;
  std::deque<std::unique_ptr<clique_obj>> cliques;
  std::map<std::pair<std::uint64_t, int>, clique_obj*> by_id;  // (id or split key, color)
  std::map<const std::byte*, std::size_t> device_memory;
  std::set<void*> host_memory;
  stream_obj default_stream;
  std::uint64_t next_id = 1;
  // knobs
  bool fail_unique_id = false;
  std::set<int> init_never_ranks;  ///< applied by the next initializations
  int init_inprogress_polls = 0;   ///< applied by the next initializations
  std::function<void(const char*)> hook;
  // counters
  int use_after_free = 0;
  int aborts = 0;
  int destroys = 0;
  int finalizes = 0;
  int mismatched_collectives = 0;
  int allreduce_calls = 0;
  int unique_ids = 0;
  ncclRedOp_t last_reduce_op = ncclMaxRedOp;
};

/// Never destroyed: test buffers and late calls stay valid to the end (and
/// LeakSanitizer sees them reachable).
inline world_t& world() {
  static world_t* w = new world_t;
  return *w;
}

inline stream_obj* stream_of(cudaStream_t s) {
  return s == nullptr ? &world().default_stream : reinterpret_cast<stream_obj*>(s);
}
inline event_obj* event_of(cudaEvent_t e) { return reinterpret_cast<event_obj*>(e); }
inline comm_obj* comm_of(ncclComm_t c) { return reinterpret_cast<comm_obj*>(c); }

inline std::size_t element_size(ncclDataType_t t) {
  switch (t) {
    case ncclFloat64:
    case ncclUint64:
    case ncclInt64: return 8;
    case ncclFloat16:
    case ncclBfloat16: return 2;
    case ncclInt8:
    case ncclUint8: return 1;
    default: return 4;
  }
}

/// Computes a collective whose parts are all at the head of their streams.
inline void compute(group& g) {
  const std::size_t n = g.parts.size();
  const std::size_t bytes = g.count * element_size(g.type);
  std::vector<std::byte> result;
  if (g.kind == coll_kind::gather) {
    result.resize(bytes * n);
    for (std::size_t r = 0; r < n; ++r)
      if (bytes) std::memcpy(result.data() + r * bytes, g.parts[r].send, bytes);
  } else if (g.kind == coll_kind::broadcast) {
    result.resize(bytes);
    if (bytes) std::memcpy(result.data(), g.parts[static_cast<std::size_t>(g.root)].send, bytes);
  } else {
    result.resize(bytes);
    auto reduce = [&]<class T>(T*) {
      for (std::size_t i = 0; i < g.count; ++i) {
        T acc = 0;
        for (std::size_t r = 0; r < n; ++r) acc += static_cast<const T*>(g.parts[r].send)[i];
        if (g.op == ncclAvg) acc /= static_cast<T>(n);
        std::memcpy(result.data() + i * sizeof(T), &acc, sizeof(T));
      }
    };
    if (g.type == ncclFloat64) reduce(static_cast<double*>(nullptr));
    else reduce(static_cast<float*>(nullptr));
  }
  for (auto& p : g.parts) {
    if (!result.empty()) std::memcpy(p.recv, result.data(), result.size());
    p.done = true;
  }
  g.computed = true;
}

inline std::size_t recv_bytes(const group& g) {
  const std::size_t b = g.count * element_size(g.type);
  return g.kind == coll_kind::gather ? b * g.parts.size() : b;
}

/// Runs the head item of a stream if it can run (lock held).
inline bool try_run(item& it) {
  switch (it.what) {
    case item::kind::closure: it.fn(); return true;
    case item::kind::gate: return it.ready();
    case item::kind::record:
      ++it.event->ran;
      it.event->at = clock::now();
      return true;
    case item::kind::wait: return it.event->ran >= it.target;
    case item::kind::collective: {
      comm_obj* c = it.comm;
      group& g = c->clique->groups[it.seq];
      part& p = g.parts[static_cast<std::size_t>(c->rank)];
      if (p.done) return true;
      if (c->aborted || c->freed) {
        std::memset(p.recv, garbage, recv_bytes(g));
        p.done = p.gone = true;
        return true;
      }
      p.at_head = true;
      if (g.mismatched) return false;
      for (const part& q : g.parts)
        if (!q.posted || !q.at_head || q.gone) return false;  // a peer that is gone: hangs
      if (g.kind == coll_kind::reduce)
        for (const comm_obj* m : c->clique->members)
          if (m->hang_allreduce) return false;
      if (!g.all_at) g.all_at = clock::now();
      if (g.kind != coll_kind::gather && clock::now() - *g.all_at < c->data_delay) return false;
      compute(g);
      return true;
    }
  }
  return false;
}

inline void pump() {
  auto& w = world();
  bool any = false;
  for (bool progress = true; progress;) {
    progress = false;
    auto run = [&](stream_obj& s) {
      while (!s.destroyed && !s.items.empty() && try_run(s.items.front())) {
        if (s.items.front().what == item::kind::collective) --s.items.front().comm->pending_items;
        s.items.pop_front();
        progress = any = true;
      }
    };
    run(w.default_stream);
    for (auto& s : w.streams) run(*s);
  }
  if (any) w.cv.notify_all();
}

inline void call_hook(const char* name) {
  auto& w = world();
  std::function<void(const char*)> h;
  {
    std::lock_guard lk(w.m);
    h = w.hook;
  }
  if (h) h(name);
}

/// Counts a call on a communicator NCCL has freed (lock held).
inline bool gone(comm_obj* c) {
  if (c->freed) {
    ++world().use_after_free;
    return true;
  }
  return false;
}

inline void push(cudaStream_t s, item it) {
  stream_of(s)->items.push_back(std::move(it));
  pump();
}

inline comm_obj* new_comm(clique_obj* cl, int rank, bool blocking) {
  auto& w = world();
  w.comms.push_back(std::make_unique<comm_obj>());
  comm_obj* c = w.comms.back().get();
  c->clique = cl;
  c->rank = rank;
  c->size = cl->size;
  c->blocking = blocking;
  c->init_never = w.init_never_ranks.count(rank) != 0;
  c->inprogress_polls = blocking ? 0 : w.init_inprogress_polls;
  ++cl->joined;
  cl->members.push_back(c);
  return c;
}

inline clique_obj* clique_for(std::pair<std::uint64_t, int> key, int size) {
  auto& w = world();
  auto it = w.by_id.find(key);
  if (it != w.by_id.end()) return it->second;
  w.cliques.push_back(std::make_unique<clique_obj>());
  clique_obj* cl = w.cliques.back().get();
  cl->size = size;
  w.by_id[key] = cl;
  return cl;
}

/// Queues a collective; returns ncclInProgress where a non-blocking
/// communicator is told to.
inline ncclResult_t enqueue(comm_obj* c, coll_kind kind, const void* send, void* recv, std::size_t count,
                            ncclDataType_t type, ncclRedOp_t op, int root, cudaStream_t s) {
  auto& w = world();
  if (!c->ready) return ncclInvalidUsage;
  const std::uint64_t seq = c->next_seq++;
  group& g = c->clique->groups[seq];
  if (g.parts.empty()) g.parts.resize(static_cast<std::size_t>(c->size));
  if (!g.specified) {
    g.specified = true;
    g.kind = kind;
    g.count = count;
    g.type = type;
    g.op = op;
    g.root = root;
  } else if (g.kind != kind || g.count != count || g.type != type || g.root != root) {
    g.mismatched = true;  // NCCL would corrupt memory or hang here
    ++w.mismatched_collectives;
  }
  part& p = g.parts[static_cast<std::size_t>(c->rank)];
  p.send = send;
  p.recv = recv;
  p.posted = true;
  ++c->pending_items;
  item it;
  it.what = item::kind::collective;
  it.comm = c;
  it.seq = seq;
  push(s, std::move(it));
  if (!c->blocking && c->inprogress_polls > 0) {
    c->pending_polls = c->inprogress_polls;
    return ncclInProgress;
  }
  return ncclSuccess;
}

// --- helpers for tests ---------------------------------------------------------

/// Clears knobs and counters (objects stay: late calls must not crash).
inline void reset() {
  auto& w = world();
  std::lock_guard lk(w.m);
  w.fail_unique_id = false;
  w.init_never_ranks.clear();
  w.init_inprogress_polls = 0;
  w.hook = nullptr;
  w.use_after_free = w.aborts = w.destroys = w.finalizes = 0;
  w.mismatched_collectives = w.allreduce_calls = w.unique_ids = 0;
}

template <class F>
auto locked(F&& f) {
  std::lock_guard lk(world().m);
  return f(world());
}

/// Runs f on the communicator behind `c` (knobs), under the lock.
template <class F>
void configure(ncclComm_t c, F&& f) {
  std::lock_guard lk(world().m);
  f(*comm_of(c));
}

inline cudaStream_t new_stream() {
  auto& w = world();
  std::lock_guard lk(w.m);
  w.streams.push_back(std::make_unique<stream_obj>());
  return reinterpret_cast<cudaStream_t>(w.streams.back().get());
}

inline void enqueue_host(cudaStream_t s, std::function<void()> fn) {
  std::lock_guard lk(world().m);
  item it;
  it.fn = std::move(fn);
  push(s, std::move(it));
}

/// An item that holds the stream until ready() (checked at each pump).
inline void enqueue_gate(cudaStream_t s, std::function<bool()> ready) {
  std::lock_guard lk(world().m);
  item it;
  it.what = item::kind::gate;
  it.ready = std::move(ready);
  push(s, std::move(it));
}

/// Runs the streams until `s` is empty or `limit` passed; true if empty.
inline bool synchronize(cudaStream_t s, std::chrono::milliseconds limit = std::chrono::seconds(5)) {
  auto& w = world();
  const auto deadline = clock::now() + limit;
  std::unique_lock lk(w.m);
  for (;;) {
    pump();
    if (stream_of(s)->items.empty()) return true;
    if (clock::now() > deadline) return false;
    w.cv.wait_for(lk, std::chrono::microseconds(200));
  }
}

/// A device buffer of n T (host memory the fake calls "device").
template <class T>
T* device_alloc(std::size_t n) {
  auto* p = new (std::align_val_t(256)) std::byte[std::max<std::size_t>(n * sizeof(T), 1)];
  std::lock_guard lk(world().m);
  world().device_memory[p] = std::max<std::size_t>(n * sizeof(T), 1);
  return reinterpret_cast<T*>(p);
}

/// The API policy for basic_nccl_communicator<fake_nccl::runtime>.
struct runtime {
  static constexpr bool nonblocking_init = true;
  static constexpr bool has_split = true;

  static cudaError_t event_create(cudaEvent_t* e, unsigned) {
    call_hook("cudaEventCreateWithFlags");
    auto& w = world();
    std::lock_guard lk(w.m);
    w.events.push_back(std::make_unique<event_obj>());
    *e = reinterpret_cast<cudaEvent_t>(w.events.back().get());
    return cudaSuccess;
  }
  static cudaError_t event_record(cudaEvent_t e, cudaStream_t s) {
    call_hook("cudaEventRecord");
    std::lock_guard lk(world().m);
    item it;
    it.what = item::kind::record;
    it.event = event_of(e);
    ++it.event->enqueued;
    push(s, std::move(it));
    return cudaSuccess;
  }
  static cudaError_t event_query(cudaEvent_t e) {
    call_hook("cudaEventQuery");
    std::lock_guard lk(world().m);
    pump();
    return event_of(e)->ran >= event_of(e)->enqueued ? cudaSuccess : cudaErrorNotReady;
  }
  static cudaError_t event_destroy(cudaEvent_t) { return cudaSuccess; }  // kept: queued items may name it
  static cudaError_t event_elapsed(float* ms, cudaEvent_t a, cudaEvent_t b) {
    std::lock_guard lk(world().m);
    const event_obj* x = event_of(a);
    const event_obj* y = event_of(b);
    if (x->ran == 0 || y->ran == 0 || x->ran < x->enqueued || y->ran < y->enqueued) return cudaErrorNotReady;
    *ms = std::chrono::duration<float, std::milli>(y->at - x->at).count();
    return cudaSuccess;
  }
  static cudaError_t stream_wait_event(cudaStream_t s, cudaEvent_t e) {
    call_hook("cudaStreamWaitEvent");
    std::lock_guard lk(world().m);
    item it;
    it.what = item::kind::wait;
    it.event = event_of(e);
    it.target = it.event->enqueued;
    push(s, std::move(it));
    return cudaSuccess;
  }
  static cudaError_t stream_create(cudaStream_t* s, unsigned, int) {
    *s = new_stream();
    return cudaSuccess;
  }
  static cudaError_t stream_destroy(cudaStream_t s) {
    std::lock_guard lk(world().m);
    stream_obj* so = stream_of(s);
    pump();
    for (auto& it : so->items) {
      if (it.what != item::kind::collective) continue;
      --it.comm->pending_items;
      it.comm->clique->groups[it.seq].parts[static_cast<std::size_t>(it.comm->rank)].gone = true;
    }
    so->items.clear();
    so->destroyed = true;
    return cudaSuccess;
  }
  static cudaError_t stream_priority_range(int* least, int* greatest) {
    *least = 0;
    *greatest = -1;
    return cudaSuccess;
  }
  static cudaError_t malloc_device(void** p, std::size_t bytes) {
    *p = device_alloc<std::byte>(bytes);
    return cudaSuccess;
  }
  static cudaError_t free_device(void* p) {
    {
      std::lock_guard lk(world().m);
      world().device_memory.erase(static_cast<std::byte*>(p));
    }
    ::operator delete[](p, std::align_val_t(256));
    return cudaSuccess;
  }
  static cudaError_t malloc_host(void** p, std::size_t bytes) {
    *p = new (std::align_val_t(256)) std::byte[std::max<std::size_t>(bytes, 1)];
    return cudaSuccess;
  }
  static cudaError_t free_host(void* p) {
    ::operator delete[](p, std::align_val_t(256));
    return cudaSuccess;
  }
  static cudaError_t memcpy_async(void* dst, const void* src, std::size_t bytes, cudaMemcpyKind, cudaStream_t s) {
    call_hook("cudaMemcpyAsync");
    std::lock_guard lk(world().m);
    item it;
    it.fn = [=] { std::memcpy(dst, src, bytes); };
    push(s, std::move(it));
    return cudaSuccess;
  }
  static int& current_device() {
    thread_local int d = 0;
    return d;
  }
  static cudaError_t get_device(int* d) {
    *d = current_device();
    return cudaSuccess;
  }
  static cudaError_t set_device(int d) {
    current_device() = d;
    return cudaSuccess;
  }
  static cudaError_t pointer_attributes(cudaPointerAttributes* a, const void* p) {
    std::lock_guard lk(world().m);
    *a = cudaPointerAttributes{};
    a->type = cudaMemoryTypeUnregistered;
    const auto* b = static_cast<const std::byte*>(p);
    auto& mem = world().device_memory;
    auto it = mem.upper_bound(b);
    if (it != mem.begin()) {
      --it;
      if (b < it->first + it->second) a->type = cudaMemoryTypeDevice;
    }
    return cudaSuccess;
  }
  static cudaError_t get_last_error() { return cudaSuccess; }
  static const char* error_name(cudaError_t) { return "cudaErrorFake"; }
  static const char* error_string(cudaError_t) { return "fake CUDA error"; }

  static ncclResult_t all_reduce(const void* send, void* recv, std::size_t count, ncclDataType_t type,
                                 ncclRedOp_t op, ncclComm_t comm, cudaStream_t s) {
    call_hook("ncclAllReduce");
    auto& w = world();
    std::unique_lock lk(w.m);
    comm_obj* c = comm_of(comm);
    if (gone(c)) return ncclInvalidArgument;
    ++w.allreduce_calls;
    if (c->block_allreduce_call) {
      // Until the abort; 10 s at most, so that a test of code that never
      // aborts fails instead of hanging.
      w.cv.wait_for(lk, std::chrono::seconds(10), [&] { return c->aborted; });
      return ncclSystemError;
    }
    w.last_reduce_op = op;
    return enqueue(c, coll_kind::reduce, send, recv, count, type, op, -1, s);
  }
  static ncclResult_t broadcast(const void* send, void* recv, std::size_t count, ncclDataType_t type, int root,
                                ncclComm_t comm, cudaStream_t s) {
    call_hook("ncclBroadcast");
    std::lock_guard lk(world().m);
    comm_obj* c = comm_of(comm);
    if (gone(c)) return ncclInvalidArgument;
    return enqueue(c, coll_kind::broadcast, send, recv, count, type, ncclSum, root, s);
  }
  static ncclResult_t all_gather(const void* send, void* recv, std::size_t count, ncclDataType_t type,
                                 ncclComm_t comm, cudaStream_t s) {
    call_hook("ncclAllGather");
    std::lock_guard lk(world().m);
    comm_obj* c = comm_of(comm);
    if (gone(c)) return ncclInvalidArgument;
    return enqueue(c, coll_kind::gather, send, recv, count, type, ncclSum, -1, s);
  }
  static ncclResult_t comm_abort(ncclComm_t comm) {
    call_hook("ncclCommAbort");
    auto& w = world();
    std::lock_guard lk(w.m);
    comm_obj* c = comm_of(comm);
    if (gone(c)) return ncclInvalidArgument;
    c->aborted = true;
    c->freed = true;
    ++w.aborts;
    pump();
    w.cv.notify_all();
    return ncclSuccess;
  }
  static ncclResult_t comm_destroy(ncclComm_t comm) {
    call_hook("ncclCommDestroy");
    auto& w = world();
    std::lock_guard lk(w.m);
    comm_obj* c = comm_of(comm);
    if (gone(c)) return ncclInvalidArgument;
    c->freed = true;
    ++w.destroys;
    pump();
    w.cv.notify_all();
    return ncclSuccess;
  }
  static ncclResult_t comm_finalize(ncclComm_t comm) {
    call_hook("ncclCommFinalize");
    auto& w = world();
    std::unique_lock lk(w.m);
    comm_obj* c = comm_of(comm);
    if (gone(c)) return ncclInvalidArgument;
    c->finalizing = true;
    ++w.finalizes;
    if (!c->blocking) return ncclInProgress;
    const auto started = clock::now();
    // Blocking: returns once flushed, or (stuck) once aborted.
    for (;;) {
      pump();
      if (c->aborted) return ncclSystemError;
      if (clock::now() - started > std::chrono::seconds(10)) return ncclSystemError;  // never hang a test
      if (!c->finalize_never && c->pending_items == 0) return ncclSuccess;
      w.cv.wait_for(lk, std::chrono::microseconds(200));
    }
  }
  static ncclResult_t comm_get_async_error(ncclComm_t comm, ncclResult_t* e) {
    call_hook("ncclCommGetAsyncError");
    auto& w = world();
    std::lock_guard lk(w.m);
    comm_obj* c = comm_of(comm);
    if (gone(c)) return ncclInvalidArgument;
    pump();
    if (!c->ready && c->clique->joined == c->clique->size && !c->init_never) c->ready = true;
    if (!c->ready) {
      *e = ncclInProgress;
      return ncclSuccess;
    }
    if (c->pending_polls > 0) {
      --c->pending_polls;
      *e = ncclInProgress;
      return ncclSuccess;
    }
    if (c->finalizing) {
      *e = (c->finalize_never || c->pending_items != 0) ? ncclInProgress : ncclSuccess;
      return ncclSuccess;
    }
    *e = (c->async_error_at && clock::now() >= *c->async_error_at) ? c->async_error : ncclSuccess;
    return ncclSuccess;
  }
  static ncclResult_t get_unique_id(ncclUniqueId* id) {
    call_hook("ncclGetUniqueId");
    auto& w = world();
    std::lock_guard lk(w.m);
    if (w.fail_unique_id) return ncclSystemError;
    *id = ncclUniqueId{};
    const std::uint64_t n = w.next_id++;
    std::memcpy(id->internal, &n, sizeof n);
    ++w.unique_ids;
    return ncclSuccess;
  }
  static ncclResult_t comm_init_rank_nonblocking(ncclComm_t* comm, int size, ncclUniqueId id, int rank) {
    call_hook("ncclCommInitRankConfig");
    std::lock_guard lk(world().m);
    std::uint64_t n = 0;
    std::memcpy(&n, id.internal, sizeof n);
    clique_obj* cl = clique_for({n, -1}, size);
    *comm = reinterpret_cast<ncclComm_t>(new_comm(cl, rank, false));
    return ncclInProgress;
  }
  static ncclResult_t comm_init_all(ncclComm_t* comms, int n, const int*) {
    auto& w = world();
    std::lock_guard lk(w.m);
    clique_obj* cl = clique_for({w.next_id++, -2}, n);
    for (int r = 0; r < n; ++r) {
      comm_obj* c = new_comm(cl, r, true);
      c->ready = true;
      comms[r] = reinterpret_cast<ncclComm_t>(c);
    }
    return ncclSuccess;
  }
  static ncclResult_t comm_split_nonblocking(ncclComm_t parent, int color, int key, ncclComm_t* child) {
    call_hook("ncclCommSplit");
    std::lock_guard lk(world().m);
    comm_obj* p = comm_of(parent);
    if (gone(p)) return ncclInvalidArgument;
    // A split is collective: every rank makes it at the same position of
    // the parent's sequence, so that position names the child clique.
    const std::uint64_t split_no = p->next_seq;
    const std::uint64_t tag = reinterpret_cast<std::uintptr_t>(p->clique) ^ (split_no << 48);
    clique_obj* cl = clique_for({tag, color}, p->size);
    *child = reinterpret_cast<ncclComm_t>(new_comm(cl, key, false));
    return ncclInProgress;
  }
  static ncclResult_t comm_count(ncclComm_t comm, int* n) {
    std::lock_guard lk(world().m);
    comm_obj* c = comm_of(comm);
    if (gone(c)) return ncclInvalidArgument;
    *n = c->size;
    return ncclSuccess;
  }
  static ncclResult_t comm_user_rank(ncclComm_t comm, int* r) {
    std::lock_guard lk(world().m);
    comm_obj* c = comm_of(comm);
    if (gone(c)) return ncclInvalidArgument;
    *r = c->rank;
    return ncclSuccess;
  }
  static ncclResult_t comm_cu_device(ncclComm_t comm, int* d) {
    std::lock_guard lk(world().m);
    comm_obj* c = comm_of(comm);
    if (gone(c)) return ncclInvalidArgument;
    *d = c->device;
    return ncclSuccess;
  }
  static const char* nccl_error_string(ncclResult_t r) {
    switch (r) {
      case ncclSuccess: return "no error";
      case ncclSystemError: return "unhandled system error (fake)";
      case ncclRemoteError: return "remote process exited or there was a network error (fake)";
      case ncclInvalidArgument: return "invalid argument (fake)";
      case ncclInvalidUsage: return "invalid usage (fake)";
      case ncclInProgress: return "NCCL operation in progress (fake)";
      default: return "fake NCCL error";
    }
  }
  static const char* nccl_last_error(ncclComm_t comm) {
    std::lock_guard lk(world().m);
    if (comm != nullptr && gone(comm_of(comm))) return "";
    return "fake last error";
  }
};

}  // namespace dasgd_test::fake_nccl
