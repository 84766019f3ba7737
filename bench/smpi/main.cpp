// Scale-up benchmark: the library's MPI path on a simulated cluster (SimGrid
// SMPI, built with smpicxx, -DDASGD_SMPI) or on real MPI ranks (built with
// the normal MPI compiler, for the correctness and validation runs).
//
// What is real and what is modelled (docs/scaling.md, "Scale-up under SMPI"):
//  - real: dasgd's delayed_averager and mpi_communicator (test-mode engine,
//    signature checks, staging copies, fused update), and every MPI message
//    of the averages, which SMPI times on the simulated platform;
//  - modelled: the accelerator's compute of a step (smpi_execute of
//    --compute-ms, no host work); the progress thread (SMPI has no
//    MPI_THREAD_MULTIPLE), replaced by the same advance loop run between
//    compute chunks (mpi_communicator::progress()); the non-blocking collectives,
//    replaced by ring / Rabenseifner / Bruck / binomial schedules
//    (smpi_collectives.hpp). Host work between MPI calls costs no simulated
//    time (smpi/simulate-computation:no).
//  - `hier` (--groups G): policy::hierarchical over mpi_hierarchy_by_colour,
//    G groups of consecutive ranks (the two-datacenter platform's halves),
//    the chained average across groups driven by the caller
//    (chain_progress::caller: SMPI cannot host the helper thread).
//
// Timing mode: the gradients are zeros (the accelerator's output; contents
// do not matter) and with --shared every large buffer, the library's
// included, is SMPI_SHARED_MALLOC memory. --check mode trains a small
// quadratic problem with real gradients and sums and prints the final loss,
// to be compared with a real mpiexec run of the same program.
#ifdef DASGD_SMPI
// smpicxx force-includes smpi_helpers.h, whose function-like macros (exit,
// sleep, getpid, clock_gettime, ...) break C++ headers (CLI11's App::exit).
// This program calls SMPI's clock and compute functions explicitly.
#undef exit
#undef sleep
#undef usleep
#undef nanosleep
#undef gettimeofday
#undef clock_gettime
#undef getopt
#undef getopt_long
#undef getopt_long_only
#undef getpid
#include <simgrid/host.h>
#include <smpi/smpi.h>

#include "smpi_collectives.hpp"
// The engine's collectives and tests go to the shim (see its header).
#define MPI_Iallreduce ::dasgd::bench::smpi::iallreduce
#define MPI_Iallgather ::dasgd::bench::smpi::iallgather
#define MPI_Ibcast ::dasgd::bench::smpi::ibcast
#define MPI_Test ::dasgd::bench::smpi::test
#include <dasgd/comm/hierarchical_mpi.hpp>
#include <dasgd/comm/mpi.hpp>
#undef MPI_Iallreduce
#undef MPI_Iallgather
#undef MPI_Ibcast
#undef MPI_Test
#else
#include <dasgd/comm/hierarchical_mpi.hpp>
#include <dasgd/comm/mpi.hpp>
#endif
#include <dasgd/dasgd.hpp>
#include <dasgd/policy/hierarchical.hpp>

#include <CLI/CLI.hpp>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <fstream>
#include <new>
#include <span>
#include <string>
#include <thread>
#include <unordered_set>
#include <vector>

#include "common/mpi_stats.hpp"
#include "overlap/algorithm.hpp"
#include "overlap/quadratic_workload.hpp"

#ifdef DASGD_SMPI
// --shared: allocations of at least shared_threshold bytes (parameters,
// gradients, optimizer state, the engine's staging buffers, the ring's
// receive chunks) come from SMPI_SHARED_MALLOC, so n simulated ranks do not
// need n copies of a 102 MB model. Per rank (globals are privatized).
namespace {
std::size_t shared_threshold = 0;  // 0: off
std::unordered_set<void*>* shared_blocks = nullptr;
std::size_t shared_allocations = 0;
}  // namespace

