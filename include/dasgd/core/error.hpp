// Exception hierarchy. Every failure dasgd can detect surfaces as one of
// these, with a message that names the offending value and where it was
// raised; nothing aborts, hangs or falls back silently.
#pragma once

#include <sstream>
#include <stdexcept>
#include <string>
#include <utility>

namespace dasgd {

/// Base of every dasgd exception.
class error : public std::runtime_error {
 public:
  error(const std::string& what, const char* file, int line)
      : std::runtime_error(what + " [" + file + ":" + std::to_string(line) + "]"),
        file_(file), line_(line) {}
  const char* file() const noexcept { return file_; }
  int line() const noexcept { return line_; }

 private:
  const char* file_;
  int line_;
};

/// A configuration value is out of range (tau, delay, p, learning rate...).
class config_error : public error { using error::error; };

/// Buffers that must agree in size do not (locally or across ranks).
class size_mismatch_error : public error { using error::error; };

/// A communicator operation failed (peer gone, library error, misuse).
class comm_error : public error { using error::error; };

/// A communicator operation did not complete within its time limit.
class timeout_error : public comm_error { using comm_error::comm_error; };

/// A checkpoint cannot be read back: truncated, corrupt or incompatible.
class checkpoint_error : public error { using error::error; };

/// The trainer was driven out of order (e.g. a merge with nothing in flight).
class state_error : public error { using error::error; };

/// A NaN or an infinity where the non-finite guard looks (a snapshot about
/// to be averaged); the message names the rank, the tensor and the step.
class nonfinite_error : public error { using error::error; };

namespace detail {

template <class... Args>
std::string concat(Args&&... args) {
  std::ostringstream os;
  os.precision(9);
  (os << ... << std::forward<Args>(args));
  return os.str();
}

}  // namespace detail
}  // namespace dasgd

/// Throw `type` with a message assembled from the remaining arguments.
#define DASGD_THROW(type, ...) \
  throw type(::dasgd::detail::concat(__VA_ARGS__), __FILE__, __LINE__)

/// Throw `type` unless `cond` holds.
#define DASGD_REQUIRE(cond, type, ...)       \
  do {                                       \
    if (!(cond)) DASGD_THROW(type, __VA_ARGS__); \
  } while (0)
