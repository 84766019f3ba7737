// Host mode: the host backend's fused pass against a STREAM-triad-like loop
// that moves the same bytes over the same buffers. The baseline reads every
// stream the fused pass reads and writes every stream it writes, with the
// cheapest arithmetic that still depends on every input, so
//   ratio = t_baseline / t_fused   (median over back-to-back sample pairs)
// is the fused loop's bandwidth efficiency on this CPU.
//
// Threads: the host backend is single-threaded per worker. With T > 1 the
// benchmark runs T workers, each on a contiguous slice of every tensor (what
// T trainer threads over disjoint parameter shards would do), and the
// baseline is split the same way.
#pragma once

#include <algorithm>
#include <chrono>
#include <cstddef>
#include <memory>
#include <thread>
#include <vector>

#include <dasgd/core/backend.hpp>
#include <dasgd/core/delayed_averager.hpp>
#include <dasgd/core/tensor_list.hpp>
#include <dasgd/kernels/host/host_backend.hpp>

#include "bench_case.hpp"
#include "dispatch.hpp"
#include "results.hpp"

namespace dasgd::bench::host {

/// Initial values: normal numbers of unit order, so neither loop ever meets
/// denormals, and different per stream so a misrouted pointer changes results
/// (the gradient is not the momentum fixed point g = (1 - 0.9) * state0).
inline constexpr double init_weight = 0.5, init_grad = 0.02, init_state0 = 0.1,
                        init_state1 = 0.2, init_snapshot = 0.45, init_average = 0.55;

/// The trainer-side buffers of one case in arena layout (detail::arena_offsets).
/// Weights and gradients use the same layout, as if the user kept them in
/// one allocation. Streams the case does not touch are not allocated.
template <class T>
struct case_arenas {
  std::vector<std::size_t> offsets;
  std::size_t size = 0;
  dasgd::detail::aligned_buffer<T> w, g, state0, state1, snapshot, average;

  explicit case_arenas(const bench_case& c) {
    offsets = dasgd::detail::arena_offsets(c.shape->extents, size);
    const auto stages = c.mode->stages;
    auto make = [&](dasgd::detail::aligned_buffer<T>& b, bool used, double value) {
      if (!used) return;
      b = dasgd::detail::aligned_buffer<T>(size);
      std::fill(b.data(), b.data() + size, static_cast<T>(value));
    };
    make(w, true, init_weight);
    make(g, true, init_grad);
    make(state0, c.optimizer->state_count >= 1, init_state0);
    make(state1, c.optimizer->state_count >= 2, init_state1);
    make(snapshot,
         kernels::has(stages, kernels::stage::write_snapshot) ||
             kernels::has(stages, kernels::stage::merge_snapshot),
         init_snapshot);
    make(average, kernels::has(stages, kernels::stage::merge), init_average);
  }

  /// Bytes the arenas of case c occupy (for the memory limit, before allocating).
  static std::size_t footprint(const bench_case& c) {
    std::size_t size = 0;
    (void)dasgd::detail::arena_offsets(c.shape->extents, size);
    const auto s = c.mode->stages;
    const std::size_t streams =
        2 + static_cast<std::size_t>(c.optimizer->state_count) +
        (kernels::has(s, kernels::stage::write_snapshot) ||
         kernels::has(s, kernels::stage::merge_snapshot)) +
        kernels::has(s, kernels::stage::merge);
    return streams * size * sizeof(T);
  }
};

/// One worker's share: slice [b, e) of every tensor, as the pass arguments
/// of the host backend (offsets shifted by b) and as the baseline's streams.
template <class T>
struct worker_share {
  tensor_list<T> weights;
  tensor_list<const T> grads;
  std::vector<std::size_t> offsets;
  pass_args<T, T, host_space> args;

