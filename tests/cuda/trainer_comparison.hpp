// The GPU trainer tests' lockstep run: a host trainer and a device trainer
// fed the same gradients, the device weights checked against the host's
// within the storage tolerance after every step.
#pragma once

#include <doctest/doctest.h>

#include <dasgd/core/tensor_list.hpp>
#include <dasgd/core/trainer_options.hpp>
#include <dasgd/kernels/cuda/cuda_error.hpp>

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <string>
#include <vector>

#include "cuda/storage_tolerance.hpp"

namespace dasgd::test {

/// A non-blocking CUDA stream for the length of a test.
struct stream_holder {
  cudaStream_t s = nullptr;
  stream_holder() { DASGD_CUDA_CHECK(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking)); }
  ~stream_holder() { (void)cudaStreamDestroy(s); }
  stream_holder(const stream_holder&) = delete;
  stream_holder& operator=(const stream_holder&) = delete;
};

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

/// Runs `steps` steps of the host trainer and the device trainer side by
/// side, feeding both gradient(t, i, k) (in storage precision), and checks
/// after every step that they agree (synchronize() after the last step).
/// The host trainer's weights are host_w; the device trainer's dev_w with
/// gradients dev_g, on `stream`.
template <class T, class Host, class Dev, class DeviceGrads, class Gradient>
void run_side_by_side(Host& host, std::vector<std::vector<T>>& host_w, Dev& dev, const tensor_list<T, device_space>& dev_w,
                      const DeviceGrads& dev_g, cudaStream_t stream, int steps,
                      Gradient gradient, const std::string& who) {
  std::vector<std::vector<T>> g(host_w.size());
  for (int k = 0; k < steps; ++k) {
    for (std::size_t t = 0; t < host_w.size(); ++t) {
      g[t].resize(host_w[t].size());
      for (std::size_t i = 0; i < g[t].size(); ++i) g[t][i] = to_storage<T>(gradient(t, i, k));
      // Ordered on the compute stream (the previous pass has read the old
      // ones); g[t] is pageable and rewritten next step.
      DASGD_CUDA_CHECK(cudaMemcpyAsync(const_cast<T*>(dev_g.data(t)), g[t].data(), g[t].size() * sizeof(T),
                                       cudaMemcpyHostToDevice, stream));
      DASGD_CUDA_CHECK(cudaStreamSynchronize(stream));
    }
    tensor_list<const T, host_space> hg;
    for (auto& v : g) hg.add(v.data(), v.size());
    const step_report hr = host.step(hg);
    const step_report dr = dev.step(dev_g);
    CHECK(hr.launched == dr.launched);
    CHECK(hr.merged == dr.merged);
    if (k == steps - 1) {
      host.synchronize();
      dev.synchronize();
    }
    check_weights_close(host_w, dev.backend(), dev_w, k, who);
  }
  CHECK(dev.steps_taken() == steps);
}

}  // namespace dasgd::test
