// The shared element math with 16-bit storage, on the host: the CUDA
// headers compile __half and __nv_bfloat16 for a plain C++ translation
// unit, so the host fused loop (the GPU kernels' reference) runs the exact
// functors the device runs. Each optimizer x stage set x master on/off is
// checked against the naive double-precision reference (support/reference.hpp):
// a stored value must be within one storage ulp of the exact result, and
// almost all of them must be the correctly rounded value.
#include <doctest/doctest.h>

#include <dasgd/kernels/fused_element.hpp>
#include <dasgd/kernels/host/fused_loop.hpp>
#include <dasgd/merge/additive.hpp>
#include <dasgd/merge/linear.hpp>
#include <dasgd/merge/mix.hpp>
#include <dasgd/optim/adamw.hpp>
#include <dasgd/optim/sgd.hpp>

#include <cmath>
#include <cstdint>
#include <limits>
#include <random>
#include <string>
#include <variant>
#include <vector>

#include "cuda/storage_tolerance.hpp"
#include "support/reference.hpp"

namespace {

using namespace dasgd;
namespace ks = dasgd::kernels;

struct sgd_case {
  optim::sgd lib;
  test::ref_sgd ref;
};
struct adamw_case {
  optim::adamw lib;
  test::ref_adamw ref;
};
struct optimizer_case {
  const char* name;
  std::variant<sgd_case, adamw_case> opt;
  std::int64_t local_step;  // which step the pass is (first momentum step, bias correction)
};

std::vector<optimizer_case> optimizer_cases() {
  return {
      {"sgd", sgd_case{{.lr = 0.1}, {.lr = 0.1}}, 0},
      {"sgd+weight_decay", sgd_case{{.lr = 0.05, .weight_decay = 0.05}, {.lr = 0.05, .weight_decay = 0.05}}, 3},
      {"momentum first step", sgd_case{{.lr = 0.1, .momentum = 0.9}, {.lr = 0.1, .momentum = 0.9}}, 0},
      {"momentum", sgd_case{{.lr = 0.1, .momentum = 0.9, .dampening = 0.1},
                            {.lr = 0.1, .momentum = 0.9, .dampening = 0.1}}, 5},
      {"nesterov+weight_decay",
       sgd_case{{.lr = 0.1, .momentum = 0.8, .weight_decay = 1e-2, .nesterov = true},
                {.lr = 0.1, .momentum = 0.8, .weight_decay = 1e-2, .nesterov = true}}, 2},
      {"adamw", adamw_case{{.lr = 1e-2, .beta1 = 0.9, .beta2 = 0.99, .eps = 1e-6, .weight_decay = 0.1},
                           {.lr = 1e-2, .beta1 = 0.9, .beta2 = 0.99, .eps = 1e-6, .weight_decay = 0.1}}, 3},
  };
}

/// The inputs of one pass; the same values serve the library and the oracle.
template <class T>
struct pass_data {
  std::vector<T> w, g, snap, avg;
  std::vector<float> master, s0, s1;
};

template <class T>
pass_data<T> make_inputs(std::size_t n, std::uint32_t seed) {
  std::mt19937 rng(seed);
  pass_data<T> d;
  std::uniform_real_distribution<float> m(-0.5f, 0.5f), v(0.01f, 0.5f), wm(-1.0f, 1.0f);
  for (std::size_t i = 0; i < n; ++i) {
    d.w.push_back(test::random_storage<T>(rng, -1.0, 1.0));
    d.g.push_back(test::random_storage<T>(rng, -1.0, 1.0));
    d.snap.push_back(test::random_storage<T>(rng, -1.0, 1.0));
    d.avg.push_back(test::random_storage<T>(rng, -1.0, 1.0));
    d.master.push_back(wm(rng));  // generally not representable in T
    d.s0.push_back(m(rng));
    d.s1.push_back(v(rng));
  }
  return d;
}

/// Runs the library's host fused loop for stage S; streams the stage does
/// not use are passed as null, so touching one would crash the test.
template <ks::stage S, bool UseMaster, class T>
void run_library(pass_data<T>& d, const optimizer_case& oc, const merge_coefficients& mc) {
  const std::size_t n = d.w.size();
  constexpr bool step = has(S, ks::stage::local_step);
  const ks::merge_coeffs<float> m{float(mc.a), float(mc.b), float(mc.c)};
  float* master = UseMaster ? d.master.data() : nullptr;
  T* snap = (has(S, ks::stage::write_snapshot) || has(S, ks::stage::merge_snapshot)) ? d.snap.data() : nullptr;
  const T* avg = has(S, ks::stage::merge) ? d.avg.data() : nullptr;
  if constexpr (step) {
    auto body = [&](const auto& elem) {
      using E = std::decay_t<decltype(elem)>;
      float* s0 = E::state_count > 0 ? d.s0.data() : nullptr;
      float* s1 = E::state_count > 1 ? d.s1.data() : nullptr;
      ks::host::fused_loop<S, UseMaster>(n, d.w.data(), master, d.g.data(), s0, s1, snap, avg, m, elem);
    };
    std::visit([&](const auto& c) { c.lib.template visit_element<float>(oc.local_step, body); }, oc.opt);
  } else {
    ks::host::fused_loop<S, UseMaster>(n, d.w.data(), master, static_cast<const T*>(nullptr),
                                       static_cast<float*>(nullptr), static_cast<float*>(nullptr),
                                       snap, avg, m, ks::no_step_element<float>{});
  }
}

/// The oracle in double: returns w after the pass; m/v receive the state.
template <ks::stage S, bool UseMaster, class T>
test::vec run_reference(const pass_data<T>& d, const optimizer_case& oc,
                        const merge_coefficients& mc, test::ref_state& st) {
  const std::size_t n = d.w.size();
  test::vec w(n), g(n);
  for (std::size_t i = 0; i < n; ++i) {
    w[i] = UseMaster ? double(d.master[i]) : test::as_double(d.w[i]);
    g[i] = test::as_double(d.g[i]);
  }
  st.m.assign(d.s0.begin(), d.s0.end());
  st.v.assign(d.s1.begin(), d.s1.end());
  st.t = oc.local_step;
  if constexpr (has(S, ks::stage::local_step))
    std::visit([&](const auto& c) { test::ref_step(c.ref, w, g, st); }, oc.opt);
  if constexpr (has(S, ks::stage::merge)) {
    for (std::size_t i = 0; i < n; ++i) {
      double r = mc.a * w[i] + mc.b * test::as_double(d.avg[i]);
      if (has(S, ks::stage::merge_snapshot)) r += mc.c * test::as_double(d.snap[i]);
      w[i] = r;
    }
  }
  return w;
}

template <ks::stage S, bool UseMaster, class T>
void check_pass(const optimizer_case& oc, const merge_coefficients& mc, const char* stage_name) {
  constexpr std::size_t n = 4096;
  constexpr bool step = has(S, ks::stage::local_step);
  constexpr bool writes_w = step || has(S, ks::stage::merge);
  INFO("storage ", std::string(type_id<T>::name), ", optimizer ", std::string(oc.name),
       ", stage ", std::string(stage_name),
       ", master ", UseMaster, ", merge a=", mc.a, " b=", mc.b, " c=", mc.c);

  const pass_data<T> in = make_inputs<T>(n, 1234u + static_cast<std::uint32_t>(S));
  pass_data<T> out = in;
  if constexpr (UseMaster) {
    // With a master copy the storage weights are output only: poison them.
    for (auto& x : out.w) x = to_storage<T>(std::numeric_limits<float>::quiet_NaN());
  }
  run_library<S, UseMaster>(out, oc, mc);
  test::ref_state st;
  const test::vec ref = run_reference<S, UseMaster>(in, oc, mc, st);

  std::size_t correctly_rounded = 0, rounded_outputs = 0;
  for (std::size_t i = 0; i < n; ++i) {
    const double w0 = UseMaster ? double(in.master[i]) : test::as_double(in.w[i]);
    const double scale = 1.0 + std::abs(w0) + std::abs(test::as_double(in.avg[i])) +
                         std::abs(test::as_double(in.snap[i])) + std::abs(ref[i]);
    INFO("element ", i, " reference ", ref[i]);
    if constexpr (writes_w) {
      if constexpr (UseMaster) {
        REQUIRE(test::within_compute_rounding(out.master[i], ref[i], scale));
        // The storage weight is the master rounded once.
        REQUIRE(test::same_bits(out.w[i], to_storage<T>(out.master[i])));
      } else {
        double ulps = 0;
        REQUIRE_MESSAGE(test::within_storage_rounding(out.w[i], ref[i], scale, &ulps),
                        "result ", test::as_double(out.w[i]), " is ", ulps, " ulps away");
        ++rounded_outputs;
        if (test::same_bits(out.w[i], to_storage<T>(ref[i]))) ++correctly_rounded;
      }
    } else if constexpr (!UseMaster) {
      REQUIRE(test::same_bits(out.w[i], in.w[i]));
    }
    if constexpr (step) {
      std::visit(
          [&](const auto& c) {
            using C = std::decay_t<decltype(c)>;
            bool has_momentum = true;
            if constexpr (std::is_same_v<C, sgd_case>) has_momentum = c.lib.momentum != 0.0;
            if (has_momentum) {
              REQUIRE(test::within_compute_rounding(out.s0[i], st.m[i], 1.0 + std::abs(st.m[i])));
            } else {
              REQUIRE(out.s0[i] == in.s0[i]);  // plain SGD keeps no state
            }
            if constexpr (std::is_same_v<C, adamw_case>) {
              REQUIRE(test::within_compute_rounding(out.s1[i], st.v[i], 1.0 + std::abs(st.v[i])));
            } else {
              REQUIRE(out.s1[i] == in.s1[i]);
            }
          },
          oc.opt);
    } else {
      REQUIRE(out.s0[i] == in.s0[i]);
      REQUIRE(out.s1[i] == in.s1[i]);
    }
    if constexpr (has(S, ks::stage::write_snapshot)) {
      // The snapshot holds the rounded storage value of the new weights.
      if constexpr (writes_w) REQUIRE(test::same_bits(out.snap[i], out.w[i]));
      else if constexpr (UseMaster) REQUIRE(test::same_bits(out.snap[i], to_storage<T>(in.master[i])));
      else REQUIRE(test::same_bits(out.snap[i], in.w[i]));
    } else {
      REQUIRE(test::same_bits(out.snap[i], in.snap[i]));
    }
    REQUIRE(test::same_bits(out.avg[i], in.avg[i]));
    if constexpr (!(UseMaster && writes_w)) REQUIRE(out.master[i] == in.master[i]);
  }
  if (sizeof(T) < sizeof(float) && rounded_outputs > 0) {
    // Storage coarser than the float math: the float error rarely crosses a
    // rounding boundary, so nearly every value is the correctly rounded one
    // (a truncating conversion would miss about half).
    CHECK(double(correctly_rounded) >= 0.97 * double(rounded_outputs));
  }
}

template <ks::stage S>
struct stage_tag {
  static constexpr ks::stage value = S;
  const char* name;
};

template <class T, bool UseMaster>
void check_all_passes() {
  const merge_coefficients merges[] = {merge::mix{0.25}.coefficients(), merge::additive{}.coefficients(),
                                       merge::linear{0.5, 0.7, -0.2}.coefficients()};
  auto run_steps = [&](auto tag) {
    constexpr ks::stage S = decltype(tag)::value;
    for (const auto& oc : optimizer_cases()) {
      if constexpr (has(S, ks::stage::merge)) {
        for (const auto& mc : merges) check_pass<S, UseMaster, T>(oc, mc, tag.name);
      } else {
        check_pass<S, UseMaster, T>(oc, {}, tag.name);
      }
    }
  };
  run_steps(stage_tag<ks::plain_step>{"plain step"});
  run_steps(stage_tag<ks::step_and_snapshot>{"step+snapshot"});
  run_steps(stage_tag<ks::step_and_mix>{"step+mix"});
  run_steps(stage_tag<ks::step_and_correct>{"step+correct"});
  // Merge-only passes: the optimizer is irrelevant, one case is enough.
  const auto oc = optimizer_cases().front();
  for (const auto& mc : merges) {
    check_pass<ks::mix_only, UseMaster, T>(oc, mc, "mix only");
    check_pass<ks::correct_only, UseMaster, T>(oc, mc, "correct only");
  }
  check_pass<ks::snapshot_only, UseMaster, T>(oc, {}, "snapshot only");
}

}  // namespace

