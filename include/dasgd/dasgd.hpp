// Umbrella header: everything that needs no third-party library.
// Optional parts are included on their own:
//   dasgd/comm/mpi.hpp            MPI communicator        (link dasgd::mpi)
//   dasgd/kernels/cuda/*.cuh      CUDA backend            (link dasgd::cuda)
//   dasgd/comm/nccl.hpp           NCCL communicator       (link dasgd::nccl)
//   dasgd/adaptors/eigen.hpp, dasgd/adaptors/thrust.hpp   tensor adaptors
#pragma once

#include "config.hpp"
#include "core/backend.hpp"
#include "core/communicator.hpp"
#include "core/delay_policy.hpp"
#include "core/delayed_averager.hpp"
#include "core/error.hpp"
#include "core/local_optimizer.hpp"
#include "core/merge_rule.hpp"
#include "core/precision.hpp"
#include "core/tensor.hpp"
#include "core/tensor_list.hpp"
#include "core/trainer_for.hpp"
#include "comm/inproc.hpp"
#include "comm/wire_format.hpp"
#include "kernels/host/host_backend.hpp"
#include "merge/additive.hpp"
#include "merge/linear.hpp"
#include "merge/mix.hpp"
#include "merge/outer_sgd.hpp"
#include "optim/adamw.hpp"
#include "optim/sgd.hpp"
#include "policy/adaptive_delay.hpp"
#include "policy/fixed_delay.hpp"
#include "policy/warmup.hpp"
