# CUDA detection for dasgd's own build. Defines, when found:
#   dasgd::cuda_types  16-bit storage types (__half, __nv_bfloat16) for host code
#                      (only the toolkit's headers are needed)
#   dasgd::cuda        CUDA backend (fused multi-tensor kernels), needs nvcc
#   dasgd::nccl        NCCL communicator
# The usage requirements are in dasgdComponents.cmake (shared with the
# installed package, which finds these in the consumer's environment).
set(DASGD_HAS_CUDA OFF)
set(DASGD_HAS_CUDA_TYPES OFF)
set(DASGD_HAS_NCCL OFF)

if(DASGD_ENABLE_CUDA STREQUAL "OFF")
  return()
endif()

if(NOT DEFINED ENV{CUDACXX} AND NOT CMAKE_CUDA_COMPILER AND EXISTS /usr/local/cuda/bin/nvcc)
  set(ENV{CUDACXX} /usr/local/cuda/bin/nvcc)
endif()
if(NOT DEFINED CUDAToolkit_ROOT AND EXISTS /usr/local/cuda)
  set(CUDAToolkit_ROOT /usr/local/cuda)
endif()

find_package(CUDAToolkit QUIET)
if(NOT CUDAToolkit_FOUND)
  if(DASGD_ENABLE_CUDA STREQUAL "ON")
    message(FATAL_ERROR "DASGD_ENABLE_CUDA=ON but the CUDA toolkit was not found")
  endif()
  return()
endif()

set(DASGD_HAS_CUDA_TYPES ON)
add_library(dasgd_cuda_types INTERFACE)
add_library(dasgd::cuda_types ALIAS dasgd_cuda_types)
dasgd_component_cuda_types(dasgd_cuda_types dasgd)

include(CheckLanguage)
check_language(CUDA)
if(NOT CMAKE_CUDA_COMPILER)
  if(DASGD_ENABLE_CUDA STREQUAL "ON")
    message(FATAL_ERROR "DASGD_ENABLE_CUDA=ON but no CUDA compiler (nvcc) was found")
  endif()
  return()
endif()

if(NOT DEFINED CMAKE_CUDA_ARCHITECTURES)
  set(CMAKE_CUDA_ARCHITECTURES 80 90)
endif()
enable_language(CUDA)
set(DASGD_HAS_CUDA ON)
message(STATUS "dasgd: CUDA backend enabled (architectures ${CMAKE_CUDA_ARCHITECTURES})")

add_library(dasgd_cuda INTERFACE)
add_library(dasgd::cuda ALIAS dasgd_cuda)
dasgd_component_cuda(dasgd_cuda dasgd_cuda_types)

dasgd_find_nccl(_dasgd_nccl_found)
if(_dasgd_nccl_found)
  set(DASGD_HAS_NCCL ON)
  message(STATUS "dasgd: NCCL found (${DASGD_NCCL_LIBRARY})")
  add_library(dasgd_nccl INTERFACE)
  add_library(dasgd::nccl ALIAS dasgd_nccl)
  dasgd_component_nccl(dasgd_nccl dasgd_cuda)
endif()
