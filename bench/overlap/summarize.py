#!/usr/bin/python3
"""Summary and charts of the overlap benchmark (docs/overlap.md).

Reads the raw rows written by dasgd_bench_overlap (one per repetition,
compute time and algorithm) and derives, per repetition, against the
compute-only row of the same repetition and compute time:

  exposed communication per step = step time - compute-only step time
  communication time per step    = blocking allreduce time (same repetition)
                                   x averages per step (1 sync, 1/tau others)
  hidden fraction                = 1 - exposed / communication, clamped to [0, 1]

then the median and the min..max over repetitions. Writes
overlap_summary.csv, overlap_summary.md (tables for the docs) and the charts
overlap_step_time.png and overlap_hidden_fraction.png.

usage: /usr/bin/python3 bench/overlap/summarize.py --runs overlap_runs.csv --out DIR --img DIR
"""
import argparse
import csv
import math
import os
import statistics
import sys
from collections import defaultdict

GOAL = 0.05  # DaSGD step time within 5 % of compute-only when the window covers the allreduce
ORDER = ["compute", "sync", "local", "dasgd-d1", "dasgd-d2", "dasgd-d3", "adaptive"]


def hidden_fraction(exposed_ms, comm_ms):
    """1 - exposed / comm, clamped to [0, 1]; None without communication."""
    if comm_ms <= 0:
        return None
    return min(1.0, max(0.0, 1.0 - exposed_ms / comm_ms))


def fixed_delay(algorithm):
    """The delay of a dasgd-dN name, else None."""
    if algorithm.startswith("dasgd-d"):
        return int(algorithm[len("dasgd-d"):])
    return None


def read_rows(path):
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows:
        raise SystemExit(f"summarize.py: {path} has no rows")
    num = {"ranks", "params", "payload_bytes", "rep", "tau", "delay", "delay_min", "delay_max", "late_steps"}
    for r in rows:
        for k, v in list(r.items()):
            if k in ("label", "algorithm"):
                continue
            r[k] = int(v) if k in num else float(v)
    return rows


def config_key(r):
    # compute_ms is the same in every repetition of one run
    return (r["label"], r["ranks"], round(r["compute_ms"], 3))


def per_rep_metrics(rows):
    """Adds ratio/exposed/comm/hidden to each row, paired with its compute-only row."""
    base = {}
    for r in rows:
        if r["algorithm"] == "compute":
            base[config_key(r) + (r["rep"],)] = r
    out = []
    for r in rows:
        b = base.get(config_key(r) + (r["rep"],))
        if b is None:
            raise SystemExit(f"summarize.py: no compute-only row for {config_key(r)} rep {r['rep']}")
        m = dict(r)
        m["compute_step_ms"] = b["step_ms"]
        m["ratio"] = r["step_ms"] / b["step_ms"]
        m["exposed_ms"] = r["step_ms"] - b["step_ms"]
        m["comm_ms"] = r["allreduce_ms"] * r["averages_per_step"]
        m["hidden"] = hidden_fraction(m["exposed_ms"], m["comm_ms"])
        out.append(m)
    return out


def spread(values):
    values = [v for v in values if v is not None]
    if not values:
        return None, None, None
    return statistics.median(values), min(values), max(values)