  worker_share(case_arenas<T>& a, const bench_case& c, int worker, int workers) {
    const auto& ext = c.shape->extents;
    for (std::size_t i = 0; i < ext.size(); ++i) {
      const std::size_t b = ext[i] * static_cast<std::size_t>(worker) / static_cast<std::size_t>(workers);
      const std::size_t e = ext[i] * static_cast<std::size_t>(worker + 1) / static_cast<std::size_t>(workers);
      const std::size_t off = a.offsets[i] + b;
      weights.add(a.w.data() + off, e - b);
      grads.add(a.g.data() + off, e - b);
      offsets.push_back(off);
    }
    args.weights = &weights;
    args.grads = &grads;
    args.offsets = offsets.data();
    args.state[0] = a.state0.data();
    args.state[1] = a.state1.data();
    args.snapshot = a.snapshot.data();
    args.average = a.average.data();
    const auto& m = c.mode->merge;
    args.merge = {static_cast<T>(m.a), static_cast<T>(m.b), static_cast<T>(m.c)};
  }
  worker_share(const worker_share&) = delete;  // args points into this object
  worker_share& operator=(const worker_share&) = delete;
};

// ---- the STREAM-triad-like baseline -------------------------------------------

/// RW streams read and written, RO read-only, WO write-only. Each output is
/// the mean of all inputs (keeps values bounded over many passes). Pointers
/// of different streams never alias, and no element depends on another.
template <int RW, int RO, int WO, class T>
void stream_triad(std::size_t n, T* const* rw_in, const T* const* ro_in, T* const* wo_in) {
  T* rw[RW > 0 ? RW : 1];
  const T* ro[RO > 0 ? RO : 1];
  T* wo[WO > 0 ? WO : 1];
  for (int k = 0; k < RW; ++k) rw[k] = rw_in[k];
  for (int k = 0; k < RO; ++k) ro[k] = ro_in[k];
  for (int k = 0; k < WO; ++k) wo[k] = wo_in[k];
  const T inv = T(1) / T(RW + RO);
#if defined(__clang__)
#pragma clang loop vectorize(assume_safety)
#elif defined(__GNUC__)
#pragma GCC ivdep
#endif
  for (std::size_t i = 0; i < n; ++i) {
    T acc = T(0);
    for (int k = 0; k < RW; ++k) acc += rw[k][i];
    for (int k = 0; k < RO; ++k) acc += ro[k][i];
    acc *= inv;
    for (int k = 0; k < RW; ++k) rw[k][i] = acc;
    for (int k = 0; k < WO; ++k) wo[k][i] = acc;
  }
}

namespace detail {
template <class T, int RW, int RO, int WO>
void triad_dispatch_wo(int wo, std::size_t n, T* const* a, const T* const* b, T* const* c) {
  if (wo == WO) return stream_triad<RW, RO, WO>(n, a, b, c);
  if constexpr (WO < 1) return triad_dispatch_wo<T, RW, RO, WO + 1>(wo, n, a, b, c);
  DASGD_THROW(config_error, "stream triad: ", wo, " write-only streams are not instantiated");
}
template <class T, int RW, int RO>
void triad_dispatch_ro(int ro, int wo, std::size_t n, T* const* a, const T* const* b, T* const* c) {
  if (ro == RO) return triad_dispatch_wo<T, RW, RO, 0>(wo, n, a, b, c);
  if constexpr (RO < 3) return triad_dispatch_ro<T, RW, RO + 1>(ro, wo, n, a, b, c);
  DASGD_THROW(config_error, "stream triad: ", ro, " read-only streams are not instantiated");
}
template <class T, int RW>
void triad_dispatch_rw(int rw, int ro, int wo, std::size_t n, T* const* a, const T* const* b,
                       T* const* c) {
  if (rw == RW) return triad_dispatch_ro<T, RW, 1>(ro, wo, n, a, b, c);
  if constexpr (RW < 3) return triad_dispatch_rw<T, RW + 1>(rw, ro, wo, n, a, b, c);
  DASGD_THROW(config_error, "stream triad: ", rw, " read-write streams are not instantiated");
}
}  // namespace detail

/// The baseline's pointers for one worker: per tensor slice, the same
/// streams the fused pass touches (stream_counts of the case).
template <class T>
struct triad_plan {
  stream_counts counts;
  std::vector<std::size_t> extents;
  std::vector<std::vector<T*>> rw, wo;
  std::vector<std::vector<const T*>> ro;

