// Checkpoint encoding (format 2): a little-endian byte stream made of
//
//   prefix   magic "DASGDCKP", u32 format version, u32 header size,
//            u64 payload size                                  (24 bytes)
//   header   the trainer's fields (types, shapes, schedule, configuration),
//            then the CRC-32 of prefix and header
//   payload  the arrays (weights, optimizer state, ...) back to back, then
//            the CRC-32 of the payload
//
// A reader checks the prefix and the header (bounded: header_limit bytes)
// before it allocates or reads anything else, so junk, /dev/zero or a file
// of another program is rejected after 24 bytes, and the sizes announced by
// a valid header are checked against the trainer before the payload is
// read. The payload is streamed through a bounded buffer (chunk_bytes) in
// both directions. The stream is left right after the checkpoint, so a
// checkpoint can be followed by other data.
#pragma once

#include <algorithm>
#include <array>
#include <cstdint>
#include <cstring>
#include <istream>
#include <limits>
#include <ostream>
#include <string>
#include <type_traits>
#include <vector>

#include "error.hpp"

namespace dasgd::detail {

/// CRC-32 (IEEE 802.3), updated incrementally: crc = crc32_update(crc, ...)
/// starting from 0.
inline std::uint32_t crc32_update(std::uint32_t crc, const unsigned char* data, std::size_t n) {
  static const auto table = [] {
    std::array<std::uint32_t, 256> t{};
    for (std::uint32_t i = 0; i < 256; ++i) {
      std::uint32_t c = i;
      for (int k = 0; k < 8; ++k) c = (c & 1u) ? 0xEDB88320u ^ (c >> 1) : c >> 1;
      t[i] = c;
    }
    return t;
  }();
  std::uint32_t c = crc ^ 0xFFFFFFFFu;
  for (std::size_t i = 0; i < n; ++i) c = table[(c ^ data[i]) & 0xFFu] ^ (c >> 8);
  return c ^ 0xFFFFFFFFu;
}

inline std::uint32_t crc32(const unsigned char* data, std::size_t n) {
  return crc32_update(0, data, n);
}

inline constexpr char checkpoint_magic[8] = {'D', 'A', 'S', 'G', 'D', 'C', 'K', 'P'};
inline constexpr std::uint32_t checkpoint_version = 2;
inline constexpr std::size_t checkpoint_prefix_bytes = 8 + 4 + 4 + 8;
/// Largest header a reader accepts (shapes of ~100k tensors plus the
/// configuration text).
inline constexpr std::uint32_t checkpoint_header_limit = 16u << 20;
/// Largest piece of payload held in host memory at once.
inline constexpr std::size_t checkpoint_chunk_bytes = std::size_t(4) << 20;

/// Builds the header in memory (it is small), then writes prefix, header
/// and the header CRC; the payload follows through payload_writer.
class checkpoint_header_writer {
 public:
  template <class T>
    requires std::is_trivially_copyable_v<T>
  void put(const T& v) {
    bytes(&v, sizeof v);
  }
  void put_string(const std::string& s) {
    put<std::uint64_t>(s.size());
    bytes(s.data(), s.size());
  }
  /// Writes prefix + header + CRC for a payload of `payload_bytes`.
  void write(std::ostream& os, std::uint64_t payload_bytes) const {
    DASGD_REQUIRE(buf_.size() + 4 <= checkpoint_header_limit, checkpoint_error,
                  "checkpoint header of ", buf_.size(), " bytes exceeds the limit of ",
                  checkpoint_header_limit);
    std::vector<unsigned char> out;
    out.reserve(checkpoint_prefix_bytes + buf_.size() + 4);
    const auto append = [&](const void* p, std::size_t n) {
      const auto* b = static_cast<const unsigned char*>(p);
      out.insert(out.end(), b, b + n);
    };
    append(checkpoint_magic, sizeof checkpoint_magic);
    append(&checkpoint_version, 4);
    const auto header_bytes = static_cast<std::uint32_t>(buf_.size() + 4);
    append(&header_bytes, 4);
    append(&payload_bytes, 8);
    append(buf_.data(), buf_.size());
    const std::uint32_t crc = crc32(out.data(), out.size());
    append(&crc, 4);
    os.write(reinterpret_cast<const char*>(out.data()), static_cast<std::streamsize>(out.size()));
    DASGD_REQUIRE(os.good(), checkpoint_error, "writing the checkpoint header failed");
  }

