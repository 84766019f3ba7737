// Helpers shared by the tests over the fake CUDA/NCCL runtime
// (fake_nccl_runtime.hpp): ranks as threads, errors per rank, buffers read
// and written under the fake's lock.
#pragma once

#include <doctest/doctest.h>

#include <atomic>
#include <chrono>
#include <cstring>
#include <memory>
#include <cstddef>
#include <cstdint>
#include <exception>
#include <string>
#include <thread>
#include <vector>

#include <dasgd/core/collective.hpp>

#include "fake_nccl_runtime.hpp"

namespace dasgd_test::fake_ranks {

namespace fk = dasgd_test::fake_nccl;
using dasgd::collective_purpose;
using dasgd::collective_signature;

using clock_type = std::chrono::steady_clock;

inline double ms_since(clock_type::time_point t0) {
  return std::chrono::duration<double, std::milli>(clock_type::now() - t0).count();
}

/// Runs body(rank) on n threads; returns each rank's exception (or null).
template <class F>
std::vector<std::exception_ptr> run_ranks(int n, F body) {
  std::vector<std::exception_ptr> errors(static_cast<std::size_t>(n));
  std::vector<std::thread> threads;
  for (int r = 0; r < n; ++r)
    threads.emplace_back([&, r] {
      try {
        body(r);
      } catch (...) {
        errors[static_cast<std::size_t>(r)] = std::current_exception();
      }
    });
  for (auto& t : threads) t.join();
  return errors;
}

inline std::string message_of(const std::exception_ptr& e) {
  if (!e) return "";
  try {
    std::rethrow_exception(e);
  } catch (const std::exception& x) {
    return x.what();
  }
  return "unknown";
}

inline void require_no_errors(const std::vector<std::exception_ptr>& errors) {
  for (std::size_t r = 0; r < errors.size(); ++r) {
    INFO("rank ", r, ": ", message_of(errors[r]));
    CHECK(!errors[r]);
  }
}

template <class E>
bool is_a(const std::exception_ptr& e) {
  if (!e) return false;
  try {
    std::rethrow_exception(e);
  } catch (const E&) {
    return true;
  } catch (...) {
    return false;
  }
}

inline collective_signature step_sig(std::uint64_t seq, std::int64_t proposal = 0) {
  collective_signature s;
  s.purpose = collective_purpose::step_average;
  s.sequence = seq;
  s.proposal = proposal;
  return s;
}

template <class T>
std::vector<T> host_copy(const T* p, std::size_t n) {
  return fk::locked([&](fk::world_t&) { return std::vector<T>(p, p + n); });
}

template <class T>
void fill(T* p, std::size_t n, T base) {
  fk::locked([&](fk::world_t&) {
    for (std::size_t i = 0; i < n; ++i) p[i] = base + static_cast<T>(i);
    return 0;
  });
}

/// A stream held closed until open() (a kernel still running).
struct held_stream {
  cudaStream_t s = fk::new_stream();
  std::shared_ptr<std::atomic<bool>> opened = std::make_shared<std::atomic<bool>>(false);
  held_stream() {
    auto o = opened;
    fk::enqueue_gate(s, [o] { return o->load(); });
  }
  void open() { opened->store(true); }
};

/// Queues "the snapshot pass" on `s`: writes f(i) into p (runs in stream order).
template <class T, class F>
void queue_write(cudaStream_t s, T* p, std::size_t n, F f) {
  fk::enqueue_host(s, [=] {
    for (std::size_t i = 0; i < n; ++i) p[i] = static_cast<T>(f(i));
  });
}

/// Queues "the merge pass" on `s`: copies p into a vector (runs in stream
/// order), then waits until it ran.
template <class T>
std::vector<T> read_in_stream_order(cudaStream_t s, const T* p, std::size_t n) {
  auto out = std::make_shared<std::vector<T>>(n);
  fk::enqueue_host(s, [=] { std::memcpy(out->data(), p, n * sizeof(T)); });
  REQUIRE(fk::synchronize(s));
  return *out;
}

struct fresh_fake {
  fresh_fake() { fk::reset(); }
  ~fresh_fake() { fk::reset(); }
};

}  // namespace dasgd_test::fake_ranks
