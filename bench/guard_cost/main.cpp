// Cost of the non-finite guard: the pass that writes the snapshot (SGD
// momentum step + snapshot, the launch step's pass) with the guard off and
// on, timed side by side (interleaved repetitions, medians), on the host
// backend. Prints one CSV row per size: elements, off_s, on_s, on/off.
//   dasgd_bench_guard_cost [--elements 1048576,16777216] [--repeats 15]
#include <dasgd/dasgd.hpp>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <sstream>
#include <string>
#include <vector>

#include "common/stats.hpp"

namespace {

std::vector<std::size_t> parse_sizes(const std::string& s) {
  std::vector<std::size_t> out;
  std::stringstream ss(s);
  std::string item;
  while (std::getline(ss, item, ',')) out.push_back(std::stoull(item));
  return out;
}

double time_pass(dasgd::host_backend& b, dasgd::pass_args<float, float, dasgd::host_space>& a,
                 const dasgd::optim::sgd& opt) {
  const auto t0 = dasgd::bench::bench_clock::now();
  opt.visit_element<float>(5, [&](const auto& e) { b.run<dasgd::kernels::step_and_snapshot>(a, e); });
  return dasgd::bench::seconds_since(t0);
}

}  // namespace

int main(int argc, char** argv) {
  std::vector<std::size_t> sizes{std::size_t(1) << 20, std::size_t(1) << 24};
  int repeats = 15;
  for (int i = 1; i + 1 < argc; i += 2) {
    if (!std::strcmp(argv[i], "--elements")) sizes = parse_sizes(argv[i + 1]);
    else if (!std::strcmp(argv[i], "--repeats")) repeats = std::atoi(argv[i + 1]);
  }
  const dasgd::optim::sgd opt{.lr = 1e-3, .momentum = 0.9};
  std::printf("elements,guard_off_s,guard_on_s,on_over_off\n");
  for (std::size_t n : sizes) {
    std::vector<float> w(n, 0.5f), g(n, 0.25f), m(n, 0.0f), snap(n, 0.0f);
    dasgd::tensor_list<float> wl;
    wl.add(w.data(), n);
    dasgd::tensor_list<const float> gl;
    gl.add(g.data(), n);
    const std::size_t offset = 0;
    std::uint32_t flag = std::numeric_limits<std::uint32_t>::max();
    dasgd::pass_args<float, float, dasgd::host_space> off;
    off.weights = &wl;
    off.grads = &gl;
    off.offsets = &offset;
    off.state[0] = m.data();
    off.snapshot = snap.data();
    auto on = off;
    on.nonfinite = &flag;
    dasgd::host_backend b;
    std::vector<double> t_off, t_on;
    time_pass(b, off, opt);  // warm-up: pages touched
    time_pass(b, on, opt);
    for (int r = 0; r < repeats; ++r) {
      t_off.push_back(time_pass(b, off, opt));
      t_on.push_back(time_pass(b, on, opt));
    }
    const double a = dasgd::bench::median(t_off), c = dasgd::bench::median(t_on);
    std::printf("%zu,%.6f,%.6f,%.3f\n", n, a, c, c / a);
    if (flag != std::numeric_limits<std::uint32_t>::max()) {
      std::fprintf(stderr, "the guard reported a non-finite value in finite data\n");
      return 1;
    }
  }
  return 0;
}
