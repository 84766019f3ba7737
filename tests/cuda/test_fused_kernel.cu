// The fused CUDA kernel against the host backend (the reference) on
// identical inputs: every optimizer x stage set x precision (float, half,
// bfloat16, double; with and without fp32 master weights), odd sizes,
// tensors misaligned by 1..7 elements, and lists of 1 to 1000 tensors that
// cross chunk-table launch boundaries. Everything outside the regions a pass
// must write (gaps between user tensors, arena padding, streams the stage
// does not use) has to come back bit for bit unchanged.
#include <doctest/doctest.h>

#include <dasgd/core/merge_rule.hpp>
#include <dasgd/kernels/cuda/cuda_backend.cuh>
#include <dasgd/kernels/host/host_backend.hpp>

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <random>
#include <string>
#include <type_traits>
#include <vector>

#include "cuda/kernel_test_fixture.hpp"

namespace {

using namespace dasgd;
using namespace dasgd::test;  // kernel_test_fixture.hpp; also the ks and kc aliases

std::vector<tensor_spec> standard_specs() {
  std::vector<tensor_spec> s;
  for (std::size_t n : {0ul, 1ul, 3ul, 7ul, 8ul, 9ul, 1023ul, 65535ul, 65537ul, 1ul << 20})
    s.push_back({n});
  const tensor_spec misaligned[] = {{1, 1, 0},     {9, 1, 3},     {1023, 3, 5}, {65537, 7, 2},
                                    {8, 0, 4},     {65535, 2, 2}, {100, 5, 0},  {131077, 4, 6},
                                    {4096, 6, 1}};
  s.insert(s.end(), std::begin(misaligned), std::end(misaligned));
  return s;
}

std::vector<tensor_spec> random_specs(std::size_t count, std::uint32_t seed) {
  std::mt19937 rng(seed);
  std::uniform_int_distribution<int> pct(0, 99), shift(0, 7);
  std::vector<tensor_spec> s;
  for (std::size_t i = 0; i < count; ++i) {
    const int p = pct(rng);
    std::size_t n;
    if (p < 5) n = 0;
    else if (p < 85) n = std::uniform_int_distribution<std::size_t>(1, 1500)(rng);
    else if (p < 99) n = std::uniform_int_distribution<std::size_t>(1500, 20000)(rng);
    else n = std::uniform_int_distribution<std::size_t>(65536, 140000)(rng);
    const bool misalign = pct(rng) < 50;
    s.push_back({n, misalign ? std::size_t(shift(rng)) : 0, misalign ? std::size_t(shift(rng)) : 0});
  }
  return s;
}

template <class T, class C>
struct device_side {
  device_buffer<T> w, g, snap, avg;
  device_buffer<C> master, s0, s1;
};

/// Which regions a pass writes, stated from the host semantics
/// (kernels/host/fused_loop.hpp), independently of the kernel's own tables.
struct writes {
  bool w, master, s0, s1, snap;
};

template <ks::stage S, class E>
writes expected_writes(bool use_master) {
  constexpr bool step = has(S, ks::stage::local_step);
  constexpr bool new_w = step || has(S, ks::stage::merge);
  return {new_w, use_master && new_w, step && E::state_count > 0, step && E::state_count > 1,
          has(S, ks::stage::write_snapshot)};
}

template <class T>
class fixture {
 public:
  using C = default_compute_t<T>;

  explicit fixture(std::vector<tensor_spec> specs, std::uint32_t seed = 7)
      : layout_(std::move(specs)), before_(test::random_inputs<T>(layout_, seed)) {
    DASGD_CUDA_CHECK(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking));
    cuda_backend b(stream_);
    dev_.w = b.allocate<T>(layout_.w_size);
    dev_.g = b.allocate<T>(layout_.g_size);
    dev_.snap = b.allocate<T>(layout_.arena);
    dev_.avg = b.allocate<T>(layout_.arena);
    dev_.master = b.allocate<C>(layout_.arena);
    dev_.s0 = b.allocate<C>(layout_.arena);
    dev_.s1 = b.allocate<C>(layout_.arena);
  }
  ~fixture() { (void)cudaStreamDestroy(stream_); }
  fixture(const fixture&) = delete;
  fixture& operator=(const fixture&) = delete;

