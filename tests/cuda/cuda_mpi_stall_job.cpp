// A job in which one rank's compute stream stalls for good while it posts a
// device average through basic_cuda_mpi_communicator (the direct route,
// over the fake CUDA runtime): its own staging gives up on the snapshot
// copy and the others' MPI waits time out, so every rank must report
// timeout_error within the timeout, and the job must end (mpi_environment
// aborts it, the survivors' collectives being stranded). Run by
// tests/mpi/run_stall_job.cmake, which times the job.
//
//   mpiexec -n N cuda_mpi_stall_job direct <timeout_ms>
#include <dasgd/comm/cuda_mpi.hpp>
#include <dasgd/comm/mpi.hpp>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <span>

#include "fake_cuda_mpi_runtime.hpp"
#include "fake_nccl_runtime.hpp"
#include "mpi/stall_job_outcome.hpp"

namespace fk = dasgd_test::fake_nccl;

using stall_runtime = dasgd_test::fake_cuda_mpi::runtime;  // says the MPI takes device pointers

int main(int argc, char** argv) {
  dasgd::comm::mpi_environment env(argc, argv);
  const auto timeout = std::chrono::milliseconds(argc > 2 ? std::atoi(argv[2]) : 2000);
  int rank = 0, size = 1;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  MPI_Comm_size(MPI_COMM_WORLD, &size);
  const int stalled = size - 1;

  dasgd::comm::mpi_options mo;
  mo.timeout = timeout;
  dasgd::comm::cuda_mpi_options co;
  co.staging.timeout = timeout;
  cudaStream_t compute = fk::new_stream();
  constexpr std::size_t n = 1 << 16;
  float* send = fk::device_alloc<float>(n);
  float* recv = fk::device_alloc<float>(n);
  return dasgd::test::run_and_report(rank, [&] {
    dasgd::comm::basic_cuda_mpi_communicator<stall_runtime> comm(dasgd::comm::mpi_communicator(MPI_COMM_WORLD, mo),
                                                                 compute, co);
    if (comm.route() != dasgd::comm::cuda_mpi_route::device_direct)
      DASGD_THROW(dasgd::state_error, "the route is ", dasgd::comm::to_string(comm.route()));
    for (int round = 0; round < 4; ++round) {
      if (rank == stalled && round == 2) {
        std::printf("rank %d: compute stream stalls at round %d\n", rank, round);
        std::fflush(stdout);
        fk::enqueue_gate(compute, [] { return false; });  // a kernel that never ends
      }
      auto req = comm.iallreduce_average(std::span<const float>(send, n), std::span<float>(recv, n));
      req.wait();
    }
  });
}
