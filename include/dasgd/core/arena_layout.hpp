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

/// Layout of the snapshot and the average arenas (what one step average
/// sends): the weights' plane (the parameter arena layout), then one plane
/// of the same layout per optimizer state that travels (averaging::averaged),
/// then the averaged registered buffers in their own arena layout. Every
/// part starts on a multiple of arena_alignment_elements, so each stays
/// vector-aligned.
struct snapshot_layout {
  std::size_t plane = 0;          ///< elements of the weights' plane (and of each state plane)
  std::size_t state_planes = 0;   ///< optimizer states that travel
  std::size_t buffer_elements = 0;  ///< the averaged buffers, padding included

  std::size_t state_plane(std::size_t s) const { return (1 + s) * plane; }
  std::size_t buffer_offset() const { return (1 + state_planes) * plane; }
  std::size_t total() const { return buffer_offset() + buffer_elements; }
};

}  // namespace dasgd::detail