  std::size_t nonempty_tensors() const { return layout_.nonempty_tensors(); }

  /// Runs stage S on both backends from the pristine inputs and compares.
  /// Returns the number of kernel launches of the device pass.
  template <ks::stage S, class Policy = kc::default_fused_update_policy, class E>
  int run_and_compare(const E& elem, const merge_coefficients& mc, bool use_master) {
    host_ = before_;
    cuda_backend b(stream_);
    upload(b);

    const test::tensor_views<T, host_space> hv(layout_, host_.w.data(), host_.g.data());
    const test::tensor_views<T, device_space> dv(layout_, dev_.w.data(), dev_.g.data());
    // Streams the stage does not use are passed as null on both sides: a
    // kernel that touched one would fault instead of passing by luck.
    const auto ha = test::make_pass_args<S, E, C>(hv, layout_, host_, use_master, mc);
    const auto da = test::make_pass_args<S, E, C>(dv, layout_, dev_, use_master, mc);

    host_backend().run<S>(ha, elem);
    const int launches = b.run_tuned<Policy, S>(da, elem);
    b.fence();
    compare(b, expected_writes<S, E>(use_master), use_master);
    return launches;
  }

 private:
  void upload(const cuda_backend& b) {
    b.copy_from_host(before_.w.data(), dev_.w.data(), before_.w.size());
    b.copy_from_host(before_.g.data(), dev_.g.data(), before_.g.size());
    b.copy_from_host(before_.snap.data(), dev_.snap.data(), layout_.arena);
    b.copy_from_host(before_.avg.data(), dev_.avg.data(), layout_.arena);
    b.copy_from_host(before_.master.data(), dev_.master.data(), layout_.arena);
    b.copy_from_host(before_.s0.data(), dev_.s0.data(), layout_.arena);
    b.copy_from_host(before_.s1.data(), dev_.s1.data(), layout_.arena);
  }

  /// Marks [start, start + n) of each tensor.
  std::vector<char> region_mask(std::size_t size, const std::vector<std::size_t>& starts) const {
    std::vector<char> mask(size, 0);
    for (std::size_t i = 0; i < layout_.specs.size(); ++i)
      std::fill_n(mask.begin() + static_cast<std::ptrdiff_t>(starts[i]), layout_.specs[i].n,
                  char(1));
    return mask;
  }

  /// Written elements: device within rounding of host. Everything else:
  /// bit-identical to the input.
  template <class V>
  void compare_buffer(const char* name, const std::vector<V>& dev, const std::vector<V>& host,
                      const std::vector<V>& before, const std::vector<char>& written) {
    std::size_t bad = 0, first_bad = 0;
    double worst = 0;
    for (std::size_t i = 0; i < dev.size(); ++i) {
      bool ok;
      if (!written[i]) {
        ok = test::same_bits(dev[i], before[i]);
      } else {
        const double h = test::as_double(host[i]), d = test::as_double(dev[i]);
        const double scale = 1.0 + std::abs(h) + std::abs(test::as_double(before[i]));
        // Storage values may land one ulp apart (the device contracts a*b+c
        // into an FMA, the host does not); compute values by a few roundings.
        double tol = 32.0 * unit_roundoff<C>() * scale;
        if constexpr (!std::is_same_v<V, C>) tol += test::ulp_at<V>(h);
        ok = std::abs(d - h) <= tol;
        worst = std::max(worst, std::abs(d - h) / tol);
      }
      if (!ok && bad++ == 0) first_bad = i;
    }
    INFO("buffer ", std::string(name), ": first mismatch at element ", first_bad, ", device ",
         bad ? test::as_double(dev[first_bad]) : 0.0, ", host ",
         bad ? test::as_double(host[first_bad]) : 0.0, ", input ",
         bad ? test::as_double(before[first_bad]) : 0.0, ", written ",
         bad ? int(written[first_bad]) : 0, "; worst error / tolerance ", worst);
    CHECK(bad == 0);
  }

