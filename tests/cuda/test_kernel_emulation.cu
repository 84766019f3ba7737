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

#include <dasgd/core/merge_rule.hpp>
#include <dasgd/kernels/cuda/cuda_backend.cuh>
#include <dasgd/kernels/host/host_backend.hpp>

#include <cstddef>
#include <cstdint>
#include <random>
#include <string>
#include <vector>

#include "cuda/kernel_test_fixture.hpp"

namespace {

using namespace dasgd;
using namespace dasgd::test;  // kernel_test_fixture.hpp; also the ks and kc aliases

std::vector<tensor_spec> standard_specs() {
  return {{0},         {1},         {3},         {7},        {8},          {9},
          {1023},      {65535},     {65537},     {131073},   {1, 1, 0},    {9, 1, 3},
          {1023, 3, 5}, {65537, 7, 2}, {8, 0, 4}, {100, 5, 0}, {4096, 6, 1}, {130, 2, 2}};
}

std::vector<tensor_spec> many_small_specs(std::size_t count, std::uint32_t seed) {
  std::mt19937 rng(seed);
  std::uniform_int_distribution<std::size_t> n(0, 300), shift(0, 7);
  std::vector<tensor_spec> s;
  for (std::size_t i = 0; i < count; ++i) s.push_back({n(rng), shift(rng), shift(rng)});
  return s;
}

template <class T>
class emulation {
 public:
  using C = default_compute_t<T>;

  explicit emulation(std::vector<tensor_spec> specs)
      : layout_(std::move(specs)), init_(test::random_inputs<T>(layout_, 99)) {
    // State planes: first moments in [-0.5, 0.5), second in [0.01, 0.5).
    std::mt19937 rng(7);
    planes_.resize(4 * layout_.arena);
    for (std::size_t i = 0; i < planes_.size(); ++i) {
      const bool second = (i / layout_.arena) % 2 == 1;
      planes_[i] = test::random_storage<T>(rng, second ? 0.01 : -0.5, 0.5);
    }
  }

  std::size_t nonempty() const { return layout_.nonempty_tensors(); }

  /// Runs S on the host backend and on the emulated kernel; returns the
  /// number of chunk tables (kernel launches) the emulation used.
  template <ks::stage S, class Policy = kc::default_fused_update_policy, class E>
  int check(const E& elem, const merge_coefficients& mc, bool use_master,
            const tensor_options* per_tensor = nullptr) {
    test::host_buffers<T> ref = init_, emu = init_;
    const test::tensor_views<T, host_space> h(layout_, ref.w.data(), ref.g.data());
    const test::tensor_views<T, device_space> e(layout_, emu.w.data(), emu.g.data());
    constexpr bool step = has(S, ks::stage::local_step);
    constexpr bool avg = has(S, ks::stage::merge);
    auto ha = test::make_pass_args<S, E, C>(h, layout_, ref, use_master, mc);
    auto ea = test::make_pass_args<S, E, C>(e, layout_, emu, use_master, mc);
    ha.per_tensor = ea.per_tensor = per_tensor;
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
    last_ = ref;
    return tables;
  }