void* operator new(std::size_t n) {
  if (shared_threshold != 0 && n >= shared_threshold) {
    void* p = SMPI_SHARED_MALLOC(n);
    if (p == nullptr) throw std::bad_alloc();
    shared_blocks->insert(p);
    ++shared_allocations;
    return p;
  }
  if (void* p = std::malloc(n == 0 ? 1 : n)) return p;
  throw std::bad_alloc();
}
void operator delete(void* p) noexcept {
  if (p != nullptr && shared_blocks != nullptr && shared_blocks->erase(p) != 0) {
    smpi_shared_free(p);
    return;
  }
  std::free(p);
}
void operator delete(void* p, std::size_t) noexcept { operator delete(p); }
void* operator new[](std::size_t n) { return operator new(n); }
void operator delete[](void* p) noexcept { operator delete(p); }
void operator delete[](void* p, std::size_t) noexcept { operator delete(p); }
// The host backend's arenas (weights' optimizer state, snapshot) are
// over-aligned. Shared blocks are mmap'ed, hence page-aligned.
void* operator new(std::size_t n, std::align_val_t a) {
  const auto align = static_cast<std::size_t>(a);
  if (shared_threshold != 0 && n >= shared_threshold && align <= 4096) return operator new(n);
  if (void* p = std::aligned_alloc(align, (std::max<std::size_t>(n, 1) + align - 1) / align * align)) return p;
  throw std::bad_alloc();
}
void operator delete(void* p, std::align_val_t) noexcept { operator delete(p); }
void operator delete(void* p, std::size_t, std::align_val_t) noexcept { operator delete(p); }
void* operator new[](std::size_t n, std::align_val_t a) { return operator new(n, a); }
void operator delete[](void* p, std::align_val_t) noexcept { operator delete(p); }
void operator delete[](void* p, std::size_t, std::align_val_t) noexcept { operator delete(p); }
#endif

