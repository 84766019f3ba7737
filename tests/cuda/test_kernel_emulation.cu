// The CUDA kernel's per-thread code, run on the host: kernels::cuda's block
// function is __host__ __device__ and its threads share nothing, so looping
// over every (block, thread) of every chunk table the backend would launch
// executes the kernel exactly. Compiled by the same host compiler as the
// host backend (no FMA contraction), the result must be bit-identical to the
// host backend's. This checks, without a GPU: chunk tables and their launch
// boundaries, the block -> tensor search, chunk and tail index math, the
// alignment decision (vector vs scalar path, user tensors misaligned by 1..7
// elements), which streams each stage touches, master handling, and that
// nothing outside the tensors is written.
#include <doctest/doctest.h>

#include <dasgd/core/delayed_averager.hpp>  // arena_offsets: the trainer's layout
#include <dasgd/core/merge_rule.hpp>
#include <dasgd/kernels/cuda/cuda_backend.cuh>
#include <dasgd/kernels/host/host_backend.hpp>
#include <dasgd/optim/adamw.hpp>
#include <dasgd/optim/sgd.hpp>

#include <cstddef>
#include <cstdint>
#include <random>
#include <string>
#include <variant>
#include <vector>

#include "cuda/storage_tolerance.hpp"

namespace emulation_policies {
struct tiny {
  static constexpr dasgd::kernels::cuda::fused_update_tuning tuning{
      .threads_per_block = 32, .chunk_elements = 64, .max_tensors_per_launch = 3};
};
}  // namespace emulation_policies

namespace {

using namespace dasgd;
namespace ks = dasgd::kernels;
namespace kc = dasgd::kernels::cuda;

struct spec {
  std::size_t n, w_shift = 0, g_shift = 0;
};

std::vector<spec> standard_specs() {
  return {{0},         {1},         {3},         {7},        {8},          {9},
          {1023},      {65535},     {65537},     {131073},   {1, 1, 0},    {9, 1, 3},
          {1023, 3, 5}, {65537, 7, 2}, {8, 0, 4}, {100, 5, 0}, {4096, 6, 1}, {130, 2, 2}};
}

std::vector<spec> many_small_specs(std::size_t count, std::uint32_t seed) {
  std::mt19937 rng(seed);
  std::uniform_int_distribution<std::size_t> n(0, 300), shift(0, 7);
  std::vector<spec> s;
  for (std::size_t i = 0; i < count; ++i) s.push_back({n(rng), shift(rng), shift(rng)});
  return s;
}

template <class T>
struct buffers {
  using C = default_compute_t<T>;
  std::vector<T> w, g, snap, avg;
  std::vector<C> master, s0, s1;
  bool operator==(const buffers& o) const {
    auto same = [](const auto& a, const auto& b) {
      if (a.size() != b.size()) return false;
      for (std::size_t i = 0; i < a.size(); ++i)
        if (!test::same_bits(a[i], b[i])) return false;
      return true;
    };
    return same(w, o.w) && same(g, o.g) && same(snap, o.snap) && same(avg, o.avg) &&
           same(master, o.master) && same(s0, o.s0) && same(s1, o.s1);
  }
};

template <class T>
class emulation {
 public:
  using C = default_compute_t<T>;

  explicit emulation(std::vector<spec> specs) : specs_(std::move(specs)) {
    std::size_t wpos = 0, gpos = 0;
    std::vector<std::size_t> extents;
    for (const auto& t : specs_) {
      w_pos_.push_back(wpos + t.w_shift);
      g_pos_.push_back(gpos + t.g_shift);
      wpos = (w_pos_.back() + t.n + 13 + 15) / 16 * 16;
      gpos = (g_pos_.back() + t.n + 13 + 15) / 16 * 16;
      extents.push_back(t.n);
    }
    offsets_ = dasgd::detail::arena_offsets(extents, arena_);
    std::mt19937 rng(99);
    auto fill = [&](auto& v, std::size_t n, double lo, double hi) {
      using V = typename std::decay_t<decltype(v)>::value_type;
      v.resize(n);
      for (auto& x : v) x = test::random_storage<V>(rng, lo, hi);
    };
    fill(init_.w, wpos, -1, 1);
    fill(init_.g, gpos, -1, 1);
    fill(init_.snap, arena_, -1, 1);
    fill(init_.avg, arena_, -1, 1);
    fill(init_.master, arena_, -1, 1);
    fill(init_.s0, arena_, -0.5, 0.5);
    fill(init_.s1, arena_, 0.01, 0.5);
  }

