// How much of an MPI average a worker's compute hides, per progress mode.
//
// Per repetition and mode, all ranks start together (barrier) and time:
//  C  blocking: start an average and wait at once;
//  P  compute only: S steps of fixed length, no collective in flight;
//  T  overlapped: start an average, the same S steps (calling test() after
//     every step, as delayed_averager does), then wait.
// exposed = T - P is what communication cost this worker (waiting, test()
// calls, CPU taken by the progress thread), and hidden = 1 - exposed / C.
// Each figure is the slowest rank's; rank 0 prints medians over the
// repetitions, one line per mode.
//
// Run it on an emulated slow link; docs/mpi.md has the exact command
// (scripts/netns_run.sh --rate 1gbit -- mpiexec -n 4 ... --mca btl tcp,self
// ... dasgd.mpi_progress_probe --mb 4).
#include <dasgd/comm/mpi.hpp>

#include <CLI/CLI.hpp>

#include "common/mpi_stats.hpp"  // bench/common: the overlap benchmark's helpers
#include "common/stats.hpp"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <span>
#include <string>
#include <thread>
#include <vector>

namespace {

using clock_type = dasgd::bench::bench_clock;
using dasgd::bench::all_max;
using dasgd::bench::median;
using dasgd::bench::seconds_since;
using dasgd::comm::mpi_communicator;
using dasgd::comm::mpi_progress;

/// One simulated compute step: keeps the core busy (spin) or leaves it idle
/// (sleep, like a host thread waiting for a GPU).
void compute_for(std::chrono::microseconds d, bool spin, std::vector<double>& scratch) {
  const auto end = clock_type::now() + d;
  if (!spin) {
    std::this_thread::sleep_until(end);
    return;
  }
  while (clock_type::now() < end)
    for (auto& x : scratch) x = x * 0.999 + 0.001;  // real work, not just a clock read
}

struct sample {
  double comm = 0, compute = 0, total = 0;
};

sample measure(mpi_communicator& comm, std::span<const float> send, std::span<float> recv, int steps,
               std::chrono::microseconds step, bool spin, std::vector<double>& scratch) {
  sample s;
  MPI_Barrier(MPI_COMM_WORLD);
  auto t0 = clock_type::now();
  comm.iallreduce_average(send, recv).wait();
  s.comm = all_max(seconds_since(t0));

  MPI_Barrier(MPI_COMM_WORLD);
  t0 = clock_type::now();
  for (int k = 0; k < steps; ++k) compute_for(step, spin, scratch);
  const double compute = seconds_since(t0);

  MPI_Barrier(MPI_COMM_WORLD);
  t0 = clock_type::now();
  auto req = comm.iallreduce_average(send, recv);
  for (int k = 0; k < steps; ++k) {
    compute_for(step, spin, scratch);
    req.test();
  }
  req.wait();
  const double total = seconds_since(t0);
  // The worst rank's exposure, and the slowest rank's times.
  const double exposed = all_max(total - compute);
  s.compute = all_max(compute);
  s.total = s.compute + exposed;
  return s;
}

}  // namespace

int main(int argc, char** argv) {
  dasgd::comm::mpi_environment env(argc, argv);
  int rank = 0, size = 0;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  MPI_Comm_size(MPI_COMM_WORLD, &size);

  CLI::App app{"Hidden fraction of an MPI average under compute, per progress mode"};
  double megabytes = 4.0;
  int steps = 32;
  double factor = 1.5;
  double step_ms = 0.0;
  int reps = 5;
  std::string compute = "spin";
  std::vector<std::string> modes{"thread", "test"};
  app.add_option("--mb", megabytes, "buffer size per rank in MB (float elements)")->check(CLI::PositiveNumber);
  app.add_option("--steps", steps, "compute steps per average (test() is called after each)")
      ->check(CLI::PositiveNumber);
  app.add_option("--compute-factor", factor, "total compute time per average, in blocking comm times")
      ->check(CLI::PositiveNumber);
  app.add_option("--step-ms", step_ms, "length of one compute step in ms (0: factor * comm time / steps)")
      ->check(CLI::NonNegativeNumber);
  app.add_option("--reps", reps, "repetitions (medians are reported)")->check(CLI::PositiveNumber);
  app.add_option("--compute", compute, "spin (busy core) or sleep (idle core)")
      ->check(CLI::IsMember({"spin", "sleep"}));
  app.add_option("--modes", modes, "progress modes to measure")->check(CLI::IsMember({"thread", "test"}));
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return rank == 0 ? app.exit(e) : 1;
  }

  const std::size_t count = static_cast<std::size_t>(megabytes * 1024 * 1024 / sizeof(float));
  std::vector<float> send(count), recv(count);
  for (std::size_t i = 0; i < count; ++i) send[i] = static_cast<float>((i + static_cast<std::size_t>(rank)) % 101);
  std::vector<double> scratch(512, 1.0);
  const bool spin = compute == "spin";

  std::vector<mpi_communicator> comms;
  for (const auto& m : modes)
    comms.emplace_back(MPI_COMM_WORLD,
                       dasgd::comm::mpi_options{m == "thread" ? mpi_progress::thread : mpi_progress::test,
                                                std::chrono::seconds(120)});
  // Warm-up (connections, staging buffers), and the step count if automatic.
  std::vector<double> warm;
  for (auto& c : comms) {
    for (int i = 0; i < 2; ++i) {
      MPI_Barrier(MPI_COMM_WORLD);
      const auto t0 = clock_type::now();
      c.iallreduce_average(std::span<const float>(send), std::span<float>(recv)).wait();
      warm.push_back(all_max(seconds_since(t0)));
    }
  }
  if (step_ms == 0.0) step_ms = factor * median(warm) * 1000 / steps;
  const auto step = std::chrono::microseconds(static_cast<long long>(step_ms * 1000));
  if (rank == 0)
    std::printf("# ranks=%d buffer=%.1f MB (%zu floats) steps=%d step=%.1f ms compute=%s reps=%d\n", size,
                megabytes, count, steps, step_ms, compute.c_str(), reps);

  std::vector<std::vector<sample>> samples(comms.size());
  for (int r = 0; r < reps; ++r)  // modes interleaved, so drift hits both alike
    for (std::size_t m = 0; m < comms.size(); ++m)
      samples[m].push_back(measure(comms[m], send, recv, steps, step, spin, scratch));

  for (std::size_t m = 0; m < comms.size(); ++m) {
    std::vector<double> c, p, t, exposed, hidden;
    for (const auto& s : samples[m]) {
      c.push_back(s.comm);
      p.push_back(s.compute);
      t.push_back(s.total);
      exposed.push_back(s.total - s.compute);
      hidden.push_back(1.0 - (s.total - s.compute) / s.comm);
    }
    if (rank == 0)
      std::printf("mode=%-6s comm_ms=%8.1f compute_ms=%8.1f total_ms=%8.1f exposed_ms=%8.1f hidden=%5.1f%% "
                  "(hidden min..max %.1f%%..%.1f%%)\n",
                  modes[m].c_str(), 1e3 * median(c), 1e3 * median(p), 1e3 * median(t), 1e3 * median(exposed),
                  100 * median(hidden), 100 * *std::min_element(hidden.begin(), hidden.end()),
                  100 * *std::max_element(hidden.begin(), hidden.end()));
  }
  comms.clear();  // before MPI_Finalize
  return 0;
}
