// A job in which one rank stalls for good: the others must get
// timeout_error within the communicator's timeout, and the whole job must
// end (mpi_environment aborts it instead of hanging in MPI_Finalize with a
// collective stranded). Run by run_stall_job.cmake, which times the job.
//
//   mpiexec -n N mpi_stall_job <thread|test> <timeout_ms> [skew_ms]
//
// skew_ms: rank 0's timeout is that much longer than the others'. The
// first rank to time out aborts the job; rank 0 must still report its own
// timeout_error first (mpi_environment's abort grace).
#include <dasgd/comm/mpi.hpp>
#include <dasgd/dasgd.hpp>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <thread>
#include <vector>

#include "stall_job_outcome.hpp"

int main(int argc, char** argv) {
  dasgd::comm::mpi_environment env(argc, argv);
  const bool thread = argc > 1 && std::strcmp(argv[1], "test") != 0;
  const auto skew = std::chrono::milliseconds(argc > 3 ? std::atoi(argv[3]) : 0);
  int rank = 0, size = 1;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  MPI_Comm_size(MPI_COMM_WORLD, &size);
  const int stalled = size - 1;
  auto timeout = std::chrono::milliseconds(argc > 2 ? std::atoi(argv[2]) : 2000);
  if (rank == 0) timeout += skew;

  dasgd::comm::mpi_options o;
  o.progress = thread ? dasgd::comm::mpi_progress::thread : dasgd::comm::mpi_progress::test;
  o.timeout = timeout;
  std::vector<float> w(1 << 16, 1.0f), g(1 << 16, 0.5f);
  dasgd::delayed_averager trainer(dasgd::make_tensor_list(w), dasgd::comm::mpi_communicator(MPI_COMM_WORLD, o),
                                  dasgd::policy::fixed_delay{.tau = 2, .delay = 1},
                                  dasgd::optim::sgd{.lr = 0.01}, dasgd::merge::mix{});
  return dasgd::test::run_and_report(rank, [&] {
    for (int k = 0; k < 20; ++k) {
      if (rank == stalled && k == 5) {
        std::printf("rank %d: stalling at step %d\n", rank, k);
        std::fflush(stdout);
        std::this_thread::sleep_for(std::chrono::hours(1));
      }
      trainer.step(g);
    }
  });
}
