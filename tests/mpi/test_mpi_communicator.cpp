// mpi_communicator on real ranks: results, agreement with the in-process
// communicator, error paths (local and cross-rank size mismatches, wrong
// collective order, timeouts), dropped requests and asynchronous progress.
#include "mpi_test_support.hpp"

#include <dasgd/comm/inproc.hpp>
#include <dasgd/comm/mpi.hpp>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <limits>
#include <memory>
#include <span>
#include <thread>
#include <vector>

using namespace std::chrono_literals;
using dasgd::comm::mpi_communicator;
using dasgd::comm::mpi_progress;
using dasgd::comm::mpi_request;
using dasgd::test::all_progress_modes;
using dasgd::test::contains;
using dasgd::test::message_of;
using dasgd::test::name_of;
using dasgd::test::test_options;
using dasgd::test::world_rank;
using dasgd::test::world_size;

namespace {

/// Rank r's i-th element: small integers, so float sums are exact and the
/// only rounding is the final scale by 1/size.
template <class T>
T value_of(int rank, std::size_t i) {
  return static_cast<T>(static_cast<int>((i * 7 + static_cast<std::size_t>(rank) * 13) % 29) - 14 +
                        rank);
}

template <class T>
std::vector<T> buffer_of(int rank, std::size_t n) {
  std::vector<T> v(n);
  for (std::size_t i = 0; i < n; ++i) v[i] = value_of<T>(rank, i);
  return v;
}

/// Largest relative error of `got` against the mean computed here in double.
template <class T>
double max_error_vs_mean(const std::vector<T>& got, int size) {
  double worst = 0.0;
  for (std::size_t i = 0; i < got.size(); ++i) {
    double sum = 0.0;
    for (int r = 0; r < size; ++r) sum += value_of<double>(r, i);
    const double want = sum / size;
    worst = std::max(worst, std::abs(double(got[i]) - want) / std::max(std::abs(want), 1.0));
  }
  return worst;
}

template <class T>
void check_average(mpi_communicator& comm, std::size_t n) {
  CAPTURE(n);
  const auto send = buffer_of<T>(comm.rank(), n);
  std::vector<T> recv(n, T(-999));
  auto req = comm.iallreduce_average(std::span<const T>(send), std::span<T>(recv));
  req.wait();
  CHECK(req.test());
  // One rounding of the scale by 1/size (exact for 2 and 4 ranks).
  CHECK(max_error_vs_mean(recv, comm.size()) <= 2.0 * std::numeric_limits<T>::epsilon());
}

}  // namespace

TEST_CASE("the average equals the mean of every rank's buffer") {
  for (auto mode : all_progress_modes) {
    CAPTURE(name_of(mode));
    mpi_communicator comm(MPI_COMM_WORLD, test_options(mode));
    CHECK(comm.size() == world_size());
    CHECK(comm.rank() == world_rank());
    for (std::size_t n : {std::size_t(0), std::size_t(1), std::size_t(1000), std::size_t(1 << 18) + 3}) {
      check_average<float>(comm, n);
      check_average<double>(comm, n);
    }
    CHECK(comm.collectives_in_flight() == 0);
  }
}

TEST_CASE("progress() alone completes a test-mode average; it is a no-op with the progress thread") {
  mpi_communicator comm(MPI_COMM_WORLD, test_options(mpi_progress::test));
  std::vector<float> send(4096, static_cast<float>(world_rank())), recv(4096, -1.0f);
  auto req = comm.iallreduce_average(std::span<const float>(send), std::span<float>(recv));
  const auto deadline = std::chrono::steady_clock::now() + 20s;
  bool advanced = false;
  while (comm.collectives_in_flight() != 0 && std::chrono::steady_clock::now() < deadline) {
    advanced = comm.progress() || advanced;
    std::this_thread::sleep_for(50us);
  }
  CHECK(advanced);
  CHECK(comm.collectives_in_flight() == 0);
  CHECK(req.test());
  CHECK(recv[4095] == static_cast<float>(world_size() - 1) / 2.0f);
  mpi_communicator threaded(MPI_COMM_WORLD, test_options(mpi_progress::thread));
  CHECK_FALSE(threaded.progress());
}

TEST_CASE("send may alias recv") {
  for (auto mode : all_progress_modes) {
    CAPTURE(name_of(mode));
    mpi_communicator comm(MPI_COMM_WORLD, test_options(mode));
    auto buf = buffer_of<double>(comm.rank(), 4097);
    comm.iallreduce_average(std::span<const double>(buf), std::span<double>(buf)).wait();
    CHECK(max_error_vs_mean(buf, comm.size()) <= 2.0 * std::numeric_limits<double>::epsilon());
  }
}