  std::size_t nonempty() const {
    std::size_t k = 0;
    for (const auto& s : specs_) k += s.n > 0;
    return k;
  }

  /// Runs S on the host backend and on the emulated kernel; returns the
  /// number of chunk tables (kernel launches) the emulation used.
  template <ks::stage S, class Policy = kc::default_fused_update_policy, class E>
  int check(const E& elem, const merge_coefficients& mc, bool use_master) {
    buffers<T> ref = init_, emu = init_;
    const ks::merge_coeffs<C> m{C(mc.a), C(mc.b), C(mc.c)};
    tensor_list<T, host_space> hw;
    tensor_list<const T, host_space> hg;
    tensor_list<T, device_space> ew;
    tensor_list<const T, device_space> eg;
    for (std::size_t i = 0; i < specs_.size(); ++i) {
      hw.add(ref.w.data() + w_pos_[i], specs_[i].n);
      hg.add(ref.g.data() + g_pos_[i], specs_[i].n);
      ew.add(emu.w.data() + w_pos_[i], specs_[i].n);
      eg.add(emu.g.data() + g_pos_[i], specs_[i].n);
    }
    constexpr bool step = has(S, ks::stage::local_step);
    constexpr int states = step ? E::state_count : 0;
    constexpr bool snap = has(S, ks::stage::write_snapshot) || has(S, ks::stage::merge_snapshot);
    constexpr bool avg = has(S, ks::stage::merge);
    auto fill_args = [&](auto& a, auto& b, auto* w, auto* g) {
      a.weights = w;
      a.grads = step ? g : nullptr;
      a.offsets = offsets_.data();
      a.master = use_master ? b.master.data() : nullptr;
      a.state[0] = states > 0 ? b.s0.data() : nullptr;
      a.state[1] = states > 1 ? b.s1.data() : nullptr;
      a.snapshot = snap ? b.snap.data() : nullptr;
      a.average = avg ? b.avg.data() : nullptr;
      a.merge = m;
    };
    pass_args<T, C, host_space> ha;
    fill_args(ha, ref, &hw, &hg);
    pass_args<T, C, device_space> ea;
    fill_args(ea, emu, &ew, &eg);
    REQUIRE(kc::can_implement<S, E, T, C, Policy>(ea));

    host_backend().run<S>(ha, elem);
    auto run_grid = [&](const auto& p, std::size_t blocks) {
      const auto threads = static_cast<std::uint32_t>(Policy::tuning.threads_per_block);
      for (std::size_t b = 0; b < blocks; ++b)
        for (std::uint32_t t = 0; t < threads; ++t)
          kc::detail::update_block<Policy, S, true>(p, static_cast<std::uint32_t>(b), t, threads);
    };
    auto run_grid_plain = [&](const auto& p, std::size_t blocks) {
      const auto threads = static_cast<std::uint32_t>(Policy::tuning.threads_per_block);
      for (std::size_t b = 0; b < blocks; ++b)
        for (std::uint32_t t = 0; t < threads; ++t)
          kc::detail::update_block<Policy, S, false>(p, static_cast<std::uint32_t>(b), t, threads);
    };
    const int tables = use_master ? kc::for_each_chunk_table<Policy, S, true>(ea, elem, run_grid)
                                  : kc::for_each_chunk_table<Policy, S, false>(ea, elem, run_grid_plain);
    CHECK(emu == ref);
    // The pass did something (otherwise equality above would be vacuous).
    if constexpr (step || avg || has(S, ks::stage::write_snapshot)) CHECK_FALSE(emu == init_);
    return tables;
  }

