// GPU mode of a build without CUDA: nothing to measure, reported as skipped.
#include <cstdio>

#include "modes.hpp"

namespace dasgd::bench {

int run_gpu_mode(const options&) {
  std::printf("no CUDA device: this build of dasgd_bench_update_kernels has no CUDA support "
              "(configure with the CUDA toolkit and nvcc); GPU mode skipped\n");
  return exit_skipped;
}

}  // namespace dasgd::bench
