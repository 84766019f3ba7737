# CUDA detection. Defines, when found:
#   dasgd::cuda_types  16-bit storage types (__half, __nv_bfloat16) for host code
#                      (only the toolkit's headers are needed)
#   dasgd::cuda        CUDA backend (fused multi-tensor kernels), needs nvcc
#   dasgd::nccl        NCCL communicator
# CMake 3.25 cannot express CUDA_STANDARD 20 for nvcc 13, so -std=c++20 is
# passed as a CUDA compile option instead.
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
set_target_properties(dasgd_cuda_types PROPERTIES EXPORT_NAME cuda_types)
target_link_libraries(dasgd_cuda_types INTERFACE dasgd CUDA::toolkit)
target_compile_definitions(dasgd_cuda_types INTERFACE DASGD_ENABLE_CUDA_TYPES=1)
# CUDA 13 keeps Thrust/CUB/libcu++ under include/cccl, which nvcc adds by
# itself but a host compiler does not (host code using the Thrust adaptor).
foreach(_dasgd_inc IN LISTS CUDAToolkit_INCLUDE_DIRS)
  if(EXISTS ${_dasgd_inc}/cccl/thrust/device_vector.h)
    target_include_directories(dasgd_cuda_types SYSTEM INTERFACE $<$<COMPILE_LANGUAGE:CXX>:${_dasgd_inc}/cccl>)
    break()
  endif()
endforeach()
list(APPEND DASGD_EXPORTED_TARGETS dasgd_cuda_types)

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
set_target_properties(dasgd_cuda PROPERTIES EXPORT_NAME cuda)
target_link_libraries(dasgd_cuda INTERFACE dasgd_cuda_types CUDA::cudart)
target_compile_definitions(dasgd_cuda INTERFACE DASGD_HAS_CUDA=1)
# Diagnostic 554 is EDG's note that tensor_list<const T>'s constrained-away
# conversion operator "will not be called"; it is intended, not a problem.
target_compile_options(dasgd_cuda INTERFACE
  $<$<COMPILE_LANGUAGE:CUDA>:-std=c++20 --expt-relaxed-constexpr -diag-suppress=554>)
list(APPEND DASGD_EXPORTED_TARGETS dasgd_cuda)

find_path(DASGD_NCCL_INCLUDE_DIR nccl.h HINTS ${CUDAToolkit_INCLUDE_DIRS})
find_library(DASGD_NCCL_LIBRARY nccl HINTS ${CUDAToolkit_LIBRARY_DIR} ${CUDAToolkit_LIBRARY_ROOT}/lib)
if(DASGD_NCCL_INCLUDE_DIR AND DASGD_NCCL_LIBRARY)
  set(DASGD_HAS_NCCL ON)
  message(STATUS "dasgd: NCCL found (${DASGD_NCCL_LIBRARY})")
  add_library(dasgd_nccl INTERFACE)
  add_library(dasgd::nccl ALIAS dasgd_nccl)
  set_target_properties(dasgd_nccl PROPERTIES EXPORT_NAME nccl)
  target_include_directories(dasgd_nccl INTERFACE ${DASGD_NCCL_INCLUDE_DIR})
  target_link_libraries(dasgd_nccl INTERFACE dasgd_cuda ${DASGD_NCCL_LIBRARY})
  target_compile_definitions(dasgd_nccl INTERFACE DASGD_HAS_NCCL=1)
  list(APPEND DASGD_EXPORTED_TARGETS dasgd_nccl)
endif()
