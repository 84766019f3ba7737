# Runs the stall job under mpiexec and checks that every surviving rank saw
# timeout_error within the timeout (plus slack) and that the job ended, in
# all within the timeout plus a few seconds.
#   -DMPIEXEC=... -DNP=n -DFLAGS=... -DJOB=... -DMODE=thread|test -DTIMEOUT_MS=ms [-DSKEW_MS=ms]
#   [-DREPORTS=k] [-DSTALLED_ABORTS=ON]
# SKEW_MS: rank 0's timeout is longer by that much (mpi_stall_job.cpp).
# REPORTS: how many ranks must report timeout_error (default: all but the
# stalled one; tests/cuda/cuda_mpi_stall_job.cpp's stalled rank reports too).
# STALLED_ABORTS: the stalled rank (the last) gave up a collective after its
# failure, so it must end in MPI_Abort and say so, not go to MPI_Finalize.
# GAVE_UP=n (implies STALLED_ABORTS): it must say it gave up exactly n. EXPECT_OUT: a text that must
# appear in the job's standard output (mpi_failure_job.cpp's last rank).
string(TIMESTAMP t0 "%s")
set(_flags ${FLAGS})
if(NOT DEFINED SKEW_MS)
  set(SKEW_MS 0)
endif()
execute_process(COMMAND ${MPIEXEC} -n ${NP} ${_flags} ${JOB} ${MODE} ${TIMEOUT_MS} ${SKEW_MS}
                OUTPUT_VARIABLE out ERROR_VARIABLE err RESULT_VARIABLE rc TIMEOUT 120)
string(TIMESTAMP t1 "%s")
math(EXPR elapsed "${t1} - ${t0}")
message("${out}")
message("${err}")
if(DEFINED REPORTS)
  set(survivors ${REPORTS})
else()
  math(EXPR survivors "${NP} - 1")
endif()
string(REGEX MATCHALL "timeout_error after ([0-9.]+) s" seen "${out}")
list(LENGTH seen n_seen)
if(NOT n_seen EQUAL survivors)
  message(FATAL_ERROR "expected ${survivors} ranks to report timeout_error, saw ${n_seen}")
endif()
foreach(line IN LISTS seen)
  string(REGEX REPLACE ".*after ([0-9.]+) s" "\\1" s "${line}")
  math(EXPR limit_ms "${TIMEOUT_MS} + ${SKEW_MS} + 1500")
  string(REGEX REPLACE "\\..*" "" whole "${s}")
  math(EXPR s_ms "${whole} * 1000")
  if(s_ms GREATER limit_ms)
    message(FATAL_ERROR "timeout_error came after ${s} s, the timeout is ${TIMEOUT_MS} ms")
  endif()
endforeach()
if(NOT err MATCHES "collective\\(s\\) never completed")
  message(FATAL_ERROR "mpi_environment did not say why it aborted the job")
endif()
if(STALLED_ABORTS AND NOT DEFINED GAVE_UP)
  set(GAVE_UP "[0-9]+")
endif()
if(DEFINED GAVE_UP)
  math(EXPR last "${NP} - 1")
  if(NOT err MATCHES "rank ${last}: gave up ${GAVE_UP} collective\\(s\\) after a failure")
    message(FATAL_ERROR "rank ${last} did not say it gave up ${GAVE_UP} collective(s) and abort")
  endif()
endif()
if(DEFINED EXPECT_OUT)
  string(FIND "${out}" "${EXPECT_OUT}" at)
  if(at EQUAL -1)
    message(FATAL_ERROR "the job's output lacks \"${EXPECT_OUT}\"")
  endif()
endif()
if(rc EQUAL 0)
  message(FATAL_ERROR "the job exited 0 although a rank stalled")
endif()
math(EXPR budget "${TIMEOUT_MS} / 1000 + 15")
if(elapsed GREATER budget)
  message(FATAL_ERROR "the job took ${elapsed} s to end (timeout ${TIMEOUT_MS} ms)")
endif()
message(STATUS "stall job: ended after ${elapsed} s (exit ${rc}); ${n_seen} ranks saw timeout_error")
