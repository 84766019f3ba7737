// Unit tests of the overlap benchmark's pieces: algorithm names and the
// quadratic workload (gradient, loss, determinism, global minimiser).
#define DOCTEST_CONFIG_IMPLEMENT_WITH_MAIN
#include <doctest/doctest.h>

#include <cmath>
#include <string>
#include <vector>

#include "algorithm.hpp"
#include "quadratic_workload.hpp"

using namespace dasgd::bench;

TEST_CASE("algorithm names map to tau, delay and averages per step") {
  const auto sync = parse_algorithm("sync", 4);
  CHECK(sync.kind == algorithm_kind::fixed_delay);
  CHECK(sync.tau == 1);
  CHECK(sync.delay == 0);
  CHECK(sync.averages_per_step() == 1.0);

  const auto local = parse_algorithm("local", 4);
  CHECK(local.tau == 4);
  CHECK(local.delay == 0);
  CHECK(local.averages_per_step() == 0.25);

  const auto d2 = parse_algorithm("dasgd-d2", 4);
  CHECK(d2.kind == algorithm_kind::fixed_delay);
  CHECK(d2.tau == 4);
  CHECK(d2.delay == 2);
  CHECK(parse_algorithm("dasgd-d12", 16).delay == 12);

  const auto none = parse_algorithm("compute", 4);
  CHECK(none.kind == algorithm_kind::compute_only);
  CHECK(none.averages_per_step() == 0.0);

  const auto adaptive = parse_algorithm("adaptive", 8);
  CHECK(adaptive.kind == algorithm_kind::adaptive_delay);
  CHECK(adaptive.tau == 8);
  CHECK(adaptive.delay == 7);  // starts at the safe end, tau - 1
}

TEST_CASE("bad algorithm names and delays are config errors naming the value") {
  auto message = [](auto&& f) {
    try {
      f();
    } catch (const dasgd::config_error& e) {
      return std::string(e.what());
    }
    return std::string("no exception");
  };
  CHECK(message([] { parse_algorithm("dasgd-d4", 4); }).find("delay 4 is outside [1, tau) = [1, 4)") !=
        std::string::npos);
  CHECK(message([] { parse_algorithm("dasgd-d0", 4); }).find("delay 0") != std::string::npos);
  CHECK(message([] { parse_algorithm("dasgd-dx", 4); }).find("'dasgd-dx'") != std::string::npos);
  CHECK(message([] { parse_algorithm("dasgd-d", 4); }).find("unknown algorithm 'dasgd-d'") != std::string::npos);
  CHECK(message([] { parse_algorithm("allreduce", 4); }).find("unknown algorithm 'allreduce'") !=
        std::string::npos);
  CHECK(message([] { parse_algorithm("adaptive", 1); }).find("tau >= 2") != std::string::npos);
  CHECK(message([] { parse_algorithm("local", 0); }).find("tau must be >= 1, got 0") != std::string::npos);
}

TEST_CASE("unit_hash is deterministic, in [0, 1) and spread out") {
  double sum = 0, lo = 1, hi = 0;
  for (std::uint64_t i = 0; i < 10000; ++i) {
    const double u = unit_hash(3, i);
    CHECK(u == unit_hash(3, i));
    lo = std::min(lo, u);
    hi = std::max(hi, u);
    sum += u;
  }
  CHECK(lo >= 0.0);
  CHECK(hi < 1.0);
  CHECK(sum / 10000 == doctest::Approx(0.5).epsilon(0.02));
  CHECK(unit_hash(3, 0) != unit_hash(4, 0));
}

TEST_CASE("the noiseless gradient is the derivative of the loss") {
  const std::size_t n = 64;
  quadratic_workload work(n, 2, /*noise_stddev=*/0.0);
  std::vector<float> w(n), g(n);
  for (std::size_t i = 0; i < n; ++i) w[i] = static_cast<float>(0.3 * std::sin(static_cast<double>(i)));
  work.gradient(w, g, 5);
  // loss is a mean over coordinates, the gradient is per coordinate:
  // d loss / d w_i = g_i / n. Central difference in double precision of a
  // float-stored quadratic: exact up to rounding.
  for (std::size_t i : {std::size_t(0), std::size_t(17), n - 1}) {
    const float h = 1.0f / 64;
    auto wp = w, wm = w;
    wp[i] += h;
    wm[i] -= h;
    const double fd = (work.loss(wp) - work.loss(wm)) / (2.0 * h);
    CHECK(fd * static_cast<double>(n) == doctest::Approx(g[i]).epsilon(1e-4));
  }
  // At the rank's own target the noiseless gradient vanishes.
  for (std::size_t i = 0; i < n; ++i) w[i] = static_cast<float>(quadratic_workload::target(2, i));
  work.gradient(w, g, 0);
  for (float v : g) CHECK(std::abs(v) < 1e-6f);
}

TEST_CASE("noise has the requested spread and changes from step to step") {
  const std::size_t n = 20000;
  quadratic_workload noisy(n, 0, 0.5), exact(n, 0, 0.0);
  std::vector<float> w(n, 0.25f), g1(n), g2(n), g0(n);
  noisy.gradient(w, g1, 1);
  noisy.gradient(w, g2, 2);
  exact.gradient(w, g0, 1);
  double sum = 0, sq = 0;
  int same = 0;
  for (std::size_t i = 0; i < n; ++i) {
    const double e = g1[i] - g0[i];
    sum += e;
    sq += e * e;
    same += g1[i] == g2[i];
  }
  CHECK(std::abs(sum / n) < 0.02);
  CHECK(std::sqrt(sq / n) == doctest::Approx(0.5).epsilon(0.03));
  CHECK(same < 10);
}

TEST_CASE("the global minimiser beats every rank's own target on the global objective") {
  const std::size_t n = 256;
  const int ranks = 4;
  std::vector<quadratic_workload> works;
  for (int r = 0; r < ranks; ++r) works.emplace_back(n, r, 0.0);
  auto global = [&](const std::vector<float>& w) {
    double s = 0;
    for (const auto& wk : works) s += wk.loss(w);
    return s / ranks;
  };
  std::vector<float> best(n);
  for (std::size_t i = 0; i < n; ++i) {
    double num = 0, den = 0;
    for (int r = 0; r < ranks; ++r) {
      num += quadratic_workload::curvature(r, i) * quadratic_workload::target(r, i);
      den += quadratic_workload::curvature(r, i);
    }
    best[i] = static_cast<float>(num / den);
  }
  const double f_best = global(best);
  for (int r = 0; r < ranks; ++r) {
    std::vector<float> own(n);
    for (std::size_t i = 0; i < n; ++i) own[i] = static_cast<float>(quadratic_workload::target(r, i));
    CHECK(global(own) > f_best * 1.5);
  }
  CHECK(global(std::vector<float>(n, 0.0f)) > f_best);
}

TEST_CASE("workload errors name the sizes") {
  CHECK_THROWS_AS(quadratic_workload(0, 0), dasgd::config_error);
  CHECK_THROWS_AS(quadratic_workload(4, -1), dasgd::config_error);
  quadratic_workload work(8, 0);
  std::vector<float> w(8), g(7);
  try {
    work.gradient(w, g, 0);
    FAIL("no exception");
  } catch (const dasgd::size_mismatch_error& e) {
    CHECK(std::string(e.what()).find("a gradient of 7") != std::string::npos);
  }
}