  /// check() for a pass that carries the optimizer state
  /// (stage::average_state): the four state planes (snapshot s0, s1, average
  /// s0, s1) are extra streams, compared bit for bit too. The state is read
  /// even by merge-only passes. Also checks that carrying the state changes
  /// what the pass writes (planes for a snapshot, state for a merge).
  template <ks::stage S, class Policy = kc::default_fused_update_policy, class E>
  void check_state(const E& elem, const merge_coefficients& mc, bool use_master) {
    static_assert(has(S, ks::stage::average_state));
    constexpr int N = E::state_count;
    test::host_buffers<T> ref = init_, emu = init_, plain = init_;
    std::vector<T> planes_ref = planes_, planes_emu = planes_;
    const test::tensor_views<T, host_space> h(layout_, ref.w.data(), ref.g.data());
    const test::tensor_views<T, host_space> hp(layout_, plain.w.data(), plain.g.data());
    const test::tensor_views<T, device_space> e(layout_, emu.w.data(), emu.g.data());
    const std::size_t arena = layout_.arena;
    const auto with_planes = [&](auto args, auto& bufs, std::vector<T>& planes) {
      if constexpr (N > 0) args.state[0] = bufs.s0.data();
      if constexpr (N > 1) args.state[1] = bufs.s1.data();
      for (int st = 0; st < N; ++st) {
        args.state_snapshot[st] = planes.data() + static_cast<std::size_t>(st) * arena;
        args.state_average[st] = planes.data() + static_cast<std::size_t>(2 + st) * arena;
      }
      return args;
    };
    const auto ha = with_planes(test::make_pass_args<S, E, C>(h, layout_, ref, use_master, mc), ref, planes_ref);
    const auto ea = with_planes(test::make_pass_args<S, E, C>(e, layout_, emu, use_master, mc), emu, planes_emu);
    REQUIRE(kc::can_implement<S, E, T, C, Policy>(ea));
    host_backend().run<S>(ha, elem);
    const auto run_grid = [&](const auto& p, std::size_t blocks) {
      const auto threads = static_cast<std::uint32_t>(Policy::tuning.threads_per_block);
      for (std::size_t b = 0; b < blocks; ++b)
        for (std::uint32_t t = 0; t < threads; ++t) {
          if (use_master)
            kc::detail::update_block<Policy, S, true>(p, static_cast<std::uint32_t>(b), t, threads);
          else
            kc::detail::update_block<Policy, S, false>(p, static_cast<std::uint32_t>(b), t, threads);
        }
    };
    if (use_master) kc::for_each_chunk_table<Policy, S, true>(ea, elem, run_grid);
    else kc::for_each_chunk_table<Policy, S, false>(ea, elem, run_grid);
    CHECK(emu == ref);
    bool planes_same = planes_emu.size() == planes_ref.size();
    for (std::size_t i = 0; planes_same && i < planes_ref.size(); ++i)
      planes_same = test::same_bits(planes_emu[i], planes_ref[i]);
    CHECK(planes_same);
    if constexpr (N > 0) {
      // The same pass without the state: the planes stay, the state is not merged.
      constexpr ks::stage P = ks::without(S, ks::stage::average_state);
      auto pa = test::make_pass_args<P, E, C>(hp, layout_, plain, use_master, mc);
      if constexpr (has(P, ks::stage::local_step) || has(P, ks::stage::write_snapshot) ||
                    has(P, ks::stage::merge)) {
        if constexpr (has(P, ks::stage::local_step)) host_backend().run<P>(pa, elem);
        else host_backend().run<P>(pa, ks::no_step_element<C>{});
      }
      if constexpr (has(S, ks::stage::write_snapshot)) CHECK_FALSE(planes_ref == planes_);
      if constexpr (has(S, ks::stage::merge)) CHECK_FALSE(ref.s0 == plain.s0);
    }
  }

  /// The host backend's result of the last check().
  const test::host_buffers<T>& last() const { return last_; }
  std::size_t tensors() const { return layout_.specs.size(); }

 private:
  test::tensor_layout layout_;
  test::host_buffers<T> init_;
  test::host_buffers<T> last_;
  std::vector<T> planes_;  ///< snapshot s0, s1, average s0, s1 (arena layout each)
};

template <class T>
void every_pass(emulation<T>& em, bool master) {
  using C = default_compute_t<T>;
  const int tables = int((em.nonempty() + 95) / 96);
  for (const auto& oc : optimizer_cases) {
    INFO("optimizer ", std::string(oc.name), ", master ", master);
    with_element<C>(oc, [&](const auto& e) {
      CHECK(em.template check<ks::plain_step>(e, {}, master) == tables);
      CHECK(em.template check<ks::step_and_snapshot>(e, {}, master) == tables);
      CHECK(em.template check<ks::step_and_mix>(e, mix_coeffs, master) == tables);
      CHECK(em.template check<ks::step_and_correct>(e, correct_coeffs, master) == tables);
    });
  }
  INFO("merge-only passes, master ", master);
  const ks::no_step_element<C> none;
  CHECK(em.template check<ks::mix_only>(none, mix_coeffs, master) == tables);
  CHECK(em.template check<ks::correct_only>(none, correct_coeffs, master) == tables);
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
    with_element<float>(optimizer_cases[3], [&](const auto& e) {
      CHECK(em.check<ks::step_and_correct, policies::tiny>(e, correct_coeffs, master) == tables);
    });
    with_element<float>(optimizer_cases[1], [&](const auto& e) {
      CHECK(em.check<ks::step_and_snapshot, policies::tiny>(e, {}, master) == tables);
    });
    CHECK(em.check<ks::mix_only, policies::tiny>(ks::no_step_element<float>{}, mix_coeffs, master) ==
          tables);
  }
}

