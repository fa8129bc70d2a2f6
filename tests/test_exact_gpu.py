"""``--exact`` on the GPU backends: the NumPy reference's bits, op by op, step by step, and one
SHA-256 for numpy, cupy and pycuda at 1, 2 and 3 ranks (sharing the GPUs there are), with and
without CUDA graphs. Every test skips, with the backend's own reason, where there is no CUDA GPU
(the CPU half of the tests is tests/test_exact.py; the op-table parity tests also run the exact
ops, in float64, in tests/test_kernel_parity.py).
"""

from __future__ import annotations

import re
import subprocess
import sys

import numpy as np
import pytest

from backends import op_table
from backends.ops_numpy import NumpyBackend
from conftest import REPO, backend_or_skip, mpi_env, run_mpi
from op_cases import OP_CASES
from core.exact import ExactMLP
from core.model import INPUTS, init_params
from core.ops import EXACT_OPS

pytestmark = pytest.mark.gpu

GPU_BACKENDS = ["cupy", "pycuda"]
SHAPES = [(10, 1), (10, 33), (100, 1013), (784, 7), (1013, 10), (7, 0)]


def _equal(a, b):
    a, b = np.asarray(a), np.asarray(b)
    return a.shape == b.shape and a.tobytes() == b.tobytes()


@pytest.mark.parametrize("op", EXACT_OPS)
@pytest.mark.parametrize("backend", GPU_BACKENDS)
def test_exact_op_gives_the_reference_bits(backend, op):
    """Each exact op on its op-table inputs (special values included: 0, -0, inf, nan, huge,
    tiny, subnormal): every written array bit for bit as NumPy's (NaN payloads aside); the
    output layer's loss sum, the one order-dependent sum, within 1e-12."""
    gpu, ref = backend_or_skip(backend, "float64"), NumpyBackend("float64")
    entry = op_table.OP_BY_NAME[op]
    for shape in SHAPES:
        for case in OP_CASES[op](np.random.default_rng(11), *shape, np.dtype("float64")):
            expected = {k: (v.copy(order="F") if isinstance(v, np.ndarray) else v)
                        for k, v in case.items()}
            getattr(ref, op)(**expected)
            device = {k: gpu.from_host(v) for k, v in case.items() if isinstance(v, np.ndarray)}
            getattr(gpu, op)(**{k: device.get(k, v) for k, v in case.items()})
            for name in entry.writes:
                got, want = gpu.to_host(device[name]), expected[name]
                if name == "nll_acc":
                    assert abs(got[0] - want[0]) <= 1e-12 * max(1.0, abs(want[0])), (op, shape)
                    continue
                same = _equal(np.where(np.isnan(got), np.nan, got),
                              np.where(np.isnan(want), np.nan, want))
                assert same, f"{op} {shape} {name}: not the reference's bits"


def _steps(be, split=None, steps=3, hidden=33, batch=29, seed=3):
    """A few SGD steps of ExactMLP on one process; the flat parameters and last exchange buffer."""
    rng = np.random.default_rng(seed)
    x = np.asfortranarray(rng.integers(0, 256, (INPUTS, batch * steps)) / 255.0)
    y = rng.integers(0, 10, batch * steps).astype(np.int32)
    if split is not None:
        be.gemm_split = split
    try:
        model = ExactMLP(be, hidden, batch, init_params(hidden, seed), batch, 1.0)
        nll = be.zeros((1,))
        X, Y = be.from_host(x), be.from_host(y)
        for s in range(steps):
            xs, ys = be.cols(X, s * batch, (s + 1) * batch), be.cols(Y, s * batch, (s + 1) * batch)
            a1, z2 = model.forward_hidden(xs)
            model.backward(xs, ys, a1, z2, global_batch=batch, nll_acc=nll)
            model.update(0.05, 0.5)
        assert not model.out_of_range()
        return be.to_host(model.flat_params), be.to_host(model.exchange_buffer)
    finally:
        if split is not None:
            be.gemm_split = None


@pytest.mark.parametrize("backend", GPU_BACKENDS)
def test_exact_steps_give_the_reference_bits_whatever_the_split_k(backend):
    gpu = backend_or_skip(backend, "float64")
    want_params, want_groups = _steps(NumpyBackend("float64"))
    for split in (None, 1, 2, 3, 8):  # the planner's pick, unsplit, and forced split-K
        params, groups = _steps(gpu, split)
        assert _equal(groups, want_groups), f"group sums differ (split {split})"
        assert _equal(params, want_params), f"parameters differ (split {split})"


# ------------------------------------------------------------------ the CLI: one hash
#: 200 samples in batches of 30 (10/10/10 on 3 ranks, 15/15 on 2), the last of 20 (7/7/6)
TRAIN = ["--exact", "--train-size", "200", "--val-size", "50", "-e", "2", "-b", "30", "-n", "33",
         "-r", "0.1", "-l", "0.5", "--seed", "5"]  # (not --quiet: the header names the ranks)


def _sha(out):
    found = re.findall(r"^params sha256 ([0-9a-f]{64})$", out, re.M)
    assert len(found) == 1, out
    return found[0]


@pytest.fixture(scope="module")
def numpy_hash():
    env = mpi_env()
    proc = subprocess.run([sys.executable, "-m", "core.train", *TRAIN, "--backend", "numpy",
                           "--comm", "single"], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    return _sha(proc.stdout)


@pytest.mark.parametrize("graphs", ["on", "off"])
@pytest.mark.parametrize("backend", GPU_BACKENDS)
def test_one_process_gives_the_numpy_hash(numpy_hash, backend, graphs):
    backend_or_skip(backend, "float64")
    proc = subprocess.run([sys.executable, "-m", "core.train", *TRAIN, "--backend", backend,
                           "--comm", "single", "--cuda-graphs", graphs], cwd=REPO,
                          env=mpi_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert _sha(proc.stdout) == numpy_hash


@pytest.mark.mpi
@pytest.mark.parametrize("ranks", [2, 3])
@pytest.mark.parametrize("backend", GPU_BACKENDS)
def test_ranks_give_the_numpy_hash(numpy_hash, backend, ranks):
    backend_or_skip(backend, "float64")
    code, out, err, _ = run_mpi(ranks, ["-m", "core.train", *TRAIN, "--backend", backend],
                                timeout=300, env=mpi_env())
    assert code == 0, out + err
    assert f"{ranks} rank(s)" in out
    assert _sha(out) == numpy_hash
