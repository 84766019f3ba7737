// The 784-256-128-10 MLP of examples/fashion_mnist on the GPU: cuBLAS
// GEMMs plus a few small kernels, everything queued on one stream (the
// trainer's), so a training step never waits on the host. Same layout as
// the Eigen model (column-major, one sample per column):
//   H1 = relu(W1 X + b1), H2 = relu(W2 H1 + b2), logits = W3 H2 + b3.
#pragma once

#include <cublas_v2.h>
#include <cuda_runtime_api.h>

#include <dasgd/kernels/cuda/cuda_error.hpp>
#include <dasgd/kernels/cuda/device_buffer.hpp>

#include <cstddef>
#include <cstdint>
#include <vector>

#define CFM_CUBLAS_CHECK(call)                                                                 \
  do {                                                                                         \
    const cublasStatus_t cfm_status_ = (call);                                                 \
    if (cfm_status_ != CUBLAS_STATUS_SUCCESS)                                                  \
      DASGD_THROW(::dasgd::error, "cuBLAS call '", #call, "' failed with status ", int(cfm_status_)); \
  } while (0)

namespace gpu_fashion_mnist {

inline constexpr int in = 784, h1 = 256, h2 = 128, out = 10;

/// Tensor sizes in the order W1, b1, W2, b2, W3, b3 (the arena's extents).
inline std::vector<std::size_t> extents() {
  return {std::size_t(h1) * in, h1, std::size_t(h2) * h1, h2, std::size_t(out) * h2, out};
}

namespace kernels {

inline unsigned blocks_for(std::size_t n, unsigned threads = 256) {
  const std::size_t b = (n + threads - 1) / threads;
  return static_cast<unsigned>(b == 0 ? 1 : (b > 65535 ? 65535 : b));
}

__global__ void gather_columns(const float* all, const std::int32_t* index, int rows, int cols, float* dst) {
  const std::size_t n = std::size_t(rows) * cols;
  for (std::size_t k = blockIdx.x * std::size_t(blockDim.x) + threadIdx.x; k < n; k += std::size_t(gridDim.x) * blockDim.x) {
    const std::size_t c = k / rows, r = k % rows;
    dst[k] = all[std::size_t(index[c]) * rows + r];
  }
}

__global__ void gather_labels(const std::uint8_t* all, const std::int32_t* index, int n, std::int32_t* dst) {
  const int j = blockIdx.x * blockDim.x + threadIdx.x;
  if (j < n) dst[j] = all[index[j]];
}

/// H = relu(H + b) (relu: H1, H2) or H + b (logits).
__global__ void add_bias(float* h, const float* b, int rows, int cols, bool relu) {
  const std::size_t n = std::size_t(rows) * cols;
  for (std::size_t k = blockIdx.x * std::size_t(blockDim.x) + threadIdx.x; k < n; k += std::size_t(gridDim.x) * blockDim.x) {
    const float v = h[k] + b[k % rows];
    h[k] = relu ? (v > 0.0f ? v : 0.0f) : v;
  }
}

/// Per column: softmax cross-entropy of the logits; dZ = (softmax - onehot)
/// * scale; adds the loss and the correct predictions to the accumulators.
__global__ void softmax_xent(const float* z, const std::int32_t* y, int cols, float scale, float* dz,
                             double* loss_sum, unsigned long long* correct) {
  const int j = blockIdx.x * blockDim.x + threadIdx.x;
  if (j >= cols) return;
  const float* zj = z + std::size_t(j) * out;
  float m = zj[0];
  int arg = 0;
  for (int i = 1; i < out; ++i)
    if (zj[i] > m) {
      m = zj[i];
      arg = i;
    }
  float sum = 0.0f;
  for (int i = 0; i < out; ++i) sum += expf(zj[i] - m);
  const int label = y[j];
  const float log_p = zj[label] - m - logf(sum);
  atomicAdd(loss_sum, static_cast<double>(-log_p));
  if (arg == label) atomicAdd(correct, 1ull);
  if (dz != nullptr)
    for (int i = 0; i < out; ++i) {
      const float p = expf(zj[i] - m) / sum;
      dz[std::size_t(j) * out + i] = (p - (i == label ? 1.0f : 0.0f)) * scale;
    }
}

__global__ void relu_backward(float* dh, const float* h, std::size_t n) {
  for (std::size_t k = blockIdx.x * std::size_t(blockDim.x) + threadIdx.x; k < n; k += std::size_t(gridDim.x) * blockDim.x)
    if (h[k] <= 0.0f) dh[k] = 0.0f;
}

__global__ void fill(float* p, float v, std::size_t n) {
  for (std::size_t k = blockIdx.x * std::size_t(blockDim.x) + threadIdx.x; k < n; k += std::size_t(gridDim.x) * blockDim.x)
    p[k] = v;
}

}  // namespace kernels

/// Pointers to the six tensors (W1, b1, W2, b2, W3, b3) in device memory.
struct layer_pointers {
  float* p[6];
};

/// Loss sum and correct count accumulated on the device.
struct device_tally {
  double loss_sum = 0;
  unsigned long long correct = 0;
};

/// Forward and backward passes for batches of up to `max_batch` samples.
class gpu_mlp {
 public:
  gpu_mlp(cudaStream_t s, int max_batch)
      : s_(s), max_batch_(max_batch), x_(std::size_t(in) * max_batch, s), y_(max_batch, s),
        a1_(std::size_t(h1) * max_batch, s), a2_(std::size_t(h2) * max_batch, s), z_(std::size_t(out) * max_batch, s),
        d1_(std::size_t(h1) * max_batch, s), d2_(std::size_t(h2) * max_batch, s), dz_(std::size_t(out) * max_batch, s),
        ones_(max_batch, s), tally_(1, s) {
    CFM_CUBLAS_CHECK(cublasCreate(&blas_));
    CFM_CUBLAS_CHECK(cublasSetStream(blas_, s_));
    kernels::fill<<<kernels::blocks_for(max_batch), 256, 0, s_>>>(ones_.data(), 1.0f, max_batch);
    DASGD_CUDA_CHECK(cudaGetLastError());
    reset_tally();
  }
  ~gpu_mlp() { (void)cublasDestroy(blas_); }
  gpu_mlp(const gpu_mlp&) = delete;
  gpu_mlp& operator=(const gpu_mlp&) = delete;

  /// Stages the batch `index[0..n)` of the device-resident images/labels.
  void load_batch(const float* images, const std::uint8_t* labels, const std::int32_t* index, int n) {
    DASGD_REQUIRE(n > 0 && n <= max_batch_, dasgd::config_error, "batch of ", n, " outside [1, ", max_batch_, "]");
    kernels::gather_columns<<<kernels::blocks_for(std::size_t(in) * n), 256, 0, s_>>>(images, index, in, n, x_.data());
    kernels::gather_labels<<<kernels::blocks_for(n), 256, 0, s_>>>(labels, index, n, y_.data());
    DASGD_CUDA_CHECK(cudaGetLastError());
    n_ = n;
  }

  /// Gradients of the mean cross-entropy of the loaded batch into g; the
  /// loss and correct count are added to the tally.
  void loss_and_gradients(const layer_pointers& w, const layer_pointers& g) {
    forward(w);
    kernels::softmax_xent<<<kernels::blocks_for(n_), 256, 0, s_>>>(z_.data(), y_.data(), n_, 1.0f / float(n_),
                                                                  dz_.data(), &tally_.data()->loss_sum,
                                                                  &tally_.data()->correct);
    DASGD_CUDA_CHECK(cudaGetLastError());
    // Layer 3: dW3 = dZ H2^T, db3 = dZ 1, dH2 = W3^T dZ (masked by relu).
    gemm(CUBLAS_OP_N, CUBLAS_OP_T, out, h2, n_, dz_.data(), out, a2_.data(), h2, g.p[4], out);
    gemv(out, n_, dz_.data(), g.p[5]);
    gemm(CUBLAS_OP_T, CUBLAS_OP_N, h2, n_, out, w.p[4], out, dz_.data(), out, d2_.data(), h2);
    kernels::relu_backward<<<kernels::blocks_for(std::size_t(h2) * n_), 256, 0, s_>>>(d2_.data(), a2_.data(),
                                                                                    std::size_t(h2) * n_);
    // Layer 2.
    gemm(CUBLAS_OP_N, CUBLAS_OP_T, h2, h1, n_, d2_.data(), h2, a1_.data(), h1, g.p[2], h2);
    gemv(h2, n_, d2_.data(), g.p[3]);
    gemm(CUBLAS_OP_T, CUBLAS_OP_N, h1, n_, h2, w.p[2], h2, d2_.data(), h2, d1_.data(), h1);
    kernels::relu_backward<<<kernels::blocks_for(std::size_t(h1) * n_), 256, 0, s_>>>(d1_.data(), a1_.data(),
                                                                                    std::size_t(h1) * n_);
    // Layer 1.
    gemm(CUBLAS_OP_N, CUBLAS_OP_T, h1, in, n_, d1_.data(), h1, x_.data(), in, g.p[0], h1);
    gemv(h1, n_, d1_.data(), g.p[1]);
    DASGD_CUDA_CHECK(cudaGetLastError());
  }

  /// Adds the loaded batch's loss and correct count to the tally (no gradients).
  void evaluate(const layer_pointers& w) {
    forward(w);
    kernels::softmax_xent<<<kernels::blocks_for(n_), 256, 0, s_>>>(z_.data(), y_.data(), n_, 0.0f, nullptr,
                                                                  &tally_.data()->loss_sum, &tally_.data()->correct);
    DASGD_CUDA_CHECK(cudaGetLastError());
  }

  /// Reads the tally (synchronizes the stream) and resets it.
  device_tally take_tally() {
    device_tally t;
    DASGD_CUDA_CHECK(cudaMemcpyAsync(&t, tally_.data(), sizeof t, cudaMemcpyDeviceToHost, s_));
    DASGD_CUDA_CHECK(cudaStreamSynchronize(s_));
    reset_tally();
    return t;
  }

 private:
  void forward(const layer_pointers& w) {
    gemm(CUBLAS_OP_N, CUBLAS_OP_N, h1, n_, in, w.p[0], h1, x_.data(), in, a1_.data(), h1);
    kernels::add_bias<<<kernels::blocks_for(std::size_t(h1) * n_), 256, 0, s_>>>(a1_.data(), w.p[1], h1, n_, true);
    gemm(CUBLAS_OP_N, CUBLAS_OP_N, h2, n_, h1, w.p[2], h2, a1_.data(), h1, a2_.data(), h2);
    kernels::add_bias<<<kernels::blocks_for(std::size_t(h2) * n_), 256, 0, s_>>>(a2_.data(), w.p[3], h2, n_, true);
    gemm(CUBLAS_OP_N, CUBLAS_OP_N, out, n_, h2, w.p[4], out, a2_.data(), h2, z_.data(), out);
    kernels::add_bias<<<kernels::blocks_for(std::size_t(out) * n_), 256, 0, s_>>>(z_.data(), w.p[5], out, n_, false);
    DASGD_CUDA_CHECK(cudaGetLastError());
  }

  void gemm(cublasOperation_t ta, cublasOperation_t tb, int m, int n, int k, const float* a, int lda, const float* b,
            int ldb, float* c, int ldc) {
    const float one = 1.0f, zero = 0.0f;
    CFM_CUBLAS_CHECK(cublasSgemm(blas_, ta, tb, m, n, k, &one, a, lda, b, ldb, &zero, c, ldc));
  }
  /// out = M (rows x cols) * ones: the bias gradient (row sums).
  void gemv(int rows, int cols, const float* m, float* result) {
    const float one = 1.0f, zero = 0.0f;
    CFM_CUBLAS_CHECK(cublasSgemv(blas_, CUBLAS_OP_N, rows, cols, &one, m, rows, ones_.data(), 1, &zero, result, 1));
  }
  void reset_tally() { DASGD_CUDA_CHECK(cudaMemsetAsync(tally_.data(), 0, sizeof(device_tally), s_)); }

  cudaStream_t s_;
  int max_batch_;
  int n_ = 0;
  cublasHandle_t blas_ = nullptr;
  dasgd::device_buffer<float> x_;
  dasgd::device_buffer<std::int32_t> y_;
  dasgd::device_buffer<float> a1_, a2_, z_, d1_, d2_, dz_, ones_;
  dasgd::device_buffer<device_tally> tally_;
};

}  // namespace gpu_fashion_mnist
