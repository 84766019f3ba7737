// Command line of dasgd_bench_update_kernels. A small hand-written parser on
// purpose: the GPU machines that run this benchmark have CMake and the CUDA
// toolkit but no CLI11, and the benchmark must build there unchanged.
#pragma once

#include <algorithm>
#include <cstddef>
#include <sstream>
#include <string>
#include <vector>

#include <dasgd/core/error.hpp>

#include "bench_case.hpp"
#include "tunings.hpp"

namespace dasgd::bench {

enum class run_mode { host, gpu };

struct options {
  run_mode mode = run_mode::host;
  std::vector<std::string> layouts;     ///< empty: the mode's default
  std::vector<std::string> precisions;  ///< empty: the mode's default
  std::vector<std::string> modes{"step", "step_snapshot", "step_mix", "step_additive"};
  std::vector<std::string> optimizers{"sgdm", "adamw"};
  std::vector<std::string> tunings{"default"};  ///< gpu: kernel tuning policies to time
  std::vector<int> threads;  ///< host: worker threads per measurement; empty: 1 and all cores
  int warmup = -1;           ///< passes before timing; -1: the mode's default
  int repeats = -1;          ///< timed samples (at least); -1: the mode's default
  double min_seconds = 0.2;  ///< host: keep sampling until the fused loop ran this long
  double max_host_gib = 8;   ///< host: skip cases whose buffers exceed this
  bool flush_l2 = true;      ///< gpu: evict L2 before every sample
  std::string csv;           ///< output CSV path; empty: none
  bool list = false;         ///< print the plan (cases, bytes per element) and exit
  bool help = false;
};

inline const char* usage_text() {
  return "usage: dasgd_bench_update_kernels [--mode host|gpu] [options]\n"
         "  --layouts L,...      flat_<N>M, flat_<N>K, resnet50, gpt2_small\n"
         "                       (host default flat_1M,flat_16M,flat_64M,resnet50,gpt2_small;\n"
         "                        gpu default flat_1M,flat_16M,flat_128M,resnet50,gpt2_small)\n"
         "  --precisions P,...   fp32, fp64 (host); bf16, fp16 (fp32 master),\n"
         "                       bf16_nomaster, fp16_nomaster (gpu)\n"
         "                       (host default fp32,fp64; gpu default fp32,bf16,fp16)\n"
         "  --modes M,...        step, step_snapshot, step_mix, step_additive (default all)\n"
         "  --optimizers O,...   sgdm, adamw (default both)\n"
         "  --threads T,...      host: threads per measurement (default 1 and all cores)\n"
         "  --tunings N,...      gpu: kernel tunings to time, or 'all' (default: default;\n"
         "                       the others need a -DDASGD_BENCH_TUNING_SWEEP=ON build)\n"
         "  --warmup N           passes before timing (host 1, gpu 5)\n"
         "  --repeats N          timed samples, median reported (host >= 5, gpu 25)\n"
         "  --min-seconds S      host: sample until the fused loop ran S seconds (0.2)\n"
         "  --max-host-gib G     host: skip cases needing more memory (8)\n"
         "  --no-flush-l2        gpu: do not evict L2 between samples\n"
         "  --csv PATH           write the results as CSV\n"
         "  --list               print the cases and their bytes per element, run nothing\n"
         "output: one table row per case; on a terminal, stderr also shows 'case i/N' and\n"
         "        an estimate of the time left. The check column: gpu mode compares each\n"
         "        case's result with the host backend (ok or FAIL); host mode has no\n"
         "        reference to compare with and shows n/a.\n"
         "exit status: 0 done, 1 a gpu case FAILed its check (or an error), 2 bad arguments,\n"
         "             77 gpu mode without a CUDA device (skipped)\n";
}

namespace detail {
inline std::vector<std::string> split_list(const std::string& s, const std::string& flag) {
  std::vector<std::string> out;
  std::stringstream in(s);
  std::string item;
  while (std::getline(in, item, ','))
    if (!item.empty()) out.push_back(item);
  DASGD_REQUIRE(!out.empty(), config_error, flag, " needs a comma-separated list, got '", s, "'");
  return out;
}

inline long parse_integer(const std::string& s, const std::string& flag, long lo, long hi) {
  std::size_t used = 0;
  long v = 0;
  try {
    v = std::stol(s, &used);
  } catch (const std::exception&) {
    used = 0;
  }
  DASGD_REQUIRE(used == s.size() && !s.empty() && v >= lo && v <= hi, config_error, flag,
                " needs an integer in [", lo, ", ", hi, "], got '", s, "'");
  return v;
}

inline double parse_number(const std::string& s, const std::string& flag, double lo, double hi) {
  std::size_t used = 0;
  double v = 0;
  try {
    v = std::stod(s, &used);
  } catch (const std::exception&) {
    used = 0;
  }
  DASGD_REQUIRE(used == s.size() && !s.empty() && v >= lo && v <= hi, config_error, flag,
                " needs a number in [", lo, ", ", hi, "], got '", s, "'");
  return v;
}
}  // namespace detail

/// Parses argv; throws config_error naming the offending flag or value.
inline options parse_options(int argc, const char* const* argv) {
  options o;
  std::vector<std::string> args(argv + 1, argv + argc);
  for (std::size_t i = 0; i < args.size(); ++i) {
    std::string flag = args[i], value;
    const bool has_inline = flag.rfind("--", 0) == 0 && flag.find('=') != std::string::npos;
    if (has_inline) {
      value = flag.substr(flag.find('=') + 1);
      flag = flag.substr(0, flag.find('='));
    }
    auto next = [&]() -> std::string {
      if (has_inline) return value;
      DASGD_REQUIRE(i + 1 < args.size(), config_error, flag, " needs a value");
      return args[++i];
    };
    if (flag == "--help" || flag == "-h") {
      o.help = true;
    } else if (flag == "--mode") {
      const std::string m = next();
      DASGD_REQUIRE(m == "host" || m == "gpu", config_error, "--mode must be host or gpu, got '", m,
                    "'");
      o.mode = m == "host" ? run_mode::host : run_mode::gpu;
    } else if (flag == "--layouts") {
      o.layouts = detail::split_list(next(), flag);
    } else if (flag == "--precisions") {
      o.precisions = detail::split_list(next(), flag);
    } else if (flag == "--modes") {
      o.modes = detail::split_list(next(), flag);
    } else if (flag == "--optimizers") {
      o.optimizers = detail::split_list(next(), flag);
    } else if (flag == "--tunings") {
      o.tunings = detail::split_list(next(), flag);
      if (o.tunings == std::vector<std::string>{"all"}) o.tunings = tuning_names();
    } else if (flag == "--threads") {
      o.threads.clear();
      for (const auto& t : detail::split_list(next(), flag))
        o.threads.push_back(static_cast<int>(detail::parse_integer(t, flag, 1, 1024)));
    } else if (flag == "--warmup") {
      o.warmup = static_cast<int>(detail::parse_integer(next(), flag, 0, 1000));
    } else if (flag == "--repeats") {
      o.repeats = static_cast<int>(detail::parse_integer(next(), flag, 1, 10000));
    } else if (flag == "--min-seconds") {
      o.min_seconds = detail::parse_number(next(), flag, 0.0, 600.0);
    } else if (flag == "--max-host-gib") {
      o.max_host_gib = detail::parse_number(next(), flag, 0.001, 4096.0);
    } else if (flag == "--no-flush-l2") {
      o.flush_l2 = false;
    } else if (flag == "--list") {
      o.list = true;
    } else if (flag == "--csv") {
      o.csv = next();
    } else {
      DASGD_THROW(config_error, "unknown option '", args[i], "' (see --help)");
    }
  }
  if (o.layouts.empty()) {
    o.layouts = o.mode == run_mode::host
                    ? std::vector<std::string>{"flat_1M", "flat_16M", "flat_64M", "resnet50",
                                               "gpt2_small"}
                    : std::vector<std::string>{"flat_1M", "flat_16M", "flat_128M", "resnet50",
                                               "gpt2_small"};
  }
  if (o.precisions.empty()) {
    o.precisions = o.mode == run_mode::host ? std::vector<std::string>{"fp32", "fp64"}
                                            : std::vector<std::string>{"fp32", "bf16", "fp16"};
  }
  if (o.warmup < 0) o.warmup = o.mode == run_mode::host ? 1 : 5;
  if (o.repeats < 0) o.repeats = o.mode == run_mode::host ? 5 : 25;
  // Validate every name now, before any (long) measurement starts.
  for (const auto& l : o.layouts) (void)make_layout(l);
  for (const auto& p : o.precisions) {
    const auto& info = precision_by_name(p);
    const bool ok = o.mode == run_mode::host ? info.host : info.gpu;
    DASGD_REQUIRE(ok, config_error, "precision '", p, "' is not available in ",
                  o.mode == run_mode::host ? "host" : "gpu", " mode");
  }
  for (const auto& m : o.modes) (void)mode_by_name(m);
  for (const auto& x : o.optimizers) (void)optimizer_by_name(x);
  const auto known = tuning_names();
  for (const auto& t : o.tunings)
    DASGD_REQUIRE(std::find(known.begin(), known.end(), t) != known.end(), config_error,
                  "unknown tuning '", t, "'", available_tunings_note());
  return o;
}

}  // namespace dasgd::bench
