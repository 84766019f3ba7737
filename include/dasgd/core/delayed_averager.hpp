// delayed_averager: the DaSGD trainer. One object per worker. It owns the
// snapshot and average arenas, the optimizer state and the in-flight
// request; the user owns the weights and computes gradients, then calls
// step() once per iteration.
//
// Timeline (docs/design.md section 1), for round r of tau_r steps starting at s_r:
//  - every step applies the local optimizer update;
//  - at k = s_r + tau_r - 1 the same fused pass also writes the snapshot, and
//    an out-of-place non-blocking average of the snapshots is launched;
//  - delay_r steps later that step's fused pass merges the average
//    (w = a * w_local + b * avg + c * snap). delay_r = 0: the average is
//    awaited at once and merged right after the snapshot (blocking Local SGD).
#pragma once

#include <chrono>
#include <cstdint>
#include <istream>
#include <optional>
#include <ostream>
#include <span>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include "../kernels/fused_element.hpp"
#include "../kernels/host/host_backend.hpp"
#include "arena_layout.hpp"
#include "backend.hpp"
#include "checkpoint.hpp"
#include "communicator.hpp"
#include "delay_policy.hpp"
#include "error.hpp"
#include "local_optimizer.hpp"
#include "merge_rule.hpp"
#include "precision.hpp"
#include "tensor_list.hpp"

namespace dasgd {

/// What one step() did.
struct step_report {
  std::int64_t step = 0;      ///< index of this step (0-based)
  std::int64_t round = 0;     ///< round the step belongs to
  bool launched = false;      ///< an average was launched after this step's update
  bool merged = false;        ///< an average was merged in this step
  double wait_seconds = 0.0;  ///< time blocked waiting for the average (0 when hidden)
};

/// Trainer settings that are not part of the algorithm.
struct trainer_options {
  /// Keep a compute-precision (fp32) master copy of 16-bit weights: the
  /// optimizer and the merge update the master; the user's tensors receive
  /// the rounded values. Costs one compute-type arena.
  bool master_weights = false;
};

namespace detail {

/// FNV-1a over the storage type and the tensor extents.
inline std::uint64_t shape_hash(std::uint32_t type, const std::vector<std::size_t>& extents) {
  std::uint64_t h = 1469598103934665603ull;
  auto mix = [&](std::uint64_t v) {
    for (int i = 0; i < 8; ++i) {
      h ^= (v >> (8 * i)) & 0xFFu;
      h *= 1099511628211ull;
    }
  };
  mix(type);
  for (auto e : extents) mix(e);
  return h;
}

}  // namespace detail

template <class Storage, class Comm, class Policy, class Optim, class Merge,
          class Backend = host_backend,
          class Compute = default_compute_t<Storage>>
  requires storage_type<Storage> && compute_type<Compute> && communicator<Comm, Storage> &&
           delay_policy<Policy> && local_optimizer<Optim> && merge_rule<Merge> &&
           update_backend<Backend>
class delayed_averager {
 public:
  using storage_type = Storage;
  using compute_type = Compute;
  using memory_space = typename Backend::memory_space;
  using params_type = tensor_list<Storage, memory_space>;
  using grads_type = tensor_list<const Storage, memory_space>;
  using request_type = typename Comm::request_type;
  using communicator_type = Comm;
  using policy_type = Policy;
  using optimizer_type = Optim;
  using merge_type = Merge;
  using backend_type = Backend;

  static_assert(std::is_same_v<comm_memory_space_t<Comm>, memory_space>,
                "the communicator's buffers live in another memory space than the backend's");

