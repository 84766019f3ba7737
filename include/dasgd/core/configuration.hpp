// A trainer's configuration as text: one "key=value" field per setting
// that every rank must share (types, tau and delay, merge coefficients,
// optimizer hyper-parameters, master weights, the guard...). Ranks compare
// a hash of it at construction; checkpoints record it.
//
// Components describe themselves with `std::string describe() const`;
// merge rules without one are described by name and coefficients, other
// types by their type name.
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <initializer_list>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "error.hpp"
#include "merge_rule.hpp"

namespace dasgd::detail {

/// The name of T as the compiler spells it (the same in every rank's binary).
template <class T>
std::string type_name() {
#if defined(__clang__) || defined(__GNUC__)
  const std::string_view f = __PRETTY_FUNCTION__;
  const auto begin = f.find("T = ");
  if (begin != std::string_view::npos) {
    const auto from = begin + 4;
    auto end = f.find_first_of(";]", from);
    return std::string(f.substr(from, end - from));
  }
  return std::string(f);
#else
  return "unnamed type";
#endif
}

template <class T>
std::string describe_component(const T& t) {
  if constexpr (requires { { t.describe() } -> std::convertible_to<std::string>; }) {
    return t.describe();
  } else if constexpr (merge_rule<T>) {
    const merge_coefficients m = t.coefficients();
    return concat(t.name(), "(a=", m.a, ", b=", m.b, ", c=", m.c, ")");
  } else {
    return type_name<T>();
  }
}

inline std::uint64_t fnv1a(std::string_view s) {
  std::uint64_t h = 1469598103934665603ull;
  for (unsigned char c : s) {
    h ^= c;
    h *= 1099511628211ull;
  }
  return h;
}

class configuration {
 public:
  configuration& add(std::string key, std::string value) {
    fields_.emplace_back(std::move(key), std::move(value));
    return *this;
  }
  const std::vector<std::pair<std::string, std::string>>& fields() const { return fields_; }

  /// "key=value; key=value", leaving out the keys in `skip`.
  std::string text(std::initializer_list<std::string_view> skip = {}) const {
    std::string out;
    for (const auto& [k, v] : fields_) {
      if (std::find(skip.begin(), skip.end(), k) != skip.end()) continue;
      if (!out.empty()) out += "; ";
      out += k + "=" + v;
    }
    return out;
  }

  /// The value of field `key` in a text made by text(); `fallback` when
  /// the text has no such field (one written before the field existed).
  static std::string field(const std::string& text, std::string_view key,
                           std::string_view fallback = {}) {
    std::size_t pos = 0;
    while (pos <= text.size()) {
      const auto next = text.find("; ", pos);
      const std::string_view f(text.data() + pos,
                               (next == std::string::npos ? text.size() : next) - pos);
      if (f.size() > key.size() && f.substr(0, key.size()) == key && f[key.size()] == '=')
        return std::string(f.substr(key.size() + 1));
      if (next == std::string::npos) break;
      pos = next + 2;
    }
    return std::string(fallback);
  }

  /// `text` with each of `defaults` ({key, value}) appended, in order, where
  /// it lacks that field: how a text written before fields were added reads.
  static std::string with_defaults(std::string text,
                                   std::initializer_list<std::pair<std::string_view, std::string_view>> defaults) {
    for (const auto& [key, value] : defaults) {
      if (!field(text, key).empty()) continue;
      if (!text.empty()) text += "; ";
      text.append(key).append("=").append(value);
    }
    return text;
  }

  /// The first field where two texts made by text() differ, as
  /// {this side, other side}; both empty when the texts are equal.
  static std::pair<std::string, std::string> first_difference(const std::string& a,
                                                              const std::string& b) {
    const auto split = [](const std::string& t) {
      std::vector<std::string> out;
      std::size_t pos = 0;
      while (pos <= t.size()) {
        const auto next = t.find("; ", pos);
        out.push_back(t.substr(pos, next == std::string::npos ? std::string::npos : next - pos));
        if (next == std::string::npos) break;
        pos = next + 2;
      }
      return out;
    };
    const auto fa = split(a), fb = split(b);
    for (std::size_t i = 0; i < std::max(fa.size(), fb.size()); ++i) {
      const std::string x = i < fa.size() ? fa[i] : "(nothing)";
      const std::string y = i < fb.size() ? fb[i] : "(nothing)";
      if (x != y) return {x, y};
    }
    return {};
  }

 private:
  std::vector<std::pair<std::string, std::string>> fields_;
};

/// Collective: every rank passes its configuration text; throws
/// config_error on every rank when they differ, naming the first differing
/// field of this rank and of the lowest rank that differs from it. Only
/// hashes travel unless they differ; then the texts are exchanged (8 bytes
/// per allgather, at most `max_chars` of them) so the message can name both.
template <class Comm>
void require_same_configuration(Comm& comm, const std::string& mine, std::size_t max_chars = 4096) {
  const int me = comm.rank();
  const auto hashes = comm.allgather(fnv1a(mine));
  const auto my_hash = hashes[static_cast<std::size_t>(me)];
  int other = -1;
  for (std::size_t r = 0; r < hashes.size(); ++r)
    if (hashes[r] != my_hash) {
      other = static_cast<int>(r);
      break;
    }
  // Every rank takes part in the text exchange when any hash differs.
  bool any = false;
  for (auto h : hashes) any = any || h != hashes[0];
  if (!any) return;
  const auto lengths = comm.allgather(std::min<std::uint64_t>(mine.size(), max_chars));
  const std::uint64_t longest = *std::max_element(lengths.begin(), lengths.end());
  std::vector<std::string> texts(hashes.size());
  for (std::uint64_t off = 0; off < longest; off += 8) {
    std::uint64_t word = 0;
    if (off < mine.size())
      std::memcpy(&word, mine.data() + off, std::min<std::size_t>(8, mine.size() - off));
    const auto words = comm.allgather(word);
    for (std::size_t r = 0; r < words.size(); ++r) {
      char c[8];
      std::memcpy(c, &words[r], 8);
      const auto n = static_cast<std::size_t>(std::min<std::uint64_t>(8, lengths[r] > off ? lengths[r] - off : 0));
      texts[r].append(c, n);
    }
  }
  const auto [a, b] = configuration::first_difference(
      texts[static_cast<std::size_t>(me)], texts[static_cast<std::size_t>(other)]);
  DASGD_THROW(config_error, "trainer configuration differs across ranks: rank ", me, " has ", a,
              " but rank ", other, " has ", b,
              "; every rank must construct its trainer with the same settings");
}

}  // namespace dasgd::detail
