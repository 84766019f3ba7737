#!/usr/bin/env bash
# The libtorch example (docs/libtorch.md): scripts/run-example.sh --libtorch,
# which installs missing Debian packages (libtorch-dev among them), builds the
# trainer, trains the small CNN on Fashion-MNIST with DaSGD (4 in-process
# workers, tau = 4, delay = 1, mix p = 0.25, CPU), times torch::optim::SGD
# plus a hand-written average on the same batches and plots the run.
# Extra arguments go to the trainer (see --help), e.g. `-a sync`.
exec "$(dirname "$0")/../../scripts/run-example.sh" --libtorch "$@"
