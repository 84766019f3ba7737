// Hierarchical averaging over MPI ranks: two groups ("nodes" faked by a
// colour) of n/2 ranks each, the trainer against the float64 two-level
// reference (tests/support/hierarchical_reference.hpp) for both ways of
// averaging across groups and both progress modes; grouping by the
// shared-memory node; layouts that cannot work and a scope mismatch, as
// errors on every rank concerned.
#include "mpi_test_support.hpp"
#include "support/hierarchical_reference.hpp"

#include <dasgd/comm/hierarchical_mpi.hpp>
#include <dasgd/dasgd.hpp>
#include <dasgd/policy/hierarchical.hpp>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <string>
#include <vector>

using dasgd::test::all_progress_modes;
using dasgd::test::contains;
using dasgd::test::name_of;
using dasgd::test::test_options;
using dasgd::test::world_rank;
using dasgd::test::world_size;
namespace h = dasgd::test::hierarchical;

namespace {

template <class T>
h::vec train(dasgd::comm::mpi_hierarchical_communicator c, int steps, const h::two_level& s) {
  const int r = c.rank();
  const h::vec w0 = h::initial();
  std::vector<T> w(w0.begin(), w0.end()), g(h::dim);
  dasgd::trainer_options quiet;
  quiet.warning = [](const std::string&) {};  // the average left in flight at the end
  dasgd::delayed_averager tr(
      dasgd::make_tensor_list(w), std::move(c),
      dasgd::policy::hierarchical{.tau = s.tau, .delay = s.delay, .outer_every = s.outer_every,
                                  .outer_delay = s.outer_delay},
      dasgd::optim::sgd{.lr = s.lr, .momentum = s.momentum}, dasgd::merge::mix{s.p},
      dasgd::host_backend{}, quiet);
  for (int k = 0; k < steps; ++k) {
    const h::vec gd = h::gradient(r, k, h::vec(w.begin(), w.end()));
    for (std::size_t j = 0; j < h::dim; ++j) g[j] = static_cast<T>(gd[j]);
    tr.step(std::span<const T>(g));
  }
  return {w.begin(), w.end()};
}

double error_of(const h::vec& got, const h::vec& want) {
  double e = 0;
  for (std::size_t j = 0; j < got.size(); ++j)
    e = std::max(e, std::abs(got[j] - want[j]) / std::max(std::abs(want[j]), 1e-3));
  return e;
}

/// Two groups of consecutive ranks (one "node" each).
std::vector<int> two_groups() {
  const int n = world_size();
  std::vector<int> g(static_cast<std::size_t>(n));
  for (int r = 0; r < n; ++r) g[static_cast<std::size_t>(r)] = r / std::max(1, n / 2);
  return g;
}

}  // namespace

TEST_CASE("two groups of MPI ranks train like the float64 two-level reference") {
  const auto groups = two_groups();
  const int me = world_rank();
  const h::two_level s{.tau = 3, .delay = 1, .outer_every = 2, .outer_delay = 2};
  const auto expect = h::simulate(groups, 25, s);
  for (const auto progress : all_progress_modes) {
    for (const dasgd::comm::hierarchical_options outer :
         {dasgd::comm::hierarchical_options{dasgd::comm::outer_average::chained, dasgd::comm::chain_progress::helper_thread},
          dasgd::comm::hierarchical_options{dasgd::comm::outer_average::chained, dasgd::comm::chain_progress::caller},
          dasgd::comm::hierarchical_options{dasgd::comm::outer_average::world}}) {
      CAPTURE(name_of(progress));
      CAPTURE(std::string(dasgd::comm::to_string(outer.outer)));
      CAPTURE(std::string(dasgd::comm::to_string(outer.progress)));
      auto make = [&] {
        return dasgd::comm::mpi_hierarchy_by_colour(groups[static_cast<std::size_t>(me)],
                                                    MPI_COMM_WORLD, test_options(progress), outer);
      };
      {
        auto c = make();
        CHECK(c.groups() == (world_size() >= 2 ? 2 : 1));
        CHECK(c.group() == groups[static_cast<std::size_t>(me)]);
        CHECK(c.is_leader() == (c.group_rank() == 0));
      }
      CHECK(error_of(train<double>(make(), 25, s), expect[static_cast<std::size_t>(me)]) < 1e-12);
      CHECK(error_of(train<float>(make(), 25, s), expect[static_cast<std::size_t>(me)]) < 1e-4);
    }
  }
}

