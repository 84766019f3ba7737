# Raw NCCL (through CuPy): is a one-rank ncclAvg/ncclSum the identity, in
# place and out of place? Independent of dasgd.
import cupy as cp
from cupy.cuda import nccl
print("nccl", nccl.get_version())
comm = nccl.NcclCommunicator.initAll([0])[0]
s = cp.cuda.Stream(non_blocking=True)
for name, op in (("avg", 4), ("sum", nccl.NCCL_SUM)):
    for dt, ndt in ((cp.float64, nccl.NCCL_FLOAT64), (cp.float32, nccl.NCCL_FLOAT32)):
        for n in (1000003, 1 << 20, 4099):
            x = cp.random.uniform(-1, 1, n).astype(dt)
            for place in ("out", "in"):
                y = cp.zeros_like(x) if place == "out" else x.copy()
                src = x if place == "out" else y
                comm.allReduce(src.data.ptr, y.data.ptr, n, ndt, op, s.ptr)
                s.synchronize()
                bad = cp.nonzero(y != x)[0]
                print(f"{name} {cp.dtype(dt).name} n={n} {place}-of-place: {bad.size} mismatches",
                      cp.asnumpy(bad[:4]).tolist())
