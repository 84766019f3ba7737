// Overlap benchmark: how much of the averaging cost each algorithm hides
// behind compute, with real MPI ranks over TCP (run it inside
// scripts/netns_run.sh for an emulated slow link; bench/overlap/run_overlap.sh
// does everything, docs/overlap.md has the definitions and results).
//
// The step's compute emulates an accelerator: the host thread is idle for
// the step's compute time (a sleep), after a real gradient pass over the
// float buffers. The update (dasgd's fused pass on real buffers) and the
// average (OpenMPI over TCP, progress thread) are real.
//
// Per repetition, per compute time and per algorithm, every rank trains the
// same quadratic problem from w = 0 for warmup + steps steps; the timed part
// is the last `steps` steps (whole rounds). Rank 0 appends one CSV row per
// (repetition, compute time, algorithm) with the slowest rank's figures.
#include <dasgd/comm/mpi.hpp>
#include <dasgd/dasgd.hpp>

#include <sys/resource.h>

#include <CLI/CLI.hpp>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <exception>
#include <fstream>
#include <span>
#include <string>
#include <thread>
#include <vector>

#include "algorithm.hpp"
#include "common/mpi_stats.hpp"
#include "common/stats.hpp"
#include "quadratic_workload.hpp"

namespace {

using clock_type = dasgd::bench::bench_clock;
using dasgd::bench::algorithm_kind;
using dasgd::bench::all_max;
using dasgd::bench::all_sum;
using dasgd::bench::median;
using dasgd::bench::seconds_since;
using dasgd::bench::algorithm_spec;
using dasgd::bench::quadratic_workload;
using dasgd::comm::mpi_communicator;

struct options {
  std::size_t params = 1u << 20;  // 4 MiB of float parameters
  std::vector<std::string> algorithms{"compute", "sync", "local", "dasgd-d1", "dasgd-d2", "dasgd-d3", "adaptive"};
  std::vector<double> compute_ratios{0.3, 0.6, 1.2};
  std::vector<double> compute_ms;  // absolute compute times; override the ratios
  std::int64_t tau = 4;
  std::int64_t warmup_steps = 8;
  std::int64_t steps = 16;
  int reps = 2;
  int allreduce_samples = 3;
  std::vector<double> allreduce_sizes_kib;  // extra blocking-allreduce payloads (fit of the model)
  int allreduce_size_samples = 5;
  int adaptive_window = 2;
  double lr = 0.3;
  double momentum = 0.5;
  std::string label = "unshaped";
  std::string csv;
  std::string allreduce_csv;
};

/// CPU seconds used by this process (all threads: worker, dasgd's progress
/// thread, OpenMPI's own threads).
double process_cpu_seconds() {
  rusage u{};
  getrusage(RUSAGE_SELF, &u);
  return static_cast<double>(u.ru_utime.tv_sec + u.ru_stime.tv_sec) +
         1e-6 * static_cast<double>(u.ru_utime.tv_usec + u.ru_stime.tv_usec);
}

/// One blocking average of `count` floats, timed from a barrier; the slowest
/// rank's time.
double blocking_allreduce_seconds(mpi_communicator& comm, std::span<const float> send, std::span<float> recv) {
  MPI_Barrier(MPI_COMM_WORLD);
  const auto t0 = clock_type::now();
  comm.iallreduce_average(send, recv).wait();
  return all_max(seconds_since(t0));
}

/// The average must be right before its time means anything (the launcher
/// may select a non-default collective algorithm).
void check_average(mpi_communicator& comm, std::size_t count) {
  std::vector<float> send(count), recv(count);
  const int n = comm.size();
  for (std::size_t i = 0; i < count; ++i) send[i] = static_cast<float>(comm.rank() + 1 + static_cast<int>(i % 7));
  comm.iallreduce_average(std::span<const float>(send), std::span<float>(recv)).wait();
  for (std::size_t i = 0; i < count; ++i) {
    const double expect = (n + 1) / 2.0 + static_cast<double>(i % 7);
    DASGD_REQUIRE(std::abs(recv[i] - expect) <= 1e-5 * expect, dasgd::comm_error,
                  "the MPI average is wrong: element ", i, " is ", recv[i], ", expected ", expect,
                  " (check the --mca collective settings)");
  }
}

struct run_figures {
  double step_s = 0;       // slowest rank's mean step time (timed steps)
  double step_mean_s = 0;  // mean over ranks of their mean step time
  double update_s = 0;     // slowest rank's mean time in step() without waiting
  double wait_s = 0;       // slowest rank's mean time blocked on averages
  double cpu_frac = 0;     // highest per-rank CPU use / wall time (timed steps)
  double final_loss = 0;   // global objective after a final synchronize()
  std::int64_t delay_min = -1, delay_max = -1, delay_last = -1;  // delays of timed launches
  long late_steps = 0;     // steps whose compute phase ended > 2 ms late (rank descheduled)
};

/// Trains from w = 0 with one algorithm and times the last `steps` steps.
template <class Policy>
run_figures run_trainer(const options& o, const quadratic_workload& work, Policy policy,
                        std::chrono::microseconds compute) {
  std::vector<float> w(work.size(), 0.0f), grad(work.size());
  dasgd::delayed_averager trainer(dasgd::make_tensor_list(w), mpi_communicator(), std::move(policy),
                                  dasgd::optim::sgd{.lr = o.lr, .momentum = o.momentum}, dasgd::merge::additive{});
  run_figures f;
  double update = 0, wait = 0, cpu0 = 0;
  clock_type::time_point t_timed;
  MPI_Barrier(MPI_COMM_WORLD);
  const std::int64_t total = o.warmup_steps + o.steps;
  for (std::int64_t k = 0; k < total; ++k) {
    if (k == o.warmup_steps) {
      t_timed = clock_type::now();
      cpu0 = process_cpu_seconds();
    }
    const auto t0 = clock_type::now();
    work.gradient(w, grad, k);
    std::this_thread::sleep_until(t0 + compute);  // the accelerator computes; the host waits
    const auto t1 = clock_type::now();
    // A late wake-up (or a gradient pass longer than the compute time) is
    // CPU contention on a loaded machine, not communication: counted as noise.
    if (t1 - (t0 + compute) > std::chrono::milliseconds(2)) ++f.late_steps;
    const dasgd::step_report rep = trainer.step(grad);
    if (k >= o.warmup_steps) {
      update += seconds_since(t1) - rep.wait_seconds;
      wait += rep.wait_seconds;
      if (rep.launched) {
        const std::int64_t d = trainer.average_in_flight() ? trainer.merge_due_at() - rep.step : 0;
        f.delay_min = f.delay_min < 0 ? d : std::min(f.delay_min, d);
        f.delay_max = std::max(f.delay_max, d);
        f.delay_last = d;
      }
    }
  }
  const double wall = seconds_since(t_timed);
  const double cpu = process_cpu_seconds() - cpu0;
  const double steps = static_cast<double>(o.steps);
  const int size = trainer.communicator().size();
  f.step_s = all_max(wall / steps);
  f.step_mean_s = all_sum(wall / steps) / size;
  f.update_s = all_max(update / steps);
  f.wait_s = all_max(wait / steps);
  f.cpu_frac = all_max(cpu / wall);
  trainer.synchronize();  // every rank now holds the same weights
  f.final_loss = all_sum(work.loss(w)) / size;
  f.late_steps = std::lround(all_sum(static_cast<double>(f.late_steps)));
  return f;
}

run_figures run_algorithm(const options& o, const algorithm_spec& a, const quadratic_workload& work,
                          std::chrono::microseconds compute) {
  switch (a.kind) {
    case algorithm_kind::compute_only:  // a round longer than the run: never averages
      return run_trainer(o, work, dasgd::policy::fixed_delay(o.warmup_steps + o.steps + 1, 0), compute);
    case algorithm_kind::fixed_delay:
      return run_trainer(o, work, dasgd::policy::fixed_delay(a.tau, a.delay), compute);
    case algorithm_kind::adaptive_delay:
      return run_trainer(o, work,
                         dasgd::policy::adaptive_delay<>({.tau = a.tau,
                                                          .initial_delay = a.delay,
                                                          .min_delay = 1,
                                                          .window = o.adaptive_window}),
                         compute);
  }
  DASGD_THROW(dasgd::config_error, "unhandled algorithm kind for '", a.name, "'");
}

/// Appends to a CSV file (rank 0 only), writing the header into an empty file.
class csv_appender {
 public:
  csv_appender(const std::string& path, const char* header) {
    if (path.empty()) return;
    const bool fresh = [&] {
      std::ifstream in(path);
      return !in || in.peek() == std::ifstream::traits_type::eof();
    }();
    out_.open(path, std::ios::app);
    DASGD_REQUIRE(out_.good(), dasgd::config_error, "cannot open '", path, "' for appending");
    if (fresh) out_ << header << '\n';
  }
  template <class... Args>
  void row(const char* fmt, Args... args) {
    if (!out_.is_open()) return;
    char line[1024];
    std::snprintf(line, sizeof line, fmt, args...);
    out_ << line << '\n';
    out_.flush();
  }

