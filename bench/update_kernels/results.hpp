// Statistics, the case plan, the printed table and the CSV of the update
// benchmark. The CSV columns are shared with scripts/bench_pytorch_update.py
// (same layout/precision/mode/optimizer keys), so a join on those four
// columns pairs each dasgd case with its PyTorch counterpart.
#pragma once

#include <algorithm>
#include <cstdio>
#include <fstream>
#include <memory>
#include <string>
#include <vector>

#include <dasgd/core/error.hpp>

#include "../common/stats.hpp"
#include "bench_case.hpp"
#include "options.hpp"

namespace dasgd::bench {

/// Median over i of baseline[i] / fused[i] (samples taken as pairs).
inline double median_pair_ratio(const std::vector<double>& fused, const std::vector<double>& baseline) {
  DASGD_REQUIRE(fused.size() == baseline.size(), state_error, fused.size(), " fused samples but ",
                baseline.size(), " baseline samples");
  std::vector<double> r(fused.size());
  for (std::size_t i = 0; i < r.size(); ++i) r[i] = baseline[i] / fused[i];
  return median(r);
}

/// Layouts own the tensor lists the cases point to.
struct case_plan {
  std::vector<std::unique_ptr<layout>> layouts;
  std::vector<bench_case> cases;
};

/// Cartesian product of the selected names, in the order given.
inline case_plan make_plan(const options& o) {
  case_plan plan;
  for (const auto& l : o.layouts) plan.layouts.push_back(std::make_unique<layout>(make_layout(l)));
  for (const auto& l : plan.layouts)
    for (const auto& p : o.precisions)
      for (const auto& x : o.optimizers)
        for (const auto& m : o.modes)
          plan.cases.push_back(
              {l.get(), &precision_by_name(p), &mode_by_name(m), &optimizer_by_name(x)});
  return plan;
}

struct result_row {
  std::string impl;    ///< dasgd-host, dasgd-cuda
  std::string device;  ///< CPU or GPU model
  const bench_case* c = nullptr;
  int threads = 1;
  double time_s = 0;           ///< median time of one fused pass
  std::string baseline;        ///< stream-triad (host) or d2d-copy (gpu)
  double baseline_time_s = 0;  ///< median time of the baseline moving the same bytes
  /// Median over sample pairs of t_baseline / t_fused. The two samples of a
  /// pair run back to back, so a burst of load from other processes hits
  /// both; this is steadier than the ratio of the two medians.
  double pair_ratio = 0;
  int repeats = 0;
  std::string check = "n/a";  ///< gpu: "ok" or "FAIL" (against the host backend)

  double gbps() const { return static_cast<double>(c->bytes()) / time_s * 1e-9; }
  double baseline_gbps() const { return static_cast<double>(c->bytes()) / baseline_time_s * 1e-9; }
  /// Achieved bandwidth over baseline bandwidth (same bytes).
  double ratio() const { return pair_ratio; }
};

inline std::string csv_field(const std::string& s) {
  if (s.find_first_of(",\"\n") == std::string::npos) return s;
  std::string q = "\"";
  for (char ch : s) {
    if (ch == '"') q += '"';
    q += ch;
  }
  return q + "\"";
}

inline constexpr const char* csv_header =
    "impl,device,layout,tensors,elements,precision,mode,optimizer,threads,bytes_per_elem,bytes,"
    "time_us,gbps,baseline,baseline_time_us,baseline_gbps,ratio_to_baseline,repeats,check";

/// Appends rows as they are measured, so an interrupted run keeps its data.
class csv_writer {
 public:
  explicit csv_writer(const std::string& path) {
    if (path.empty()) return;
    out_.open(path);
    DASGD_REQUIRE(out_.good(), config_error, "cannot open CSV output '", path, "'");
    out_ << csv_header << '\n';
  }
  void write(const result_row& r) {
    if (!out_.is_open()) return;
    char nums[256];
    std::snprintf(nums, sizeof nums, "%.3f,%.2f,%s,%.3f,%.2f,%.4f,%d,%s", r.time_s * 1e6, r.gbps(),
                  r.baseline.c_str(), r.baseline_time_s * 1e6, r.baseline_gbps(), r.ratio(),
                  r.repeats, r.check.c_str());
    const bench_case& c = *r.c;
    out_ << r.impl << ',' << csv_field(r.device) << ',' << c.shape->name << ','
         << c.shape->tensors() << ',' << c.shape->elements() << ',' << c.precision->name << ','
         << c.mode->name << ',' << c.optimizer->name << ',' << r.threads << ','
         << c.bytes_per_element() << ',' << c.bytes() << ',' << nums << '\n';
    out_.flush();
  }

 private:
  std::ofstream out_;
};

inline void print_table_header(const char* baseline) {
  std::printf("%-11s %4s %-14s %-13s %-6s %3s %5s %11s %9s %9s %7s %s\n", "layout", "tens",
              "precision", "mode", "optim", "thr", "B/el", "time_us", "GB/s", baseline, "ratio",
              "check");
}

inline void print_row(const result_row& r) {
  const bench_case& c = *r.c;
  std::printf("%-11s %4zu %-14s %-13s %-6s %3d %5zu %11.1f %9.1f %9.1f %7.3f %s\n",
              c.shape->name.c_str(), c.shape->tensors(), c.precision->name, c.mode->name,
              c.optimizer->name, r.threads, c.bytes_per_element(), r.time_s * 1e6, r.gbps(),
              r.baseline_gbps(), r.ratio(), r.check.c_str());
  std::fflush(stdout);
}

}  // namespace dasgd::bench
