// The local optimizer concept. An optimizer is a small host-side object
// (hyper-parameters) that hands the backends a per-step *element functor*:
// a trivially copyable struct whose apply() updates one weight from its
// gradient and its optimizer state, in compute precision, on host or device.
// State stays local to each worker unless trainer_options::optimizer_state
// asks for it to travel and merge with the weights (core/averaging.hpp); an
// element may then declare, with `static constexpr unsigned
// nonnegative_states` (one bit per state), which states the merge must keep
// >= 0 (AdamW's second moment).
#pragma once

#include <concepts>
#include <cstddef>
#include <cstdint>

#include "../config.hpp"

namespace dasgd {

/// Element functor: state_count state values per weight, kept in C.
///   C apply(C w, C g, C* state) const  -> the locally updated weight
template <class E>
concept optimizer_element = std::is_trivially_copyable_v<E> && requires {
  typename E::compute_type;
  { E::state_count } -> std::convertible_to<int>;
} && requires(const E& e, typename E::compute_type w, typename E::compute_type* s) {
  { e.apply(w, w, s) } -> std::same_as<typename E::compute_type>;
};

/// An element that parameter groups (tensor_options) can specialize per
/// tensor: for_tensor(lr_scale, weight_decay) returns the element of a
/// tensor whose learning rate is scaled and whose weight decay is on or off.
/// for_tensor(1, true) must be the element itself, bit for bit.
template <class E>
concept per_tensor_element = optimizer_element<E> &&
    requires(const E& e, typename E::compute_type c, bool decay) {
      { e.for_tensor(c, decay) } -> std::same_as<E>;
    };

namespace detail {
/// Accepts any element functor; used to check visit_element in the concept.
struct element_probe {
  template <optimizer_element E>
  void operator()(const E&) const {}
};
}  // namespace detail

/// visit_element<C>(k, f) calls f with the element functor for local step k
/// (k counts from 0; Adam uses it for bias correction, SGD for the first
/// momentum step). state_count() is fixed for the optimizer's lifetime.
template <class O>
concept local_optimizer = std::copy_constructible<O> &&
    requires(O& o, const O& co, double lr, std::int64_t k, detail::element_probe f) {
      { co.state_count() } -> std::convertible_to<std::size_t>;
      { co.learning_rate() } -> std::convertible_to<double>;
      o.set_learning_rate(lr);
      co.validate();
      { O::kind_id } -> std::convertible_to<std::uint32_t>;
      { co.name() } -> std::convertible_to<const char*>;
      co.template visit_element<float>(k, f);
      co.template visit_element<double>(k, f);
    };

}  // namespace dasgd
