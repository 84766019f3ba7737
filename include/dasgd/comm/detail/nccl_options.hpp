// Options of the NCCL communicator (comm/nccl.hpp), shared with its engine.
#pragma once

#include <chrono>

namespace dasgd::comm {

struct nccl_options {
  /// Longest an operation may take from its start (or an NCCL call, its
  /// initialization or its finalization may run) before the communicator
  /// is aborted and timeout_error is thrown.
  std::chrono::milliseconds timeout{std::chrono::minutes(10)};
  /// Drive collectives and watch for hangs on background threads (see
  /// comm/nccl.hpp). Without it, progress happens inside test() and wait(),
  /// and a call stuck inside NCCL is not aborted.
  bool watchdog = true;
  /// Watchdog polling period.
  std::chrono::milliseconds watchdog_interval{10};
  /// request::wait() also blocks the host until the operation completes
  /// (or times out), instead of only ordering the compute stream after it.
  bool host_wait = false;
  /// Abort the NCCL communicator on an error or a timeout. Turning this off
  /// leaves a hung collective hung; only for callers with their own recovery.
  bool abort_on_failure = true;
};

/// Whether the communicator destroys its ncclComm_t.
enum class nccl_ownership { borrow, own };

}  // namespace dasgd::comm
