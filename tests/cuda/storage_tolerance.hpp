// Rounding-aware comparisons for 16-bit (and 32/64-bit) storage values.
// Host-only C++: used by the host functor test and by the GPU tests.
#pragma once

#include <dasgd/core/precision.hpp>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <random>
#include <type_traits>

namespace dasgd::test {

/// Significand bits (with the implicit one) and smallest normal exponent.
template <class T>
struct storage_format;
template <>
struct storage_format<double> {
  static constexpr int digits = 53;
  static constexpr int min_exponent = -1022;
};
template <>
struct storage_format<float> {
  static constexpr int digits = 24;
  static constexpr int min_exponent = -126;
};
template <>
struct storage_format<__half> {
  static constexpr int digits = 11;
  static constexpr int min_exponent = -14;
};
template <>
struct storage_format<__nv_bfloat16> {
  static constexpr int digits = 8;
  static constexpr int min_exponent = -126;
};

/// Spacing of representable T values at magnitude |x| (the subnormal
/// spacing below the normal range).
template <class T>
double ulp_at(double x) {
  using f = storage_format<T>;
  const double ax = std::abs(x);
  int e = f::min_exponent;
  if (ax >= std::ldexp(1.0, f::min_exponent)) e = std::ilogb(ax);
  return std::ldexp(1.0, e - (f::digits - 1));
}

template <class T>
double as_double(T x) {
  return to_compute<double>(x);
}

/// The raw bits of a storage value (bitwise equality, NaN-safe).
template <class T>
auto bits_of(T x) {
  using U = std::conditional_t<sizeof(T) == 2, std::uint16_t,
                               std::conditional_t<sizeof(T) == 4, std::uint32_t, std::uint64_t>>;
  U u;
  std::memcpy(&u, &x, sizeof u);
  return u;
}

template <class T>
bool same_bits(T a, T b) {
  return bits_of(a) == bits_of(b);
}

/// A storage value computed in compute precision C and rounded once,
/// against an exact (double) reference: it must be within one storage ulp
/// of the reference, widened by the compute type's own rounding error on
/// terms of magnitude `scale` (which matters only under cancellation).
template <class T, class C = default_compute_t<T>>
bool within_storage_rounding(T got, double ref, double scale, double* error_in_ulps = nullptr) {
  const double tol = ulp_at<T>(ref) + 16.0 * unit_roundoff<C>() * scale;
  const double err = std::abs(as_double(got) - ref);
  if (error_in_ulps) *error_in_ulps = err / ulp_at<T>(ref);
  return err <= tol;
}

/// A compute-precision value against a double reference.
template <class C>
bool within_compute_rounding(C got, double ref, double scale) {
  return std::abs(static_cast<double>(got) - ref) <= 16.0 * unit_roundoff<C>() * scale;
}

/// Uniform values in [lo, hi), rounded to T.
template <class T>
T random_storage(std::mt19937& rng, double lo, double hi) {
  std::uniform_real_distribution<double> d(lo, hi);
  return to_storage<T>(d(rng));
}

}  // namespace dasgd::test
