// trainer_for: the trainer type spelled with defaults, for the places where
// class template argument deduction cannot help (a class member, a function
// return type, a container of trainers):
//
//   struct my_worker {
//     dasgd::trainer_for<float, dasgd::comm::mpi_communicator> trainer;  // fixed_delay, sgd, mix
//   };
//
// The backend defaults to the one that serves the communicator's memory
// space (host_backend for host communicators, cuda_backend for NCCL, which
// then needs dasgd/kernels/cuda/cuda_backend.cuh included).
#pragma once

#include "../merge/mix.hpp"
#include "../optim/sgd.hpp"
#include "../policy/fixed_delay.hpp"
#include "backend.hpp"
#include "communicator.hpp"
#include "delayed_averager.hpp"
#include "precision.hpp"

namespace dasgd {

template <class Storage, class Comm, class Policy = policy::fixed_delay, class Optim = optim::sgd,
          class Merge = merge::mix, class Backend = default_backend_t<comm_memory_space_t<Comm>>,
          class Compute = default_compute_t<Storage>>
using trainer_for = delayed_averager<Storage, Comm, Policy, Optim, Merge, Backend, Compute>;

}  // namespace dasgd