TEST_CASE("several averages in flight complete in any wait order") {
  for (auto mode : all_progress_modes) {
    CAPTURE(name_of(mode));
    mpi_communicator comm(MPI_COMM_WORLD, test_options(mode));
    const std::size_t sizes[] = {100000, 17, 5000};
    std::vector<std::vector<float>> send, recv;
    std::vector<mpi_request> reqs;
    for (auto n : sizes) {
      send.push_back(buffer_of<float>(comm.rank(), n));
      recv.emplace_back(n, -1.0f);
    }
    for (std::size_t k = 0; k < 3; ++k)
      reqs.push_back(comm.iallreduce_average(std::span<const float>(send[k]), std::span<float>(recv[k])));
    for (std::size_t k = 3; k-- > 0;) reqs[k].wait();
    for (auto& r : recv) CHECK(max_error_vs_mean(r, comm.size()) <= 2.0 * std::numeric_limits<float>::epsilon());
  }
}

TEST_CASE("the MPI result matches the in-process communicator's for the same buffers") {
  const int n = world_size(), me = world_rank();
  const std::size_t count = 12345;
  for (auto mode : all_progress_modes) {
    CAPTURE(name_of(mode));
    mpi_communicator comm(MPI_COMM_WORLD, test_options(mode));
    // Non-integer values, so that the two summation orders really differ.
    auto make = [&](int r) {
      std::vector<float> v(count);
      for (std::size_t i = 0; i < count; ++i)
        v[i] = static_cast<float>(std::sin(0.37 * double(i) + 1.1 * r) * (1.0 + 0.01 * r));
      return v;
    };
    const auto mine = make(me);
    std::vector<float> via_mpi(count);
    comm.iallreduce_average(std::span<const float>(mine), std::span<float>(via_mpi)).wait();

    std::vector<std::vector<float>> via_inproc(static_cast<std::size_t>(n), std::vector<float>(count));
    dasgd::comm::inproc_group group(n);
    dasgd::comm::run_workers(group, [&](dasgd::comm::inproc_communicator c) {
      const auto s = make(c.rank());
      c.iallreduce_average(std::span<const float>(s), std::span<float>(via_inproc[static_cast<std::size_t>(c.rank())]))
          .wait();
    });
    // Relative to max(|mean|, 1): the inputs are O(1) and some means cancel
    // to near zero, where float sums in another order differ by ~1e-7
    // absolute (in-process sums in double, MPI in float).
    double worst = 0.0;
    const auto& ref = via_inproc[static_cast<std::size_t>(me)];
    for (std::size_t i = 0; i < count; ++i)
      worst = std::max(worst, std::abs(double(via_mpi[i]) - double(ref[i])) / std::max(std::abs(double(ref[i])), 1.0));
    CHECK(worst <= 1e-6);
  }
}

TEST_CASE("allgather returns every rank's value in rank order") {
  for (auto mode : all_progress_modes) {
    CAPTURE(name_of(mode));
    mpi_communicator comm(MPI_COMM_WORLD, test_options(mode));
    const auto got = comm.allgather(1000u + 7u * static_cast<std::uint64_t>(comm.rank()));
    REQUIRE(got.size() == static_cast<std::size_t>(comm.size()));
    for (std::size_t r = 0; r < got.size(); ++r) CHECK(got[r] == 1000u + 7u * r);
  }
}

TEST_CASE("a communicator over a split of MPI_COMM_WORLD averages within its group") {
  const int me = world_rank();
  MPI_Comm half = MPI_COMM_NULL;
  REQUIRE(MPI_Comm_split(MPI_COMM_WORLD, me % 2, me, &half) == MPI_SUCCESS);
  {
    mpi_communicator comm(half, test_options(mpi_progress::thread));
    int cmp = MPI_UNEQUAL;
    MPI_Comm_compare(comm.native_handle(), half, &cmp);
    CHECK(cmp == MPI_CONGRUENT);  // a duplicate, not the base itself
    std::vector<double> send{double(me)}, recv{-1.0};
    comm.iallreduce_average(std::span<const double>(send), std::span<double>(recv)).wait();
    double want = 0.0;
    int members = 0;
    for (int r = me % 2; r < world_size(); r += 2, ++members) want += r;
    CHECK(comm.size() == members);
    CHECK(recv[0] == doctest::Approx(want / members).epsilon(1e-15));
  }
  MPI_Comm_free(&half);
}

TEST_CASE("launched_by_mpiexec sees mpiexec") { CHECK(dasgd::comm::launched_by_mpiexec()); }

