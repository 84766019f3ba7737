# Raw NCCL (through CuPy): is a one-rank ncclAvg/ncclSum the identity, in
# place and out of place? Independent of dasgd; needs a GPU and CuPy.
#   python3 scripts/nccl_onerank_check.py
# On an H200 with NCCL 2.28.9 (bench/results/h200_run3/nccl_onerank_cupy.txt)
# out-of-place ncclAvg of float64 left the last elements of odd sizes unwritten.
import cupy as cp
from cupy.cuda import nccl
print("nccl", nccl.get_version())
comm = nccl.NcclCommunicator.initAll([0])[0]
s = cp.cuda.Stream(non_blocking=True)
for name, op in (("avg", 4), ("sum", nccl.NCCL_SUM)):
    for dt, ndt in ((cp.float64, nccl.NCCL_FLOAT64), (cp.float32, nccl.NCCL_FLOAT32)):
        for n in (1000003, 1 << 20, 4099):
            x = cp.random.uniform(-1, 1, n).astype(dt)
            for place in ("out-of-place", "in-place"):
                y = cp.zeros_like(x) if place == "out-of-place" else x.copy()
                src = x if place == "out-of-place" else y
                comm.allReduce(src.data.ptr, y.data.ptr, n, ndt, op, s.ptr)
                s.synchronize()
                bad = cp.nonzero(y != x)[0]
                print(f"{name} {cp.dtype(dt).name} n={n} {place}: {bad.size} mismatches",
                      cp.asnumpy(bad[:4]).tolist())