TEST_CASE("grouping by shared-memory node: one machine is one group") {
  auto c = dasgd::comm::mpi_hierarchy_by_node(MPI_COMM_WORLD, test_options(dasgd::comm::mpi_progress::thread));
  CHECK(c.groups() == 1);
  CHECK(c.group_size() == world_size());
  const std::vector<int> groups(static_cast<std::size_t>(world_size()), 0);
  const h::two_level s{.tau = 2, .delay = 1, .outer_every = 3, .outer_delay = 1};
  CHECK(error_of(train<double>(std::move(c), 20, s),
                 h::simulate(groups, 20, s)[static_cast<std::size_t>(world_rank())]) < 1e-12);
}

TEST_CASE("groups of different sizes are refused on every rank; a negative colour too") {
  const int me = world_rank(), n = world_size();
  // Rank n-1 alone in the second group (n = 2: groups of 1 and 1 are fine).
  const int colour = me == n - 1 ? 1 : 0;
  const std::string m = dasgd::test::message_of<dasgd::config_error>(
      [&] { (void)dasgd::comm::mpi_hierarchy_by_colour(colour); });
  if (n > 2) {
    CAPTURE(m);
    CHECK(contains(m, "group 1 has 1 ranks (world ranks " + std::to_string(n - 1) + ")"));
  } else {
    CHECK(m.empty());
  }
  // With one allreduce across groups, unequal groups are fine.
  CHECK(dasgd::test::message_of<dasgd::config_error>([&] {
          (void)dasgd::comm::mpi_hierarchy_by_colour(colour, MPI_COMM_WORLD, {},
                                                     {dasgd::comm::outer_average::world});
        }).empty());
  CHECK(contains(dasgd::test::message_of<dasgd::config_error>(
                     [&] { (void)dasgd::comm::mpi_hierarchy_by_colour(-1); }),
                 "colour must be >= 0, got -1"));
}

TEST_CASE("a group round meeting an across-groups round fails the whole group") {
  if (world_size() < 4) return;  // needs a group of two
  auto c = dasgd::comm::mpi_hierarchy_by_colour(two_groups()[static_cast<std::size_t>(world_rank())],
                                                MPI_COMM_WORLD, test_options(dasgd::comm::mpi_progress::thread));
  std::vector<float> x(6, 1.0f), y(6);
  dasgd::collective_signature sig;
  // In group 0 the second member thinks this round is across groups.
  sig.scope = (c.group() == 0 && c.group_rank() == 1) ? dasgd::comm::world_scope
                                                      : dasgd::comm::group_scope;
  const std::string m = dasgd::test::message_of<dasgd::comm_error>([&] {
    auto q = c.iallreduce_average(std::span<const float>(x), std::span<float>(y), sig);
    q.wait();
  });
  CAPTURE(m);
  if (c.group() == 0) {
    CHECK(contains(m, "in scope 1"));
    CHECK(contains(m, "group 0"));
  } else {
    CHECK(m.empty());
  }
}

TEST_CASE("without a thread, progress() alone carries an across-groups average to its end") {
  // Test-mode sub-communicators and chain_progress::caller: nothing runs
  // between the caller's calls. progress() (what a trainer calls between
  // chunks of its work) must take the chain through its three stages, so
  // that test() finds it done; collectives_in_flight() counts the chain
  // until then.
  const auto groups = two_groups();
  auto c = dasgd::comm::mpi_hierarchy_by_colour(
      groups[static_cast<std::size_t>(world_rank())], MPI_COMM_WORLD, test_options(dasgd::comm::mpi_progress::test),
      {dasgd::comm::outer_average::chained, dasgd::comm::chain_progress::caller});
  std::vector<double> x(1000, static_cast<double>(world_rank())), y(1000, -1.0);
  dasgd::collective_signature sig;
  sig.scope = dasgd::comm::world_scope;
  auto q = c.iallreduce_average(std::span<const double>(x), std::span<double>(y), sig);
  CHECK(c.collectives_in_flight() >= 1);
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(20);
  while (c.collectives_in_flight() != 0 && std::chrono::steady_clock::now() < deadline) c.progress();
  CHECK(c.collectives_in_flight() == 0);
  CHECK(q.test());
  const double mean = (world_size() - 1) / 2.0;
  CHECK(y.front() == doctest::Approx(mean));
  CHECK(y.back() == doctest::Approx(mean));
}
