// doctest main for tests run by mpiexec: every rank runs the same test
// cases, which issue the same collectives in the same order.
//
// A failing check on one rank must fail the job, not hang it. The other
// ranks may be waiting in a collective the failing rank will never join.
// So as soon as a test case fails on a rank, that rank prints which one it
// was and calls MPI_Abort, and mpiexec then ends every rank with a non-zero
// status. A watchdog does the same if the binary runs for longer than
// DASGD_MPI_TEST_DEADLINE seconds (default 100), before ctest's own
// TIMEOUT kills mpiexec without a word.
#define DOCTEST_CONFIG_IMPLEMENT
#include <doctest/doctest.h>

#include <dasgd/comm/mpi.hpp>

#if defined(DASGD_MPI_TEST_NEEDS_GPU)
#include <cuda_runtime_api.h>
#endif

#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <mutex>
#include <string>
#include <thread>

#include <unistd.h>

namespace {

int world_rank() {
  int rank = -1;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  return rank;
}

[[noreturn]] void abort_job(const std::string& why) {
  std::fprintf(stderr, "[rank %d] %s: aborting the MPI job so that no rank hangs\n", world_rank(),
               why.c_str());
  std::fflush(stdout);
  std::fflush(stderr);
  MPI_Abort(MPI_COMM_WORLD, 1);
  std::abort();  // not reached
}

/// Aborts the job at the end of the first failing test case (or subcase
/// pass) on this rank. doctest has already printed the failure by then.
struct abort_on_failure : doctest::IReporter {
  explicit abort_on_failure(const doctest::ContextOptions&) {}
  void report_query(const doctest::QueryData&) override {}
  void test_run_start() override {}
  void test_run_end(const doctest::TestRunStats&) override {}
  void test_case_start(const doctest::TestCaseData& tc) override { name_ = tc.m_name; }
  void test_case_reenter(const doctest::TestCaseData&) override { check(); }
  void test_case_end(const doctest::CurrentTestCaseStats& stats) override {
    failed_ = failed_ || !stats.testCaseSuccess;
    check();
  }
  void test_case_exception(const doctest::TestCaseException&) override { failed_ = true; }
  void subcase_start(const doctest::SubcaseSignature&) override {}
  void subcase_end() override {}
  void log_assert(const doctest::AssertData& a) override { failed_ = failed_ || a.m_failed; }
  void log_message(const doctest::MessageData&) override {}
  void test_case_skipped(const doctest::TestCaseData&) override {}

 private:
  void check() {
    if (failed_) abort_job("test case \"" + name_ + "\" failed");
  }
  std::string name_;
  bool failed_ = false;
};

REGISTER_LISTENER("abort_on_failure", 1, abort_on_failure);

class watchdog {
 public:
  explicit watchdog(std::chrono::seconds limit)
      : thread_([this, limit] {
          std::unique_lock lk(m_);
          if (!cv_.wait_for(lk, limit, [&] { return done_; }))
            abort_job("watchdog: the test binary ran longer than " +
                      std::to_string(limit.count()) + " s");
        }) {}
  ~watchdog() {
    {
      std::lock_guard lk(m_);
      done_ = true;
    }
    cv_.notify_all();
    thread_.join();
  }

 private:
  std::mutex m_;
  std::condition_variable cv_;
  bool done_ = false;
  std::thread thread_;
};

}  // namespace

int main(int argc, char** argv) {
  dasgd::comm::mpi_environment env(argc, argv);
#if defined(DASGD_MPI_TEST_NEEDS_GPU)
  // GPU tests run by mpiexec: every rank sees the same machine, so every
  // rank skips alike (exit status 77) where there is no device.
  int devices = 0;
  if (cudaGetDeviceCount(&devices) != cudaSuccess || devices == 0) {
    if (world_rank() == 0) std::printf("SKIPPED: no CUDA device\n");
    return 77;
  }
#endif
  const char* deadline = std::getenv("DASGD_MPI_TEST_DEADLINE");
  watchdog guard(std::chrono::seconds(deadline ? std::atoi(deadline) : 100));

  doctest::Context context(argc, argv);
  // Ranks' output is interleaved (and OpenMPI hands ranks a pty): no colours.
  if (dasgd::comm::launched_by_mpiexec() || !isatty(STDOUT_FILENO)) context.setOption("no-colors", true);
  const int result = context.run();
  if (context.shouldExit()) return result;
  // Every rank reports the worst outcome.
  int worst = result;
  MPI_Allreduce(&result, &worst, 1, MPI_INT, MPI_MAX, MPI_COMM_WORLD);
  return worst;
}
