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
//
// Failure semantics: an error before a step writes anything leaves the
// trainer as it was (the caller may fix the cause and retry); any error
// after the first write, and every communicator failure, poisons the
// trainer: every later call throws state_error naming the first failure.
// Nothing is ever half-applied silently.
#pragma once

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstring>
#include <cstdint>
#include <cstdio>
#include <fstream>
#include <istream>
#include <limits>
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
#include "averaging.hpp"
#include "backend.hpp"
#include "checkpoint.hpp"
#include "checkpoint_file.hpp"
#include "collective.hpp"
#include "communicator.hpp"
#include "configuration.hpp"
#include "delay_policy.hpp"
#include "error.hpp"
#include "local_optimizer.hpp"
#include "merge_rule.hpp"
#include "precision.hpp"
#include "registered_buffers.hpp"
#include "tensor_list.hpp"
#include "trainer_options.hpp"

namespace dasgd {

namespace detail {

/// Limits that keep every schedule computation far from overflow (a forged
/// checkpoint or a policy returning huge values is rejected, not UB).
inline constexpr std::int64_t max_tau = std::int64_t(1) << 40;
inline constexpr std::int64_t max_steps = std::int64_t(1) << 60;

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

/// Throws config_error when two tensors of the list share memory: a tensor
/// listed twice would be updated and merged twice.
template <class T, class Space>
void require_disjoint(const tensor_list<T, Space>& list, const char* what) {
  std::vector<std::size_t> order(list.size());
  for (std::size_t i = 0; i < order.size(); ++i) order[i] = i;
  const auto begin = [&](std::size_t i) { return reinterpret_cast<std::uintptr_t>(list.data(i)); };
  const auto end = [&](std::size_t i) { return begin(i) + list.extent(i) * sizeof(T); };
  std::sort(order.begin(), order.end(), [&](std::size_t a, std::size_t b) { return begin(a) < begin(b); });
  for (std::size_t j = 1; j < order.size(); ++j) {
    const std::size_t a = order[j - 1], b = order[j];
    if (list.extent(a) == 0 || list.extent(b) == 0) continue;
    DASGD_REQUIRE(end(a) <= begin(b), config_error, what, " tensors ", std::min(a, b), " and ",
                  std::max(a, b), " share memory (", list.extent(a), " and ", list.extent(b),
                  " elements at ", static_cast<const void*>(list.data(a)), " and ",
                  static_cast<const void*>(list.data(b)),
                  "); each tensor may be listed only once and views must not overlap");
  }
}

}  // namespace detail

template <class Storage, class Comm, class Policy, class Optim, class Merge,
          class Backend = host_backend,
          class Compute = default_compute_t<Storage>>
  requires storage_type<Storage> && compute_type<Compute> && communicator<Comm, Storage> &&
           communicator<Comm, Compute> && delay_policy<Policy> && local_optimizer<Optim> &&
           merge_rule<Merge> && update_backend<Backend>
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

  /// The merge rule keeps an outer optimizer state (merge::outer_sgd).
  static constexpr bool outer_merge = requires(const Merge& m) { m.outer(); };

  /// The communicator asks for the snapshots in its own type (wire_format).
  static constexpr bool fixed_wire = !std::is_void_v<comm_wire_type_t<Comm>>;
  /// What the snapshot and the average arenas hold when fixed_wire.
  using fixed_wire_type = std::conditional_t<fixed_wire, comm_wire_type_t<Comm>, Storage>;
  static_assert(!fixed_wire || (dasgd::storage_type<fixed_wire_type> &&
                                communicator<Comm, fixed_wire_type>),
                "the communicator's wire type is not a storage type it can average");

  /// Collective: every rank constructs its trainer at the same point. Checks
  /// the configuration locally, then that all ranks hold the same parameter
  /// shapes (size_mismatch_error naming both sides otherwise) and the same
  /// configuration (config_error naming the first differing setting).
  delayed_averager(params_type params, Comm comm, Policy policy, Optim optim, Merge merge,
                   Backend backend = {}, trainer_options options = {})
      : params_(std::move(params)),
        comm_(std::move(comm)),
        policy_(std::move(policy)),
        optim_(std::move(optim)),
        merge_(std::move(merge)),
        backend_(std::move(backend)),
        options_(std::move(options)) {
    DASGD_REQUIRE(comm_.size() >= 1, config_error, "communicator has size ", comm_.size(),
                  "; it needs at least one rank");
    DASGD_REQUIRE(comm_.rank() >= 0 && comm_.rank() < comm_.size(), config_error,
                  "communicator reports rank ", comm_.rank(), " outside [0, ", comm_.size(), ")");
    DASGD_REQUIRE(!params_.empty(), config_error, "the parameter list is empty");
    detail::require_disjoint(params_, "parameter");
    optim_.validate();
    validate_per_tensor();
    validate_state_averaging();
    if constexpr (requires { policy_.validate(); }) policy_.validate();
    if constexpr (requires { merge_.validate(); }) merge_.validate();
    DASGD_REQUIRE(optim_.state_count() <= pass_storage::max_state, config_error, "optimizer '",
                  optim_.name(), "' needs ", optim_.state_count(), " state buffers, at most ",
                  pass_storage::max_state, " are supported");
    detail::validate_coefficients(merge_.coefficients(), merge_.name());
    if constexpr (requires { backend_.stream(); comm_.compute_stream(); }) {
      DASGD_REQUIRE(static_cast<const void*>(backend_.stream()) ==
                        static_cast<const void*>(comm_.compute_stream()),
                    config_error, "the backend runs on stream ",
                    static_cast<const void*>(backend_.stream()),
                    " but the communicator orders its collectives after stream ",
                    static_cast<const void*>(comm_.compute_stream()),
                    "; build both on the same stream, or the average may read a snapshot "
                    "that is not written yet");
    }
    plan_ = validated(policy_.plan(0), 0);
    check_shapes_across_ranks();
    detail::require_same_configuration(comm_, configuration().text());

    offsets_ = detail::arena_offsets(params_.extents(), arena_size_);
    layout_.plane = arena_size_;
    layout_.state_planes =
        options_.optimizer_state == averaging::averaged ? optim_.state_count() : 0;
    const std::size_t wire = layout_.total();
    if constexpr (fixed_wire) {
      snapshot_w_ = backend_.template allocate<fixed_wire_type>(wire);
      average_w_ = backend_.template allocate<fixed_wire_type>(wire);
    } else if (options_.master_weights) {
      snapshot_c_ = backend_.template allocate<Compute>(wire);
      average_c_ = backend_.template allocate<Compute>(wire);
    } else {
      snapshot_ = backend_.template allocate<Storage>(wire);
      average_ = backend_.template allocate<Storage>(wire);
    }
    for (std::size_t s = 0; s < optim_.state_count(); ++s)
      state_.push_back(backend_.template allocate<Compute>(arena_size_));
    if constexpr (outer_merge) outer_ = backend_.template allocate<Compute>(arena_size_);
    if (options_.nonfinite != nonfinite_guard::off)
      nonfinite_flag_ = backend_.template allocate<std::uint32_t>(1);
    if (options_.master_weights) {
      master_ = backend_.template allocate<Compute>(arena_size_);
      reload_master_weights();
    }
    single_grad_.add(static_cast<const Storage*>(params_.data(0)), params_.extent(0));
  }

