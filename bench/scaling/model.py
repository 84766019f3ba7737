#!/usr/bin/python3
"""Step time, throughput and efficiency of sync SGD, Local SGD and DaSGD
against the worker count (docs/scaling.md).

Inputs: compute time per step (measured, without communication), parameter
bytes S, link bandwidth B (bytes/s) and per-message latency alpha (s).

Ring allreduce of S bytes over n workers:
  dedicated links (one link per worker, non-blocking switch: a cluster)
      T(n) = 2(n-1)/n * S/B + 2(n-1) * alpha
  shared link (every worker's traffic crosses one link: the emulated
  loopback of bench/overlap, where all ranks share one tbf-limited lo)
      T(n) = 2(n-1) * S/B + 2(n-1) * alpha
  (the ring moves 2(n-1)/n * S per worker; on one shared link that is
  2(n-1) * S in total, in 2(n-1) rounds).

Step time with compute c, tau-step rounds, delay d and the extra cost u of
the fused update passes (snapshot, merge) over a plain local step:
  sync        c + T + u
  Local SGD   c + T / tau + u                      (d = 0, blocking)
  DaSGD       c + max(0, T - d * c) / tau + u      (the average runs behind d steps)
  adaptive    DaSGD with d = clamp(ceil(T / c), 1, tau - 1)
Throughput = n / step time (worker steps per second: samples per second
for one sample per worker step). Efficiency = throughput(n) / (n *
throughput(1)) = c / step(n), since one worker never communicates.

usage (a prediction table):
  /usr/bin/python3 bench/scaling/model.py --compute-ms 120 --payload-mib 4 \
      --bandwidth-gbit 1 --alpha-us 100 --tau 4 --max-workers 1024
"""
import argparse
import math
from dataclasses import dataclass

TOPOLOGIES = ("dedicated", "shared")


@dataclass(frozen=True)
class Link:
    bandwidth: float  # bytes per second of one link
    alpha: float  # seconds per message (latency and per-message software cost)
    topology: str = "dedicated"

    def __post_init__(self):
        if not (self.bandwidth > 0 and math.isfinite(self.bandwidth)):
            raise ValueError(f"link bandwidth must be a positive number of bytes/s, got {self.bandwidth}")
        if not (self.alpha >= 0 and math.isfinite(self.alpha)):
            raise ValueError(f"link latency alpha must be >= 0 s, got {self.alpha}")
        if self.topology not in TOPOLOGIES:
            raise ValueError(f"topology must be one of {TOPOLOGIES}, got {self.topology!r}")


def allreduce_seconds(workers, payload_bytes, link):
    """Ring allreduce time of payload_bytes over `workers` workers."""
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    if payload_bytes < 0:
        raise ValueError(f"payload must be >= 0 bytes, got {payload_bytes}")
    if workers == 1:
        return 0.0
    rounds = 2 * (workers - 1)
    per_round = payload_bytes / workers  # each round moves one 1/n chunk per worker
    wire = per_round * (workers if link.topology == "shared" else 1)
    return rounds * (wire / link.bandwidth + link.alpha)


@dataclass(frozen=True)
class Algorithm:
    name: str
    tau: int  # steps per round (1 for sync)
    delay: int | None  # steps between launch and merge; None: adaptive

    def __post_init__(self):
        if self.tau < 1:
            raise ValueError(f"{self.name}: tau must be >= 1, got {self.tau}")
        if self.delay is not None and not 0 <= self.delay < self.tau:
            raise ValueError(f"{self.name}: delay {self.delay} is outside [0, tau) = [0, {self.tau})")
        if self.delay is None and self.tau < 2:
            raise ValueError(f"{self.name}: the adaptive delay needs tau >= 2")


def algorithm(name, tau=4):
    """The benchmark's names: sync, local, dasgd-d<N>, adaptive."""
    if name == "sync":
        return Algorithm(name, 1, 0)
    if name == "local":
        return Algorithm(name, tau, 0)
    if name == "adaptive":
        return Algorithm(name, tau, None)
    if name.startswith("dasgd-d") and name[len("dasgd-d"):].isdigit():
        return Algorithm(name, tau, int(name[len("dasgd-d"):]))
    raise ValueError(f"unknown algorithm {name!r} (sync, local, dasgd-d<N>, adaptive)")


def adaptive_delay(compute_s, allreduce_s, tau):
    """The smallest delay whose window d * compute covers the allreduce, in [1, tau - 1]."""
    if compute_s <= 0:
        return tau - 1
    return min(tau - 1, max(1, math.ceil(allreduce_s / compute_s - 1e-9)))


