// Checkpoints under attack: CRC-valid forged fields, junk and endless
// streams, a changed schedule, failing output streams, data after the
// checkpoint, atomic files. Every rejected load leaves the trainer as it was.
#include <doctest/doctest.h>

#include <dasgd/dasgd.hpp>

#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <limits>
#include <sstream>
#include <streambuf>
#include <string>

#include "support/checkpoint_forge.hpp"
#include "support/fake_comm.hpp"

using namespace dasgd;
using test::checkpoint_layout;

namespace {

using trainer_t = delayed_averager<float, test::fake_communicator, policy::fixed_delay, optim::sgd,
                                   merge::mix>;

struct single {
  std::vector<float> w = std::vector<float>(5, 1.0f), g = std::vector<float>(5, 0.5f);
  trainer_t tr;
  explicit single(policy::fixed_delay p = {.tau = 4, .delay = 1}, merge::mix m = {})
      : tr(make_tensor_list(w), test::fake_communicator{}, p, optim::sgd{.lr = 0.1, .momentum = 0.5},
           m) {}
};

std::string blob_after(single& s, int steps) {
  for (int k = 0; k < steps; ++k) s.tr.step(s.g);
  std::ostringstream os;
  s.tr.save(os);
  return os.str();
}

/// Loading `blob` fails with checkpoint_error containing `needle`, and the
/// trainer is unchanged.
void expect_reject(single& s, const std::string& blob, const char* needle,
                   checkpoint_load_options lo = {}) {
  const auto before = s.w;
  const auto k = s.tr.steps_taken();
  std::istringstream is(blob);
  try {
    s.tr.load(is, lo);
    FAIL("the checkpoint was accepted");
  } catch (const checkpoint_error& e) {
    const std::string msg = e.what();
    CAPTURE(msg);
    CHECK(msg.find(needle) != std::string::npos);
  }
  CHECK(s.w == before);
  CHECK(s.tr.steps_taken() == k);
  CHECK(s.tr.failure().empty());
}

/// An input stream of endless junk that counts what was read from it.
class endless_junk : public std::streambuf {
 public:
  explicit endless_junk(char c) { buf_.fill(c); }
  std::size_t consumed = 0;

 protected:
  int_type underflow() override {
    setg(buf_.data(), buf_.data(), buf_.data() + buf_.size());
    consumed += buf_.size();
    return traits_type::to_int_type(buf_[0]);
  }

 private:
  std::array<char, 64> buf_{};
};

/// A non-seekable view of a string (like a pipe).
class pipe_buf : public std::streambuf {
 public:
  explicit pipe_buf(std::string s) : s_(std::move(s)) { setg(s_.data(), s_.data(), s_.data() + s_.size()); }

 private:
  std::string s_;
};

/// An output stream that accepts `limit` bytes, then fails (like a full disk).
class failing_sink : public std::streambuf {
 public:
  explicit failing_sink(std::size_t limit) : limit_(limit) {}

 protected:
  int_type overflow(int_type c) override {
    if (written_ >= limit_) return traits_type::eof();
    ++written_;
    return traits_type::not_eof(c);
  }
  std::streamsize xsputn(const char*, std::streamsize n) override {
    const auto room = static_cast<std::streamsize>(limit_ - std::min(limit_, written_));
    const auto k = std::min(room, n);
    written_ += static_cast<std::size_t>(k);
    return k;
  }

 private:
  std::size_t limit_;
  std::size_t written_ = 0;
};

/// Accepts everything but reports an error when flushed.
class failing_flush : public std::stringbuf {
 protected:
  int sync() override { return -1; }
};

}  // namespace