  delayed_averager(params_type params, Comm comm, Policy policy, Optim optim, Merge merge,
                   trainer_options options)
      : delayed_averager(std::move(params), std::move(comm), std::move(policy), std::move(optim),
                         std::move(merge), Backend{}, std::move(options)) {}

  delayed_averager(const delayed_averager&) = delete;
  delayed_averager& operator=(const delayed_averager&) = delete;

  /// Never returns while a pass may still run or the communicator may still
  /// write into our arenas: the backend is fenced first, then an average in
  /// flight is awaited and DISCARDED (its merge step has not come). Call
  /// merge_now() or synchronize() before to keep it. A discard, or an error
  /// swallowed here, is reported through trainer_options::warning. After a
  /// communicator failure the request is dropped without waiting again (the
  /// communicators make that safe).
  ~delayed_averager() {
    try {
      backend_.fence();
    } catch (const std::exception& e) {
      warn(detail::concat("fencing the backend failed: ", e.what()));
    }
    if (!request_) return;
    if (comm_failed_) {
      request_.reset();
      return;
    }
    try {
      request_->wait();
      if (failure_.empty())
        warn(detail::concat("the average launched at step ", launch_step_,
                            " (merge due at step ", merge_step_,
                            ") was still in flight when the trainer was destroyed after ", k_,
                            " steps; it was discarded (call merge_now() or synchronize() "
                            "first to keep it)"));
    } catch (const std::exception& e) {
      warn(detail::concat("the average launched at step ", launch_step_,
                          " failed while the trainer was destroyed: ", e.what()));
    }
  }

