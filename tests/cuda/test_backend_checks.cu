// Host-side behaviour of the CUDA backend that needs no device: argument
// checks before any launch (can_implement), the exceptions run() throws,
// the tuning policy and the size of the kernel parameter block. Runs in CI
// without a GPU (nothing here touches the device).
#include <doctest/doctest.h>

#include <dasgd/kernels/cuda/cuda_backend.cuh>
#include <dasgd/optim/adamw.hpp>
#include <dasgd/optim/sgd.hpp>

#include <cstddef>
#include <string>
#include <vector>

// Policies live outside the anonymous namespace: nvcc flags unused members
// of internal types, and these are only read by the concept checks.
namespace policies {
namespace kc = dasgd::kernels::cuda;
struct tiny_policy {
  static constexpr kc::fused_update_tuning tuning{.threads_per_block = 32, .chunk_elements = 64,
                                                  .max_tensors_per_launch = 3};
};
struct bad_threads_policy {
  static constexpr kc::fused_update_tuning tuning{.threads_per_block = 48};
};
struct bad_chunk_policy {
  static constexpr kc::fused_update_tuning tuning{.chunk_elements = 1000};
};
}  // namespace policies

namespace {

using namespace dasgd;
using policies::tiny_policy;
using policies::bad_threads_policy;
using policies::bad_chunk_policy;
namespace ks = dasgd::kernels;
namespace kc = dasgd::kernels::cuda;

static_assert(update_backend<cuda_backend>);
static_assert(std::is_same_v<default_backend_t<device_space>, cuda_backend>);
static_assert(std::is_same_v<cuda_backend::buffer<float>, device_buffer<float>>);
static_assert(!std::is_copy_constructible_v<device_buffer<float>>);
static_assert(std::is_nothrow_move_constructible_v<device_buffer<float>>);

// The default table fits the 32764-byte kernel parameter limit (CUDA 12.1,
// sm_70 and newer) for the largest element functor (double SGD with
// momentum).
template <class S, class C, class E>
constexpr std::size_t param_bytes =
    sizeof(kc::fused_update_params<S, C, E, kc::default_fused_update_policy::tuning.max_tensors_per_launch>);
static_assert(param_bytes<double, double, optim::sgd_element<double, true>> <= 32764);
static_assert(param_bytes<__half, float, optim::adamw_element<float>> <= 32764);

static_assert(kc::fused_update_policy<kc::default_fused_update_policy>);
static_assert(kc::fused_update_policy<tiny_policy>);
static_assert(!kc::fused_update_policy<bad_threads_policy>);
static_assert(!kc::fused_update_policy<bad_chunk_policy>);
static_assert(kc::default_fused_update_policy::tuning == kc::fused_update_tuning{});

/// Device-space lists over host memory: fine as long as nothing launches.
struct fake_model {
  std::vector<float> w0 = std::vector<float>(100), w1 = std::vector<float>(7);
  std::vector<float> g0 = std::vector<float>(100), g1 = std::vector<float>(7);
  std::vector<float> arena = std::vector<float>(128);
  std::vector<std::size_t> offsets{0, 112};
  tensor_list<float, device_space> weights;
  tensor_list<const float, device_space> grads;
  fake_model() {
    weights.add(w0.data(), w0.size()).add(w1.data(), w1.size());
    grads.add(g0.data(), g0.size()).add(g1.data(), g1.size());
  }
  pass_args<float, float, device_space> args() {
    pass_args<float, float, device_space> a;
    a.weights = &weights;
    a.grads = &grads;
    a.offsets = offsets.data();
    a.state[0] = arena.data();
    a.state[1] = arena.data();
    a.snapshot = arena.data();
    a.average = arena.data();
    return a;
  }
};

using momentum = optim::sgd_element<float, true>;
using plain = optim::sgd_element<float, false>;
using adamw = optim::adamw_element<float>;

template <class Ex, ks::stage S, class E>
std::string thrown_by_run(const pass_args<float, float, device_space>& a) {
  cuda_backend backend;
  try {
    backend.run<S>(a, E{});
  } catch (const Ex& e) {
    return e.what();
  }
  return "nothing thrown";
}

}  // namespace

TEST_CASE("can_implement accepts complete arguments") {
  fake_model m;
  const auto a = m.args();
  CHECK(kc::can_implement<ks::step_and_correct, adamw, float, float>(a));
  CHECK(kc::can_implement<ks::plain_step, plain, float, float>(a));
  // Merge-only passes need neither gradients nor state.
  auto b = a;
  b.grads = nullptr;
  b.state[0] = b.state[1] = nullptr;
  CHECK(kc::can_implement<ks::mix_only, ks::no_step_element<float>, float, float>(b));
  CHECK(kc::can_implement<ks::snapshot_only, ks::no_step_element<float>, float, float>(b));
  // Plain SGD keeps no state.
  b.grads = &m.grads;
  CHECK(kc::can_implement<ks::plain_step, plain, float, float>(b));
  CHECK(kc::can_implement<ks::plain_step, momentum, float, float>(b).status ==
        kc::pass_status::missing_state);
}