  /// Collective: every rank constructs its trainer at the same point. Checks
  /// the configuration locally and that all ranks hold the same parameter
  /// shapes (size_mismatch_error naming both sides otherwise).
  delayed_averager(params_type params, Comm comm, Policy policy, Optim optim, Merge merge,
                   Backend backend = {}, trainer_options options = {})
      : params_(std::move(params)),
        comm_(std::move(comm)),
        policy_(std::move(policy)),
        optim_(std::move(optim)),
        merge_(std::move(merge)),
        backend_(std::move(backend)),
        options_(options) {
    DASGD_REQUIRE(comm_.size() >= 1, config_error, "communicator has size ", comm_.size(),
                  "; it needs at least one rank");
    DASGD_REQUIRE(!params_.empty(), config_error, "the parameter list is empty");
    optim_.validate();
    if constexpr (requires { policy_.validate(); }) policy_.validate();
    if constexpr (requires { merge_.validate(); }) merge_.validate();
    DASGD_REQUIRE(optim_.state_count() <= pass_type::max_state, config_error, "optimizer '",
                  optim_.name(), "' needs ", optim_.state_count(), " state buffers, at most ",
                  pass_type::max_state, " are supported");
    detail::validate_coefficients(merge_.coefficients(), merge_.name());
    check_shapes_across_ranks();

    offsets_ = detail::arena_offsets(params_.extents(), arena_size_);
    snapshot_ = backend_.template allocate<Storage>(arena_size_);
    average_ = backend_.template allocate<Storage>(arena_size_);
    for (std::size_t s = 0; s < optim_.state_count(); ++s)
      state_.push_back(backend_.template allocate<Compute>(arena_size_));
    if (options_.master_weights) {
      master_ = backend_.template allocate<Compute>(arena_size_);
      reload_master_weights();
    }

    plan_ = validated(policy_.plan(0), 0);
  }

  delayed_averager(params_type params, Comm comm, Policy policy, Optim optim, Merge merge,
                   trainer_options options)
      : delayed_averager(std::move(params), std::move(comm), std::move(policy), std::move(optim),
                         std::move(merge), Backend{}, options) {}

  delayed_averager(const delayed_averager&) = delete;
  delayed_averager& operator=(const delayed_averager&) = delete;

  /// Never returns while the communicator may still write into our average
  /// arena: an in-flight request is awaited (its errors are swallowed here;
  /// call synchronize() or merge_now() first to see them).
  ~delayed_averager() {
    if (request_) {
      try {
        request_->wait();
      } catch (...) {
      }
    }
  }

  /// One training step with this worker's gradients for the current weights.
  step_report step(const grads_type& grads) {
    require_usable();
    require_same_shape(params_, grads, "parameters", "gradients");
    observe(schedule_event::kind::step_begin);

    step_report rep;
    rep.step = k_;
    rep.round = round_;
    const bool launch = k_ == round_start_ + plan_.tau - 1;
    const bool merge_here = pending_ && k_ == merge_step_;
    DASGD_REQUIRE(!(launch && pending_ && !merge_here), state_error, "step ", k_,
                  " must launch an average while the one launched at step ", launch_step_,
                  " (merge due at step ", merge_step_, ") is still in flight");
    // Plan the next round before touching the weights, so that a bad plan
    // throws with this step not applied (the caller may fix and retry).
    round_plan next;
    if (launch) next = next_plan();

    if (merge_here) {
      rep.wait_seconds = await_pending();
      if (pending_coeffs_.c != 0.0)
        run_pass<kernels::step_and_correct>(&grads, pending_coeffs_);
      else
        run_pass<kernels::step_and_mix>(&grads, pending_coeffs_);
      finish_merge();
      rep.merged = true;
    } else {
      if (pending_) poll();
      if (launch)
        run_pass<kernels::step_and_snapshot>(&grads, {});
      else
        run_pass<kernels::plain_step>(&grads, {});
    }

    if (launch) {
      const std::int64_t delay = launch_average(next);
      rep.launched = true;
      if (delay == 0) {
        rep.wait_seconds += await_pending();
        merge_only(pending_coeffs_);
        finish_merge();
        rep.merged = true;
      }
    }
    ++k_;
    return rep;
  }

  /// A gradient list of another element type or memory space: a clear
  /// compile-time error instead of a failed conversion deep inside step().
  template <class T, class Space>
    requires(!std::is_same_v<tensor_list<T, Space>, grads_type> &&
             !std::is_same_v<tensor_list<T, Space>, params_type>)
  step_report step(const tensor_list<T, Space>&) {
    static_assert(std::is_same_v<std::remove_const_t<T>, Storage>,
                  "the gradients' element type differs from the parameters' storage type");
    static_assert(std::is_same_v<Space, memory_space>,
                  "the gradients live in another memory space than the trainer's backend");
    return {};
  }

  /// step() for a model with a single parameter tensor.
  template <parameter_buffer G>
    requires(!detail::is_tensor_list_v<std::remove_cvref_t<G>>)
  step_report step(const G& grad) {
    static_assert(std::is_same_v<std::remove_const_t<tensor_value_t<G>>, Storage>,
                  "the gradient's element type differs from the parameters' storage type");
    static_assert(std::is_same_v<tensor_space_t<G>, memory_space>,
                  "the gradient lives in another memory space than the trainer's backend");
    grads_type g;
    g.add(static_cast<const Storage*>(tensor_data(grad)), tensor_size(grad));
    return step(g);
  }

