# Runs the libtorch trainer on a slice of the real data and checks its exit
# code, output, CSV log and (with PLOT and PYTHON) the plot of the log:
# 1 epoch on 2400 images, 2 worker threads (or one worker per rank with
# LAUNCHER="mpiexec;-n;2"), must beat chance clearly (>= 0.5), and the
# --compare-torch-optim timing line must be printed.
# cmake -P cannot exit with a chosen code: a skip is reported through the
# test's SKIP_REGULAR_EXPRESSION.
set(_data /usr/share/datasets/fashion-mnist)
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
execute_process(COMMAND ${LAUNCHER} ${TRAINER} ${_workers} --epochs 1 --train-samples 2400
                        --test-samples 1000 --csv ${_csv} --min-accuracy 0.5
                        --compare-torch-optim --compare-steps 10
                RESULT_VARIABLE _rc OUTPUT_VARIABLE _out ERROR_VARIABLE _err)
message(STATUS "${_out}${_err}")
if(NOT _rc EQUAL 0)
  message(FATAL_ERROR "trainer exited with ${_rc}")
endif()
file(STRINGS ${_csv} _rows)
list(LENGTH _rows _n)
list(GET _rows 0 _header)
if(NOT _n EQUAL 2 OR NOT _header MATCHES "^algorithm,workers,tau,delay,epoch,step,wall_seconds,train_loss,test_loss,test_accuracy")
  message(FATAL_ERROR "unexpected CSV log (${_n} lines, header '${_header}')")
endif()
if(NOT _out MATCHES "epoch 1/1 .*test_acc 0\\.[0-9]+")
  message(FATAL_ERROR "no per-epoch line in the output")
endif()
if(NOT _out MATCHES "step-time ratio torch/dasgd [0-9]")
  message(FATAL_ERROR "no --compare-torch-optim result in the output")
endif()
if(PLOT)
  set(_png ${_csv}.png)
  file(REMOVE ${_png})
  execute_process(COMMAND ${PYTHON} ${PLOT} ${_csv} -o ${_png} --title "Fashion-MNIST CNN (libtorch)"
                  RESULT_VARIABLE _rc OUTPUT_VARIABLE _out ERROR_VARIABLE _err)
  if(NOT _rc EQUAL 0)
    message(FATAL_ERROR "plot_training.py failed (${_rc}): ${_out}${_err}")
  endif()
  file(READ ${_png} _magic LIMIT 4 HEX)
  if(NOT _magic STREQUAL "89504e47")
    message(FATAL_ERROR "plot_training.py did not write a PNG to ${_png}")
  endif()
endif()
