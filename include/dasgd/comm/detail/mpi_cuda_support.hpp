// Whether the MPI library accepts device pointers ("CUDA-aware MPI"). Only
// OpenMPI answers portably: its CUDA extension (mpi-ext.h) reports at run
// time whether the library was built with CUDA and whether this run
// enabled it. Other MPIs (MPICH, MVAPICH, Cray MPICH) give no answer here:
// `unknown`, and the user says so explicitly (comm/cuda_mpi.hpp,
// mpi_device_pointers::always).
#pragma once

#include "mpi_header.hpp"

#if defined(OPEN_MPI) && OPEN_MPI
#include <mpi-ext.h>
#endif

namespace dasgd::comm {

enum class mpi_cuda_support {
  no,       ///< the MPI says it cannot take device pointers
  yes,      ///< the MPI says it can
  unknown,  ///< the MPI cannot be asked
};

inline const char* to_string(mpi_cuda_support s) {
  switch (s) {
    case mpi_cuda_support::no: return "no";
    case mpi_cuda_support::yes: return "yes";
    case mpi_cuda_support::unknown: return "unknown";
  }
  return "?";
}

namespace detail {

/// Asks the MPI library (after MPI_Init).
inline mpi_cuda_support query_mpi_cuda_support() {
#if defined(OMPI_HAVE_MPI_EXT_CUDA) && OMPI_HAVE_MPI_EXT_CUDA
  return MPIX_Query_cuda_support() == 1 ? mpi_cuda_support::yes : mpi_cuda_support::no;
#else
  return mpi_cuda_support::unknown;
#endif
}

}  // namespace detail
}  // namespace dasgd::comm
