// Command-line parsing: defaults, the algorithm presets, and flags that would
// be silently ignored are refused.
#include <doctest/doctest.h>

#include <string>
#include <vector>

#include "train_worker.hpp"
#include "training_options.hpp"

namespace fm = fashion_mnist;

namespace {

fm::parse_result parse(std::vector<std::string> args, int ranks = 0) {
  args.insert(args.begin(), "dasgd_fashion_mnist");
  std::vector<char*> argv;
  for (auto& a : args) argv.push_back(a.data());
  return fm::parse_training_options(static_cast<int>(argv.size()), argv.data(), ranks,
                                    /*print=*/false);
}

}  // namespace

TEST_CASE("the defaults are DaSGD with 4 workers, tau 4, delay 1") {
  const auto r = parse({});
  REQUIRE(r.options);
  CHECK(r.options->algo == fm::algorithm::dasgd);
  CHECK(r.options->workers == 4);
  CHECK(r.options->tau == 4);
  CHECK(r.options->delay == 1);
  CHECK(r.options->effective_lr() == fm::training_options::default_sgd_lr);
}

TEST_CASE("every flag reaches its field") {
  const auto r = parse({"-a", "local", "--tau", "8", "--merge", "additive", "--optimizer", "adamw",
                        "--lr", "0.002", "--weight-decay", "0.01", "--schedule", "constant", "-b",
                        "64", "-e", "3", "-w", "2", "--seed", "9", "--csv", "x.csv", "--data-dir",
                        "/d", "--train-samples", "100", "--test-samples", "50",
                        "--min-accuracy", "0.5"});
  REQUIRE(r.options);
  const auto& o = *r.options;
  CHECK(o.algo == fm::algorithm::local);
  CHECK(o.tau == 8);
  CHECK(o.delay == 0);  // local SGD is blocking
  CHECK(o.merge == fm::merge_kind::additive);
  CHECK(o.optimizer == fm::optimizer_kind::adamw);
  CHECK(o.effective_lr() == 0.002);
  CHECK(o.weight_decay == 0.01);
  CHECK(o.schedule == fm::lr_schedule::constant);
  CHECK(o.batch == 64);
  CHECK(o.epochs == 3);
  CHECK(o.workers == 2);
  CHECK(o.seed == 9);
  CHECK(o.csv_path == "x.csv");
  CHECK(o.data_dir == "/d");
  CHECK(o.train_samples == 100);
  CHECK(o.test_samples == 50);
  CHECK(o.min_accuracy == 0.5);
}

TEST_CASE("sync is exact synchronous SGD: tau 1, delay 0, mix p 0") {
  const auto r = parse({"--algorithm", "SYNC"});
  REQUIRE(r.options);
  CHECK(r.options->tau == 1);
  CHECK(r.options->delay == 0);
  CHECK(r.options->merge == fm::merge_kind::mix);
  CHECK(r.options->mix_p == 0.0);
}

TEST_CASE("flags that would have no effect are refused") {
  CHECK_FALSE(parse({"-a", "sync", "--tau", "4"}).options);
  CHECK_FALSE(parse({"-a", "sync", "-p", "0.5"}).options);
  CHECK_FALSE(parse({"-a", "local", "--delay", "1"}).options);
  CHECK_FALSE(parse({"--merge", "additive", "-p", "0.5"}).options);
  CHECK_FALSE(parse({"--optimizer", "adamw", "--momentum", "0.5"}).options);
  CHECK(parse({"-a", "sync", "--tau", "4"}).exit_code != 0);
}

TEST_CASE("out-of-range and unknown values are refused") {
  CHECK_FALSE(parse({"--tau", "0"}).options);
  CHECK_FALSE(parse({"--tau", "2", "--delay", "2"}).options);  // delay must be < tau
  CHECK(parse({"--tau", "3", "--delay", "2"}).options);
  CHECK_FALSE(parse({"-p", "1.5"}).options);
  CHECK_FALSE(parse({"--algorithm", "async"}).options);
  CHECK_FALSE(parse({"--batch", "-3"}).options);
  CHECK_FALSE(parse({"--no-such-flag"}).options);
  CHECK(parse({"--help"}).exit_code == 0);
  CHECK_FALSE(parse({"--help"}).options);
}

TEST_CASE("under mpiexec the worker count is the rank count") {
  const auto r = parse({}, /*ranks=*/3);
  REQUIRE(r.options);
  CHECK(r.options->workers == 3);
  CHECK(parse({"-w", "3"}, 3).options);
  CHECK_FALSE(parse({"-w", "4"}, 3).options);
}

TEST_CASE("the progress bar is drawn on a terminal only, and not under mpiexec unless asked") {
  using fm::progress_style;
  CHECK(fm::wants_progress_bar(progress_style::automatic, true, false));
  CHECK_FALSE(fm::wants_progress_bar(progress_style::automatic, false, false));
  CHECK_FALSE(fm::wants_progress_bar(progress_style::automatic, true, true));
  CHECK(fm::wants_progress_bar(progress_style::bar, false, true));
  CHECK_FALSE(fm::wants_progress_bar(progress_style::lines, true, false));
  const auto r = parse({"--progress", "lines"});
  REQUIRE(r.options);
  CHECK(r.options->progress == progress_style::lines);
}

