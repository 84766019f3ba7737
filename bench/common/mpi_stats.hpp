// Reductions of one per-rank figure over MPI_COMM_WORLD (blocking), shared
// by the overlap benchmark and the MPI progress probe.
#pragma once

#include <mpi.h>

namespace dasgd::bench {

/// The slowest rank's value.
inline double all_max(double v) {
  double out = v;
  MPI_Allreduce(&v, &out, 1, MPI_DOUBLE, MPI_MAX, MPI_COMM_WORLD);
  return out;
}

/// The sum over ranks.
inline double all_sum(double v) {
  double out = v;
  MPI_Allreduce(&v, &out, 1, MPI_DOUBLE, MPI_SUM, MPI_COMM_WORLD);
  return out;
}

}  // namespace dasgd::bench
