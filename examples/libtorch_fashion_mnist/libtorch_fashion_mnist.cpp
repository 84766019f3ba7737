// libtorch Fashion-MNIST: a small CNN (cnn.hpp) written with torch::nn and
// trained with dasgd in place of optimizer.step(): each worker's local SGD
// step plus the delayed average (dasgd/adaptors/torch.hpp).
//
//   dasgd_libtorch_fashion_mnist                  4 worker threads, DaSGD tau=4 d=1 p=0.25
//   dasgd_libtorch_fashion_mnist -a sync          synchronous SGD baseline (tau 1, delay 0)
//   mpiexec -n 4 dasgd_libtorch_fashion_mnist     one worker per MPI rank
//   ... --device cuda                             CUDA tensors, dasgd's CUDA backend (a CUDA libtorch)
//   ... --compare-torch-optim                     also time torch::optim::SGD + a hand-written average
//
// On CUDA each worker runs on a stream of its own from torch's pool (the
// current stream of its thread), which the trainer's passes and collectives
// use too. Worker threads share the process's GPUs (worker r on device
// r % count) through comm::device_group; MPI ranks (local rank % count)
// average through comm::cuda_mpi_communicator (device pointers to a
// CUDA-aware MPI, host staging otherwise). The trainer
// lives in cuda_trainer.cu (nvcc), the model here (torch).
//
// Every worker starts from its own random initialisation (seed + rank);
// broadcast_parameters makes them rank 0's, as DDP's constructor does. Only
// rank 0 prints and writes the CSV file (the MLP example's format, plotted
// by scripts/plot_training.py).
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <numeric>
#include <optional>
#include <random>
#include <span>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include <CLI/CLI.hpp>
#include <torch/torch.h>

#include <dasgd/adaptors/torch.hpp>
#include <dasgd/dasgd.hpp>
#if DASGD_HAS_MPI
#include <dasgd/comm/mpi.hpp>
#endif
#if DASGD_TORCH_EXAMPLE_CUDA
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <dasgd/adaptors/torch_cuda.hpp>

#include "cuda_trainer.hpp"
#endif

#include "cnn.hpp"
#include "idx_dataset.hpp"
#include "progress.hpp"
#include "run_support.hpp"