 private:
  std::ofstream out_;
};

int run(int argc, char** argv) {
  int rank = 0, size = 0;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  MPI_Comm_size(MPI_COMM_WORLD, &size);

  options o;
  CLI::App app{"DaSGD overlap benchmark: step time and hidden communication per algorithm over MPI"};
  app.add_option("--params", o.params, "parameter count (float elements)")->check(CLI::PositiveNumber);
  app.add_option("--algorithms", o.algorithms, "compute, sync, local, dasgd-d<N>, adaptive")
      ->delimiter(',');
  app.add_option("--compute-ratios", o.compute_ratios,
                 "compute time per step as multiples of the measured blocking allreduce time")
      ->delimiter(',')
      ->check(CLI::PositiveNumber);
  app.add_option("--compute-ms", o.compute_ms, "compute time per step in ms (overrides --compute-ratios)")
      ->delimiter(',')
      ->check(CLI::PositiveNumber);
  app.add_option("--tau", o.tau, "steps per round of local, dasgd-d<N> and adaptive")->check(CLI::PositiveNumber);
  app.add_option("--warmup-steps", o.warmup_steps, "untimed steps first (a multiple of tau)")
      ->check(CLI::NonNegativeNumber);
  app.add_option("--steps", o.steps, "timed steps (a multiple of tau)")->check(CLI::PositiveNumber);
  app.add_option("--reps", o.reps, "repetitions (all configurations interleaved in each)")
      ->check(CLI::PositiveNumber);
  app.add_option("--allreduce-samples", o.allreduce_samples,
                 "blocking allreduce timings per repetition (the median is the row's allreduce_ms)")
      ->check(CLI::PositiveNumber);
  app.add_option("--allreduce-sizes-kib", o.allreduce_sizes_kib,
                 "extra payloads (KiB) timed with blocking allreduces only (--allreduce-csv)")
      ->delimiter(',')
      ->check(CLI::PositiveNumber);
  app.add_option("--allreduce-size-samples", o.allreduce_size_samples, "timings per extra payload")
      ->check(CLI::PositiveNumber);
  app.add_option("--adaptive-window", o.adaptive_window, "averages the adaptive policy remembers")
      ->check(CLI::PositiveNumber);
  app.add_option("--lr", o.lr, "learning rate (SGD with momentum)")->check(CLI::PositiveNumber);
  app.add_option("--momentum", o.momentum, "momentum")->check(CLI::Range(0.0, 0.999));
  app.add_option("--label", o.label, "free text copied into every row (e.g. the link rate)");
  app.add_option("--csv", o.csv, "append step rows to this CSV file (rank 0)");
  app.add_option("--allreduce-csv", o.allreduce_csv, "append blocking allreduce timings to this CSV file");
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return rank == 0 ? app.exit(e) : (e.get_exit_code() == 0 ? 0 : 2);
  }
  DASGD_REQUIRE(o.label.find_first_of(",\"\n") == std::string::npos, dasgd::config_error, "--label '",
                o.label, "' must not contain commas, quotes or newlines");
  DASGD_REQUIRE(o.warmup_steps % o.tau == 0 && o.steps % o.tau == 0, dasgd::config_error,
                "--warmup-steps ", o.warmup_steps, " and --steps ", o.steps, " must be multiples of tau = ", o.tau,
                " so that every algorithm times whole rounds");
  std::vector<algorithm_spec> algorithms;
  for (const auto& name : o.algorithms) algorithms.push_back(dasgd::bench::parse_algorithm(name, o.tau));