TEST_CASE("local send/recv size mismatch throws before anything is sent") {
  mpi_communicator comm(MPI_COMM_WORLD, test_options(mpi_progress::thread));
  std::vector<float> send(10), recv(11);
  const auto msg = message_of<dasgd::size_mismatch_error>(
      [&] { comm.iallreduce_average(std::span<const float>(send), std::span<float>(recv)); });
  CHECK(contains(msg, "send has 10 elements but recv has 11"));
  CHECK(comm.collectives_in_flight() == 0);
}

TEST_CASE("sizes that differ across ranks fail every rank, naming both sizes") {
  if (world_size() < 2) return;
  for (auto mode : all_progress_modes) {
    CAPTURE(name_of(mode));
    mpi_communicator comm(MPI_COMM_WORLD, test_options(mode));
    const bool last = comm.rank() == comm.size() - 1;
    const std::size_t n = last ? 2000 : 1000;
    std::vector<float> send(n, 1.0f), recv(n, -5.0f);
    auto req = comm.iallreduce_average(std::span<const float>(send), std::span<float>(recv));
    const auto msg = message_of<dasgd::size_mismatch_error>([&] { req.wait(); });
    CHECK(contains(msg, "sizes or element types differ across ranks"));
    CHECK(contains(msg, "1000 float elements"));
    CHECK(contains(msg, "2000 float elements"));
    CHECK(recv[0] == -5.0f);  // nothing written
    // The mismatch was caught before the data collective on every rank, so
    // the communicator is still in step and usable.
    check_average<float>(comm, 333);
  }
}

TEST_CASE("element types that differ across ranks fail every rank, naming both types") {
  if (world_size() < 2) return;
  mpi_communicator comm(MPI_COMM_WORLD, test_options(mpi_progress::test));
  std::vector<float> fs(64, 1.0f), fr(64);
  std::vector<double> ds(64, 1.0), dr(64);
  std::string msg;
  if (comm.rank() == 0) {
    auto req = comm.iallreduce_average(std::span<const double>(ds), std::span<double>(dr));
    msg = message_of<dasgd::size_mismatch_error>([&] { req.wait(); });
  } else {
    auto req = comm.iallreduce_average(std::span<const float>(fs), std::span<float>(fr));
    msg = message_of<dasgd::size_mismatch_error>([&] { req.wait(); });
  }
  CHECK(contains(msg, "64 double elements"));
  CHECK(contains(msg, "64 float elements"));
  check_average<double>(comm, 5);
}

TEST_CASE("collectives issued in a different order fail every rank instead of crashing") {
  if (world_size() < 2) return;
  for (auto mode : all_progress_modes) {
    CAPTURE(name_of(mode));
    mpi_communicator comm(MPI_COMM_WORLD, test_options(mode));
    std::string msg;
    if (comm.rank() == 0) {
      msg = message_of<dasgd::comm_error>([&] { comm.allgather(42); });
    } else {
      std::vector<float> send(100, 1.0f), recv(100);
      auto req = comm.iallreduce_average(std::span<const float>(send), std::span<float>(recv));
      msg = message_of<dasgd::comm_error>([&] { req.wait(); });
    }
    CHECK(contains(msg, "issued an allgather"));
    CHECK(contains(msg, "issued an average"));
    check_average<float>(comm, 10);
  }
}

TEST_CASE("a rank that joins late makes the others' wait time out; the collective then completes") {
  if (world_size() < 2) return;
  for (auto mode : all_progress_modes) {
    CAPTURE(name_of(mode));
    const auto timeout = 300ms;
    mpi_communicator comm(MPI_COMM_WORLD, test_options(mode, timeout));
    const bool late = comm.rank() == comm.size() - 1;
    const auto send = buffer_of<float>(comm.rank(), 50000);
    std::vector<float> recv(send.size());
    if (late) std::this_thread::sleep_for(1500ms);
    auto req = comm.iallreduce_average(std::span<const float>(send), std::span<float>(recv));
    if (!late) {
      const auto t0 = std::chrono::steady_clock::now();
      const auto msg = message_of<dasgd::timeout_error>([&] { req.wait(); });
      const auto waited = std::chrono::steady_clock::now() - t0;
      CHECK(contains(msg, "did not complete within the timeout of 300 ms"));
      CHECK(contains(msg, "MPI average #0 of 50000 float elements"));
      CHECK(contains(msg, "MPI state may be unusable"));
      CHECK(waited >= timeout);
      CHECK(waited < 1200ms);  // it was the timeout, not the late rank, that ended the wait
    }
    // The request stays valid: once the late rank has joined it completes.
    dasgd::test::wait_patiently(req, 10s);
    CHECK(max_error_vs_mean(recv, comm.size()) <= 2.0 * std::numeric_limits<float>::epsilon());
  }
}

