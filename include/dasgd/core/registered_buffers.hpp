// Tensors the trainer keeps with the model but does not optimize: batch-norm
// running statistics, step counters of the model... registered with
// delayed_averager::register_buffers(list, mode). An `averaged` buffer is
// snapshotted at each launch, travels in the step average after the
// weights (and the optimizer state planes) and is merged by the weights'
// rule; a `local` one is left as the user's code leaves it. Both kinds are
// saved in checkpoints, and both are part of the configuration every rank
// must share (core/averaging.hpp, docs/beyond.md).
#pragma once

#include <cstddef>
#include <string>
#include <utility>
#include <vector>

#include "arena_layout.hpp"
#include "averaging.hpp"
#include "error.hpp"
#include "tensor_list.hpp"

namespace dasgd::detail {

template <class Storage, class Space>
class registered_buffers {
 public:
  using list_type = tensor_list<Storage, Space>;

  /// Every registered buffer, in registration order (checkpoint order).
  const list_type& all() const noexcept { return all_; }
  averaging mode(std::size_t i) const { return modes_.at(i); }
  /// The averaged ones, and where each starts in the buffer region of the
  /// snapshot (arena layout over their extents).
  const list_type& averaged() const noexcept { return averaged_; }
  const std::vector<std::size_t>& averaged_offsets() const noexcept { return offsets_; }
  std::size_t averaged_elements() const noexcept { return averaged_size_; }
  bool empty() const noexcept { return all_.empty(); }

  /// The registry with `list` appended in `mode` (this one unchanged, so a
  /// registration that fails later leaves the trainer as it was).
  registered_buffers with(const list_type& list, averaging mode) const {
    registered_buffers r = *this;
    for (std::size_t i = 0; i < list.size(); ++i) {
      r.all_.add(list.data(i), list.extent(i));
      r.modes_.push_back(mode);
      if (mode == averaging::averaged) r.averaged_.add(list.data(i), list.extent(i));
    }
    r.offsets_ = arena_offsets(r.averaged_.extents(), r.averaged_size_);
    return r;
  }

  /// For the configuration text: "none", or "averaged:E local:E ..." per
  /// buffer (E its element count), in registration order.
  std::string describe() const {
    if (all_.empty()) return "none";
    std::string s;
    for (std::size_t i = 0; i < all_.size(); ++i)
      s += concat(s.empty() ? "" : " ", to_string(modes_[i]), ":", all_.extent(i));
    return s;
  }

 private:
  list_type all_;
  std::vector<averaging> modes_;
  list_type averaged_;
  std::vector<std::size_t> offsets_;
  std::size_t averaged_size_ = 0;
};

}  // namespace dasgd::detail
