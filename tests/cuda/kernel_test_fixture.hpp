// What the fused-kernel tests share: the GPU test (test_fused_kernel.cu, the
// kernel on a device against the host backend) and the emulation test
// (test_kernel_emulation.cu, the kernel's per-thread code run on the host).
// Both lay user tensors out with misaligned starts and guard gaps, fill the
// same streams with the same kind of random input, point a pass's arguments
// at exactly the streams a stage uses, and walk the same optimizer cases.
// Host-only C++ (nvcc or the host compiler); nothing here touches a device.
#pragma once

#include <dasgd/core/backend.hpp>
#include <dasgd/core/arena_layout.hpp>  // arena_offsets: the trainer's layout
#include <dasgd/core/merge_rule.hpp>
#include <dasgd/core/precision.hpp>
#include <dasgd/core/tensor_list.hpp>
#include <dasgd/kernels/cuda/tuning.hpp>
#include <dasgd/kernels/stage.hpp>
#include <dasgd/optim/adamw.hpp>
#include <dasgd/optim/sgd.hpp>

#include <cstddef>
#include <cstdint>
#include <random>
#include <type_traits>
#include <utility>
#include <variant>
#include <vector>

#include "cuda/storage_tolerance.hpp"

namespace dasgd::test {

// The kernel tests' short names (theirs through `using namespace dasgd::test`).
namespace ks = dasgd::kernels;
namespace kc = dasgd::kernels::cuda;

namespace policies {
/// Tiny chunks, tables and blocks: many chunks per tensor and many launches
/// per pass even for small inputs, so index math and table boundaries are
/// exercised cheaply.
struct tiny {
  static constexpr kc::fused_update_tuning tuning{
      .threads_per_block = 32, .chunk_elements = 64, .max_tensors_per_launch = 3};
};
/// The same with one and four vector groups per thread per iteration.
struct tiny_unroll1 {
  static constexpr kc::fused_update_tuning tuning{.threads_per_block = 32, .chunk_elements = 64,
                                                  .max_tensors_per_launch = 3, .vector_unroll = 1};
};
struct tiny_unroll4 {
  static constexpr kc::fused_update_tuning tuning{.threads_per_block = 32, .chunk_elements = 256,
                                                  .max_tensors_per_launch = 3, .vector_unroll = 4};
};
}  // namespace policies

/// One user tensor: its size and how many elements its weight and gradient
/// start after a 16-element boundary (1..7: misaligned for every type).
struct tensor_spec {
  std::size_t n;
  std::size_t w_shift = 0;
  std::size_t g_shift = 0;
};

/// Where the user tensors live: each weight (gradient) starts its shift
/// after a 16-element boundary in one weight (gradient) buffer, with at
/// least `guard` untouched elements before the next one; optimizer state,
/// snapshot, average and master share the trainer's arena layout.
struct tensor_layout {
  static constexpr std::size_t guard = 13;  // elements between user tensors

  std::vector<tensor_spec> specs;
  std::vector<std::size_t> w_pos, g_pos, offsets;
  std::size_t w_size = 0, g_size = 0, arena = 0;

  explicit tensor_layout(std::vector<tensor_spec> s) : specs(std::move(s)) {
    std::vector<std::size_t> extents;
    for (const auto& t : specs) {
      w_pos.push_back(w_size + t.w_shift);
      g_pos.push_back(g_size + t.g_shift);
      w_size = round_up(w_pos.back() + t.n + guard);
      g_size = round_up(g_pos.back() + t.n + guard);
      extents.push_back(t.n);
    }
    offsets = dasgd::detail::arena_offsets(extents, arena);
  }

  std::size_t nonempty_tensors() const {
    std::size_t k = 0;
    for (const auto& t : specs) k += t.n > 0;
    return k;
  }

  static std::size_t round_up(std::size_t x) { return (x + 15) / 16 * 16; }
};

/// Every stream of one pass, in host memory.
template <class T, class C = default_compute_t<T>>
struct host_buffers {
  std::vector<T> w, g, snap, avg;
  std::vector<C> master, s0, s1;

