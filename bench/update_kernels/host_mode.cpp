// Host mode driver: every selected case, single-threaded and with one
// worker per core, fused host pass against the stream-triad baseline.
#include <algorithm>
#include <cstdio>
#include <fstream>
#include <map>
#include <string>
#include <thread>
#include <vector>

#include "host_mode.hpp"
#include "modes.hpp"
#include "progress.hpp"

namespace dasgd::bench {

namespace {

/// "AMD EPYC (family 25, model 17), 2 logical CPUs" from /proc/cpuinfo.
std::string cpu_description() {
  std::ifstream in("/proc/cpuinfo");
  std::string line, name, family, model;
  int cpus = 0;
  auto value = [](const std::string& l) {
    const auto p = l.find(':');
    if (p == std::string::npos) return std::string();
    const auto b = l.find_first_not_of(" \t", p + 1);
    return b == std::string::npos ? std::string() : l.substr(b);
  };
  while (std::getline(in, line)) {
    if (line.rfind("processor", 0) == 0) ++cpus;
    else if (name.empty() && line.rfind("model name", 0) == 0) name = value(line);
    else if (family.empty() && line.rfind("cpu family", 0) == 0) family = value(line);
    else if (model.empty() && line.rfind("model\t", 0) == 0) model = value(line);
  }
  if (name.empty()) name = "unknown CPU";
  std::string d = name;
  if (!family.empty()) d += " (family " + family + ", model " + model + ")";
  if (cpus > 0) d += ", " + std::to_string(cpus) + " logical CPUs";
  return d;
}

}  // namespace

int run_host_mode(const options& o) {
  const std::string device = cpu_description();
  const int cores = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  std::vector<int> threads = o.threads;
  if (threads.empty()) {
    threads.push_back(1);
    if (cores > 1) threads.push_back(cores);
  }
  std::printf("dasgd update kernels, host mode\ndevice: %s\ncompiler: %s\n", device.c_str(),
              __VERSION__);
  std::printf("baseline: stream-triad loop reading and writing the same streams (same bytes)\n");
  std::printf("timing: median of >= %d samples and >= %.2f s per case, %d warm-up pass(es)\n\n",
              o.repeats, o.min_seconds, o.warmup);

  const case_plan plan = make_plan(o);
  csv_writer csv(o.csv);
  std::printf("%zu cases x %zu thread count(s); check: n/a in host mode (the host backend is\n"
              "the reference the GPU mode is checked against, so there is nothing to check)\n\n",
              plan.cases.size(), threads.size());
  print_table_header("triad");
  std::map<int, std::vector<double>> ratios;
  const double limit = o.max_host_gib * double(1u << 30);
  case_progress progress(plan.cases.size() * threads.size());
  for (const auto& c : plan.cases) {
    const bool fp64 = c.precision->key == precision_key::fp64;
    const double bytes = static_cast<double>(fp64 ? host::case_arenas<double>::footprint(c)
                                                  : host::case_arenas<float>::footprint(c));
    if (bytes > limit) {
      progress.erase();
      std::printf("%-48s skipped: needs %.1f GiB of buffers, --max-host-gib is %.1f\n",
                  c.key().c_str(), bytes / double(1u << 30), o.max_host_gib);
      for (std::size_t i = 0; i < threads.size(); ++i) progress.case_done();
      continue;
    }
    for (int t : threads) {
      const result_row r = fp64 ? host::measure_case<double>(c, t, o, device)
                                : host::measure_case<float>(c, t, o, device);
      progress.erase();
      print_row(r);
      csv.write(r);
      ratios[t].push_back(r.ratio());
      progress.case_done();
    }
  }
  progress.erase();

  constexpr double goal = 0.80;
  std::printf("\nfused / stream-triad bandwidth ratio (goal >= %.2f):\n", goal);
  for (const auto& [t, v] : ratios) {
    const auto below = std::count_if(v.begin(), v.end(), [&](double x) { return x < goal; });
    std::printf("  threads=%d: %zu cases, min %.3f, median %.3f, max %.3f, below goal: %td\n", t,
                v.size(), *std::min_element(v.begin(), v.end()), median(v),
                *std::max_element(v.begin(), v.end()), below);
  }
  return exit_ok;
}

}  // namespace dasgd::bench