  /// One training step with this worker's gradients for the current weights.
  step_report step(const grads_type& grads) {
    require_usable();
    check_health();
    require_same_shape(params_, grads, "parameters", "gradients");
    report_collective_time();
    observe(schedule_event::kind::step_begin);

    step_report rep;
    rep.step = k_;
    rep.round = round_;
    const bool launch = k_ == round_start_ + plan_.tau - 1;
    const bool merge_here = pending_ && k_ == merge_step_;
    DASGD_REQUIRE(!(launch && pending_ && !merge_here), state_error, "step ", k_,
                  " must launch an average while the one launched at step ", launch_step_,
                  " (merge due at step ", merge_step_, ") is still in flight");
    DASGD_REQUIRE(k_ < detail::max_steps, state_error, "step counter ", k_,
                  " reached its limit");
    // Plan the next round before touching the weights, so that a bad plan
    // throws with this step not applied (the caller may fix and retry).
    round_plan next;
    if (launch) next = next_plan();

    // From here on a failure poisons the trainer: the weights are written,
    // or an average has been consumed.
    bool committed = false;
    try {
      if (merge_here) {  // never also a launch step: delay < the next tau
        committed = true;
        rep.wait_seconds = await_pending();
        rep.merged = verdict(rep, "the step average").merge;
        if (!rep.merged)
          run_pass<kernels::plain_step>(&grads, {});
        else if (pending_outer())
          run_outer_pass<kernels::step_and_outer>(&grads);
        else if (pending_coeffs_.c != 0.0)
          run_pass<kernels::step_and_correct>(&grads, pending_coeffs_);
        else
          run_pass<kernels::step_and_mix>(&grads, pending_coeffs_);
        finish_merge();
      } else {
        if (pending_) poll();
        committed = true;
        if (launch)
          run_pass<kernels::step_and_snapshot>(&grads, {}, true);
        else
          run_pass<kernels::plain_step>(&grads, {});
      }

      if (launch) {
        const std::int64_t delay = launch_average(next);
        rep.launched = true;
        if (delay == 0) {
          rep.wait_seconds += await_pending();
          rep.merged = verdict(rep, "the step average").merge;
          if (rep.merged) merge_pending();
          finish_merge();
        }
      }
    } catch (const std::exception& e) {
      if (committed) poison(e.what());
      throw;
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

  /// step() for a model with a single parameter tensor (no allocation).
  template <parameter_buffer G>
    requires(!detail::is_tensor_list_v<std::remove_cvref_t<G>>)
  step_report step(const G& grad) {
    static_assert(std::is_same_v<std::remove_const_t<tensor_value_t<G>>, Storage>,
                  "the gradient's element type differs from the parameters' storage type");
    static_assert(std::is_same_v<tensor_space_t<G>, memory_space>,
                  "the gradient lives in another memory space than the trainer's backend");
    if constexpr (std::is_same_v<std::remove_const_t<tensor_value_t<G>>, Storage> &&
                  std::is_same_v<tensor_space_t<G>, memory_space>) {
      single_grad_.rebind(0, static_cast<const Storage*>(tensor_data(grad)), tensor_size(grad));
      return step(single_grad_);
    } else {
      return {};
    }
  }

  /// Waits for the in-flight average and merges it into the weights now
  /// (without a local step). Throws state_error if nothing is in flight.
  void merge_now() {
    require_usable();
    check_health();
    DASGD_REQUIRE(pending_, state_error, "merge requested at step ", k_,
                  " but no average is in flight",
                  launch_step_ >= 0 ? detail::concat(" (the last one, launched at step ",
                                                     launch_step_, ", is already merged)")
                                    : std::string(" (none has been launched yet)"));
    try {
      await_pending();
      step_report rep;
      if (verdict(rep, "the step average").merge) merge_pending();
      finish_merge();
    } catch (const std::exception& e) {
      poison(e.what());
      throw;
    }
  }

  /// Collective: merges any in-flight average, then replaces every worker's
  /// weights by their exact average. Afterwards all workers hold identical
  /// weights (use before evaluation or at the end of training). With the
  /// guard in skip mode, a non-finite snapshot on any rank leaves every
  /// rank's weights as they are (returns false); true otherwise.
  bool synchronize() {
    require_usable();
    if (pending_) merge_now();
    check_health();
    bool merged = true;
    try {
      run_pass<kernels::snapshot_only>(nullptr, {}, true);
      const auto sig = signature(collective_purpose::synchronize, 0);
      guarded([&] {
        auto req = start_average(sig);
        req.wait();
        agreement_ = req.agreement();
      });
      step_report rep;
      merged = verdict(rep, "synchronize()").merge;
      if (merged) merge_only(replace_coefficients);
      check_health();
    } catch (const std::exception& e) {
      poison(e.what());
      throw;
    }
    return merged;
  }

  /// Collective: every rank's weights (and master weights) become rank
  /// `root`'s, exactly; optimizer state stays local unless it is averaged
  /// (trainer_options::optimizer_state), and averaged registered buffers
  /// follow the weights. Call it once after
  /// construction so that all workers start from the same model (as DDP
  /// does). Not while an average is in flight (state_error).
  void broadcast_parameters(int root = 0) {
    require_usable();
    check_health();
    DASGD_REQUIRE(root >= 0 && root < comm_.size(), config_error, "broadcast root ", root,
                  " is outside [0, ", comm_.size(), ")");
    DASGD_REQUIRE(!pending_, state_error, "broadcast_parameters at step ", k_,
                  " while the average launched at step ", launch_step_,
                  " is in flight; merge it first (merge_now() or synchronize())");
    try {
      run_pass<kernels::snapshot_only>(nullptr, {}, comm_.rank() == root);
      const auto sig = signature(collective_purpose::broadcast, 0);
      guarded([&] {
        auto req = with_wire([&](auto& snap, auto& avg) {
          using W = std::remove_cvref_t<decltype(*snap.data())>;
          return comm_.ibroadcast(std::span<const W>(snap.data(), layout_.total()),
                                  std::span<W>(avg.data(), layout_.total()), root, sig);
        });
        req.wait();
        agreement_ = req.agreement();
      });
      if (agreement_.status_rank >= 0)
        DASGD_THROW(nonfinite_error, "broadcast_parameters: rank ", agreement_.status_rank,
                    " (the root) holds a non-finite value in tensor ", agreement_.status_detail,
                    " at step ", k_);
      merge_only(replace_coefficients);
      check_health();
    } catch (const std::exception& e) {
      poison(e.what());
      throw;
    }
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
  /// Collectives this trainer has issued (the sequence number of the next).
  std::uint64_t collectives_issued() const noexcept { return collectives_; }
  /// The first failure that made this trainer unusable ("" while usable).
  const std::string& failure() const noexcept { return failure_; }

  const params_type& parameters() const noexcept { return params_; }
  Comm& communicator() noexcept { return comm_; }
  Policy& policy() noexcept { return policy_; }
  const Optim& optimizer() const noexcept { return optim_; }
  const Merge& merge_rule() const noexcept { return merge_; }
  Backend& backend() noexcept { return backend_; }

  /// The settings every rank must share, as "key=value; ..." fields.
  detail::configuration configuration() const { return configuration_of(buffers_); }

  /// Collective (every rank at the same point, with the same shapes and
  /// modes): registers tensors the trainer keeps with the model but does
  /// not optimize, e.g. batch-norm running statistics (no gradient, no
  /// optimizer state, no weight decay). averaging::averaged: written to the
  /// snapshot in the launch step's pass, sent in the same collective after
  /// the weights (and any optimizer state planes), and merged by the
  /// weights' rule in the merge step's pass; synchronize() and
  /// broadcast_parameters() include them. averaging::local: left as the
  /// user's code leaves them. Both kinds are saved in checkpoints and are
  /// part of the configuration the ranks compare. Call it right after
  /// construction, before any step(), load(), broadcast_parameters() or
  /// synchronize() (state_error otherwise: the size of the average is fixed
  /// from then on); it may be called several times. Throws config_error,
  /// registering nothing, for an empty list, a buffer sharing memory with
  /// a parameter or another buffer, an averaged buffer with an outer
  /// optimizer merge, or ranks registering differently (naming the
  /// difference and the rank).
  void register_buffers(params_type buffers, averaging mode) {
    require_usable();
    DASGD_REQUIRE(k_ == 0 && collectives_ == 0 && !loaded_ && !pending_, state_error,
                  "register_buffers() after ", k_, " steps and ", collectives_, " collectives",
                  loaded_ ? ", after load()" : "",
                  "; register buffers right after constructing the trainer, before any step(), "
                  "load(), broadcast_parameters() or synchronize()");
    DASGD_REQUIRE(!buffers.empty(), config_error, "register_buffers: the buffer list is empty");
    if constexpr (outer_merge)
      DASGD_REQUIRE(mode != averaging::averaged, config_error,
                    "register_buffers: averaged buffers cannot be merged by '", merge_.name(),
                    "', whose outer step is defined for the weights only; use mix, additive or "
                    "linear, or register them as averaging::local");
    params_type everything = params_;
    for (std::size_t i = 0; i < buffers_.all().size(); ++i)
      everything.add(buffers_.all().data(i), buffers_.all().extent(i));
    for (std::size_t i = 0; i < buffers.size(); ++i) everything.add(buffers.data(i), buffers.extent(i));
    detail::require_disjoint(everything, "parameter and buffer (parameters first, then buffers in "
                                         "registration order)");
    auto next = buffers_.with(buffers, mode);
    detail::require_same_configuration(comm_, configuration_of(next).text());
    detail::snapshot_layout grown = layout_;
    grown.buffer_elements = next.averaged_elements();
    if (grown.total() != layout_.total()) {
      // Nothing is in flight (checked above), so the arenas hold nothing
      // to keep. Both are allocated before either is replaced.
      with_wire([&](auto& snap, auto& avg) {
        using W = std::remove_cvref_t<decltype(*snap.data())>;
        auto s2 = backend_.template allocate<W>(grown.total());
        auto a2 = backend_.template allocate<W>(grown.total());
        snap = std::move(s2);
        avg = std::move(a2);
        return 0;
      });
    }
    buffers_ = std::move(next);
    layout_ = grown;
  }

  /// Every registered buffer, in registration order.
  const params_type& buffers() const noexcept { return buffers_.all(); }
  /// How the snapshot and the average arenas are laid out: the weights'
  /// plane, the optimizer state planes, the averaged buffers.
  const detail::snapshot_layout& average_layout() const noexcept { return layout_; }

 private:
  detail::configuration configuration_of(
      const detail::registered_buffers<Storage, memory_space>& bufs) const {
    detail::configuration c;
    c.add("storage", detail::element_type_name(type_id<Storage>::value))
        .add("compute", detail::element_type_name(type_id<Compute>::value))
        .add("master_weights", options_.master_weights ? "1" : "0")
        .add("wire", wire_name(options_.master_weights))
        .add("nonfinite_guard", to_string(options_.nonfinite))
        .add("backend", backend_name())
        .add("optimizer", detail::describe_component(optim_))
        .add("learning_rate", detail::concat(optim_.learning_rate()))
        .add("merge", detail::describe_component(merge_))
        .add("policy", detail::describe_component(policy_))
        .add("per_tensor", describe_per_tensor())
        .add("first_round", detail::concat("tau=", plan_.tau, ", delay=", plan_.delay,
                                           ", synchronize=", plan_.synchronize ? 1 : 0,
                                           ", scope=", plan_.scope))
        .add("optimizer_state", to_string(options_.optimizer_state))
        .add("buffers", bufs.describe());
    return c;
  }

 public:

  /// Arenas (memory space of the backend): tensor i is at offsets()[i].
  /// Without master weights the snapshot and the average are kept in the
  /// storage type; with them, in the compute type (snapshot_compute());
  /// with a wire_format communicator, in its wire type (snapshot_wire()).
  std::span<const Storage> snapshot() const { return {snapshot_.data(), snapshot_.size()}; }
  std::span<const Storage> average() const { return {average_.data(), average_.size()}; }
  std::span<const Compute> snapshot_compute() const { return {snapshot_c_.data(), snapshot_c_.size()}; }
  /// With a wire_format communicator: the arenas in its wire type.
  std::span<const fixed_wire_type> snapshot_wire() const { return {snapshot_w_.data(), snapshot_w_.size()}; }
  std::span<const fixed_wire_type> average_wire() const { return {average_w_.data(), average_w_.size()}; }
  std::span<const Compute> average_compute() const { return {average_c_.data(), average_c_.size()}; }
  /// The master weights (compute type, arena layout; empty without them).
  std::span<const Compute> master_weights() const { return {master_.data(), master_.size()}; }
  std::span<const Compute> optimizer_state(std::size_t s) const {
    return {state_.at(s).data(), arena_size_};
  }
  const std::vector<std::size_t>& offsets() const noexcept { return offsets_; }

  /// Writes this worker's full state: weights, optimizer state, schedule
  /// position, the configuration and, if an average is in flight, the
  /// awaited average (so that a restart merges it at the same step). The
  /// payload streams through a bounded host buffer; the stream is flushed
  /// and checked (checkpoint_error when writing failed). Adaptive policy
  /// estimates are not saved; they are re-learned.
  void save(std::ostream& os) {
    require_usable();
    check_health();
    try {
      if (pending_) await_pending();
      backend_.fence();
      check_health();  // an abort after the merge was queued poisons, not saves
    } catch (const std::exception& e) {
      poison(e.what());
      throw;
    }
    detail::checkpoint_header_writer h;
    h.put<std::uint32_t>(type_id<Storage>::value);
    h.put<std::uint32_t>(type_id<Compute>::value);
    h.put<std::uint32_t>(Optim::kind_id);
    h.put<std::uint64_t>(optim_.state_count());
    h.put<std::int32_t>(comm_.rank());
    h.put<std::int32_t>(comm_.size());
    h.put<std::uint64_t>(params_.size());
    for (auto e : params_.extents()) h.put<std::uint64_t>(e);
    h.put<std::uint8_t>(options_.master_weights);
    h.put(k_);
    h.put(round_);
    h.put(round_start_);
    h.put(plan_.tau);
    h.put(plan_.delay);
    h.put<std::uint8_t>(plan_.synchronize);
    h.put<std::uint32_t>(plan_.scope);
    h.put<std::uint8_t>(pending_);
    h.put(launch_step_);
    h.put(merge_step_);
    h.put(pending_coeffs_.a);
    h.put(pending_coeffs_.b);
    h.put(pending_coeffs_.c);
    h.put(collectives_);
    h.put_string(configuration().text({"learning_rate"}));
    h.write(os, payload_bytes(pending_));

    detail::checkpoint_payload_writer w(os, payload_bytes(pending_));
    for (std::size_t i = 0; i < params_.size(); ++i) save_array(w, params_.data(i), params_.extent(i));
    const auto& bufs = buffers_.all();
    for (std::size_t i = 0; i < bufs.size(); ++i) save_array(w, bufs.data(i), bufs.extent(i));
    for (auto& s : state_) save_array(w, s.data(), arena_size_);
    if (options_.master_weights) save_array(w, master_.data(), arena_size_);
    if constexpr (outer_merge) save_array(w, outer_.data(), arena_size_);
    if (pending_) {
      with_wire([&](auto& snap, auto& avg) {
        save_array(w, snap.data(), layout_.total());
        save_array(w, avg.data(), layout_.total());
        return 0;
      });
    }
    w.finish();
  }

  /// Restores a state written by save() on the same rank of a trainer with
  /// the same storage/compute types, optimizer kind, parameter shapes and
  /// (unless options.allow_config_change) the same configuration. Every
  /// field is validated. Throws checkpoint_error and leaves this trainer
  /// unchanged otherwise. On a seekable stream the payload is verified
  /// (CRC) in a first bounded pass and read into place in a second, so no
  /// copy of the whole state is held in host memory; other streams are
  /// staged in host memory (at most the announced, validated size). A read
  /// failure in the second pass poisons the trainer. The stream is left
  /// right after the checkpoint.
  void load(std::istream& is, checkpoint_load_options lo = {}) {
    require_usable();
    detail::checkpoint_header_reader r(is);
    expect(r, type_id<Storage>::value, "storage type");
    expect(r, type_id<Compute>::value, "compute type");
    expect(r, Optim::kind_id, "optimizer kind");
    expect(r, static_cast<std::uint64_t>(optim_.state_count()), "optimizer state count");
    expect(r, static_cast<std::int32_t>(comm_.rank()), "rank");
    expect(r, static_cast<std::int32_t>(comm_.size()), "communicator size");
    expect(r, static_cast<std::uint64_t>(params_.size()), "tensor count");
    for (std::size_t i = 0; i < params_.size(); ++i)
      expect(r, static_cast<std::uint64_t>(params_.extent(i)), "tensor extent");
    expect(r, static_cast<std::uint8_t>(options_.master_weights), "master-weights flag");
    saved_state st;
    st.k = r.get<std::int64_t>("step");
    st.round = r.get<std::int64_t>("round");
    st.round_start = r.get<std::int64_t>("round start");
    st.plan.tau = r.get<std::int64_t>("tau");
    st.plan.delay = r.get<std::int64_t>("delay");
    st.plan.synchronize = r.get<std::uint8_t>("synchronize flag") != 0;
    st.plan.scope = r.get<std::uint32_t>("scope");
    st.pending = r.get<std::uint8_t>("pending flag") != 0;
    st.launch_step = r.get<std::int64_t>("launch step");
    st.merge_step = r.get<std::int64_t>("merge step");
    st.coeffs.a = r.get<double>("merge a");
    st.coeffs.b = r.get<double>("merge b");
    st.coeffs.c = r.get<double>("merge c");
    st.collectives = r.get<std::uint64_t>("collective count");
    // A checkpoint written before the optimizer_state and buffers fields
    // existed was written with their defaults: compare it as such.
    const std::string config = detail::configuration::with_defaults(
        r.get_string("configuration", 1u << 20), {{"optimizer_state", "local"}, {"buffers", "none"}});
    r.expect_end();
    validate(st);
    const std::string mine = configuration().text({"learning_rate"});
    if (!lo.allow_config_change && config != mine) {
      const auto [a, b] = detail::configuration::first_difference(config, mine);
      DASGD_THROW(checkpoint_error, "checkpoint was written by a trainer configured with ", a,
                  " but this trainer has ", b,
                  " (pass checkpoint_load_options{.allow_config_change = true} to accept it)");
    }
    // What the payload holds must match even when the configuration may
    // change: the registered buffers, and the state planes of an average
    // in flight.
    using cfg = detail::configuration;
    const std::string saved_buffers = cfg::field(config, "buffers", "none");
    DASGD_REQUIRE(saved_buffers == buffers_.describe(), checkpoint_error,
                  "checkpoint holds registered buffers ", saved_buffers,
                  " but this trainer has ", buffers_.describe(),
                  "; register the same buffers (register_buffers) before load()");
    const std::string saved_state = cfg::field(config, "optimizer_state", "local");
    DASGD_REQUIRE(!st.pending || saved_state == to_string(options_.optimizer_state),
                  checkpoint_error, "checkpoint has an average in flight with optimizer_state=",
                  saved_state, " but this trainer has optimizer_state=",
                  to_string(options_.optimizer_state),
                  "; the in-flight average must be merged as it was launched");
    DASGD_REQUIRE(r.payload_bytes() == payload_bytes(st.pending), checkpoint_error,
                  "checkpoint payload has ", r.payload_bytes(), " bytes, this trainer expects ",
                  payload_bytes(st.pending));

    // Our own in-flight average is dropped only once the file is known good.
    const auto start = is.tellg();
    const bool seekable = start != std::istream::pos_type(-1);
    if (seekable) {
      detail::checkpoint_payload_reader pass1(is, r.payload_bytes());
      pass1.skip(r.payload_bytes(), "payload");
      const std::uint32_t crc = pass1.verify();
      const auto end = is.tellg();
      is.seekg(start);
      DASGD_REQUIRE(is.good(), checkpoint_error, "cannot seek back in the checkpoint stream");
      discard_in_flight();
      try {
        detail::checkpoint_payload_reader pass2(is, r.payload_bytes());
        read_payload([&](void* p, std::size_t n, const char* what) { pass2.read(p, n, what); },
                     st.pending);
        DASGD_REQUIRE(pass2.verify() == crc, checkpoint_error,
                      "checkpoint changed between its verification and its reading");
        is.seekg(end);
      } catch (const std::exception& e) {
        poison(detail::concat("loading a checkpoint failed half-way: ", e.what()));
        throw;
      }
    } else {
      std::vector<unsigned char> staged(static_cast<std::size_t>(r.payload_bytes()));
      detail::checkpoint_payload_reader pass(is, r.payload_bytes());
      pass.read(staged.data(), staged.size(), "payload");
      pass.verify();
      discard_in_flight();
      std::size_t pos = 0;
      read_payload(
          [&](void* p, std::size_t n, const char*) {
            std::memcpy(p, staged.data() + pos, n);
            pos += n;
          },
          st.pending);
    }
    backend_.fence();
    k_ = st.k;
    round_ = st.round;
    round_start_ = st.round_start;
    plan_ = st.plan;
    pending_ = st.pending;
    launch_step_ = st.launch_step;
    merge_step_ = st.merge_step;
    pending_coeffs_ = st.coeffs;
    collectives_ = st.collectives;
    agreement_ = {};
    finished_request_.reset();
    loaded_ = true;
  }

  /// save() to `path` atomically: a temporary file next to it, flushed and
  /// fsync'ed, then renamed over `path` (and the folder fsync'ed), so a
  /// crash leaves either the old checkpoint or the new one.
  void save_file(const std::string& path) {
    detail::write_file_atomically(path, [&](std::ostream& os) { save(os); });
  }

  /// load() from a file written by save_file() (or save()).
  void load_file(const std::string& path, checkpoint_load_options lo = {}) {
    std::ifstream is(path, std::ios::binary);
    DASGD_REQUIRE(is.is_open(), checkpoint_error, "cannot open checkpoint file '", path, "'");
    load(is, lo);
  }

 private:
  using pass_storage = pass_args<Storage, Compute, memory_space, Storage>;

  struct merge_verdict {
    bool merge = true;
  };

  struct saved_state {
    std::int64_t k = 0, round = 0, round_start = 0;
    round_plan plan;
    bool pending = false;
    std::int64_t launch_step = -1, merge_step = -1;
    merge_coefficients coeffs;
    std::uint64_t collectives = 0;
  };

  template <class T>
  static void expect(detail::checkpoint_header_reader& r, T want, const char* what) {
    const T got = r.template get<T>(what);
    DASGD_REQUIRE(got == want, checkpoint_error, "checkpoint ", what, " is ", +got,
                  " but this trainer has ", +want);
  }

  /// Every schedule field of a checkpoint, bounded so that no later
  /// computation can overflow and every later step stays valid.
  static void validate(const saved_state& s) {
    using detail::max_steps;
    using detail::max_tau;
    const bool counters = s.k >= 0 && s.k < max_steps && s.round >= 0 && s.round <= s.k &&
                          s.round_start >= 0 && s.round_start <= s.k;
    // Each condition is evaluated only once the ones before it hold, so
    // that the sums below stay within range.
    const bool plan = counters && s.plan.tau >= 1 && s.plan.tau <= max_tau &&
                      s.plan.delay >= 0 && s.plan.delay < s.plan.tau &&
                      s.k <= s.round_start + s.plan.tau - 1;
    // An average in flight was launched at the last step of the previous
    // round and is merged before this round's launch.
    const bool in_flight = plan && (!s.pending ||
                           (s.launch_step == s.round_start - 1 && s.merge_step >= s.k &&
                            s.merge_step < s.round_start + s.plan.tau - 1));
    const bool coeffs = std::isfinite(s.coeffs.a) && std::isfinite(s.coeffs.b) &&
                        std::isfinite(s.coeffs.c);
    DASGD_REQUIRE(counters && plan && in_flight && coeffs &&
                      s.collectives <= static_cast<std::uint64_t>(max_steps),
                  checkpoint_error, "checkpoint schedule is invalid: step ", s.k, ", round ",
                  s.round, " starting at ", s.round_start, ", tau ", s.plan.tau, ", delay ",
                  s.plan.delay, ", pending ", s.pending, " (launch ", s.launch_step, ", merge ",
                  s.merge_step, "), merge coefficients a=", s.coeffs.a, " b=", s.coeffs.b,
                  " c=", s.coeffs.c, ", collectives ", s.collectives);
  }

  /// The parameter groups as text: "default" or "lr_scale:decay" per tensor.
  std::string describe_per_tensor() const {
    if (options_.per_tensor.empty()) return "default";
    std::string s;
    for (const auto& t : options_.per_tensor)
      s += detail::concat(s.empty() ? "" : " ", t.lr_scale, ":", t.weight_decay ? 1 : 0);
    return s;
  }

  void validate_per_tensor() const {
    const auto& pt = options_.per_tensor;
    if (pt.empty()) return;
    DASGD_REQUIRE(pt.size() == params_.size(), config_error, "trainer_options::per_tensor has ",
                  pt.size(), " entries but the parameter list has ", params_.size(),
                  " tensors (one entry per tensor, or none)");
    for (std::size_t i = 0; i < pt.size(); ++i)
      DASGD_REQUIRE(std::isfinite(pt[i].lr_scale) && pt[i].lr_scale >= 0.0, config_error,
                    "trainer_options::per_tensor[", i, "].lr_scale is ", pt[i].lr_scale,
                    "; it must be finite and >= 0");
    bool supported = true;
    optim_.template visit_element<Compute>(0, [&](const auto& e) {
      supported = per_tensor_element<std::remove_cvref_t<decltype(e)>>;
    });
    DASGD_REQUIRE(supported, config_error, "optimizer '", optim_.name(),
                  "' has no per-tensor element (for_tensor), so trainer_options::per_tensor "
                  "cannot be applied");
  }

  static std::string backend_name() {
    if constexpr (requires { Backend::name(); }) return Backend::name();
    else return detail::type_name<Backend>();
  }

  std::size_t wire_element_bytes() const {
    if constexpr (fixed_wire) return sizeof(fixed_wire_type);
    return options_.master_weights ? sizeof(Compute) : sizeof(Storage);
  }

  static const char* wire_name(bool master) {
    if constexpr (fixed_wire) return detail::element_type_name(type_id<fixed_wire_type>::value);
    return detail::element_type_name(master ? type_id<Compute>::value : type_id<Storage>::value);
  }

  std::uint64_t payload_bytes(bool pending) const {
    std::uint64_t n = params_.total_elements() * sizeof(Storage);
    n += buffers_.all().total_elements() * sizeof(Storage);
    n += state_.size() * arena_size_ * sizeof(Compute);
    if (options_.master_weights) n += arena_size_ * sizeof(Compute);
    if constexpr (outer_merge) n += arena_size_ * sizeof(Compute);
    if (pending) n += 2 * layout_.total() * wire_element_bytes();
    return n;
  }

  template <class T>
  void save_array(detail::checkpoint_payload_writer& w, const T* src, std::size_t n) {
    std::vector<T> buf(std::min(n, std::max<std::size_t>(1, detail::checkpoint_chunk_bytes / sizeof(T))));
    for (std::size_t i = 0; i < n; i += buf.size()) {
      const std::size_t k = std::min(buf.size(), n - i);
      backend_.copy_to_host(src + i, buf.data(), k);
      w.write(buf.data(), k * sizeof(T));
    }
  }

  /// Reads the payload in save() order through read(ptr, bytes, what) into
  /// the trainer's memory, via a bounded host buffer.
  template <class Read>
  void read_payload(Read&& read, bool pending) {
    const auto load_array = [&](auto* dst, std::size_t n, const char* what) {
      using T = std::remove_cvref_t<decltype(*dst)>;
      std::vector<T> buf(std::min(n, std::max<std::size_t>(1, detail::checkpoint_chunk_bytes / sizeof(T))));
      for (std::size_t i = 0; i < n; i += buf.size()) {
        const std::size_t k = std::min(buf.size(), n - i);
        read(buf.data(), k * sizeof(T), what);
        backend_.copy_from_host(buf.data(), dst + i, k);
      }
    };
    for (std::size_t i = 0; i < params_.size(); ++i) load_array(params_.data(i), params_.extent(i), "weights");
    const auto& bufs = buffers_.all();
    for (std::size_t i = 0; i < bufs.size(); ++i)
      load_array(bufs.data(i), bufs.extent(i), "registered buffers");
    for (auto& s : state_) load_array(s.data(), arena_size_, "optimizer state");
    if (options_.master_weights) load_array(master_.data(), arena_size_, "master weights");
    if constexpr (outer_merge) load_array(outer_.data(), arena_size_, "outer optimizer state");
    if (pending) {
      with_wire([&](auto& snap, auto& avg) {
        load_array(snap.data(), layout_.total(), "snapshot");
        load_array(avg.data(), layout_.total(), "average");
        return 0;
      });
    }
  }

  /// Drops our own in-flight average (load() replaces the whole state).
  void discard_in_flight() {
    if (!request_) return;
    guarded([&] { request_->wait(); });
    request_.reset();
  }

  void check_shapes_across_ranks() {
    const auto me = static_cast<std::size_t>(comm_.rank());
    const auto n = static_cast<std::size_t>(comm_.size());
    const auto totals = comm_.allgather(params_.total_elements());
    const auto counts = comm_.allgather(params_.size());
    const auto hashes =
        comm_.allgather(detail::shape_hash(type_id<Storage>::value, params_.extents()));
    DASGD_REQUIRE(totals.size() == n && counts.size() == n && hashes.size() == n, comm_error,
                  "communicator allgather returned ", totals.size(), " values for ", n,
                  " ranks");
    for (std::size_t r = 0; r < n; ++r) {
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
    DASGD_REQUIRE(p.tau >= 1 && p.tau <= detail::max_tau, config_error, "delay policy planned tau ",
                  p.tau, " for round ", round, "; tau must be in [1, 2^40]");
    DASGD_REQUIRE(p.delay >= 0 && p.delay <= detail::max_tau, config_error,
                  "delay policy planned delay ", p.delay, " for round ", round,
                  "; delay must be >= 0");
    return p;
  }

  void observe(schedule_event::kind what, bool ready = false, double seconds = -1.0) {
    if constexpr (observing_delay_policy<Policy>) policy_.observe({what, k_, ready, seconds});
  }

  /// Tells the policy how long the last merged collective took, once the
  /// communicator can say (NCCL: after its timing events fired).
  void report_collective_time() {
    if constexpr (requires(request_type& q) { { q.duration_seconds() } -> std::convertible_to<std::optional<double>>; }) {
      if (!finished_request_) return;
      const std::optional<double> d = finished_request_->duration_seconds();
      if (!d) return;
      observe(schedule_event::kind::collective_time, true, *d);
      finished_request_.reset();
    }
  }

  /// The plan of the round after the current one, checked against it.
  round_plan next_plan() {
    round_plan next = validated(policy_.plan(round_ + 1), round_ + 1);
    DASGD_REQUIRE(plan_.delay < next.tau, config_error, "delay ", plan_.delay, " of round ",
                  round_, " is outside [0, tau) = [0, ", next.tau, ") of round ", round_ + 1,
                  "; at most one average may be in flight");
    return next;
  }

  /// The signature of the next collective (and counts it).
  collective_signature signature(collective_purpose purpose, std::int64_t proposal,
                                 std::uint32_t scope = 0) {
    collective_signature s;
    s.purpose = purpose;
    s.scope = scope;
    s.sequence = collectives_++;
    s.proposal = proposal;
    if (snapshot_status_ >= 0) {
      s.status = status_code::nonfinite_snapshot;
      s.status_detail = static_cast<std::uint32_t>(snapshot_status_);
    }
    return s;
  }

  /// Calls f(snapshot arena, average arena) for the arenas in use.
  template <class F>
  decltype(auto) with_wire(F&& f) {
    if constexpr (fixed_wire) {
      return f(snapshot_w_, average_w_);
    } else {
      if (options_.master_weights) return f(snapshot_c_, average_c_);
      return f(snapshot_, average_);
    }
  }

  /// Starts the average of the snapshot arena into the average arena.
  request_type start_average(const collective_signature& sig) {
    return with_wire([&](auto& snap, auto& avg) {
      using W = std::remove_cvref_t<decltype(*snap.data())>;
      return comm_.iallreduce_average(std::span<const W>(snap.data(), layout_.total()),
                                      std::span<W>(avg.data(), layout_.total()), sig);
    });
  }

  /// Launches the average of the snapshot just written; returns its delay.
  std::int64_t launch_average(const round_plan& next) {
    // No fence: a device communicator orders the collective after the
    // snapshot pass queued on the compute stream (communicator concept).
    // The next round's delay travels with this average, so that every rank
    // learns what the others planned before that round launches.
    const auto sig = signature(collective_purpose::step_average, next.delay, plan_.scope);
    guarded([&] { request_.emplace(start_average(sig)); });
    finished_request_.reset();
    pending_ = true;
    launch_step_ = k_;
    merge_step_ = k_ + plan_.delay;
    pending_coeffs_ = plan_.synchronize ? replace_coefficients : merge_.coefficients();
    observe(schedule_event::kind::launch);
    const std::int64_t delay = plan_.delay;
    ++round_;
    round_start_ = k_ + 1;
    plan_ = next;
    if (snapshot_status_ >= 0 && options_.nonfinite == nonfinite_guard::throw_error) {
      const auto t = snapshot_status_;
      DASGD_THROW(nonfinite_error, "rank ", comm_.rank(), ": tensor ", t,
                  " holds a NaN or an infinity after the update of step ", k_,
                  "; the other ranks fail at their merge step");
    }
    return delay;
  }

  void poll() {
    if (!request_) return;
    bool ready = false;
    guarded([&] { ready = request_->test(); });
    observe(schedule_event::kind::poll, ready);
  }

  /// Blocks until the in-flight average may be consumed; returns the time
  /// spent blocked. Records what the ranks agreed on.
  double await_pending() {
    if (!request_) {  // restored from a checkpoint: already here
      agreement_ = {};
      return 0.0;
    }
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
      agreement_ = request_->agreement();
    });
    finished_request_ = std::move(request_);
    request_.reset();
    adopt_agreed_delay();
    return waited;
  }

  /// The ranks' plans for the current round's delay, carried by the average
  /// just completed: the largest for policies that agree on it, else all
  /// must be equal (an error on every rank otherwise).
  void adopt_agreed_delay() {
    const auto lo = agreement_.min_proposal, hi = agreement_.max_proposal;
    if (lo == hi) return;
    if constexpr (agrees_on_max_delay<Policy>()) {
      DASGD_REQUIRE(hi >= 0 && hi < plan_.tau, config_error, "ranks agreed on delay ", hi,
                    " for round ", round_, ", outside [0, ", plan_.tau, ")");
      plan_.delay = hi;
    } else {
      DASGD_THROW(config_error, "ranks planned different delays for round ", round_, " (from ",
                  lo, " to ", hi, "); only policies that declare agree_on_max_delay may");
    }
  }

  /// Whether the average just awaited may be merged (the guard), filling
  /// the report. Throws nonfinite_error in throw mode.
  merge_verdict verdict(step_report& rep, const char* what) {
    if (agreement_.status_rank < 0 || agreement_.status != status_code::nonfinite_snapshot)
      return {};
    DASGD_REQUIRE(options_.nonfinite == nonfinite_guard::skip_merge, nonfinite_error, "rank ",
                  agreement_.status_rank, " sent a NaN or an infinity in tensor ",
                  agreement_.status_detail, " of its snapshot for ", what,
                  " (collective #", collectives_ - 1, "); nothing was merged (seen on rank ",
                  comm_.rank(), " at step ", k_, ")");
    rep.merge_skipped = true;
    rep.nonfinite_rank = agreement_.status_rank;
    rep.nonfinite_tensor = static_cast<int>(agreement_.status_detail);
    return {false};
  }

  void finish_merge() {
    pending_ = false;
    observe(schedule_event::kind::merge);
  }

  /// The in-flight average goes through the merge rule's outer optimizer
  /// (not a synchronous round's replacement).
  bool pending_outer() const {
    if constexpr (outer_merge) return pending_coeffs_ != replace_coefficients;
    return false;
  }

  /// Merges the awaited average without a local step.
  void merge_pending() {
    if (pending_outer())
      run_outer_pass<kernels::outer_only>(nullptr);
    else
      merge_only(pending_coeffs_);
  }

  /// An outer-optimizer pass; instantiated only for such merge rules.
  template <kernels::stage S>
  void run_outer_pass(const grads_type* grads) {
    if constexpr (outer_merge) run_pass<S>(grads, pending_coeffs_);
    else (void)grads;
  }

  void merge_only(const merge_coefficients& mc) {
    if (mc.c != 0.0)
      run_pass<kernels::correct_only>(nullptr, mc);
    else
      run_pass<kernels::mix_only>(nullptr, mc);
  }

  /// The plain local step, writing the snapshot when the round ends here.
  void run_pass_for_step(const grads_type& grads, bool launch) {
    if (launch)
      run_pass<kernels::step_and_snapshot>(&grads, {}, true);
    else
      run_pass<kernels::plain_step>(&grads, {});
  }

  /// One fused pass. `sends`: the pass writes a snapshot this rank sends,
  /// checked by the guard when it is on (the result, a tensor index or -1,
  /// goes to snapshot_status_).
  /// A pass that writes a snapshot or merges has a variant that carries the
  /// optimizer state too (averaging::averaged); outer merges never do.
  static constexpr bool has_state_variant(kernels::stage S) {
    return !has(S, kernels::stage::average_state) && !has(S, kernels::stage::outer_momentum) &&
           (has(S, kernels::stage::write_snapshot) || has(S, kernels::stage::merge));
  }

  template <kernels::stage S>
  void run_pass(const grads_type* grads, const merge_coefficients& mc, bool sends = false) {
    if constexpr (has_state_variant(S)) {
      if (layout_.state_planes > 0) {
        run_pass<S | kernels::stage::average_state>(grads, mc, sends);
        return;
      }
    }
    const bool check = sends && options_.nonfinite != nonfinite_guard::off;
    if constexpr (has(S, kernels::stage::write_snapshot)) {
      snapshot_status_ = -1;
      if (check) {
        const std::uint32_t none = std::numeric_limits<std::uint32_t>::max();
        backend_.copy_from_host(&none, nonfinite_flag_.data(), 1);
      }
    }
    with_wire([&](auto& snap, auto& avg) {
      using W = std::remove_cvref_t<decltype(*snap.data())>;
      pass_args<Storage, Compute, memory_space, W> a;
      a.weights = &params_;
      a.grads = grads;
      a.offsets = offsets_.data();
      a.master = options_.master_weights ? master_.data() : nullptr;
      for (std::size_t s = 0; s < state_.size(); ++s) a.state[s] = state_[s].data();
      a.snapshot = snap.data();
      a.average = avg.data();
      if constexpr (has(S, kernels::stage::average_state)) {
        for (std::size_t s = 0; s < layout_.state_planes; ++s) {
          a.state_snapshot[s] = snap.data() + layout_.state_plane(s);
          a.state_average[s] = avg.data() + layout_.state_plane(s);
        }
      }
      a.merge = {Compute(mc.a), Compute(mc.b), Compute(mc.c)};
      if constexpr (has(S, kernels::stage::outer_momentum) && outer_merge) {
        const auto o = merge_.outer();
        a.merge.mu = Compute(o.momentum);
        a.merge.lr_mu = Compute(o.lr_momentum);
        a.merge.nesterov = o.nesterov;
        a.outer = outer_.data();
      }
      a.nonfinite = check ? nonfinite_flag_.data() : nullptr;
      a.per_tensor = options_.per_tensor.empty() ? nullptr : options_.per_tensor.data();
      // A merge-only pass that carries the state needs the optimizer's
      // element too: its state count and which states stay non-negative.
      if constexpr (kernels::reads_state(S)) {
        optim_.template visit_element<Compute>(
            k_, [&](const auto& elem) { backend_.template run<S>(a, elem); });
      } else {
        backend_.template run<S>(a, kernels::no_step_element<Compute>{});
      }
      run_buffer_pass<S>(snap.data(), avg.data(), mc);
      return 0;
    });
    if constexpr (has(S, kernels::stage::write_snapshot)) {
      if (check) {
        std::uint32_t first = 0;
        backend_.copy_to_host(nonfinite_flag_.data(), &first, 1);  // waits for the pass
        if (first != std::numeric_limits<std::uint32_t>::max())
          snapshot_status_ = static_cast<std::int64_t>(first);
      }
    }
  }

  /// The averaged registered buffers' share of pass S: their snapshot or
  /// merge, in their region of the same arenas, right after the weights'
  /// pass (no local step, no state). A pass of its own because buffers are
  /// separate tensors; it moves only the buffers' own bytes.
  template <kernels::stage S, class W>
  void run_buffer_pass(W* snap, const W* avg, const merge_coefficients& mc) {
    constexpr kernels::stage B =
        kernels::without(S, kernels::stage::local_step | kernels::stage::average_state |
                                kernels::stage::outer_momentum);
    if constexpr (has(B, kernels::stage::write_snapshot) || has(B, kernels::stage::merge)) {
      if (buffers_.averaged().empty()) return;
      pass_args<Storage, Compute, memory_space, W> b;
      b.weights = &buffers_.averaged();
      b.offsets = buffers_.averaged_offsets().data();
      b.snapshot = snap + layout_.buffer_offset();
      b.average = avg + layout_.buffer_offset();
      b.merge = {Compute(mc.a), Compute(mc.b), Compute(mc.c)};
      backend_.template run<B>(b, kernels::no_step_element<Compute>{});
    } else {
      (void)snap;
      (void)avg;
      (void)mc;
    }
  }

  /// Checks trainer_options::optimizer_state against the merge rule and
  /// the type the average travels in.
  void validate_state_averaging() const {
    if (options_.optimizer_state != averaging::averaged) return;
    if constexpr (outer_merge)
      DASGD_THROW(config_error, "trainer_options::optimizer_state = averaged cannot be used with "
                  "merge rule '", merge_.name(), "', whose outer step is defined for the weights' "
                  "pseudo-gradient only; average the state with mix, additive or linear");
#if defined(DASGD_HAS_CUDA_TYPES)
    DASGD_REQUIRE(wire_type_id() != type_id<__half>::value, config_error,
                  "trainer_options::optimizer_state = averaged with the average travelling in "
                  "fp16 (", wire_name(options_.master_weights), "): fp16's range (6e-8 to "
                  "65504) cannot hold optimizer state such as Adam's second moments; use a bf16 "
                  "wire (comm::wire_format<__nv_bfloat16, ...>), master weights or fp32");
#endif
  }

  std::uint32_t wire_type_id() const {
    if constexpr (fixed_wire) return type_id<fixed_wire_type>::value;
    return options_.master_weights ? type_id<Compute>::value : type_id<Storage>::value;
  }

  void check_health() {
    if constexpr (requires { comm_.check_health(); }) guarded([&] { comm_.check_health(); });
  }

  /// Runs a communicator operation; a failure poisons the trainer so that
  /// training cannot go on with half-merged or stale state unnoticed.
  template <class F>
  void guarded(F&& f) {
    try {
      f();
    } catch (const std::exception& e) {
      comm_failed_ = true;
      poison(e.what());
      request_.reset();
      throw;
    }
  }

  void poison(const std::string& why) {
    if (failure_.empty()) failure_ = why.empty() ? "unknown failure" : why;
  }

  void warn(const std::string& msg) const noexcept {
    try {
      if (options_.warning) {
        options_.warning(msg);
      } else {
        std::fprintf(stderr, "dasgd warning (rank %d): %s\n", comm_.rank(), msg.c_str());
      }
    } catch (...) {
    }
  }

  void require_usable() const {
    DASGD_REQUIRE(failure_.empty(), state_error, "trainer (rank ", comm_.rank(),
                  ") is unusable after an earlier failure: ", failure_);
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
  /// The snapshot and average arenas: weights, state planes, buffers.
  detail::snapshot_layout layout_;
  detail::registered_buffers<Storage, memory_space> buffers_;
  bool loaded_ = false;  ///< load() ran (register_buffers() comes before it)
  // Snapshot and average: in the storage type, or (master weights) the
  // compute type; only one pair is allocated.
  typename Backend::template buffer<Storage> snapshot_;
  typename Backend::template buffer<Storage> average_;
  typename Backend::template buffer<Compute> snapshot_c_;
  typename Backend::template buffer<Compute> average_c_;
  typename Backend::template buffer<fixed_wire_type> snapshot_w_;
  typename Backend::template buffer<fixed_wire_type> average_w_;
  std::vector<typename Backend::template buffer<Compute>> state_;
  typename Backend::template buffer<Compute> master_;
  typename Backend::template buffer<Compute> outer_;  ///< merge::outer_sgd's momentum
  typename Backend::template buffer<std::uint32_t> nonfinite_flag_;
  grads_type single_grad_;

  std::int64_t k_ = 0;
  std::int64_t round_ = 0;
  std::int64_t round_start_ = 0;
  round_plan plan_;
  std::uint64_t collectives_ = 0;

  std::optional<request_type> request_;
  std::optional<request_type> finished_request_;  ///< the last merged one, for its duration
  collective_agreement agreement_;
  std::int64_t snapshot_status_ = -1;  ///< first non-finite tensor of the last snapshot, or -1
  bool pending_ = false;
  std::int64_t launch_step_ = -1;
  std::int64_t merge_step_ = -1;
  merge_coefficients pending_coeffs_;
  std::string failure_;
  bool comm_failed_ = false;
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