 private:
  void bytes(const void* p, std::size_t n) {
    const auto* b = static_cast<const unsigned char*>(p);
    buf_.insert(buf_.end(), b, b + n);
  }
  std::vector<unsigned char> buf_;
};

/// Streams payload bytes to `os`, counting them and updating the CRC; the
/// total must match what the header announced.
class checkpoint_payload_writer {
 public:
  checkpoint_payload_writer(std::ostream& os, std::uint64_t announced)
      : os_(os), announced_(announced) {}

  void write(const void* p, std::size_t n) {
    DASGD_REQUIRE(written_ + n <= announced_, checkpoint_error, "checkpoint payload exceeds the ",
                  announced_, " bytes its header announced");
    crc_ = crc32_update(crc_, static_cast<const unsigned char*>(p), n);
    os_.write(static_cast<const char*>(p), static_cast<std::streamsize>(n));
    DASGD_REQUIRE(os_.good(), checkpoint_error, "writing the checkpoint failed after ",
                  written_, " payload bytes");
    written_ += n;
  }
  /// Appends the payload CRC and flushes; throws when the stream failed
  /// (a full disk is often only reported by the flush).
  void finish() {
    DASGD_REQUIRE(written_ == announced_, checkpoint_error, "checkpoint payload has ", written_,
                  " bytes but its header announced ", announced_);
    os_.write(reinterpret_cast<const char*>(&crc_), 4);
    os_.flush();
    DASGD_REQUIRE(os_.good(), checkpoint_error, "writing the checkpoint failed at its end (",
                  announced_, " payload bytes): the stream reports an error after flush");
  }

 private:
  std::ostream& os_;
  std::uint64_t announced_;
  std::uint64_t written_ = 0;
  std::uint32_t crc_ = 0;
};

/// Reads and checks prefix and header; then hands out header fields.
class checkpoint_header_reader {
 public:
  explicit checkpoint_header_reader(std::istream& is) {
    unsigned char prefix[checkpoint_prefix_bytes];
    const std::size_t got = read_some(is, prefix, sizeof prefix);
    DASGD_REQUIRE(got >= sizeof checkpoint_magic, checkpoint_error, "checkpoint is truncated: ",
                  got, " bytes, the frame alone needs ", checkpoint_prefix_bytes);
    DASGD_REQUIRE(std::memcmp(prefix, checkpoint_magic, sizeof checkpoint_magic) == 0,
                  checkpoint_error, "not a dasgd checkpoint (bad magic)");
    DASGD_REQUIRE(got == sizeof prefix, checkpoint_error, "checkpoint is truncated: ", got,
                  " bytes, the frame alone needs ", checkpoint_prefix_bytes);
    std::uint32_t version = 0, header_bytes = 0;
    std::memcpy(&version, prefix + 8, 4);
    std::memcpy(&header_bytes, prefix + 12, 4);
    std::memcpy(&payload_bytes_, prefix + 16, 8);
    DASGD_REQUIRE(version == checkpoint_version, checkpoint_error, "checkpoint format version ",
                  version, " is not supported (this build reads ", checkpoint_version, ")");
    DASGD_REQUIRE(header_bytes >= 4 && header_bytes <= checkpoint_header_limit, checkpoint_error,
                  "checkpoint is corrupt: header size ", header_bytes, " is outside [4, ",
                  checkpoint_header_limit, "]");
    buf_.resize(header_bytes);
    const std::size_t h = read_some(is, buf_.data(), buf_.size());
    DASGD_REQUIRE(h == buf_.size(), checkpoint_error, "checkpoint is truncated inside its header (",
                  h, " of ", header_bytes, " bytes)");
    std::uint32_t stored = 0;
    std::memcpy(&stored, buf_.data() + buf_.size() - 4, 4);
    std::uint32_t actual = crc32(prefix, sizeof prefix);
    actual = crc32_update(actual, buf_.data(), buf_.size() - 4);
    DASGD_REQUIRE(stored == actual, checkpoint_error, "checkpoint is corrupt: header CRC-32 is ",
                  actual, " but the file records ", stored);
    end_ = buf_.size() - 4;
  }

