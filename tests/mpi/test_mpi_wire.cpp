// 16-bit wire types over MPI: a user-defined operation adds __half /
// __nv_bfloat16 words in fp32; the trainer with comm::wire_format sends
// bf16 snapshots of float weights.
#include "mpi_test_support.hpp"

#include <dasgd/comm/mpi.hpp>
#include <dasgd/comm/wire_format.hpp>
#include <dasgd/dasgd.hpp>

#include <cmath>
#include <vector>

using dasgd::comm::mpi_communicator;
using dasgd::comm::mpi_progress;
using dasgd::test::all_progress_modes;
using dasgd::test::name_of;
using dasgd::test::test_options;
using dasgd::test::world_rank;
using dasgd::test::world_size;

TEST_CASE_TEMPLATE("16-bit averages over MPI are summed in fp32", T, __nv_bfloat16, __half) {
  for (auto mode : all_progress_modes) {
    CAPTURE(name_of(mode));
    mpi_communicator comm(MPI_COMM_WORLD, test_options(mode));
    const std::size_t n = 100003;
    std::vector<T> send(n), recv(n);
    for (std::size_t i = 0; i < n; ++i)
      send[i] = dasgd::to_storage<T>(static_cast<float>(std::sin(0.01 * double(i) + comm.rank())));
    comm.iallreduce_average(std::span<const T>(send), std::span<T>(recv)).wait();
    // Reference: the exact mean of the 16-bit inputs, rounded once.
    double worst_ulps = 0;
    for (std::size_t i = 0; i < n; ++i) {
      double mean = 0, magnitude = 0;
      for (int r = 0; r < comm.size(); ++r) {
        const double x =
            dasgd::to_compute<double>(dasgd::to_storage<T>(static_cast<float>(std::sin(0.01 * double(i) + r))));
        mean += x;
        magnitude += std::abs(x);
      }
      mean /= comm.size();
      magnitude /= comm.size();
      const double got = dasgd::to_compute<double>(recv[i]);
      // A partial sum is as large as the sum of magnitudes: its rounding
      // is relative to that, not to a mean that may cancel to ~0.
      const double ulp = dasgd::unit_roundoff<T>() * 2 * std::max(magnitude, 1e-6);
      worst_ulps = std::max(worst_ulps, std::abs(got - mean) / ulp);
    }
    // Each of the (size - 1) partial sums and the final scale round once.
    CHECK(worst_ulps <= static_cast<double>(comm.size()));
  }
}

TEST_CASE("a bf16 wire trains like the in-process bf16 wire") {
  std::vector<float> w(64), g(64);
  for (std::size_t i = 0; i < w.size(); ++i) w[i] = 0.01f * static_cast<float>(i);
  using wire_comm = dasgd::comm::wire_format<__nv_bfloat16, mpi_communicator>;
  dasgd::delayed_averager trainer(dasgd::make_tensor_list(w), wire_comm(mpi_communicator()),
                                  dasgd::policy::fixed_delay{.tau = 2, .delay = 1},
                                  dasgd::optim::sgd{.lr = 0.1}, dasgd::merge::mix{.update_proportion = 0.0});
  for (int k = 0; k < 6; ++k) {
    for (std::size_t i = 0; i < g.size(); ++i) g[i] = 0.01f * static_cast<float>(world_rank() + 1);
    trainer.step(g);
  }
  trainer.synchronize();
  // Every rank holds the same weights, within bf16 of the float result.
  std::vector<float> all(w.size() * static_cast<std::size_t>(world_size()));
  MPI_Allgather(w.data(), static_cast<int>(w.size()), MPI_FLOAT, all.data(), static_cast<int>(w.size()),
                MPI_FLOAT, MPI_COMM_WORLD);
  for (int r = 1; r < world_size(); ++r)
    for (std::size_t i = 0; i < w.size(); ++i) CHECK(all[r * w.size() + i] == all[i]);
}
