// GPU mode: the CUDA backend's fused pass against a device-to-device copy
// that moves the same number of bytes (read + write counted), measured in
// the same run, interleaved sample by sample.
//
// Per case: one pass on constant-filled arenas is checked against the host
// backend (every element has the same inputs, so every sampled element must
// equal the host result); then warm-up passes; then `repeats` samples of one
// fused pass and one copy each, in alternating order, each timed with CUDA
// events and (by default) preceded by a memset that evicts L2, so small
// cases are not served from cache. Reported: medians.
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <map>
#include <sstream>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include <dasgd/core/backend.hpp>
#include <dasgd/core/delayed_averager.hpp>
#include <dasgd/core/precision.hpp>
#include <dasgd/core/tensor_list.hpp>
#include <dasgd/kernels/cuda/cuda_backend.cuh>
#include <dasgd/kernels/host/host_backend.hpp>

#include "bench_case.hpp"
#include "dispatch.hpp"
#include "modes.hpp"
#include "progress.hpp"
#include "results.hpp"
#include "tunings.hpp"

namespace dasgd::bench {

namespace {

/// Byte patterns the arenas are filled with (cudaMemset): every one decodes
/// to a normal, positive value of unit order in fp32, bf16 and fp16.
struct fill_bytes {
  static constexpr unsigned char weights = 0x3C, grads = 0x3B, state0 = 0x3A, state1 = 0x3A,
                                 master = 0x3E, snapshot = 0x3D, average = 0x3E;
};

template <class T>
T decode(unsigned char byte) {
  unsigned char raw[sizeof(T)];
  std::memset(raw, byte, sizeof raw);
  T v;
  std::memcpy(static_cast<void*>(&v), raw, sizeof v);
  return v;
}

struct gpu_device {
  std::string description;
  std::size_t l2_bytes = 0;
};

gpu_device describe_device(int dev) {
  cudaDeviceProp p{};
  DASGD_CUDA_CHECK(cudaGetDeviceProperties(&p, dev));
  std::size_t free_b = 0, total_b = 0;
  DASGD_CUDA_CHECK(cudaMemGetInfo(&free_b, &total_b));
  gpu_device d;
  d.l2_bytes = static_cast<std::size_t>(p.l2CacheSize);
  char specs[128];
  std::snprintf(specs, sizeof specs, " (sm_%d%d, %d SMs, %.0f MiB L2, %.1f GiB)", p.major, p.minor,
                p.multiProcessorCount, p.l2CacheSize / 1048576.0,
                static_cast<double>(total_b) / double(1u << 30));
  d.description = std::string(p.name) + specs;
  return d;
}

class cuda_event {
 public:
  cuda_event() { DASGD_CUDA_CHECK(cudaEventCreate(&e_)); }
  cuda_event(const cuda_event&) = delete;
  cuda_event& operator=(const cuda_event&) = delete;
  cuda_event(cuda_event&& o) noexcept : e_(std::exchange(o.e_, nullptr)) {}
  ~cuda_event() {
    if (e_) (void)cudaEventDestroy(e_);
  }
  cudaEvent_t get() const { return e_; }

 private:
  cudaEvent_t e_ = nullptr;
};

/// Times op() on `stream` with an event pair; elapsed() after a synchronize.
struct timed_sample {
  cuda_event start, stop;
  double elapsed_s() const {
    float ms = 0;
    DASGD_CUDA_CHECK(cudaEventElapsedTime(&ms, start.get(), stop.get()));
    return ms * 1e-3;
  }
};

/// Buffers shared by every case: the copy baseline's source and destination
/// and the L2 eviction buffer.
struct shared_buffers {
  device_buffer<unsigned char> copy_src, copy_dst, flush;
};

/// The arenas of one case on the device, filled with fill_bytes.
template <class Storage>
struct device_case {
  std::vector<std::size_t> offsets;
  std::size_t size = 0;
  device_buffer<Storage> w, g, snapshot, average;
  device_buffer<float> state0, state1, master;
  tensor_list<Storage, device_space> weights;
  tensor_list<const Storage, device_space> grads;
  pass_args<Storage, float, device_space> args;