  std::uint64_t payload_bytes() const noexcept { return payload_bytes_; }

  template <class T>
    requires std::is_trivially_copyable_v<T>
  T get(const char* what) {
    T v;
    take(&v, sizeof v, what);
    return v;
  }
  std::string get_string(const char* what, std::size_t limit) {
    const auto n = get<std::uint64_t>(what);
    DASGD_REQUIRE(n <= limit && n <= end_ - pos_, checkpoint_error, "checkpoint ", what, " has ",
                  n, " bytes, more than the header holds");
    std::string s(static_cast<std::size_t>(n), '\0');
    take(s.data(), s.size(), what);
    return s;
  }
  void expect_end() const {
    DASGD_REQUIRE(pos_ == end_, checkpoint_error, "checkpoint header has ", end_ - pos_,
                  " unexpected trailing bytes");
  }

  /// Reads up to n bytes (fewer only at the end of the stream).
  static std::size_t read_some(std::istream& is, void* p, std::size_t n) {
    if (n == 0) return 0;
    is.read(static_cast<char*>(p), static_cast<std::streamsize>(n));
    return static_cast<std::size_t>(is.gcount());
  }

 private:
  void take(void* p, std::size_t n, const char* what) {
    DASGD_REQUIRE(end_ - pos_ >= n, checkpoint_error, "checkpoint header ends inside ", what);
    if (n) std::memcpy(p, buf_.data() + pos_, n);
    pos_ += n;
  }
  std::vector<unsigned char> buf_;
  std::size_t pos_ = 0;
  std::size_t end_ = 0;
  std::uint64_t payload_bytes_ = 0;
};

/// Reads exactly the payload bytes a header announced, in bounded pieces,
/// updating the CRC; verify() then checks the trailing CRC.
class checkpoint_payload_reader {
 public:
  checkpoint_payload_reader(std::istream& is, std::uint64_t announced)
      : is_(is), announced_(announced) {}

  void read(void* p, std::size_t n, const char* what) {
    DASGD_REQUIRE(read_ + n <= announced_, checkpoint_error, "checkpoint ", what,
                  " lies past the payload its header announced");
    const std::size_t got = checkpoint_header_reader::read_some(is_, p, n);
    DASGD_REQUIRE(got == n, checkpoint_error, "checkpoint is truncated inside ", what, " (",
                  read_ + got, " of ", announced_, " payload bytes)");
    crc_ = crc32_update(crc_, static_cast<const unsigned char*>(p), n);
    read_ += n;
  }
  /// Skips n bytes (CRC still updated), through a bounded buffer.
  void skip(std::uint64_t n, const char* what) {
    std::vector<unsigned char> buf(static_cast<std::size_t>(std::min<std::uint64_t>(n, checkpoint_chunk_bytes)));
    while (n > 0) {
      const auto k = static_cast<std::size_t>(std::min<std::uint64_t>(n, buf.size()));
      read(buf.data(), k, what);
      n -= k;
    }
  }
  /// Reads the trailing CRC and compares; returns the payload CRC.
  std::uint32_t verify() {
    DASGD_REQUIRE(read_ == announced_, checkpoint_error, "checkpoint payload read ", read_,
                  " of ", announced_, " bytes");
    std::uint32_t stored = 0;
    const std::size_t got = checkpoint_header_reader::read_some(is_, &stored, 4);
    DASGD_REQUIRE(got == 4, checkpoint_error, "checkpoint is truncated: its payload CRC is missing");
    DASGD_REQUIRE(stored == crc_, checkpoint_error, "checkpoint is corrupt: payload CRC-32 is ",
                  crc_, " but the file records ", stored, " (", announced_, " payload bytes)");
    return crc_;
  }

 private:
  std::istream& is_;
  std::uint64_t announced_;
  std::uint64_t read_ = 0;
  std::uint32_t crc_ = 0;
};

}  // namespace dasgd::detail