def summarise(rows):
    """One dict per (label, ranks, compute time, algorithm), medians over repetitions."""
    metrics = per_rep_metrics(rows)
    groups = defaultdict(list)
    for m in metrics:
        groups[config_key(m) + (m["algorithm"],)].append(m)
    table = []
    for (label, ranks, compute_ms, algorithm), ms in groups.items():
        step, step_lo, step_hi = spread([m["step_ms"] for m in ms])
        ratio, ratio_lo, ratio_hi = spread([m["ratio"] for m in ms])
        hidden, hidden_lo, hidden_hi = spread([m["hidden"] for m in ms])
        allreduce = statistics.median(m["allreduce_ms"] for m in ms)
        compute_step = statistics.median(m["compute_step_ms"] for m in ms)
        delay = statistics.median(m["delay"] for m in ms) if algorithm != "compute" else None
        s = {
            "label": label, "ranks": ranks, "compute_ms": compute_ms, "algorithm": algorithm,
            "reps": len(ms), "tau": ms[0]["tau"], "delay": delay,
            "allreduce_ms": allreduce, "compute_step_ms": compute_step,
            "compute_over_allreduce": compute_step / allreduce,
            "step_ms": step, "step_ms_min": step_lo, "step_ms_max": step_hi,
            "ratio": ratio, "ratio_min": ratio_lo, "ratio_max": ratio_hi,
            "exposed_ms": statistics.median(m["exposed_ms"] for m in ms),
            "comm_ms": statistics.median(m["comm_ms"] for m in ms),
            "hidden": hidden, "hidden_min": hidden_lo, "hidden_max": hidden_hi,
            "wait_ms": statistics.median(m["wait_ms"] for m in ms),
            "update_ms": statistics.median(m["update_ms"] for m in ms),
            "cpu_frac_max": max(m["cpu_frac_max"] for m in ms),
            "final_loss": statistics.median(m["final_loss"] for m in ms),
            # steps (all ranks, all repetitions) whose compute phase ended > 2 ms
            # late: the rank was descheduled (a loaded machine), not communication
            "late_steps": sum(m["late_steps"] for m in ms),
            "delays": "/".join(str(m["delay"]) for m in ms) if algorithm == "adaptive" else "",
            "window_covers_allreduce": None, "within_goal": None, "smallest_hiding_delay": None,
        }
        if algorithm.startswith("dasgd-d") or algorithm == "adaptive":
            # The delay window: d steps of compute between launch and merge.
            s["window_covers_allreduce"] = delay * compute_step > allreduce
            s["within_goal"] = ratio <= 1.0 + GOAL
        table.append(s)
    # Per configuration: the smallest fixed delay that met the goal, for the adaptive row.
    by_config = defaultdict(dict)
    for s in table:
        by_config[(s["label"], s["ranks"], s["compute_ms"])][s["algorithm"]] = s
    for algs in by_config.values():
        hiding = sorted(fixed_delay(a) for a, s in algs.items() if fixed_delay(a) is not None and s["within_goal"])
        if "adaptive" in algs:
            algs["adaptive"]["smallest_hiding_delay"] = hiding[0] if hiding else None
    rank = {a: i for i, a in enumerate(ORDER)}
    table.sort(key=lambda s: (s["label"], s["ranks"], s["compute_ms"], rank.get(s["algorithm"], 99), s["algorithm"]))
    return table


def fmt(v, digits=2):
    if v is None:
        return ""
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return str(v)


def write_csv(table, path):
    keys = list(table[0].keys())
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(keys)
        for s in table:
            w.writerow([fmt(s[k], 4) for k in keys])


def pct(v):
    return "" if v is None else f"{100 * v:.0f}"


def markdown(table):
    lines = []
    for (label, ranks) in sorted({(s["label"], s["ranks"]) for s in table}):
        rows = [s for s in table if s["label"] == label and s["ranks"] == ranks]
        lines.append(f"### {label}, {ranks} ranks")
        lines.append("")
        lines.append("| compute/allreduce | algorithm | step ms (min..max) | vs compute-only | hidden % (min..max) "
                     "| window > allreduce | within 5 % | loss | late steps |")
        lines.append("|---|---|---|---|---|---|---|---|---|")
        for s in rows:
            alg = s["algorithm"]
            if alg == "adaptive":
                alg += f" (d={s['delays']}; smallest hiding fixed d: {fmt(s['smallest_hiding_delay']) or 'none'})"
            hidden = "" if s["hidden"] is None else f"{pct(s['hidden'])} ({pct(s['hidden_min'])}..{pct(s['hidden_max'])})"
            lines.append(
                f"| {s['compute_over_allreduce']:.2f} ({s['compute_step_ms']:.1f} / {s['allreduce_ms']:.1f} ms) | {alg} "
                f"| {s['step_ms']:.1f} ({s['step_ms_min']:.1f}..{s['step_ms_max']:.1f}) "
                f"| {100 * (s['ratio'] - 1):+.1f} % | {hidden} | {fmt(s['window_covers_allreduce'])} "
                f"| {fmt(s['within_goal'])} | {s['final_loss']:.5f} | {s['late_steps']} |")
        lines.append("")
    return "\n".join(lines)


