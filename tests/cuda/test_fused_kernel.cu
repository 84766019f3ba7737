// The fused CUDA kernel against the host backend (the reference) on
// identical inputs: every optimizer x stage set x precision (float, half,
// bfloat16, double; with and without fp32 master weights), odd sizes,
// tensors misaligned by 1..7 elements, and lists of 1 to 1000 tensors that
// cross chunk-table launch boundaries. Everything outside the regions a pass
// must write (gaps between user tensors, arena padding, streams the stage
// does not use) has to come back bit for bit unchanged.
#include <doctest/doctest.h>

#include <dasgd/core/delayed_averager.hpp>  // arena_offsets: the trainer's layout
#include <dasgd/core/merge_rule.hpp>
#include <dasgd/kernels/cuda/cuda_backend.cuh>
#include <dasgd/kernels/host/host_backend.hpp>
#include <dasgd/optim/adamw.hpp>
#include <dasgd/optim/sgd.hpp>

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <random>
#include <string>
#include <variant>
#include <vector>

#include "cuda/storage_tolerance.hpp"

namespace policies {
/// Tiny chunks, tables and blocks: many chunks per tensor and many launches
/// per pass even for small inputs, so index math and table boundaries are
/// exercised cheaply.
struct tiny {
  static constexpr dasgd::kernels::cuda::fused_update_tuning tuning{
      .threads_per_block = 32, .chunk_elements = 64, .max_tensors_per_launch = 3};
};
}  // namespace policies

namespace {

using namespace dasgd;
namespace ks = dasgd::kernels;
namespace kc = dasgd::kernels::cuda;

/// One user tensor: its size and how many elements its weight and gradient
/// start after a 16-element boundary (1..7: misaligned for every type).
struct tensor_spec {
  std::size_t n;
  std::size_t w_shift = 0;
  std::size_t g_shift = 0;
};

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
struct host_side {
  std::vector<T> w, g, snap, avg;
  std::vector<C> master, s0, s1;
};

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
  static constexpr std::size_t guard = 13;  // elements between user tensors

