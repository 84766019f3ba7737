// AdamW (Loshchilov & Hutter): Adam with decoupled weight decay, with
// PyTorch's torch.optim.AdamW semantics (amsgrad off):
//   w  = w * (1 - lr * wd)
//   m  = b1 * m + (1 - b1) * g
//   v  = b2 * v + (1 - b2) * g^2
//   w  = w - lr / (1 - b1^t) * m / (sqrt(v) / sqrt(1 - b2^t) + eps),  t = k + 1
#pragma once

#include <cmath>
#include <cstdint>
#include <string>

#include "../core/error.hpp"

#include "../core/local_optimizer.hpp"
#include "../core/precision.hpp"
#include "../detail/validate.hpp"

namespace dasgd::optim {

template <class C>
struct adamw_element {
  using compute_type = C;
  static constexpr int state_count = 2;
  /// The second moment v (state 1) is a running mean of g^2: it stays >= 0
  /// when the optimizer state is averaged (kernels::merge_state_value).
  static constexpr unsigned nonnegative_states = 1u << 1;
  C beta1;
  C beta2;
  C eps;
  C decay;           // 1 - lr * weight_decay
  C step_size;       // lr / (1 - beta1^t)
  C inv_sqrt_bias2;  // 1 / sqrt(1 - beta2^t)
  C lr_wd;           // lr * weight_decay (parameter groups rebuild `decay` from it)

  DASGD_HOST_DEVICE C apply(C w, C g, C* state) const {
    C m = beta1 * state[0] + (C(1) - beta1) * g;
    C v = beta2 * state[1] + (C(1) - beta2) * g * g;
    state[0] = m;
    state[1] = v;
    C denom = sqrt_of(v) * inv_sqrt_bias2 + eps;
    return w * decay - step_size * m / denom;
  }

  /// The element of one parameter group (tensor_options).
  DASGD_HOST_DEVICE adamw_element for_tensor(C lr_scale, bool with_decay) const {
    if (lr_scale == C(1) && with_decay) return *this;  // bit for bit the group-less element
    adamw_element e = *this;
    e.step_size = step_size * lr_scale;
    e.lr_wd = with_decay ? lr_wd * lr_scale : C(0);
    e.decay = C(1) - e.lr_wd;
    return e;
  }
};

struct adamw {
  static constexpr std::uint32_t kind_id = 2;

  double lr = 1e-3;
  double beta1 = 0.9;
  double beta2 = 0.999;
  double eps = 1e-8;
  double weight_decay = 1e-2;

  const char* name() const { return "adamw"; }

  /// Hyper-parameters every rank must share (the learning rate, which
  /// schedules change, is compared separately).
  std::string describe() const {
    return ::dasgd::detail::concat("adamw(beta1=", beta1, ", beta2=", beta2, ", eps=", eps,
                                   ", weight_decay=", weight_decay, ")");
  }

  void validate() const {
    detail::require_positive_finite(lr, "adamw learning rate");
    detail::require_in_range(beta1, 0.0, 1.0, false, "adamw beta1");
    detail::require_in_range(beta2, 0.0, 1.0, false, "adamw beta2");
    detail::require_positive_finite(eps, "adamw eps");
    detail::require_nonnegative_finite(weight_decay, "adamw weight_decay");
  }

  std::size_t state_count() const { return 2; }
  double learning_rate() const { return lr; }
  void set_learning_rate(double v) {
    detail::require_positive_finite(v, "adamw learning rate");
    lr = v;
  }

  template <class C, class F>
  void visit_element(std::int64_t local_step, F&& f) const {
    const double t = static_cast<double>(local_step + 1);
    const double bias1 = 1.0 - std::pow(beta1, t);
    const double bias2 = 1.0 - std::pow(beta2, t);
    f(adamw_element<C>{C(beta1), C(beta2), C(eps), C(1.0 - lr * weight_decay), C(lr / bias1),
                       C(1.0 / std::sqrt(bias2)), C(lr * weight_decay)});
  }
};

}  // namespace dasgd::optim