def step_seconds(alg, compute_s, allreduce_s, update_overhead_s=0.0):
    """Mean step time of `alg` (see the module comment)."""
    if compute_s < 0 or allreduce_s < 0:
        raise ValueError(f"compute ({compute_s}) and allreduce ({allreduce_s}) times must be >= 0")
    d = adaptive_delay(compute_s, allreduce_s, alg.tau) if alg.delay is None else alg.delay
    exposed = max(0.0, allreduce_s - d * compute_s)  # d = 0: all of it
    return compute_s + exposed / alg.tau + update_overhead_s


def throughput(workers, step_s):
    return workers / step_s


def efficiency(workers, step_s, compute_s):
    """throughput(n) / (n * throughput(1)); one worker runs at the compute time."""
    return throughput(workers, step_s) / (workers * throughput(1, compute_s))


def predict(workers, alg, compute_s, payload_bytes, link, update_overhead_s=0.0):
    """(allreduce s, step s, throughput, efficiency) for one configuration."""
    t = allreduce_seconds(workers, payload_bytes, link)
    overhead = update_overhead_s if workers > 1 else 0.0
    step = step_seconds(alg, compute_s, t, overhead) if workers > 1 else compute_s
    return t, step, throughput(workers, step), efficiency(workers, step, compute_s)


def fit_link(samples, topology):
    """Least-squares bandwidth and alpha from measured (workers, payload bytes,
    allreduce seconds), with relative errors weighted equally. T is linear
    in (1/B, alpha): T = x * (1/B) + 2(n-1) * alpha."""
    import numpy as np

    rows, rhs = [], []
    for n, s, t in samples:
        if n < 2 or t <= 0:
            continue
        x = 2 * (n - 1) * s / n * (n if topology == "shared" else 1)
        rows.append([x / t, 2 * (n - 1) / t])
        rhs.append(1.0)
    if len(rows) < 2:
        raise ValueError(f"need at least 2 allreduce samples with >= 2 workers to fit a link, got {len(rows)}")
    a, b = np.array(rows), np.array(rhs)
    (inv_bw, alpha), *_ = np.linalg.lstsq(a, b, rcond=None)
    if alpha < 0:  # latency below resolution: bandwidth alone
        inv_bw = float(np.dot(a[:, 0], b) / np.dot(a[:, 0], a[:, 0]))
        alpha = 0.0
    if inv_bw <= 0:
        raise ValueError("the allreduce times do not grow with the payload; cannot fit a bandwidth")
    return Link(1.0 / inv_bw, float(alpha), topology)


def main():
    ap = argparse.ArgumentParser(description="DaSGD scaling model: predicted step time and efficiency")
    ap.add_argument("--compute-ms", type=float, required=True, help="compute time per step (ms)")
    ap.add_argument("--payload-mib", type=float, required=True, help="parameter bytes averaged (MiB)")
    ap.add_argument("--bandwidth-gbit", type=float, required=True, help="link bandwidth (Gbit/s of payload)")
    ap.add_argument("--alpha-us", type=float, default=50.0, help="latency per message (us)")
    ap.add_argument("--topology", choices=TOPOLOGIES, default="dedicated")
    ap.add_argument("--tau", type=int, default=4)
    ap.add_argument("--overhead-ms", type=float, default=0.0, help="extra fused-update cost per step (ms)")
    ap.add_argument("--max-workers", type=int, default=1024)
    ap.add_argument("--algorithms", default="sync,local,dasgd-d1,dasgd-d2,dasgd-d3,adaptive")
    a = ap.parse_args()
    link = Link(a.bandwidth_gbit * 1e9 / 8, a.alpha_us * 1e-6, a.topology)
    algs = [algorithm(n, a.tau) for n in a.algorithms.split(",")]
    payload = a.payload_mib * 2**20
    print("workers,allreduce_ms," + ",".join(f"{x.name}_step_ms,{x.name}_efficiency" for x in algs))
    n = 1
    while n <= a.max_workers:
        cells = []
        for x in algs:
            t, step, _, eff = predict(n, x, a.compute_ms * 1e-3, payload, link, a.overhead_ms * 1e-3)
            cells.append(f"{1e3 * step:.2f},{eff:.4f}")
        print(f"{n},{1e3 * t:.2f}," + ",".join(cells))
        n *= 2


if __name__ == "__main__":
    main()