TEST_CASE("CRC-valid forged fields are rejected, not undefined behaviour") {
  single s;
  const std::string good = blob_after(s, 6);  // pending: launched at 3, merged at 4; k = 6
  const checkpoint_layout at{1};
  single fresh;
  constexpr auto big = std::numeric_limits<std::int64_t>::max();
  const auto forged = [&](auto setter) {
    std::string b = good;
    setter(b);
    return b;
  };
  expect_reject(fresh, forged([&](std::string& b) { test::patch<std::int64_t>(b, at.tau(), big); }),
                "schedule is invalid");
  expect_reject(fresh, forged([&](std::string& b) { test::patch<std::int64_t>(b, at.step(), big - 1); }),
                "schedule is invalid");
  expect_reject(fresh, forged([&](std::string& b) {
                  test::patch<std::int64_t>(b, at.round_start(), big - 2);
                }),
                "schedule is invalid");
  expect_reject(fresh, forged([&](std::string& b) { test::patch<std::int64_t>(b, at.delay(), 4); }),
                "schedule is invalid");  // delay >= tau
  expect_reject(fresh, forged([&](std::string& b) { test::patch<std::int64_t>(b, at.delay(), -1); }),
                "schedule is invalid");
  expect_reject(fresh, forged([&](std::string& b) {
                  test::patch<double>(b, at.merge_a(), std::numeric_limits<double>::quiet_NaN());
                }),
                "schedule is invalid");
  expect_reject(fresh, forged([&](std::string& b) {
                  test::patch<double>(b, at.merge_c(), std::numeric_limits<double>::infinity());
                }),
                "schedule is invalid");
  expect_reject(fresh, forged([&](std::string& b) {
                  test::patch<std::uint64_t>(b, at.collectives(), ~std::uint64_t(0));
                }),
                "schedule is invalid");

  // An average in flight whose merge lies far in the future, or before the
  // current step, or that was not launched at the end of the last round.
  single q;
  const std::string in_flight = blob_after(q, 8);  // launched at 7, merge due at 8
  REQUIRE(test::field<std::uint8_t>(in_flight, at.pending()) == 1);
  std::string far = in_flight;
  test::patch<std::int64_t>(far, at.merge_step(), big / 2);
  expect_reject(fresh, far, "schedule is invalid");
  std::string past = in_flight;
  test::patch<std::int64_t>(past, at.merge_step(), 2);
  expect_reject(fresh, past, "schedule is invalid");
  std::string launch = in_flight;
  test::patch<std::int64_t>(launch, at.launch_step(), 1);
  expect_reject(fresh, launch, "schedule is invalid");

  // The genuine ones still load.
  std::istringstream ok(in_flight);
  fresh.tr.load(ok);
  CHECK(fresh.tr.average_in_flight());
  CHECK(fresh.tr.merge_due_at() == 8);
}

TEST_CASE("a checkpoint written with another schedule or merge rule is rejected unless allowed") {
  single s({.tau = 4, .delay = 1}, {.update_proportion = 0.25});
  const std::string blob = blob_after(s, 6);
  single other_tau({.tau = 8, .delay = 1});
  expect_reject(other_tau, blob, "fixed_delay(tau=4, delay=1)");
  expect_reject(other_tau, blob, "fixed_delay(tau=8, delay=1)");
  single other_p({.tau = 4, .delay = 1}, {.update_proportion = 0.5});
  expect_reject(other_p, blob, "mix(a=0.25");

  // Allowed: the saved position (round of tau 4 with its in-flight
  // average) stays; the next round follows the new policy.
  std::istringstream is(blob);
  other_tau.tr.load(is, {.allow_config_change = true});
  CHECK(other_tau.tr.steps_taken() == 6);
  CHECK(other_tau.tr.current_plan().tau == 4);
  for (int k = 6; k < 8; ++k) other_tau.tr.step(other_tau.g);  // step 7 ends the saved round
  CHECK(other_tau.tr.current_plan().tau == 8);

  // A learning rate changed by a schedule is not a configuration change.
  single lr;
  lr.tr.set_learning_rate(0.01);
  const std::string decayed = blob_after(lr, 3);
  single fresh;
  std::istringstream is2(decayed);
  CHECK_NOTHROW(fresh.tr.load(is2));
}

TEST_CASE("junk, /dev/zero and absurd sizes are rejected after reading the prefix only") {
  single s;
  const auto t0 = std::chrono::steady_clock::now();
  for (char c : {'\0', 'x'}) {
    endless_junk junk(c);
    std::istream is(&junk);
    CHECK_THROWS_WITH_AS(s.tr.load(is), doctest::Contains("bad magic"), checkpoint_error);
    CHECK(junk.consumed <= 128);
  }
  std::ifstream zero("/dev/zero", std::ios::binary);
  REQUIRE(zero.is_open());
  CHECK_THROWS_WITH_AS(s.tr.load(zero), doctest::Contains("bad magic"), checkpoint_error);
  CHECK(std::chrono::steady_clock::now() - t0 < std::chrono::seconds(5));

  single good;
  const std::string blob = blob_after(good, 2);
  // A header announcing 1 GiB of header, or a payload of 1 TiB.
  std::string huge_header = blob;
  std::uint32_t hb = (1u << 30);
  std::memcpy(huge_header.data() + 12, &hb, 4);
  expect_reject(s, huge_header, "header size");
  std::string huge_payload = blob;
  test::patch<std::uint64_t>(huge_payload, 16, std::uint64_t(1) << 40);
  expect_reject(s, huge_payload, "payload has 1099511627776 bytes, this trainer expects");
}

