// A single-rank communicator for schedule tests. Its "average" is
// snapshot + offset, written only when the request completes, so a merge
// that read the average buffer too early would be caught. Completion is
// controlled by the test: after a number of test() calls, or by a manual
// clock reaching a deadline (wait() then advances the clock, modelling the
// time a blocking wait costs).
#pragma once

#include <algorithm>
#include <cstdint>
#include <functional>
#include <memory>
#include <span>
#include <vector>

#include <dasgd/core/collective.hpp>
#include <dasgd/policy/clock.hpp>

namespace dasgd::test {

struct fake_comm_log {
  int launches = 0;
  int broadcasts = 0;
  std::vector<collective_signature> signatures;  // of every collective, in order
  int tests = 0;
  int waits = 0;
  std::vector<std::vector<double>> snapshots;  // what each launch sent
};

struct fake_comm_config {
  double offset = 1000.0;          // avg = snapshot + offset
  int ready_after_tests = 0;       // complete once test() was called this often
  double duration = -1.0;          // if >= 0: complete at launch time + duration (clock)
  int size = 1;                    // reported size (0 to test validation)
};

class fake_request {
 public:
  struct state {
    std::function<void()> publish;
    dasgd::collective_agreement agreement;
    int tests_left = 0;
    double ready_at = -1.0;
    bool done = false;
  };
  fake_request(std::shared_ptr<state> s, std::shared_ptr<fake_comm_log> log,
               policy::manual_clock clock)
      : s_(std::move(s)), log_(std::move(log)), clock_(std::move(clock)) {}

  const dasgd::collective_agreement& agreement() const { return s_->agreement; }

  bool test() {
    ++log_->tests;
    if (!s_->done) {
      const bool by_clock = s_->ready_at >= 0.0 && clock_.now() >= s_->ready_at;
      const bool by_count = s_->ready_at < 0.0 && --s_->tests_left < 0;
      if (by_clock || by_count) finish();
    }
    return s_->done;
  }
  void wait() {
    ++log_->waits;
    if (!s_->done) {
      if (s_->ready_at > clock_.now()) clock_.set(s_->ready_at);
      finish();
    }
  }

 private:
  void finish() {
    s_->publish();
    s_->done = true;
  }
  std::shared_ptr<state> s_;
  std::shared_ptr<fake_comm_log> log_;
  policy::manual_clock clock_;
};

class fake_communicator {
 public:
  using request_type = fake_request;

  explicit fake_communicator(fake_comm_config cfg = {}, policy::manual_clock clock = {})
      : cfg_(cfg), log_(std::make_shared<fake_comm_log>()), clock_(std::move(clock)) {}

  int size() const { return cfg_.size; }
  int rank() const { return 0; }
  const fake_comm_log& log() const { return *log_; }
  std::shared_ptr<fake_comm_log> log_handle() const { return log_; }

  template <class T>
  fake_request iallreduce_average(std::span<const T> send, std::span<T> recv,
                                  const collective_signature& sig = {}) {
    ++log_->launches;
    log_->signatures.push_back(sig);
    log_->snapshots.emplace_back(send.begin(), send.end());
    auto s = std::make_shared<fake_request::state>();
    const double offset = cfg_.offset;
    s->publish = [send, recv, offset] {
      for (std::size_t i = 0; i < send.size(); ++i) recv[i] = static_cast<T>(send[i] + offset);
    };
    s->tests_left = cfg_.ready_after_tests;
    if (cfg_.duration >= 0.0) s->ready_at = clock_.now() + cfg_.duration;
    s->agreement = agreement_of(sig);
    return {s, log_, clock_};
  }

  /// One rank: the root's send is the result.
  template <class T>
  fake_request ibroadcast(std::span<const T> send, std::span<T> recv, int,
                          const collective_signature& sig) {
    ++log_->broadcasts;
    log_->signatures.push_back(sig);
    auto s = std::make_shared<fake_request::state>();
    s->publish = [send, recv] { std::copy(send.begin(), send.end(), recv.begin()); };
    s->agreement = agreement_of(sig);
    return {s, log_, clock_};
  }

  std::vector<std::uint64_t> allgather(std::uint64_t v) { return {v}; }

 private:
  static collective_agreement agreement_of(const collective_signature& sig) {
    collective_agreement a;
    a.min_proposal = a.max_proposal = sig.proposal;
    if (sig.status != 0) {
      a.status_rank = 0;
      a.status = sig.status;
      a.status_detail = sig.status_detail;
    }
    return a;
  }

  fake_comm_config cfg_;
  std::shared_ptr<fake_comm_log> log_;
  policy::manual_clock clock_;
};

}  // namespace dasgd::test