  void compare(const cuda_backend& b, const writes& wr, bool use_master) {
    test::host_buffers<T> d;
    d.w.resize(before_.w.size());
    d.g.resize(before_.g.size());
    d.snap.resize(layout_.arena);
    d.avg.resize(layout_.arena);
    d.master.resize(layout_.arena);
    d.s0.resize(layout_.arena);
    d.s1.resize(layout_.arena);
    b.copy_to_host(dev_.w.data(), d.w.data(), d.w.size());
    b.copy_to_host(dev_.g.data(), d.g.data(), d.g.size());
    b.copy_to_host(dev_.snap.data(), d.snap.data(), layout_.arena);
    b.copy_to_host(dev_.avg.data(), d.avg.data(), layout_.arena);
    b.copy_to_host(dev_.master.data(), d.master.data(), layout_.arena);
    b.copy_to_host(dev_.s0.data(), d.s0.data(), layout_.arena);
    b.copy_to_host(dev_.s1.data(), d.s1.data(), layout_.arena);

    const std::vector<char> none_w(before_.w.size(), 0), none_a(layout_.arena, 0);
    const auto user_w = region_mask(before_.w.size(), layout_.w_pos);
    const auto arena = region_mask(layout_.arena, layout_.offsets);
    compare_buffer("weights", d.w, host_.w, before_.w, wr.w ? user_w : none_w);
    compare_buffer("gradients", d.g, host_.g, before_.g, std::vector<char>(before_.g.size(), 0));
    compare_buffer("snapshot", d.snap, host_.snap, before_.snap, wr.snap ? arena : none_a);
    compare_buffer("average", d.avg, host_.avg, before_.avg, none_a);
    compare_buffer("master", d.master, host_.master, before_.master, wr.master ? arena : none_a);
    compare_buffer("state 0", d.s0, host_.s0, before_.s0, wr.s0 ? arena : none_a);
    compare_buffer("state 1", d.s1, host_.s1, before_.s1, wr.s1 ? arena : none_a);

    // Exact relations on the device itself (no tolerance): the snapshot is
    // the rounded new weight, and the weight is the rounded master.
    std::size_t snap_mismatch = 0, master_mismatch = 0;
    for (std::size_t i = 0; i < layout_.specs.size(); ++i) {
      for (std::size_t j = 0; j < layout_.specs[i].n; ++j) {
        const T w = d.w[layout_.w_pos[i] + j];
        const std::size_t a = layout_.offsets[i] + j;
        if (wr.snap && wr.w && !test::same_bits(d.snap[a], w)) ++snap_mismatch;
        if (wr.snap && !wr.w &&
            !test::same_bits(d.snap[a], use_master ? to_storage<T>(d.master[a]) : w))
          ++snap_mismatch;
        if (wr.master && !test::same_bits(w, to_storage<T>(d.master[a]))) ++master_mismatch;
      }
    }
    CHECK(snap_mismatch == 0);
    CHECK(master_mismatch == 0);
  }

  test::tensor_layout layout_;
  test::host_buffers<T> before_, host_;
  device_side<T, C> dev_;
  cudaStream_t stream_ = nullptr;
};

template <class T>
void check_every_pass(fixture<T>& fx, bool use_master) {
  using C = default_compute_t<T>;
  for (const auto& oc : optimizer_cases) {
    INFO("optimizer ", std::string(oc.name));
    with_element<C>(oc, [&](const auto& e) {
      {
        INFO("stage plain step");
        fx.template run_and_compare<ks::plain_step>(e, {}, use_master);
      }
      {
        INFO("stage step+snapshot");
        fx.template run_and_compare<ks::step_and_snapshot>(e, {}, use_master);
      }
      {
        INFO("stage step+mix");
        fx.template run_and_compare<ks::step_and_mix>(e, mix_coeffs, use_master);
      }
      {
        INFO("stage step+correct");
        fx.template run_and_compare<ks::step_and_correct>(e, correct_coeffs, use_master);
      }
    });
  }
  const ks::no_step_element<C> none;
  {
    INFO("stage mix only");
    fx.template run_and_compare<ks::mix_only>(none, mix_coeffs, use_master);
  }
  {
    INFO("stage correct only");
    fx.template run_and_compare<ks::correct_only>(none, correct_coeffs, use_master);
  }
  {
    INFO("stage snapshot only");
    fx.template run_and_compare<ks::snapshot_only>(none, {}, use_master);
  }
}

}  // namespace