TEST_CASE("can_implement names what is missing") {
  fake_model m;
  auto a = m.args();
  SUBCASE("weights") {
    a.weights = nullptr;
    CHECK(kc::can_implement<ks::plain_step, plain, float, float>(a).status ==
          kc::pass_status::missing_weights);
  }
  SUBCASE("offsets") {
    a.offsets = nullptr;
    const auto c = kc::can_implement<ks::plain_step, plain, float, float>(a);
    CHECK(c.status == kc::pass_status::missing_offsets);
    CHECK(kc::describe(c).find("2 tensors") != std::string::npos);
  }
  SUBCASE("state") {
    a.state[1] = nullptr;
    CHECK(kc::can_implement<ks::plain_step, momentum, float, float>(a));
    const auto c = kc::can_implement<ks::plain_step, adamw, float, float>(a);
    CHECK(c.status == kc::pass_status::missing_state);
    CHECK(c.index == 1);
    CHECK(kc::describe(c).find("state[1] is null") != std::string::npos);
  }
  SUBCASE("snapshot") {
    a.snapshot = nullptr;
    CHECK(kc::can_implement<ks::step_and_mix, momentum, float, float>(a));
    CHECK(kc::can_implement<ks::step_and_snapshot, momentum, float, float>(a).status ==
          kc::pass_status::missing_snapshot);
    CHECK(kc::can_implement<ks::correct_only, ks::no_step_element<float>, float, float>(a).status ==
          kc::pass_status::missing_snapshot);
  }
  SUBCASE("average") {
    a.average = nullptr;
    CHECK(kc::can_implement<ks::step_and_snapshot, momentum, float, float>(a));
    CHECK(kc::can_implement<ks::mix_only, ks::no_step_element<float>, float, float>(a).status ==
          kc::pass_status::missing_average);
  }
  SUBCASE("gradient shape") {
    tensor_list<const float, device_space> short_grads;
    short_grads.add(m.g0.data(), m.g0.size());
    a.grads = &short_grads;
    const auto c = kc::can_implement<ks::plain_step, plain, float, float>(a);
    CHECK(c.status == kc::pass_status::gradient_count);
    CHECK(kc::describe(c) == "the gradient list has 1 tensors but the weight list has 2");
    tensor_list<const float, device_space> wrong;
    wrong.add(m.g0.data(), m.g0.size()).add(m.g1.data(), 6);
    a.grads = &wrong;
    const auto d = kc::can_implement<ks::plain_step, plain, float, float>(a);
    CHECK(d.status == kc::pass_status::gradient_extent);
    CHECK(d.index == 1);
    CHECK(kc::describe(d) == "gradient tensor 1 has 6 elements but weight tensor 1 has 7");
  }
}

TEST_CASE("run throws before launching") {
  fake_model m;
  auto a = m.args();
  SUBCASE("missing gradients: config_error") {
    a.grads = nullptr;
    CHECK(thrown_by_run<config_error, ks::plain_step, momentum>(a).find("args.grads is null") !=
          std::string::npos);
  }
  SUBCASE("gradient sizes: size_mismatch_error") {
    tensor_list<const float, device_space> wrong;
    wrong.add(m.g0.data(), 99).add(m.g1.data(), 7);
    a.grads = &wrong;
    CHECK(thrown_by_run<size_mismatch_error, ks::plain_step, momentum>(a).find(
              "gradient tensor 0 has 99 elements") != std::string::npos);
  }
  SUBCASE("missing average: config_error") {
    a.average = nullptr;
    CHECK(thrown_by_run<config_error, ks::step_and_mix, adamw>(a).find("args.average is null") !=
          std::string::npos);
  }
}

TEST_CASE("a pass over empty tensors launches nothing") {
  tensor_list<float, device_space> w;
  tensor_list<const float, device_space> g;
  float dummy = 0;
  w.add(&dummy, 0).add(&dummy, 0);
  g.add(&dummy, 0).add(&dummy, 0);
  const std::size_t offsets[] = {0, 0};
  pass_args<float, float, device_space> a;
  a.weights = &w;
  a.grads = &g;
  a.offsets = offsets;
  cuda_backend backend;
  CHECK(backend.run_tuned<kc::default_fused_update_policy, ks::plain_step>(a, plain{}) == 0);
}
