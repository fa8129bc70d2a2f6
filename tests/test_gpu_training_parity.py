"""End to end on the GPU: the CLI under mpirun with each GPU backend against the NumPy reference.

For P = 1, 2, 3 ranks on however many GPUs there are (ranks share a GPU when there are fewer), the
final parameters of ``--backend cupy`` and ``--backend pycuda`` must match a single-process NumPy
run within 1e-10 (float64) and 1e-5 (float32) relative max-norm error, and cupy must match pycuda.
NCCL runs where there is one GPU per rank; with fewer GPUs NCCL must refuse in one clear line.
Every test here skips with the backend's own reason on a machine without a CUDA GPU.
"""

from __future__ import annotations

import numpy as np
import pytest

from conftest import (backend_entry_or_skip, communicator_entry_or_skip, mpi_env,
                      relative_max_error, run_mpi)
from core.model import PARAM_NAMES

TOLERANCE = {"float64": 1e-10, "float32": 1e-5}
# Small but real: 1000 bundled-subset images, an odd B that splits unevenly, a smaller last batch
# (1000 = 14 * 67 + 62), H = 33 (no tile multiple) and a large reg that a reg-per-rank bug can't hide.
TRAIN = ["--train-size", "1000", "--val-size", "100", "-e", "2", "-b", "67", "-n", "33",
         "-r", "0.1", "-l", "0.5", "--seed", "5"]

pytestmark = [pytest.mark.gpu, pytest.mark.mpi]


def _train(tmp_path, tag, ranks, extra, timeout=240):
    out = tmp_path / f"{tag}.npz"
    code, stdout, stderr, _ = run_mpi(ranks, ["-m", "core.train", *TRAIN, *extra, "--save", str(out)],
                                      timeout=timeout, env=mpi_env())
    assert code == 0, f"{tag} failed ({code}):\n{stdout}\n{stderr}"
    with np.load(out) as data:
        return {k: data[k] for k in PARAM_NAMES}, stdout


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """Single-process NumPy run per dtype (cached for the module)."""
    cache = {}

    def get(dtype):
        if dtype not in cache:
            tmp = tmp_path_factory.mktemp(f"ref_{dtype}")
            cache[dtype] = _train(tmp, "numpy", 1, ["--backend", "numpy", "--comm", "single",
                                                    "--dtype", dtype])[0]
        return cache[dtype]
    return get


def _worst(expected, actual):
    return max(relative_max_error(expected[k], actual[k]) for k in PARAM_NAMES)


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("ranks", [1, 2, 3])
@pytest.mark.parametrize("backend", ["cupy", "pycuda"])
def test_gpu_backend_matches_numpy_reference(tmp_path, reference, backend, ranks, dtype):
    backend_entry_or_skip(backend)
    params, stdout = _train(tmp_path, backend, ranks, ["--backend", backend, "--dtype", dtype,
                                                       "--comm", "mpi" if ranks > 1 else "single"])
    worst = _worst(reference(dtype), params)
    print(f"{backend} P={ranks} {dtype}: worst relative max-norm error {worst:.3e}")
    assert worst <= TOLERANCE[dtype], stdout


# raw pixels in float32 saturate sigmoids and underflow probabilities: subnormals, which both
# builds must flush alike (-ftz=true, backends/cuda_compile.py)
RAW = ["--scale", "raw", "-l", "0.01", "-n", "100", "-b", "800", "--train-size", "2400"]


@pytest.mark.parametrize("extra", [[], RAW], ids=["unit", "raw"])
@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_cupy_matches_pycuda_bitwise(tmp_path, dtype, extra):
    """The same kernels from NVRTC (CuPy) and nvcc (PyCUDA): the same bits after training."""
    backend_entry_or_skip("cupy")
    backend_entry_or_skip("pycuda")
    a, _ = _train(tmp_path, "cupy", 2, ["--backend", "cupy", "--dtype", dtype, *extra])
    b, _ = _train(tmp_path, "pycuda", 2, ["--backend", "pycuda", "--dtype", dtype, *extra])
    for name in PARAM_NAMES:
        assert np.array_equal(a[name], b[name]), f"{name}: worst {_worst(a, b):.3e}"


#: docs/spec.md, "Grading modes": mode -> learning rate (H=100, B=800, reg 1e-4, raw pixels)
GRADING_LR = {1: "0.001", 2: "0.01", 3: "0.025"}


@pytest.mark.parametrize("mode,ranks,dtype",
                         [(mode, ranks, "float64") for mode in sorted(GRADING_LR)
                          for ranks in (1, 2, 3)] + [(2, 2, "float32")])
@pytest.mark.parametrize("backend", ["cupy", "pycuda"])
def test_lockstep_verify_passes_on_a_grading_configuration(backend, mode, ranks, dtype):
    """docs/spec.md's three "Grading modes" (raw pixels, H=100, B=800, reg 1e-4, lr by mode),
    short: every step of the GPU run checked against the float64 reference, at 1 to 3 ranks."""
    backend_entry_or_skip(backend)
    grading = ["--train-size", "2400", "--val-size", "200", "-e", "2", "-b", "800", "-n", "100",
               "-r", "1e-4", "-l", GRADING_LR[mode], "--scale", "raw"]
    code, stdout, stderr, _ = run_mpi(ranks, ["-m", "core.train", *grading, "--backend", backend,
                                              "--dtype", dtype, "--verify"], timeout=240,
                                      env=mpi_env())
    assert code == 0, stdout + stderr
    assert "verify passed: 6 of 6 steps checked in lockstep" in stdout, stdout


def _gpu_count():
    entry = backend_entry_or_skip("cupy")
    return entry.cls.device_count()


@pytest.mark.parametrize("backend", ["cupy", "pycuda"])
@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_nccl_matches_numpy_reference(tmp_path, reference, backend, dtype):
    backend_entry_or_skip(backend)
    communicator_entry_or_skip("nccl")
    if _gpu_count() < 2:
        pytest.skip("NCCL parity needs 2 GPUs (one per rank)")
    params, _ = _train(tmp_path, f"nccl_{backend}", 2, ["--backend", backend, "--dtype", dtype,
                                                        "--comm", "nccl"])
    worst = _worst(reference(dtype), params)
    print(f"nccl {backend} P=2 {dtype}: {worst:.3e}")
    assert worst <= TOLERANCE[dtype]


def test_nccl_refuses_shared_gpu():
    entry = backend_entry_or_skip("cupy")
    communicator_entry_or_skip("nccl")
    ranks = entry.cls.device_count() + 1  # one more rank than GPUs: two must share
    code, stdout, stderr, _ = run_mpi(ranks, ["-m", "core.train", *TRAIN, "--backend", "cupy",
                                              "--comm", "nccl"], timeout=120, env=mpi_env())
    ours = [line for line in stderr.splitlines() if line.startswith("dpmlp:")]
    assert code == 2, stderr
    assert len(ours) == 1 and "--comm nccl" in ours[0] and "share GPU" in ours[0], stderr
