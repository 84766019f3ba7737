// Console progress of rank 0. Interactive (a terminal): one line redrawn in
// place (epoch, bar, steps/s, smoothed loss), at most ten times a second.
// Otherwise (a pipe, a log file, CI): nothing per step. Both print one plain
// line per epoch with the test accuracy.
#pragma once

#include <chrono>
#include <cstdint>
#include <cstdio>
#include <fstream>
#include <string>

namespace fashion_mnist {

class progress_display {
 public:
  /// `interactive`: redraw a bar.
  progress_display(int epochs, std::int64_t steps_per_epoch, bool interactive);

  /// After each step of rank 0 (1-based step within the epoch).
  void step(int epoch, std::int64_t step_in_epoch, float loss);

  /// After the evaluation of an epoch.
  void epoch_done(int epoch, std::int64_t total_steps, double train_loss, double test_loss,
                  double test_accuracy, double elapsed_seconds, double wait_seconds);

 private:
  using clock = std::chrono::steady_clock;
  int epochs_;
  std::int64_t steps_per_epoch_;
  bool interactive_;
  double smoothed_loss_ = 0.0;
  bool have_loss_ = false;
  clock::time_point epoch_start_;  // end of the previous epoch's report
  clock::time_point last_step_;
  clock::time_point last_draw_;
  bool line_open_ = false;
};

/// The per-epoch CSV log (header on creation, one flushed row per epoch).
class csv_log {
 public:
  csv_log() = default;
  /// Throws dasgd::config_error naming the path if it cannot be created.
  explicit csv_log(const std::string& path);

  void row(const char* algorithm, int workers, int tau, int delay, int epoch, std::int64_t step,
           double wall_seconds, double train_loss, double test_loss, double test_accuracy,
           double wait_seconds);

 private:
  std::ofstream out_;
  std::string path_;
};

}  // namespace fashion_mnist
