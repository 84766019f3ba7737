#!/usr/bin/env bash
# The libtorch example (issue #14): installs missing Debian packages
# (libtorch-dev among them), builds the trainer and trains the small CNN on
# Fashion-MNIST with DaSGD (4 in-process workers, tau = 4, delay = 1,
# mix p = 0.25, CPU) for the default epochs, times torch::optim::SGD plus a
# hand-written average on the same batches, then plots the run:
# build/libtorch_fashion_mnist_dasgd.csv and .png.
# Extra arguments go to the trainer (see --help), e.g. `-a sync` for the
# synchronous baseline or `--epochs 3`.
set -euo pipefail
cd "$(dirname "$0")/../.."
scripts/install-deps.sh
cmake --preset default -DDASGD_ENABLE_CUDA=OFF >/dev/null
cmake --build --preset default -j "$(nproc)" --target dasgd_libtorch_fashion_mnist
csv=build/libtorch_fashion_mnist_dasgd.csv
png=build/libtorch_fashion_mnist_dasgd.png
rm -f "$csv"
build/default/examples/libtorch_fashion_mnist/dasgd_libtorch_fashion_mnist --csv "$csv" \
  --compare-torch-optim "$@"
[[ -s "$csv" ]] || exit 0  # e.g. --help: nothing was trained
# Debian's Python has matplotlib (install-deps.sh); a python3 on PATH may not.
if /usr/bin/python3 -c "import matplotlib" 2>/dev/null; then
  /usr/bin/python3 scripts/plot_training.py "$csv" -o "$png" \
    --title "Fashion-MNIST CNN (libtorch + dasgd)" >/dev/null
  echo "log: $csv, plot: $png"
else
  echo "log: $csv (no plot: /usr/bin/python3 lacks matplotlib; apt-get install python3-matplotlib)"
fi
