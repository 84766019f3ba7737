// The trainer's loop with in-process workers on synthetic 784-pixel data:
// every algorithm learns, runs are reproducible, the CSV log is complete,
// and impossible settings fail with a message.
#include <doctest/doctest.h>

#include <cstdint>
#include <filesystem>
#include <fstream>
#include <random>
#include <string>
#include <vector>

#include "train_worker.hpp"

namespace fm = fashion_mnist;

namespace {

/// Ten noisy prototypes in [0, 1]^784: separable, but not in one step.
fm::labelled_images synthetic(int count, unsigned seed) {
  std::mt19937 rng(1234);  // the prototypes are shared by train and test sets
  std::uniform_real_distribution<float> u(0.0f, 1.0f);
  Eigen::MatrixXf prototypes(fm::image_pixels, fm::class_count);
  for (Eigen::Index i = 0; i < prototypes.size(); ++i) prototypes.data()[i] = u(rng);
  std::mt19937 sample_rng(seed);
  std::normal_distribution<float> noise(0.0f, 0.6f);
  fm::labelled_images out;
  out.images.resize(fm::image_pixels, count);
  out.labels.resize(static_cast<std::size_t>(count));
  for (int j = 0; j < count; ++j) {
    const auto label = static_cast<std::uint8_t>(sample_rng() % fm::class_count);
    out.labels[static_cast<std::size_t>(j)] = label;
    for (int i = 0; i < fm::image_pixels; ++i)
      out.images(i, j) = std::clamp(prototypes(i, label) + noise(sample_rng), 0.0f, 1.0f);
  }
  return out;
}

struct synthetic_data {
  fm::labelled_images train = synthetic(1600, 1);
  fm::labelled_images test = synthetic(400, 2);
  fm::dataset_view view() const {
    return {&train, train.images.cols(), &test, test.images.cols()};
  }
};

const synthetic_data& data() {
  static const synthetic_data d;
  return d;
}

fm::run_summary run(const fm::training_options& o, fm::csv_log* csv = nullptr) {
  fm::run_summary summary;
  dasgd::comm::inproc_group group(o.workers);
  dasgd::comm::run_workers(group, [&](dasgd::comm::inproc_communicator comm) {
    const bool reporter = comm.rank() == 0;
    const auto s = fm::train_worker(std::move(comm), o, data().view(),
                                    reporter ? fm::report_sinks{nullptr, csv} : fm::report_sinks{});
    if (reporter) summary = s;
  });
  return summary;
}

fm::training_options small_run(fm::algorithm a) {
  fm::training_options o;
  o.algo = a;
  o.workers = 4;
  o.batch = 16;
  o.epochs = 2;
  o.lr = 0.02;
  if (a == fm::algorithm::sync) {
    o.tau = 1;
    o.delay = 0;
    o.mix_p = 0.0;
  } else if (a == fm::algorithm::local) {
    o.delay = 0;
  }
  return o;
}

}  // namespace

TEST_CASE("sync, local and DaSGD training all learn the synthetic classes") {
  for (auto a : {fm::algorithm::sync, fm::algorithm::local, fm::algorithm::dasgd}) {
    CAPTURE(fm::name_of(a));
    const auto s = run(small_run(a));
    CHECK(s.test_accuracy > 0.9);
    CHECK(s.steps == 2 * (1600 / 4 / 16));
  }
}

TEST_CASE("the additive merge and AdamW train too") {
  auto o = small_run(fm::algorithm::dasgd);
  o.merge = fm::merge_kind::additive;
  CHECK(run(o).test_accuracy > 0.9);
  o = small_run(fm::algorithm::dasgd);
  o.optimizer = fm::optimizer_kind::adamw;
  o.lr = 1e-3;
  CHECK(run(o).test_accuracy > 0.9);
}

