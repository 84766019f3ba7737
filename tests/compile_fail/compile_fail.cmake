# cmake -P driver of one compile-fail test: the translation unit SOURCE must
#  - compile with -DDASGD_COMPILE_FAIL_CONTROL=1 (the same code with matching
#    types, so the failure below comes from the mismatch and nothing else);
#  - fail to compile without it, with EXPECT (plain text) in the diagnostics,
#    and without FORBID (the error it replaced, deep inside the library).
# Inputs: COMPILER, STD_FLAG, INCLUDE_DIR, SOURCE, EXPECT, [FORBID].
foreach(_v COMPILER STD_FLAG INCLUDE_DIR SOURCE EXPECT)
  if(NOT DEFINED ${_v})
    message(FATAL_ERROR "compile_fail.cmake: ${_v} is not set")
  endif()
endforeach()
set(_cmd ${COMPILER} ${STD_FLAG} -fsyntax-only -I${INCLUDE_DIR} ${SOURCE})

execute_process(COMMAND ${_cmd} -DDASGD_COMPILE_FAIL_CONTROL=1
                RESULT_VARIABLE _rc OUTPUT_VARIABLE _out ERROR_VARIABLE _err)
if(NOT _rc EQUAL 0)
  message(FATAL_ERROR "the control variant of ${SOURCE} does not compile (${_rc}):\n${_out}${_err}")
endif()

execute_process(COMMAND ${_cmd} RESULT_VARIABLE _rc OUTPUT_VARIABLE _out ERROR_VARIABLE _err)
set(_diag "${_out}${_err}")
if(_rc EQUAL 0)
  message(FATAL_ERROR "${SOURCE} compiled, but it must be rejected with \"${EXPECT}\"")
endif()
string(FIND "${_diag}" "${EXPECT}" _at)
if(_at EQUAL -1)
  message(FATAL_ERROR "${SOURCE} was rejected, but not with \"${EXPECT}\":\n${_diag}")
endif()
if(DEFINED FORBID AND NOT FORBID STREQUAL "")
  string(FIND "${_diag}" "${FORBID}" _at)
  if(NOT _at EQUAL -1)
    message(FATAL_ERROR "${SOURCE}: the diagnostics still contain \"${FORBID}\":\n${_diag}")
  endif()
endif()
message(STATUS "rejected as expected: \"${EXPECT}\"")
