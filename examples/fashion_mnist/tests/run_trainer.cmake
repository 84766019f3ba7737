# Runs a Fashion-MNIST trainer binary (this example's or the libtorch
# example's: they share the options, the output lines and the CSV log) and
# checks its exit code, output and CSV log.
#   MODE=smoke         2 epochs on 8000 images: must learn (>= 0.6); 2 threads,
#                      or one worker per rank with LAUNCHER="mpiexec;-n;4";
#                      with PLOT (and PYTHON) the log is plotted to a PNG.
#                      EPOCHS, TRAIN_SAMPLES, TEST_SAMPLES and MIN_ACCURACY
#                      change those numbers; EXTRA_ARGS (one string, split
#                      like a shell command line) go to the trainer,
#                      EXPECT is a regex its output must match, TITLE the
#                      plot's title.
#   MODE=missing_data  a data folder that does not exist: must fail and say
#                      how to install the dataset
# cmake -P cannot exit with a chosen code: a skip is reported through the
# test's SKIP_REGULAR_EXPRESSION.
set(_data /usr/share/datasets/fashion-mnist)

if(NOT DEFINED EPOCHS)
  set(EPOCHS 2)
endif()
if(NOT DEFINED TRAIN_SAMPLES)
  set(TRAIN_SAMPLES 8000)
endif()
if(NOT DEFINED TEST_SAMPLES)
  set(TEST_SAMPLES 2000)
endif()
if(NOT DEFINED MIN_ACCURACY)
  set(MIN_ACCURACY 0.6)
endif()

if(MODE STREQUAL "smoke")
  if(NOT EXISTS ${_data}/train-images-idx3-ubyte.gz)
    message(STATUS "SKIP: dataset-fashion-mnist is not installed")
    return()
  endif()
  if(LAUNCHER)
    set(_csv ${WORK_DIR}/smoke_mpi.csv)
    set(_workers "")
  else()
    set(_csv ${WORK_DIR}/smoke.csv)
    set(_workers --workers 2)
  endif()
  file(REMOVE ${_csv})
  separate_arguments(_extra UNIX_COMMAND "${EXTRA_ARGS}")
  execute_process(COMMAND ${LAUNCHER} ${TRAINER} ${_workers} --epochs ${EPOCHS}
                          --train-samples ${TRAIN_SAMPLES} --test-samples ${TEST_SAMPLES}
                          --csv ${_csv} --min-accuracy ${MIN_ACCURACY} ${_extra}
                  RESULT_VARIABLE _rc OUTPUT_VARIABLE _out ERROR_VARIABLE _err)
  message(STATUS "${_out}${_err}")
  if(NOT _rc EQUAL 0)
    message(FATAL_ERROR "trainer exited with ${_rc}")
  endif()
  file(STRINGS ${_csv} _rows)
  list(LENGTH _rows _n)
  list(GET _rows 0 _header)
  math(EXPR _lines "${EPOCHS} + 1")
  if(NOT _n EQUAL _lines OR NOT _header MATCHES "^algorithm,workers,tau,delay,epoch,step,wall_seconds,train_loss,test_loss,test_accuracy")
    message(FATAL_ERROR "unexpected CSV log (${_n} lines, header '${_header}')")
  endif()
  if(NOT _out MATCHES "epoch ${EPOCHS}/${EPOCHS} .*test_acc 0\\.[0-9]+")
    message(FATAL_ERROR "no per-epoch line in the output")
  endif()
  if(EXPECT AND NOT _out MATCHES "${EXPECT}")
    message(FATAL_ERROR "the output does not match '${EXPECT}'")
  endif()
  # The plot scripts/run-example.sh draws from the log (PLOT: the script,
  # PYTHON: an interpreter with matplotlib).
  if(PLOT)
    set(_png ${WORK_DIR}/smoke.png)
    file(REMOVE ${_png})
    set(_title "")
    if(TITLE)
      set(_title --title "${TITLE}")
    endif()
    execute_process(COMMAND ${PYTHON} ${PLOT} ${_csv} -o ${_png} ${_title}
                    RESULT_VARIABLE _rc OUTPUT_VARIABLE _out ERROR_VARIABLE _err)
    if(NOT _rc EQUAL 0)
      message(FATAL_ERROR "plot_training.py failed (${_rc}): ${_out}${_err}")
    endif()
    file(READ ${_png} _magic LIMIT 4 HEX)
    if(NOT _magic STREQUAL "89504e47")
      message(FATAL_ERROR "plot_training.py did not write a PNG to ${_png}")
    endif()
    message(STATUS "plot: ${_png}")
  endif()
elseif(MODE STREQUAL "missing_data")
  execute_process(COMMAND ${TRAINER} --data-dir ${WORK_DIR}/no-such-dir
                  RESULT_VARIABLE _rc OUTPUT_VARIABLE _out ERROR_VARIABLE _err)
  if(_rc EQUAL 0)
    message(FATAL_ERROR "trainer succeeded without data")
  endif()
  if(NOT _err MATCHES "no-such-dir/train-images-idx3-ubyte.gz: file not found" OR
     NOT _err MATCHES "apt-get install dataset-fashion-mnist")
    message(FATAL_ERROR "unhelpful message: ${_err}")
  endif()
else()
  message(FATAL_ERROR "unknown MODE '${MODE}'")
endif()
