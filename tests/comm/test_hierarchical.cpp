// Hierarchical averaging (comm/hierarchical.hpp, policy/hierarchical.hpp)
// with in-process groups: the trainer's weights against a naive float64
// simulation of two-level DaSGD (group rounds and across-groups rounds, each
// with its own delay), both ways of averaging across groups, checkpoints
// that resume mid-schedule, and the errors (bad layouts, a scope mismatch,
// a stalled group member).
#include <doctest/doctest.h>

#include <dasgd/comm/hierarchical_inproc.hpp>
#include <dasgd/dasgd.hpp>
#include <dasgd/policy/hierarchical.hpp>

#include "support/hierarchical_reference.hpp"

#include <atomic>
#include <chrono>
#include <cmath>
#include <cstddef>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

using namespace dasgd;
using namespace std::chrono_literals;

using namespace dasgd::test::hierarchical;

namespace {

double max_rel(const std::vector<vec>& a, const std::vector<vec>& b) {
  double e = 0;
  for (std::size_t i = 0; i < a.size(); ++i)
    for (std::size_t j = 0; j < a[i].size(); ++j)
      e = std::max(e, std::abs(a[i][j] - b[i][j]) / std::max(std::abs(b[i][j]), 1e-3));
  return e;
}

/// Every way of averaging across groups: the chain on the helper thread,
/// the chain driven by the caller's test()/wait(), one world allreduce.
const std::vector<comm::hierarchical_options> all_outer = {
    {comm::outer_average::chained, comm::chain_progress::helper_thread},
    {comm::outer_average::chained, comm::chain_progress::caller},
    {comm::outer_average::world, comm::chain_progress::helper_thread},
};

std::string name_of(const comm::hierarchical_options& h) {
  return std::string(comm::to_string(h.outer)) + "/" + comm::to_string(h.progress);
}

policy::hierarchical to_policy(const two_level& s) {
  return {.tau = s.tau, .delay = s.delay, .outer_every = s.outer_every, .outer_delay = s.outer_delay};
}

/// The library: one trainer per thread of an inproc_hierarchy.
template <class T>
std::vector<vec> train(const std::vector<int>& groups, int steps, const two_level& s,
                       comm::hierarchical_options h = {}) {
  comm::inproc_hierarchy hier(groups, {}, h);
  std::vector<vec> out(groups.size());
  comm::run_workers(hier, [&](comm::inproc_hierarchy::communicator_type c) {
    const int r = c.rank();
    const vec w0 = initial();
    std::vector<T> w(w0.begin(), w0.end()), g(dim);
    trainer_options quiet;
    quiet.warning = [](const std::string&) {};  // the average left in flight at the end
    delayed_averager tr(make_tensor_list(w), std::move(c), to_policy(s),
                        optim::sgd{.lr = s.lr, .momentum = s.momentum}, merge::mix{s.p},
                        host_backend{}, quiet);
    for (int k = 0; k < steps; ++k) {
      const vec gd = gradient(r, k, vec(w.begin(), w.end()));
      for (std::size_t j = 0; j < dim; ++j) g[j] = static_cast<T>(gd[j]);
      tr.step(std::span<const T>(g));
    }
    out[static_cast<std::size_t>(r)] = vec(w.begin(), w.end());
  });
  return out;
}

}  // namespace

TEST_CASE("the reference tells a two-level schedule from a flat one") {
  // Otherwise the comparisons below could not fail on a wrong level.
  const std::vector<int> groups = {0, 0, 1, 1};
  const two_level s;
  CHECK(max_rel(simulate(groups, 24, s), simulate(groups, 24, s, true)) > 1e-2);
}

