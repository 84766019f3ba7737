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
  // The optimizer state (momentum buffer m; Adam's m and v) is sent with the
  // weights and merged by the same (a, b, c); v is then kept >= 0.
  bool average_state = false;
  // Registered buffers (not optimized): buffer_update(i, k, w, buf) changes
  // worker i's buffer before its step k (the user's forward pass, seeing
  // the weights before the step); with average_buffers they are sent with
  // the weights and merged by the same (a, b, c), else left alone.
  std::function<void(int, int, const vec&, vec&)> buffer_update{};
  bool average_buffers = false;
};

/// Everything a simulated run ends with, per worker.
struct ref_run {
  std::vector<vec> w;
  std::vector<ref_state> state;
  std::vector<vec> buffers;
};

/// n workers, `steps` steps of the docs/design.md timeline. grad(i, k, w) returns
/// worker i's gradient at step k for its current weights w.
/// `buffers`: each worker's registered buffers, flat (empty: none).
template <class Opt>
ref_run simulate_dasgd_run(int n, int steps, const ref_schedule& s, const Opt& opt,
                           std::vector<vec> w,
                           const std::function<vec(int, int, const vec&)>& grad,
                           std::vector<vec> buffers = {}) {
  const auto N = static_cast<std::size_t>(n);
  if (buffers.empty()) buffers.assign(N, vec{});
  std::vector<ref_state> state(N);
  std::vector<vec> snap(N);
  // What travels besides the weights: snapshots of m, v and the buffers.
  std::vector<vec> snap_m(N), snap_v(N), snap_b(N);
  vec avg_m, avg_v, avg_b;
  std::vector<vec> u(static_cast<std::size_t>(n), vec(w[0].size(), 0.0));
  vec avg;
  bool pending = false;
  int merge_at = -1;
  const std::size_t dim = w[0].size();
  const auto wire = [&](double x) { return s.wire ? s.wire(x) : x; };
  const auto lin = [&](vec& x, const vec& a, const vec& sn) {
    for (std::size_t j = 0; j < x.size(); ++j) x[j] = s.a * x[j] + s.b * a[j] + s.c * sn[j];
  };
  auto merge = [&](int i) {
    const auto I = static_cast<std::size_t>(i);
    auto& wi = w[I];
    const auto& si = snap[I];
    auto& ui = u[I];
    for (std::size_t j = 0; j < dim; ++j) {
      if (s.outer) {
        const double d = si[j] - avg[j];
        ui[j] = s.outer_mu * ui[j] + d;
        wi[j] -= s.outer_lr * (s.outer_nesterov ? d + s.outer_mu * ui[j] : ui[j]);
      } else {
        wi[j] = s.a * wi[j] + s.b * avg[j] + s.c * si[j];
      }
    }
    if (s.average_state) {
      lin(state[I].m, avg_m, snap_m[I]);
      if (!state[I].v.empty()) {
        lin(state[I].v, avg_v, snap_v[I]);
        for (auto& x : state[I].v) x = std::max(x, 0.0);  // a second moment is >= 0
      }
    }
    if (s.average_buffers) lin(buffers[I], avg_b, snap_b[I]);
  };
  // Snapshot of x into sn, and its wire-rounded mean over the workers into a.
  const auto send = [&](const std::vector<vec>& x, std::vector<vec>& sn, vec& a) {
    a.assign(x[0].size(), 0.0);
    for (std::size_t i = 0; i < N; ++i) {
      sn[i] = x[i];
      for (auto& e : sn[i]) e = wire(e);
      for (std::size_t j = 0; j < a.size(); ++j) a[j] += sn[i][j] / n;
    }
    for (auto& e : a) e = wire(e);
  };
  for (int k = 0; k < steps; ++k) {
    std::vector<vec> g(static_cast<std::size_t>(n));
    for (int i = 0; i < n; ++i) g[static_cast<std::size_t>(i)] = grad(i, k, w[static_cast<std::size_t>(i)]);
    if (s.buffer_update)
      for (int i = 0; i < n; ++i)
        s.buffer_update(i, k, w[static_cast<std::size_t>(i)], buffers[static_cast<std::size_t>(i)]);
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
      if (s.average_state) {
        std::vector<vec> m(N), v(N);
        for (std::size_t i = 0; i < N; ++i) m[i] = state[i].m, v[i] = state[i].v;
        send(m, snap_m, avg_m);
        if (!v[0].empty()) send(v, snap_v, avg_v);
      }
      if (s.average_buffers) send(buffers, snap_b, avg_b);
      if (s.delay == 0) {
        for (int i = 0; i < n; ++i) merge(i);
      } else {
        pending = true;
        merge_at = k + s.delay;
      }
    }
  }
  return {std::move(w), std::move(state), std::move(buffers)};
}

/// The workers' final weights of simulate_dasgd_run.
template <class Opt>
std::vector<vec> simulate_dasgd(int n, int steps, const ref_schedule& s, const Opt& opt,
                                std::vector<vec> w,
                                const std::function<vec(int, int, const vec&)>& grad) {
  return simulate_dasgd_run(n, steps, s, opt, std::move(w), grad).w;
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
