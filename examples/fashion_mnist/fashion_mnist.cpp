// Fashion-MNIST trainer: a 784-256-128-10 MLP written with Eigen, trained
// with synchronous SGD, Local SGD or DaSGD through dasgd.
//
//   dasgd_fashion_mnist                      4 worker threads, DaSGD tau=4 d=1
//   dasgd_fashion_mnist -a sync --csv s.csv  synchronous SGD, CSV log
//   mpiexec -n 4 dasgd_fashion_mnist         one worker per MPI rank
//
// Only rank 0 prints and writes the CSV file.
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <exception>
#include <optional>

#include <dasgd/comm/hierarchical_inproc.hpp>
#include <dasgd/dasgd.hpp>
#if DASGD_HAS_MPI
#include <dasgd/comm/hierarchical_mpi.hpp>
#include <dasgd/comm/mpi.hpp>
#endif

#include "idx_dataset.hpp"
#include "train_worker.hpp"
#include "training_options.hpp"

namespace {

using namespace fashion_mnist;

dataset_view select_samples(const fashion_mnist_data& data, const training_options& o) {
  const auto limit = [](std::size_t wanted, std::size_t have) {
    return static_cast<Eigen::Index>(wanted == 0 ? have : std::min(wanted, have));
  };
  return {&data.train, limit(o.train_samples, data.train.size()), &data.test,
          limit(o.test_samples, data.test.size())};
}

void print_setup(const training_options& o, const dataset_view& data, const char* mode) {
  std::printf("Fashion-MNIST MLP %d-%d-%d-%d | %s x%d | %s", input_size, hidden1_size,
              hidden2_size, output_size, mode, o.workers, name_of(o.algo));
  if (o.algo != algorithm::sync) {
    std::printf(" tau=%d delay=%d merge=%s", o.tau, o.delay, name_of(o.merge));
    if (o.merge == merge_kind::mix) std::printf(" p=%g", o.mix_p);
    if (o.sync_epochs > 0) std::printf(" after %g synchronous epochs", o.sync_epochs);
  }
  if (o.groups > 0) std::printf(" | %d groups", o.groups);
  if (o.node_groups) std::printf(" | groups by node");
  if (o.hierarchical())
    std::printf(", across groups every %d rounds, delay %d (%s)", o.outer_every, o.outer_delay,
                o.outer_world ? "world allreduce" : "chained");
  std::printf(" | %s lr=%g (%s)", name_of(o.optimizer), o.effective_lr(), name_of(o.schedule));
  if (o.optimizer == optimizer_kind::sgd)
    std::printf(" momentum=%g%s", o.momentum, o.nesterov ? " nesterov" : "");
  if (o.weight_decay > 0) std::printf(" wd=%g", o.weight_decay);
  if (o.average_state) std::printf(" state=averaged");
  std::printf(" | batch %d/worker, %d epochs of %lld steps | %lld train, %lld test images\n",
              o.batch, o.epochs, static_cast<long long>(steps_per_epoch(o, data.train_count, o.workers)),
              static_cast<long long>(data.train_count), static_cast<long long>(data.test_count));
  std::fflush(stdout);
}

int finish(const training_options& o, const run_summary& s) {
  std::printf("final test accuracy %.4f (test loss %.4f) after %d epochs, %lld steps per worker, "
              "%.1f s\n",
              s.test_accuracy, s.test_loss, o.epochs, static_cast<long long>(s.steps),
              s.wall_seconds);
  if (s.test_accuracy < o.min_accuracy) {
    std::fprintf(stderr, "test accuracy %.4f is below --min-accuracy %.4f\n", s.test_accuracy,
                 o.min_accuracy);
    return 3;
  }
  return 0;
}

dasgd::comm::hierarchical_options outer_of(const training_options& o) {
  return {o.outer_world ? dasgd::comm::outer_average::world : dasgd::comm::outer_average::chained};
}

int run_threads(int argc, char** argv) {
  const auto parsed = parse_training_options(argc, argv, /*ranks=*/0, /*print=*/true);
  if (!parsed.options) return parsed.exit_code;
  const training_options& o = *parsed.options;
  const auto data = load_fashion_mnist(o.data_dir);
  const auto view = select_samples(data, o);
  print_setup(o, view, "threads");

  progress_display progress(o.epochs, steps_per_epoch(o, view.train_count, o.workers),
                            wants_progress_bar(o.progress, isatty(STDOUT_FILENO) != 0, false));
  csv_log csv = o.csv_path.empty() ? csv_log{} : csv_log{o.csv_path};
  run_summary summary;
  const auto worker = [&](auto comm) {
    const bool reporter = comm.rank() == 0;
    const auto s = train_worker(std::move(comm), o, view,
                                reporter ? report_sinks{&progress, &csv} : report_sinks{});
    if (reporter) summary = s;
  };
  if (o.groups > 0) {  // --groups G: G groups of consecutive worker threads
    auto hierarchy = dasgd::comm::inproc_hierarchy::blocks(o.workers, o.groups, {},
                                                           outer_of(o));
    dasgd::comm::run_workers(hierarchy, worker);
  } else {
    dasgd::comm::inproc_group group(o.workers);
    dasgd::comm::run_workers(group, worker);
  }
  return finish(o, summary);
}

#if DASGD_HAS_MPI
int run_mpi_rank(dasgd::comm::mpi_communicator comm, int argc, char** argv) {
  const bool reporter = comm.rank() == 0;
  const auto parsed = parse_training_options(argc, argv, comm.size(), reporter);
  if (!parsed.options) return parsed.exit_code;
  const training_options& o = *parsed.options;
  const auto data = load_fashion_mnist(o.data_dir);
  const auto view = select_samples(data, o);
  if (reporter) print_setup(o, view, "MPI ranks");

  std::optional<progress_display> progress;
  csv_log csv;
  if (reporter) {
    progress.emplace(o.epochs, steps_per_epoch(o, view.train_count, o.workers),
                     wants_progress_bar(o.progress, isatty(STDOUT_FILENO) != 0, true));
    if (!o.csv_path.empty()) csv = csv_log{o.csv_path};
  }
  const report_sinks sinks = reporter ? report_sinks{&*progress, &csv} : report_sinks{};
  run_summary summary;
  if (o.hierarchical()) {  // collective over the world, like comm itself
    const int size = comm.size();
    const dasgd::comm::mpi_options mo = comm.options();
    summary = train_worker(
        o.node_groups
            ? dasgd::comm::mpi_hierarchy_by_node(MPI_COMM_WORLD, mo, outer_of(o))
            : dasgd::comm::mpi_hierarchy_by_colour(comm.rank() / (size / o.groups),
                                                   MPI_COMM_WORLD, mo, outer_of(o)),
        o, view, sinks);
  } else {
    summary = train_worker(std::move(comm), o, view, sinks);
  }
  return reporter ? finish(o, summary) : 0;
}

int run_mpi(int argc, char** argv) {
  dasgd::comm::mpi_environment env(argc, argv);
  dasgd::comm::mpi_communicator comm;
  const int rank = comm.rank();
  try {
    return run_mpi_rank(std::move(comm), argc, argv);
  } catch (const std::exception& e) {
    // The other ranks would wait for this one until their timeout: stop them now.
    std::fprintf(stderr, "error on rank %d: %s\n", rank, e.what());
    std::fflush(stderr);
    MPI_Abort(MPI_COMM_WORLD, 1);
    return 1;
  }
}
#else
/// Started by an MPI launcher although this build has no MPI support: every
/// process would train alone and write the same CSV file.
bool started_by_mpi_launcher() {
  for (const char* var : {"OMPI_COMM_WORLD_SIZE", "PMIX_RANK", "PMI_SIZE", "PMI_RANK"})
    if (std::getenv(var) != nullptr) return true;
  return false;
}
#endif

}  // namespace

int main(int argc, char** argv) {
  try {
#if DASGD_HAS_MPI
    if (dasgd::comm::launched_by_mpiexec()) return run_mpi(argc, argv);
#else
    if (started_by_mpi_launcher()) {
      std::fprintf(stderr,
                   "error: started under mpiexec, but this build has no MPI support "
                   "(configure with MPI installed, or -DDASGD_ENABLE_MPI=ON)\n");
      return 1;
    }
#endif
    return run_threads(argc, argv);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 1;
  }
}
