"""Summarizes the SMPI sweep (scripts/run-smpi-sweep.sh) for docs/scaling.md.

    /usr/bin/python3 bench/smpi/summarize.py --sweep bench/results/smpi/sweep.csv \
        --real bench/results/smpi/real_runs.csv --out bench/results/smpi --img bench/results/smpi

--real holds the same program's rows from real ranks on the emulated links
(bench/smpi/run_real_validation.sh), in the sweep's CSV format.

Writes:
  validation.csv  SMPI step time of the val_* runs next to the real runs of
                  the same configuration (median over repetitions) and the
                  analytic model (bench/scaling/model.py, shared link, fitted
                  B and alpha, the same compute time, no update overhead);
  summary.md      the tables docs/scaling.md quotes;
  <img>/smpi_scaling.png  efficiency against ranks per platform, model and algorithm.
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
RATES = [("1g", "1 Gbit/s"), ("10g", "10 Gbit/s"), ("100g", "100 Gbit/s")]
MODELS = [("mlp", "MLP 0.94 MB"), ("resnet", "ResNet-50 102 MB")]


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
                if x["label"] == r["label"] and x["algorithm"] == r["algorithm"]
                and abs(float(x["compute_ms"]) - c) < 1e-6]
        if not meas:
            continue
        bw, alpha = FITTED[rate]
        link = model.Link(bw, alpha, "shared")
        _, model_s, _, _ = model.predict(n, model.algorithm(r["algorithm"], int(r["tau"]) or 4), c * 1e-3,
                                         int(r["payload_bytes"]), link)
        m = statistics.median(meas)
        smpi = float(r["step_ms"])
        # The real compute-only step includes the host's update pass and the
        # sleep's overshoot, which cost no simulated time: efficiencies
        # compare what is left.
        base = [float(x["step_ms"]) for x in real if x["label"] == r["label"] and x["algorithm"] == "compute"]
        real_eff = statistics.median(base) / m if base else math.nan
        delays = sorted({x["delay"] for x in real if x["label"] == r["label"] and x["algorithm"] == r["algorithm"]})
        out.append({"link": rate, "ranks": n, "compute_ms": c, "algorithm": r["algorithm"],
                    "real_ms": round(m, 3), "real_reps": len(meas), "smpi_ms": round(smpi, 3),
                    "smpi_error": round((smpi - m) / m, 4), "model_ms": round(model_s * 1e3, 3),
                    "model_error": round((model_s * 1e3 - m) / m, 4), "smpi_delay": r["delay"],
                    "real_efficiency": round(real_eff, 4), "smpi_efficiency": round(float(r["efficiency"]), 4),
                    "real_delays": "/".join(delays)})
    return out


def fmt(x, digits=2):
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}f}"


def collect(sweep):
    """(label, allreduce) -> {ranks, allreduce_ms, host_s, alg: (efficiency, hidden, delay, step_ms)}.
    A later row of the same run and algorithm replaces an earlier one."""
    runs = {}
    for r in sweep:
        if r["label"].startswith("val_"):
            continue
        key = (r["label"], r["allreduce"])
        v = runs.setdefault(key, {"ranks": int(r["ranks"]), "allreduce_ms": float(r["allreduce_ms"]), "host": {}})
        v["allreduce_ms"] = float(r["allreduce_ms"])
        v[r["algorithm"]] = (float(r["efficiency"]), float(r["hidden"]), r["delay"], float(r["step_ms"]))
        v["host"][r["algorithm"]] = float(r["host_s"])
    for v in runs.values():
        v["host_s"] = sum(v["host"].values())
    return runs


def cell(v, x):
    if x not in v:
        return "-"
    eff, hid, delay, _ = v[x]
    extra = f" d={delay}" if x == "adaptive" else ""
    return f"{fmt(eff)} ({fmt(hid)}){extra}"


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
               "| link | ranks | compute ms | algorithm | real ms | SMPI ms | SMPI error | model ms | model error "
               "| real efficiency | SMPI efficiency |",
               "|---|---|---|---|---|---|---|---|---|---|---|"]
        for v in val:
            alg = v["algorithm"]
            if alg == "adaptive":
                alg += f" (d: SMPI {v['smpi_delay']}, real {v['real_delays']})"
            md.append(f"| {v['link']} | {v['ranks']} | {v['compute_ms']:.0f} | {alg} | {v['real_ms']:.1f} | "
                      f"{v['smpi_ms']:.1f} | {100 * v['smpi_error']:+.1f} % | {v['model_ms']:.1f} | "
                      f"{100 * v['model_error']:+.1f} % | {fmt(v['real_efficiency'])} | "
                      f"{fmt(v['smpi_efficiency'])} |")
        errs = [abs(v["smpi_error"]) for v in val]
        merrs = [abs(v["model_error"]) for v in val]
        effs = [abs(v["smpi_efficiency"] - v["real_efficiency"]) for v in val]
        md += ["", f"SMPI: median |error| {100 * statistics.median(errs):.1f} %, max {100 * max(errs):.1f} % "
               f"over {len(errs)} configurations; model: median {100 * statistics.median(merrs):.1f} %, "
               f"max {100 * max(merrs):.1f} %. Efficiency, SMPI against real: median |difference| "
               f"{statistics.median(effs):.3f}, max {max(effs):.3f}.", ""]

    runs = collect(sweep)
    flat = {k: v for k, v in runs.items() if "hier" not in k[0] and "_scale" not in k[0]}
    md += ["## Sweep: efficiency (hidden fraction) per algorithm", "",
           "| run | allreduce | ranks | blocking average ms | " + " | ".join(ALGS) + " | host s |",
           "|---|---|---|---|" + "---|" * len(ALGS) + "---|"]
    for (label, alg), v in sorted(flat.items(), key=lambda kv: (kv[0][0].rsplit("_", 1)[0], kv[1]["ranks"], kv[0][1])):
        md.append(f"| {label} | {alg} | {v['ranks']} | {v['allreduce_ms']:.2f} | " +
                  " | ".join(cell(v, x) for x in ALGS) + f" | {v['host_s']:.0f} |")
    md.append("")

    # --wire-scale against the library holding the whole model.
    checks = sorted({(k[0].split("_")[2], int(k[0].split("_")[3])) for k in runs if k[0].startswith("resnet_scale")})
    if checks:
        md += ["## Wire scale check: ResNet-50 buffer, library holding all of it (x1) or a hundredth (x100)", "",
               "| platform | ranks | algorithm | step ms x1 | step ms x100 | difference | host s x1 | host s x100 |",
               "|---|---|---|---|---|---|---|---|"]
        for rate, n in checks:
            one = runs.get((f"resnet_scale1_{rate}_{n}", "rabenseifner"))
            hundred = runs.get((f"resnet_scale100_{rate}_{n}", "rabenseifner"))
            if not one or not hundred:
                continue
            for x in ["compute"] + ALGS:
                if x in one and x in hundred:
                    s1, s100 = one[x][3], hundred[x][3]
                    md.append(f"| {rate} | {n} | {x} | {s1:.3f} | {s100:.3f} | {100 * (s100 - s1) / s1:+.3f} % | "
                              f"{one['host'][x]:.1f} | {hundred['host'][x]:.1f} |")
        md.append("")

    # Two datacenters: flat algorithms against the hierarchy.
    twodc = sorted({v["ranks"] for k, v in runs.items() if k[0].startswith("mlp_twodc")})
    if twodc:
        md += ["## Two datacenters (30 ms WAN): flat averaging against hierarchical", "",
               "Efficiency; flat runs with Rabenseifner, 16 timed steps; hierarchical runs 128 timed steps "
               "(tau 4, group delay 1, across the WAN every 4th or 16th round with delay 3).", "",
               "| ranks | sync | local | dasgd-d3 | adaptive | hier, WAN every 4th round | hier, every 16th |",
               "|---|---|---|---|---|---|---|"]
        for n in twodc:
            f = runs.get((f"mlp_twodc_{n}", "rabenseifner"), {})
            h4 = runs.get((f"mlp_twodc_hier4_{n}", "rabenseifner"), {})
            h16 = runs.get((f"mlp_twodc_hier16_{n}", "rabenseifner"), {})
            cells = [fmt(f[x][0]) if x in f else "-" for x in ("sync", "local", "dasgd-d3", "adaptive")]
            cells += [fmt(h["hier"][0]) if "hier" in h else "-" for h in (h4, h16)]
            md.append(f"| {n} | " + " | ".join(cells) + " |")
        md.append("")

    goal = flat.get(("mlp_10g_1024", "rabenseifner"))
    if goal and "adaptive" in goal:
        md += [f"Goal (MLP, 1024 ranks, 10 Gbit/s): adaptive DaSGD {fmt(goal['adaptive'][0])} "
               f"(d = {goal['adaptive'][2]}), sync {fmt(goal.get('sync', (math.nan,))[0])}, "
               f"Local SGD {fmt(goal.get('local', (math.nan,))[0])}.", ""]
    with open(os.path.join(a.out, "summary.md"), "w") as f:
        f.write("\n".join(md) + "\n")

    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib missing: no chart", file=sys.stderr)
        return
    fig, axes = plt.subplots(len(MODELS), len(RATES), figsize=(4.2 * len(RATES), 3.4 * len(MODELS)),
                             sharey=True, squeeze=False)
    for row, (mname, mtitle) in enumerate(MODELS):
        for col, (rate, rtitle) in enumerate(RATES):
            ax = axes[row][col]
            prefix = f"{mname}_{rate}"
            for x in ALGS:
                pts = sorted((v["ranks"], v[x][0]) for (label, alg), v in flat.items()
                             if label.rsplit("_", 1)[0] == prefix and alg == "rabenseifner" and x in v)
                if pts:  # one colour per algorithm in every panel
                    ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=x,
                            color=f"C{ALGS.index(x)}")
            ax.set_xscale("log", base=2)
            ax.set_title(f"{mtitle}, {rtitle}", fontsize=9)
            ax.set_xlabel("simulated ranks")
            ax.axhline(0.9, color="grey", lw=0.5, ls="--")
            ax.set_ylim(0, 1.05)
        axes[row][0].set_ylabel("efficiency (compute-only step / step)")
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    os.makedirs(a.img, exist_ok=True)
    fig.savefig(os.path.join(a.img, "smpi_scaling.png"), dpi=110)


if __name__ == "__main__":
    main()
