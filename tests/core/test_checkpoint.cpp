// Checkpoints: a restart reproduces the uninterrupted run bit for bit, also
// with an average in flight; corrupt, truncated or incompatible files are
// rejected with a clear message and leave the trainer unchanged.
#include <doctest/doctest.h>

#include <dasgd/dasgd.hpp>

#include <cstring>
#include <sstream>
#include <string>

#include "support/checkpoint_forge.hpp"
#include "support/fake_comm.hpp"
#include "support/problems.hpp"

using namespace dasgd;
using test::vec;

namespace {

const test::least_squares problem(2, 7, 12, 5);

/// Two workers; each saves its state after `save_at` steps into blobs[r],
/// or, if `resume` is set, loads blobs[r] first and continues from there.
std::vector<vec> run(int steps, int save_at, std::vector<std::string>& blobs, bool resume,
                     bool adam = false) {
  comm::inproc_group group(2);
  std::vector<vec> out(2);
  comm::run_workers(group, [&](comm::inproc_communicator c) {
    const auto r = static_cast<std::size_t>(c.rank());
    std::vector<float> wa(3, 0.5f), wb(4, -0.5f), ga(3), gb(4);
    auto body = [&](auto optimizer) {
      delayed_averager tr(make_tensor_list(wa, wb), c, policy::fixed_delay{4, 2}, optimizer,
                          merge::mix{0.25});
      int k = 0;
      if (resume) {
        std::istringstream is(blobs[r]);
        tr.load(is);
        k = static_cast<int>(tr.steps_taken());
      }
      for (; k < steps; ++k) {
        if (!resume && k == save_at) {
          std::ostringstream os;
          tr.save(os);
          blobs[r] = os.str();
        }
        vec w(wa.begin(), wa.end());
        w.insert(w.end(), wb.begin(), wb.end());
        const vec g = problem.gradient(c.rank(), w);
        for (int j = 0; j < 3; ++j) ga[static_cast<std::size_t>(j)] = static_cast<float>(g[static_cast<std::size_t>(j)]);
        for (int j = 0; j < 4; ++j) gb[static_cast<std::size_t>(j)] = static_cast<float>(g[static_cast<std::size_t>(3 + j)]);
        tr.step(tensor_list<const float>(ga, gb));
      }
    };
    if (adam)
      body(optim::adamw{.lr = 0.01});
    else
      body(optim::sgd{.lr = 0.05, .momentum = 0.9});
    vec w(wa.begin(), wa.end());
    w.insert(w.end(), wb.begin(), wb.end());
    out[r] = w;
  });
  return out;
}

}  // namespace

TEST_CASE("resuming from a checkpoint reproduces the uninterrupted run") {
  for (bool adam : {false, true}) {
    for (int save_at : {0, 3, 4, 5, 9}) {  // 4 and 5: an average is in flight
      CAPTURE(adam);
      CAPTURE(save_at);
      std::vector<std::string> blobs(2);
      const auto straight = run(20, save_at, blobs, false, adam);
      REQUIRE_FALSE(blobs[0].empty());
      const auto resumed = run(20, save_at, blobs, true, adam);
      CHECK(resumed == straight);
    }
  }
}

namespace {
struct single {
  std::vector<float> w = std::vector<float>(5, 1.0f), g = std::vector<float>(5, 0.5f);
  delayed_averager<float, test::fake_communicator, policy::fixed_delay, optim::sgd, merge::mix> tr{
      make_tensor_list(w), test::fake_communicator{}, policy::fixed_delay{4, 1},
      optim::sgd{.lr = 0.1, .momentum = 0.5}, merge::mix{0.25}};
};
std::string blob_of(single& s, int steps) {
  for (int k = 0; k < steps; ++k) s.tr.step(s.g);
  std::ostringstream os;
  s.tr.save(os);
  return os.str();
}
void expect_reject(single& s, const std::string& blob, const char* needle) {
  const auto before = s.w;
  const auto k = s.tr.steps_taken();
  std::istringstream is(blob);
  try {
    s.tr.load(is);
    FAIL("corrupt checkpoint was accepted");
  } catch (const checkpoint_error& e) {
    const std::string msg = e.what();
    CAPTURE(msg);
    CHECK(msg.find(needle) != std::string::npos);
  }
  CHECK(s.w == before);
  CHECK(s.tr.steps_taken() == k);
}
}  // namespace