def plot(table, img_dir):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sweep = [s for s in table if s["ranks"] == 4]
    labels = sorted({s["label"] for s in sweep}, key=lambda l: (len(l), l))
    if not labels:
        print("summarize.py: no 4-rank rows, no charts", file=sys.stderr)
        return []
    style = {"compute": ("black", "o"), "sync": ("tab:red", "s"), "local": ("tab:orange", "D"),
             "dasgd-d1": ("tab:blue", "^"), "dasgd-d2": ("tab:green", "v"), "dasgd-d3": ("tab:purple", "<"),
             "adaptive": ("tab:cyan", "*")}
    written = []
    for what, ylabel, fname in (("ratio", "step time / compute-only step time", "overlap_step_time.png"),
                                ("hidden", "hidden fraction of communication", "overlap_hidden_fraction.png")):
        fig, axes = plt.subplots(1, len(labels), figsize=(6.2 * len(labels), 4.6), squeeze=False)
        for ax, label in zip(axes[0], labels):
            rows = [s for s in sweep if s["label"] == label]
            for alg in [a for a in ORDER if any(s["algorithm"] == a for s in rows)]:
                pts = sorted((s for s in rows if s["algorithm"] == alg), key=lambda s: s["compute_over_allreduce"])
                if what == "hidden" and alg == "compute":
                    continue
                x = [s["compute_over_allreduce"] for s in pts]
                y = [s[what] for s in pts]
                lo = [s[what] - s[what + "_min"] for s in pts]
                hi = [s[what + "_max"] - s[what] for s in pts]
                color, marker = style.get(alg, ("gray", "x"))
                ax.errorbar(x, y, yerr=[lo, hi], color=color, marker=marker, capsize=3, label=alg,
                            linestyle="--" if alg == "adaptive" else "-")
                if alg == "adaptive":
                    for s in pts:
                        ax.annotate(f"d={s['delays']}", (s["compute_over_allreduce"], s[what]),
                                    textcoords="offset points", xytext=(4, 6), fontsize=7, color=color)
            for d in (1, 2, 3):  # hiding needs d * compute >= allreduce
                ax.axvline(1.0 / d, color="gray", linestyle=":", linewidth=0.8)
                ax.text(1.0 / d, 0.02, f" d={d}", transform=ax.get_xaxis_transform(), fontsize=7, color="gray")
            if what == "ratio":
                ax.axhline(1.0 + GOAL, color="gray", linestyle="--", linewidth=0.8)
                ax.text(ax.get_xlim()[0], 1.0 + GOAL, " +5 %", fontsize=7, color="gray", va="bottom")
            else:
                ax.set_ylim(-0.05, 1.05)
            ax.set_xlabel("compute per step / blocking allreduce time")
            ax.set_ylabel(ylabel)
            tau = max(s["tau"] for s in rows)
            ax.set_title(f"4 MPI ranks, {label} emulated link, tau = {tau}")
            ax.grid(True, alpha=0.3)
            ax.legend(fontsize=7)
        fig.tight_layout()
        path = os.path.join(img_dir, fname)
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)
    return written


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", required=True, help="overlap_runs.csv from dasgd_bench_overlap")
    ap.add_argument("--out", required=True, help="directory for overlap_summary.csv/.md")
    ap.add_argument("--img", required=True, help="directory for the PNG charts")
    a = ap.parse_args()
    table = summarise(read_rows(a.runs))
    os.makedirs(a.out, exist_ok=True)
    os.makedirs(a.img, exist_ok=True)
    write_csv(table, os.path.join(a.out, "overlap_summary.csv"))
    md = markdown(table)
    with open(os.path.join(a.out, "overlap_summary.md"), "w") as f:
        f.write(md + "\n")
    print(md)
    for p in plot(table, a.img):
        print(f"wrote {p}")


if __name__ == "__main__":
    main()
