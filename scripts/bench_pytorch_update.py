#!/usr/bin/env python3
"""What a PyTorch user would run instead of dasgd's fused update, timed on the
same GPU and with the same case keys as bench/update_kernels (GPU mode).

For each case (layout, precision, mode, optimizer) and implementation:
  torch-fused    torch.optim.SGD / AdamW with fused=True, then the merge
                 written with torch._foreach ops
  torch-foreach  the same with foreach=True
  torch-compile  the foreach sequence (optimizer step + merge) wrapped in
                 torch.compile (default mode), so Inductor may fuse it
Sequences (p = 0.25, the paper's mix; storage = bf16/fp16 with an fp32 master):
  fp32    step:      opt.step()
          snapshot:  opt.step(); _foreach_copy_(snap, w)
          mix:       opt.step(); _foreach_lerp_(w, avg, 1 - p)
          additive:  opt.step(); _foreach_add_(w, _foreach_sub(avg, snap))
  bf16/fp16 with master (the optimizer owns fp32 masters):
          _foreach_copy_(master.grad, g16); opt.step() on the masters;
          merge on the masters after _foreach_copy_ of avg (and snap) into
          fp32 scratch (fast same-dtype foreach paths); _foreach_copy_(w16, master);
          snapshot: _foreach_copy_(snap16, w16)
Reported bandwidth counts the bytes dasgd's fused pass must move (the same
byte accounting as the C++ benchmark), so GB/s are comparable across
implementations; time ratios are what matter.

Every implementation's first step starts from known constant values and is
checked against the update formulas before it is timed. Timing: CUDA events,
warm-up, median of repeats, L2 evicted before each sample; a device-to-device
copy of the same byte count is measured per case for the ratio to copy.

With --dasgd-csv (the C++ benchmark's CSV from the same run), prints
speedup = PyTorch time / dasgd time per matching case and the goal summary.
--list prints the plan without importing torch.
"""

import argparse
import csv
import gc
import math
import statistics
import sys
import time

torch = None  # imported in main(): --list and --help work without it

# ---- cases (pure Python: usable without torch) ---------------------------------

RESNET50 = (161, 25_557_032)
GPT2_SMALL = (148, 124_439_808)


def resnet50_extents():
    """torchvision ResNet-50 trainable parameters (conv, bn weight/bias, fc)."""
    e = [64 * 3 * 7 * 7, 64, 64]
    cin = 64
    for blocks, width in zip((3, 4, 6, 3), (64, 128, 256, 512)):
        out = 4 * width
        for b in range(blocks):
            e += [width * cin, width, width, width * width * 9, width, width, out * width, out, out]
            if b == 0:
                e += [out * cin, out, out]
            cin = out
    e += [1000 * cin, 1000]
    return e


def gpt2_small_extents():
    """Hugging Face GPT-2 small (lm_head tied to wte)."""
    vocab, ctx, layers, d = 50257, 1024, 12, 768
    e = [vocab * d, ctx * d]
    for _ in range(layers):
        e += [d, d, d * 3 * d, 3 * d, d * d, d, d, d, d * 4 * d, 4 * d, 4 * d * d, d]
    e += [d, d]
    return e


def layout_extents(name):
    if name == "resnet50":
        e = resnet50_extents()
        assert (len(e), sum(e)) == RESNET50, (len(e), sum(e))
        return e
    if name == "gpt2_small":
        e = gpt2_small_extents()
        assert (len(e), sum(e)) == GPT2_SMALL, (len(e), sum(e))
        return e
    if name.startswith("flat_") and name[-1:] in ("M", "K") and name[5:-1].isdigit():
        n = int(name[5:-1]) << (20 if name[-1] == "M" else 10)
        if n > 0:
            return [n]
    raise SystemExit(f"unknown layout '{name}' (flat_<N>M, flat_<N>K, resnet50, gpt2_small)")


