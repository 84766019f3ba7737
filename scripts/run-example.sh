#!/usr/bin/env bash
# The main example: installs missing Debian packages, builds the Fashion-MNIST
# trainer and trains the 784-256-128-10 MLP with DaSGD (4 in-process workers,
# tau = 4, delay = 1, mix p = 0.25) on the real dataset, printing test
# accuracy per epoch, then plots the run: build/fashion_mnist_dasgd.csv and
# build/fashion_mnist_dasgd.png (test accuracy and loss against wall time and
# steps, scripts/plot_training.py).
# Extra arguments go to the trainer (see --help), e.g. `-a sync`.
# `scripts/run-example.sh --libtorch [args]` runs the libtorch CNN example
# instead (examples/libtorch_fashion_mnist/run.sh, docs/libtorch.md).
set -euo pipefail
cd "$(dirname "$0")/.."
if [[ "${1:-}" == "--libtorch" ]]; then
  shift
  exec examples/libtorch_fashion_mnist/run.sh "$@"
fi
scripts/install-deps.sh
cmake --preset default -DDASGD_ENABLE_CUDA=OFF >/dev/null
cmake --build --preset default -j "$(nproc)" --target dasgd_fashion_mnist
csv=build/fashion_mnist_dasgd.csv
png=build/fashion_mnist_dasgd.png
rm -f "$csv"
build/default/examples/fashion_mnist/dasgd_fashion_mnist --csv "$csv" "$@"
[[ -s "$csv" ]] || exit 0  # e.g. --help: nothing was trained
# Debian's Python has matplotlib (install-deps.sh); a python3 on PATH may not.
if /usr/bin/python3 -c "import matplotlib" 2>/dev/null; then
  /usr/bin/python3 scripts/plot_training.py "$csv" -o "$png" >/dev/null
  echo "log: $csv, plot: $png"
else
  echo "log: $csv (no plot: /usr/bin/python3 lacks matplotlib; apt-get install python3-matplotlib)"
fi
