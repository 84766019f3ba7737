// A job in which one rank's MPI fails: its next MPI_Iallreduce returns an
// error (injected through MPI's profiling interface: this file defines
// MPI_Iallreduce and MPI_Iallgather, which forward to PMPI_* otherwise).
// That rank must report the failure, start nothing on MPI after it (the
// average queued behind the failed one fails unstarted, or its post is
// refused if the failure came first; a later post is refused), and end the job with MPI_Abort, saying it gave up 3
// collectives: its peers are waiting in them, and MPI_Finalize would meet
// them there. The peers get timeout_error. Run by run_stall_job.cmake.
//
//   mpiexec -n N mpi_failure_job <thread|test> <timeout_ms> [ignored]
#include <dasgd/comm/mpi.hpp>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

#include "stall_job_outcome.hpp"

namespace {
std::atomic<bool> fail_next_iallreduce{false};
std::atomic<bool> failed{false};
std::atomic<int> collectives_after_failure{0};
}  // namespace

extern "C" int MPI_Iallreduce(const void* send, void* recv, int count, MPI_Datatype type, MPI_Op op,
                              MPI_Comm comm, MPI_Request* request) {
  if (failed.load()) ++collectives_after_failure;
  if (fail_next_iallreduce.exchange(false)) {
    failed = true;
    return MPI_ERR_OTHER;
  }
  return PMPI_Iallreduce(send, recv, count, type, op, comm, request);
}

extern "C" int MPI_Iallgather(const void* send, int send_count, MPI_Datatype send_type, void* recv,
                              int recv_count, MPI_Datatype recv_type, MPI_Comm comm, MPI_Request* request) {
  if (failed.load()) ++collectives_after_failure;
  return PMPI_Iallgather(send, send_count, send_type, recv, recv_count, recv_type, comm, request);
}

namespace {
// Runs `f`, which must throw comm_error with `expected` in its message.
template <class F>
std::string expect_comm_error(const char* what, const char* expected, F&& f) {
  try {
    f();
  } catch (const dasgd::comm_error& e) {
    if (std::strstr(e.what(), expected) == nullptr)
      throw std::runtime_error(std::string(what) + ": comm_error without \"" + expected + "\": " + e.what());
    return e.what();
  }
  throw std::runtime_error(std::string(what) + ": no comm_error");
}
}  // namespace

int main(int argc, char** argv) {
  const auto timeout = std::chrono::milliseconds(argc > 2 ? std::atoi(argv[2]) : 2000);
  // The failing rank aborts the job at once otherwise: its peers' timeouts
  // must fire (and be reported) first.
  dasgd::comm::mpi_environment env(argc, argv, timeout + std::chrono::milliseconds(1500));
  const bool thread = argc > 1 && std::strcmp(argv[1], "test") != 0;
  int rank = 0, size = 1;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  MPI_Comm_size(MPI_COMM_WORLD, &size);
  const int failing = size - 1;

  dasgd::comm::mpi_options o;
  o.progress = thread ? dasgd::comm::mpi_progress::thread : dasgd::comm::mpi_progress::test;
  o.timeout = timeout;
  dasgd::comm::mpi_communicator comm(MPI_COMM_WORLD, o);
  std::vector<float> a(1024, static_cast<float>(rank)), b(a), out_a(a.size()), out_b(a.size());
  comm.iallreduce_average(std::span<const float>(a), std::span<float>(out_a)).wait();  // healthy first
  if (out_a[0] != static_cast<float>(size - 1) / 2.0f) {
    std::printf("rank %d: WRONG healthy average %g\n", rank, static_cast<double>(out_a[0]));
    return 4;
  }

  if (rank == failing) fail_next_iallreduce = true;
  return dasgd::test::run_and_report(rank, [&] {
    auto first = comm.iallreduce_average(std::span<const float>(a), std::span<float>(out_a));
    if (rank != failing) {
      auto second = comm.iallreduce_average(std::span<const float>(b), std::span<float>(out_b));
      first.wait();  // never completes: timeout_error
      second.wait();
      return;
    }
    // The failure may come while the second average is posted (progress
    // runs in post() too): then the post itself is refused.
    std::optional<dasgd::comm::mpi_request> second;
    std::string e2;
    try {
      second.emplace(comm.iallreduce_average(std::span<const float>(b), std::span<float>(out_b)));
    } catch (const dasgd::comm_error&) {
      e2 = expect_comm_error("the second post", "unusable after an earlier MPI failure", [&] { throw; });
    }
    const auto e1 = expect_comm_error("the failed average", "MPI_Iallreduce", [&] { first.wait(); });
    if (second)
      e2 = expect_comm_error("the average queued behind it", "was not started", [&] { second->wait(); });
    const auto e3 = expect_comm_error("a later post", "unusable after an earlier MPI failure", [&] {
      comm.iallreduce_average(std::span<const float>(a), std::span<float>(out_a)).wait();
    });
    if (collectives_after_failure.load() != 0)
      throw std::runtime_error(std::to_string(collectives_after_failure.load()) +
                               " MPI collective(s) were started after the failure");
    std::printf("rank %d: the injected MPI failure was reported, and nothing started after it\n", rank);
    std::printf("rank %d: first: %s\nrank %d: second: %s\nrank %d: later: %s\n", rank, e1.c_str(), rank,
                e2.c_str(), rank, e3.c_str());
    std::fflush(stdout);
  });
}
