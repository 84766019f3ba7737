#!/usr/bin/env bash
# The main example: installs missing Debian packages, builds the Fashion-MNIST
# trainer and trains the 784-256-128-10 MLP with DaSGD (4 in-process workers,
# tau = 4, delay = 1, mix p = 0.25) on the real dataset, printing test
# accuracy per epoch, then plots the run: build/fashion_mnist_dasgd.csv and
# build/fashion_mnist_dasgd.png (test accuracy and loss against wall time and
# steps, scripts/plot_training.py).
# Extra arguments go to the trainer (see --help), e.g. `-a sync`.
# `scripts/run-example.sh --libtorch [args]` runs the libtorch CNN example
# instead (libtorch-dev among the packages; 4 threads, CPU, with the
# torch::optim step-time comparison): build/libtorch_fashion_mnist_dasgd.csv
# and .png (docs/libtorch.md).
set -euo pipefail
cd "$(dirname "$0")/.."
example=fashion_mnist
extra=()
title=()
if [[ "${1:-}" == "--libtorch" ]]; then
  shift
  example=libtorch_fashion_mnist
  extra=(--compare-torch-optim)
  title=(--title "Fashion-MNIST CNN (libtorch + dasgd)")
fi
scripts/install-deps.sh
cmake --preset default -DDASGD_ENABLE_CUDA=OFF >/dev/null
cmake --build --preset default -j "$(nproc)" --target "dasgd_$example"
csv=build/${example}_dasgd.csv
png=build/${example}_dasgd.png
rm -f "$csv"
"build/default/examples/$example/dasgd_$example" --csv "$csv" "${extra[@]}" "$@"
[[ -s "$csv" ]] || exit 0  # e.g. --help: nothing was trained
# Debian's Python has matplotlib (install-deps.sh); a python3 on PATH may not.
if /usr/bin/python3 -c "import matplotlib" 2>/dev/null; then
  /usr/bin/python3 scripts/plot_training.py "$csv" -o "$png" "${title[@]}" >/dev/null
  echo "log: $csv, plot: $png"
else
  echo "log: $csv (no plot: /usr/bin/python3 lacks matplotlib; apt-get install python3-matplotlib)"
fi