# precision -> (storage bytes, master)
PRECISIONS = {"fp32": (4, False), "bf16": (2, True), "fp16": (2, True)}
MODES = ("step", "step_snapshot", "step_mix", "step_additive")
OPTIMIZERS = {"sgdm": 1, "adamw": 2}  # optimizer -> state count
IMPLS = ("fused", "foreach", "compile")
MIX_P = 0.25


def bytes_per_element(precision, mode, optimizer):
    """Bytes dasgd's fused pass must move per element (bench_case.hpp)."""
    s, master = PRECISIONS[precision]
    c = 4
    if master:
        rw_s, w_s, rw_c = 0, 1, 1
    else:
        rw_s, w_s, rw_c = 1, 0, 0
    r_s = 1  # gradient
    rw_c += OPTIMIZERS[optimizer]
    if mode == "step_snapshot":
        w_s += 1
    if mode in ("step_mix", "step_additive"):
        r_s += 1
    if mode == "step_additive":
        r_s += 1
    return s * (2 * rw_s + r_s + w_s) + c * 2 * rw_c


def split_list(s, allowed=None, what=""):
    items = [x for x in s.split(",") if x]
    if not items:
        raise SystemExit(f"{what} needs a comma-separated list, got '{s}'")
    if allowed is not None:
        for x in items:
            if x not in allowed:
                raise SystemExit(f"unknown {what} '{x}' (expected one of {', '.join(allowed)})")
    return items


def plan_cases(args):
    """(impl, layout, precision, mode, optimizer) in run order: all eager
    cases first, then the compiled ones by priority (precision, optimizer,
    then the compile layouts in the order given), so that a spent compile
    budget leaves the most important pairs measured."""
    eager, compiled = [], []
    for layout in args.layouts:
        for precision in args.precisions:
            for optimizer in args.optimizers:
                for mode in args.modes:
                    for impl in args.impls:
                        if impl != "compile":
                            eager.append((impl, layout, precision, mode, optimizer))
    if "compile" in args.impls:
        for precision in args.compile_precisions:
            for optimizer in args.optimizers:
                for layout in args.compile_layouts:
                    for mode in args.compile_modes:
                        compiled.append(("compile", layout, precision, mode, optimizer))
    return eager + compiled


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--layouts", default="flat_1M,flat_16M,flat_128M,resnet50,gpt2_small")
    p.add_argument("--precisions", default="fp32,bf16,fp16")
    p.add_argument("--modes", default="step_mix,step_additive")
    p.add_argument("--optimizers", default="sgdm,adamw")
    p.add_argument("--impls", default="fused,foreach,compile")
    p.add_argument("--compile-layouts", default="flat_16M,resnet50",
                   help="layouts timed with torch.compile, in priority order (compiles are slow)")
    p.add_argument("--compile-precisions", default="fp32,bf16")
    p.add_argument("--compile-modes", default="step_mix")
    p.add_argument("--compile-budget-s", type=float, default=150.0,
                   help="stop starting new torch.compile cases after this many seconds of them")
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--repeats", type=int, default=25)
    p.add_argument("--no-flush-l2", action="store_true")
    p.add_argument("--csv", default="", help="write the PyTorch rows (and speedups) here")
    p.add_argument("--dasgd-csv", default="", help="the C++ benchmark's GPU CSV of the same run")
    p.add_argument("--list", action="store_true", help="print the plan and exit (no torch needed)")
    p.add_argument("--device", choices=("cuda", "cpu"), default="cuda",
                   help="cpu: functional test of the sequences on a machine without a GPU "
                        "(the times are not GPU figures)")
    a = p.parse_args(argv)
    a.layouts = split_list(a.layouts, what="layout")
    for name in a.layouts:
        layout_extents(name)
    a.precisions = split_list(a.precisions, PRECISIONS, "precision")
    a.modes = split_list(a.modes, MODES, "mode")
    a.optimizers = split_list(a.optimizers, OPTIMIZERS, "optimizer")
    a.impls = split_list(a.impls, IMPLS, "impl")
    a.compile_layouts = split_list(a.compile_layouts, what="compile layout")
    for name in a.compile_layouts:
        layout_extents(name)
    a.compile_precisions = split_list(a.compile_precisions, PRECISIONS, "compile precision")
    a.compile_modes = split_list(a.compile_modes, MODES, "compile mode")
    if a.warmup < 0 or a.repeats < 1:
        raise SystemExit("--warmup must be >= 0 and --repeats >= 1")
    return a


