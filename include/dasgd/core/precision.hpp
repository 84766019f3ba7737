// Precision as a template parameter (CUTLASS style): each role has its own
// type. Storage is what lives in memory (weights, gradients, snapshot,
// average); Compute is what the element math runs in and what optimizer
// state is kept in. 16-bit storage always computes in float.
#pragma once

#include <math.h>

#include <concepts>
#include <cstdint>
#include <type_traits>

#include "../config.hpp"

#if defined(DASGD_HAS_CUDA_TYPES)
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#endif

namespace dasgd {

/// Default compute type for a storage type.
template <class Storage>
struct default_compute { using type = float; };
template <>
struct default_compute<double> { using type = double; };
template <class Storage>
using default_compute_t = typename default_compute<Storage>::type;

/// Storage/compute pair. State (momentum, Adam moments) is kept in Compute.
template <class Storage, class Compute = default_compute_t<Storage>>
struct precision {
  using storage_type = Storage;
  using compute_type = Compute;
  using state_type = Compute;
};

/// Storage types the kernels are instantiated for.
template <class T>
inline constexpr bool is_storage_type_v =
    std::same_as<T, float> || std::same_as<T, double>
#if defined(DASGD_HAS_CUDA_TYPES)
    || std::same_as<T, __half> || std::same_as<T, __nv_bfloat16>
#endif
    ;

template <class T>
concept storage_type = is_storage_type_v<std::remove_cv_t<T>>;

template <class T>
concept compute_type = std::same_as<T, float> || std::same_as<T, double>;

/// Stable identifiers (used in checkpoints and messages).
template <class T> struct type_id;
template <> struct type_id<float> {
  static constexpr std::uint32_t value = 1;
  static constexpr const char* name = "float";
};
template <> struct type_id<double> {
  static constexpr std::uint32_t value = 2;
  static constexpr const char* name = "double";
};
#if defined(DASGD_HAS_CUDA_TYPES)
template <> struct type_id<__half> {
  static constexpr std::uint32_t value = 3;
  static constexpr const char* name = "half";
};
template <> struct type_id<__nv_bfloat16> {
  static constexpr std::uint32_t value = 4;
  static constexpr const char* name = "bfloat16";
};
#endif

/// Storage -> compute conversion (exact for every supported pair).
template <class Compute, class Storage>
DASGD_HOST_DEVICE Compute to_compute(Storage x) {
#if defined(DASGD_HAS_CUDA_TYPES)
  if constexpr (std::is_same_v<Storage, __half>) {
    return static_cast<Compute>(__half2float(x));
  } else if constexpr (std::is_same_v<Storage, __nv_bfloat16>) {
    return static_cast<Compute>(__bfloat162float(x));
  } else
#endif
  {
    return static_cast<Compute>(x);
  }
}

/// Compute -> storage conversion, round to nearest even.
template <class Storage, class Compute>
DASGD_HOST_DEVICE Storage to_storage(Compute x) {
#if defined(DASGD_HAS_CUDA_TYPES)
  if constexpr (std::is_same_v<Storage, __half>) {
    return __float2half_rn(static_cast<float>(x));
  } else if constexpr (std::is_same_v<Storage, __nv_bfloat16>) {
    return __float2bfloat16_rn(static_cast<float>(x));
  } else
#endif
  {
    return static_cast<Storage>(x);
  }
}

/// True unless x is a NaN or an infinity, on host and device alike: x - x
/// is 0 for every finite x and NaN otherwise (no <cmath> overload set,
/// which differs between the host and the device compiler).
template <class C>
DASGD_HOST_DEVICE bool is_finite(C x) {
  return x - x == C(0);
}

/// Square root in compute precision, usable on host and device.
template <class C>
DASGD_HOST_DEVICE C sqrt_of(C x) {
  if constexpr (std::is_same_v<C, float>) {
    return ::sqrtf(x);
  } else {
    return ::sqrt(x);
  }
}

/// Unit roundoff of a storage type (half the distance from 1 to the next
/// representable value): the bound tests use for one rounding step.
template <class Storage>
constexpr double unit_roundoff() {
  if constexpr (std::is_same_v<Storage, double>) return 0x1p-53;
  else if constexpr (std::is_same_v<Storage, float>) return 0x1p-24;
#if defined(DASGD_HAS_CUDA_TYPES)
  else if constexpr (std::is_same_v<Storage, __half>) return 0x1p-11;
  else if constexpr (std::is_same_v<Storage, __nv_bfloat16>) return 0x1p-8;
#endif
  else return 0.0;
}

}  // namespace dasgd