  device_case(const bench_case& c, cudaStream_t stream) {
    offsets = dasgd::detail::arena_offsets(c.shape->extents, size);
    const auto s = c.mode->stages;
    auto make = [&](auto& buf, bool used, unsigned char byte) {
      using T = std::remove_cvref_t<decltype(*buf.data())>;
      if (!used) return;
      buf = device_buffer<T>(size, stream);
      DASGD_CUDA_CHECK(cudaMemsetAsync(buf.data(), byte, size * sizeof(T), stream));
    };
    make(w, true, fill_bytes::weights);
    make(g, true, fill_bytes::grads);
    make(state0, c.optimizer->state_count >= 1, fill_bytes::state0);
    make(state1, c.optimizer->state_count >= 2, fill_bytes::state1);
    make(master, c.precision->master, fill_bytes::master);
    make(snapshot,
         kernels::has(s, kernels::stage::write_snapshot) ||
             kernels::has(s, kernels::stage::merge_snapshot),
         fill_bytes::snapshot);
    make(average, kernels::has(s, kernels::stage::merge), fill_bytes::average);
    DASGD_CUDA_CHECK(cudaStreamSynchronize(stream));
    for (std::size_t i = 0; i < offsets.size(); ++i) {
      weights.add(w.data() + offsets[i], c.shape->extents[i]);
      grads.add(g.data() + offsets[i], c.shape->extents[i]);
    }
    args.weights = &weights;
    args.grads = &grads;
    args.offsets = offsets.data();
    args.master = master.data();
    args.state[0] = state0.data();
    args.state[1] = state1.data();
    args.snapshot = snapshot.data();
    args.average = average.data();
    const auto& m = c.mode->merge;
    args.merge = {float(m.a), float(m.b), float(m.c)};
  }
  device_case(const device_case&) = delete;  // args points into this object
  device_case& operator=(const device_case&) = delete;

