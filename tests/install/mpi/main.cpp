// Downstream MPI smoke test (run with 2 ranks): DaSGD over MPI, then every
// rank must hold the same weights.
#include <dasgd/comm/mpi.hpp>
#include <dasgd/dasgd.hpp>

#include <cstdio>
#include <vector>

int main(int argc, char** argv) {
  dasgd::comm::mpi_environment env(argc, argv);
  dasgd::comm::mpi_communicator comm;
  const int rank = comm.rank(), size = comm.size();
  std::vector<double> w(32, 1.0), g(32, 0.1 * (rank + 1));
  {
    dasgd::delayed_averager trainer(dasgd::make_tensor_list(w), std::move(comm),
                                    dasgd::policy::fixed_delay{.tau = 4, .delay = 1},
                                    dasgd::optim::sgd{.lr = 0.1}, dasgd::merge::mix{});
    for (int k = 0; k < 10; ++k) trainer.step(g);
    trainer.synchronize();
  }
  double lo = 0, hi = 0;
  MPI_Allreduce(&w[0], &lo, 1, MPI_DOUBLE, MPI_MIN, MPI_COMM_WORLD);
  MPI_Allreduce(&w[0], &hi, 1, MPI_DOUBLE, MPI_MAX, MPI_COMM_WORLD);
  const bool ok = size >= 2 && lo == hi && w[0] < 1.0;
  if (rank == 0)
    std::printf("mpi consumer: %d ranks, w[0] = %f, replicas agree: %s\n", size, w[0],
                ok ? "yes" : "no");
  return ok ? 0 : 1;
}