TEST_CASE("a run is reproducible: same seed, same result; another seed differs") {
  auto o = small_run(fm::algorithm::dasgd);
  o.epochs = 1;
  const auto a = run(o);
  const auto b = run(o);
  CHECK(a.test_loss == b.test_loss);  // in-process averaging has a fixed order
  o.seed = 2;
  CHECK(run(o).test_loss != a.test_loss);
}

TEST_CASE("the CSV log has one row per epoch with the run's settings") {
  const auto path = std::filesystem::temp_directory_path() /
                    ("dasgd_fm_log_" + std::to_string(std::random_device{}()) + ".csv");
  auto o = small_run(fm::algorithm::dasgd);
  o.epochs = 3;
  {
    fm::csv_log csv(path.string());
    run(o, &csv);
  }
  std::ifstream in(path);
  std::vector<std::string> lines;
  for (std::string line; std::getline(in, line);) lines.push_back(line);
  std::filesystem::remove(path);
  REQUIRE(lines.size() == 4);
  CHECK(lines[0] ==
        "algorithm,workers,tau,delay,epoch,step,wall_seconds,train_loss,test_loss,test_accuracy,"
        "wait_seconds");
  CHECK(lines[1].rfind("dasgd,4,4,1,1,25,", 0) == 0);
  CHECK(lines[3].rfind("dasgd,4,4,1,3,75,", 0) == 0);
}

TEST_CASE("impossible settings fail with a message, not a hang") {
  auto o = small_run(fm::algorithm::dasgd);
  o.batch = 500;  // 1600 / 4 = 400 images per worker
  CHECK_THROWS_WITH_AS(run(o), doctest::Contains("fewer than one batch of 500"), dasgd::config_error);
  o = small_run(fm::algorithm::dasgd);
  o.delay = 4;  // must be < tau
  CHECK_THROWS_AS(run(o), dasgd::config_error);
  CHECK_THROWS_AS(fm::csv_log("/nonexistent-dir/x.csv"), dasgd::config_error);
}

TEST_CASE("the outer merge and parameter groups train too; warm-up starts at 10% of the peak") {
  auto o = small_run(fm::algorithm::dasgd);
  o.merge = fm::merge_kind::outer;
  o.outer_lr = 0.7;
  o.outer_momentum = 0.9;
  CHECK(run(o).test_accuracy > 0.9);
  o = small_run(fm::algorithm::dasgd);
  o.weight_decay = 1e-3;
  o.no_bias_decay = true;
  const auto grouped = run(o);
  CHECK(grouped.test_accuracy > 0.9);
  o.no_bias_decay = false;
  CHECK(run(o).test_loss != grouped.test_loss);  // the groups changed the run

  o.warmup_epochs = 1.0;
  o.schedule = fm::lr_schedule::constant;
  const double peak = o.effective_lr();
  CHECK(fm::detail::scheduled_lr(o, 0, 100, 25) == doctest::Approx(0.1 * peak));
  CHECK(fm::detail::scheduled_lr(o, 12, 100, 24) == doctest::Approx(0.55 * peak));
  CHECK(fm::detail::scheduled_lr(o, 30, 100, 25) == doctest::Approx(peak));
}

TEST_CASE("--average-state: the momentum travels with the weights and the run changes") {
  auto o = small_run(fm::algorithm::dasgd);
  const auto local = run(o);
  o.average_state = true;
  CHECK(fm::detail::trainer_options_of(o).optimizer_state == dasgd::averaging::averaged);
  const auto averaged = run(o);
  CHECK(averaged.test_accuracy > 0.9);
  CHECK(averaged.test_loss != local.test_loss);  // the averaged momentum changed the run
}

TEST_CASE("a diverging run stops with the non-finite guard's error instead of training on NaN") {
  auto o = small_run(fm::algorithm::dasgd);
  o.lr = 1e4;  // diverges within a few steps
  o.schedule = fm::lr_schedule::constant;
  CHECK_THROWS_AS(run(o), dasgd::nonfinite_error);
}
