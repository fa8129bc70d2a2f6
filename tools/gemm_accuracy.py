"""Accuracy and speed of the float32 GEMMs at the model's shapes: our FP32 SIMT GEMM (--gemm simt),
the TF32x3 tensor-core GEMM (--gemm tf32x3) and plain TF32 (one product, for contrast), each
against the float64 product of the same float32 operands; CUDA-event times of SIMT, TF32x3 and
cuBLAS (cupy.matmul, TF32 off).

    PYTHONPATH=. python tools/gemm_accuracy.py [--backend cupy|pycuda] [--hidden 256,1024,4096]
                                               [--batch 800,3200] [--repeats 20] [--json FILE]

The products of one training step on B samples (column-major, as core/model.py computes them):
    z1        = W1 x               H x B x 784     gemm (nn)
    [dW1 db1] = dz1 [x^T 1]        H x 785 x B     gemm_with_bias_grad (nt, ones column)
    da1       = W2^T diff          H x B x 10      gemm (tn)
    [dW2 db2] = diff [a1^T 1]      10 x (H+1) x B  gemm_with_bias_grad (nt, ones column)
with realistic operands: W = 0.01 N(0, 1); pixels in [0, 1] (uniform, 80% zeros as in MNIST);
a1 = sigmoid(N(0, 1)); diff = (softmax - onehot) / B; dz1 = (W2^T diff) a1 (1 - a1).

Error: relative max-norm ||C - C64||_inf / ||C64||_inf (the course's measure; C64 the float64
product of the float32 operands). Plain TF32 is emulated on the host: both operands rounded to
TF32 (round to nearest, ties away: cvt.rna), the product in float64 (the error of the rounding
alone; a tensor core adds FP32 accumulation on top). The bar: TF32x3 error <= 2 x SIMT error at
every shape (exit code 1 if not). Times: median over --repeats calls, CUDA events around each
call on the backend's stream, the calls queued behind a busy GPU so that launch cost is not
counted; the cuBLAS time of a bias-gradient product is the plain product without the ones column.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys

from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the checkout, without PYTHONPATH
os.environ["CUPY_TF32"] = "0"  # cuBLAS in FP32, no TF32 (read by CuPy at import)

BAR = 2.0


def tf32_round(x: np.ndarray) -> np.ndarray:
    """float32 -> the nearest TF32 value (10 mantissa bits; ties away from zero, as cvt.rna)."""
    bits = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32).astype(np.uint64)
    bits = (bits + 0x1000) & 0xFFFFE000  # add half an ulp of TF32 to the magnitude, truncate
    out = bits.astype(np.uint32).view(np.float32).reshape(x.shape)
    finite = np.isfinite(x)
    return np.where(finite, out, x).astype(np.float32)


def rel_err(got, ref) -> float:
    got, ref = np.asarray(got, np.float64), np.asarray(ref, np.float64)
    scale = np.max(np.abs(ref)) if ref.size else 0.0
    diff = np.max(np.abs(got - ref)) if ref.size else 0.0
    return float(diff / scale) if scale else float(diff)


def operands(rng, hidden: int, batch: int):
    """The model's operands at (H, B), float32, column-major."""
    f = lambda a: np.asfortranarray(a, dtype=np.float32)  # noqa: E731
    w1 = f(0.01 * rng.standard_normal((hidden, 784)))
    w2 = f(0.01 * rng.standard_normal((10, hidden)))
    x = rng.uniform(0.0, 1.0, (784, batch))
    x[rng.uniform(size=x.shape) < 0.8] = 0.0
    x = f(x)
    a1 = f(1.0 / (1.0 + np.exp(-rng.standard_normal((hidden, batch)))))
    z2 = rng.standard_normal((10, batch))
    p = np.exp(z2 - z2.max(axis=0))
    p /= p.sum(axis=0)
    p[rng.integers(0, 10, batch), np.arange(batch)] -= 1.0
    diff = f(p / batch)
    dz1 = f((w2.astype(np.float64).T @ diff) * a1 * (1.0 - a1))
    return {"w1": w1, "w2": w2, "x": x, "a1": a1, "diff": diff, "dz1": dz1}


def products(ops):
    """(name, op, a, b, trans_a, trans_b, ones) of one step's four products."""
    return [("z1=W1 x", "gemm", ops["w1"], ops["x"], False, False, False),
            ("[dW1 db1]", "gemm_with_bias_grad", ops["dz1"], ops["x"], False, True, True),
            ("da1=W2^T diff", "gemm", ops["w2"], ops["diff"], True, False, False),
            ("[dW2 db2]", "gemm_with_bias_grad", ops["diff"], ops["a1"], False, True, True)]


def reference(a, b, trans_a, trans_b, ones):
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    opa, opb = (a64.T if trans_a else a64), (b64.T if trans_b else b64)
    c = opa @ opb
    if ones:
        c = np.concatenate([c, opa.sum(axis=1, keepdims=True)], axis=1)
    return c


def run_ours(be, op, a, b, trans_a, trans_b, ones):
    """(device output, call) of our GEMM for one product."""
    da, db = be.from_host(a), be.from_host(b)
    m = a.shape[1] if trans_a else a.shape[0]
    n = (b.shape[0] if trans_b else b.shape[1]) + (1 if ones else 0)
    out = be.empty((m, n))
    if op == "gemm":
        call = lambda: be.gemm(da, db, out, 1.0, 0.0, trans_a, trans_b)  # noqa: E731
    else:
        call = lambda: be.gemm_with_bias_grad(da, db, out)  # noqa: E731
    return out, call


