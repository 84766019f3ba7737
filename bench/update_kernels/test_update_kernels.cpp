// Tests of the update benchmark's own logic: byte accounting, model lists,
// option parsing, and that the host baseline reads and writes exactly the
// streams the fused pass reads and writes (otherwise its ratio would not be
// a bandwidth efficiency).
#define DOCTEST_CONFIG_IMPLEMENT_WITH_MAIN
#include <doctest/doctest.h>

#include <set>
#include <string>
#include <vector>

#include "bench_case.hpp"
#include "host_mode.hpp"
#include "options.hpp"
#include "progress.hpp"
#include "results.hpp"

using namespace dasgd::bench;

namespace {

bench_case make_case(const layout& l, const char* precision, const char* mode, const char* opt) {
  return {&l, &precision_by_name(precision), &mode_by_name(mode), &optimizer_by_name(opt)};
}

options parse(std::vector<const char*> args) {
  args.insert(args.begin(), "bench");
  return parse_options(static_cast<int>(args.size()), args.data());
}

}  // namespace

TEST_CASE("bytes per element follow docs/design.md's accounting") {
  const layout l = make_layout("flat_1K");
  // fp32 SGD-momentum: read w, g, m; write w, m = 20 B; snapshot +4; mix +4; additive +8.
  CHECK(make_case(l, "fp32", "step", "sgdm").bytes_per_element() == 20);
  CHECK(make_case(l, "fp32", "step_snapshot", "sgdm").bytes_per_element() == 24);
  CHECK(make_case(l, "fp32", "step_mix", "sgdm").bytes_per_element() == 24);
  CHECK(make_case(l, "fp32", "step_additive", "sgdm").bytes_per_element() == 28);
  // AdamW's second moment: one more fp32 read and write.
  for (const auto& m : modes)
    CHECK(make_case(l, "fp32", m.name, "adamw").bytes_per_element() ==
          make_case(l, "fp32", m.name, "sgdm").bytes_per_element() + 8);
  // fp64 doubles everything.
  CHECK(make_case(l, "fp64", "step_additive", "adamw").bytes_per_element() ==
        2 * make_case(l, "fp32", "step_additive", "adamw").bytes_per_element());
  // bf16 + fp32 master: g read 2, w write 2, master read+write 8, momentum 8.
  CHECK(make_case(l, "bf16", "step", "sgdm").bytes_per_element() == 20);
  CHECK(make_case(l, "fp16", "step_mix", "sgdm").bytes_per_element() == 22);
  CHECK(make_case(l, "bf16", "step_additive", "adamw").bytes_per_element() == 2 + 2 + 8 + 16 + 4);
  // bf16 without master: w read+write 4, g 2, momentum 8.
  CHECK(make_case(l, "bf16_nomaster", "step", "sgdm").bytes_per_element() == 14);
  CHECK(make_case(l, "bf16_nomaster", "step", "sgdm").bytes() == 14 * 1024);
}

TEST_CASE("model parameter lists have their published sizes") {
  CHECK_NOTHROW(check_model_totals());
  const auto r = resnet50_parameters();
  CHECK(r.front().elements == 64 * 3 * 7 * 7);
  CHECK(r[r.size() - 2].name == "fc.weight");
  CHECK(r[r.size() - 2].elements == 1000 * 2048);
  const auto g = gpt2_small_parameters();
  CHECK(g.front().elements == 50257u * 768u);
  CHECK(g.back().name == "ln_f.bias");
  const layout l = make_layout("gpt2_small");
  CHECK(l.tensors() == gpt2_small_tensor_count);
  CHECK(l.elements() == gpt2_small_parameter_count);
}

TEST_CASE("layout names") {
  CHECK(make_layout("flat_16M").extents == std::vector<std::size_t>{16u << 20});
  CHECK(make_layout("flat_64K").elements() == 64u << 10);
  CHECK(make_layout("resnet50").tensors() == resnet50_tensor_count);
  for (const char* bad : {"flat_", "flat_M", "flat_0M", "flat_12G", "flat_1x2M", "resnet", ""})
    CHECK_THROWS_AS(make_layout(bad), dasgd::config_error);
}

