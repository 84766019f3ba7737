// Test oracle: a deliberately naive double-precision DaSGD simulator and
// optimizer reference, written from the formulas (PyTorch's SGD/AdamW and
// docs/design.md section 1), independent of the library's element functors.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <functional>
#include <vector>

namespace dasgd::test {

using vec = std::vector<double>;

// Parameter groups, per element of the flat weight vector: the learning
// rate is lr * lr_scale[i], the weight decay applies where decay[i] != 0
// (empty: 1 and on everywhere).
struct ref_groups {
  vec lr_scale, decay;
  double scale(std::size_t i) const { return lr_scale.empty() ? 1.0 : lr_scale[i]; }
  double wd_on(std::size_t i) const { return decay.empty() ? 1.0 : decay[i]; }
};
struct ref_sgd {
  double lr = 0.01, momentum = 0.0, dampening = 0.0, weight_decay = 0.0;
  bool nesterov = false;
  ref_groups groups{};
};
struct ref_adamw {
  double lr = 1e-3, beta1 = 0.9, beta2 = 0.999, eps = 1e-8, weight_decay = 1e-2;
  ref_groups groups{};
};

/// Optimizer state of one worker: momentum buffer / Adam moments, step count.
struct ref_state {
  vec m, v;
  long t = 0;
};

inline void ref_step(const ref_sgd& o, vec& w, const vec& g, ref_state& s) {
  if (s.m.empty()) s.m.assign(w.size(), 0.0);
  for (std::size_t i = 0; i < w.size(); ++i) {
    double d = g[i] + o.groups.wd_on(i) * o.weight_decay * w[i];
    if (o.momentum != 0.0) {
      s.m[i] = s.t == 0 ? d : o.momentum * s.m[i] + (1.0 - o.dampening) * d;
      d = o.nesterov ? d + o.momentum * s.m[i] : s.m[i];
    }
    w[i] -= o.lr * o.groups.scale(i) * d;
  }
  ++s.t;
}

inline void ref_step(const ref_adamw& o, vec& w, const vec& g, ref_state& s) {
  if (s.m.empty()) {
    s.m.assign(w.size(), 0.0);
    s.v.assign(w.size(), 0.0);
  }
  ++s.t;
  const double bc1 = 1.0 - std::pow(o.beta1, double(s.t));
  const double bc2 = 1.0 - std::pow(o.beta2, double(s.t));
  for (std::size_t i = 0; i < w.size(); ++i) {
    const double lr = o.lr * o.groups.scale(i);
    w[i] *= 1.0 - lr * o.groups.wd_on(i) * o.weight_decay;
    s.m[i] = o.beta1 * s.m[i] + (1.0 - o.beta1) * g[i];
    s.v[i] = o.beta2 * s.v[i] + (1.0 - o.beta2) * g[i] * g[i];
    const double mhat = s.m[i] / bc1, vhat = s.v[i] / bc2;
    w[i] -= lr * mhat / (std::sqrt(vhat) + o.eps);
  }
}

struct ref_schedule {
  int tau = 4;
  int delay = 1;
  double a = 0.25, b = 0.75, c = 0.0;  // merge coefficients
  // DiLoCo-style outer SGD at the merge instead of (a, b, c): with the
  // pseudo-gradient d = snap - avg, u = mu * u + d and
  // w -= lr * (nesterov ? d + mu * u : u).
  bool outer = false;
  double outer_lr = 1.0, outer_mu = 0.0;
  bool outer_nesterov = false;
  // What the wire does to a value (rounding to a 16-bit type); identity if
  // empty. Applied to each snapshot sent and to the average received.
  std::function<double(double)> wire{};
};

/// n workers, `steps` steps of the docs/design.md timeline. grad(i, k, w) returns
/// worker i's gradient at step k for its current weights w.
template <class Opt>
std::vector<vec> simulate_dasgd(int n, int steps, const ref_schedule& s, const Opt& opt,
                                std::vector<vec> w,
                                const std::function<vec(int, int, const vec&)>& grad) {
  std::vector<ref_state> state(static_cast<std::size_t>(n));
  std::vector<vec> snap(static_cast<std::size_t>(n));
  std::vector<vec> u(static_cast<std::size_t>(n), vec(w[0].size(), 0.0));
  vec avg;
  bool pending = false;
  int merge_at = -1;
  const std::size_t dim = w[0].size();
  const auto wire = [&](double x) { return s.wire ? s.wire(x) : x; };
  auto merge = [&](int i) {
    auto& wi = w[static_cast<std::size_t>(i)];
    const auto& si = snap[static_cast<std::size_t>(i)];
    auto& ui = u[static_cast<std::size_t>(i)];
    for (std::size_t j = 0; j < dim; ++j) {
      if (s.outer) {
        const double d = si[j] - avg[j];
        ui[j] = s.outer_mu * ui[j] + d;
        wi[j] -= s.outer_lr * (s.outer_nesterov ? d + s.outer_mu * ui[j] : ui[j]);
      } else {
        wi[j] = s.a * wi[j] + s.b * avg[j] + s.c * si[j];
      }
    }
  };
  for (int k = 0; k < steps; ++k) {
    std::vector<vec> g(static_cast<std::size_t>(n));
    for (int i = 0; i < n; ++i) g[static_cast<std::size_t>(i)] = grad(i, k, w[static_cast<std::size_t>(i)]);
    for (int i = 0; i < n; ++i)
      ref_step(opt, w[static_cast<std::size_t>(i)], g[static_cast<std::size_t>(i)],
               state[static_cast<std::size_t>(i)]);
    if (pending && k == merge_at) {
      for (int i = 0; i < n; ++i) merge(i);
      pending = false;
    }
    if (k % s.tau == s.tau - 1) {
      avg.assign(dim, 0.0);
      for (int i = 0; i < n; ++i) {
        auto& si = snap[static_cast<std::size_t>(i)];
        si = w[static_cast<std::size_t>(i)];
        for (auto& x : si) x = wire(x);
        for (std::size_t j = 0; j < dim; ++j) avg[j] += si[j] / n;
      }
      for (auto& x : avg) x = wire(x);
      if (s.delay == 0) {
        for (int i = 0; i < n; ++i) merge(i);
      } else {
        pending = true;
        merge_at = k + s.delay;
      }
    }
  }
  return w;
}

/// Largest |a - b| / max(|b|, floor) over all elements.
inline double max_rel_error(const vec& a, const vec& b, double floor = 1e-3) {
  double e = 0.0;
  for (std::size_t i = 0; i < a.size(); ++i)
    e = std::max(e, std::abs(a[i] - b[i]) / std::max(std::abs(b[i]), floor));
  return e;
}

/// max_rel_error over the workers' weights (a[i] against b[i]).
inline double max_rel_error(const std::vector<vec>& a, const std::vector<vec>& b,
                            double floor = 1e-3) {
  double e = 0.0;
  for (std::size_t i = 0; i < a.size(); ++i) e = std::max(e, max_rel_error(a[i], b[i], floor));
  return e;
}

/// ||a - b||_2 / ||b||_2.
inline double norm_rel_error(const vec& a, const vec& b) {
  double num = 0.0, den = 0.0;
  for (std::size_t i = 0; i < a.size(); ++i) {
    num += (a[i] - b[i]) * (a[i] - b[i]);
    den += b[i] * b[i];
  }
  return std::sqrt(num / den);
}

}  // namespace dasgd::test
