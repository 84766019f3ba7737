// Progress of a benchmark run on a terminal: "case 12/160, about 3 min 20 s
// left" on stderr, redrawn after each table row and erased before the next
// one, so the table on stdout stays clean. Off a terminal (logs, CI, ctest)
// it prints nothing.
#pragma once

#include <unistd.h>

#include <chrono>
#include <cstddef>
#include <cstdio>
#include <string>

namespace dasgd::bench {

/// "case 3/10, about 1 min 10 s left": the estimate assumes the remaining
/// cases take as long on average as the finished ones.
inline std::string progress_line(std::size_t done, std::size_t total, double elapsed_seconds) {
  std::string s = "case " + std::to_string(done) + "/" + std::to_string(total);
  if (done == 0 || done >= total) return s;
  const double left = elapsed_seconds / static_cast<double>(done) * static_cast<double>(total - done);
  const long secs = static_cast<long>(left + 0.5);
  s += ", about ";
  if (secs >= 60) s += std::to_string(secs / 60) + " min ";
  s += std::to_string(secs % 60) + " s left";
  return s;
}

class case_progress {
 public:
  /// enabled: draw at all (default: when stderr is a terminal).
  explicit case_progress(std::size_t total, bool enabled = isatty(STDERR_FILENO) != 0)
      : total_(total), enabled_(enabled), start_(std::chrono::steady_clock::now()) {}
  case_progress(const case_progress&) = delete;
  case_progress& operator=(const case_progress&) = delete;
  ~case_progress() { erase(); }

  /// Before printing a table row: removes the progress line.
  void erase() {
    if (!enabled_ || !drawn_) return;
    std::fputs("\r\033[K", stderr);
    std::fflush(stderr);
    drawn_ = false;
  }

  /// After a case (measured or skipped): counts it and redraws the line
  /// (the last case erases it).
  void case_done() {
    ++done_;
    if (!enabled_) return;
    std::fflush(stdout);
    if (done_ >= total_) {
      erase();
      return;
    }
    const double elapsed =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count();
    std::fprintf(stderr, "\r\033[K%s", progress_line(done_, total_, elapsed).c_str());
    std::fflush(stderr);
    drawn_ = true;
  }

  std::size_t done() const { return done_; }

 private:
  std::size_t total_;
  bool enabled_;
  bool drawn_ = false;
  std::size_t done_ = 0;
  std::chrono::steady_clock::time_point start_;
};

}  // namespace dasgd::bench
