# cmake -P driver of the package tests. Any failing step fails the test.
#   STEP=install    configure dasgd as README's install command does
#                   (-DDASGD_DEVELOPER=OFF), check that it set up no tests,
#                   examples or benchmarks, install into PREFIX and check the
#                   installed CMake files hold no path of this machine.
#   STEP=consumer   configure, build and run the consumer project CONSUMER
#                   (a folder here) against PREFIX (MODE=find_package) or
#                   the source tree (MODE=add_subdirectory). ARGS: extra
#                   configure arguments; LAUNCHER: runs the program (e.g.
#                   mpiexec -n 2); a program exit of 77 means "built, not
#                   run" (no device).
#   STEP=configure_fails  configuring CONSUMER must fail with EXPECT_TEXT.
#                   PROGRAM: the consumer's executable (default: consumer).
# Common inputs: SCRATCH (a folder this test owns), GENERATOR.
function(run)
  execute_process(COMMAND ${ARGN} RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err)
  if(NOT rc EQUAL 0)
    message(FATAL_ERROR "command failed (${rc}): ${ARGN}\n${out}\n${err}")
  endif()
  message(STATUS "${out}")
endfunction()

file(REMOVE_RECURSE ${SCRATCH})

if(STEP STREQUAL "install")
  set(_build ${SCRATCH}/build)
  run(${CMAKE_COMMAND} -S ${DASGD_SOURCE_DIR} -B ${_build} -G ${GENERATOR} -DDASGD_DEVELOPER=OFF)
  foreach(_dir tests examples bench)
    if(EXISTS ${_build}/${_dir})
      message(FATAL_ERROR "-DDASGD_DEVELOPER=OFF still configured ${_dir}/")
    endif()
  endforeach()
  run(${CMAKE_COMMAND} --build ${_build})
  run(${CMAKE_COMMAND} --install ${_build} --prefix ${PREFIX})
  set(_pkg ${PREFIX}/lib/cmake/dasgd)
  if(NOT EXISTS ${_pkg})
    file(GLOB _pkg ${PREFIX}/lib*/cmake/dasgd)
  endif()
  foreach(_f dasgdConfig.cmake dasgdConfigVersion.cmake dasgdTargets.cmake dasgdComponents.cmake)
    if(NOT EXISTS ${_pkg}/${_f})
      message(FATAL_ERROR "the install has no ${_pkg}/${_f}")
    endif()
  endforeach()
  if(NOT EXISTS ${PREFIX}/include/dasgd/dasgd.hpp)
    message(FATAL_ERROR "the install has no include/dasgd/dasgd.hpp")
  endif()
  # No absolute path outside the prefix: everything the package needs is
  # found again in the consumer's environment.
  file(GLOB _files ${_pkg}/*.cmake)
  foreach(_f IN LISTS _files)
    file(STRINGS ${_f} _lines)
    foreach(_line IN LISTS _lines)
      if(_line MATCHES "^[ \t]*#")
        continue()
      endif()
      # Paths below a variable (${_IMPORT_PREFIX}/include) are relative.
      string(REGEX REPLACE "\\\$\\{[A-Za-z_]+\\}(/[A-Za-z0-9_.+*-]+)*" "" _rest "${_line}")
      if(_rest MATCHES "(^|[\" ;(=:,>])(/[A-Za-z0-9_.+-]+)+")
        message(FATAL_ERROR "${_f} records an absolute path: ${_line}")
      endif()
    endforeach()
  endforeach()
  message(STATUS "installed into ${PREFIX}; no absolute paths in ${_pkg}")
elseif(STEP STREQUAL "consumer" OR STEP STREQUAL "configure_fails")
  set(_args ${ARGS})
  if(MODE STREQUAL "add_subdirectory")
    list(APPEND _args -DDASGD_CONSUMER_MODE=add_subdirectory -DDASGD_SOURCE_DIR=${DASGD_SOURCE_DIR})
  else()
    list(APPEND _args -DCMAKE_PREFIX_PATH=${PREFIX})
  endif()
  set(_configure ${CMAKE_COMMAND} -S ${CONSUMER} -B ${SCRATCH}/build -G ${GENERATOR} ${_args})
  if(STEP STREQUAL "configure_fails")
    execute_process(COMMAND ${_configure} RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err)
    if(rc EQUAL 0)
      message(FATAL_ERROR "configuring ${CONSUMER} succeeded, but must fail with \"${EXPECT_TEXT}\"\n${out}")
    endif()
    string(FIND "${out}${err}" "${EXPECT_TEXT}" _at)
    if(_at EQUAL -1)
      message(FATAL_ERROR "configuring ${CONSUMER} failed without \"${EXPECT_TEXT}\":\n${out}\n${err}")
    endif()
    message(STATUS "failed as expected:\n${err}")
    return()
  endif()
  run(${_configure})
  run(${CMAKE_COMMAND} --build ${SCRATCH}/build)
  if(NOT PROGRAM)
    set(PROGRAM consumer)
  endif()
  execute_process(COMMAND ${LAUNCHER} ${SCRATCH}/build/${PROGRAM} RESULT_VARIABLE rc
                  OUTPUT_VARIABLE out ERROR_VARIABLE err)
  if(rc EQUAL 77)
    message(STATUS "built and linked; not run: ${out}")
  elseif(NOT rc EQUAL 0)
    message(FATAL_ERROR "the consumer failed (${rc}):\n${out}\n${err}")
  else()
    message(STATUS "${out}")
  endif()
else()
  message(FATAL_ERROR "consumer_test.cmake: unknown STEP '${STEP}'")
endif()
