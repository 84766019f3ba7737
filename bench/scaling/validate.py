#!/usr/bin/python3
"""Fits, validates and extrapolates the scaling model (docs/scaling.md).

1. Link fit, per emulated rate: bandwidth and alpha of the shared-link ring
   model from blocking allreduce timings at 2, 4 and 8 ranks and several
   payloads (scaling_allreduce.csv). Also leave-one-rank-count-out: fit on
   two rank counts, predict the third.
2. Update overhead: the extra time per step spent in step() (fused passes
   with snapshot/merge, launch) over the compute-only run, per algorithm,
   from the 4-rank runs; the only other input taken from measurements.
3. Validation: for every measured configuration (rate, ranks, compute time,
   algorithm; medians over repetitions) the model's step time from the
   measured compute-only step time and the fitted link, against the
   measured step time; the error is (predicted - measured) / measured.
   A second column uses the run's own measured blocking allreduce instead
   of the fitted link, separating the overlap model from the link model.
4. Prediction: dedicated links (one per worker, the cluster case) with the
   fitted bandwidth and alpha, 1 to 1024 workers.

Writes scaling_fit.csv, scaling_validation.csv, scaling_prediction.csv,
scaling_summary.md and docs/img/scaling_efficiency.png.

usage: /usr/bin/python3 bench/scaling/validate.py --runs overlap_runs.csv \
           --allreduce scaling_allreduce.csv --out DIR --img DIR
"""
import argparse
import csv
import os
import statistics
import sys
from collections import defaultdict

sys.dont_write_bytecode = True  # keep the source tree clean
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import model  # noqa: E402

ALGS = ["sync", "local", "dasgd-d1", "dasgd-d2", "dasgd-d3", "adaptive"]


def read_csv(path):
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows:
        raise SystemExit(f"validate.py: {path} has no rows")
    return rows


def allreduce_medians(rows):
    """{label: [(ranks, payload bytes, median seconds, samples)]}"""
    groups = defaultdict(list)
    for r in rows:
        groups[(r["label"], int(r["ranks"]), int(r["payload_bytes"]))].append(float(r["allreduce_ms"]) * 1e-3)
    out = defaultdict(list)
    for (label, n, s), ts in sorted(groups.items()):
        out[label].append((n, s, statistics.median(ts), len(ts)))
    return out


def step_configs(rows):
    """Medians over repetitions: {(label, ranks, compute_ms): {algorithm: dict}}."""
    groups = defaultdict(list)
    for r in rows:
        groups[(r["label"], int(r["ranks"]), round(float(r["compute_ms"]), 3), r["algorithm"])].append(r)
    configs = defaultdict(dict)
    for (label, n, c, alg), rs in groups.items():
        configs[(label, n, c)][alg] = {
            "step_s": statistics.median(float(r["step_ms"]) for r in rs) * 1e-3,
            "update_s": statistics.median(float(r["update_ms"]) for r in rs) * 1e-3,
            "allreduce_s": statistics.median(float(r["allreduce_ms"]) for r in rs) * 1e-3,
            "payload": int(rs[0]["payload_bytes"]),
            "tau": int(rs[0]["tau"]),
            "cpu": max(float(r["cpu_frac_max"]) for r in rs),
            "reps": len(rs),
            "delays": "/".join(r["delay"] for r in rs),
        }
    return configs


def update_overheads(rows):
    """Per algorithm: the extra time per step spent in step() (fused passes with
    snapshot/merge, launch; waiting excluded) over the compute-only run of the
    same 4-rank configuration and repetition. The median over all such pairs
    (every rate: it is a CPU cost), clamped at 0, keeps a repetition disturbed
    by other load from skewing it."""
    base = {}
    for r in rows:
        if int(r["ranks"]) == 4 and r["algorithm"] == "compute":
            base[(r["label"], r["compute_ms"], r["rep"])] = float(r["update_ms"]) * 1e-3
    extra = defaultdict(list)
    for r in rows:
        key = (r["label"], r["compute_ms"], r["rep"])
        if int(r["ranks"]) == 4 and r["algorithm"] != "compute" and key in base:
            extra[r["algorithm"]].append(float(r["update_ms"]) * 1e-3 - base[key])
    return {alg: max(0.0, statistics.median(v)) for alg, v in extra.items()}