TEST_CASE("a checkpoint followed by other data: the stream is left right after it") {
  single s;
  const std::string blob = blob_after(s, 5);
  const std::string trailer = "other data after the checkpoint";
  SUBCASE("seekable") {
    std::istringstream is(blob + trailer);
    single fresh;
    fresh.tr.load(is);
    std::string rest((std::istreambuf_iterator<char>(is)), std::istreambuf_iterator<char>());
    CHECK(rest == trailer);
    CHECK(fresh.w == s.w);
  }
  SUBCASE("not seekable (a pipe)") {
    pipe_buf pb(blob + trailer);
    std::istream is(&pb);
    single fresh;
    fresh.tr.load(is);
    std::string rest((std::istreambuf_iterator<char>(is)), std::istreambuf_iterator<char>());
    CHECK(rest == trailer);
    CHECK(fresh.w == s.w);
  }
  SUBCASE("two checkpoints in one stream") {
    single t;
    std::ostringstream os;
    s.tr.save(os);
    blob_after(t, 7);
    t.tr.save(os);
    std::istringstream is(os.str());
    single a, b;
    a.tr.load(is);
    b.tr.load(is);
    CHECK(a.w == s.w);
    CHECK(b.w == t.w);
    CHECK(b.tr.steps_taken() == 7);
  }
}

TEST_CASE("a corrupt payload is rejected on seekable and non-seekable streams alike") {
  single s;
  std::string blob = blob_after(s, 5);
  blob[blob.size() - 10] ^= 0x01;
  single fresh;
  expect_reject(fresh, blob, "payload CRC-32");
  pipe_buf pb(blob);
  std::istream is(&pb);
  const auto before = fresh.w;
  CHECK_THROWS_WITH_AS(fresh.tr.load(is), doctest::Contains("payload CRC-32"), checkpoint_error);
  CHECK(fresh.w == before);
}

TEST_CASE("save() reports a stream that fails, also one that fails only on flush") {
  single s;
  blob_after(s, 3);
  for (std::size_t limit : {std::size_t(0), std::size_t(10), std::size_t(100), std::size_t(300)}) {
    CAPTURE(limit);
    failing_sink sink(limit);
    std::ostream os(&sink);
    CHECK_THROWS_AS(s.tr.save(os), checkpoint_error);
  }
  failing_flush ff;
  std::ostream os(&ff);
  CHECK_THROWS_WITH_AS(s.tr.save(os), doctest::Contains("after flush"), checkpoint_error);
  std::ofstream full("/dev/full", std::ios::binary);
  if (full.is_open()) CHECK_THROWS_AS(s.tr.save(full), checkpoint_error);
  CHECK(s.tr.failure().empty());  // a failed save does not poison the trainer
}

TEST_CASE("save_file and load_file: atomic replacement, nothing left behind") {
  namespace fs = std::filesystem;
  const fs::path dir = fs::temp_directory_path() / ("dasgd-ckpt-" + std::to_string(::getpid()));
  fs::remove_all(dir);
  fs::create_directories(dir);
  const std::string path = (dir / "trainer.ckpt").string();

  single a;
  blob_after(a, 5);
  a.tr.save_file(path);
  single b;
  b.tr.load_file(path);
  CHECK(b.w == a.w);
  CHECK(b.tr.steps_taken() == 5);

  // A second save replaces the file; a failing save leaves it as it was.
  blob_after(a, 2);
  a.tr.save_file(path);
  const auto size = fs::file_size(path);
  // Renaming over a (non-empty) folder fails after the temporary file was
  // written: it must be removed again.
  const fs::path folder = dir / "folder";
  fs::create_directories(folder / "inside");
  CHECK_THROWS_WITH_AS(a.tr.save_file(folder.string()), doctest::Contains("renaming"), checkpoint_error);
  CHECK(fs::is_directory(folder / "inside"));
  fs::remove_all(folder);
  single c;
  c.tr.load_file(path);
  CHECK(c.tr.steps_taken() == 7);
  CHECK_THROWS_AS(a.tr.save_file((dir / "missing" / "x.ckpt").string()), checkpoint_error);
  CHECK_THROWS_WITH_AS(b.tr.load_file((dir / "absent.ckpt").string()), doctest::Contains("cannot open"),
                       checkpoint_error);
  std::size_t files = 0;
  for (const auto& e : fs::directory_iterator(dir)) {
    (void)e;
    ++files;
  }
  CHECK(files == 1);  // no temporary file left behind
  CHECK(fs::file_size(path) == size);
  fs::remove_all(dir);
}
