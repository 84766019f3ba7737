// Exception hierarchy. Every failure dasgd can detect surfaces as one of
// these, with a message that names the offending value and where it was
// raised; nothing aborts, hangs or falls back silently.
#pragma once

#include <exception>
#include <sstream>
#include <stdexcept>
#include <string>
#include <utility>

namespace dasgd {

/// Base of every dasgd exception.
namespace detail {
/// Tag: the message already carries its location (a copy of another error).
struct located_t {};
}  // namespace detail

class error : public std::runtime_error {
 public:
  error(const std::string& what, const char* file, int line)
      : std::runtime_error(what + " [" + file + ":" + std::to_string(line) + "]"),
        file_(file), line_(line) {}
  error(detail::located_t, const std::string& located_what, const char* file, int line)
      : std::runtime_error(located_what), file_(file), line_(line) {}
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

/// A failure that several threads raise: each raise() throws a fresh
/// exception of the recorded type. (Rethrowing one std::exception_ptr on
/// several threads shares one exception object, whose reference count and
/// message live in the uninstrumented runtime: ThreadSanitizer reports the
/// last owner's destructor racing with another thread's what().)
class error_record {
 public:
  enum class type { none, comm, timeout, size_mismatch, config, state, checkpoint, nonfinite, other };

  error_record() = default;
  template <class E>
  static error_record of(const E& e) {
    return capture([&] { throw e; });
  }
  /// Records whatever `thrower` throws (it must throw).
  template <class F>
  static error_record capture(F&& thrower) {
    error_record r;
    try {
      thrower();
      r.type_ = type::other;
      r.what_ = "dasgd internal error: error_record::capture with nothing thrown";
    } catch (const timeout_error& e) {
      r.set(type::timeout, e);
    } catch (const comm_error& e) {
      r.set(type::comm, e);
    } catch (const size_mismatch_error& e) {
      r.set(type::size_mismatch, e);
    } catch (const config_error& e) {
      r.set(type::config, e);
    } catch (const state_error& e) {
      r.set(type::state, e);
    } catch (const checkpoint_error& e) {
      r.set(type::checkpoint, e);
    } catch (const nonfinite_error& e) {
      r.set(type::nonfinite, e);
    } catch (const std::exception& e) {
      r.type_ = type::other;
      r.what_ = e.what();
    } catch (...) {
      r.type_ = type::other;
      r.what_ = "unknown exception";
    }
    return r;
  }
  static error_record from(const std::exception_ptr& p) {
    return capture([&] { std::rethrow_exception(p); });
  }

  explicit operator bool() const noexcept { return type_ != type::none; }
  type kind() const noexcept { return type_; }
  const std::string& what() const noexcept { return what_; }

  /// Throws a new exception of the recorded type and message (an unknown
  /// type becomes a comm_error).
  [[noreturn]] void raise() const {
    switch (type_) {
      case type::timeout: throw timeout_error(located_t{}, what_, file_, line_);
      case type::size_mismatch: throw size_mismatch_error(located_t{}, what_, file_, line_);
      case type::config: throw config_error(located_t{}, what_, file_, line_);
      case type::state: throw state_error(located_t{}, what_, file_, line_);
      case type::checkpoint: throw checkpoint_error(located_t{}, what_, file_, line_);
      case type::nonfinite: throw nonfinite_error(located_t{}, what_, file_, line_);
      default: throw comm_error(located_t{}, what_, file_, line_);
    }
  }

 private:
  void set(type t, const error& e) {
    type_ = t;
    what_ = e.what();
    file_ = e.file();
    line_ = e.line();
  }

  type type_ = type::none;
  std::string what_;
  const char* file_ = "";
  int line_ = 0;
};

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
