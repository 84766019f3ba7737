#!/usr/bin/python3
"""Plot Fashion-MNIST training logs (the --csv files of dasgd_fashion_mnist).

    scripts/plot_training.py sync.csv dasgd.csv -o docs/img/fashion_mnist.png

One curve per CSV file: test accuracy and loss (test solid, train dashed)
against wall time and against step. Any number of files; each is labelled
with its algorithm and settings, or with --labels.

The shebang names /usr/bin/python3 because Debian's python3-matplotlib is
installed for the system interpreter, not for other pythons on PATH.
"""

import argparse
import csv
import sys

REQUIRED = ("algorithm", "workers", "tau", "delay", "epoch", "step", "wall_seconds",
            "train_loss", "test_loss", "test_accuracy")


def read_log(path):
    """Columns of one CSV log as lists (numbers as float)."""
    try:
        with open(path, newline="") as f:
            rows = list(csv.DictReader(f))
    except OSError as e:
        sys.exit(f"plot_training: cannot read {path}: {e.strerror}")
    if not rows:
        sys.exit(f"plot_training: {path} has no data rows")
    missing = [c for c in REQUIRED if c not in rows[0]]
    if missing:
        sys.exit(f"plot_training: {path} lacks the column(s) {', '.join(missing)}; "
                 "is it a dasgd_fashion_mnist --csv log?")
    log = {"algorithm": rows[0]["algorithm"]}
    for column in REQUIRED[1:]:
        try:
            log[column] = [float(r[column]) for r in rows]
        except ValueError as e:
            sys.exit(f"plot_training: {path}: column {column}: {e}")
    return log


def default_label(log):
    workers = int(log["workers"][0])
    if log["algorithm"] == "sync":
        return f"sync SGD ({workers} workers)"
    tau, delay = int(log["tau"][0]), int(log["delay"][0])
    name = "DaSGD" if log["algorithm"] == "dasgd" else "Local SGD"
    return f"{name} ({workers} workers, tau={tau}, d={delay})"


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("csv", nargs="+", help="CSV logs written by dasgd_fashion_mnist --csv")
    parser.add_argument("-o", "--output", default="fashion_mnist.png", help="PNG file to write")
    parser.add_argument("--labels", nargs="+", help="one legend label per CSV file")
    parser.add_argument("--title", default="Fashion-MNIST MLP 784-256-128-10")
    args = parser.parse_args()
    if args.labels and len(args.labels) != len(args.csv):
        parser.error(f"--labels has {len(args.labels)} entries for {len(args.csv)} CSV files")

    try:
        import matplotlib
        matplotlib.use("Agg")  # files only: no display needed
        import matplotlib.pyplot as plt
    except ImportError:
        sys.exit("plot_training: matplotlib is missing. Install it with "
                 "`apt-get install python3-matplotlib` and run this script with /usr/bin/python3 "
                 f"(this is {sys.executable}).")

    logs = [read_log(p) for p in args.csv]
    labels = args.labels or [default_label(log) for log in logs]

    fig, axes = plt.subplots(2, 2, figsize=(11, 7.5), sharey="row")
    for i, (log, label) in enumerate(zip(logs, labels)):
        color = f"C{i}"
        for col, x_key in enumerate(("wall_seconds", "step")):
            x = log[x_key]
            axes[0][col].plot(x, log["test_accuracy"], "o-", color=color, ms=3, label=label)
            axes[1][col].plot(x, log["test_loss"], "o-", color=color, ms=3, label=f"{label}, test")
            axes[1][col].plot(x, log["train_loss"], "--", color=color, label=f"{label}, train")
    for col, xlabel in enumerate(("wall time [s]", "step (per worker)")):
        axes[1][col].set_xlabel(xlabel)
        for row in axes:
            row[col].grid(True, alpha=0.3)
    axes[0][0].set_ylabel("test accuracy")
    axes[1][0].set_ylabel("cross-entropy loss")
    axes[0][0].legend(loc="lower right", fontsize=8)
    axes[1][0].legend(loc="upper right", fontsize=8)
    fig.suptitle(args.title)
    fig.tight_layout()
    try:
        fig.savefig(args.output, dpi=110)
    except OSError as e:
        sys.exit(f"plot_training: cannot write {args.output}: {e.strerror}")
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
