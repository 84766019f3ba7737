// The per-step check of the GPU trainer tests: device weights against the
// host trainer's, within the storage tolerance. (.cu only: needs the CUDA
// backend.)
#pragma once

#include <doctest/doctest.h>

#include <dasgd/core/tensor_list.hpp>

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <string>
#include <vector>

#include "cuda/storage_tolerance.hpp"

namespace dasgd::test {

/// Checks every tensor of dev_w (read back through `backend`) against
/// host_w after k + 1 steps. Host and device round differently (FMA on the
/// device): two storage ulps plus the compute type's drift so far.
template <class T, class Backend>
void check_weights_close(const std::vector<std::vector<T>>& host_w, Backend& backend,
                         const tensor_list<T, device_space>& dev_w, int k, const std::string& who) {
  std::vector<T> back;
  for (std::size_t t = 0; t < host_w.size(); ++t) {
    back.resize(host_w[t].size());
    backend.copy_to_host(dev_w.data(t), back.data(), back.size());
    std::size_t bad = 0;
    double worst = 0;
    for (std::size_t i = 0; i < back.size(); ++i) {
      const double h = as_double(host_w[t][i]), d = as_double(back[i]);
      const double tol = 2.0 * ulp_at<T>(h) + 64.0 * (k + 1) * 0x1p-24 * (1.0 + std::abs(h));
      worst = std::max(worst, std::abs(d - h) / tol);
      if (std::abs(d - h) > tol) ++bad;
    }
    INFO(who, " step ", k, " tensor ", t, ": worst error / tolerance ", worst);
    CHECK(bad == 0);
  }
}

}  // namespace dasgd::test