TEST_CASE_TEMPLATE("fused kernel matches the host backend on odd and misaligned tensors", T, float,
                   __half, __nv_bfloat16) {
  fixture<T> fx(standard_specs());
  SUBCASE("storage weights") { check_every_pass(fx, false); }
  SUBCASE("fp32 master weights") { check_every_pass(fx, true); }
}

TEST_CASE("fused kernel matches the host backend in double precision") {
  fixture<double> fx(standard_specs());
  check_every_pass(fx, false);
}

TEST_CASE("one pass over 1 to 1000 tensors crosses chunk-table boundaries") {
  constexpr int per_launch = kc::default_fused_update_policy::tuning.max_tensors_per_launch;
  constexpr std::size_t pl = per_launch;
  for (std::size_t count : {1ul, 7ul, pl - 1, pl, pl + 1, 2 * pl + 14, 1000ul}) {
    INFO(count, " tensors");
    {
      fixture<__nv_bfloat16> fx(random_specs(count, static_cast<std::uint32_t>(count)));
      const auto expected = (fx.nonempty_tensors() + per_launch - 1) / per_launch;
      with_element<float>(optimizer_cases[3], [&](const auto& e) {
        CHECK(fx.run_and_compare<ks::step_and_correct>(e, correct_coeffs, true) == int(expected));
      });
    }
    {
      fixture<float> fx(random_specs(count, static_cast<std::uint32_t>(count) + 1000));
      const auto expected = (fx.nonempty_tensors() + per_launch - 1) / per_launch;
      with_element<float>(optimizer_cases[2], [&](const auto& e) {
        CHECK(fx.run_and_compare<ks::step_and_snapshot>(e, {}, false) == int(expected));
      });
    }
  }
}

TEST_CASE("a tiny tuning policy: many chunks per tensor and many launches per pass") {
  fixture<__half> fx(standard_specs());
  const auto expected = int((fx.nonempty_tensors() + 2) / 3);
  for (bool master : {false, true}) {
    INFO("master ", master);
    with_element<float>(optimizer_cases[3], [&](const auto& e) {
      CHECK(fx.run_and_compare<ks::step_and_correct, policies::tiny>(e, correct_coeffs, master) ==
            expected);
    });
    CHECK(fx.run_and_compare<ks::mix_only, policies::tiny>(ks::no_step_element<float>{}, mix_coeffs,
                                                            master) == expected);
    with_element<float>(optimizer_cases[1], [&](const auto& e) {
      CHECK(fx.run_and_compare<ks::step_and_mix, policies::tiny_unroll1>(e, mix_coeffs, master) ==
            expected);
    });
  }
}

TEST_CASE("four vector groups per thread: partial iterations at every chunk end") {
  fixture<__nv_bfloat16> fx(standard_specs());
  const auto expected = int((fx.nonempty_tensors() + 2) / 3);
  for (bool master : {false, true}) {
    INFO("master ", master);
    with_element<float>(optimizer_cases[3], [&](const auto& e) {
      CHECK(fx.run_and_compare<ks::step_and_correct, policies::tiny_unroll4>(e, correct_coeffs,
                                                                             master) == expected);
    });
  }
}

TEST_CASE("backend buffers are zeroed and copies round-trip") {
  cudaStream_t s = nullptr;
  DASGD_CUDA_CHECK(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
  {
    cuda_backend b(s);
    CHECK(b.stream() == s);
    auto buf = b.allocate<float>(1000);
    CHECK(buf.size() == 1000);
    std::vector<float> h(1000, 1.0f);
    b.copy_to_host(buf.data(), h.data(), h.size());
    CHECK(std::all_of(h.begin(), h.end(), [](float x) { return x == 0.0f; }));
    for (std::size_t i = 0; i < h.size(); ++i) h[i] = float(i) * 0.5f;
    b.copy_from_host(h.data(), buf.data(), h.size());
    std::vector<float> back(1000);
    b.copy_to_host(buf.data(), back.data(), back.size());
    CHECK(back == h);
    auto moved = std::move(buf);
    CHECK(buf.data() == nullptr);
    CHECK(moved.size() == 1000);
    auto empty = b.allocate<double>(0);
    CHECK(empty.data() == nullptr);
  }
  DASGD_CUDA_CHECK(cudaStreamDestroy(s));
}
