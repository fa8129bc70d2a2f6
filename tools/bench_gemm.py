"""GEMMs at the model's shapes, by CUDA events: our kernels as the training step launches them
(the fused ops with their epilogues, the planner's tile and split) against cuBLAS (cupy.matmul), on
the cupy backend.

    python tools/bench_gemm.py [--dtype float32|float64] [--hidden 256,1024,4096] [--batch 800,3200]
    python tools/bench_gemm.py --sweep                 every tile x split forced, per product

float64: the planned tile with the FP64 tensor cores allowed (what a float64 run on sm_80+ gets),
the other tensor-core tile forced, and the SIMT plan of before. float32: the planned kernel.
--sweep times every tile of the product's kernel family (t128, t64, s16 and their split kernels at
S = 1..8 where one exists) and marks the fastest, the figures per-shape tuning of gemm_plan comes
from. cuBLAS computes the bare product (no epilogue; cupy.matmul allocates its output from CuPy's
pool). GPU time: each repetition times `--calls` back-to-back calls (launch gaps hidden where the
kernels outlast a launch), the median over `--repeats` repetitions, divided by the calls.
TFLOP/s = 2 M N K / time (the output's N, so [dW1 db1] counts its ones column).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from core.bench import gpu_seconds  # noqa: E402
from core.model import CLASSES, INPUTS  # noqa: E402


def _products(cp, be, hidden, n, rng):
    """(name, M, N, K, ours(), cublas()) for the model's GEMMs at (hidden, n)."""
    def dev(shape, scale=1.0):
        return be.from_host(np.asfortranarray(scale * rng.standard_normal(shape)))

    w1, x, b1 = dev((hidden, INPUTS), 0.05), dev((INPUTS, n)), dev((hidden,))
    a1, dz1 = be.empty((hidden, n)), dev((hidden, n))
    w2, diff = dev((CLASSES, hidden)), dev((CLASSES, n))
    dw1 = be.empty((hidden, INPUTS + 1))
    dw2 = be.empty((CLASSES, hidden + 1))
    z2 = be.empty((CLASSES, n))
    be.gemm_bias_sigmoid(w1, x, b1, a1)  # a1 in (0, 1) for the sigmoid backward
    out_h, out_w1 = be.empty((hidden, n)), be.empty((hidden, INPUTS))
    return [
        ("z1+bias+sigmoid", hidden, n, INPUTS, lambda: be.gemm_bias_sigmoid(w1, x, b1, a1),
         lambda: cp.matmul(w1, x)),
        ("z1 plain", hidden, n, INPUTS, lambda: be.gemm(w1, x, out_h),
         lambda: cp.matmul(w1, x)),
        ("[dW1 db1]", hidden, INPUTS + 1, n, lambda: be.gemm_with_bias_grad(dz1, x, dw1),
         lambda: cp.matmul(dz1, x.T)),
        ("dW1 plain", hidden, INPUTS, n, lambda: be.gemm(dz1, x, out_w1, trans_b=True),
         lambda: cp.matmul(dz1, x.T)),
        ("da1+sigmoid'", hidden, n, CLASSES, lambda: be.gemm_sigmoid_backward(w2, diff, a1, dz1),
         lambda: cp.matmul(w2.T, diff)),
        ("z2 plain", CLASSES, n, hidden, lambda: be.gemm(w2, a1, z2),
         lambda: cp.matmul(w2, a1)),
        ("[dW2 db2]", CLASSES, hidden + 1, n, lambda: be.gemm_with_bias_grad(diff, a1, dw2),
         lambda: cp.matmul(diff, a1.T)),
    ]


def _kernel(be, run):
    """The kernel name of the plan `run` used last (the newest cached plan's launcher)."""
    be._gemm_plans.clear()
    launched = []
    real_call = be._call

    def spy(fn, grid, block, args):
        launched.append((fn, grid))
        real_call(fn, grid, block, args)
    be._call = spy
    try:
        run()
    finally:
        del be._call
        be._gemm_plans.clear()  # the timed runs plan again, with the real launch
    names = {id(fn): name for name, fn in be._kernel_fns.items()}
    return ", ".join(f"{names.get(id(fn), '?')}{'x%d' % g[2] if g[2] > 1 else ''}"
                     for fn, g in launched)