  /// Waits for the in-flight average and merges it into the weights now
  /// (without a local step). Throws state_error if nothing is in flight.
  void merge_now() {
    require_usable();
    DASGD_REQUIRE(pending_, state_error, "merge requested at step ", k_,
                  " but no average is in flight",
                  launch_step_ >= 0 ? detail::concat(" (the last one, launched at step ",
                                                     launch_step_, ", is already merged)")
                                    : std::string(" (none has been launched yet)"));
    await_pending();
    merge_only(pending_coeffs_);
    finish_merge();
  }

  /// Collective: merges any in-flight average, then replaces every worker's
  /// weights by their exact average. Afterwards all workers hold identical
  /// weights (use before evaluation or at the end of training).
  void synchronize() {
    require_usable();
    if (pending_) merge_now();
    guarded([&] {
      run_pass<kernels::snapshot_only>(nullptr, {});
      auto req = comm_.iallreduce_average(snapshot_span(), average_span());
      req.wait();
      merge_only(replace_coefficients);
    });
  }

  /// With master weights: copies the user's weights into the master copy
  /// (call after changing the weights outside step(), e.g. loading them).
  void reload_master_weights() {
    if (!options_.master_weights) return;
    backend_.fence();
    std::vector<Storage> w;
    std::vector<Compute> m(arena_size_, Compute(0));
    for (std::size_t i = 0; i < params_.size(); ++i) {
      w.resize(params_.extent(i));
      backend_.copy_to_host(params_.data(i), w.data(), w.size());
      for (std::size_t j = 0; j < w.size(); ++j) m[offsets_[i] + j] = to_compute<Compute>(w[j]);
    }
    backend_.copy_from_host(m.data(), master_.data(), arena_size_);
    backend_.fence();
  }

  const trainer_options& options() const noexcept { return options_; }

  void set_learning_rate(double lr) { optim_.set_learning_rate(lr); }
  double learning_rate() const { return optim_.learning_rate(); }

  std::int64_t steps_taken() const noexcept { return k_; }
  std::int64_t current_round() const noexcept { return round_; }
  const round_plan& current_plan() const noexcept { return plan_; }
  bool average_in_flight() const noexcept { return pending_; }
  /// Step at which the in-flight average will be merged (-1 if none).
  std::int64_t merge_due_at() const noexcept { return pending_ ? merge_step_ : -1; }

  const params_type& parameters() const noexcept { return params_; }
  Comm& communicator() noexcept { return comm_; }
  Policy& policy() noexcept { return policy_; }
  const Optim& optimizer() const noexcept { return optim_; }
  const Merge& merge_rule() const noexcept { return merge_; }
  Backend& backend() noexcept { return backend_; }

  /// Arenas (memory space of the backend): tensor i is at offsets()[i].
  std::span<const Storage> snapshot() const { return {snapshot_.data(), arena_size_}; }
  std::span<const Storage> average() const { return {average_.data(), arena_size_}; }
  std::span<const Compute> optimizer_state(std::size_t s) const {
    return {state_.at(s).data(), arena_size_};
  }
  const std::vector<std::size_t>& offsets() const noexcept { return offsets_; }

