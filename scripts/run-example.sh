#!/usr/bin/env bash
# The main example: installs missing Debian packages, builds the Fashion-MNIST
# trainer and trains the 784-256-128-10 MLP with DaSGD (4 in-process workers,
# tau = 4, delay = 1, mix p = 0.25) on the real dataset, printing test
# accuracy per epoch and writing build/fashion_mnist_dasgd.csv.
# Extra arguments go to the trainer (see --help), e.g. `-a sync`.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
cmake --preset default -DDASGD_ENABLE_CUDA=OFF >/dev/null
cmake --build --preset default -j "$(nproc)" --target dasgd_fashion_mnist
exec build/default/examples/fashion_mnist/dasgd_fashion_mnist --csv build/fashion_mnist_dasgd.csv "$@"
