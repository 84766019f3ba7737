// Clocks for policies that time the schedule. A clock is any copyable type
// with now() -> seconds (double). The manual clock is a shared handle, so a
// test can advance time for a policy that the trainer holds by value.
#pragma once

#include <chrono>
#include <concepts>
#include <memory>

namespace dasgd::policy {

template <class C>
concept clock_source = std::copy_constructible<C> && requires(const C& c) {
  { c.now() } -> std::convertible_to<double>;
};

struct steady_clock_source {
  double now() const {
    using namespace std::chrono;
    return duration<double>(steady_clock::now().time_since_epoch()).count();
  }
};

class manual_clock {
 public:
  manual_clock() : t_(std::make_shared<double>(0.0)) {}
  double now() const { return *t_; }
  void set(double seconds) { *t_ = seconds; }
  void advance(double seconds) { *t_ += seconds; }

 private:
  std::shared_ptr<double> t_;
};

}  // namespace dasgd::policy