  /// Bitwise equality of every stream (NaN-safe).
  bool operator==(const host_buffers& o) const {
    auto same = [](const auto& a, const auto& b) {
      if (a.size() != b.size()) return false;
      for (std::size_t i = 0; i < a.size(); ++i)
        if (!same_bits(a[i], b[i])) return false;
      return true;
    };
    return same(w, o.w) && same(g, o.g) && same(snap, o.snap) && same(avg, o.avg) &&
           same(master, o.master) && same(s0, o.s0) && same(s1, o.s1);
  }
};

/// Random inputs for a layout: storage and master values in [-1, 1), first
/// state in [-0.5, 0.5), second state in [0.01, 0.5) (second moments are
/// positive). Filled in stream order from one generator seeded with `seed`.
template <class T, class C = default_compute_t<T>>
host_buffers<T, C> random_inputs(const tensor_layout& l, std::uint32_t seed) {
  std::mt19937 rng(seed);
  auto fill = [&](auto& v, std::size_t n, double lo, double hi) {
    using V = typename std::decay_t<decltype(v)>::value_type;
    v.resize(n);
    for (auto& x : v) x = random_storage<V>(rng, lo, hi);
  };
  host_buffers<T, C> b;
  fill(b.w, l.w_size, -1.0, 1.0);
  fill(b.g, l.g_size, -1.0, 1.0);
  fill(b.snap, l.arena, -1.0, 1.0);
  fill(b.avg, l.arena, -1.0, 1.0);
  fill(b.master, l.arena, -1.0, 1.0);
  fill(b.s0, l.arena, -0.5, 0.5);
  fill(b.s1, l.arena, 0.01, 0.5);
  return b;
}

/// The weight and gradient lists of a layout over the buffers starting at
/// `w_base` and `g_base`, in memory space Space (host pointers in a
/// device_space list are what the emulation runs on).
template <class T, class Space>
struct tensor_views {
  tensor_list<T, Space> w;
  tensor_list<const T, Space> g;

  tensor_views(const tensor_layout& l, T* w_base, const T* g_base) {
    for (std::size_t i = 0; i < l.specs.size(); ++i) {
      w.add(w_base + l.w_pos[i], l.specs[i].n);
      g.add(g_base + l.g_pos[i], l.specs[i].n);
    }
  }
};

/// Arguments of a pass of stage S with element E over `views` and the arena
/// streams of `bufs` (host_buffers or device buffers: anything with
/// master/s0/s1/snap/avg exposing data()), merging with `mc` rounded to C.
/// Streams the stage does not use are null, so a pass that touched one
/// would fault instead of passing by luck.
template <ks::stage S, class E, class C, class T, class Space, class Buffers>
pass_args<T, C, Space> make_pass_args(const tensor_views<T, Space>& views, const tensor_layout& l,
                                      Buffers& bufs, bool use_master,
                                      const merge_coefficients& mc) {
  constexpr bool step = has(S, ks::stage::local_step);
  constexpr int states = step ? E::state_count : 0;
  constexpr bool snap = has(S, ks::stage::write_snapshot) || has(S, ks::stage::merge_snapshot);
  constexpr bool avg = has(S, ks::stage::merge);
  pass_args<T, C, Space> a;
  a.weights = &views.w;
  a.grads = step ? &views.g : nullptr;
  a.offsets = l.offsets.data();
  a.master = use_master ? bufs.master.data() : nullptr;
  a.state[0] = states > 0 ? bufs.s0.data() : nullptr;
  a.state[1] = states > 1 ? bufs.s1.data() : nullptr;
  a.snapshot = snap ? bufs.snap.data() : nullptr;
  a.average = avg ? bufs.avg.data() : nullptr;
  a.merge = ks::merge_coeffs<C>{C(mc.a), C(mc.b), C(mc.c)};
  return a;
}

struct optimizer_case {
  const char* name;
  std::variant<optim::sgd, optim::adamw> opt;
  std::int64_t local_step;
};

inline const optimizer_case optimizer_cases[] = {
    {"sgd+weight_decay", optim::sgd{.lr = 0.1, .weight_decay = 0.01}, 1},
    {"momentum first step", optim::sgd{.lr = 0.1, .momentum = 0.9}, 0},
    {"nesterov+weight_decay",
     optim::sgd{.lr = 0.05, .momentum = 0.9, .weight_decay = 1e-3, .nesterov = true}, 2},
    {"adamw", optim::adamw{.lr = 1e-2, .beta1 = 0.9, .beta2 = 0.99, .eps = 1e-6, .weight_decay = 0.1}, 3},
};

/// Calls f with the fused element of `oc` in compute precision C.
template <class C, class F>
void with_element(const optimizer_case& oc, F&& f) {
  std::visit([&](const auto& o) { o.template visit_element<C>(oc.local_step, f); }, oc.opt);
}

inline const merge_coefficients mix_coeffs{0.25, 0.75, 0.0};
inline const merge_coefficients correct_coeffs{0.5, 0.7, -0.2};

}  // namespace dasgd::test
