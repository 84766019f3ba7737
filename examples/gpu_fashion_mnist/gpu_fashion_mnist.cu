// Fashion-MNIST on the GPU: the 784-256-128-10 MLP of examples/fashion_mnist
// (cuBLAS + small kernels, gpu_mlp.cuh) trained by several workers with the
// CUDA backend. Workers are either threads of this process sharing the GPU
// (comm::device_group, averaged on the device) or MPI ranks
// (comm::cuda_mpi_communicator: device pointers straight to a CUDA-aware
// MPI, host staging otherwise; several ranks may share one GPU). Data, schedule and evaluation follow the host example:
// every epoch all workers draw the same permutation and worker r takes the
// r-th contiguous shard; the learning rate follows a cosine schedule; at
// each epoch's end trainer.synchronize() makes the replicas equal and each
// worker evaluates a slice of the test set.
//
//   dasgd_gpu_fashion_mnist --workers 4 --algo dasgd --tau 4 --delay 1
//   mpiexec -n 4 dasgd_gpu_fashion_mnist --comm mpi [--mpi-device-pointers never]
//   mpiexec -n 4 dasgd_gpu_fashion_mnist --comm nccl   # NCCL, bootstrapped over MPI
//   dasgd_gpu_fashion_mnist --check-gradients   # one batch: GPU vs the Eigen model
//   dasgd_gpu_fashion_mnist --comm staged --link-gbps 4
//       threads through comm::host_staged_communicator over the in-process
//       host communicator with an emulated link (bandwidth, latency): the
//       host-staged pipeline with a slow network and no MPI, for measuring
//       how much of the average the delay hides (bench/gpu_overlap)
// Every run prints the mean step time: the training loop's wall time per
// step (the device's work included), the mean over the workers.
#include <CLI/CLI.hpp>

#include <dasgd/comm/inproc.hpp>
#include <dasgd/core/delayed_averager.hpp>
#include <dasgd/kernels/cuda/cuda_backend.cuh>
#include <dasgd/kernels/cuda/device_group_runtime.cuh>
#include <dasgd/kernels/cuda/parameter_arena.hpp>
#include <dasgd/merge/additive.hpp>
#include <dasgd/merge/mix.hpp>
#include <dasgd/optim/sgd.hpp>
#include <dasgd/policy/fixed_delay.hpp>

#include <dasgd/comm/host_staged.hpp>
#if defined(DASGD_HAS_MPI)
#include <dasgd/comm/mpi.hpp>
#include <dasgd/kernels/cuda/cuda_mpi_runtime.cuh>
#if defined(DASGD_HAS_NCCL)
#include <dasgd/comm/nccl.hpp>
#endif
#endif

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdlib>
#include <cstdio>
#include <exception>
#include <filesystem>
#include <numeric>
#include <optional>
#include <random>
#include <string>
#include <vector>

#include "gpu_mlp.cuh"
#include "idx_dataset.hpp"
#include "mlp.hpp"
#include "run_support.hpp"

