# Usage requirements of dasgd's optional components. One definition, used by
# dasgd's own build (for the dasgd_mpi, dasgd_cuda_types, dasgd_cuda and
# dasgd_nccl targets) and by the installed package, where dasgdConfig.cmake
# creates the same targets from what find_package finds in the consumer's
# environment (no path of the machine dasgd was installed from is recorded).
#
# Each function adds the requirements to an existing INTERFACE target, which
# links `base` (the target of the component below it).

# MPI communicator: needs MPI::MPI_CXX (find_package(MPI COMPONENTS CXX)).
function(dasgd_component_mpi target base)
  target_link_libraries(${target} INTERFACE ${base} MPI::MPI_CXX)
  target_compile_definitions(${target} INTERFACE DASGD_HAS_MPI=1)
endfunction()

# 16-bit storage types for host code: the toolkit's headers (find_package(CUDAToolkit)).
function(dasgd_component_cuda_types target base)
  target_link_libraries(${target} INTERFACE ${base} CUDA::toolkit)
  target_compile_definitions(${target} INTERFACE DASGD_ENABLE_CUDA_TYPES=1)
  # CUDA 13 keeps Thrust/CUB/libcu++ under include/cccl, which nvcc adds by
  # itself but a host compiler does not (host code using the Thrust adaptor).
  foreach(_inc IN LISTS CUDAToolkit_INCLUDE_DIRS)
    if(EXISTS ${_inc}/cccl/thrust/device_vector.h)
      target_include_directories(${target} SYSTEM INTERFACE $<$<COMPILE_LANGUAGE:CXX>:${_inc}/cccl>)
      break()
    endif()
  endforeach()
endfunction()

# CUDA backend (fused kernels, compiled by nvcc). CMake 3.25 cannot express
# CUDA_STANDARD 20 for nvcc 13, so -std=c++20 is a CUDA compile option.
# Diagnostic 554 is EDG's note that tensor_list<const T>'s constrained-away
# conversion operator "will not be called"; it is intended, not a problem.
function(dasgd_component_cuda target base)
  target_link_libraries(${target} INTERFACE ${base} CUDA::cudart)
  target_compile_definitions(${target} INTERFACE DASGD_HAS_CUDA=1)
  target_compile_options(${target} INTERFACE
    $<$<COMPILE_LANGUAGE:CUDA>:-std=c++20 --expt-relaxed-constexpr -diag-suppress=554>)
endfunction()

# NCCL has no CMake package: looks for nccl.h and libnccl next to the CUDA
# toolkit (or where DASGD_NCCL_INCLUDE_DIR / DASGD_NCCL_LIBRARY point).
# Sets `found` in the caller to TRUE or FALSE.
function(dasgd_find_nccl found)
  find_path(DASGD_NCCL_INCLUDE_DIR nccl.h HINTS ${CUDAToolkit_INCLUDE_DIRS})
  find_library(DASGD_NCCL_LIBRARY nccl HINTS ${CUDAToolkit_LIBRARY_DIR} ${CUDAToolkit_LIBRARY_ROOT}/lib)
  if(DASGD_NCCL_INCLUDE_DIR AND DASGD_NCCL_LIBRARY)
    set(${found} TRUE PARENT_SCOPE)
  else()
    set(${found} FALSE PARENT_SCOPE)
  endif()
endfunction()

# NCCL communicator (after dasgd_find_nccl found it).
function(dasgd_component_nccl target base)
  target_include_directories(${target} INTERFACE ${DASGD_NCCL_INCLUDE_DIR})
  target_link_libraries(${target} INTERFACE ${base} ${DASGD_NCCL_LIBRARY})
  target_compile_definitions(${target} INTERFACE DASGD_HAS_NCCL=1)
endfunction()