namespace {

using dasgd::bench::algorithm_kind;
using dasgd::bench::algorithm_spec;
using dasgd::bench::all_max;
using dasgd::bench::all_sum;
using dasgd::comm::mpi_communicator;

struct options {
  std::size_t params = 235146;  // the Fashion-MNIST MLP 784-256-128-10 (0.94 MB)
  std::vector<std::string> algorithms{"compute", "sync", "local", "dasgd-d1", "dasgd-d2", "dasgd-d3", "adaptive"};
  double compute_ms = 10;
  std::int64_t tau = 4;
  std::int64_t warmup_steps = 8;
  std::int64_t steps = 8;
  int adaptive_window = 2;
  double progress_us = 200;  // SMPI: longest pause of the emulated progress loop; 0 = none (test mode only)
  bool shared = false;
  int wire_scale = 1;  // SMPI, --shared: the library holds params / wire_scale floats, messages carry all params
  bool check = false;
  std::string allreduce = "ring";
  bool native = false;
  std::string label = "smpi";
  std::string csv;
  int groups = 0;              // hier: groups of consecutive ranks (0: no hierarchy)
  std::int64_t hier_delay = 1;  // hier: delay of the group rounds
  std::int64_t outer_every = 16;
  std::int64_t outer_delay = 3;
};

/// Seconds on the clock the run is measured with: simulated under SMPI.
double now_s() { return MPI_Wtime(); }

struct mpi_wtime_clock {
  double now() const { return MPI_Wtime(); }
};

/// Wall-clock seconds of the host (what the simulation costs).
double host_s() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

#ifdef DASGD_SMPI
/// Simulated busy time on this rank's host. (smpi_execute(d) means d
/// seconds of the machine running the simulation, scaled by
/// smpi/host-speed; flops at the simulated host's own speed do not depend
/// on that setting.)
void execute_seconds(double seconds) { smpi_execute_flops(seconds * sg_host_get_speed(sg_host_self())); }
#endif

/// The accelerator computes for `seconds`; meanwhile the emulated progress
/// thread drives the trainer's averages exactly as the engine's own loop
/// does (10 us pauses, doubling to max while nothing changes). With real MPI
/// the host sleeps and the real progress thread runs.
template <class Comm>
void accelerator_compute(double seconds, [[maybe_unused]] Comm& comm, [[maybe_unused]] const options& o) {
#ifdef DASGD_SMPI
  const double end = now_s() + seconds;
  double pause = 10e-6;
  const double max_pause = o.progress_us * 1e-6;
  for (;;) {
    const double left = end - now_s();
    if (left <= 0) break;
    if (max_pause <= 0 || comm.collectives_in_flight() == 0) {
      execute_seconds(left);
      dasgd::bench::smpi::bump_compute_epoch();
      break;
    }
    execute_seconds(std::min(left, pause));
    dasgd::bench::smpi::bump_compute_epoch();
    pause = comm.progress() ? 10e-6 : std::min(2 * pause, max_pause);
  }
#else
  std::this_thread::sleep_for(std::chrono::duration<double>(seconds));
#endif
}

dasgd::comm::mpi_options comm_options() {
#ifdef DASGD_SMPI
  // Test mode: no thread. A long timeout because host time, not simulated
  // time, passes while thousands of simulated ranks take their turns.
  return {.progress = dasgd::comm::mpi_progress::test, .timeout = std::chrono::hours(24)};
#else
  return {};
#endif
}

mpi_communicator make_comm() { return mpi_communicator(MPI_COMM_WORLD, comm_options()); }

/// --groups G: G groups of consecutive ranks; the across-groups average is
/// the chain, driven by test()/wait() and the emulated progress loop.
dasgd::comm::mpi_hierarchical_communicator make_hierarchy(const options& o) {
  int rank = 0, size = 0;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  MPI_Comm_size(MPI_COMM_WORLD, &size);
  DASGD_REQUIRE(o.groups >= 1 && size % o.groups == 0, dasgd::config_error, "--groups ", o.groups,
                " must divide the ", size, " ranks");
  return dasgd::comm::mpi_hierarchy_by_colour(rank / (size / o.groups), MPI_COMM_WORLD, comm_options(),
                                              {.outer = dasgd::comm::outer_average::chained,
                                               .progress = dasgd::comm::chain_progress::caller});
}

struct figures {
  double step_s = 0;  // slowest rank's mean step time over the timed steps
  double wait_s = 0;  // slowest rank's mean blocked time per step (simulated clock)
  double loss = 0;    // --check: global objective after synchronize()
  std::int64_t delay_last = -1;
  double host_s = 0;  // host seconds the simulation of this run took
};

template <class Policy, class Comm = mpi_communicator>
figures run_trainer(const options& o, Policy policy, const dasgd::bench::quadratic_workload* work,
                    Comm comm = make_comm()) {
  const double host0 = host_s();
  std::vector<float> w(o.params, 0.0f), grad(o.params, 0.0f);
  dasgd::delayed_averager trainer(dasgd::make_tensor_list(w), std::move(comm), std::move(policy),
                                  dasgd::optim::sgd{.lr = 0.3, .momentum = 0.5}, dasgd::merge::additive{});
  figures f;
  double t_timed = 0, waited = 0;
  MPI_Barrier(MPI_COMM_WORLD);
  for (std::int64_t k = 0; k < o.warmup_steps + o.steps; ++k) {
    if (k == o.warmup_steps) t_timed = now_s();
    if (work != nullptr) work->gradient(w, grad, k);
    accelerator_compute(o.compute_ms * 1e-3, trainer.communicator(), o);
    const double t1 = now_s();
    const dasgd::step_report r = trainer.step(grad);
    if (k >= o.warmup_steps) {
      if (r.launched) f.delay_last = trainer.average_in_flight() ? trainer.merge_due_at() - r.step : 0;
      // step_report::wait_seconds is host time; under SMPI the simulated
      // time step() took is the blocked time (host work costs none).
      waited += now_s() - t1;
    }
  }
  const double steps = static_cast<double>(o.steps);
  f.step_s = all_max((now_s() - t_timed) / steps);
  f.wait_s = all_max(waited / steps);
  trainer.synchronize();
  const int size = trainer.communicator().size();
  if (work != nullptr) f.loss = all_sum(work->loss(w)) / size;
  f.host_s = host_s() - host0;
  return f;
}

/// The benchmark's algorithms: the overlap benchmark's, plus `hier`.
struct bench_algorithm {
  algorithm_spec spec;
  bool hierarchical = false;
};

bench_algorithm parse(const std::string& name, const options& o) {
  if (name != "hier") return {dasgd::bench::parse_algorithm(name, o.tau), false};
  DASGD_REQUIRE(o.groups >= 1, dasgd::config_error, "algorithm 'hier' needs --groups");
  return {{name, algorithm_kind::fixed_delay, o.tau, o.hier_delay}, true};
}

figures run_algorithm(const options& o, const bench_algorithm& b, const dasgd::bench::quadratic_workload* work) {
  const algorithm_spec& a = b.spec;
  if (b.hierarchical)
    return run_trainer(o,
                       dasgd::policy::hierarchical{.tau = o.tau, .delay = o.hier_delay, .outer_every = o.outer_every,
                                                   .outer_delay = o.outer_delay},
                       work, make_hierarchy(o));
  switch (a.kind) {
    case algorithm_kind::compute_only:
      return run_trainer(o, dasgd::policy::fixed_delay(o.warmup_steps + o.steps + 1, 0), work);
    case algorithm_kind::fixed_delay:
      return run_trainer(o, dasgd::policy::fixed_delay(a.tau, a.delay), work);
    case algorithm_kind::adaptive_delay:
      return run_trainer(o,
                         dasgd::policy::adaptive_delay<mpi_wtime_clock>(
                             {.tau = a.tau, .initial_delay = a.delay, .min_delay = 1, .window = o.adaptive_window}),
                         work);
  }
  DASGD_THROW(dasgd::config_error, "unhandled algorithm kind for '", a.name, "'");
}

/// Blocking average of the model's size, on the same engine and schedules
/// (the "T" of docs/scaling.md). The first one is a warm-up.
double blocking_allreduce_s(const options& o) {
  std::vector<float> send(o.params, 1.0f), recv(o.params);
  mpi_communicator comm = make_comm();
  double t = 0;
  for (int s = 0; s < 2; ++s) {
    MPI_Barrier(MPI_COMM_WORLD);
    const double t0 = now_s();
    comm.iallreduce_average(std::span<const float>(send), std::span<float>(recv)).wait();
    t = all_max(now_s() - t0);
  }
  return t;
}

/// The average must be right before any time means anything (unshared
/// buffers only: shared ones alias across ranks).
void check_average(std::size_t count) {
  mpi_communicator comm = make_comm();
  std::vector<float> send(count), recv(count);
  const int n = comm.size();
  for (std::size_t i = 0; i < count; ++i) send[i] = static_cast<float>(comm.rank() + 1 + static_cast<int>(i % 7));
  comm.iallreduce_average(std::span<const float>(send), std::span<float>(recv)).wait();
  for (std::size_t i = 0; i < count; ++i) {
    const double expect = (n + 1) / 2.0 + static_cast<double>(i % 7);
    DASGD_REQUIRE(std::abs(recv[i] - expect) <= 1e-5 * expect, dasgd::comm_error, "the average is wrong: element ",
                  i, " is ", recv[i], ", expected ", expect);
  }
}

int run(int argc, char** argv) {
  int rank = 0, size = 0;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  MPI_Comm_size(MPI_COMM_WORLD, &size);
  options o;
  CLI::App app{"DaSGD scale-up benchmark (SimGrid SMPI or real MPI)"};
  app.add_option("--params", o.params, "float parameters (235146: Fashion-MNIST MLP; 25557032: ResNet-50)")
      ->check(CLI::PositiveNumber);
  app.add_option("--algorithms", o.algorithms, "compute, sync, local, dasgd-d<N>, adaptive")->delimiter(',');
  app.add_option("--compute-ms", o.compute_ms, "accelerator compute per step")->check(CLI::PositiveNumber);
  app.add_option("--tau", o.tau, "steps per round")->check(CLI::PositiveNumber);
  app.add_option("--warmup-steps", o.warmup_steps, "untimed steps (multiple of tau)")->check(CLI::NonNegativeNumber);
  app.add_option("--steps", o.steps, "timed steps (multiple of tau)")->check(CLI::PositiveNumber);
  app.add_option("--adaptive-window", o.adaptive_window, "averages the adaptive policy remembers")
      ->check(CLI::PositiveNumber);
  app.add_option("--progress-us", o.progress_us,
                 "SMPI: longest pause of the emulated progress thread (0: test-mode progress only)")
      ->check(CLI::NonNegativeNumber);
  app.add_flag("--shared", o.shared, "SMPI: large buffers in SMPI_SHARED_MALLOC memory (contents meaningless)");
  app.add_option("--wire-scale", o.wire_scale,
                 "SMPI, with --shared: the library's buffers hold params / k floats and every allreduce message "
                 "carries k times its chunk, so the wire sees the whole model at a fraction of the host time")
      ->check(CLI::PositiveNumber);
  app.add_option("--allreduce", o.allreduce, "SMPI: ring or rabenseifner (power-of-two sizes; ring otherwise)")
      ->check(CLI::IsMember({"ring", "rabenseifner"}));
  app.add_flag("--native-collectives", o.native,
               "SMPI: SMPI's own MPI_Iallreduce/MPI_Iallgather instead of bench/smpi's schedules");
  app.add_flag("--check", o.check, "real gradients and sums; print the final loss per algorithm");
  app.add_option("--groups", o.groups, "hier: groups of consecutive ranks (the datacenters)")
      ->check(CLI::PositiveNumber);
  app.add_option("--hier-delay", o.hier_delay, "hier: delay of the group rounds")->check(CLI::NonNegativeNumber);
  app.add_option("--outer-every", o.outer_every, "hier: every k-th round averages across groups")
      ->check(CLI::PositiveNumber);
  app.add_option("--outer-delay", o.outer_delay, "hier: delay of the across-groups rounds")
      ->check(CLI::NonNegativeNumber);
  app.add_option("--label", o.label, "copied into every row (platform name)");
  app.add_option("--csv", o.csv, "append rows to this CSV file (rank 0)");
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return rank == 0 ? app.exit(e) : (e.get_exit_code() == 0 ? 0 : 2);
  }
  DASGD_REQUIRE(o.warmup_steps % o.tau == 0 && o.steps % o.tau == 0, dasgd::config_error,
                "--warmup-steps and --steps must be multiples of tau");
  DASGD_REQUIRE(!(o.shared && o.check), dasgd::config_error, "--check needs real buffers, not --shared");
  DASGD_REQUIRE(o.wire_scale == 1 || o.shared, dasgd::config_error,
                "--wire-scale ", o.wire_scale, " needs --shared (scaled messages carry no real data)");
#ifndef DASGD_SMPI
  DASGD_REQUIRE(o.wire_scale == 1, dasgd::config_error, "--wire-scale is for the SMPI build");
#endif
  // The library holds a k-th of the model; the wire carries k times that.
  o.params = std::max<std::size_t>(o.params / static_cast<std::size_t>(o.wire_scale), 1);
  const std::size_t wire_params = o.params * static_cast<std::size_t>(o.wire_scale);
  DASGD_REQUIRE(o.label.find_first_of(",\"\n") == std::string::npos, dasgd::config_error, "bad --label");
  std::vector<bench_algorithm> algorithms;
  for (const auto& name : o.algorithms) algorithms.push_back(parse(name, o));

#ifdef DASGD_SMPI
  dasgd::bench::smpi::set_allreduce(o.allreduce == "ring" ? dasgd::bench::smpi::allreduce_algorithm::ring
                                                          : dasgd::bench::smpi::allreduce_algorithm::rabenseifner);
  dasgd::bench::smpi::set_native(o.native);
#endif
  if (!o.shared) check_average(std::min<std::size_t>(o.params, 1u << 16));
#ifdef DASGD_SMPI
  if (o.shared) {
    shared_blocks = new std::unordered_set<void*>();  // before the threshold: its own nodes are small
    // Below the threshold stays private what must hold real data: the
    // engine's signature table and the Bruck buffer (72 bytes per rank).
    shared_threshold = std::size_t(1) << 18;
    DASGD_REQUIRE(static_cast<std::size_t>(size) * 72 * 2 < shared_threshold, dasgd::config_error,
                  "--shared: ", size, " ranks need signature tables above the shared-memory threshold");
    dasgd::bench::smpi::set_shared_threshold(shared_threshold);
    dasgd::bench::smpi::set_wire_scale(o.wire_scale);
  }
#endif
  const double host_start = host_s();
  const double allreduce_s = blocking_allreduce_s(o);
#ifdef DASGD_SMPI
  // --shared must really share, or n ranks need n copies of the model.
  DASGD_REQUIRE(!o.shared || o.params * sizeof(float) < shared_threshold || shared_allocations > 0,
                dasgd::config_error, "--shared: no allocation went to SMPI_SHARED_MALLOC (operator new not replaced?)");
#endif
  std::unique_ptr<dasgd::bench::quadratic_workload> work;
  if (o.check) work = std::make_unique<dasgd::bench::quadratic_workload>(o.params, rank, 0.0);