def _row(hidden, n, prod, m, nn, k, cells, t_blas):
    flops = 2.0 * m * nn * k
    out = []
    for kernel, t in cells:
        out.append(f"{kernel:36} {1e6 * t:8.1f} {flops / t / 1e12:6.2f}" if t
                   else f"{kernel:36} {'':8} {'':6}")
    return (f"{hidden:5d} {n:5d} {prod:16} {m:5d} {nn:5d} {k:5d} | " + " | ".join(out)
            + f" | {1e6 * t_blas:9.1f} {flops / t_blas / 1e12:6.2f}")


def _float64_cells(be, ours, time_it, tc_ok):
    """The planner's pick with the tensor cores, the other tensor-core tile forced (tc64 <->
    tc128: gemm_plan.TC128_MIN_BLOCKS_PER_SM), the SIMT pick."""
    cols = []
    for allow, force in ((True, None), (True, "other"), (False, None)):
        be._gemm_tc64 = tc_ok and allow
        if force == "other":
            if "_tc" not in cols[0][0]:
                cols.append(("-", None))
                continue
            be.gemm_tile = "tc64" if "_tc128_" in cols[0][0] else "tc128"
        cols.append((_kernel(be, ours), time_it(ours)))
        be.gemm_tile = None
    be._gemm_tc64 = tc_ok
    return cols


def _sweep(be, ours, time_it, tiles, splits):
    """(kernel, seconds) of every forced tile x split whose plan differs (a split the tile has no
    kernel for runs unsplit: timed once), fastest first."""
    seen, cells = set(), []
    for tile in tiles:
        for split in splits:
            be.gemm_tile, be.gemm_split = tile, split
            kernel = _kernel(be, ours)
            if kernel not in seen:
                seen.add(kernel)
                cells.append((kernel, time_it(ours)))
    be.gemm_tile = be.gemm_split = None
    be._gemm_plans.clear()
    return sorted(cells, key=lambda c: c[1])


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dtype", default="float32", choices=("float32", "float64"))
    p.add_argument("--hidden", default="256,1024,4096")
    p.add_argument("--batch", default="800,3200")
    p.add_argument("--repeats", type=int, default=25)
    p.add_argument("--calls", type=int, default=10)
    p.add_argument("--sweep", action="store_true",
                   help="time every tile x split (1..8) of each product, fastest first")
    p.add_argument("--top", type=int, default=4, help="--sweep: kernels shown per product (4)")
    args = p.parse_args(argv)

    import cupy as cp

    from backends import gemm_plan
    from backends.ops_cupy import CupyBackend

    be = CupyBackend(args.dtype)
    tc_ok = be._gemm_tc64
    dev = cp.cuda.runtime.getDeviceProperties(be.device_index)
    name = dev["name"].decode() if isinstance(dev["name"], bytes) else dev["name"]
    print(f"device: {name}, compute capability {be._capability}, {be._num_sms} SMs; {args.dtype}"
          + (f"; FP64 tensor-core tile {'available' if tc_ok else 'NOT available'}"
             if args.dtype == "float64" else ""))
    if args.sweep:
        cols = ["planned"] + [f"#{i + 1}" for i in range(args.top)]
    elif args.dtype == "float64":
        cols = ["TC kernel (planned)", "other TC tile (forced)", "SIMT kernel"]
    else:
        cols = ["kernel (planned)"]
    head = (f"{'H':>5} {'B':>5} {'product':16} {'M':>5} {'N':>5} {'K':>5} | "
            + " | ".join(f"{c:36} {'us':>8} {'TF/s':>6}" for c in cols)
            + f" | {'cuBLAS us':>9} {'TF/s':>6}")
    print(head)
    print("-" * len(head))
    rng = np.random.default_rng(0)
    stream = be._stream

    def time_it(run):
        return gpu_seconds(run, be.stream_handle(), args.repeats, args.calls)

    tiles = [t for t in gemm_plan.GEMM_TILES
             if tc_ok or t not in gemm_plan.TC64_TILES]
    for hidden in (int(h) for h in args.hidden.split(",")):
        for n in (int(b) for b in args.batch.split(",")):
            for prod, m, nn, k, ours, cublas in _products(cp, be, hidden, n, rng):
                if args.sweep:
                    planned = (_kernel(be, ours), time_it(ours))
                    cells = [planned] + _sweep(be, ours, time_it, tiles, range(1, 9))[:args.top]
                elif args.dtype == "float64":
                    cells = _float64_cells(be, ours, time_it, tc_ok)
                else:
                    cells = [(_kernel(be, ours), time_it(ours))]
                be._gemm_plans.clear()
                with stream:
                    t_blas = time_it(cublas)
                print(_row(hidden, n, prod, m, nn, k, cells, t_blas), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