  /// Writes this worker's full state: weights, optimizer state, schedule
  /// position and, if an average is in flight, the awaited average (so that
  /// a restart merges it at the same step). Adaptive policy estimates are
  /// not saved; they are re-learned.
  void save(std::ostream& os) {
    require_usable();
    if (pending_) await_pending();
    backend_.fence();
    detail::checkpoint_writer w;
    w.put<std::uint32_t>(type_id<Storage>::value);
    w.put<std::uint32_t>(type_id<Compute>::value);
    w.put<std::uint32_t>(Optim::kind_id);
    w.put<std::uint64_t>(optim_.state_count());
    w.put<std::int32_t>(comm_.rank());
    w.put<std::int32_t>(comm_.size());
    w.put<std::uint64_t>(params_.size());
    for (auto e : params_.extents()) w.put<std::uint64_t>(e);
    w.put(k_);
    w.put(round_);
    w.put(round_start_);
    w.put(plan_.tau);
    w.put(plan_.delay);
    w.put<std::uint8_t>(plan_.synchronize);
    w.put<std::uint8_t>(pending_);
    w.put(launch_step_);
    w.put(merge_step_);
    w.put(pending_coeffs_.a);
    w.put(pending_coeffs_.b);
    w.put(pending_coeffs_.c);
    std::vector<Storage> host;
    for (std::size_t i = 0; i < params_.size(); ++i) {
      host.resize(params_.extent(i));
      backend_.copy_to_host(params_.data(i), host.data(), host.size());
      w.put_array(host.data(), host.size());
    }
    w.put<std::uint8_t>(options_.master_weights);
    std::vector<Compute> host_state(arena_size_);
    for (auto& s : state_) {
      backend_.copy_to_host(s.data(), host_state.data(), arena_size_);
      w.put_array(host_state.data(), arena_size_);
    }
    if (options_.master_weights) {
      backend_.copy_to_host(master_.data(), host_state.data(), arena_size_);
      w.put_array(host_state.data(), arena_size_);
    }
    if (pending_) {
      host.resize(arena_size_);
      backend_.copy_to_host(snapshot_.data(), host.data(), arena_size_);
      w.put_array(host.data(), arena_size_);
      backend_.copy_to_host(average_.data(), host.data(), arena_size_);
      w.put_array(host.data(), arena_size_);
    }
    w.finish(os);
  }

  /// Restores a state written by save() on the same rank of a trainer with
  /// the same storage/compute types, optimizer kind and parameter shapes.
  /// Throws checkpoint_error (and leaves this trainer unchanged) otherwise.
  void load(std::istream& is) {
    require_usable();
    if (request_) {  // discard our own in-flight average; the file decides
      request_->wait();
      request_.reset();
    }
    detail::checkpoint_reader r(is);
    expect(r, type_id<Storage>::value, "storage type");
    expect(r, type_id<Compute>::value, "compute type");
    expect(r, Optim::kind_id, "optimizer kind");
    expect(r, static_cast<std::uint64_t>(optim_.state_count()), "optimizer state count");
    expect(r, static_cast<std::int32_t>(comm_.rank()), "rank");
    expect(r, static_cast<std::int32_t>(comm_.size()), "communicator size");
    expect(r, static_cast<std::uint64_t>(params_.size()), "tensor count");
    for (std::size_t i = 0; i < params_.size(); ++i)
      expect(r, static_cast<std::uint64_t>(params_.extent(i)), "tensor extent");
    const auto k = r.get<std::int64_t>("step");
    const auto round = r.get<std::int64_t>("round");
    const auto round_start = r.get<std::int64_t>("round start");
    round_plan plan;
    plan.tau = r.get<std::int64_t>("tau");
    plan.delay = r.get<std::int64_t>("delay");
    plan.synchronize = r.get<std::uint8_t>("synchronize flag") != 0;
    const bool pending = r.get<std::uint8_t>("pending flag") != 0;
    const auto launch_step = r.get<std::int64_t>("launch step");
    const auto merge_step = r.get<std::int64_t>("merge step");
    merge_coefficients mc;
    mc.a = r.get<double>("merge a");
    mc.b = r.get<double>("merge b");
    mc.c = r.get<double>("merge c");
    DASGD_REQUIRE(k >= 0 && round >= 0 && round_start >= 0 && round_start <= k && plan.tau >= 1 &&
                      plan.delay >= 0 && k <= round_start + plan.tau - 1 &&
                      (!pending || (launch_step < k && merge_step >= k)),
                  checkpoint_error, "checkpoint schedule is inconsistent: step ", k, ", round ",
                  round, " starting at ", round_start, ", tau ", plan.tau, ", pending ", pending,
                  " (launch ", launch_step, ", merge ", merge_step, ")");
    // Stage everything on the host first: a failure leaves us unchanged.
    std::vector<std::vector<Storage>> weights(params_.size());
    for (std::size_t i = 0; i < params_.size(); ++i) {
      weights[i].resize(params_.extent(i));
      r.get_array(weights[i].data(), weights[i].size(), "weights");
    }
    expect(r, static_cast<std::uint8_t>(options_.master_weights), "master-weights flag");
    std::vector<std::vector<Compute>> states(state_.size(), std::vector<Compute>(arena_size_));
    for (auto& s : states) r.get_array(s.data(), arena_size_, "optimizer state");
    std::vector<Compute> master;
    if (options_.master_weights) {
      master.resize(arena_size_);
      r.get_array(master.data(), arena_size_, "master weights");
    }
    std::vector<Storage> snap, avg;
    if (pending) {
      snap.resize(arena_size_);
      avg.resize(arena_size_);
      r.get_array(snap.data(), arena_size_, "snapshot");
      r.get_array(avg.data(), arena_size_, "average");
    }
    r.expect_end();

    for (std::size_t i = 0; i < params_.size(); ++i)
      backend_.copy_from_host(weights[i].data(), params_.data(i), weights[i].size());
    for (std::size_t s = 0; s < state_.size(); ++s)
      backend_.copy_from_host(states[s].data(), state_[s].data(), arena_size_);
    if (options_.master_weights) backend_.copy_from_host(master.data(), master_.data(), arena_size_);
    if (pending) {
      backend_.copy_from_host(snap.data(), snapshot_.data(), arena_size_);
      backend_.copy_from_host(avg.data(), average_.data(), arena_size_);
    }
    backend_.fence();
    k_ = k;
    round_ = round;
    round_start_ = round_start;
    plan_ = plan;
    pending_ = pending;
    launch_step_ = launch_step;
    merge_step_ = merge_step;
    pending_coeffs_ = mc;
  }