namespace torch_fashion_mnist {

struct options {
  std::string algorithm = "dasgd";  ///< dasgd or sync
  int tau = 4;
  int delay = 1;
  double p = 0.25;
  int workers = 4;
  std::string device = "cpu";
  int epochs = 10;
  int batch = 32;  ///< per worker
  double lr = 0.05;
  double momentum = 0.9;
  std::string schedule = "cosine";
  std::uint64_t seed = 1;
  int threads_per_worker = 0;  ///< 0: the cores divided by the workers (at least 1)
  int conv1 = 16;
  int conv2 = 32;
  std::string csv_path;
  std::string data_dir = fashion_mnist::default_data_dir;
  std::size_t train_samples = 0;
  std::size_t test_samples = 0;
  double min_accuracy = 0.0;
  bool compare_torch_optim = false;
  int compare_steps = 200;
  bool sync() const { return algorithm == "sync"; }
};

/// MPI ranks on this machine, as the launcher tells them (1 if it does not).
int local_ranks() {
  for (const char* var : {"OMPI_COMM_WORLD_LOCAL_SIZE", "MPI_LOCALNRANKS", "MV2_COMM_WORLD_LOCAL_SIZE"})
    if (const char* v = std::getenv(var)) return std::max(1, std::atoi(v));
  return 1;
}

/// This process's rank among those on this machine (0 if the launcher does not say).
int local_rank() {
  for (const char* var : {"OMPI_COMM_WORLD_LOCAL_RANK", "MPI_LOCALRANKID", "MV2_COMM_WORLD_LOCAL_RANK"})
    if (const char* v = std::getenv(var)) return std::max(0, std::atoi(v));
  return 0;
}

/// Parsed options, or the exit code to return (--help: 0).
std::optional<options> parse(int argc, char** argv, int ranks, bool print, int& exit_code) {
  options o;
  CLI::App app{"Trains a small CNN (torch::nn) on Fashion-MNIST with dasgd replacing "
               "optimizer.step(). N worker threads in one process, or one worker per rank "
               "under mpiexec."};
  app.add_option("-a,--algorithm", o.algorithm, "dasgd: local SGD with delayed averaging; "
                                                "sync: average every step (tau 1, delay 0, p 0)")
      ->check(CLI::IsMember({"dasgd", "sync"}))
      ->capture_default_str();
  auto* tau = app.add_option("--tau", o.tau, "local steps per round (dasgd)")
                  ->check(CLI::PositiveNumber)
                  ->capture_default_str();
  auto* delay = app.add_option("-d,--delay", o.delay, "steps between launch and merge (dasgd)")
                    ->check(CLI::NonNegativeNumber)
                    ->capture_default_str();
  auto* p = app.add_option("-p,--p", o.p, "share of the local weights kept by the mix merge (dasgd)")
                ->check(CLI::Range(0.0, 1.0))
                ->capture_default_str();
  auto* workers = app.add_option("-w,--workers", o.workers, "worker threads (under mpiexec: the ranks)")
                      ->check(CLI::PositiveNumber)
                      ->capture_default_str();
  app.add_option("--device", o.device, "cpu, or cuda (needs a CUDA libtorch, see docs/libtorch.md)")
      ->check(CLI::IsMember({"cpu", "cuda"}))
      ->capture_default_str();
  app.add_option("-e,--epochs", o.epochs, "passes over the training set")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  app.add_option("-b,--batch", o.batch, "mini-batch size per worker")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  app.add_option("--lr", o.lr, "peak learning rate")->check(CLI::PositiveNumber)->capture_default_str();
  app.add_option("--momentum", o.momentum, "SGD momentum")->check(CLI::Range(0.0, 1.0))->capture_default_str();
  app.add_option("--schedule", o.schedule, "constant, or cosine decay to 1% of --lr")
      ->check(CLI::IsMember({"constant", "cosine"}))
      ->capture_default_str();
  app.add_option("--seed", o.seed, "seed of rank 0's initial weights (rank r: seed + r) and of the shuffling")
      ->capture_default_str();
  app.add_option("--threads-per-worker", o.threads_per_worker,
                 "torch intra-op threads of each worker (0: cores / workers, at least 1)")
      ->check(CLI::NonNegativeNumber);
  app.add_option("--conv1", o.conv1, "channels of the first convolution")->check(CLI::PositiveNumber)->capture_default_str();
  app.add_option("--conv2", o.conv2, "channels of the second convolution")->check(CLI::PositiveNumber)->capture_default_str();
  app.add_option("--csv", o.csv_path, "write one row per epoch to this CSV file");
  app.add_option("--data-dir", o.data_dir, "folder holding the four *-ubyte.gz files")->capture_default_str();
  app.add_option("--train-samples", o.train_samples, "use only the first N training images (0: all)");
  app.add_option("--test-samples", o.test_samples, "use only the first N test images (0: all)");
  app.add_option("--min-accuracy", o.min_accuracy, "exit with code 3 if the final test accuracy is below this")
      ->check(CLI::Range(0.0, 1.0));
  app.add_flag("--compare-torch-optim", o.compare_torch_optim,
               "after training, time the same model with torch::optim::SGD plus a hand-written "
               "parameter average (every tau steps, blocking) against dasgd, and print the ratio");
  app.add_option("--compare-steps", o.compare_steps, "steps of each side of --compare-torch-optim (whole rounds of tau steps)")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  try {
    app.parse(argc, argv);
    if (o.sync()) {
      for (auto* opt : {tau, delay, p})
        if (opt->count() > 0)
          throw CLI::ValidationError(opt->get_name(), "has no effect with --algorithm sync");
      o.tau = 1;
      o.delay = 0;
      o.p = 0.0;
    }
    if (o.delay >= o.tau)
      throw CLI::ValidationError(delay->get_name(), "must be smaller than --tau");
    if (ranks > 0) {
      if (workers->count() > 0 && o.workers != ranks)
        throw CLI::ValidationError(workers->get_name(), "is " + std::to_string(o.workers) +
                                                            " but mpiexec started " +
                                                            std::to_string(ranks) + " ranks");
      o.workers = ranks;
    }
  } catch (const CLI::ParseError& e) {
    exit_code = print ? app.exit(e) : e.get_exit_code();
    return std::nullopt;
  }
  if (o.threads_per_worker == 0)
    o.threads_per_worker = std::max(1, static_cast<int>(std::thread::hardware_concurrency()) /
                                           (ranks > 0 ? local_ranks() : o.workers));
  return o;
}

/// The dataset as tensors: images [N, 1, 28, 28] in [0, 1], labels [N] (int64).
struct dataset {
  torch::Tensor train_x, train_y, test_x, test_y;
};

dataset to_tensors(fashion_mnist::fashion_mnist_data& d, const options& o) {
  const auto take = [](std::size_t wanted, std::size_t have) {
    return static_cast<std::int64_t>(wanted == 0 ? have : std::min(wanted, have));
  };
  // Eigen stores the images as columns of 784 contiguous pixels: [N, 1, 28, 28] row-major.
  const auto images = [](fashion_mnist::labelled_images& set, std::int64_t n) {
    return torch::from_blob(set.images.data(), {n, 1, fashion_mnist::image_side, fashion_mnist::image_side},
                            torch::kFloat);
  };
  const auto labels = [](fashion_mnist::labelled_images& set, std::int64_t n) {
    return torch::from_blob(set.labels.data(), {n}, torch::kUInt8).to(torch::kLong);
  };
  const std::int64_t ntrain = take(o.train_samples, d.train.size());
  const std::int64_t ntest = take(o.test_samples, d.test.size());
  return {images(d.train, ntrain), labels(d.train, ntrain), images(d.test, ntest), labels(d.test, ntest)};
}

/// The same tensors on `device` (one copy per device, shared by its workers).
dataset on_device(const dataset& d, const torch::Device& device) {
  return {d.train_x.to(device), d.train_y.to(device), d.test_x.to(device), d.test_y.to(device)};
}

std::int64_t steps_per_epoch(const options& o, std::int64_t train_count, int workers) {
  const std::int64_t shard = train_count / workers;
  DASGD_REQUIRE(shard / o.batch >= 1, dasgd::config_error, "each of the ", workers, " workers gets ",
                shard, " of the ", train_count, " training images, fewer than one batch of ", o.batch);
  return shard / o.batch;
}

double scheduled_lr(const options& o, std::int64_t step, std::int64_t total) {
  if (o.schedule == "constant") return o.lr;
  return fashion_mnist::cosine_lr(o.lr, step, total);
}

using fashion_mnist::sum_over_ranks;

struct report_sinks {
  fashion_mnist::progress_display* progress = nullptr;
  fashion_mnist::csv_log* csv = nullptr;
};

struct step_timing {
  double step_ms = 0.0;    ///< whole step: zero_grad, forward, backward, update (+ average)
  double update_ms = 0.0;  ///< the update (and average) alone
};

struct summary {
  double test_accuracy = 0.0;
  double test_loss = 0.0;
  double wall_seconds = 0.0;
  std::int64_t steps = 0;
  step_timing training;                  ///< mean over the training steps (rank 0)
  std::optional<step_timing> dasgd_cmp;  ///< --compare-torch-optim, same batches on both sides
  std::optional<step_timing> torch_cmp;
  int compare_steps = 0;
};

using clock_type = std::chrono::steady_clock;
double ms_between(clock_type::time_point a, clock_type::time_point b) {
  return std::chrono::duration<double, std::milli>(b - a).count();
}

/// The batches of worker `rank` in `epoch`: every worker draws the same
/// permutation and takes the rank-th contiguous slice (DistributedSampler).
torch::Tensor shard_indices(const options& o, std::int64_t count, int rank, std::int64_t shard, int epoch) {
  std::vector<std::int64_t> order(static_cast<std::size_t>(count));
  std::iota(order.begin(), order.end(), std::int64_t{0});
  std::mt19937_64 rng(o.seed * 1000003u + static_cast<std::uint64_t>(epoch));
  std::shuffle(order.begin(), order.end(), rng);
  return torch::from_blob(order.data() + shard * rank, {shard}, torch::kLong).clone();
}

/// zero_grad (set_to_none, libtorch 2.x's default), forward, backward.
torch::Tensor forward_backward(Cnn& model, const torch::Tensor& x, const torch::Tensor& y) {
  model->zero_grad(/*set_to_none=*/true);
  auto loss = torch::nn::functional::cross_entropy(model->forward(x), y);
  loss.backward();
  return loss;
}

/// The baseline of --compare-torch-optim: PyTorch's optimizer and, every
/// tau steps, the parameters averaged by hand with torch ops (one flat
/// buffer through a host communicator; CUDA parameters go through host
/// memory), blocking.
template <class Comm>
void average_parameters_by_hand(Comm& comm, Cnn& model) {
  torch::NoGradGuard no_grad;
  std::vector<torch::Tensor> flat;
  for (auto& p : model->parameters()) flat.push_back(p.reshape({-1}));
  auto send = torch::cat(flat).cpu();
  auto recv = torch::empty_like(send);
  auto request = comm.iallreduce_average(
      std::span<const float>(send.data_ptr<float>(), static_cast<std::size_t>(send.numel())),
      std::span<float>(recv.data_ptr<float>(), static_cast<std::size_t>(recv.numel())));
  request.wait();
  std::int64_t offset = 0;
  for (auto& p : model->parameters()) {
    p.copy_(recv.narrow(0, offset, p.numel()).view_as(p));
    offset += p.numel();
  }
}

/// Waits until the worker's stream has run what was queued (CUDA: the
/// step timings then cover the device's work, not only the launches).
void wait_for_device([[maybe_unused]] const c10::Device& device) {
#if DASGD_TORCH_EXAMPLE_CUDA
  if (device.is_cuda()) c10::cuda::getCurrentCUDAStream(device.index()).synchronize();
#endif
}

/// One worker's training with `trainer` (a delayed_averager, or the CUDA
/// path's cuda_trainer) over `params` (the parameters of `model`, on the
/// device of `data`). `host` is a host communicator over the same workers:
/// the epoch sums, and with --compare-torch-optim the comparison afterwards
/// (its hand-written average).
template <class Trainer, class Space, class HostComm>
summary train_worker(Trainer& trainer, dasgd::torch_parameters<float, Space>& params, Cnn model,
                     HostComm& host, const options& o, const dataset& data, report_sinks sinks) {
  // In each worker thread: with OpenMP (Debian's libtorch) the setting is the calling thread's.
  torch::set_num_threads(o.threads_per_worker);
  const int rank = host.rank();
  const int workers = host.size();
  const torch::Device device = data.train_x.device();
  const std::int64_t train_count = data.train_x.size(0);
  const std::int64_t steps = steps_per_epoch(o, train_count, workers);
  const std::int64_t total_steps = steps * o.epochs;
  const std::int64_t shard = steps * o.batch;

  dasgd::torch_broadcast_parameters(trainer, params, /*root=*/0);  // equal start, as DDP

  const std::int64_t test_count = data.test_x.size(0);
  const std::int64_t test_first = test_count * rank / workers;
  const std::int64_t test_last = test_count * (rank + 1) / workers;

  summary out;
  double waited = 0.0, step_ms = 0.0, update_ms = 0.0;
  std::int64_t timed = 0;
  const auto start = clock_type::now();
  for (int epoch = 1; epoch <= o.epochs; ++epoch) {
    model->train();
    const auto mine = shard_indices(o, train_count, rank, shard, epoch).to(device);
    double loss_sum = 0.0;
    for (std::int64_t s = 0; s < steps; ++s) {
      const auto idx = mine.narrow(0, s * o.batch, o.batch);
      const auto x = data.train_x.index_select(0, idx);
      const auto y = data.train_y.index_select(0, idx);
      wait_for_device(device);
      const auto t0 = clock_type::now();
      const auto loss = forward_backward(model, x, y);
      wait_for_device(device);
      const auto t1 = clock_type::now();
      trainer.set_learning_rate(scheduled_lr(o, trainer.steps_taken(), total_steps));
      waited += dasgd::torch_step(trainer, params).wait_seconds;
      wait_for_device(device);
      const auto t2 = clock_type::now();
      if (trainer.steps_taken() > 10) {  // past the first steps' allocations
        step_ms += ms_between(t0, t2);
        update_ms += ms_between(t1, t2);
        ++timed;
      }
      const float l = loss.item<float>();
      loss_sum += l;
      if (sinks.progress) sinks.progress->step(epoch, s + 1, l);
    }

    // Every worker gets the average model, scores its slice of the test set.
    dasgd::torch_synchronize(trainer, params);
    model->eval();
    double test_loss_sum = 0.0, correct = 0.0;
    {
      torch::NoGradGuard no_grad;
      for (std::int64_t i = test_first; i < test_last; i += 1000) {
        const std::int64_t n = std::min<std::int64_t>(1000, test_last - i);
        const auto logits = model->forward(data.test_x.narrow(0, i, n));
        const auto y = data.test_y.narrow(0, i, n);
        test_loss_sum += torch::nn::functional::cross_entropy(
                             logits, y, torch::nn::functional::CrossEntropyFuncOptions().reduction(torch::kSum))
                             .item<double>();
        correct += logits.argmax(1).eq(y).sum().item<double>();
      }
    }
    const auto totals = sum_over_ranks(host,
                                       {loss_sum, static_cast<double>(steps), test_loss_sum, correct,
                                        static_cast<double>(test_last - test_first)});
    const double elapsed = std::chrono::duration<double>(clock_type::now() - start).count();
    out.test_loss = totals[2] / totals[4];
    out.test_accuracy = std::round(totals[3]) / std::round(totals[4]);
    out.wall_seconds = elapsed;
    out.steps = trainer.steps_taken();
    const double train_loss = totals[0] / totals[1];
    if (sinks.progress)
      sinks.progress->epoch_done(epoch, out.steps, train_loss, out.test_loss, out.test_accuracy, elapsed, waited);
    if (sinks.csv)
      sinks.csv->row(o.algorithm.c_str(), workers, o.tau, o.delay, epoch, out.steps, elapsed, train_loss,
                     out.test_loss, out.test_accuracy, waited);
  }
  if (timed > 0) out.training = {step_ms / static_cast<double>(timed), update_ms / static_cast<double>(timed)};

  if (o.compare_torch_optim) {
    // Both sides start from the trained weights and take the same batches,
    // alternating one round (tau steps) of each so that a change in the
    // machine's load hits both alike: dasgd (its trainer goes on), and a
    // copy of the model with torch::optim::SGD plus the hand-written
    // average on a communicator of its own.
    model->train();
    const int rounds = std::max<int>(1, static_cast<int>(std::min<std::int64_t>(o.compare_steps, steps) / o.tau));
    const auto mine = shard_indices(o, train_count, rank, shard, 0).to(device);
    Cnn copy(o.conv1, o.conv2);
    copy->to(device);
    {
      torch::NoGradGuard no_grad;
      auto src = model->parameters();
      auto dst = copy->parameters();
      for (std::size_t i = 0; i < src.size(); ++i) dst[i].copy_(src[i]);
    }
    const double lr = scheduled_lr(o, total_steps, total_steps);
    torch::optim::SGD sgd(copy->parameters(), torch::optim::SGDOptions(lr).momentum(o.momentum));
    trainer.set_learning_rate(lr);
    step_timing dasgd_side, torch_side;
    const auto round_of = [&](Cnn& net, int round, step_timing& t, auto&& update) {
      for (int k = 0; k < o.tau; ++k) {
        const std::int64_t s = static_cast<std::int64_t>(round) * o.tau + k;
        const auto idx = mine.narrow(0, (s % steps) * o.batch, o.batch);
        const auto x = data.train_x.index_select(0, idx);
        const auto y = data.train_y.index_select(0, idx);
        wait_for_device(device);
        const auto t0 = clock_type::now();
        forward_backward(net, x, y);
        wait_for_device(device);
        const auto t1 = clock_type::now();
        update(k);
        wait_for_device(device);
        const auto t2 = clock_type::now();
        t.step_ms += ms_between(t0, t2);
        t.update_ms += ms_between(t1, t2);
      }
    };
    for (int r = 0; r < rounds; ++r) {
      round_of(model, r, dasgd_side, [&](int) { dasgd::torch_step(trainer, params); });
      round_of(copy, r, torch_side, [&](int k) {
        sgd.step();
        if (k == o.tau - 1) average_parameters_by_hand(host, copy);
      });
    }
    dasgd::torch_synchronize(trainer, params);
    // Mean over the ranks and the steps.
    const double n = static_cast<double>(rounds) * o.tau * workers;
    const auto t = sum_over_ranks(host, {dasgd_side.step_ms, dasgd_side.update_ms,
                                               torch_side.step_ms, torch_side.update_ms});
    out.dasgd_cmp = step_timing{t[0] / n, t[1] / n};
    out.torch_cmp = step_timing{t[2] / n, t[3] / n};
    out.compare_steps = rounds * o.tau;
  }
  return out;
}

void print_setup(const options& o, const dataset& d, const char* mode, std::int64_t steps) {
  std::printf("Fashion-MNIST CNN conv%d-conv%d-fc10 (libtorch %s, %s) | %s x%d | %s", o.conv1, o.conv2,
              TORCH_VERSION, o.device.c_str(), mode, o.workers, o.algorithm.c_str());
  if (!o.sync()) std::printf(" tau=%d delay=%d p=%g", o.tau, o.delay, o.p);
  std::printf(" | sgd lr=%g (%s) momentum=%g | batch %d/worker, %d epochs of %lld steps | %lld train, "
              "%lld test images | %d torch thread(s)/worker\n",
              o.lr, o.schedule.c_str(), o.momentum, o.batch, o.epochs, static_cast<long long>(steps),
              static_cast<long long>(d.train_x.size(0)), static_cast<long long>(d.test_x.size(0)),
              o.threads_per_worker);
  std::fflush(stdout);
}

int finish(const options& o, const summary& s) {
  std::printf("final test accuracy %.4f (test loss %.4f) after %d epochs, %lld steps per worker, %.1f s\n",
              s.test_accuracy, s.test_loss, o.epochs, static_cast<long long>(s.steps), s.wall_seconds);
  std::printf("training step (rank 0): %.2f ms, of which dasgd step %.3f ms\n", s.training.step_ms,
              s.training.update_ms);
  if (s.dasgd_cmp && s.torch_cmp) {
    std::printf("compare over %d steps (mean of the workers, same batches, rounds alternating): dasgd "
                "%.2f ms/step (update+average %.3f ms) | torch::optim::SGD + hand-written average every "
                "%d steps %.2f ms/step (update+average %.3f ms) | step-time ratio torch/dasgd %.3f, "
                "update ratio %.2f\n",
                s.compare_steps, s.dasgd_cmp->step_ms, s.dasgd_cmp->update_ms, o.tau, s.torch_cmp->step_ms,
                s.torch_cmp->update_ms, s.torch_cmp->step_ms / s.dasgd_cmp->step_ms,
                s.torch_cmp->update_ms / s.dasgd_cmp->update_ms);
  }
  std::fflush(stdout);
  if (s.test_accuracy < o.min_accuracy) {
    std::fprintf(stderr, "test accuracy %.4f is below --min-accuracy %.4f\n", s.test_accuracy, o.min_accuracy);
    return 3;
  }
  return 0;
}

/// Exit code of --device cuda without a visible device (ctest: skipped), as
/// the GPU example's.
constexpr int no_device_exit_code = 77;

/// Throws config_error unless this build can use o.device; returns the
/// number of CUDA devices (0 for --device cpu; -1, after saying so, when
/// --device cuda finds none: exit with no_device_exit_code).
int require_device(const options& o, bool print) {
  if (o.device == "cpu") return 0;
#if DASGD_TORCH_EXAMPLE_CUDA
  if (!torch::cuda::is_available()) {
    if (print) std::fprintf(stderr, "SKIP: no CUDA device (--device cuda: none is visible to this process)\n");
    return -1;
  }
  return static_cast<int>(torch::cuda::device_count());
#else
  (void)print;
  DASGD_THROW(dasgd::config_error,
              "--device cuda: this build of the example has the CPU path only: it needs a CUDA "
              "build of libtorch (Debian's libtorch-dev is a CPU build) and dasgd's CUDA backend "
              "(see docs/libtorch.md); use --device cpu");
#endif
}

Cnn make_model(const options& o, int rank) {
  torch::manual_seed(o.seed + static_cast<std::uint64_t>(rank));  // different per rank: broadcast equalises
  return Cnn(o.conv1, o.conv2);
}

/// The CPU trainer: SGD with momentum, mix merge, fixed delay.
template <class Comm>
auto make_cpu_trainer(const dasgd::torch_parameters<float>& params, Comm comm, const options& o) {
  return dasgd::delayed_averager(params.list(), std::move(comm),
                                 dasgd::policy::fixed_delay{.tau = o.tau, .delay = o.delay},
                                 dasgd::optim::sgd{.lr = o.lr, .momentum = o.momentum},
                                 dasgd::merge::mix{.update_proportion = o.p});
}

#if DASGD_TORCH_EXAMPLE_CUDA
cuda_trainer_settings cuda_settings(const options& o) {
  return {.tau = o.tau, .delay = o.delay, .p = o.p, .lr = o.lr, .momentum = o.momentum};
}

/// Runs `work(stream)` with `device` current and a stream of torch's pool
/// as the thread's current stream (every torch op and the trainer use it).
template <class Work>
auto on_worker_stream(c10::DeviceIndex device, Work&& work) {
  const c10::cuda::CUDAGuard device_guard(device);
  const c10::cuda::CUDAStream stream = c10::cuda::getStreamFromPool(/*isHighPriority=*/false, device);
  const c10::cuda::CUDAStreamGuard stream_guard(stream);
  return work(stream.stream());
}
#endif

int run_threads(int argc, char** argv) {
  int code = 0;
  const auto parsed = parse(argc, argv, 0, true, code);
  if (!parsed) return code;
  const options& o = *parsed;
  const int devices = require_device(o, true);
  if (devices < 0) return no_device_exit_code;
  auto raw = fashion_mnist::load_fashion_mnist(o.data_dir);
  const auto data = to_tensors(raw, o);
  const std::int64_t steps = steps_per_epoch(o, data.train_x.size(0), o.workers);
  print_setup(o, data, o.device == "cpu" ? "threads" : "threads on CUDA (device group)", steps);

  fashion_mnist::progress_display progress(o.epochs, steps, isatty(STDOUT_FILENO) != 0);
  fashion_mnist::csv_log csv = o.csv_path.empty() ? fashion_mnist::csv_log{} : fashion_mnist::csv_log{o.csv_path};
  std::vector<Cnn> models;  // built here: torch::manual_seed is process-wide
  for (int r = 0; r < o.workers; ++r) models.push_back(make_model(o, r));
  summary result;
  const auto sinks_of = [&](int r) { return r == 0 ? report_sinks{&progress, &csv} : report_sinks{}; };
  // Host ranks for the epoch sums and the torch::optim side of --compare-torch-optim.
  dasgd::comm::inproc_group host_group(o.workers);

  if (devices == 0) {
    dasgd::comm::inproc_group group(o.workers);
    dasgd::comm::run_workers(group, [&](dasgd::comm::inproc_communicator comm) {
      const int r = comm.rank();
      auto host = host_group.communicator(r);
      Cnn& model = models[static_cast<std::size_t>(r)];
      dasgd::torch_parameters<float> params(*model);  // dasgd replaces optimizer.step()
      auto trainer = make_cpu_trainer(params, std::move(comm), o);
      const auto s = train_worker(trainer, params, model, host, o, data, sinks_of(r));
      if (r == 0) result = s;
    });
    return finish(o, result);
  }
#if DASGD_TORCH_EXAMPLE_CUDA
  // One copy of the data per device in use, uploaded before the workers start.
  std::vector<dataset> device_data;
  for (int d = 0; d < std::min(devices, o.workers); ++d)
    device_data.push_back(on_device(data, torch::Device(torch::kCUDA, static_cast<c10::DeviceIndex>(d))));
  torch::cuda::synchronize();
  cuda_thread_group group(o.workers);
  // run_workers aborts the host group when a worker throws; the device
  // group is aborted here, so no peer waits in a device collective either.
  dasgd::comm::run_workers(host_group, [&](dasgd::comm::inproc_communicator host) {
    const int r = host.rank();
    try {
      const auto device = static_cast<c10::DeviceIndex>(r % devices);
      on_worker_stream(device, [&](cudaStream_t stream) {
        Cnn& model = models[static_cast<std::size_t>(r)];
        model->to(torch::Device(torch::kCUDA, device));  // before torch_parameters
        dasgd::torch_parameters<float, dasgd::device_space> params(*model);
        const auto trainer =
            group.trainer(r, params.list(), stream, dasgd::torch_cuda::caching_allocator(), cuda_settings(o));
        const auto s = train_worker(*trainer, params, model, host, o,
                                    device_data[static_cast<std::size_t>(device)], sinks_of(r));
        if (r == 0) result = s;
        return 0;
      });
    } catch (const std::exception& e) {
      group.abort(e.what());
      throw;
    }
  });
  return finish(o, result);
#else
  return 1;  // require_device refused
#endif
}

#if DASGD_HAS_MPI
int run_mpi(int argc, char** argv) {
  dasgd::comm::mpi_environment env(argc, argv);
  // Host collectives: the epoch sums and the torch::optim side of --compare-torch-optim.
  dasgd::comm::mpi_communicator host;
  const int rank = host.rank();
  try {
    int code = 0;
    const auto parsed = parse(argc, argv, host.size(), rank == 0, code);
    if (!parsed) return code;
    const options& o = *parsed;
    const int devices = require_device(o, rank == 0);
    if (devices < 0) return no_device_exit_code;  // every rank alike
    auto raw = fashion_mnist::load_fashion_mnist(o.data_dir);
    const auto cpu_data = to_tensors(raw, o);
    const std::int64_t steps = steps_per_epoch(o, cpu_data.train_x.size(0), o.workers);
    std::optional<fashion_mnist::progress_display> progress;
    fashion_mnist::csv_log csv;
    if (rank == 0) {
      print_setup(o, cpu_data, devices == 0 ? "MPI ranks" : "MPI ranks on CUDA (cuda_mpi_communicator)", steps);
      progress.emplace(o.epochs, steps, false);  // under mpiexec: plain lines
      if (!o.csv_path.empty()) csv = fashion_mnist::csv_log{o.csv_path};
    }
    const report_sinks sinks = rank == 0 ? report_sinks{&*progress, &csv} : report_sinks{};
    Cnn model = make_model(o, rank);
    if (devices == 0) {
      dasgd::torch_parameters<float> params(*model);
      auto trainer = make_cpu_trainer(params, dasgd::comm::mpi_communicator(), o);
      const auto s = train_worker(trainer, params, model, host, o, cpu_data, sinks);
      return rank == 0 ? finish(o, s) : 0;
    }
#if DASGD_TORCH_EXAMPLE_CUDA
    const auto device = static_cast<c10::DeviceIndex>((local_rank() % devices));
    const summary s = on_worker_stream(device, [&](cudaStream_t stream) {
      const torch::Device where(torch::kCUDA, device);
      const auto data = on_device(cpu_data, where);
      model->to(where);  // before torch_parameters
      dasgd::torch_parameters<float, dasgd::device_space> params(*model);
      const auto trainer =
          make_mpi_cuda_trainer(params.list(), stream, dasgd::torch_cuda::caching_allocator(), cuda_settings(o));
      return train_worker(*trainer, params, model, host, o, data, sinks);
    });
    return rank == 0 ? finish(o, s) : 0;
#else
    return 1;  // require_device refused
#endif
  } catch (const std::exception& e) {
    std::fprintf(stderr, "error on rank %d: %s\n", rank, e.what());
    std::fflush(stderr);
    MPI_Abort(MPI_COMM_WORLD, 1);
    return 1;
  }
}
#endif

}  // namespace torch_fashion_mnist

int main(int argc, char** argv) {
  try {
#if DASGD_HAS_MPI
    if (dasgd::comm::launched_by_mpiexec()) return torch_fashion_mnist::run_mpi(argc, argv);
#endif
    return torch_fashion_mnist::run_threads(argc, argv);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 1;
  }
}