TEST_CASE("options: defaults per mode and errors naming the bad value") {
  const options h = parse({});
  CHECK(h.mode == run_mode::host);
  CHECK(h.precisions == std::vector<std::string>{"fp32", "fp64"});
  CHECK(h.layouts.back() == "gpt2_small");
  const options g = parse({"--mode", "gpu", "--repeats=7", "--modes", "step_mix"});
  CHECK(g.precisions == std::vector<std::string>{"fp32", "bf16", "fp16"});
  CHECK(g.repeats == 7);
  CHECK(g.modes == std::vector<std::string>{"step_mix"});
  CHECK_THROWS_WITH_AS(parse({"--mode", "gpu", "--precisions", "fp64"}),
                       doctest::Contains("'fp64'"), dasgd::config_error);
  CHECK_THROWS_WITH_AS(parse({"--precisions", "bf16"}), doctest::Contains("host"),
                       dasgd::config_error);
  CHECK_THROWS_WITH_AS(parse({"--frobnicate"}), doctest::Contains("--frobnicate"),
                       dasgd::config_error);
  CHECK_THROWS_AS(parse({"--repeats", "0"}), dasgd::config_error);
  CHECK_THROWS_AS(parse({"--repeats", "3x"}), dasgd::config_error);
  CHECK_THROWS_AS(parse({"--modes", "step,merge"}), dasgd::config_error);
  CHECK_THROWS_AS(parse({"--layouts"}), dasgd::config_error);
  CHECK(g.tunings == std::vector<std::string>{"default"});
  CHECK(parse({"--mode", "gpu", "--tunings", "all"}).tunings == tuning_names());
  CHECK_THROWS_WITH_AS(parse({"--mode", "gpu", "--tunings", "default,t9_fast"}),
                       doctest::Contains("'t9_fast'"), dasgd::config_error);
}

TEST_CASE("median") {
  CHECK(median({3.0, 1.0, 2.0}) == 2.0);
  CHECK(median({4.0, 1.0, 3.0, 2.0}) == 2.5);
  CHECK_THROWS_AS(median({}), dasgd::state_error);
}

TEST_CASE("plan: the cartesian product of the selected names") {
  const options o = parse({"--layouts", "flat_1K,resnet50", "--optimizers", "adamw"});
  const case_plan p = make_plan(o);
  CHECK(p.cases.size() == 2 * 2 * 1 * 4);
  std::set<std::string> keys;
  for (const auto& c : p.cases) keys.insert(c.key());
  CHECK(keys.size() == p.cases.size());
  CHECK(keys.count("resnet50/fp64/step_mix/adamw") == 1);
}

namespace {

using arenas_t = host::case_arenas<double>;

/// All allocated arenas of one case, concatenated (weights first).
std::vector<std::vector<double>> contents(const arenas_t& a) {
  std::vector<std::vector<double>> out;
  for (const auto* b : {&a.w, &a.g, &a.state0, &a.state1, &a.snapshot, &a.average})
    out.emplace_back(b->data(), b->data() + b->size());
  return out;
}

/// Runs one pass of the fused loop or of the baseline, after adding `bump`
/// to every element of stream `perturbed` (-1: none), and returns all arenas.
std::vector<std::vector<double>> run_once(const bench_case& c, bool fused, int perturbed,
                                          int workers = 1) {
  arenas_t a(c);
  dasgd::detail::aligned_buffer<double>* bufs[] = {&a.w,      &a.g,        &a.state0,
                                                   &a.state1, &a.snapshot, &a.average};
  if (perturbed >= 0)
    for (std::size_t i = 0; i < bufs[perturbed]->size(); ++i) bufs[perturbed]->data()[i] += 0.125;
  std::vector<std::unique_ptr<host::worker_share<double>>> shares;
  for (int t = 0; t < workers; ++t)
    shares.push_back(std::make_unique<host::worker_share<double>>(a, c, t, workers));
  if (fused) {
    with_element<double>(*c.optimizer, [&](const auto& elem) {
      with_stage(*c.mode, [&]<dasgd::kernels::stage S>() {
        for (auto& s : shares) dasgd::host_backend{}.run<S>(s->args, elem);
      });
    });
  } else {
    for (auto& s : shares) host::triad_plan<double>(a, *s, c).run();
  }
  return contents(a);
}

}  // namespace