 private:
  std::vector<spec> specs_;
  std::vector<std::size_t> w_pos_, g_pos_, offsets_;
  std::size_t arena_ = 0;
  buffers<T> init_;
};

struct optimizer_case {
  const char* name;
  std::variant<optim::sgd, optim::adamw> opt;
  std::int64_t local_step;
};

const optimizer_case optimizers[] = {
    {"sgd+weight_decay", optim::sgd{.lr = 0.1, .weight_decay = 0.01}, 1},
    {"momentum first step", optim::sgd{.lr = 0.1, .momentum = 0.9}, 0},
    {"nesterov+weight_decay", optim::sgd{.lr = 0.05, .momentum = 0.9, .weight_decay = 1e-3, .nesterov = true}, 2},
    {"adamw", optim::adamw{.lr = 1e-2, .beta1 = 0.9, .beta2 = 0.99, .eps = 1e-6, .weight_decay = 0.1}, 3},
};

template <class C, class F>
void with_element(const optimizer_case& oc, F&& f) {
  std::visit([&](const auto& o) { o.template visit_element<C>(oc.local_step, f); }, oc.opt);
}

const merge_coefficients mix{0.25, 0.75, 0.0};
const merge_coefficients correct{0.5, 0.7, -0.2};

template <class T>
void every_pass(emulation<T>& em, bool master) {
  using C = default_compute_t<T>;
  const int tables = int((em.nonempty() + 95) / 96);
  for (const auto& oc : optimizers) {
    INFO("optimizer ", std::string(oc.name), ", master ", master);
    with_element<C>(oc, [&](const auto& e) {
      CHECK(em.template check<ks::plain_step>(e, {}, master) == tables);
      CHECK(em.template check<ks::step_and_snapshot>(e, {}, master) == tables);
      CHECK(em.template check<ks::step_and_mix>(e, mix, master) == tables);
      CHECK(em.template check<ks::step_and_correct>(e, correct, master) == tables);
    });
  }
  INFO("merge-only passes, master ", master);
  const ks::no_step_element<C> none;
  CHECK(em.template check<ks::mix_only>(none, mix, master) == tables);
  CHECK(em.template check<ks::correct_only>(none, correct, master) == tables);
  CHECK(em.template check<ks::snapshot_only>(none, {}, master) == tables);
}

}  // namespace

TEST_CASE_TEMPLATE("emulated kernel is bit-identical to the host backend", T, float, __half,
                   __nv_bfloat16) {
  emulation<T> em(standard_specs());
  every_pass(em, false);
  every_pass(em, true);
}

TEST_CASE("emulated kernel in double precision") {
  emulation<double> em(standard_specs());
  every_pass(em, false);
}

TEST_CASE("emulated kernel with a tiny policy: many chunks and tables") {
  emulation<__half> em(standard_specs());
  const int tables = int((em.nonempty() + 2) / 3);
  for (bool master : {false, true}) {
    with_element<float>(optimizers[3], [&](const auto& e) {
      CHECK(em.check<ks::step_and_correct, emulation_policies::tiny>(e, correct, master) == tables);
    });
    with_element<float>(optimizers[1], [&](const auto& e) {
      CHECK(em.check<ks::step_and_snapshot, emulation_policies::tiny>(e, {}, master) == tables);
    });
    CHECK(em.check<ks::mix_only, emulation_policies::tiny>(ks::no_step_element<float>{}, mix, master) ==
          tables);
  }
}

TEST_CASE("emulated kernel over 1000 small tensors (11 chunk tables)") {
  emulation<__nv_bfloat16> em(many_small_specs(1000, 5));
  const int tables = int((em.nonempty() + 95) / 96);
  CHECK(tables >= 10);
  with_element<float>(optimizers[3], [&](const auto& e) {
    CHECK(em.check<ks::step_and_correct>(e, correct, true) == tables);
    CHECK(em.check<ks::plain_step>(e, {}, false) == tables);
  });
  emulation<float> ef(many_small_specs(1000, 6));
  with_element<float>(optimizers[2], [&](const auto& e) {
    CHECK(ef.check<ks::step_and_mix>(e, mix, false) == int((ef.nonempty() + 95) / 96));
  });
}
