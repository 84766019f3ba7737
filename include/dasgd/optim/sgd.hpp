// SGD with optional momentum, Nesterov momentum and (coupled, L2) weight
// decay, with PyTorch's torch.optim.SGD semantics:
//   g' = g + wd * w
//   buf = g'                              on the first step
//   buf = momentum * buf + (1 - dampening) * g'   afterwards
//   dir = nesterov ? g' + momentum * buf : buf      (dir = g' without momentum)
//   w   = w - lr * dir
#pragma once

#include <cstdint>
#include <string>

#include "../core/error.hpp"

#include "../core/local_optimizer.hpp"
#include "../detail/validate.hpp"

namespace dasgd::optim {

/// Element functor. WithMomentum selects the one-state variant at compile
/// time, so plain SGD neither reads nor writes a momentum buffer.
template <class C, bool WithMomentum>
struct sgd_element {
  using compute_type = C;
  static constexpr int state_count = WithMomentum ? 1 : 0;
  C lr;
  C momentum;
  C dampening;
  C weight_decay;
  bool nesterov;
  bool first_step;

  DASGD_HOST_DEVICE C apply(C w, C g, C* state) const {
    g = g + weight_decay * w;
    if constexpr (WithMomentum) {
      C buf = first_step ? g : momentum * state[0] + (C(1) - dampening) * g;
      state[0] = buf;
      g = nesterov ? g + momentum * buf : buf;
    } else {
      (void)state;
    }
    return w - lr * g;
  }

  /// The element of one parameter group (tensor_options).
  DASGD_HOST_DEVICE sgd_element for_tensor(C lr_scale, bool decay) const {
    sgd_element e = *this;
    e.lr = lr * lr_scale;
    if (!decay) e.weight_decay = C(0);
    return e;
  }
};

struct sgd {
  static constexpr std::uint32_t kind_id = 1;

  double lr = 0.01;
  double momentum = 0.0;
  double dampening = 0.0;
  double weight_decay = 0.0;
  bool nesterov = false;

  const char* name() const { return momentum != 0.0 ? "sgd-momentum" : "sgd"; }

  /// Hyper-parameters every rank must share (the learning rate, which
  /// schedules change, is compared separately).
  std::string describe() const {
    return ::dasgd::detail::concat("sgd(momentum=", momentum, ", dampening=", dampening,
                                   ", weight_decay=", weight_decay, ", nesterov=", nesterov ? 1 : 0,
                                   ")");
  }

  void validate() const {
    detail::require_positive_finite(lr, "sgd learning rate");
    detail::require_in_range(momentum, 0.0, 1.0, true, "sgd momentum");
    detail::require_in_range(dampening, 0.0, 1.0, true, "sgd dampening");
    detail::require_nonnegative_finite(weight_decay, "sgd weight_decay");
    DASGD_REQUIRE(!nesterov || (momentum > 0.0 && dampening == 0.0), config_error,
                  "sgd nesterov needs momentum > 0 and dampening == 0, got momentum=",
                  momentum, " dampening=", dampening);
  }

  std::size_t state_count() const { return momentum != 0.0 ? 1 : 0; }
  double learning_rate() const { return lr; }
  void set_learning_rate(double v) {
    detail::require_positive_finite(v, "sgd learning rate");
    lr = v;
  }

  template <class C, class F>
  void visit_element(std::int64_t local_step, F&& f) const {
    if (momentum != 0.0) {
      f(sgd_element<C, true>{C(lr), C(momentum), C(dampening), C(weight_decay), nesterov,
                             local_step == 0});
    } else {
      f(sgd_element<C, false>{C(lr), C(0), C(0), C(weight_decay), false, false});
    }
  }
};

}  // namespace dasgd::optim