TEST_CASE("hierarchical DaSGD equals the float64 two-level reference (in-process groups)") {
  const std::vector<std::vector<int>> layouts = {{0, 0, 1, 1}, {0, 1, 0, 1}, {5, 5, 5, 2, 2, 2}};
  const std::vector<two_level> schedules = {
      {.tau = 3, .delay = 1, .outer_every = 2, .outer_delay = 2},
      {.tau = 4, .delay = 0, .outer_every = 3, .outer_delay = 1},
      {.tau = 2, .delay = 1, .outer_every = 1, .outer_delay = 1},  // flat DaSGD
      {.tau = 1, .delay = 0, .outer_every = 4, .outer_delay = 0},
  };
  for (const auto& outer : all_outer) {
    for (const auto& groups : layouts) {
      for (const auto& s : schedules) {
        CAPTURE(name_of(outer));
        CAPTURE(groups.size());
        CAPTURE(groups[1]);
        CAPTURE(s.tau);
        CAPTURE(s.outer_every);
        const auto expect = simulate(groups, 25, s);
        CHECK(max_rel(train<double>(groups, 25, s, outer), expect) < 1e-12);
        // float storage: the averages and the momentum round at every step
        CHECK(max_rel(train<float>(groups, 25, s, outer), expect) < 1e-4);
      }
    }
  }
}

TEST_CASE("an across-groups average agrees like a flat one: proposals' range, the lowest world rank's status") {
  // Per rank (world order): proposal, status, detail. Chained averages
  // carry a group's figures over the leaders: when each group agrees
  // within itself and no rank has a status, in the data average's
  // signature alone; otherwise in the leaders' second, tiny average.
  struct scenario {
    std::vector<int> groups;
    std::vector<std::int64_t> proposal;
    std::vector<std::uint32_t> status, detail;
    collective_agreement expect;
  };
  const std::uint32_t bad = status_code::nonfinite_snapshot;
  const std::vector<scenario> scenarios = {
      {{0, 0, 1, 1}, {3, 3, 3, 3}, {0, 0, 0, 0}, {0, 0, 0, 0}, {3, 3, -1, 0, 0}},
      {{0, 0, 1, 1}, {1, 1, 4, 4}, {0, 0, 0, 0}, {0, 0, 0, 0}, {1, 4, -1, 0, 0}},       // groups differ
      {{0, 0, 1, 1}, {5, 2, 7, 7}, {0, 0, 0, 0}, {0, 0, 0, 0}, {2, 7, -1, 0, 0}},       // a group differs within
      {{0, 0, 1, 1}, {2, 2, 2, 2}, {0, 0, 0, bad}, {0, 0, 0, 9}, {2, 2, 3, bad, 9}},    // group 1's member 1
      {{0, 1, 0, 1}, {4, 0, 4, 0}, {0, bad, bad, 0}, {0, 5, 6, 0}, {0, 4, 1, bad, 5}},  // group 1 holds rank 1
      {{5, 5, 5, 2, 2, 2}, {1, 2, 3, 1, 1, 1}, {0, 0, 0, 0, 0, bad}, {0, 0, 0, 0, 0, 2}, {1, 3, 5, bad, 2}},
  };
  for (const auto& outer : all_outer) {
    for (const auto& sc : scenarios) {
      CAPTURE(name_of(outer));
      CAPTURE(sc.proposal[1]);
      CAPTURE(sc.groups[1]);
      comm::inproc_hierarchy hier(sc.groups, {}, outer);
      std::vector<collective_agreement> got(sc.groups.size());
      std::vector<double> out(sc.groups.size());
      comm::run_workers(hier, [&](comm::inproc_hierarchy::communicator_type c) {
        const auto r = static_cast<std::size_t>(c.rank());
        std::vector<double> send{static_cast<double>(r)}, recv(1);
        collective_signature sig;
        sig.scope = comm::world_scope;
        sig.proposal = sc.proposal[r];
        sig.status = sc.status[r];
        sig.status_detail = sc.detail[r];
        auto req = c.iallreduce_average(std::span<const double>(send), std::span<double>(recv), sig);
        while (!req.test()) std::this_thread::yield();  // test() alone finishes it (caller mode too)
        req.wait();
        got[r] = req.agreement();
        out[r] = recv[0];
      });
      const double mean = static_cast<double>(sc.groups.size() - 1) / 2.0;
      for (std::size_t r = 0; r < sc.groups.size(); ++r) {
        CAPTURE(r);
        CHECK(out[r] == doctest::Approx(mean));
        CHECK(got[r].min_proposal == sc.expect.min_proposal);
        CHECK(got[r].max_proposal == sc.expect.max_proposal);
        CHECK(got[r].status_rank == sc.expect.status_rank);
        CHECK(got[r].status == sc.expect.status);
        CHECK(got[r].status_detail == sc.expect.status_detail);
      }
    }
  }
}

