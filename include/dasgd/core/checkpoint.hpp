// Checkpoint encoding: a little-endian byte stream framed by a magic, a
// format version and a CRC-32 trailer. A reader validates the frame before
// it interprets anything, so a truncated or corrupted file is reported as
// such instead of yielding wrong weights.
#pragma once

#include <array>
#include <cstdint>
#include <cstring>
#include <istream>
#include <iterator>
#include <ostream>
#include <string>
#include <type_traits>
#include <vector>

#include "error.hpp"

namespace dasgd::detail {

inline std::uint32_t crc32(const unsigned char* data, std::size_t n) {
  static const auto table = [] {
    std::array<std::uint32_t, 256> t{};
    for (std::uint32_t i = 0; i < 256; ++i) {
      std::uint32_t c = i;
      for (int k = 0; k < 8; ++k) c = (c & 1u) ? 0xEDB88320u ^ (c >> 1) : c >> 1;
      t[i] = c;
    }
    return t;
  }();
  std::uint32_t c = 0xFFFFFFFFu;
  for (std::size_t i = 0; i < n; ++i) c = table[(c ^ data[i]) & 0xFFu] ^ (c >> 8);
  return c ^ 0xFFFFFFFFu;
}

inline constexpr char checkpoint_magic[8] = {'D', 'A', 'S', 'G', 'D', 'C', 'K', 'P'};
inline constexpr std::uint32_t checkpoint_version = 1;

class checkpoint_writer {
 public:
  checkpoint_writer() { bytes(checkpoint_magic, sizeof checkpoint_magic); put<std::uint32_t>(checkpoint_version); }

  template <class T>
    requires std::is_trivially_copyable_v<T>
  void put(const T& v) {
    bytes(&v, sizeof v);
  }
  template <class T>
  void put_array(const T* p, std::size_t n) {
    put<std::uint64_t>(n);
    bytes(p, n * sizeof(T));
  }
  /// Appends the CRC-32 of everything so far and writes the frame.
  void finish(std::ostream& os) {
    const std::uint32_t crc = crc32(buf_.data(), buf_.size());
    put(crc);
    os.write(reinterpret_cast<const char*>(buf_.data()), static_cast<std::streamsize>(buf_.size()));
    DASGD_REQUIRE(os.good(), checkpoint_error, "writing the checkpoint failed after ", buf_.size(),
                  " bytes");
  }

 private:
  void bytes(const void* p, std::size_t n) {
    const auto* b = static_cast<const unsigned char*>(p);
    buf_.insert(buf_.end(), b, b + n);
  }
  std::vector<unsigned char> buf_;
};

class checkpoint_reader {
 public:
  explicit checkpoint_reader(std::istream& is) {
    buf_.assign(std::istreambuf_iterator<char>(is), std::istreambuf_iterator<char>());
    constexpr std::size_t frame = sizeof checkpoint_magic + 4 + 4;
    DASGD_REQUIRE(buf_.size() >= frame, checkpoint_error, "checkpoint is truncated: ", buf_.size(),
                  " bytes, the frame alone needs ", frame);
    DASGD_REQUIRE(std::memcmp(buf_.data(), checkpoint_magic, sizeof checkpoint_magic) == 0,
                  checkpoint_error, "not a dasgd checkpoint (bad magic)");
    std::uint32_t stored = 0;
    std::memcpy(&stored, buf_.data() + buf_.size() - 4, 4);
    const std::uint32_t actual = crc32(buf_.data(), buf_.size() - 4);
    DASGD_REQUIRE(stored == actual, checkpoint_error, "checkpoint is corrupt: CRC-32 is ", actual,
                  " but the file records ", stored, " (", buf_.size(), " bytes)");
    end_ = buf_.size() - 4;
    pos_ = sizeof checkpoint_magic;
    const auto version = get<std::uint32_t>("format version");
    DASGD_REQUIRE(version == checkpoint_version, checkpoint_error, "checkpoint format version ",
                  version, " is not supported (this build reads ", checkpoint_version, ")");
  }

  template <class T>
    requires std::is_trivially_copyable_v<T>
  T get(const char* what) {
    T v;
    take(&v, sizeof v, what);
    return v;
  }
  template <class T>
  void get_array(T* p, std::size_t expected, const char* what) {
    const auto n = get<std::uint64_t>(what);
    DASGD_REQUIRE(n == expected, checkpoint_error, "checkpoint ", what, " has ", n,
                  " elements, this trainer expects ", expected);
    take(p, n * sizeof(T), what);
  }
  void expect_end() const {
    DASGD_REQUIRE(pos_ == end_, checkpoint_error, "checkpoint has ", end_ - pos_,
                  " unexpected trailing bytes");
  }

 private:
  void take(void* p, std::size_t n, const char* what) {
    DASGD_REQUIRE(end_ - pos_ >= n, checkpoint_error, "checkpoint ends inside ", what);
    if (n) std::memcpy(p, buf_.data() + pos_, n);
    pos_ += n;
  }
  std::vector<unsigned char> buf_;
  std::size_t pos_ = 0;
  std::size_t end_ = 0;
};

}  // namespace dasgd::detail