  mpi_communicator timing_comm;  // blocking allreduces of the same payload, same progress mode
  check_average(timing_comm, 1000);
  check_average(timing_comm, std::min<std::size_t>(o.params, 1u << 18));

  // Blocking allreduce of other payloads, for the scaling model's fit.
  csv_appender ar_csv(rank == 0 ? o.allreduce_csv : std::string(), "label,ranks,payload_bytes,sample,allreduce_ms");
  for (double kib : o.allreduce_sizes_kib) {
    const auto count = static_cast<std::size_t>(kib * 1024 / sizeof(float));
    std::vector<float> send(count, 1.0f), recv(count);
    blocking_allreduce_seconds(timing_comm, send, recv);  // warm-up
    std::vector<double> t;
    for (int s = 0; s < o.allreduce_size_samples; ++s) {
      t.push_back(blocking_allreduce_seconds(timing_comm, send, recv));
      ar_csv.row("%s,%d,%zu,%d,%.4f", o.label.c_str(), size, count * sizeof(float), s, 1e3 * t.back());
    }
    if (rank == 0)
      std::printf("# allreduce %zu bytes: median %.2f ms over %d samples\n", count * sizeof(float),
                  1e3 * median(t), o.allreduce_size_samples);
  }

  quadratic_workload work(o.params, rank);
  std::vector<float> send(o.params, 1.0f), recv(o.params);
  std::vector<double> warm;
  for (int s = 0; s < 2 + o.allreduce_samples; ++s) warm.push_back(blocking_allreduce_seconds(timing_comm, send, recv));
  const double allreduce_ref = median(std::vector<double>(warm.begin() + 2, warm.end()));
  std::vector<double> compute_ms = o.compute_ms;
  std::vector<double> ratios;
  if (compute_ms.empty())
    for (double r : o.compute_ratios) {
      compute_ms.push_back(r * allreduce_ref * 1e3);
      ratios.push_back(r);
    }
  else
    for (double c : compute_ms) ratios.push_back(c / (allreduce_ref * 1e3));
  if (rank == 0) {
    std::printf("# label=%s ranks=%d params=%zu (%.2f MiB) tau=%lld warmup=%lld steps=%lld reps=%d "
                "blocking allreduce %.2f ms\n",
                o.label.c_str(), size, o.params, o.params * 4.0 / (1 << 20), static_cast<long long>(o.tau),
                static_cast<long long>(o.warmup_steps), static_cast<long long>(o.steps), o.reps,
                1e3 * allreduce_ref);
    std::fflush(stdout);
  }

