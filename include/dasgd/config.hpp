// dasgd: Local SGD with delayed averaging for C++/CUDA trainers.
// config.hpp: version, host/device annotation, feature macros.
#pragma once

#define DASGD_VERSION_MAJOR 0
#define DASGD_VERSION_MINOR 1
#define DASGD_VERSION_PATCH 0

// Element math is written once and compiled for the host and, under nvcc,
// for the device too (CuTe's CUTE_HOST_DEVICE idea).
#if defined(__CUDACC__)
#define DASGD_HOST_DEVICE __forceinline__ __host__ __device__
#define DASGD_HAS_CUDA_TYPES 1
#else
#define DASGD_HOST_DEVICE inline
#endif

// 16-bit storage types come from the CUDA headers, which also compile for a
// host-only translation unit. Targets linking dasgd::cuda_types define this.
#if !defined(DASGD_HAS_CUDA_TYPES) && defined(DASGD_ENABLE_CUDA_TYPES)
#define DASGD_HAS_CUDA_TYPES 1
#endif

#if defined(__GNUC__) || defined(__clang__)
#define DASGD_RESTRICT __restrict__
#else
#define DASGD_RESTRICT
#endif
