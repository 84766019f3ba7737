// dasgd_bench_update_kernels: roofline benchmark of the fused delayed update.
//   --mode host  the host backend against a stream-triad loop moving the same bytes
//   --mode gpu   the CUDA backend against a device-to-device copy of the same bytes
// See docs/update_kernels.md for the byte accounting and the commands.
#include <cstdio>
#include <exception>

#include <dasgd/core/error.hpp>

#include "bench_case.hpp"
#include "modes.hpp"
#include "options.hpp"
#include "results.hpp"

int main(int argc, char** argv) {
  using namespace dasgd::bench;
  options o;
  try {
    o = parse_options(argc, argv);
    check_model_totals();
  } catch (const std::exception& e) {
    std::fprintf(stderr, "error: %s\n%s", e.what(), usage_text());
    return exit_bad_arguments;
  }
  if (o.help) {
    std::printf("%s", usage_text());
    return exit_ok;
  }
  if (o.list) {
    const case_plan plan = make_plan(o);
    for (const auto& c : plan.cases)
      std::printf("%-11s %4zu tensors %11zu el  %-14s %-14s %-6s %3zu B/el\n", c.shape->name.c_str(),
                  c.shape->tensors(), c.shape->elements(), c.precision->name, c.mode->name,
                  c.optimizer->name, c.bytes_per_element());
    std::printf("%zu cases\n", plan.cases.size());
    return exit_ok;
  }
  try {
    return o.mode == run_mode::host ? run_host_mode(o) : run_gpu_mode(o);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return exit_check_failed;
  }
}
