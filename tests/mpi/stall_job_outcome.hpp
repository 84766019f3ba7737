// A stall job's rank runs its part and reports the outcome in the lines
// run_stall_job.cmake reads: "rank r: timeout_error after S s: ..." (exit
// 3; the destructors and mpi_environment end the job from there), "rank r:
// WRONG exception: ..." (exit 4) or "rank r: finished without an error".
#pragma once

#include <dasgd/core/error.hpp>

#include <chrono>
#include <cstdio>
#include <exception>

namespace dasgd::test {

template <class F>
int run_and_report(int rank, F&& part) {
  const auto t0 = std::chrono::steady_clock::now();
  try {
    part();
  } catch (const timeout_error& e) {
    const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    std::printf("rank %d: timeout_error after %.2f s: %s\n", rank, s, e.what());
    std::fflush(stdout);
    return 3;
  } catch (const std::exception& e) {
    std::printf("rank %d: WRONG exception: %s\n", rank, e.what());
    std::fflush(stdout);
    return 4;
  }
  std::printf("rank %d: finished without an error\n", rank);
  return 0;
}

}  // namespace dasgd::test