TEST_CASE("a non-finite snapshot is reported on every rank in scope, naming its world rank") {
  // tau 2, delay 1, outer every 2nd round: round 0 (steps 0-1) averages in
  // the groups, round 1 (steps 2-3) across them; their merges are at steps
  // 2 and 4. The NaN ranks' gradient is NaN at the chosen round's last
  // step, so its snapshot is the first that holds a NaN; the guard skips
  // the merge of that round.
  struct scenario {
    bool across_groups;
    std::vector<int> nan_ranks;
    std::vector<int> expect_rank;  // per rank: nonfinite_rank at the round's merge step (-1: merged)
  };
  const std::vector<scenario> scenarios = {
      {false, {3}, {-1, -1, 3, 3}},  // a group round: only group 1 sees rank 3 (its member 1)
      {true, {3}, {3, 3, 3, 3}},     // across groups: the leaders carry rank 3 to group 0
      {true, {1, 3}, {1, 1, 1, 1}},  // the lowest rank, from group 0's member 1
  };
  for (const auto& outer : all_outer) {
    for (const auto& sc : scenarios) {
      CAPTURE(name_of(outer));
      CAPTURE(sc.across_groups);
      CAPTURE(sc.nan_ranks.size());
      comm::inproc_hierarchy hier({0, 0, 1, 1}, {}, outer);
      std::vector<int> seen(4, -2);
      comm::run_workers(hier, [&](comm::inproc_hierarchy::communicator_type c) {
        const int r = c.rank();
        std::vector<float> w(4, 1.0f), g(4, 0.1f);
        trainer_options o;
        o.nonfinite = nonfinite_guard::skip_merge;
        o.warning = [](const std::string&) {};
        delayed_averager tr(make_tensor_list(w), std::move(c),
                            policy::hierarchical{.tau = 2, .delay = 1, .outer_every = 2, .outer_delay = 1},
                            optim::sgd{.lr = 0.1}, merge::mix{}, host_backend{}, o);
        const int poisoned_step = sc.across_groups ? 3 : 1, merge_step = poisoned_step + 1;
        const bool poisons = std::find(sc.nan_ranks.begin(), sc.nan_ranks.end(), r) != sc.nan_ranks.end();
        for (int k = 0; k <= merge_step; ++k) {
          std::fill(g.begin(), g.end(), poisons && k == poisoned_step ? std::nanf("") : 0.1f);
          const step_report rep = tr.step(std::span<const float>(g));
          if (k < merge_step) CHECK(!rep.merge_skipped);
          if (k == merge_step) {
            CHECK(rep.merged != rep.merge_skipped);  // this step consumes the round's average
            seen[static_cast<std::size_t>(r)] = rep.merge_skipped ? rep.nonfinite_rank : -1;
          }
        }
      });
      for (int r = 0; r < 4; ++r) {
        CAPTURE(r);
        CHECK(seen[static_cast<std::size_t>(r)] == sc.expect_rank[static_cast<std::size_t>(r)]);
      }
    }
  }
}

TEST_CASE("groups of different sizes: world-level outer averages work, chained ones are refused") {
  const std::vector<int> groups = {0, 0, 0, 1};
  const two_level s;
  CHECK(max_rel(train<double>(groups, 24, s, {comm::outer_average::world}), simulate(groups, 24, s)) <
        1e-12);
  // Every rank reaches the same verdict from the same gathered table.
  comm::inproc_hierarchy hier(groups);
  std::vector<std::string> seen(4);
  std::vector<std::thread> threads;
  for (int r = 0; r < 4; ++r)
    threads.emplace_back([&, r] {
      try {
        (void)hier.communicator(r);
      } catch (const config_error& e) {
        seen[static_cast<std::size_t>(r)] = e.what();
      }
    });
  for (auto& t : threads) t.join();
  for (const auto& m : seen) {
    CHECK(m.find("group 1 has 1 ranks (world ranks 3)") != std::string::npos);
    CHECK(m.find("outer_average::world") != std::string::npos);
  }
}

