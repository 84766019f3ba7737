// Arena layout shared by the trainer and the library-owned parameter arenas:
// tensor i starts at offsets[i], a multiple of 16 elements, so that vector
// loads stay aligned in every arena (storage and state types alike).
#pragma once

#include <cstddef>
#include <vector>

namespace dasgd::detail {

inline constexpr std::size_t arena_alignment_elements = 16;

/// Offsets of each tensor; `total` receives the arena size, padding included.
inline std::vector<std::size_t> arena_offsets(const std::vector<std::size_t>& extents,
                                              std::size_t& total) {
  constexpr std::size_t align = arena_alignment_elements;
  std::vector<std::size_t> off(extents.size());
  std::size_t pos = 0;
  for (std::size_t i = 0; i < extents.size(); ++i) {
    off[i] = pos;
    pos += (extents[i] + align - 1) / align * align;
  }
  total = pos;
  return off;
}

}  // namespace dasgd::detail
