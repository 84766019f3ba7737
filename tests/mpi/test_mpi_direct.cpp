// The direct collectives of mpi_communicator (iallreduce_sum_in_place,
// ibroadcast_in_place: MPI works on the caller's memory, which the caller
// shares with the engine), here on host memory; comm/cuda_mpi.hpp hands
// them device memory when the MPI is CUDA-aware. Also the probe for CUDA
// support.
#include "mpi_test_support.hpp"

#include <dasgd/comm/detail/mpi_cuda_support.hpp>
#include <dasgd/comm/mpi.hpp>

#include <algorithm>
#include <chrono>
#include <memory>
#include <span>
#include <string>
#include <thread>
#include <vector>

using namespace std::chrono_literals;
using dasgd::comm::mpi_communicator;
using dasgd::test::all_progress_modes;
using dasgd::test::contains;
using dasgd::test::message_of;
using dasgd::test::name_of;
using dasgd::test::test_options;
using dasgd::test::world_size;

namespace {

/// Small integers: every sum is exact.
template <class T>
T value_of(int rank, std::size_t i) {
  return static_cast<T>(static_cast<int>((i * 5 + static_cast<std::size_t>(rank) * 11) % 23) - 11 + rank);
}

template <class T>
std::shared_ptr<std::vector<T>> shared_buffer_of(int rank, std::size_t n) {
  auto v = std::make_shared<std::vector<T>>(n);
  for (std::size_t i = 0; i < n; ++i) (*v)[i] = value_of<T>(rank, i);
  return v;
}

template <class T>
T sum_of(int size, std::size_t i) {
  T s = 0;
  for (int r = 0; r < size; ++r) s += value_of<T>(r, i);
  return s;
}

}  // namespace

TEST_CASE("iallreduce_sum_in_place leaves the exact sum in place (no scale pass)") {
  for (auto mode : all_progress_modes) {
    CAPTURE(name_of(mode));
    mpi_communicator comm(MPI_COMM_WORLD, test_options(mode));
    for (std::size_t n : {std::size_t(0), std::size_t(1), std::size_t(4097), std::size_t(300001)}) {
      CAPTURE(n);
      auto f = shared_buffer_of<float>(comm.rank(), n);
      auto d = shared_buffer_of<double>(comm.rank(), n);
      auto rf = comm.iallreduce_sum_in_place(std::span<float>(*f), f);
      auto rd = comm.iallreduce_sum_in_place(std::span<double>(*d), d);
      rd.wait();
      rf.wait();
      bool ok = true;
      for (std::size_t i = 0; i < n; ++i)
        ok = ok && (*f)[i] == sum_of<float>(comm.size(), i) && (*d)[i] == sum_of<double>(comm.size(), i);
      CHECK(ok);
    }
  }
}

TEST_CASE("a direct sum and a staged average are the same collective: ranks may mix them") {
  mpi_communicator comm(MPI_COMM_WORLD, test_options(dasgd::comm::mpi_progress::thread));
  constexpr std::size_t n = 1000;
  auto data = shared_buffer_of<double>(comm.rank(), n);
  if (comm.rank() == 0) {
    auto r = comm.iallreduce_sum_in_place(std::span<double>(*data), data, {.sequence = 3});
    r.wait();
    for (auto& x : *data) x /= comm.size();
  } else {
    auto r = comm.iallreduce_average(std::span<const double>(*data), std::span<double>(*data), {.sequence = 3});
    r.wait();
  }
  bool ok = true;
  for (std::size_t i = 0; i < n; ++i) ok = ok && (*data)[i] == sum_of<double>(comm.size(), i) / comm.size();
  CHECK(ok);
}