TEST_CASE("a checkpoint taken with an across-groups average in flight resumes the schedule") {
  // tau 3, outer every 2nd round, outer delay 2: round 1 (steps 3-5) is
  // across groups and its average is merged at step 7; saving after 7
  // steps holds it in flight, and round 2 must be a group round again.
  const std::vector<int> groups = {0, 0, 1, 1};
  const two_level s;
  const int steps = 22, save_at = 7;
  std::vector<std::string> blobs(4);
  auto run = [&](bool resume) {
    comm::inproc_hierarchy hier(groups);
    std::vector<vec> out(4);
    comm::run_workers(hier, [&](comm::inproc_hierarchy::communicator_type c) {
      const int r = c.rank();
      const vec w0 = initial();
      std::vector<double> w(w0.begin(), w0.end()), g(dim);
      delayed_averager tr(make_tensor_list(w), std::move(c), to_policy(s),
                          optim::sgd{.lr = s.lr, .momentum = s.momentum}, merge::mix{s.p});
      int k = 0;
      if (resume) {
        std::istringstream is(blobs[static_cast<std::size_t>(r)]);
        tr.load(is);
        k = static_cast<int>(tr.steps_taken());
        CHECK(tr.average_in_flight());
        CHECK(tr.current_plan().scope == comm::group_scope);
      }
      for (; k < steps; ++k) {
        if (!resume && k == save_at) {
          CHECK(tr.average_in_flight());
          std::ostringstream os;
          tr.save(os);
          blobs[static_cast<std::size_t>(r)] = os.str();
        }
        const vec gd = gradient(r, k, w);
        for (std::size_t j = 0; j < dim; ++j) g[j] = gd[j];
        tr.step(std::span<const double>(g));
      }
      out[static_cast<std::size_t>(r)] = w;
    });
    return out;
  };
  const auto whole = run(false);
  const auto resumed = run(true);
  CHECK(whole == resumed);  // bit for bit
  CHECK(max_rel(whole, simulate(groups, steps, s)) < 1e-12);
}

TEST_CASE("a group round meeting an across-groups round is a mismatch on every member") {
  comm::inproc_hierarchy hier({0, 0, 1, 1});
  std::vector<std::string> seen(4);
  comm::run_workers(hier, [&](comm::inproc_hierarchy::communicator_type c) {
    const int r = c.rank();
    std::vector<float> x(5, float(r)), y(5);
    collective_signature sig;
    // Group 0 disagrees (rank 0 thinks the round is a group round, rank 1 an
    // across-groups one); group 1 does a group round.
    sig.scope = (r == 1) ? comm::world_scope : comm::group_scope;
    try {
      auto q = c.iallreduce_average(std::span<const float>(x), std::span<float>(y), sig);
      q.wait();
    } catch (const comm_error& e) {
      seen[static_cast<std::size_t>(r)] = e.what();
    }
  });
  for (int r : {0, 1}) {
    CAPTURE(seen[static_cast<std::size_t>(r)]);
    CHECK(seen[static_cast<std::size_t>(r)].find("in scope 1") != std::string::npos);
    CHECK(seen[static_cast<std::size_t>(r)].find("group 0") != std::string::npos);
  }
  CHECK(seen[2].empty());
  CHECK(seen[3].empty());
}

