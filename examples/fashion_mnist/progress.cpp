#include "progress.hpp"

#include <algorithm>

#include <dasgd/core/error.hpp>

namespace fashion_mnist {

progress_display::progress_display(int epochs, std::int64_t steps_per_epoch, bool interactive)
    : epochs_(epochs),
      steps_per_epoch_(steps_per_epoch),
      interactive_(interactive),
      epoch_start_(clock::now()),
      last_step_(epoch_start_),
      last_draw_(epoch_start_) {}

void progress_display::step(int epoch, std::int64_t step_in_epoch, float loss) {
  // An exponential moving average: single mini-batch losses are too noisy to read.
  smoothed_loss_ = have_loss_ ? 0.98 * smoothed_loss_ + 0.02 * loss : loss;
  have_loss_ = true;
  const auto now = clock::now();
  last_step_ = now;
  if (!interactive_) return;
  if (now - last_draw_ < std::chrono::milliseconds(100) && step_in_epoch != steps_per_epoch_)
    return;
  last_draw_ = now;
  const double seconds = std::chrono::duration<double>(now - epoch_start_).count();
  const double rate = seconds > 0.0 ? static_cast<double>(step_in_epoch) / seconds : 0.0;
  constexpr int width = 30;
  const int filled = static_cast<int>(width * step_in_epoch / std::max<std::int64_t>(1, steps_per_epoch_));
  std::string bar(static_cast<std::size_t>(filled), '=');
  bar.resize(width, ' ');
  std::printf("\r\033[Kepoch %d/%d [%s] %lld/%lld  %.0f step/s  loss %.4f", epoch, epochs_,
              bar.c_str(), static_cast<long long>(step_in_epoch),
              static_cast<long long>(steps_per_epoch_), rate, smoothed_loss_);
  std::fflush(stdout);
  line_open_ = true;
}

void progress_display::epoch_done(int epoch, std::int64_t total_steps, double train_loss,
                                  double test_loss, double test_accuracy, double elapsed_seconds,
                                  double wait_seconds) {
  if (line_open_) std::printf("\r\033[K");
  line_open_ = false;
  // The rate covers this epoch's steps, not the evaluation that followed them.
  const double seconds = std::chrono::duration<double>(last_step_ - epoch_start_).count();
  epoch_start_ = clock::now();
  std::printf("epoch %d/%d  step %lld  train_loss %.4f  test_loss %.4f  test_acc %.4f  "
              "%.0f step/s  waited %.2f s  elapsed %.1f s\n",
              epoch, epochs_, static_cast<long long>(total_steps), train_loss, test_loss,
              test_accuracy, seconds > 0.0 ? static_cast<double>(steps_per_epoch_) / seconds : 0.0,
              wait_seconds, elapsed_seconds);
  std::fflush(stdout);
}

csv_log::csv_log(const std::string& path) : out_(path), path_(path) {
  DASGD_REQUIRE(out_.good(), dasgd::config_error, "cannot create the CSV log '", path, "'");
  out_ << "algorithm,workers,tau,delay,epoch,step,wall_seconds,train_loss,test_loss,"
          "test_accuracy,wait_seconds\n";
  out_.flush();
}

void csv_log::row(const char* algorithm, int workers, int tau, int delay, int epoch,
                  std::int64_t step, double wall_seconds, double train_loss, double test_loss,
                  double test_accuracy, double wait_seconds) {
  if (!out_.is_open()) return;
  out_ << algorithm << ',' << workers << ',' << tau << ',' << delay << ',' << epoch << ','
       << step << ',' << wall_seconds << ',' << train_loss << ',' << test_loss << ','
       << test_accuracy << ',' << wait_seconds << '\n';
  out_.flush();
  DASGD_REQUIRE(out_.good(), dasgd::config_error, "writing the CSV log '", path_, "' failed");
}

}  // namespace fashion_mnist