  std::FILE* csv = nullptr;
  if (rank == 0 && !o.csv.empty()) {
    const bool fresh = [&] {
      std::ifstream in(o.csv);
      return !in || in.peek() == std::ifstream::traits_type::eof();
    }();
    csv = std::fopen(o.csv.c_str(), "a");
    DASGD_REQUIRE(csv != nullptr, dasgd::config_error, "cannot open '", o.csv, "'");
    if (fresh)
      std::fprintf(csv, "label,allreduce,ranks,params,payload_bytes,compute_ms,algorithm,tau,delay,allreduce_ms,step_ms,"
                        "compute_step_ms,efficiency,hidden,wait_ms,loss,host_s,wire_scale\n");
  }
  if (rank == 0) {
    std::printf("# %s ranks=%d params=%zu (%.2f MB) compute=%.2f ms tau=%lld allreduce=%s blocking average %.3f ms%s",
                o.label.c_str(), size, wire_params, wire_params * 4e-6, o.compute_ms, static_cast<long long>(o.tau),
                o.native ? "smpi-native" : o.allreduce.c_str(), allreduce_s * 1e3, o.shared ? " shared" : "");
    if (o.wire_scale > 1) std::printf(" wire-scale %d (the library holds %zu floats)", o.wire_scale, o.params);
    std::printf("\n");
    std::fflush(stdout);
  }
  double compute_step = 0;
  for (const auto& b : algorithms) {
    const algorithm_spec& a = b.spec;
    const figures f = run_algorithm(o, b, work.get());
    if (a.kind == algorithm_kind::compute_only) compute_step = f.step_s;
    const bool none = a.kind == algorithm_kind::compute_only;
    const double comm_per_step = allreduce_s * a.averages_per_step();
    const double eff = compute_step > 0 ? compute_step / f.step_s : NAN;
    // hier: most averages are group-only, so the flat blocking average is no yardstick
    const double hidden = none || b.hierarchical || compute_step <= 0
                              ? NAN
                              : 1.0 - (f.step_s - compute_step) / comm_per_step;
    const std::int64_t delay = a.kind == algorithm_kind::adaptive_delay ? f.delay_last : none ? 0 : a.delay;
    if (rank == 0) {
      std::printf("%-9s step %9.3f ms  efficiency %.3f  hidden %6.3f  wait %8.3f ms  delay %lld  loss %.9g  host %.1f s\n",
                  a.name.c_str(), f.step_s * 1e3, eff, hidden, f.wait_s * 1e3, static_cast<long long>(delay), f.loss,
                  f.host_s);
      std::fflush(stdout);
      if (csv != nullptr) {
        std::fprintf(csv, "%s,%s,%d,%zu,%zu,%.4f,%s,%lld,%lld,%.4f,%.4f,%.4f,%.5f,%.5f,%.4f,%.9g,%.2f,%d\n",
                     o.label.c_str(), o.native ? "smpi-native" : o.allreduce.c_str(),
                     size, wire_params, wire_params * sizeof(float), o.compute_ms, a.name.c_str(),
                     static_cast<long long>(none ? 0 : a.tau), static_cast<long long>(delay), allreduce_s * 1e3,
                     f.step_s * 1e3, compute_step * 1e3, eff, hidden, f.wait_s * 1e3, f.loss, f.host_s, o.wire_scale);
        std::fflush(csv);
      }
    }
  }
  if (csv != nullptr) std::fclose(csv);
  if (rank == 0) std::printf("# host time %.1f s\n", host_s() - host_start);
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  dasgd::comm::mpi_environment env(argc, argv);
  try {
    return run(argc, argv);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "dasgd_bench_smpi: %s\n", e.what());
    std::fflush(stderr);
    MPI_Abort(MPI_COMM_WORLD, 1);
    return 1;
  }
}