def rel_err(pred, meas):
    return (pred - meas) / meas


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", required=True)
    ap.add_argument("--allreduce", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--img", required=True)
    ap.add_argument("--max-workers", type=int, default=1024)
    a = ap.parse_args()
    os.makedirs(a.out, exist_ok=True)
    os.makedirs(a.img, exist_ok=True)

    # 1. link fit
    ar = allreduce_medians(read_csv(a.allreduce))
    links, fit_rows, md = {}, [], []
    md.append("### Link fit (shared-link ring model, blocking allreduce medians)\n")
    md.append("| link | bandwidth fitted | alpha fitted | ranks | payload | measured ms | model ms | error | "
              "leave-this-rank-count-out model ms | error |")
    md.append("|---|---|---|---|---|---|---|---|---|---|")
    for label, samples in sorted(ar.items()):
        link = model.fit_link([(n, s, t) for n, s, t, _ in samples], "shared")
        links[label] = link
        ranks = sorted({n for n, *_ in samples})
        loo = {}
        for held in ranks:
            rest = [(n, s, t) for n, s, t, _ in samples if n != held]
            if len({n for n, *_ in rest}) >= 2:
                loo[held] = model.fit_link(rest, "shared")
        for n, s, t, k in samples:
            pred = model.allreduce_seconds(n, s, link)
            loo_pred = model.allreduce_seconds(n, s, loo[n]) if n in loo else None
            fit_rows.append({
                "label": label, "ranks": n, "payload_bytes": s, "samples": k,
                "bandwidth_gbit": link.bandwidth * 8e-9, "alpha_us": link.alpha * 1e6,
                "measured_ms": t * 1e3, "model_ms": pred * 1e3, "error": rel_err(pred, t),
                "loo_model_ms": None if loo_pred is None else loo_pred * 1e3,
                "loo_error": None if loo_pred is None else rel_err(loo_pred, t),
            })
            md.append(f"| {label} | {link.bandwidth * 8e-9:.3f} Gbit/s | {link.alpha * 1e6:.0f} us | {n} "
                      f"| {s / 2**10:.0f} KiB | {t * 1e3:.1f} | {pred * 1e3:.1f} | {100 * rel_err(pred, t):+.1f} % | "
                      + (f"{loo_pred * 1e3:.1f} | {100 * rel_err(loo_pred, t):+.1f} % |" if loo_pred else " | |"))
    write(os.path.join(a.out, "scaling_fit.csv"), fit_rows)

    # 2. and 3. validation of step times
    run_rows = read_csv(a.runs)
    configs = step_configs(run_rows)
    overhead = update_overheads(run_rows)
    val_rows = []
    for (label, n, c), algs in sorted(configs.items()):
        if "compute" not in algs or label not in links:
            continue
        compute_s = algs["compute"]["step_s"]
        for alg_name, m in algs.items():
            if alg_name == "compute":
                continue
            alg = model.algorithm(alg_name, m["tau"] if alg_name != "sync" else 4)
            u = overhead.get(alg_name, 0.0)
            t_fit = model.allreduce_seconds(n, m["payload"], links[label])
            pred_fit = model.step_seconds(alg, compute_s, t_fit, u)
            pred_meas = model.step_seconds(alg, compute_s, m["allreduce_s"], u)
            val_rows.append({
                "label": label, "ranks": n, "compute_ms": c, "algorithm": alg_name, "reps": m["reps"],
                "compute_step_ms": compute_s * 1e3, "allreduce_measured_ms": m["allreduce_s"] * 1e3,
                "allreduce_model_ms": t_fit * 1e3, "update_overhead_ms": u * 1e3,
                "measured_step_ms": m["step_s"] * 1e3, "model_step_ms": pred_fit * 1e3,
                "error": rel_err(pred_fit, m["step_s"]),
                "model_step_measured_allreduce_ms": pred_meas * 1e3,
                "error_measured_allreduce": rel_err(pred_meas, m["step_s"]),
                "model_delay": (model.adaptive_delay(compute_s, t_fit, alg.tau) if alg.delay is None else alg.delay),
                "measured_delays": m["delays"] if alg_name == "adaptive" else "",
                "cpu_frac_max": m["cpu"],
            })
    if not val_rows:
        raise SystemExit("validate.py: no step configurations to validate (need compute-only rows)")
    write(os.path.join(a.out, "scaling_validation.csv"), val_rows)

    md.append("\n### Step-time prediction error per configuration (model - measured) / measured\n")
    md.append("| link | ranks | compute ms | algorithm | measured ms | model ms | error | error with measured allreduce |")
    md.append("|---|---|---|---|---|---|---|---|")
    for v in val_rows:
        md.append(f"| {v['label']} | {v['ranks']} | {v['compute_step_ms']:.1f} | {v['algorithm']} "
                  f"| {v['measured_step_ms']:.1f} | {v['model_step_ms']:.1f} | {100 * v['error']:+.1f} % "
                  f"| {100 * v['error_measured_allreduce']:+.1f} % |")
    md.append("\n### Error summary (|error| of the step time, fitted link)\n")
    md.append("| link | ranks | configurations | median abs error | max abs error | max per-rank CPU |")
    md.append("|---|---|---|---|---|---|")
    by = defaultdict(list)
    for v in val_rows:
        by[(v["label"], v["ranks"])].append(v)
    for (label, n), vs in sorted(by.items()):
        errs = [abs(v["error"]) for v in vs]
        md.append(f"| {label} | {n} | {len(vs)} | {100 * statistics.median(errs):.1f} % | {100 * max(errs):.1f} % "
                  f"| {100 * max(v['cpu_frac_max'] for v in vs):.0f} % |")

    md.append("\nUpdate overhead u (extra time in step() over a plain local step, median of the 4-rank "
              "runs): " + ", ".join(f"{alg} {1e3 * u:.2f} ms" for alg, u in sorted(overhead.items())) + ".")

    # 4. prediction on dedicated links
    pred_rows = []
    scaling_compute = {}
    for (label, n, c), algs in configs.items():
        if n == 8 and "compute" in algs:  # the fixed-compute scaling runs
            scaling_compute.setdefault(label, algs["compute"]["step_s"])
    for label, link in sorted(links.items()):
        compute_s = scaling_compute.get(label)
        if compute_s is None:
            continue
        payload = next(m["payload"] for (l, *_), algs in configs.items() if l == label for m in algs.values())
        cluster = model.Link(link.bandwidth, link.alpha, "dedicated")
        n = 1
        while n <= a.max_workers:
            for alg_name in ALGS:
                alg = model.algorithm(alg_name, 4)
                u = overhead.get(alg_name, 0.0)
                t, step, thr, eff = model.predict(n, alg, compute_s, payload, cluster, u)
                pred_rows.append({"label": label, "topology": "dedicated", "workers": n, "algorithm": alg_name,
                                  "compute_ms": compute_s * 1e3, "payload_bytes": payload,
                                  "bandwidth_gbit": link.bandwidth * 8e-9, "alpha_us": link.alpha * 1e6,
                                  "allreduce_ms": t * 1e3, "step_ms": step * 1e3,
                                  "throughput_steps_per_s": thr, "efficiency": eff})
            n *= 2
    write(os.path.join(a.out, "scaling_prediction.csv"), pred_rows)
    md.append("\n### Predicted efficiency on dedicated links (fitted bandwidth and alpha)\n")
    md.append("| link | compute ms | workers | allreduce ms | " + " | ".join(ALGS) + " |")
    md.append("|---|---|---|---|" + "---|" * len(ALGS))
    for label in sorted({p["label"] for p in pred_rows}):
        for n in (2, 8, 64, 256, 1024):
            ps = {p["algorithm"]: p for p in pred_rows if p["label"] == label and p["workers"] == n}
            if not ps:
                continue
            any_p = next(iter(ps.values()))
            md.append(f"| {label} | {any_p['compute_ms']:.1f} | {n} | {any_p['allreduce_ms']:.1f} | "
                      + " | ".join(f"{ps[x]['efficiency']:.2f}" for x in ALGS) + " |")

    with open(os.path.join(a.out, "scaling_summary.md"), "w") as f:
        f.write("\n".join(md) + "\n")
    print("\n".join(md))
    path = plot(configs, links, overhead, pred_rows, a.img)
    print(f"wrote {path}")


def write(path, rows):
    if not rows:
        return
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0].keys()))
        w.writeheader()
        for r in rows:
            w.writerow({k: (f"{v:.6g}" if isinstance(v, float) else ("" if v is None else v)) for k, v in r.items()})


