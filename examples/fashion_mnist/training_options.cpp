#include "training_options.hpp"

#include <cmath>
#include <iostream>
#include <map>
#include <utility>
#include <vector>

#include <CLI/CLI.hpp>

#include "idx_dataset.hpp"

namespace fashion_mnist {

const char* name_of(algorithm a) {
  switch (a) {
    case algorithm::sync: return "sync";
    case algorithm::local: return "local";
    case algorithm::dasgd: return "dasgd";
  }
  return "?";
}
const char* name_of(merge_kind m) {
  switch (m) {
    case merge_kind::mix: return "mix";
    case merge_kind::additive: return "additive";
    case merge_kind::outer: return "outer";
  }
  return "?";
}
const char* name_of(wire_kind w) {
  switch (w) {
    case wire_kind::fp32: return "fp32";
    case wire_kind::bf16: return "bf16";
  }
  return "?";
}
const char* name_of(lr_scaling s) {
  switch (s) {
    case lr_scaling::none: return "none";
    case lr_scaling::linear: return "linear";
    case lr_scaling::sqrt: return "sqrt";
  }
  return "?";
}
const char* name_of(optimizer_kind o) { return o == optimizer_kind::sgd ? "sgd" : "adamw"; }
const char* name_of(lr_schedule s) { return s == lr_schedule::constant ? "constant" : "cosine"; }

bool wants_progress_bar(progress_style style, bool stdout_is_terminal, bool under_mpiexec) {
  if (style == progress_style::automatic) return stdout_is_terminal && !under_mpiexec;
  return style == progress_style::bar;
}

double training_options::effective_lr() const {
  const double base = lr > 0.0 ? lr : (optimizer == optimizer_kind::sgd ? default_sgd_lr
                                                                          : default_adamw_lr);
  const double ratio = static_cast<double>(workers) / static_cast<double>(scaling_base);
  switch (scaling) {
    case lr_scaling::none: return base;
    case lr_scaling::linear: return base * ratio;
    case lr_scaling::sqrt: return base * std::sqrt(ratio);
  }
  return base;
}

namespace {

/// An option taking one of a few names (case-insensitive); --help lists them
/// as "a|b|c" with the current value as default.
template <class E>
CLI::Option* add_choice(CLI::App& app, const std::string& flags, E& target,
                        const std::vector<std::pair<std::string, E>>& choices,
                        const std::string& help) {
  std::map<std::string, E> by_name;
  std::string names, current;
  for (const auto& [name, value] : choices) {
    by_name.emplace(name, value);
    names += (names.empty() ? "" : "|") + name;
    if (value == target) current = name;
  }
  // Rewrites the name to the enum's number, which CLI11 then stores.
  auto to_value = [by_name, names](std::string& input) -> std::string {
    const auto it = by_name.find(CLI::detail::to_lower(input));
    if (it == by_name.end()) return "'" + input + "' is not one of " + names;
    input = std::to_string(static_cast<int>(it->second));
    return {};
  };
  return app.add_option(flags, target, help)
      ->transform(CLI::Validator(to_value, "", ""))
      ->type_name(names)
      ->default_str(current);
}

}  // namespace

parse_result parse_training_options(int argc, char** argv, int ranks, bool print) {
  training_options o;
  o.data_dir = default_data_dir;
  CLI::App app{
      "Trains a 784-256-128-10 MLP on Fashion-MNIST with dasgd. Runs N worker threads in one "
      "process, or one worker per rank when started under mpiexec."};

  add_choice(app, "-a,--algorithm", o.algo,
             {{"sync", algorithm::sync}, {"local", algorithm::local}, {"dasgd", algorithm::dasgd}},
             "sync: average every step; local: Local SGD; dasgd: Local SGD with delayed averaging");
  auto* tau = app.add_option("--tau", o.tau, "local steps per round (local, dasgd)")
                  ->check(CLI::PositiveNumber)
                  ->capture_default_str();
  auto* delay = app.add_option("-d,--delay", o.delay, "steps between launch and merge (dasgd)")
                    ->check(CLI::NonNegativeNumber)
                    ->capture_default_str();
  auto* merge = add_choice(app, "--merge", o.merge,
                           {{"mix", merge_kind::mix},
                            {"additive", merge_kind::additive},
                            {"outer", merge_kind::outer}},
                           "mix: w = p * w_local + (1 - p) * avg; additive: w += avg - snapshot; "
                           "outer: DiLoCo's outer Nesterov SGD on snapshot - avg (local, dasgd)");
  auto* outer_lr = app.add_option("--outer-lr", o.outer_lr, "merge outer: outer learning rate")
                       ->check(CLI::PositiveNumber)
                       ->capture_default_str();
  auto* outer_momentum =
      app.add_option("--outer-momentum", o.outer_momentum, "merge outer: outer Nesterov momentum")
          ->check(CLI::Range(0.0, 0.999))
          ->capture_default_str();
  add_choice(app, "--wire", o.wire,
             {{"fp32", wire_kind::fp32}, {"bf16", wire_kind::bf16}},
             "what the averages travel in (bf16: half the bytes, summed in fp32; under mpiexec)");
  auto* groups = app.add_option("--groups", o.groups,
                                 "hierarchical averaging: G groups of consecutive workers, "
                                 "averaged every round; across groups every --outer-every rounds")
                     ->check(CLI::PositiveNumber);
  auto* node_groups = app.add_flag("--node-groups", o.node_groups,
                                   "hierarchical averaging, one group per shared-memory node "
                                   "(under mpiexec)");
  auto* outer_every = app.add_option("--outer-every", o.outer_every,
                                     "with groups: every N-th round averages across groups")
                          ->check(CLI::PositiveNumber)
                          ->capture_default_str();
  auto* outer_delay = app.add_option("--outer-delay", o.outer_delay,
                                     "with groups: delay of the rounds across groups (dasgd)")
                          ->check(CLI::NonNegativeNumber)
                          ->capture_default_str();
  auto* outer_average = add_choice(app, "--outer-average", o.outer_world,
                                   {{"chained", false}, {"world", true}},
                                   "with groups: chained: group average, leaders over the slow "
                                   "link, group broadcast; world: one allreduce over every rank");
  auto* mix_p = app.add_option("-p,--p", o.mix_p,
                               "share of the local weights kept by the mix merge")
                    ->check(CLI::Range(0.0, 1.0))
                    ->capture_default_str();

  add_choice(app, "--optimizer", o.optimizer,
             {{"sgd", optimizer_kind::sgd}, {"adamw", optimizer_kind::adamw}},
             "local optimizer of each worker");
  app.add_option("--lr", o.lr, "peak learning rate (default: 0.05 for sgd, 0.001 for adamw)")
      ->check(CLI::PositiveNumber);
  auto* momentum = app.add_option("--momentum", o.momentum, "sgd momentum")
                       ->check(CLI::Range(0.0, 1.0))
                       ->capture_default_str();
  auto* nesterov = app.add_flag("--nesterov", o.nesterov, "sgd: Nesterov momentum");
  app.add_option("--weight-decay", o.weight_decay,
                 "sgd: L2 penalty; adamw: decoupled weight decay (default 0)")
      ->check(CLI::NonNegativeNumber);
  add_choice(app, "--schedule", o.schedule,
             {{"constant", lr_schedule::constant}, {"cosine", lr_schedule::cosine}},
             "learning rate over the run: constant, or cosine decay to 1% of --lr");
  add_choice(app, "--lr-scaling", o.scaling,
             {{"none", lr_scaling::none}, {"linear", lr_scaling::linear}, {"sqrt", lr_scaling::sqrt}},
             "peak lr = --lr x (workers / --lr-base-workers), or its square root (large batches)");
  app.add_option("--lr-base-workers", o.scaling_base, "the worker count --lr is tuned for")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  app.add_option("--warmup-epochs", o.warmup_epochs,
                 "linear learning-rate warm-up from 10% of the peak over this many epochs")
      ->check(CLI::NonNegativeNumber)
      ->capture_default_str();
  auto* sync_epochs =
      app.add_option("--sync-epochs", o.sync_epochs,
                     "post-local SGD: synchronous steps for this many epochs, then local or delayed averaging")
          ->check(CLI::NonNegativeNumber)
          ->capture_default_str();
  app.add_flag("--no-bias-decay", o.no_bias_decay,
               "parameter groups: no weight decay on the biases");
  auto* average_state =
      app.add_flag("--average-state", o.average_state,
                   "average the optimizer state (sgd momentum, adamw moments) with the weights, "
                   "in the same collective, merged by the same rule");
  add_choice(app, "--nonfinite", o.nonfinite,
             {{"throw", dasgd::nonfinite_guard::throw_error},
              {"skip", dasgd::nonfinite_guard::skip_merge},
              {"off", dasgd::nonfinite_guard::off}},
             "a NaN or infinity in a snapshot: stop with an error naming the rank, skip that "
             "merge, or do not check");

  app.add_option("-b,--batch", o.batch, "mini-batch size per worker")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  app.add_option("-e,--epochs", o.epochs, "passes over the training set")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  auto* workers = app.add_option("-w,--workers", o.workers,
                                 "worker threads (under mpiexec: must equal the rank count)")
                      ->check(CLI::PositiveNumber)
                      ->capture_default_str();
  app.add_option("--seed", o.seed, "seed of the initial weights and of the shuffling")
      ->capture_default_str();
  app.add_option("--csv", o.csv_path, "write one row per epoch to this CSV file");
  app.add_option("--data-dir", o.data_dir, "folder holding the four *-ubyte.gz files")
      ->capture_default_str();
  app.add_option("--train-samples", o.train_samples,
                 "use only the first N training images (0: all)");
  app.add_option("--test-samples", o.test_samples, "use only the first N test images (0: all)");
  app.add_option("--min-accuracy", o.min_accuracy,
                 "exit with code 3 if the final test accuracy is below this")
      ->check(CLI::Range(0.0, 1.0));

  add_choice(app, "--progress", o.progress,
             {{"auto", progress_style::automatic},
              {"bar", progress_style::bar},
              {"lines", progress_style::lines}},
             "auto: a redrawn bar on a terminal (not under mpiexec), else one line per epoch");

  try {
    app.parse(argc, argv);
    const auto reject = [&](CLI::Option* opt, const char* why) {
      if (opt->count() > 0)
        throw CLI::ValidationError(opt->get_name(), std::string("has no effect ") + why);
    };
    if (o.algo == algorithm::sync) {
      const char* why = "with --algorithm sync (tau = 1, delay = 0, mix p = 0)";
      reject(tau, why);
      reject(delay, why);
      reject(merge, why);
      reject(mix_p, why);
      o.tau = 1;
      o.delay = 0;
      o.merge = merge_kind::mix;
      o.mix_p = 0.0;
    } else if (o.algo == algorithm::local) {
      reject(delay, "with --algorithm local (delay = 0)");
      reject(outer_delay, "with --algorithm local (delay = 0)");
      o.delay = 0;
      o.outer_delay = 0;
    }
    if (o.algo == algorithm::sync) {
      reject(sync_epochs, "with --algorithm sync (every step is synchronous)");
      reject(groups, "with --algorithm sync");
      reject(node_groups, "with --algorithm sync");
    }
    if (groups->count() > 0 && node_groups->count() > 0)
      throw CLI::ValidationError(groups->get_name(), "and --node-groups exclude each other");
    if (!o.hierarchical()) {
      const char* why = "without --groups or --node-groups";
      reject(outer_every, why);
      reject(outer_delay, why);
      reject(outer_average, why);
    }
    if (o.hierarchical() && o.wire != wire_kind::fp32)
      throw CLI::ValidationError("--wire", "must be fp32 with --groups or --node-groups");
    if (o.node_groups && ranks == 0)
      throw CLI::ValidationError(node_groups->get_name(), "needs mpiexec (MPI ranks)");
    if (o.hierarchical() && o.outer_delay >= o.tau)
      throw CLI::ValidationError(outer_delay->get_name(),
                                 "is " + std::to_string(o.outer_delay) +
                                     ", it must be smaller than --tau " + std::to_string(o.tau));
    if (o.delay >= o.tau)  // at most one average may be in flight
      throw CLI::ValidationError(delay->get_name(), "is " + std::to_string(o.delay) +
                                                        ", it must be smaller than --tau " +
                                                        std::to_string(o.tau));
    if (o.merge != merge_kind::mix) reject(mix_p, "without --merge mix");
    if (o.merge != merge_kind::outer) {
      reject(outer_lr, "without --merge outer");
      reject(outer_momentum, "without --merge outer");
    }
    if (o.merge == merge_kind::outer)
      reject(average_state, "with --merge outer (its outer step is for the weights only)");
    if (o.optimizer == optimizer_kind::sgd && o.momentum == 0.0)
      reject(average_state, "with --momentum 0 (sgd keeps no state)");
    if (o.optimizer == optimizer_kind::adamw) {
      reject(momentum, "with --optimizer adamw");
      reject(nesterov, "with --optimizer adamw");
    }
    if (ranks > 0) {
      if (workers->count() > 0 && o.workers != ranks)
        throw CLI::ValidationError(workers->get_name(),
                                   "is " + std::to_string(o.workers) + " but mpiexec started " +
                                       std::to_string(ranks) + " ranks (one worker per rank)");
      o.workers = ranks;
    }
    if (o.groups > 0 && o.workers % o.groups != 0)
      throw CLI::ValidationError(groups->get_name(),
                                 "is " + std::to_string(o.groups) + " but " +
                                     std::to_string(o.workers) +
                                     " workers cannot form groups of equal size");
  } catch (const CLI::ParseError& e) {
    // CLI11 prints --help to stdout and errors to stderr; only one rank talks.
    if (print) return {std::nullopt, app.exit(e)};
    return {std::nullopt, e.get_exit_code()};
  }
  return {o, 0};
}

}  // namespace fashion_mnist