TEST_CASE("a direct collective keeps its memory alive past a dropped request, then lets go") {
  if (world_size() < 2) return;
  for (auto mode : all_progress_modes) {
    CAPTURE(name_of(mode));
    mpi_communicator comm(MPI_COMM_WORLD, test_options(mode));
    const bool late = comm.rank() == 0;
    std::weak_ptr<std::vector<double>> watch;
    {
      auto data = shared_buffer_of<double>(comm.rank(), 70000);
      watch = data;
      if (late) std::this_thread::sleep_for(300ms);
      auto req = comm.iallreduce_sum_in_place(std::span<double>(*data), data);
      // Dropped together with the caller's share while (on the early ranks)
      // the collective is certainly still in flight: MPI keeps writing into
      // memory the engine now owns alone.
      if (!late) CHECK_FALSE(req.test());
    }
    if (!late) CHECK_FALSE(watch.expired());
    // The next collective is ordered after the dropped one.
    auto next = shared_buffer_of<float>(comm.rank(), 10);
    auto r = comm.iallreduce_sum_in_place(std::span<float>(*next), next);
    r.wait();
    CHECK((*next)[3] == sum_of<float>(comm.size(), 3));
    const auto deadline = std::chrono::steady_clock::now() + 5s;
    while (!watch.expired() && std::chrono::steady_clock::now() < deadline) {
      comm.progress();  // test mode: the dropped collective may finish after the next one
      std::this_thread::sleep_for(1ms);
    }
    CHECK(watch.expired());
  }
}

TEST_CASE("ibroadcast_in_place copies the root's memory to every rank") {
  for (auto mode : all_progress_modes) {
    CAPTURE(name_of(mode));
    mpi_communicator comm(MPI_COMM_WORLD, test_options(mode));
    const int root = comm.size() - 1;
    auto d = shared_buffer_of<double>(comm.rank(), 1001);
    dasgd::collective_signature sig{.purpose = dasgd::collective_purpose::broadcast, .sequence = 2};
    auto a = comm.ibroadcast_in_place(std::span<double>(*d), root, d, sig);
    a.wait();
    CHECK(*d == *shared_buffer_of<double>(root, 1001));
    CHECK_THROWS_AS(comm.ibroadcast_in_place(std::span<double>(*d), comm.size(), d, sig), dasgd::config_error);
  }
}

TEST_CASE("direct collectives are checked across ranks like the others") {
  mpi_communicator comm(MPI_COMM_WORLD, test_options(dasgd::comm::mpi_progress::thread));
  if (comm.size() < 2) return;
  auto data = shared_buffer_of<float>(comm.rank(), comm.rank() == 0 ? 10 : 12);
  auto r = comm.iallreduce_sum_in_place(std::span<float>(*data), data);
  const std::string msg = message_of<dasgd::size_mismatch_error>([&] { r.wait(); });
  CHECK(contains(msg, "10"));
  CHECK(contains(msg, "12"));
  // Nothing moved: the buffers are untouched and the communicator usable.
  CHECK((*data)[0] == value_of<float>(comm.rank(), 0));
  auto ok = shared_buffer_of<float>(comm.rank(), 5);
  auto r2 = comm.iallreduce_sum_in_place(std::span<float>(*ok), ok);
  r2.wait();
  CHECK((*ok)[4] == sum_of<float>(comm.size(), 4));
}

TEST_CASE("the CUDA-support probe reaches the MPI's answer") {
  const auto s = dasgd::comm::detail::query_mpi_cuda_support();
  CAPTURE(dasgd::comm::to_string(s));
#if defined(OPEN_MPI) && OPEN_MPI && defined(OMPI_HAVE_MPI_EXT_CUDA) && OMPI_HAVE_MPI_EXT_CUDA
  // OpenMPI can always be asked; Debian's is built without CUDA.
  CHECK(s != dasgd::comm::mpi_cuda_support::unknown);
#if !MPIX_CUDA_AWARE_SUPPORT
  CHECK(s == dasgd::comm::mpi_cuda_support::no);
#endif
#else
  CHECK(s == dasgd::comm::mpi_cuda_support::unknown);
#endif
}