TEST_CASE("corrupt, truncated and incompatible checkpoints are rejected") {
  single s;
  const std::string good = blob_of(s, 6);
  single fresh;

  std::string flipped = good;
  flipped[flipped.size() / 2] ^= 0x10;
  expect_reject(fresh, flipped, "corrupt");
  expect_reject(fresh, good.substr(0, good.size() - 9), "truncated");
  expect_reject(fresh, good.substr(0, 5), "truncated");
  expect_reject(fresh, "", "truncated");
  std::string magic = good;
  magic[0] = 'X';
  expect_reject(fresh, magic, "bad magic");

  // Right frame, wrong trainer: other parameter sizes.
  std::vector<float> w(6, 1.0f);
  delayed_averager other(make_tensor_list(w), test::fake_communicator{}, policy::fixed_delay{4, 1},
                         optim::sgd{.lr = 0.1, .momentum = 0.5}, merge::mix{0.25});
  std::istringstream is(good);
  try {
    other.load(is);
    FAIL("accepted a checkpoint of another shape");
  } catch (const checkpoint_error& e) {
    CHECK(std::string(e.what()).find("tensor extent is 5 but this trainer has 6") != std::string::npos);
  }
  // Another optimizer kind.
  std::vector<float> w5(5, 1.0f);
  delayed_averager adam(make_tensor_list(w5), test::fake_communicator{}, policy::fixed_delay{4, 1},
                        optim::adamw{}, merge::mix{0.25});
  std::istringstream is2(good);
  CHECK_THROWS_WITH_AS(adam.load(is2), doctest::Contains("optimizer kind is 1 but this trainer has 2"),
                       checkpoint_error);

  // And the good one loads.
  std::istringstream ok(good);
  fresh.tr.load(ok);
  CHECK(fresh.tr.steps_taken() == 6);
  CHECK(fresh.w == s.w);
}

namespace {
/// The checkpoint with `suffix` cut from the end of its configuration text
/// (the header's last string): what a trainer from before a field existed
/// wrote. The string's length, the header size and the CRCs are patched.
std::string without_config_suffix(std::string blob, const std::string& config, const std::string& suffix) {
  REQUIRE(config.size() >= suffix.size());
  REQUIRE(config.compare(config.size() - suffix.size(), suffix.size(), suffix) == 0);
  const auto at = blob.find(config);
  REQUIRE(at != std::string::npos);
  const std::uint64_t n = config.size() - suffix.size();
  std::memcpy(blob.data() + at - 8, &n, 8);
  blob.erase(at + n, suffix.size());
  std::uint32_t header = 0;
  std::memcpy(&header, blob.data() + 12, 4);
  header -= static_cast<std::uint32_t>(suffix.size());
  std::memcpy(blob.data() + 12, &header, 4);
  test::fix_crcs(blob);
  return blob;
}
}  // namespace

TEST_CASE("a checkpoint written before the optimizer_state and buffers fields existed loads") {
  single a;
  const std::string blob = blob_of(a, 6);
  const std::string config = a.tr.configuration().text({"learning_rate"});
  const std::string old = without_config_suffix(blob, config, "; optimizer_state=local; buffers=none");
  single b;
  std::istringstream is(old);
  b.tr.load(is);
  CHECK(b.tr.steps_taken() == 6);
  CHECK(b.w == a.w);
  // Read as defaults, they still must match: a trainer averaging its state
  // is a different configuration.
  std::vector<float> w(5, 1.0f);
  delayed_averager<float, test::fake_communicator, policy::fixed_delay, optim::sgd, merge::mix> other{
      make_tensor_list(w), test::fake_communicator{}, policy::fixed_delay{4, 1},
      optim::sgd{.lr = 0.1, .momentum = 0.5}, merge::mix{0.25},
      trainer_options{.optimizer_state = averaging::averaged}};
  std::istringstream is2(old);
  CHECK_THROWS_WITH_AS(other.load(is2), doctest::Contains("optimizer_state"), checkpoint_error);
}