TEST_CASE("an unknown scope and a bad schedule are config errors naming the value") {
  comm::inproc_hierarchy hier({0, 1});
  comm::run_workers(hier, [&](comm::inproc_hierarchy::communicator_type c) {
    std::vector<float> x(3), y(3);
    collective_signature sig;
    sig.scope = 7;
    CHECK_THROWS_WITH_AS(c.iallreduce_average(std::span<const float>(x), std::span<float>(y), sig),
                         doctest::Contains("scope 7"), config_error);
  });
  CHECK_THROWS_WITH_AS((policy::hierarchical{.tau = 4, .outer_delay = 4}.validate()),
                       doctest::Contains("across-groups delay 4"), config_error);
  CHECK_THROWS_WITH_AS((policy::hierarchical{.outer_every = 0}.validate()),
                       doctest::Contains("outer_every"), config_error);
  CHECK_THROWS_WITH_AS((policy::hierarchical{.tau = 2, .delay = 2}.validate()),
                       doctest::Contains("group-round delay 2"), config_error);
  // A flat communicator refuses a group scope instead of averaging the world.
  comm::inproc_group flat(2);
  CHECK_THROWS_WITH_AS(
      comm::run_workers(flat, [](comm::inproc_communicator c) {
        std::vector<float> w(3, 0.0f), g(3, 0.0f);
        delayed_averager tr(make_tensor_list(w), c, policy::hierarchical{}, optim::sgd{},
                            merge::mix{});
        for (int k = 0; k < 4; ++k) tr.step(std::span<const float>(g));
      }),
      doctest::Contains("asks for scope 1"), config_error);
}

TEST_CASE("a stalled group member fails every rank within the timeout") {
  for (const auto& outer : all_outer)
  for (const bool in_outer_round : {false, true}) {
    CAPTURE(name_of(outer));
    CAPTURE(in_outer_round);
    comm::inproc_hierarchy hier({0, 0, 1, 1}, comm::inproc_options{.timeout = 300ms}, outer);
    std::vector<std::string> seen(4);
    std::vector<double> after(4, -1.0);
    const auto t0 = std::chrono::steady_clock::now();
    try {
      comm::run_workers(hier, [&](comm::inproc_hierarchy::communicator_type c) {
        const int r = c.rank();
        std::vector<float> w(4, 0.0f), g(4, 0.1f);
        // tau 2, outer every 3rd round: rounds 0 and 1 (steps 0-3) are group
        // rounds, round 2 (steps 4-5) across groups. Rank 3 stops before
        // the step that launches a group round (1) or the across-groups one
        // (5). Ranks 0 and 1 take 40 ms per step, so that rank 2's timeout
        // in its group comes first, not the leaders' one (either is a
        // failure on every rank; this fixes which message rank 2 shows).
        delayed_averager tr(make_tensor_list(w), std::move(c),
                            policy::hierarchical{.tau = 2, .delay = 0, .outer_every = 3, .outer_delay = 1},
                            optim::sgd{}, merge::mix{});
        const int stop = in_outer_round ? 5 : 1;
        try {
          for (int k = 0; k < 10; ++k) {
            if (r == 3 && k == stop) {
              std::this_thread::sleep_for(1500ms);
              return;
            }
            if (r < 2) std::this_thread::sleep_for(40ms);
            tr.step(std::span<const float>(g));
          }
        } catch (const comm_error& e) {
          seen[static_cast<std::size_t>(r)] = e.what();
          after[static_cast<std::size_t>(r)] =
              std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
          throw;
        }
      });
    } catch (const comm_error&) {
    }
    for (int r = 0; r < 3; ++r) {
      CAPTURE(r);
      CAPTURE(seen[static_cast<std::size_t>(r)]);
      CHECK(!seen[static_cast<std::size_t>(r)].empty());
      CHECK(after[static_cast<std::size_t>(r)] < 1.2);  // well before rank 3 wakes up
    }
    // Rank 2 waited for rank 3 in their group: the error names the group's
    // world ranks and the group rank that never joined (the world rank,
    // where the world communicator averages across groups).
    CAPTURE(seen[2]);
    const bool world_average = outer.outer == comm::outer_average::world && in_outer_round;
    CHECK(seen[2].find(world_average ? "rank(s) 3 never joined" : "rank(s) 1 never joined") != std::string::npos);
    CHECK(seen[2].find("group 1") != std::string::npos);
  }
}