  csv_appender csv(rank == 0 ? o.csv : std::string(),
                   "label,ranks,params,payload_bytes,rep,compute_ratio,compute_ms,algorithm,tau,delay,"
                   "averages_per_step,allreduce_ms,step_ms,step_ms_mean,update_ms,wait_ms,cpu_frac_max,"
                   "final_loss,delay_min,delay_max,late_steps");
  // One untimed run first: the first trainer of a process pays one-off costs
  // (page faults, allocator growth) that would land on the first row.
  run_algorithm(o, dasgd::bench::parse_algorithm("compute", o.tau), work,
                std::chrono::microseconds(std::llround(compute_ms.front() * 1e3)));
  for (int rep = 0; rep < o.reps; ++rep) {
    std::vector<double> t;
    for (int s = 0; s < o.allreduce_samples; ++s) t.push_back(blocking_allreduce_seconds(timing_comm, send, recv));
    const double allreduce_ms = 1e3 * median(t);
    for (std::size_t c = 0; c < compute_ms.size(); ++c) {
      const auto compute = std::chrono::microseconds(std::llround(compute_ms[c] * 1e3));
      double compute_only_ms = 0;
      for (const auto& a : algorithms) {
        const run_figures f = run_algorithm(o, a, work, compute);
        const bool adaptive = a.kind == algorithm_kind::adaptive_delay;
        const std::int64_t tau = a.kind == algorithm_kind::compute_only ? 0 : a.tau;
        const std::int64_t delay = adaptive ? f.delay_last : a.kind == algorithm_kind::compute_only ? 0 : a.delay;
        csv.row("%s,%d,%zu,%zu,%d,%.4f,%.3f,%s,%lld,%lld,%.6f,%.3f,%.3f,%.3f,%.3f,%.3f,%.4f,%.8g,%lld,%lld,%ld",
                o.label.c_str(), size, o.params, o.params * sizeof(float), rep, ratios[c], compute_ms[c],
                a.name.c_str(), static_cast<long long>(tau), static_cast<long long>(delay), a.averages_per_step(),
                allreduce_ms, 1e3 * f.step_s, 1e3 * f.step_mean_s, 1e3 * f.update_s, 1e3 * f.wait_s, f.cpu_frac,
                f.final_loss, static_cast<long long>(f.delay_min), static_cast<long long>(f.delay_max), f.late_steps);
        if (a.kind == algorithm_kind::compute_only) compute_only_ms = 1e3 * f.step_s;
        if (rank == 0) {
          std::printf("rep %d compute %7.2f ms (%.2fx allreduce %.1f ms) %-9s step %8.2f ms", rep, compute_ms[c],
                      ratios[c], allreduce_ms, a.name.c_str(), 1e3 * f.step_s);
          if (compute_only_ms > 0) std::printf(" (%+6.1f%% vs compute)", 100.0 * (1e3 * f.step_s / compute_only_ms - 1));
          std::printf(" wait %7.2f ms cpu %4.0f%% loss %.5f", 1e3 * f.wait_s, 100 * f.cpu_frac, f.final_loss);
          if (adaptive)
            std::printf(" delay %lld (%lld..%lld)", static_cast<long long>(f.delay_last),
                        static_cast<long long>(f.delay_min), static_cast<long long>(f.delay_max));
          std::printf("\n");
          std::fflush(stdout);
        }
      }
    }
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  dasgd::comm::mpi_environment env(argc, argv);
  try {
    return run(argc, argv);
  } catch (const std::exception& e) {
    // A failure on one rank must not leave the others blocked in a collective.
    std::fprintf(stderr, "dasgd_bench_overlap: %s\n", e.what());
    std::fflush(stderr);
    MPI_Abort(MPI_COMM_WORLD, 1);
    return 1;
  }
}
