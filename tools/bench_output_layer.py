"""Time the fused output_layer kernel against the five launches it replaces (gemm z2, add_bias,
softmax, nll_sum, softmax_xent_backward), on one GPU backend, with CUDA events; check that reruns
give the same bits and that it agrees with the NumPy reference.

    python tools/bench_output_layer.py [cupy|pycuda] [float32|float64]

The times are of 200 eager calls in a row, Python launch cost included (at small shapes that is
most of it); for the GPU time alone, capture the calls in a CUDA graph and time its replay.
"""

from __future__ import annotations

import sys

import numpy as np

from backends.ops_numpy import NumpyBackend


def main() -> None:
    name = sys.argv[1] if len(sys.argv) > 1 else "cupy"
    dtype = sys.argv[2] if len(sys.argv) > 2 else "float32"
    if name == "cupy":
        import cupy
        from backends.ops_cupy import CupyBackend as cls

        def timer(be, fn, reps):
            start, stop = cupy.cuda.Event(), cupy.cuda.Event()
            fn()
            start.record(be._stream)
            for _ in range(reps):
                fn()
            stop.record(be._stream)
            stop.synchronize()
            return cupy.cuda.get_elapsed_time(start, stop) * 1e3 / reps
    else:
        import pycuda.driver as drv
        from backends.ops_pycuda import PycudaBackend as cls

        def timer(be, fn, reps):
            start, stop = drv.Event(), drv.Event()
            fn()
            start.record(be._stream)
            for _ in range(reps):
                fn()
            stop.record(be._stream)
            stop.synchronize()
            return start.time_till(stop) * 1e3 / reps
    be, ref = cls(dtype), NumpyBackend(dtype)
    rng = np.random.default_rng(0)
    print(f"{name} {dtype}: us per call (fused | the 5 launches it replaces), check")
    for hidden in (256, 1024, 4096):
        for n in (800, 3200):
            w2 = (rng.standard_normal((10, hidden)) / np.sqrt(hidden) * 4).astype(dtype, order="F")
            b2 = rng.standard_normal(10).astype(dtype)
            a1 = rng.uniform(0, 1, (hidden, n)).astype(dtype, order="F")
            labels = rng.integers(0, 10, n).astype(np.int32)
            W2, B2, A1, L = (be.from_host(v) for v in (w2, b2, a1, labels))
            diff, yhat, acc = be.empty((10, n)), be.empty((10, n)), be.zeros((1,))

            def fused():
                be.output_layer(W2, B2, A1, L, 1.0 / n, diff, acc)

            def old():
                be.gemm(W2, A1, yhat)
                be.add_bias(yhat, B2)
                be.softmax(yhat, yhat, axis=0)
                be.nll_sum(yhat, L, acc)
                be.softmax_xent_backward(yhat, L, 1.0 / n, yhat)

            t_fused, t_old = timer(be, fused, 200), timer(be, old, 200)
            runs = []
            for _ in range(3):
                be.fill(acc, 0.5)
                fused()
                runs.append((be.to_host(diff), be.to_host(acc)))
            same = all(np.array_equal(r[0], runs[0][0]) and np.array_equal(r[1], runs[0][1])
                       for r in runs)
            rdiff, racc = np.empty((10, n), dtype, order="F"), np.array([0.5], dtype)
            ref.output_layer(w2, b2, a1, labels, 1.0 / n, rdiff, racc)
            err_d = np.max(np.abs(runs[0][0] - rdiff)) / np.max(np.abs(rdiff))
            err_l = abs(float(runs[0][1][0]) - float(racc[0])) / abs(float(racc[0]))
            print(f"H={hidden:5d} n={n:5d}  {t_fused:8.2f} | {t_old:8.2f}   "
                  f"bitwise-rerun={same} err(diff)={err_d:.1e} err(loss)={err_l:.1e}")


if __name__ == "__main__":
    main()
