"""What the conformance tests share: inputs, running one op on the backend and on the reference,
and the tolerance of a comparison. Not a test module."""

from __future__ import annotations

import math
import os
import subprocess
import sys
from typing import Callable

import numpy as np

#: the matrix shapes the element-wise ops meet: one element, odd sizes, zero columns, a long row
SHAPES = ((1, 1), (7, 5), (10, 0), (33, 17), (3, 130))
#: (M, N, K) of the GEMM cases: tiny, odd, deep, zero columns, K = 0
GEMM_SHAPES = ((1, 1, 1), (7, 5, 3), (33, 17, 65), (4, 0, 3), (5, 4, 0), (16, 9, 130))
TRANSPOSES = ((False, False), (True, False), (False, True), (True, True))


def unit_roundoff(dtype) -> float:
    return float(np.finfo(np.dtype(dtype)).eps) / 2


def rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


def rounded(host: np.ndarray, dtype) -> np.ndarray:
    """``host`` rounded to the backend dtype (so backend and reference see the same values),
    column-major, float64."""
    return np.asfortranarray(np.asarray(host).astype(np.dtype(dtype)).astype(np.float64))


def as_f64(backend, arr) -> np.ndarray:
    return np.asarray(backend.to_host(arr), dtype=np.float64)


def run_both(backend, reference, inputs: dict, outputs: dict, call: Callable,
             alias: dict | None = None) -> tuple[dict, dict]:
    """Run ``call(be, arrays)`` on the backend and on the reference with the same values:
    ``inputs`` (host arrays; floats rounded to the backend dtype first, integers as they are),
    ``outputs`` (name -> initial host contents), ``alias`` (output name -> input name: that
    output IS the input array). Returns ({output: float64 host result}) for each."""
    alias = alias or {}
    values = {k: (v if np.issubdtype(np.asarray(v).dtype, np.integer)
                  else rounded(v, backend.dtype)) for k, v in {**inputs, **outputs}.items()}
    results = []
    for be in (backend, reference):
        arrays = {k: be.from_host(v) for k, v in values.items() if k not in alias}
        for out, src in alias.items():
            arrays[out] = arrays[src]
        call(be, arrays)
        results.append({k: as_f64(be, arrays[k]) for k in outputs})
    return results[0], results[1]


def assert_close(got: np.ndarray, want: np.ndarray, dtype, what: str, k: float = 16.0,
                 scale: float | None = None) -> None:
    """max |got - want| <= k u max(scale or max |want|, tiny), u the dtype's unit roundoff.
    NaN and inf must agree in place."""
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    assert got.shape == want.shape, f"{what}: shape {got.shape}, expected {want.shape}"
    if got.size == 0:
        return
    bad = ~np.isfinite(want)
    assert np.array_equal(np.isfinite(got), ~bad), f"{what}: non-finite values differ"
    assert np.array_equal(got[bad], want[bad]) or np.all(np.isnan(want[bad])), what
    if bad.all():
        return
    err = float(np.max(np.abs(got[~bad] - want[~bad])))
    size = float(np.max(np.abs(want[~bad]))) if scale is None else scale
    bound = k * unit_roundoff(dtype) * max(size, np.finfo(np.float64).tiny)
    idx = np.unravel_index(int(np.argmax(np.where(bad, -1, np.abs(got - want)))), got.shape)
    assert err <= bound, (f"{what}: max error {err:.3e} > {bound:.3e} ({k:g} u x {size:.3e}); "
                          f"worst at {tuple(int(i) for i in idx)}: got {got[idx]!r}, "
                          f"reference {want[idx]!r}")


def gemm_scale(a, b, c, alpha, beta, trans_a, trans_b) -> float:
    """max of |alpha| |op(A)| |op(B)| + |beta| |C|: what a GEMM's rounding error is relative to."""
    op_a = np.abs(a.T if trans_a else a)
    op_b = np.abs(b.T if trans_b else b)
    total = abs(alpha) * (op_a @ op_b)
    if beta:
        total = total + abs(beta) * np.abs(c)
    return float(total.max()) if total.size else 0.0


def gemm_k(k: int) -> float:
    """The GEMM tolerance's factor for depth K: any summation order (a tree, split-K, FMA)."""
    return 4.0 * (math.sqrt(k) + 4) + k / 8


# ---------------------------------------------------------------------------- training data
def synthetic(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """n MNIST-shaped images (uint8, one per row) whose label a linear rule decides, so that a
    short run learns something; and the labels (int32)."""
    g = rng(seed)
    images = g.integers(0, 256, (n, 784), dtype=np.uint8)
    labels = (images[:, :10].astype(np.int64).argmax(axis=1)).astype(np.int32)
    return images, labels


def backend_env(tmp_path) -> dict[str, str]:
    """The environment of a CLI subprocess: this one (PYTHONPATH and the plugins' installs
    included), the bundled MNIST subset (an empty cache, DPMLP_DATA_DIR unset), no launcher
    variables, Open MPI allowed to run as root."""
    cache = tmp_path / "empty-cache"
    cache.mkdir(exist_ok=True)
    env = dict(os.environ, DPMLP_CACHE_DIR=str(cache))
    env.pop("DPMLP_DATA_DIR", None)
    for var in ("OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_SIZE", "SLURM_NTASKS"):
        env.pop(var, None)
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        env.update(OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1")
    return env


def run_cli(cmd: list[str], env: dict, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout,
                          start_new_session=True)


def python() -> str:
    return sys.executable