# ---- the PyTorch sequences ----------------------------------------------------

INIT_W, INIT_G, INIT_AVG, INIT_SNAP = 0.5, 2.0 ** -6, 0.625, 0.375  # exact in bf16 and fp16
LR, MOMENTUM, WD, BETAS, EPS = 1e-3, 0.9, 1e-2, (0.9, 0.999), 1e-8


def expected_first_step(mode, optimizer):
    """(weight, snapshot) after one step from the initial values, in float64,
    by the torch.optim formulas (first step: SGD buffer = g; AdamW t = 1)."""
    w, g = INIT_W, INIT_G
    if optimizer == "sgdm":
        w = w - LR * g
    else:
        b1, b2 = BETAS
        m, v = (1 - b1) * g, (1 - b2) * g * g
        w = w * (1 - LR * WD) - (LR / (1 - b1)) * m / (math.sqrt(v) / math.sqrt(1 - b2) + EPS)
    snap = w if mode == "step_snapshot" else None
    if mode == "step_mix":
        w = MIX_P * w + (1 - MIX_P) * INIT_AVG
    elif mode == "step_additive":
        w = w + INIT_AVG - INIT_SNAP
    return w, snap


class TorchCase:
    """Tensors, optimizer and step function of one (impl, case)."""

    def __init__(self, impl, extents, precision, mode, optimizer, dev="cuda"):
        self.mode = mode
        f32 = torch.float32
        storage = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]
        self.master = PRECISIONS[precision][1]
        self.storage = storage

        def full(value, dtype):
            return [torch.full((n,), value, dtype=dtype, device=dev) for n in extents]

        if self.master:
            self.params = [torch.nn.Parameter(t) for t in full(INIT_W, f32)]  # fp32 masters
            for p in self.params:
                p.grad = torch.zeros_like(p)
            self.w16 = full(INIT_W, storage)
            self.g16 = full(INIT_G, storage)
            self.master_grads = [p.grad for p in self.params]
        else:
            self.params = [torch.nn.Parameter(t) for t in full(INIT_W, f32)]
            for p in self.params:
                p.grad = torch.full_like(p, INIT_G)
        merge = mode in ("step_mix", "step_additive")
        self.avg = full(INIT_AVG, storage) if merge else None
        self.snap = full(INIT_SNAP, storage) if mode in ("step_snapshot", "step_additive") else None
        self.avg32 = full(0.0, f32) if merge and self.master else None
        self.snap32 = full(0.0, f32) if mode == "step_additive" and self.master else None

        kind = {"fused": dict(fused=True), "foreach": dict(foreach=True),
                "compile": dict(foreach=True)}[impl]
        if optimizer == "sgdm":
            self.opt = torch.optim.SGD(self.params, lr=LR, momentum=MOMENTUM, **kind)
        else:
            self.opt = torch.optim.AdamW(self.params, lr=LR, betas=BETAS, eps=EPS, weight_decay=WD, **kind)

        step = self._step
        if impl == "compile":
            torch._dynamo.reset()  # fresh caches: no recompile limit across cases
            try:
                from torch._dynamo.utils import counters
                counters.clear()
            except ImportError:
                pass
            step = torch.compile(step)
        self.step = step

    def _step(self):
        if self.master:
            torch._foreach_copy_(self.master_grads, self.g16)
        self.opt.step()
        with torch.no_grad():  # in-place updates of leaf parameters
            self._merge_and_copy()

    def _merge_and_copy(self):
        t = torch
        w = self.params
        if self.mode == "step_mix":
            avg = self.avg
            if self.master:
                t._foreach_copy_(self.avg32, self.avg)
                avg = self.avg32
            t._foreach_lerp_(w, avg, 1.0 - MIX_P)
        elif self.mode == "step_additive":
            if self.master:
                t._foreach_copy_(self.avg32, self.avg)
                t._foreach_copy_(self.snap32, self.snap)
                t._foreach_add_(w, t._foreach_sub(self.avg32, self.snap32))
            else:
                t._foreach_add_(w, t._foreach_sub(self.avg, self.snap))
        if self.master:
            t._foreach_copy_(self.w16, w)
        if self.mode == "step_snapshot":
            t._foreach_copy_(self.snap, self.w16 if self.master else w)

    def check_first_step(self, optimizer):
        """Call right after the first step: compares the first, last and a
        middle element of every tensor with the float64 formulas."""
        want_w, want_snap = expected_first_step(self.mode, optimizer)
        checks = [(self.params, want_w, 2e-6)]
        if self.master:
            checks.append((self.w16, want_w, 2.0 ** -7 if self.storage == torch.bfloat16 else 2.0 ** -10))
        if want_snap is not None:
            snap_tol = 2e-6 if not self.master else (2.0 ** -7 if self.storage == torch.bfloat16 else 2.0 ** -10)
            checks.append((self.snap, want_snap, snap_tol))
        for tensors, want, tol in checks:
            for t in tensors:
                n = t.numel()
                idx = sorted({0, n // 2, n - 1})
                for i, got in zip(idx, t.detach()[idx].float().tolist()):
                    if abs(got - want) > tol * max(1.0, abs(want)):
                        return f"element {i} is {got!r}, formulas give {want!r}"
        return ""


def time_samples(fn, warmup, repeats, flush, device="cuda"):
    """Median seconds of fn() over repeats, each sample alone between CUDA events."""
    for _ in range(warmup):
        fn()
    if device == "cpu":  # a functional run: wall-clock times, not GPU figures
        samples = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            fn()
            samples.append(time.perf_counter() - t0)
        return statistics.median(samples)
    starts = [torch.cuda.Event(enable_timing=True) for _ in range(repeats)]
    ends = [torch.cuda.Event(enable_timing=True) for _ in range(repeats)]
    for i in range(repeats):
        if flush is not None:
            flush.fill_(i & 0xFF)
        starts[i].record()
        fn()
        ends[i].record()
    torch.cuda.synchronize()
    return statistics.median(s.elapsed_time(e) for s, e in zip(starts, ends)) * 1e-3


def compile_stats():
    """Graphs and graph breaks Dynamo counted since the last reset (internal
    counters: best effort). One graph in steady state means the whole step
    + merge ran as compiled code; the optimizer's first step breaks once."""
    try:
        from torch._dynamo.utils import counters
        return (f"{counters['stats']['unique_graphs']} graphs, "
                f"{sum(counters['graph_break'].values())} graph breaks")
    except Exception as e:  # noqa: BLE001 (diagnostics only)
        return f"no Dynamo counters ({type(e).__name__})"


CSV_COLUMNS = ["impl", "device", "layout", "tensors", "elements", "precision", "mode", "optimizer",
               "threads", "bytes_per_elem", "bytes", "time_us", "gbps", "baseline", "baseline_time_us",
               "baseline_gbps", "ratio_to_baseline", "repeats", "check", "speedup_dasgd"]


def read_dasgd(path):
    rows = {}
    if not path:
        return rows
    with open(path, newline="") as f:
        for r in csv.DictReader(f):
            if r["impl"] != "dasgd-cuda":
                continue
            key = (r["layout"], r["precision"], r["mode"], r["optimizer"])
            want = bytes_per_element(r["precision"], r["mode"], r["optimizer"])
            if int(r["bytes_per_elem"]) != want:
                raise SystemExit(f"{path}: {key} has {r['bytes_per_elem']} B/element, "
                                 f"this script counts {want}: the two byte accountings differ")
            rows[key] = r
    return rows


def goal_summary(results, dasgd):
    """Issue goals on step + merge at >= 16M elements and on the model lists."""
    lines = []

    def big(layout):
        e = layout_extents(layout)
        return len(e) > 1 or sum(e) >= 16 << 20

    merge_rows = [r for r in results if r["mode"] in ("step_mix", "step_additive") and big(r["layout"])]
    eager, comp = {}, {}
    for r in merge_rows:
        key = (r["layout"], r["precision"], r["mode"], r["optimizer"])
        if key not in dasgd or not r["speedup_dasgd"]:
            continue
        s = float(r["speedup_dasgd"])
        if r["impl"] in ("torch-fused", "torch-foreach"):
            eager[key] = min(eager.get(key, math.inf), s)  # against the faster eager variant
        else:
            comp[key] = s
    if eager:
        many = [v for k, v in eager.items() if len(layout_extents(k[0])) > 1]
        flat = [v for k, v in eager.items() if len(layout_extents(k[0])) == 1]
        for name, v in (("many-tensor lists", many), ("flat >= 16M", flat)):
            if v:
                lines.append(f"  vs eager (faster of fused/foreach), {name}: min speedup {min(v):.2f}x "
                             f"over {len(v)} cases, goal >= 2.00x: {'met' if min(v) >= 2 else 'MISSED'}")
    if comp:
        many = [v for k, v in comp.items() if len(layout_extents(k[0])) > 1]
        flat = [v for k, v in comp.items() if len(layout_extents(k[0])) == 1]
        if many:
            lines.append(f"  vs torch.compile, many-tensor lists: min speedup {min(many):.2f}x over "
                         f"{len(many)} cases, goal >= 1.60x: {'met' if min(many) >= 1.6 else 'MISSED'}")
        if flat:
            lines.append(f"  vs torch.compile, single flat tensor: min speedup {min(flat):.2f}x over "
                         f"{len(flat)} cases, goal >= 1.00x: {'met' if min(flat) >= 1.0 else 'MISSED'}")
    return lines


def main(argv=None):
    args = parse_args(argv)
    plan = plan_cases(args)
    if args.list:
        for impl, layout, precision, mode, optimizer in plan:
            e = layout_extents(layout)
            print(f"torch-{impl:8s} {layout:11s} {len(e):4d} tensors {sum(e):>11d} el  {precision:5s} "
                  f"{mode:14s} {optimizer:6s} {bytes_per_element(precision, mode, optimizer):3d} B/el")
        print(f"{len(plan)} cases")
        return 0

    global torch
    import torch  # noqa: E402  (not needed for --list)

    if args.device == "cuda" and not torch.cuda.is_available():
        print("no CUDA device: PyTorch comparison skipped")
        return 77
    if hasattr(torch._dynamo.config, "recompile_limit"):
        torch._dynamo.config.recompile_limit = 64
    else:
        torch._dynamo.config.cache_size_limit = 64
    if args.device == "cuda":
        props = torch.cuda.get_device_properties(0)
        device = f"{props.name} ({props.multi_processor_count} SMs)"
        l2 = getattr(props, "L2_cache_size", 64 << 20) or (64 << 20)
    else:
        device, l2 = "cpu (functional test)", 64 << 20
    print(f"PyTorch {torch.__version__} on {device}")
    flush = None if args.no_flush_l2 else torch.empty(2 * l2, dtype=torch.uint8, device=args.device)
    dasgd = read_dasgd(args.dasgd_csv)
    max_copy = max(bytes_per_element(p, m, o) * sum(layout_extents(l)) // 2
                   for _, l, p, m, o in plan) if plan else 16
    copy_src = torch.zeros(max_copy, dtype=torch.uint8, device=args.device)
    copy_dst = torch.empty_like(copy_src)

    writer = None
    out = None
    if args.csv:
        out = open(args.csv, "w", newline="")
        writer = csv.DictWriter(out, fieldnames=CSV_COLUMNS)
        writer.writeheader()

    print(f"{'impl':14s} {'layout':11s} {'prec':5s} {'mode':14s} {'optim':6s} {'time_us':>10s} "
          f"{'GB/s':>8s} {'copy':>8s} {'ratio':>6s} {'dasgd_us':>9s} {'speedup':>8s} check")
    results = []
    compile_spent = 0.0
    failures = 0
    for impl, layout, precision, mode, optimizer in plan:
        if impl == "compile" and compile_spent > args.compile_budget_s:
            print(f"torch-compile  {layout:11s} {precision:5s} {mode:14s} {optimizer:6s} skipped: "
                  f"compile budget of {args.compile_budget_s:.0f} s spent")
            continue
        extents = layout_extents(layout)
        nbytes = bytes_per_element(precision, mode, optimizer) * sum(extents)
        t0 = time.perf_counter()
        case = None
        try:
            case = TorchCase(impl, extents, precision, mode, optimizer, args.device)
            case.step()  # the first step (compiles for torch-compile), then checked
            if args.device == "cuda":
                torch.cuda.synchronize()
            mismatch = case.check_first_step(optimizer)
            # A compiled step may recompile once on its second call (the
            # optimizer state exists from then on): keep that out of the timing.
            warmup = max(args.warmup, 2) if impl == "compile" else args.warmup
            t = time_samples(case.step, warmup, args.repeats, flush, args.device)
            src, dst = copy_src[: nbytes // 2], copy_dst[: nbytes // 2]
            tc = time_samples(lambda: dst.copy_(src), args.warmup, args.repeats, flush, args.device)
        except Exception as e:  # a failed compile must not lose the other cases
            print(f"torch-{impl:8s} {layout:11s} {precision:5s} {mode:14s} {optimizer:6s} FAILED: "
                  f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}")
            failures += 1
            continue
        finally:
            if impl == "compile":
                compile_spent += time.perf_counter() - t0
            del case
            gc.collect()
            if args.device == "cuda":
                torch.cuda.empty_cache()
        key = (layout, precision, mode, optimizer)
        d = dasgd.get(key)
        speedup = t / (float(d["time_us"]) * 1e-6) if d else None
        row = {"impl": f"torch-{impl}", "device": device, "layout": layout, "tensors": len(extents),
               "elements": sum(extents), "precision": precision, "mode": mode, "optimizer": optimizer,
               "threads": 1, "bytes_per_elem": bytes_per_element(precision, mode, optimizer),
               "bytes": nbytes, "time_us": f"{t * 1e6:.3f}", "gbps": f"{nbytes / t * 1e-9:.2f}",
               "baseline": "d2d-copy", "baseline_time_us": f"{tc * 1e6:.3f}",
               "baseline_gbps": f"{nbytes / tc * 1e-9:.2f}", "ratio_to_baseline": f"{tc / t:.4f}",
               "repeats": args.repeats, "check": "FAIL" if mismatch else "ok",
               "speedup_dasgd": f"{speedup:.3f}" if speedup else ""}
        if impl == "compile":
            print(f"  compile: {compile_stats()}, {time.perf_counter() - t0:.1f} s incl. compile and timing")
        if mismatch:
            failures += 1
            print(f"check failed: torch-{impl} {'/'.join(key)}: {mismatch}", file=sys.stderr)
        results.append(row)
        if writer:
            writer.writerow(row)
            out.flush()
        print(f"{row['impl']:14s} {layout:11s} {precision:5s} {mode:14s} {optimizer:6s} "
              f"{t * 1e6:10.1f} {nbytes / t * 1e-9:8.1f} {nbytes / tc * 1e-9:8.1f} {tc / t:6.3f} "
              f"{float(d['time_us']) if d else float('nan'):9.1f} "
              f"{(f'{speedup:.2f}x' if speedup else '-'):>8s} {row['check']}", flush=True)
    if out:
        out.close()
    if dasgd and results:
        print("\nspeedup = PyTorch time / dasgd time, step + merge at >= 16M elements and model lists:")
        for line in goal_summary(results, dasgd):
            print(line)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
