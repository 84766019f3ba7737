// Runtime case -> compile-time kernel parameters: the optimizer's element
// functor and the stage set. Shared by the host and the GPU harness so both
// time exactly the same element math.
#pragma once

#include <cstdint>

#include <dasgd/kernels/stage.hpp>
#include <dasgd/optim/adamw.hpp>
#include <dasgd/optim/sgd.hpp>

#include "bench_case.hpp"

namespace dasgd::bench {

/// Hyper-parameters of the timed optimizers (they do not change the traffic;
/// they keep the values finite and normal over thousands of passes).
inline optim::sgd bench_sgd() { return optim::sgd{.lr = 1e-3, .momentum = 0.9}; }
inline optim::adamw bench_adamw() { return optim::adamw{.lr = 1e-3, .weight_decay = 1e-2}; }

/// Local step index handed to visit_element: not the first step, so SGD
/// takes its steady-state momentum branch.
inline constexpr std::int64_t bench_local_step = 1;

/// Calls f(element functor in compute type C) for the case's optimizer.
template <class C, class F>
void with_element(const optimizer_info& o, F&& f) {
  switch (o.key) {
    case optimizer_key::sgdm:
      bench_sgd().visit_element<C>(bench_local_step, f);
      return;
    case optimizer_key::adamw:
      bench_adamw().visit_element<C>(bench_local_step, f);
      return;
  }
  DASGD_THROW(config_error, "unhandled optimizer '", o.name, "'");
}

/// Calls f.template operator()<S>() with the case's stage set S.
template <class F>
void with_stage(const mode_info& m, F&& f) {
  switch (m.key) {
    case pass_mode::step:
      f.template operator()<kernels::plain_step>();
      return;
    case pass_mode::step_snapshot:
      f.template operator()<kernels::step_and_snapshot>();
      return;
    case pass_mode::step_mix:
      f.template operator()<kernels::step_and_mix>();
      return;
    case pass_mode::step_additive:
      f.template operator()<kernels::step_and_correct>();
      return;
  }
  DASGD_THROW(config_error, "unhandled mode '", m.name, "'");
}

}  // namespace dasgd::bench
