"""Summarizes the SMPI sweep (scripts/run-smpi-sweep.sh) for docs/scaling.md.

    /usr/bin/python3 bench/smpi/summarize.py --sweep bench/results/smpi/sweep.csv \
        --real bench/results/overlap_runs.csv --out bench/results/smpi --img bench/results/smpi

Writes:
  validation.csv  SMPI step time of the val_* runs next to the real
                  bench/overlap measurement of the same configuration
                  (median over repetitions) and the analytic model
                  (bench/scaling/model.py, shared link, fitted B and alpha,
                  the same compute time, no update overhead);
  summary.md      the tables docs/scaling.md quotes;
  <img>/smpi_scaling.png  efficiency against ranks per platform and algorithm.
"""

import argparse
import csv
import math
import os
import statistics
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "scaling"))
import model  # noqa: E402  (bench/scaling/model.py)

# The links bench/results/scaling_fit.csv fitted (also in platforms/netns_*.xml).
FITTED = {"1gbit": (0.958e9 / 8, 183e-6), "10gbit": (8.62e9 / 8, 497e-6)}
ALGS = ["sync", "local", "dasgd-d1", "dasgd-d2", "dasgd-d3", "adaptive"]


def read(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def validation(sweep, real):
    out = []
    for r in sweep:
        if not r["label"].startswith("val_") or r["algorithm"] == "compute":
            continue
        rate = r["label"].split("_")[1]
        n, c = int(r["ranks"]), float(r["compute_ms"])
        meas = [float(x["step_ms"]) for x in real
                if x["label"] == rate and int(x["ranks"]) == n and x["algorithm"] == r["algorithm"]
                and abs(float(x["compute_ms"]) - c) < 1.0]
        if not meas:
            continue
        bw, alpha = FITTED[rate]
        link = model.Link(bw, alpha, "shared")
        _, model_s, _, _ = model.predict(n, model.algorithm(r["algorithm"], int(r["tau"]) or 4), c * 1e-3,
                                         int(r["payload_bytes"]), link)
        m = statistics.median(meas)
        smpi = float(r["step_ms"])
        out.append({"link": rate, "ranks": n, "compute_ms": c, "algorithm": r["algorithm"],
                    "real_ms": round(m, 3), "real_reps": len(meas), "smpi_ms": round(smpi, 3),
                    "smpi_error": round((smpi - m) / m, 4), "model_ms": round(model_s * 1e3, 3),
                    "model_error": round((model_s * 1e3 - m) / m, 4), "smpi_delay": r["delay"]})
    return out


def fmt(x, digits=2):
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}f}"


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sweep", required=True)
    ap.add_argument("--real", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--img", required=True)
    a = ap.parse_args()
    sweep, real = read(a.sweep), read(a.real)
    md = []

    val = validation(sweep, real)
    if val:
        with open(os.path.join(a.out, "validation.csv"), "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(val[0]))
            w.writeheader()
            w.writerows(val)
        md += ["## Validation: SMPI vs real ranks on the emulated link", "",
               "| link | ranks | compute ms | algorithm | real ms | SMPI ms | SMPI error | model ms | model error |",
               "|---|---|---|---|---|---|---|---|---|"]
        for v in val:
            md.append(f"| {v['link']} | {v['ranks']} | {v['compute_ms']:.0f} | {v['algorithm']} | {v['real_ms']:.1f} | "
                      f"{v['smpi_ms']:.1f} | {100 * v['smpi_error']:+.1f} % | {v['model_ms']:.1f} | "
                      f"{100 * v['model_error']:+.1f} % |")
        errs = [abs(v["smpi_error"]) for v in val]
        merrs = [abs(v["model_error"]) for v in val]
        md += ["", f"SMPI: median |error| {100 * statistics.median(errs):.1f} %, max {100 * max(errs):.1f} % "
               f"over {len(errs)} configurations; model: median {100 * statistics.median(merrs):.1f} %, "
               f"max {100 * max(merrs):.1f} %.", ""]

    # Efficiency tables: one row per (run, allreduce), one column per algorithm.
    runs = {}
    for r in sweep:
        if r["label"].startswith("val_"):
            continue
        key = (r["label"], r["allreduce"])
        runs.setdefault(key, {"ranks": int(r["ranks"]), "allreduce_ms": float(r["allreduce_ms"]),
                              "host_s": 0.0})
        runs[key][r["algorithm"]] = (float(r["efficiency"]), float(r["hidden"]), r["delay"], float(r["step_ms"]))
        runs[key]["host_s"] += float(r["host_s"])
    md += ["## Sweep: efficiency (hidden fraction) per algorithm", "",
           "| run | allreduce | ranks | blocking average ms | " + " | ".join(ALGS) + " | host s |",
           "|---|---|---|---|" + "---|" * len(ALGS) + "---|"]
    for (label, alg), v in sorted(runs.items(), key=lambda kv: (kv[0][0].rsplit("_", 1)[0], kv[1]["ranks"], kv[0][1])):
        cells = []
        for x in ALGS:
            if x not in v:
                cells.append("-")
                continue
            eff, hid, delay, _ = v[x]
            extra = f" d={delay}" if x == "adaptive" else ""
            cells.append(f"{fmt(eff)} ({fmt(hid)}){extra}")
        md.append(f"| {label} | {alg} | {v['ranks']} | {v['allreduce_ms']:.2f} | " + " | ".join(cells) +
                  f" | {v['host_s']:.0f} |")
    with open(os.path.join(a.out, "summary.md"), "w") as f:
        f.write("\n".join(md) + "\n")

    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib missing: no chart", file=sys.stderr)
        return
    groups = [("mlp_1g", "MLP 0.94 MB, 1 Gbit/s"), ("mlp_10g", "MLP 0.94 MB, 10 Gbit/s"),
              ("mlp_100g", "MLP 0.94 MB, 100 Gbit/s"), ("resnet_10g", "ResNet-50 102 MB, 10 Gbit/s")]
    fig, axes = plt.subplots(1, len(groups), figsize=(4.2 * len(groups), 3.6), sharey=True)
    for ax, (prefix, title) in zip(axes, groups):
        for x in ALGS:
            pts = sorted((v["ranks"], v[x][0]) for (label, alg), v in runs.items()
                         if label.rsplit("_", 1)[0] == prefix and alg == "rabenseifner" and x in v)
            if pts:  # one colour per algorithm in every panel
                ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=x, color=f"C{ALGS.index(x)}")
        ax.set_xscale("log", base=2)
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("simulated ranks")
        ax.axhline(0.9, color="grey", lw=0.5, ls="--")
        ax.set_ylim(0, 1.05)
    axes[0].set_ylabel("efficiency (compute-only step / step)")
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    os.makedirs(a.img, exist_ok=True)
    fig.savefig(os.path.join(a.img, "smpi_scaling.png"), dpi=110)


if __name__ == "__main__":
    main()
