// <mpi.h> without the deprecated MPI C++ bindings: OpenMPI's and MPICH's
// mpicxx headers print warnings under -Wextra and dasgd uses the C API only.
#pragma once

#ifndef OMPI_SKIP_MPICXX
#define OMPI_SKIP_MPICXX 1
#endif
#ifndef MPICH_SKIP_MPICXX
#define MPICH_SKIP_MPICXX 1
#endif

#include <mpi.h>