TEST_CASE("emulated kernel over 1000 small tensors (several chunk tables)") {
  constexpr std::size_t pl = kc::default_fused_update_policy::tuning.max_tensors_per_launch;
  emulation<__nv_bfloat16> em(many_small_specs(1000, 5));
  const int tables = int((em.nonempty() + pl - 1) / pl);
  CHECK(tables >= 3);
  with_element<float>(optimizer_cases[3], [&](const auto& e) {
    CHECK(em.check<ks::step_and_correct>(e, correct_coeffs, true) == tables);
    CHECK(em.check<ks::plain_step>(e, {}, false) == tables);
  });
  emulation<float> ef(many_small_specs(1000, 6));
  with_element<float>(optimizer_cases[2], [&](const auto& e) {
    CHECK(ef.check<ks::step_and_mix>(e, mix_coeffs, false) == int((ef.nonempty() + pl - 1) / pl));
  });
}

TEST_CASE("emulated kernel with one and four vector groups per thread") {
  emulation<__nv_bfloat16> em(standard_specs());
  const int tables = int((em.nonempty() + 2) / 3);
  for (bool master : {false, true}) {
    with_element<float>(optimizer_cases[3], [&](const auto& e) {
      CHECK(em.check<ks::step_and_correct, policies::tiny_unroll1>(e, correct_coeffs, master) == tables);
      CHECK(em.check<ks::step_and_correct, policies::tiny_unroll4>(e, correct_coeffs, master) == tables);
    });
    with_element<float>(optimizer_cases[2], [&](const auto& e) {
      CHECK(em.check<ks::step_and_mix, policies::tiny_unroll4>(e, mix_coeffs, master) == tables);
    });
  }
  emulation<float> ef(standard_specs());
  with_element<float>(optimizer_cases[1], [&](const auto& e) {
    CHECK(ef.check<ks::step_and_snapshot, policies::tiny_unroll4>(e, {}, false) ==
          int((ef.nonempty() + 2) / 3));
  });
}

TEST_CASE_TEMPLATE("emulated kernel with parameter groups (per-tensor lr scale and weight decay)", T,
                   float, __nv_bfloat16, double) {
  using C = default_compute_t<T>;
  emulation<T> em(standard_specs());
  std::vector<tensor_options> groups(em.tensors());
  for (std::size_t i = 0; i < groups.size(); ++i)
    groups[i] = {.lr_scale = i % 3 == 0 ? 1.0 : (i % 3 == 1 ? 0.25 : 2.5), .weight_decay = i % 2 == 0};
  for (const auto& oc : optimizer_cases) {
    INFO("optimizer ", std::string(oc.name));
    with_element<C>(oc, [&](const auto& e) {
      for (bool master : {false, true}) {
        if (master && std::is_same_v<T, double>) continue;
        em.template check<ks::plain_step>(e, {}, master);
        const auto without = em.last();
        em.template check<ks::plain_step>(e, {}, master, groups.data());
        CHECK_FALSE(em.last() == without);  // the groups changed the step
        em.template check<ks::step_and_mix>(e, mix_coeffs, master, groups.data());
        em.template check<ks::step_and_snapshot>(e, {}, master, groups.data());
      }
    });
  }
}

namespace {

/// Every pass that carries the optimizer state, for every optimizer: the
/// snapshot writes the state planes, the merges merge the state (merge-only
/// passes read it without a local step), AdamW's second moment is clamped.
template <class T, class Policy = kc::default_fused_update_policy>
void every_state_pass(emulation<T>& em, bool master) {
  using C = default_compute_t<T>;
  constexpr auto A = ks::stage::average_state;
  for (const auto& oc : optimizer_cases) {
    INFO("optimizer ", std::string(oc.name), ", master ", master);
    with_element<C>(oc, [&](const auto& e) {
      em.template check_state<ks::step_and_snapshot | A, Policy>(e, {}, master);
      em.template check_state<ks::step_and_mix | A, Policy>(e, mix_coeffs, master);
      em.template check_state<ks::step_and_correct | A, Policy>(e, correct_coeffs, master);
      em.template check_state<ks::mix_only | A, Policy>(e, mix_coeffs, master);
      em.template check_state<ks::correct_only | A, Policy>(e, correct_coeffs, master);
      em.template check_state<ks::snapshot_only | A, Policy>(e, {}, master);
    });
  }
}

}  // namespace

TEST_CASE_TEMPLATE("emulated kernel carrying the optimizer state (averaged state)", T, float,
                   __nv_bfloat16, double) {
  emulation<T> em(standard_specs());
  every_state_pass(em, false);
  if constexpr (!std::is_same_v<T, double>) every_state_pass(em, true);
  every_state_pass<T, policies::tiny>(em, false);
}