 private:
  using pass_type = pass_args<Storage, Compute, memory_space>;

  template <class T>
  static void expect(detail::checkpoint_reader& r, T want, const char* what) {
    const T got = r.template get<T>(what);
    DASGD_REQUIRE(got == want, checkpoint_error, "checkpoint ", what, " is ", got,
                  " but this trainer has ", want);
  }

  std::span<const Storage> snapshot_span() const { return {snapshot_.data(), arena_size_}; }
  std::span<Storage> average_span() { return {average_.data(), arena_size_}; }

  void check_shapes_across_ranks() {
    const auto me = static_cast<std::size_t>(comm_.rank());
    const auto totals = comm_.allgather(params_.total_elements());
    const auto counts = comm_.allgather(params_.size());
    const auto hashes =
        comm_.allgather(detail::shape_hash(type_id<Storage>::value, params_.extents()));
    for (std::size_t r = 0; r < totals.size(); ++r) {
      DASGD_REQUIRE(totals[r] == totals[me] && counts[r] == counts[me], size_mismatch_error,
                    "parameter sizes differ across ranks: rank ", me, " has ", totals[me],
                    " elements in ", counts[me], " tensors, rank ", r, " has ", totals[r],
                    " elements in ", counts[r], " tensors");
      DASGD_REQUIRE(hashes[r] == hashes[me], size_mismatch_error,
                    "parameter shapes or storage types differ across ranks: rank ", me,
                    " and rank ", r, " both have ", totals[me], " elements in ", counts[me],
                    " tensors, but the per-tensor sizes or the storage type differ");
    }
  }

  round_plan validated(round_plan p, std::int64_t round) const {
    DASGD_REQUIRE(p.tau >= 1, config_error, "delay policy planned tau ", p.tau, " for round ",
                  round, "; tau must be >= 1");
    DASGD_REQUIRE(p.delay >= 0, config_error, "delay policy planned delay ", p.delay,
                  " for round ", round, "; delay must be >= 0");
    return p;
  }

  void observe(schedule_event::kind what, bool ready = false) {
    if constexpr (observing_delay_policy<Policy>) policy_.observe({what, k_, ready});
  }

  /// The plan of the round after the current one, checked against it.
  round_plan next_plan() {
    round_plan next = validated(policy_.plan(round_ + 1), round_ + 1);
    DASGD_REQUIRE(plan_.delay < next.tau, config_error, "delay ", plan_.delay, " of round ",
                  round_, " is outside [0, tau) = [0, ", next.tau, ") of round ", round_ + 1,
                  "; at most one average may be in flight");
    return next;
  }

  /// Launches the average of the snapshot just written; returns its delay.
  std::int64_t launch_average(const round_plan& next) {
    // No fence: a device communicator orders the collective after the
    // snapshot pass queued on the compute stream (communicator concept).
    guarded([&] { request_.emplace(comm_.iallreduce_average(snapshot_span(), average_span())); });
    pending_ = true;
    launch_step_ = k_;
    merge_step_ = k_ + plan_.delay;
    pending_coeffs_ = plan_.synchronize ? replace_coefficients : merge_.coefficients();
    observe(schedule_event::kind::launch);
    const std::int64_t delay = plan_.delay;
    ++round_;
    round_start_ = k_ + 1;
    plan_ = next;
    return delay;
  }

