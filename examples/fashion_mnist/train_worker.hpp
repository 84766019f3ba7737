// The training loop of one worker, generic over the communicator: the same
// code runs as a thread of an in-process group or as one MPI rank.
//
// Data: every epoch, all workers draw the same permutation of the training
// set (from the seed and the epoch) and worker r takes the r-th contiguous
// slice of it, like PyTorch's DistributedSampler. Every worker takes the same
// number of full mini-batches, so the collectives line up.
// Evaluation: at the end of each epoch trainer.synchronize() gives every
// worker the averaged model; each worker scores its slice of the test set and
// one small average collective adds the counts up.
#pragma once

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <numeric>
#include <random>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include <dasgd/adaptors/eigen.hpp>
#include <dasgd/dasgd.hpp>
#include <dasgd/policy/hierarchical.hpp>
#include <dasgd/policy/warmup.hpp>

#include "idx_dataset.hpp"
#include "mlp.hpp"
#include "progress.hpp"
#include "run_support.hpp"
#include "training_options.hpp"

namespace fashion_mnist {

/// Where rank 0 reports; the other ranks get null pointers.
struct report_sinks {
  progress_display* progress = nullptr;
  csv_log* csv = nullptr;
};

struct run_summary {
  double test_accuracy = 0.0;
  double test_loss = 0.0;
  double wall_seconds = 0.0;
  std::int64_t steps = 0;
};

/// Training images and test images actually used (the --*-samples limits).
struct dataset_view {
  const labelled_images* train = nullptr;
  Eigen::Index train_count = 0;
  const labelled_images* test = nullptr;
  Eigen::Index test_count = 0;
};

inline std::int64_t steps_per_epoch(const training_options& o, Eigen::Index train_count,
                                    int workers) {
  const std::int64_t shard = static_cast<std::int64_t>(train_count) / workers;
  const std::int64_t steps = shard / o.batch;
  DASGD_REQUIRE(steps >= 1, dasgd::config_error, "each of the ", workers, " workers gets ",
                shard, " of the ", train_count, " training images, fewer than one batch of ",
                o.batch);
  return steps;
}

namespace detail {

/// The learning rate of `step` (of `total`, `per_epoch` per epoch): a linear
/// warm-up from 10% of the peak over --warmup-epochs, then the schedule.
inline double scheduled_lr(const training_options& o, std::int64_t step, std::int64_t total,
                           std::int64_t per_epoch = 1) {
  const double peak = o.effective_lr();
  const double warmup = o.warmup_epochs * static_cast<double>(per_epoch);
  if (static_cast<double>(step) < warmup)
    return peak * (0.1 + 0.9 * static_cast<double>(step) / warmup);
  if (o.schedule == lr_schedule::constant) return peak;
  return cosine_lr(peak, step, total);
}

/// Parameter groups: with --no-bias-decay the biases get no weight decay.
inline dasgd::trainer_options trainer_options_of(const training_options& o) {
  dasgd::trainer_options t;
  t.nonfinite = o.nonfinite;
  if (o.average_state) t.optimizer_state = dasgd::averaging::averaged;
  if (o.no_bias_decay) {
    // W1, b1, W2, b2, W3, b3
    t.per_tensor = {{}, {.weight_decay = false}, {}, {.weight_decay = false},
                    {}, {.weight_decay = false}};
  }
  return t;
}

/// Flat DaSGD is the hierarchical schedule with every round across groups
/// (outer_every = 1): one policy type for both, one instantiation fewer.
inline dasgd::policy::hierarchical schedule_of(const training_options& o) {
  if (!o.hierarchical()) return {.tau = o.tau, .delay = o.delay, .outer_every = 1, .outer_delay = o.delay};
  return {.tau = o.tau, .delay = o.delay, .outer_every = o.outer_every, .outer_delay = o.outer_delay};
}

/// The schedule after --sync-epochs of synchronous steps (post-local SGD;
/// none by default).
inline dasgd::policy::warmup<dasgd::policy::hierarchical> policy_of(const training_options& o,
                                                                    std::int64_t steps_per_epoch) {
  return {.sync_steps = std::llround(o.sync_epochs * static_cast<double>(steps_per_epoch)),
          .inner = schedule_of(o)};
}

template <class Comm, class Optim, class Merge>
run_summary train(Comm comm, Optim optim, Merge merge, const training_options& o,
                  const dataset_view& data, report_sinks sinks) {
  const int rank = comm.rank();
  const int workers = comm.size();
  const std::int64_t steps = steps_per_epoch(o, data.train_count, workers);
  const std::int64_t total_steps = steps * o.epochs;

  mlp_tensors params(input_size, hidden1_size, hidden2_size, output_size);
  mlp_tensors grads(input_size, hidden1_size, hidden2_size, output_size);
  initialize(params, o.seed);  // same seed on every rank: identical start
  mlp_workspace workspace;

  // dasgd sees the Eigen objects themselves through the Eigen adaptor.
  dasgd::delayed_averager trainer(
      dasgd::make_tensor_list(params.W1, params.b1, params.W2, params.b2, params.W3, params.b3),
      std::move(comm), policy_of(o, steps), optim, merge,
      trainer_options_of(o));
  const dasgd::tensor_list<const float> gradient_list(grads.W1, grads.b1, grads.W2, grads.b2,
                                                      grads.W3, grads.b3);

  const auto& train_set = *data.train;
  Eigen::MatrixXf batch_images(input_size, o.batch);
  std::vector<std::uint8_t> batch_labels(static_cast<std::size_t>(o.batch));
  std::vector<std::int32_t> order(static_cast<std::size_t>(data.train_count));
  const std::int64_t shard = steps * o.batch;

  // Test slice of this rank.
  const Eigen::Index test_first = data.test_count * rank / workers;
  const Eigen::Index test_last = data.test_count * (rank + 1) / workers;

  run_summary summary;
  double waited = 0.0;
  const auto start = std::chrono::steady_clock::now();
  for (int epoch = 1; epoch <= o.epochs; ++epoch) {
    std::iota(order.begin(), order.end(), 0);
    std::mt19937_64 shuffle_rng(o.seed * 1000003u + static_cast<std::uint64_t>(epoch));
    std::shuffle(order.begin(), order.end(), shuffle_rng);
    const std::int32_t* mine = order.data() + shard * rank;

    double loss_sum = 0.0;
    for (std::int64_t s = 0; s < steps; ++s) {
      for (int j = 0; j < o.batch; ++j) {
        const std::int32_t sample = mine[s * o.batch + j];
        batch_images.col(j) = train_set.images.col(sample);
        batch_labels[static_cast<std::size_t>(j)] = train_set.labels[static_cast<std::size_t>(sample)];
      }
      const float loss = loss_and_gradients(params, batch_images, batch_labels, grads, workspace);
      loss_sum += loss;
      trainer.set_learning_rate(scheduled_lr(o, trainer.steps_taken(), total_steps, steps));
      waited += trainer.step(gradient_list).wait_seconds;
      if (sinks.progress) sinks.progress->step(epoch, s + 1, loss);
    }

    trainer.synchronize();
    const auto eval = evaluate(params, data.test->images, data.test->labels, test_first, test_last);
    const auto totals =
        sum_over_ranks(trainer.communicator(),
                       {loss_sum, static_cast<double>(steps), eval.loss_sum,
                        static_cast<double>(eval.correct), static_cast<double>(eval.count)});
    const double elapsed =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    summary.test_loss = totals[2] / totals[4];
    summary.test_accuracy = std::round(totals[3]) / std::round(totals[4]);
    summary.wall_seconds = elapsed;
    summary.steps = trainer.steps_taken();
    const double train_loss = totals[0] / totals[1];
    if (sinks.progress)
      sinks.progress->epoch_done(epoch, summary.steps, train_loss, summary.test_loss,
                                 summary.test_accuracy, elapsed, waited);
    if (sinks.csv)
      sinks.csv->row(name_of(o.algo), workers, o.tau, o.delay, epoch, summary.steps, elapsed,
                     train_loss, summary.test_loss, summary.test_accuracy, waited);
  }
  return summary;
}

}  // namespace detail

/// Trains with the optimizer and merge rule the options name.
template <class Comm>
run_summary train_worker(Comm comm, const training_options& o, const dataset_view& data,
                         report_sinks sinks) {
  const double lr = o.effective_lr();
  // The averages travel in the --wire type (a communicator adaptor). Only
  // over MPI, where the bytes cost something: every variant is another
  // instantiation of the trainer, and compile time adds up.
  auto with_wire = [&](auto optim, auto merge) {
#if defined(DASGD_HAS_CUDA_TYPES)
    // (Flat MPI only: hierarchical communicators train in fp32.)
    if constexpr (!std::is_same_v<Comm, dasgd::comm::inproc_communicator> &&
                  !requires { typename Comm::sub_communicator; }) {
      if (o.wire == wire_kind::bf16)
        return detail::train(dasgd::comm::wire_format<__nv_bfloat16, Comm>(std::move(comm)),
                             optim, merge, o, data, sinks);
    }
#endif
    if (o.wire != wire_kind::fp32)
      throw std::runtime_error(std::string("--wire ") + name_of(o.wire) +
                               " needs MPI (run under mpiexec) and the CUDA toolkit's 16-bit "
                               "types (a build configured with -DDASGD_ENABLE_CUDA=AUTO)");
    return detail::train(std::move(comm), optim, merge, o, data, sinks);
  };
  auto with_merge = [&](auto optim) {
    if (o.merge == merge_kind::additive) return with_wire(optim, dasgd::merge::additive{});
    if (o.merge == merge_kind::outer)
      return with_wire(optim, dasgd::merge::outer_sgd{.lr = o.outer_lr,
                                                      .momentum = o.outer_momentum,
                                                      .nesterov = true});
    return with_wire(optim, dasgd::merge::mix{.update_proportion = o.mix_p});
  };
  if (o.optimizer == optimizer_kind::adamw) {
    return with_merge(dasgd::optim::adamw{.lr = lr, .weight_decay = o.weight_decay});
  }
  return with_merge(dasgd::optim::sgd{.lr = lr, .momentum = o.momentum,
                                      .weight_decay = o.weight_decay, .nesterov = o.nesterov});
}

}  // namespace fashion_mnist
