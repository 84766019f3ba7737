// The delay policy concept: decides, round by round, how many local steps a
// round has (tau) and how many steps after the round's launch the average is
// merged (delay). See docs/design.md section 1 for the timeline.
#pragma once

#include <concepts>
#include <cstdint>
#include <type_traits>
#include <utility>

namespace dasgd {

/// Plan for one round.
///  tau:         local steps in the round; the average is launched after the
///               round's last step (k = round start + tau - 1).
///  delay:       the average launched at the end of this round is merged
///               `delay` steps after the launch (0: blocking, at once). Must be
///               smaller than the next round's tau, so at most one average is
///               in flight at any time.
///  synchronize: merge by replacement (w = avg) instead of the merge rule,
///               e.g. for synchronous warm-up rounds.
///  scope:       the ranks the round's average spans (0: all of them).
struct round_plan {
  std::int64_t tau = 1;
  std::int64_t delay = 0;
  bool synchronize = false;
  /// Which ranks this round's average spans (collective_signature::scope):
  /// 0 = all; hierarchical policies plan group rounds with 1.
  std::uint32_t scope = 0;
  friend bool operator==(const round_plan&, const round_plan&) = default;
};

/// plan(r) is called exactly once per round, in order r = 0, 1, 2, ...
template <class P>
concept delay_policy = std::copy_constructible<P> && requires(P& p, std::int64_t round) {
  { p.plan(round) } -> std::convertible_to<round_plan>;
};

/// What the trainer tells a policy that wants to watch the schedule
/// (an adaptive one timestamps these with its own clock).
struct schedule_event {
  enum class kind {
    step_begin,   ///< step() entered (the user's gradient computation just ended)
    launch,       ///< an average was launched after this step's update
    poll,         ///< the in-flight average was tested; `ready` says the result
    wait_begin,   ///< the trainer starts blocking on the in-flight average
    wait_end,     ///< ... and it is complete
    merge,        ///< the average was merged in this step
    /// How long the last merged average's collective itself took
    /// (`seconds`), reported by communicators whose waits do not show it
    /// (stream-ordered NCCL waits return at once); sent once per average,
    /// at a later step_begin.
    collective_time,
  };
  kind what;
  std::int64_t step;
  bool ready = false;
  double seconds = -1.0;
};

template <class P>
concept observing_delay_policy = delay_policy<P> && requires(P& p, const schedule_event& e) {
  p.observe(e);
};

/// Policies whose ranks may plan different delays from their own
/// measurements (policy::adaptive_delay) declare
/// `static constexpr bool agree_on_max_delay = true`: the trainer then
/// makes every rank use the largest delay any rank planned, agreed through
/// the signature of the average before. For every other policy, ranks that
/// plan different delays are an error on every rank. A wrapper that holds
/// its inner policy as a member `inner` (policy::warmup) or returns it from
/// inner() inherits the inner policy's choice.
template <class P>
constexpr bool agrees_on_max_delay() {
  if constexpr (requires { requires P::agree_on_max_delay; }) {
    return true;
  } else if constexpr (requires(const P& p) { p.inner(); }) {
    return agrees_on_max_delay<std::remove_cvref_t<decltype(std::declval<const P&>().inner())>>();
  } else if constexpr (requires { &P::inner; }) {
    return agrees_on_max_delay<std::remove_cvref_t<decltype(std::declval<const P&>().inner)>>();
  } else {
    return false;
  }
}

}  // namespace dasgd