  void poll() {
    if (!request_) return;
    bool ready = false;
    guarded([&] { ready = request_->test(); });
    observe(schedule_event::kind::poll, ready);
  }

  /// Blocks until the in-flight average may be consumed; returns the time
  /// spent blocked.
  double await_pending() {
    if (!request_) return 0.0;  // restored from a checkpoint: already here
    double waited = 0.0;
    guarded([&] {
      const bool ready = request_->test();
      observe(schedule_event::kind::poll, ready);
      if (!ready) {
        observe(schedule_event::kind::wait_begin);
        const auto t0 = std::chrono::steady_clock::now();
        request_->wait();
        waited = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
        observe(schedule_event::kind::wait_end, true);
      } else {
        request_->wait();  // device communicators order the compute stream here
      }
    });
    request_.reset();
    return waited;
  }

  void finish_merge() {
    pending_ = false;
    observe(schedule_event::kind::merge);
  }

  void merge_only(const merge_coefficients& mc) {
    if (mc.c != 0.0)
      run_pass<kernels::correct_only>(nullptr, mc);
    else
      run_pass<kernels::mix_only>(nullptr, mc);
  }

  template <kernels::stage S>
  void run_pass(const grads_type* grads, const merge_coefficients& mc) {
    pass_type a;
    a.weights = &params_;
    a.grads = grads;
    a.offsets = offsets_.data();
    a.master = options_.master_weights ? master_.data() : nullptr;
    for (std::size_t s = 0; s < state_.size(); ++s) a.state[s] = state_[s].data();
    a.snapshot = snapshot_.data();
    a.average = average_.data();
    a.merge = {Compute(mc.a), Compute(mc.b), Compute(mc.c)};
    if constexpr (has(S, kernels::stage::local_step)) {
      optim_.template visit_element<Compute>(
          k_, [&](const auto& elem) { backend_.template run<S>(a, elem); });
    } else {
      backend_.template run<S>(a, kernels::no_step_element<Compute>{});
    }
  }

  /// Runs a communicator operation; a failure poisons the trainer so that
  /// training cannot go on with half-merged or stale state unnoticed.
  template <class F>
  void guarded(F&& f) {
    try {
      f();
    } catch (const std::exception& e) {
      failure_ = e.what();
      request_.reset();
      throw;
    }
  }

  void require_usable() const {
    DASGD_REQUIRE(failure_.empty(), state_error,
                  "trainer is unusable after a communicator failure: ", failure_);
  }

  params_type params_;
  Comm comm_;
  Policy policy_;
  Optim optim_;
  Merge merge_;
  Backend backend_;
  trainer_options options_;

  std::vector<std::size_t> offsets_;
  std::size_t arena_size_ = 0;
  typename Backend::template buffer<Storage> snapshot_;
  typename Backend::template buffer<Storage> average_;
  std::vector<typename Backend::template buffer<Compute>> state_;
  typename Backend::template buffer<Compute> master_;

  std::int64_t k_ = 0;
  std::int64_t round_ = 0;
  std::int64_t round_start_ = 0;
  round_plan plan_;

  std::optional<request_type> request_;
  bool pending_ = false;
  std::int64_t launch_step_ = -1;
  std::int64_t merge_step_ = -1;
  merge_coefficients pending_coeffs_;
  std::string failure_;
};

template <class T, class Space, class Comm, class Policy, class Optim, class Merge>
delayed_averager(tensor_list<T, Space>, Comm, Policy, Optim, Merge)
    -> delayed_averager<T, Comm, Policy, Optim, Merge, default_backend_t<Space>>;

template <class T, class Space, class Comm, class Policy, class Optim, class Merge>
delayed_averager(tensor_list<T, Space>, Comm, Policy, Optim, Merge, trainer_options)
    -> delayed_averager<T, Comm, Policy, Optim, Merge, default_backend_t<Space>>;

template <class T, class Space, class Comm, class Policy, class Optim, class Merge, class Backend>
  requires update_backend<Backend>
delayed_averager(tensor_list<T, Space>, Comm, Policy, Optim, Merge, Backend,
                 trainer_options = {}) -> delayed_averager<T, Comm, Policy, Optim, Merge, Backend>;

}  // namespace dasgd
