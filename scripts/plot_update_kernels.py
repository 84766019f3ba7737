#!/usr/bin/env python3
"""Plot the update benchmark: achieved bandwidth against size, one panel per
(optimizer, precision), for one mode.

Reads any number of CSVs written by bench/update_kernels (host or GPU mode)
and scripts/bench_pytorch_update.py; they share their columns. Each
implementation is one colour: flat single-tensor layouts form its line,
the model lists (resnet50, gpt2_small) are separate markers at their total
size. The baseline each dasgd row was measured against (device copy or
stream triad, same bytes, same run) is the dashed line.

  plot_update_kernels.py --out update_kernels.png gpu.csv pytorch.csv
"""

import argparse
import csv
import sys
from collections import defaultdict

MODEL_MARKERS = {"resnet50": "s", "gpt2_small": "^"}
COLORS = {"dasgd-cuda": "tab:blue", "dasgd-host": "tab:blue", "torch-fused": "tab:orange",
          "torch-foreach": "tab:red", "torch-compile": "tab:green"}


def read_rows(paths):
    rows = []
    for path in paths:
        with open(path, newline="") as f:
            rows += list(csv.DictReader(f))
    return rows


def label(r):
    return r["impl"] + (f" ({r['threads']} thr)" if r["impl"].endswith("-host") else "")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("csv", nargs="+")
    p.add_argument("--out", required=True, help="PNG to write")
    p.add_argument("--mode", default="step_mix", help="which mode to plot (default step_mix)")
    p.add_argument("--metric", choices=("gbps", "ratio"), default="gbps",
                   help="GB/s, or bandwidth relative to the baseline of the same row")
    a = p.parse_args(argv)

    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    # Tuning-sweep rows ("dasgd-cuda@<tuning>") are for the sweep table, not the plot.
    rows = [r for r in read_rows(a.csv) if r["mode"] == a.mode and "@" not in r["impl"]]
    if not rows:
        sys.exit(f"no rows with mode '{a.mode}' in {', '.join(a.csv)}")
    optimizers = sorted({r["optimizer"] for r in rows}, key=["sgdm", "adamw"].index)
    order = ["fp32", "fp64", "bf16", "fp16", "bf16_nomaster", "fp16_nomaster"]
    precisions = sorted({r["precision"] for r in rows}, key=lambda x: order.index(x) if x in order else 99)
    devices = sorted({r["device"] for r in rows})

    fig, axes = plt.subplots(len(optimizers), len(precisions), squeeze=False,
                             figsize=(max(8.0, 4.2 * len(precisions)), 3.4 * len(optimizers)), sharex=True)
    value = (lambda r: float(r["gbps"])) if a.metric == "gbps" else (lambda r: float(r["ratio_to_baseline"]))
    for i, opt in enumerate(optimizers):
        for j, prec in enumerate(precisions):
            ax = axes[i][j]
            panel = [r for r in rows if r["optimizer"] == opt and r["precision"] == prec]
            series = defaultdict(list)
            for r in panel:
                series[label(r)].append(r)
            for name, rs in sorted(series.items()):
                color = COLORS.get(rs[0]["impl"], None)
                multi_thread = name.endswith("thr)") and not name.endswith("(1 thr)")
                if multi_thread:
                    color = "tab:purple"  # host mode, one worker per core
                flat = sorted((int(r["elements"]), value(r)) for r in rs if r["layout"].startswith("flat_"))
                if flat:
                    ax.plot([x for x, _ in flat], [y for _, y in flat], "-", marker="o", color=color,
                            label=name, ms=4)
                for r in rs:
                    m = MODEL_MARKERS.get(r["layout"])
                    if m:
                        ax.plot(int(r["elements"]), value(r), m, color=color, ms=7, mfc="none",
                                label=None if flat else name)
                # The baseline measured with dasgd's rows (same bytes, same run).
                if a.metric == "gbps" and rs[0]["impl"].startswith("dasgd"):
                    base = sorted((int(r["elements"]), float(r["baseline_gbps"]))
                                  for r in rs if r["layout"].startswith("flat_"))
                    for r in rs:
                        if r["layout"] in MODEL_MARKERS:
                            ax.plot(int(r["elements"]), float(r["baseline_gbps"]), "x",
                                    color="gray" if multi_thread else "black")
                    if base:
                        ax.plot([x for x, _ in base], [y for _, y in base], "--", marker="x",
                                color="gray" if multi_thread else "black", lw=1, label=f"{rs[0]['baseline']}" + (
                                    f" ({rs[0]['threads']} thr)" if name.endswith("thr)") else ""))
            if a.metric == "ratio":
                ax.axhline(1.0, color="black", lw=1, ls="--")
            ax.set_xscale("log", base=2)
            ax.set_ylim(bottom=0)
            ax.grid(True, which="both", alpha=0.3)
            ax.set_title(f"{opt}, {prec}", fontsize=10)
            if i == len(optimizers) - 1:
                ax.set_xlabel("parameters (elements)")
            if j == 0:
                ax.set_ylabel("GB/s (dasgd byte count)" if a.metric == "gbps" else "bandwidth / baseline")
    handles, labels = {}, []
    for ax in axes.flat:
        for h, l in zip(*ax.get_legend_handles_labels()):
            if l not in handles:
                handles[l] = h
                labels.append(l)
    for layout, m in MODEL_MARKERS.items():
        if any(r["layout"] == layout for r in rows):
            h, = axes[0][0].plot([], [], m, color="gray", mfc="none", ms=7)
            handles[layout] = h
            labels.append(layout)
    fig.legend([handles[l] for l in labels], labels, loc="lower center", ncol=min(4, len(labels)),
               fontsize=8, frameon=False)
    fig.suptitle(f"fused update, mode {a.mode}\n" + "; ".join(devices), fontsize=10)
    fig.tight_layout(rect=(0, 0.04 + 0.025 * ((len(labels) + 3) // 4), 1, 0.96))
    fig.savefig(a.out, dpi=110)
    print(f"wrote {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
