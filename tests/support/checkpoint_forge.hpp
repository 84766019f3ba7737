// Forging checkpoints for tests and the fuzz target: patch a header field of
// a valid file, then recompute the CRCs, so that the bytes reach the field
// validation instead of stopping at the CRC check.
#pragma once

#include <dasgd/core/checkpoint.hpp>

#include <cstdint>
#include <cstring>
#include <string>

namespace dasgd::test {

/// Byte offsets of the header fields of a checkpoint of a trainer with
/// `tensors` parameter tensors (the order save() writes them in).
struct checkpoint_layout {
  std::size_t tensors = 1;
  static constexpr std::size_t body = detail::checkpoint_prefix_bytes;
  std::size_t extents() const { return body + 36; }
  std::size_t master() const { return extents() + 8 * tensors; }
  std::size_t step() const { return master() + 1; }
  std::size_t round() const { return step() + 8; }
  std::size_t round_start() const { return round() + 8; }
  std::size_t tau() const { return round_start() + 8; }
  std::size_t delay() const { return tau() + 8; }
  std::size_t synchronize() const { return delay() + 8; }
  std::size_t scope() const { return synchronize() + 1; }
  std::size_t pending() const { return scope() + 4; }
  std::size_t launch_step() const { return pending() + 1; }
  std::size_t merge_step() const { return launch_step() + 8; }
  std::size_t merge_a() const { return merge_step() + 8; }
  std::size_t merge_b() const { return merge_a() + 8; }
  std::size_t merge_c() const { return merge_b() + 8; }
  std::size_t collectives() const { return merge_c() + 8; }
};

/// Recomputes the header CRC and, when the announced sizes fit the blob,
/// the payload CRC. Blobs too short to hold a prefix are left alone.
inline void fix_crcs(std::string& blob) {
  if (blob.size() < detail::checkpoint_prefix_bytes) return;
  auto* b = reinterpret_cast<unsigned char*>(blob.data());
  std::uint32_t header = 0;
  std::uint64_t payload = 0;
  std::memcpy(&header, b + 12, 4);
  std::memcpy(&payload, b + 16, 8);
  const std::size_t p = detail::checkpoint_prefix_bytes;
  if (header < 4 || header > blob.size() - p) return;
  const std::uint32_t hcrc = detail::crc32(b, p + header - 4);
  std::memcpy(b + p + header - 4, &hcrc, 4);
  const std::size_t start = p + header;
  if (payload > blob.size() - start || blob.size() - start - payload < 4) return;
  const std::uint32_t pcrc = detail::crc32(b + start, static_cast<std::size_t>(payload));
  std::memcpy(b + start + payload, &pcrc, 4);
}

template <class T>
void patch(std::string& blob, std::size_t offset, T value) {
  std::memcpy(blob.data() + offset, &value, sizeof value);
  fix_crcs(blob);
}

template <class T>
T field(const std::string& blob, std::size_t offset) {
  T v;
  std::memcpy(&v, blob.data() + offset, sizeof v);
  return v;
}

}  // namespace dasgd::test