TEST_CASE("allgather honours the timeout too") {
  if (world_size() < 2) return;
  mpi_communicator comm(MPI_COMM_WORLD, test_options(mpi_progress::thread, 250ms));
  const bool late = comm.rank() == 0;
  if (late) {
    std::this_thread::sleep_for(1000ms);
    CHECK(comm.allgather(1).size() == static_cast<std::size_t>(comm.size()));
  } else {
    const auto msg = message_of<dasgd::timeout_error>([&] { comm.allgather(1); });
    CHECK(contains(msg, "MPI allgather #0"));
  }
  // The late rank's allgather matched the timed-out ones, which complete in
  // the background once it has joined; the communicator is usable again.
  MPI_Barrier(MPI_COMM_WORLD);
  const auto again = comm.allgather(2 + static_cast<std::uint64_t>(comm.rank()));
  CHECK(again.back() == 1 + static_cast<std::uint64_t>(comm.size()));
}

TEST_CASE("a dropped request never writes its receive buffer, and its collective still completes") {
  if (world_size() < 2) return;
  for (auto mode : all_progress_modes) {
    CAPTURE(name_of(mode));
    mpi_communicator comm(MPI_COMM_WORLD, test_options(mode));
    const bool late = comm.rank() == 0;
    auto send = std::make_unique<std::vector<double>>(buffer_of<double>(comm.rank(), 70000));
    std::vector<double> recv(70000, 123.0);
    if (late) std::this_thread::sleep_for(400ms);
    {
      auto req = comm.iallreduce_average(std::span<const double>(*send), std::span<double>(recv));
    }  // dropped while (on the early ranks) certainly in flight
    send.reset();  // the send buffer may go away too: MPI reads a staged copy
    // The next average is ordered after the dropped one; by the time it
    // completes, the dropped one is done on this rank as well.
    check_average<double>(comm, 1000);
    const auto deadline = std::chrono::steady_clock::now() + 5s;
    while (comm.collectives_in_flight() != 0 && std::chrono::steady_clock::now() < deadline)
      std::this_thread::sleep_for(1ms);
    CHECK(comm.collectives_in_flight() == 0);
    // (The late rank's own average may legitimately finish before the drop.)
    if (!late) CHECK(std::all_of(recv.begin(), recv.end(), [](double v) { return v == 123.0; }));
  }
}

TEST_CASE("destroying a communicator with an average in flight waits for it") {
  for (auto mode : all_progress_modes) {
    CAPTURE(name_of(mode));
    auto send = buffer_of<float>(world_rank(), 1 << 16);
    std::vector<float> recv(send.size());
    const auto t0 = std::chrono::steady_clock::now();
    {
      mpi_communicator comm(MPI_COMM_WORLD, test_options(mode));
      auto req = comm.iallreduce_average(std::span<const float>(send), std::span<float>(recv));
      mpi_communicator moved(std::move(comm));
      CHECK_THROWS_AS(comm.allgather(1), dasgd::state_error);
    }
    CHECK(std::chrono::steady_clock::now() - t0 < 10s);
  }
}

TEST_CASE("requests are movable; a moved-from request refuses to be used") {
  mpi_communicator comm(MPI_COMM_WORLD, test_options(mpi_progress::thread));
  std::vector<float> a(8, 1.0f), b(8), c(8, 2.0f), d(8);
  auto r1 = comm.iallreduce_average(std::span<const float>(a), std::span<float>(b));
  auto r2 = comm.iallreduce_average(std::span<const float>(c), std::span<float>(d));
  r2.wait();
  r1 = std::move(r2);  // drops the first average's request: b is not written after this point
  CHECK_THROWS_AS(r2.wait(), dasgd::state_error);
  CHECK(r1.test());
  CHECK(d[0] == 2.0f);
}

TEST_CASE("with the progress thread an average completes while every rank only sleeps") {
  mpi_communicator comm(MPI_COMM_WORLD, test_options(mpi_progress::thread));
  // 8 MB: far beyond the eager limit, so it needs progress calls to move.
  const auto send = buffer_of<float>(comm.rank(), std::size_t(1) << 21);
  std::vector<float> recv(send.size());
  auto req = comm.iallreduce_average(std::span<const float>(send), std::span<float>(recv));
  bool done = false;
  const auto deadline = std::chrono::steady_clock::now() + 10s;
  // test() in thread mode only reads a flag; no MPI call is made here.
  while (!(done = req.test()) && std::chrono::steady_clock::now() < deadline)
    std::this_thread::sleep_for(5ms);
  CHECK(done);
  CHECK(max_error_vs_mean(recv, comm.size()) <= 2.0 * std::numeric_limits<float>::epsilon());
}