  triad_plan(case_arenas<T>& a, const worker_share<T>& share, const bench_case& c)
      : counts(c.streams()) {
    DASGD_REQUIRE(!c.precision->master, config_error,
                  "host mode has no master-weight precisions, got '", c.precision->name, "'");
    const auto s = c.mode->stages;
    for (std::size_t i = 0; i < share.weights.size(); ++i) {
      const std::size_t off = share.offsets[i];
      extents.push_back(share.weights.extent(i));
      std::vector<T*> rwi{a.w.data() + off}, woi;
      std::vector<const T*> roi{a.g.data() + off};
      if (c.optimizer->state_count >= 1) rwi.push_back(a.state0.data() + off);
      if (c.optimizer->state_count >= 2) rwi.push_back(a.state1.data() + off);
      if (kernels::has(s, kernels::stage::merge)) roi.push_back(a.average.data() + off);
      if (kernels::has(s, kernels::stage::merge_snapshot)) roi.push_back(a.snapshot.data() + off);
      if (kernels::has(s, kernels::stage::write_snapshot)) woi.push_back(a.snapshot.data() + off);
      // The baseline must move exactly the bytes the fused pass is credited with.
      DASGD_REQUIRE(static_cast<int>(rwi.size()) ==
                            counts.storage_read_write + counts.compute_read_write &&
                        static_cast<int>(roi.size()) == counts.storage_read &&
                        static_cast<int>(woi.size()) == counts.storage_write,
                    state_error, "stream triad of case ", c.key(),
                    " does not match the case's byte accounting");
      rw.push_back(std::move(rwi));
      ro.push_back(std::move(roi));
      wo.push_back(std::move(woi));
    }
  }

  void run() const {
    for (std::size_t i = 0; i < extents.size(); ++i)
      detail::triad_dispatch_rw<T, 1>(static_cast<int>(rw[i].size()), static_cast<int>(ro[i].size()),
                                      static_cast<int>(wo[i].size()), extents[i], rw[i].data(),
                                      ro[i].data(), wo[i].data());
  }
};

// ---- measurement -----------------------------------------------------------------

/// Runs f(0..workers-1), worker 0 on the calling thread.
template <class F>
void run_workers(int workers, const F& f) {
  if (workers == 1) {
    f(0);
    return;
  }
  std::vector<std::jthread> pool;
  for (int t = 1; t < workers; ++t) pool.emplace_back([&f, t] { f(t); });
  f(0);
}

template <class F>
double seconds_of(const F& f) {
  const auto t0 = std::chrono::steady_clock::now();
  f();
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

struct host_timing {
  double fused_s = 0;     ///< median
  double baseline_s = 0;  ///< median
  double pair_ratio = 0;  ///< median of baseline / fused over sample pairs
  int samples = 0;
};

/// Warm-up, then alternating fused/baseline samples (the order flips every
/// sample so neither loop always runs on the other's cache leftovers) until
/// both `repeats` samples and `min_seconds` of fused time are reached.
template <class Fused, class Baseline>
host_timing time_pair(const Fused& fused, const Baseline& baseline, int warmup, int repeats,
                      double min_seconds) {
  for (int i = 0; i < warmup; ++i) {
    fused();
    baseline();
  }
  std::vector<double> tf, tb;
  double total = 0;
  const int max_samples = std::max(repeats, 200);
  for (int r = 0; (r < repeats || total < min_seconds) && r < max_samples; ++r) {
    if (r % 2 == 0) {
      tf.push_back(seconds_of(fused));
      tb.push_back(seconds_of(baseline));
    } else {
      tb.push_back(seconds_of(baseline));
      tf.push_back(seconds_of(fused));
    }
    total += tf.back();
  }
  return {median(tf), median(tb), median_pair_ratio(tf, tb), static_cast<int>(tf.size())};
}

/// Measures case c (storage and compute type T) with `workers` threads.
template <class T>
result_row measure_case(const bench_case& c, int workers, const options& o,
                        const std::string& device) {
  case_arenas<T> arenas(c);
  std::vector<std::unique_ptr<worker_share<T>>> shares;
  std::vector<triad_plan<T>> triads;
  for (int t = 0; t < workers; ++t) {
    shares.push_back(std::make_unique<worker_share<T>>(arenas, c, t, workers));
    triads.emplace_back(arenas, *shares.back(), c);
  }
  host_timing timing;
  with_element<T>(*c.optimizer, [&](const auto& elem) {
    with_stage(*c.mode, [&]<kernels::stage S>() {
      const host_backend backend;
      auto fused = [&] { run_workers(workers, [&](int t) { backend.run<S>(shares[t]->args, elem); }); };
      auto baseline = [&] { run_workers(workers, [&](int t) { triads[t].run(); }); };
      timing = time_pair(fused, baseline, o.warmup, o.repeats, o.min_seconds);
    });
  });
  result_row r;
  r.impl = "dasgd-host";
  r.device = device;
  r.c = &c;
  r.threads = workers;
  r.time_s = timing.fused_s;
  r.baseline = "stream-triad";
  r.baseline_time_s = timing.baseline_s;
  r.pair_ratio = timing.pair_ratio;
  r.repeats = timing.samples;
  return r;
}

}  // namespace dasgd::bench::host
