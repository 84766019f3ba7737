// Command-line settings of the Fashion-MNIST trainer.
#pragma once

#include <dasgd/core/trainer_options.hpp>

#include <cstdint>
#include <optional>
#include <string>

namespace fashion_mnist {

enum class algorithm {
  sync,   ///< synchronous data-parallel SGD: average every step (tau = 1, delay = 0, p = 0)
  local,  ///< Local SGD: average every tau steps, blocking (delay = 0)
  dasgd   ///< DaSGD: average every tau steps, merged `delay` steps later
};
enum class merge_kind { mix, additive, outer };
/// What the averages travel in (bf16/fp16 need dasgd::cuda_types).
enum class wire_kind { fp32, bf16 };
/// How the peak learning rate grows with the worker count (large batches).
enum class lr_scaling { none, linear, sqrt };
enum class optimizer_kind { sgd, adamw };
enum class lr_schedule { constant, cosine };
enum class progress_style {
  automatic,  ///< a bar if stdout is a terminal and we are not under mpiexec
  bar,
  lines
};

const char* name_of(algorithm a);
const char* name_of(merge_kind m);
const char* name_of(optimizer_kind o);
const char* name_of(lr_schedule s);
const char* name_of(wire_kind w);
const char* name_of(lr_scaling s);

/// Whether to redraw a progress bar. Under mpiexec, rank 0's stdout is a
/// pseudo-terminal of the launcher even when mpiexec's own output goes to a
/// file, so `automatic` means plain lines there.
bool wants_progress_bar(progress_style style, bool stdout_is_terminal, bool under_mpiexec);

struct training_options {
  algorithm algo = algorithm::dasgd;
  int tau = 4;
  int delay = 1;
  merge_kind merge = merge_kind::mix;
  double mix_p = 0.25;  ///< share of the local weights kept by the mix merge
  double outer_lr = 0.7;        ///< merge outer: DiLoCo's outer learning rate
  double outer_momentum = 0.9;  ///< merge outer: its Nesterov momentum
  wire_kind wire = wire_kind::fp32;
  /// Hierarchical averaging (--groups / --node-groups): 0 = flat. G >= 1:
  /// G groups of consecutive ranks; a round averages within the group
  /// (merged `delay` steps later), every outer_every-th round across all
  /// groups (merged outer_delay steps later).
  int groups = 0;
  bool node_groups = false;  ///< MPI: one group per shared-memory node
  int outer_every = 4;
  int outer_delay = 1;
  bool outer_world = false;  ///< across groups: one world allreduce, not the chained one
  bool hierarchical() const { return groups > 0 || node_groups; }

  optimizer_kind optimizer = optimizer_kind::sgd;
  double lr = 0.0;  ///< 0: the optimizer's default below
  double momentum = 0.9;
  bool nesterov = false;
  double weight_decay = 0.0;
  lr_schedule schedule = lr_schedule::cosine;
  bool no_bias_decay = false;  ///< parameter groups: no weight decay on b1, b2, b3
  /// The optimizer state (momentum / Adam moments) travels and merges with
  /// the weights (trainer_options::optimizer_state = averaged).
  bool average_state = false;
  /// A NaN or infinity in a snapshot: stop with an error naming the rank
  /// (default), skip that merge, or do not check.
  dasgd::nonfinite_guard nonfinite = dasgd::nonfinite_guard::throw_error;
  lr_scaling scaling = lr_scaling::none;
  int scaling_base = 4;         ///< the worker count --lr is tuned for
  double warmup_epochs = 0.0;   ///< linear warm-up from 10% of the peak
  /// Post-local SGD: synchronous steps for this many epochs, then the
  /// algorithm's schedule (policy::warmup).
  double sync_epochs = 0.0;

  int batch = 32;  ///< per worker
  int epochs = 15;
  int workers = 4;  ///< in-process threads; under mpiexec the number of ranks
  std::uint64_t seed = 1;

  std::string csv_path;  ///< empty: no CSV log
  std::string data_dir;
  std::size_t train_samples = 0;  ///< 0: all (smaller values make quick runs)
  std::size_t test_samples = 0;
  double min_accuracy = 0.0;  ///< exit code 3 if the final test accuracy is lower
  progress_style progress = progress_style::automatic;

  static constexpr double default_sgd_lr = 0.05;
  static constexpr double default_adamw_lr = 1e-3;
  /// The peak learning rate: --lr (or the optimizer's default), scaled
  /// with the worker count by --lr-scaling.
  double effective_lr() const;
};

/// Parsed options, or the exit code to return at once (--help: 0, bad usage:
/// CLI11's code, with the message already printed when `print` is true).
struct parse_result {
  std::optional<training_options> options;
  int exit_code = 0;
};

/// `ranks`: the communicator size when started under mpiexec, else 0. The
/// sync algorithm rejects --tau/--delay/--p/--merge, local rejects --delay:
/// they would have no effect, and a silently ignored flag misleads.
parse_result parse_training_options(int argc, char** argv, int ranks, bool print);

}  // namespace fashion_mnist