  explicit fixture(std::vector<tensor_spec> specs, std::uint32_t seed = 7) : specs_(std::move(specs)) {
    DASGD_CUDA_CHECK(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking));
    std::size_t wpos = 0, gpos = 0;
    std::vector<std::size_t> extents;
    for (const auto& t : specs_) {
      w_pos_.push_back(wpos + t.w_shift);
      g_pos_.push_back(gpos + t.g_shift);
      wpos = round_up(w_pos_.back() + t.n + guard);
      gpos = round_up(g_pos_.back() + t.n + guard);
      extents.push_back(t.n);
    }
    offsets_ = dasgd::detail::arena_offsets(extents, arena_);
    std::mt19937 rng(seed);
    auto fill_s = [&](std::vector<T>& v, std::size_t n) {
      v.resize(n);
      for (auto& x : v) x = test::random_storage<T>(rng, -1.0, 1.0);
    };
    auto fill_c = [&](std::vector<C>& v, std::size_t n, double lo, double hi) {
      std::uniform_real_distribution<double> d(lo, hi);
      v.resize(n);
      for (auto& x : v) x = C(d(rng));
    };
    fill_s(before_.w, wpos);
    fill_s(before_.g, gpos);
    fill_s(before_.snap, arena_);
    fill_s(before_.avg, arena_);
    fill_c(before_.master, arena_, -1.0, 1.0);
    fill_c(before_.s0, arena_, -0.5, 0.5);
    fill_c(before_.s1, arena_, 0.01, 0.5);  // second moments are positive
    cuda_backend b(stream_);
    dev_.w = b.allocate<T>(wpos);
    dev_.g = b.allocate<T>(gpos);
    dev_.snap = b.allocate<T>(arena_);
    dev_.avg = b.allocate<T>(arena_);
    dev_.master = b.allocate<C>(arena_);
    dev_.s0 = b.allocate<C>(arena_);
    dev_.s1 = b.allocate<C>(arena_);
  }
  ~fixture() { (void)cudaStreamDestroy(stream_); }
  fixture(const fixture&) = delete;
  fixture& operator=(const fixture&) = delete;

  std::size_t nonempty_tensors() const {
    return static_cast<std::size_t>(
        std::count_if(specs_.begin(), specs_.end(), [](const tensor_spec& t) { return t.n > 0; }));
  }

  /// Runs stage S on both backends from the pristine inputs and compares.
  /// Returns the number of kernel launches of the device pass.
  template <ks::stage S, class Policy = kc::default_fused_update_policy, class E>
  int run_and_compare(const E& elem, const merge_coefficients& mc, bool use_master) {
    host_ = before_;
    cuda_backend b(stream_);
    upload(b);
    const ks::merge_coeffs<C> m{C(mc.a), C(mc.b), C(mc.c)};

    tensor_list<T, host_space> hw;
    tensor_list<const T, host_space> hg;
    tensor_list<T, device_space> dw;
    tensor_list<const T, device_space> dg;
    for (std::size_t i = 0; i < specs_.size(); ++i) {
      const std::size_t n = specs_[i].n;
      hw.add(host_.w.data() + w_pos_[i], n);
      hg.add(host_.g.data() + g_pos_[i], n);
      dw.add(dev_.w.data() + w_pos_[i], n);
      dg.add(dev_.g.data() + g_pos_[i], n);
    }
    // Streams the stage does not use are passed as null on both sides: a
    // kernel that touched one would fault instead of passing by luck.
    constexpr bool step = has(S, ks::stage::local_step);
    constexpr bool snap = has(S, ks::stage::write_snapshot) || has(S, ks::stage::merge_snapshot);
    constexpr bool avg = has(S, ks::stage::merge);
    constexpr int states = step ? E::state_count : 0;
    pass_args<T, C, host_space> ha;
    ha.weights = &hw;
    ha.grads = step ? &hg : nullptr;
    ha.offsets = offsets_.data();
    ha.master = use_master ? host_.master.data() : nullptr;
    ha.state[0] = states > 0 ? host_.s0.data() : nullptr;
    ha.state[1] = states > 1 ? host_.s1.data() : nullptr;
    ha.snapshot = snap ? host_.snap.data() : nullptr;
    ha.average = avg ? host_.avg.data() : nullptr;
    ha.merge = m;
    pass_args<T, C, device_space> da;
    da.weights = &dw;
    da.grads = step ? &dg : nullptr;
    da.offsets = offsets_.data();
    da.master = use_master ? dev_.master.data() : nullptr;
    da.state[0] = states > 0 ? dev_.s0.data() : nullptr;
    da.state[1] = states > 1 ? dev_.s1.data() : nullptr;
    da.snapshot = snap ? dev_.snap.data() : nullptr;
    da.average = avg ? dev_.avg.data() : nullptr;
    da.merge = m;

    host_backend().run<S>(ha, elem);
    const int launches = b.run_tuned<Policy, S>(da, elem);
    b.fence();
    compare(b, expected_writes<S, E>(use_master), use_master);
    return launches;
  }

 private:
  static std::size_t round_up(std::size_t x) { return (x + 15) / 16 * 16; }

  void upload(const cuda_backend& b) {
    b.copy_from_host(before_.w.data(), dev_.w.data(), before_.w.size());
    b.copy_from_host(before_.g.data(), dev_.g.data(), before_.g.size());
    b.copy_from_host(before_.snap.data(), dev_.snap.data(), arena_);
    b.copy_from_host(before_.avg.data(), dev_.avg.data(), arena_);
    b.copy_from_host(before_.master.data(), dev_.master.data(), arena_);
    b.copy_from_host(before_.s0.data(), dev_.s0.data(), arena_);
    b.copy_from_host(before_.s1.data(), dev_.s1.data(), arena_);
  }

  /// Marks [start, start + n) of each tensor.
  std::vector<char> region_mask(std::size_t size, const std::vector<std::size_t>& starts) const {
    std::vector<char> mask(size, 0);
    for (std::size_t i = 0; i < specs_.size(); ++i)
      std::fill_n(mask.begin() + static_cast<std::ptrdiff_t>(starts[i]), specs_[i].n, char(1));
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
    host_side<T, C> d;
    d.w.resize(before_.w.size());
    d.g.resize(before_.g.size());
    d.snap.resize(arena_);
    d.avg.resize(arena_);
    d.master.resize(arena_);
    d.s0.resize(arena_);
    d.s1.resize(arena_);
    b.copy_to_host(dev_.w.data(), d.w.data(), d.w.size());
    b.copy_to_host(dev_.g.data(), d.g.data(), d.g.size());
    b.copy_to_host(dev_.snap.data(), d.snap.data(), arena_);
    b.copy_to_host(dev_.avg.data(), d.avg.data(), arena_);
    b.copy_to_host(dev_.master.data(), d.master.data(), arena_);
    b.copy_to_host(dev_.s0.data(), d.s0.data(), arena_);
    b.copy_to_host(dev_.s1.data(), d.s1.data(), arena_);

    const std::vector<char> none_w(before_.w.size(), 0), none_a(arena_, 0);
    const auto user_w = region_mask(before_.w.size(), w_pos_);
    const auto arena = region_mask(arena_, offsets_);
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
    for (std::size_t i = 0; i < specs_.size(); ++i) {
      for (std::size_t j = 0; j < specs_[i].n; ++j) {
        const T w = d.w[w_pos_[i] + j];
        const std::size_t a = offsets_[i] + j;
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

  std::vector<tensor_spec> specs_;
  std::vector<std::size_t> w_pos_, g_pos_, offsets_;
  std::size_t arena_ = 0;
  host_side<T, C> before_, host_;
  device_side<T, C> dev_;
  cudaStream_t stream_ = nullptr;
};

struct optimizer_case {
  const char* name;
  std::variant<optim::sgd, optim::adamw> opt;
  std::int64_t local_step;
};

const optimizer_case optimizer_cases[] = {
    {"sgd+weight_decay", optim::sgd{.lr = 0.1, .weight_decay = 0.01}, 1},
    {"momentum first step", optim::sgd{.lr = 0.1, .momentum = 0.9}, 0},
    {"nesterov+weight_decay",
     optim::sgd{.lr = 0.05, .momentum = 0.9, .weight_decay = 1e-3, .nesterov = true}, 2},
    {"adamw", optim::adamw{.lr = 1e-2, .beta1 = 0.9, .beta2 = 0.99, .eps = 1e-6, .weight_decay = 0.1}, 3},
};

template <class C, class F>
void with_element(const optimizer_case& oc, F&& f) {
  std::visit([&](const auto& o) { o.template visit_element<C>(oc.local_step, f); }, oc.opt);
}

const merge_coefficients mix_coeffs{0.25, 0.75, 0.0};
const merge_coefficients correct_coeffs{0.5, 0.7, -0.2};

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
  for (std::size_t count : {1ul, 7ul, 95ul, 96ul, 97ul, 110ul, 111ul, 1000ul}) {
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