TEST_CASE("the stream-triad baseline reads and writes the streams the fused pass does") {
  const layout l{"three", {5, 17, 33}};  // odd sizes: arena padding between tensors
  for (const auto& m : modes) {
    for (const auto& o : optimizers) {
      const bench_case c = make_case(l, "fp64", m.name, o.name);
      CAPTURE(c.key());
      const auto base_f = run_once(c, true, -1);
      const auto base_t = run_once(c, false, -1);
      const arenas_t init(c);
      const auto before = contents(init);
      for (int s = 0; s < 6; ++s) {
        if (before[s].empty()) continue;  // stream not used by this case
        CAPTURE(s);
        // Written: the pass changed the stream.
        CHECK((base_f[s] != before[s]) == (base_t[s] != before[s]));
        // Read: perturbing the stream changes some other stream's result, or
        // its own result when the pass writes it back.
        auto reads = [&](bool fused, const std::vector<std::vector<double>>& base) {
          const auto p = run_once(c, fused, s);
          for (int k = 0; k < 6; ++k)
            if (k != s && p[k] != base[k]) return true;
          return base[s] != before[s] && p[s] != base[s];
        };
        CHECK(reads(true, base_f) == reads(false, base_t));
      }
      // Arena padding is never touched (both loops stay inside the tensors).
      for (const auto& r : {base_f, base_t})
        for (std::size_t i = 5; i < 16; ++i) CHECK(r[0][i] == host::init_weight);
    }
  }
}

TEST_CASE("splitting the tensors over workers gives the single-worker result") {
  const layout l{"three", {5, 17, 33}};
  for (const char* mode : {"step_snapshot", "step_additive"}) {
    const bench_case c = make_case(l, "fp64", mode, "adamw");
    CAPTURE(c.key());
    const auto one = run_once(c, true, -1, 1);
    CHECK(run_once(c, true, -1, 2) == one);
    CHECK(run_once(c, true, -1, 3) == one);
    CHECK(run_once(c, false, -1, 3) == run_once(c, false, -1, 1));
    CHECK(one[0][0] != host::init_weight);  // the pass did update the weights
  }
}

TEST_CASE("measure_case reports a positive time and the case's bytes") {
  const layout l = make_layout("flat_4K");
  const bench_case c = make_case(l, "fp32", "step_mix", "sgdm");
  options o = parse({"--repeats", "3", "--min-seconds", "0", "--warmup", "0"});
  const result_row r = host::measure_case<float>(c, 2, o, "test cpu");
  CHECK(r.repeats == 3);
  CHECK(r.time_s > 0);
  CHECK(r.baseline_time_s > 0);
  CHECK(r.threads == 2);
  CHECK(r.gbps() == doctest::Approx(24.0 * 4096 / r.time_s * 1e-9));
  CHECK(r.ratio() > 0);
}

TEST_CASE("median of pair ratios") {
  // Pair 1 ran under load (both slow): it must not skew the ratio.
  CHECK(median_pair_ratio({1.0, 10.0, 2.0}, {0.9, 9.0, 1.8}) == doctest::Approx(0.9));
  CHECK(median_pair_ratio({1.0, 2.0}, {0.5, 2.0}) == doctest::Approx(0.75));
  CHECK_THROWS_AS(median_pair_ratio({1.0}, {1.0, 2.0}), dasgd::state_error);
}

TEST_CASE("progress line: case i/N and the time left at the mean time per case") {
  CHECK(progress_line(0, 10, 0.0) == "case 0/10");
  CHECK(progress_line(5, 10, 20.0) == "case 5/10, about 20 s left");
  CHECK(progress_line(3, 10, 30.0) == "case 3/10, about 1 min 10 s left");
  CHECK(progress_line(10, 10, 99.0) == "case 10/10");
  case_progress quiet(4, false);  // not a terminal: counts, draws nothing
  quiet.case_done();
  CHECK(quiet.done() == 1);
}

TEST_CASE("the help explains the check column and the exit status") {
  const std::string help = usage_text();
  CHECK(help.find("host mode has no") != std::string::npos);
  CHECK(help.find("n/a") != std::string::npos);
  CHECK(help.find("case i/N") != std::string::npos);
}