TEST_CASE("the outer merge, wire, parameter-group and large-batch flags reach their fields") {
  const auto r = parse({"--merge", "outer", "--outer-lr", "0.5", "--outer-momentum", "0.8",
                        "--wire", "bf16", "--no-bias-decay", "--lr-scaling", "linear",
                        "--lr-base-workers", "2", "--warmup-epochs", "1.5", "-w", "8"});
  REQUIRE(r.options);
  const auto& o = *r.options;
  CHECK(o.merge == fm::merge_kind::outer);
  CHECK(o.outer_lr == 0.5);
  CHECK(o.outer_momentum == 0.8);
  CHECK(o.wire == fm::wire_kind::bf16);
  CHECK(o.no_bias_decay);
  CHECK(o.scaling == fm::lr_scaling::linear);
  CHECK(o.scaling_base == 2);
  CHECK(o.warmup_epochs == 1.5);
  CHECK(o.effective_lr() == doctest::Approx(fm::training_options::default_sgd_lr * 4.0));
  CHECK_FALSE(parse({"--outer-lr", "0.5"}).options);         // needs --merge outer
  CHECK_FALSE(parse({"--merge", "outer", "-p", "0.5"}).options);
  CHECK_FALSE(parse({"--wire", "int8"}).options);
  CHECK(parse({}).options->nonfinite == dasgd::nonfinite_guard::throw_error);
  CHECK(parse({"--nonfinite", "skip"}).options->nonfinite == dasgd::nonfinite_guard::skip_merge);
}

TEST_CASE("--sync-epochs starts with synchronous steps (post-local SGD)") {
  const auto r = parse({"--sync-epochs", "2.5", "--tau", "2"});
  REQUIRE(r.options);
  CHECK(r.options->sync_epochs == 2.5);
  CHECK(parse({}).options->sync_epochs == 0.0);
  CHECK_FALSE(parse({"--sync-epochs", "-1"}).options);
  CHECK_FALSE(parse({"--sync-epochs", "1", "--algorithm", "sync"}).options);
  const auto p = fm::detail::policy_of(*r.options, 100);
  CHECK(p.sync_steps == 250);
  CHECK(p.inner.tau == 2);
}

TEST_CASE("--average-state averages the optimizer state with the weights") {
  const auto r = parse({"--average-state"});
  REQUIRE(r.options);
  CHECK(r.options->average_state);
  CHECK_FALSE(parse({}).options->average_state);
  CHECK(parse({"--average-state", "--optimizer", "adamw"}).options);
  CHECK_FALSE(parse({"--average-state", "--merge", "outer"}).options);  // refused, with a reason
  CHECK_FALSE(parse({"--average-state", "--momentum", "0"}).options);   // nothing to average
}

TEST_CASE("learning-rate scaling with the worker count") {
  fm::training_options o;
  o.lr = 0.1;
  o.workers = 16;
  CHECK(o.effective_lr() == 0.1);  // none
  o.scaling = fm::lr_scaling::linear;
  CHECK(o.effective_lr() == doctest::Approx(0.4));  // 16 / 4
  o.scaling = fm::lr_scaling::sqrt;
  CHECK(o.effective_lr() == doctest::Approx(0.2));
}

TEST_CASE("hierarchical averaging flags: groups, the level schedule and what they exclude") {
  const auto r = parse({"--groups", "2", "--tau", "4", "-d", "0", "--outer-every", "3",
                        "--outer-delay", "2", "--outer-average", "world"});
  REQUIRE(r.options);
  const auto& o = *r.options;
  CHECK(o.hierarchical());
  CHECK(o.groups == 2);
  CHECK(o.delay == 0);
  CHECK(o.outer_every == 3);
  CHECK(o.outer_delay == 2);
  CHECK(o.outer_world);
  const auto d = parse({"--groups", "4"});
  REQUIRE(d.options);
  CHECK(d.options->outer_every == 4);  // the defaults
  CHECK(d.options->outer_delay == 1);
  CHECK_FALSE(d.options->outer_world);
  CHECK_FALSE(parse({}).options->hierarchical());
  CHECK(parse({"--node-groups"}, 4).options->node_groups);
  CHECK_FALSE(parse({"--node-groups"}).options);                  // needs MPI ranks
  CHECK_FALSE(parse({"--groups", "2", "--node-groups"}, 4).options);
  CHECK_FALSE(parse({"--groups", "3"}).options);                  // 4 workers: unequal groups
  CHECK_FALSE(parse({"--groups", "2", "--outer-delay", "4"}).options);  // >= tau
  CHECK_FALSE(parse({"--outer-every", "2"}).options);             // needs groups
  CHECK_FALSE(parse({"--outer-delay", "0"}).options);
  CHECK_FALSE(parse({"--outer-average", "world"}).options);
  CHECK_FALSE(parse({"-a", "sync", "--groups", "2"}).options);
  CHECK_FALSE(parse({"-a", "local", "--groups", "2", "--outer-delay", "1"}).options);
  CHECK(parse({"-a", "local", "--groups", "2"}).options->outer_delay == 0);
  CHECK_FALSE(parse({"--groups", "2", "--wire", "bf16"}).options);
  CHECK_FALSE(parse({"--groups", "2", "--outer-average", "ring"}).options);
}
