// The checkpoint loader under a fuzzer: one fixed trainer loads arbitrary
// bytes. Anything but checkpoint_error escaping, a crash, a sanitizer report
// or a rejected load that changed the trainer is a bug. With FixCrc the
// input's CRCs are recomputed first, so mutations reach the field checks.
#pragma once

#include <dasgd/dasgd.hpp>

#include <cstdint>
#include <cstdlib>
#include <cstdio>
#include <sstream>
#include <string>
#include <vector>

#include "support/checkpoint_forge.hpp"
#include "support/fake_comm.hpp"

namespace dasgd::fuzz {

/// The trainer every input is loaded into (two tensors, SGD momentum,
/// tau 4, delay 1, mix): tests/fuzz/make_corpus.cpp writes its checkpoints.
struct target_trainer {
  std::vector<float> a = std::vector<float>(3, 0.25f), b = std::vector<float>(5, -0.5f);
  std::vector<float> ga = std::vector<float>(3, 0.1f), gb = std::vector<float>(5, 0.2f);
  delayed_averager<float, test::fake_communicator, policy::fixed_delay, optim::sgd, merge::mix> tr{
      make_tensor_list(a, b), test::fake_communicator{}, policy::fixed_delay{.tau = 4, .delay = 1},
      optim::sgd{.lr = 0.1, .momentum = 0.9}, merge::mix{},
      trainer_options{.warning = [](const std::string&) {}}};
  void step() { tr.step(tensor_list<const float>(ga, gb)); }
};

[[noreturn]] inline void bug(const char* what) {
  std::fprintf(stderr, "checkpoint fuzz: %s\n", what);
  std::abort();
}

inline int load_one(const std::uint8_t* data, std::size_t size, bool fix_crc) {
  std::string blob(reinterpret_cast<const char*>(data), size);
  if (fix_crc) test::fix_crcs(blob);
  target_trainer t;
  const auto a0 = t.a, b0 = t.b;
  std::istringstream is(blob);
  try {
    t.tr.load(is);
  } catch (const checkpoint_error&) {
    if (t.a != a0 || t.b != b0 || t.tr.steps_taken() != 0 || !t.tr.failure().empty())
      bug("a rejected checkpoint changed the trainer");
    return 0;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "%s\n", e.what());
    bug("load threw something else than checkpoint_error");
  }
  // Accepted: the trainer must go on without error or undefined behaviour.
  for (int k = 0; k < 9; ++k) t.step();
  return 0;
}

}  // namespace dasgd::fuzz