TEST_CASE("ibroadcast copies the root's buffer to every rank") {
  for (auto mode : all_progress_modes) {
    CAPTURE(name_of(mode));
    mpi_communicator comm(MPI_COMM_WORLD, test_options(mode));
    for (int root = 0; root < comm.size(); ++root) {
      for (std::size_t n : {std::size_t(0), std::size_t(1), std::size_t(1000003)}) {
        const auto send = buffer_of<double>(comm.rank(), n);
        std::vector<double> recv(n, -1.0);
        dasgd::collective_signature sig{.purpose = dasgd::collective_purpose::broadcast, .sequence = 7};
        auto req = comm.ibroadcast(std::span<const double>(send), std::span<double>(recv), root, sig);
        req.wait();
        CHECK(recv == buffer_of<double>(root, n));
      }
    }
  }
}

TEST_CASE("signatures: purpose, sequence and root must agree on every rank; proposals combine") {
  if (world_size() < 2) return;
  for (auto mode : all_progress_modes) {
    CAPTURE(name_of(mode));
    mpi_communicator comm(MPI_COMM_WORLD, test_options(mode));
    std::vector<float> s(64, 1.0f), r(64);
    using dasgd::collective_purpose;
    // Proposals and status words combine.
    dasgd::collective_signature ok{.purpose = collective_purpose::step_average,
                                   .sequence = 3,
                                   .proposal = 10 + comm.rank(),
                                   .status = comm.rank() == 1 ? 1u : 0u,
                                   .status_detail = 5};
    auto q = comm.iallreduce_average(std::span<const float>(s), std::span<float>(r), ok);
    q.wait();
    CHECK(q.agreement().min_proposal == 10);
    CHECK(q.agreement().max_proposal == 10 + comm.size() - 1);
    CHECK(q.agreement().status_rank == 1);
    CHECK(q.agreement().status_detail == 5);
    // One rank synchronizes while the others step: an error everywhere.
    dasgd::collective_signature mine{
        .purpose = comm.rank() == 1 ? collective_purpose::synchronize : collective_purpose::step_average,
        .sequence = 4};
    auto m = comm.iallreduce_average(std::span<const float>(s), std::span<float>(r), mine);
    const auto msg = message_of<dasgd::comm_error>([&] { m.wait(); });
    CAPTURE(msg);
    CHECK(contains(msg, "collectives differ across ranks"));
    CHECK(contains(msg, "synchronize #4"));
    CHECK(contains(msg, "step average #4"));
    // A sequence number one ahead.
    dasgd::collective_signature ahead{.sequence = comm.rank() == 0 ? 9u : 8u};
    auto a = comm.iallreduce_average(std::span<const float>(s), std::span<float>(r), ahead);
    CHECK(contains(message_of<dasgd::comm_error>([&] { a.wait(); }), "#9"));
    // Different roots.
    auto b = comm.ibroadcast(std::span<const float>(s), std::span<float>(r), comm.rank() == 0 ? 1 : 0,
                             {.purpose = collective_purpose::broadcast});
    CHECK(contains(message_of<dasgd::comm_error>([&] { b.wait(); }), "from root"));
    // The communicator is still usable: mismatches are detected before any
    // data moves.
    check_average<float>(comm, 100);
  }
}

TEST_CASE("mpi_environment leaves MPI_COMM_WORLD's error handler alone") {
  // Before: it switched the world communicator to MPI_ERRORS_RETURN, which
  // changed the error handling of the user's own MPI calls.
  MPI_Errhandler h = MPI_ERRHANDLER_NULL;
  REQUIRE(MPI_Comm_get_errhandler(MPI_COMM_WORLD, &h) == MPI_SUCCESS);
  CHECK(h == MPI_ERRORS_ARE_FATAL);
  if (h != MPI_ERRHANDLER_NULL) MPI_Errhandler_free(&h);
  mpi_communicator comm;  // its own duplicate returns errors
  MPI_Errhandler mine = MPI_ERRHANDLER_NULL;
  REQUIRE(MPI_Comm_get_errhandler(comm.native_handle(), &mine) == MPI_SUCCESS);
  CHECK(mine == MPI_ERRORS_RETURN);
  if (mine != MPI_ERRHANDLER_NULL) MPI_Errhandler_free(&mine);
}