TEST_CASE_TEMPLATE("host fused loop with 16-bit storage matches the double reference", T, __half,
                   __nv_bfloat16, float) {
  SUBCASE("storage weights are the source of truth") { check_all_passes<T, false>(); }
  SUBCASE("fp32 master weights") { check_all_passes<T, true>(); }
}

TEST_CASE("storage ulp helper knows the formats") {
  // Anchors that do not come from the helper itself: 1 + 2^-10 is the half
  // after 1, 1 + 2^-7 the bfloat16 after 1.
  CHECK(test::as_double(to_storage<__half>(1.0 + 0x1p-10)) == 1.0 + 0x1p-10);
  CHECK(test::as_double(to_storage<__half>(1.0 + 0x1p-12)) == 1.0);
  CHECK(test::ulp_at<__half>(1.0) == 0x1p-10);
  CHECK(test::as_double(to_storage<__nv_bfloat16>(1.0 + 0x1p-7)) == 1.0 + 0x1p-7);
  CHECK(test::ulp_at<__nv_bfloat16>(1.5) == 0x1p-7);
  CHECK(test::ulp_at<__half>(1e-7) == 0x1p-24);  // subnormal spacing
  // Round to nearest even at a tie: 1 + 2^-11 is halfway between 1 and 1 + 2^-10.
  CHECK(test::as_double(to_storage<__half>(1.0 + 0x1p-11)) == 1.0);
  CHECK(test::as_double(to_storage<__half>(1.0 + 3 * 0x1p-11)) == 1.0 + 0x1p-9);
}