def event_times(cupy, stream_ptr, call, repeats, busy):
    """Median GPU time (us) of `call` over `repeats`, by CUDA events on the stream `stream_ptr`,
    queued behind `busy()` (work that keeps the GPU busy while Python queues the calls)."""
    rt = cupy.cuda.runtime
    call()
    rt.streamSynchronize(stream_ptr)
    events = [(rt.eventCreate(), rt.eventCreate()) for _ in range(repeats)]
    busy()
    for start, stop in events:
        rt.eventRecord(start, stream_ptr)
        call()
        rt.eventRecord(stop, stream_ptr)
    rt.streamSynchronize(stream_ptr)
    times = [rt.eventElapsedTime(start, stop) * 1e3 for start, stop in events]
    for start, stop in events:
        rt.eventDestroy(start)
        rt.eventDestroy(stop)
    return statistics.median(times)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python tools/gemm_accuracy.py",
                                description=__doc__.splitlines()[0])
    p.add_argument("--backend", default="cupy", choices=("cupy", "pycuda"))
    p.add_argument("--hidden", default="256,1024,4096")
    p.add_argument("--batch", default="800,3200")
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", default=None, help="also write the rows to this JSON file")
    args = p.parse_args(argv)

    try:
        import cupy
    except ImportError as exc:
        print(f"gemm_accuracy: needs CuPy (CUDA events, cuBLAS): {exc}", file=sys.stderr)
        return 2
    if args.backend == "cupy":
        from backends.ops_cupy import CupyBackend as cls
    else:
        from backends.ops_pycuda import PycudaBackend as cls
    ok, why = cls.availability()
    if not ok:
        print(f"gemm_accuracy: {args.backend} unavailable: {why}", file=sys.stderr)
        return 2
    simt, x3 = cls("float32"), cls("float32")
    try:
        x3.set_gemm_mode("tf32x3")
    except ValueError as exc:
        print(f"gemm_accuracy: --gemm tf32x3: {exc}", file=sys.stderr)
        return 2
    print(f"gemm_accuracy: {args.backend} on {simt.describe_device()}; float32 operands, "
          f"errors against their float64 product; times: median of {args.repeats} (CUDA events)")
    big = [simt.zeros((4096, 4096)) for _ in range(3)]

    def busy_ours(be):
        def busy():  # on `be`'s own stream, ahead of the timed calls
            for _ in range(3):
                be.gemm(big[0], big[1], big[2])
        return busy

    cbig = cupy.zeros((4096, 4096), np.float32)

    def busy_cublas():
        for _ in range(3):
            cupy.matmul(cbig, cbig)

    header = (f"{'H':>5} {'B':>5} {'product':14s} {'M':>5} {'N':>5} {'K':>5}  {'simt':>9} "
              f"{'tf32x3':>9} {'tf32':>9} {'x3/simt':>7}  {'us simt':>8} {'us x3':>8} "
              f"{'us cuBLAS':>9}")
    print(header)
    rows, failed = [], []
    rng = np.random.default_rng(args.seed)
    null_stream = cupy.cuda.Stream.null.ptr
    for hidden in (int(h) for h in args.hidden.split(",")):
        for batch in (int(b) for b in args.batch.split(",")):
            ops = operands(rng, hidden, batch)
            for name, op, a, b, ta, tb, ones in products(ops):
                ref = reference(a, b, ta, tb, ones)
                row = {"H": hidden, "B": batch, "product": name, "M": ref.shape[0],
                       "N": ref.shape[1], "K": a.shape[0] if ta else a.shape[1]}
                for label, be in (("simt", simt), ("tf32x3", x3)):
                    out, call = run_ours(be, op, a, b, ta, tb, ones)
                    call()
                    got = be.to_host(out)
                    call()
                    assert np.array_equal(be.to_host(out), got), f"{label} {name}: rerun differs"
                    row[f"err_{label}"] = rel_err(got, ref)
                    row[f"us_{label}"] = event_times(cupy, be.stream_handle(), call,
                                                     args.repeats, busy_ours(be))
                row["err_tf32"] = rel_err(reference(tf32_round(a), tf32_round(b), ta, tb, ones)
                                          .astype(np.float32), ref)
                ca, cb = cupy.asarray(a), cupy.asarray(b)
                opa, opb = (ca.T if ta else ca), (cb.T if tb else cb)
                row["us_cublas"] = event_times(cupy, null_stream, lambda: cupy.matmul(opa, opb),
                                               args.repeats, busy_cublas)
                row["ratio"] = (row["err_tf32x3"] / row["err_simt"] if row["err_simt"]
                                else (0.0 if row["err_tf32x3"] == 0 else float("inf")))
                row["ok"] = row["ratio"] <= BAR
                if not row["ok"]:
                    failed.append(row)
                rows.append(row)
                print(f"{hidden:5d} {batch:5d} {name:14s} {row['M']:5d} {row['N']:5d} "
                      f"{row['K']:5d}  {row['err_simt']:9.2e} {row['err_tf32x3']:9.2e} "
                      f"{row['err_tf32']:9.2e} {row['ratio']:7.2f}  {row['us_simt']:8.1f} "
                      f"{row['us_tf32x3']:8.1f} {row['us_cublas']:9.1f}"
                      + ("" if row["ok"] else "  <- above the bar"), flush=True)
    worst = max(rows, key=lambda r: r["ratio"])
    print(f"worst TF32x3/SIMT error ratio {worst['ratio']:.2f} ({worst['product']} at "
          f"H={worst['H']} B={worst['B']}); bar {BAR:g}: "
          + ("PASS" if not failed else f"FAIL at {len(failed)} product(s)"))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"device": simt.describe_device(), "backend": args.backend, "bar": BAR,
                       "rows": rows}, fh, indent=1)
        print(f"wrote {args.json}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