  /// Bytes the arenas occupy (checked against free memory before allocating).
  static std::size_t footprint(const bench_case& c) {
    std::size_t n = 0;
    (void)dasgd::detail::arena_offsets(c.shape->extents, n);
    const auto s = c.mode->stages;
    std::size_t storage = 2 + (kernels::has(s, kernels::stage::write_snapshot) ||
                               kernels::has(s, kernels::stage::merge_snapshot)) +
                          kernels::has(s, kernels::stage::merge);
    std::size_t compute = static_cast<std::size_t>(c.optimizer->state_count) + c.precision->master;
    return n * (storage * sizeof(Storage) + compute * sizeof(float));
  }
};

/// The host backend's result for one element with the fill values: what
/// every element of the device arenas must hold after one pass.
template <class Storage>
struct expected_element {
  double w = 0, state0 = 0, master = 0, snapshot = 0;
};

template <kernels::stage S, class Storage, class E>
expected_element<Storage> host_reference(const bench_case& c, const E& elem) {
  constexpr std::size_t n = 1;
  std::vector<Storage> w(n, decode<Storage>(fill_bytes::weights)),
      g(n, decode<Storage>(fill_bytes::grads)), snap(n, decode<Storage>(fill_bytes::snapshot)),
      avg(n, decode<Storage>(fill_bytes::average));
  std::vector<float> s0(n, decode<float>(fill_bytes::state0)),
      s1(n, decode<float>(fill_bytes::state1)), master(n, decode<float>(fill_bytes::master));
  tensor_list<Storage> wl;
  wl.add(w.data(), n);
  tensor_list<const Storage> gl;
  gl.add(g.data(), n);
  const std::size_t offset = 0;
  pass_args<Storage, float, host_space> a;
  a.weights = &wl;
  a.grads = &gl;
  a.offsets = &offset;
  a.master = c.precision->master ? master.data() : nullptr;
  a.state[0] = s0.data();
  a.state[1] = s1.data();
  a.snapshot = snap.data();
  a.average = avg.data();
  const auto& m = c.mode->merge;
  a.merge = {float(m.a), float(m.b), float(m.c)};
  host_backend{}.run<S>(a, elem);
  return {to_compute<double>(w[0]), s0[0], master[0], to_compute<double>(snap[0])};
}

template <class T>
double read_device(const T* p) {
  T v;
  DASGD_CUDA_CHECK(cudaMemcpy(&v, p, sizeof(T), cudaMemcpyDeviceToHost));
  return to_compute<double>(v);
}

/// Element positions to check: first, middle and last element of every
/// tensor (covers every tensor, its vector body and its scalar tail), plus
/// evenly spaced ones in large tensors.
std::vector<std::size_t> sample_positions(const bench_case& c, const std::vector<std::size_t>& off) {
  std::vector<std::size_t> pos;
  const auto& ext = c.shape->extents;
  for (std::size_t i = 0; i < ext.size(); ++i) {
    if (ext[i] == 0) continue;
    const std::size_t stride = std::max<std::size_t>(1, ext[i] / 16);
    for (std::size_t k = 0; k < ext[i]; k += stride) pos.push_back(off[i] + k);
    pos.push_back(off[i] + ext[i] - 1);
  }
  std::sort(pos.begin(), pos.end());
  pos.erase(std::unique(pos.begin(), pos.end()), pos.end());
  return pos;
}

/// Compares the sampled device elements with the host reference; returns
/// an empty string or the first mismatch.
template <class Storage>
std::string check_against_host(const bench_case& c, const device_case<Storage>& d,
                               const expected_element<Storage>& want) {
  const double tol_storage = 4 * unit_roundoff<Storage>();
  const double tol_compute = 4 * unit_roundoff<float>() * 8;  // FMA contraction differences
  const bool snap_written = kernels::has(c.mode->stages, kernels::stage::write_snapshot);
  auto near = [](double got, double exp, double tol) {
    return std::fabs(got - exp) <= tol * std::max(1.0, std::fabs(exp));
  };
  for (std::size_t p : sample_positions(c, d.offsets)) {
    auto fail = [&](const char* what, double got, double exp) {
      return ::dasgd::detail::concat(what, " at arena element ", p, " is ", got, ", host backend gives ",
                            exp);
    };
    const double w = read_device(d.w.data() + p);
    if (!near(w, want.w, tol_storage)) return fail("weight", w, want.w);
    const double s0 = read_device(d.state0.data() + p);
    if (!near(s0, want.state0, tol_compute)) return fail("state 0", s0, want.state0);
    if (c.precision->master) {
      const double m = read_device(d.master.data() + p);
      if (!near(m, want.master, tol_compute)) return fail("master weight", m, want.master);
    }
    if (snap_written) {
      const double s = read_device(d.snapshot.data() + p);
      if (!near(s, want.snapshot, tol_storage)) return fail("snapshot", s, want.snapshot);
    }
  }
  return {};
}

template <class Storage, class Policy>
result_row measure_case(const bench_case& c, const options& o, const gpu_device& dev,
                        shared_buffers& shared, cudaStream_t stream, const std::string& tuning) {
  device_case<Storage> d(c, stream);
  const cuda_backend backend(stream);
  const std::size_t copy_bytes = c.bytes() / 2;  // a copy reads and writes each byte
  DASGD_REQUIRE(copy_bytes <= shared.copy_src.size(), state_error, "copy buffers hold ",
                shared.copy_src.size(), " bytes, case ", c.key(), " needs ", copy_bytes);
  std::string mismatch;
  std::vector<double> tf, tc;
  with_element<float>(*c.optimizer, [&](const auto& elem) {
    with_stage(*c.mode, [&]<kernels::stage S>() {
      backend.run_tuned<Policy, S>(d.args, elem);
      backend.fence();
      mismatch = check_against_host(c, d, host_reference<S, Storage>(c, elem));

      auto fused = [&] { backend.run_tuned<Policy, S>(d.args, elem); };
      auto copy = [&] {
        DASGD_CUDA_CHECK(cudaMemcpyAsync(shared.copy_dst.data(), shared.copy_src.data(),
                                         copy_bytes, cudaMemcpyDeviceToDevice, stream));
      };
      for (int i = 0; i < o.warmup; ++i) {
        fused();
        copy();
      }
      std::vector<timed_sample> fs(static_cast<std::size_t>(o.repeats)),
          cs(static_cast<std::size_t>(o.repeats));
      auto timed = [&](timed_sample& t, const auto& op, int r) {
        if (o.flush_l2)
          DASGD_CUDA_CHECK(cudaMemsetAsync(shared.flush.data(), r & 0xFF, shared.flush.size(), stream));
        DASGD_CUDA_CHECK(cudaEventRecord(t.start.get(), stream));
        op();
        DASGD_CUDA_CHECK(cudaEventRecord(t.stop.get(), stream));
      };
      for (int r = 0; r < o.repeats; ++r) {
        const auto k = static_cast<std::size_t>(r);
        if (r % 2 == 0) {
          timed(fs[k], fused, r);
          timed(cs[k], copy, r);
        } else {
          timed(cs[k], copy, r);
          timed(fs[k], fused, r);
        }
      }
      DASGD_CUDA_CHECK(cudaStreamSynchronize(stream));
      for (std::size_t k = 0; k < fs.size(); ++k) {
        tf.push_back(fs[k].elapsed_s());
        tc.push_back(cs[k].elapsed_s());
      }
    });
  });
  if (!mismatch.empty())
    std::fprintf(stderr, "check failed: %s: %s\n", c.key().c_str(), mismatch.c_str());
  result_row r;
  // The default tuning is what users get: "dasgd-cuda", which the PyTorch
  // comparison joins on; the others are named after their tuning.
  r.impl = tuning == "default" ? "dasgd-cuda" : "dasgd-cuda@" + tuning;
  r.device = dev.description;
  r.c = &c;
  r.threads = 1;
  r.time_s = median(tf);
  r.baseline = "d2d-copy";
  r.baseline_time_s = median(tc);
  r.pair_ratio = median_pair_ratio(tf, tc);
  r.repeats = o.repeats;
  r.check = mismatch.empty() ? "ok" : "FAIL";
  return r;
}

std::size_t case_footprint(const bench_case& c) {
  return c.precision->storage_bytes == 4 ? device_case<float>::footprint(c)
                                         : device_case<__half>::footprint(c);
}

/// "step + merge" goals of the issue: at >= 16M elements and on the model
/// lists, fused bandwidth / copy bandwidth >= 0.95 (fp32), >= 0.92 (bf16).
void print_goal_summary(const std::vector<result_row>& rows) {
  std::map<std::string, std::vector<const result_row*>> by_precision;
  for (const auto& r : rows) {
    const auto m = r.c->mode->key;
    if ((m == pass_mode::step_mix || m == pass_mode::step_additive) &&
        (r.c->shape->tensors() > 1 || r.c->shape->elements() >= (16u << 20)))
      by_precision[r.c->precision->name].push_back(&r);
  }
  std::printf("\nstep + merge (mix, additive) at >= 16M elements and on model lists,\n"
              "fused / copy bandwidth:\n");
  for (const auto& [p, v] : by_precision) {
    const double goal = p == "fp32" ? 0.95 : p.rfind("bf16", 0) == 0 ? 0.92 : 0.0;
    const auto worst = *std::min_element(v.begin(), v.end(), [](auto a, auto b) {
      return a->ratio() < b->ratio();
    });
    std::printf("  %-14s %zu cases, min %.3f (%s)", p.c_str(), v.size(), worst->ratio(),
                worst->c->key().c_str());
    if (goal > 0)
      std::printf(", goal >= %.2f: %s", goal, worst->ratio() >= goal ? "met" : "MISSED");
    std::printf("\n");
  }
}

}  // namespace

int run_gpu_mode(const options& o) {
  int count = 0;
  const cudaError_t err = cudaGetDeviceCount(&count);
  if (err != cudaSuccess || count == 0) {
    std::printf("no CUDA device (cudaGetDeviceCount: %s): GPU mode skipped\n",
                err != cudaSuccess ? cudaGetErrorString(err) : "0 devices");
    return exit_skipped;
  }
  DASGD_CUDA_CHECK(cudaSetDevice(0));
  const gpu_device dev = describe_device(0);
  std::printf("dasgd update kernels, GPU mode\ndevice: %s\n", dev.description.c_str());
  std::printf("baseline: cudaMemcpyAsync device to device of half the case's bytes "
              "(read + write = the same bytes)\n");
  std::printf("timing: CUDA events, %d warm-up, median of %d samples%s\n\n", o.warmup, o.repeats,
              o.flush_l2 ? ", L2 evicted before each sample" : "");

  const case_plan plan = make_plan(o);
  cudaStream_t stream = nullptr;
  DASGD_CUDA_CHECK(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
  int failures = 0;
  {
    std::size_t max_copy = 16;
    for (const auto& c : plan.cases) max_copy = std::max(max_copy, c.bytes() / 2);
    shared_buffers shared{device_buffer<unsigned char>(max_copy, stream),
                          device_buffer<unsigned char>(max_copy, stream),
                          device_buffer<unsigned char>(std::max<std::size_t>(2 * dev.l2_bytes, 1 << 20),
                                                       stream)};
    csv_writer csv(o.csv);
    case_progress progress(plan.cases.size() * o.tunings.size());
    for (const auto& tuning : o.tunings) {
      with_tuning(tuning, [&]<class Policy>() {
        std::ostringstream t;
        t << Policy::tuning;
        progress.erase();
        std::printf("tuning %s: %s\n", tuning.c_str(), t.str().c_str());
        print_table_header("copy");
        std::vector<result_row> rows;
        for (const auto& c : plan.cases) {
          std::size_t free_b = 0, total_b = 0;
          DASGD_CUDA_CHECK(cudaMemGetInfo(&free_b, &total_b));
          const std::size_t need = case_footprint(c);
          if (need + (256u << 20) > free_b) {
            progress.erase();
            std::printf("%-48s skipped: needs %.1f GiB, %.1f GiB free\n", c.key().c_str(),
                        need / double(1u << 30), free_b / double(1u << 30));
            progress.case_done();
            continue;
          }
          result_row r;
          switch (c.precision->key) {
            case precision_key::fp32:
              r = measure_case<float, Policy>(c, o, dev, shared, stream, tuning);
              break;
            case precision_key::bf16:
            case precision_key::bf16_nomaster:
              r = measure_case<__nv_bfloat16, Policy>(c, o, dev, shared, stream, tuning);
              break;
            case precision_key::fp16:
            case precision_key::fp16_nomaster:
              // fp16 moves the bytes bf16 does: a sweep build times it with
              // the default tuning only, to keep the build short.
              if constexpr (std::is_same_v<Policy, kernels::cuda::default_fused_update_policy>) {
                r = measure_case<__half, Policy>(c, o, dev, shared, stream, tuning);
                break;
              } else {
                progress.erase();
                std::printf("%-48s skipped: fp16 is timed with the default tuning only\n",
                            c.key().c_str());
                progress.case_done();
                continue;
              }
            case precision_key::fp64:
              DASGD_THROW(config_error, "fp64 is a host-mode precision");
          }
          progress.erase();
          print_row(r);
          csv.write(r);
          failures += r.check != "ok";
          rows.push_back(r);
          progress.case_done();
        }
        progress.erase();
        if (!rows.empty()) print_goal_summary(rows);
        std::printf("\n");
      });
    }
  }
  DASGD_CUDA_CHECK(cudaStreamDestroy(stream));
  if (failures) {
    std::printf("%d case(s) FAILED the check against the host backend\n", failures);
    return exit_check_failed;
  }
  return exit_ok;
}

}  // namespace dasgd::bench