def plot(configs, links, overhead, pred_rows, img_dir):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colors = {"sync": "tab:red", "local": "tab:orange", "dasgd-d1": "tab:blue", "dasgd-d2": "tab:green",
              "dasgd-d3": "tab:purple", "adaptive": "tab:cyan"}
    # Rows: the rates that have fixed-compute runs at several rank counts.
    labels = sorted({l for (l, n, _) in configs if n != 4 and l in links}, key=lambda l: (len(l), l))
    if not labels:
        labels = sorted(links, key=lambda l: (len(l), l))
    fig, axes = plt.subplots(len(labels), 2, figsize=(12, 4.3 * len(labels)), squeeze=False)
    for row, label in zip(axes, labels):
        # (a) the emulated shared link: model curves and measured points at the
        # fixed compute time of the 2/4/8-rank runs.
        ax = row[0]
        fixed = {}
        for (l, n, c), algs in configs.items():
            if l == label and n in (2, 8):
                fixed.setdefault(c, algs)
        for c in sorted(fixed)[:1]:
            compute_s = fixed[c]["compute"]["step_s"]
            payload = fixed[c]["compute"]["payload"]
            ns = list(range(1, 17))
            for alg_name in ALGS:
                alg = model.algorithm(alg_name, 4)
                u = overhead.get(alg_name, 0.0)
                eff = [model.predict(n, alg, compute_s, payload, links[label], u)[3] for n in ns]
                ax.plot(ns, eff, color=colors[alg_name], label=f"{alg_name} model",
                        linestyle="--" if alg_name == "adaptive" else "-")
                pts = [(n, algs2["compute"]["step_s"] / algs2[alg_name]["step_s"])
                       for (l, n, c2), algs2 in configs.items()
                       if l == label and c2 == c and alg_name in algs2 and "compute" in algs2]
                if pts:
                    ax.scatter(*zip(*sorted(pts)), color=colors[alg_name], marker="o", edgecolor="black", zorder=3)
            ax.set_title(f"{label} emulated link (shared by all ranks), compute {compute_s * 1e3:.0f} ms/step\n"
                         "lines: model, dots: measured")
        ax.set_xlabel("ranks")
        ax.set_ylabel("efficiency = throughput(n) / (n * throughput(1))")
        ax.set_ylim(0, 1.05)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7)
        # (b) dedicated links, extrapolated
        ax = row[1]
        ps = [p for p in pred_rows if p["label"] == label]
        for alg_name in ALGS:
            pts = sorted((p["workers"], p["efficiency"]) for p in ps if p["algorithm"] == alg_name)
            if pts:
                ax.plot(*zip(*pts), color=colors[alg_name], marker=".", label=alg_name,
                        linestyle="--" if alg_name == "adaptive" else "-")
        if ps:
            ax.set_title(f"prediction: one {ps[0]['bandwidth_gbit']:.2f} Gbit/s link per worker, "
                         f"alpha {ps[0]['alpha_us']:.0f} us,\n{ps[0]['payload_bytes'] / 2**20:.0f} MiB, "
                         f"compute {ps[0]['compute_ms']:.0f} ms/step, tau 4")
        ax.set_xscale("log", base=2)
        ax.set_xlabel("workers")
        ax.set_ylabel("predicted efficiency")
        ax.set_ylim(0, 1.05)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    path = os.path.join(img_dir, "scaling_efficiency.png")
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


if __name__ == "__main__":
    main()