namespace {

using namespace gpu_fashion_mnist;

struct options {
  int workers = 4;
  std::string comm = "threads";
  std::string algo = "dasgd";
  int tau = 4;
  int delay = 1;
  std::string merge = "mix";
  double p = 0.25;
  int epochs = 10;
  int batch = 64;
  double lr = 0.05;
  double momentum = 0.9;
  std::string data_dir = fashion_mnist::default_data_dir;
  long train_samples = 0;
  long test_samples = 0;
  std::uint64_t seed = 1;
  bool check_gradients = false;
  std::string mpi_device_pointers = "auto";  ///< --comm mpi: auto, never, always
  double link_gbps = 0.0;        ///< --comm staged: emulated link bandwidth (0: none)
  double link_latency_us = 0.0;  ///< --comm staged: emulated latency per collective
};

/// What a worker's training reports.
struct train_result {
  double accuracy = 0.0;
  double step_ms = 0.0;  ///< training loop wall time per step, mean over the workers
};

/// The data every worker reads: uploaded once per process.
struct device_data {
  dasgd::device_buffer<float> train_images, test_images;
  dasgd::device_buffer<std::uint8_t> train_labels, test_labels;
  long train_count = 0, test_count = 0;
};

template <class T>
dasgd::device_buffer<T> upload(const T* p, std::size_t n) {
  dasgd::device_buffer<T> b(n);
  DASGD_CUDA_CHECK(cudaMemcpy(b.data(), p, n * sizeof(T), cudaMemcpyHostToDevice));
  return b;
}

device_data upload(const fashion_mnist::fashion_mnist_data& d, const options& o) {
  device_data out;
  out.train_count = o.train_samples > 0 ? std::min<long>(o.train_samples, long(d.train.size())) : long(d.train.size());
  out.test_count = o.test_samples > 0 ? std::min<long>(o.test_samples, long(d.test.size())) : long(d.test.size());
  out.train_images = upload(d.train.images.data(), std::size_t(in) * out.train_count);
  out.train_labels = upload(d.train.labels.data(), std::size_t(out.train_count));
  out.test_images = upload(d.test.images.data(), std::size_t(in) * out.test_count);
  out.test_labels = upload(d.test.labels.data(), std::size_t(out.test_count));
  return out;
}

/// Initial weights: the host example's (same seed, same layout).
std::vector<std::vector<float>> initial_weights(std::uint64_t seed) {
  fashion_mnist::mlp_tensors t(in, h1, h2, out);
  fashion_mnist::initialize(t, seed);
  auto flat = [](const auto& m) { return std::vector<float>(m.data(), m.data() + m.size()); };
  return {flat(t.W1), flat(t.b1), flat(t.W2), flat(t.b2), flat(t.W3), flat(t.b3)};
}

layer_pointers pointers_of(dasgd::device_parameter_arena<float>& a) {
  layer_pointers l{};
  for (std::size_t i = 0; i < 6; ++i) l.p[i] = a.view(i).ptr;
  return l;
}

struct epoch_totals {
  double train_loss_sum = 0, train_batches = 0, test_loss_sum = 0, test_correct = 0, test_count = 0, waited = 0;
};

/// One worker: trains with `comm` (a device communicator) and reports each
/// epoch's totals through `sum` (a host-side sum over workers).
template <class Comm, class Sum>
train_result train(Comm comm, int rank, int workers, const device_data& data, const options& o, cudaStream_t s, Sum sum) {
  dasgd::device_parameter_arena<float> w(extents(), s), g(extents(), s);
  const auto init = initial_weights(o.seed);
  for (std::size_t i = 0; i < init.size(); ++i)
    DASGD_CUDA_CHECK(cudaMemcpyAsync(w.view(i).ptr, init[i].data(), init[i].size() * sizeof(float),
                                     cudaMemcpyHostToDevice, s));
  DASGD_CUDA_CHECK(cudaStreamSynchronize(s));
  const bool sync = o.algo == "sync";
  const dasgd::policy::fixed_delay pol = sync ? dasgd::policy::synchronous() : dasgd::policy::fixed_delay{o.tau, o.delay};
  dasgd::optim::sgd opt{.lr = o.lr, .momentum = o.momentum};
  auto run = [&](auto merge_rule) {
    auto wt = w.tensors();
    dasgd::delayed_averager trainer(wt, std::move(comm), pol, opt, merge_rule, dasgd::cuda_backend(s));
    trainer.broadcast_parameters(0);
    gpu_mlp model(s, o.batch);
    const long shard = data.train_count / workers;
    const long steps = shard / o.batch;
    DASGD_REQUIRE(steps > 0, dasgd::config_error, "each of the ", workers, " workers gets ", shard,
                  " training images, fewer than one batch of ", o.batch);
    const long total = steps * o.epochs;
    std::vector<std::int32_t> order(static_cast<std::size_t>(data.train_count));
    dasgd::device_buffer<std::int32_t> my_order(static_cast<std::size_t>(steps * o.batch), s);
    dasgd::device_buffer<std::int32_t> test_index(static_cast<std::size_t>(data.test_count), s);
    {
      std::vector<std::int32_t> ti(static_cast<std::size_t>(data.test_count));
      std::iota(ti.begin(), ti.end(), 0);
      DASGD_CUDA_CHECK(cudaMemcpy(test_index.data(), ti.data(), ti.size() * sizeof(std::int32_t), cudaMemcpyHostToDevice));
    }
    const auto wp = pointers_of(w);
    const auto gp = pointers_of(g);
    auto gt = g.tensors();
    const dasgd::tensor_list<const float, dasgd::device_space> grads = gt;
    const long test_first = data.test_count * rank / workers, test_last = data.test_count * (rank + 1) / workers;
    const auto start = std::chrono::steady_clock::now();
    double final_accuracy = 0;
    double waited = 0;
    double step_ms = 0;
    double loop_seconds = 0;  // the step loops, each ended by a stream synchronize
    for (int epoch = 1; epoch <= o.epochs; ++epoch) {
      std::iota(order.begin(), order.end(), 0);
      std::mt19937_64 rng(o.seed * 1000003u + static_cast<std::uint64_t>(epoch));
      std::shuffle(order.begin(), order.end(), rng);
      // Pageable source: cudaMemcpy returns once the copy is done, so the
      // host may reshuffle next epoch.
      DASGD_CUDA_CHECK(cudaMemcpy(my_order.data(), order.data() + shard * rank,
                                  my_order.size() * sizeof(std::int32_t), cudaMemcpyHostToDevice));
      DASGD_CUDA_CHECK(cudaStreamSynchronize(s));
      const auto loop_start = std::chrono::steady_clock::now();
      for (long k = 0; k < steps; ++k) {
        model.load_batch(data.train_images.data(), data.train_labels.data(), my_order.data() + k * o.batch, o.batch);
        model.loss_and_gradients(wp, gp);
        trainer.set_learning_rate(fashion_mnist::cosine_lr(o.lr, trainer.steps_taken(), total));
        waited += trainer.step(grads).wait_seconds;
      }
      DASGD_CUDA_CHECK(cudaStreamSynchronize(s));
      loop_seconds += std::chrono::duration<double>(std::chrono::steady_clock::now() - loop_start).count();
      const device_tally train_tally = model.take_tally();
      trainer.synchronize();
      for (long first = test_first; first < test_last; first += o.batch) {
        const int n = static_cast<int>(std::min<long>(o.batch, test_last - first));
        model.load_batch(data.test_images.data(), data.test_labels.data(), test_index.data() + first, n);
        model.evaluate(wp);
      }
      const device_tally test_tally = model.take_tally();
      const auto t = sum({train_tally.loss_sum, double(steps * o.batch), test_tally.loss_sum,
                          double(test_tally.correct), double(test_last - test_first), waited, loop_seconds});
      final_accuracy = std::round(t[3]) / std::round(t[4]);
      step_ms = 1e3 * t[6] / workers / static_cast<double>(steps * epoch);
      const double elapsed = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
      if (rank == 0)
        std::printf("epoch %d/%d  step %ld  train_loss %.4f  test_loss %.4f  test_acc %.4f  waited %.2f s  "
                    "elapsed %.1f s  step %.4f ms\n",
                    epoch, o.epochs, static_cast<long>(trainer.steps_taken()), t[0] / t[1], t[2] / t[4],
                    final_accuracy, t[5] / workers, elapsed, step_ms);
      std::fflush(stdout);
    }
    return train_result{final_accuracy, step_ms};
  };
  if (o.merge == "additive") return run(dasgd::merge::additive{});
  return run(dasgd::merge::mix{o.p});
}

/// --check-gradients: one batch through the GPU model and the Eigen model.
int check_gradients(const fashion_mnist::fashion_mnist_data& host, const device_data& data, const options& o) {
  cudaStream_t s = nullptr;
  DASGD_CUDA_CHECK(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
  dasgd::device_parameter_arena<float> w(extents(), s), g(extents(), s);
  const auto init = initial_weights(o.seed);
  for (std::size_t i = 0; i < init.size(); ++i)
    DASGD_CUDA_CHECK(cudaMemcpy(w.view(i).ptr, init[i].data(), init[i].size() * sizeof(float), cudaMemcpyHostToDevice));
  gpu_mlp model(s, o.batch);
  std::vector<std::int32_t> idx(static_cast<std::size_t>(o.batch));
  std::iota(idx.begin(), idx.end(), 0);
  auto d_idx = upload(idx.data(), idx.size());
  model.load_batch(data.train_images.data(), data.train_labels.data(), d_idx.data(), o.batch);
  model.loss_and_gradients(pointers_of(w), pointers_of(g));
  const device_tally tally = model.take_tally();

  fashion_mnist::mlp_tensors p(in, h1, h2, out), hg(in, h1, h2, out);
  fashion_mnist::initialize(p, o.seed);
  fashion_mnist::mlp_workspace ws;
  const float loss = fashion_mnist::loss_and_gradients(
      p, host.train.images.leftCols(o.batch),
      std::span<const std::uint8_t>(host.train.labels.data(), static_cast<std::size_t>(o.batch)), hg, ws);
  const float* ref[6] = {hg.W1.data(), hg.b1.data(), hg.W2.data(), hg.b2.data(), hg.W3.data(), hg.b3.data()};
  double worst = 0;
  const auto ext = extents();
  for (std::size_t t = 0; t < 6; ++t) {
    std::vector<float> got(ext[t]);
    DASGD_CUDA_CHECK(cudaMemcpy(got.data(), g.view(t).ptr, got.size() * sizeof(float), cudaMemcpyDeviceToHost));
    // Relative to the tensor's largest gradient: summation orders differ.
    double scale = 1e-12, diff = 0;
    for (std::size_t i = 0; i < got.size(); ++i) {
      scale = std::max(scale, std::abs(double(ref[t][i])));
      diff = std::max(diff, std::abs(double(got[i]) - ref[t][i]));
    }
    worst = std::max(worst, diff / scale);
  }
  const double gpu_loss = tally.loss_sum / o.batch;
  std::printf("gradient check: loss gpu %.6f host %.6f; worst relative gradient difference %.3g\n", gpu_loss,
              double(loss), worst);
  DASGD_CUDA_CHECK(cudaStreamDestroy(s));
  const bool ok = std::abs(gpu_loss - loss) < 1e-4 * (1 + std::abs(loss)) && worst < 1e-3;
  std::printf("gradient check %s\n", ok ? "passed" : "FAILED");
  return ok ? 0 : 1;
}

}  // namespace

int main(int argc, char** argv) {
  options o;
  CLI::App app{"Fashion-MNIST MLP on the GPU with dasgd (CUDA backend)"};
  app.add_option("--workers", o.workers, "workers (threads sharing the GPU; with --comm mpi: the MPI ranks)");
  app.add_option("--comm", o.comm,
                 "threads (device group), mpi (device tensors over MPI), nccl (NCCL set up over MPI), or staged "
                 "(threads, host-staged over the in-process host communicator with --link-gbps / "
                 "--link-latency-us)")
      ->check(CLI::IsMember({"threads", "mpi", "nccl", "staged"}));
  app.add_option("--mpi-device-pointers", o.mpi_device_pointers,
                 "--comm mpi: auto (device pointers when the MPI reports CUDA support), never (host staging), "
                 "always (an MPI that cannot be asked)")
      ->check(CLI::IsMember({"auto", "never", "always"}));
  app.add_option("--algo", o.algo, "dasgd or sync")->check(CLI::IsMember({"dasgd", "sync"}));
  app.add_option("--tau", o.tau, "steps per round");
  app.add_option("--delay", o.delay, "delay in steps");
  app.add_option("--merge", o.merge, "mix or additive")->check(CLI::IsMember({"mix", "additive"}));
  app.add_option("--p", o.p, "mix: weight of the local model");
  app.add_option("--epochs", o.epochs, "epochs");
  app.add_option("--batch", o.batch, "batch per worker");
  app.add_option("--lr", o.lr, "peak learning rate (cosine schedule)");
  app.add_option("--momentum", o.momentum, "SGD momentum");
  app.add_option("--data-dir", o.data_dir, "folder of the idx files");
  app.add_option("--train-samples", o.train_samples, "use the first N training images (0: all)");
  app.add_option("--test-samples", o.test_samples, "use the first N test images (0: all)");
  app.add_option("--seed", o.seed, "seed (initial weights and shuffling)");
  app.add_option("--link-gbps", o.link_gbps, "--comm staged: emulated link, Gbit/s per rank's buffer (0: none)")
      ->check(CLI::NonNegativeNumber);
  app.add_option("--link-latency-us", o.link_latency_us, "--comm staged: emulated latency per collective, microseconds")
      ->check(CLI::NonNegativeNumber);
  app.add_flag("--check-gradients", o.check_gradients, "compare one batch's gradients with the Eigen model and exit");
  CLI11_PARSE(app, argc, argv);
  try {
    int devices = 0;
    if (cudaGetDeviceCount(&devices) != cudaSuccess || devices == 0) {
      std::printf("SKIP: no CUDA device\n");
      return 77;
    }
    if (!std::filesystem::exists(o.data_dir)) {
      std::printf("SKIP: dataset-fashion-mnist is not installed (%s)\n", o.data_dir.c_str());
      return 77;
    }
    const auto host = fashion_mnist::load_fashion_mnist(o.data_dir);
    if (o.comm == "mpi" || o.comm == "nccl") {
#if defined(DASGD_HAS_MPI)
      dasgd::comm::mpi_environment env(argc, argv);
      dasgd::comm::mpi_communicator world;
      const int rank = world.rank(), n = world.size();
      DASGD_CUDA_CHECK(cudaSetDevice(rank % devices));
      const device_data data = upload(host, o);
      if (o.check_gradients) return rank == 0 ? check_gradients(host, data, o) : 0;
      cudaStream_t s = nullptr;
      DASGD_CUDA_CHECK(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
      const bool nccl = o.comm == "nccl";
      std::optional<dasgd::comm::cuda_mpi_communicator> over_mpi;
      if (!nccl) {
        dasgd::comm::cuda_mpi_options mo;
        mo.device_pointers = o.mpi_device_pointers == "never"    ? dasgd::comm::mpi_device_pointers::never
                             : o.mpi_device_pointers == "always" ? dasgd::comm::mpi_device_pointers::always
                                                                 : dasgd::comm::mpi_device_pointers::automatic;
        over_mpi.emplace(dasgd::comm::mpi_communicator(), s, mo);
      }
      const std::string how = nccl ? std::string("NCCL")
                                   : std::string("MPI, route ") + dasgd::comm::to_string(over_mpi->route());
      if (rank == 0)
        std::printf("Fashion-MNIST MLP on the GPU | %d MPI ranks, %s | %s tau=%d delay=%d merge=%s | "
                    "lr %.3g (cosine) momentum %.2g | batch %d/worker, %d epochs\n",
                    n, how.c_str(), o.algo.c_str(), o.tau, o.delay, o.merge.c_str(), o.lr,
                    o.momentum, o.batch, o.epochs);
      const auto sum = [&](const std::vector<double>& v) { return fashion_mnist::sum_over_ranks(world, v); };
      train_result res;
      if (nccl) {
#if defined(DASGD_HAS_NCCL)
        // NCCL refuses two ranks on one GPU ("Duplicate GPU detected")
        // unless they look like separate hosts: with more ranks than
        // devices each rank gets its own NCCL_HOSTID (unless one is set),
        // read at NCCL's first initialization; the socket transport then
        // joins them.
        if (n > devices && std::getenv("NCCL_HOSTID") == nullptr)
          setenv("NCCL_HOSTID", ("dasgd-gpu-example-rank-" + std::to_string(rank)).c_str(), 1);
        res = train(dasgd::comm::nccl_communicator::from_mpi(world, s), rank, n, data, o, s, sum);
#else
        DASGD_THROW(dasgd::config_error, "--comm nccl: this build has no NCCL");
#endif
      } else {
        res = train(std::move(*over_mpi), rank, n, data, o, s, sum);
      }
      if (rank == 0)
        std::printf("final test accuracy %.4f after %d epochs; mean step time %.4f ms\n", res.accuracy, o.epochs,
                    res.step_ms);
      DASGD_CUDA_CHECK(cudaStreamDestroy(s));
      return 0;
#else
      std::fprintf(stderr, "this build has no MPI (--comm mpi)\n");
      return 2;
#endif
    }
    const device_data data = upload(host, o);
    if (o.check_gradients) return check_gradients(host, data, o);
    const bool staged = o.comm == "staged";
    std::printf("Fashion-MNIST MLP on the GPU | %d threads, %s | %s tau=%d delay=%d merge=%s | "
                "lr %.3g (cosine) momentum %.2g | batch %d/worker, %d epochs\n",
                o.workers, staged ? "host-staged over the in-process communicator" : "device group", o.algo.c_str(),
                o.tau, o.delay, o.merge.c_str(), o.lr, o.momentum, o.batch, o.epochs);
    if (staged)
      std::printf("emulated link: %g Gbit/s, %g us per collective\n", o.link_gbps, o.link_latency_us);
    dasgd::comm::device_group group(o.workers);
    // --comm staged: each collective of B bytes per rank takes at least
    // latency + B / bandwidth once every rank has joined.
    dasgd::comm::inproc_options link;
    link.simulated_bandwidth_bytes_per_second = o.link_gbps * 1e9 / 8;
    link.simulated_latency = std::chrono::microseconds(static_cast<long>(o.link_latency_us));
    dasgd::comm::inproc_group staged_group(o.workers, link);
    dasgd::comm::inproc_group sums(o.workers);
    std::vector<train_result> results(static_cast<std::size_t>(o.workers));
    // run_workers aborts `sums` when a worker throws and rethrows the root
    // cause; the device collectives' groups are aborted here, so no peer
    // waits in one of them either.
    dasgd::comm::run_workers(sums, [&](dasgd::comm::inproc_communicator host_comm) {
      const int r = host_comm.rank();
      try {
        DASGD_CUDA_CHECK(cudaSetDevice(r % devices));
        cudaStream_t s = nullptr;
        DASGD_CUDA_CHECK(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
        const auto sum = [&](const std::vector<double>& v) { return fashion_mnist::sum_over_ranks(host_comm, v); };
        results[static_cast<std::size_t>(r)] =
            staged ? train(dasgd::comm::host_staged_communicator<dasgd::comm::inproc_communicator>(
                               staged_group.communicator(r), s),
                           r, o.workers, data, o, s, sum)
                   : train(group.communicator(r, s), r, o.workers, data, o, s, sum);
        DASGD_CUDA_CHECK(cudaStreamDestroy(s));
      } catch (const std::exception& e) {
        group.abort(e.what());
        staged_group.abort(e.what());
        throw;
      }
    });
    std::printf("final test accuracy %.4f after %d epochs; mean step time %.4f ms\n", results[0].accuracy, o.epochs,
                results[0].step_ms);
    return 0;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 1;
  }
}
