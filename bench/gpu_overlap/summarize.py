#!/usr/bin/env python3
"""Summarises bench/gpu_overlap/run.sh: how much of the average the delay hides.

Input: the CSV run.sh writes (link_gbps, config, tau, delay, step_ms,
accuracy), every configuration measured in the same session. For each link:

  compute   no average inside the run (tau larger than the run): the step
            time of the model alone
  local     Local SGD, tau steps then a blocking average (delay 0)
  d1, d2    DaSGD, the same average merged 1 or 2 steps later
  sync      synchronous SGD (an average every step, blocking)

The exposed communication of a run is its step time minus compute's. The
hidden fraction of delay d is 1 - exposed(d) / exposed(local), clamped to
[0, 1]: the share of Local SGD's waiting that the delay removes.

    summarize.py results.csv [-o summary.md]
"""
import argparse
import csv
import sys
from collections import defaultdict


def hidden_fraction(compute_ms, local_ms, delayed_ms):
    """1 - (delayed - compute) / (local - compute), in [0, 1]; None if local hides nothing to hide."""
    exposed_local = local_ms - compute_ms
    if exposed_local <= 0:
        return None
    return min(1.0, max(0.0, 1.0 - (delayed_ms - compute_ms) / exposed_local))


def read(path):
    runs = defaultdict(dict)
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            runs[float(row["link_gbps"])][row["config"]] = row
    return runs


def summarize(runs):
    lines = ["| link | compute step | sync | Local SGD (d = 0) | d = 1 | d = 1 hidden | d = 2 | d = 2 hidden |",
             "|---|---|---|---|---|---|---|---|"]
    for link in sorted(runs):
        r = runs[link]
        if "compute" not in r:
            continue
        c = float(r["compute"]["step_ms"])

        def cell(name):
            if name not in r:
                return "-"
            ms = float(r[name]["step_ms"])
            return f"{ms:.3f} ms ({100 * (ms / c - 1):+.1f} %)"

        def hidden(name):
            if name not in r or "local" not in r:
                return "-"
            h = hidden_fraction(c, float(r["local"]["step_ms"]), float(r[name]["step_ms"]))
            return "-" if h is None else f"{100 * h:.0f} %"

        lines.append(f"| {link:g} Gbit/s | {c:.3f} ms | {cell('sync')} | {cell('local')} | {cell('d1')} | "
                     f"{hidden('d1')} | {cell('d2')} | {hidden('d2')} |")
    return "\n".join(lines) + "\n"


def main(argv):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("csv")
    ap.add_argument("-o", "--output")
    a = ap.parse_args(argv)
    text = summarize(read(a.csv))
    if a.output:
        with open(a.output, "w") as f:
            f.write(text)
    sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
