// Helpers shared by the multi-rank tests.
#pragma once

#include <doctest/doctest.h>

#include <dasgd/comm/mpi.hpp>

#include <chrono>
#include <cstddef>
#include <string>

namespace dasgd::test {

inline int world_size() {
  int n = 0;
  MPI_Comm_size(MPI_COMM_WORLD, &n);
  return n;
}

inline int world_rank() {
  int r = 0;
  MPI_Comm_rank(MPI_COMM_WORLD, &r);
  return r;
}

/// Both progress modes, for SUBCASE loops.
inline constexpr comm::mpi_progress all_progress_modes[] = {comm::mpi_progress::thread,
                                                             comm::mpi_progress::test};

inline std::string name_of(comm::mpi_progress p) {
  return p == comm::mpi_progress::thread ? "thread progress" : "test progress";
}

/// Tests use a short timeout: a bug that desynchronizes the ranks then
/// fails a test in seconds instead of hanging it.
inline comm::mpi_options test_options(comm::mpi_progress p,
                                      std::chrono::milliseconds timeout = std::chrono::seconds(20)) {
  comm::mpi_options o;
  o.progress = p;
  o.timeout = timeout;
  return o;
}

/// Message of the exception `f` throws (empty if none).
template <class E, class F>
std::string message_of(F&& f) {
  try {
    f();
  } catch (const E& e) {
    return e.what();
  }
  return {};
}

/// wait() again after each timeout_error, for up to `limit` in all (a
/// test's late rank joins after the first timeouts).
template <class Request>
void wait_patiently(Request& req, std::chrono::milliseconds limit) {
  const auto deadline = std::chrono::steady_clock::now() + limit;
  for (;;) {
    try {
      req.wait();
      return;
    } catch (const timeout_error&) {
      if (std::chrono::steady_clock::now() >= deadline) throw;
    }
  }
}

inline bool contains(const std::string& text, const std::string& part) {
  return text.find(part) != std::string::npos;
}

}  // namespace dasgd::test
