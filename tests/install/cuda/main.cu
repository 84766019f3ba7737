// Downstream CUDA smoke test: the CUDA backend (and, with NCCL, a one-rank
// NCCL communicator) compiled by the consumer's nvcc. Exits 77 without a
// device: then only compiling and linking were checked.
#include <dasgd/dasgd.hpp>
#include <dasgd/kernels/cuda/cuda_backend.cuh>
#include <dasgd/kernels/cuda/device_buffer.hpp>
#if DASGD_HAS_NCCL
#include <dasgd/comm/nccl.hpp>
#endif

#include <cstdio>
#include <vector>

int main() {
  int devices = 0;
  if (cudaGetDeviceCount(&devices) != cudaSuccess || devices == 0) {
    std::printf("cuda consumer: no CUDA device, not run\n");
    return 77;
  }
  cudaStream_t stream = nullptr;
  DASGD_CUDA_CHECK(cudaStreamCreate(&stream));
  constexpr std::size_t n = 1000;
  dasgd::device_buffer<float> w(n, stream), g(n, stream);
  const std::vector<float> ones(n, 1.0f);
  DASGD_CUDA_CHECK(cudaMemcpyAsync(w.data(), ones.data(), n * sizeof(float), cudaMemcpyHostToDevice, stream));
  DASGD_CUDA_CHECK(cudaMemcpyAsync(g.data(), ones.data(), n * sizeof(float), cudaMemcpyHostToDevice, stream));
  std::vector<float> out(n);
  {
    dasgd::tensor_list<float, dasgd::device_space> params;
    params.add(w.data(), n);
    dasgd::tensor_list<const float, dasgd::device_space> grads;
    grads.add(g.data(), n);
#if DASGD_HAS_NCCL
    dasgd::trainer_for<float, dasgd::comm::nccl_communicator> trainer(
        params, dasgd::comm::nccl_communicator::single_rank(stream), {.tau = 1, .delay = 0},
        {.lr = 0.5}, {.update_proportion = 0.0},
        dasgd::cuda_backend(stream));
    for (int k = 0; k < 4; ++k) trainer.step(grads);
    trainer.synchronize();
#else
    dasgd::cuda_backend backend(stream);
    auto buf = backend.allocate<float>(n);
    backend.fence();
#endif
  }
  DASGD_CUDA_CHECK(cudaMemcpyAsync(out.data(), w.data(), n * sizeof(float), cudaMemcpyDeviceToHost, stream));
  DASGD_CUDA_CHECK(cudaStreamSynchronize(stream));
  DASGD_CUDA_CHECK(cudaStreamDestroy(stream));
#if DASGD_HAS_NCCL
  // one rank, synchronous steps: four SGD steps of lr 0.5 on a gradient of 1
  const bool ok = out[0] == -1.0f && out[n - 1] == -1.0f;
#else
  const bool ok = out[0] == 1.0f;
#endif
  std::printf("cuda consumer: w[0] = %f: %s\n", out[0], ok ? "ok" : "WRONG");
  return ok ? 0 : 1;
}
